// Seeded fuzzing of the GGUF and safetensors parsers: truncations and byte flips of the
// real test model's header and of synthetic files. A parse may succeed (a flipped byte
// inside a string is still a valid file) or fail, but it must never crash or read out of
// bounds; when it succeeds, every accessor is exercised so ASan sees the views it built.
// Set TESSERA_FUZZ_SEED to replay another seed.
#include <catch2/catch.hpp>

#include <cstdio>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "gguf_builder.h"
#include "kernels/cpu/dequantize.h"
#include "safetensors_writer.h"
#include "test_paths.h"
#include "worker/loader/gguf_file.h"
#include "worker/loader/safetensors_file.h"

using tessera::kernels::cpu::GgmlType;
using tessera::loader::GgufFile;
using tessera::loader::GgufValueType;
using tessera::loader::SafetensorsFile;
using namespace tessera::loader::testing;

// Progress lines for the log (timings, how many mutants still parsed). Not Catch's WARN:
// CI logs would show them as "warning:".
#define NOTE(msg)                                 \
  do {                                            \
    std::ostringstream note_;                     \
    note_ << msg;                                 \
    std::printf("note: %s\n", note_.str().c_str()); \
  } while (0)

namespace {

constexpr size_t kRealPrefixBytes = 1u << 20;

uint32_t fuzz_seed() {
  const char* env = std::getenv("TESSERA_FUZZ_SEED");
  return env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) : 20261126u;
}

// Reads everything a successfully parsed file exposes. Returns a value that depends on
// all of it so the reads cannot be optimised away.
uint64_t touch(const GgufFile& file, bool dequantize = true) {
  uint64_t acc = file.version();
  for (const auto& entry : file.metadata()) {
    acc += entry.key.size();
    acc += entry.value.to_display_string(4, 16).size();
    if (entry.value.is_array()) {
      (void)file.get_string_array(entry.key);
      (void)file.get_float_array(entry.key);
      (void)file.get_int_array(entry.key);
      for (auto s : entry.value.string_elements()) acc += s.size();
    }
  }
  std::vector<float> values;
  for (const auto& t : file.tensors()) {
    const auto data = file.tensor_data(t);
    REQUIRE(data.size() == t.size_bytes);
    if (!dequantize) {
      acc += static_cast<uint8_t>(data.front()) + static_cast<uint8_t>(data.back());
      continue;
    }
    for (std::byte b : data) acc += static_cast<uint8_t>(b);
    const auto traits = tessera::kernels::cpu::ggml_type_traits(t.type);
    if (traits && traits->can_dequantize && t.num_elements <= (1 << 20)) {
      values.resize(static_cast<size_t>(t.num_elements));
      REQUIRE(file.dequantize_tensor(t, values).is_ok());
    }
  }
  return acc;
}

uint64_t touch(const SafetensorsFile& file) {
  uint64_t acc = 0;
  for (const auto& [k, v] : file.metadata()) acc += k.size() + v.size();
  for (const auto& t : file.tensors()) {
    REQUIRE(static_cast<int64_t>(t.bytes.size()) ==
            t.num_elements() * static_cast<int64_t>(tessera::loader::tensor_dtype_bytes(t.dtype)));
    for (std::byte b : t.bytes) acc += static_cast<uint8_t>(b);
    REQUIRE(file.find(t.name) == &t);
  }
  return acc;
}

// Flips 1..max_flips random bytes within the first `region` bytes.
std::vector<std::byte> flipped(std::vector<std::byte> bytes, size_t region, int max_flips, std::mt19937& rng) {
  region = std::min(region, bytes.size());
  if (region == 0) return bytes;
  const int num_flips = 1 + static_cast<int>(rng() % static_cast<unsigned>(max_flips));
  for (int i = 0; i < num_flips; ++i) {
    const size_t at = rng() % region;
    switch (rng() % 4) {
      case 0: bytes[at] ^= static_cast<std::byte>(1u << (rng() % 8)); break;  // one bit
      case 1: bytes[at] = static_cast<std::byte>(rng() & 0xFF); break;        // random byte
      case 2: bytes[at] = std::byte{0xFF}; break;                             // huge lengths
      default: bytes[at] = std::byte{0}; break;                               // zero lengths
    }
  }
  return bytes;
}

std::vector<std::byte> truncated(const std::vector<std::byte>& bytes, std::mt19937& rng) {
  const size_t n = bytes.empty() ? 0 : rng() % bytes.size();
  return {bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)};
}

// Mutation number i of a run: i % 3 == 0 truncates (so no strict prefix may parse), 1 flips
// bytes inside the header region, 2 flips and then truncates.
std::vector<std::byte> mutation(const std::vector<std::byte>& bytes, size_t header_region, int i, std::mt19937& rng) {
  switch (i % 3) {
    case 0: return truncated(bytes, rng);
    case 1: return flipped(bytes, header_region, 3, rng);
    default: return truncated(flipped(bytes, header_region, 2, rng), rng);
  }
}

std::vector<std::byte> synthetic_gguf() {
  GgufBuilder b(3);
  b.kv_string("general.architecture", "llama")
      .kv("llama.context_length", GgufValueType::kUint32, uint32_t{2048})
      .kv("f", GgufValueType::kFloat32, 0.5f)
      .kv("d", GgufValueType::kFloat64, -0.25)
      .kv("b", GgufValueType::kBool, uint8_t{1})
      .kv("i64", GgufValueType::kInt64, int64_t{-9})
      .kv_array("tokens", encode_string_array({"<s>", "</s>", "hello", "world", ""}))
      .kv_array("scores", encode_array<float>(GgufValueType::kFloat32, {0.f, -1.f, -2.f, -3.f, -4.f}))
      .kv_array("types", encode_array<int32_t>(GgufValueType::kInt32, {3, 3, 1, 1, 1}))
      .kv_array("nested", encode_nested_array({encode_array<uint16_t>(GgufValueType::kUint16, {1, 2}),
                                               encode_string_array({"x", "yz"})}));
  b.tensor("f32", {8, 2}, GgmlType::kF32)
      .tensor("f16", {16}, GgmlType::kF16)
      .tensor("q8", {32, 2}, GgmlType::kQ8_0)
      .tensor("q4", {64}, GgmlType::kQ4_0)
      .tensor("q41", {32}, GgmlType::kQ4_1)
      .tensor("q4k", {256}, GgmlType::kQ4_K)
      .tensor("q6k", {256}, GgmlType::kQ6_K);
  return b.build();
}

std::vector<std::byte> synthetic_safetensors() {
  return make_safetensors({{"model.embed_tokens.weight", "BF16", {4, 8}, pattern_bytes(64, 1)},
                           {"model.norm.weight", "F32", {8}, pattern_bytes(32, 2)},
                           {"lm_head.weight", "F16", {4, 8}, pattern_bytes(64, 3)},
                           {"q", "I8", {3, 3}, pattern_bytes(9, 4)},
                           {"u", "U8", {}, pattern_bytes(1, 5)}},
                          {{"format", "pt"}});
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

TEST_CASE("truncated and corrupted prefixes of the real test model are errors, never crashes",
          "[loader][fuzz]") {
  const std::string path = test_model_path();
  INFO("test model: " << path << " (run scripts/fetch-model, or set TESSERA_TEST_MODEL)");
  REQUIRE(std::filesystem::exists(path));
  const auto start = Clock::now();
  // The model's metadata (vocabulary and merges) is larger than the prefix, so every
  // prefix, flipped or not, ends before the tensor data and must fail.
  const auto prefix = read_prefix(path, kRealPrefixBytes);
  REQUIRE(prefix.size() == kRealPrefixBytes);
  std::mt19937 rng(fuzz_seed());
  uint64_t num_ok = 0;
  for (int i = 0; i < 400; ++i) {
    CHECK_FALSE(GgufFile::from_buffer(truncated(prefix, rng)).is_ok());
  }
  for (int i = 0; i < 400; ++i) {
    // Most flips land in the header's first KiB: counts, first keys and types.
    const size_t region = i % 2 == 0 ? 1024 : prefix.size();
    auto file = GgufFile::from_buffer(flipped(prefix, region, 4, rng));
    if (file.is_ok()) {
      ++num_ok;
      touch(*file);
    }
  }
  CHECK(num_ok == 0);
  NOTE("real-model prefix fuzzing: " << seconds_since(start) << " s");
}

TEST_CASE("byte flips in the real test model's header never crash the parser or its accessors",
          "[loader][fuzz]") {
  const std::string path = test_model_path();
  INFO("test model: " << path << " (run scripts/fetch-model, or set TESSERA_TEST_MODEL)");
  REQUIRE(std::filesystem::exists(path));
  const auto start = Clock::now();
  // A private writable mapping: flips copy only the touched header pages, and the whole
  // file stays in place, so mutated headers that still parse reach the tensor data.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  struct stat st {};
  REQUIRE(fstat(fd, &st) == 0);
  const auto size = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  REQUIRE(addr != MAP_FAILED);
  auto* bytes = static_cast<std::byte*>(addr);
  const std::span<const std::byte> whole(bytes, size);
  size_t header_bytes = 0;
  {
    auto clean = GgufFile::from_unowned_bytes(whole);
    REQUIRE(clean.is_ok());
    header_bytes = clean->data_offset();
  }
  std::mt19937 rng(fuzz_seed() + 3);
  uint64_t num_ok = 0;
  uint64_t sink = 0;
  for (int i = 0; i < 600; ++i) {
    // Most flips hit the counts and first entries; the rest land anywhere in the header,
    // mostly inside the vocabulary, whose strings tolerate any bytes.
    const size_t region = i % 2 == 0 ? 4096 : header_bytes;
    const int num_flips = 1 + static_cast<int>(rng() % 3);
    std::vector<std::pair<size_t, std::byte>> saved;
    for (int f = 0; f < num_flips; ++f) {
      const size_t at = rng() % region;
      saved.emplace_back(at, bytes[at]);
      bytes[at] = rng() % 2 == 0 ? static_cast<std::byte>(rng() & 0xFF) : (bytes[at] ^ std::byte{0x80});
    }
    {
      auto file = GgufFile::from_unowned_bytes(whole);
      if (file.is_ok()) {
        ++num_ok;
        sink += touch(*file, /*dequantize=*/false);
      }
    }
    for (auto it = saved.rbegin(); it != saved.rend(); ++it) bytes[it->first] = it->second;
  }
  munmap(addr, size);
  NOTE("real-model header flips: " << seconds_since(start) << " s, " << num_ok
                                   << " mutated files still parsed (checksum " << sink << ")");
}

TEST_CASE("random truncations and byte flips of a synthetic GGUF never crash the parser", "[loader][fuzz]") {
  const auto start = Clock::now();
  const auto bytes = synthetic_gguf();
  {
    auto file = GgufFile::from_buffer(bytes);
    REQUIRE(file.is_ok());
    touch(*file);
  }
  const size_t header_bytes = GgufFile::from_buffer(bytes)->data_offset();
  std::mt19937 rng(fuzz_seed() + 1);
  uint64_t num_ok = 0;
  uint64_t sink = 0;
  for (int i = 0; i < 10000; ++i) {
    std::vector<std::byte> mutated = mutation(bytes, header_bytes, i, rng);
    auto file = GgufFile::from_buffer(std::move(mutated));
    if (i % 3 == 0) CHECK_FALSE(file.is_ok());  // every strict prefix lacks tensor data
    if (file.is_ok()) {
      ++num_ok;
      sink += touch(*file);
    }
  }
  // Random buffers that start like a GGUF file.
  for (int i = 0; i < 1000; ++i) {
    std::vector<std::byte> junk(rng() % 256);
    for (auto& b : junk) b = static_cast<std::byte>(rng() & 0xFF);
    if (junk.size() >= 8) {
      std::memcpy(junk.data(), "GGUF", 4);
      junk[4] = static_cast<std::byte>(2 + rng() % 2);
      junk[5] = junk[6] = junk[7] = std::byte{0};
    }
    auto file = GgufFile::from_buffer(std::move(junk));
    if (file.is_ok()) sink += touch(*file);
  }
  NOTE("synthetic GGUF fuzzing: " << seconds_since(start) << " s, " << num_ok
                                  << " mutated files still parsed (checksum " << sink << ")");
}

TEST_CASE("random truncations and byte flips of a synthetic safetensors file never crash the parser",
          "[loader][fuzz]") {
  const auto start = Clock::now();
  const auto bytes = synthetic_safetensors();
  REQUIRE(SafetensorsFile::from_buffer(bytes).is_ok());
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, bytes.data(), 8);
  std::mt19937 rng(fuzz_seed() + 2);
  uint64_t num_ok = 0;
  uint64_t sink = 0;
  for (int i = 0; i < 10000; ++i) {
    std::vector<std::byte> mutated = mutation(bytes, 8 + header_bytes, i, rng);
    auto file = SafetensorsFile::from_buffer(std::move(mutated));
    if (i % 3 == 0) CHECK_FALSE(file.is_ok());
    if (file.is_ok()) {
      ++num_ok;
      sink += touch(*file);
    }
  }
  NOTE("synthetic safetensors fuzzing: " << seconds_since(start) << " s, " << num_ok
                                         << " mutated files still parsed (checksum " << sink << ")");
}
