// bf16 GEMMs through cuBLASLt: C[m, n] = A[m, k] · W[n, k]ᵀ (+ C when accumulate), with
// activations A row-major and the weight row-major as [out_features, in_features] (the
// layout of Hugging Face checkpoints), fp32 accumulation, bf16 output. The algorithm of
// each shape is chosen once and cached with its descriptors: cuBLASLt's first heuristic
// for prefill shapes; for skinny ones (m <= 256, decode) the fastest of its first eight
// candidates, timed on the first call, which synchronizes the stream that once (so warm
// a shape up before capturing it in a CUDA graph). Plain C++ header.
//
// Threads: a Gemm is used by one thread at a time (one per worker stream); its cache is
// not locked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/cuda/gemm_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {


class Gemm {
 public:
  // A cuBLASLt handle and `workspace_bytes` of device memory for its algorithms. Shapes of
  // at most `tuned_rows` rows time cuBLASLt's candidates on first use and keep the fastest;
  // larger ones take its heuristic's first.
  [[nodiscard]] static Result<std::unique_ptr<Gemm>> create(size_t workspace_bytes = size_t{32} << 20,
                                                            int64_t tuned_rows = 256);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Enqueues on `stream`; never synchronizes. INVALID_ARGUMENT for bad shapes; INTERNAL
  // (with cuBLAS's status) when no algorithm fits or the launch fails.
  [[nodiscard]] Status run(const GemmParams& p, Stream stream);
  // Shapes whose plan is cached.
  size_t num_cached_shapes() const;

 private:
  struct Impl;
  explicit Gemm(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::kernels::cuda
