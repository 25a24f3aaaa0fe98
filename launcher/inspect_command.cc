// `tessera inspect MODEL`: what a model file holds — its config, tensors, tokenizer and
// chat template — read with the same code the worker and gateway use.
#include <cstdio>
#include <map>
#include <string>

#include "launcher/commands.h"
#include "gateway/model_files.h"
#include "tessera/common/cli.h"
#include "worker/loader/safetensors_file.h"
#include "worker/models/model_config.h"

namespace tessera::launcher {
using namespace tessera::model_files;  // locate_model, load_tokenizer, load_chat_template
namespace {

struct InspectOptions {
  std::string model;
  bool list_tensors = false;
  bool list_metadata = false;
};

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

std::string dims_text(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

void print_config(const models::ModelConfig& c) {
  std::printf("config:\n");
  std::printf("  family              %s (%s)\n", std::string(models::family_name(c.family)).c_str(), c.architecture.c_str());
  std::printf("  parameters          %.1f M\n", c.num_parameters() / 1e6);
  std::printf("  layers              %u\n", c.num_layers);
  std::printf("  hidden / ffn        %u / %u\n", c.hidden_size, c.intermediate_size);
  std::printf("  heads (q / kv)      %u / %u, head_dim %u\n", c.num_attention_heads, c.num_kv_heads, c.head_dim);
  std::printf("  vocab               %u\n", c.vocab_size);
  std::printf("  context             %u tokens\n", c.max_position_embeddings);
  const char* scaling = c.rope_scaling.type == models::RopeScalingType::kLlama3   ? "llama3"
                        : c.rope_scaling.type == models::RopeScalingType::kLinear ? "linear"
                                                                                  : "none";
  std::printf("  rope                theta %g, scaling %s (factor %g)%s\n", c.rope_theta, scaling, c.rope_scaling.factor,
              c.rope_freqs_from_tensor ? ", frequencies from rope_freqs.weight" : "");
  std::printf("  rms_norm_eps        %g\n", c.rms_norm_eps);
  std::printf("  tied embeddings     %s\n", c.tie_word_embeddings ? "yes" : "no");
  std::printf("  qkv bias            %s\n", c.attention_bias ? "yes" : "no");
  if (c.sliding_window) std::printf("  sliding window      %u\n", c.sliding_window);
  if (c.family == models::ModelFamily::kMiniCpm) {
    std::printf("  scales              embedding %g, residual %g, logit %g\n", c.embedding_scale, c.residual_scale,
                c.logit_scale);
  }
  std::string eos;
  for (int32_t id : c.eos_token_ids) eos += (eos.empty() ? "" : ", ") + std::to_string(id);
  std::printf("  bos / eos / pad     %d / [%s] / %d\n", c.bos_token_id, eos.c_str(), c.pad_token_id);
  if (!c.weight_dtype.empty()) std::printf("  weights             %s\n", c.weight_dtype.c_str());
}

void print_tokenizer(const tokenizer::Tokenizer& t) {
  auto token_text = [&](std::optional<tokenizer::TokenId> id) {
    if (!id) return std::string("none");
    auto s = t.id_to_token(*id);
    return std::to_string(*id) + " " + (s ? "'" + std::string(*s) + "'" : "?");
  };
  std::printf("tokenizer:\n");
  std::printf("  model               %s\n",
              t.model_kind() == tokenizer::ModelKind::kByteLevelBpe ? "byte-level BPE" : "SentencePiece BPE (byte fallback)");
  std::printf("  vocabulary          %zu tokens, %zu merges, %zu added tokens\n", t.vocab_size(),
              t.spec().merges.size(), t.spec().added_tokens.size());
  std::printf("  bos                 %s\n", token_text(t.bos_id()).c_str());
  std::printf("  eos                 %s\n", token_text(t.eos_id()).c_str());
}

int inspect(const InspectOptions& o) {
  auto where = locate_model(o.model);
  if (!where.is_ok()) return cli::fail("tessera inspect", where.status());
  std::optional<loader::GgufFile> gguf;
  Result<models::ModelConfig> config = not_found("no config");
  if (where->format == ModelFormat::kGguf) {
    auto file = loader::GgufFile::open(where->path);
    if (!file.is_ok()) return cli::fail("tessera inspect", file.status());
    gguf.emplace(std::move(*file));
    std::printf("file: %s\n  GGUF v%u, %s, %zu tensors, %zu metadata keys, alignment %lu\n", where->path.c_str(),
                gguf->version(), human_bytes(static_cast<double>(gguf->file_size())).c_str(), gguf->tensors().size(),
                gguf->metadata().size(), static_cast<unsigned long>(gguf->alignment()));
    config = models::config_from_gguf(*gguf);
  } else if (where->format == ModelFormat::kHuggingFaceDir) {
    std::printf("directory: %s\n", where->path.c_str());
    config = models::load_hf_config(where->path);
  } else {
    std::printf("tokenizer file: %s\n", where->path.c_str());
  }
  int rc = 0;
  if (config.is_ok()) {
    print_config(*config);
  } else if (where->format != ModelFormat::kTokenizerJson) {
    std::printf("config: error: %s\n", config.status().message().c_str());
    rc = 1;
  }

  auto tok = load_tokenizer(*where, gguf ? &*gguf : nullptr);
  if (tok.is_ok()) {
    print_tokenizer(*tok);
  } else {
    std::printf("tokenizer: error: %s\n", tok.status().message().c_str());
    rc = 1;
  }
  auto chat = load_chat_template(*where, gguf ? &*gguf : nullptr);
  if (!chat.is_ok()) {
    std::printf("chat template: error: %s\n", chat.status().message().c_str());
    rc = 1;
  } else if (*chat) {
    std::printf("chat template: %zu characters, compiled\n", (*chat)->source().size());
  } else {
    std::printf("chat template: none\n");
  }

  if (gguf) {
    std::map<std::string, std::pair<int, uint64_t>> by_type;
    for (const auto& t : gguf->tensors()) {
      auto& e = by_type[std::string(kernels::cpu::ggml_type_name(t.type))];
      e.first += 1;
      e.second += t.size_bytes;
    }
    std::printf("tensor types:\n");
    for (const auto& [name, e] : by_type) {
      std::printf("  %-8s %4d tensors, %s\n", name.c_str(), e.first, human_bytes(static_cast<double>(e.second)).c_str());
    }
    if (o.list_tensors) {
      std::printf("tensors:\n");
      for (const auto& t : gguf->tensors()) {
        std::printf("  %-32s %-6s %-16s %s\n", t.name.c_str(), std::string(kernels::cpu::ggml_type_name(t.type)).c_str(),
                    dims_text(t.dims).c_str(), human_bytes(static_cast<double>(t.size_bytes)).c_str());
      }
    }
    if (o.list_metadata) {
      std::printf("metadata:\n");
      for (const auto& m : gguf->metadata()) {
        std::printf("  %s = %s\n", std::string(m.key).c_str(), m.value.to_display_string().c_str());
      }
    }
  } else if (where->format == ModelFormat::kHuggingFaceDir && o.list_tensors) {
    auto st = loader::SafetensorsModel::open(where->path);
    if (!st.is_ok()) {
      std::printf("tensors: error: %s\n", st.status().message().c_str());
      return 1;
    }
    std::printf("tensors (%zu in %zu file(s)):\n", st->num_tensors(), st->num_shards());
    for (auto name : st->tensor_names()) {
      const auto* t = st->find(name);
      std::printf("  %-48s %-5s %s\n", std::string(name).c_str(), std::string(loader::tensor_dtype_name(t->dtype)).c_str(),
                  dims_text(t->shape).c_str());
    }
  }
  return rc;
}

}  // namespace

int run_inspect(const Args& args) {
  InspectOptions o;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--tensors") {
      o.list_tensors = true;
    } else if (args[i] == "--metadata") {
      o.list_metadata = true;
    } else if (args[i].starts_with("-")) {
      return cli::usage_error(kProgram, "inspect: unknown option '" + args[i] + "'");
    } else if (o.model.empty()) {
      o.model = args[i];
    } else {
      return cli::usage_error(kProgram, "inspect takes one model path");
    }
  }
  if (o.model.empty()) return cli::usage_error(kProgram, "inspect needs a model path (or 'default')");
  return inspect(o);
}

}  // namespace tessera::launcher
