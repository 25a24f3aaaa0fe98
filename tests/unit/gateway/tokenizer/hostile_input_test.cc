// Untrusted input: the gateway tokenizes whatever a client sends. Pathological sizes and
// shapes must stay near-linear and exact, PCRE2 limits must surface as errors (never as a
// silently different split), ill-formed UTF-8 must be rejected with its offset, the word
// cache must stay bounded, concurrent encodes must agree, bad ids must be refused, and
// added tokens must be found exactly where they are written.
#include <catch2/catch.hpp>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include "gateway/tokenizer/bpe_model.h"
#include "gateway/tokenizer/byte_level.h"
#include "gateway/tokenizer/pre_tokenizer.h"
#include "gateway/tokenizer/tokenizer.h"
#include "gateway/tokenizer/utf8.h"
#include "test_support.h"

namespace tessera::tokenizer {
namespace {

using testing::cached_reference;

constexpr EncodeOptions kPlain{SpecialTokens::kNone, SpecialTokenParsing::kParse};
constexpr EncodeOptions kUserText{SpecialTokens::kNone, SpecialTokenParsing::kAsText};

const std::vector<std::string>& real_vocabularies() {
  static const std::vector<std::string> kNames = {"smollm2", "llama-bpe", "qwen2", "llama-spm"};
  return kNames;
}

template <typename F>
double seconds_of(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string random_letters(std::mt19937& rng, size_t n) {
  std::string s(n, 'a');
  for (char& c : s) c = static_cast<char>('a' + rng() % 26);
  return s;
}

std::string hex(std::string_view bytes) {
  std::string out;
  char buf[4];
  for (char c : bytes) {
    std::snprintf(buf, sizeof(buf), "%02X ", static_cast<unsigned char>(c));
    out += buf;
  }
  return out;
}

// Whether a byte-level vocabulary has a token for every byte of text. SmolLM2 lacks 0x04,
// 0x06, 0x13, 0x14, 0x16, 0x1D and the lead bytes 0xF1/0xF2 (U+40000..U+BFFFF); HF, and so
// Tessera, make those its unk token, which is <|endoftext|> (id 0), a special token, even
// in text encoded as user text.
bool byte_level_spellable(const Tokenizer& t, std::string_view text) {
  if (t.model_kind() != ModelKind::kByteLevelBpe) return true;
  return std::all_of(text.begin(), text.end(), [&t](char c) {
    return t.token_to_id(ByteLevelMap::instance().encode(static_cast<unsigned char>(c))).has_value();
  });
}

std::string repeat(std::string_view unit, size_t n) {
  std::string s;
  s.reserve(unit.size() * n);
  for (size_t i = 0; i < n; ++i) s += unit;
  return s;
}

// encode + decode must give the text back (these inputs are NFC and start without a space
// that SentencePiece's Strip decoder would eat), and never take long.
void check_exact_and_fast(const std::string& name, const std::string& label, const std::string& text) {
  const Tokenizer& t = cached_reference(name);
  Result<std::vector<TokenId>> ids = invalid_argument("not run");
  const double seconds = seconds_of([&] { ids = t.encode(text, kUserText); });
  INFO(name << ": " << label << " (" << text.size() << " bytes) took " << seconds << " s");
  REQUIRE(ids.is_ok());
  CHECK(!ids->empty());
  CHECK(seconds < 5.0);  // ~0.3 s at most when idle; quadratic would be minutes
  auto back = t.decode(*ids);
  REQUIRE(back.is_ok());
  CHECK(*back == text);
}

// ---- 1. pathological sizes ----------------------------------------------------------

TEST_CASE("a 1 MiB word without spaces or punctuation encodes in near-linear time", "[tokenizer][hostile]") {
  std::mt19937 rng(5);
  const std::string big = random_letters(rng, size_t{1} << 20);
  const std::string quarter = big.substr(0, big.size() / 4);
  // One vocabulary per merge order (ranks, scores); the others meet 1 MiB pieces below.
  for (const std::string name : {"smollm2", "llama-spm"}) {
    const Tokenizer& t = cached_reference(name);
    std::vector<TokenId> ids;
    double quarter_s = 0;
    double big_s = 0;
    // A second try, so one scheduling hiccup on a shared machine does not fail the test.
    for (int attempt = 0; attempt < 2; ++attempt) {
      quarter_s = seconds_of([&] { (void)t.encode(quarter, kUserText).value(); });
      big_s = seconds_of([&] { ids = t.encode(big, kUserText).value(); });
      if (big_s < 10 * quarter_s) break;
    }
    INFO(name << ": 256 KiB in " << quarter_s << " s, 1 MiB in " << big_s << " s");
    // O(n log n) with a heap that outgrows the caches measures ~6x for 4x the input (0.4 to
    // 0.7 s for 1 MiB on an idle 2-core VM); a quadratic merge would be 16x and take
    // minutes. The absolute bound leaves room for a loaded machine.
    CHECK(big_s < 10 * quarter_s);
    CHECK(big_s < 5.0);
    CHECK(t.decode(ids).value() == big);
  }
}

TEST_CASE("whitespace, digit, emoji and CJK runs encode exactly and in bounded time", "[tokenizer][hostile]") {
  std::mt19937 rng(11);
  std::string whitespace_mix(200000, ' ');
  for (char& c : whitespace_mix) c = " \t\n\r"[rng() % 4];
  std::string digits(100000, '0');
  for (char& c : digits) c = static_cast<char>('0' + rng() % 10);
  // The ZWJ family: four emoji joined by U+200D, 25 bytes, one grapheme.
  const std::string family = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6";
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"200k spaces", std::string(200000, ' ')},
      {"200k newlines", std::string(200000, '\n')},
      {"200k tabs then a word", std::string(200000, '\t') + "word"},
      {"200k mixed whitespace", whitespace_mix},
      {"100k CRLF", repeat("\r\n", 100000)},
      {"100k digits", digits},
      {"50k ZWJ emoji sequences", repeat(family, 50000)},
      {"1 MiB of one CJK character", repeat("\xE4\xB8\xAD", (size_t{1} << 20) / 3)},
      {"256 KiB of one punctuation character", std::string(size_t{1} << 18, '!')},
      {"100k 'a ' words", repeat("a ", 100000)},
      // Every '<' starts a probe for the added tokens (llama-bpe has 256 of them).
      {"512 KiB of '<|'", repeat("<|", size_t{1} << 18)},
      {"100k near-miss special tokens", repeat("<|im_start|<|eot_id|<|reserved_special_token_", 100000 / 3)},
  };
  for (const std::string& name : real_vocabularies()) {
    for (const auto& [label, text] : inputs) check_exact_and_fast(name, label, text);
  }
}

// Tokenizers whose only pre-tokenizer is one Split pattern (then ByteLevel without its own
// regex), built from the small byte-level fixture.
Tokenizer with_split_pattern(const std::string& pattern) {
  nlohmann::json spec = testing::read_json(testing::fixture_path("bytelevel_small.tokenizer.json"));
  spec["pre_tokenizer"] = {{"type", "Sequence"},
                           {"pretokenizers",
                            {{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}},
                             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  return Tokenizer::from_tokenizer_json(spec.dump()).value();
}

// A repeated group costs the JIT one backtrack frame per character: PCRE2's default 32 KiB
// JIT stack overflows after ~1300 characters. That error used to end the split silently,
// so the rest of the text became one piece.
TEST_CASE("a split pattern that needs a deep JIT stack still splits long text exactly", "[tokenizer][hostile][pcre2]") {
  auto regex = SplitRegex::compile(R"((?:\p{L}|\p{N})+)");
  REQUIRE(regex.is_ok());
  const std::string text = std::string(100000, 'a') + "!" + std::string(100000, '7') + " b";
  std::vector<std::pair<size_t, size_t>> pieces;
  REQUIRE((*regex)->split(text, 10, pieces).is_ok());
  const std::vector<std::pair<size_t, size_t>> want = {
      {10, 100010}, {100010, 100011}, {100011, 200011}, {200011, 200012}, {200012, 200013}};
  CHECK(pieces == want);

  // Through the whole tokenizer: the same ids as the equivalent pattern without a group.
  const Tokenizer grouped = with_split_pattern(R"((?:\p{L}|\p{N})+)");
  const Tokenizer flat = with_split_pattern(R"([\p{L}\p{N}]+)");
  // After the long word, pieces that BPE would merge across if they were one (" the").
  const std::string words = repeat(std::string(50000, 'x') + ", the cat sat on the mat 1999\n", 4);
  auto a = grouped.encode(words, kUserText);
  auto b = flat.encode(words, kUserText);
  REQUIRE(a.is_ok());
  REQUIRE(b.is_ok());
  CHECK(*a == *b);
}

TEST_CASE("a split pattern that exceeds PCRE2's limits fails with a clear error, not a wrong split",
          "[tokenizer][hostile][pcre2]") {
  SECTION("match limit: catastrophic backtracking") {
    const Tokenizer t = with_split_pattern(R"((?:\p{L}+)+\p{N})");
    const std::string text = "ok " + std::string(40, 'a') + "!";
    auto ids = t.encode(text, kUserText);
    REQUIRE_FALSE(ids.is_ok());
    CHECK(ids.status().code() == StatusCode::kResourceExhausted);
    CHECK_THAT(ids.status().message(), Catch::Contains("match limit"));
    CHECK_THAT(ids.status().message(), Catch::Contains("from byte 0"));
  }
  SECTION("JIT stack: a repeated group longer than the largest stack") {
    auto regex = SplitRegex::compile(R"((?:\p{L}|\p{N})+)");
    REQUIRE(regex.is_ok());
    const std::string text = "a b " + std::string(size_t{4} << 20, 'a');
    std::vector<std::pair<size_t, size_t>> pieces = {{0, 0}};
    const Status status = (*regex)->split(text, 0, pieces);
    REQUIRE_FALSE(status.is_ok());
    CHECK(status.code() == StatusCode::kResourceExhausted);
    CHECK_THAT(status.message(), Catch::Contains("gave up searching from byte 3"));  // after "a b"
    CHECK(pieces == std::vector<std::pair<size_t, size_t>>{{0, 0}});  // nothing half-split is left behind
  }
  SECTION("the shipped patterns split megabytes of hostile text within the limits") {
    for (const char* pattern : {kGpt2Regex, kLlama3Regex, kQwen2Regex}) {
      auto regex = SplitRegex::compile(pattern);
      REQUIRE(regex.is_ok());
      for (const std::string& text : {std::string(size_t{1} << 20, 'a'), std::string(size_t{1} << 20, ' ') + "x",
                                      repeat(" \t\n", size_t{1} << 18), std::string(size_t{1} << 20, '?')}) {
        std::vector<std::pair<size_t, size_t>> pieces;
        INFO(pattern);
        CHECK((*regex)->split(text, 0, pieces).is_ok());
      }
    }
  }
}

TEST_CASE("a huge text does not leave megabytes of scratch buffers on the encoding thread", "[tokenizer][hostile]") {
  const Tokenizer& t = cached_reference("smollm2");  // digits split one by one: a piece per byte
  std::string digits(size_t{1} << 20, '0');
  for (size_t i = 0; i < digits.size(); ++i) digits[i] = static_cast<char>('0' + i % 10);
  // Live heap of all arenas, large (mmap'd) blocks included; RSS would also count what
  // the allocator keeps for reuse.
  auto live_bytes = [] {
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
  };
  size_t retained_bytes = 0;
  std::thread worker([&] {
    (void)t.encode("warm up the thread's buffers", kUserText).value();
    const size_t before = live_bytes();
    (void)t.encode(digits, kUserText).value();
    const size_t after = live_bytes();
    retained_bytes = after > before ? after - before : 0;
  });
  worker.join();
  INFO("the thread kept " << retained_bytes << " bytes");
  CHECK(retained_bytes < (size_t{4} << 20));  // it was 17 MiB: a 16-byte offset pair per digit
}

// ---- 2. ill-formed UTF-8 and NUL ------------------------------------------------------

TEST_CASE("ill-formed UTF-8 is INVALID_ARGUMENT naming the offset of the first bad byte", "[tokenizer][hostile]") {
  struct Case {
    std::string text;
    size_t offset;
  };
  const std::vector<Case> cases = {
      {"abc\xC3(def", 3},                     // lead byte without its continuation
      {"\xC0\x80", 0},                        // overlong NUL
      {"ok\xE0\x80\xAF", 2},                  // overlong '/'
      {"x\xED\xA0\x80y", 1},                  // UTF-16 surrogate U+D800
      {"\xF4\x90\x80\x80", 0},                // above U+10FFFF
      {"hello\xE2\x82", 5},                   // truncated at the end
      {"\xFF", 0},
      {"ab\x80", 2},                          // lone continuation byte
      {"\xF8\x88\x80\x80\x80", 0},            // five-byte form
      {"\xC3\xA9\xC3", 2},                    // "é" then a truncated sequence
      {std::string("a\0b\xFE", 4), 3},        // after a NUL
      {"<|im_start|>\xC1\xBF", 12},           // after a special token
  };
  for (const std::string name : {"smollm2", "llama-spm"}) {
    const Tokenizer& t = cached_reference(name);
    for (const Case& c : cases) {
      for (const EncodeOptions& options : {kPlain, kUserText, EncodeOptions{}}) {
        auto ids = t.encode(c.text, options);
        INFO(name << " " << hex(c.text));
        REQUIRE_FALSE(ids.is_ok());
        CHECK(ids.status().code() == StatusCode::kInvalidArgument);
        CHECK_THAT(ids.status().message(), Catch::Contains("not valid UTF-8") &&
                                               Catch::Contains("byte offset " + std::to_string(c.offset) + " "));
      }
    }
  }
}

TEST_CASE("NUL bytes are tokenized like any other character, not treated as the end", "[tokenizer][hostile]") {
  const std::string text("a\0b\0\0c", 6);
  for (const std::string& name : real_vocabularies()) {
    const Tokenizer& t = cached_reference(name);
    auto ids = t.encode(text, kUserText);
    REQUIRE(ids.is_ok());
    CHECK(ids->size() >= 4);
    CHECK(t.decode(*ids).value() == text);
  }
  // Through NFC (qwen2): utf8proc must not stop at the NUL.
  const Tokenizer& qwen = cached_reference("qwen2");
  auto composed = qwen.encode(std::string("e\xCC\x81\0e\xCC\x81", 7), kUserText);
  REQUIRE(composed.is_ok());
  CHECK(qwen.decode(*composed).value() == std::string("\xC3\xA9\0\xC3\xA9", 5));
  // Next to special tokens.
  const Tokenizer& smol = cached_reference("smollm2");
  const TokenId start = smol.token_to_id("<|im_start|>").value();
  const TokenId end = smol.token_to_id("<|im_end|>").value();
  const TokenId nul = smol.encode(std::string(1, '\0'), kUserText).value().at(0);
  CHECK(smol.encode(std::string("<|im_start|>\0<|im_end|>", 23), kPlain).value() == std::vector<TokenId>{start, nul, end});
}

// ---- 3. word cache and threads ----------------------------------------------------------

TEST_CASE("the word cache stays within its byte budget under a stream of unique long words", "[tokenizer][hostile]") {
  auto model = BpeModel::create(cached_reference("smollm2").spec());
  REQUIRE(model.is_ok());
  auto fresh = BpeModel::create(cached_reference("smollm2").spec());
  REQUIRE(fresh.is_ok());
  std::mt19937 rng(3);
  std::vector<TokenId> ids;
  size_t peak_bytes = 0;
  std::string first_word;
  // 256-byte words of rarely-merging punctuation: about 1 KB of cache each (key, ids, node),
  // so 20k of them would hold ~20 MB under the entry bound alone (which allows 131072).
  for (int i = 0; i < 20000; ++i) {
    std::string word(256, ' ');
    for (char& c : word) c = "!#$%&()*+,-./:;<=>?@[]^_`{|}~"[rng() % 29];
    if (i == 0) first_word = word;
    ids.clear();
    (*model)->encode_piece(word, ids);
    peak_bytes = std::max(peak_bytes, (*model)->cache_size_bytes());
  }
  INFO("peak " << peak_bytes << " bytes, budget " << BpeModel::max_cache_size_bytes());
  CHECK(peak_bytes <= BpeModel::max_cache_size_bytes());
  CHECK(peak_bytes > BpeModel::max_cache_size_bytes() / 4);  // it does cache
  // Cached or evicted, a word's ids are those of a model that never saw it.
  std::vector<TokenId> again;
  std::vector<TokenId> want;
  (*model)->encode_piece(first_word, again);
  (*fresh)->encode_piece(first_word, want);
  CHECK(again == want);
}

// Not run by default (10M words take ~25 s): prints the process's resident memory as
// unique words stream through one tokenizer. Run with: gateway_tokenizer_test "[.memory]"
TEST_CASE("resident memory stays flat over ten million unique words", "[.memory]") {
  auto rss_mib = [] {
    std::ifstream statm("/proc/self/statm");
    size_t pages = 0;
    size_t resident = 0;
    statm >> pages >> resident;
    return static_cast<double>(resident) * 4096 / (1 << 20);
  };
  const Tokenizer& t = cached_reference("smollm2");
  std::mt19937_64 rng(1);
  std::string text;
  const double start_mib = rss_mib();
  double peak_mib = start_mib;
  for (int batch = 0; batch < 100; ++batch) {
    text.clear();
    for (int i = 0; i < 100000; ++i) {
      const uint64_t r = rng();
      text += ' ';
      for (int k = 0; k < 3 + static_cast<int>(r % 10); ++k) text += static_cast<char>('a' + (r >> (5 * k + 4)) % 26);
    }
    (void)t.encode(text, kUserText).value();
    peak_mib = std::max(peak_mib, rss_mib());
    if (batch % 10 == 9) WARN((batch + 1) * 100000 << " words: RSS " << rss_mib() << " MiB (start " << start_mib << ")");
  }
  CHECK(peak_mib - start_mib < 64);
}

TEST_CASE("concurrent encodes of hostile text agree with a single thread", "[tokenizer][hostile]") {
  std::mt19937 rng(17);
  std::vector<std::string> inputs;
  for (int i = 0; i < 600; ++i) {
    std::string s;
    // Unique words churn the cache (shards are cleared while other threads read them),
    // long pieces bypass it, special tokens split segments.
    for (int w = 0; w < 40; ++w) s += " " + random_letters(rng, 1 + rng() % 12);
    if (i % 7 == 0) s += std::string(300 + rng() % 500, static_cast<char>('a' + rng() % 26));
    if (i % 5 == 0) s += "<|im_start|>user\n\xE4\xB8\xAD\xE6\x96\x87<|im_end|>";
    inputs.push_back(std::move(s));
  }
  for (const std::string name : {"smollm2", "llama-spm"}) {
    const Tokenizer t = testing::load_reference(name);  // a cold cache of its own
    std::vector<std::vector<TokenId>> want;
    for (const auto& s : inputs) want.push_back(t.encode(s, kPlain).value());
    const Tokenizer threaded = testing::load_reference(name);
    std::vector<size_t> num_mismatches(8, 0);
    std::vector<std::thread> threads;
    for (size_t w = 0; w < num_mismatches.size(); ++w) {
      threads.emplace_back([&, w] {
        for (size_t i = 0; i < inputs.size(); ++i) {
          const size_t k = (i * 13 + w * 101) % inputs.size();
          auto got = threaded.encode(inputs[k], kPlain);
          if (!got.is_ok() || *got != want[k]) ++num_mismatches[w];
        }
      });
    }
    for (auto& th : threads) th.join();
    INFO(name);
    for (size_t n : num_mismatches) CHECK(n == 0);
  }
}

// ---- 4. decode --------------------------------------------------------------------------

TEST_CASE("decode refuses negative and out-of-range ids and a stream survives them", "[tokenizer][hostile]") {
  for (const std::string& name : real_vocabularies()) {
    const Tokenizer& t = cached_reference(name);
    const auto n = static_cast<TokenId>(t.vocab_size());
    for (TokenId bad : {-1, INT32_MIN, n, n + 1, INT32_MAX}) {
      INFO(name << " id " << bad);
      for (DecodeOptions options : {DecodeOptions{SpecialTokenOutput::kKeep}, DecodeOptions{SpecialTokenOutput::kSkip}}) {
        auto text = t.decode(std::vector<TokenId>{1, bad, 2}, options);
        REQUIRE_FALSE(text.is_ok());
        CHECK(text.status().code() == StatusCode::kInvalidArgument);
        CHECK_THAT(text.status().message(), Catch::Contains("token id " + std::to_string(bad)));
      }
      CHECK_FALSE(t.id_to_token(bad).has_value());
      CHECK_FALSE(t.is_special(bad));
    }
    // A bad id in the middle of a stream leaves what is held (half an emoji) untouched.
    const std::string emoji = "\xF0\x9F\xA4\x96!";
    const std::vector<TokenId> ids = t.encode(emoji, kUserText).value();
    IncrementalDecoder stream(t);
    std::string streamed = stream.push(std::span<const TokenId>(ids).first(1)).value();
    CHECK_FALSE(stream.push(-7).is_ok());
    const std::vector<TokenId> with_bad = {ids.size() > 1 ? ids[1] : ids[0], n};
    CHECK_FALSE(stream.push(with_bad).is_ok());  // refused whole: its first id is not consumed
    streamed += stream.push(std::span<const TokenId>(ids).subspan(1)).value();
    streamed += stream.finish();
    INFO(name);
    CHECK(streamed == t.decode(ids).value());
  }
}

TEST_CASE("incremental decode in random chunks equals one decode on random id streams", "[tokenizer][hostile]") {
  for (const std::string& name : real_vocabularies()) {
    const Tokenizer& t = cached_reference(name);
    std::mt19937 rng(23);
    std::uniform_int_distribution<TokenId> any(0, static_cast<TokenId>(t.vocab_size()) - 1);
    std::vector<TokenId> short_ids;  // bytes, byte fallback and short pieces: broken UTF-8 is common
    for (TokenId id = 0; id < static_cast<TokenId>(t.vocab_size()); ++id) {
      if (t.id_to_token(id)->size() <= 2 || t.id_to_token(id)->substr(0, 3) == "<0x" || t.is_special(id)) {
        short_ids.push_back(id);
      }
    }
    for (int round = 0; round < 300; ++round) {
      std::vector<TokenId> ids(std::uniform_int_distribution<size_t>(0, 60)(rng));
      for (TokenId& id : ids) id = rng() % 2 == 0 ? any(rng) : short_ids[rng() % short_ids.size()];
      for (DecodeOptions options : {DecodeOptions{SpecialTokenOutput::kKeep}, DecodeOptions{SpecialTokenOutput::kSkip}}) {
        const std::string full = t.decode(ids, options).value();
        IncrementalDecoder stream(t, options);
        std::string streamed;
        for (size_t pos = 0; pos < ids.size();) {
          const size_t len = std::min(ids.size() - pos, size_t{1} + rng() % 5);
          const std::string piece = stream.push(std::span<const TokenId>(ids).subspan(pos, len)).value();
          REQUIRE(utf8::is_valid(piece));
          streamed += piece;
          pos += len;
        }
        streamed += stream.finish();
        INFO(name << " ids " << nlohmann::json(ids).dump());
        REQUIRE(streamed == full);
        // finish() resets: the same decoder serves the next stream identically.
        std::string again = stream.push(ids).value();
        again += stream.finish();
        REQUIRE(again == full);
      }
    }
  }
}

// ---- 5. added tokens ----------------------------------------------------------------------

// Leftmost-longest search for the vocabulary's added tokens, written plainly: the segments
// between matches are encoded on their own.
std::vector<TokenId> reference_encode(const Tokenizer& t, const std::string& text) {
  std::vector<TokenId> out;
  size_t segment_begin = 0;
  auto flush = [&](size_t end) {
    if (end > segment_begin) {
      const std::vector<TokenId> ids = t.encode(text.substr(segment_begin, end - segment_begin), kUserText).value();
      out.insert(out.end(), ids.begin(), ids.end());
    }
  };
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* best = nullptr;
    for (const AddedToken& a : t.spec().added_tokens) {
      if (text.compare(pos, a.content.size(), a.content) == 0 && (best == nullptr || a.content.size() > best->content.size())) {
        best = &a;
      }
    }
    if (best == nullptr) {
      ++pos;
      continue;
    }
    flush(pos);
    out.push_back(best->id);
    pos += best->content.size();
    segment_begin = pos;
  }
  flush(text.size());
  return out;
}

TEST_CASE("added tokens are found exactly where written, adjacent or overlapping", "[tokenizer][hostile][added]") {
  struct Vocab {
    std::string name;
    std::string open;
    std::string close;
  };
  for (const Vocab& v : {Vocab{"smollm2", "<|im_start|>", "<|im_end|>"}, Vocab{"qwen2", "<|im_start|>", "<|im_end|>"},
                         Vocab{"llama-bpe", "<|start_header_id|>", "<|eot_id|>"}}) {
    const Tokenizer& t = cached_reference(v.name);
    const TokenId open = t.token_to_id(v.open).value();
    const TokenId close = t.token_to_id(v.close).value();
    INFO(v.name);
    CHECK(t.encode(v.open + v.close, kPlain).value() == std::vector<TokenId>{open, close});
    CHECK(t.encode(v.open + v.open + v.close + v.close, kPlain).value() == std::vector<TokenId>{open, open, close, close});

    // Truncated or wrapped: only whole tokens count.
    const std::string truncated = v.open.substr(0, v.open.size() - 2);
    for (const std::string& text : {truncated, truncated + v.close.substr(2), "<" + v.open + ">", v.open.substr(1),
                                    truncated + " " + v.open.substr(truncated.size())}) {
      auto ids = t.encode(text, kPlain).value();
      INFO(text);
      CHECK(std::count(ids.begin(), ids.end(), open) == (text.find(v.open) != std::string::npos ? 1 : 0));
      CHECK(t.decode(ids).value() == text);
    }
    // Inside a word, the token splits it.
    std::vector<TokenId> want = t.encode("hello", kPlain).value();
    want.push_back(close);
    const std::vector<TokenId> world = t.encode("world", kPlain).value();
    want.insert(want.end(), world.begin(), world.end());
    CHECK(t.encode("hello" + v.close + "world", kPlain).value() == want);

    // Random mixes of whole tokens, their fragments and text.
    const std::vector<std::string> fragments = {v.open, v.close, truncated, v.open.substr(1), v.close.substr(0, 3), "<|",
                                                "|>", "<", ">", "|", "hello", " ", "\n", std::string(1, '\0'),
                                                "\xE4\xB8\xAD", "<|endoftext|>", "<s>", "</s>"};
    std::mt19937 rng(31);
    for (int round = 0; round < 500; ++round) {
      std::string text;
      for (size_t k = 1 + rng() % 12; k > 0; --k) text += fragments[rng() % fragments.size()];
      INFO(nlohmann::json(text).dump());
      CHECK(t.encode(text, kPlain).value() == reference_encode(t, text));
      // User text never yields a special token, and comes back as written.
      if (!byte_level_spellable(t, text)) continue;
      auto as_text = t.encode(text, kUserText).value();
      CHECK(std::none_of(as_text.begin(), as_text.end(), [&t](TokenId id) { return t.is_special(id); }));
      CHECK(t.decode(as_text).value() == text);
    }
  }
}

TEST_CASE("a megabyte of adjacent special tokens encodes quickly both as tokens and as text", "[tokenizer][hostile][added]") {
  const Tokenizer& t = cached_reference("smollm2");
  const TokenId open = t.token_to_id("<|im_start|>").value();
  const TokenId close = t.token_to_id("<|im_end|>").value();
  const std::string text = repeat("<|im_start|><|im_end|>", 50000);
  std::vector<TokenId> parsed;
  std::vector<TokenId> as_text;
  const double seconds = seconds_of([&] {
    parsed = t.encode(text, kPlain).value();
    as_text = t.encode(text, kUserText).value();
  });
  CHECK(seconds < 5.0);
  REQUIRE(parsed.size() == 100000);
  for (size_t i = 0; i < parsed.size(); ++i) CHECK(parsed[i] == (i % 2 == 0 ? open : close));
  CHECK(std::none_of(as_text.begin(), as_text.end(), [&t](TokenId id) { return t.is_special(id); }));
  CHECK(t.decode(as_text).value() == text);
}

TEST_CASE("SentencePiece control tokens next to each other and inside words", "[tokenizer][hostile][added]") {
  const Tokenizer& t = cached_reference("llama-spm");
  CHECK(t.encode("<s></s>", kPlain).value() == std::vector<TokenId>{1, 2});
  CHECK(t.encode("<s", kPlain).value() == t.encode("<s", kUserText).value());
  auto as_text = t.encode("<s></s><s>", kUserText).value();
  CHECK(std::none_of(as_text.begin(), as_text.end(), [&t](TokenId id) { return t.is_special(id); }));
  CHECK(t.decode(as_text).value() == "<s></s><s>");
  auto inside = t.encode("ab</s>cd", kPlain).value();
  CHECK(std::count(inside.begin(), inside.end(), 2) == 1);
}

}  // namespace
}  // namespace tessera::tokenizer
