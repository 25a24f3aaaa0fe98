#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <limits>

#include <nlohmann/json.hpp>

#include "gguf_builder.h"
#include "test_paths.h"
#include "worker/loader/gguf_file.h"

using tessera::StatusCode;
using tessera::kernels::cpu::GgmlType;
using tessera::loader::GgufFile;
using tessera::loader::GgufValue;
using tessera::loader::GgufValueType;
using namespace tessera::loader::testing;

namespace {

// Every value type, including arrays of each kind and arrays of arrays.
GgufBuilder every_value_type(uint32_t version) {
  GgufBuilder b(version);
  b.kv("t.u8", GgufValueType::kUint8, uint8_t{200})
      .kv("t.i8", GgufValueType::kInt8, int8_t{-5})
      .kv("t.u16", GgufValueType::kUint16, uint16_t{60000})
      .kv("t.i16", GgufValueType::kInt16, int16_t{-300})
      .kv("t.u32", GgufValueType::kUint32, uint32_t{4000000000u})
      .kv("t.i32", GgufValueType::kInt32, int32_t{-2000000000})
      .kv("t.f32", GgufValueType::kFloat32, 1.5f)
      .kv("t.bool", GgufValueType::kBool, uint8_t{1})
      .kv_string("t.string", "hello, gguf")
      .kv("t.u64", GgufValueType::kUint64, uint64_t{1} << 63)
      .kv("t.i64", GgufValueType::kInt64, int64_t{-(int64_t{1} << 40)})
      .kv("t.f64", GgufValueType::kFloat64, 2.25)
      .kv_array("a.i32", encode_array<int32_t>(GgufValueType::kInt32, {1, -2, 3}))
      .kv_array("a.u8", encode_array<uint8_t>(GgufValueType::kUint8, {7, 8}))
      .kv_array("a.f32", encode_array<float>(GgufValueType::kFloat32, {0.5f, -1.25f}))
      .kv_array("a.f64", encode_array<double>(GgufValueType::kFloat64, {3.5}))
      .kv_array("a.bool", encode_array<uint8_t>(GgufValueType::kBool, {1, 0}))
      .kv_array("a.string", encode_string_array({"a", "", "ccc"}))
      .kv_array("a.empty", encode_array<int32_t>(GgufValueType::kInt32, {}))
      .kv_array("a.nested", encode_nested_array({encode_array<uint16_t>(GgufValueType::kUint16, {1, 2}),
                                                 encode_string_array({"x"}),
                                                 encode_nested_array({encode_array<int8_t>(GgufValueType::kInt8, {-1})})}));
  return b;
}

GgufFile parse_ok(std::vector<std::byte> bytes) {
  auto file = GgufFile::from_buffer(std::move(bytes));
  INFO(file.status().to_string());
  REQUIRE(file.is_ok());
  return std::move(file).value();
}

// Parses and expects an error whose message contains `needle`.
void expect_error(std::vector<std::byte> bytes, const std::string& needle) {
  auto file = GgufFile::from_buffer(std::move(bytes));
  REQUIRE_FALSE(file.is_ok());
  INFO(file.status().to_string());
  CHECK(file.status().message().find(needle) != std::string::npos);
}

}  // namespace

TEST_CASE("GGUF v3 and v2 buffers with every value type read back the values written", "[loader][gguf]") {
  const uint32_t version = GENERATE(2u, 3u);
  const GgufFile file = parse_ok(every_value_type(version).build());
  CHECK(file.version() == version);
  CHECK(file.tensors().empty());

  CHECK(file.get_uint("t.u8") == 200u);
  CHECK(file.get_int("t.i8") == -5);
  CHECK_FALSE(file.get_uint("t.i8"));  // negative does not fit unsigned
  CHECK(file.get_uint("t.u16") == 60000u);
  CHECK(file.get_int("t.i16") == -300);
  CHECK(file.get_uint("t.u32") == 4000000000u);
  CHECK(file.get_int("t.u32") == 4000000000);
  CHECK(file.get_int("t.i32") == -2000000000);
  CHECK(file.get_float("t.f32") == 1.5);
  CHECK(file.get_bool("t.bool") == true);
  CHECK(file.get_string("t.string") == "hello, gguf");
  CHECK(file.get_uint("t.u64") == (uint64_t{1} << 63));
  CHECK_FALSE(file.get_int("t.u64"));  // above INT64_MAX
  CHECK(file.get_int("t.i64") == -(int64_t{1} << 40));
  CHECK(file.get_float("t.f64") == 2.25);

  // Getters of the wrong kind and missing keys give nullopt rather than a conversion.
  CHECK_FALSE(file.get_string("t.u8"));
  CHECK_FALSE(file.get_float("t.u32"));
  CHECK_FALSE(file.get_bool("t.u8"));
  CHECK_FALSE(file.get_uint("t.string"));
  CHECK_FALSE(file.get_uint("missing"));
  CHECK(file.find("missing") == nullptr);

  CHECK(*file.get_int_array("a.i32") == std::vector<int64_t>{1, -2, 3});
  CHECK(*file.get_int_array("a.u8") == std::vector<int64_t>{7, 8});
  CHECK(*file.get_float_array("a.f32") == std::vector<float>{0.5f, -1.25f});
  CHECK(*file.get_float_array("a.f64") == std::vector<float>{3.5f});
  CHECK(*file.get_string_array("a.string") == std::vector<std::string_view>{"a", "", "ccc"});
  CHECK(file.get_int_array("a.empty")->empty());
  const GgufValue* bools = file.find("a.bool");
  REQUIRE(bools != nullptr);
  CHECK(bools->element(0).as_bool() == true);
  CHECK(bools->element(1).as_bool() == false);

  CHECK(file.get_int_array("missing").status().code() == StatusCode::kNotFound);
  CHECK(file.get_int_array("a.string").status().code() == StatusCode::kInvalidArgument);
  CHECK(file.get_string_array("t.string").status().code() == StatusCode::kInvalidArgument);
  CHECK(file.get_float_array("a.i32").status().code() == StatusCode::kInvalidArgument);

  const GgufValue* nested = file.find("a.nested");
  REQUIRE(nested != nullptr);
  REQUIRE(nested->element_type() == GgufValueType::kArray);
  REQUIRE(nested->num_elements() == 3);
  const auto inner = nested->array_elements();
  CHECK(inner[0].element_type() == GgufValueType::kUint16);
  CHECK(inner[0].element(1).as_uint() == 2u);
  CHECK(inner[1].string_elements()[0] == "x");
  CHECK(inner[2].array_elements()[0].element(0).as_int() == -1);
  CHECK(nested->to_display_string() == "[[1, 2], [\"x\"], [[-1]]]");

  // Iteration follows file order.
  const auto& entries = file.metadata();
  REQUIRE(entries.size() == 20);
  CHECK(entries.front().key == "t.u8");
  CHECK(entries[8].key == "t.string");
  CHECK(entries.back().key == "a.nested");
}

TEST_CASE("GGUF display strings quote strings and shorten long arrays", "[loader][gguf]") {
  GgufBuilder b;
  std::vector<int32_t> many(100, 4);
  b.kv_array("many", encode_array<int32_t>(GgufValueType::kInt32, many)).kv_string("s", "a\"b\n");
  const GgufFile file = parse_ok(b.build());
  CHECK(file.find("many")->to_display_string(2) == "[4, 4, ... (100 i32)]");
  CHECK(file.find("s")->to_display_string() == "\"a\\\"b\\n\"");
}

TEST_CASE("GGUF version 1, unknown versions, big-endian files and non-GGUF files are rejected clearly",
          "[loader][gguf]") {
  auto v1 = GgufFile::from_buffer(GgufBuilder(1).build());
  REQUIRE_FALSE(v1.is_ok());
  CHECK(v1.status().code() == StatusCode::kUnimplemented);
  CHECK(v1.status().message().find("version 1 is unsupported") != std::string::npos);

  expect_error(GgufBuilder(4).build(), "unsupported GGUF version 4");
  expect_error(GgufBuilder(0x03000000).build(), "big-endian");
  expect_error(GgufBuilder().magic(0x4C4D5347).build(), "not a GGUF file");
  expect_error({}, "the GGUF magic");
}

TEST_CASE("GGUF tensor data starts at the next multiple of general.alignment", "[loader][gguf]") {
  const uint32_t alignment = GENERATE(1u, 8u, 32u, 64u, 4096u);
  GgufBuilder b;
  if (alignment != 32) b.alignment(alignment);
  b.kv_string("odd.length", "xyz");
  b.tensor("a", {32, 2}, GgmlType::kQ8_0);
  b.tensor("b", {5}, GgmlType::kF32);
  b.tensor("c", {64}, GgmlType::kQ4_1);
  const auto bytes = b.build();
  const GgufFile file = parse_ok(bytes);
  CHECK(file.alignment() == alignment);
  CHECK(file.data_offset() % alignment == 0);
  REQUIRE(file.tensors().size() == 3);
  for (const auto& t : file.tensors()) {
    CHECK(t.offset_bytes % alignment == 0);
    const auto data = file.tensor_data(t);
    REQUIRE(data.size() == t.size_bytes);
    // The builder writes byte i of tensor k as i*31 + k.
    const size_t k = static_cast<size_t>(&t - file.tensors().data());
    for (size_t i = 0; i < data.size(); ++i) {
      REQUIRE(static_cast<uint8_t>(data[i]) == static_cast<uint8_t>(i * 31 + k));
    }
  }
  const auto* a = file.find_tensor("a");
  REQUIRE(a != nullptr);
  CHECK(a->type == GgmlType::kQ8_0);
  CHECK(a->dims == std::vector<int64_t>{32, 2});
  CHECK(a->num_elements == 64);
  CHECK(a->size_bytes == 68);
  CHECK(file.find_tensor("b")->size_bytes == 20);
  CHECK(file.find_tensor("c")->size_bytes == 40);
  CHECK(file.find_tensor("missing") == nullptr);
}

TEST_CASE("GGUF general.alignment must be a power of two", "[loader][gguf]") {
  expect_error(GgufBuilder().alignment(0).build(), "general.alignment");
  expect_error(GgufBuilder().alignment(48).build(), "general.alignment");
  expect_error(GgufBuilder().kv_string("general.alignment", "32").build(), "general.alignment");
}

TEST_CASE("every truncation of a valid GGUF buffer is an error, never a crash", "[loader][gguf]") {
  GgufBuilder b = every_value_type(3);
  b.tensor("w", {64, 3}, GgmlType::kQ4_0);
  const auto bytes = b.build();
  parse_ok(bytes);
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto file = GgufFile::from_buffer(std::vector<std::byte>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)));
    INFO("prefix of " << n << " bytes");
    REQUIRE_FALSE(file.is_ok());
  }
}

TEST_CASE("malformed GGUF headers are errors that say what and where", "[loader][gguf]") {
  SECTION("duplicate key") {
    expect_error(GgufBuilder().kv_string("k", "a").kv_string("k", "b").build(), "duplicate metadata key 'k'");
  }
  SECTION("empty key") { expect_error(GgufBuilder().kv_string("", "a").build(), "empty key"); }
  SECTION("unknown value type") {
    expect_error(GgufBuilder().kv_encoded("k", 13, {std::byte{0}}).build(), "unknown value type 13");
  }
  SECTION("bool that is neither 0 nor 1") {
    expect_error(GgufBuilder().kv("k", GgufValueType::kBool, uint8_t{2}).build(), "neither 0 nor 1");
  }
  SECTION("string longer than the file") {
    ByteWriter w;
    w.put(uint64_t{1} << 40);
    expect_error(GgufBuilder().kv_encoded("k", 8, w.take()).build(), "key 'k'");
  }
  SECTION("array count larger than the file could hold") {
    ByteWriter w;
    w.put(uint32_t{4}).put(std::numeric_limits<uint64_t>::max());
    expect_error(GgufBuilder().kv_encoded("k", 9, w.take()).build(), "does not fit");
    ByteWriter s;
    s.put(uint32_t{8}).put(uint64_t{1} << 60);
    expect_error(GgufBuilder().kv_encoded("k", 9, s.take()).build(), "does not fit");
  }
  SECTION("arrays nested past the depth limit") {
    std::vector<std::byte> value = encode_array<int8_t>(GgufValueType::kInt8, {1});
    for (int i = 0; i < 9; ++i) value = encode_nested_array({value});
    expect_error(GgufBuilder().kv_array("deep", value).build(), "nests deeper");
  }
  SECTION("array of an unknown element type") {
    ByteWriter w;
    w.put(uint32_t{99}).put(uint64_t{0});
    expect_error(GgufBuilder().kv_encoded("k", 9, w.take()).build(), "unknown element type 99");
  }
  SECTION("tensor or metadata counts beyond what the file can hold") {
    expect_error(GgufBuilder().override_tensor_count(uint64_t{1} << 62).build(), "tensor count");
    expect_error(GgufBuilder().override_kv_count(1000).build(), "metadata count");
  }
  SECTION("duplicate tensor name") {
    expect_error(GgufBuilder().tensor("w", {4}, GgmlType::kF32).tensor("w", {4}, GgmlType::kF32).build(),
                 "tensor 'w': duplicate tensor name");
  }
  SECTION("unknown ggml type") {
    BuilderTensor t{"w", {4}, 99, std::vector<std::byte>(16), std::nullopt};
    auto file = GgufFile::from_buffer(GgufBuilder().tensor(t).build());
    REQUIRE_FALSE(file.is_ok());
    CHECK(file.status().message().find("tensor 'w' has unknown or unsupported ggml type 99") != std::string::npos);
  }
  SECTION("first dimension not a whole number of blocks") {
    BuilderTensor t{"w", {33}, static_cast<uint32_t>(GgmlType::kQ4_0), std::vector<std::byte>(36), std::nullopt};
    expect_error(GgufBuilder().tensor(t).build(), "not a multiple of the Q4_0 block size 32");
  }
  SECTION("zero, too many or overflowing dimensions") {
    expect_error(GgufBuilder().tensor(BuilderTensor{"w", {}, 0, {}, std::nullopt}).build(), "0 dimensions");
    expect_error(GgufBuilder().tensor(BuilderTensor{"w", {1, 1, 1, 1, 1}, 0, {}, std::nullopt}).build(),
                 "5 dimensions");
    expect_error(GgufBuilder().tensor(BuilderTensor{"w", {4, 0}, 0, {}, std::nullopt}).build(), "dimension 1");
    expect_error(GgufBuilder().tensor(BuilderTensor{"w", {uint64_t{1} << 32, uint64_t{1} << 32}, 0, {}, std::nullopt}).build(),
                 "overflow");
  }
  SECTION("tensor data past the end of the file") {
    BuilderTensor t{"w", {1024}, 0, std::vector<std::byte>(16), std::nullopt};
    expect_error(GgufBuilder().tensor(t).build(), "tensor 'w': its 4096 bytes at data offset 0 lie past the end");
    BuilderTensor far{"w", {4}, 0, std::vector<std::byte>(16), uint64_t{1} << 62};
    expect_error(GgufBuilder().tensor(far).build(), "lie past the end");
  }
  SECTION("unaligned tensor offset") {
    BuilderTensor t{"w", {4}, 0, std::vector<std::byte>(16), uint64_t{4}};
    expect_error(GgufBuilder().tensor(t).build(), "not a multiple of the alignment 32");
  }
  SECTION("overlapping tensors") {
    BuilderTensor a{"a", {16}, 0, std::vector<std::byte>(64), uint64_t{0}};
    BuilderTensor c{"c", {16}, 0, std::vector<std::byte>(64), uint64_t{32}};
    expect_error(GgufBuilder().tensor(a).tensor(c).build(), "overlap");
  }
}

TEST_CASE("GgufFile::open reports a missing file with its path", "[loader][gguf]") {
  auto file = GgufFile::open("/nonexistent/model.gguf");
  REQUIRE_FALSE(file.is_ok());
  CHECK(file.status().code() == StatusCode::kNotFound);
  CHECK(file.status().message().find("/nonexistent/model.gguf") != std::string::npos);
}

TEST_CASE("a moved GgufFile keeps its metadata and tensor views valid", "[loader][gguf]") {
  GgufBuilder b = every_value_type(3);
  b.tensor("w", {8}, GgmlType::kF16);
  GgufFile first = parse_ok(b.build());
  GgufFile second = std::move(first);
  GgufFile third = parse_ok(GgufBuilder().build());
  third = std::move(second);
  CHECK(third.get_string("t.string") == "hello, gguf");
  CHECK(third.tensor_data(*third.find_tensor("w")).size() == 16);
}

TEST_CASE("the SmolLM2 test model's metadata and tensor table match gguf-py's reading", "[loader][gguf][model]") {
  const std::string path = test_model_path();
  INFO("test model: " << path << " (run scripts/fetch-model, or set TESSERA_TEST_MODEL)");
  REQUIRE(std::filesystem::exists(path));
  const auto fixture = nlohmann::json::parse(read_text_file(fixture_path("smollm2_tensors.json")));

  auto opened = GgufFile::open(path);
  INFO(opened.status().to_string());
  REQUIRE(opened.is_ok());
  const GgufFile& file = *opened;
  CHECK(file.version() == fixture["gguf_version"].get<uint32_t>());
  CHECK(file.alignment() == fixture["alignment"].get<uint64_t>());
  CHECK(file.data_offset() == fixture["data_offset"].get<uint64_t>());
  CHECK(file.metadata().size() == fixture["num_metadata_entries"].get<size_t>());
  CHECK(file.tensors().size() == 272);
  CHECK(file.tensors().size() == fixture["num_tensors"].get<size_t>());

  CHECK(file.get_string("general.architecture") == "llama");
  CHECK(file.get_uint("llama.context_length") == 8192u);
  CHECK(file.get_uint("llama.block_count") == 30u);
  CHECK(file.get_uint("llama.embedding_length") == 576u);
  for (const auto& [key, expected] : fixture["metadata"].items()) {
    INFO("key " << key);
    if (key == "tokenizer.ggml.tokens.size") {
      CHECK(file.get_string_array("tokenizer.ggml.tokens")->size() == expected.get<size_t>());
    } else if (key == "tokenizer.ggml.tokens.first") {
      const auto tokens = *file.get_string_array("tokenizer.ggml.tokens");
      for (size_t i = 0; i < expected.size(); ++i) CHECK(tokens[i] == expected[i].get<std::string>());
    } else if (expected.is_string()) {
      CHECK(file.get_string(key) == expected.get<std::string>());
    } else if (expected.is_boolean()) {
      CHECK(file.get_bool(key) == expected.get<bool>());
    } else if (expected.is_number_integer()) {
      CHECK(file.get_int(key) == expected.get<int64_t>());
    } else {
      CHECK(file.get_float(key) == expected.get<double>());
    }
  }
  CHECK(file.get_int_array("tokenizer.ggml.token_type")->size() == 49152);

  for (const auto& [name, expected] : fixture["tensors"].items()) {
    INFO("tensor " << name);
    const auto* info = file.find_tensor(name);
    REQUIRE(info != nullptr);
    CHECK(tessera::kernels::cpu::ggml_type_name(info->type) == expected["type"].get<std::string>());
    CHECK(info->dims == expected["dims"].get<std::vector<int64_t>>());
  }
}
