// The Jinja subset itself: whitespace control, loops, filters, tests, slicing, scoping,
// errors at load (with line:column) and at render. Expected strings were checked against
// jinja2 3.1 configured as transformers configures it.
#include <catch2/catch.hpp>

#include "gateway/chat_template/chat_template.h"

using tessera::StatusCode;
using tessera::chat_template::ChatRenderRequest;
using tessera::chat_template::ChatTemplate;

namespace {

// Renders `source` with `context` (a JSON object) as extra variables; "ERROR: msg" on failure.
std::string render(const std::string& source, const char* context = "{}") {
  auto t = ChatTemplate::from_string(source);
  if (!t.is_ok()) return "LOAD ERROR: " + t.status().message();
  ChatRenderRequest request;
  request.extra_context = nlohmann::ordered_json::parse(context);
  request.local_clock = [] {
    std::tm tm{};
    tm.tm_year = 124;
    tm.tm_mon = 8;
    tm.tm_mday = 5;
    tm.tm_hour = 14;
    tm.tm_min = 30;
    tm.tm_wday = 4;
    return tm;
  };
  auto out = t->render(request);
  return out.is_ok() ? *out : "ERROR: " + out.status().message();
}

std::string load_error(const std::string& source) {
  auto t = ChatTemplate::from_string(source);
  return t.is_ok() ? "loaded" : t.status().message();
}

}  // namespace

TEST_CASE("whitespace control: trim_blocks, lstrip_blocks and dashes", "[chat_template][whitespace]") {
  CHECK(render("  {% if true %}\n  x\n  {% endif %}\n{{ 1 }}\n  {{ 2 }}\n") == "  x\n1\n  2");
  CHECK(render("a  {%- if true -%}  b  {%- endif -%}  c") == "abc");
  CHECK(render("a\n{{- 'b' -}}\nc") == "abc");
  CHECK(render("{# comment #}\nx") == "x");
  CHECK(render("  {#- comment -#}  x") == "x");
  CHECK(render("a {% if true %}b{% endif %} c") == "a b c");  // lstrip only at line start
  CHECK(render("{% if true +%}\nx{% endif %}") == "\nx");
  CHECK(render("line\n") == "line");  // keep_trailing_newline=False drops one newline
  CHECK(render("line\n\n") == "line\n");
}

TEST_CASE("for loops: loop variables, else, inline filter, unpacking, break", "[chat_template][loops]") {
  CHECK(render("{% for x in [10, 20, 30] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}") ==
        "1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;");
  CHECK(render("{% for x in [] %}x{% else %}empty{% endfor %}") == "empty");
  CHECK(render("{% for x in [1,2,3,4] if x is even %}{{ x }}{{ loop.last }}{% endfor %}") == "2False4True");
  CHECK(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }},{% endfor %}") == "a=1,b=2,");
  CHECK(render("{% for k in {'b': 1, 'a': 2} %}{{ k }}{% endfor %}") == "ba");
  CHECK(render("{% for x in range(5) %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}") == "012");
  CHECK(render("{% for x in range(1, 6, 2) %}{% if x == 3 %}{% continue %}{% endif %}{{ x }}{% endfor %}") == "15");
  CHECK(render("{% for x in [1,2] %}{{ loop.previtem is defined }}{{ loop.nextitem }}{% endfor %}") == "False2True");
}

TEST_CASE("scoping: set in loops stays local, namespace carries out", "[chat_template][scope]") {
  CHECK(render("{% set x = 5 %}{% for i in [1,2] %}[{{ x }}]{% set x = i %}{% endfor %}{{ x }}") == "[5][5]5");
  CHECK(render("{% set ns = namespace(n=0) %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}") ==
        "6");
  CHECK(render("{% if true %}{% set y = 'in if' %}{% endif %}{{ y }}") == "in if");
  CHECK(render("{% set a, b = 1, 2 %}{{ a }}{{ b }}") == "12");
  CHECK(render("{% set block %}x{{ 1 + 1 }}{% endset %}[{{ block }}]") == "[x2]");
  CHECK(render("{% macro greet(name, punct='!') %}hi {{ name }}{{ punct }}{% endmacro %}{{ greet('bob') }}"
               "{{ greet('al', punct='?') }}") == "hi bob!hi al?");
}

TEST_CASE("expressions: operators, precedence, literals", "[chat_template][expressions]") {
  CHECK(render("{{ 1 + 2 * 3 }}|{{ 7 // 2 }}|{{ -7 // 2 }}|{{ 7 % 3 }}|{{ 1 / 2 }}|{{ 2 ** 10 }}") ==
        "7|3|-4|1|0.5|1024");
  CHECK(render("{{ 'a' ~ 1 ~ none }}|{{ 'a' + 'b' }}|{{ [1] + [2] }}|{{ 'ab' * 2 }}") == "a1None|ab|[1, 2]|abab");
  CHECK(render("{{ none }}|{{ true }}|{{ 1.0 }}|{{ 1e20 }}|{{ 0.1 + 0.2 }}|{{ 'it''s' }}") ==
        "None|True|1.0|1e+20|0.30000000000000004|its");
  CHECK(render("{{ {'a': [1, none, true, 'x']} }}|{{ (1, 2) }}") == "{'a': [1, None, True, 'x']}|(1, 2)");
  CHECK(render("{{ 'x' if false }}|{{ 'y' if 0 else 'z' }}|{{ not 1 == 2 }}") == "|z|True");
  CHECK(render("{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in {'k': 1} }}{{ 3 not in [1] }}") == "TrueTrueTrueTrue");
  CHECK(render("{{ 1 == 1.0 }}{{ true == 1 }}{{ [1, 2] == [1, 2] }}{{ 'a' < 'b' }}{{ none == none }}") ==
        "TrueTrueTrueTrueTrue");
  CHECK(render("{{ 0 or 'x' }}|{{ 1 and 'y' }}|{{ '' or [] }}") == "x|y|[]");
  CHECK(render("{{ \"say \\\"hi\\\"\\n\" }}") == "say \"hi\"\n");
}

TEST_CASE("indexing and slicing follow Python, by code point", "[chat_template][slicing]") {
  CHECK(render("{{ [1,2,3,4][1:3] }}|{{ [1,2,3][::-1] }}|{{ [1,2,3][-1] }}|{{ [1,2,3][:-1] }}|{{ [1,2,3,4,5][::2] }}") ==
        "[2, 3]|[3, 2, 1]|3|[1, 2]|[1, 3, 5]");
  CHECK(render("{{ 'héllo'[1] }}|{{ 'héllo'[::-1] }}|{{ 'héllo'[1:3] }}|{{ 'abc'[-2:] }}") == "é|olléh|él|bc");
  CHECK(render("{{ [1][5] is defined }}|{{ m['a'] }}|{{ m.a }}", R"({"m": {"a": "x"}})") == "False|x|x");
}

TEST_CASE("undefined values behave like Jinja's default Undefined", "[chat_template][undefined]") {
  CHECK(render("[{{ nothing }}]{{ nothing is defined }}{{ nothing is undefined }}") == "[]FalseTrue");
  CHECK(render("{% if nothing %}y{% else %}n{% endif %}{% for x in nothing %}x{% endfor %}{{ nothing|length }}") ==
        "n0");
  CHECK(render("{{ m.missing is defined }}[{{ m.missing }}]", R"({"m": {}})") == "False[]");
  CHECK(render("{{ nothing.attr }}") == "ERROR: chat template: 'nothing' is undefined");
  CHECK(render("{{ m.missing.deeper }}", R"({"m": {}})") ==
        "ERROR: chat template: 'dict object' has no attribute 'missing'");
  CHECK(render("{{ nothing + 'x' }}") == "ERROR: chat template: 'nothing' is undefined");
  CHECK(render("{{ x.strip() }}", R"({"x": null})") == "ERROR: chat template: 'None' has no attribute 'strip'");
  CHECK(render("{{ nothing|default('d') }}|{{ ''|default('e', true) }}|{{ 'v'|d('w') }}") == "d|e|v");
}

TEST_CASE("filters", "[chat_template][filters]") {
  CHECK(render("[{{ '  a b \n'|trim }}]|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'hello world'|title }}|"
               "{{ 'hELLO'|capitalize }}") == "[a b]|AB|ab|Hello World|Hello");
  CHECK(render("{{ [1,2,3]|length }}|{{ 'héllo'|length }}|{{ {'a':1}|count }}|{{ [3,1]|first }}|{{ [3,1]|last }}") ==
        "3|5|1|3|1");
  CHECK(render("{{ ['a','b']|join(', ') }}|{{ [1,2]|join }}|{{ 'abc'|list }}|{{ 5|string }}") == "a, b|12|['a', 'b', 'c']|5");
  CHECK(render("{{ ms|map(attribute='role')|list }}|{{ ms|selectattr('role', 'equalto', 'user')|list|length }}|"
               "{{ ms|rejectattr('role', 'equalto', 'user')|map(attribute='role')|join }}|"
               "{{ ms|selectattr('tool')|list|length }}",
               R"({"ms": [{"role": "user"}, {"role": "assistant", "tool": 1}, {"role": "user"}]})") ==
        "['user', 'assistant', 'user']|2|assistant|1");
  CHECK(render("{{ [1,2,3,4]|select('odd')|list }}|{{ ['a','code_interpreter']|reject('equalto', 'code_interpreter')|join }}") ==
        "[1, 3]|a");
  CHECK(render("{{ '12'|int + 1 }}|{{ 'x'|int }}|{{ 3.9|int }}|{{ '2.5'|float }}|{{ -3|abs }}") == "13|0|3|2.5|3");
  CHECK(render("{{ {'a': 1, 'b': 2}|items|list }}|{{ [3,1,2]|sort }}|{{ [1,2]|reverse|list }}|{{ [1,1,2]|unique|list }}") ==
        "[('a', 1), ('b', 2)]|[1, 2, 3]|[2, 1]|[1, 2]");
  CHECK(render("{{ 'a\nb\n\nc'|indent(2) }}|{{ 'a\nb'|indent(2, true) }}") == "a\n  b\n\n  c|  a\n  b");
  CHECK(render("{{ 'aXbX'|replace('X', '-') }}|{{ '<b>'|safe }}") == "a-b-|<b>");
}

TEST_CASE("less common constructs seen in model templates", "[chat_template][filters]") {
  CHECK(render("{% filter trim %}  \n x \n {% endfilter %}|{% filter upper|trim %} ab {% endfilter %}") == "x|AB");
  CHECK(render("{% for k, v in {'b': 1, 'A': 2, 'c': 0}|dictsort %}{{ k }}{{ v }}{% endfor %}|"
               "{{ {'b': 1, 'a': 2}|dictsort(by='value', reverse=true) }}") == "A2b1c0|[('a', 2), ('b', 1)]");
  CHECK(render("{{ [3, 1, 2]|min }}{{ [3, 1, 2]|max }}{{ ['b', 'A']|min }}") == "13A");
  CHECK(render("{{ '<{}|{}|{x}|{{}}>'.format('a', 'c', x='b') }}|{{ '{1}{0}'.format('a', 'b') }}") == "<a|c|b|{}>|ba");
  CHECK(render("{{ 'x' in nothing }}|{{ none|selectattr('a')|list }}|{{ none|map(attribute='a')|list }}") ==
        "False|[]|[]");
  CHECK(render("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}") ==
        "ERROR: chat template: macro recursion deeper than 64");
}

TEST_CASE("tojson matches Python json.dumps as transformers calls it", "[chat_template][tojson]") {
  const char* ctx = R"({"v": {"name": "f", "args": {"city": "Zürich", "n": 1.5, "ok": true, "none": null,
                        "list": [1, "a\"b\\c\n"], "empty": {}, "e": []}}})";
  CHECK(render("{{ v|tojson }}", ctx) ==
        R"({"name": "f", "args": {"city": "Zürich", "n": 1.5, "ok": true, "none": null, "list": [1, "a\"b\\c\n"], "empty": {}, "e": []}})");
  CHECK(render("{{ v.args.list|tojson(indent=2) }}", ctx) == "[\n  1,\n  \"a\\\"b\\\\c\\n\"\n]");
  CHECK(render("{{ {'b': 1, 'a': [] }|tojson(indent=4) }}") == "{\n    \"b\": 1,\n    \"a\": []\n}");
  CHECK(render("{{ {'b': 1, 'a': 2}|tojson(sort_keys=true) }}") == R"({"a": 2, "b": 1})");
  CHECK(render("{{ 'é'|tojson(ensure_ascii=true) }}") == R"("\u00e9")");
  CHECK(render("{{ nothing|tojson }}").rfind("ERROR:", 0) == 0);
}

TEST_CASE("tests", "[chat_template][tests]") {
  CHECK(render("{{ 'a' is string }}{{ {} is mapping }}{{ [] is iterable }}{{ 'a' is iterable }}{{ 1 is number }}"
               "{{ true is boolean }}{{ none is none }}{{ 1 is integer }}{{ 1.5 is float }}{{ [] is sequence }}") ==
        "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrue");
  CHECK(render("{{ 1 is string }}{{ 'a' is mapping }}{{ 1 is iterable }}{{ x is not none }}{{ 3 is odd }}"
               "{{ 9 is divisibleby 3 }}{{ 2 is equalto 2 }}{{ 'a' is eq('b') }}{{ 1 is in [1] }}",
               R"({"x": null})") == "FalseFalseFalseFalseTrueTrueTrueFalseTrue");
}

TEST_CASE("string and dict methods", "[chat_template][methods]") {
  CHECK(render("[{{ '  a  '.strip() }}][{{ 'xxaxx'.strip('x') }}][{{ '  a'.lstrip() }}][{{ 'a  '.rstrip() }}]") ==
        "[a][a][a][a]");
  CHECK(render("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'a b  c'.split() }}"
               "{{ 'a,b'.split(',') }}{{ 'a,b,c'.split(',', 1) }}") ==
        "TrueTrue['a', 'b', 'c']['a', 'b']['a', 'b,c']");
  CHECK(render("{{ 'Ab'.upper() }}{{ 'Ab'.lower() }}{{ 'ab cd'.title() }}{{ 'aa'.replace('a', 'b') }}{{ '-'.join(['a','b']) }}") ==
        "ABabAb Cdbba-b");
  CHECK(render("{{ d.get('a') }}|{{ d.get('z') }}|{{ d.get('z', 0) }}|{{ d.keys()|list }}|{{ d.values()|list }}",
               R"({"d": {"a": 1, "b": 2}})") == "1|None|0|['a', 'b']|[1, 2]");
}

TEST_CASE("globals: raise_exception, strftime_now, range, namespace", "[chat_template][globals]") {
  auto t = ChatTemplate::from_string("{% if messages|length == 0 %}{{ raise_exception('no messages!') }}{% endif %}ok");
  REQUIRE(t.is_ok());
  auto out = t->render({});
  REQUIRE_FALSE(out.is_ok());
  CHECK(out.status().code() == StatusCode::kInvalidArgument);
  CHECK(out.status().message() == "no messages!");  // verbatim, as transformers raises it
  CHECK(render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now is defined }}") == "05 Sep 2024|True");
  CHECK(render("{{ range(3)|list }}{{ range(3, 0, -1)|list }}") == "[0, 1, 2][3, 2, 1]");
}

TEST_CASE("render inputs: messages, tools, add_generation_prompt, tokens", "[chat_template][inputs]") {
  auto t = ChatTemplate::from_string(
      "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }};{% endfor %}"
      "{{ tools is none }}{{ add_generation_prompt }}{{ eos_token }}{{ date_string }}");
  REQUIRE(t.is_ok());
  ChatRenderRequest request;
  request.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  request.bos_token = "<s>";
  request.extra_context = {{"date_string", "today"}};
  CHECK(*t->render(request) == "<s>user:hi;TrueFalsetoday");
  request.tools = nlohmann::ordered_json::array();
  request.add_generation_prompt = true;
  request.eos_token = "</s>";
  CHECK(*t->render(request) == "<s>user:hi;FalseTrue</s>today");
}

TEST_CASE("unsupported syntax fails at load with line:column", "[chat_template][errors]") {
  CHECK(load_error("hello\n  {% include 'x' %}") == "chat template 2:6: unknown or unsupported tag 'include'");
  CHECK(load_error("{{ x|frobnicate }}") == "chat template 1:6: unknown filter 'frobnicate'");
  CHECK(load_error("{% if x is frob %}{% endif %}") == "chat template 1:12: unknown test 'frob'");
  CHECK(load_error("a\n{% for x in y %}\nb") ==
        "chat template 2:4: 'for' block is never closed (expected '{% endfor %}')");
  CHECK(load_error("{% if x %}\n{% endfor %}") == "chat template 2:4: unknown or unsupported tag 'endfor'");
  CHECK(load_error("{{ x") == "chat template 1:1: tag is not closed with '}}'");
  CHECK(load_error("{{ 'abc }}") == "chat template 1:4: unterminated string literal");
  CHECK(load_error("{# abc") == "chat template 1:1: unterminated comment");
  CHECK(load_error("{{ (1 + ) }}") == "chat template 1:9: expected an expression, got ')'");
  CHECK(load_error("{% break %}") == "chat template 1:4: 'break' outside a for loop");
  CHECK(load_error("{% set d = {1: 'a'} %}") ==
        "chat template 1:13: only string-literal keys are supported in dict literals, got '1'");
  CHECK(load_error("{% filter nope %}x{% endfilter %}") == "chat template 1:11: unknown filter 'nope'");
  CHECK(load_error("{{ 1 < 2 < 3 }}") == "chat template 1:10: chained comparisons are not supported");
}

TEST_CASE("render-time errors are statuses, not crashes", "[chat_template][errors]") {
  CHECK(render("{{ 'a' + 1 }}").rfind("ERROR: chat template: unsupported operand types for +", 0) == 0);
  CHECK(render("{{ 1 // 0 }}") == "ERROR: chat template: integer division or modulo by zero");
  CHECK(render("{% set x = 1 %}{% set x.y = 2 %}") == "ERROR: chat template: cannot assign attribute on non-namespace object");
  CHECK(render("{{ 1 < 'a' }}") == "ERROR: chat template: '<' not supported between instances of 'int' and 'str'");
}

TEST_CASE("integer arithmetic past 64 bits is an error, never a wrapped number", "[chat_template][overflow]") {
  // Python has big ints; we refuse where it would need one (and C++ would have UB).
  const std::string overflow = "ERROR: chat template: integer overflow in ";
  CHECK(render("{{ 9223372036854775807 + 1 }}") == overflow + "'+': the result does not fit in 64 bits");
  CHECK(render("{{ -9223372036854775807 - 2 }}") == overflow + "'-': the result does not fit in 64 bits");
  CHECK(render("{{ 4294967296 * 4294967296 }}") == overflow + "'*': the result does not fit in 64 bits");
  CHECK(render("{{ 2 ** 63 }}") == overflow + "'**': the result does not fit in 64 bits");
  CHECK(render("{{ 2 ** 10**12 }}") == overflow + "'**': the result does not fit in 64 bits");  // fast, not 10^12 steps
  CHECK(render("{{ -(-9223372036854775807 - 1) }}") == overflow + "'-': the result does not fit in 64 bits");
  CHECK(render("{{ (-9223372036854775807 - 1) // -1 }}") == overflow + "'//': the result does not fit in 64 bits");
  CHECK(render("{{ (-9223372036854775807 - 1)|abs }}") == overflow + "'-': the result does not fit in 64 bits");
  CHECK(load_error("{{ 99999999999999999999 }}") ==
        "chat template 1:4: integer literal 99999999999999999999 does not fit in 64 bits");
  // Right at the edges, exact.
  CHECK(render("{{ -9223372036854775807 - 1 }}|{{ 9223372036854775806 + 1 }}|{{ 2 ** 62 }}|{{ (-2) ** 63 }}|"
               "{{ 1 ** 10**18 }}|{{ (-1) ** (10**18 + 1) }}") ==
        "-9223372036854775808|9223372036854775807|4611686018427387904|-9223372036854775808|1|-1");
  CHECK(render("{{ (-9223372036854775807 - 1) % -1 }}|{{ (-9223372036854775807 - 1) is divisibleby(-1) }}|"
               "{{ (-9223372036854775807 - 1) // 3 }}|{{ (-9223372036854775807 - 1) % 3 }}") ==
        "0|True|-3074457345618258603|1");
  // int() of floats Python cannot convert (inf, nan) falls back to the default, as Jinja's int filter
  // does; so does one that would need a big int (Python: 1000000000000000052504760255204420248704...).
  CHECK(render("{{ '1e400'|int }}|{{ 'nan'|int(7) }}|{{ 1e300|int(-1) }}|{{ 2.9|int }}|{{ -2.9|int }}") ==
        "0|7|-1|2|-2");
  CHECK(render("{{ '99999999999999999999'|int(-1) }}|{{ '-9223372036854775808'|int }}") == "-1|-9223372036854775808");
}

TEST_CASE("division and modulo by zero are clear errors, as Python raises them", "[chat_template][overflow]") {
  CHECK(render("{{ 1 / 0 }}") == "ERROR: chat template: division by zero");
  CHECK(render("{{ 1 // 0 }}") == "ERROR: chat template: integer division or modulo by zero");
  CHECK(render("{{ 1 % 0 }}") == "ERROR: chat template: integer modulo by zero");
  CHECK(render("{{ 1.0 // 0 }}") == "ERROR: chat template: float floor division by zero");
  CHECK(render("{{ 1.0 % 0.0 }}") == "ERROR: chat template: float modulo");
  CHECK(render("{{ 0 ** -1 }}") == "ERROR: chat template: 0.0 cannot be raised to a negative power");
  CHECK(render("{{ 3 is divisibleby 0 }}") == "ERROR: chat template: integer modulo by zero");
  // Python's signs: the result of % takes the divisor's.
  CHECK(render("{{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 7 % -3 }} {{ -7 // 2.0 }} {{ -7 % 3 }}") == "3.0 0.5 -2 -4.0 2");
}

TEST_CASE("floats print as Python's repr", "[chat_template][floats]") {
  // Checked against jinja2 3.1.6.
  CHECK(render("{{ 1e16 }} {{ 1e15 }} {{ 0.0001 }} {{ 0.00001 }} {{ -0.0 }} {{ 1.5e300 * 1e10 }} {{ 2.5 }} {{ 1 / 3 }} "
               "{{ 100.0 }}") == "1e+16 1000000000000000.0 0.0001 1e-05 -0.0 inf 2.5 0.3333333333333333 100.0");
  CHECK(render("{{ 1e400 }} {{ -1e400 }} {{ 1e-400 }} {{ 5e-324 }} {{ 1.7976931348623157e308 }} {{ 123456789.125 }}") ==
        "inf -inf 0.0 5e-324 1.7976931348623157e+308 123456789.125");
  CHECK(render("{{ 3.0 is odd }}{{ 4.0 is even }}{{ 2.5 is odd }}") == "TrueTrueFalse");
}

TEST_CASE("slices with negative and huge steps follow Python", "[chat_template][slicing]") {
  // Checked against jinja2 3.1.6.
  CHECK(render("{{ [1,2,3,4,5][::-2] }} {{ [1,2,3,4,5][4:0:-2] }} {{ [1,2,3,4,5][-1:-6:-1] }} {{ 'abcdef'[10:0:-3] }}") ==
        "[5, 3, 1] [5, 3] [5, 4, 3, 2, 1] fc");
  CHECK(render("{{ [1,2,3][1::9223372036854775807] }} {{ [1,2,3][::-9223372036854775807] }} {{ [1,2,3][-99:99] }} "
               "{{ [1,2,3][99:-99:-1] }} {{ 'héllo'[::-2] }}") == "[2] [3] [1, 2, 3] [3, 2, 1] olh");
  CHECK(render("{{ [1,2,3][::0] }}") == "ERROR: chat template: slice step cannot be zero");
  CHECK(render("{{ range(9223372036854775800, 9223372036854775807, 3)|list }}") ==
        "[9223372036854775800, 9223372036854775803, 9223372036854775806]");
  CHECK(render("{{ range(-9223372036854775807 - 1, -9223372036854775807 - 1 + 10, 4)|list }}|{{ range(3, -3, -2)|list }}") ==
        "[-9223372036854775808, -9223372036854775804, -9223372036854775800]|[3, 1, -1]");
}

TEST_CASE("loop refers to the innermost loop, an outer one is reachable through set", "[chat_template][loops]") {
  // Checked against jinja2 3.1.6.
  CHECK(render("{% for a in [1,2] %}{% for b in 'xy' %}{{ loop.index }}{{ b }}{% endfor %}{{ loop.index }}"
               "{{ loop.last }};{% endfor %}") == "1x2y1False;1x2y2True;");
  CHECK(render("{% for a in [1,2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}"
               "{% endfor %};{% endfor %}") == "1112;2122;");
  CHECK(render("{% for a in [1,2] %}{% for b in [] %}{% else %}{{ loop.index }}{% endfor %}{% endfor %}") == "12");
}

TEST_CASE("string literal escapes decode as Python's unicode-escape", "[chat_template][expressions]") {
  // Checked against jinja2 3.1.6.
  CHECK(render(R"({{ '\012|\x41|\u00e9|\U0001F600|\q|\0|\101\1010' }})") == std::string("\n|A|é|😀|\\q|") +
                                                                                 std::string(1, '\0') + "|AA0");
  CHECK(load_error(R"({{ '\xZZ' }})") == "chat template 1:4: truncated \\x escape in string literal");
  CHECK(load_error(R"({{ '\u12' }})") == "chat template 1:4: truncated \\u escape in string literal");
  CHECK(load_error(R"({{ '\U00110000' }})") == "chat template 1:4: illegal Unicode character in string literal");
  CHECK(load_error(R"({{ '\N{BULLET}' }})") == "chat template 1:4: \\N{...} escapes are not supported in string literals");
}

TEST_CASE("CRLF and CR line endings in a template render as LF, as Jinja normalises them", "[chat_template][whitespace]") {
  // Checked against jinja2 3.1.6: 'a\r\nb{% if true %}\r\nc{% endif %}\r\n' renders 'a\nbc'.
  CHECK(render("a\r\nb{% if true %}\r\nc{% endif %}\r\n") == "a\nbc");
  CHECK(render("a\rb\r\n  {% if true %}\r\nc{% endif %}") == "a\nb\nc");
  CHECK(render("{{ 'x\r\ny' }}") == "x\ny");
}

TEST_CASE("unique folds case and uses a set, as Jinja's does", "[chat_template][filters]") {
  // Checked against jinja2 3.1.6.
  CHECK(render("{{ ['a', 'A', 'b']|unique|list }}|{{ ['a', 'A']|unique(case_sensitive=true)|list }}|"
               "{{ [1, 1.0, true, 2, none, none]|unique|list }}") == "['a', 'b']|['a', 'A']|[1, 2, None]");
  CHECK(render("{{ [{'n': 'x'}, {'n': 'X'}, {'n': 'y'}]|unique(attribute='n')|map(attribute='n')|list }}") ==
        "['x', 'y']");
  CHECK(render("{{ [[1], [1]]|unique|list }}") == "ERROR: chat template: unhashable type: 'list'");
  CHECK(render("{{ range(100000)|unique|list|length }}") == "100000");  // linear, not 5e9 comparisons
}

TEST_CASE("method arguments of the wrong type are errors, not crashes", "[chat_template][errors]") {
  // These dereferenced a missing string, or threw std::out_of_range past render().
  CHECK(render("{{ 'abc'.strip(1) }}") == "ERROR: chat template: strip arg must be None or str");
  CHECK(render("{{ 'abc'.lstrip([]) }}") == "ERROR: chat template: strip arg must be None or str");
  CHECK(render("{{ 'a b'.split(1) }}") == "ERROR: chat template: must be str or None, not int");
  CHECK(render("{{ '{99999999999999999999999}'.format(1) }}") ==
        "ERROR: chat template: format: no argument for field '{99999999999999999999999}'");
}
