#include "launcher/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>

namespace tessera::launcher {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

// A line longer than this is printed in pieces rather than held forever.
constexpr size_t kMaxLineBytes = 16 * 1024;
// The loop's longest sleep: how often it reaps children when nothing else wakes it.
constexpr milliseconds kTick{100};
// After SIGKILL a child is given this long to be reaped before the stop moves on.
constexpr milliseconds kKillGrace{5'000};

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), s < 10 ? "%.1f s" : "%.0f s", s);
  return buf;
}

void write_stdout_line(std::string_view line) {
  std::string out(line);
  out += '\n';
  // One write per line: whole lines, also when something else writes to stdout.
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::write(STDOUT_FILENO, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

struct Spawned {
  pid_t pid = 0;
  int output_fd = -1;  // read end of the child's stdout+stderr, non-blocking
};

// fork + exec `spec` in a process group of its own. Only async-signal-safe calls between
// fork and exec (the launcher has other threads). An exec failure comes back through a
// close-on-exec pipe, so the caller learns it at once instead of from an exit status.
Result<Spawned> spawn(const ChildSpec& spec) {
  std::vector<char*> argv;
  for (const std::string& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  int output[2];
  if (::pipe2(output, O_CLOEXEC) != 0) return internal_error(std::string("pipe2: ") + std::strerror(errno));
  int exec_error[2];
  if (::pipe2(exec_error, O_CLOEXEC) != 0) {
    ::close(output[0]);
    ::close(output[1]);
    return internal_error(std::string("pipe2: ") + std::strerror(errno));
  }
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    for (int fd : {output[0], output[1], exec_error[0], exec_error[1]}) ::close(fd);
    return internal_error(std::string("fork: ") + std::strerror(e));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    // Dies with the thread that forked it (the supervisor's), e.g. when the launcher is
    // killed with SIGKILL. If the launcher died before this line, stop here.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    ::dup2(output[1], STDOUT_FILENO);
    ::dup2(output[1], STDERR_FILENO);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    // The launcher blocks SIGINT/SIGTERM to wait for them; exec keeps the mask and
    // ignored dispositions, and the children must get both back.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD}) ::signal(sig, SIG_DFL);
    ::execv(argv[0], argv.data());
    const int e = errno;
    [[maybe_unused]] ssize_t n = ::write(exec_error[1], &e, sizeof(e));
    ::_exit(127);
  }
  // Both sides set the group, so it exists whichever runs first.
  ::setpgid(pid, pid);
  ::close(output[1]);
  ::close(exec_error[1]);
  int e = 0;
  ssize_t n;
  do {
    n = ::read(exec_error[0], &e, sizeof(e));
  } while (n < 0 && errno == EINTR);
  ::close(exec_error[0]);
  if (n == static_cast<ssize_t>(sizeof(e))) {
    ::close(output[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return failed_precondition("cannot run " + spec.argv[0] + ": " + std::strerror(e));
  }
  ::fcntl(output[0], F_SETFL, ::fcntl(output[0], F_GETFL) | O_NONBLOCK);
  return Spawned{pid, output[0]};
}

// Signals the child's whole group (a shell's children too); the child itself if the
// group is gone already.
void signal_child(pid_t pid, int sig) {
  if (::kill(-pid, sig) != 0) ::kill(pid, sig);
}

bool exited_cleanly_after_term(int wait_status) {
  return (WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0) ||
         (WIFSIGNALED(wait_status) && WTERMSIG(wait_status) == SIGTERM);
}

}  // namespace

Status SupervisorOptions::validate() const {
  if (initial_backoff.count() <= 0 || max_backoff < initial_backoff) {
    return invalid_argument("supervisor: initial_backoff must be positive and at most max_backoff");
  }
  if (num_quick_crashes_to_give_up < 1) return invalid_argument("supervisor: num_quick_crashes_to_give_up must be at least 1");
  if (crash_window.count() < 0 || backoff_reset_after.count() < 0) {
    return invalid_argument("supervisor: crash_window and backoff_reset_after must not be negative");
  }
  return Status::ok();
}

milliseconds restart_backoff(const SupervisorOptions& options, int num_consecutive_restarts) {
  milliseconds delay = options.initial_backoff;
  for (int i = 1; i < num_consecutive_restarts && delay < options.max_backoff; ++i) delay *= 2;
  return std::min(delay, options.max_backoff);
}

std::string describe_wait_status(int wait_status) {
  if (WIFEXITED(wait_status)) return "exited with status " + std::to_string(WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    const char* name = ::sigdescr_np(sig);
    return "was killed by signal " + std::to_string(sig) + (name ? std::string(" (") + name + ")" : std::string());
  }
  return "changed state (wait status " + std::to_string(wait_status) + ")";
}

bool StopReport::clean() const {
  if (failure) return false;
  return std::none_of(children.begin(), children.end(), [](const ChildStopReport& c) {
    return c.outcome == StopOutcome::kFailed || c.outcome == StopOutcome::kKilled;
  });
}

// Everything the supervisor's thread owns. No lock: only that thread touches it, and it
// hands out copies (snapshot, report) through the Supervisor's mutex.
class Supervisor::Loop {
 public:
  Loop(Supervisor& owner, std::vector<ChildSpec> specs) : owner_(owner), options_(owner.options_) {
    for (ChildSpec& s : specs) {
      children_.emplace_back();
      children_.back().spec = std::move(s);
    }
  }

  void run() {
    for (Child& c : children_) {
      if (failure_) break;
      if (start(c)) event("started " + c.spec.name + " (pid " + std::to_string(c.pid) + ")");
    }
    publish();
    while (!finished()) {
      wait_for_events();
      apply_commands();
      const auto now = Clock::now();
      for (Child& c : children_) reap(c, now);
      if (!stopping_) {
        for (Child& c : children_) {
          if (!stopping_ && c.phase == ChildPhase::kWaitingRestart && now >= c.restart_at) restart(c);
        }
      }
      if (stopping_) advance_stop(Clock::now());
      publish();
    }
    finish();
  }

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = 0;
    int output_fd = -1;
    std::string partial_line;
    ChildPhase phase = ChildPhase::kRunning;
    Clock::time_point started_at{};
    Clock::time_point restart_at{};
    int num_restarts = 0;
    int num_consecutive_restarts = 0;  // since an incarnation last ran backoff_reset_after
    int num_quick_crashes = 0;         // in a row
    bool ever_ready = false;
    std::string last_exit;
    // The stop: when SIGTERM went out, whether SIGKILL followed, and how it ended.
    Clock::time_point term_sent_at{};
    bool killed = false;
    std::optional<ChildStopReport> stop_report;
  };

  void emit(std::string_view line) {
    if (options_.on_line) {
      options_.on_line(line);
    } else {
      write_stdout_line(line);
    }
  }
  void event(const std::string& text) { emit(options_.event_prefix + text); }

  bool start(Child& c) {
    auto spawned = spawn(c.spec);
    if (!spawned) {
      give_up(c, spawned.status().message());
      return false;
    }
    c.pid = spawned->pid;
    c.output_fd = spawned->output_fd;
    c.partial_line.clear();
    c.started_at = Clock::now();
    c.phase = c.spec.readiness == Readiness::kOnStart ? ChildPhase::kReady : ChildPhase::kRunning;
    if (c.spec.readiness == Readiness::kOnStart) c.ever_ready = true;
    return true;
  }

  void restart(Child& c) {
    if (!start(c)) return;
    ++c.num_restarts;
    event("restarted " + c.spec.name + " (pid " + std::to_string(c.pid) + ", restart " +
          std::to_string(c.num_restarts) + ")");
  }

  void wait_for_events() {
    std::vector<pollfd> fds;
    fds.push_back({owner_.wake_fds_[0], POLLIN, 0});
    for (const Child& c : children_) {
      if (c.output_fd >= 0) fds.push_back({c.output_fd, POLLIN, 0});
    }
    auto timeout = kTick;
    const auto now = Clock::now();
    for (const Child& c : children_) {
      if (!stopping_ && c.phase == ChildPhase::kWaitingRestart) {
        timeout = std::min(timeout, std::chrono::ceil<milliseconds>(std::max(c.restart_at - now, Clock::duration::zero())));
      }
    }
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
    if (n <= 0) return;
    if (fds[0].revents != 0) {
      char buf[64];
      while (::read(owner_.wake_fds_[0], buf, sizeof(buf)) > 0) {
      }
    }
    for (Child& c : children_) {
      if (c.output_fd < 0) continue;
      auto it = std::find_if(fds.begin() + 1, fds.end(), [&](const pollfd& p) { return p.fd == c.output_fd; });
      if (it != fds.end() && it->revents != 0) read_output(c);
    }
  }

  // Reads what the pipe holds and prints its whole lines; at EOF also the last partial
  // line, and closes it.
  void read_output(Child& c) {
    char buf[64 * 1024];
    while (c.output_fd >= 0) {
      const ssize_t n = ::read(c.output_fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return;  // EAGAIN: all read for now
      if (n == 0) {
        flush_partial(c);
        ::close(c.output_fd);
        c.output_fd = -1;
        return;
      }
      c.partial_line.append(buf, static_cast<size_t>(n));
      size_t begin = 0;
      for (size_t nl; (nl = c.partial_line.find('\n', begin)) != std::string::npos; begin = nl + 1) {
        print_child_line(c, std::string_view(c.partial_line).substr(begin, nl - begin));
      }
      c.partial_line.erase(0, begin);
      while (c.partial_line.size() > kMaxLineBytes) {
        print_child_line(c, std::string_view(c.partial_line).substr(0, kMaxLineBytes));
        c.partial_line.erase(0, kMaxLineBytes);
      }
    }
  }

  void flush_partial(Child& c) {
    if (!c.partial_line.empty()) print_child_line(c, c.partial_line);
    c.partial_line.clear();
  }

  void print_child_line(const Child& c, std::string_view line) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    std::string out;
    out.reserve(c.spec.name.size() + 3 + line.size());
    out += '[';
    out += c.spec.name;
    out += "] ";
    out += line;
    emit(out);
  }

  void apply_commands() {
    std::vector<Command> commands;
    {
      std::lock_guard lock(owner_.mutex_);
      commands.swap(owner_.commands_);
    }
    for (const Command& cmd : commands) {
      switch (cmd.kind) {
        case Command::Kind::kMarkReady: {
          if (cmd.index >= children_.size()) break;
          Child& c = children_[cmd.index];
          if (c.pid != cmd.pid || c.pid == 0 || c.phase != ChildPhase::kRunning) break;
          c.phase = ChildPhase::kReady;
          c.ever_ready = true;
          break;
        }
        case Command::Kind::kStop:
          begin_stop();
          break;
        case Command::Kind::kKillAll:
          begin_stop();
          for (Child& c : children_) {
            if (c.pid == 0 || c.killed) continue;
            if (c.phase != ChildPhase::kStopping) c.term_sent_at = Clock::now();
            c.phase = ChildPhase::kStopping;
            c.killed = true;
            signal_child(c.pid, SIGKILL);
          }
          break;
      }
    }
  }

  void reap(Child& c, Clock::time_point now) {
    if (c.pid == 0) return;
    int status = 0;
    pid_t r;
    do {
      r = ::waitpid(c.pid, &status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == 0) return;
    // Its output is complete now (unless a grandchild holds the pipe): print it before
    // the exit, so the cause comes before the consequence.
    if (c.output_fd >= 0) read_output(c);
    if (c.output_fd >= 0) {
      flush_partial(c);
      ::close(c.output_fd);
      c.output_fd = -1;
    }
    c.pid = 0;
    c.last_exit = r < 0 ? std::string("could not be waited for: ") + std::strerror(errno) : describe_wait_status(status);
    const double ran_s = seconds_between(c.started_at, now);
    if (c.phase == ChildPhase::kStopping || stopping_) {
      on_stopped(c, status, now);
      return;
    }
    const bool failed = r < 0 || !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (failed && !c.ever_ready) {
      give_up(c, c.spec.name + " " + c.last_exit + " before it was ever ready");
      return;
    }
    const bool quick = failed && now - c.started_at < options_.crash_window;
    c.num_quick_crashes = quick ? c.num_quick_crashes + 1 : 0;
    if (c.num_quick_crashes >= options_.num_quick_crashes_to_give_up) {
      give_up(c, c.spec.name + " " + c.last_exit + ", " + std::to_string(c.num_quick_crashes) +
                     " times in a row within " + format_seconds(std::chrono::duration<double>(options_.crash_window).count()) +
                     " of its start");
      return;
    }
    if (now - c.started_at >= options_.backoff_reset_after) c.num_consecutive_restarts = 0;
    ++c.num_consecutive_restarts;
    const milliseconds delay = restart_backoff(options_, c.num_consecutive_restarts);
    c.phase = ChildPhase::kWaitingRestart;
    c.restart_at = now + delay;
    event(c.spec.name + " " + c.last_exit + " after " + format_seconds(ran_s) + "; restarting it in " +
          format_seconds(std::chrono::duration<double>(delay).count()));
  }

  void on_stopped(Child& c, int status, Clock::time_point now) {
    const bool was_signalled = c.phase == ChildPhase::kStopping;
    ChildStopReport r{c.spec.name, StopOutcome::kExited, c.last_exit, 0};
    if (was_signalled) r.seconds = seconds_between(c.term_sent_at, now);
    if (c.killed) {
      r.outcome = StopOutcome::kKilled;
    } else if (!exited_cleanly_after_term(status)) {
      r.outcome = StopOutcome::kFailed;
    }
    c.phase = ChildPhase::kExited;
    c.stop_report = r;
    if (was_signalled) {
      event(c.spec.name + " stopped: " + c.last_exit + (c.killed ? " (SIGKILL)" : ", " + format_seconds(r.seconds) + " after SIGTERM"));
    } else {
      event(c.spec.name + " " + c.last_exit + " while stopping");
    }
  }

  void give_up(Child& c, const std::string& why) {
    c.phase = ChildPhase::kExited;
    c.stop_report = ChildStopReport{c.spec.name, StopOutcome::kFailed, c.last_exit, 0};
    if (!failure_) failure_ = why;
    event("giving up: " + why + "; stopping the others");
    begin_stop();
  }

  void begin_stop() {
    if (stopping_) return;
    stopping_ = true;
    for (Child& c : children_) {
      if (c.pid == 0 && c.phase != ChildPhase::kExited) {
        c.phase = ChildPhase::kExited;
        c.stop_report = ChildStopReport{c.spec.name, StopOutcome::kNotRunning, c.last_exit, 0};
      }
    }
  }

  // One step of the ordered stop: escalate the current stage when its time is up, or
  // start the next stage when the current one is gone.
  void advance_stop(Clock::time_point now) {
    bool stage_live = false;
    for (Child& c : children_) {
      if (c.pid == 0 || c.phase != ChildPhase::kStopping) continue;
      stage_live = true;
      if (!c.killed && now - c.term_sent_at >= c.spec.stop_timeout) {
        event(c.spec.name + " did not stop within " +
              format_seconds(std::chrono::duration<double>(c.spec.stop_timeout).count()) + "; sending SIGKILL");
        c.killed = true;
        signal_child(c.pid, SIGKILL);
      } else if (c.killed && now - c.term_sent_at >= c.spec.stop_timeout + kKillGrace) {
        // Unkillable (stuck in the kernel): stop waiting for it rather than hang.
        c.phase = ChildPhase::kExited;
        c.stop_report = ChildStopReport{c.spec.name, StopOutcome::kKilled, "did not die after SIGKILL", 0};
        c.pid = 0;
      }
    }
    if (stage_live) return;
    int order = INT_MAX;
    for (const Child& c : children_) {
      if (c.pid != 0) order = std::min(order, c.spec.stop_order);
    }
    if (order == INT_MAX) return;
    for (Child& c : children_) {
      if (c.pid == 0 || c.spec.stop_order != order) continue;
      c.phase = ChildPhase::kStopping;
      c.term_sent_at = now;
      signal_child(c.pid, SIGTERM);
    }
  }

  bool finished() const {
    return stopping_ && std::all_of(children_.begin(), children_.end(), [](const Child& c) { return c.pid == 0; });
  }

  void publish() {
    SupervisorSnapshot s;
    s.phase = stopping_ ? SupervisorSnapshot::Phase::kStopping : SupervisorSnapshot::Phase::kRunning;
    s.failure = failure_;
    for (const Child& c : children_) {
      s.children.push_back({c.spec.name, c.pid, c.phase, c.num_restarts, c.ever_ready, c.last_exit});
    }
    std::lock_guard lock(owner_.mutex_);
    owner_.snapshot_ = std::move(s);
  }

  void finish() {
    StopReport report;
    report.failure = failure_;
    for (Child& c : children_) {
      report.children.push_back(c.stop_report.value_or(ChildStopReport{c.spec.name, StopOutcome::kNotRunning, c.last_exit, 0}));
    }
    {
      std::lock_guard lock(owner_.mutex_);
      owner_.snapshot_.phase = SupervisorSnapshot::Phase::kStopped;
      owner_.report_ = std::move(report);
    }
    owner_.stopped_.notify_all();
  }

  Supervisor& owner_;
  const SupervisorOptions& options_;
  std::vector<Child> children_;
  bool stopping_ = false;
  std::optional<std::string> failure_;
};

Supervisor::Supervisor(SupervisorOptions options) : options_(std::move(options)) {}

Supervisor::~Supervisor() {
  if (thread_.joinable()) {
    kill_all();
    thread_.join();
  }
  for (int fd : wake_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

Status Supervisor::start(std::vector<ChildSpec> children) {
  if (thread_.joinable() || loop_) return failed_precondition("supervisor: start() was called already");
  TESSERA_RETURN_IF_ERROR(options_.validate());
  for (size_t i = 0; i < children.size(); ++i) {
    const ChildSpec& c = children[i];
    if (c.name.empty() || c.argv.empty() || c.argv[0].empty()) {
      return invalid_argument("supervisor: child " + std::to_string(i) + " needs a name and an executable");
    }
    if (c.stop_timeout.count() <= 0) return invalid_argument("supervisor: " + c.name + ": stop_timeout must be positive");
    for (size_t j = 0; j < i; ++j) {
      if (children[j].name == c.name) return invalid_argument("supervisor: two children are named " + c.name);
    }
  }
  if (::pipe2(wake_fds_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return internal_error(std::string("supervisor: pipe2: ") + std::strerror(errno));
  }
  {
    std::lock_guard lock(mutex_);
    snapshot_.phase = SupervisorSnapshot::Phase::kRunning;
    for (const ChildSpec& c : children) snapshot_.children.push_back({c.name, 0, ChildPhase::kRunning, 0, false, ""});
  }
  loop_ = std::make_unique<Loop>(*this, std::move(children));
  thread_ = std::thread([this] { loop_->run(); });
  return Status::ok();
}

void Supervisor::post(Command command) {
  {
    std::lock_guard lock(mutex_);
    commands_.push_back(command);
  }
  if (wake_fds_[1] >= 0) {
    const char byte = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fds_[1], &byte, 1);  // full pipe: a wake-up is pending anyway
  }
}

void Supervisor::mark_ready(size_t index, pid_t pid) { post({Command::Kind::kMarkReady, index, pid}); }
void Supervisor::begin_stop() { post({Command::Kind::kStop, 0, 0}); }
void Supervisor::kill_all() { post({Command::Kind::kKillAll, 0, 0}); }

std::optional<StopReport> Supervisor::wait_stopped(milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!thread_.joinable()) return StopReport{};
  if (!stopped_.wait_for(lock, timeout, [&] { return report_.has_value(); })) return std::nullopt;
  return report_;
}

StopReport Supervisor::stop() {
  begin_stop();
  std::unique_lock lock(mutex_);
  if (!thread_.joinable()) return StopReport{};
  stopped_.wait(lock, [&] { return report_.has_value(); });
  return *report_;
}

SupervisorSnapshot Supervisor::snapshot() const {
  std::lock_guard lock(mutex_);
  return snapshot_;
}

}  // namespace tessera::launcher
