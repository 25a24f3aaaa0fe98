// Where a new request goes when a router drives several data-parallel worker groups:
// to a group that likely holds its prompt's prefix in its KV cache (prefix affinity), as
// long as that group is not much busier than the least loaded one (load).
//
// PrefixAffinity is the router's estimate of a group's prefix cache: the chained hashes of
// the 16-token blocks of prompts recently placed on the group, bounded and least recently
// used first out. It does not see the group's evictions, so it is a hint, never a promise
// (the group's own radix tree decides what is reused). Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <span>
#include <unordered_map>

namespace tessera::router {

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

struct GroupCandidate {
  int64_t load = 0;             // requests placed and not finished
  int32_t affinity_tokens = 0;  // PrefixAffinity::match of the prompt
};

// Index of the chosen candidate (precondition: at least one). Among the candidates whose
// load is within a slack of the least loaded (max(4, a quarter of that load)), the one
// with the longest prefix match wins; ties go to the less loaded, then the first.
size_t choose_group(std::span<const GroupCandidate> candidates);

}  // namespace tessera::router
