// Behaviour beyond the fixtures: exact round trips of random text, streaming decode that
// never emits a broken UTF-8 sequence, options, llama.cpp's own vocab tests, and clear
// errors for malformed input.
#include <catch2/catch.hpp>

#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "gateway/tokenizer/byte_level.h"
#include "gateway/tokenizer/tokenizer.h"
#include "gateway/tokenizer/utf8.h"
#include "test_support.h"

namespace tessera::tokenizer {
namespace {

using testing::fixture_path;
using testing::load_reference;

constexpr EncodeOptions kPlain{SpecialTokens::kNone, SpecialTokenParsing::kParse};

const Tokenizer& cached(const std::string& name) { return testing::cached_reference(name); }

// Random valid UTF-8 drawn from ranges that stress the pre-tokenizers: ASCII, Latin-1,
// combining marks, CJK, emoji and modifiers, Unicode spaces, and (rarely) any scalar value.
std::string random_text(std::mt19937& rng, size_t max_code_points) {
  static const std::vector<std::pair<uint32_t, uint32_t>> kRanges = {
      {0x00, 0x7F}, {0x20, 0x7E}, {0x20, 0x7E}, {0x09, 0x0D}, {0x80, 0xFF}, {0x300, 0x36F}, {0x4E00, 0x4EFF},
      {0x1F300, 0x1F64F}, {0x1F3FB, 0x1F3FF}, {0x200B, 0x200D}, {0x2000, 0x200A}, {0x600, 0x6FF}, {0x900, 0x97F},
      {0x30, 0x39}, {0x1, 0x10FFFF}};
  std::uniform_int_distribution<size_t> len_dist(0, max_code_points);
  std::uniform_int_distribution<size_t> range_dist(0, kRanges.size() - 1);
  std::string out;
  const size_t n = len_dist(rng);
  for (size_t i = 0; i < n; ++i) {
    const auto [lo, hi] = kRanges[range_dist(rng)];
    uint32_t cp = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // surrogates are not scalar values
    utf8::append_code_point(cp, out);
  }
  return out;
}

// Whether the vocabulary has a token for every byte of text (SmolLM2 lacks a few control
// bytes and the lead bytes 0xF1/0xF2; HF turns those into unk, and so do we).
bool byte_level_spellable(const Tokenizer& t, std::string_view text) {
  for (char c : text) {
    if (!t.token_to_id(ByteLevelMap::instance().encode(static_cast<unsigned char>(c)))) return false;
  }
  return true;
}

TEST_CASE("byte-level tokenizers round-trip random text exactly", "[tokenizer]") {
  // qwen2 normalizes to NFC, so only NFC input would round-trip; the others keep every byte.
  for (const std::string name : {"bytelevel_small", "smollm2", "llama-bpe"}) {
    const Tokenizer& t = cached(name);
    std::mt19937 rng(1234);
    size_t num_failures = 0;
    size_t num_checked = 0;
    while (num_checked < 400) {
      const std::string text = random_text(rng, 64);
      if (!byte_level_spellable(t, text)) continue;
      ++num_checked;
      auto ids = t.encode(text, {SpecialTokens::kNone, SpecialTokenParsing::kAsText});
      REQUIRE(ids.is_ok());
      auto back = t.decode(*ids);
      REQUIRE(back.is_ok());
      if (*back != text && num_failures++ < 5) FAIL_CHECK(name << ": round trip changed " << nlohmann::json(text).dump());
    }
    CHECK(num_failures == 0);
  }
}

TEST_CASE("SentencePiece tokenizers round-trip text without leading spaces", "[tokenizer]") {
  // The Strip decoder removes the space the normalizer prepended; with byte fallback every
  // character survives.
  for (const std::string name : {"spm_small", "llama-spm"}) {
    const Tokenizer& t = cached(name);
    std::mt19937 rng(99);
    size_t num_failures = 0;
    for (int i = 0; i < 300; ++i) {
      std::string text = random_text(rng, 48);
      auto ids = t.encode(text, {SpecialTokens::kNone, SpecialTokenParsing::kAsText});
      REQUIRE(ids.is_ok());
      auto back = t.decode(*ids);
      REQUIRE(back.is_ok());
      if (*back != text && num_failures++ < 5) FAIL_CHECK(name << ": round trip changed " << nlohmann::json(text).dump());
    }
    CHECK(num_failures == 0);
  }
}

TEST_CASE("incremental decode of random ids equals full decode and never breaks UTF-8", "[tokenizer]") {
  for (const std::string& name : testing::reference_names()) {
    const Tokenizer& t = cached(name);
    std::mt19937 rng(7);
    // Bias towards byte tokens so unfinished sequences and invalid runs are common.
    std::uniform_int_distribution<TokenId> any(0, static_cast<TokenId>(t.vocab_size()) - 1);
    std::vector<TokenId> byte_ids;
    for (TokenId id = 0; id < static_cast<TokenId>(t.vocab_size()); ++id) {
      auto tok = t.id_to_token(id);
      if (tok->size() <= 2 || (tok->size() == 6 && tok->substr(0, 3) == "<0x")) byte_ids.push_back(id);
    }
    REQUIRE(!byte_ids.empty());
    std::uniform_int_distribution<size_t> pick(0, byte_ids.size() - 1);
    for (int round = 0; round < 200; ++round) {
      std::vector<TokenId> ids;
      const int n = std::uniform_int_distribution<int>(0, 40)(rng);
      for (int i = 0; i < n; ++i) ids.push_back(rng() % 3 == 0 ? any(rng) : byte_ids[pick(rng)]);
      for (DecodeOptions options : {DecodeOptions{SpecialTokenOutput::kKeep}, DecodeOptions{SpecialTokenOutput::kSkip}}) {
        auto full = t.decode(ids, options);
        REQUIRE(full.is_ok());
        REQUIRE(utf8::is_valid(*full));
        IncrementalDecoder stream(t, options);
        std::string streamed;
        for (TokenId id : ids) {
          auto piece = stream.push(id);
          REQUIRE(piece.is_ok());
          REQUIRE(utf8::is_valid(*piece));
          streamed += *piece;
        }
        const std::string tail = stream.finish();
        REQUIRE(utf8::is_valid(tail));
        streamed += tail;
        INFO(name << " ids " << nlohmann::json(ids).dump());
        REQUIRE(streamed == *full);
      }
    }
  }
}

TEST_CASE("streaming holds an emoji split over byte tokens until it is complete", "[tokenizer]") {
  const Tokenizer& t = cached("smollm2");
  auto ids = t.encode("🤖!", kPlain);
  REQUIRE(ids.is_ok());
  IncrementalDecoder stream(t);
  std::vector<std::string> pieces;
  for (TokenId id : *ids) pieces.push_back(stream.push(id).value());
  CHECK(stream.finish().empty());
  std::string joined;
  for (const auto& p : pieces) {
    CHECK(utf8::is_valid(p));
    joined += p;
  }
  CHECK(joined == "🤖!");
  CHECK(pieces.front().empty());  // the first byte of the emoji alone is not text yet
}

TEST_CASE("token bytes are the raw bytes of a character split over byte tokens", "[tokenizer]") {
  for (const char* name : {"smollm2", "spm_small"}) {
    const Tokenizer& t = cached(name);
    const std::string text = "🤖 héllo 用中文";
    auto ids = t.encode(text, kPlain);
    REQUIRE(ids.is_ok());
    std::string joined;
    bool some_token_is_partial = false;
    for (TokenId id : *ids) {
      const std::string bytes = t.token_bytes(id);
      some_token_is_partial = some_token_is_partial || !utf8::is_valid(bytes);
      joined += bytes;
    }
    // SentencePiece's prepended space is in the first token's bytes; decode strips it.
    CHECK(joined == (name == std::string("smollm2") ? text : " " + text));
    if (name == std::string("smollm2")) CHECK(some_token_is_partial);
  }
  CHECK(cached("smollm2").token_bytes(-1).empty());
}

TEST_CASE("concurrent encodes on one tokenizer agree with a single thread", "[tokenizer]") {
  const Tokenizer& t = cached("qwen2");
  const auto corpus = testing::read_json(fixture_path("corpus.json")).get<std::vector<std::string>>();
  std::vector<std::vector<TokenId>> want;
  for (const auto& s : corpus) want.push_back(t.encode(s, kPlain).value());
  std::vector<size_t> num_mismatches(4, 0);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < num_mismatches.size(); ++w) {
    threads.emplace_back([&, w] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < corpus.size(); ++i) {
          const size_t k = (i * 7 + w * 13 + static_cast<size_t>(round)) % corpus.size();
          auto got = t.encode(corpus[k], kPlain);
          if (!got.is_ok() || *got != want[k]) ++num_mismatches[w];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (size_t n : num_mismatches) CHECK(n == 0);
}

TEST_CASE("special tokens: parsed by default, plain text on request, skipped on decode", "[tokenizer]") {
  const Tokenizer& t = cached("smollm2");
  const TokenId im_start = t.token_to_id("<|im_start|>").value();
  auto parsed = t.encode("<|im_start|>user", kPlain);
  REQUIRE(parsed.is_ok());
  CHECK(parsed->front() == im_start);
  auto as_text = t.encode("<|im_start|>user", {SpecialTokens::kNone, SpecialTokenParsing::kAsText});
  REQUIRE(as_text.is_ok());
  CHECK(std::find(as_text->begin(), as_text->end(), im_start) == as_text->end());
  CHECK(t.decode(*as_text).value() == "<|im_start|>user");
  CHECK(t.decode(*parsed, {SpecialTokenOutput::kSkip}).value() == "user");
  CHECK(t.is_special(im_start));
}

TEST_CASE("BOS/EOS follow the tokenizer's post-processor or GGUF flags", "[tokenizer]") {
  auto with = [](const Tokenizer& t, std::string_view s) { return t.encode(s, {SpecialTokens::kAdd, SpecialTokenParsing::kParse}).value(); };
  const Tokenizer& spm = cached("llama-spm");
  CHECK(with(spm, "hi").front() == spm.bos_id().value());  // add_bos_token = true
  const Tokenizer& bpe = cached("llama-bpe");
  CHECK(with(bpe, "hi").front() == 128000);  // llama-bpe adds <|begin_of_text|> by default
  const Tokenizer& smol = cached("smollm2");
  CHECK(with(smol, "hi") == smol.encode("hi", kPlain).value());  // add_bos_token = false
  CHECK(smol.eos_id().value() == 2);
  // Bytes without a token in SmolLM2 become its unk token (id 0), fused as HF does.
  CHECK(smol.encode("\x04\x06", kPlain).value() == std::vector<TokenId>{0});
  const Tokenizer& small = cached("bytelevel_small");
  CHECK(with(small, "hi").back() == small.token_to_id("<|endoftext|>").value());
  CHECK(small.encode("hi").value() == with(small, "hi"));  // the default adds them, as HF does
}

TEST_CASE("invalid input is rejected with a clear error", "[tokenizer]") {
  const Tokenizer& t = cached("bytelevel_small");
  auto bad = t.encode("abc\xC3(def");
  REQUIRE_FALSE(bad.is_ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(bad.status().message(), Catch::Contains("UTF-8"));
  auto out_of_range = t.decode(std::vector<TokenId>{1, static_cast<TokenId>(t.vocab_size())});
  REQUIRE_FALSE(out_of_range.is_ok());
  CHECK_THAT(out_of_range.status().message(), Catch::Contains("outside the vocabulary"));
}

// llama.cpp's own tests for these vocabularies (tokenized without BOS). They share the
// model and pre-tokenizer with the HF references, so they must agree too.
TEST_CASE("vocab GGUFs reproduce llama.cpp's .inp/.out tokenizations", "[tokenizer]") {
  for (const std::string name : {"llama-spm", "llama-bpe", "qwen2"}) {
    const std::string base = testing::vocab_dir() + "/ggml-vocab-" + name + ".gguf";
    std::ifstream inp(base + ".inp", std::ios::binary), out(base + ".out", std::ios::binary);
    INFO("missing " << base << ".inp/.out: run scripts/fetch-test-vocabs");
    REQUIRE(inp);
    REQUIRE(out);
    std::string all((std::istreambuf_iterator<char>(inp)), std::istreambuf_iterator<char>());
    const std::string kSeparator = "\n__ggml_vocab_test__\n";
    std::vector<std::string> inputs;
    for (size_t pos = 0;;) {
      const size_t hit = all.find(kSeparator, pos);
      if (hit == std::string::npos) break;
      inputs.push_back(all.substr(pos, hit - pos));
      pos = hit + kSeparator.size();
    }
    const Tokenizer& t = cached(name);
    size_t num_ok = 0;
    std::string line;
    for (const std::string& text : inputs) {
      REQUIRE(std::getline(out, line));
      std::istringstream ids_text(line);
      std::vector<TokenId> want;
      for (TokenId id; ids_text >> id;) want.push_back(id);
      auto got = t.encode(text, kPlain);
      REQUIRE(got.is_ok());
      if (*got == want) {
        ++num_ok;
      } else {
        UNSCOPED_INFO(name << ": " << nlohmann::json(text).dump() << " -> " << nlohmann::json(*got).dump() << " want "
                           << nlohmann::json(want).dump());
      }
    }
    CHECK(num_ok == inputs.size());
    WARN(name << ": " << num_ok << "/" << inputs.size() << " llama.cpp vocab test strings match");
  }
}

// ---- malformed tokenizer.json -------------------------------------------------------

std::string minimal_json(const std::string& model_extra = "", const std::string& top_extra = "") {
  return R"({"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"])" + model_extra + "}" + top_extra + "}";
}

TEST_CASE("a minimal hand-written tokenizer.json works", "[tokenizer][errors]") {
  auto t = Tokenizer::from_tokenizer_json(minimal_json());
  REQUIRE(t.is_ok());
  CHECK(t->encode("abab", kPlain).value() == std::vector<TokenId>{2, 2});
}

TEST_CASE("malformed tokenizer.json gives clear errors", "[tokenizer][errors]") {
  struct Case {
    std::string json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"{not json", "not valid JSON"},
      {"[]", "not a JSON object"},
      {"{}", "no \"model\""},
      {R"({"model":{"type":"Unigram","vocab":[]}})", "only BPE"},
      {R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})", "missing from the vocabulary"},
      {R"({"model":{"type":"BPE","vocab":{"a":0,"b":2},"merges":[]}})", "no token with id 1"},
      {R"({"model":{"type":"BPE","vocab":{"a":"zero"},"merges":[]}})", "unexpected structure"},
      {R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[7]}})", "malformed merge"},
      {minimal_json("", R"(,"normalizer":{"type":"NFKD"})"), "normalizer type 'NFKD'"},
      {minimal_json("", R"(,"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(unclosed"},"behavior":"Isolated"})"),
       "does not compile"},
      {minimal_json("", R"(,"pre_tokenizer":{"type":"Whitespace"})"), "pre-tokenizer type 'Whitespace'"},
      {minimal_json("", R"(,"added_tokens":[{"id":-5,"content":"x"}])"), "negative id"},
      {minimal_json("", R"(,"decoder":{"type":"WordPiece"})"), "decoder type 'WordPiece'"},
  };
  for (const Case& c : cases) {
    auto t = Tokenizer::from_tokenizer_json(c.json);
    INFO(c.json);
    REQUIRE_FALSE(t.is_ok());
    CHECK_THAT(t.status().message(), Catch::Contains(c.message));
  }
  auto missing = Tokenizer::from_tokenizer_json_file("/nonexistent/tokenizer.json");
  REQUIRE_FALSE(missing.is_ok());
  CHECK(missing.status().code() == StatusCode::kNotFound);
}

// ---- GGUF front end -----------------------------------------------------------------

// A GGUF v3 file with metadata only, enough for the tokenizer front end.
class MiniGguf {
 public:
  MiniGguf& str(const std::string& key, const std::string& value) {
    begin(key, 8);
    put_string(value);
    return *this;
  }
  MiniGguf& u32(const std::string& key, uint32_t value) {
    begin(key, 4);
    put(value);
    return *this;
  }
  MiniGguf& strings(const std::string& key, const std::vector<std::string>& values) {
    begin(key, 9);
    put<uint32_t>(8);
    put<uint64_t>(values.size());
    for (const auto& v : values) put_string(v);
    return *this;
  }
  MiniGguf& floats(const std::string& key, const std::vector<float>& values) {
    begin(key, 9);
    put<uint32_t>(6);
    put<uint64_t>(values.size());
    for (float v : values) put(v);
    return *this;
  }
  Result<loader::GgufFile> build() const {
    std::vector<std::byte> file;
    auto append = [&file](const void* p, size_t n) {
      const auto* b = static_cast<const std::byte*>(p);
      file.insert(file.end(), b, b + n);
    };
    append("GGUF", 4);
    const uint32_t version = 3;
    const uint64_t num_tensors = 0;
    append(&version, 4);
    append(&num_tensors, 8);
    append(&num_kv_, 8);
    file.insert(file.end(), body_.begin(), body_.end());
    return loader::GgufFile::from_buffer(std::move(file));
  }

 private:
  template <typename T>
  void put(T v) {
    const auto* b = reinterpret_cast<const std::byte*>(&v);
    body_.insert(body_.end(), b, b + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    const auto* b = reinterpret_cast<const std::byte*>(s.data());
    body_.insert(body_.end(), b, b + s.size());
  }
  void begin(const std::string& key, uint32_t type) {
    ++num_kv_;
    put_string(key);
    put(type);
  }
  std::vector<std::byte> body_;
  uint64_t num_kv_ = 0;
};

TEST_CASE("a hand-built GGUF llama vocabulary merges by score", "[tokenizer][gguf]") {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "h", "i", "hi", "\xE2\x96\x81hi"};
  std::vector<float> scores = {0, 0, 0, -1, -2, -2, -0.5f, -0.1f};
  auto gguf = MiniGguf()
                  .str("tokenizer.ggml.model", "llama")
                  .strings("tokenizer.ggml.tokens", tokens)
                  .floats("tokenizer.ggml.scores", scores)
                  .u32("tokenizer.ggml.bos_token_id", 1)
                  .u32("tokenizer.ggml.unknown_token_id", 0)
                  .build();
  REQUIRE(gguf.is_ok());
  auto t = Tokenizer::from_gguf(*gguf);
  REQUIRE(t.is_ok());
  CHECK(t->encode("hi hi", kPlain).value() == std::vector<TokenId>{7, 7});
  CHECK(t->encode("hi", {SpecialTokens::kAdd, SpecialTokenParsing::kParse}).value() == std::vector<TokenId>{1, 7});
  CHECK(t->encode("x", kPlain).value() == std::vector<TokenId>{3, 0});  // no byte tokens: unk
  CHECK(t->decode(std::vector<TokenId>{7, 7}).value() == "hi hi");
}

TEST_CASE("GGUF with missing or unsupported tokenizer keys gives clear errors", "[tokenizer][gguf][errors]") {
  auto check_error = [](const MiniGguf& g, const std::string& message) {
    auto gguf = g.build();
    REQUIRE(gguf.is_ok());
    auto t = Tokenizer::from_gguf(*gguf);
    INFO(message);
    REQUIRE_FALSE(t.is_ok());
    CHECK_THAT(t.status().message(), Catch::Contains(message));
  };
  check_error(MiniGguf().u32("general.alignment", 32), "tokenizer.ggml.model");
  check_error(MiniGguf().str("tokenizer.ggml.model", "bert"), "'bert' is not supported");
  check_error(MiniGguf().str("tokenizer.ggml.model", "gpt2").str("tokenizer.ggml.pre", "klingon"), "'klingon'");
  check_error(MiniGguf().str("tokenizer.ggml.model", "gpt2"), "tokenizer.ggml.tokens");
  check_error(MiniGguf().str("tokenizer.ggml.model", "llama").strings("tokenizer.ggml.tokens", {"a"}),
              "tokenizer.ggml.scores");
  check_error(MiniGguf().str("tokenizer.ggml.model", "gpt2").strings("tokenizer.ggml.tokens", {"a"}),
              "tokenizer.ggml.merges");
  check_error(MiniGguf()
                  .str("tokenizer.ggml.model", "llama")
                  .strings("tokenizer.ggml.tokens", {"a", "b"})
                  .floats("tokenizer.ggml.scores", {0.0f})
                  .u32("tokenizer.ggml.bos_token_id", 0),
              "1 scores for 2 tokens");
  check_error(MiniGguf()
                  .str("tokenizer.ggml.model", "llama")
                  .strings("tokenizer.ggml.tokens", {"a"})
                  .floats("tokenizer.ggml.scores", {0.0f})
                  .u32("tokenizer.ggml.bos_token_id", 5),
              "outside the vocabulary");
}

}  // namespace
}  // namespace tessera::tokenizer
