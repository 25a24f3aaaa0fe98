// `tessera generate --benchmark`: the engine's throughput on the workload of
// scripts/bench/cpu-engine, printed as one JSON object (the script runs llama.cpp on the
// same workload and prints the comparison).
//   prefill: one sequence of --prompt-tokens ids in one step (median of --repeats runs)
//   decode:  C sequences with --decode-prompt-tokens each (prefilled, not timed), then
//            --decode-tokens steps of C tokens, greedy, EOS ignored
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/generate_options.h"
#include "tessera/common/cli.h"
#include "tessera/common/version.h"

namespace tessera::launcher {

// The benchmark's token ids (shared with scripts/bench/cpu_engine_llamacpp.py): skips the
// first 17 ids, which are special tokens in the test model.
int32_t workload_token(int64_t seq, int64_t i, int64_t vocab) {
  return static_cast<int32_t>(17 + (7919 * (i + 1) + 104729 * seq) % (vocab - 17));
}

std::vector<int32_t> workload_prompt(int64_t seq, int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = workload_token(seq, i, vocab);
  return ids;
}

namespace {

// Prefix of this command's error messages.
constexpr const char* kWho = "tessera generate --benchmark";

using Clock = std::chrono::steady_clock;

// Pages for `tokens` tokens, taken from a counter (each phase starts from an empty cache).
std::vector<int32_t> take_pages(int32_t* next, int64_t tokens, int64_t page_size) {
  std::vector<int32_t> pages;
  for (int64_t i = 0; i < (tokens + page_size - 1) / page_size; ++i) pages.push_back((*next)++);
  return pages;
}

// The physical limit of single-stream decode: how fast this process's threads can stream
// memory (best of 3 passes over 512 MiB, far larger than any cache). Integer sums so the
// loop vectorizes without reassociating floats.
double memory_read_gb_per_s() {
  const size_t n = (size_t{512} << 20) / sizeof(uint64_t);
  std::vector<uint64_t> buffer(n, 1);
  double best = 0;
  for (int pass = 0; pass < 3; ++pass) {
    uint64_t total = 0;
    const auto t0 = Clock::now();
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (size_t i = 0; i < n; ++i) total += buffer[i];
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (total != n) return 0;  // keeps the sum alive
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s / 1e9);
  }
  return best;
}

}  // namespace

int run_generate_benchmark(const GenerateOptions& o, const engine::ModelSource& source) {
  const int64_t max_c = *std::max_element(o.bench_concurrency.begin(), o.bench_concurrency.end());
  if (o.bench_prompt_tokens < 1 || o.bench_decode_tokens < 1 || o.bench_decode_prompt_tokens < 1 || max_c < 1 ||
      o.bench_repeats < 1) {
    return cli::fail(kWho, invalid_argument("token counts, concurrency and repeats must be positive"));
  }
  engine::EngineOptions eo = o.engine;
  eo.max_batch_tokens = std::max({o.bench_prompt_tokens, max_c, o.bench_decode_prompt_tokens});
  eo.max_sequences = max_c;
  const int64_t ps = eo.page_size;
  const int64_t per_seq = o.bench_decode_prompt_tokens + o.bench_decode_tokens;
  eo.kv_cache_tokens = std::max(o.bench_prompt_tokens + ps, max_c * ((per_seq + ps - 1) / ps + 1) * ps);
  auto loaded = engine::Engine::load(source, eo);
  if (!loaded) return cli::fail(kWho, loaded.status());
  engine::Engine& engine = **loaded;
  const int64_t vocab = engine.config().vocab_size;
  engine::SamplingOptions greedy;
  greedy.temperature = 0;
  uint64_t next_id = 1;

  // ---- prefill ----
  std::vector<double> prefill_s;
  for (int run = 0; run <= o.bench_repeats; ++run) {  // run 0 warms up
    int32_t next_page = 0;
    engine::StepInput in;
    const uint64_t id = next_id++;
    in.new_sequences.push_back({id, workload_prompt(0, o.bench_prompt_tokens, vocab),
                                static_cast<uint32_t>(o.bench_prompt_tokens), greedy, {}, 0});
    in.scheduled.push_back({id, 0, static_cast<uint32_t>(o.bench_prompt_tokens),
                            take_pages(&next_page, o.bench_prompt_tokens + 1, ps), true});
    const auto t0 = Clock::now();
    auto out = engine.step(in);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!out) return cli::fail(kWho, out.status());
    if (run > 0) prefill_s.push_back(s);
    engine::StepInput release;
    release.released_seq_ids.push_back(id);
    if (auto r = engine.step(release); !r) return cli::fail(kWho, r.status());
  }
  std::sort(prefill_s.begin(), prefill_s.end());
  const double prefill_median = prefill_s[prefill_s.size() / 2];

  // ---- decode at each concurrency ----
  nlohmann::json decode = nlohmann::json::array();
  for (int64_t c : o.bench_concurrency) {
    int32_t next_page = 0;
    std::vector<uint64_t> ids;
    engine::StepInput setup;
    for (int64_t s = 0; s < c; ++s) {
      const uint64_t id = next_id++;
      ids.push_back(id);
      setup.new_sequences.push_back({id, workload_prompt(s, o.bench_decode_prompt_tokens, vocab),
                                     static_cast<uint32_t>(o.bench_decode_prompt_tokens), greedy, {}, 0});
    }
    if (auto r = engine.step(setup); !r) return cli::fail(kWho, r.status());
    // Prefill the prompts, as many per step as the budget holds (not timed).
    for (int64_t s = 0; s < c;) {
      engine::StepInput in;
      int64_t used = 0;
      for (; s < c && used + o.bench_decode_prompt_tokens <= eo.max_batch_tokens; ++s) {
        in.scheduled.push_back({ids[static_cast<size_t>(s)], 0, static_cast<uint32_t>(o.bench_decode_prompt_tokens),
                                take_pages(&next_page, per_seq, ps), true});
        used += o.bench_decode_prompt_tokens;
      }
      if (auto r = engine.step(in); !r) return cli::fail(kWho, r.status());
    }
    const auto t0 = Clock::now();
    for (int64_t step = 0; step < o.bench_decode_tokens; ++step) {
      engine::StepInput in;
      for (int64_t s = 0; s < c; ++s) {
        in.scheduled.push_back({ids[static_cast<size_t>(s)],
                                static_cast<uint32_t>(o.bench_decode_prompt_tokens + step), 1, {}, true});
      }
      auto out = engine.step(in);
      if (!out) return cli::fail(kWho, out.status());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    engine::StepInput release;
    release.released_seq_ids = ids;
    if (auto r = engine.step(release); !r) return cli::fail(kWho, r.status());
    const int64_t tokens = c * o.bench_decode_tokens;
    decode.push_back({{"concurrency", c}, {"num_tokens", tokens}, {"seconds", secs},
                      {"tokens_per_second", static_cast<double>(tokens) / secs}});
  }

  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  nlohmann::json j;
  j["engine"] = "tessera";
  j["version"] = std::string(version()) + " (" + std::string(git_describe()) + ")";
  j["backend"] = engine.backend_name();
  j["threads"] = engine.num_threads();
  j["page_size"] = ps;
  j["weight_bytes"] = engine.weight_bytes();
  j["kv_cache_bytes"] = engine.kv_cache_bytes();
  j["prefill"] = {{"num_tokens", o.bench_prompt_tokens},
                  {"seconds", prefill_median},
                  {"tokens_per_second", static_cast<double>(o.bench_prompt_tokens) / prefill_median}};
  j["decode"] = decode;
  j["peak_rss_bytes"] = static_cast<int64_t>(usage.ru_maxrss) * 1024;
  // Measured after the peak RSS was read: its buffer is not the engine's memory.
  j["memory_read_gb_per_s"] = memory_read_gb_per_s();
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace tessera::launcher
