// The worker's engine: the model, its backend, the paged KV cache and the per-sequence
// state a step needs, driven one step at a time.
//
// A step plan (StepInput) carries only deltas, as the router's StepPlan does: sequences
// that are new (with every known token), which sequences advance by how many tokens and
// with which new pages, and which are released. The engine checks the whole plan before
// changing anything, so a bad plan fails alone and leaves every sequence as it was.
//
// Thread: one step thread calls everything; kernels fan out to the OpenMP team.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "worker/engine/backend.h"
#include "worker/engine/sampler.h"
#include "worker/loader/gguf_file.h"
#include "worker/models/llama_model.h"

namespace tessera::engine {

class CudaBackend;

enum class EngineDevice { kCpu, kCuda };

struct EngineOptions {
  EngineDevice device = EngineDevice::kCpu;
  int device_index = 0;                 // CUDA: which visible device
  double gpu_memory_utilization = 0.9;  // CUDA: share of the device's memory this engine may use
                                        // (weights, activations, then the KV pool gets the rest)
  bool cuda_graphs = true;              // CUDA: replay decode-only steps as captured graphs
  int num_threads = 0;               // 0: every CPU in this process's affinity mask
  int64_t page_size = 16;            // tokens per KV page; 1 = token-level
  int64_t kv_cache_tokens = 8192;    // CPU: KV capacity, rounded up to whole pages
  // > 0: KV capacity in bytes instead (overrides kv_cache_tokens, and CUDA's share of
  // gpu_memory_utilization).
  int64_t kv_cache_bytes = 0;
  KvDtype kv_dtype = KvDtype::kF16;  // kF32 for the CPU reference path; CUDA keeps bf16
                                     // whatever this says (its 16-bit type)
  int64_t max_batch_tokens = 512;    // tokens per step (prefill chunks + decodes)
  int64_t max_sequences = 64;        // sequences sampled per step
  models::WeightMode weight_mode = models::WeightMode::kNative;
  kernels::cpu::MatmulPath matmul_path = kernels::cpu::MatmulPath::kAuto;
  [[nodiscard]] Status validate() const;
};

// Where the weights come from.
enum class LoadFormat {
  kAuto,         // a .gguf file, or a Hugging Face directory (config.json + *.safetensors)
  kGguf,
  kSafetensors,  // a Hugging Face directory
  kDummy,        // a config.json (or its directory) filled with seeded random weights
};

struct ModelSource {
  std::string path;
  LoadFormat format = LoadFormat::kAuto;
  uint64_t dummy_seed = 0;
};

struct NewSequence {
  uint64_t seq_id = 0;
  std::vector<int32_t> token_ids;  // the prompt, then tokens generated before a recompute
  uint32_t num_prompt_tokens = 0;
  SamplingOptions sampling;
  // Pages already holding the KV of the first num_cached_tokens tokens (prefix cache).
  std::vector<int32_t> cached_pages;
  uint32_t num_cached_tokens = 0;
};

struct ScheduledSlice {
  uint64_t seq_id = 0;
  uint32_t start_position = 0;  // tokens already in the cache
  uint32_t num_tokens = 0;      // computed now
  std::vector<int32_t> new_pages;
  bool sample = false;          // sample after this slice (it must end at the last known token)
};

struct StepInput {
  std::vector<NewSequence> new_sequences;
  std::vector<ScheduledSlice> scheduled;
  std::vector<uint64_t> released_seq_ids;
  std::vector<std::pair<int32_t, int32_t>> page_copies;  // (src, dst) before the step
  bool return_logits = false;  // also return the sampled rows' logits (tests, scoring)
};

struct SampledToken {
  uint64_t seq_id = 0;
  // Not OK when this sequence's logits were unusable (all NaN/-inf): the sequence gets
  // no token and should be failed; the rest of the batch is unaffected.
  Status status;
  SampleResult sample;
};

struct StepOutput {
  // One per slice with sample, in plan order; then the failures of slices skipped because
  // their sequence's last sample failed (Sequence::failed).
  std::vector<SampledToken> sampled;
  std::vector<float> logits;          // [sampled.size(), vocab] when return_logits
};

// Where step() spends its time, summed over the steps that ran a forward pass: building
// the step's batch (prepare); the forward pass (forward: on a GPU, enqueuing it, which
// returns before the device is done); sampling and bookkeeping after it (sample: on a GPU
// this includes waiting for the device, since the token ids are what is waited on).
struct StepPhaseSeconds {
  double prepare = 0;
  double forward = 0;
  double sample = 0;
};

class Engine {
 public:
  // Opens the model and loads it on the CPU backend.
  [[nodiscard]] static Result<std::unique_ptr<Engine>> load(const ModelSource& source, const EngineOptions& options);
  [[nodiscard]] static Result<std::unique_ptr<Engine>> load_gguf(const std::string& path, const EngineOptions& options) {
    return load({path, LoadFormat::kGguf, 0}, options);
  }

  [[nodiscard]] Result<StepOutput> step(const StepInput& input);
  const StepPhaseSeconds& phase_seconds() const { return phase_seconds_; }
  // Whether a sequence of these tokens and sampling options can run here at all: tokens
  // present, inside the vocabulary and the context, options valid. step() refuses a new
  // sequence that fails this; callers can ask before building a plan.
  [[nodiscard]] Status check_sequence(std::span<const int32_t> token_ids, const SamplingOptions& sampling) const;
  // CUDA with graphs on: captures now the decode graphs of every batch bucket up to
  // max_sequences, for the context buckets up to max_context tokens, so that serving does
  // not stop to capture one (each capture is an eager step, GEMM tuning the first time a
  // batch size is seen, and the capture: ~0.1 s a step on the H100). Returns how many were
  // captured; 0 on the CPU or with graphs off. Steps past max_context capture on first use.
  [[nodiscard]] Result<int64_t> capture_graphs(int64_t max_context);
  // Forgets every sequence (the router that planned them is gone); the KV memory stays.
  void release_all() { sequences_.clear(); }

  const models::ModelConfig& config() const { return model_->config(); }
  const EngineOptions& options() const { return options_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return options_.page_size; }
  int64_t kv_cache_bytes() const { return kv_shape_.bytes(); }
  int64_t weight_bytes() const { return model_->weight_bytes(); }
  std::string backend_name() const { return backend_->name(); }
  int num_threads() const { return num_threads_; }
  size_t num_sequences() const { return sequences_.size(); }

  ~Engine();

 private:
  struct Sequence {
    std::vector<int32_t> tokens;  // every known token: prompt, then generated
    uint32_t num_prompt_tokens = 0;
    int64_t num_computed = 0;     // tokens whose KV is in the cache
    std::vector<int32_t> pages;
    std::unique_ptr<SequenceSampler> sampler;
    // Its last sample failed, so no token was appended. The router ends the request when
    // it hears, but a plan it sent before that (planned ahead) may still schedule the
    // token that never came: such slices are skipped and their samples fail again.
    bool failed = false;
  };

  Engine() = default;
  [[nodiscard]] Status check_plan(const StepInput& input) const;
  // Begins the step on the backend and runs the model over layout: as a replayed CUDA
  // graph (over a padded layout) when the step is decode-only and the backend captures
  // graphs, eagerly otherwise.
  [[nodiscard]] Result<StepOutput> run_step(const StepInput& input);
  [[nodiscard]] Status run_forward(const StepLayout& layout);
  [[nodiscard]] Status run_graph(const StepLayout& layout);
  // The graph context bucket of a decode step whose longest sequence is `longest` tokens.
  int64_t graph_context(int64_t longest) const;
  // layout's rows, then rows on the scratch page up to `batch` (kept in pad_* and padded_).
  const StepLayout& padded_layout(const StepLayout& layout, int64_t batch);
  // Begins the padded step, captures its graph if none is kept for (batch, context), and
  // replays it when `replay`.
  [[nodiscard]] Status graph_step(const StepLayout& padded, int64_t batch, int64_t context, bool replay);

  EngineOptions options_;
  // The open model files the weights are borrowed from (one of them, or neither for dummy).
  std::unique_ptr<loader::GgufFile> gguf_;
  std::unique_ptr<loader::SafetensorsModel> safetensors_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<models::LlamaModel> model_;
  KvShape kv_shape_;
  int64_t num_pages_ = 0;  // pages the router may hand out
  // CUDA graphs: the backend (when it is CudaBackend), and the page past num_pages_ that
  // padded graph rows write their KV into.
  CudaBackend* cuda_ = nullptr;
  int32_t scratch_page_ = -1;
  std::vector<int32_t> pad_ids_, pad_positions_, pad_rows_;
  std::vector<int64_t> pad_slots_;
  std::vector<StepSequence> pad_sequences_;
  std::vector<int32_t> scratch_table_;
  StepLayout padded_;
  int num_threads_ = 1;
  std::unordered_map<uint64_t, Sequence> sequences_;
  // Per-step buffers, reused.
  std::vector<int32_t> token_ids_, positions_, sample_rows_;
  std::vector<int64_t> slots_;
  std::vector<StepSequence> step_sequences_;
  std::vector<float> logits_;
  std::vector<int32_t> device_ids_;
  StepPhaseSeconds phase_seconds_;
  // Set by run_step around its forward pass (zero when it ran none).
  std::chrono::steady_clock::time_point forward_begin_, forward_end_;
  std::vector<DeviceSamplingRow> device_rows_;
  std::vector<LogitEdit> device_edits_;
};

}  // namespace tessera::engine
