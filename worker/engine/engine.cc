#include "worker/engine/engine.h"

#include <omp.h>

#include <algorithm>
#include <filesystem>
#include <unordered_set>

#include "worker/engine/cpu_backend.h"
#if TESSERA_WITH_CUDA
#include "worker/engine/cuda_backend.h"
#endif

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
  if (!(gpu_memory_utilization > 0 && gpu_memory_utilization <= 1)) {
    return invalid_argument("gpu_memory_utilization must be in (0, 1]");
  }
  if (device_index < 0) return invalid_argument("device_index must be >= 0");
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
  if (options.device == EngineDevice::kCuda) {
#if TESSERA_WITH_CUDA
    CudaBackendOptions cuda;
    cuda.device_index = options.device_index;
    cuda.gpu_memory_utilization = options.gpu_memory_utilization;
    cuda.max_batch_tokens = options.max_batch_tokens;
    cuda.max_sequences = options.max_sequences;
    cuda.cuda_graphs = options.cuda_graphs;
    auto backend = CudaBackend::create(cuda);
    if (!backend) return backend.status();
    if (options.cuda_graphs) engine->cuda_ = backend->get();
    engine->backend_ = std::move(*backend);
    engine->options_.kv_dtype = KvDtype::kBF16;
#else
    return unimplemented("device cuda: this build has no CUDA backend (built with TESSERA_CUDA=OFF or without nvcc)");
#endif
  } else {
    auto backend = std::make_unique<CpuBackend>(CpuBackendOptions{options.num_threads, options.matmul_path});
    engine->num_threads_ = backend->num_threads();
    engine->backend_ = std::move(backend);
  }
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
  const KvDtype kv_dtype = engine->options_.kv_dtype;
  const KvShape one_page{c.num_layers, 1, options.page_size, c.num_kv_heads, c.head_dim, kv_dtype};
  engine->num_pages_ = (options.kv_cache_tokens + options.page_size - 1) / options.page_size;
  // A device backend sizes the pool from what is left of its memory budget.
  const int64_t budget = options.kv_cache_bytes > 0 ? options.kv_cache_bytes : engine->backend_->kv_budget_bytes();
  if (budget > 0) {
    engine->num_pages_ = budget / one_page.bytes();
    if (engine->num_pages_ < 1 && options.kv_cache_bytes > 0) {
      return invalid_argument("kv_cache_bytes " + std::to_string(budget) + " holds no page of " +
                              std::to_string(one_page.bytes()) + " bytes");
    }
    if (engine->num_pages_ < 1) {
      return resource_exhausted("after the weights and activations, gpu_memory_utilization leaves " +
                                std::to_string(budget) + " bytes for the KV cache: not enough for its pages of " +
                                std::to_string(one_page.bytes()) + " bytes (raise it, or use a smaller model)");
    }
  }
  engine->kv_shape_ = {c.num_layers, engine->num_pages_, options.page_size, c.num_kv_heads, c.head_dim, kv_dtype};
  if (engine->cuda_) {
    // Graph steps pad their batch; the padding rows write into one page nobody else gets.
    if (budget > 0 && engine->num_pages_ > 1) --engine->num_pages_;
    engine->scratch_page_ = static_cast<int32_t>(engine->num_pages_);
    engine->kv_shape_.num_pages = engine->num_pages_ + 1;
  }
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
      if (old->second.failed) {
        total_samples += sl.sample ? 1 : 0;  // skipped: its last sample failed (Sequence::failed)
        continue;
      }
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
  const auto start = std::chrono::steady_clock::now();
  forward_begin_ = forward_end_ = {};
  Result<StepOutput> out = run_step(in);
  if (forward_end_ != std::chrono::steady_clock::time_point{}) {
    const auto seconds = [](auto d) { return std::chrono::duration<double>(d).count(); };
    phase_seconds_.prepare += seconds(forward_begin_ - start);
    phase_seconds_.forward += seconds(forward_end_ - forward_begin_);
    phase_seconds_.sample += seconds(std::chrono::steady_clock::now() - forward_end_);
  }
  return out;
}

Result<StepOutput> Engine::run_step(const StepInput& in) {
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
  std::vector<uint64_t> skipped;  // slices of sequences whose last sample failed
  const int64_t ps = options_.page_size;
  for (const ScheduledSlice& sl : in.scheduled) {
    Sequence& seq = sequences_.at(sl.seq_id);
    if (seq.failed) {
      skipped.push_back(sl.seq_id);
      continue;
    }
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
  // The skipped sequences' samples fail again, after the others (whose order the logits
  // rows follow).
  auto with_skipped = [&]() -> StepOutput {
    for (uint64_t id : skipped) {
      SampledToken failed;
      failed.seq_id = id;
      failed.status = internal_error("sampler: an earlier sample of this sequence failed");
      out.sampled.push_back(std::move(failed));
    }
    return std::move(out);
  };
  if (token_ids_.empty()) return with_skipped();
  const StepLayout layout{token_ids_, positions_, slots_, step_sequences_, sample_rows_};
  forward_begin_ = std::chrono::steady_clock::now();
  TESSERA_RETURN_IF_ERROR(run_forward(layout));
  forward_end_ = std::chrono::steady_clock::now();
  // The KV of every scheduled token is now cached, whatever happens to sampling.
  for (const ScheduledSlice& sl : in.scheduled) {
    if (Sequence& seq = sequences_.at(sl.seq_id); !seq.failed) seq.num_computed += sl.num_tokens;
  }

  const int64_t num_sampled = static_cast<int64_t>(sampled.size());
  out.sampled.resize(sampled.size());
  size_t si = 0;
  for (const ScheduledSlice& sl : in.scheduled) {
    if (sl.sample && !sequences_.at(sl.seq_id).failed) out.sampled[si++].seq_id = sl.seq_id;
  }
  // On the device: greedy rows by argmax when every row is plain greedy, else the full
  // sampler; only the ids travel. Logprobs need the whole row here, so they come down.
  const bool all_greedy =
      backend_->device_argmax() && !in.return_logits &&
      std::all_of(sampled.begin(), sampled.end(), [](const Sequence* s) { return s->sampler->plain_greedy(); });
  const bool on_device =
      all_greedy || (backend_->device_sampling() && !in.return_logits &&
                     std::none_of(sampled.begin(), sampled.end(),
                                  [](const Sequence* s) { return s->sampler->options().logprobs; }));
  if (on_device && num_sampled > 0) {
    device_ids_.resize(static_cast<size_t>(num_sampled));
    if (all_greedy) {
      TESSERA_RETURN_IF_ERROR(backend_->argmax(model_->logits(), num_sampled, vocab, device_ids_));
    } else {
      device_rows_.clear();
      device_edits_.clear();
      for (const Sequence* seq : sampled) device_rows_.push_back(seq->sampler->device_row(device_edits_));
      TESSERA_RETURN_IF_ERROR(backend_->sample(model_->logits(), vocab, device_rows_, device_edits_, device_ids_));
    }
    for (int64_t i = 0; i < num_sampled; ++i) {
      Sequence& seq = *sampled[static_cast<size_t>(i)];
      const int32_t token = device_ids_[static_cast<size_t>(i)];
      SampledToken& result = out.sampled[static_cast<size_t>(i)];
      if (token < 0) {  // as on the CPU: this sequence fails, the rest of the batch goes on
        result.status = internal_error("sampler: logits are all NaN or -inf");
        seq.failed = true;
        continue;
      }
      seq.sampler->accept(token);
      seq.tokens.push_back(token);
      result.sample.token_id = token;
    }
    return with_skipped();
  }
  logits_.resize(static_cast<size_t>(num_sampled) * vocab);
  TESSERA_RETURN_IF_ERROR(backend_->download(model_->logits(), num_sampled * vocab, logits_));
  if (in.return_logits) out.logits = logits_;
  // Each sequence's sampler is its own; rows are independent.
#pragma omp parallel for schedule(dynamic, 1) if (num_sampled > 1)
  for (int64_t i = 0; i < num_sampled; ++i) {
    std::span<float> row(logits_.data() + i * vocab, vocab);
    Sequence& seq = *sampled[static_cast<size_t>(i)];
    SampledToken& result = out.sampled[static_cast<size_t>(i)];
    Result<SampleResult> r = seq.sampler->sample(row);
    if (r) {
      result.sample = std::move(*r);
      seq.tokens.push_back(result.sample.token_id);
    } else {
      result.status = r.status();
      seq.failed = true;
    }
  }
  return with_skipped();
}

Status Engine::run_forward(const StepLayout& layout) {
  if (cuda_ && layout.decode_only() && layout.sample_rows.size() == layout.token_ids.size()) return run_graph(layout);
  TESSERA_RETURN_IF_ERROR(backend_->begin_step(layout));
  return model_->forward(layout);
}

#if TESSERA_WITH_CUDA
namespace {

// Batch sizes graphs are captured for: a step runs in the smallest that holds it. Every 16
// rows up to 256 and every 32 up to 512, since padding rows cost what real rows cost in
// the matrix products: a served batch of 162 rows ran padded to 192 (13.5 ms a step at
// context 420 on the H100, against 11.5 ms for 160 rows).
constexpr int64_t kGraphBatches[] = {1,   2,   4,   8,   16,  24,  32,  48,  64,  80,  96,  112, 128, 144, 160,
                                     176, 192, 208, 224, 240, 256, 288, 320, 352, 384, 416, 448, 480, 512};

int64_t graph_batch(int64_t n) {
  for (int64_t b : kGraphBatches) {
    if (n <= b) return b;
  }
  return 0;  // larger batches run eagerly
}

}  // namespace

int64_t Engine::graph_context(int64_t longest) const {
  // Contexts in powers of two from 256 (the decode split is planned for the bucket's top).
  int64_t context = 256;
  while (context < longest) context *= 2;
  return std::min<int64_t>(context, std::max<int64_t>(longest, config().max_position_embeddings));
}

const StepLayout& Engine::padded_layout(const StepLayout& layout, int64_t batch) {
  const int64_t n = layout.num_tokens();
  const int64_t ps = options_.page_size;
  // The padded layout: real rows first, then rows that read and write the scratch page.
  pad_ids_.assign(layout.token_ids.begin(), layout.token_ids.end());
  pad_positions_.assign(layout.positions.begin(), layout.positions.end());
  pad_slots_.assign(layout.kv_slots.begin(), layout.kv_slots.end());
  pad_sequences_.assign(layout.sequences.begin(), layout.sequences.end());
  scratch_table_.assign(1, scratch_page_);
  pad_rows_.resize(static_cast<size_t>(batch));
  for (int64_t r = 0; r < batch; ++r) pad_rows_[static_cast<size_t>(r)] = static_cast<int32_t>(r);
  for (int64_t r = n; r < batch; ++r) {
    pad_ids_.push_back(0);
    pad_positions_.push_back(0);
    pad_slots_.push_back(static_cast<int64_t>(scratch_page_) * ps);
    pad_sequences_.push_back({r, 1, 0, scratch_table_});
  }
  padded_ = StepLayout{pad_ids_, pad_positions_, pad_slots_, pad_sequences_, pad_rows_};
  return padded_;
}

Status Engine::graph_step(const StepLayout& padded, int64_t batch, int64_t context, bool replay) {
  const int64_t width = (context + options_.page_size - 1) / options_.page_size;
  const uint64_t key = static_cast<uint64_t>(batch) << 32 | static_cast<uint64_t>(context);
  cuda_->set_graph_shape({width, context});
  Status s = backend_->begin_step(padded);
  if (s.is_ok() && !cuda_->has_graph(key)) {
    // One eager run first: it picks the GEMM algorithms (timing them synchronizes, which a
    // capture cannot), then the capture records the same operations.
    s = model_->forward(padded);
    if (s.is_ok()) s = cuda_->begin_capture();
    if (s.is_ok()) {
      const Status forward = model_->forward(padded);
      const Status end = cuda_->end_capture(key, forward.is_ok());
      s = forward.is_ok() ? end : forward;
    }
  }
  if (s.is_ok() && replay) s = cuda_->replay(key);
  cuda_->set_graph_shape({});
  return s;
}

Status Engine::run_graph(const StepLayout& layout) {
  const int64_t n = layout.num_tokens();
  const int64_t batch = std::min<int64_t>(graph_batch(n), options_.max_sequences);
  if (batch < n) {
    TESSERA_RETURN_IF_ERROR(backend_->begin_step(layout));
    return model_->forward(layout);
  }
  int64_t longest = 1;
  for (const StepSequence& s : layout.sequences) longest = std::max(longest, s.start_position + 1);
  return graph_step(padded_layout(layout, batch), batch, graph_context(longest), /*replay=*/true);
}

Result<int64_t> Engine::capture_graphs(int64_t max_context) {
  if (!cuda_) return int64_t{0};
  const size_t before = cuda_->num_graphs();
  const StepLayout none{};
  int64_t last_batch = 0;
  for (int64_t b : kGraphBatches) {
    const int64_t batch = std::min<int64_t>(b, options_.max_sequences);
    if (batch == last_batch) break;  // every batch past max_sequences runs in max_sequences
    last_batch = batch;
    // The context buckets a step can fall in, smallest first: steps whose longest sequence
    // is 1, 257, 513, ... tokens (as far as the model's context and max_context allow).
    int64_t last_context = 0;
    for (int64_t longest = 1; longest <= config().max_position_embeddings; longest = last_context + 1) {
      const int64_t context = graph_context(longest);
      if (context > max_context) break;
      TESSERA_RETURN_IF_ERROR(graph_step(padded_layout(none, batch), batch, context, /*replay=*/false));
      last_context = context;
    }
  }
  return static_cast<int64_t>(cuda_->num_graphs() - before);
}
#else
Status Engine::run_graph(const StepLayout&) { return internal_error("CUDA graphs in a build without CUDA"); }
Result<int64_t> Engine::capture_graphs(int64_t) { return int64_t{0}; }
#endif

}  // namespace tessera::engine
