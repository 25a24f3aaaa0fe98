// Placement over data-parallel groups: the prefix-affinity estimate and the choice between
// affinity and load.
#include "tessera/common/placement.h"

#include <catch2/catch.hpp>

#include <numeric>
#include <vector>

using namespace tessera;

namespace {
std::vector<int32_t> tokens(int32_t first, int32_t n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}
std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
}  // namespace

TEST_CASE("prefix affinity matches whole recorded blocks of a prompt's prefix", "[common][placement]") {
  PrefixAffinity a;
  const auto system = tokens(1000, 64);  // four blocks
  CHECK(a.match(system) == 0);
  a.record(concat(system, tokens(5, 20)));  // 84 tokens: five whole blocks recorded
  CHECK(a.size() == 5);
  CHECK(a.match(concat(system, tokens(9000, 40))) == 64);   // diverges in block 5
  CHECK(a.match(concat(system, tokens(5, 16))) == 80);      // same fifth block
  CHECK(a.match(tokens(1000, 15)) == 0);                    // less than a block
  // A prefix is a chain: the same block after a different start does not match.
  CHECK(a.match(concat(tokens(7, 16), tokens(1016, 48))) == 0);
  // Tokens that differ only in the last block of the prompt.
  auto changed = system;
  changed[63] = -5;
  CHECK(a.match(changed) == 48);
  a.clear();
  CHECK(a.match(system) == 0);
}

TEST_CASE("prefix affinity forgets the least recently used blocks beyond its bound", "[common][placement]") {
  PrefixAffinity a(8);
  const auto first = tokens(0, 64);     // 4 blocks
  const auto second = tokens(500, 64);  // 4 blocks
  a.record(first);
  a.record(second);
  CHECK(a.match(first) == 64);
  a.record(first);  // refreshes first's blocks
  const auto third = tokens(900, 32);
  a.record(third);  // 2 more: evicts the two oldest (second's first two blocks)
  CHECK(a.size() == 8);
  CHECK(a.match(first) == 64);
  CHECK(a.match(third) == 32);
  CHECK(a.match(second) == 0);  // its chain is broken at the first block
}

TEST_CASE("placement prefers the group holding the prefix unless it is much busier", "[common][placement]") {
  // No affinity anywhere: the least loaded, first on ties.
  CHECK(choose_placement(std::vector<PlacementCandidate>{{3, 0}, {1, 0}, {1, 0}}) == 1);
  // Affinity wins within the slack (max(4, least/4)).
  CHECK(choose_placement(std::vector<PlacementCandidate>{{0, 0}, {4, 64}}) == 1);
  CHECK(choose_placement(std::vector<PlacementCandidate>{{40, 0}, {50, 32}}) == 1);
  // Beyond it, load wins.
  CHECK(choose_placement(std::vector<PlacementCandidate>{{0, 0}, {5, 64}}) == 0);
  CHECK(choose_placement(std::vector<PlacementCandidate>{{40, 0}, {51, 32}}) == 0);
  // The longest match among the eligible, then the less loaded.
  CHECK(choose_placement(std::vector<PlacementCandidate>{{2, 16}, {1, 48}, {0, 32}}) == 1);
  CHECK(choose_placement(std::vector<PlacementCandidate>{{2, 32}, {1, 32}}) == 1);
  CHECK(choose_placement(std::vector<PlacementCandidate>{{7, 0}}) == 0);
}
