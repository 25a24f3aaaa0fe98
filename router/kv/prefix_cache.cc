#include "router/kv/prefix_cache.h"

#include <algorithm>
#include <cassert>
#include <unordered_map>

namespace tessera::router {

namespace {

// A whole page of token ids as a child key. The span views the child's own `tokens`, which
// never change while the child lives, so the key needs no copy of its own.
using Block = std::span<const int32_t>;

struct BlockHash {
  size_t operator()(Block block) const {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t token : block) {
      h = (h ^ static_cast<uint32_t>(token)) * 0x9e3779b97f4a7c15ull;
      h ^= h >> 29;
    }
    return static_cast<size_t>(h);
  }
};

struct BlockEqual {
  bool operator()(Block a, Block b) const { return std::ranges::equal(a, b); }
};

}  // namespace

struct RadixPrefixCache::Node {
  std::vector<int32_t> tokens;  // the edge into this node: page_size ids (none at the root)
  int32_t page = -1;            // holds the KV of `tokens` given every token above; -1 at the root
  Node* parent = nullptr;
  uint64_t id = 0;
  // Never older than any descendant's: every touch of a node touches its whole root path.
  uint64_t last_use = 0;
  // Keyed by the whole block, not its first token: pages of different prompts often share
  // their first few ids (BOS, a chat template's header).
  std::unordered_map<Block, std::unique_ptr<Node>, BlockHash, BlockEqual> children;
};

RadixPrefixCache::RadixPrefixCache(PagePool& pool, int32_t page_size)
    : pool_(pool),
      page_size_(std::max(page_size, 1)),
      root_(std::make_unique<Node>()),
      page_in_tree_(static_cast<size_t>(pool.num_pages()), false) {
  assert(page_size >= 1 && "page_size must be at least one token");
}

RadixPrefixCache::~RadixPrefixCache() { clear(); }

RadixPrefixCache::Node* RadixPrefixCache::find_child(const Node& parent, Block block) {
  const auto it = parent.children.find(block);
  return it == parent.children.end() ? nullptr : it->second.get();
}

void RadixPrefixCache::touch(Node& node, uint64_t now) {
  assert(&node != root_.get());
  if (node.children.empty()) {  // a leaf: its place in the LRU order moves
    auto handle = leaves_.extract(LeafKey{node.last_use, node.id});
    assert(!handle.empty() && "a leaf missing from leaves_");
    if (handle.empty()) {
      leaves_.emplace(LeafKey{now, node.id}, &node);
    } else {
      handle.key() = LeafKey{now, node.id};
      leaves_.insert(std::move(handle));
    }
  }
  node.last_use = now;
}

RadixPrefixCache::Node* RadixPrefixCache::add_child(Node& parent, Block block, int32_t page,
                                                    uint64_t now) {
  if (&parent != root_.get() && parent.children.empty()) {
    leaves_.erase(LeafKey{parent.last_use, parent.id});
  }
  auto child = std::make_unique<Node>();
  child->tokens.assign(block.begin(), block.end());
  child->page = page;
  child->parent = &parent;
  child->id = next_node_id_++;
  child->last_use = now;
  Node* raw = child.get();
  parent.children.emplace(Block(raw->tokens), std::move(child));
  leaves_.emplace(LeafKey{now, raw->id}, raw);
  page_in_tree_[static_cast<size_t>(page)] = true;
  ++stats_.num_cached_pages;
  return raw;
}

RadixPrefixCache::Node* RadixPrefixCache::remove_leaf(Node& leaf) {
  assert(leaf.children.empty());
  Node* parent = leaf.parent;
  const int32_t page = leaf.page;
  // Find first, erase by iterator: the key views the leaf's tokens, which the erase frees.
  const auto it = parent->children.find(Block(leaf.tokens));
  assert(it != parent->children.end());
  parent->children.erase(it);
  page_in_tree_[static_cast<size_t>(page)] = false;
  --stats_.num_cached_pages;
  pool_.release(page);
  return parent;
}

PrefixMatch RadixPrefixCache::match(const PrefixMatchParams& params) {
  const uint64_t now = ++clock_;
  const auto page_size = static_cast<size_t>(page_size_);
  const size_t limit =
      std::min(params.tokens.size(), static_cast<size_t>(std::max(params.max_tokens, 0)));
  const size_t max_pages = limit / page_size;

  PrefixMatch result;
  Node* node = root_.get();
  for (size_t i = 0; i < max_pages; ++i) {
    Node* child = find_child(*node, params.tokens.subspan(i * page_size, page_size));
    if (child == nullptr) break;
    touch(*child, now);
    pool_.retain(child->page);  // the caller's count: the page cannot be evicted under it
    result.pages.push_back(child->page);
    node = child;
  }
  result.num_tokens = static_cast<int32_t>(result.pages.size() * page_size);
  if (params.count_in_stats) record_query(static_cast<int64_t>(params.tokens.size()), result.num_tokens);
  return result;
}

PrefixInsertResult RadixPrefixCache::insert(const PrefixInsertParams& params) {
  const uint64_t now = ++clock_;
  const auto page_size = static_cast<size_t>(page_size_);
  const size_t num_blocks = std::min(params.tokens.size() / page_size, params.pages.size());

  PrefixInsertResult result;
  Node* node = root_.get();
  for (size_t i = 0; i < num_blocks; ++i) {
    const Block block = params.tokens.subspan(i * page_size, page_size);
    if (Node* child = find_child(*node, block)) {
      // The tree's page holds the same KV; the caller's page (if another) stays the caller's.
      touch(*child, now);
      node = child;
      continue;
    }
    const int32_t page = params.pages[i];
    const bool holdable = page >= 0 && page < pool_.num_pages() && pool_.ref_count(page) > 0 &&
                          !page_in_tree_[static_cast<size_t>(page)];
    assert(holdable && "insert() of a page the caller does not hold, or one already in the tree");
    // Nothing below this block can be attached without it; the rest stays uncached.
    if (!holdable) break;
    pool_.retain(page);
    node = add_child(*node, block, page, now);
    ++result.num_new_pages;
  }
  return result;
}

int32_t RadixPrefixCache::evict(int32_t num_pages) {
  int32_t num_freed = 0;
  auto it = leaves_.begin();
  while (num_freed < num_pages && it != leaves_.end()) {
    Node* leaf = it->second;
    if (pool_.ref_count(leaf->page) > 1) {  // a sequence still reads it
      ++it;
      continue;
    }
    it = leaves_.erase(it);
    Node* parent = remove_leaf(*leaf);
    ++num_freed;
    if (parent != root_.get() && parent->children.empty()) {
      const auto parent_it = leaves_.emplace(LeafKey{parent->last_use, parent->id}, parent).first;
      // Everything before `it` was skipped as referenced, but the new leaf may sort among
      // those: resume from it so the order stays least recently used first.
      if (it == leaves_.end() || parent_it->first < it->first) it = parent_it;
    }
  }
  return num_freed;
}

int32_t RadixPrefixCache::num_evictable_pages() const {
  // Preorder with each node's parent index; walking it backwards sees children before
  // parents, so a referenced page can mark its whole root path as blocked. Iterative: with
  // page_size 1 a long context is a chain as deep as it is long.
  std::vector<std::pair<const Node*, int32_t>> order;
  std::vector<std::pair<const Node*, int32_t>> stack;
  for (const auto& [block, child] : root_->children) stack.emplace_back(child.get(), -1);
  while (!stack.empty()) {
    const auto [node, parent_index] = stack.back();
    stack.pop_back();
    const auto index = static_cast<int32_t>(order.size());
    order.emplace_back(node, parent_index);
    for (const auto& [block, child] : node->children) stack.emplace_back(child.get(), index);
  }
  std::vector<bool> blocked(order.size(), false);
  int32_t num_evictable = 0;
  for (size_t i = order.size(); i-- > 0;) {
    const auto [node, parent_index] = order[i];
    if (pool_.ref_count(node->page) > 1) blocked[i] = true;
    if (!blocked[i]) {
      ++num_evictable;
    } else if (parent_index >= 0) {
      blocked[static_cast<size_t>(parent_index)] = true;
    }
  }
  return num_evictable;
}

void RadixPrefixCache::clear() {
  // Iterative: freeing a deep chain through nested unique_ptr destructors would overflow
  // the stack. Children move out before their parent dies, so every node dies childless.
  std::vector<std::unique_ptr<Node>> stack;
  const auto take_children = [&stack](Node& node) {
    for (auto& [block, child] : node.children) stack.push_back(std::move(child));
    node.children.clear();
  };
  take_children(*root_);
  while (!stack.empty()) {
    std::unique_ptr<Node> node = std::move(stack.back());
    stack.pop_back();
    take_children(*node);
    page_in_tree_[static_cast<size_t>(node->page)] = false;
    pool_.release(node->page);
  }
  leaves_.clear();
  stats_.num_cached_pages = 0;
}

}  // namespace tessera::router
