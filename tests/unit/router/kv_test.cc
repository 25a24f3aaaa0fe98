#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "router/kv/page_pool.h"
#include "router/kv/prefix_cache.h"

using tessera::router::PagePool;
using tessera::router::PrefixMatch;
using tessera::router::RadixPrefixCache;

namespace {

using Tokens = std::vector<int32_t>;
using Pages = std::vector<int32_t>;

Tokens token_range(int32_t first, int32_t n) {
  Tokens tokens(static_cast<size_t>(n));
  std::iota(tokens.begin(), tokens.end(), first);
  return tokens;
}

Tokens concat(Tokens a, const Tokens& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

PrefixMatch match(RadixPrefixCache& cache, const Tokens& tokens, int32_t max_tokens) {
  return cache.match({.tokens = tokens, .max_tokens = max_tokens});
}

int32_t insert(RadixPrefixCache& cache, const Tokens& tokens, const Pages& pages) {
  return cache.insert({.tokens = tokens, .pages = pages}).num_new_pages;
}

void release_all(PagePool& pool, const Pages& pages) {
  for (int32_t page : pages) pool.release(page);
}

// A sequence that computed `tokens` into fresh pages, gave them to the cache and finished:
// afterwards only the cache holds them.
Pages cache_finished_sequence(PagePool& pool, RadixPrefixCache& cache, const Tokens& tokens) {
  const auto num_pages = static_cast<int32_t>(tokens.size()) / cache.page_size();
  Pages pages = pool.allocate(num_pages).value();
  insert(cache, tokens, pages);
  release_all(pool, pages);
  return pages;
}

}  // namespace

// ---- PagePool ----------------------------------------------------------------------------

TEST_CASE("a fresh pool hands out pages 0, 1, 2, ... with one holder each", "[page_pool]") {
  PagePool pool(8);
  CHECK(pool.num_pages() == 8);
  CHECK(pool.num_free() == 8);
  const Pages pages = pool.allocate(3).value();
  CHECK(pages == Pages{0, 1, 2});
  for (int32_t page : pages) CHECK(pool.ref_count(page) == 1);
  CHECK(pool.ref_count(3) == 0);
  CHECK(pool.num_used() == 3);
  CHECK(pool.num_free() == 5);
}

TEST_CASE("allocate takes all n pages or none when fewer are free", "[page_pool]") {
  PagePool pool(4);
  REQUIRE(pool.allocate(3).has_value());
  CHECK_FALSE(pool.allocate(2).has_value());
  CHECK(pool.num_free() == 1);  // the failed call took nothing
  CHECK(pool.allocate(0).value().empty());
  CHECK(pool.allocate(1).value().size() == 1);
  CHECK_FALSE(pool.allocate(1).has_value());
  CHECK(pool.num_free() == 0);
}

TEST_CASE("a page is free again only after its last holder releases it", "[page_pool]") {
  PagePool pool(2);
  const int32_t page = pool.allocate(1).value()[0];
  pool.retain(page);
  pool.retain(page);
  CHECK(pool.ref_count(page) == 3);
  pool.release(page);
  pool.release(page);
  CHECK(pool.ref_count(page) == 1);
  CHECK(pool.num_free() == 1);
  pool.release(page);
  CHECK(pool.ref_count(page) == 0);
  CHECK(pool.num_free() == 2);
}

TEST_CASE("freed pages are reused last in, first out", "[page_pool]") {
  PagePool pool(6);
  const Pages pages = pool.allocate(4).value();  // 0 1 2 3
  pool.release(pages[1]);
  pool.release(pages[3]);
  pool.release(pages[0]);
  CHECK(pool.allocate(1).value() == Pages{0});
  CHECK(pool.allocate(2).value() == Pages{3, 1});
  CHECK(pool.allocate(1).value() == Pages{4});
}

#ifdef NDEBUG
TEST_CASE("a release or retain of a free page is ignored in release builds", "[page_pool]") {
  PagePool pool(2);
  const int32_t page = pool.allocate(1).value()[0];
  pool.release(page);
  pool.release(page);  // a double release must not list the page as free twice
  pool.retain(page);   // nor may a free page gain a holder
  pool.release(7);     // nor may an unknown id touch anything
  CHECK(pool.ref_count(page) == 0);
  CHECK(pool.num_free() == 2);
  CHECK(pool.allocate(2).value().size() == 2);
  CHECK_FALSE(pool.allocate(1).has_value());
}
#endif

// ---- RadixPrefixCache: match and insert --------------------------------------------------

TEST_CASE("match on an empty cache finds nothing and retains nothing", "[prefix_cache]") {
  PagePool pool(8);
  RadixPrefixCache cache(pool, 4);
  const PrefixMatch m = match(cache, token_range(0, 12), 11);
  CHECK(m.num_tokens == 0);
  CHECK(m.pages.empty());
  CHECK(pool.num_free() == 8);
}

TEST_CASE("insert then match returns the cached whole pages, a partial last page is not cached",
          "[prefix_cache]") {
  PagePool pool(8);
  RadixPrefixCache cache(pool, 4);
  const Tokens tokens = token_range(100, 10);  // two whole pages and two tokens
  const Pages pages = pool.allocate(3).value();
  CHECK(insert(cache, tokens, pages) == 2);
  CHECK(cache.stats().num_cached_pages == 2);
  CHECK(pool.ref_count(pages[2]) == 1);  // the partial page stays the sequence's alone

  const Tokens longer = concat(tokens, token_range(500, 8));
  const PrefixMatch m = match(cache, longer, static_cast<int32_t>(longer.size()) - 1);
  CHECK(m.num_tokens == 8);
  CHECK(m.pages == Pages{pages[0], pages[1]});
}

TEST_CASE("match retains each page for the caller on top of the cache's count", "[prefix_cache]") {
  PagePool pool(8);
  RadixPrefixCache cache(pool, 4);
  const Tokens tokens = token_range(0, 8);
  const Pages pages = cache_finished_sequence(pool, cache, tokens);
  for (int32_t page : pages) CHECK(pool.ref_count(page) == 1);  // the cache alone

  const PrefixMatch m = match(cache, concat(tokens, {9}), 8);
  REQUIRE(m.pages == pages);
  for (int32_t page : pages) CHECK(pool.ref_count(page) == 2);  // cache + caller
  CHECK(cache.num_evictable_pages() == 0);
  release_all(pool, m.pages);
  CHECK(cache.num_evictable_pages() == 2);
}

TEST_CASE("max_tokens caps the match, rounded down to whole pages", "[prefix_cache]") {
  PagePool pool(8);
  RadixPrefixCache cache(pool, 4);
  const Tokens tokens = token_range(0, 8);  // exactly two pages
  const Pages pages = cache_finished_sequence(pool, cache, tokens);

  // The usual call leaves the last token to compute, so the second page cannot be reused.
  PrefixMatch m = match(cache, tokens, 7);
  CHECK(m.num_tokens == 4);
  CHECK(m.pages == Pages{pages[0]});
  release_all(pool, m.pages);

  m = match(cache, tokens, 8);
  CHECK(m.pages == pages);
  release_all(pool, m.pages);

  m = match(cache, tokens, 3);
  CHECK(m.pages.empty());
  m = match(cache, tokens, 0);  // the default: nothing
  CHECK(m.pages.empty());
  m = match(cache, tokens, -5);
  CHECK(m.pages.empty());
  for (int32_t page : pages) CHECK(pool.ref_count(page) == 1);
}

TEST_CASE("a divergent suffix matches only the common whole-page prefix", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens cached = token_range(0, 12);
  const Pages pages = cache_finished_sequence(pool, cache, cached);

  Tokens other = cached;
  other[6] = 999;  // differs inside the second page
  const PrefixMatch m = match(cache, other, 12);
  CHECK(m.num_tokens == 4);
  CHECK(m.pages == Pages{pages[0]});
  release_all(pool, m.pages);

  Tokens first_differs = cached;
  first_differs[0] = 999;
  CHECK(match(cache, first_differs, 12).pages.empty());
}

TEST_CASE("pages whose first tokens agree are told apart by the whole page", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens a = {1, 2, 3, 10};
  const Tokens b = {1, 2, 3, 20};
  const Pages page_a = cache_finished_sequence(pool, cache, a);
  const Pages page_b = cache_finished_sequence(pool, cache, b);
  const PrefixMatch ma = match(cache, a, 4);
  const PrefixMatch mb = match(cache, b, 4);
  CHECK(ma.pages == page_a);
  CHECK(mb.pages == page_b);
  CHECK(match(cache, Tokens{1, 2, 3, 30}, 4).pages.empty());
}

TEST_CASE("inserting tokens the tree holds under other pages keeps the tree's pages",
          "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens prompt = token_range(0, 8);
  const Pages first = cache_finished_sequence(pool, cache, prompt);

  // A second sequence computed the same prompt on its own pages (it was admitted before the
  // first one was cached), then went on for another page.
  const Tokens tokens = concat(prompt, token_range(50, 4));
  const Pages second = pool.allocate(3).value();
  CHECK(insert(cache, tokens, second) == 1);  // only the page after the shared prompt
  CHECK(cache.stats().num_cached_pages == 3);
  CHECK(pool.ref_count(second[0]) == 1);  // still the sequence's alone
  CHECK(pool.ref_count(second[1]) == 1);
  CHECK(pool.ref_count(second[2]) == 2);

  release_all(pool, second);
  CHECK(pool.ref_count(second[0]) == 0);  // freed with the sequence, not leaked to the cache
  CHECK(pool.ref_count(second[1]) == 0);
  const PrefixMatch m = match(cache, concat(tokens, {1}), 12);
  CHECK(m.pages == Pages{first[0], first[1], second[2]});
}

TEST_CASE("inserting a sequence again after it grows adds only its new pages", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  Tokens tokens = token_range(0, 6);
  Pages pages = pool.allocate(2).value();
  CHECK(insert(cache, tokens, pages) == 1);
  tokens = concat(tokens, token_range(40, 6));  // 12 tokens: 3 pages
  pages.push_back(pool.allocate(1).value()[0]);
  CHECK(insert(cache, tokens, pages) == 2);
  CHECK(insert(cache, tokens, pages) == 0);
  for (int32_t page : pages) CHECK(pool.ref_count(page) == 2);
  CHECK(cache.stats().num_cached_pages == 3);
}

TEST_CASE("insert takes no more pages than it is given", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens tokens = token_range(0, 12);
  const Pages pages = pool.allocate(2).value();
  CHECK(insert(cache, tokens, pages) == 2);
  CHECK(cache.stats().num_cached_pages == 2);
}

// ---- RadixPrefixCache: eviction ----------------------------------------------------------

TEST_CASE("eviction frees the least recently used leaf first", "[prefix_cache][evict]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens a = token_range(0, 8);
  const Tokens b = token_range(100, 8);
  const Tokens c = token_range(200, 8);
  const Pages pa = cache_finished_sequence(pool, cache, a);
  const Pages pb = cache_finished_sequence(pool, cache, b);
  const Pages pc = cache_finished_sequence(pool, cache, c);
  release_all(pool, match(cache, a, 8).pages);  // a is now the most recently used

  CHECK(cache.evict(2) == 2);  // b's leaf, then b's first page, which became a leaf
  CHECK(pool.ref_count(pb[0]) == 0);
  CHECK(pool.ref_count(pb[1]) == 0);
  CHECK(cache.evict(1) == 1);
  CHECK(pool.ref_count(pc[1]) == 0);
  CHECK(pool.ref_count(pc[0]) == 1);
  for (int32_t page : pa) CHECK(pool.ref_count(page) == 1);
  CHECK(cache.stats().num_cached_pages == 3);
}

TEST_CASE("a page a sequence still holds is never evicted", "[prefix_cache][evict]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens tokens = token_range(0, 12);
  const Pages running = pool.allocate(3).value();
  insert(cache, tokens, running);  // still running: sequence + cache hold each page

  CHECK(cache.num_evictable_pages() == 0);
  CHECK(cache.evict(100) == 0);
  for (int32_t page : running) CHECK(pool.ref_count(page) == 2);

  release_all(pool, running);  // the sequence finishes
  CHECK(cache.num_evictable_pages() == 3);
  CHECK(cache.evict(100) == 3);
  CHECK(pool.num_free() == 16);
  CHECK(cache.stats().num_cached_pages == 0);
}

TEST_CASE("a parent becomes evictable once its children are gone", "[prefix_cache][evict]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Tokens shared = token_range(0, 4);
  const Tokens x = concat(shared, token_range(100, 4));
  const Tokens y = concat(shared, token_range(200, 4));
  const Pages px = pool.allocate(2).value();
  insert(cache, x, px);  // x keeps running
  const Pages py = pool.allocate(2).value();
  insert(cache, y, py);
  release_all(pool, py);
  pool.release(px[0]);  // x no longer needs its first page, so only its leaf pins the path

  CHECK(cache.num_evictable_pages() == 1);
  CHECK(cache.evict(10) == 1);  // y's leaf; the shared page still has x's leaf below it
  CHECK(pool.ref_count(py[1]) == 0);
  CHECK(pool.ref_count(px[0]) == 1);

  pool.release(px[1]);
  CHECK(cache.num_evictable_pages() == 2);
  CHECK(cache.evict(10) == 2);
  CHECK(pool.num_free() == 16);
}

TEST_CASE("a parent left a leaf by evict is freed before newer leaves, past held ones",
          "[prefix_cache][evict]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Pages old_chain = cache_finished_sequence(pool, cache, token_range(0, 8));
  const Pages held = pool.allocate(1).value();
  insert(cache, token_range(100, 4), held);  // its sequence still runs
  const Pages newest = cache_finished_sequence(pool, cache, token_range(200, 4));

  CHECK(cache.evict(2) == 2);
  CHECK(pool.ref_count(old_chain[0]) == 0);
  CHECK(pool.ref_count(old_chain[1]) == 0);
  CHECK(pool.ref_count(held[0]) == 2);
  CHECK(pool.ref_count(newest[0]) == 1);
}

TEST_CASE("evict returns how many pages it freed, fewer when fewer are evictable",
          "[prefix_cache][evict]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  CHECK(cache.evict(5) == 0);
  cache_finished_sequence(pool, cache, token_range(0, 12));
  CHECK(cache.evict(0) == 0);
  CHECK(cache.evict(-1) == 0);
  CHECK(cache.evict(2) == 2);
  CHECK(cache.evict(5) == 1);
  CHECK(cache.evict(5) == 0);
  CHECK(pool.num_free() == 16);
}

TEST_CASE("num_evictable_pages counts unheld chains and stops at a held page's ancestors",
          "[prefix_cache][evict]") {
  PagePool pool(32);
  RadixPrefixCache cache(pool, 4);
  cache_finished_sequence(pool, cache, token_range(0, 12));  // 3 pages, all evictable
  const Pages chain = cache_finished_sequence(pool, cache, token_range(100, 12));
  pool.retain(chain[1]);  // someone reads the middle page: it and its parent must stay
  CHECK(cache.num_evictable_pages() == 4);  // the first chain and the leaf below the held page
  CHECK(cache.evict(100) == 4);
  CHECK(pool.ref_count(chain[0]) == 1);
  CHECK(pool.ref_count(chain[1]) == 2);
  CHECK(pool.ref_count(chain[2]) == 0);
  pool.release(chain[1]);
  CHECK(cache.num_evictable_pages() == 2);
}

TEST_CASE("thousands of pages are evicted in one call in LRU order", "[prefix_cache][evict]") {
  constexpr int32_t kNumSequences = 5000;
  constexpr int32_t kPagesPerSequence = 4;
  PagePool pool(kNumSequences * kPagesPerSequence);
  RadixPrefixCache cache(pool, 2);
  std::vector<Pages> pages;
  for (int32_t s = 0; s < kNumSequences; ++s) {
    Tokens tokens = token_range(0, 2 * kPagesPerSequence);
    tokens[0] = s;  // every sequence its own chain below the root
    pages.push_back(cache_finished_sequence(pool, cache, tokens));
  }
  // Every other sequence still running: eviction must step over them, not stop.
  for (int32_t s = 0; s < kNumSequences; s += 2) pool.retain(pages[static_cast<size_t>(s)].back());

  const int32_t num_unheld = (kNumSequences / 2) * kPagesPerSequence;  // a held leaf pins its path
  CHECK(cache.num_evictable_pages() == num_unheld);
  CHECK(cache.evict(num_unheld / 2) == num_unheld / 2);
  CHECK(cache.evict(num_unheld) == num_unheld - num_unheld / 2);
  // The oldest unheld sequence went first, the newest held one stays whole.
  CHECK(pool.ref_count(pages[1][0]) == 0);
  CHECK(pool.ref_count(pages[kNumSequences - 2].back()) == 2);
  CHECK(pool.ref_count(pages[kNumSequences - 2][0]) == 1);
}

// ---- RadixPrefixCache: stats, clear, depth -----------------------------------------------

TEST_CASE("stats count queried and hit tokens and cached pages", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  cache_finished_sequence(pool, cache, token_range(0, 8));
  release_all(pool, match(cache, token_range(0, 10), 10).pages);  // 8 of 10 hit
  release_all(pool, match(cache, token_range(50, 5), 5).pages);   // 0 of 5
  release_all(pool, match(cache, token_range(0, 10), 6).pages);   // 4 of 10
  CHECK(cache.stats().num_query_tokens == 25);
  CHECK(cache.stats().num_hit_tokens == 12);
  CHECK(cache.stats().num_cached_pages == 2);
  CHECK(cache.evict(1) == 1);
  CHECK(cache.stats().num_cached_pages == 1);
}

TEST_CASE("clear releases the cache's counts and leaves the sequences' holds", "[prefix_cache]") {
  PagePool pool(16);
  RadixPrefixCache cache(pool, 4);
  const Pages finished = cache_finished_sequence(pool, cache, token_range(0, 8));
  const Pages running = pool.allocate(2).value();
  insert(cache, token_range(100, 8), running);

  cache.clear();
  CHECK(cache.stats().num_cached_pages == 0);
  CHECK(cache.num_evictable_pages() == 0);
  for (int32_t page : finished) CHECK(pool.ref_count(page) == 0);
  for (int32_t page : running) CHECK(pool.ref_count(page) == 1);
  CHECK(match(cache, token_range(0, 8), 8).pages.empty());

  // The tree rebuilds from scratch, and the running sequence's pages may enter it again.
  CHECK(insert(cache, token_range(100, 8), running) == 2);
  release_all(pool, running);
  CHECK(cache.evict(10) == 2);
  CHECK(pool.num_free() == 16);
}

TEST_CASE("destroying the cache hands its pages back to the pool", "[prefix_cache]") {
  PagePool pool(16);
  {
    RadixPrefixCache cache(pool, 4);
    cache_finished_sequence(pool, cache, token_range(0, 16));
    CHECK(pool.num_free() == 12);
  }
  CHECK(pool.num_free() == 16);
}

TEST_CASE("a token-level cache (page_size 1) as deep as a long context does not exhaust the stack",
          "[prefix_cache]") {
  constexpr int32_t kContextTokens = 100'000;
  PagePool pool(kContextTokens);
  const Tokens tokens = token_range(0, kContextTokens);
  {
    RadixPrefixCache cache(pool, 1);
    cache_finished_sequence(pool, cache, tokens);
    CHECK(cache.num_evictable_pages() == kContextTokens);
    const PrefixMatch m = match(cache, tokens, kContextTokens - 1);
    CHECK(m.num_tokens == kContextTokens - 1);
    release_all(pool, m.pages);
    CHECK(cache.evict(kContextTokens / 2) == kContextTokens / 2);
    CHECK(pool.num_free() == kContextTokens / 2);
  }  // the destructor frees the remaining chain
  CHECK(pool.num_free() == kContextTokens);
}

// ---- randomized traffic against a naive model --------------------------------------------

namespace {

// The same cache kept the slow, obvious way: one entry per cached whole-page prefix.
class NaiveCache {
 public:
  explicit NaiveCache(int32_t page_size) : page_size_(static_cast<size_t>(page_size)) {}

  Pages match(const Tokens& tokens, int32_t max_tokens) {
    ++clock_;
    Pages pages;
    const size_t limit = std::min(tokens.size(), static_cast<size_t>(std::max(max_tokens, 0)));
    for (size_t end = page_size_; end <= limit; end += page_size_) {
      auto it = nodes_.find(Tokens(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(end)));
      if (it == nodes_.end()) break;
      it->second.last_use = clock_;
      pages.push_back(it->second.page);
    }
    return pages;
  }

  int32_t insert(const Tokens& tokens, const Pages& pages) {
    ++clock_;
    int32_t num_new = 0;
    const size_t num_blocks = std::min(tokens.size() / page_size_, pages.size());
    for (size_t i = 0; i < num_blocks; ++i) {
      Tokens key(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>((i + 1) * page_size_));
      auto [it, added] = nodes_.try_emplace(std::move(key), Entry{pages[i], clock_});
      it->second.last_use = clock_;
      num_new += added ? 1 : 0;
    }
    return num_new;
  }

  // The pages evict(n) should free, in order.
  Pages evict(int32_t n, const PagePool& pool) {
    Pages freed;
    while (static_cast<int32_t>(freed.size()) < n) {
      auto victim = nodes_.end();
      for (auto it = nodes_.begin(); it != nodes_.end(); ++it) {
        if (pool.ref_count(it->second.page) != 1 || has_children(it->first)) continue;
        if (victim == nodes_.end() || it->second.last_use < victim->second.last_use) victim = it;
      }
      if (victim == nodes_.end()) break;
      freed.push_back(victim->second.page);
      nodes_.erase(victim);
    }
    return freed;
  }

  int32_t num_evictable(const PagePool& pool) const {
    int32_t n = 0;
    for (const auto& [key, entry] : nodes_) {
      bool blocked = false;
      for (const auto& [other, other_entry] : nodes_) {
        blocked |= pool.ref_count(other_entry.page) > 1 && other.size() >= key.size() &&
                   std::equal(key.begin(), key.end(), other.begin());
      }
      n += blocked ? 0 : 1;
    }
    return n;
  }

  bool holds(int32_t page) const {
    return std::any_of(nodes_.begin(), nodes_.end(), [page](const auto& n) { return n.second.page == page; });
  }
  int32_t size() const { return static_cast<int32_t>(nodes_.size()); }
  void clear() { nodes_.clear(); }

 private:
  struct Entry {
    int32_t page;
    uint64_t last_use;
  };
  // Keys that extend `key` sort right after it.
  bool has_children(const Tokens& key) const {
    const auto next = nodes_.upper_bound(key);
    return next != nodes_.end() && next->first.size() > key.size() &&
           std::equal(key.begin(), key.end(), next->first.begin());
  }

  size_t page_size_;
  uint64_t clock_ = 0;
  std::map<Tokens, Entry> nodes_;  // key: the whole-page token prefix ending at this page
};

struct Sequence {
  Tokens tokens;
  Pages pages;  // one count on each
};

}  // namespace

TEST_CASE("random traffic agrees with a naive cache and leaks no page", "[prefix_cache][property]") {
  const int32_t page_size = GENERATE(1, 4);
  constexpr int32_t kNumPages = 48;
  constexpr int kNumOps = 10'000;
  const auto ps = static_cast<size_t>(page_size);
  std::mt19937 rng(20240611u + static_cast<uint32_t>(page_size));
  const auto uniform = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  // A small vocabulary, so that different pages often share their first ids.
  const auto random_tokens = [&](int n) {
    Tokens t(static_cast<size_t>(n));
    for (int32_t& id : t) id = uniform(0, 4);
    return t;
  };

  // Shared prompts, one extending another, so the tree branches at several depths.
  std::vector<Tokens> prefixes = {{}, random_tokens(6), random_tokens(13)};
  prefixes.push_back(concat(prefixes[2], random_tokens(9)));

  PagePool pool(kNumPages);
  RadixPrefixCache cache(pool, page_size);
  NaiveCache naive(page_size);
  std::vector<Sequence> sequences;
  // The tokens whose KV a page holds, once known whole: a match must hand out only pages
  // computed for exactly the prefix asked.
  std::vector<Tokens> content(kNumPages);
  int64_t num_query_tokens = 0;
  int64_t num_hit_tokens = 0;

  const auto pages_for = [ps](size_t num_tokens) { return (num_tokens + ps - 1) / ps; };
  // What the scheduler does: allocate, evicting cached pages when the pool is short.
  const auto obtain = [&](size_t n) -> std::optional<Pages> {
    const auto num = static_cast<int32_t>(n);
    if (num > pool.num_free()) {
      const Pages expected = naive.evict(num - pool.num_free(), pool);
      REQUIRE(cache.evict(num - pool.num_free()) == static_cast<int32_t>(expected.size()));
      for (int32_t page : expected) REQUIRE(pool.ref_count(page) == 0);
    }
    std::optional<Pages> pages = pool.allocate(num);
    if (pages) {
      for (int32_t page : *pages) content[static_cast<size_t>(page)].clear();
    }
    return pages;
  };
  const auto checked_match = [&](const Tokens& tokens, int32_t max_tokens) {
    const Pages expected = naive.match(tokens, max_tokens);
    const PrefixMatch m = cache.match({.tokens = tokens, .max_tokens = max_tokens});
    REQUIRE(m.pages == expected);
    REQUIRE(m.num_tokens == static_cast<int32_t>(m.pages.size() * ps));
    for (size_t i = 0; i < m.pages.size(); ++i) {
      REQUIRE(content[static_cast<size_t>(m.pages[i])] ==
              Tokens(tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>((i + 1) * ps)));
    }
    num_query_tokens += static_cast<int64_t>(tokens.size());
    num_hit_tokens += m.num_tokens;
    return m.pages;
  };
  const auto checked_insert = [&](const Sequence& s) {
    for (size_t i = 0; i < s.tokens.size() / ps; ++i) {
      Tokens& known = content[static_cast<size_t>(s.pages[i])];
      const Tokens prefix(s.tokens.begin(), s.tokens.begin() + static_cast<ptrdiff_t>((i + 1) * ps));
      if (known.empty()) known = prefix;
      REQUIRE(known == prefix);
    }
    const int32_t expected = naive.insert(s.tokens, s.pages);
    REQUIRE(cache.insert({.tokens = s.tokens, .pages = s.pages}).num_new_pages == expected);
  };
  const auto drop = [&](size_t index) {
    release_all(pool, sequences[index].pages);
    sequences.erase(sequences.begin() + static_cast<ptrdiff_t>(index));
  };

  for (int op = 0; op < kNumOps; ++op) {
    INFO("op " << op << ", page_size " << page_size);
    const int dice = uniform(0, 199);
    if (dice < 60 && sequences.size() < 8) {  // admit a request
      Sequence s;
      s.tokens = concat(prefixes[static_cast<size_t>(uniform(0, 3))], random_tokens(uniform(1, 10)));
      s.pages = checked_match(s.tokens, static_cast<int32_t>(s.tokens.size()) - 1);
      std::optional<Pages> fresh = obtain(pages_for(s.tokens.size()) - s.pages.size());
      if (fresh) {
        s.pages.insert(s.pages.end(), fresh->begin(), fresh->end());
        sequences.push_back(std::move(s));
      } else {
        release_all(pool, s.pages);  // stays waiting
      }
    } else if (dice < 100 && !sequences.empty()) {  // decode / prefill more tokens
      const auto index = static_cast<size_t>(uniform(0, static_cast<int>(sequences.size()) - 1));
      Sequence& s = sequences[index];
      const Tokens more = random_tokens(uniform(1, 2 * page_size));
      const size_t need = pages_for(s.tokens.size() + more.size()) - s.pages.size();
      std::optional<Pages> fresh = obtain(need);
      if (fresh) {
        s.tokens = concat(s.tokens, more);
        s.pages.insert(s.pages.end(), fresh->begin(), fresh->end());
      } else {
        drop(index);  // preempted
      }
    } else if (dice < 130 && !sequences.empty()) {  // cache a running sequence's pages
      checked_insert(sequences[static_cast<size_t>(uniform(0, static_cast<int>(sequences.size()) - 1))]);
    } else if (dice < 160 && !sequences.empty()) {  // finish
      const auto index = static_cast<size_t>(uniform(0, static_cast<int>(sequences.size()) - 1));
      if (uniform(0, 3) != 0) checked_insert(sequences[index]);
      drop(index);
    } else if (dice < 180) {  // free some memory ahead of need
      const int32_t n = uniform(0, 12);
      const int32_t evictable = cache.num_evictable_pages();
      const Pages expected = naive.evict(n, pool);
      const int32_t num_free = pool.num_free();
      const int32_t freed = cache.evict(n);
      REQUIRE(freed == static_cast<int32_t>(expected.size()));
      REQUIRE(freed == std::min(n, evictable));
      REQUIRE(pool.num_free() == num_free + freed);
      for (int32_t page : expected) REQUIRE(pool.ref_count(page) == 0);
    } else if (dice < 199) {  // a router probing for prefix affinity
      Tokens probe = concat(prefixes[static_cast<size_t>(uniform(0, 3))], random_tokens(uniform(0, 6)));
      release_all(pool, checked_match(probe, uniform(0, static_cast<int>(probe.size()))));
    } else {  // the worker restarted
      cache.clear();
      naive.clear();
    }

    // Every count is accounted for: one per sequence holding the page, one if it is cached.
    std::vector<int32_t> expected_counts(kNumPages, 0);
    for (const Sequence& s : sequences) {
      REQUIRE(s.pages.size() == pages_for(s.tokens.size()));
      for (int32_t page : s.pages) ++expected_counts[static_cast<size_t>(page)];
    }
    int32_t num_in_use = 0;
    for (int32_t page = 0; page < kNumPages; ++page) {
      if (naive.holds(page)) ++expected_counts[static_cast<size_t>(page)];
      REQUIRE(pool.ref_count(page) == expected_counts[static_cast<size_t>(page)]);
      num_in_use += pool.ref_count(page) > 0 ? 1 : 0;
    }
    REQUIRE(pool.num_used() == num_in_use);
    REQUIRE(cache.stats().num_cached_pages == naive.size());
    REQUIRE(cache.num_evictable_pages() == naive.num_evictable(pool));
    REQUIRE(cache.stats().num_query_tokens == num_query_tokens);
    REQUIRE(cache.stats().num_hit_tokens == num_hit_tokens);
  }

  while (!sequences.empty()) drop(sequences.size() - 1);
  CHECK(cache.num_evictable_pages() == cache.stats().num_cached_pages);
  cache.clear();
  CHECK(pool.num_free() == kNumPages);
  CHECK(pool.num_used() == 0);
}
