// A radix tree over token ids at page granularity: full KV pages of finished or running
// sequences stay reusable by later requests with the same prefix (a shared system prompt,
// a multi-turn conversation). Each tree edge is exactly one page: page_size token ids and
// the page that holds their KV given everything above it.
//
// Reference counts live in the PagePool: the cache holds one count on every page in the
// tree; match() adds one for the caller. A page is evictable when only the cache holds it
// and it is a leaf; evict() frees least recently used leaves first (a parent becomes a leaf
// once its children are gone).
//
// Params/Result structs (SGLang's habit), so policies add fields, not signatures.
// Owned by the group's scheduler; one thread. The pool must outlive the cache (the
// destructor hands the cache's counts back).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "router/kv/page_pool.h"

namespace tessera::router {

struct PrefixMatchParams {
  std::span<const int32_t> tokens;
  // Match at most this many tokens (so at least one token is left to compute); rounded
  // down to whole pages. 0 (the default) matches nothing.
  int32_t max_tokens = 0;
  // False for a look-up that may be retried (admission that might not go through): the
  // caller records the query with record_query() once it counts.
  bool count_in_stats = true;
};

struct PrefixMatch {
  int32_t num_tokens = 0;      // a multiple of page_size
  std::vector<int32_t> pages;  // num_tokens / page_size pages, retained for the caller
};

struct PrefixInsertParams {
  // A sequence's tokens and the pages holding them: pages[i] holds tokens
  // [i * page_size, (i + 1) * page_size). Only whole pages are inserted, and no more than
  // pages.size() of them. Every page passed must be held by the caller.
  std::span<const int32_t> tokens;
  std::span<const int32_t> pages;
};

struct PrefixInsertResult {
  // Pages that were new to the tree (the cache now holds a count on each). Pages whose
  // tokens the tree already held under another page are not taken: the caller keeps
  // sole ownership of those.
  int32_t num_new_pages = 0;
};

struct PrefixCacheStats {
  int64_t num_query_tokens = 0;  // tokens looked up by match()
  int64_t num_hit_tokens = 0;    // of those, found
  int32_t num_cached_pages = 0;  // pages in the tree
};

class RadixPrefixCache {
 public:
  RadixPrefixCache(PagePool& pool, int32_t page_size);
  ~RadixPrefixCache();
  RadixPrefixCache(const RadixPrefixCache&) = delete;
  RadixPrefixCache& operator=(const RadixPrefixCache&) = delete;

  PrefixMatch match(const PrefixMatchParams& params);
  PrefixInsertResult insert(const PrefixInsertParams& params);
  // Frees up to num_pages evictable pages (least recently used leaves first); returns how
  // many were freed to the pool.
  int32_t evict(int32_t num_pages);
  // Pages evict() could free right now: nodes whose page only the cache holds and whose
  // descendants are all such nodes. Walks the whole tree (the pool changes counts without
  // telling the cache), so call it per step at most, not per page.
  int32_t num_evictable_pages() const;
  // Drops the whole tree, releasing its counts (the worker's memory is gone, e.g. after
  // a worker restart).
  void clear();

  const PrefixCacheStats& stats() const { return stats_; }
  // Counts a look-up made with count_in_stats = false, once it counts.
  void record_query(int64_t num_query_tokens, int64_t num_hit_tokens) {
    stats_.num_query_tokens += num_query_tokens;
    stats_.num_hit_tokens += num_hit_tokens;
  }
  int32_t page_size() const { return page_size_; }

 private:
  struct Node;
  using LeafKey = std::pair<uint64_t, uint64_t>;  // (last use, node id): LRU, ties by age

  static Node* find_child(const Node& parent, std::span<const int32_t> block);
  void touch(Node& node, uint64_t now);
  Node* add_child(Node& parent, std::span<const int32_t> block, int32_t page, uint64_t now);
  // Drops a childless node and the cache's count on its page; returns its parent.
  Node* remove_leaf(Node& leaf);

  PagePool& pool_;
  int32_t page_size_;
  std::unique_ptr<Node> root_;
  uint64_t clock_ = 0;  // bumps on every match/insert: the LRU order
  uint64_t next_node_id_ = 0;
  // Every non-root node without children, oldest first: evict()'s candidates, kept sorted
  // so that freeing k pages costs O(k log n) rather than a walk of the tree.
  std::map<LeafKey, Node*> leaves_;
  // Guards against a page entering the tree twice (its KV can only be one token block's).
  std::vector<bool> page_in_tree_;
  PrefixCacheStats stats_;
};

}  // namespace tessera::router
