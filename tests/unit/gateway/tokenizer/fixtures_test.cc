// Every corpus string, every reference tokenizer: ids, ids with special tokens, decoded
// text (with and without special tokens) and streamed text must equal HF `tokenizers`.
#include <catch2/catch.hpp>

#include <sstream>

#include "gateway/tokenizer/tokenizer.h"
#include "gateway/tokenizer/utf8.h"
#include "test_support.h"

namespace tessera::tokenizer {
namespace {

using testing::fixture_path;
using testing::load_reference;
using testing::read_json;

std::string show_ids(const std::vector<TokenId>& ids) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < ids.size(); ++i) s << (i ? "," : "") << ids[i];
  s << ']';
  return s.str();
}

void check_reference(const std::string& name) {
  const auto corpus = read_json(fixture_path("corpus.json")).get<std::vector<std::string>>();
  const auto expected = read_json(fixture_path("expected_" + name + ".json"));
  const Tokenizer tokenizer = load_reference(name);
  const auto prefix = expected.at("prefix_ids").get<std::vector<TokenId>>();
  const auto suffix = expected.at("suffix_ids").get<std::vector<TokenId>>();
  const auto& all_ids = expected.at("ids");
  const auto& decoded = expected.at("decoded");
  const auto& decoded_skip = expected.at("decoded_skip_special");
  REQUIRE(all_ids.size() == corpus.size());

  size_t num_ok = 0;
  std::vector<std::string> failures;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& text = corpus[i];
    const auto want = all_ids[i].get<std::vector<TokenId>>();
    const std::string key = std::to_string(i);
    const std::string want_text = decoded.contains(key) ? decoded[key].get<std::string>() : text;
    const std::string want_skip = decoded_skip.contains(key) ? decoded_skip[key].get<std::string>() : want_text;
    std::string why;

    auto got = tokenizer.encode(text, {SpecialTokens::kNone, SpecialTokenParsing::kParse});
    auto got_special = tokenizer.encode(text, {SpecialTokens::kAdd, SpecialTokenParsing::kParse});
    std::vector<TokenId> want_special = prefix;
    want_special.insert(want_special.end(), want.begin(), want.end());
    want_special.insert(want_special.end(), suffix.begin(), suffix.end());
    if (!got.is_ok()) {
      why = "encode failed: " + got.status().to_string();
    } else if (*got != want) {
      why = "ids " + show_ids(*got) + " want " + show_ids(want);
    } else if (!got_special.is_ok() || *got_special != want_special) {
      why = "ids with special tokens differ";
    } else {
      auto text_out = tokenizer.decode(want);
      auto skip_out = tokenizer.decode(want, {SpecialTokenOutput::kSkip});
      if (!text_out.is_ok() || *text_out != want_text) {
        why = "decode '" + (text_out.is_ok() ? *text_out : text_out.status().to_string()) + "' want '" + want_text + "'";
      } else if (!skip_out.is_ok() || *skip_out != want_skip) {
        why = "decode(skip special) '" + (skip_out.is_ok() ? *skip_out : skip_out.status().to_string()) + "' want '" +
              want_skip + "'";
      } else {
        IncrementalDecoder stream(tokenizer);
        std::string streamed;
        for (TokenId id : want) {
          auto piece = stream.push(id);
          if (!piece.is_ok() || !utf8::is_valid(*piece)) {
            why = "stream emitted invalid UTF-8";
            break;
          }
          streamed += *piece;
        }
        streamed += stream.finish();
        if (why.empty() && streamed != want_text) why = "streamed '" + streamed + "' want '" + want_text + "'";
      }
    }
    if (why.empty()) {
      ++num_ok;
    } else if (failures.size() < 12) {
      failures.push_back("#" + key + " " + nlohmann::json(text).dump() + ": " + why);
    }
  }
  for (const std::string& f : failures) UNSCOPED_INFO(f);
  INFO(name << ": " << num_ok << "/" << corpus.size() << " strings match");
  CHECK(num_ok == corpus.size());
  WARN(name << ": " << num_ok << "/" << corpus.size() << " corpus strings match HF exactly");
}

TEST_CASE("spm_small tokenizer.json matches HF tokenizers on the corpus", "[tokenizer][fixtures]") { check_reference("spm_small"); }
TEST_CASE("spm_small with a Metaspace pre-tokenizer matches HF tokenizers on the corpus", "[tokenizer][fixtures]") {
  check_reference("spm_metaspace");
}
TEST_CASE("bytelevel_small tokenizer.json matches HF tokenizers on the corpus", "[tokenizer][fixtures]") {
  check_reference("bytelevel_small");
}
TEST_CASE("SmolLM2 GGUF tokenizer matches HF on the corpus", "[tokenizer][fixtures]") { check_reference("smollm2"); }
TEST_CASE("llama-spm GGUF tokenizer matches HF on the corpus", "[tokenizer][fixtures]") { check_reference("llama-spm"); }
TEST_CASE("llama-bpe GGUF tokenizer matches HF on the corpus", "[tokenizer][fixtures]") { check_reference("llama-bpe"); }
TEST_CASE("qwen2 GGUF tokenizer matches HF on the corpus", "[tokenizer][fixtures]") { check_reference("qwen2"); }

}  // namespace
}  // namespace tessera::tokenizer
