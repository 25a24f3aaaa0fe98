#include <catch2/catch.hpp>

#include <memory>

#include "tessera/common/status.h"

using tessera::Result;
using tessera::Status;
using tessera::StatusCode;

TEST_CASE("a default Status is OK and prints as OK", "[status]") {
  Status s;
  CHECK(s.is_ok());
  CHECK(s.to_string() == "OK");
  CHECK(s == Status::ok());
}

TEST_CASE("an error Status keeps its code and message and prints the canonical name", "[status]") {
  Status s = tessera::invalid_argument("temperature must be >= 0");
  CHECK_FALSE(s.is_ok());
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.to_string() == "INVALID_ARGUMENT: temperature must be >= 0");
}

TEST_CASE("with_context prepends context and keeps the code, OK stays OK", "[status]") {
  Status s = tessera::not_found("no such file").with_context("loading model.gguf");
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message() == "loading model.gguf: no such file");
  CHECK(Status::ok().with_context("anything").is_ok());
}

TEST_CASE("status code names match gRPC's canonical spelling", "[status]") {
  CHECK(tessera::status_code_name(StatusCode::kResourceExhausted) == "RESOURCE_EXHAUSTED");
  CHECK(tessera::status_code_name(StatusCode::kDeadlineExceeded) == "DEADLINE_EXCEEDED");
  CHECK(tessera::status_code_name(StatusCode::kUnauthenticated) == "UNAUTHENTICATED");
  CHECK(static_cast<int>(StatusCode::kUnavailable) == 14);  // gRPC's numeric value
}

namespace {
Result<int> parse_positive(int v) {
  if (v <= 0) return tessera::out_of_range("not positive");
  return v;
}
Status use(int v, int& out) {
  auto r = parse_positive(v);
  TESSERA_RETURN_IF_ERROR(r.status());
  out = *r;
  return Status::ok();
}
}  // namespace

TEST_CASE("Result holds either a value or the error that explains its absence", "[status]") {
  auto good = parse_positive(3);
  REQUIRE(good.is_ok());
  CHECK(*good == 3);
  CHECK(good.status().is_ok());
  auto bad = parse_positive(-1);
  REQUIRE_FALSE(bad.is_ok());
  CHECK(bad.status().code() == StatusCode::kOutOfRange);
}

TEST_CASE("TESSERA_RETURN_IF_ERROR returns the first error and continues on OK", "[status]") {
  int out = 0;
  CHECK(use(5, out).is_ok());
  CHECK(out == 5);
  Status s = use(0, out);
  CHECK(s.code() == StatusCode::kOutOfRange);
  CHECK(out == 5);
}

TEST_CASE("Result works with move-only values", "[status]") {
  Result<std::unique_ptr<int>> r = std::make_unique<int>(7);
  REQUIRE(r.is_ok());
  std::unique_ptr<int> p = std::move(r).value();
  CHECK(*p == 7);
}
