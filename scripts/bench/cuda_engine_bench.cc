// The engine on the CUDA backend against the GPU's limits, measured in the same run:
// decode steps (batch B, every sequence at a context of C tokens) against the time to
// read the weights and the KV once at the device's copy rate (a cudaMemcpy's bytes read +
// written per second: what the memory system moves), and prefill (one sequence of
// P tokens in one step) against the device's bf16 GEMM rate on a large square GEMM.
// Prints a Markdown table.
//
//   tessera-bench-cuda-engine --model PATH [--load-format auto|gguf|dummy] [--batches 1,8,32]
//       [--contexts 128,1024] [--steps 32] [--prefill 512,2048] [--no-graphs]
//       [--temperature T --top-p P] [--mixed-chunk P]
//       [--gpu-memory-utilization 0.9] [--profile-prefill] [--profile-decode]
//
// PATH: a GGUF file, a Hugging Face directory, or (with --load-format dummy) a config.json
// or its directory filled with seeded random bf16 weights. Decode contexts are made with
// the prefix-cache path (the first C-1 tokens' KV counts as cached, zeros), so only the
// decode steps run; greedy sampling on the device, as a served greedy request does (with
// --temperature, decode rows are sampled on the device with that temperature and top-p).
// --mixed-chunk P: after each decode point, the same decodes with a new sequence's
// P-token prefill chunk in every step (a served step under load: no CUDA graph there).
// --profile-prefill: the second run of each prefill size between cudaProfilerStart/Stop,
// for `ncu --profile-from-start off` (per-kernel times of one prefill step).
// --profile-decode: likewise the first timed decode step of each batch and context (and
// of its mixed steps).
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/gemm.h"
#include "worker/engine/engine.h"

using namespace tessera;
using namespace tessera::engine;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "cuda-engine bench: %s\n", what.c_str());
  std::exit(1);
}
void check(const Status& s, const char* what) {
  if (!s.is_ok()) die(std::string(what) + ": " + s.to_string());
}

std::vector<int64_t> parse_list(const char* text) {
  std::vector<int64_t> out;
  for (const char* p = text; *p;) {
    out.push_back(std::strtoll(p, const_cast<char**>(&p), 10));
    if (*p == ',') ++p;
    else if (*p) die(std::string("bad list: ") + text);
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Device-to-device copy rate (bytes read + written per second) of a 1 GiB cudaMemcpy.
// The fastest of `runs` timed calls of f (CUDA events), after `warm` untimed ones.
template <typename F>
double best_ms(int warm, int runs, F f) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < warm; ++i) f();
  float best = 1e30f;
  for (int i = 0; i < runs; ++i) {
    cudaEventRecord(start);
    f();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    best = std::min(best, ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return best;
}

double copy_rate() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) die("cudaMalloc for the copy rate");
  const double best = best_ms(1, 5, [&] { cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * static_cast<double>(bytes) / (best * 1e-3);
}

// bf16 GEMM rate (FLOP/s) of cuBLASLt on an 8192³ problem.
double gemm_rate() {
  const int64_t n = 8192;
  auto gemm = kernels::cuda::Gemm::create();
  if (!gemm) die(gemm.status().to_string());
  uint16_t *a = nullptr, *w = nullptr, *c = nullptr;
  cudaMalloc(&a, n * n * 2);
  cudaMalloc(&w, n * n * 2);
  cudaMalloc(&c, n * n * 2);
  std::vector<uint16_t> host(static_cast<size_t>(n * n));
  std::mt19937 rng(7);
  for (auto& x : host) x = static_cast<uint16_t>(0x3c00 + (rng() & 0xff));  // bf16 around 0.008..0.016
  cudaMemcpy(a, host.data(), n * n * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(w, host.data(), n * n * 2, cudaMemcpyHostToDevice);
  const double best = best_ms(2, 6, [&] { check((*gemm)->run({a, w, c, n, n, n}, nullptr), "square gemm"); });
  cudaFree(a);
  cudaFree(w);
  cudaFree(c);
  return 2.0 * static_cast<double>(n) * n * n / (best * 1e-3);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model;
  LoadFormat format = LoadFormat::kAuto;
  std::vector<int64_t> batches{1, 8, 32, 128, 256};
  std::vector<int64_t> prefills{512, 2048, 8192};
  std::vector<int64_t> contexts{1024};
  int64_t steps = 32;
  bool profile_prefill = false;  // the second run of each prefill between cudaProfilerStart/Stop
  bool profile_decode = false;   // the first timed decode step of each point, likewise
  int64_t mixed_chunk = 0;  // > 0: also decode steps that carry a prefill chunk of this many tokens
  float temperature = 0.0f, top_p = 1.0f;
  EngineOptions o;
  o.device = EngineDevice::kCuda;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--model") model = value();
    else if (a == "--load-format") {
      const std::string f = value();
      format = f == "dummy" ? LoadFormat::kDummy : f == "gguf" ? LoadFormat::kGguf : f == "auto" ? LoadFormat::kAuto
                                                                                                : (die("bad --load-format " + f), LoadFormat::kAuto);
    } else if (a == "--batches") batches = parse_list(value());
    else if (a == "--prefill") prefills = parse_list(value());
    else if (a == "--contexts") contexts = parse_list(value());
    else if (a == "--steps") steps = std::atoll(value());
    else if (a == "--mixed-chunk") mixed_chunk = std::atoll(value());
    else if (a == "--no-graphs") o.cuda_graphs = false;
    else if (a == "--profile-prefill") profile_prefill = true;
    else if (a == "--profile-decode") profile_decode = true;
    else if (a == "--temperature") temperature = static_cast<float>(std::atof(value()));
    else if (a == "--top-p") top_p = static_cast<float>(std::atof(value()));
    else if (a == "--gpu-memory-utilization") o.gpu_memory_utilization = std::atof(value());
    else die("unknown argument " + a);
  }
  if (model.empty()) die("--model is required");
  const int64_t max_batch = *std::max_element(batches.begin(), batches.end());
  const int64_t max_prefill = prefills.empty() ? 1 : *std::max_element(prefills.begin(), prefills.end());
  o.max_batch_tokens = std::max(max_batch + mixed_chunk, max_prefill);
  o.max_sequences = std::max<int64_t>(max_batch + (mixed_chunk > 0 ? 1 : 0), 1);

  const auto t0 = std::chrono::steady_clock::now();
  auto engine = Engine::load({model, format, 0}, o);
  if (!engine) die("load: " + engine.status().to_string());
  Engine& e = **engine;
  const auto& c = e.config();
  const double load_s = seconds_since(t0);
  const double bw = copy_rate();
  const double peak = gemm_rate();
  const int64_t kv_token_bytes = 2 * static_cast<int64_t>(c.num_layers) * c.num_kv_heads * c.head_dim * 2;
  std::printf("model: %s (%s), %u layers, hidden %u, vocab %u\n", model.c_str(),
              format == LoadFormat::kDummy ? "dummy weights" : "weights from the file", c.num_layers, c.hidden_size,
              c.vocab_size);
  std::printf("backend: %s; weights %.2f GB; KV pool %lld pages of %lld tokens; loaded in %.1f s\n",
              e.backend_name().c_str(), static_cast<double>(e.weight_bytes()) / 1e9,
              static_cast<long long>(e.num_pages()), static_cast<long long>(e.page_size()), load_s);
  std::printf("device limits measured now: copy %.0f GB/s (read + write), bf16 GEMM %.0f TFLOP/s (8192^3)\n\n",
              bw / 1e9, peak / 1e12);

  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(c.vocab_size) - 1);
  const int64_t ps = e.page_size();
  uint64_t next_id = 1;

  std::printf("| decode | batch | context | ms/step | tok/s | floor ms (weights + KV read at the copy rate) | share of floor |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|\n");
  for (const int64_t context : contexts)
  for (const int64_t b : batches) {
    const int64_t decode_steps = mixed_chunk > 0 ? 2 * steps : steps;
    const int64_t pages_per_seq = (context + decode_steps + 8 + ps - 1) / ps;
    const int64_t chunk_pages = (mixed_chunk + ps - 1) / ps;
    if (b * pages_per_seq + chunk_pages > e.num_pages()) {
      std::printf("| decode | %lld | %lld | (KV pool too small) | | | |\n", static_cast<long long>(b),
                  static_cast<long long>(context));
      continue;
    }
    StepInput first;
    std::vector<uint64_t> ids;
    for (int64_t s = 0; s < b; ++s) {
      NewSequence ns;
      ns.seq_id = next_id++;
      ids.push_back(ns.seq_id);
      for (int64_t t = 0; t < context; ++t) ns.token_ids.push_back(token(rng));
      ns.num_prompt_tokens = static_cast<uint32_t>(context);
      ns.sampling.temperature = temperature;
      ns.sampling.top_p = top_p;
      ns.sampling.seed = ns.seq_id;
      for (int64_t p = 0; p < pages_per_seq; ++p) ns.cached_pages.push_back(static_cast<int32_t>(s * pages_per_seq + p));
      ns.num_cached_tokens = static_cast<uint32_t>(context - 1);
      first.scheduled.push_back({ns.seq_id, static_cast<uint32_t>(context - 1), 1, {}, true});
      first.new_sequences.push_back(std::move(ns));
    }
    auto r = e.step(first);
    if (!r) die("decode setup: " + r.status().to_string());
    double total = 0;
    const int64_t warm = 4;
    for (int64_t k = 0; k < warm + steps; ++k) {
      StepInput in;
      for (uint64_t id : ids) in.scheduled.push_back({id, static_cast<uint32_t>(context + k), 1, {}, true});
      const bool profiled = profile_decode && k == warm;
      if (profiled) cudaProfilerStart();
      const auto ts = std::chrono::steady_clock::now();
      auto out = e.step(in);
      if (!out) die("decode step: " + out.status().to_string());
      if (profiled) cudaProfilerStop();
      if (k >= warm) total += seconds_since(ts);
    }
    // Then the same decodes with a fresh sequence's prefill chunk riding along each step
    // (what a serving step under load looks like), the previous chunk's sequence released.
    double mixed_total = 0;
    StepPhaseSeconds mixed_phases;  // the timed mixed steps' host phases
    if (mixed_chunk > 0) {
      uint64_t previous = 0;
      for (int64_t k = 0; k < warm + steps; ++k) {
        StepInput in;
        if (previous != 0) in.released_seq_ids = {previous};
        for (uint64_t id : ids) in.scheduled.push_back({id, static_cast<uint32_t>(context + warm + steps + k), 1, {}, true});
        NewSequence ns;
        ns.seq_id = previous = next_id++;
        for (int64_t t = 0; t < mixed_chunk; ++t) ns.token_ids.push_back(token(rng));
        ns.num_prompt_tokens = static_cast<uint32_t>(mixed_chunk);
        std::vector<int32_t> page_ids;
        for (int64_t q = 0; q < chunk_pages; ++q) page_ids.push_back(static_cast<int32_t>(b * pages_per_seq + q));
        in.scheduled.push_back({ns.seq_id, 0, static_cast<uint32_t>(mixed_chunk), page_ids, true});
        in.new_sequences.push_back(std::move(ns));
        const bool profiled = profile_decode && k == warm;
        if (profiled) cudaProfilerStart();
        const StepPhaseSeconds before = e.phase_seconds();
        const auto ts = std::chrono::steady_clock::now();
        auto out = e.step(in);
        if (!out) die("mixed step: " + out.status().to_string());
        if (profiled) cudaProfilerStop();
        if (k >= warm) {
          mixed_total += seconds_since(ts);
          const StepPhaseSeconds& after = e.phase_seconds();
          mixed_phases.prepare += after.prepare - before.prepare;
          mixed_phases.forward += after.forward - before.forward;
          mixed_phases.sample += after.sample - before.sample;
        }
      }
      ids.push_back(previous);
    }
    StepInput release;
    release.released_seq_ids = ids;
    check(e.step(release).status(), "release");
    const double ms = total / static_cast<double>(steps) * 1e3;
    const double bytes = static_cast<double>(e.weight_bytes()) +
                         static_cast<double>(b) * static_cast<double>(context + steps / 2) * kv_token_bytes;
    const double floor_ms = bytes / bw * 1e3;
    std::printf("| decode | %lld | %lld | %.3f | %.0f | %.3f | %.0f%% |\n", static_cast<long long>(b),
                static_cast<long long>(context), ms, static_cast<double>(b) / (ms / 1e3), floor_ms, 100 * floor_ms / ms);
    if (mixed_chunk > 0) {
      const double per = 1e3 / static_cast<double>(steps);
      std::printf("| decode + %lld-token prefill chunk | %lld | %lld | %.3f | %.0f | host: prepare %.2f, enqueue %.2f, "
                  "wait + sample %.2f ms | |\n",
                  static_cast<long long>(mixed_chunk), static_cast<long long>(b), static_cast<long long>(context),
                  mixed_total * per, static_cast<double>(b) / (mixed_total / static_cast<double>(steps)),
                  mixed_phases.prepare * per, mixed_phases.forward * per, mixed_phases.sample * per);
    }
    std::fflush(stdout);
  }

  std::printf("\n| prefill | tokens | ms | tok/s | GEMM FLOPs share of peak | \n|---|---:|---:|---:|---:|\n");
  // Matmul FLOPs per token: 2 × the parameters the projections hold (embedding excluded).
  const double hidden = c.hidden_size, inter = c.intermediate_size;
  const double q_dim = static_cast<double>(c.num_attention_heads) * c.head_dim;
  const double kv_dim = static_cast<double>(c.num_kv_heads) * c.head_dim;
  const double layer_params = hidden * (q_dim + 2 * kv_dim) + q_dim * hidden + 3 * hidden * inter;
  for (const int64_t p : prefills) {
    const int64_t pages = (p + ps - 1) / ps;
    if (pages > e.num_pages()) {
      std::printf("| prefill | %lld | (KV pool too small) | | |\n", static_cast<long long>(p));
      continue;
    }
    std::vector<double> times;
    for (int rep = 0; rep < 4; ++rep) {
      StepInput in;
      NewSequence ns;
      ns.seq_id = next_id++;
      for (int64_t t = 0; t < p; ++t) ns.token_ids.push_back(token(rng));
      ns.num_prompt_tokens = static_cast<uint32_t>(p);
      ns.sampling.temperature = 0;
      std::vector<int32_t> page_ids;
      for (int64_t k = 0; k < pages; ++k) page_ids.push_back(static_cast<int32_t>(k));
      in.scheduled.push_back({ns.seq_id, 0, static_cast<uint32_t>(p), page_ids, true});
      in.new_sequences.push_back(std::move(ns));
      const bool profiled = profile_prefill && rep == 1;
      if (profiled) cudaProfilerStart();
      const auto ts = std::chrono::steady_clock::now();
      auto out = e.step(in);
      if (!out) die("prefill: " + out.status().to_string());
      if (profiled) cudaProfilerStop();
      if (rep > 0) times.push_back(seconds_since(ts));
      StepInput release;
      release.released_seq_ids = {in.new_sequences[0].seq_id};
      check(e.step(release).status(), "release");
    }
    std::sort(times.begin(), times.end());
    const double s = times[times.size() / 2];
    const double flops = 2.0 * layer_params * c.num_layers * static_cast<double>(p) + 2.0 * hidden * c.vocab_size;
    std::printf("| prefill | %lld | %.1f | %.0f | %.0f%% |\n", static_cast<long long>(p), s * 1e3,
                static_cast<double>(p) / s, 100 * flops / s / peak);
    std::fflush(stdout);
  }
  return 0;
}
