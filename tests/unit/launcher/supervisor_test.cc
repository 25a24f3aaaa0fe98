// launcher/supervisor: children's lines come out whole and prefixed; a child that exits is
// restarted after its backoff; a crash loop, a child that fails before it was ever ready,
// and a missing executable make it give up and stop the rest; stop() goes by stop order
// with SIGTERM and escalates to SIGKILL; kill_all ends a stop at once.
#include "launcher/supervisor.h"

#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace tessera::launcher;
using namespace std::chrono_literals;

namespace {

// Every line the supervisor prints, in order.
struct Lines {
  std::mutex mutex;
  std::vector<std::string> lines;

  std::function<void(std::string_view)> sink() {
    return [this](std::string_view line) {
      std::lock_guard lock(mutex);
      lines.emplace_back(line);
    };
  }
  std::vector<std::string> copy() {
    std::lock_guard lock(mutex);
    return lines;
  }
  // Index of the first line containing `text`, or -1.
  int find(const std::string& text) {
    std::lock_guard lock(mutex);
    for (size_t i = 0; i < lines.size(); ++i) {
      if (lines[i].find(text) != std::string::npos) return static_cast<int>(i);
    }
    return -1;
  }
  bool wait_for(const std::string& text, std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      if (find(text) >= 0) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
};

bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return done();
}

ChildSpec shell(std::string name, std::string script, Readiness readiness = Readiness::kOnStart) {
  ChildSpec c;
  c.name = std::move(name);
  c.argv = {"/bin/sh", "-c", std::move(script)};
  c.readiness = readiness;
  c.stop_timeout = 5s;
  return c;
}

// Prints "up" once its SIGTERM trap is in place; on SIGTERM prints "got TERM" and exits 0.
constexpr const char* kStopsOnTerm = "trap 'echo got TERM; exit 0' TERM; echo up; while :; do sleep 0.05; done";

SupervisorOptions fast_options(Lines& lines) {
  SupervisorOptions o;
  o.initial_backoff = 50ms;
  o.max_backoff = 400ms;
  o.event_prefix = "sup: ";
  o.on_line = lines.sink();
  return o;
}

const ChildStopReport& report_of(const StopReport& r, const std::string& name) {
  auto it = std::find_if(r.children.begin(), r.children.end(), [&](const ChildStopReport& c) { return c.name == name; });
  REQUIRE(it != r.children.end());
  return *it;
}

}  // namespace

TEST_CASE("each line of a child's stdout and stderr comes out whole behind the child's name", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  REQUIRE(sup.start({shell("a", "printf 'par'; sleep 0.2; printf 'tial\\nsecond\\n'; echo to-stderr >&2; exec sleep 60"),
                     shell("worker/0", "echo hello; printf 'no newline'; exec sleep 60")})
              .is_ok());
  REQUIRE(lines.wait_for("[a] to-stderr"));
  REQUIRE(lines.wait_for("[worker/0] hello"));
  const StopReport report = sup.stop();
  // The child's last line, without its newline, is printed when its pipe closes.
  REQUIRE(lines.find("[worker/0] no newline") >= 0);
  REQUIRE(lines.find("[a] partial") >= 0);
  REQUIRE(lines.find("[a] second") >= 0);
  REQUIRE(lines.find("[a] par") == lines.find("[a] partial"));  // never split
  REQUIRE(lines.find("sup: started a (pid ") >= 0);
  for (const std::string& l : lines.copy()) {
    CAPTURE(l);
    REQUIRE((l.starts_with("[a] ") || l.starts_with("[worker/0] ") || l.starts_with("sup: ")));
  }
  REQUIRE(report.clean());
}

TEST_CASE("a child that exits is restarted after its backoff", "[supervisor]") {
  Lines lines;
  const auto marker = std::filesystem::temp_directory_path() / ("supervisor_test_" + std::to_string(::getpid()));
  std::filesystem::remove(marker);
  Supervisor sup(fast_options(lines));
  REQUIRE(sup.start({shell("c", "if [ -e '" + marker.string() + "' ]; then echo second; exec sleep 60; fi; touch '" +
                                    marker.string() + "'; echo first; exit 1")})
              .is_ok());
  REQUIRE(lines.wait_for("[c] second"));
  REQUIRE(lines.find("[c] first") >= 0);
  REQUIRE(lines.find("sup: c exited with status 1 after") >= 0);
  REQUIRE(lines.find("restarting it in 0.1 s") >= 0);
  REQUIRE(lines.find("sup: restarted c (pid ") >= 0);
  const SupervisorSnapshot s = sup.snapshot();
  REQUIRE(s.children.at(0).num_restarts == 1);
  REQUIRE(s.children.at(0).pid != 0);
  REQUIRE(s.children.at(0).last_exit == "exited with status 1");
  REQUIRE(!s.failure);
  REQUIRE(sup.stop().clean());
  std::filesystem::remove(marker);
}

TEST_CASE("a ready child killed by a signal is restarted and must become ready again", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  REQUIRE(sup.start({shell("worker/0", "exec sleep 60", Readiness::kMarked)}).is_ok());
  REQUIRE(wait_until([&] { return sup.snapshot().children.at(0).pid != 0; }));
  const pid_t first = sup.snapshot().children.at(0).pid;
  sup.mark_ready(0, first + 100000);  // another incarnation's pid: ignored
  sup.mark_ready(0, first);
  REQUIRE(wait_until([&] { return sup.snapshot().children.at(0).phase == ChildPhase::kReady; }));
  REQUIRE(::kill(first, SIGKILL) == 0);
  REQUIRE(wait_until([&] {
    const ChildSnapshot c = sup.snapshot().children.at(0);
    return c.num_restarts == 1 && c.pid != 0 && c.pid != first;
  }));
  const ChildSnapshot c = sup.snapshot().children.at(0);
  REQUIRE(c.phase == ChildPhase::kRunning);
  REQUIRE(c.ever_ready);
  REQUIRE(c.last_exit.starts_with("was killed by signal 9"));
  REQUIRE(lines.find("sup: worker/0 was killed by signal 9") >= 0);
  REQUIRE(sup.stop().clean());
}

TEST_CASE("restart backoff doubles from the initial wait up to its cap", "[supervisor]") {
  SupervisorOptions o;  // 1 s, capped at 30 s
  std::vector<long> waits_s;
  for (int n = 1; n <= 8; ++n) waits_s.push_back(static_cast<long>(restart_backoff(o, n).count() / 1000));
  REQUIRE(waits_s == std::vector<long>{1, 2, 4, 8, 16, 30, 30, 30});
  REQUIRE(restart_backoff(o, 1000).count() == 30'000);
}

TEST_CASE("a child that keeps failing at once makes the supervisor give up and stop the others", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  REQUIRE(sup.start({shell("steady", kStopsOnTerm), shell("crasher", "sleep 0.2; echo boom; exit 7")}).is_ok());
  const auto report = sup.wait_stopped(10s);
  REQUIRE(report);
  REQUIRE(report->failure);
  CHECK(*report->failure == "crasher exited with status 7, 3 times in a row within 5.0 s of its start");
  REQUIRE(!report->clean());
  REQUIRE(report_of(*report, "crasher").outcome == StopOutcome::kFailed);
  REQUIRE(report_of(*report, "steady").outcome == StopOutcome::kExited);
  REQUIRE(lines.find("[steady] got TERM") >= 0);
  REQUIRE(lines.find("sup: giving up: crasher exited with status 7") >= 0);
  const SupervisorSnapshot s = sup.snapshot();
  REQUIRE(s.phase == SupervisorSnapshot::Phase::kStopped);
  REQUIRE(s.children.at(1).num_restarts == 2);
}

TEST_CASE("a child that fails before it was ever ready makes the supervisor give up without a restart", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  REQUIRE(sup.start({shell("router", kStopsOnTerm, Readiness::kMarked),
                     shell("worker/0", "echo 'tensor parallelism is not built yet' >&2; exit 1", Readiness::kMarked)})
              .is_ok());
  const auto report = sup.wait_stopped(10s);
  REQUIRE(report);
  REQUIRE(report->failure == "worker/0 exited with status 1 before it was ever ready");
  REQUIRE(sup.snapshot().children.at(1).num_restarts == 0);
  // The child's own explanation comes before the supervisor's verdict.
  const int said = lines.find("[worker/0] tensor parallelism is not built yet");
  REQUIRE(said >= 0);
  REQUIRE(said < lines.find("sup: giving up"));
}

TEST_CASE("a missing executable makes the supervisor give up naming it", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  ChildSpec missing;
  missing.name = "gateway";
  missing.argv = {"/nonexistent/tessera-gateway"};
  REQUIRE(sup.start({shell("router", kStopsOnTerm), missing}).is_ok());
  const auto report = sup.wait_stopped(10s);
  REQUIRE(report);
  REQUIRE(report->failure == "cannot run /nonexistent/tessera-gateway: No such file or directory");
  REQUIRE(report_of(*report, "router").outcome == StopOutcome::kExited);
}

TEST_CASE("stop sends SIGTERM by stop order and waits for each stage before the next", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  std::vector<ChildSpec> children = {shell("worker/0", kStopsOnTerm), shell("gateway", kStopsOnTerm),
                                     shell("router", kStopsOnTerm), shell("worker/1", kStopsOnTerm)};
  children[0].stop_order = 2;
  children[1].stop_order = 0;
  children[2].stop_order = 1;
  children[3].stop_order = 2;
  REQUIRE(sup.start(std::move(children)).is_ok());
  for (const char* name : {"[worker/0] up", "[gateway] up", "[router] up", "[worker/1] up"}) REQUIRE(lines.wait_for(name));
  const StopReport report = sup.stop();
  REQUIRE(report.clean());
  const int gateway = lines.find("[gateway] got TERM");
  const int router = lines.find("[router] got TERM");
  const int worker0 = lines.find("[worker/0] got TERM");
  const int worker1 = lines.find("[worker/1] got TERM");
  REQUIRE(gateway >= 0);
  REQUIRE(gateway < router);
  REQUIRE(router < worker0);
  REQUIRE(router < worker1);
  for (const ChildStopReport& c : report.children) {
    CAPTURE(c.name);
    REQUIRE(c.outcome == StopOutcome::kExited);
    REQUIRE(c.exit == "exited with status 0");
  }
  // No restart of a child that exits while stopping.
  for (const ChildSnapshot& c : sup.snapshot().children) REQUIRE(c.num_restarts == 0);
}

TEST_CASE("stop escalates to SIGKILL for a child that ignores SIGTERM and then stops the next stage", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  ChildSpec stubborn = shell("stubborn", "trap '' TERM; echo up; while :; do sleep 0.05; done");
  stubborn.stop_timeout = 300ms;
  ChildSpec later = shell("later", kStopsOnTerm);
  later.stop_order = 1;
  REQUIRE(sup.start({stubborn, later}).is_ok());
  REQUIRE(lines.wait_for("[stubborn] up"));
  REQUIRE(lines.wait_for("[later] up"));
  const auto t0 = std::chrono::steady_clock::now();
  const StopReport report = sup.stop();
  REQUIRE(std::chrono::steady_clock::now() - t0 < 5s);
  const ChildStopReport& s = report_of(report, "stubborn");
  REQUIRE(s.outcome == StopOutcome::kKilled);
  REQUIRE(s.exit == "was killed by signal 9 (Killed)");
  REQUIRE(s.seconds >= 0.3);
  REQUIRE(report_of(report, "later").outcome == StopOutcome::kExited);
  REQUIRE(!report.clean());
  REQUIRE(lines.find("sup: stubborn did not stop within 0.3 s; sending SIGKILL") >= 0);
  REQUIRE(lines.find("[stubborn] up") < lines.find("[later] got TERM"));
}

TEST_CASE("kill_all ends a stop that is waiting on a child at once", "[supervisor]") {
  Lines lines;
  Supervisor sup(fast_options(lines));
  ChildSpec stubborn = shell("stubborn", "trap '' TERM; echo up; while :; do sleep 0.05; done");
  stubborn.stop_timeout = 60s;
  REQUIRE(sup.start({stubborn}).is_ok());
  REQUIRE(lines.wait_for("[stubborn] up"));
  sup.begin_stop();
  REQUIRE(!sup.wait_stopped(300ms));
  const auto t0 = std::chrono::steady_clock::now();
  sup.kill_all();
  const auto report = sup.wait_stopped(5s);
  REQUIRE(report);
  REQUIRE(std::chrono::steady_clock::now() - t0 < 2s);
  REQUIRE(report->children.at(0).outcome == StopOutcome::kKilled);
}

TEST_CASE("the supervisor refuses children without a name or with the same name", "[supervisor]") {
  Lines lines;
  Supervisor a(fast_options(lines));
  REQUIRE(a.start({shell("", "true")}).code() == tessera::StatusCode::kInvalidArgument);
  Supervisor b(fast_options(lines));
  REQUIRE(b.start({shell("x", "true"), shell("x", "true")}).code() == tessera::StatusCode::kInvalidArgument);
}
