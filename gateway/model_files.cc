#include "gateway/model_files.h"

#include <cstdlib>
#include <filesystem>

#include "tessera/common/config.h"

namespace tessera::model_files {
namespace fs = std::filesystem;

Result<ModelLocation> locate_model(const std::string& arg) {
  std::string path = arg;
  if (arg == "default") {
    ModelSettings settings;  // the default cache directory, or $TESSERA_MODEL_CACHE
    auto resolved = resolve_model_path(settings);
    if (!resolved) return resolved.status();
    path = *resolved;
  }
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    if (!fs::exists(fs::path(path) / "config.json") && !fs::exists(fs::path(path) / "tokenizer.json")) {
      return not_found(path + ": a model directory needs config.json or tokenizer.json");
    }
    return ModelLocation{path, ModelFormat::kHuggingFaceDir};
  }
  if (!fs::exists(path, ec)) return not_found(path + ": no such file or directory");
  if (fs::path(path).filename() == "tokenizer.json") return ModelLocation{path, ModelFormat::kTokenizerJson};
  return ModelLocation{path, ModelFormat::kGguf};
}

Result<tokenizer::Tokenizer> load_tokenizer(const ModelLocation& where, const loader::GgufFile* gguf) {
  switch (where.format) {
    case ModelFormat::kGguf:
      if (gguf == nullptr) return internal_error("load_tokenizer: GGUF file not opened");
      return tokenizer::Tokenizer::from_gguf(*gguf);
    case ModelFormat::kTokenizerJson:
      return tokenizer::Tokenizer::from_tokenizer_json_file(where.path);
    case ModelFormat::kHuggingFaceDir: {
      fs::path json = fs::path(where.path) / "tokenizer.json";
      if (!fs::exists(json)) return not_found(where.path + ": no tokenizer.json");
      return tokenizer::Tokenizer::from_tokenizer_json_file(json);
    }
  }
  return internal_error("unknown model format");
}

Result<std::optional<chat_template::ChatTemplate>> load_chat_template(const ModelLocation& where,
                                                                       const loader::GgufFile* gguf) {
  using Maybe = std::optional<chat_template::ChatTemplate>;
  if (where.format == ModelFormat::kGguf && gguf != nullptr) {
    auto text = gguf->get_string("tokenizer.chat_template");
    if (!text) return Maybe{};
    auto t = chat_template::ChatTemplate::from_string(*text);
    if (!t.is_ok()) return t.status().with_context("tokenizer.chat_template");
    return Maybe{std::move(*t)};
  }
  fs::path dir = where.format == ModelFormat::kHuggingFaceDir ? fs::path(where.path) : fs::path(where.path).parent_path();
  fs::path config = dir / "tokenizer_config.json";
  if (!fs::exists(config)) return Maybe{};
  auto t = chat_template::ChatTemplate::from_tokenizer_config_file(config);
  if (!t.is_ok()) {
    // A tokenizer_config.json without a chat_template is common (base models).
    if (t.status().code() == StatusCode::kNotFound) return Maybe{};
    return t.status();
  }
  return Maybe{std::move(*t)};
}

}  // namespace tessera::model_files
