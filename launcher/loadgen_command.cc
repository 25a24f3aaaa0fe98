// `tessera loadgen`: a closed-loop load of token-id requests, printed as one JSON object.
//   --router HOST:PORT  through a running router's Router.Generate (C client threads)
//   --in-process        the same requests, scheduler and engine in this process and thread
//                       (no gRPC, no processes): the baseline the tier is compared with
// Request r's prompt is --shared-prefix-tokens ids common to all requests, then ids unique
// to r + --first-request up to --prompt-tokens; every request is greedy, ignores EOS and
// makes --max-tokens tokens. --no-prefix-cache turns the in-process scheduler's cache off.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/arg_parse.h"
#include "launcher/commands.h"
#include "launcher/generate_options.h"
#include "gateway/model_files.h"
#include "tessera/common/cli.h"
#include "tessera/v1/router.grpc.pb.h"
#include "router/scheduler.h"
#include "router/worker_codec.h"
#include "worker/engine/engine.h"
#include "worker/service/plan_codec.h"

namespace tessera::launcher {
using namespace tessera::model_files;  // locate_model, load_tokenizer, load_chat_template
namespace {

constexpr const char* kWho = "tessera loadgen";
using Clock = std::chrono::steady_clock;

struct LoadgenOptions {
  std::string router;
  bool in_process = false;
  std::string model = "default";
  int num_threads = 0;
  int64_t requests = 64;
  int64_t concurrency = 16;
  int64_t prompt_tokens = 128;
  int64_t shared_prefix_tokens = 0;
  uint32_t max_tokens = 32;
  int64_t vocab = 49152;  // the test model's
  int64_t first_request = 0;  // prompts differ by request index: a new offset, new prompts
  bool prefix_cache = true;   // --in-process: the scheduler's prefix cache (the router's default)
  std::string error;
};

LoadgenOptions parse(const Args& args) {
  LoadgenOptions o;
  OptionReader r(args);
  auto value = [&r] { return r.value(); };
  auto number = [&r](auto* out) { r.number(out); };
  while (r.next()) {
    const std::string& a = r.option();
    if (a == "--router") {
      if (auto v = value()) o.router = *v;
    } else if (a == "--in-process") {
      o.in_process = true;
    } else if (a == "--model" || a == "-m") {
      if (auto v = value()) o.model = *v;
    } else if (a == "--threads") {
      number(&o.num_threads);
    } else if (a == "--requests") {
      number(&o.requests);
    } else if (a == "--concurrency") {
      number(&o.concurrency);
    } else if (a == "--prompt-tokens") {
      number(&o.prompt_tokens);
    } else if (a == "--shared-prefix-tokens") {
      number(&o.shared_prefix_tokens);
    } else if (a == "--max-tokens") {
      number(&o.max_tokens);
    } else if (a == "--vocab") {
      number(&o.vocab);
    } else if (a == "--first-request") {
      number(&o.first_request);
    } else if (a == "--no-prefix-cache") {
      o.prefix_cache = false;
    } else {
      r.fail("unknown option '" + a + "'");
    }
  }
  o.error = r.error();
  if (!o.error.empty()) return o;
  if (o.in_process == !o.router.empty()) o.error = "give exactly one of --router HOST:PORT and --in-process";
  else if (o.requests < 1 || o.concurrency < 1 || o.max_tokens < 1) o.error = "--requests, --concurrency and --max-tokens must be positive";
  else if (o.prompt_tokens < 1 || o.shared_prefix_tokens < 0 || o.shared_prefix_tokens > o.prompt_tokens) {
    o.error = "--prompt-tokens must be positive and at least --shared-prefix-tokens";
  } else if (o.vocab < 18) {
    o.error = "--vocab must be above 17";
  }
  return o;
}

std::vector<int32_t> prompt_of(const LoadgenOptions& o, int64_t r) {
  std::vector<int32_t> p = workload_prompt(1'000'000, o.shared_prefix_tokens, o.vocab);
  const std::vector<int32_t> own = workload_prompt(o.first_request + r, o.prompt_tokens - o.shared_prefix_tokens, o.vocab);
  p.insert(p.end(), own.begin(), own.end());
  return p;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

struct Totals {
  int64_t ok = 0, errors = 0, output_tokens = 0, cached_prompt_tokens = 0;
  double wall_s = 0;  // generation only (an in-process model load is not counted)
  int64_t steps = 0;  // engine steps (in-process only)
  std::vector<double> ttft_s;
  std::string first_error;
};

Totals run_router(const LoadgenOptions& o) {
  auto channel = grpc::CreateChannel(o.router, grpc::InsecureChannelCredentials());
  auto stub = v1::Router::NewStub(channel);
  std::atomic<int64_t> next{0};
  std::mutex mutex;
  Totals t;
  std::vector<std::thread> clients;
  const auto start_all = Clock::now();
  for (int64_t c = 0; c < std::min(o.concurrency, o.requests); ++c) {
    clients.emplace_back([&] {
      for (int64_t r = next++; r < o.requests; r = next++) {
        v1::GenerateRequest req;
        req.set_request_id("loadgen-" + std::to_string(o.first_request + r));
        const std::vector<int32_t> prompt = prompt_of(o, r);
        req.mutable_prompt_token_ids()->Assign(prompt.begin(), prompt.end());
        req.mutable_sampling()->set_temperature(0);
        req.mutable_sampling()->set_max_tokens(o.max_tokens);
        req.mutable_sampling()->set_ignore_eos(true);
        grpc::ClientContext ctx;
        const auto start = Clock::now();
        auto reader = stub->Generate(&ctx, req);
        v1::GenerateResponse resp;
        std::optional<double> ttft;
        int64_t tokens = 0, cached = 0;
        bool finished_ok = false;
        while (reader->Read(&resp)) {
          if (!ttft && resp.token_ids_size() > 0) ttft = std::chrono::duration<double>(Clock::now() - start).count();
          tokens += resp.token_ids_size();
          if (resp.has_finished()) {
            cached = resp.usage().cached_prompt_tokens();
            finished_ok = resp.finished().reason() != v1::FINISH_REASON_ERROR;
          }
        }
        const grpc::Status st = reader->Finish();
        std::lock_guard lock(mutex);
        if (st.ok() && finished_ok) {
          ++t.ok;
          t.output_tokens += tokens;
          t.cached_prompt_tokens += cached;
          if (ttft) t.ttft_s.push_back(*ttft);
        } else {
          ++t.errors;
          if (t.first_error.empty()) t.first_error = st.ok() ? resp.finished().error_message() : st.error_message();
        }
      }
    });
  }
  for (auto& c : clients) c.join();
  t.wall_s = std::chrono::duration<double>(Clock::now() - start_all).count();
  return t;
}

// The tier without its transport: the router's Scheduler drives an Engine in this thread,
// plans and results going through the same codecs as over gRPC. Closed loop: C requests
// are submitted, and each finish submits the next.
Result<Totals> run_in_process(const LoadgenOptions& o) {
  auto where = locate_model(o.model);
  if (!where) return where.status();
  engine::EngineOptions eo;  // what tessera-worker uses by default
  eo.num_threads = o.num_threads;
  eo.max_batch_tokens = 8192;
  eo.max_sequences = 256;
  auto loaded = engine::Engine::load({where->path, engine::LoadFormat::kAuto, 0}, eo);
  if (!loaded) return loaded.status();
  engine::Engine& engine = **loaded;
  router::SchedulerOptions so;  // what a router group uses by default
  so.num_pages = static_cast<int32_t>(engine.num_pages());
  so.page_size = static_cast<int32_t>(engine.page_size());
  so.max_context_tokens = static_cast<int32_t>(engine.config().max_position_embeddings);
  so.max_num_seqs = 256;
  so.max_batch_tokens = 8192;
  so.eos_token_ids = engine.config().eos_token_ids;
  so.enable_prefix_cache = o.prefix_cache;
  v1::SamplingParams greedy;
  greedy.set_temperature(0);
  // One plan through the codecs and the engine, as a worker executes it.
  auto execute = [&](const router::Plan& plan) -> Result<engine::StepOutput> {
    auto input = worker::step_input_from_proto(router::plan_to_proto(plan));
    if (!input) return input.status();
    return engine.step(*input);
  };
  auto run = [&](int64_t first_id, int64_t count, auto prompt_for, uint32_t max_tokens, Totals* t) -> Status {
    router::Scheduler scheduler(so);
    std::vector<Clock::time_point> submitted(static_cast<size_t>(count));
    std::vector<bool> seen(static_cast<size_t>(count), false);
    int64_t next = 0, finished = 0;
    auto submit = [&]() -> Status {
      router::RequestSpec spec;
      spec.request_id = static_cast<uint64_t>(first_id + next);
      spec.prompt = prompt_for(next);
      spec.stop.max_tokens = max_tokens;
      spec.stop.ignore_eos = true;
      spec.sampling = router::sampling_payload(greedy);
      submitted[static_cast<size_t>(next)] = Clock::now();
      ++next;
      return scheduler.submit(std::move(spec));
    };
    while (next < std::min(count, o.concurrency)) TESSERA_RETURN_IF_ERROR(submit());
    while (finished < count) {
      const router::Plan plan = scheduler.next_plan();
      if (plan.empty()) return internal_error("loadgen: the scheduler made no progress");
      auto out = execute(plan);
      if (!out) return out.status();
      ++t->steps;
      const auto events = scheduler.on_step_result(router::outcome_from_proto(worker::step_result_to_proto(plan.step_id, *out)));
      for (const router::RequestEvent& e : events) {
        const auto i = static_cast<size_t>(static_cast<int64_t>(e.request_id) - first_id);
        if (e.token) {
          ++t->output_tokens;
          if (!seen[i]) t->ttft_s.push_back(std::chrono::duration<double>(Clock::now() - submitted[i]).count());
          seen[i] = true;
        }
        if (e.finish == router::FinishReason::kNone) continue;
        ++finished;
        t->cached_prompt_tokens += e.num_cached_tokens;
        if (e.finish == router::FinishReason::kError) {
          ++t->errors;
          if (t->first_error.empty()) t->first_error = e.error.message();
        } else {
          ++t->ok;
        }
        if (next < count) TESSERA_RETURN_IF_ERROR(submit());
      }
    }
    // The finished sequences' releases ride on the next plan: send it.
    const router::Plan last = scheduler.next_plan();
    return last.empty() ? Status::ok() : execute(last).status();
  };
  // Warm-up, as a tier gets before it is measured: first touches of weights and KV pages.
  Totals warm;
  TESSERA_RETURN_IF_ERROR(run(1'000'000, 8, [&](int64_t r) { return workload_prompt(2'000'000 + r, 32, o.vocab); }, 8, &warm));
  Totals t;
  const auto start = Clock::now();
  TESSERA_RETURN_IF_ERROR(run(0, o.requests, [&](int64_t r) { return prompt_of(o, r); }, o.max_tokens, &t));
  t.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  return t;
}

}  // namespace

int run_loadgen(const Args& args) {
  const LoadgenOptions o = parse(args);
  if (!o.error.empty()) return cli::usage_error(kProgram, "loadgen: " + o.error);
  Totals t;
  if (o.in_process) {
    auto r = run_in_process(o);
    if (!r) return cli::fail(kWho, r.status());
    t = std::move(*r);
  } else {
    t = run_router(o);
  }
  const double wall = t.wall_s;
  nlohmann::ordered_json j;
  j["mode"] = o.in_process ? "in-process" : "router";
  j["requests"] = o.requests;
  j["concurrency"] = o.concurrency;
  j["prompt_tokens"] = o.prompt_tokens;
  j["shared_prefix_tokens"] = o.shared_prefix_tokens;
  j["max_tokens"] = o.max_tokens;
  j["first_request"] = o.first_request;
  j["ok"] = t.ok;
  j["errors"] = t.errors;
  if (!t.first_error.empty()) j["first_error"] = t.first_error;
  j["wall_s"] = wall;
  j["requests_per_s"] = static_cast<double>(t.ok) / wall;
  j["output_tokens_per_s"] = static_cast<double>(t.output_tokens) / wall;
  j["total_tokens_per_s"] = static_cast<double>(t.output_tokens + t.ok * o.prompt_tokens) / wall;
  j["cached_prompt_tokens"] = t.cached_prompt_tokens;
  if (o.in_process) j["engine_steps"] = t.steps;
  if (!t.ttft_s.empty()) {
    double sum = 0;
    for (double v : t.ttft_s) sum += v;
    j["ttft_mean_s"] = sum / static_cast<double>(t.ttft_s.size());
    j["ttft_p50_s"] = percentile(t.ttft_s, 0.5);
    j["ttft_p99_s"] = percentile(t.ttft_s, 0.99);
  }
  std::printf("%s\n", j.dump().c_str());
  return t.errors == 0 ? 0 : 1;
}

}  // namespace tessera::launcher
