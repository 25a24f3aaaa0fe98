// The KV pages of one worker group, as the router sees them: ids 0..num_pages-1 with a
// reference count each. The worker owns the memory behind the ids (DESIGN.md, Contracts).
//
// A page is free at count 0. Every holder counts once: a running sequence using the page,
// and the prefix cache when it keeps the page for reuse. Owned by the group's scheduler;
// one thread.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace tessera::router {

class PagePool {
 public:
  explicit PagePool(int32_t num_pages);

  int32_t num_pages() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t num_used() const { return num_pages() - num_free(); }

  // Takes n free pages (count 1 each), or nothing at all when fewer than n are free. A fresh
  // pool hands out 0, 1, 2, ...
  std::optional<std::vector<int32_t>> allocate(int32_t n);
  // Another holder of a page in use (count + 1). Retaining a free page is a bug, treated
  // like releasing one.
  void retain(int32_t page);
  // A holder lets go (count - 1); at 0 the page is free again. Releasing a free page is a
  // bug: it aborts in debug builds and is ignored otherwise.
  void release(int32_t page);
  int32_t ref_count(int32_t page) const { return ref_counts_[static_cast<size_t>(page)]; }

 private:
  std::vector<int32_t> ref_counts_;
  std::vector<int32_t> free_;  // LIFO: recently freed pages are reused first
};

}  // namespace tessera::router
