// kernels/cuda/layer_ops against float64 CPU references on fresh random inputs of several
// shapes: embedding gather, RMSNorm with and without the fused residual add, SiLU·mul, and
// rotary embedding fused with the paged KV-cache write (page size 1 and 16, GQA ratios 1, 4
// and 8, head_dim 64 and 128, positions up to 8k, both pair layouts). Outputs are poisoned
// (bf16 NaN) before each run, so an element a kernel forgets to write fails; cache slots
// no token maps to must stay poisoned, so a stray write fails too.
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/layer_ops.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;


TEST_CASE("embedding gathers whole rows for every token", "[cuda][layer_ops]") {
  std::mt19937 rng(1);
  for (int64_t width : {576, 4096, 10}) {
    for (int64_t num_tokens : {1, 37}) {
      const int64_t vocab = 1000;
      const auto table = random_bf16(vocab * width, rng);
      std::vector<int32_t> ids(num_tokens);
      for (auto& id : ids) id = static_cast<int32_t>(rng() % vocab);
      DeviceBuffer<Bf16> d_table(table);
      DeviceBuffer<int32_t> d_ids(ids);
      DeviceBuffer<Bf16> d_out(num_tokens * width);
      d_out.poison();
      REQUIRE(embedding({d_table.ptr, d_ids.ptr, d_out.ptr, num_tokens, width}, nullptr).is_ok());
      const auto out = d_out.download();
      for (int64_t t = 0; t < num_tokens; ++t) {
        INFO("width " << width << " token " << t);
        REQUIRE(std::memcmp(&out[t * width], &table[ids[t] * width], width * sizeof(Bf16)) == 0);
      }
    }
  }
}

TEST_CASE("rms_norm with and without the fused residual add matches HF's bf16 order", "[cuda][layer_ops]") {
  std::mt19937 rng(2);
  for (int64_t width : {64, 576, 4096, 4099}) {  // 4099: the scalar path
    for (int64_t rows : {1, 7, 300}) {
      for (bool with_residual : {false, true}) {
        INFO("width " << width << " rows " << rows << " residual " << with_residual);
        const float eps = 1e-5f;
        const auto x = random_bf16(rows * width, rng, 3.0f);
        const auto r = random_bf16(rows * width, rng, 2.0f);
        const auto w = random_bf16(width, rng, 0.5f);
        DeviceBuffer<Bf16> d_x(x), d_r(r), d_w(w), d_out(rows * width);
        d_out.poison();
        REQUIRE(rms_norm({d_x.ptr, with_residual ? d_r.ptr : nullptr, d_w.ptr, d_out.ptr, rows, width, eps}, nullptr).is_ok());
        const auto out = d_out.download();
        const auto res = d_r.download();
        for (int64_t row = 0; row < rows; ++row) {
          std::vector<double> s(width);
          double sum_sq = 0;
          for (int64_t i = 0; i < width; ++i) {
            const size_t k = row * width + i;
            s[i] = with_residual ? round_bf16(static_cast<double>(to_float(x[k]) + to_float(r[k]))) : to_float(x[k]);
            sum_sq += s[i] * s[i];
            if (with_residual) REQUIRE(res[k] == to_bf16(static_cast<float>(s[i])));
          }
          const double inv = 1.0 / std::sqrt(sum_sq / width + eps);
          for (int64_t i = 0; i < width; ++i) {
            const double normed = round_bf16(s[i] * inv);
            const double want = normed * to_float(w[i]);
            REQUIRE(close(out[row * width + i], want, std::abs(s[i] * inv * to_float(w[i]))));
          }
        }
        if (!with_residual) REQUIRE(res == r);  // untouched without a residual
      }
    }
  }
}

TEST_CASE("rms_norm may write its output over its input", "[cuda][layer_ops]") {
  std::mt19937 rng(3);
  const int64_t rows = 5, width = 1024;
  const auto x = random_bf16(rows * width, rng);
  const auto w = random_bf16(width, rng);
  DeviceBuffer<Bf16> d_x(x), d_w(w), d_out(rows * width);
  REQUIRE(rms_norm({d_x.ptr, nullptr, d_w.ptr, d_out.ptr, rows, width, 1e-6f}, nullptr).is_ok());
  REQUIRE(rms_norm({d_x.ptr, nullptr, d_w.ptr, d_x.ptr, rows, width, 1e-6f}, nullptr).is_ok());
  CHECK(d_x.download() == d_out.download());
}

TEST_CASE("silu_mul of the merged gate and up projections", "[cuda][layer_ops]") {
  std::mt19937 rng(4);
  for (int64_t width : {64, 100, 1536, 14336}) {  // 100: the scalar path
    for (int64_t rows : {1, 33}) {
      INFO("width " << width << " rows " << rows);
      const auto gu = random_bf16(rows * 2 * width, rng, 2.5f);
      DeviceBuffer<Bf16> d_gu(gu), d_out(rows * width);
      d_out.poison();
      REQUIRE(silu_mul({d_gu.ptr, d_out.ptr, rows, width}, nullptr).is_ok());
      const auto out = d_out.download();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          const double g = to_float(gu[r * 2 * width + c]);
          const double u = to_float(gu[r * 2 * width + width + c]);
          const double act = g / (1.0 + std::exp(-g));
          REQUIRE(close(out[r * width + c], round_bf16(act) * u, std::abs(act * u)));
        }
      }
    }
  }
}

TEST_CASE("rope rotates q in place and writes rotated k and v into their cache slots", "[cuda][layer_ops]") {
  std::mt19937 rng(5);
  struct Shape {
    int64_t num_kv_heads, group, head_dim, page_size, num_tokens;
  };
  const Shape shapes[] = {{8, 1, 64, 16, 5}, {2, 4, 128, 1, 300}, {1, 8, 128, 16, 1}, {4, 8, 64, 1, 33}, {8, 4, 128, 16, 129}};
  for (const Shape& sh : shapes) {
    for (RopeStyle style : {RopeStyle::kHalf, RopeStyle::kInterleaved}) {
      const int64_t D = sh.head_dim, Hkv = sh.num_kv_heads, Hq = Hkv * sh.group, T = sh.num_tokens;
      INFO("Hq " << Hq << " Hkv " << Hkv << " D " << D << " page " << sh.page_size << " T " << T << " half "
                 << (style == RopeStyle::kHalf));
      const int64_t num_pages = (T + sh.page_size - 1) / sh.page_size + 3;
      const int64_t num_slots = num_pages * sh.page_size;
      // q, k and v as slices of one fused qkv row, with 8 elements of padding after them.
      const int64_t stride = (Hq + 2 * Hkv) * D + 8;
      const auto qkv = random_bf16(T * stride, rng);
      std::vector<int32_t> positions(T);
      for (auto& p : positions) p = static_cast<int32_t>(rng() % 8192);
      std::vector<int64_t> all(num_slots);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      const std::vector<int64_t> slots(all.begin(), all.begin() + T);
      std::vector<float> inv_freq(D / 2);
      for (int64_t i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / D));
      inv_freq[D / 2 - 1] /= 8.0f;  // a scaled low frequency, as llama3 scaling makes them
      DeviceBuffer<Bf16> d_qkv(qkv), d_kc(num_slots * Hkv * D), d_vc(num_slots * Hkv * D);
      DeviceBuffer<int32_t> d_pos(positions);
      DeviceBuffer<int64_t> d_slots(slots);
      DeviceBuffer<float> d_freq(inv_freq);
      d_kc.poison();
      d_vc.poison();
      RopeKvParams p;
      p.q = d_qkv.ptr;
      p.k = d_qkv.ptr + Hq * D;
      p.v = d_qkv.ptr + (Hq + Hkv) * D;
      p.q_stride = p.k_stride = p.v_stride = stride;
      p.positions = d_pos.ptr;
      p.slots = d_slots.ptr;
      p.inv_freq = d_freq.ptr;
      p.k_cache = d_kc.ptr;
      p.v_cache = d_vc.ptr;
      p.num_tokens = T;
      p.num_q_heads = Hq;
      p.num_kv_heads = Hkv;
      p.head_dim = D;
      p.style = style;
      REQUIRE(rope_and_cache_kv(p, nullptr).is_ok());
      const auto q_out = d_qkv.download();
      const auto kc = d_kc.download();
      const auto vc = d_vc.download();
      // The reference rotation of one head (src) compared with got.
      auto check_head = [&](const Bf16* src, const Bf16* got, int32_t pos) {
        for (int64_t j = 0; j < D / 2; ++j) {
          const int64_t ia = style == RopeStyle::kHalf ? j : 2 * j;
          const int64_t ib = style == RopeStyle::kHalf ? j + D / 2 : 2 * j + 1;
          const double angle = static_cast<double>(pos) * inv_freq[j];
          const double a = to_float(src[ia]), b = to_float(src[ib]);
          const double norm = std::hypot(a, b);
          REQUIRE(close(got[ia], a * std::cos(angle) - b * std::sin(angle), norm));
          REQUIRE(close(got[ib], b * std::cos(angle) + a * std::sin(angle), norm));
        }
      };
      for (int64_t t = 0; t < T; ++t) {
        const Bf16* row = &qkv[t * stride];
        for (int64_t h = 0; h < Hq; ++h) check_head(row + h * D, &q_out[t * stride + h * D], positions[t]);
        for (int64_t h = 0; h < Hkv; ++h) {
          check_head(row + (Hq + h) * D, &kc[(slots[t] * Hkv + h) * D], positions[t]);
          REQUIRE(std::memcmp(&vc[(slots[t] * Hkv + h) * D], row + (Hq + Hkv + h) * D, D * sizeof(Bf16)) == 0);
        }
        // k, v and the padding of the qkv row are left as they were.
        REQUIRE(std::memcmp(&q_out[t * stride + Hq * D], row + Hq * D, (2 * Hkv * D + 8) * sizeof(Bf16)) == 0);
      }
      std::vector<bool> used(num_slots, false);
      for (int64_t s : slots) used[s] = true;
      for (int64_t s = 0; s < num_slots; ++s) {
        if (used[s]) continue;
        for (int64_t i = 0; i < Hkv * D; ++i) {
          REQUIRE(kc[s * Hkv * D + i] == kPoison);
          REQUIRE(vc[s * Hkv * D + i] == kPoison);
        }
      }
    }
  }
}

TEST_CASE("layer ops refuse bad shapes before launching", "[cuda][layer_ops]") {
  CHECK(rms_norm({nullptr, nullptr, nullptr, nullptr, 1, 0, 1e-5f}, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  CHECK(silu_mul({nullptr, nullptr, 2, 8}, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  RopeKvParams odd;
  odd.num_tokens = 1;
  odd.num_kv_heads = 1;
  odd.head_dim = 63;
  CHECK(rope_and_cache_kv(odd, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  CHECK(embedding({nullptr, nullptr, nullptr, 0, 16}, nullptr).is_ok());  // nothing to do
}
