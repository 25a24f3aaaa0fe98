#include "worker/engine/engine.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <unordered_set>

#include "worker/engine/cpu_backend.h"

namespace tessera::engine {

Status EngineOptions::validate() const {
  if (num_threads < 0) return invalid_argument("num_threads must be >= 0 (0: all CPUs)");
  if (page_size < 1 || page_size > 1024) return invalid_argument("page_size must be in [1, 1024]");
  if (kv_cache_tokens < page_size) return invalid_argument("kv_cache_tokens must hold at least one page");
  if (kv_cache_bytes < 0) return invalid_argument("kv_cache_bytes must be >= 0");
  if (max_batch_tokens < 1) return invalid_argument("max_batch_tokens must be at least 1");
  if (max_sequences < 1 || max_sequences > max_batch_tokens) {
    return invalid_argument("max_sequences must be in [1, max_batch_tokens]");
  }
  return Status::ok();
}

Engine::~Engine() = default;

Result<std::unique_ptr<Engine>> Engine::load(const ModelSource& source, const EngineOptions& options) {
  TESSERA_RETURN_IF_ERROR(options.validate());
  namespace fs = std::filesystem;
  LoadFormat format = source.format;
  std::error_code ec;
  if (format == LoadFormat::kAuto) {
    if (fs::is_directory(source.path, ec)) {
      format = LoadFormat::kSafetensors;
    } else if (source.path.ends_with(".gguf")) {
      format = LoadFormat::kGguf;
    } else {
      return invalid_argument(source.path + ": not a .gguf file or a model directory");
    }
  }
  std::unique_ptr<Engine> engine(new Engine());
  engine->options_ = options;
  auto backend = std::make_unique<CpuBackend>(CpuBackendOptions{options.num_threads, options.matmul_path});
  engine->num_threads_ = backend->num_threads();
  engine->backend_ = std::move(backend);
  models::LlamaLoadOptions load;
  load.max_batch_tokens = options.max_batch_tokens;
  load.max_sample_rows = options.max_sequences;
  load.weight_mode = options.weight_mode;
  Result<std::unique_ptr<models::LlamaModel>> model = internal_error("no model");
  if (format == LoadFormat::kGguf) {
    auto file = loader::GgufFile::open(source.path);
    if (!file) return file.status();
    engine->gguf_ = std::make_unique<loader::GgufFile>(std::move(*file));
    model = models::LlamaModel::from_gguf(*engine->gguf_, *engine->backend_, load);
  } else {
    auto config = models::load_hf_config(source.path);
    if (!config) return config.status();
    if (format == LoadFormat::kDummy) {
      model = models::LlamaModel::from_dummy(*config, source.dummy_seed, *engine->backend_, load);
    } else {
      auto files = loader::SafetensorsModel::open(source.path);
      if (!files) return files.status();
      engine->safetensors_ = std::make_unique<loader::SafetensorsModel>(std::move(*files));
      model = models::LlamaModel::from_safetensors(*engine->safetensors_, *config, *engine->backend_, load);
    }
  }
  if (!model) return model.status().with_context(source.path);
  engine->model_ = std::move(*model);
  const models::ModelConfig& c = engine->model_->config();
  engine->num_pages_ = (options.kv_cache_tokens + options.page_size - 1) / options.page_size;
  if (options.kv_cache_bytes > 0) {
    const KvShape one_page{c.num_layers, 1, options.page_size, c.num_kv_heads, c.head_dim, options.kv_dtype};
    engine->num_pages_ = options.kv_cache_bytes / one_page.bytes();
    if (engine->num_pages_ < 1) {
      return invalid_argument("kv_cache_bytes " + std::to_string(options.kv_cache_bytes) + " holds no page of " +
                              std::to_string(one_page.bytes()) + " bytes");
    }
  }
  engine->kv_shape_ = {c.num_layers, engine->num_pages_, options.page_size, c.num_kv_heads, c.head_dim,
                       options.kv_dtype};
  TESSERA_RETURN_IF_ERROR(engine->backend_->allocate_kv(engine->kv_shape_));
  return engine;
}

Status Engine::check_sequence(std::span<const int32_t> token_ids, const SamplingOptions& sampling) const {
  const uint32_t vocab = config().vocab_size;
  if (token_ids.empty()) return invalid_argument("has no tokens");
  for (int32_t t : token_ids) {
    if (t < 0 || static_cast<uint32_t>(t) >= vocab) {
      return invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                              std::to_string(vocab) + ")");
    }
  }
  if (token_ids.size() > config().max_position_embeddings) {
    return invalid_argument(std::to_string(token_ids.size()) + " tokens exceed the context length " +
                            std::to_string(config().max_position_embeddings));
  }
  return sampling.validate(vocab);
}

Status Engine::check_plan(const StepInput& in) const {
  const int64_t ps = options_.page_size;
  auto page_ok = [&](int32_t page) { return page >= 0 && page < num_pages_; };
  auto bad = [](uint64_t id, const std::string& what) {
    return invalid_argument("sequence " + std::to_string(id) + ": " + what);
  };
  std::unordered_set<uint64_t> released(in.released_seq_ids.begin(), in.released_seq_ids.end());
  for (uint64_t id : in.released_seq_ids) {
    if (!sequences_.count(id)) return not_found("release of unknown sequence " + std::to_string(id));
  }
  // Sizes of the sequences as they will be when the slices run: (known tokens, computed, pages).
  struct View {
    int64_t num_tokens, num_computed, num_pages;
  };
  std::unordered_map<uint64_t, View> views;
  for (const NewSequence& s : in.new_sequences) {
    if ((sequences_.count(s.seq_id) && !released.count(s.seq_id)) || views.count(s.seq_id)) {
      return bad(s.seq_id, "already exists");
    }
    TESSERA_RETURN_IF_ERROR(check_sequence(s.token_ids, s.sampling).with_context("sequence " + std::to_string(s.seq_id)));
    if (s.num_prompt_tokens < 1 || s.num_prompt_tokens > s.token_ids.size()) {
      return bad(s.seq_id, "num_prompt_tokens must be in [1, number of tokens]");
    }
    if (s.num_cached_tokens >= s.token_ids.size()) return bad(s.seq_id, "every token is cached; nothing to compute");
    if (static_cast<int64_t>(s.cached_pages.size()) * ps < s.num_cached_tokens) {
      return bad(s.seq_id, "cached pages do not cover num_cached_tokens");
    }
    for (int32_t p : s.cached_pages) {
      if (!page_ok(p)) return bad(s.seq_id, "cached page " + std::to_string(p) + " is outside the cache");
    }
    views[s.seq_id] = {static_cast<int64_t>(s.token_ids.size()), s.num_cached_tokens,
                       static_cast<int64_t>(s.cached_pages.size())};
  }
  for (const auto& [src, dst] : in.page_copies) {
    if (!page_ok(src) || !page_ok(dst)) return invalid_argument("page copy outside the cache");
  }
  int64_t total_tokens = 0, total_samples = 0;
  std::unordered_set<uint64_t> scheduled;
  for (const ScheduledSlice& sl : in.scheduled) {
    if (!scheduled.insert(sl.seq_id).second) return bad(sl.seq_id, "scheduled twice in one step");
    View v;
    if (auto it = views.find(sl.seq_id); it != views.end()) {
      v = it->second;
    } else if (auto old = sequences_.find(sl.seq_id); old != sequences_.end() && !released.count(sl.seq_id)) {
      v = {static_cast<int64_t>(old->second.tokens.size()), old->second.num_computed,
           static_cast<int64_t>(old->second.pages.size())};
    } else {
      return bad(sl.seq_id, "is not known to this worker");
    }
    if (sl.start_position != v.num_computed) {
      return bad(sl.seq_id, "starts at " + std::to_string(sl.start_position) + " but " +
                                std::to_string(v.num_computed) + " tokens are in the cache");
    }
    const int64_t end = static_cast<int64_t>(sl.start_position) + sl.num_tokens;
    if (sl.num_tokens < 1 || end > v.num_tokens) {
      return bad(sl.seq_id, "slice of " + std::to_string(sl.num_tokens) + " tokens from " +
                                std::to_string(sl.start_position) + " goes past the " + std::to_string(v.num_tokens) +
                                " known tokens");
    }
    if (sl.sample && end != v.num_tokens) return bad(sl.seq_id, "samples before its last known token");
    if (end > config().max_position_embeddings) return bad(sl.seq_id, "exceeds the context length");
    for (int32_t p : sl.new_pages) {
      if (!page_ok(p)) return bad(sl.seq_id, "page " + std::to_string(p) + " is outside the cache");
    }
    if ((v.num_pages + static_cast<int64_t>(sl.new_pages.size())) * ps < end) {
      return bad(sl.seq_id, "pages hold " + std::to_string((v.num_pages + sl.new_pages.size()) * ps) +
                                " tokens, the slice needs " + std::to_string(end));
    }
    total_tokens += sl.num_tokens;
    total_samples += sl.sample ? 1 : 0;
  }
  if (total_tokens > options_.max_batch_tokens) {
    return invalid_argument("step has " + std::to_string(total_tokens) + " tokens; max_batch_tokens is " +
                            std::to_string(options_.max_batch_tokens));
  }
  if (total_samples > options_.max_sequences) {
    return invalid_argument("step samples " + std::to_string(total_samples) + " sequences; max_sequences is " +
                            std::to_string(options_.max_sequences));
  }
  return Status::ok();
}

Result<StepOutput> Engine::step(const StepInput& in) {
  TESSERA_RETURN_IF_ERROR(check_plan(in));
  const uint32_t vocab = config().vocab_size;
  for (uint64_t id : in.released_seq_ids) sequences_.erase(id);
  for (const NewSequence& s : in.new_sequences) {
    Sequence seq;
    seq.tokens = s.token_ids;
    seq.num_prompt_tokens = s.num_prompt_tokens;
    seq.num_computed = s.num_cached_tokens;
    seq.pages = s.cached_pages;
    const std::span<const int32_t> all(s.token_ids);
    SamplingOptions sampling = s.sampling;
    if (sampling.min_tokens > 0) {  // EOS is barred before min_tokens as the stop ids are
      const auto& eos = config().eos_token_ids;
      sampling.banned_before_min_tokens.insert(sampling.banned_before_min_tokens.end(), eos.begin(), eos.end());
    }
    seq.sampler = std::make_unique<SequenceSampler>(std::move(sampling), vocab, all.first(s.num_prompt_tokens),
                                                    all.subspan(s.num_prompt_tokens));
    sequences_[s.seq_id] = std::move(seq);
  }
  if (!in.page_copies.empty()) TESSERA_RETURN_IF_ERROR(backend_->copy_kv_pages(in.page_copies));

  token_ids_.clear();
  positions_.clear();
  slots_.clear();
  sample_rows_.clear();
  step_sequences_.clear();
  std::vector<Sequence*> sampled;
  const int64_t ps = options_.page_size;
  for (const ScheduledSlice& sl : in.scheduled) {
    Sequence& seq = sequences_.at(sl.seq_id);
    seq.pages.insert(seq.pages.end(), sl.new_pages.begin(), sl.new_pages.end());
    const int64_t begin = static_cast<int64_t>(token_ids_.size());
    for (uint32_t i = 0; i < sl.num_tokens; ++i) {
      const int64_t pos = static_cast<int64_t>(sl.start_position) + i;
      token_ids_.push_back(seq.tokens[static_cast<size_t>(pos)]);
      positions_.push_back(static_cast<int32_t>(pos));
      slots_.push_back(static_cast<int64_t>(seq.pages[static_cast<size_t>(pos / ps)]) * ps + pos % ps);
    }
    step_sequences_.push_back({begin, sl.num_tokens, sl.start_position, seq.pages});
    if (sl.sample) {
      sample_rows_.push_back(static_cast<int32_t>(token_ids_.size() - 1));
      sampled.push_back(&seq);
    }
  }
  StepOutput out;
  if (token_ids_.empty()) return out;
  const StepLayout layout{token_ids_, positions_, slots_, step_sequences_};
  TESSERA_RETURN_IF_ERROR(backend_->begin_step(layout));
  TESSERA_RETURN_IF_ERROR(model_->forward(layout, sample_rows_));
  // The KV of every scheduled token is now cached, whatever happens to sampling.
  for (const ScheduledSlice& sl : in.scheduled) sequences_.at(sl.seq_id).num_computed += sl.num_tokens;

  const int64_t num_sampled = static_cast<int64_t>(sampled.size());
  logits_.resize(static_cast<size_t>(num_sampled) * vocab);
  TESSERA_RETURN_IF_ERROR(backend_->download(model_->logits(), num_sampled * vocab, logits_));
  if (in.return_logits) out.logits = logits_;
  out.sampled.resize(sampled.size());
  size_t si = 0;
  for (const ScheduledSlice& sl : in.scheduled) {
    if (sl.sample) out.sampled[si++].seq_id = sl.seq_id;
  }
  // Each sequence's sampler is its own; rows are independent.
#pragma omp parallel for schedule(dynamic, 1) if (num_sampled > 1)
  for (int64_t i = 0; i < num_sampled; ++i) {
    std::span<float> row(logits_.data() + i * vocab, vocab);
    Result<SampleResult> r = sampled[static_cast<size_t>(i)]->sampler->sample(row);
    if (r) {
      out.sampled[static_cast<size_t>(i)].sample = std::move(*r);
      sampled[static_cast<size_t>(i)]->tokens.push_back(out.sampled[static_cast<size_t>(i)].sample.token_id);
    } else {
      out.sampled[static_cast<size_t>(i)].status = r.status();
    }
  }
  return out;
}

}  // namespace tessera::engine
