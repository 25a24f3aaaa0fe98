// The element-wise and row-wise bf16 kernels of a transformer layer on the GPU: embedding
// gather, RMSNorm fused with the residual add, SiLU·mul, and rotary embedding fused with the
// write of K and V into the paged KV cache. Plain C++ header: callers need no CUDA headers
// (bf16 values travel as their 16-bit patterns, a stream as its handle).
//
// Every function checks its parameters (INVALID_ARGUMENT), launches on `stream` without
// synchronizing, and returns the launch error if there is one (INTERNAL). Arithmetic is in
// fp32; results are rounded to bf16 where Hugging Face's bf16 modules round them, so the
// GPU backend tracks the reference implementation step by step.
#pragma once

#include "kernels/cuda/layer_ops_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// Parameter structs: layer_ops_params.h.
[[nodiscard]] Status embedding(const EmbeddingParams& p, Stream stream);
[[nodiscard]] Status rms_norm(const RmsNormParams& p, Stream stream);
[[nodiscard]] Status silu_mul(const SiluMulParams& p, Stream stream);
[[nodiscard]] Status rope_and_cache_kv(const RopeKvParams& p, Stream stream);
[[nodiscard]] Status add(const AddParams& p, Stream stream);
[[nodiscard]] Status gather_rows(const GatherRowsParams& p, Stream stream);
[[nodiscard]] Status add_bias(const AddBiasParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
