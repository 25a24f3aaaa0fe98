#include "router/kv/page_pool.h"

#include <algorithm>
#include <cassert>

namespace tessera::router {

PagePool::PagePool(int32_t num_pages)
    : ref_counts_(static_cast<size_t>(std::max(num_pages, 0)), 0) {
  assert(num_pages >= 0 && "a pool cannot have a negative number of pages");
  free_.reserve(ref_counts_.size());
  // Highest id at the bottom, so the first allocations take 0, 1, 2, ...
  for (int32_t page = this->num_pages() - 1; page >= 0; --page) free_.push_back(page);
}

std::optional<std::vector<int32_t>> PagePool::allocate(int32_t n) {
  assert(n >= 0 && "allocate() of a negative number of pages");
  if (n < 0 || n > num_free()) return std::nullopt;
  std::vector<int32_t> pages(static_cast<size_t>(n));
  for (int32_t& page : pages) {
    page = free_.back();
    free_.pop_back();
    ref_counts_[static_cast<size_t>(page)] = 1;
  }
  return pages;
}

void PagePool::retain(int32_t page) {
  const bool in_use = page >= 0 && page < num_pages() && ref_counts_[static_cast<size_t>(page)] > 0;
  assert(in_use && "retain() of a free or unknown page");
  // Counting a free page would hand it out twice: once from the free list, once here.
  if (!in_use) return;
  ++ref_counts_[static_cast<size_t>(page)];
}

void PagePool::release(int32_t page) {
  const bool in_use = page >= 0 && page < num_pages() && ref_counts_[static_cast<size_t>(page)] > 0;
  assert(in_use && "release() of a free or unknown page");
  // A double release in production must not put the page on the free list twice.
  if (!in_use) return;
  if (--ref_counts_[static_cast<size_t>(page)] == 0) free_.push_back(page);
}

}  // namespace tessera::router
