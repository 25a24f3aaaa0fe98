#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "worker/models/dummy_weights.h"

namespace models = tessera::models;

namespace {

models::WeightSpec linear_spec() { return {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", {256, 128}}; }
models::WeightSpec norm_spec() { return {"model.norm.weight", "output_norm.weight", {4096}, true}; }

std::vector<float> whole(const models::WeightSpec& spec, uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(spec.shape[0] * (spec.shape.size() > 1 ? spec.shape[1] : 1)));
  models::fill_dummy_f32(spec, seed, 0, v);
  return v;
}

}  // namespace

TEST_CASE("the same seed gives the same weights, another seed or tensor different ones", "[models][dummy]") {
  auto a = whole(linear_spec(), 42);
  CHECK(a == whole(linear_spec(), 42));
  CHECK(a != whole(linear_spec(), 43));
  auto other = linear_spec();
  other.hf_name = "model.layers.1.mlp.up_proj.weight";
  CHECK(a != whole(other, 42));
}

TEST_CASE("any slice equals the same range of the whole tensor", "[models][dummy]") {
  auto full = whole(linear_spec(), 7);
  std::vector<float> part(1000);
  models::fill_dummy_f32(linear_spec(), 7, 12345, part);
  for (std::size_t i = 0; i < part.size(); ++i) REQUIRE(part[i] == full[12345 + i]);
}

TEST_CASE("weights have mean 0 and the configured standard deviation, norms sit near 1", "[models][dummy]") {
  auto w = whole(linear_spec(), 1);
  double sum = 0, sq = 0;
  for (float x : w) {
    sum += x;
    sq += double{x} * x;
  }
  double mean = sum / w.size(), stddev = std::sqrt(sq / w.size() - mean * mean);
  CHECK(std::abs(mean) < 0.001);
  CHECK(stddev == Approx(0.02).epsilon(0.02));
  auto n = whole(norm_spec(), 1);
  for (float x : n) REQUIRE(std::abs(x - 1.0f) <= 0.0174f);  // 1 ± sqrt(3) × 0.01
}

TEST_CASE("bf16 output is the f32 output rounded to nearest even", "[models][dummy]") {
  std::vector<float> f(4096);
  std::vector<uint16_t> b(4096);
  models::fill_dummy_f32(linear_spec(), 3, 100, f);
  models::fill_dummy_bf16(linear_spec(), 3, 100, b);
  for (std::size_t i = 0; i < f.size(); ++i) REQUIRE(b[i] == models::float_to_bf16_bits(f[i]));
  CHECK(models::float_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(models::float_to_bf16_bits(1.00390625f) == 0x3f80);  // exactly halfway: ties to even
  CHECK(models::float_to_bf16_bits(1.01171875f) == 0x3f82);  // halfway above an odd: rounds up
  CHECK((models::float_to_bf16_bits(std::nanf("")) & 0x7fc0) == 0x7fc0);
}
