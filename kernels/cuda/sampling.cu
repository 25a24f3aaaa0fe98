#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/sampling_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kThreads = 512;

// (value, index) pairs ordered by value, then by the lower index; NaN below everything.
struct Best {
  float value;
  int32_t index;
};
__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  if (a.value != a.value) return false;  // NaN never wins
  if (b.value != b.value) return true;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ float load_logit(const float* row, int64_t i) { return row[i]; }
__device__ __forceinline__ float load_logit(const __nv_bfloat16* row, int64_t i) { return __bfloat162float(row[i]); }

template <class T>
__global__ void __launch_bounds__(kThreads) argmax_kernel(ArgmaxParams p) {
  const T* row = static_cast<const T*>(p.logits) + blockIdx.x * p.stride;
  Best best{__int_as_float(0x7fc00000), -1};
  auto consider = [&best](float value, int64_t i) {
    const Best c{value, static_cast<int32_t>(i)};
    if (best.index < 0 || better(c, best)) best = c;
  };
  int64_t scalar_from = 0;
  if constexpr (sizeof(T) == 2) {
    // bf16 rows on 16-byte boundaries: eight logits per load, kArgmaxUnroll loads in flight
    // per thread (a 128k vocabulary is otherwise ~250 dependent round trips per thread).
    if (reinterpret_cast<uintptr_t>(row) % 16 == 0) {
      constexpr int kArgmaxUnroll = 8;
      const uint4* words = reinterpret_cast<const uint4*>(row);
      const int64_t num_words = p.vocab / 8;
      for (int64_t i0 = threadIdx.x; i0 < num_words; i0 += kThreads * kArgmaxUnroll) {
        uint4 q[kArgmaxUnroll];
        #pragma unroll
        for (int u = 0; u < kArgmaxUnroll; ++u) {
          const int64_t i = i0 + u * kThreads;
          q[u] = i < num_words ? words[i] : make_uint4(0, 0, 0, 0);
        }
        #pragma unroll
        for (int u = 0; u < kArgmaxUnroll; ++u) {
          const int64_t i = i0 + u * kThreads;
          if (i >= num_words) break;
          const uint32_t halves[4] = {q[u].x, q[u].y, q[u].z, q[u].w};
          #pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = bf16::unpack2(halves[e]);
            consider(f.x, 8 * i + 2 * e);
            consider(f.y, 8 * i + 2 * e + 1);
          }
        }
      }
      scalar_from = num_words * 8;
    }
  }
  for (int64_t i = scalar_from + threadIdx.x; i < p.vocab; i += kThreads) consider(load_logit(row, i), i);
  for (int o = 16; o > 0; o >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, o), __shfl_xor_sync(0xffffffffu, best.index, o)};
    if (other.index >= 0 && (best.index < 0 || better(other, best))) best = other;
  }
  __shared__ Best warps[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best b = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) {
      if (warps[w].index >= 0 && (b.index < 0 || better(warps[w], b))) b = warps[w];
    }
    const bool usable = b.index >= 0 && b.value == b.value && b.value != -__int_as_float(0x7f800000);
    p.out[blockIdx.x] = usable ? b.index : -1;
  }
}

constexpr int kSampleThreads = 1024;
constexpr float kMinTemperature = 1e-5f;  // the CPU sampler's greedy threshold

// Block-wide reductions through shared scratch (one slot per warp). Every thread returns the total.
template <typename T, typename Op>
__device__ T block_reduce(T v, Op op, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // the scratch's previous use is over
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < kSampleThreads / 32; ++w) total = op(total, scratch[w]);
  return total;
}
struct Add {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinKey {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a < b ? a : b; }
};

// The CPU sampler's one order (descending weight, ties by lower id) as one 64-bit key per
// token: the weight's bits (weights are >= 0, so their bits order as they do), then the id
// inverted. Every cut of that order is a key K: the tokens kept are those with key >= K.
__device__ __forceinline__ unsigned long long rank_key(float w, int64_t i) {
  return static_cast<unsigned long long>(__float_as_uint(w)) << 32 | (0xffffffffu - static_cast<uint32_t>(i));
}

struct RadixScratch {
  int count[256];
  double mass[256];
  unsigned long long prefix;
  double above;
};
constexpr int kSampleWarps = kSampleThreads / 32;
// Each warp counts into its own bins (dynamic shared memory), merged after each pass: the
// leading digits of the weights take few values, and every warp adding to one shared bin
// would serialize.
struct WarpBins {
  int count[kSampleWarps][256];
  float mass[kSampleWarps][256];
};

// The largest key K (a token's) whose tokens ranked at or before it reach `target` in
// count (by_count) or mass: radix select over the keys, 8 bits a pass, never sorting.
// Tokens of weight 0 do not count. Returns 0 when no token reaches it.
__device__ unsigned long long select_key(const float* w, int64_t vocab, double target, bool by_count, RadixScratch& r,
                                         WarpBins& bins) {
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) {
    r.prefix = 0;
    r.above = 0;
  }
  for (int level = 0; level < 8; ++level) {
    const int shift = 56 - 8 * level;
    for (int b = threadIdx.x; b < kSampleWarps * 256; b += kSampleThreads) {
      (&bins.count[0][0])[b] = 0;
      (&bins.mass[0][0])[b] = 0.0f;
    }
    __syncthreads();
    const unsigned long long prefix = r.prefix;
    // Runs of one digit are summed in registers first: the leading digits of the weights
    // are nearly all alike, and one shared atomic per token on the same bin would serialize.
    int run_digit = -1, run_count = 0;
    double run_mass = 0;
    auto flush = [&] {
      if (run_count == 0) return;
      atomicAdd(&bins.count[warp][run_digit], run_count);
      if (!by_count) atomicAdd(&bins.mass[warp][run_digit], static_cast<float>(run_mass));
    };
    for (int64_t i = threadIdx.x; i < vocab; i += kSampleThreads) {
      const float x = w[i];
      if (!(x > 0.0f)) continue;
      const unsigned long long key = rank_key(x, i);
      if (level > 0 && (key >> (shift + 8)) != prefix) continue;
      const int digit = static_cast<int>((key >> shift) & 0xff);
      if (digit != run_digit) {
        flush();
        run_digit = digit;
        run_count = 0;
        run_mass = 0;
      }
      ++run_count;
      run_mass += x;
    }
    flush();
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += kSampleThreads) {
      int c = 0;
      double m = 0;
      for (int k = 0; k < kSampleWarps; ++k) {
        c += bins.count[k][b];
        m += bins.mass[k][b];
      }
      r.count[b] = c;
      r.mass[b] = m;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double running = r.above;
      int pick = -1;
      for (int d = 255; d >= 0; --d) {
        if (r.count[d] == 0) continue;
        const double here = by_count ? r.count[d] : r.mass[d];
        if (running + here >= target) {
          pick = d;
          break;
        }
        running += here;
      }
      if (pick < 0) {
        r.prefix = ~0ull;  // nothing reaches: no key
      } else {
        r.above = running;
        r.prefix = prefix << 8 | static_cast<unsigned>(pick);
      }
    }
    __syncthreads();
    if (r.prefix == ~0ull) return 0;
  }
  return r.prefix;
}

// Count and mass of the tokens with key >= cut.
__device__ void kept_by(const float* w, int64_t vocab, unsigned long long cut, double* mass, int* count,
                        double* dscratch, int* iscratch) {
  double m = 0;
  int c = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kSampleThreads) {
    if (w[i] > 0.0f && rank_key(w[i], i) >= cut) {
      m += w[i];
      ++c;
    }
  }
  *mass = block_reduce(m, Add{}, dscratch);
  *count = block_reduce(c, Add{}, iscratch);
}

__global__ void __launch_bounds__(kSampleThreads) sample_kernel(SampleParams p) {
  __shared__ double dscratch[kSampleThreads / 32];
  __shared__ float fscratch[kSampleThreads / 32];
  __shared__ int iscratch[kSampleThreads / 32];
  __shared__ Best bscratch[kSampleThreads / 32];
  const int64_t row = blockIdx.x;
  const SamplingRowParams rp = p.row_params[row];
  const __nv_bfloat16* in = reinterpret_cast<const __nv_bfloat16*>(p.logits) + row * p.stride;
  float* w = p.workspace + row * p.vocab;
  const float kFloatMax = 3.402823466e38f, kNegInf = -__int_as_float(0x7f800000);
  // Logits as floats, NaN as -inf and +inf as the largest float (the CPU's sanitize).
  for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
    float x = __bfloat162float(in[i]);
    if (!(x <= kFloatMax)) x = x != x ? kNegInf : kFloatMax;
    w[i] = x;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < rp.edits_count; e += kSampleThreads) {
    const LogitEdit ed = p.edits[rp.edits_begin + e];
    if (ed.token < 0 || ed.token >= p.vocab) continue;
    float x = w[ed.token] + ed.bias;
    if (ed.repeated && rp.repetition_penalty != 1.0f) x = x > 0 ? x / rp.repetition_penalty : x * rp.repetition_penalty;
    x -= ed.subtract;
    if (!(x <= kFloatMax)) x = x != x ? kNegInf : kFloatMax;
    w[ed.token] = ed.banned ? kNegInf : x;
  }
  __syncthreads();
  if (rp.temperature < kMinTemperature) {
    Best best{kNegInf, -1};
    for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
      const Best c{w[i], static_cast<int32_t>(i)};
      if (c.value > kNegInf && (best.index < 0 || better(c, best))) best = c;
    }
    for (int o = 16; o > 0; o >>= 1) {
      const Best other{__shfl_xor_sync(0xffffffffu, best.value, o), __shfl_xor_sync(0xffffffffu, best.index, o)};
      if (other.index >= 0 && (best.index < 0 || better(other, best))) best = other;
    }
    if ((threadIdx.x & 31) == 0) bscratch[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
      Best b = bscratch[0];
      for (int k = 1; k < kSampleThreads / 32; ++k) {
        if (bscratch[k].index >= 0 && (b.index < 0 || better(bscratch[k], b))) b = bscratch[k];
      }
      p.out[row] = b.index;
    }
    return;
  }
  float mx = kNegInf;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) mx = fmaxf(mx, w[i]);
  mx = block_reduce(mx, Max{}, fscratch);
  if (mx == kNegInf) {
    if (threadIdx.x == 0) p.out[row] = -1;
    return;
  }
  // Weights relative to the most likely token (its weight is exactly 1).
  const float inv_t = 1.0f / rp.temperature;
  for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
    w[i] = w[i] == kNegInf ? 0.0f : expf((w[i] - mx) * inv_t);
  }
  __syncthreads();
  // Cuts in the one order, as the CPU sampler makes them: top-k, then the nucleus of what
  // is left, then min-p; the draw is the token where the mass accumulated from the top
  // reaches u × the kept mass.
  __shared__ RadixScratch radix;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  WarpBins& bins = *reinterpret_cast<WarpBins*>(dynamic_smem);
  __shared__ unsigned long long kscratch[kSampleThreads / 32];
  unsigned long long cut = 1;  // every token of positive weight
  double kept;
  int count;
  kept_by(w, p.vocab, cut, &kept, &count, dscratch, iscratch);
  if (rp.top_k > 0 && rp.top_k < count) {
    cut = select_key(w, p.vocab, rp.top_k, true, radix, bins);
    kept_by(w, p.vocab, cut, &kept, &count, dscratch, iscratch);
  }
  if (rp.top_p < 1.0f) {
    const unsigned long long nucleus = select_key(w, p.vocab, static_cast<double>(rp.top_p) * kept, false, radix, bins);
    if (nucleus > cut) cut = nucleus;
  }
  if (rp.min_p > 0.0f) {
    const unsigned long long floor = static_cast<unsigned long long>(__float_as_uint(rp.min_p)) << 32;
    if (floor > cut) cut = floor;
  }
  kept_by(w, p.vocab, cut, &kept, &count, dscratch, iscratch);
  unsigned long long drawn = select_key(w, p.vocab, rp.u * kept, false, radix, bins);
  if (drawn < cut) {
    // Rounding left u × kept above the kept mass: the last kept token, as on the CPU.
    unsigned long long least = ~0ull;
    for (int64_t i = threadIdx.x; i < p.vocab; i += kSampleThreads) {
      if (w[i] > 0.0f) {
        const unsigned long long key = rank_key(w[i], i);
        if (key >= cut && key < least) least = key;
      }
    }
    drawn = block_reduce(least, MinKey{}, kscratch);
  }
  if (threadIdx.x == 0) p.out[row] = drawn == ~0ull ? -1 : static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(drawn));
}

}  // namespace

namespace launch {

const char* argmax(const ArgmaxParams& p, Stream stream) {
  if (p.bf16) {
    argmax_kernel<__nv_bfloat16><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  } else {
    argmax_kernel<float><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* sample(const SampleParams& p, Stream stream) {
  static const cudaError_t configured = cudaFuncSetAttribute(
      sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sizeof(WarpBins)));
  if (configured != cudaSuccess) return cudaGetErrorString(configured);
  sample_kernel<<<static_cast<unsigned>(p.rows), kSampleThreads, sizeof(WarpBins), stream>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
