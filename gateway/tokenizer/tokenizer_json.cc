// Front end for Hugging Face tokenizer.json: maps the pipeline objects we support onto a
// TokenizerSpec and rejects the rest by name, so an unsupported tokenizer fails at load
// rather than tokenizing subtly wrong.

#include <nlohmann/json.hpp>

#include "gateway/tokenizer/tokenizer.h"
#include "tessera/common/files.h"

namespace tessera::tokenizer {
namespace {

using Json = nlohmann::json;

constexpr const char* kMetaspace = "\xE2\x96\x81";

std::string type_of(const Json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
  return j["type"].get<std::string>();
}

Status parse_normalizer(const Json& j, TokenizerSpec& spec) {
  if (j.is_null()) return Status::ok();
  const std::string type = type_of(j);
  if (type == "Sequence") {
    for (const Json& step : j.value("normalizers", Json::array())) TESSERA_RETURN_IF_ERROR(parse_normalizer(step, spec));
    return Status::ok();
  }
  if (type == "NFC") {
    spec.normalizer.push_back({NormalizerStep::Kind::kNfc, "", ""});
    return Status::ok();
  }
  if (type == "Prepend") {
    spec.normalizer.push_back({NormalizerStep::Kind::kPrepend, "", j.at("prepend").get<std::string>()});
    return Status::ok();
  }
  if (type == "Replace") {
    const Json& pattern = j.at("pattern");
    if (!pattern.contains("String")) return unimplemented("Replace normalizer with a regex pattern");
    spec.normalizer.push_back({NormalizerStep::Kind::kReplace, pattern["String"].get<std::string>(),
                               j.at("content").get<std::string>()});
    return Status::ok();
  }
  return unimplemented("normalizer type '" + type + "' is not supported");
}

PrependScheme parse_prepend_scheme(const Json& j) {
  if (j.contains("prepend_scheme")) {
    const std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    return PrependScheme::kAlways;
  }
  return j.value("add_prefix_space", true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

Status parse_pre_tokenizer(const Json& j, TokenizerSpec& spec, bool& byte_level) {
  if (j.is_null()) return Status::ok();
  const std::string type = type_of(j);
  if (type == "Sequence") {
    for (const Json& step : j.value("pretokenizers", Json::array())) {
      TESSERA_RETURN_IF_ERROR(parse_pre_tokenizer(step, spec, byte_level));
    }
    return Status::ok();
  }
  if (type == "ByteLevel") {
    if (j.value("add_prefix_space", false)) return unimplemented("ByteLevel pre-tokenizer with add_prefix_space");
    byte_level = true;
    if (j.value("use_regex", true)) spec.pre_tokenizer.push_back({PreTokenizerStep::Kind::kSplitRegex, kGpt2Regex});
    return Status::ok();
  }
  if (type == "Split") {
    const Json& pattern = j.at("pattern");
    if (j.value("invert", false)) return unimplemented("Split pre-tokenizer with invert");
    if (j.value("behavior", std::string("Isolated")) != "Isolated") {
      return unimplemented("Split pre-tokenizer behavior '" + j.value("behavior", std::string()) + "'");
    }
    PreTokenizerStep step;
    if (pattern.contains("Regex")) {
      step.regex = pattern["Regex"].get<std::string>();
    } else {
      // A literal: quote it so PCRE2 matches it verbatim.
      step.regex = "\\Q" + pattern.at("String").get<std::string>() + "\\E";
    }
    spec.pre_tokenizer.push_back(std::move(step));
    return Status::ok();
  }
  if (type == "Digits") {
    spec.pre_tokenizer.push_back({PreTokenizerStep::Kind::kSplitRegex, j.value("individual_digits", false) ? kDigitRegex : R"(\p{N}+)"});
    return Status::ok();
  }
  if (type == "Metaspace") {
    PreTokenizerStep step;
    step.kind = PreTokenizerStep::Kind::kMetaspace;
    step.replacement = j.value("replacement", std::string(kMetaspace));
    step.prepend_scheme = parse_prepend_scheme(j);
    step.split = j.value("split", true);
    spec.pre_tokenizer.push_back(std::move(step));
    return Status::ok();
  }
  return unimplemented("pre-tokenizer type '" + type + "' is not supported");
}

Status parse_decoder(const Json& j, DecoderSpec& d) {
  if (j.is_null()) return Status::ok();
  const std::string type = type_of(j);
  if (type == "Sequence") {
    for (const Json& step : j.value("decoders", Json::array())) TESSERA_RETURN_IF_ERROR(parse_decoder(step, d));
    return Status::ok();
  }
  if (type == "ByteLevel") {
    d.byte_level = true;
  } else if (type == "ByteFallback") {
    d.byte_fallback = true;
  } else if (type == "Fuse") {
    // Every decoder we run works on the fused string.
  } else if (type == "Replace") {
    const Json& pattern = j.at("pattern");
    if (!pattern.contains("String") || j.at("content").get<std::string>() != " ") {
      return unimplemented("Replace decoder other than a literal -> \" \"");
    }
    d.metaspace = pattern["String"].get<std::string>();
  } else if (type == "Strip") {
    if (j.value("content", std::string(" ")) != " " || j.value("stop", 0) != 0) return unimplemented("Strip decoder other than leading spaces");
    d.num_leading_spaces_to_strip = j.value("start", 0);
  } else if (type == "Metaspace") {
    d.metaspace = j.value("replacement", std::string(kMetaspace));
    if (parse_prepend_scheme(j) != PrependScheme::kNever) d.num_leading_spaces_to_strip = 1;
  } else {
    return unimplemented("decoder type '" + type + "' is not supported");
  }
  return Status::ok();
}

Result<TokenId> id_of_special(const Json& processor_tokens, const std::string& name) {
  if (!processor_tokens.contains(name)) return invalid_argument("post-processor names unknown special token '" + name + "'");
  const Json& ids = processor_tokens[name].at("ids");
  if (ids.size() != 1) return unimplemented("post-processor special token '" + name + "' with several ids");
  return ids[0].get<TokenId>();
}

Status parse_post_processor(const Json& j, TokenizerSpec& spec) {
  if (j.is_null()) return Status::ok();
  const std::string type = type_of(j);
  if (type == "Sequence") {
    for (const Json& step : j.value("processors", Json::array())) TESSERA_RETURN_IF_ERROR(parse_post_processor(step, spec));
    return Status::ok();
  }
  if (type == "ByteLevel") return Status::ok();  // offsets only
  if (type == "TemplateProcessing") {
    bool seen_sequence = false;
    for (const Json& item : j.at("single")) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      auto id = id_of_special(j.at("special_tokens"), item.at("SpecialToken").at("id").get<std::string>());
      if (!id.is_ok()) return id.status();
      (seen_sequence ? spec.suffix_ids : spec.prefix_ids).push_back(*id);
    }
    return Status::ok();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    spec.prefix_ids.push_back(j.at("cls").at(1).get<TokenId>());
    spec.suffix_ids.push_back(j.at("sep").at(1).get<TokenId>());
    return Status::ok();
  }
  return unimplemented("post-processor type '" + type + "' is not supported");
}

std::pair<std::string, std::string> split_merge(const Json& m, bool& ok) {
  ok = true;
  if (m.is_array() && m.size() == 2) return {m[0].get<std::string>(), m[1].get<std::string>()};
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ', 1);  // a byte-level "Ġ" never contains a space; skip pos 0
    if (space != std::string::npos) return {s.substr(0, space), s.substr(space + 1)};
  }
  ok = false;
  return {};
}

Result<TokenizerSpec> parse(const Json& root) {
  TokenizerSpec spec;
  const Json& model = root.at("model");
  const std::string model_type = type_of(model);
  if (model_type != "BPE" && !(model_type.empty() && model.contains("merges"))) {
    return unimplemented("tokenizer model type '" + model_type + "' is not supported (only BPE)");
  }
  if (!model.value("continuing_subword_prefix", Json()).is_null() && !model["continuing_subword_prefix"].get<std::string>().empty()) {
    return unimplemented("BPE continuing_subword_prefix");
  }
  if (!model.value("end_of_word_suffix", Json()).is_null() && !model["end_of_word_suffix"].get<std::string>().empty()) {
    return unimplemented("BPE end_of_word_suffix");
  }
  if (!model.value("dropout", Json()).is_null()) return unimplemented("BPE dropout");

  const Json& vocab = model.at("vocab");
  if (!vocab.is_object()) return invalid_argument("model.vocab is not an object");
  size_t num_tokens = vocab.size();
  auto grow = [&num_tokens](const Json& id, std::string_view what) -> Status {
    const auto v = id.get<int64_t>();
    if (v < 0) return invalid_argument(std::string(what) + " has a negative id " + std::to_string(v));
    num_tokens = std::max(num_tokens, static_cast<size_t>(v) + 1);
    return Status::ok();
  };
  for (const Json& t : root.value("added_tokens", Json::array())) TESSERA_RETURN_IF_ERROR(grow(t.at("id"), "added token"));
  for (auto it = vocab.begin(); it != vocab.end(); ++it) TESSERA_RETURN_IF_ERROR(grow(it.value(), "vocabulary token"));
  if (num_tokens > (1u << 24)) return invalid_argument("vocabulary of " + std::to_string(num_tokens) + " tokens is implausible");
  spec.vocab.assign(num_tokens, std::string());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) spec.vocab[it.value().get<size_t>()] = it.key();

  const Json& merges = model.value("merges", Json::array());
  spec.merges.reserve(merges.size());
  for (const Json& m : merges) {
    bool ok = false;
    auto pair = split_merge(m, ok);
    if (!ok) return invalid_argument("malformed merge entry " + m.dump());
    spec.merges.push_back(std::move(pair));
  }
  spec.byte_fallback = model.value("byte_fallback", false);
  spec.fuse_unk = model.value("fuse_unk", false);
  spec.ignore_merges = model.value("ignore_merges", false);

  for (const Json& t : root.value("added_tokens", Json::array())) {
    AddedToken a;
    a.id = t.at("id").get<TokenId>();
    a.content = t.at("content").get<std::string>();
    a.special = t.value("special", false);
    a.lstrip = t.value("lstrip", false);
    a.rstrip = t.value("rstrip", false);
    a.single_word = t.value("single_word", false);
    a.normalized = t.value("normalized", !a.special);
    if (spec.vocab[static_cast<size_t>(a.id)].empty()) spec.vocab[static_cast<size_t>(a.id)] = a.content;
    spec.added_tokens.push_back(std::move(a));
  }
  for (size_t id = 0; id < spec.vocab.size(); ++id) {
    if (spec.vocab[id].empty()) return invalid_argument("vocabulary has no token with id " + std::to_string(id));
  }
  if (!model.value("unk_token", Json()).is_null()) {
    const std::string unk = model["unk_token"].get<std::string>();
    for (size_t id = 0; id < spec.vocab.size(); ++id) {
      if (spec.vocab[id] == unk) {
        spec.unk_id = static_cast<TokenId>(id);
        break;
      }
    }
  }

  TESSERA_RETURN_IF_ERROR(parse_normalizer(root.value("normalizer", Json()), spec));
  bool byte_level = false;
  TESSERA_RETURN_IF_ERROR(parse_pre_tokenizer(root.value("pre_tokenizer", Json()), spec, byte_level));
  TESSERA_RETURN_IF_ERROR(parse_decoder(root.value("decoder", Json()), spec.decoder));
  TESSERA_RETURN_IF_ERROR(parse_post_processor(root.value("post_processor", Json()), spec));
  spec.model_kind = byte_level || spec.decoder.byte_level ? ModelKind::kByteLevelBpe : ModelKind::kSentencePieceBpe;
  if (spec.model_kind == ModelKind::kByteLevelBpe) spec.decoder.byte_level = true;
  if (!spec.prefix_ids.empty()) spec.bos_id = spec.prefix_ids.front();
  if (!spec.suffix_ids.empty()) spec.eos_id = spec.suffix_ids.back();
  return spec;
}

}  // namespace

Result<Tokenizer> Tokenizer::from_tokenizer_json(std::string_view json_text) {
  Json root = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid_argument("tokenizer.json is not valid JSON");
  if (!root.is_object()) return invalid_argument("tokenizer.json is not a JSON object");
  if (!root.contains("model")) return invalid_argument("tokenizer.json has no \"model\"");
  Result<TokenizerSpec> spec = invalid_argument("unparsed");
  try {
    spec = parse(root);
  } catch (const Json::exception& e) {
    return invalid_argument(std::string("tokenizer.json: unexpected structure: ") + e.what());
  }
  if (!spec.is_ok()) return spec.status().with_context("tokenizer.json");
  auto tokenizer = from_spec(std::move(spec).value());
  if (!tokenizer.is_ok()) return tokenizer.status().with_context("tokenizer.json");
  return tokenizer;
}

Result<Tokenizer> Tokenizer::from_tokenizer_json_file(const std::filesystem::path& path) {
  auto text = read_file(path, "tokenizer file");
  if (!text.is_ok()) return text.status();
  auto tokenizer = from_tokenizer_json(*text);
  if (!tokenizer.is_ok()) return tokenizer.status().with_context(path.string());
  return tokenizer;
}

}  // namespace tessera::tokenizer
