#include "worker/engine/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/device_info.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/prefill_attention.h"
#include "kernels/cuda/sampling.h"

namespace tessera::engine {

namespace kcu = kernels::cuda;
namespace kc = kernels::cpu;
using kcu::Bf16;

namespace {

Status cuda_status(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return Status::ok();
  cudaGetLastError();  // clear a sticky launch error so the next call reports its own
  return internal_error("cuda " + std::string(what) + ": " + cudaGetErrorString(e));
}
#define TESSERA_CUDA_RETURN(expr, what) TESSERA_RETURN_IF_ERROR(cuda_status((expr), (what)))

Bf16 to_bf16(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<Bf16>(u >> 16);
}
float from_bf16(Bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

constexpr int64_t kAlign = 256;
constexpr int kInt32Arrays = 6;  // int32 arrays of the step metadata (Impl says which)
int64_t align_up(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }
// Kept free below the budget: cuBLASLt's workspace and plans, graphs, metadata growth.
constexpr int64_t kReserveBytes = int64_t{512} << 20;

}  // namespace

struct CudaBackend::Impl {
  CudaBackendOptions options;
  kcu::DeviceInfo device;
  cudaStream_t stream = nullptr;
  std::unique_ptr<kcu::Gemm> gemm;
  std::vector<void*> allocations;

  // Weights: one arena in upload order (when expect_weights said how big), and the
  // tensors already made from host bytes (a tied lm_head is the embedding table).
  std::byte* arena = nullptr;
  int64_t arena_bytes = 0, arena_used = 0;
  std::unordered_map<const std::byte*, WeightTensor> uploaded;
  std::unordered_map<const float*, const float*> inv_freq;  // rope tables by host pointer

  KvShape kv;
  Bf16* kv_base = nullptr;
  int64_t layer_elements = 0;  // elements of K (or V) per layer

  // Step metadata, pinned on the host and mirrored on the device: int32 ids, positions,
  // table rows, sequence lengths, sample rows and (in a step with prefill chunks) the rows
  // of its one-token sequences; then int64 slots; then the prefill
  // attention tiles (up to 2 per row: a chunk's tiles plus one partial per sequence);
  // block tables apart.
  int64_t capacity = 0;  // rows
  std::byte* meta_host = nullptr;
  std::byte* meta_dev = nullptr;
  int64_t meta_bytes = 0;
  int32_t* tables_host = nullptr;
  int32_t* tables_dev = nullptr;
  int64_t tables_capacity = 0;  // int32 entries
  int64_t table_width = 1;
  int64_t num_rows = 0;
  int64_t num_tiles = 0;  // prefill attention tiles of this step; 0: a decode-only step
  int64_t num_decode_rows = 0;  // with tiles: the one-token sequences' rows, for the decode kernel
  std::vector<kcu::PrefillTile> tiles;
  int64_t max_len = 0;
  int64_t step = 0;  // counts begin_step calls
  // Decode split of this step (planned on the first attention call) and its workspace.
  int64_t split_step = -1;
  kcu::DecodeSplit split;
  float* split_workspace = nullptr;
  size_t split_workspace_bytes = 0;
  // Downloads and argmax results pass through pinned memory.
  void* staging = nullptr;
  size_t staging_bytes = 0;
  int32_t* argmax_dev = nullptr;
  // Device sampling: per-row parameters and logit edits (uploaded through `staging`), and
  // an fp32 copy of the rows being sampled.
  std::byte* sample_params_dev = nullptr;
  int64_t sample_params_bytes = 0;
  float* sample_workspace = nullptr;
  int64_t sample_workspace_floats = 0;

  bool capturing = false;
  std::unordered_map<uint64_t, cudaGraphExec_t> graphs;

  int32_t* ids_dev() const { return reinterpret_cast<int32_t*>(meta_dev); }
  int32_t* positions_dev() const { return ids_dev() + capacity; }
  int32_t* table_rows_dev() const { return ids_dev() + 2 * capacity; }
  int32_t* seq_lens_dev() const { return ids_dev() + 3 * capacity; }
  int32_t* sample_rows_dev() const { return ids_dev() + 4 * capacity; }
  int32_t* decode_rows_dev() const { return ids_dev() + 5 * capacity; }
  int64_t* slots_dev() const { return reinterpret_cast<int64_t*>(meta_dev + align_up(kInt32Arrays * capacity * 4)); }
  int32_t* host_i32(int i) const { return reinterpret_cast<int32_t*>(meta_host) + i * capacity; }
  int64_t* slots_host() const { return reinterpret_cast<int64_t*>(meta_host + align_up(kInt32Arrays * capacity * 4)); }
  int64_t tiles_offset() const { return align_up(kInt32Arrays * capacity * 4) + align_up(capacity * 8); }
  kcu::PrefillTile* tiles_dev() const { return reinterpret_cast<kcu::PrefillTile*>(meta_dev + tiles_offset()); }
  kcu::PrefillTile* tiles_host() const { return reinterpret_cast<kcu::PrefillTile*>(meta_host + tiles_offset()); }

  ~Impl() {
    for (auto& [key, exec] : graphs) cudaGraphExecDestroy(exec);
    gemm.reset();
    for (void* p : allocations) cudaFree(p);
    if (meta_host) cudaFreeHost(meta_host);
    if (tables_host) cudaFreeHost(tables_host);
    if (staging) cudaFreeHost(staging);
    if (stream) cudaStreamDestroy(stream);
  }

  Result<void*> device_alloc(int64_t bytes, std::string_view what) {
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 1))); e != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      return resource_exhausted("cuda: allocating " + std::to_string(bytes) + " bytes for " + std::string(what) +
                                " failed (" + cudaGetErrorString(e) + "; " + std::to_string(free_bytes >> 20) +
                                " MiB free of " + std::to_string(total >> 20) + ")");
    }
    allocations.push_back(p);
    return p;
  }

  // Replaces the device buffer `p` (from device_alloc, or null) with a new one of `bytes`,
  // once the stream is done with the old one. On failure `p` is null, not dangling.
  template <typename T>
  Status device_realloc(T*& p, int64_t bytes, std::string_view what) {
    TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream), "synchronize");
    if (p) {
      std::erase(allocations, static_cast<void*>(p));
      cudaFree(p);
      p = nullptr;
    }
    auto dev = device_alloc(bytes, what);
    if (!dev) return dev.status();
    p = static_cast<T*>(*dev);
    return Status::ok();
  }

  // The first `n` token ids the last argmax or sampling kernel wrote, waiting for the step.
  Status download_ids(int64_t n, std::span<int32_t> out, const char* what) {
    TESSERA_RETURN_IF_ERROR(ensure_staging(static_cast<size_t>(n) * 4));
    TESSERA_CUDA_RETURN(cudaMemcpyAsync(staging, argmax_dev, static_cast<size_t>(n) * 4, cudaMemcpyDeviceToHost, stream),
                        what);
    TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream), "step");
    std::memcpy(out.data(), staging, static_cast<size_t>(n) * 4);
    return Status::ok();
  }

  Status ensure_staging(size_t bytes) {
    if (bytes <= staging_bytes) return Status::ok();
    if (capturing) return failed_precondition("cuda: staging buffer grows during a graph capture");
    TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream), "synchronize");
    if (staging) cudaFreeHost(staging);
    staging = nullptr;
    staging_bytes = 0;
    TESSERA_CUDA_RETURN(cudaMallocHost(&staging, bytes), "pinned staging buffer");
    staging_bytes = bytes;
    return Status::ok();
  }

  Status ensure_tables(int64_t entries) {
    if (entries <= tables_capacity) return Status::ok();
    TESSERA_CUDA_RETURN(cudaStreamSynchronize(stream), "synchronize");
    const int64_t want = std::max(entries, 2 * tables_capacity);
    tables_capacity = 0;  // until both buffers are in place
    if (tables_host) cudaFreeHost(tables_host);
    tables_host = nullptr;
    TESSERA_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&tables_host), static_cast<size_t>(want) * 4),
                        "pinned block tables");
    TESSERA_RETURN_IF_ERROR(device_realloc(tables_dev, want * 4, "block tables"));
    tables_capacity = want;
    return Status::ok();
  }

  Bf16* layer_k(int64_t layer) const { return kv_base + layer * 2 * layer_elements; }
  Bf16* layer_v(int64_t layer) const { return layer_k(layer) + layer_elements; }
};

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBackend::~CudaBackend() = default;

Result<std::unique_ptr<CudaBackend>> CudaBackend::create(const CudaBackendOptions& options) {
  const kcu::DeviceQuery query = kcu::query_devices();
  if (query.devices.empty()) {
    return unavailable("cuda: no usable device" +
                       (query.error_message.empty() ? std::string() : " (" + query.error_message + ")"));
  }
  if (options.device_index < 0 || options.device_index >= static_cast<int>(query.devices.size())) {
    return invalid_argument("cuda: device " + std::to_string(options.device_index) + " does not exist; " +
                            std::to_string(query.devices.size()) + " visible");
  }
  if (options.max_batch_tokens < 1) return invalid_argument("cuda: max_batch_tokens must be at least 1");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->device = query.devices[static_cast<size_t>(options.device_index)];
  TESSERA_CUDA_RETURN(cudaSetDevice(options.device_index), "set device");
  TESSERA_CUDA_RETURN(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking), "stream");
  auto gemm = kcu::Gemm::create();
  if (!gemm) return gemm.status();
  impl->gemm = std::move(*gemm);

  const int64_t t = options.max_batch_tokens;
  impl->capacity = t;
  impl->meta_bytes = align_up(kInt32Arrays * t * 4) + align_up(t * 8) + 2 * t * static_cast<int64_t>(sizeof(kcu::PrefillTile));
  TESSERA_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&impl->meta_host), static_cast<size_t>(impl->meta_bytes)),
                      "pinned step metadata");
  auto meta = impl->device_alloc(impl->meta_bytes, "step metadata");
  if (!meta) return meta.status();
  impl->meta_dev = static_cast<std::byte*>(*meta);
  auto am = impl->device_alloc(t * 4, "argmax results");
  if (!am) return am.status();
  impl->argmax_dev = static_cast<int32_t*>(*am);
  TESSERA_RETURN_IF_ERROR(impl->ensure_tables(t * 64));
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

std::string CudaBackend::name() const {
  const kcu::DeviceInfo& d = impl_->device;
  return "cuda:" + std::to_string(d.ordinal) + " (" + d.name + ", sm_" + std::to_string(d.compute_capability_major) +
         std::to_string(d.compute_capability_minor) + ", bf16)";
}

void CudaBackend::expect_weights(int64_t num_elements, int64_t num_tensors) {
  if (impl_->arena) return;
  const int64_t bytes = num_elements * 2 + num_tensors * kAlign;
  auto arena = impl_->device_alloc(bytes, "weights");
  if (!arena) return;  // upload_weight allocates each tensor then, and reports the shortage
  impl_->arena = static_cast<std::byte*>(*arena);
  impl_->arena_bytes = bytes;
}

Result<WeightTensor> CudaBackend::upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n, int64_t k) {
  Impl& m = *impl_;
  if (auto it = m.uploaded.find(host.data()); it != m.uploaded.end() && it->second.n == n && it->second.k == k) {
    return it->second;
  }
  const auto row_bytes = kc::row_size_bytes(type, k);
  if (n <= 0 || !row_bytes || *row_bytes * n != static_cast<int64_t>(host.size())) {
    return invalid_argument("weight [" + std::to_string(n) + ", " + std::to_string(k) + "] " +
                            std::string(kc::ggml_type_name(type)) + " does not match its " +
                            std::to_string(host.size()) + " bytes");
  }
  const int64_t bytes = n * k * 2;
  std::byte* dst = nullptr;
  if (m.arena && m.arena_used + bytes <= m.arena_bytes) {
    dst = m.arena + m.arena_used;
    m.arena_used = align_up(m.arena_used + bytes);
  } else {
    auto p = m.device_alloc(bytes, "weight");
    if (!p) return p.status();
    dst = static_cast<std::byte*>(*p);
  }
  if (type == GgmlType::kBF16) {
    TESSERA_CUDA_RETURN(cudaMemcpy(dst, host.data(), static_cast<size_t>(bytes), cudaMemcpyHostToDevice), "weight upload");
  } else {
    // Dequantize a band of rows at a time to float, round to bf16, copy.
    const int64_t band = std::max<int64_t>(1, (int64_t{8} << 20) / k);
    std::vector<float> f;
    TESSERA_RETURN_IF_ERROR(m.ensure_staging(static_cast<size_t>(std::min(band, n) * k) * 2));
    Bf16* stage = static_cast<Bf16*>(m.staging);
    for (int64_t r0 = 0; r0 < n; r0 += band) {
      const int64_t rows = std::min(band, n - r0);
      f.resize(static_cast<size_t>(rows * k));
      TESSERA_RETURN_IF_ERROR(kc::dequantize({type, host.subspan(static_cast<size_t>(r0 * *row_bytes),
                                                                 static_cast<size_t>(rows * *row_bytes)),
                                              f}));
      for (size_t i = 0; i < f.size(); ++i) stage[i] = to_bf16(f[i]);
      TESSERA_CUDA_RETURN(cudaMemcpy(dst + r0 * k * 2, stage, f.size() * 2, cudaMemcpyHostToDevice), "weight upload");
    }
  }
  const WeightTensor w{GgmlType::kBF16, dst, n, k, bytes};
  m.uploaded[host.data()] = w;
  return w;
}

int64_t CudaBackend::kv_budget_bytes() const {
  size_t free_bytes = 0, total = 0;
  if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const auto used = static_cast<int64_t>(total - free_bytes);
  const auto allowed = static_cast<int64_t>(impl_->options.gpu_memory_utilization * static_cast<double>(total));
  return std::max<int64_t>(1, allowed - used - kReserveBytes);  // 1: "a budget, and it is empty"
}

Result<Act> CudaBackend::allocate_activations(int64_t count, std::string_view what) {
  if (count < 0) return invalid_argument("allocate " + std::string(what) + ": negative size");
  auto p = impl_->device_alloc(count * 2, what);
  if (!p) return p.status();
  return Act(*p, ActType::kBF16);
}

Status CudaBackend::upload_floats(std::span<const float> host, Act dst) {
  std::vector<Bf16> bits(host.size());
  for (size_t i = 0; i < host.size(); ++i) bits[i] = to_bf16(host[i]);
  TESSERA_CUDA_RETURN(cudaMemcpy(dst.data(), bits.data(), bits.size() * 2, cudaMemcpyHostToDevice), "upload");
  return Status::ok();
}

Status CudaBackend::allocate_kv(const KvShape& shape) {
  Impl& m = *impl_;
  if (shape.dtype != KvDtype::kBF16) {
    return invalid_argument("the CUDA backend keeps its KV cache in bf16, not " + std::string(kv_dtype_name(shape.dtype)));
  }
  if (shape.head_dim != 64 && shape.head_dim != 128) {
    return unimplemented("cuda attention is built for head_dim 64 and 128; this model has " +
                         std::to_string(shape.head_dim));
  }
  m.kv = shape;
  m.layer_elements = shape.num_pages * shape.page_size * shape.num_kv_heads * shape.head_dim;
  auto p = m.device_alloc(shape.bytes(), "the KV cache");
  if (!p) return p.status();
  m.kv_base = static_cast<Bf16*>(*p);
  // Zeros, not whatever the allocator left: a page read before it is written (padding
  // rows, a benchmark's made-up context) must not hold NaNs.
  TESSERA_CUDA_RETURN(cudaMemset(m.kv_base, 0, static_cast<size_t>(shape.bytes())), "clear the KV cache");
  // The split-KV workspace for the largest plan plan_decode_split can make: pieces of at
  // most 2 × 2 blocks per SM, eight query heads per KV head.
  m.split_workspace_bytes = static_cast<size_t>(4 * m.device.num_sms * 8 * (shape.head_dim + 2)) * sizeof(float);
  auto ws = m.device_alloc(static_cast<int64_t>(m.split_workspace_bytes), "decode attention workspace");
  if (!ws) return ws.status();
  m.split_workspace = static_cast<float*>(*ws);
  return Status::ok();
}

Status CudaBackend::copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) {
  Impl& m = *impl_;
  const int64_t page_elements = m.kv.page_size * m.kv.num_kv_heads * m.kv.head_dim;
  for (const auto& [src, dst] : src_dst) {
    if (src < 0 || dst < 0 || src >= m.kv.num_pages || dst >= m.kv.num_pages) {
      return invalid_argument("copy_kv_pages: page outside the cache");
    }
    for (int64_t layer = 0; layer < m.kv.num_layers; ++layer) {
      for (Bf16* base : {m.layer_k(layer), m.layer_v(layer)}) {
        TESSERA_CUDA_RETURN(cudaMemcpyAsync(base + dst * page_elements, base + src * page_elements,
                                            static_cast<size_t>(page_elements) * 2, cudaMemcpyDeviceToDevice, m.stream),
                            "copy KV page");
      }
    }
  }
  return Status::ok();
}

Status CudaBackend::begin_step(const StepLayout& layout) {
  Impl& m = *impl_;
  const int64_t n = layout.num_tokens();
  if (n > m.capacity) {
    return invalid_argument("step has " + std::to_string(n) + " tokens; the CUDA backend holds " +
                            std::to_string(m.capacity));
  }
  const int64_t num_slots = m.kv.num_pages * m.kv.page_size;
  for (const int64_t slot : layout.kv_slots) {
    if (slot < 0 || slot >= num_slots) {
      return invalid_argument("step: KV slot " + std::to_string(slot) + " is outside the cache");
    }
  }
  int64_t width = 1;
  for (const StepSequence& s : layout.sequences) width = std::max<int64_t>(width, static_cast<int64_t>(s.page_table.size()));
  const bool graph = graph_shape_.table_width > 0;
  if (graph) width = graph_shape_.table_width;
  TESSERA_RETURN_IF_ERROR(m.ensure_tables(static_cast<int64_t>(layout.sequences.size()) * width));
  std::memcpy(m.host_i32(0), layout.token_ids.data(), static_cast<size_t>(n) * 4);
  std::memcpy(m.host_i32(1), layout.positions.data(), static_cast<size_t>(n) * 4);
  std::memcpy(m.slots_host(), layout.kv_slots.data(), static_cast<size_t>(n) * 8);
  std::copy(layout.sample_rows.begin(), layout.sample_rows.end(), m.host_i32(4));
  int32_t* rows = m.host_i32(2);
  int32_t* lens = m.host_i32(3);
  m.max_len = 0;
  for (size_t si = 0; si < layout.sequences.size(); ++si) {
    const StepSequence& s = layout.sequences[si];
    // A graph's table is as wide as its context bucket: pages past it hold nothing yet.
    const auto pages = std::min<size_t>(s.page_table.size(), static_cast<size_t>(width));
    std::copy(s.page_table.begin(), s.page_table.begin() + static_cast<long>(pages),
              m.tables_host + static_cast<int64_t>(si) * width);
    for (int64_t i = 0; i < s.num_tokens; ++i) {
      rows[s.token_begin + i] = static_cast<int32_t>(si);
      lens[s.token_begin + i] = static_cast<int32_t>(s.start_position + i + 1);
    }
    m.max_len = std::max(m.max_len, s.start_position + s.num_tokens);
    if (static_cast<int64_t>(s.page_table.size()) * m.kv.page_size < s.start_position + s.num_tokens) {
      return invalid_argument("step: a sequence's pages do not hold its tokens");
    }
  }
  if (graph) m.max_len = graph_shape_.context;
  m.tiles.clear();
  m.num_decode_rows = 0;
  if (!layout.decode_only()) {
    // Chunks of several tokens go to the prefill kernel; one-token sequences (decodes
    // riding along) to the decode kernel, which would otherwise get a 128-row tile each.
    int32_t* decode_rows = m.host_i32(5);
    for (size_t si = 0; si < layout.sequences.size(); ++si) {
      const StepSequence& s = layout.sequences[si];
      if (s.num_tokens == 1) {
        decode_rows[m.num_decode_rows++] = static_cast<int32_t>(s.token_begin);
        continue;
      }
      kcu::append_prefill_tiles(static_cast<int32_t>(s.token_begin), static_cast<int32_t>(s.num_tokens),
                                static_cast<int32_t>(s.start_position), static_cast<int32_t>(si), m.tiles);
    }
    std::copy(m.tiles.begin(), m.tiles.end(), m.tiles_host());
  }
  m.num_tiles = static_cast<int64_t>(m.tiles.size());
  m.table_width = width;
  m.num_rows = n;
  ++m.step;
  // Only this step's rows: the five int32 arrays as one strided copy, the slots, the tiles.
  const auto pitch = static_cast<size_t>(m.capacity) * 4;
  TESSERA_CUDA_RETURN(cudaMemcpy2DAsync(m.meta_dev, pitch, m.meta_host, pitch, static_cast<size_t>(n) * 4, kInt32Arrays,
                                        cudaMemcpyHostToDevice, m.stream),
                      "step metadata upload");
  TESSERA_CUDA_RETURN(cudaMemcpyAsync(m.slots_dev(), m.slots_host(), static_cast<size_t>(n) * 8, cudaMemcpyHostToDevice,
                                      m.stream),
                      "step slots upload");
  if (m.num_tiles > 0) {
    TESSERA_CUDA_RETURN(cudaMemcpyAsync(m.tiles_dev(), m.tiles_host(), m.tiles.size() * sizeof(kcu::PrefillTile),
                                        cudaMemcpyHostToDevice, m.stream),
                        "prefill tile upload");
  }
  TESSERA_CUDA_RETURN(cudaMemcpyAsync(m.tables_dev, m.tables_host, layout.sequences.size() * static_cast<size_t>(width) * 4,
                                      cudaMemcpyHostToDevice, m.stream),
                      "block table upload");
  return Status::ok();
}

Status CudaBackend::embed(const WeightTensor& table, float scale, Act out) {
  Impl& m = *impl_;
  if (table.type != GgmlType::kBF16) return internal_error("cuda embed: the table was not uploaded by this backend");
  TESSERA_RETURN_IF_ERROR(kcu::embedding({reinterpret_cast<const Bf16*>(table.data), m.ids_dev(), out.as<Bf16>(),
                                          m.num_rows, table.k},
                                         m.stream));
  if (scale != 1.0f) return add(out, out, m.num_rows * table.k, scale - 1.0f);
  return Status::ok();
}

Status CudaBackend::rms_norm(Act x, Act weight, float eps, Act out, int64_t rows, int64_t width) {
  return kcu::rms_norm({x.as<const Bf16>(), nullptr, weight.as<const Bf16>(), out.as<Bf16>(), rows, width, eps},
                       impl_->stream);
}

Status CudaBackend::matmul(Act x, int64_t m_rows, int64_t k, std::span<const MatmulTarget> targets) {
  return run_matmul(x, nullptr, m_rows, k, targets);
}

Status CudaBackend::normed_matmul(Act x, const RowNorm& norm, int64_t m, int64_t k,
                                  std::span<const MatmulTarget> targets) {
  // The one-row GEMV folds the norm into its staging of the row when the buffers allow.
  if (m != 1 || !kcu::launch::gemv_fits(m, k, x.data(), nullptr, norm.weight.data())) {
    return Backend::normed_matmul(x, norm, m, k, targets);
  }
  return run_matmul(x, &norm, m, k, targets);
}

Status CudaBackend::matmul_add(Act x, int64_t m, int64_t k, const WeightTensor& w, Act residual, float scale,
                               Act scratch) {
  if (scale != 1.0f || w.type != GgmlType::kBF16 || w.k != k) {
    return Backend::matmul_add(x, m, k, w, residual, scale, scratch);
  }
  // C += A·Wᵀ: cuBLASLt's beta, or the GEMV's epilogue.
  kcu::GemmParams p;
  p.a = x.as<const Bf16>();
  p.w = reinterpret_cast<const Bf16*>(w.data);
  p.c = residual.as<Bf16>();
  p.m = m;
  p.n = w.n;
  p.k = k;
  p.accumulate = true;
  return impl_->gemm->run(p, impl_->stream);
}

Status CudaBackend::run_matmul(Act x, const RowNorm* norm, int64_t m_rows, int64_t k,
                               std::span<const MatmulTarget> targets) {
  Impl& m = *impl_;
  size_t i = 0;
  while (i < targets.size()) {
    // Targets whose weights follow each other in memory and whose outputs are adjacent
    // column ranges of one buffer run as one GEMM.
    const MatmulTarget& first = targets[i];
    const int64_t stride = first.y_stride > 0 ? first.y_stride : first.weight->n;
    int64_t n = first.weight->n;
    size_t j = i + 1;
    while (j < targets.size()) {
      const MatmulTarget& prev = targets[j - 1];
      const MatmulTarget& next = targets[j];
      const int64_t next_stride = next.y_stride > 0 ? next.y_stride : next.weight->n;
      if (next.weight->k != k || next_stride != stride || next.weight->data != prev.weight->data + prev.weight->bytes ||
          next.y != prev.y + prev.weight->n) {
        break;
      }
      n += next.weight->n;
      ++j;
    }
    if (first.weight->type != GgmlType::kBF16 || first.weight->k != k) {
      return internal_error("cuda matmul: weight not uploaded by this backend, or k mismatch");
    }
    kcu::GemmParams p;
    p.a = x.as<const Bf16>();
    p.w = reinterpret_cast<const Bf16*>(first.weight->data);
    p.c = first.y.as<Bf16>();
    p.m = m_rows;
    p.n = n;
    p.k = k;
    p.ldc = stride;
    if (norm) {
      p.norm_weight = norm->weight.as<const Bf16>();
      p.norm_eps = norm->eps;
    }
    TESSERA_RETURN_IF_ERROR(m.gemm->run(p, m.stream));
    for (size_t t = i; t < j; ++t) {
      if (!targets[t].bias) continue;
      TESSERA_RETURN_IF_ERROR(kcu::add_bias(
          {targets[t].y.as<Bf16>(), stride, targets[t].bias.as<const Bf16>(), m_rows, targets[t].weight->n}, m.stream));
    }
    i = j;
  }
  return Status::ok();
}

Status CudaBackend::attention(const AttentionOp& op) {
  Impl& m = *impl_;
  if (op.layer < 0 || op.layer >= m.kv.num_layers) return invalid_argument("cuda attention: layer outside the cache");
  const float* inv_freq = nullptr;
  if (auto it = m.inv_freq.find(op.inv_freq.data()); it != m.inv_freq.end()) {
    inv_freq = it->second;
  } else {
    if (m.capturing) return failed_precondition("cuda attention: rope table first seen during a graph capture");
    auto p = m.device_alloc(static_cast<int64_t>(op.inv_freq.size_bytes()), "rope frequencies");
    if (!p) return p.status();
    TESSERA_CUDA_RETURN(cudaMemcpy(*p, op.inv_freq.data(), op.inv_freq.size_bytes(), cudaMemcpyHostToDevice), "rope upload");
    inv_freq = static_cast<float*>(*p);
    m.inv_freq.emplace(op.inv_freq.data(), inv_freq);
  }
  kcu::RopeKvParams r;
  r.q = op.q.as<Bf16>();
  r.k = op.k.as<const Bf16>();
  r.v = op.v.as<const Bf16>();
  r.q_stride = r.k_stride = r.v_stride = op.row_stride;
  r.positions = m.positions_dev();
  r.slots = m.slots_dev();
  r.inv_freq = inv_freq;
  r.k_cache = m.layer_k(op.layer);
  r.v_cache = m.layer_v(op.layer);
  r.num_tokens = m.num_rows;
  r.num_q_heads = op.num_heads;
  r.num_kv_heads = op.num_kv_heads;
  r.head_dim = op.head_dim;
  r.style = op.rope_style == RopeStyle::kHalf ? kcu::RopeStyle::kHalf : kcu::RopeStyle::kInterleaved;
  TESSERA_RETURN_IF_ERROR(kcu::rope_and_cache_kv(r, m.stream));

  // What both kernels read; then the prefill tiles, or the decode rows and split.
  auto fill = [&](kcu::PagedAttention& a) {
    a.q = op.q.as<const Bf16>();
    a.q_stride = op.row_stride;
    a.k_cache = m.layer_k(op.layer);
    a.v_cache = m.layer_v(op.layer);
    a.block_tables = m.tables_dev;
    a.out = op.out.as<Bf16>();
    a.num_q_heads = op.num_heads;
    a.num_kv_heads = op.num_kv_heads;
    a.head_dim = op.head_dim;
    a.page_size = m.kv.page_size;
    a.max_pages_per_seq = m.table_width;
    a.scale = op.scale;
    a.sliding_window = op.sliding_window;
  };
  const bool mixed = m.num_tiles > 0;
  if (mixed) {
    kcu::PrefillAttentionParams a;
    fill(a);
    a.tiles = m.tiles_dev();
    a.num_tiles = m.num_tiles;
    TESSERA_RETURN_IF_ERROR(kcu::prefill_attention(a, m.stream));
    if (m.num_decode_rows == 0) return Status::ok();
  }
  const int64_t decode_rows = mixed ? m.num_decode_rows : m.num_rows;
  if (m.split_step != m.step) {
    m.split = kcu::plan_decode_split(decode_rows, op.num_heads, op.num_kv_heads, op.head_dim, m.max_len,
                                     m.device.num_sms);
    if (m.split.workspace_bytes > m.split_workspace_bytes) m.split = {};
    m.split_step = m.step;
  }
  kcu::DecodeAttentionParams a;
  fill(a);
  a.seq_lens = m.seq_lens_dev();
  a.table_rows = m.table_rows_dev();
  a.rows = mixed ? m.decode_rows_dev() : nullptr;
  a.num_seqs = decode_rows;
  a.split_tokens = m.split.split_tokens;
  a.max_splits = m.split.max_splits;
  a.workspace = m.split.workspace_bytes > 0 ? m.split_workspace : nullptr;
  return kcu::decode_attention(a, m.stream);
}

Status CudaBackend::silu_mul(Act gate_up, Act out, int64_t rows, int64_t width) {
  return kcu::silu_mul({gate_up.as<const Bf16>(), out.as<Bf16>(), rows, width}, impl_->stream);
}

Status CudaBackend::gate_up_silu(Act x, const RowNorm& norm, int64_t m, int64_t k, const WeightTensor& gate,
                                 const WeightTensor& up, Act gate_up, Act act) {
  // One row, the up rows right after the gate rows: one GEMV normalizes the row and writes
  // the activation.
  if (m == 1 && kcu::launch::gemv_fits(m, k, x.data(), gate.data, norm.weight.data()) && gate.type == GgmlType::kBF16 &&
      up.type == GgmlType::kBF16 && gate.k == k && up.k == k && up.n == gate.n && up.data == gate.data + gate.bytes) {
    kcu::GemmParams p;
    p.a = x.as<const Bf16>();
    p.w = reinterpret_cast<const Bf16*>(gate.data);
    p.c = act.as<Bf16>();
    p.m = 1;
    p.n = gate.n;
    p.k = k;
    p.gate_up_silu = true;
    p.norm_weight = norm.weight.as<const Bf16>();
    p.norm_eps = norm.eps;
    return impl_->gemm->run(p, impl_->stream);
  }
  return Backend::gate_up_silu(x, norm, m, k, gate, up, gate_up, act);
}

Status CudaBackend::add(Act x, Act y, int64_t count, float scale) {
  return kcu::add({x.as<Bf16>(), y.as<const Bf16>(), count, scale}, impl_->stream);
}

Status CudaBackend::gather_rows(Act src, std::span<const int32_t> rows, int64_t width, Act dst) {
  Impl& m = *impl_;
  // The rows are the step's sample rows, uploaded with its metadata.
  if (rows.data() != nullptr && !std::equal(rows.begin(), rows.end(), m.host_i32(4))) {
    return internal_error("cuda gather_rows: only the step's sample rows can be gathered");
  }
  return kcu::gather_rows({src.as<const Bf16>(), m.sample_rows_dev(), dst.as<Bf16>(), static_cast<int64_t>(rows.size()),
                           width},
                          m.stream);
}

Status CudaBackend::download(Act src, int64_t count, std::span<float> dst) {
  Impl& m = *impl_;
  if (static_cast<int64_t>(dst.size()) < count) return invalid_argument("download: destination too small");
  TESSERA_RETURN_IF_ERROR(m.ensure_staging(static_cast<size_t>(count) * 2));
  TESSERA_CUDA_RETURN(cudaMemcpyAsync(m.staging, src.data(), static_cast<size_t>(count) * 2, cudaMemcpyDeviceToHost,
                                      m.stream),
                      "download");
  TESSERA_CUDA_RETURN(cudaStreamSynchronize(m.stream), "step");
  const Bf16* bits = static_cast<const Bf16*>(m.staging);
  for (int64_t i = 0; i < count; ++i) dst[static_cast<size_t>(i)] = from_bf16(bits[i]);
  return Status::ok();
}

Status CudaBackend::argmax(Act logits, int64_t rows, int64_t vocab, std::span<int32_t> out) {
  Impl& m = *impl_;
  if (static_cast<int64_t>(out.size()) < rows || rows > m.capacity) return invalid_argument("cuda argmax: bad size");
  TESSERA_RETURN_IF_ERROR(kcu::argmax({logits.data(), vocab, m.argmax_dev, rows, vocab, true}, m.stream));
  return m.download_ids(rows, out, "argmax download");
}

Status CudaBackend::sample(Act logits, int64_t vocab, std::span<const DeviceSamplingRow> rows,
                           std::span<const LogitEdit> edits, std::span<int32_t> out) {
  Impl& m = *impl_;
  const auto n = static_cast<int64_t>(rows.size());
  if (static_cast<int64_t>(out.size()) < n || n > m.capacity) return invalid_argument("cuda sample: bad size");
  if (n == 0) return Status::ok();
  // Parameters then edits, one upload; buffers grow (outside graphs: sampling follows them).
  const int64_t rows_bytes = align_up(n * static_cast<int64_t>(sizeof(DeviceSamplingRow)));
  const int64_t bytes = rows_bytes + static_cast<int64_t>(edits.size_bytes());
  if (bytes > m.sample_params_bytes) {
    const int64_t want = std::max(bytes, int64_t{1} << 16);
    m.sample_params_bytes = 0;
    TESSERA_RETURN_IF_ERROR(m.device_realloc(m.sample_params_dev, want, "sampling parameters"));
    m.sample_params_bytes = want;
  }
  if (n * vocab > m.sample_workspace_floats) {
    const int64_t floats = std::max(n, m.options.max_sequences) * vocab;
    m.sample_workspace_floats = 0;
    TESSERA_RETURN_IF_ERROR(m.device_realloc(m.sample_workspace, floats * 4, "sampling workspace"));
    m.sample_workspace_floats = floats;
  }
  TESSERA_RETURN_IF_ERROR(m.ensure_staging(static_cast<size_t>(std::max<int64_t>(bytes, n * 4))));
  std::memcpy(m.staging, rows.data(), rows.size_bytes());
  std::memcpy(static_cast<std::byte*>(m.staging) + rows_bytes, edits.data(), edits.size_bytes());
  TESSERA_CUDA_RETURN(cudaMemcpyAsync(m.sample_params_dev, m.staging, static_cast<size_t>(bytes), cudaMemcpyHostToDevice,
                                      m.stream),
                      "sampling parameters upload");
  kcu::SampleParams p;
  p.logits = logits.as<const Bf16>();
  p.stride = vocab;
  p.row_params = reinterpret_cast<const DeviceSamplingRow*>(m.sample_params_dev);
  p.edits = reinterpret_cast<const LogitEdit*>(m.sample_params_dev + rows_bytes);
  p.workspace = m.sample_workspace;
  p.out = m.argmax_dev;
  p.rows = n;
  p.vocab = vocab;
  TESSERA_RETURN_IF_ERROR(kcu::sample(p, m.stream));
  // The staging buffer is read by the upload above; the stream orders the copy back after it.
  return m.download_ids(n, out, "sampled tokens download");
}

Status CudaBackend::begin_capture() {
  Impl& m = *impl_;
  TESSERA_CUDA_RETURN(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal), "begin graph capture");
  m.capturing = true;
  return Status::ok();
}

Status CudaBackend::end_capture(uint64_t key, bool keep) {
  Impl& m = *impl_;
  m.capturing = false;
  cudaGraph_t graph = nullptr;
  TESSERA_CUDA_RETURN(cudaStreamEndCapture(m.stream, &graph), "end graph capture");
  if (!keep) {
    cudaGraphDestroy(graph);
    return Status::ok();
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  TESSERA_CUDA_RETURN(e, "instantiate graph");
  if (auto it = m.graphs.find(key); it != m.graphs.end()) cudaGraphExecDestroy(it->second);
  m.graphs[key] = exec;
  return Status::ok();
}

bool CudaBackend::has_graph(uint64_t key) const { return impl_->graphs.count(key) > 0; }

Status CudaBackend::replay(uint64_t key) {
  Impl& m = *impl_;
  auto it = m.graphs.find(key);
  if (it == m.graphs.end()) return not_found("cuda: no graph " + std::to_string(key));
  TESSERA_CUDA_RETURN(cudaGraphLaunch(it->second, m.stream), "graph launch");
  return Status::ok();
}

size_t CudaBackend::num_graphs() const { return impl_->graphs.size(); }

}  // namespace tessera::engine
