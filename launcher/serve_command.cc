// `tessera serve`: one host as a whole Tessera. Starts the router, the workers (--dp groups
// of --tp ranks) and the gateway as child processes of a Supervisor, probes each until it
// is ready, prints the API's URL, and on SIGINT/SIGTERM stops them in the order that loses
// no request: the gateway first (it drains its HTTP requests), then the router, then the
// workers. A second signal kills everything at once.
//
// Each child gets the user's --config and --set as given, then the --set overrides that
// wire it to the others (ports, group, rank, model path), which win.
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "launcher/arg_parse.h"
#include "launcher/commands.h"
#include "launcher/http_get.h"
#include "launcher/supervisor.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"

namespace tessera::launcher {
namespace {

constexpr const char* kWho = "tessera serve";
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* kServeHelp =
    "Usage: tessera serve [--model PATH|default] [--device auto|cpu|cuda] [--host H] [--port N]\n"
    "                     [--tp N] [--dp N] [--drain-timeout SECONDS] [--router-port N]\n"
    "                     [--ready-timeout SECONDS] [--config FILE] [--set KEY=VALUE]...\n"
    "\n"
    "Runs a whole Tessera on this host: a router, --dp worker groups of --tp ranks and a\n"
    "gateway, as supervised child processes whose logs are printed with a [name] prefix.\n"
    "A child that exits is restarted (backoff 1 s, 2 s, ... 30 s); one that fails before it\n"
    "was ever ready, or 3 times in a row within 5 s of its start, stops everything.\n"
    "SIGINT/SIGTERM stop the gateway (it drains), then the router, then the workers; a\n"
    "second signal kills them at once.\n"
    "\n"
    "Options (they override the configuration):\n"
    "  -m, --model PATH       model.path; 'default': the test model of scripts/fetch-model\n"
    "      --device D         worker.device: auto, cpu or cuda\n"
    "      --host H           gateway.host (default 0.0.0.0)\n"
    "      --port N           gateway.port, the OpenAI API (default 8000)\n"
    "      --tp N             tensor-parallel ranks per worker group (worker.tensor_parallel_size)\n"
    "      --dp N             data-parallel worker groups g0..g{N-1} (default 1)\n"
    "      --drain-timeout S  gateway.drain_timeout_s and router.drain_timeout_s: how long\n"
    "                         in-flight requests get to finish on stop\n"
    "      --router-port N    the router's gRPC port on 127.0.0.1 (default: router.listen's)\n"
    "      --ready-timeout S  give up when the gateway is not ready after S seconds (default 300)\n"
    "  -c, --config FILE      YAML configuration, passed on to every child\n"
    "      --set KEY=VALUE    override one key, passed on to every child\n"
    "\n"
    "Each worker serves /metrics on worker.metrics_port + its index; the router keeps\n"
    "router.metrics_port. The binaries are found next to this one (build or install\n"
    "layout), or in $TESSERA_BIN_DIR.\n";

struct ServeOptions {
  // --config and --set as given: for this process's configuration and every child's.
  std::vector<std::string> config_args;
  std::optional<std::string> model;
  std::optional<std::string> device;
  std::optional<std::string> host;
  std::optional<uint32_t> port;
  std::optional<uint32_t> tp;
  uint32_t dp = 1;
  std::optional<uint32_t> drain_timeout_s;
  std::optional<uint32_t> router_port;
  uint32_t ready_timeout_s = 300;
  bool help = false;
  std::string error;
};

ServeOptions parse(const Args& args) {
  ServeOptions o;
  OptionReader r(args);
  auto value = [&r] { return r.value(); };
  auto number = [&r](std::optional<uint32_t>* out) { r.number(out); };
  while (r.next()) {
    const std::string& a = r.option();
    if (a == "--help" || a == "-h") {
      o.help = true;
    } else if (a == "--config" || a == "-c" || a == "--set") {
      if (auto v = value()) o.config_args.insert(o.config_args.end(), {a, *v});
    } else if (a.starts_with("--config=") || a.starts_with("--set=")) {
      o.config_args.push_back(a);
    } else if (a == "--model" || a == "-m") {
      o.model = value();
    } else if (a == "--device") {
      o.device = value();
    } else if (a == "--host") {
      o.host = value();
    } else if (a == "--port") {
      number(&o.port);
    } else if (a == "--tp") {
      number(&o.tp);
    } else if (a == "--dp") {
      std::optional<uint32_t> dp;
      number(&dp);
      if (dp) o.dp = *dp;
    } else if (a == "--drain-timeout") {
      number(&o.drain_timeout_s);
    } else if (a == "--router-port") {
      number(&o.router_port);
    } else if (a == "--ready-timeout") {
      std::optional<uint32_t> t;
      number(&t);
      if (t) o.ready_timeout_s = *t;
    } else {
      r.fail("unknown option '" + a + "'");
    }
  }
  o.error = r.error();
  if (!o.error.empty() || o.help) return o;
  if (o.dp < 1 || (o.tp && *o.tp < 1)) o.error = "--dp and --tp must be at least 1";
  else if (o.device && *o.device != "auto" && *o.device != "cpu" && *o.device != "cuda") o.error = "--device must be auto, cpu or cuda";
  else if ((o.port && (*o.port < 1 || *o.port > 65535)) || (o.router_port && (*o.router_port < 1 || *o.router_port > 65535))) {
    o.error = "--port and --router-port must be between 1 and 65535";
  } else if (o.ready_timeout_s < 1) {
    o.error = "--ready-timeout must be at least 1";
  }
  return o;
}

// A --set value as YAML: plain when that reads back as the same string, else single-quoted.
std::string yaml_scalar(const std::string& s) {
  const bool plain = !s.empty() && s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./~+-") ==
                                       std::string::npos && s.front() != '-' && s.front() != '~';
  if (plain) return s;
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

// The port of "host:port" (the last colon, so "[::]:50051" works too).
std::optional<uint32_t> port_of(const std::string& address) {
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || !parse_number(address.substr(colon + 1), &port) || port < 1 || port > 65535) {
    return std::nullopt;
  }
  return port;
}

struct Binaries {
  std::string router, worker, gateway;
};

bool is_executable(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::is_regular_file(p, ec) && ::access(p.c_str(), X_OK) == 0;
}

// The tier binaries: $TESSERA_BIN_DIR, else this executable's build tree
// (<build>/launcher/tessera → <build>/router/tessera-router), else its own directory (an
// installed layout puts them side by side).
Result<Binaries> find_binaries() {
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs_of[3];
  const char* names[3] = {"tessera-router", "tessera-worker", "tessera-gateway"};
  const char* tiers[3] = {"router", "worker", "gateway"};
  const char* env = std::getenv("TESSERA_BIN_DIR");
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  for (int i = 0; i < 3; ++i) {
    if (env != nullptr && *env != '\0') {
      dirs_of[i] = {fs::path(env)};
    } else if (!ec) {
      dirs_of[i] = {(self.parent_path() / ".." / tiers[i]).lexically_normal(), self.parent_path()};
    } else {
      return failed_precondition("cannot read /proc/self/exe to find the tier binaries; set TESSERA_BIN_DIR");
    }
  }
  std::string found[3];
  for (int i = 0; i < 3; ++i) {
    std::string looked;
    for (const fs::path& dir : dirs_of[i]) {
      if (is_executable(dir / names[i])) {
        found[i] = (dir / names[i]).string();
        break;
      }
      looked += (looked.empty() ? "" : " and ") + (dir / names[i]).string();
    }
    if (found[i].empty()) {
      return not_found(std::string("cannot find ") + names[i] + " (looked for " + looked + "); build it (cmake --build build --target " +
                       names[i] + ")" + (env && *env ? std::string() : std::string(" or set TESSERA_BIN_DIR")));
    }
  }
  return Binaries{found[0], found[1], found[2]};
}

// Where serve asks a child whether it is ready (port 0: nowhere, it is ready on start).
struct Probe {
  uint16_t port = 0;
  std::string path;
  std::string says;  // "is up", "is ready"
};

struct Plan {
  std::vector<ChildSpec> children;
  std::vector<Probe> probes;  // by child index
  size_t gateway_index = 0;
  std::string model_path;
  std::string url_host;    // the gateway's address in the URL printed for users
  std::string probe_host;  // the same as an IP address, for serve's own probes
  uint32_t gateway_port = 0;
  uint32_t router_port = 0;
  uint32_t num_workers = 0;
  uint32_t tp = 1;
  uint32_t dp = 1;
  std::string served_name;
};

std::string with_port(const std::string& host, uint32_t port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Result<Plan> make_plan(const ServeOptions& o, const Config& config, const Binaries& bin) {
  Plan plan;
  auto path = resolve_model_path(config.model);
  if (!path) return path.status();
  std::error_code ec;
  if (!std::filesystem::exists(*path, ec)) return not_found("the model " + *path + " does not exist");
  plan.model_path = *path;
  plan.served_name = served_model_name(config.model, plan.model_path);
  plan.tp = config.worker.tensor_parallel_size;
  plan.dp = o.dp;
  plan.num_workers = plan.tp * plan.dp;
  constexpr uint32_t kMaxWorkers = 64;
  if (plan.tp < 1 || plan.num_workers > kMaxWorkers) {
    return invalid_argument("--dp × --tp must be between 1 and " + std::to_string(kMaxWorkers) + " workers");
  }
  if (o.router_port) {
    plan.router_port = *o.router_port;
  } else if (auto p = port_of(config.router.listen)) {
    plan.router_port = *p;
  } else {
    return invalid_argument("router.listen '" + config.router.listen + "' has no port; give --router-port");
  }
  plan.gateway_port = config.gateway.port;
  if (plan.gateway_port == 0) return invalid_argument("gateway.port must not be 0: serve probes the gateway on it");
  const std::string& host = config.gateway.host;
  plan.url_host = host.empty() || host == "0.0.0.0" || host == "::" || host == "localhost" ? "127.0.0.1" : host;
  in6_addr ip{};
  const bool is_ip = inet_pton(AF_INET, plan.url_host.c_str(), &ip) == 1 || inet_pton(AF_INET6, plan.url_host.c_str(), &ip) == 1;
  plan.probe_host = is_ip ? plan.url_host : "127.0.0.1";  // a host name: the gateway listens on this host anyway
  // The gateway drains for gateway.drain_timeout_s, then cancels what is left (up to 5 s
  // more); the router and the workers drain for router.drain_timeout_s. SIGKILL only
  // after that and a margin, so a stop that runs its full course still counts as clean.
  auto stop_timeout_after = [](uint32_t drain_s) { return std::chrono::milliseconds((drain_s + 10) * 1000LL); };
  const std::vector<std::string> drain_sets = {"gateway.drain_timeout_s=" + std::to_string(config.gateway.drain_timeout_s),
                                               "router.drain_timeout_s=" + std::to_string(config.router.drain_timeout_s)};

  // Every port this host will listen on, so two children never fight over one.
  std::map<uint32_t, std::string> ports;
  auto claim = [&](uint32_t port, const std::string& who) -> Status {
    if (port == 0) return Status::ok();
    if (port > 65535) return invalid_argument(who + ": port " + std::to_string(port) + " is out of range");
    auto [it, fresh] = ports.emplace(port, who);
    if (!fresh) return invalid_argument(who + " and " + it->second + " would both listen on port " + std::to_string(port));
    return Status::ok();
  };
  TESSERA_RETURN_IF_ERROR(claim(plan.gateway_port, "the gateway (gateway.port)"));
  TESSERA_RETURN_IF_ERROR(claim(plan.router_port, "the router (--router-port)"));
  TESSERA_RETURN_IF_ERROR(claim(config.router.metrics_port, "the router's metrics (router.metrics_port)"));
  for (uint32_t i = 0; i < plan.num_workers && config.worker.metrics_port != 0; ++i) {
    TESSERA_RETURN_IF_ERROR(claim(config.worker.metrics_port + i, "worker/" + std::to_string(i) + "'s metrics (worker.metrics_port + " + std::to_string(i) + ")"));
  }

  const std::string router_address = "127.0.0.1:" + std::to_string(plan.router_port);
  auto child = [&](std::string name, const std::string& binary, std::vector<std::string> sets, int stop_order,
                   uint32_t drain_s, Probe probe) {
    ChildSpec c;
    c.name = std::move(name);
    c.argv = {binary};
    c.argv.insert(c.argv.end(), o.config_args.begin(), o.config_args.end());
    sets.insert(sets.end(), drain_sets.begin(), drain_sets.end());
    for (std::string& s : sets) c.argv.insert(c.argv.end(), {"--set", std::move(s)});
    c.readiness = probe.port == 0 ? Readiness::kOnStart : Readiness::kMarked;
    c.stop_order = stop_order;
    c.stop_timeout = stop_timeout_after(drain_s);
    plan.children.push_back(std::move(c));
    plan.probes.push_back(std::move(probe));
  };
  // Started in this order; stopped gateway (0), router (1), workers (2).
  // Every child gets model.path: each validates the whole configuration (the dummy load
  // format, say, needs a path), whether it opens the model or not.
  child("router", bin.router, {"router.listen=" + router_address, "model.path=" + yaml_scalar(plan.model_path)}, 1,
        config.router.drain_timeout_s,
        {static_cast<uint16_t>(config.router.metrics_port), "/health", "is up"});
  for (uint32_t i = 0; i < plan.num_workers; ++i) {
    const uint32_t metrics_port = config.worker.metrics_port == 0 ? 0 : config.worker.metrics_port + i;
    child("worker/" + std::to_string(i), bin.worker,
          {"worker.router_address=" + router_address, "model.path=" + yaml_scalar(plan.model_path),
           "worker.group=g" + std::to_string(i / plan.tp), "worker.rank=" + std::to_string(i % plan.tp),
           "worker.tensor_parallel_size=" + std::to_string(plan.tp), "worker.metrics_port=" + std::to_string(metrics_port),
           "worker.device=" + std::string(to_string(config.worker.device))},
          2, config.router.drain_timeout_s,
          {static_cast<uint16_t>(metrics_port), "/ready", "is ready (model loaded, attached to the router)"});
  }
  plan.gateway_index = plan.children.size();
  child("gateway", bin.gateway,
        {"gateway.host=" + yaml_scalar(host), "gateway.port=" + std::to_string(plan.gateway_port),
         "gateway.routers=[" + router_address + "]", "model.path=" + yaml_scalar(plan.model_path)},
        0, config.gateway.drain_timeout_s, {static_cast<uint16_t>(plan.gateway_port), "/ready", "is ready"});
  return plan;
}

// stdout shared by the supervisor's thread (children's lines) and this one: whole lines.
class Console {
 public:
  void line(std::string_view text) {
    std::lock_guard lock(mutex_);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
  }
  void say(const std::string& text) { line(std::string(kWho) + ": " + text); }

 private:
  std::mutex mutex_;
};

// The model's name as the gateway serves it (GET /v1/models); as the configuration
// names it when the gateway does not say.
std::string model_name_from_gateway(const Plan& plan) {
  auto reply = http_get(plan.probe_host, static_cast<uint16_t>(plan.gateway_port), "/v1/models", 2s);
  if (reply && reply->status == 200) {
    auto json = nlohmann::json::parse(reply->body, nullptr, false);
    if (!json.is_discarded() && json.contains("data") && json["data"].is_array() && !json["data"].empty() &&
        json["data"][0].contains("id") && json["data"][0]["id"].is_string()) {
      return json["data"][0]["id"].get<std::string>();
    }
  }
  return plan.served_name;
}

// A signal this soon after the first is the same request delivered twice (by the terminal
// to the process group and again by a wrapper such as timeout(1) that forwards it), not a
// user asking a second time.
constexpr auto kSameSignalWindow = 1s;

// Waits for the supervisor to have stopped everything; a second signal meanwhile (sent at
// kSameSignalWindow or more after the one that began the stop, if one did) kills the rest.
StopReport wait_stopped(Supervisor& sup, Console& console, const sigset_t& signals,
                        std::optional<Clock::time_point> first_signal_at = std::nullopt) {
  bool killed = false;
  for (;;) {
    if (auto report = sup.wait_stopped(200ms)) return *report;
    const timespec no_wait{0, 0};
    if (sigtimedwait(&signals, nullptr, &no_wait) > 0 && !killed &&
        (!first_signal_at || Clock::now() - *first_signal_at >= kSameSignalWindow)) {
      console.say("second signal: killing every child now");
      sup.kill_all();
      killed = true;
    }
  }
}

int report_stop(const StopReport& report, Console& console) {
  if (report.failure) {
    std::fprintf(stderr, "%s: %s (its log is above, prefixed with its name)\n", kWho, report.failure->c_str());
    return 1;
  }
  if (report.clean()) {
    console.say("stopped");
    return 0;
  }
  std::string unclean;
  for (const ChildStopReport& c : report.children) {
    if (c.outcome == StopOutcome::kFailed || c.outcome == StopOutcome::kKilled) {
      unclean += (unclean.empty() ? "" : ", ") + c.name + " " + c.exit;
    }
  }
  std::fprintf(stderr, "%s: stopped, but not cleanly: %s\n", kWho, unclean.c_str());
  return 1;
}

// Asks each running child that is not ready yet whether it is now; marks and announces
// those that are. `announced`: by child, the incarnation (pid) last announced ready.
// Returns the names of the children still not ready ("worker/0, gateway").
std::string probe_children(Supervisor& sup, const SupervisorSnapshot& snap, const Plan& plan,
                           std::vector<pid_t>& announced, Console& console) {
  std::string waiting;
  for (size_t i = 0; i < snap.children.size(); ++i) {
    const ChildSnapshot& c = snap.children[i];
    const Probe& p = plan.probes[i];
    if (c.phase == ChildPhase::kRunning && c.pid != 0 && p.port != 0) {
      auto reply = http_get(i == plan.gateway_index ? plan.probe_host : "127.0.0.1", p.port, p.path, 1s);
      if (reply && reply->status == 200) {
        sup.mark_ready(i, c.pid);
        if (announced[i] != c.pid) console.say(c.name + " " + p.says);
        announced[i] = c.pid;
        continue;
      }
    }
    if (c.phase != ChildPhase::kReady) waiting += (waiting.empty() ? "" : ", ") + c.name;
  }
  return waiting;
}

int serve(const ServeOptions& o, const Plan& plan) {
  // Blocked here, before the supervisor's thread exists, so that it inherits the mask and
  // only sigtimedwait below sees them. The children unblock them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Console console;
  SupervisorOptions so;
  so.event_prefix = std::string(kWho) + ": ";
  so.on_line = [&console](std::string_view line) { console.line(line); };
  Supervisor sup(so);
  const std::string url = "http://" + with_port(plan.url_host, plan.gateway_port) + "/v1";
  console.say("starting a router on 127.0.0.1:" + std::to_string(plan.router_port) + ", " + std::to_string(plan.dp) +
              " worker group(s) of " + std::to_string(plan.tp) + " rank(s) and a gateway on " + url + "; model " +
              plan.model_path);
  if (Status s = sup.start(plan.children); !s.is_ok()) return cli::fail(kWho, s);

  const auto t0 = Clock::now();
  auto next_progress = t0 + 10s;
  bool ready = false;
  std::vector<pid_t> announced(plan.children.size(), 0);
  for (;;) {
    const timespec tick{0, 250'000'000};
    if (const int sig = sigtimedwait(&signals, nullptr, &tick); sig > 0) {
      console.say(std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") +
                  ": stopping the gateway (it drains), then the router, then the workers; a second signal kills them");
      sup.begin_stop();
      return report_stop(wait_stopped(sup, console, signals, Clock::now()), console);
    }
    const SupervisorSnapshot snap = sup.snapshot();
    if (snap.failure || snap.phase != SupervisorSnapshot::Phase::kRunning) {
      return report_stop(wait_stopped(sup, console, signals), console);
    }
    const std::string waiting = probe_children(sup, snap, plan, announced, console);
    const pid_t gateway_pid = snap.children[plan.gateway_index].pid;
    const bool gateway_ready = gateway_pid != 0 && announced[plan.gateway_index] == gateway_pid;
    if (!ready && gateway_ready) {
      ready = true;
      console.say("ready — OpenAI API at " + url + " (model " + model_name_from_gateway(plan) + ")");
    } else if (!ready && Clock::now() >= t0 + std::chrono::seconds(o.ready_timeout_s)) {
      std::fprintf(stderr, "%s: not ready after %u s (still waiting for %s); stopping\n", kWho, o.ready_timeout_s,
                   waiting.c_str());
      sup.begin_stop();
      report_stop(wait_stopped(sup, console, signals), console);
      return 1;
    } else if (!ready && Clock::now() >= next_progress) {
      next_progress += 10s;
      console.say("waiting for " + waiting + " (" +
                  std::to_string(std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - t0).count()) + " s)");
    }
  }
}

}  // namespace

int run_serve(const Args& args) {
  const ServeOptions o = parse(args);
  if (o.help) {
    std::fputs(kServeHelp, stdout);
    return 0;
  }
  if (!o.error.empty()) return cli::usage_error(kProgram, "serve: " + o.error);
  auto sources = parse_config_flags(o.config_args);
  if (!sources) return cli::usage_error(kProgram, "serve: " + sources.status().message());
  // The flags, as overrides after the user's.
  if (o.model) sources->overrides.push_back("model.path=" + yaml_scalar(*o.model));
  if (o.device) sources->overrides.push_back("worker.device=" + yaml_scalar(*o.device));
  if (o.host) sources->overrides.push_back("gateway.host=" + yaml_scalar(*o.host));
  if (o.port) sources->overrides.push_back("gateway.port=" + std::to_string(*o.port));
  if (o.tp) sources->overrides.push_back("worker.tensor_parallel_size=" + std::to_string(*o.tp));
  if (o.drain_timeout_s) {
    sources->overrides.push_back("gateway.drain_timeout_s=" + std::to_string(*o.drain_timeout_s));
    sources->overrides.push_back("router.drain_timeout_s=" + std::to_string(*o.drain_timeout_s));
  }
  auto config = load_config(*sources);
  if (!config) return cli::fail(kWho, config.status());
  auto binaries = find_binaries();
  if (!binaries) return cli::fail(kWho, binaries.status());
  auto plan = make_plan(o, *config, *binaries);
  if (!plan) return cli::fail(kWho, plan.status());
  return serve(o, *plan);
}

}  // namespace tessera::launcher
