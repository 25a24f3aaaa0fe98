// Batch invariance of the engine: a request's greedy tokens (and its logits, bit for bit)
// are the same alone, in a batch of 16 sequences mixing prefill chunks and decodes, with
// page size 1 and 16, and with its prompt split into prefill chunks.
#include <cstring>

#include "engine_fixtures.h"
#include "worker/engine/offline_runner.h"

using namespace tessera;
using namespace tessera::engine;

namespace {

constexpr uint32_t kNewTokens = 16;

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> first_logits;
  OfflineRunStats stats;
};

// Runs `batch` and returns the outcome of request `which`.
Outcome run(int64_t page_size, const std::vector<GenerationRequest>& batch, size_t which, OfflineRunnerOptions ro) {
  EngineOptions o;
  o.page_size = page_size;
  o.max_batch_tokens = 512;
  o.max_sequences = 16;
  o.kv_cache_tokens = 16 * 512;
  auto engine = testing::load_test_model(o);
  ro.keep_first_logits = true;
  OfflineRunner runner(*engine, ro);
  auto results = runner.run(batch);
  REQUIRE(results.is_ok());
  const auto& r = (*results)[which];
  REQUIRE(r.error.is_ok());
  REQUIRE(r.tokens.size() == kNewTokens);
  return {r.tokens, r.first_logits, runner.stats()};
}

GenerationRequest greedy(const std::vector<int32_t>& prompt) {
  GenerationRequest r;
  r.prompt = prompt;
  r.sampling.temperature = 0;
  r.max_tokens = kNewTokens;
  r.ignore_eos = true;
  return r;
}

void require_same(const Outcome& a, const Outcome& b) {
  REQUIRE(a.tokens == b.tokens);
  REQUIRE(a.first_logits.size() == b.first_logits.size());
  REQUIRE(std::memcmp(a.first_logits.data(), b.first_logits.data(), a.first_logits.size() * sizeof(float)) == 0);
}

// The test model with a 256-token KV pool.
auto small_engine() {
  EngineOptions o;
  o.kv_cache_tokens = 256;
  return testing::load_test_model(o);
}

SamplingOptions greedy_sampling() {
  SamplingOptions g;
  g.temperature = 0;
  return g;
}

Result<StepOutput> step_of(Engine& engine, std::vector<NewSequence> news, std::vector<ScheduledSlice> slices) {
  StepInput in;
  in.new_sequences = std::move(news);
  in.scheduled = std::move(slices);
  return engine.step(in);
}

}  // namespace

TEST_CASE("a request's greedy output does not depend on batch, page size or prefill chunks", "[engine][batch]") {
  const auto prompts = testing::load_reference_prompts();
  // The request under test: a 319-token prompt (crosses many pages of 16).
  const auto& subject = prompts[17];
  REQUIRE(subject.token_ids.size() > 256);
  const std::vector<GenerationRequest> alone{greedy(subject.token_ids)};
  // Catch runs the test case once per section; the baseline is computed once.
  static const Outcome base = run(16, alone, 0, {});

  SECTION("page size 1") { require_same(base, run(1, alone, 0, {})); }
  SECTION("prompt split into prefill chunks of 37 tokens") {
    const Outcome chunked = run(16, alone, 0, {.prefill_chunk_tokens = 37});
    REQUIRE(chunked.stats.num_steps > kNewTokens);  // the prompt really took several steps
    require_same(base, chunked);
  }
  // 16 sequences with prompts of 1..423 tokens; a 96-token step budget forces prefill
  // chunks of some sequences into the same steps as decodes of others.
  std::vector<GenerationRequest> batch;
  for (size_t i = 0; i < 16; ++i) batch.push_back(greedy(prompts[(i * 7) % prompts.size()].token_ids));
  batch[9] = greedy(subject.token_ids);
  for (int64_t page_size : {16, 1}) {
    SECTION("in a batch of 16 mixed prefill/decode sequences, page size " + std::to_string(page_size)) {
      const Outcome mixed = run(page_size, batch, 9, {.max_batch_tokens = 96, .prefill_chunk_tokens = 64});
      REQUIRE(mixed.stats.max_running == 16);
      REQUIRE(mixed.stats.num_mixed_steps > 0);
      require_same(base, mixed);
    }
  }
}

TEST_CASE("a bad step plan is refused whole and leaves the engine usable", "[engine][errors]") {
  auto loaded = small_engine();
  Engine& engine = *loaded;
  const SamplingOptions g = greedy_sampling();
  // A token id outside the vocabulary.
  auto r = step_of(engine, {{1, {1, 2, 999999}, 3, g, {}, 0}}, {{1, 0, 3, {0}, true}});
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  REQUIRE(engine.num_sequences() == 0);
  // Pages that cannot hold the slice, and a page outside the cache.
  r = step_of(engine, {{1, {1, 2, 3}, 3, g, {}, 0}}, {{1, 0, 3, {}, true}});
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  r = step_of(engine, {{1, {1, 2, 3}, 3, g, {}, 0}}, {{1, 0, 3, {4096}, true}});
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  // A start position that disagrees with the cache.
  r = step_of(engine, {{1, {1, 2, 3}, 3, g, {}, 0}}, {{1, 1, 2, {0}, true}});
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  REQUIRE(engine.num_sequences() == 0);
  // The engine still runs a good plan afterwards.
  r = step_of(engine, {{1, {1, 2, 3}, 3, g, {}, 0}}, {{1, 0, 3, {0}, true}});
  REQUIRE(r.is_ok());
  REQUIRE(r->sampled.size() == 1);
  // Scheduling an unknown sequence fails; the known one is untouched and decodes on.
  r = step_of(engine, {}, {{7, 0, 1, {}, true}});
  REQUIRE(r.status().code() == StatusCode::kInvalidArgument);
  r = step_of(engine, {}, {{1, 3, 1, {}, true}});
  REQUIRE(r.is_ok());
}

TEST_CASE("a failed sample fails its sequence alone, also in a plan sent before the router heard", "[engine][errors]") {
  // The router plans step N+1 before step N's result (router.pipeline_depth 2): N+1 may
  // decode a token of a sequence whose sample in N failed. That slice is skipped and its
  // sample fails again; the rest of the plan runs.
  auto loaded = small_engine();
  Engine& engine = *loaded;
  const SamplingOptions greedy = greedy_sampling();
  SamplingOptions impossible = greedy;  // every token is banned before min_tokens: no usable logit
  impossible.min_tokens = 4;
  for (uint32_t t = 0; t < engine.config().vocab_size; ++t) impossible.banned_before_min_tokens.push_back(static_cast<int32_t>(t));
  auto require_1_sampled_2_failed = [](const Result<StepOutput>& r) {
    REQUIRE(r.is_ok());
    REQUIRE(r->sampled.size() == 2);
    REQUIRE(r->sampled[0].seq_id == 1);
    REQUIRE(r->sampled[0].status.is_ok());
    REQUIRE(r->sampled[1].seq_id == 2);
    REQUIRE_FALSE(r->sampled[1].status.is_ok());
  };
  auto r = step_of(engine, {{1, {1, 2, 3}, 3, greedy, {}, 0}, {2, {4, 5, 6}, 3, impossible, {}, 0}},
                     {{1, 0, 3, {0}, true}, {2, 0, 3, {1}, true}});
  require_1_sampled_2_failed(r);
  const int32_t first = r->sampled[0].sample.token_id;
  // The plan sent ahead: both decode the token their step-1 sample was to give.
  r = step_of(engine, {}, {{1, 3, 1, {}, true}, {2, 3, 1, {}, true}});
  require_1_sampled_2_failed(r);
  // Sequence 1 went on as if sequence 2 had never been there.
  auto alone = small_engine();
  auto a = step_of(*alone, {{1, {1, 2, 3}, 3, greedy, {}, 0}}, {{1, 0, 3, {0}, true}});
  REQUIRE(a.is_ok());
  REQUIRE(a->sampled[0].sample.token_id == first);
  a = step_of(*alone, {}, {{1, 3, 1, {}, true}});
  REQUIRE(a.is_ok());
  REQUIRE(a->sampled[0].sample.token_id == r->sampled[0].sample.token_id);
  // Released, the failed sequence is gone.
  StepInput release;
  release.released_seq_ids = {2};
  REQUIRE(engine.step(release).is_ok());
  REQUIRE(engine.num_sequences() == 1);
}

TEST_CASE("the offline runner fails a bad request alone and finishes the others", "[engine][errors]") {
  EngineOptions o;
  o.kv_cache_tokens = 1024;
  auto loaded = testing::load_test_model(o);
  std::vector<GenerationRequest> reqs(4, greedy({1, 504, 3575, 282}));
  reqs[1].prompt = {1, 2, 60000};       // outside the vocabulary
  reqs[2].sampling.top_p = 0.0f;        // invalid sampling option
  reqs[3].max_tokens = 5000;            // more KV than the cache holds
  OfflineRunner runner(*loaded, {});
  auto results = runner.run(reqs);
  REQUIRE(results.is_ok());
  REQUIRE((*results)[0].finish == GenerationFinish::kLength);
  REQUIRE((*results)[0].tokens.size() == kNewTokens);
  for (size_t i = 1; i < 4; ++i) {
    INFO("request " << i << ": " << (*results)[i].error.message());
    REQUIRE((*results)[i].finish == GenerationFinish::kError);
    REQUIRE(!(*results)[i].error.is_ok());
  }
  REQUIRE(loaded->num_sequences() == 0);  // everything released
}

TEST_CASE("a seeded sampled request gives the same tokens alone and in a batch", "[engine][batch]") {
  const auto prompts = testing::load_reference_prompts();
  auto sampled = [](const std::vector<int32_t>& prompt, uint64_t seed) {
    GenerationRequest r = greedy(prompt);
    r.sampling.temperature = 0.9f;
    r.sampling.top_p = 0.95f;
    r.sampling.top_k = 50;
    r.sampling.seed = seed;
    r.sampling.logprobs = true;
    r.sampling.num_top_logprobs = 2;
    return r;
  };
  const std::vector<GenerationRequest> alone{sampled(prompts[5].token_ids, 1234)};
  std::vector<GenerationRequest> batch;
  for (size_t i = 0; i < 8; ++i) batch.push_back(sampled(prompts[(i * 3) % prompts.size()].token_ids, 99 + i));
  batch[4] = alone[0];
  const Outcome a = run(16, alone, 0, {});
  const Outcome b = run(1, batch, 4, {.max_batch_tokens = 64, .prefill_chunk_tokens = 16});
  REQUIRE(a.tokens == b.tokens);
  // Another seed gives another continuation (the sampler really samples).
  const Outcome c = run(16, {sampled(prompts[5].token_ids, 4321)}, 0, {});
  REQUIRE(c.tokens != a.tokens);
}

TEST_CASE("a sequence reusing another's cached prefix pages gets the same logits", "[engine][prefix]") {
  const auto prompts = testing::load_reference_prompts();
  const std::vector<int32_t>& prompt = prompts[16].token_ids;  // 170 tokens
  REQUIRE(prompt.size() > 64);
  EngineOptions o;
  o.page_size = 16;
  o.kv_cache_tokens = 1024;
  auto loaded = testing::load_test_model(o);
  Engine& engine = *loaded;
  SamplingOptions g;
  g.temperature = 0;
  const auto n = static_cast<uint32_t>(prompt.size());
  const int64_t num_pages = (n + 15) / 16;
  std::vector<int32_t> pages_a, pages_b;
  for (int64_t i = 0; i < num_pages; ++i) {
    pages_a.push_back(static_cast<int32_t>(i));
    pages_b.push_back(static_cast<int32_t>(num_pages + i));
  }
  // Sequence 1 computes the whole prompt.
  StepInput a;
  a.new_sequences.push_back({1, prompt, n, g, {}, 0});
  a.scheduled.push_back({1, 0, n, pages_a, true});
  a.return_logits = true;
  auto out_a = engine.step(a);
  REQUIRE(out_a.is_ok());

  // Sequence 2 has the same prompt; its first 4 pages (64 tokens) are sequence 1's, and the
  // 5th, partly filled by the shared prefix, is copied first (copy-on-write) — then only
  // the rest is computed.
  const uint32_t cached = 64;
  StepInput b;
  b.new_sequences.push_back({2, prompt, n, g, {pages_a.begin(), pages_a.begin() + 4}, cached});
  b.scheduled.push_back({2, cached, n - cached, {pages_b.begin() + 4, pages_b.end()}, true});
  b.page_copies.push_back({pages_a[4], pages_b[4]});
  b.return_logits = true;
  auto out_b = engine.step(b);
  REQUIRE(out_b.is_ok());
  REQUIRE(out_b->sampled[0].sample.token_id == out_a->sampled[0].sample.token_id);
  REQUIRE(std::memcmp(out_a->logits.data(), out_b->logits.data(), out_a->logits.size() * sizeof(float)) == 0);
}
