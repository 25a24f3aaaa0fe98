#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "tessera/common/logging.h"

namespace tlog = tessera::log;
using Catch::Matchers::StartsWith;

namespace {
// 2026-11-26T08:40:01.123Z
constexpr int64_t kUnixUs = 1795682401123456;
}  // namespace

TEST_CASE("text lines carry time, level, component, message and key=value fields", "[logging]") {
  tlog::Options opts{.level = tlog::Level::kInfo, .format = tlog::Format::kText, .component = "router"};
  std::string line = tlog::format_line(tlog::Level::kWarn, "worker attached",
                                      {{"rank", 3}, {"group", "g0"}, {"ratio", 0.5}, {"ok", true}}, opts, kUnixUs);
  CHECK(line == "2026-11-26T08:40:01.123Z warn  router: worker attached rank=3 group=g0 ratio=0.5 ok=true");
}

TEST_CASE("text fields with spaces, quotes or '=' are quoted and escaped", "[logging]") {
  tlog::Options opts{.level = tlog::Level::kInfo, .format = tlog::Format::kText, .component = "gw"};
  std::string line = tlog::format_line(tlog::Level::kInfo, "m", {{"path", "a b"}, {"q", "say \"hi\""}, {"e", ""}},
                                      opts, kUnixUs);
  CHECK(line == "2026-11-26T08:40:01.123Z info  gw: m path=\"a b\" q=\"say \\\"hi\\\"\" e=\"\"");
}

TEST_CASE("json lines are one valid object with typed fields", "[logging]") {
  tlog::Options opts{.level = tlog::Level::kInfo, .format = tlog::Format::kJson, .component = "worker/0"};
  std::string line = tlog::format_line(tlog::Level::kError, "step failed\nbadly",
                                      {{"step", uint64_t{42}}, {"why", "tab\there"}, {"fatal", false},
                                       {"status", tessera::internal_error("boom")}},
                                      opts, kUnixUs);
  CHECK(line ==
        "{\"ts\":\"2026-11-26T08:40:01.123Z\",\"level\":\"error\",\"component\":\"worker/0\","
        "\"msg\":\"step failed\\nbadly\",\"step\":42,\"why\":\"tab\\there\",\"fatal\":false,"
        "\"status\":\"INTERNAL: boom\"}");
}

TEST_CASE("non-finite numbers become strings so JSON stays valid", "[logging]") {
  tlog::Options opts{.level = tlog::Level::kInfo, .format = tlog::Format::kJson, .component = "c"};
  std::string line = tlog::format_line(tlog::Level::kInfo, "m", {{"x", 1.0 / 0.0}}, opts, kUnixUs);
  CHECK_THAT(line, Catch::Matchers::EndsWith(",\"x\":\"+Inf\"}"));
}

TEST_CASE("levels below the configured one are dropped", "[logging]") {
  std::vector<std::string> lines;
  tlog::set_sink([&](std::string_view l) { lines.emplace_back(l); });
  tlog::configure({.level = tlog::Level::kWarn, .format = tlog::Format::kText, .component = "t"});
  tlog::info("hidden");
  tlog::warn("shown", {{"n", 1}});
  tlog::error("also shown");
  tlog::configure({.level = tlog::Level::kOff, .format = tlog::Format::kText, .component = "t"});
  tlog::error("off drops everything");
  tlog::set_sink(nullptr);
  tlog::configure({});
  REQUIRE(lines.size() == 2);
  CHECK_THAT(lines[0], Catch::Matchers::EndsWith("warn  t: shown n=1"));
  CHECK_THAT(lines[1], Catch::Matchers::EndsWith("error t: also shown"));
}

TEST_CASE("lines from many threads are never interleaved", "[logging]") {
  std::vector<std::string> lines;
  tlog::set_sink([&](std::string_view l) { lines.emplace_back(l); });  // called under the logger's lock
  tlog::configure({.level = tlog::Level::kInfo, .format = tlog::Format::kJson, .component = "t"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < 500; ++i) tlog::info("tick", {{"thread", t}, {"i", i}});
    });
  }
  for (auto& th : threads) th.join();
  tlog::set_sink(nullptr);
  tlog::configure({});
  REQUIRE(lines.size() == 4000);
  for (const auto& l : lines) {
    REQUIRE_THAT(l, StartsWith("{\"ts\":"));
    REQUIRE(l.back() == '}');
  }
}

TEST_CASE("level and format names parse, and unknown ones are clear errors", "[logging]") {
  CHECK(*tlog::parse_level("debug") == tlog::Level::kDebug);
  CHECK(*tlog::parse_format("json") == tlog::Format::kJson);
  auto bad = tlog::parse_level("verbose");
  REQUIRE_FALSE(bad.is_ok());
  CHECK(bad.status().message() == "unknown log level 'verbose' (expected trace, debug, info, warn, error or off)");
}
