// Stop strings over streamed text: never emitted, matched across chunk boundaries, the
// earliest occurrence wins, held-back text comes out when the stream ends otherwise.
#include "gateway/openai/stop_strings.h"

#include <catch2/catch.hpp>

#include <random>

using tessera::gateway::StopStringMatcher;

namespace {

// Streams `text` in the given chunks; returns what reached the client and which stop hit.
std::pair<std::string, std::optional<size_t>> stream(StopStringMatcher& m, const std::vector<std::string>& chunks) {
  std::string out;
  for (const std::string& c : chunks) {
    auto o = m.push(c);
    out += o.text;
    if (o.stopped_by) return {out, o.stopped_by};
  }
  out += m.finish();
  return {out, std::nullopt};
}

}  // namespace

TEST_CASE("a stop string split across chunks ends the output before it", "[gateway][stop]") {
  StopStringMatcher m({"\nUser:"});
  CHECK(m.push("Hello").text == "Hello");
  auto a = m.push(" there\nUs");
  CHECK(a.text == " there");  // "\nUs" could begin the stop string
  CHECK(m.held() == 3);
  auto b = m.push("er: more");
  CHECK(b.text.empty());
  REQUIRE(b.stopped_by == 0u);
  CHECK(m.stopped());
  CHECK(m.push("anything").text.empty());
  CHECK(m.finish().empty());
}

TEST_CASE("held-back text that turns out not to be a stop string is released", "[gateway][stop]") {
  StopStringMatcher m({"STOP"});
  CHECK(m.push("go ST").text == "go ");
  CHECK(m.push("ART").text == "START");
  CHECK(m.push("ST").text.empty());
  CHECK(m.finish() == "ST");  // the sequence ended (EOS, length) with "ST" held
}

TEST_CASE("the earliest stop string wins, the longer on a tie", "[gateway][stop]") {
  {
    StopStringMatcher m({"world", "lo w"});
    auto o = m.push("hello world");
    CHECK(o.text == "hel");
    CHECK(o.stopped_by == 1u);
  }
  {
    StopStringMatcher m({"ab", "abc"});
    auto o = m.push("xxabcd");
    CHECK(o.text == "xx");
    CHECK(o.stopped_by == 1u);
  }
  {
    // A stop string at the very start ends with nothing emitted.
    StopStringMatcher m({"###"});
    auto o = m.push("### answer");
    CHECK(o.text.empty());
    CHECK(o.stopped_by == 0u);
  }
}

TEST_CASE("without stop strings everything passes through at once", "[gateway][stop]") {
  StopStringMatcher m({"", ""});  // empty ones are ignored
  CHECK(m.push("abc").text == "abc");
  CHECK(m.held() == 0);
  CHECK(m.finish().empty());
}

TEST_CASE("any chunking of a UTF-8 text gives the text up to the first stop occurrence", "[gateway][stop]") {
  const std::string text = "Grüße aus Köln — 東京へ行く。Stop here? No: ST0P, then STOP! and 🎉 after.";
  const std::vector<std::vector<std::string>> stop_sets = {
      {"STOP"}, {"東京"}, {"🎉"}, {"No:", "ST0P"}, {"nothing matches", "zz"}, {"Köln —", "aus"}, {"."}};
  std::mt19937 rng(7);
  for (const auto& stops : stop_sets) {
    // Reference: cut at the earliest occurrence of any stop string.
    size_t cut = text.size();
    for (const auto& s : stops) cut = std::min(cut, text.find(s));
    const std::string want = text.substr(0, cut);
    for (int trial = 0; trial < 200; ++trial) {
      // Chunks at random UTF-8 character boundaries.
      std::vector<std::string> chunks;
      size_t at = 0;
      while (at < text.size()) {
        size_t n = 1 + rng() % 6;
        size_t end = at;
        for (size_t k = 0; k < n && end < text.size(); ++k) {
          ++end;
          while (end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) ++end;
        }
        chunks.push_back(text.substr(at, end - at));
        at = end;
      }
      StopStringMatcher m(stops);
      const auto [got, stopped] = stream(m, chunks);
      INFO("stops[0]=" << stops[0] << " trial " << trial);
      REQUIRE(got == want);
      REQUIRE(stopped.has_value() == (cut != text.size()));
    }
  }
}
