// CUDA kernels against the GPU's own limits measured in the same run. Memory-bound ones
// against the device's copy bandwidth:
// decode attention at Llama-3-8B's head shapes (32 query heads over 8 KV heads, head_dim
// 128, pages of 16) over several batch sizes at a 1k context, RMSNorm and SiLU·mul at 8B's
// widths. Each figure is bytes the kernel must move / time (CUDA events, median of 50 runs
// after 5 warm-ups), and its share of a device-to-device cudaMemcpy's rate (read + write).
// GEMMs (cuBLASLt bf16) at Llama-3-8B's projection shapes: TFLOP/s against the best of a
// large square GEMM in the same run (prefill), and weight bytes per second against the
// copy rate (decode rows, where reading the weight is the cost).
// Prints a Markdown table. On the GPU host, from a bundle (scripts/gpu/bundle):
//   LD_LIBRARY_PATH=.gpu-bundle/lib .gpu-bundle/bin/tessera-bench-cuda-kernels
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/layer_ops.h"

using namespace tessera::kernels::cuda;

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "cuda-kernels bench: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

void check(const tessera::Status& s) {
  if (!s.is_ok()) {
    std::fprintf(stderr, "cuda-kernels bench: %s\n", s.to_string().c_str());
    std::exit(1);
  }
}

template <typename T>
T* device_alloc(size_t n, int fill_byte = 0x3C) {
  T* p = nullptr;
  check(cudaMalloc(&p, n * sizeof(T)), "cudaMalloc");
  check(cudaMemset(p, fill_byte, n * sizeof(T)), "cudaMemset");  // 0x3C3C: a small bf16
  return p;
}

// Median milliseconds of one call of f.
double time_ms(const std::function<void()>& f) {
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  for (int i = 0; i < 5; ++i) f();
  std::vector<float> ms(50);
  for (float& m : ms) {
    check(cudaEventRecord(start), "record");
    f();
    check(cudaEventRecord(stop), "record");
    check(cudaEventSynchronize(stop), "sync");
    check(cudaEventElapsedTime(&m, start, stop), "elapsed");
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms[ms.size() / 2];
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "properties");
  // The reference: a 1 GiB device-to-device copy, read + write bytes per second.
  const size_t copy_bytes = size_t{1} << 30;
  char* a = device_alloc<char>(copy_bytes);
  char* b = device_alloc<char>(copy_bytes);
  const double copy_ms = time_ms([&] { check(cudaMemcpyAsync(b, a, copy_bytes, cudaMemcpyDeviceToDevice), "copy"); });
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  cudaFree(a);
  cudaFree(b);
  std::printf("device: %s, %d SMs; device-to-device copy: %.0f GB/s (read + write)\n\n", prop.name,
              prop.multiProcessorCount, copy_gbs);
  std::printf("| kernel | shape | time (us) | bytes moved (MB) | GB/s | share of copy rate |\n");
  std::printf("|---|---|---|---|---|---|\n");
  auto row = [&](const char* kernel, const std::string& shape, double ms, double bytes) {
    const double gbs = bytes / (ms * 1e-3) / 1e9;
    std::printf("| %s | %s | %.1f | %.1f | %.0f | %.0f%% |\n", kernel, shape.c_str(), ms * 1e3, bytes / 1e6, gbs,
                100.0 * gbs / copy_gbs);
  };

  // Decode attention: Llama-3-8B heads, context 1024, pages of 16, each sequence its own pages.
  // The last two rows move the bytes of batches 128 and 256 with one KV head per sequence
  // (8 times the sequences): each page's K (and V) rows then lie in one contiguous run
  // instead of 8 heads' rows interleaved token by token, which shows what the cache layout
  // costs.
  const int64_t D = 128, P = 16, ctx = 1024;
  const std::pair<int64_t, int64_t> attention_cases[] = {{1, 8}, {8, 8}, {32, 8}, {128, 8}, {256, 8}, {1024, 1}, {2048, 1}};
  for (const auto& [batch, Hkv] : attention_cases) {
    const int64_t Hq = 4 * Hkv;
    const int64_t pages_per_seq = ctx / P;
    const int64_t num_pages = batch * pages_per_seq;
    std::vector<int32_t> tables(num_pages);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), std::mt19937(1));
    std::vector<int32_t> lens(batch, static_cast<int32_t>(ctx));
    int32_t* d_tables = device_alloc<int32_t>(tables.size());
    int32_t* d_lens = device_alloc<int32_t>(lens.size());
    check(cudaMemcpy(d_tables, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice), "copy");
    check(cudaMemcpy(d_lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice), "copy");
    Bf16* q = device_alloc<Bf16>(batch * Hq * D);
    Bf16* out = device_alloc<Bf16>(batch * Hq * D);
    Bf16* kc = device_alloc<Bf16>(num_pages * P * Hkv * D);
    Bf16* vc = device_alloc<Bf16>(num_pages * P * Hkv * D);
    DecodeAttentionParams p;
    p.q = q;
    p.k_cache = kc;
    p.v_cache = vc;
    p.block_tables = d_tables;
    p.seq_lens = d_lens;
    p.out = out;
    p.num_seqs = batch;
    p.num_q_heads = Hq;
    p.num_kv_heads = Hkv;
    p.head_dim = D;
    p.page_size = P;
    p.max_pages_per_seq = pages_per_seq;
    p.scale = 0.088f;
    const DecodeSplit plan = plan_decode_split(batch, Hq, Hkv, D, ctx, prop.multiProcessorCount);
    p.split_tokens = plan.split_tokens;
    p.max_splits = plan.max_splits;
    float* workspace = plan.workspace_bytes ? device_alloc<float>(plan.workspace_bytes / 4) : nullptr;
    p.workspace = workspace;
    const double ms = time_ms([&] { check(decode_attention(p, nullptr)); });
    const double bytes = 2.0 * batch * ctx * Hkv * D * 2 + 2.0 * batch * Hq * D * 2;
    row("decode_attention", "batch " + std::to_string(batch) + ", ctx 1024, " + std::to_string(Hq) + "/" +
                                std::to_string(Hkv) + " heads, d 128, " + std::to_string(plan.max_splits) + " pieces",
        ms, bytes);
    cudaFree(workspace);
    cudaFree(d_tables);
    cudaFree(d_lens);
    cudaFree(q);
    cudaFree(out);
    cudaFree(kc);
    cudaFree(vc);
  }

  // RMSNorm with the residual add, and SiLU·mul, at Llama-3-8B's widths.
  for (int64_t rows : {1, 256, 4096}) {
    const int64_t width = 4096;
    Bf16* x = device_alloc<Bf16>(rows * width);
    Bf16* r = device_alloc<Bf16>(rows * width);
    Bf16* w = device_alloc<Bf16>(width);
    Bf16* o = device_alloc<Bf16>(rows * width);
    const double ms = time_ms([&] { check(rms_norm({x, r, w, o, rows, width, 1e-5f}, nullptr)); });
    row("rms_norm + residual", std::to_string(rows) + " x 4096", ms, 4.0 * rows * width * 2 + width * 2);
    cudaFree(x);
    cudaFree(r);
    cudaFree(w);
    cudaFree(o);
  }
  for (int64_t rows : {1, 256, 4096}) {
    const int64_t width = 14336;
    Bf16* gu = device_alloc<Bf16>(rows * 2 * width);
    Bf16* o = device_alloc<Bf16>(rows * width);
    const double ms = time_ms([&] { check(silu_mul({gu, o, rows, width}, nullptr)); });
    row("silu_mul", std::to_string(rows) + " x 14336", ms, 3.0 * rows * width * 2);
    cudaFree(gu);
    cudaFree(o);
  }

  auto gemm = Gemm::create();
  check(gemm.status());
  // Random operands: tensor cores draw less power (and clock higher) on constant data.
  std::vector<Bf16> noise(size_t{28672} * 8192);
  uint64_t x = 88172645463325252ull;
  for (Bf16& v : noise) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v = static_cast<Bf16>(0x3C00 | (x & 0x81FF));  // random sign and mantissa, magnitudes 2^-7..2^-6
  }
  auto random_alloc = [&](int64_t n) {
    Bf16* p = device_alloc<Bf16>(n);
    check(cudaMemcpy(p, noise.data(), static_cast<size_t>(n) * sizeof(Bf16), cudaMemcpyHostToDevice), "copy");
    return p;
  };
  auto gemm_ms = [&](Gemm& g, int64_t m, int64_t n, int64_t k) {
    Bf16* act = random_alloc(m * k);
    Bf16* w = random_alloc(n * k);
    Bf16* c = device_alloc<Bf16>(m * n);
    const double ms = time_ms([&] { check(g.run({act, w, c, m, n, k}, nullptr)); });
    cudaFree(act);
    cudaFree(w);
    cudaFree(c);
    return ms;
  };
  const double square_ms = gemm_ms(**gemm, 8192, 8192, 8192);
  const double peak_tflops = 2.0 * 8192.0 * 8192.0 * 8192.0 / (square_ms * 1e-3) / 1e12;
  std::printf("\nbf16 GEMM reference: 8192 x 8192 x 8192 at %.0f TFLOP/s\n\n", peak_tflops);
  std::printf("| GEMM (m x n x k) | what | time (us) | TFLOP/s | share of the square GEMM | weight GB/s | share of copy rate |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  struct Proj {
    const char* name;
    int64_t n, k;
  };
  const Proj projs[] = {{"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336}};
  for (int64_t m : {1, 8, 32, 128, 2048, 8192}) {
    for (const Proj& pr : projs) {
      const double ms = gemm_ms(**gemm, m, pr.n, pr.k);
      const double tflops = 2.0 * m * pr.n * pr.k / (ms * 1e-3) / 1e12;
      const double weight_gbs = 2.0 * pr.n * pr.k / (ms * 1e-3) / 1e9;
      std::printf("| %lld x %lld x %lld | %s | %.1f | %.1f | %.0f%% | %.0f | %.0f%% |\n", static_cast<long long>(m),
                  static_cast<long long>(pr.n), static_cast<long long>(pr.k), pr.name, ms * 1e3, tflops,
                  100.0 * tflops / peak_tflops, weight_gbs, 100.0 * weight_gbs / copy_gbs);
    }
  }

  // Between decode and prefill (the rows of a served step that mixes them): cuBLASLt's
  // heuristic choice against the fastest of its candidates, and the roofline of each shape
  // (the larger of weight bytes at the copy rate and FLOPs at the square GEMM's rate).
  auto tuned = Gemm::create(size_t{32} << 20, int64_t{1} << 40);
  auto untuned = Gemm::create(size_t{32} << 20, 0);
  check(tuned.status());
  check(untuned.status());
  std::printf("\n| m | GEMM | heuristic (us) | tuned (us) | roofline (us) | heuristic share | tuned share |\n|---|---|---|---|---|---|---|\n");
  for (int64_t m : {160, 256, 384, 512, 768, 1024, 1536, 2048}) {
    for (const Proj& pr : projs) {
      const double h = gemm_ms(**untuned, m, pr.n, pr.k);
      const double t = gemm_ms(**tuned, m, pr.n, pr.k);
      const double roof = std::max(2.0 * pr.n * pr.k / (copy_gbs * 1e9), 2.0 * m * pr.n * pr.k / (peak_tflops * 1e12)) * 1e3;
      std::printf("| %lld | %s | %.1f | %.1f | %.1f | %.0f%% | %.0f%% |\n", static_cast<long long>(m), pr.name, h * 1e3,
                  t * 1e3, roof * 1e3, 100 * roof / h, 100 * roof / t);
    }
  }
  return 0;
}
