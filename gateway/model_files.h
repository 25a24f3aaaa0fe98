// Finding and opening what a model path names: a GGUF file, or a Hugging Face directory
// (config.json, *.safetensors, tokenizer.json, tokenizer_config.json). Shared by the gateway
// and the launcher subcommands that read models.
#pragma once

#include <optional>
#include <string>

#include "gateway/chat_template/chat_template.h"
#include "gateway/tokenizer/tokenizer.h"
#include "tessera/common/status.h"
#include "worker/loader/gguf_file.h"

namespace tessera::model_files {

enum class ModelFormat { kGguf, kHuggingFaceDir, kTokenizerJson };

struct ModelLocation {
  std::string path;
  ModelFormat format = ModelFormat::kGguf;
};

// "default" is the test model in the cache scripts/fetch-model fills
// ($TESSERA_MODEL_CACHE or ~/.cache/tessera/models); a missing file says how to fetch it.
Result<ModelLocation> locate_model(const std::string& arg);

// The tokenizer of a GGUF file (opened by the caller), a model directory or a tokenizer.json.
Result<tokenizer::Tokenizer> load_tokenizer(const ModelLocation& where, const loader::GgufFile* gguf);

// The model's chat template, if it has one (GGUF tokenizer.chat_template, or the
// directory's tokenizer_config.json).
Result<std::optional<chat_template::ChatTemplate>> load_chat_template(const ModelLocation& where,
                                                                       const loader::GgufFile* gguf);

}  // namespace tessera::model_files
