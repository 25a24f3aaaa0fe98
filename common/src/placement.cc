#include "tessera/common/placement.h"

#include <algorithm>

namespace tessera {

namespace {

// Hash of a block given the hash of everything before it (FNV-1a over the ids, seeded
// with the parent), so equal hashes mean equal prefixes up to collisions.
uint64_t chain(uint64_t parent, std::span<const int32_t> block) {
  uint64_t h = parent ^ 0xcbf29ce484222325ull;
  for (int32_t t : block) {
    h ^= static_cast<uint32_t>(t);
    h *= 0x100000001b3ull;
  }
  return h ^ (h >> 29);
}

}  // namespace

PrefixAffinity::PrefixAffinity(size_t max_blocks) : max_blocks_(std::max<size_t>(1, max_blocks)) {}

int32_t PrefixAffinity::match(std::span<const int32_t> prompt) const {
  std::lock_guard lock(mutex_);
  uint64_t h = 0;
  int32_t matched = 0;
  for (size_t at = 0; at + kBlockTokens <= prompt.size(); at += kBlockTokens) {
    h = chain(h, prompt.subspan(at, kBlockTokens));
    if (!blocks_.count(h)) break;
    matched += kBlockTokens;
  }
  return matched;
}

void PrefixAffinity::record(std::span<const int32_t> prompt) {
  std::lock_guard lock(mutex_);
  uint64_t h = 0;
  for (size_t at = 0; at + kBlockTokens <= prompt.size(); at += kBlockTokens) {
    h = chain(h, prompt.subspan(at, kBlockTokens));
    if (auto it = blocks_.find(h); it != blocks_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      continue;
    }
    lru_.push_front(h);
    blocks_.emplace(h, lru_.begin());
    if (blocks_.size() > max_blocks_) {
      blocks_.erase(lru_.back());
      lru_.pop_back();
    }
  }
}

void PrefixAffinity::clear() {
  std::lock_guard lock(mutex_);
  lru_.clear();
  blocks_.clear();
}

size_t PrefixAffinity::size() const {
  std::lock_guard lock(mutex_);
  return blocks_.size();
}

size_t choose_placement(std::span<const PlacementCandidate> c) {
  int64_t least = c[0].load;
  for (const PlacementCandidate& g : c) least = std::min(least, g.load);
  const int64_t limit = least + std::max<int64_t>(4, least / 4);
  size_t best = c.size();
  for (size_t i = 0; i < c.size(); ++i) {
    if (c[i].load > limit) continue;
    if (best == c.size() || c[i].affinity_tokens > c[best].affinity_tokens ||
        (c[i].affinity_tokens == c[best].affinity_tokens && c[i].load < c[best].load)) {
      best = i;
    }
  }
  return best;
}

}  // namespace tessera
