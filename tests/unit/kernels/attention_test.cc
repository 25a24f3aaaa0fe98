// kernels/cpu/attention: paged attention over scattered pages equals dense causal
// attention computed in double, for float32 and half caches, GQA, sliding windows and
// mixed prefill/decode batches; bad page tables are refused.
#include "kernels/cpu/attention.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/dequantize.h"

using namespace tessera::kernels::cpu;

namespace {

struct Case {
  KvDtype dtype;
  int64_t page_size;
  int64_t head_dim;
  int64_t window;
};

}  // namespace

TEST_CASE("paged attention matches dense causal attention", "[attention]") {
  const Case cases[] = {{KvDtype::kF32, 16, 64, 0},  {KvDtype::kF32, 1, 64, 0},  {KvDtype::kF16, 16, 64, 0},
                        {KvDtype::kF16, 3, 128, 0},  {KvDtype::kF32, 4, 48, 0},  {KvDtype::kF32, 16, 64, 7},
                        {KvDtype::kF16, 16, 128, 5}};
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Case& tc : cases) {
    INFO("dtype " << (tc.dtype == KvDtype::kF16 ? "f16" : "f32") << " page_size " << tc.page_size << " head_dim "
                  << tc.head_dim << " window " << tc.window);
    const int64_t num_kv_heads = 2, num_heads = 6, hd = tc.head_dim;
    // Three sequences: a fresh prefill of 9 tokens, a decode at position 20, and a prefill
    // chunk of 5 tokens after 11 cached ones.
    struct Seq {
      int64_t start, n;
    };
    const Seq seqs[] = {{0, 9}, {20, 1}, {11, 5}};
    const int64_t num_pages = 64;
    KvCacheShape shape{tc.dtype, num_pages, tc.page_size, num_kv_heads, hd};
    const int64_t width = num_kv_heads * hd;
    const int64_t cache_elems = num_pages * tc.page_size * width;
    std::vector<float> k32(static_cast<size_t>(cache_elems)), v32(static_cast<size_t>(cache_elems));
    std::vector<uint16_t> k16(static_cast<size_t>(cache_elems)), v16(static_cast<size_t>(cache_elems));
    void* kc = tc.dtype == KvDtype::kF32 ? static_cast<void*>(k32.data()) : static_cast<void*>(k16.data());
    void* vc = tc.dtype == KvDtype::kF32 ? static_cast<void*>(v32.data()) : static_cast<void*>(v16.data());

    // Scattered pages: a shuffled page list handed out to the sequences in turn.
    std::vector<int32_t> pool(static_cast<size_t>(num_pages));
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng);
    size_t next_page = 0;
    std::vector<std::vector<int32_t>> tables;
    // Per sequence, every position's k/v as floats (what the cache should hold).
    std::vector<std::vector<float>> keys, values;
    int64_t num_tokens = 0;
    for (const Seq& s : seqs) {
      const int64_t ctx = s.start + s.n;
      std::vector<int32_t> table;
      for (int64_t i = 0; i < (ctx + tc.page_size - 1) / tc.page_size; ++i) table.push_back(pool[next_page++]);
      tables.push_back(table);
      std::vector<float> kk(static_cast<size_t>(ctx * width)), vv(kk.size());
      for (float& x : kk) x = normal(rng);
      for (float& x : vv) x = normal(rng);
      keys.push_back(kk);
      values.push_back(vv);
      num_tokens += s.n;
    }
    // The cached prefix goes in through store_kv too (as earlier steps would have written it).
    for (size_t si = 0; si < 3; ++si) {
      const Seq& s = seqs[si];
      std::vector<int64_t> slots;
      for (int64_t pos = 0; pos < s.start + s.n; ++pos) {
        slots.push_back(static_cast<int64_t>(tables[si][static_cast<size_t>(pos / tc.page_size)]) * tc.page_size +
                        pos % tc.page_size);
      }
      store_kv({shape, kc, vc, keys[si].data(), values[si].data(), width, slots});
    }
    std::vector<float> q(static_cast<size_t>(num_tokens * num_heads * hd));
    for (float& x : q) x = normal(rng);
    std::vector<float> out(q.size(), NAN);
    std::vector<AttentionSequence> aseqs;
    int64_t begin = 0;
    for (size_t si = 0; si < 3; ++si) {
      aseqs.push_back({begin, seqs[si].n, seqs[si].start, tables[si]});
      begin += seqs[si].n;
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    REQUIRE(paged_attention({shape, kc, vc, q.data(), 0, out.data(), 0, num_heads, scale, tc.window, aseqs}).is_ok());

    // What the cache holds for sequence si, position j, element e of the token's row.
    auto held = [&](bool is_key, size_t si, int64_t j, int64_t e) -> double {
      const int64_t slot =
          static_cast<int64_t>(tables[si][static_cast<size_t>(j / tc.page_size)]) * tc.page_size + j % tc.page_size;
      const size_t at = static_cast<size_t>(slot * width + e);
      if (tc.dtype == KvDtype::kF32) return is_key ? k32[at] : v32[at];
      return fp16_to_fp32(is_key ? k16[at] : v16[at]);
    };
    // The cache holds what went in (to half precision for half caches).
    for (size_t si = 0; si < 3; ++si) {
      for (int64_t j = 0; j < seqs[si].start + seqs[si].n; ++j) {
        for (int64_t e = 0; e < width; ++e) {
          const double want = keys[si][static_cast<size_t>(j * width + e)];
          // Half: relative rounding of normals, 2^-25 absolute for subnormals.
          REQUIRE(std::fabs(held(true, si, j, e) - want) <=
                  (tc.dtype == KvDtype::kF32 ? 0.0 : 1e-3 * std::fabs(want) + 3e-8));
        }
      }
    }
    // Dense causal attention in double over what the cache holds.
    for (size_t si = 0; si < 3; ++si) {
      const Seq& s = seqs[si];
      for (int64_t t = 0; t < s.n; ++t) {
        const int64_t pos = s.start + t;
        const int64_t tok = aseqs[si].token_begin + t;
        const int64_t lo = tc.window > 0 ? std::max<int64_t>(0, pos - tc.window + 1) : 0;
        for (int64_t h = 0; h < num_heads; ++h) {
          const int64_t g = h / (num_heads / num_kv_heads);
          std::vector<double> sc;
          double mx = -INFINITY;
          for (int64_t j = lo; j <= pos; ++j) {
            double d = 0;
            for (int64_t i = 0; i < hd; ++i) {
              d += q[static_cast<size_t>((tok * num_heads + h) * hd + i)] * held(true, si, j, g * hd + i);
            }
            sc.push_back(d * scale);
            mx = std::max(mx, sc.back());
          }
          double sum = 0;
          for (double& x : sc) sum += (x = std::exp(x - mx));
          for (int64_t i = 0; i < hd; ++i) {
            double want = 0;
            for (int64_t j = lo; j <= pos; ++j) want += sc[static_cast<size_t>(j - lo)] / sum * held(false, si, j, g * hd + i);
            const float got = out[static_cast<size_t>((tok * num_heads + h) * hd + i)];
            INFO("seq " << si << " token " << t << " head " << h << " dim " << i);
            REQUIRE(std::fabs(got - want) < 1e-5 * (1 + std::fabs(want)));
          }
        }
      }
    }
  }
}

TEST_CASE("paged attention refuses page tables that do not cover the context", "[attention]") {
  KvCacheShape shape{KvDtype::kF32, 4, 16, 1, 64};
  std::vector<float> cache(4 * 16 * 64), q(64), out(64);
  const std::vector<int32_t> short_table{0};
  const AttentionSequence seq{0, 1, 20, short_table};  // position 20 needs 2 pages
  AttentionParams p{shape, cache.data(), cache.data(), q.data(), 0, out.data(), 0, 1, 1.0f, 0, {&seq, 1}};
  REQUIRE(paged_attention(p).code() == tessera::StatusCode::kInvalidArgument);
  const std::vector<int32_t> bad_table{0, 9};  // page 9 is outside a 4-page cache
  const AttentionSequence seq2{0, 1, 20, bad_table};
  p.sequences = {&seq2, 1};
  REQUIRE(paged_attention(p).code() == tessera::StatusCode::kInvalidArgument);
}
