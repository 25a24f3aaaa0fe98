// Where a new request goes when there are several places to run it: the data-parallel
// worker groups of a router, or the router replicas behind a gateway. It goes to the place
// that likely holds its prompt's prefix in a KV cache (prefix affinity), as long as that
// place is not much busier than the least loaded one (load).
//
// PrefixAffinity is an estimate of one place's prefix cache: the chained hashes of the
// 16-token blocks of prompts recently sent there, bounded and least recently used first
// out. It does not see evictions, so it is a hint, never a promise (the radix tree of the
// group that runs the request decides what is reused). Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <span>
#include <unordered_map>

namespace tessera {

class PrefixAffinity {
 public:
  static constexpr int32_t kBlockTokens = 16;
  explicit PrefixAffinity(size_t max_blocks = size_t{1} << 16);

  // Leading prompt tokens (whole blocks) that were part of a recorded prompt.
  int32_t match(std::span<const int32_t> prompt) const;
  // Remembers the prompt's whole blocks (the most recent ones are kept longest).
  void record(std::span<const int32_t> prompt);
  void clear();
  size_t size() const;

 private:
  const size_t max_blocks_;
  mutable std::mutex mutex_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, std::list<uint64_t>::iterator> blocks_;
};

struct PlacementCandidate {
  int64_t load = 0;             // requests placed and not finished
  int32_t affinity_tokens = 0;  // PrefixAffinity::match of the prompt
};

// Index of the chosen candidate (precondition: at least one). Among the candidates whose
// load is within a slack of the least loaded (max(4, a quarter of that load)), the one
// with the longest prefix match wins; ties go to the less loaded, then the first.
size_t choose_placement(std::span<const PlacementCandidate> candidates);

}  // namespace tessera
