// Hostile templates: a model file may carry any template text, so every way to nest, loop,
// recurse or grow must end in a clear error (a Status), never a stack overflow, an endless
// render or exhausted memory. The bounds are in gateway/chat_template/render_limits.h.
#include <catch2/catch.hpp>

#include <pthread.h>

#include <chrono>
#include <functional>
#include <string>

#include "gateway/chat_template/chat_template.h"
#include "gateway/chat_template/render_limits.h"

using tessera::StatusCode;
using tessera::chat_template::ChatRenderRequest;
using tessera::chat_template::ChatTemplate;
using tessera::chat_template::kMaxNestingDepth;

namespace {

std::string repeat(std::string_view s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

std::string load_error(const std::string& source) {
  auto t = ChatTemplate::from_string(source);
  return t.is_ok() ? "loaded" : t.status().message();
}

struct Rendered {
  bool ok = false;
  StatusCode code = StatusCode::kOk;
  std::string text;  // output, or the error message
  double seconds = 0;
};

Rendered render(const std::string& source) {
  auto t = ChatTemplate::from_string(source);
  if (!t.is_ok()) return {false, t.status().code(), "LOAD ERROR: " + t.status().message()};
  auto start = std::chrono::steady_clock::now();
  auto out = t->render(ChatRenderRequest{});
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (out.is_ok()) return {true, StatusCode::kOk, *out, seconds};
  return {false, out.status().code(), out.status().message(), seconds};
}

// Sanitizers make frames several times larger.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t kTestStackBytes = size_t{8} << 20;
#else
constexpr size_t kTestStackBytes = size_t{512} << 10;
#endif

// Runs fn on a thread with a stack of `stack_bytes`, as a server's worker threads may have.
void run_with_stack(size_t stack_bytes, std::function<void()> fn) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack_bytes);
  pthread_t thread;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<std::function<void()>*>(arg))();
    return nullptr;
  };
  REQUIRE(pthread_create(&thread, &attr, trampoline, &fn) == 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
}

bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

}  // namespace

TEST_CASE("deep nesting fails at load with a clear error, not a stack overflow", "[chat_template][limits]") {
  const std::string too_deep = "nested deeper than " + std::to_string(kMaxNestingDepth) + " levels";
  // Parentheses, list literals, unary operators and `not`: recursion in the parser.
  CHECK(contains(load_error("{{ " + repeat("(", 100000) + "1" + repeat(")", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ " + repeat("[", 100000) + repeat("]", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ " + repeat("-", 100000) + "1 }}"), too_deep));
  CHECK(contains(load_error("{{ " + repeat("not ", 100000) + "x }}"), too_deep));
  CHECK(contains(load_error("{{ " + repeat("x if y else ", 100000) + "z }}"), too_deep));
  // Operator and postfix chains: no parser recursion, but a tree as deep as the chain is
  // long, which rendering and freeing walk recursively.
  CHECK(contains(load_error("{{ 1" + repeat(" + 1", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ 'a'" + repeat(" ~ 'a'", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ x" + repeat(".a", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ x" + repeat("|trim", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{{ x" + repeat(" or x", 100000) + " }}"), too_deep));
  CHECK(contains(load_error("{% filter " + repeat("trim|", 100000) + "trim %}{% endfilter %}"), too_deep));
  // Blocks.
  CHECK(contains(load_error(repeat("{% if true %}", 100000) + repeat("{% endif %}", 100000)), too_deep));
  CHECK(contains(load_error(repeat("{% for x in y %}", 100000) + repeat("{% endfor %}", 100000)), too_deep));
  // The error names where: the token that went one level too deep.
  CHECK(load_error("{{ " + repeat("(", 300) + "1" + repeat(")", 300) + " }}") ==
        "chat template 1:" + std::to_string(4 + kMaxNestingDepth) + ": expressions or blocks " + too_deep);
  // Up to the limit still loads and renders.
  const int ok_depth = kMaxNestingDepth - 8;
  CHECK(render("{{ " + repeat("(", ok_depth) + "1" + repeat(")", ok_depth) + " }}").text == "1");
  CHECK(render(repeat("{% if true %}", ok_depth) + "x" + repeat("{% endif %}", ok_depth)).text == "x");
  CHECK(render("{{ 1" + repeat(" + 1", ok_depth) + " }}").text == std::to_string(ok_depth + 1));
  // Long but flat templates are fine: statements in a row, elif chains, list items.
  CHECK(render(repeat("{% if false %}{% endif %}", 100000) + "ok").text == "ok");
  CHECK(render("{% if false %}" + repeat("{% elif false %}", 50000) + "{% else %}ok{% endif %}").text == "ok");
  CHECK(render("{{ [" + repeat("1, ", 100000) + "1]|length }}").text == "100001");
}

TEST_CASE("unterminated tags, strings and comments at end of template fail at load", "[chat_template][limits]") {
  CHECK(load_error("{{") == "chat template 1:1: tag is not closed with '}}'");
  CHECK(load_error("{%") == "chat template 1:1: tag is not closed with '%}'");
  CHECK(load_error("{{-") == "chat template 1:1: tag is not closed with '}}'");
  CHECK(load_error("{%- if x -") == "chat template 1:1: tag is not closed with '%}'");
  CHECK(load_error("{#") == "chat template 1:1: unterminated comment");
  CHECK(load_error("{#-") == "chat template 1:1: unterminated comment");
  CHECK(load_error("{{ 'abc") == "chat template 1:4: unterminated string literal");
  CHECK(load_error("{{ 'abc\\") == "chat template 1:4: unterminated string literal");
  CHECK(load_error("{{ '\\x4") == "chat template 1:4: truncated \\x escape in string literal");
  CHECK(load_error("{% if x %}") == "chat template 1:4: 'if' block is never closed (expected '{% endif %}')");
  CHECK(load_error("{% macro m() %}") ==
        "chat template 1:4: 'macro' block is never closed (expected '{% endmacro %}')");
  CHECK(load_error("{{ x(") == "chat template 1:1: tag is not closed with '}}'");
  CHECK(load_error("{{ x }") == "chat template 1:1: tag is not closed with '}}'");
  // A lone brace is text, as in Jinja.
  CHECK(render("{").text == "{");
  CHECK(render("a {").text == "a {");
}

TEST_CASE("huge templates load in linear time", "[chat_template][limits]") {
  // 16 MB of text and 200k tags.
  std::string text = repeat("x", 16 << 20);
  auto start = std::chrono::steady_clock::now();
  CHECK(render(text).text.size() == text.size());
  Rendered tags = render(repeat("{{ 'ab' }}{# c #}\n", 200000));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(tags.text.size() == 400000);
  CHECK(seconds < 10.0);  // generous for sanitizer builds; optimized it is well under a second
  // A long unterminated comment or string is reported, not scanned quadratically.
  CHECK(load_error("{# " + text) == "chat template 1:1: unterminated comment");
  CHECK(load_error("{{ '" + text) == "chat template 1:4: unterminated string literal");
}

TEST_CASE("runaway loops and growth hit the render budget with a clear error", "[chat_template][limits]") {
  // range() is capped as in transformers' sandbox.
  Rendered big_range = render("{% for i in range(10**12) %}{% endfor %}");
  CHECK(big_range.code == StatusCode::kResourceExhausted);
  CHECK(big_range.text == "chat template: range too big: more than 100000 items");
  CHECK(render("{{ range(100000)|length }}").text == "100000");
  // Nested loops: 10^15 iterations of an empty body.
  Rendered nested = render("{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
                           "{% endfor %}{% endfor %}{% endfor %}");
  CHECK(nested.code == StatusCode::kResourceExhausted);
  CHECK(contains(nested.text, "evaluation steps"));
  // Each iteration cheap, but a quadratic scan inside: `in` over a 100k list, 100k times.
  Rendered scans = render("{% set xs = range(100000)|list %}{% for i in xs %}{% if -1 in xs %}{% endif %}{% endfor %}");
  CHECK(scans.code == StatusCode::kResourceExhausted);
  CHECK(contains(scans.text, "evaluation steps"));
  // One huge allocation: refused before it is made.
  Rendered mul = render("{{ 'x' * 10**12 }}");
  CHECK(mul.code == StatusCode::kResourceExhausted);
  CHECK(contains(mul.text, "exceeds the limit"));
  CHECK(contains(render("{{ ([1] * 10**12)|length }}").text, "exceeds the limit"));
  CHECK(contains(render("{{ 'a\nb'|indent(10**12) }}").text, "exceeds the limit"));
  CHECK(contains(render("{{ [[[1]]]|tojson(indent=10**9) }}").text, "exceeds the limit"));
  CHECK(contains(render("{{ ('x' * 10**6).replace('x', 'y' * 10**6) }}").text, "exceeds the limit"));
  CHECK(contains(render("{{ ('y' * 10**6).join(range(100000)|map('string')) }}").text, "exceeds the limit"));
  // Doubling: each string is allowed, the next is not.
  Rendered doubling = render("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                             "{% endfor %}{{ ns.s|length }}");
  CHECK(doubling.code == StatusCode::kResourceExhausted);
  // Quadratic growth: every string small enough, the total built is not.
  Rendered quadratic = render("{% set ns = namespace(s='') %}{% for i in range(100000) %}{% for j in range(100000) %}"
                              "{% set ns.s = ns.s ~ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' %}"
                              "{% endfor %}{% endfor %}");
  CHECK(quadratic.code == StatusCode::kResourceExhausted);
  // Output itself: 100000 x 100000 x 64 bytes would be 640 GB.
  Rendered output = render("{% for i in range(100000) %}{% for j in range(100000) %}"
                           "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}");
  CHECK(output.code == StatusCode::kResourceExhausted);
  for (const Rendered* r : {&nested, &scans, &doubling, &quadratic, &output}) {
    CHECK(r->seconds < 60.0);  // optimized: a few seconds at most
  }
}

TEST_CASE("recursive macros are bounded, however they recurse", "[chat_template][limits]") {
  CHECK(render("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}").text ==
        "chat template: macro recursion deeper than 64");
  // Recursion through an argument and a filter: still a macro call per level.
  CHECK(render("{% macro f(n) %}{{ (f(n + 1) ~ 'x')|trim }}{% endmacro %}{{ f(1) }}").text ==
        "chat template: macro recursion deeper than 64");
  // Fan-out: depth stays under 64, 2^60 calls do not.
  Rendered fan = render("{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}");
  CHECK(fan.code == StatusCode::kResourceExhausted);
  CHECK(contains(fan.text, "evaluation steps"));
  // Bounded recursion still works.
  CHECK(render("{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}").text ==
        "54321");
}

TEST_CASE("values nested without end are refused, not overflowed", "[chat_template][limits]") {
  // Built by a template: each list one deeper than the last.
  Rendered lists = render("{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}"
                          "{{ ns.x }}");
  CHECK(lists.code == StatusCode::kResourceExhausted);
  CHECK(contains(lists.text, "nested deeper than 512"));
  // A namespace reaching itself would print forever and never be freed.
  CHECK(render("{% set ns = namespace() %}{% set ns.me = ns %}{{ ns }}").text ==
        "chat template: a namespace attribute cannot hold a namespace");
  CHECK(render("{% set a = namespace() %}{% set b = namespace(a=a) %}{% set a.b = [b] %}").text ==
        "chat template: a namespace attribute cannot hold a namespace");
  CHECK(render("{% set ns = namespace(n=0) %}{% set ns.n = [1, {'a': 2}] %}{{ ns.n }}").text == "[1, {'a': 2}]");
}

TEST_CASE("macro recursion times expression depth stays within the stack", "[chat_template][limits]") {
  // Up to 64 macro levels, each 50 operators deep: each within its limit, the product bounded
  // by the evaluator's own depth limit.
  const std::string body = "{{ " + repeat("1 + (", 50) + "f(n + 1)" + repeat(")", 50) + " }}";
  Rendered deep = render("{% macro f(n) %}" + body + "{% endmacro %}{{ f(0) }}");
  CHECK(deep.code == StatusCode::kResourceExhausted);
  CHECK(contains(deep.text, "evaluation nested deeper than"));
}

TEST_CASE("strings split into more items than a list may hold are refused before building", "[chat_template][limits]") {
  CHECK(contains(render("{{ ('a ' * 10**7).split()|length }}").text, "items exceeds the limit"));
  CHECK(contains(render("{{ ('a,' * 10**7).split(',')|length }}").text, "items exceeds the limit"));
  CHECK(contains(render("{{ ('x' * 10**7)|list|length }}").text, "items exceeds the limit"));
  CHECK(render("{{ ('x' * 10**7)|length }}").text == "10000000");
}

TEST_CASE("printing a list of many references to one long string is bounded", "[chat_template][limits]") {
  // The list is cheap (shared strings); its repr and tojson would be 10 TB.
  const std::string setup = "{% set s = 'x' * 10**7 %}{% set xs = [s] * 10**6 %}";
  CHECK(contains(render(setup + "{{ xs }}").text, "exceeds the limit"));
  CHECK(contains(render(setup + "{{ xs|string|length }}").text, "exceeds the limit"));
  CHECK(contains(render(setup + "{{ xs|tojson|length }}").text, "exceeds the limit"));
  CHECK(contains(render(setup + "{{ {'a': xs} ~ '' }}").text, "exceeds the limit"));
  CHECK(contains(render(setup + "{{ xs|join|length }}").text, "exceeds the limit"));
}

TEST_CASE("the worst a template may nest fits a 512 KB thread stack", "[chat_template][limits]") {
  // Each limit at its maximum: parser nesting, and evaluation depth through macros.
  const int depth = kMaxNestingDepth - 2;
  std::string parens, blocks, macro;
  run_with_stack(kTestStackBytes, [&] {
    parens = render("{{ " + repeat("(", depth) + "1" + repeat(")", depth) + " }}").text;
    blocks = render(repeat("{% if true %}", depth) + "x" + repeat("{% endif %}", depth)).text;
    macro = render("{% macro f(n) %}{{ " + repeat("1 + (", 50) + "f(n + 1)" + repeat(")", 50) +
                   " }}{% endmacro %}{{ f(0) }}").text;
  });
  CHECK(parens == "1");
  CHECK(blocks == "x");
  CHECK(contains(macro, "evaluation nested deeper than"));
  // Values at the deepest allowed: converted, compared, printed, serialised and freed.
  nlohmann::ordered_json deep = nlohmann::ordered_json::array();
  nlohmann::ordered_json* slot = &deep;
  for (int i = 0; i < tessera::chat_template::kMaxValueDepth - 1; ++i) {
    slot->push_back(nlohmann::ordered_json::array());
    slot = &slot->back();
  }
  auto t = ChatTemplate::from_string("{{ (messages == messages) ~ (messages|string|length) ~ (messages|tojson|length) }}");
  REQUIRE(t.is_ok());
  std::string out;
  run_with_stack(kTestStackBytes, [&] {
    ChatRenderRequest request;
    request.messages = std::move(deep);
    auto r = t->render(request);
    out = r.is_ok() ? *r : r.status().message();
  });
  CHECK(out == "True10241024");
}
