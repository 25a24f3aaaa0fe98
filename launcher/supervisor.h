// Supervisor: runs a set of child processes on one host and keeps them running.
//
//   - Each child runs in a process group of its own (a terminal's Ctrl-C reaches only the
//     launcher, which then stops the children in order) and dies with the launcher
//     (PR_SET_PDEATHSIG).
//   - Its stdout and stderr share one pipe; every line is re-printed whole, prefixed with
//     "[name] ", so lines of different children never interleave mid-line.
//   - A child that exits while the supervisor is not stopping is restarted after a backoff
//     of 1 s, 2 s, 4 s ... up to 30 s, back to 1 s once an incarnation has run 60 s.
//   - It gives up (and stops every other child) on a child that exits non-zero before it
//     was ever ready, or non-zero within its first seconds several times in a row: such a
//     child will not get better by being restarted, and a loop would hide the error.
//   - stop() sends SIGTERM to the children by ascending stop_order (equal orders together),
//     waits up to each child's stop_timeout, then sends SIGKILL. No restart once stopping.
//
// Threads: one thread of its own owns every child (fork, pipes, waitpid, restarts, the
// stop sequence); it is also the thread that forks, which PR_SET_PDEATHSIG ties the
// children's lives to. The public methods may be called from any thread: they post
// commands to it or read the snapshot it publishes.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tessera/common/status.h"

namespace tessera::launcher {

// When a child counts as ready (for the rule "exits non-zero before it was ever ready").
enum class Readiness {
  kOnStart,  // as soon as it runs: only the crash-loop rule can make the supervisor give up
  kMarked,   // when someone who probes it calls Supervisor::mark_ready
};

struct ChildSpec {
  // "router", "worker/0": the log prefix "[router] " and the name in every message.
  std::string name;
  // argv[0] is the executable's path (no PATH search); the environment is inherited.
  std::vector<std::string> argv;
  Readiness readiness = Readiness::kMarked;
  // stop() stops lower orders first, children of equal order together.
  int stop_order = 0;
  // SIGTERM → SIGKILL.
  std::chrono::milliseconds stop_timeout{10'000};
};

struct SupervisorOptions {
  std::chrono::milliseconds initial_backoff{1'000};
  std::chrono::milliseconds max_backoff{30'000};
  // An incarnation that ran this long resets the backoff to initial_backoff.
  std::chrono::milliseconds backoff_reset_after{60'000};
  // num_quick_crashes_to_give_up non-zero exits in a row, each within crash_window of its
  // start, make the supervisor give up.
  std::chrono::milliseconds crash_window{5'000};
  int num_quick_crashes_to_give_up = 3;
  // Prefix of the supervisor's own lines ("tessera serve: started router (pid 12)").
  std::string event_prefix = "supervisor: ";
  // Receives every line, children's and the supervisor's own, prefixed and without its
  // newline, on the supervisor's thread. Default: stdout, flushed per line.
  std::function<void(std::string_view line)> on_line;

  [[nodiscard]] Status validate() const;
};

// The wait before restart number `num_consecutive_restarts` (1 for the first restart after
// an incarnation that ran long enough): initial_backoff doubled each time, capped.
std::chrono::milliseconds restart_backoff(const SupervisorOptions& options, int num_consecutive_restarts);

// "exited with status 3", "was killed by signal 9 (Killed)", from a waitpid status.
std::string describe_wait_status(int wait_status);

enum class ChildPhase {
  kRunning,         // started, not (yet) ready
  kReady,           // this incarnation is ready
  kWaitingRestart,  // exited; restarts when its backoff is over
  kStopping,        // SIGTERM (or SIGKILL) sent, not reaped yet
  kExited,          // gone for good: stopped, or the supervisor gave up
};

struct ChildSnapshot {
  std::string name;
  pid_t pid = 0;  // of the current incarnation; 0 when none runs
  ChildPhase phase = ChildPhase::kRunning;
  int num_restarts = 0;
  bool ever_ready = false;
  std::string last_exit;  // describe_wait_status of the last exit; empty before one
};

// How stop() ended a child.
enum class StopOutcome {
  kNotRunning,  // it was waiting for a restart, or had exited already
  kExited,      // it exited after SIGTERM (status 0, or SIGTERM's own default action)
  kFailed,      // it exited non-zero after SIGTERM
  kKilled,      // it outlived its stop_timeout and got SIGKILL
};

struct ChildStopReport {
  std::string name;
  StopOutcome outcome = StopOutcome::kNotRunning;
  std::string exit;  // describe_wait_status, when it was running
  double seconds = 0;  // from its SIGTERM to its exit
};

struct StopReport {
  std::vector<ChildStopReport> children;
  // Why the supervisor gave up, when it did (the stop was its own).
  std::optional<std::string> failure;
  // Nothing failed, nothing needed SIGKILL, and the supervisor did not give up.
  bool clean() const;
};

struct SupervisorSnapshot {
  enum class Phase { kNotStarted, kRunning, kStopping, kStopped };
  Phase phase = Phase::kNotStarted;
  std::optional<std::string> failure;
  std::vector<ChildSnapshot> children;  // in the order they were added
};

class Supervisor {
 public:
  explicit Supervisor(SupervisorOptions options);
  // Kills (SIGKILL) every child still running and joins the thread.
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Starts the thread, which starts every child in order. INVALID_ARGUMENT for bad
  // options or specs, FAILED_PRECONDITION when called twice. A child that cannot be
  // executed (no such file, not executable) makes the supervisor give up.
  [[nodiscard]] Status start(std::vector<ChildSpec> children);

  // The incarnation `pid` of child `index` (as in the snapshot) is ready; ignored when
  // that incarnation is gone.
  void mark_ready(size_t index, pid_t pid);

  // Begins the ordered stop and returns; no restart from then on. Idempotent.
  void begin_stop();
  // SIGKILL to every child now (also in the middle of a stop), e.g. on a second Ctrl-C.
  void kill_all();
  // Waits until every child is gone (after begin_stop, or after giving up): the report,
  // or nothing at the timeout.
  std::optional<StopReport> wait_stopped(std::chrono::milliseconds timeout);
  // begin_stop and wait.
  StopReport stop();

  SupervisorSnapshot snapshot() const;

 private:
  struct Command {
    enum class Kind { kMarkReady, kStop, kKillAll };
    Kind kind = Kind::kStop;
    size_t index = 0;  // kMarkReady
    pid_t pid = 0;     // kMarkReady
  };
  class Loop;  // the thread's state; nested, so it reaches the members below

  void post(Command command);

  SupervisorOptions options_;
  int wake_fds_[2] = {-1, -1};  // the loop polls [0]; post() writes a byte to [1]
  mutable std::mutex mutex_;    // guards commands_, snapshot_, report_
  std::condition_variable stopped_;
  std::vector<Command> commands_;
  SupervisorSnapshot snapshot_;
  std::optional<StopReport> report_;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace tessera::launcher
