// kernels/cuda/decode_attention against a float64 reference: sequences of 1 to 8k cached
// tokens scattered over shuffled pages (page size 1 and 16), GQA groups of 1, 3, 4 and 8
// query heads per KV head, head_dim 64 and 128. The output is poisoned before each run.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/decode_attention.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;

namespace {

// One call's inputs on the host: query rows, each reading block-table row table_rows[r]
// (row r when empty) up to lens[r] tokens.
struct AttentionInputs {
  int64_t num_kv_heads = 0, group = 0, head_dim = 0, page_size = 0, max_pages = 0;
  std::vector<int32_t> tables, lens, table_rows;
  std::vector<int32_t> rows;  // when set: only these query rows run (DecodeAttentionParams::rows)
  std::vector<Bf16> q, k_cache, v_cache;
  float scale = 0;
};

// Runs the kernel (split as given: 0 none) and checks every output element against the
// float64 reference.
void run_and_check(const AttentionInputs& in, int64_t split_tokens, int64_t max_splits) {
  const int64_t Hkv = in.num_kv_heads, Hq = Hkv * in.group, D = in.head_dim, P = in.page_size;
  const int64_t R = static_cast<int64_t>(in.lens.size());
  DeviceBuffer<Bf16> d_q(in.q), d_k(in.k_cache), d_v(in.v_cache), d_out(R * Hq * D);
  DeviceBuffer<int32_t> d_tables(in.tables), d_lens(in.lens), d_rows(in.table_rows), d_subset(in.rows);
  DeviceBuffer<float> d_ws(std::max<int64_t>(1, R * Hq * max_splits * (D + 2)));
  d_out.poison();
  d_ws.poison();
  DecodeAttentionParams p;
  p.q = d_q.ptr;
  p.k_cache = d_k.ptr;
  p.v_cache = d_v.ptr;
  p.block_tables = d_tables.ptr;
  p.seq_lens = d_lens.ptr;
  p.table_rows = in.table_rows.empty() ? nullptr : d_rows.ptr;
  p.rows = in.rows.empty() ? nullptr : d_subset.ptr;
  p.out = d_out.ptr;
  p.num_seqs = in.rows.empty() ? R : static_cast<int64_t>(in.rows.size());
  p.num_q_heads = Hq;
  p.num_kv_heads = Hkv;
  p.head_dim = D;
  p.page_size = P;
  p.max_pages_per_seq = in.max_pages;
  p.scale = in.scale;
  p.split_tokens = split_tokens;
  p.max_splits = max_splits;
  p.workspace = d_ws.ptr;
  INFO("split_tokens " << split_tokens << " max_splits " << max_splits);
  REQUIRE(decode_attention(p, nullptr).is_ok());
  const auto out = d_out.download();
  for (int64_t r = 0; r < R; ++r) {
    if (!in.rows.empty() && std::find(in.rows.begin(), in.rows.end(), r) == in.rows.end()) {
      // A row left out is not written.
      for (int64_t i = 0; i < Hq * D; ++i) REQUIRE(out[r * Hq * D + i] == kPoison);
      continue;
    }
    const int64_t len = in.lens[r];
    const int64_t table = in.table_rows.empty() ? r : in.table_rows[r];
    auto slot = [&](int64_t i) { return static_cast<int64_t>(in.tables[table * in.max_pages + i / P]) * P + i % P; };
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kv = h / in.group;
      std::vector<double> w(len);
      double big = -1e300, den = 0;
      for (int64_t i = 0; i < len; ++i) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) {
          dot += to_float(in.q[(r * Hq + h) * D + d]) * to_float(in.k_cache[(slot(i) * Hkv + kv) * D + d]);
        }
        w[i] = dot * in.scale;
        big = std::max(big, w[i]);
      }
      for (double& x : w) den += (x = std::exp(x - big));
      for (int64_t d = 0; d < D; ++d) {
        double want = 0;
        for (int64_t i = 0; i < len; ++i) want += w[i] * to_float(in.v_cache[(slot(i) * Hkv + kv) * D + d]);
        want /= den;
        const double got = to_float(out[(r * Hq + h) * D + d]);
        INFO("row " << r << " (len " << len << ") head " << h << " dim " << d << " want " << want << " got " << got);
        REQUIRE(std::isfinite(got));
        // The prefill test's bound: both kernels round the softmax weights to bf16 for the
        // tensor cores' P·V (as flash attention does); the fp32 kernel before them met
        // 0.008 · |want| + 2e-3.
        REQUIRE(std::abs(got - want) <= 0.01 * std::abs(want) + 4e-3);
      }
    }
  }
}

struct Case {
  int64_t num_kv_heads, group, head_dim, page_size;
  std::vector<int32_t> seq_lens;
};

// split_tokens: 0 for none, -1 for plan_decode_split's choice on a 132-SM GPU, else as given.
void run_case(const Case& c, int64_t split_tokens, std::mt19937& rng) {
  AttentionInputs in;
  in.num_kv_heads = c.num_kv_heads;
  in.group = c.group;
  in.head_dim = c.head_dim;
  in.page_size = c.page_size;
  const int64_t Hq = c.num_kv_heads * c.group, P = c.page_size;
  const int64_t S = static_cast<int64_t>(c.seq_lens.size());
  int64_t total_pages = 0;
  in.max_pages = 1;
  for (int32_t len : c.seq_lens) {
    in.max_pages = std::max<int64_t>(in.max_pages, (len + P - 1) / P);
    total_pages += (len + P - 1) / P;
  }
  const int64_t num_pages = total_pages + 2;
  // Every sequence gets its own pages, in a shuffled order across the pool.
  std::vector<int32_t> pool(num_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  in.tables.assign(S * in.max_pages, -1);
  size_t next = 0;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < (c.seq_lens[s] + P - 1) / P; ++i) in.tables[s * in.max_pages + i] = pool[next++];
  }
  in.lens = c.seq_lens;
  in.q = random_bf16(S * Hq * c.head_dim, rng);
  in.k_cache = random_bf16(num_pages * P * c.num_kv_heads * c.head_dim, rng);
  in.v_cache = random_bf16(num_pages * P * c.num_kv_heads * c.head_dim, rng);
  in.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  const int64_t longest = *std::max_element(c.seq_lens.begin(), c.seq_lens.end());
  if (split_tokens < 0) {
    const DecodeSplit plan = plan_decode_split(S, Hq, c.num_kv_heads, c.head_dim, longest, 132);
    run_and_check(in, plan.split_tokens, plan.max_splits);
  } else {
    run_and_check(in, split_tokens, split_tokens > 0 ? (longest + split_tokens - 1) / split_tokens : 1);
  }
}

}  // namespace

TEST_CASE("decode attention matches a float64 reference over paged caches", "[cuda][attention]") {
  std::mt19937 rng(11);
  const Case cases[] = {
      {3, 3, 64, 16, {1, 17, 300}},          // SmolLM2-135M: 9 query heads over 3 KV heads
      {8, 4, 128, 16, {1, 2, 1000, 33}},     // Llama-3-8B's heads
      {2, 8, 128, 1, {129, 5}},              // page size 1 (token-level)
      {4, 1, 64, 1, {64, 65}},               // no grouping
      {8, 4, 128, 16, {8192, 4000}},         // long contexts
  };
  for (const Case& c : cases) {
    for (int64_t split : {int64_t{0}, int64_t{-1}, int64_t{64}}) {
      INFO("Hkv " << c.num_kv_heads << " group " << c.group << " D " << c.head_dim << " page " << c.page_size);
      run_case(c, split, rng);
    }
  }
}

TEST_CASE("decode attention over many whole sequences", "[cuda][attention]") {
  // Batches of a served step: 143 sequences over 8 KV heads (1,144 blocks, several waves),
  // 40 over 3 KV heads of 3 (SmolLM2's), and groups of 2 with head_dim 64.
  std::mt19937 rng(13);
  std::uniform_int_distribution<int32_t> len(1, 300);
  std::vector<int32_t> many(143), few(40);
  for (int32_t& l : many) l = len(rng);
  for (int32_t& l : few) l = len(rng);
  run_case({8, 4, 128, 16, many}, 0, rng);
  run_case({3, 3, 64, 16, few}, 0, rng);
  run_case({8, 2, 64, 16, many}, 0, rng);
}

TEST_CASE("the split plan fills the GPU only when sequences and heads do not", "[cuda][attention]") {
  const DecodeSplit one = plan_decode_split(1, 32, 8, 128, 1024, 132);
  CHECK(one.split_tokens % 64 == 0);
  CHECK(one.max_splits == 16);  // 33 pieces would make two blocks per SM; 64-token pieces allow 16
  CHECK(one.workspace_bytes == size_t{32} * one.max_splits * 130 * 4);
  const DecodeSplit full = plan_decode_split(64, 32, 8, 128, 1024, 132);
  CHECK(full.max_splits == 1);
  CHECK(full.workspace_bytes == 0);
  CHECK(plan_decode_split(1, 32, 8, 128, 40, 132).max_splits == 1);  // too short to split
}

TEST_CASE("decode attention refuses shapes it is not built for", "[cuda][attention]") {
  DecodeAttentionParams p;
  p.num_seqs = 1;
  p.num_q_heads = 32;
  p.num_kv_heads = 2;  // 16 per group
  p.head_dim = 128;
  p.page_size = 16;
  p.max_pages_per_seq = 1;
  p.scale = 0.1f;
  CHECK(decode_attention(p, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  p.num_kv_heads = 8;
  p.head_dim = 96;
  CHECK(decode_attention(p, nullptr).code() == tessera::StatusCode::kInvalidArgument);
}

TEST_CASE("prefill chunks run as causal query rows over a cached prefix", "[cuda][attention]") {
  std::mt19937 rng(12);
  AttentionInputs in;
  in.num_kv_heads = 3;
  in.group = 3;
  in.head_dim = 64;
  in.page_size = 16;
  in.max_pages = 8;
  in.scale = 0.125f;
  // Two sequences: 40 cached tokens + a chunk of 25, and no prefix + a chunk of 18.
  const std::vector<int64_t> prefix = {40, 0}, chunk = {25, 18};
  in.tables.resize(2 * in.max_pages);
  std::iota(in.tables.begin(), in.tables.end(), 0);
  std::shuffle(in.tables.begin(), in.tables.end(), rng);
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t i = 0; i < chunk[s]; ++i) {
      in.lens.push_back(static_cast<int32_t>(prefix[s] + i + 1));
      in.table_rows.push_back(static_cast<int32_t>(s));
    }
  }
  const int64_t R = static_cast<int64_t>(in.lens.size()), Hq = in.num_kv_heads * in.group;
  in.q = random_bf16(R * Hq * in.head_dim, rng);
  in.k_cache = random_bf16(2 * in.max_pages * in.page_size * in.num_kv_heads * in.head_dim, rng);
  in.v_cache = random_bf16(2 * in.max_pages * in.page_size * in.num_kv_heads * in.head_dim, rng);
  run_and_check(in, 0, 1);
}

TEST_CASE("decode attention runs only the rows it is given, where they are", "[cuda][attention]") {
  // A step that mixes prefill chunks and decodes hands the decode kernel its one-token rows:
  // rows 3 and 0 of five, out of order; the others stay untouched.
  std::mt19937 rng(13);
  AttentionInputs in;
  in.num_kv_heads = 8;
  in.group = 4;
  in.head_dim = 128;
  in.page_size = 16;
  in.scale = 0.088f;
  in.lens = {700, 5, 1, 300, 64};
  in.max_pages = (700 + 15) / 16;
  const int64_t S = static_cast<int64_t>(in.lens.size());
  std::vector<int32_t> pool(S * in.max_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  in.tables = pool;
  const int64_t Hq = in.num_kv_heads * in.group;
  in.q = random_bf16(S * Hq * in.head_dim, rng);
  in.k_cache = random_bf16(S * in.max_pages * in.page_size * in.num_kv_heads * in.head_dim, rng);
  in.v_cache = random_bf16(S * in.max_pages * in.page_size * in.num_kv_heads * in.head_dim, rng);
  in.rows = {3, 0};
  const DecodeSplit plan = plan_decode_split(2, Hq, in.num_kv_heads, in.head_dim, 700, 132);
  run_and_check(in, 0, 1);
  run_and_check(in, plan.split_tokens, plan.max_splits);
  run_and_check(in, 64, (700 + 63) / 64);
}
