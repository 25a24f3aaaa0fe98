// gateway/generation + router_pool against scripted routers on the real wire: token ids come
// back as text with stop strings cut (and the router call cancelled at the match), n choices
// are n calls, a replica that refuses as unavailable or stops answering is skipped, no ready
// replica is a 503, a cancelled job cancels its calls, and router statuses map to HTTP ones.
#include "gateway/generation.h"

#include <catch2/catch.hpp>

#include <atomic>
#include <future>
#include <thread>

#include "local_grpc_server.h"
#include "tokenizer/test_support.h"

using namespace tessera;
using namespace tessera::gateway;

namespace {

// A router that streams a fixed script of token ids, one per message.
struct ScriptedRouter final : v1::Router::Service {
  std::vector<int32_t> script;
  std::chrono::milliseconds gap{0};
  std::atomic<bool> ready{true};
  std::atomic<bool> refuse_unavailable{false};
  std::atomic<int> num_generate{0};
  std::atomic<int> num_cancelled{0};
  std::atomic<int> num_finished{0};

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    ++num_generate;
    if (refuse_unavailable) return {grpc::StatusCode::UNAVAILABLE, "draining"};
    for (int32_t id : script) {
      if (context->IsCancelled()) {
        ++num_cancelled;
        return grpc::Status::CANCELLED;
      }
      v1::GenerateResponse r;
      r.add_token_ids(id);
      if (request->sampling().logprobs()) {
        auto* lp = r.add_logprobs();
        lp->mutable_chosen()->set_token_id(id);
        lp->mutable_chosen()->set_logprob(-0.5f);
      }
      if (!writer->Write(r)) {
        ++num_cancelled;
        return grpc::Status::CANCELLED;
      }
      std::this_thread::sleep_for(gap);
    }
    v1::GenerateResponse last;
    last.mutable_finished()->set_reason(v1::FINISH_REASON_LENGTH);
    last.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(request->prompt_token_ids_size()));
    last.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(script.size()));
    last.mutable_usage()->set_cached_prompt_tokens(1);
    writer->Write(last);
    ++num_finished;
    return grpc::Status::OK;
  }
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::RouterStats* stats) override {
    stats->set_ready(ready);
    stats->set_healthy(true);
    stats->mutable_model()->set_name("m");
    stats->mutable_model()->set_context_length_tokens(64);
    return grpc::Status::OK;
  }
};

struct Recorder final : GenerationSink {
  std::mutex mutex;
  std::vector<ChoiceDelta> deltas;
  std::promise<std::pair<std::vector<ChoiceResult>, std::optional<ApiError>>> done;
  std::promise<void> first_delta;
  bool got_first = false;
  void on_delta(const ChoiceDelta& d, std::function<void()> resume) override {
    {
      std::lock_guard lock(mutex);
      deltas.push_back(d);
      if (!got_first) {
        got_first = true;
        first_delta.set_value();
      }
    }
    resume();
  }
  void on_done(const std::vector<ChoiceResult>& results, const std::optional<ApiError>& error) override {
    done.set_value({results, error});
  }
};

const tokenizer::Tokenizer& tok() { return tokenizer::testing::cached_reference("bytelevel_small"); }

std::vector<int32_t> ids_of(const std::string& text) {
  tokenizer::EncodeOptions eo;
  eo.add_special_tokens = tokenizer::SpecialTokens::kNone;
  auto ids = tok().encode(text, eo);
  REQUIRE(ids.is_ok());
  return {ids->begin(), ids->end()};
}

RouterPoolOptions pool_options(std::vector<std::string> addresses) {
  RouterPoolOptions o;
  o.addresses = std::move(addresses);
  o.poll_interval = std::chrono::milliseconds(50);
  o.stats_timeout = std::chrono::milliseconds(500);
  return o;
}

std::vector<ChoiceSpec> choices(size_t n) {
  std::vector<ChoiceSpec> out(n);
  for (auto& c : out) c.prompt = {1, 2, 3};
  return out;
}

auto wait_done(Recorder& r) {
  auto f = r.done.get_future();
  REQUIRE(f.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  return f.get();
}

JobOptions job(std::vector<std::string> stop = {}) {
  JobOptions o;
  o.request_id = "t";
  o.model = "m";
  o.stop = std::move(stop);
  o.arrival = std::chrono::steady_clock::now();
  o.timeout = std::chrono::seconds(10);
  return o;
}

}  // namespace

TEST_CASE("streamed token ids come back as the text they spell with usage", "[gateway][generation]") {
  ScriptedRouter router;
  router.script = ids_of("hello world, how are you");
  auto server = testing::start_local_grpc_server({&router});
  RouterPool pool(pool_options({server.address()}));
  REQUIRE(pool.wait_ready(std::chrono::seconds(5)));
  auto sink = std::make_shared<Recorder>();
  GenerationJob::start(pool, tok(), nullptr, job(), choices(1), sink);
  auto [results, error] = wait_done(*sink);
  REQUIRE_FALSE(error);
  REQUIRE(results.size() == 1);
  CHECK(results[0].text == "hello world, how are you");
  CHECK(results[0].finish_reason == "length");
  CHECK(results[0].usage.completion_tokens == router.script.size());
  CHECK(results[0].usage.prompt_tokens == 3);
  CHECK(results[0].usage.cached_prompt_tokens == 1);
  std::string streamed;
  for (const auto& d : sink->deltas) streamed += d.text;
  CHECK(streamed == results[0].text);
}

TEST_CASE("a stop string ends the choice before it across tokens and cancels the router call", "[gateway][generation]") {
  ScriptedRouter router;
  router.script = ids_of("one two three four five six seven eight nine ten");
  router.gap = std::chrono::milliseconds(20);
  auto server = testing::start_local_grpc_server({&router});
  RouterPool pool(pool_options({server.address()}));
  REQUIRE(pool.wait_ready(std::chrono::seconds(5)));
  auto sink = std::make_shared<Recorder>();
  GenerationJob::start(pool, tok(), nullptr, job({"e fo"}), choices(1), sink);
  auto [results, error] = wait_done(*sink);
  REQUIRE_FALSE(error);
  CHECK(results[0].text == "one two thre");
  CHECK(results[0].finish_reason == "stop");
  CHECK(results[0].reason == v1::FINISH_REASON_STOP_STRING);
  CHECK(results[0].usage.completion_tokens < router.script.size());
  for (int i = 0; i < 100 && router.num_cancelled == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(router.num_cancelled == 1);
  CHECK(router.num_finished == 0);
}

TEST_CASE("n choices are n router calls reported by index", "[gateway][generation]") {
  ScriptedRouter router;
  router.script = ids_of("abc");
  auto server = testing::start_local_grpc_server({&router});
  RouterPool pool(pool_options({server.address()}));
  REQUIRE(pool.wait_ready(std::chrono::seconds(5)));
  auto sink = std::make_shared<Recorder>();
  JobOptions o = job();
  o.logprobs = true;
  auto specs = choices(3);
  for (auto& c : specs) c.sampling.set_logprobs(true);
  GenerationJob::start(pool, tok(), nullptr, o, std::move(specs), sink);
  auto [results, error] = wait_done(*sink);
  REQUIRE_FALSE(error);
  REQUIRE(results.size() == 3);
  for (uint32_t i = 0; i < 3; ++i) {
    CHECK(results[i].index == i);
    CHECK(results[i].text == "abc");
    CHECK(results[i].logprobs.size() == router.script.size());
  }
  CHECK(router.num_generate == 3);
}

TEST_CASE("a replica that refuses as unavailable is skipped for another", "[gateway][generation]") {
  ScriptedRouter draining, good;
  draining.refuse_unavailable = true;
  draining.script = good.script = ids_of("ok");
  auto a = testing::start_local_grpc_server({&draining});
  auto b = testing::start_local_grpc_server({&good});
  RouterPool pool(pool_options({a.address(), b.address()}));
  for (int i = 0; i < 100 && pool.statuses()[0].ready + pool.statuses()[1].ready < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int k = 0; k < 4; ++k) {
    auto sink = std::make_shared<Recorder>();
    GenerationJob::start(pool, tok(), nullptr, job(), choices(1), sink);
    auto [results, error] = wait_done(*sink);
    REQUIRE_FALSE(error);
    CHECK(results[0].text == "ok");
  }
  CHECK(good.num_generate == 4);
  CHECK(draining.num_generate <= 2);  // tried at most once per poll that found it ready again
}

TEST_CASE("a replica that stops answering gets no new requests and none ready is a 503", "[gateway][generation]") {
  ScriptedRouter first, second;
  first.script = second.script = ids_of("x");
  auto a = testing::start_local_grpc_server({&first});
  auto b = testing::start_local_grpc_server({&second});
  RouterPool pool(pool_options({a.address(), b.address()}));
  for (int i = 0; i < 100 && pool.statuses()[0].ready + pool.statuses()[1].ready < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  a.server->Shutdown(std::chrono::system_clock::now());
  for (int i = 0; i < 100 && pool.statuses()[0].reachable; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_FALSE(pool.statuses()[0].ready);
  CHECK(pool.healthy());
  for (int k = 0; k < 3; ++k) {
    auto sink = std::make_shared<Recorder>();
    GenerationJob::start(pool, tok(), nullptr, job(), choices(1), sink);
    auto [results, error] = wait_done(*sink);
    CHECK_FALSE(error);
  }
  CHECK(second.num_generate == 3);
  CHECK(first.num_generate == 0);

  second.ready = false;
  for (int i = 0; i < 100 && pool.any_ready(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  auto sink = std::make_shared<Recorder>();
  GenerationJob::start(pool, tok(), nullptr, job(), choices(1), sink);
  auto [results, error] = wait_done(*sink);
  REQUIRE(error);
  CHECK(error->status == 503);
}

TEST_CASE("cancelling a job cancels its router calls and reports the client gone", "[gateway][generation]") {
  ScriptedRouter router;
  router.script = ids_of("a long answer that takes a while to produce, token by token");
  router.gap = std::chrono::milliseconds(30);
  auto server = testing::start_local_grpc_server({&router});
  RouterPool pool(pool_options({server.address()}));
  REQUIRE(pool.wait_ready(std::chrono::seconds(5)));
  auto sink = std::make_shared<Recorder>();
  auto j = GenerationJob::start(pool, tok(), nullptr, job(), choices(2), sink);
  REQUIRE(sink->first_delta.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  j->cancel(ApiError{499, "client_closed", "gone", "", ""});
  auto [results, error] = wait_done(*sink);
  REQUIRE(error);
  CHECK(error->status == 499);
  // Every call that reached the router was cancelled there (one may have been cancelled
  // before it got there), and none ran to its end.
  for (int i = 0; i < 100 && router.num_cancelled < router.num_generate; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(router.num_generate >= 1);
  CHECK(router.num_cancelled == router.num_generate);
  CHECK(router.num_finished == 0);
}

TEST_CASE("a job lets go of its lease last, after its sink and its router calls", "[gateway][generation]") {
  // The gateway's drain waits for the lease: anything the job still held after it (the
  // sink's HTTP exchange, a gRPC call) would outlive the server and the pool it uses.
  ScriptedRouter router;
  router.script = ids_of("short answer");
  auto server = testing::start_local_grpc_server({&router});
  RouterPool pool(pool_options({server.address()}));
  REQUIRE(pool.wait_ready(std::chrono::seconds(5)));
  auto sink = std::make_shared<Recorder>();
  auto done = sink->done.get_future();
  std::weak_ptr<Recorder> sink_seen = sink;
  std::promise<bool> sink_gone_at_lease_end;
  JobOptions o = job();
  o.lease = std::shared_ptr<void>(nullptr, [&](void*) { sink_gone_at_lease_end.set_value(sink_seen.expired()); });
  auto lease_end = sink_gone_at_lease_end.get_future();
  {
    auto j = GenerationJob::start(pool, tok(), nullptr, std::move(o), choices(2), std::move(sink));
    REQUIRE(done.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
    CHECK_FALSE(done.get().second);
    CHECK(lease_end.wait_for(std::chrono::milliseconds(50)) == std::future_status::timeout);  // `j` holds the job
  }
  REQUIRE(lease_end.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  CHECK(lease_end.get());
}

TEST_CASE("router statuses become the HTTP statuses a client expects", "[gateway][generation]") {
  CHECK(api_error_from_grpc({grpc::StatusCode::INVALID_ARGUMENT, "bad"}).status == 400);
  CHECK(api_error_from_grpc({grpc::StatusCode::NOT_FOUND, "model"}).status == 404);
  const ApiError busy = api_error_from_grpc({grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full"});
  CHECK(busy.status == 429);
  CHECK(busy.message == "queue full");
  CHECK(api_error_from_grpc({grpc::StatusCode::UNAVAILABLE, "no worker"}).status == 503);
  CHECK(api_error_from_grpc({grpc::StatusCode::DEADLINE_EXCEEDED, "late"}).status == 504);
  CHECK(api_error_from_grpc({grpc::StatusCode::INTERNAL, "oops"}).status == 500);
}
