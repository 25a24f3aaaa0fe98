#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "safetensors_writer.h"
#include "worker/loader/safetensors_file.h"

using tessera::StatusCode;
using tessera::loader::SafetensorsFile;
using tessera::loader::SafetensorsModel;
using tessera::loader::TensorDtype;
using namespace tessera::loader::testing;
namespace fs = std::filesystem;

namespace {

// A fresh directory under the system temp dir, removed with its contents at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() /
            ("tessera_safetensors_test_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

  void write(const std::string& name, const std::vector<std::byte>& bytes) const {
    std::ofstream out(path_ / name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  void write_text(const std::string& name, const std::string& text) const {
    std::ofstream out(path_ / name, std::ios::binary);
    out << text;
  }

 private:
  fs::path path_;
};

void expect_error(const std::vector<std::byte>& bytes, const std::string& needle,
                  StatusCode code = StatusCode::kInvalidArgument) {
  auto file = SafetensorsFile::from_buffer(bytes);
  REQUIRE_FALSE(file.is_ok());
  INFO(file.status().to_string());
  CHECK(file.status().code() == code);
  CHECK(file.status().message().find(needle) != std::string::npos);
}

void expect_header_error(const std::string& header, const std::string& needle, size_t data_bytes = 64,
                         StatusCode code = StatusCode::kInvalidArgument) {
  INFO("header: " << header);
  expect_error(make_raw_safetensors(header, std::vector<std::byte>(data_bytes)), needle, code);
}

}  // namespace

TEST_CASE("a safetensors file with every supported dtype reads back its tensors", "[loader][safetensors]") {
  const std::vector<SafetensorsEntry> entries = {
      {"w.f32", "F32", {2, 3}, pattern_bytes(24, 1)},
      {"w.f16", "F16", {4}, pattern_bytes(8, 2)},
      {"w.bf16", "BF16", {2, 2}, pattern_bytes(8, 3)},
      {"w.i8", "I8", {5}, pattern_bytes(5, 4)},
      {"w.u8", "U8", {1, 1, 3}, pattern_bytes(3, 5)},
      {"scalar", "F32", {}, pattern_bytes(4, 6)},
      {"empty", "F16", {0, 7}, {}},
  };
  auto file = SafetensorsFile::from_buffer(make_safetensors(entries, {{"format", "pt"}}));
  INFO(file.status().to_string());
  REQUIRE(file.is_ok());
  CHECK(file->metadata().at("format") == "pt");
  REQUIRE(file->tensors().size() == entries.size());
  const TensorDtype dtypes[] = {TensorDtype::kF32, TensorDtype::kF16, TensorDtype::kBF16, TensorDtype::kI8,
                                TensorDtype::kU8,  TensorDtype::kF32, TensorDtype::kF16};
  for (size_t i = 0; i < entries.size(); ++i) {
    INFO(entries[i].name);
    const auto* t = file->find(entries[i].name);
    REQUIRE(t != nullptr);
    CHECK(t->dtype == dtypes[i]);
    CHECK(t->shape == entries[i].shape);
    CHECK(t->num_elements() * static_cast<int64_t>(tessera::loader::tensor_dtype_bytes(t->dtype)) ==
          static_cast<int64_t>(t->bytes.size()));
    CHECK(std::vector<std::byte>(t->bytes.begin(), t->bytes.end()) == entries[i].data);
  }
  CHECK(file->find("missing") == nullptr);
}

TEST_CASE("a safetensors header may be padded with trailing spaces", "[loader][safetensors]") {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})" + std::string(6, ' ');
  auto file = SafetensorsFile::from_buffer(make_raw_safetensors(header, pattern_bytes(2, 0)));
  REQUIRE(file.is_ok());
  CHECK(file->find("a")->bytes.size() == 2);
}

TEST_CASE("malformed safetensors files are errors naming the problem, never crashes", "[loader][safetensors]") {
  SECTION("too short for the length prefix") { expect_error(std::vector<std::byte>(5), "too short"); }
  SECTION("header length past the file or above the format's limit") {
    auto bytes = make_raw_safetensors("{}", {});
    const uint64_t huge = 1000;
    std::memcpy(bytes.data(), &huge, 8);
    expect_error(bytes, "runs past the end");
    const uint64_t over_limit = uint64_t{1} << 40;
    std::memcpy(bytes.data(), &over_limit, 8);
    expect_error(bytes, "exceeds the limit");
  }
  SECTION("not JSON, not an object, truncated JSON") {
    expect_header_error("[1,2]", "does not start with '{'");
    expect_header_error("{\"a\": ", "not valid JSON");
    expect_header_error("{} trailing", "not valid JSON");
  }
  SECTION("duplicate tensor names") {
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                        R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                        "duplicate key 'a'");
  }
  SECTION("entries of the wrong shape") {
    expect_header_error(R"({"a":5})", "tensor 'a': its entry is not an object");
    expect_header_error(R"({"a":{"shape":[1],"data_offsets":[0,1]}})", "\"dtype\"");
    expect_header_error(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}})", "\"dtype\"");
    expect_header_error(R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", "\"shape\"");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "non-negative integers");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", "non-negative integers");
    expect_header_error(R"({"a":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})", "non-negative integers");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "[begin, end]");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[2,1]}})", "begin <= end");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,-1]}})", "begin <= end");
  }
  SECTION("unsupported dtype names the dtype and the tensor") {
    expect_header_error(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                        "tensor 'w' has dtype 'F64'", 64, StatusCode::kUnimplemented);
    expect_header_error(R"({"w":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})", "'Q9'", 64,
                        StatusCode::kUnimplemented);
  }
  SECTION("data ranges outside the data section, of the wrong size, or overlapping") {
    expect_header_error(R"({"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}})", "run past the 64-byte");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551615]}})", "run past");
    expect_header_error(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "elements need 12 bytes");
    expect_header_error(R"({"a":{"dtype":"F32","shape":[4294967296,1024],"data_offsets":[0,8]}})",
                        "elements need");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
                        "overflows");
    expect_header_error(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
                        "overlap");
  }
  SECTION("__metadata__ must map strings to strings") {
    expect_header_error(R"({"__metadata__":[1]})", "__metadata__ is not an object");
    expect_header_error(R"({"__metadata__":{"k":1}})", "value of 'k' is not a string");
  }
  SECTION("deeply nested JSON") {
    expect_header_error("{\"a\":" + std::string(200, '[') + std::string(200, ']') + "}", "nesting deeper");
  }
}

TEST_CASE("a sharded safetensors model opens each shard once and finds every tensor", "[loader][safetensors]") {
  TempDir dir;
  dir.write("model-00001-of-00002.safetensors",
            make_safetensors({{"a", "F32", {2}, pattern_bytes(8, 1)}, {"b", "BF16", {3}, pattern_bytes(6, 2)}}));
  dir.write("model-00002-of-00002.safetensors", make_safetensors({{"c", "I8", {4}, pattern_bytes(4, 3)}}));
  dir.write_text("model.safetensors.index.json", R"({"metadata": {"total_size": 18}, "weight_map": {
      "a": "model-00001-of-00002.safetensors",
      "b": "model-00001-of-00002.safetensors",
      "c": "model-00002-of-00002.safetensors"}})");

  for (const fs::path& path : {dir.path(), dir.path() / "model.safetensors.index.json"}) {
    auto model = SafetensorsModel::open(path.string());
    INFO(model.status().to_string());
    REQUIRE(model.is_ok());
    CHECK(model->num_shards() == 2);
    CHECK(model->num_tensors() == 3);
    CHECK(model->tensor_names() == std::vector<std::string_view>{"a", "b", "c"});
    REQUIRE(model->find("c") != nullptr);
    CHECK(model->find("c")->dtype == TensorDtype::kI8);
    CHECK(std::vector<std::byte>(model->find("b")->bytes.begin(), model->find("b")->bytes.end()) == pattern_bytes(6, 2));
    CHECK(model->find("d") == nullptr);
  }
}

TEST_CASE("a directory with a single model.safetensors and a lone file both open", "[loader][safetensors]") {
  TempDir dir;
  dir.write("model.safetensors", make_safetensors({{"x", "F16", {2, 2}, pattern_bytes(8, 1)}}));
  for (const fs::path& path : {dir.path(), dir.path() / "model.safetensors"}) {
    auto model = SafetensorsModel::open(path.string());
    REQUIRE(model.is_ok());
    CHECK(model->num_shards() == 1);
    CHECK(model->find("x")->shape == std::vector<int64_t>{2, 2});
  }
  TempDir empty;
  CHECK(SafetensorsModel::open(empty.path().string()).status().code() == StatusCode::kNotFound);
}

TEST_CASE("broken safetensors indexes are errors", "[loader][safetensors]") {
  TempDir dir;
  dir.write("s1.safetensors", make_safetensors({{"a", "U8", {1}, pattern_bytes(1, 1)}}));
  dir.write("bad.safetensors", std::vector<std::byte>(3));
  const std::string index = (dir.path() / "model.safetensors.index.json").string();
  auto expect_index_error = [&](const std::string& text, const std::string& needle) {
    dir.write_text("model.safetensors.index.json", text);
    auto model = SafetensorsModel::open(dir.path().string());
    INFO("index: " << text);
    REQUIRE_FALSE(model.is_ok());
    INFO(model.status().to_string());
    CHECK(model.status().message().find(needle) != std::string::npos);
  };
  expect_index_error("not json", "not valid JSON");
  expect_index_error("[]", "not a JSON object");
  expect_index_error(R"({"metadata": {}})", "weight_map");
  expect_index_error(R"({"weight_map": []})", "weight_map");
  expect_index_error(R"({"weight_map": {}})", "empty");
  expect_index_error(R"({"weight_map": {"a": 1}})", "is not a string");
  expect_index_error(R"({"weight_map": {"a": "../s1.safetensors"}})", "not a file name");
  expect_index_error(R"({"weight_map": {"a": "missing.safetensors"}})", "missing.safetensors");
  expect_index_error(R"({"weight_map": {"a": "bad.safetensors"}})", "too short");
  expect_index_error(R"({"weight_map": {"zz": "s1.safetensors"}})", "tensor 'zz' is not in its shard");
  expect_index_error(R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})", "duplicate key");
}
