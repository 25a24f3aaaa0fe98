#include "worker/models/dummy_weights.h"

#include <bit>
#include <cmath>
#include <string_view>

namespace tessera::models {
namespace {

// FNV-1a: a stable hash of the tensor name (std::hash may differ between builds).
uint64_t name_hash(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// splitmix64 finaliser: a good 64-bit mix, so consecutive counters give independent values.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-1, 1) from the top 24 bits (exactly representable in float).
float unit_uniform(uint64_t bits) { return static_cast<float>(bits >> 40) * (2.0f / 16777216.0f) - 1.0f; }

template <typename Out, typename Convert>
void fill(const WeightSpec& spec, uint64_t seed, uint64_t first, std::span<Out> out, const DummyInit& init,
          Convert convert) {
  // The hf_name identifies the tensor whatever file convention a loader uses.
  const uint64_t stream = mix(seed ^ mix(name_hash(spec.hf_name)));
  // A uniform on [-a, a) has standard deviation a / sqrt(3).
  const float amplitude = std::sqrt(3.0f) * (spec.is_norm ? init.norm_noise_stddev : init.weight_stddev);
  const float offset = spec.is_norm ? 1.0f : 0.0f;
  // Each element depends only on its index: the threads' split changes nothing.
  const auto n = static_cast<int64_t>(out.size());
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) {
    out[static_cast<std::size_t>(i)] = convert(offset + amplitude * unit_uniform(mix(stream + first + static_cast<uint64_t>(i))));
  }
}

}  // namespace

uint16_t float_to_bf16_bits(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // keep it a quiet NaN
  bits += 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

void fill_dummy_f32(const WeightSpec& spec, uint64_t seed, uint64_t first, std::span<float> out,
                    const DummyInit& init) {
  fill(spec, seed, first, out, init, [](float v) { return v; });
}

void fill_dummy_bf16(const WeightSpec& spec, uint64_t seed, uint64_t first, std::span<uint16_t> out,
                     const DummyInit& init) {
  fill(spec, seed, first, out, init, float_to_bf16_bits);
}

}  // namespace tessera::models
