// worker/service/worker_session against an in-process fake router: the worker describes
// itself, executes plans in order (a bad plan is a WorkerFault, not a crash), forgets its
// sequences and re-dials when the stream breaks, and exits on a final Detach.
#include "worker/service/worker_session.h"

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <mutex>

#include "tessera/v1/worker.grpc.pb.h"
#include "local_grpc_server.h"
#include "worker/engine/engine_fixtures.h"
#include "worker/service/plan_codec.h"
#include "worker/service/step_trace.h"

using namespace tessera;

namespace {

using Stream = grpc::ServerReaderWriter<v1::RouterMessage, v1::WorkerMessage>;

// Runs the script of the n-th attachment (0-based) on each Attach call.
class FakeHub final : public v1::WorkerHub::Service {
 public:
  std::vector<std::function<void(Stream*)>> scripts;
  std::mutex mutex;
  size_t calls = 0;
  grpc::Status Attach(grpc::ServerContext*, Stream* stream) override {
    size_t n;
    {
      std::lock_guard lock(mutex);
      n = calls++;
    }
    if (n < scripts.size()) scripts[n](stream);
    return grpc::Status::OK;
  }
};

v1::RouterMessage accepted() {
  v1::RouterMessage m;
  m.mutable_accepted()->set_group_id(1);
  return m;
}

v1::RouterMessage plan_msg(uint64_t step, const std::vector<int32_t>& prompt, bool new_seq, uint32_t start,
                           uint32_t n, std::vector<uint32_t> pages, uint64_t seq = 1) {
  v1::RouterMessage m;
  v1::StepPlan* p = m.mutable_plan();
  p->set_step_id(step);
  if (new_seq) {
    v1::NewSequence* s = p->add_new_sequences();
    s->set_seq_id(seq);
    s->mutable_sampling()->set_temperature(0);
    s->mutable_token_ids()->Assign(prompt.begin(), prompt.end());
    s->set_num_prompt_tokens(static_cast<uint32_t>(prompt.size()));
  }
  v1::ScheduledSequence* sc = p->add_scheduled();
  sc->set_seq_id(seq);
  sc->set_start_position(start);
  sc->set_num_tokens(n);
  for (uint32_t page : pages) sc->add_new_pages(page);
  sc->set_sample(true);
  return m;
}

std::unique_ptr<engine::Engine> tiny_engine() {
  engine::EngineOptions o;
  o.page_size = 4;
  o.kv_cache_tokens = 256;
  return testing::load_family("llama3", o);
}

}  // namespace

TEST_CASE("the worker serves plans, reports faults, re-dials after a break and exits on final detach",
          "[worker][service]") {
  const std::vector<int32_t> prompt{1, 17, 42, 99, 7};
  // What the engine answers alone.
  auto reference = tiny_engine();
  engine::StepInput in;
  engine::SamplingOptions greedy;
  greedy.temperature = 0;
  in.new_sequences.push_back({1, prompt, 5, greedy, {}, 0});
  in.scheduled.push_back({1, 0, 5, {0, 1}, true});
  auto ref_out = reference->step(in);
  REQUIRE(ref_out.is_ok());
  const int32_t want = ref_out->sampled[0].sample.token_id;

  FakeHub hub;
  std::promise<v1::WorkerMessage> first_hello, first_result, bad_plan_reply, reattached_reply;
  hub.scripts.push_back([&](Stream* s) {
    v1::WorkerMessage m;
    REQUIRE(s->Read(&m));
    first_hello.set_value(m);
    s->Write(accepted());
    s->Write(plan_msg(1, prompt, true, 0, 5, {0, 1}));
    REQUIRE(s->Read(&m));
    first_result.set_value(m);
    s->Write(plan_msg(2, prompt, false, 0, 1, {}, /*seq=*/99));  // a sequence the worker never saw
    REQUIRE(s->Read(&m));
    bad_plan_reply.set_value(m);
    // Return without a Detach: the stream breaks; the worker must dial again.
  });
  hub.scripts.push_back([&](Stream* s) {
    v1::WorkerMessage m;
    REQUIRE(s->Read(&m));
    s->Write(accepted());
    s->Write(plan_msg(3, prompt, false, 5, 1, {}));  // seq 1 was forgotten with the stream
    REQUIRE(s->Read(&m));
    reattached_reply.set_value(m);
    v1::RouterMessage bye;
    bye.mutable_detach()->set_reason("test over");
    bye.mutable_detach()->set_final(true);
    s->Write(bye);
    while (s->Read(&m)) {
    }
  });
  auto local = testing::start_local_grpc_server({&hub});
  const int port = local.port;

  auto engine = tiny_engine();
  const std::string trace_path =
      (std::filesystem::temp_directory_path() / ("worker_session_trace." + std::to_string(getpid()) + ".jsonl")).string();
  auto opened = worker::StepTrace::open(trace_path);
  REQUIRE(opened.is_ok());
  std::unique_ptr<worker::StepTrace> trace = std::move(*opened);
  worker::WorkerSessionOptions options{"127.0.0.1:" + std::to_string(port), "g0", "test-worker", "tiny",
                                       std::chrono::milliseconds(20), std::chrono::milliseconds(200)};
  options.step_trace = trace.get();
  worker::WorkerSession session(*engine, options);
  auto done = std::async(std::launch::async, [&] { return session.run(); });
  REQUIRE(done.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  const Status result = done.get();
  INFO(result.message());
  REQUIRE(result.is_ok());

  const auto hello = first_hello.get_future().get();
  REQUIRE(hello.has_describe());
  REQUIRE(hello.describe().protocol_version() == worker::kProtocolVersion);
  REQUIRE(hello.describe().group() == "g0");
  REQUIRE(hello.describe().worker_id() == "test-worker");
  REQUIRE(hello.describe().num_kv_pages() == 64);
  REQUIRE(hello.describe().page_size_tokens() == 4);

  const auto r1 = first_result.get_future().get();
  REQUIRE(r1.has_result());
  REQUIRE(r1.result().step_id() == 1);
  REQUIRE(r1.result().sampled_size() == 1);
  REQUIRE(r1.result().sampled(0).token_id() == want);

  const auto bad = bad_plan_reply.get_future().get();
  REQUIRE(bad.has_fault());
  REQUIRE(bad.fault().step_id() == 2);
  REQUIRE(bad.fault().code() == "INVALID_ARGUMENT");
  REQUIRE(!bad.fault().fatal());

  const auto again = reattached_reply.get_future().get();
  REQUIRE(again.has_fault());  // the old sequence is gone on the new stream
  const worker::WorkerSessionStats stats = session.stats();
  REQUIRE(stats.num_attachments == 2);
  // One plan ran a forward pass: its phases are counted, and they are parts of the time
  // spent on plans (the two refused plans count only in decode, encode and the total).
  REQUIRE(stats.num_steps == 1);
  REQUIRE(stats.num_faults == 2);
  REQUIRE(stats.engine.forward > 0);
  REQUIRE(stats.engine.prepare >= 0);
  REQUIRE(stats.engine.sample > 0);
  const double parts =
      stats.decode_seconds + stats.engine.prepare + stats.engine.forward + stats.engine.sample + stats.encode_seconds;
  REQUIRE(parts <= stats.step_seconds * (1 + 1e-9) + 1e-9);
  REQUIRE(parts >= 0.5 * stats.step_seconds);

  // The trace has a line per plan, refused ones included, in order.
  trace.reset();
  std::ifstream trace_file(trace_path);
  const std::string lines((std::istreambuf_iterator<char>(trace_file)), std::istreambuf_iterator<char>());
  const auto first = lines.substr(0, lines.find('\n'));
  CHECK(first.find("{\"step\":1,") == 0);
  CHECK(first.find("\"ok\":true,\"slices\":1,\"decode_rows\":0,\"tokens\":5,\"context\":5,\"attended\":15,"
                   "\"sampled\":1}") != std::string::npos);
  CHECK(std::count(lines.begin(), lines.end(), '\n') == 3);
  CHECK(lines.find("{\"step\":2,") != std::string::npos);
  CHECK(lines.find("{\"step\":3,") != std::string::npos);
  std::remove(trace_path.c_str());
  local.server->Shutdown();
}

TEST_CASE("a step trace line holds the step's shape", "[worker][service]") {
  engine::StepInput in;
  in.scheduled.push_back({1, 300, 1, {}, true});    // a decode at position 300
  in.scheduled.push_back({2, 0, 128, {}, false});   // a first prefill chunk
  in.scheduled.push_back({3, 128, 64, {}, true});   // a last chunk that samples
  const std::string l = worker::StepTrace::line(7, in, 1.5, 0.02, true);
  CHECK(l == "{\"step\":7,\"t\":1.500000,\"seconds\":0.020000,\"ok\":true,\"slices\":3,\"decode_rows\":1,"
             "\"tokens\":193,\"context\":621,\"attended\":18829,\"sampled\":2}");
}

TEST_CASE("a step trace that cannot be opened is a clear error", "[worker][service]") {
  auto t = worker::StepTrace::open("/nonexistent-dir/trace.jsonl");
  REQUIRE(!t.is_ok());
  CHECK(t.status().message().find("worker.step_trace_path: cannot open /nonexistent-dir/trace.jsonl") == 0);
}

TEST_CASE("stop() ends a worker that cannot reach its router", "[worker][service]") {
  auto engine = tiny_engine();
  worker::WorkerSession session(*engine, {"127.0.0.1:1", "g0", "", "tiny", std::chrono::milliseconds(20),
                                          std::chrono::milliseconds(100)});
  auto done = std::async(std::launch::async, [&] { return session.run(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  session.stop();
  REQUIRE(done.wait_for(std::chrono::seconds(30)) == std::future_status::ready);
  REQUIRE(done.get().code() == StatusCode::kCancelled);
}
