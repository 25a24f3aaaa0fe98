// The router's WorkerHub and the worker's Attach session, over real gRPC in one process:
// requests submitted to a group run on the attached worker's engine with the tokens the
// engine gives alone; a worker that goes away fails its running requests, and the next
// one to attach serves the rest.
#include "router/service/worker_hub.h"
#include "router/service/router_service.h"

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "router/worker_codec.h"
#include "local_grpc_server.h"
#include "worker/engine/engine_fixtures.h"
#include "worker/engine/offline_runner.h"
#include "worker/service/worker_session.h"

using namespace tessera;

namespace {

std::unique_ptr<engine::Engine> tiny_engine() {
  engine::EngineOptions o;
  o.page_size = 4;
  o.kv_cache_tokens = 8192;
  o.max_batch_tokens = 64;
  o.max_sequences = 16;
  return testing::load_family("llama3", o);
}

struct Collector {
  std::mutex mutex;
  std::condition_variable cv;
  std::map<uint64_t, std::vector<int32_t>> tokens;
  std::map<uint64_t, router::FinishReason> finished;
  router::EventCallback callback() {
    return [this](const router::RequestEvent& e) {
      std::lock_guard lock(mutex);
      if (e.token) tokens[e.request_id].push_back(*e.token);
      if (e.finish != router::FinishReason::kNone) finished[e.request_id] = e.finish;
      cv.notify_all();
    };
  }
  bool wait_finished(size_t n, std::chrono::seconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return finished.size() >= n; });
  }
};

router::RequestSpec greedy_request(uint64_t id, std::vector<int32_t> prompt, uint32_t max_tokens) {
  router::RequestSpec r;
  r.request_id = id;
  r.prompt = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  v1::SamplingParams sp;
  sp.set_temperature(0);
  r.sampling = router::sampling_payload(sp);
  return r;
}

}  // namespace

TEST_CASE("requests run on the attached worker with the engine's own tokens; a lost worker fails only running ones",
          "[router][worker]") {
  // Reference: each prompt alone on its own engine.
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> p{1};
    for (int j = 0; j < 3 + 2 * i; ++j) p.push_back(3 + (i * 37 + j * 11) % 250);
    prompts.push_back(p);
  }
  std::vector<std::vector<int32_t>> want;
  {
    auto ref = tiny_engine();
    for (const auto& p : prompts) {
      engine::GenerationRequest r;
      r.prompt = p;
      r.sampling.temperature = 0;
      r.max_tokens = 10;
      r.ignore_eos = true;
      engine::OfflineRunner runner(*ref, {});
      auto out = runner.run({&r, 1});
      REQUIRE(out.is_ok());
      want.push_back((*out)[0].tokens);
    }
  }

  metrics::Registry registry;
  router::RouterMetrics router_metrics(registry);
  router::WorkerHubService hub(router::GroupOptions{.metrics = &router_metrics});
  auto local = testing::start_local_grpc_server({&hub});
  const int port = local.port;
  router::WorkerGroup& group = hub.group("g0");

  Collector got;
  // Submitted before any worker: they wait for one.
  for (size_t i = 0; i < prompts.size(); ++i) group.submit(greedy_request(i + 1, prompts[i], 10), got.callback());

  auto engine = tiny_engine();
  worker::WorkerSession session(*engine, {"127.0.0.1:" + std::to_string(port), "g0", "w1", "tiny",
                                          std::chrono::milliseconds(20), std::chrono::milliseconds(200)});
  auto running = std::async(std::launch::async, [&] { return session.run(); });
  REQUIRE(got.wait_finished(prompts.size(), std::chrono::seconds(60)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("request " << i + 1);
    REQUIRE(got.finished[i + 1] == router::FinishReason::kLength);
    REQUIRE(got.tokens[i + 1] == want[i]);
  }
  // Every finished request and every step reached the histograms.
  const std::string text = registry.expose();
  CHECK(text.find("tessera_e2e_request_latency_seconds_count 12\n") != std::string::npos);
  CHECK(text.find("tessera_time_to_first_token_seconds_count 12\n") != std::string::npos);
  CHECK(text.find("tessera_step_duration_seconds_count 0\n") == std::string::npos);

  // The worker goes away mid-generation: long requests (4000 tokens each, both admitted)
  // end with an error, promptly.
  Collector lost;
  for (uint64_t id = 100; id < 102; ++id) group.submit(greedy_request(id, prompts[0], 4000), lost.callback());
  {
    std::unique_lock lock(lost.mutex);
    lost.cv.wait_for(lock, std::chrono::seconds(30), [&] { return !lost.tokens.empty(); });
  }
  session.stop();
  REQUIRE(running.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  REQUIRE(lost.wait_finished(2, std::chrono::seconds(30)));
  for (const auto& [id, reason] : lost.finished) REQUIRE(reason == router::FinishReason::kError);

  // A new worker attaches and serves what comes next.
  Collector after;
  group.submit(greedy_request(200, prompts[3], 10), after.callback());
  worker::WorkerSession second(*engine, {"127.0.0.1:" + std::to_string(port), "g0", "w2", "tiny",
                                         std::chrono::milliseconds(20), std::chrono::milliseconds(200)});
  auto running2 = std::async(std::launch::async, [&] { return second.run(); });
  REQUIRE(after.wait_finished(1, std::chrono::seconds(60)));
  REQUIRE(after.tokens[200] == want[3]);
  second.stop();
  REQUIRE(running2.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  local.server->Shutdown();
}

TEST_CASE("Router.Generate streams the engine's tokens, Abort and client cancel end requests", "[router][worker]") {
  router::WorkerHubService hub({});
  router::RouterService router_service(hub);
  auto local = testing::start_local_grpc_server({&hub, &router_service});
  const int port = local.port;
  auto stub = v1::Router::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
  auto generate = [&](const std::string& id, std::vector<int32_t> prompt, uint32_t max_tokens,
                      std::vector<int32_t>* tokens, v1::GenerateResponse* last) {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_request_id(id);
    req.mutable_prompt_token_ids()->Assign(prompt.begin(), prompt.end());
    req.mutable_sampling()->set_temperature(0);
    req.mutable_sampling()->set_max_tokens(max_tokens);
    req.mutable_sampling()->set_ignore_eos(true);
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      tokens->insert(tokens->end(), r.token_ids().begin(), r.token_ids().end());
      *last = r;
    }
    return reader->Finish();
  };

  // No worker yet: a clear UNAVAILABLE, not a hang.
  {
    std::vector<int32_t> t;
    v1::GenerateResponse last;
    REQUIRE(generate("early", {1, 2, 3}, 4, &t, &last).error_code() == grpc::StatusCode::UNAVAILABLE);
  }
  auto engine = tiny_engine();
  worker::WorkerSession session(*engine, {"127.0.0.1:" + std::to_string(port), "g0", "w1", "tiny",
                                          std::chrono::milliseconds(20), std::chrono::milliseconds(200)});
  auto running = std::async(std::launch::async, [&] { return session.run(); });
  for (int i = 0; i < 200 && !hub.group("g0").attached(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  REQUIRE(hub.group("g0").attached());

  // Eight concurrent streams, each equal to the engine alone.
  std::vector<int32_t> prompt{1, 5, 9, 200, 7, 31};
  std::vector<int32_t> want;
  {
    auto ref = tiny_engine();
    engine::GenerationRequest r;
    r.prompt = prompt;
    r.sampling.temperature = 0;
    r.max_tokens = 12;
    r.ignore_eos = true;
    engine::OfflineRunner runner(*ref, {});
    want = (*runner.run({&r, 1}))[0].tokens;
  }
  std::vector<std::future<std::vector<int32_t>>> streams;
  for (int i = 0; i < 8; ++i) {
    streams.push_back(std::async(std::launch::async, [&, i] {
      std::vector<int32_t> t;
      v1::GenerateResponse last;
      const grpc::Status st = generate("r" + std::to_string(i), prompt, 12, &t, &last);
      REQUIRE(st.ok());
      REQUIRE(last.finished().reason() == v1::FINISH_REASON_LENGTH);
      REQUIRE(last.usage().completion_tokens() == 12);
      return t;
    }));
  }
  for (auto& f : streams) REQUIRE(f.get() == want);

  // Abort by id ends a long request with FINISH_REASON_ABORTED.
  auto long_one = std::async(std::launch::async, [&] {
    std::vector<int32_t> t;
    v1::GenerateResponse last;
    const grpc::Status st = generate("long", prompt, 4000, &t, &last);
    return std::make_pair(st.ok(), last.finished().reason());
  });
  bool found = false;
  for (int i = 0; i < 500 && !found; ++i) {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.set_request_id("long");
    v1::AbortResponse resp;
    REQUIRE(stub->Abort(&ctx, req, &resp).ok());
    found = resp.found();
    if (!found) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  REQUIRE(found);
  const auto [ok, reason] = long_one.get();
  REQUIRE(ok);
  REQUIRE(reason == v1::FINISH_REASON_ABORTED);

  // A client that cancels mid-stream stops costing compute: its request leaves the group.
  {
    grpc::ClientContext ctx;
    v1::GenerateRequest req;
    req.set_request_id("cancelled");
    req.mutable_prompt_token_ids()->Assign(prompt.begin(), prompt.end());
    req.mutable_sampling()->set_temperature(0);
    req.mutable_sampling()->set_max_tokens(4000);
    req.mutable_sampling()->set_ignore_eos(true);
    auto reader = stub->Generate(&ctx, req);
    v1::GenerateResponse r;
    REQUIRE(reader->Read(&r));
    ctx.TryCancel();
    while (reader->Read(&r)) {
    }
    REQUIRE(reader->Finish().error_code() == grpc::StatusCode::CANCELLED);
    bool gone = false;
    for (int i = 0; i < 300 && !gone; ++i) {
      gone = hub.group("g0").stats().num_running == 0;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(gone);
  }

  grpc::ClientContext sctx;
  v1::RouterStats stats;
  REQUIRE(stub->GetStats(&sctx, v1::GetStatsRequest(), &stats).ok());
  REQUIRE(stats.ready());
  REQUIRE(stats.groups_size() == 1);
  REQUIRE(stats.groups(0).num_attached_ranks() == 1);

  session.stop();
  REQUIRE(running.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  local.server->Shutdown();
}
