// Dequantization kernels: the AVX2 path against the scalar path, the scalar path against
// gguf-py's reference, and the test model's tensors against gguf-py's checksums.
#include <catch2/catch.hpp>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dequantize.h"
#include "test_paths.h"
#include "worker/loader/gguf_file.h"

namespace cpu = tessera::kernels::cpu;
using cpu::DequantizePath;
using cpu::GgmlType;
using tessera::loader::GgufFile;
using namespace tessera::loader::testing;

namespace {

const GgmlType kDequantizableTypes[] = {
    GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0,
    GgmlType::kQ5_1, GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kQ8_K,
};

bool cpu_runs_avx2() {
  const auto& f = cpu::cpu_features();
  return f.avx2 && f.fma && f.f16c;
}

// A finite half of magnitude in [2^-10, 1): what real scale fields hold.
uint16_t random_scale_half(std::mt19937& rng) {
  const auto sign = static_cast<uint16_t>((rng() & 1) << 15);
  const auto exponent = static_cast<uint16_t>(5 + rng() % 10);
  return static_cast<uint16_t>(sign | (exponent << 10) | (rng() & 0x3FF));
}

void put_u16(std::vector<std::byte>& bytes, size_t at, uint16_t v) { std::memcpy(bytes.data() + at, &v, 2); }

// num_blocks random blocks of `type` whose scale fields are finite, so every output is
// finite and comparisons can be bitwise. Payload bytes are uniformly random.
std::vector<std::byte> random_blocks(GgmlType type, int64_t num_blocks, std::mt19937& rng) {
  const auto traits = *cpu::ggml_type_traits(type);
  std::vector<std::byte> bytes(static_cast<size_t>(num_blocks * traits.block_bytes));
  for (auto& b : bytes) b = static_cast<std::byte>(rng() & 0xFF);
  for (int64_t i = 0; i < num_blocks; ++i) {
    const size_t at = static_cast<size_t>(i * traits.block_bytes);
    switch (type) {
      case GgmlType::kF32: {
        const float v = std::ldexp(static_cast<float>(rng() % 2000) - 1000.0f, -static_cast<int>(rng() % 20));
        std::memcpy(bytes.data() + at, &v, 4);
        break;
      }
      case GgmlType::kQ4_0:
      case GgmlType::kQ5_0:
      case GgmlType::kQ8_0: put_u16(bytes, at, random_scale_half(rng)); break;
      case GgmlType::kQ4_1:
      case GgmlType::kQ5_1:
      case GgmlType::kQ4_K:
      case GgmlType::kQ5_K:
        put_u16(bytes, at, random_scale_half(rng));
        put_u16(bytes, at + 2, random_scale_half(rng));
        break;
      case GgmlType::kQ6_K: put_u16(bytes, at + 208, random_scale_half(rng)); break;
      case GgmlType::kQ8_K: {
        const float d = std::ldexp(static_cast<float>(rng() % 1000) + 1.0f, -16);
        std::memcpy(bytes.data() + at, &d, 4);
        break;
      }
      default: break;  // F16 and BF16: every bit pattern is a value
    }
  }
  return bytes;
}

std::vector<float> run(GgmlType type, std::span<const std::byte> src, int64_t num_elements, DequantizePath path) {
  std::vector<float> out(static_cast<size_t>(num_elements), -12345.0f);
  cpu::DequantizeParams params;
  params.type = type;
  params.src = src;
  params.dst = out;
  params.path = path;
  const auto status = cpu::dequantize(params);
  INFO(status.to_string());
  REQUIRE(status.is_ok());
  return out;
}

// Index of the first element whose bits differ, treating any two NaNs as equal; -1 if none.
int64_t first_bit_difference(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

std::vector<std::byte> from_hex(const std::string& hex) {
  std::vector<std::byte> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<std::byte>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  }
  return out;
}

}  // namespace

TEST_CASE("ggml type traits give the block sizes of the GGUF specification", "[kernels][dequantize]") {
  CHECK(cpu::row_size_bytes(GgmlType::kF32, 10) == 40);
  CHECK(cpu::row_size_bytes(GgmlType::kQ4_0, 64) == 36);
  CHECK(cpu::row_size_bytes(GgmlType::kQ4_1, 32) == 20);
  CHECK(cpu::row_size_bytes(GgmlType::kQ5_0, 32) == 22);
  CHECK(cpu::row_size_bytes(GgmlType::kQ5_1, 32) == 24);
  CHECK(cpu::row_size_bytes(GgmlType::kQ8_0, 32) == 34);
  CHECK(cpu::row_size_bytes(GgmlType::kQ4_K, 256) == 144);
  CHECK(cpu::row_size_bytes(GgmlType::kQ5_K, 512) == 352);
  CHECK(cpu::row_size_bytes(GgmlType::kQ6_K, 256) == 210);
  CHECK(cpu::row_size_bytes(GgmlType::kQ8_K, 256) == 292);
  CHECK(cpu::row_size_bytes(GgmlType::kBF16, 3) == 6);
  CHECK_FALSE(cpu::row_size_bytes(GgmlType::kQ4_K, 255));
  CHECK_FALSE(cpu::row_size_bytes(GgmlType::kQ4_0, -32));
  CHECK_FALSE(cpu::row_size_bytes(GgmlType::kF32, INT64_MAX));
  CHECK_FALSE(cpu::ggml_type_traits(4u));   // removed from ggml
  CHECK_FALSE(cpu::ggml_type_traits(999u));
  CHECK(cpu::ggml_type_name(GgmlType::kQ6_K) == "Q6_K");
  CHECK(static_cast<uint32_t>(GgmlType::kBF16) == 30);
}

TEST_CASE("fast-path dequantization equals the scalar reference bit for bit on random blocks",
          "[kernels][dequantize]") {
  // The AVX2 kernels do the scalar kernels' float operations in the same order without
  // FMA, so the results must be identical, not merely close.
  if (!cpu_runs_avx2()) WARN("this CPU lacks AVX2: only the scalar path is exercised");
  const DequantizePath fast_path = cpu_runs_avx2() ? DequantizePath::kAvx2 : DequantizePath::kAuto;
  std::mt19937 rng(1234);
  for (GgmlType type : kDequantizableTypes) {
    const auto traits = *cpu::ggml_type_traits(type);
    for (int64_t num_blocks : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{257}}) {
      INFO(traits.name << " x " << num_blocks << " blocks");
      const auto src = random_blocks(type, num_blocks, rng);
      const int64_t n = num_blocks * traits.block_size;
      const auto scalar = run(type, src, n, DequantizePath::kScalar);
      const auto fast = run(type, src, n, fast_path);
      CHECK(first_bit_difference(scalar, fast) == -1);
      for (float v : scalar) REQUIRE(v != -12345.0f);  // every element written
    }
  }
}

TEST_CASE("half and bfloat16 conversion is exact for every bit pattern on both paths", "[kernels][dequantize]") {
  std::vector<std::byte> all(65536 * 2);
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    std::memcpy(all.data() + 2 * h, &bits, 2);
  }
  for (GgmlType type : {GgmlType::kF16, GgmlType::kBF16}) {
    const auto scalar = run(type, all, 65536, DequantizePath::kScalar);
    if (cpu_runs_avx2()) CHECK(first_bit_difference(scalar, run(type, all, 65536, DequantizePath::kAvx2)) == -1);
  }
  CHECK(cpu::fp16_to_fp32(0x3C00) == 1.0f);
  CHECK(cpu::fp16_to_fp32(0xC000) == -2.0f);
  CHECK(cpu::fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(cpu::fp16_to_fp32(0x7BFF) == 65504.0f);
  CHECK(std::isinf(cpu::fp16_to_fp32(0x7C00)));
  CHECK(std::isnan(cpu::fp16_to_fp32(0x7C01)));
  CHECK(std::signbit(cpu::fp16_to_fp32(0x8000)));
  CHECK(cpu::bf16_to_fp32(0x3F80) == 1.0f);
  CHECK(cpu::bf16_to_fp32(0xC040) == -3.0f);
}

TEST_CASE("float to half rounds to nearest even and round-trips every half", "[kernels][dequantize]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float f = cpu::fp16_to_fp32(bits);
    if (std::isnan(f)) {
      REQUIRE(std::isnan(cpu::fp16_to_fp32(cpu::fp32_to_fp16(f))));
    } else {
      REQUIRE(cpu::fp32_to_fp16(f) == bits);
    }
  }
  CHECK(cpu::fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);      // halfway: ties to even (down)
  CHECK(cpu::fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // halfway above odd: up
  CHECK(cpu::fp32_to_fp16(70000.0f) == 0x7C00);                          // overflow: infinity
  CHECK(cpu::fp32_to_fp16(std::ldexp(1.0f, -26)) == 0x0000);             // below half the smallest subnormal
}

TEST_CASE("scalar dequantization reproduces gguf-py's values for every supported type", "[kernels][dequantize]") {
  const auto fixture = nlohmann::json::parse(read_text_file(fixture_path("dequant_blocks.json")));
  size_t num_types = 0;
  for (const auto& [name, entry] : fixture["types"].items()) {
    INFO("type " << name);
    const auto type = static_cast<GgmlType>(entry["type_id"].get<uint32_t>());
    REQUIRE(cpu::ggml_type_name(type) == name);
    const auto src = from_hex(entry["hex"].get<std::string>());
    const auto expected = entry["values"].get<std::vector<double>>();
    for (DequantizePath path : {DequantizePath::kScalar, DequantizePath::kAuto}) {
      const auto got = run(type, src, static_cast<int64_t>(expected.size()), path);
      for (size_t i = 0; i < expected.size(); ++i) {
        INFO("element " << i);
        // gguf-py computes in float32 with the same operations (numpy does not fuse
        // multiply-adds), so values match exactly.
        REQUIRE(got[i] == static_cast<float>(expected[i]));
      }
    }
    ++num_types;
  }
  CHECK(num_types == std::size(kDequantizableTypes));
}

TEST_CASE("dequantize rejects mismatched sizes, partial blocks and types without a kernel",
          "[kernels][dequantize]") {
  std::vector<std::byte> src(34);
  std::vector<float> dst(32);
  cpu::DequantizeParams params{GgmlType::kQ8_0, src, dst, DequantizePath::kAuto};
  CHECK(cpu::dequantize(params).is_ok());

  params.src = std::span(src).first(33);
  CHECK(cpu::dequantize(params).code() == tessera::StatusCode::kInvalidArgument);

  std::vector<float> partial(31);
  params = {GgmlType::kQ8_0, std::span(src).first(0), partial, DequantizePath::kAuto};
  CHECK(cpu::dequantize(params).message().find("whole number") != std::string::npos);

  std::vector<std::byte> q2(84);
  std::vector<float> q2_out(256);
  params = {GgmlType::kQ2_K, q2, q2_out, DequantizePath::kAuto};
  CHECK(cpu::dequantize(params).code() == tessera::StatusCode::kUnimplemented);

  params = {static_cast<GgmlType>(4), src, dst, DequantizePath::kAuto};
  CHECK(cpu::dequantize(params).code() == tessera::StatusCode::kInvalidArgument);
}

TEST_CASE("force_scalar_dequantize switches the automatic path", "[kernels][dequantize]") {
  cpu::force_scalar_dequantize(true);
  CHECK(cpu::active_dequantize_path() == DequantizePath::kScalar);
  cpu::force_scalar_dequantize(false);
  CHECK(cpu::active_dequantize_path() ==
        (cpu_runs_avx2() ? DequantizePath::kAvx2 : DequantizePath::kScalar));
}

TEST_CASE("every tensor of the test model dequantizes to gguf-py's checksums", "[loader][gguf][model]") {
  const std::string path = test_model_path();
  INFO("test model: " << path << " (run scripts/fetch-model, or set TESSERA_TEST_MODEL)");
  REQUIRE(std::filesystem::exists(path));
  const auto fixture = nlohmann::json::parse(read_text_file(fixture_path("smollm2_tensors.json")));
  auto opened = GgufFile::open(path);
  REQUIRE(opened.is_ok());
  const GgufFile& file = *opened;

  const bool force_scalar = GENERATE(false, true);
  cpu::force_scalar_dequantize(force_scalar);
  INFO("path: " << (force_scalar ? "scalar" : "auto"));
  std::vector<float> values;
  size_t num_checked = 0;
  for (const auto& [name, expected] : fixture["tensors"].items()) {
    INFO("tensor " << name);
    const auto* info = file.find_tensor(name);
    REQUIRE(info != nullptr);
    values.assign(static_cast<size_t>(info->num_elements), 0.0f);
    REQUIRE(file.dequantize_tensor(*info, values).is_ok());
    double sum = 0, weighted_sum = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      sum += values[i];
      weighted_sum += static_cast<double>(values[i]) * static_cast<double>(i % 7 + 1);
    }
    // numpy sums pairwise, this loop sequentially: both are within n * 2^-53 * sum|terms|
    // of the exact sum, so they differ by at most twice that (terms are exact in float64).
    const double n = static_cast<double>(values.size());
    const double sum_abs = expected["sum_abs"].get<double>();
    const double tolerance = 2.0 * n * std::ldexp(1.0, -53) * 7.0 * sum_abs + 1e-12;
    CHECK(std::abs(sum - expected["sum"].get<double>()) <= tolerance);
    CHECK(std::abs(weighted_sum - expected["weighted_sum"].get<double>()) <= tolerance);
    const auto first = expected["first"].get<std::vector<double>>();
    for (size_t i = 0; i < first.size(); ++i) CHECK(values[i] == static_cast<float>(first[i]));
    ++num_checked;
  }
  cpu::force_scalar_dequantize(false);
  CHECK(num_checked == file.tensors().size());
}
