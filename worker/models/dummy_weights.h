// The "dummy" load format: deterministic random weights of the right shapes for a model
// we can describe (config.json) but not download. Value i of a tensor depends only on
// (seed, tensor name, i), so any slice of any tensor can be generated on its own — in
// parallel threads, in chunks straight into device staging buffers, on any machine —
// and two runs with the same seed load identical models.
#pragma once

#include <cstdint>
#include <span>

#include "worker/models/model_config.h"

namespace tessera::models {

struct DummyInit {
  // Linear and embedding weights: uniform with this standard deviation, mean 0 (the
  // usual 0.02 initializer range keeps activations of deep models finite).
  float weight_stddev = 0.02f;
  // RMSNorm weights: 1 plus uniform noise of this standard deviation.
  float norm_noise_stddev = 0.01f;
};

// Writes elements [first, first + out.size()) of the tensor `spec` (flattened row-major).
void fill_dummy_f32(const WeightSpec& spec, uint64_t seed, uint64_t first, std::span<float> out,
                    const DummyInit& init = {});
// The same values rounded to bfloat16 (round to nearest even), as raw bits.
void fill_dummy_bf16(const WeightSpec& spec, uint64_t seed, uint64_t first, std::span<uint16_t> out,
                     const DummyInit& init = {});

// Round-to-nearest-even float → bfloat16 bits (NaN stays NaN).
uint16_t float_to_bf16_bits(float value);

}  // namespace tessera::models
