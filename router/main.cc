// tessera-router: serves tessera.v1.Router to gateways and tessera.v1.WorkerHub to workers
// on router.listen; every worker group that attaches gets a scheduler and a step loop.
// /metrics, /health and /ready (ready = at least one group attached) are on
// router.metrics_port. SIGTERM/SIGINT stop it.
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <signal.h>

#include <cstdio>

#include "router/router_metrics.h"
#include "router/service/router_service.h"
#include "router/service/worker_hub.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"
#include "tessera/common/http_status_server.h"
#include "tessera/common/metrics.h"

namespace {

constexpr const char* kProgram = "tessera-router";
constexpr const char* kHelp =
    "Usage: tessera-router [--config FILE] [--set KEY=VALUE]...\n"
    "\n"
    "Schedules every token of every request over the worker groups that attach to it:\n"
    "admission, KV pages, prefix cache, continuous batching. Serves Router (gateways) and\n"
    "WorkerHub (workers) on router.listen, and /metrics, /health, /ready on\n"
    "router.metrics_port. Exits on SIGTERM/SIGINT.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   YAML configuration (docs/CONFIGURATION.md); default: built-in defaults\n"
    "      --set KEY=VALUE override one key, e.g. --set router.listen=0.0.0.0:50051\n"
    "  -h, --help          show this help and exit\n"
    "      --version       print the version and exit\n";

int fail(const tessera::Status& s) {
  std::fprintf(stderr, "%s: %s\n", kProgram, s.message().c_str());
  return 1;
}

tessera::http::Response text(int status, const char* body) { return {status, "text/plain; charset=utf-8", body}; }

int serve(const tessera::Config& config) {
  using namespace tessera;
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  metrics::Registry registry({{"tier", "router"}});
  router::RouterMetrics router_metrics(registry);
  router::GroupOptions go;
  go.metrics = &router_metrics;
  go.max_num_seqs = static_cast<int32_t>(config.router.max_num_seqs);
  go.max_batch_tokens = static_cast<int32_t>(config.router.max_num_batched_tokens);
  go.max_waiting_requests = config.router.max_waiting_requests;
  go.max_waiting_tokens = static_cast<int64_t>(config.router.max_waiting_tokens);
  go.enable_prefix_cache = config.router.enable_prefix_cache;
  router::WorkerHubService hub(go);
  router::RouterService router_service(hub);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.router.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&hub);
  builder.RegisterService(&router_service);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return fail(unavailable("cannot listen on " + config.router.listen));

  auto any_attached = [&] {
    for (auto& [name, g] : hub.groups()) {
      if (g->attached()) return true;
    }
    return false;
  };
  auto status = http::StatusServer::start(
      {"0.0.0.0", static_cast<uint16_t>(config.router.metrics_port), std::chrono::milliseconds(5000), 64},
      {{"/metrics",
        [&] {
          for (auto& [name, g] : hub.groups()) router_metrics.update(name, g->stats());
          return http::Response{200, std::string(metrics::kExpositionContentType), registry.expose()};
        }},
       {"/health", [&] { return text(200, "ok\n"); }},
       {"/ready", [&] { return any_attached() ? text(200, "ready\n") : text(503, "no worker group attached\n"); }}});
  if (!status) return fail(status.status());
  std::fprintf(stderr, "%s: serving Router and WorkerHub on %s (port %d); /metrics, /health, /ready on port %u\n",
               kProgram, config.router.listen.c_str(), port, (*status)->port());

  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "%s: stopping\n", kProgram);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  (*status)->stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  tessera::ConfigSources sources;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "--config" || a == "-c" || a == "--set") && i + 1 >= args.size()) {
      return tessera::cli::usage_error(kProgram, a + " needs a value");
    }
    if (a == "--config" || a == "-c") {
      sources.file = args[++i];
    } else if (a == "--set") {
      sources.overrides.push_back(args[++i]);
    } else {
      return tessera::cli::usage_error(kProgram, "unknown argument '" + a + "'");
    }
  }
  auto config = tessera::load_config(sources);
  if (!config) return fail(config.status());
  return serve(*config);
}
