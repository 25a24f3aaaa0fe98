// The serving tier as processes: tessera-router and tessera-worker binaries on the test
// model (SmolLM2, CPU), driven over gRPC like a gateway drives them. Concurrent requests
// give each request's greedy tokens alone; aborting half frees their KV; a killed worker
// fails its requests within a bound and a new worker brings the router back; a second
// worker group attached under load takes requests with none dropped; SIGTERM drains a
// worker and a router without losing the request in flight.
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "tessera/v1/router.grpc.pb.h"
#include "generate_request.h"
#include "worker/engine/engine_fixtures.h"

using namespace tessera;
using Clock = std::chrono::steady_clock;

namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// A child process whose stderr goes to a log file; killed when it goes out of scope.
class Process {
 public:
  Process(std::vector<std::string> argv, std::string log) : log_(std::move(log)) {
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      FILE* f = std::fopen(log_.c_str(), "w");
      if (f) {
        dup2(fileno(f), 2);
        dup2(fileno(f), 1);
      }
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Process() { kill(SIGKILL); }
  void kill(int sig) {
    if (pid_ > 0) {
      ::kill(pid_, sig);
      if (sig == SIGKILL) wait();
    }
  }
  int wait() {
    int status = 0;
    if (pid_ > 0) waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  uint32_t cached = 0;
};

class Cluster {
 public:
  explicit Cluster(std::vector<std::string> router_settings = {})
      : dir_(std::filesystem::temp_directory_path() / ("tessera-cluster-" + std::to_string(getpid()))) {
    std::filesystem::create_directories(dir_);
    port_ = free_port();
    std::vector<std::string> argv{TESSERA_ROUTER_BIN, "--set", "router.listen=127.0.0.1:" + std::to_string(port_), "--set",
                                  "router.metrics_port=" + std::to_string(free_port()), "--set", "router.drain_timeout_s=2"};
    for (const std::string& kv : router_settings) {
      argv.push_back("--set");
      argv.push_back(kv);
    }
    router_ = std::make_unique<Process>(argv, (dir_ / "router.log").string());
    stub_ = v1::Router::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials()));
  }
  ~Cluster() {
    workers_.clear();
    router_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Starts a worker of `group` with `threads` compute threads; returns its index.
  size_t start_worker(const std::string& group, int threads) {
    const size_t i = workers_.size();
    workers_.push_back(std::make_unique<Process>(
        std::vector<std::string>{TESSERA_WORKER_BIN, "--set", "model.path=" + testing::require_test_model(), "--set",
                                 "worker.router_address=127.0.0.1:" + std::to_string(port_), "--set",
                                 "worker.metrics_port=" + std::to_string(free_port()), "--set", "worker.group=" + group,
                                 "--set", "worker.num_threads=" + std::to_string(threads), "--set",
                                 "worker.heartbeat_interval_ms=200"},
        (dir_ / ("worker" + std::to_string(i) + ".log")).string()));
    return i;
  }
  Process& worker(size_t i) { return *workers_[i]; }
  Process& router() { return *router_; }
  v1::RouterStats stats() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::RouterStats s;
    (void)stub_->GetStats(&ctx, v1::GetStatsRequest(), &s);
    return s;
  }
  // Waits until `n` groups serve.
  bool wait_serving(int n, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      const v1::RouterStats s = stats();
      int serving = 0;
      for (const auto& g : s.groups()) serving += g.num_attached_ranks() == g.num_ranks() && g.num_ranks() > 0 ? 1 : 0;
      if (s.ready() && serving >= n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  Outcome generate(const std::string& id, const std::vector<int32_t>& prompt, uint32_t max_tokens,
                   std::function<void(size_t)> on_token = {}) {
    grpc::ClientContext ctx;
    const v1::GenerateRequest req = testing::greedy_generate_request(id, prompt, max_tokens);
    auto reader = stub_->Generate(&ctx, req);
    Outcome o;
    v1::GenerateResponse r;
    while (reader->Read(&r)) {
      o.tokens.insert(o.tokens.end(), r.token_ids().begin(), r.token_ids().end());
      if (r.has_finished()) {
        o.reason = r.finished().reason();
        o.cached = r.usage().cached_prompt_tokens();
      }
      if (on_token && r.token_ids_size()) on_token(o.tokens.size());
    }
    o.status = reader->Finish();
    return o;
  }
  bool abort(const std::string& id) {
    grpc::ClientContext ctx;
    v1::AbortRequest req;
    req.set_request_id(id);
    v1::AbortResponse resp;
    return stub_->Abort(&ctx, req, &resp).ok() && resp.found();
  }
  std::string logs() const {
    std::string s = "router:\n" + router_->log();
    for (size_t i = 0; i < workers_.size(); ++i) s += "worker " + std::to_string(i) + ":\n" + workers_[i]->log();
    return s;
  }

 private:
  std::filesystem::path dir_;
  int port_ = 0;
  std::unique_ptr<Process> router_;
  std::vector<std::unique_ptr<Process>> workers_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

// Prompt i: ids above the special tokens, different for every i.
std::vector<int32_t> prompt_of(int i, int n) {
  std::vector<int32_t> p;
  for (int j = 0; j < n; ++j) p.push_back(17 + (7919 * (j + 1) + 104729 * i) % 40000);
  return p;
}

}  // namespace

constexpr int kPrompts = 8;
std::vector<int32_t> short_prompt(int i) { return prompt_of(i, 12 + 3 * i); }

// Each short prompt alone through the cluster: the tokens every other path must give.
std::vector<std::vector<int32_t>> alone(Cluster& cluster) {
  std::vector<std::vector<int32_t>> want(kPrompts);
  for (int i = 0; i < kPrompts; ++i) {
    const Outcome o = cluster.generate("alone-" + std::to_string(i), short_prompt(i), 12);
    REQUIRE(o.status.ok());
    REQUIRE(o.tokens.size() == 12);
    want[i] = o.tokens;
  }
  return want;
}

TEST_CASE("router + worker processes: 32 concurrent requests give each one's tokens alone", "[cluster]") {
  Cluster cluster;
  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  const auto want = alone(cluster);
  std::vector<std::future<Outcome>> all;
  for (int r = 0; r < 32; ++r) {
    all.push_back(std::async(std::launch::async, [&, r] {
      return cluster.generate("c-" + std::to_string(r), short_prompt(r % kPrompts), 12);
    }));
  }
  for (int r = 0; r < 32; ++r) {
    const Outcome o = all[r].get();
    INFO("request " << r << "\n" << cluster.logs());
    REQUIRE(o.status.ok());
    CHECK(o.reason == v1::FINISH_REASON_LENGTH);
    CHECK(o.tokens == want[r % kPrompts]);
  }
}

TEST_CASE("router + worker processes: aborting half of 16 streams mid-generation frees their KV pages",
          "[cluster]") {
  // Without the prefix cache every used page belongs to a running sequence, so the count
  // is exact.
  Cluster cluster({"router.enable_prefix_cache=false"});
  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  constexpr int kPrompt = 40, kMax = 120, kPage = 16;
  std::array<std::atomic<int>, 16> streamed{};
  std::vector<std::future<Outcome>> all;
  for (int r = 0; r < 16; ++r) {
    all.push_back(std::async(std::launch::async, [&, r] {
      return cluster.generate("long-" + std::to_string(r), prompt_of(100 + r, kPrompt), kMax,
                              [&, r](size_t n) { streamed[r] = static_cast<int>(n); });
    }));
  }
  auto all_streaming = [&] {
    for (auto& n : streamed) {
      if (n < 2) return false;
    }
    return true;
  };
  const auto until = Clock::now() + std::chrono::seconds(60);
  while (!all_streaming() && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(all_streaming());
  for (int r = 0; r < 16; r += 2) REQUIRE(cluster.abort("long-" + std::to_string(r)));
  bool eight_left = false;
  for (int i = 0; i < 500 && !eight_left; ++i) {
    eight_left = cluster.stats().groups(0).num_running() == 8;
    if (!eight_left) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(eight_left);
  // The pages in use are at most what the 8 remaining sequences need (a page may be
  // allocated up to two tokens ahead of what has streamed: the step in flight).
  const uint64_t used = cluster.stats().groups(0).num_kv_pages_used();
  uint64_t bound = 0;
  for (int r = 1; r < 16; r += 2) bound += (kPrompt + streamed[r] + 2 + kPage - 1) / kPage;
  CHECK(used <= bound);
  for (int r = 0; r < 16; ++r) {
    const Outcome o = all[r].get();
    INFO("request " << r);
    REQUIRE(o.status.ok());
    if (r % 2 == 0) {
      CHECK(o.reason == v1::FINISH_REASON_ABORTED);
      CHECK(o.tokens.size() < static_cast<size_t>(kMax));
    } else {
      CHECK(o.reason == v1::FINISH_REASON_LENGTH);
      CHECK(o.tokens.size() == static_cast<size_t>(kMax));
    }
  }
  bool empty = false;
  for (int i = 0; i < 200 && !empty; ++i) {
    const v1::RouterStats s = cluster.stats();
    empty = s.num_running() == 0 && s.num_waiting() == 0 && s.groups(0).num_kv_pages_used() == 0;
    if (!empty) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(empty);
}

TEST_CASE("router + worker processes: a killed worker fails its requests within a bound, a new one rejoins",
          "[cluster]") {
  Cluster cluster;
  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  const auto want = alone(cluster);
  std::atomic<int> started{0};
  std::vector<std::future<Outcome>> all;
  for (int r = 0; r < 8; ++r) {
    all.push_back(std::async(std::launch::async, [&, r] {
      bool counted = false;
      return cluster.generate("doomed-" + std::to_string(r), prompt_of(200 + r, 20), 400, [&](size_t) {
        if (!counted) {
          counted = true;
          ++started;
        }
      });
    }));
  }
  const auto until = Clock::now() + std::chrono::seconds(60);
  while (started < 8 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(started == 8);
  const auto killed = Clock::now();
  cluster.worker(0).kill(SIGKILL);
  for (auto& f : all) {
    REQUIRE(f.wait_until(killed + std::chrono::seconds(5)) == std::future_status::ready);
    const Outcome o = f.get();
    // Tokens went out, so the failure is the stream's finish.
    CHECK(o.status.ok());
    CHECK(o.reason == v1::FINISH_REASON_ERROR);
    CHECK(o.tokens.size() < 400);
  }
  WARN("in-flight requests failed within " << std::chrono::duration<double>(Clock::now() - killed).count()
                                          << " s of the worker's death");
  bool unready = false;
  for (int i = 0; i < 200 && !unready; ++i) {
    unready = !cluster.stats().ready();
    if (!unready) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(unready);
  const Outcome refused = cluster.generate("no-worker", short_prompt(0), 4);
  CHECK(refused.status.error_code() == grpc::StatusCode::UNAVAILABLE);

  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  const Outcome again = cluster.generate("again", short_prompt(3), 12);
  REQUIRE(again.status.ok());
  CHECK(again.tokens == want[3]);
}

TEST_CASE("router + worker processes: a second group attached under load takes requests, none dropped",
          "[cluster]") {
  // One compute thread per worker: on a 2-core machine the second group adds a core.
  Cluster cluster;
  cluster.start_worker("g0", 1);
  REQUIRE(cluster.wait_serving(1));
  const auto want = alone(cluster);
  std::atomic<bool> stop{false};
  std::atomic<int> done{0};
  std::mutex mutex;
  std::vector<std::string> failures;
  std::vector<std::thread> clients;
  for (int c = 0; c < 12; ++c) {
    clients.emplace_back([&, c] {
      for (int k = 0; !stop; ++k) {
        const int p = (c + k) % kPrompts;
        const Outcome o = cluster.generate("load-" + std::to_string(c) + "-" + std::to_string(k), short_prompt(p), 12);
        if (o.status.ok() && o.reason == v1::FINISH_REASON_LENGTH && o.tokens == want[p]) {
          ++done;
        } else {
          std::lock_guard lock(mutex);
          failures.push_back(o.status.ok() ? "finish " + std::to_string(o.reason) : o.status.error_message());
        }
      }
    });
  }
  const auto window = std::chrono::seconds(4);
  std::this_thread::sleep_for(window);
  const int one_group = done.load();
  cluster.start_worker("g1", 1);
  REQUIRE(cluster.wait_serving(2));
  const int at_attach = done.load();
  std::this_thread::sleep_for(window);
  const int two_groups = done.load() - at_attach;
  const v1::RouterStats s = cluster.stats();
  stop = true;
  for (auto& t : clients) t.join();
  WARN("requests finished in " << window.count() << " s: one group " << one_group << ", two groups " << two_groups);
  CHECK(failures.empty());
  for (size_t i = 0; i < std::min<size_t>(failures.size(), 5); ++i) WARN(failures[i]);
  REQUIRE(s.groups_size() == 2);
  // Both groups were running requests at the end of the second window.
  CHECK(s.groups(0).num_running() > 0);
  CHECK(s.groups(1).num_running() > 0);
}

TEST_CASE("router + worker processes: SIGTERM drains the router and the worker without losing a request",
          "[cluster]") {
  Cluster cluster;
  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  std::atomic<int> streamed{0};
  // The worker drains first: its running request finishes, then it exits by itself.
  auto running = std::async(std::launch::async, [&] {
    return cluster.generate("drain-worker", prompt_of(300, 16), 150, [&](size_t n) { streamed = static_cast<int>(n); });
  });
  const auto until = Clock::now() + std::chrono::seconds(60);
  while (streamed < 2 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(streamed >= 2);
  cluster.worker(0).kill(SIGTERM);
  const Outcome finished = running.get();
  REQUIRE(finished.status.ok());
  CHECK(finished.reason == v1::FINISH_REASON_LENGTH);
  CHECK(finished.tokens.size() == 150);
  CHECK(cluster.worker(0).wait() == 0);
  CHECK(cluster.worker(0).log().find("draining") != std::string::npos);

  // The router drains: a request in flight finishes, a new one is refused, it exits 0.
  cluster.start_worker("g0", 2);
  REQUIRE(cluster.wait_serving(1));
  streamed = 0;
  running = std::async(std::launch::async, [&] {
    return cluster.generate("drain-router", prompt_of(301, 16), 60, [&](size_t n) { streamed = static_cast<int>(n); });
  });
  while (streamed < 2 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(streamed >= 2);
  cluster.router().kill(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const Outcome refused = cluster.generate("too-late", short_prompt(1), 4);
  CHECK(refused.status.error_code() == grpc::StatusCode::UNAVAILABLE);
  const Outcome last = running.get();
  REQUIRE(last.status.ok());
  CHECK(last.reason == v1::FINISH_REASON_LENGTH);
  CHECK(last.tokens.size() == 60);
  CHECK(cluster.router().wait() == 0);
  CHECK(cluster.router().log().find("drained") != std::string::npos);
}
