// Front end for GGUF metadata (tokenizer.ggml.*). The pre-tokenizer is only named there
// (tokenizer.ggml.pre); the names map to the regexes of the tokenizer.json files the
// GGUF converters read them from, so encoding matches Hugging Face rather than any one
// runtime's adaptation of them.
#include "worker/loader/gguf_file.h"

#include "gateway/tokenizer/tokenizer.h"

namespace tessera::tokenizer {
namespace {

constexpr const char* kMetaspace = "\xE2\x96\x81";

struct PreTokenizerPreset {
  std::vector<std::string> regexes;
  bool nfc = false;
  bool ignore_merges = false;
  bool add_bos = false;  // llama.cpp's default when tokenizer.ggml.add_bos_token is absent
};

// llama.cpp's names for tokenizer.ggml.pre, as far as Tessera's model families need them.
std::optional<PreTokenizerPreset> preset_for(std::string_view pre) {
  if (pre.empty() || pre == "default" || pre == "gpt-2" || pre == "gpt2") return PreTokenizerPreset{{kGpt2Regex}};
  if (pre == "smollm") return PreTokenizerPreset{{kDigitRegex, kGpt2Regex}};  // Digits(individual) + ByteLevel
  if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") return PreTokenizerPreset{{kLlama3Regex}, false, true, true};
  if (pre == "qwen2") return PreTokenizerPreset{{kQwen2Regex}, true};
  return std::nullopt;
}

Status missing(std::string_view key) { return invalid_argument("GGUF has no '" + std::string(key) + "'"); }

}  // namespace

Result<Tokenizer> Tokenizer::from_gguf(const loader::GgufFile& gguf) {
  const auto model = gguf.get_string("tokenizer.ggml.model");
  if (!model) return missing("tokenizer.ggml.model").with_context("GGUF tokenizer");
  TokenizerSpec spec;
  bool add_bos = false;
  bool add_space_prefix = true;
  std::string pre;
  if (*model == "gpt2") {
    spec.model_kind = ModelKind::kByteLevelBpe;
    pre = std::string(gguf.get_string("tokenizer.ggml.pre").value_or("default"));
    auto preset = preset_for(pre);
    if (!preset) return unimplemented("GGUF tokenizer: pre-tokenizer '" + pre + "' is not supported");
    for (const std::string& r : preset->regexes) spec.pre_tokenizer.push_back({PreTokenizerStep::Kind::kSplitRegex, r});
    if (preset->nfc) spec.normalizer.push_back({NormalizerStep::Kind::kNfc, "", ""});
    spec.ignore_merges = preset->ignore_merges;
    add_bos = preset->add_bos;
    spec.decoder.byte_level = true;
    spec.fuse_unk = true;  // as transformers' GGUF conversion sets it
  } else if (*model == "llama") {
    spec.model_kind = ModelKind::kSentencePieceBpe;
    spec.merge_order = MergeOrder::kTokenScores;
    spec.byte_fallback = true;
    spec.fuse_unk = true;
    add_bos = true;
    add_space_prefix = gguf.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
    if (add_space_prefix) spec.normalizer.push_back({NormalizerStep::Kind::kPrepend, "", kMetaspace});
    spec.normalizer.push_back({NormalizerStep::Kind::kReplace, " ", kMetaspace});
    spec.decoder.byte_fallback = true;
    spec.decoder.metaspace = kMetaspace;
    spec.decoder.num_leading_spaces_to_strip = add_space_prefix ? 1 : 0;
  } else {
    return unimplemented("GGUF tokenizer model '" + std::string(*model) + "' is not supported (gpt2 or llama)");
  }

  auto tokens = gguf.get_string_array("tokenizer.ggml.tokens");
  if (!tokens.is_ok()) return tokens.status().with_context("GGUF tokenizer");
  spec.vocab.assign(tokens->begin(), tokens->end());

  if (gguf.find("tokenizer.ggml.token_type") != nullptr) {
    auto types = gguf.get_int_array("tokenizer.ggml.token_type");
    if (!types.is_ok()) return types.status().with_context("GGUF tokenizer");
    spec.token_types.reserve(types->size());
    for (int64_t t : *types) {
      if (t < 0 || t > 6) return invalid_argument("GGUF tokenizer: token type " + std::to_string(t) + " is unknown");
      spec.token_types.push_back(static_cast<TokenType>(t));
    }
  }
  if (spec.model_kind == ModelKind::kSentencePieceBpe) {
    auto scores = gguf.get_float_array("tokenizer.ggml.scores");
    if (!scores.is_ok()) return scores.status().with_context("GGUF tokenizer (llama model needs scores)");
    spec.scores = std::move(scores).value();
  } else {
    auto merges = gguf.get_string_array("tokenizer.ggml.merges");
    if (!merges.is_ok()) return merges.status().with_context("GGUF tokenizer (gpt2 model needs merges)");
    spec.merges.reserve(merges->size());
    for (std::string_view m : *merges) {
      const size_t space = m.find(' ', 1);
      if (space == std::string_view::npos) return invalid_argument("GGUF tokenizer: malformed merge '" + std::string(m) + "'");
      spec.merges.emplace_back(std::string(m.substr(0, space)), std::string(m.substr(space + 1)));
    }
  }

  auto id_key = [&gguf](std::string_view key) -> TokenId {
    const auto v = gguf.get_uint(key);
    return v && *v < (1u << 31) ? static_cast<TokenId>(*v) : -1;
  };
  spec.bos_id = id_key("tokenizer.ggml.bos_token_id");
  spec.eos_id = id_key("tokenizer.ggml.eos_token_id");
  spec.unk_id = id_key("tokenizer.ggml.unknown_token_id");
  add_bos = gguf.get_bool("tokenizer.ggml.add_bos_token").value_or(add_bos);
  const bool add_eos = gguf.get_bool("tokenizer.ggml.add_eos_token").value_or(false);
  if (add_bos) {
    if (spec.bos_id < 0) return invalid_argument("GGUF tokenizer: add_bos_token is set but there is no bos_token_id");
    spec.prefix_ids.push_back(spec.bos_id);
  }
  if (add_eos) {
    if (spec.eos_id < 0) return invalid_argument("GGUF tokenizer: add_eos_token is set but there is no eos_token_id");
    spec.suffix_ids.push_back(spec.eos_id);
  }

  // Control, unknown and user-defined tokens are matched in the text before BPE runs.
  for (size_t id = 0; id < spec.token_types.size(); ++id) {
    const TokenType t = spec.token_types[id];
    if (t != TokenType::kControl && t != TokenType::kUserDefined && t != TokenType::kUnknown) continue;
    if (spec.vocab[id].empty()) continue;
    AddedToken a;
    a.content = spec.vocab[id];
    a.id = static_cast<TokenId>(id);
    a.special = t != TokenType::kUserDefined;
    a.normalized = !a.special;
    spec.added_tokens.push_back(std::move(a));
  }

  auto tokenizer = from_spec(std::move(spec));
  if (!tokenizer.is_ok()) return tokenizer.status().with_context("GGUF tokenizer");
  return tokenizer;
}

}  // namespace tessera::tokenizer
