// The router's WorkerHub and the worker's Attach session, over real gRPC in one process:
// requests submitted to a group run on the attached worker's engine with the tokens the
// engine gives alone; a worker that goes away fails its requests, and the next one to
// attach serves what comes next; multi-rank groups, silent and stuck workers (a scripted
// fake worker on the real wire), plans sent ahead of their answers, re-placement on
// another group and drain.
#include "router/service/worker_hub.h"
#include "router/service/router_service.h"

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "router/worker_codec.h"
#include "local_grpc_server.h"
#include "generate_request.h"
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
  std::map<uint64_t, Status> errors;
  router::EventCallback callback() {
    return [this](const router::RequestEvent& e) {
      std::lock_guard lock(mutex);
      if (e.token) tokens[e.request_id].push_back(*e.token);
      if (e.finish != router::FinishReason::kNone) {
        finished[e.request_id] = e.finish;
        errors[e.request_id] = e.error;
      }
      cv.notify_all();
    };
  }
  bool wait_tokens(uint64_t id, size_t n, std::chrono::seconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return tokens[id].size() >= n || finished.count(id); });
  }
  bool wait_finished(size_t n, std::chrono::seconds timeout) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, timeout, [&] { return finished.size() >= n; });
  }
};

// Polls `done` for up to `timeout`.
template <typename F>
bool wait_until(F done, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// A session's run() on its own thread; leaving the scope (a failed REQUIRE included) stops
// the session and waits for it, so a failing test cannot hang on a running worker.
struct Background {
  worker::WorkerSession* session = nullptr;
  std::future<Status> result;
  Background(worker::WorkerSession* s, std::future<Status> f) : session(s), result(std::move(f)) {}
  Background(Background&&) = default;
  ~Background() { stop(); }
  void stop() {
    if (result.valid() && result.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
      session->stop();
      result.wait();
    }
  }
  std::future_status wait_for(std::chrono::seconds d) { return result.wait_for(d); }
  Status get() { return result.get(); }
};

Background run_in_background(worker::WorkerSession& s) {
  return {&s, std::async(std::launch::async, [&s] { return s.run(); })};
}

worker::WorkerSessionOptions session_options(int port, std::string group, std::string id, uint32_t rank = 0,
                                             uint32_t world = 1) {
  worker::WorkerSessionOptions o;
  o.router_address = "127.0.0.1:" + std::to_string(port);
  o.group = std::move(group);
  o.worker_id = std::move(id);
  o.model_name = "tiny";
  o.backoff_initial = std::chrono::milliseconds(20);
  o.backoff_max = std::chrono::milliseconds(200);
  o.heartbeat_interval = std::chrono::milliseconds(100);
  o.rank = rank;
  o.world_size = world;
  return o;
}

// The engine alone, greedy: what every router path must reproduce.
std::vector<int32_t> alone(const std::vector<int32_t>& prompt, uint32_t max_tokens) {
  auto ref = tiny_engine();
  engine::GenerationRequest r;
  r.prompt = prompt;
  r.sampling.temperature = 0;
  r.max_tokens = max_tokens;
  r.ignore_eos = true;
  engine::OfflineRunner runner(*ref, {});
  auto out = runner.run({&r, 1});
  REQUIRE(out.is_ok());
  return (*out)[0].tokens;
}

// A worker scripted by the test on the real wire: describes itself, then does only what
// the test tells it (answer nothing, heartbeat, or hang up).
struct FakeWorker {
  std::unique_ptr<v1::WorkerHub::Stub> stub;
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::RouterMessage>> stream;
  std::atomic<bool> beat{false};
  std::thread heart;

  FakeWorker(int port, const std::string& group) {
    stub = v1::WorkerHub::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
    stream = stub->Attach(&context);
    v1::WorkerMessage hello;
    v1::WorkerDescription* d = hello.mutable_describe();
    d->set_protocol_version(1);
    d->set_worker_id("fake");
    d->set_group(group);
    d->set_world_size(1);
    d->mutable_model()->set_context_length_tokens(2048);
    d->mutable_model()->set_vocab_size(256);
    d->mutable_model()->set_architecture("llama");
    d->set_num_kv_pages(256);
    d->set_page_size_tokens(4);
    d->set_max_step_tokens(64);
    d->set_max_step_sequences(16);
    REQUIRE(stream->Write(hello));
    v1::RouterMessage m;
    REQUIRE(stream->Read(&m));
    REQUIRE(m.has_accepted());
    REQUIRE(stream->Read(&m));
    REQUIRE(m.has_group_ready());
  }
  v1::StepPlan read_plan() {
    v1::RouterMessage m;
    REQUIRE(stream->Read(&m));
    REQUIRE(m.has_plan());
    return m.plan();
  }
  // Answers a plan with one sampled token per sampling slice (`tokens` in plan order).
  void answer(const v1::StepPlan& plan, const std::vector<int32_t>& tokens) {
    v1::WorkerMessage m;
    v1::StepResult* r = m.mutable_result();
    r->set_step_id(plan.step_id());
    size_t i = 0;
    for (const v1::ScheduledSequence& s : plan.scheduled()) {
      if (!s.sample()) continue;
      v1::SampledToken* t = r->add_sampled();
      t->set_seq_id(s.seq_id());
      t->set_token_id(tokens.at(i++));
    }
    REQUIRE(stream->Write(m));
  }
  void beat_once() {
    v1::WorkerMessage hb;
    hb.mutable_heartbeat()->set_current_step_id(0);
    REQUIRE(stream->Write(hb));
  }
  // Heartbeats every 50 ms from now on, answering nothing.
  void start_heartbeats() {
    beat = true;
    heart = std::thread([this] {
      while (beat) {
        v1::WorkerMessage hb;
        hb.mutable_heartbeat()->set_current_step_id(1);
        if (!stream->Write(hb)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  ~FakeWorker() {
    beat = false;
    if (heart.joinable()) heart.join();
    context.TryCancel();
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

TEST_CASE("requests run on the attached worker with the engine's own tokens, a lost worker fails its requests",
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
  auto running = run_in_background(session);
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
  CHECK(text.find("tessera_request_queue_time_seconds_count 12\n") != std::string::npos);
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
  auto running2 = run_in_background(second);
  REQUIRE(after.wait_finished(1, std::chrono::seconds(60)));
  REQUIRE(after.tokens[200] == want[3]);
  second.stop();
  REQUIRE(running2.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  local.server->Shutdown();
}

TEST_CASE("Router.Generate streams the engine's tokens, Abort and client cancel end requests", "[router][worker]") {
  router::WorkerHubService hub({});
  router::RouterService router_service(hub, "test-router");
  auto local = testing::start_local_grpc_server({&hub, &router_service});
  const int port = local.port;
  auto stub = v1::Router::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
  auto generate = [&](const std::string& id, std::vector<int32_t> prompt, uint32_t max_tokens,
                      std::vector<int32_t>* tokens, v1::GenerateResponse* last) {
    grpc::ClientContext ctx;
    const v1::GenerateRequest req = testing::greedy_generate_request(id, prompt, max_tokens);
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
  auto running = run_in_background(session);
  REQUIRE(wait_until([&] { return hub.group("g0").serving(); }));

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
    const v1::GenerateRequest req = testing::greedy_generate_request("cancelled", prompt, 4000);
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

TEST_CASE("a two-rank group serves once both ranks attach, losing one fails its requests, and both rejoin",
          "[router][worker]") {
  router::WorkerHubService hub({});
  auto local = testing::start_local_grpc_server({&hub});
  router::WorkerGroup& group = hub.group("tp");
  auto e0 = tiny_engine();
  auto e1 = tiny_engine();
  const std::vector<int32_t> prompt{1, 8, 99, 4, 120, 6, 77};
  const auto want = alone(prompt, 10);

  worker::WorkerSession rank0(*e0, session_options(local.port, "tp", "w0", 0, 2));
  auto run0 = run_in_background(rank0);
  REQUIRE(wait_until([&] { return group.num_attached_ranks() == 1; }));
  Collector got;
  group.submit(greedy_request(1, prompt, 10), got.callback());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_FALSE(group.serving());  // half a group serves nothing
  CHECK(got.finished.empty());
  CHECK(group.world_size() == 2);

  worker::WorkerSession rank1(*e1, session_options(local.port, "tp", "w1", 1, 2));
  auto run1 = run_in_background(rank1);
  REQUIRE(got.wait_finished(1, std::chrono::seconds(60)));
  REQUIRE(got.finished[1] == router::FinishReason::kLength);
  REQUIRE(got.tokens[1] == want);
  // Every plan went to both ranks (the last one, releasing the finished sequence, may
  // still be running when the finish is streamed).
  CHECK(wait_until([&] { return rank0.stats().num_steps == rank1.stats().num_steps; }));
  CHECK(rank0.stats().num_steps >= 10);

  // Rank 1 goes away mid-request: the group's request fails, rank 0 is detached and
  // re-dials; a new rank 1 makes the group whole again.
  Collector lost;
  group.submit(greedy_request(2, prompt, 4000), lost.callback());
  REQUIRE(lost.wait_tokens(2, 2, std::chrono::seconds(30)));
  rank1.stop();
  REQUIRE(run1.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  REQUIRE(lost.wait_finished(1, std::chrono::seconds(10)));
  CHECK(lost.finished[2] == router::FinishReason::kError);
  CHECK(lost.errors[2].code() == StatusCode::kUnavailable);
  REQUIRE(wait_until([&] { return rank0.stats().num_attachments >= 2; }));
  CHECK_FALSE(group.serving());

  worker::WorkerSession rank1b(*e1, session_options(local.port, "tp", "w1b", 1, 2));
  auto run1b = run_in_background(rank1b);
  Collector again;
  group.submit(greedy_request(3, prompt, 10), again.callback());
  REQUIRE(again.wait_finished(1, std::chrono::seconds(60)));
  CHECK(again.tokens[3] == want);

  // A rank that does not fit the group is refused with the reason.
  {
    engine::EngineOptions o;
    o.page_size = 8;
    o.kv_cache_tokens = 8192;
    o.max_batch_tokens = 64;
    o.max_sequences = 16;
    auto other = testing::load_family("llama3", o);
    worker::WorkerSession misfit(*other, session_options(local.port, "tp", "w2", 1, 2));
    auto run2 = run_in_background(misfit);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(misfit.stats().num_attachments == 0);
    misfit.stop();
    REQUIRE(run2.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  }
  rank0.stop();
  rank1b.stop();
  REQUIRE(run0.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  REQUIRE(run1b.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  hub.shutdown("test over");
  local.server->Shutdown();
}

TEST_CASE("a silent worker fails its requests within worker_timeout, a stuck step within the step timeout",
          "[router][worker]") {
  router::GroupOptions options;
  options.worker_timeout = std::chrono::milliseconds(300);
  options.step_timeout = std::chrono::milliseconds(1500);
  router::WorkerHubService hub(options);
  auto local = testing::start_local_grpc_server({&hub});
  router::WorkerGroup& group = hub.group("g");

  SECTION("no answer and no heartbeat: lost after worker_timeout") {
    FakeWorker fake(local.port, "g");
    REQUIRE(wait_until([&] { return group.serving(); }));
    fake.beat_once();  // the 300 ms start now
    Collector got;
    const auto t0 = std::chrono::steady_clock::now();
    group.submit(greedy_request(1, {1, 2, 3}, 5), got.callback());
    fake.read_plan();
    REQUIRE(got.wait_finished(1, std::chrono::seconds(10)));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(got.finished[1] == router::FinishReason::kError);
    CHECK(got.errors[1].code() == StatusCode::kUnavailable);
    CHECK(got.errors[1].message().find("sent nothing") != std::string::npos);
    CHECK(waited < 0.3 + 1.0);
    CHECK_FALSE(group.serving());
  }
  SECTION("heartbeats but no answer: the watchdog fails the step") {
    FakeWorker fake(local.port, "g");
    REQUIRE(wait_until([&] { return group.serving(); }));
    fake.start_heartbeats();
    Collector got;
    const auto t0 = std::chrono::steady_clock::now();
    group.submit(greedy_request(1, {1, 2, 3}, 5), got.callback());
    REQUIRE(got.wait_finished(1, std::chrono::seconds(10)));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(got.errors[1].code() == StatusCode::kDeadlineExceeded);
    CHECK(got.errors[1].message().find("watchdog") != std::string::npos);
    CHECK(waited >= 1.4);  // the heartbeats kept it alive past worker_timeout
    CHECK(waited < 1.5 + 1.0);
    CHECK(hub.healthy());  // the loop itself never stalled
  }
  hub.shutdown("test over");
  local.server->Shutdown();
}

TEST_CASE("plan N+1 goes out before step N's answer and decodes what N samples, its watchdog starts at that answer",
          "[router][worker][pipeline]") {
  router::GroupOptions options;
  options.step_timeout = std::chrono::milliseconds(1500);
  options.pipeline_depth = GENERATE(2, 1);
  INFO("pipeline depth " << options.pipeline_depth);
  router::WorkerHubService hub(options);
  auto local = testing::start_local_grpc_server({&hub});
  router::WorkerGroup& group = hub.group("g");
  FakeWorker fake(local.port, "g");
  REQUIRE(wait_until([&] { return group.serving(); }));
  Collector got;
  if (options.pipeline_depth == 2) {
    group.submit(greedy_request(1, {1, 2, 3}, 3), got.callback());
    const v1::StepPlan first = fake.read_plan();
    REQUIRE(first.new_sequences_size() == 1);
    const uint64_t seq = first.new_sequences(0).seq_id();
    const v1::StepPlan second = fake.read_plan();  // nothing answered yet
    REQUIRE(second.step_id() == first.step_id() + 1);
    REQUIRE(second.scheduled_size() == 1);
    CHECK(second.scheduled(0).seq_id() == seq);
    CHECK(second.scheduled(0).start_position() == 3);  // the token step 1 samples
    CHECK(second.scheduled(0).num_tokens() == 1);
    CHECK(second.scheduled(0).sample());
    // Plan 2 waits 2 s in all, longer than the step timeout, but only 1 s after the
    // worker could start it.
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    fake.answer(first, {7});
    REQUIRE(got.wait_tokens(1, 1, std::chrono::seconds(10)));
    const v1::StepPlan third = fake.read_plan();  // sent while the worker "runs" plan 2
    REQUIRE(third.scheduled_size() == 1);
    CHECK(third.scheduled(0).start_position() == 4);
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    fake.answer(second, {8});
    fake.answer(third, {9});  // the third token: max_tokens, nothing more planned for it
    REQUIRE(got.wait_finished(1, std::chrono::seconds(10)));
    CHECK(got.finished[1] == router::FinishReason::kLength);
    CHECK(got.tokens[1] == std::vector<int32_t>{7, 8, 9});
    const v1::StepPlan release = fake.read_plan();
    CHECK(release.scheduled_size() == 0);
    REQUIRE(release.released_seq_ids_size() == 1);
    CHECK(release.released_seq_ids(0) == seq);
    fake.answer(release, {});
  } else {  // depth 1 waits for each answer
    group.submit(greedy_request(1, {1, 2, 3}, 2), got.callback());
    const v1::StepPlan first = fake.read_plan();
    auto next = std::async(std::launch::async, [&] { return fake.read_plan(); });
    CHECK(next.wait_for(std::chrono::milliseconds(300)) == std::future_status::timeout);
    fake.answer(first, {7});
    REQUIRE(next.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    const v1::StepPlan second = next.get();
    REQUIRE(second.scheduled_size() == 1);
    CHECK(second.scheduled(0).start_position() == 3);
    fake.answer(second, {8});
    REQUIRE(got.wait_finished(1, std::chrono::seconds(10)));
    CHECK(got.tokens[1] == std::vector<int32_t>{7, 8});
  }
  hub.shutdown("test over");
  local.server->Shutdown();
}

TEST_CASE("a request its group gives back before any token is placed on another group", "[router][worker]") {
  router::GroupOptions options;
  options.worker_timeout = std::chrono::milliseconds(300);
  router::WorkerHubService hub(options);
  router::RouterService router_service(hub, "test-router");
  auto local = testing::start_local_grpc_server({&hub, &router_service});
  auto engine = tiny_engine();
  worker::WorkerSession real(*engine, session_options(local.port, "b", "real"));
  auto running = run_in_background(real);
  REQUIRE(wait_until([&] { return hub.group("b").serving(); }));
  const std::vector<int32_t> prompt{1, 17, 3, 250, 9};
  const auto want = alone(prompt, 8);
  // Silent from the start: group a is lost 300 ms after it attaches, so the request must
  // reach it within that (it goes to "a", first on a tie, at once).
  auto fake = std::make_unique<FakeWorker>(local.port, "a");
  REQUIRE(wait_until([&] { return hub.group("a").serving(); }));
  auto stub = v1::Router::NewStub(grpc::CreateChannel(local.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  const v1::GenerateRequest req = testing::greedy_generate_request("replaced", prompt, 8);
  auto reader = stub->Generate(&ctx, req);
  fake->read_plan();  // group a took it, and goes silent
  std::vector<int32_t> got;
  v1::GenerateResponse r;
  while (reader->Read(&r)) got.insert(got.end(), r.token_ids().begin(), r.token_ids().end());
  REQUIRE(reader->Finish().ok());
  CHECK(r.finished().reason() == v1::FINISH_REASON_LENGTH);
  CHECK(got == want);
  CHECK(real.stats().num_steps >= 8);
  fake.reset();
  real.stop();
  REQUIRE(running.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  hub.shutdown("test over");
  local.server->Shutdown();
}

TEST_CASE("a draining worker finishes its running requests, takes no new ones, then is let go", "[router][worker]") {
  router::GroupOptions options;
  options.unattached_wait = std::chrono::milliseconds(200);  // a submission after the drain ends soon
  router::WorkerHubService hub(options);
  auto local = testing::start_local_grpc_server({&hub});
  router::WorkerGroup& group = hub.group("g0");
  auto engine = tiny_engine();
  worker::WorkerSession session(*engine, session_options(local.port, "g0", "w"));
  auto running = run_in_background(session);
  REQUIRE(wait_until([&] { return group.serving(); }));
  const std::vector<int32_t> prompt{1, 44, 12, 7};
  const auto want = alone(prompt, 1000);
  Collector got;
  group.submit(greedy_request(1, prompt, 1000), got.callback());
  REQUIRE(got.wait_tokens(1, 1, std::chrono::seconds(30)));
  session.drain();
  REQUIRE(wait_until([&] { return !group.serving(); }, std::chrono::seconds(10)));
  group.submit(greedy_request(2, prompt, 5), got.callback());
  REQUIRE(got.wait_finished(2, std::chrono::seconds(30)));
  CHECK(got.finished[1] == router::FinishReason::kLength);
  CHECK(got.tokens[1] == want);
  CHECK(got.errors[2].code() == StatusCode::kUnavailable);
  // The router detached it for good once it was idle: run() returns OK by itself.
  REQUIRE(running.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  CHECK(running.get().is_ok());
  hub.shutdown("test over");
  local.server->Shutdown();
}
