// `tessera generate`: offline generation in-process (engine + tokenizer, no services),
// and with --benchmark the engine throughput workload of scripts/bench/cpu-engine.
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "launcher/arg_parse.h"
#include "launcher/commands.h"
#include "launcher/generate_options.h"
#include "gateway/model_files.h"
#include "tessera/common/cli.h"
#include "worker/engine/offline_runner.h"

namespace tessera::launcher {
using namespace tessera::model_files;  // locate_model, load_tokenizer, load_chat_template
namespace {

// Prefix of this command's error messages.
constexpr const char* kWho = "tessera generate";

}  // namespace

GenerateOptions parse_generate_args(const Args& args) {
  GenerateOptions o;
  o.sampling.temperature = 0.0f;
  auto need = [&](size_t& i, const std::string& name) -> std::optional<std::string> {
    if (i + 1 >= args.size()) {
      o.error = name + " needs a value";
      return std::nullopt;
    }
    return args[++i];
  };
  for (size_t i = 1; i < args.size() && o.error.empty(); ++i) {
    std::string a = args[i];
    std::optional<std::string> inline_value;
    if (a.starts_with("--") && a.find('=') != std::string::npos) {
      inline_value = a.substr(a.find('=') + 1);
      a = a.substr(0, a.find('='));
    }
    auto value = [&]() { return inline_value ? inline_value : need(i, a); };
    auto number = [&](auto* out) {
      auto v = value();
      if (v && !parse_number(*v, out)) o.error = a + ": '" + *v + "' is not a valid number";
    };
    if (a == "--model" || a == "-m") {
      if (auto v = value()) o.model = *v;
    } else if (a == "--prompt" || a == "-p") {
      o.prompt = value();
    } else if (a == "--prompt-ids") {
      std::vector<int32_t> ids;
      auto v = value();
      if (v && !parse_list(*v, &ids)) o.error = "--prompt-ids: expected comma-separated token ids";
      o.prompt_ids = ids;
    } else if (a == "--chat") {
      o.chat = true;
    } else if (a == "--max-tokens" || a == "-n") {
      number(&o.max_tokens);
    } else if (a == "--temperature") {
      number(&o.sampling.temperature);
    } else if (a == "--top-p") {
      number(&o.sampling.top_p);
    } else if (a == "--top-k") {
      number(&o.sampling.top_k);
    } else if (a == "--min-p") {
      number(&o.sampling.min_p);
    } else if (a == "--repetition-penalty") {
      number(&o.sampling.repetition_penalty);
    } else if (a == "--presence-penalty") {
      number(&o.sampling.presence_penalty);
    } else if (a == "--frequency-penalty") {
      number(&o.sampling.frequency_penalty);
    } else if (a == "--seed") {
      number(&o.sampling.seed);
    } else if (a == "--logprobs") {
      number(&o.num_logprobs);
    } else if (a == "--ignore-eos") {
      o.ignore_eos = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--threads") {
      number(&o.engine.num_threads);
    } else if (a == "--page-size") {
      number(&o.engine.page_size);
    } else if (a == "--kv-cache-tokens") {
      number(&o.engine.kv_cache_tokens);
    } else if (a == "--max-batch-tokens") {
      number(&o.engine.max_batch_tokens);
    } else if (a == "--dequantize") {
      // The reference path: float32 weights and a float32 KV cache.
      o.engine.weight_mode = models::WeightMode::kDequantizeF32;
      o.engine.kv_dtype = engine::KvDtype::kF32;
    } else if (a == "--device") {
      auto v = value();
      if (v && *v == "cpu") {
        o.engine.device = engine::EngineDevice::kCpu;
      } else if (v && *v == "cuda") {
        o.engine.device = engine::EngineDevice::kCuda;
      } else if (v) {
        o.error = "--device: expected cpu or cuda";
      }
    } else if (a == "--kv-dtype") {
      auto v = value();
      if (v && *v == "f16") {
        o.engine.kv_dtype = engine::KvDtype::kF16;
      } else if (v && *v == "f32") {
        o.engine.kv_dtype = engine::KvDtype::kF32;
      } else if (v) {
        o.error = "--kv-dtype: expected f16 or f32";
      }
    } else if (a == "--load-format") {
      auto v = value();
      if (v && *v == "auto") {
        o.load_format = engine::LoadFormat::kAuto;
      } else if (v && *v == "gguf") {
        o.load_format = engine::LoadFormat::kGguf;
      } else if (v && *v == "safetensors") {
        o.load_format = engine::LoadFormat::kSafetensors;
      } else if (v && *v == "dummy") {
        o.load_format = engine::LoadFormat::kDummy;
      } else if (v) {
        o.error = "--load-format: expected auto, gguf, safetensors or dummy";
      }
    } else if (a == "--dummy-seed") {
      number(&o.dummy_seed);
    } else if (a == "--benchmark") {
      o.benchmark = true;
    } else if (a == "--prompt-tokens") {
      number(&o.bench_prompt_tokens);
    } else if (a == "--decode-prompt-tokens") {
      number(&o.bench_decode_prompt_tokens);
    } else if (a == "--decode-tokens") {
      number(&o.bench_decode_tokens);
    } else if (a == "--repeats") {
      number(&o.bench_repeats);
    } else if (a == "--concurrency") {
      auto v = value();
      if (v && !parse_list(*v, &o.bench_concurrency)) o.error = "--concurrency: expected a list like 1,4,16";
    } else {
      o.error = "unknown option '" + a + "'";
    }
  }
  if (o.error.empty() && !o.benchmark && !o.prompt && !o.prompt_ids) o.error = "give --prompt TEXT or --prompt-ids IDS";
  if (o.error.empty() && o.prompt && o.prompt_ids) o.error = "--prompt and --prompt-ids exclude each other";
  if (o.error.empty() && o.num_logprobs > 20) o.error = "--logprobs is at most 20";
  return o;
}

int run_generate(const Args& args) {
  GenerateOptions o = parse_generate_args(args);
  if (!o.error.empty()) return cli::usage_error(kProgram, "generate: " + o.error);
  auto where = locate_model(o.model);
  if (!where) return cli::fail(kWho, where.status());
  if (where->format == ModelFormat::kTokenizerJson) {
    return cli::fail(kWho, invalid_argument(where->path + ": a tokenizer alone; give a GGUF file or a model directory"));
  }
  const engine::ModelSource source{where->path, o.load_format, o.dummy_seed};
  if (o.benchmark) return run_generate_benchmark(o, source);

  // The tokenizer: the GGUF's own, or the directory's tokenizer.json (a dummy model's
  // config directory may have none: then only --prompt-ids work and ids are printed).
  std::optional<loader::GgufFile> gguf;
  if (where->format == ModelFormat::kGguf) {
    auto file = loader::GgufFile::open(where->path);
    if (!file) return cli::fail(kWho, file.status());
    gguf.emplace(std::move(*file));
  }
  std::optional<tokenizer::Tokenizer> tok;
  if (gguf || std::filesystem::exists(std::filesystem::path(where->path) / "tokenizer.json")) {
    auto t = load_tokenizer(*where, gguf ? &*gguf : nullptr);
    if (!t) return cli::fail(kWho, t.status());
    tok.emplace(std::move(*t));
  }
  std::vector<int32_t> prompt;
  if (o.prompt_ids) {
    prompt = *o.prompt_ids;
  } else {
    if (!tok) return cli::fail(kWho, failed_precondition(where->path + " has no tokenizer: use --prompt-ids"));
    std::string text = *o.prompt;
    if (o.chat) {
      auto tmpl = load_chat_template(*where, gguf ? &*gguf : nullptr);
      if (!tmpl) return cli::fail(kWho, tmpl.status());
      if (!*tmpl) return cli::fail(kWho, failed_precondition("--chat: the model has no chat template"));
      chat_template::ChatRenderRequest req;
      req.messages.push_back({{"role", "user"}, {"content", text}});
      req.add_generation_prompt = true;
      auto rendered = (*tmpl)->render(req);
      if (!rendered) return cli::fail(kWho, rendered.status());
      text = *rendered;
    }
    tokenizer::EncodeOptions eo;
    // A rendered chat prompt carries its own special tokens.
    if (o.chat) eo.add_special_tokens = tokenizer::SpecialTokens::kNone;
    auto ids = tok->encode(text, eo);
    if (!ids) return cli::fail(kWho, ids.status());
    prompt.assign(ids->begin(), ids->end());
  }

  engine::EngineOptions eopts = o.engine;
  eopts.max_sequences = 1;
  eopts.kv_cache_tokens = std::max<int64_t>(eopts.kv_cache_tokens, static_cast<int64_t>(prompt.size()) + o.max_tokens);
  const auto load_start = std::chrono::steady_clock::now();
  auto engine = engine::Engine::load(source, eopts);
  if (!engine) return cli::fail(kWho, engine.status());
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  engine::GenerationRequest request;
  request.prompt = prompt;
  request.sampling = o.sampling;
  request.sampling.logprobs = o.num_logprobs > 0;
  request.sampling.num_top_logprobs = o.num_logprobs;
  request.max_tokens = o.max_tokens;
  request.ignore_eos = o.ignore_eos;
  engine::OfflineRunner runner(**engine, {});
  const auto start = std::chrono::steady_clock::now();
  auto results = runner.run({&request, 1});
  if (!results) return cli::fail(kWho, results.status());
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const engine::GenerationResult& r = (*results)[0];
  if (r.finish == engine::GenerationFinish::kError) return cli::fail(kWho, r.error);
  std::string text;
  if (tok) {
    std::vector<tokenizer::TokenId> out_ids(r.tokens.begin(), r.tokens.end());
    auto decoded = tok->decode(out_ids, {tokenizer::SpecialTokenOutput::kSkip});
    if (!decoded) return cli::fail(kWho, decoded.status());
    text = *decoded;
  } else {
    for (int32_t id : r.tokens) text += (text.empty() ? "" : " ") + std::to_string(id);
  }

  if (o.json) {
    nlohmann::json j;
    j["prompt_token_ids"] = prompt;
    j["token_ids"] = r.tokens;
    j["text"] = text;
    j["finish_reason"] = engine::generation_finish_name(r.finish);
    if (o.num_logprobs > 0) {
      nlohmann::json lps = nlohmann::json::array();
      for (const auto& s : r.samples) {
        nlohmann::json top = nlohmann::json::array();
        for (const auto& t : s.top) top.push_back({{"token_id", t.token_id}, {"logprob", t.logprob}});
        lps.push_back({{"token_id", s.token_id}, {"logprob", s.logprob}, {"top", top}});
      }
      j["logprobs"] = lps;
    }
    j["seconds"] = gen_s;
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", text.c_str());
  }
  std::fprintf(stderr, "tessera generate: %s; loaded in %.2f s; %zu prompt + %zu generated tokens in %.3f s (%s)\n",
               (*engine)->backend_name().c_str(), load_s, prompt.size(), r.tokens.size(), gen_s,
               engine::generation_finish_name(r.finish));
  return 0;
}

}  // namespace tessera::launcher
