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
  if (!server || port == 0) return cli::fail(kProgram, unavailable("cannot listen on " + config.router.listen));

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
       {"/health", [&] { return http::text_response(200, "ok\n"); }},
       {"/ready", [&] { return any_attached() ? http::text_response(200, "ready\n") : http::text_response(503, "no worker group attached\n"); }}});
  if (!status) return cli::fail(kProgram, status.status());
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
  auto sources = tessera::parse_config_flags(args);
  if (!sources) return tessera::cli::usage_error(kProgram, sources.status().message());
  auto config = tessera::load_config(*sources);
  if (!config) return tessera::cli::fail(kProgram, config.status());
  return serve(*config);
}
