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

struct Case {
  int64_t num_kv_heads, group, head_dim, page_size;
  std::vector<int32_t> seq_lens;
};

// split_tokens: 0 for none, -1 for plan_decode_split's choice on a 132-SM GPU, else as given.
void run_case(const Case& c, int64_t split_tokens, std::mt19937& rng) {
  const int64_t Hkv = c.num_kv_heads, Hq = Hkv * c.group, D = c.head_dim, P = c.page_size;
  const int64_t S = static_cast<int64_t>(c.seq_lens.size());
  int64_t max_pages = 1, total_pages = 0;
  for (int32_t len : c.seq_lens) {
    max_pages = std::max<int64_t>(max_pages, (len + P - 1) / P);
    total_pages += (len + P - 1) / P;
  }
  const int64_t num_pages = total_pages + 2;
  // Every sequence gets its own pages, in a shuffled order across the pool.
  std::vector<int32_t> pool(num_pages);
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> tables(S * max_pages, -1);
  size_t next = 0;
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < (c.seq_lens[s] + P - 1) / P; ++i) tables[s * max_pages + i] = pool[next++];
  }
  const auto q = random_bf16(S * Hq * D, rng);
  const auto kc = random_bf16(num_pages * P * Hkv * D, rng);
  const auto vc = random_bf16(num_pages * P * Hkv * D, rng);
  DeviceBuffer<Bf16> d_q(q), d_k(kc), d_v(vc), d_out(S * Hq * D);
  DeviceBuffer<int32_t> d_tables(tables), d_lens(c.seq_lens);
  d_out.poison();
  DecodeAttentionParams p;
  p.q = d_q.ptr;
  p.k_cache = d_k.ptr;
  p.v_cache = d_v.ptr;
  p.block_tables = d_tables.ptr;
  p.seq_lens = d_lens.ptr;
  p.out = d_out.ptr;
  p.num_seqs = S;
  p.num_q_heads = Hq;
  p.num_kv_heads = Hkv;
  p.head_dim = D;
  p.page_size = P;
  p.max_pages_per_seq = max_pages;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  const int64_t longest = *std::max_element(c.seq_lens.begin(), c.seq_lens.end());
  if (split_tokens < 0) {
    const DecodeSplit plan = plan_decode_split(S, Hq, Hkv, D, longest, 132);
    p.split_tokens = plan.split_tokens;
    p.max_splits = plan.max_splits;
  } else if (split_tokens > 0) {
    p.split_tokens = split_tokens;
    p.max_splits = (longest + split_tokens - 1) / split_tokens;
  }
  INFO("split_tokens " << p.split_tokens << " max_splits " << p.max_splits);
  DeviceBuffer<float> d_ws(std::max<int64_t>(1, S * Hq * p.max_splits * (D + 2)));
  d_ws.poison();
  p.workspace = d_ws.ptr;
  REQUIRE(decode_attention(p, nullptr).is_ok());
  const auto out = d_out.download();
  for (int64_t s = 0; s < S; ++s) {
    const int64_t len = c.seq_lens[s];
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kv = h / c.group;
      std::vector<double> logits(len);
      double big = -1e300;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t slot = static_cast<int64_t>(tables[s * max_pages + i / P]) * P + i % P;
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += to_float(q[(s * Hq + h) * D + d]) * to_float(kc[(slot * Hkv + kv) * D + d]);
        logits[i] = dot * p.scale;
        big = std::max(big, logits[i]);
      }
      std::vector<double> want(D, 0.0);
      double den = 0;
      for (int64_t i = 0; i < len; ++i) {
        const int64_t slot = static_cast<int64_t>(tables[s * max_pages + i / P]) * P + i % P;
        const double w = std::exp(logits[i] - big);
        den += w;
        for (int64_t d = 0; d < D; ++d) want[d] += w * to_float(vc[(slot * Hkv + kv) * D + d]);
      }
      for (int64_t d = 0; d < D; ++d) {
        want[d] /= den;
        const double got = to_float(out[(s * Hq + h) * D + d]);
        INFO("seq " << s << " (len " << len << ") head " << h << " dim " << d << " want " << want[d] << " got " << got);
        REQUIRE(std::isfinite(got));
        REQUIRE(std::abs(got - want[d]) <= 0.008 * std::abs(want[d]) + 2e-3);
      }
    }
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
  const int64_t Hkv = 3, group = 3, Hq = Hkv * group, D = 64, P = 16;
  // Two sequences: 40 cached tokens + a chunk of 25, and no prefix + a chunk of 18.
  const std::vector<int64_t> prefix = {40, 0}, chunk = {25, 18};
  const int64_t max_pages = 8;
  std::vector<int32_t> tables(2 * max_pages);
  std::iota(tables.begin(), tables.end(), 0);
  std::shuffle(tables.begin(), tables.end(), rng);
  std::vector<int32_t> lens, rows;
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t i = 0; i < chunk[s]; ++i) {
      lens.push_back(static_cast<int32_t>(prefix[s] + i + 1));
      rows.push_back(static_cast<int32_t>(s));
    }
  }
  const int64_t R = static_cast<int64_t>(lens.size());
  const auto q = random_bf16(R * Hq * D, rng);
  const auto kc = random_bf16(2 * max_pages * P * Hkv * D, rng);
  const auto vc = random_bf16(2 * max_pages * P * Hkv * D, rng);
  DeviceBuffer<Bf16> d_q(q), d_k(kc), d_v(vc), d_out(R * Hq * D);
  DeviceBuffer<int32_t> d_tables(tables), d_lens(lens), d_rows(rows);
  d_out.poison();
  DecodeAttentionParams p;
  p.q = d_q.ptr;
  p.k_cache = d_k.ptr;
  p.v_cache = d_v.ptr;
  p.block_tables = d_tables.ptr;
  p.seq_lens = d_lens.ptr;
  p.table_rows = d_rows.ptr;
  p.out = d_out.ptr;
  p.num_seqs = R;
  p.num_q_heads = Hq;
  p.num_kv_heads = Hkv;
  p.head_dim = D;
  p.page_size = P;
  p.max_pages_per_seq = max_pages;
  p.scale = 0.125f;
  REQUIRE(decode_attention(p, nullptr).is_ok());
  const auto out = d_out.download();
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t kv = h / group;
      std::vector<double> w(lens[r]);
      double big = -1e300, den = 0;
      auto slot = [&](int64_t i) { return static_cast<int64_t>(tables[rows[r] * max_pages + i / P]) * P + i % P; };
      for (int64_t i = 0; i < lens[r]; ++i) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += to_float(q[(r * Hq + h) * D + d]) * to_float(kc[(slot(i) * Hkv + kv) * D + d]);
        w[i] = dot * p.scale;
        big = std::max(big, w[i]);
      }
      for (auto& x : w) den += (x = std::exp(x - big));
      for (int64_t d = 0; d < D; ++d) {
        double want = 0;
        for (int64_t i = 0; i < lens[r]; ++i) want += w[i] * to_float(vc[(slot(i) * Hkv + kv) * D + d]);
        want /= den;
        INFO("row " << r << " head " << h << " dim " << d);
        REQUIRE(std::abs(to_float(out[(r * Hq + h) * D + d]) - want) <= 0.008 * std::abs(want) + 2e-3);
      }
    }
  }
}
