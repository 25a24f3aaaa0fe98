// kernels/cuda/prefill_attention against a float64 reference: chunks of 1 to 8k new tokens
// over cached prefixes of 0 to 3k tokens, several sequences per call, pages shuffled over
// the pool (page size 1 and 16), GQA groups of 1, 2, 4 and 8, head_dim 64 and 128, and a
// sliding window. The output is poisoned before each run, rows outside the tiles included.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/prefill_attention.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;

namespace {

struct Chunk {
  int32_t cached = 0;  // tokens of the sequence already in the cache before this chunk
  int32_t tokens = 0;  // new tokens (query rows) of the chunk
};

struct Case {
  int64_t num_kv_heads, group, head_dim, page_size, window;
  std::vector<Chunk> chunks;
  int64_t row_stride = 1;  // check every row_stride-th row (long cases), plus the last of each chunk
};

void run_case(const Case& c, std::mt19937& rng) {
  const int64_t Hkv = c.num_kv_heads, Hq = Hkv * c.group, D = c.head_dim, P = c.page_size;
  const int64_t S = static_cast<int64_t>(c.chunks.size());
  INFO("kv heads " << Hkv << " group " << c.group << " head_dim " << D << " page " << P << " window " << c.window);
  int64_t max_pages = 1, total_pages = 0, rows = 0;
  for (const Chunk& ch : c.chunks) {
    const int64_t pages = (ch.cached + ch.tokens + P - 1) / P;
    max_pages = std::max(max_pages, pages);
    total_pages += pages;
    rows += ch.tokens;
  }
  const int64_t num_pages = total_pages + 3;
  std::vector<int32_t> pool(num_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(S * max_pages, -1);
  size_t next = 0;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t pages = (c.chunks[s].cached + c.chunks[s].tokens + P - 1) / P;
    for (int64_t i = 0; i < pages; ++i) tables[s * max_pages + i] = pool[next++];
  }
  // q rows carry q heads then some padding, as the engine's fused q/k/v rows do.
  const int64_t q_stride = Hq * D + 8 * 3;
  const auto q = random_bf16(rows * q_stride, rng);
  const auto k_cache = random_bf16(num_pages * P * Hkv * D, rng);
  const auto v_cache = random_bf16(num_pages * P * Hkv * D, rng);
  std::vector<PrefillTile> tiles;
  std::vector<int64_t> row_seq(rows), row_pos(rows);
  int32_t row = 0;
  for (int64_t s = 0; s < S; ++s) {
    append_prefill_tiles(row, c.chunks[s].tokens, c.chunks[s].cached, static_cast<int32_t>(s), tiles);
    for (int32_t i = 0; i < c.chunks[s].tokens; ++i) {
      row_seq[row + i] = s;
      row_pos[row + i] = c.chunks[s].cached + i;
    }
    row += c.chunks[s].tokens;
  }
  DeviceBuffer<Bf16> d_q(q), d_k(k_cache), d_v(v_cache), d_out(rows * Hq * D + 64);
  DeviceBuffer<int32_t> d_tables(tables);
  DeviceBuffer<PrefillTile> d_tiles(tiles);
  d_out.poison();
  PrefillAttentionParams p;
  p.q = d_q.ptr;
  p.q_stride = q_stride;
  p.k_cache = d_k.ptr;
  p.v_cache = d_v.ptr;
  p.block_tables = d_tables.ptr;
  p.tiles = d_tiles.ptr;
  p.out = d_out.ptr;
  p.num_tiles = static_cast<int64_t>(tiles.size());
  p.num_q_heads = Hq;
  p.num_kv_heads = Hkv;
  p.head_dim = D;
  p.page_size = P;
  p.max_pages_per_seq = max_pages;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  p.sliding_window = c.window;
  REQUIRE(prefill_attention(p, nullptr).is_ok());
  const auto out = d_out.download();
  // Past the last row the output stays poisoned: nothing writes outside the tiles.
  for (int64_t i = rows * Hq * D; i < rows * Hq * D + 64; ++i) REQUIRE(out[i] == kPoison);
  for (int64_t r = 0; r < rows; ++r) {
    const bool last_of_chunk = r + 1 == rows || row_seq[r + 1] != row_seq[r];
    if (r % c.row_stride != 0 && !last_of_chunk) continue;
    const int64_t s = row_seq[r], pos = row_pos[r];
    const int64_t lo = c.window > 0 ? std::max<int64_t>(0, pos + 1 - c.window) : 0;
    auto slot = [&](int64_t i) { return static_cast<int64_t>(tables[s * max_pages + i / P]) * P + i % P; };
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kv = h / c.group;
      std::vector<double> w(pos + 1 - lo);
      double big = -1e300, den = 0;
      for (int64_t i = lo; i <= pos; ++i) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) {
          dot += to_float(q[r * q_stride + h * D + d]) * to_float(k_cache[(slot(i) * Hkv + kv) * D + d]);
        }
        w[i - lo] = dot * p.scale;
        big = std::max(big, w[i - lo]);
      }
      for (double& x : w) den += (x = std::exp(x - big));
      for (int64_t d = 0; d < D; ++d) {
        double want = 0;
        for (int64_t i = lo; i <= pos; ++i) want += w[i - lo] * to_float(v_cache[(slot(i) * Hkv + kv) * D + d]);
        want /= den;
        const double got = to_float(out[(r * Hq + h) * D + d]);
        INFO("row " << r << " (sequence " << s << ", position " << pos << ") head " << h << " dim " << d << " want "
                    << want << " got " << got);
        REQUIRE(std::isfinite(got));
        // The kernel rounds the softmax weights to bf16 before P·V (as flash attention does).
        REQUIRE(std::abs(got - want) <= 0.01 * std::abs(want) + 4e-3);
      }
    }
  }
}

}  // namespace

TEST_CASE("prefill attention matches a float64 reference", "[cuda][attention]") {
  std::mt19937 rng(2024);
  const Case cases[] = {
      // Llama-3-8B's heads (group 4, head_dim 128): a chunk over a cached prefix, a decode
      // row, a fresh prompt not a multiple of the tile.
      {2, 4, 128, 16, 0, {{37, 100}, {500, 1}, {0, 200}}},
      {3, 1, 64, 1, 0, {{0, 130}, {10, 5}}},           // token-level pages
      {1, 8, 128, 16, 0, {{0, 64}, {64, 64}}},          // half tiles, group 8
      {2, 4, 128, 16, 0, {{0, 256}, {300, 128}}, 3},    // whole tiles (128 rows), over a prefix
      {2, 2, 64, 16, 50, {{0, 150}, {120, 33}}},        // sliding window
      {1, 4, 128, 16, 0, {{0, 2048}}, 97},              // a long prompt, rows sampled
      {1, 4, 64, 16, 0, {{3000, 80}}, 7},               // a long cached prefix
      // head_dim 128 runs the wgmma kernel: the same cases again on that path.
      {3, 1, 128, 1, 0, {{0, 130}, {10, 5}}},           // token-level pages, group 1
      {2, 2, 128, 16, 50, {{0, 150}, {120, 33}}},       // sliding window
      {2, 8, 128, 16, 300, {{0, 700}}, 5},              // a window longer than a K/V tile
      {1, 4, 128, 16, 0, {{3000, 80}}, 7},              // a long cached prefix
      {1, 4, 128, 16, 0, {{0, 8192}}, 251},             // an 8k prompt in one chunk, rows sampled
  };
  for (const Case& c : cases) run_case(c, rng);
}

TEST_CASE("prefill attention refuses shapes it does not handle", "[cuda][attention]") {
  PrefillAttentionParams p;
  p.num_tiles = 1;
  p.num_q_heads = 4;
  p.num_kv_heads = 2;
  p.head_dim = 96;
  p.page_size = 16;
  p.max_pages_per_seq = 1;
  p.scale = 0.1f;
  CHECK(prefill_attention(p, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  p.head_dim = 64;
  p.num_q_heads = 3;
  CHECK(prefill_attention(p, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  p.num_q_heads = 4;
  p.q_stride = 100;  // not 16-byte rows
  CHECK(prefill_attention(p, nullptr).code() == tessera::StatusCode::kInvalidArgument);
}
