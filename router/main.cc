// tessera-router: serves tessera.v1.Router to gateways and tessera.v1.WorkerHub to workers
// on router.listen; every worker group that attaches gets a scheduler and a step loop.
// /metrics, /health (every group's step loop makes progress) and /ready (a group serves
// and the router is not draining) are on router.metrics_port. SIGTERM/SIGINT drain it:
// new requests are refused, live ones get router.drain_timeout_s to finish, then the
// workers are detached (they re-dial the next router) and it exits.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

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
    "router.metrics_port. SIGTERM/SIGINT drain it (router.drain_timeout_s), then it exits.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   YAML configuration (docs/CONFIGURATION.md); default: built-in defaults\n"
    "      --set KEY=VALUE override one key, e.g. --set router.listen=0.0.0.0:50051\n"
    "  -h, --help          show this help and exit\n"
    "      --version       print the version and exit\n";

int serve(const tessera::Config& config) {
  using namespace tessera;
  const cli::StopSignals signals;

  metrics::Registry registry({{"tier", "router"}});
  router::RouterMetrics router_metrics(registry);
  router::GroupOptions go;
  go.metrics = &router_metrics;
  go.max_num_seqs = static_cast<int32_t>(config.router.max_num_seqs);
  go.max_batch_tokens = static_cast<int32_t>(config.router.max_num_batched_tokens);
  go.max_waiting_requests = config.router.max_waiting_requests;
  go.max_waiting_tokens = static_cast<int64_t>(config.router.max_waiting_tokens);
  go.enable_prefix_cache = config.router.enable_prefix_cache;
  go.prefill_chunk_tokens = static_cast<int32_t>(config.router.prefill_chunk_tokens);
  go.admission_batch = static_cast<int32_t>(config.router.admission_batch);
  go.overlap = config.router.overlap;
  go.pipeline_depth = static_cast<int32_t>(config.router.pipeline_depth);
  go.step_timeout = std::chrono::seconds(config.router.watchdog_timeout_s);
  go.worker_timeout = std::chrono::seconds(config.router.worker_timeout_s);
  go.unattached_wait = std::chrono::seconds(config.router.watchdog_timeout_s);
  router::WorkerHubService hub(go);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  router::RouterService router_service(hub, std::string(host) + "/" + config.router.listen);

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(config.router.listen, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&hub);
  builder.RegisterService(&router_service);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) return cli::fail(kProgram, unavailable("cannot listen on " + config.router.listen));

  auto status = http::StatusServer::start(
      {"0.0.0.0", static_cast<uint16_t>(config.router.metrics_port), std::chrono::milliseconds(5000), 64},
      {{"/metrics",
        [&] {
          for (router::WorkerGroup* g : hub.groups()) router_metrics.update(g->name(), g->stats());
          return http::Response{200, std::string(metrics::kExpositionContentType), registry.expose()};
        }},
       {"/health",
        [&] { return hub.healthy() ? http::text_response(200, "ok\n") : http::text_response(503, "a step loop is stalled\n"); }},
       {"/ready", [&] {
          if (!router_service.admitting()) return http::text_response(503, "draining\n");
          return hub.any_serving() ? http::text_response(200, "ready\n") : http::text_response(503, "no worker group serving\n");
        }}});
  if (!status) return cli::fail(kProgram, status.status());
  std::fprintf(stderr, "%s: serving Router and WorkerHub on %s (port %d); /metrics, /health, /ready on port %u\n",
               kProgram, config.router.listen.c_str(), port, (*status)->port());

  signals.wait();
  std::fprintf(stderr, "%s: draining (up to %u s)\n", kProgram, config.router.drain_timeout_s);
  router_service.stop_admitting();
  const bool drained = router_service.wait_drained(std::chrono::seconds(config.router.drain_timeout_s));
  std::fprintf(stderr, "%s: %s; stopping\n", kProgram, drained ? "drained" : "drain timed out, ending the rest");
  hub.shutdown("the router is shutting down");
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  (*status)->stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  auto config = tessera::cli::load_tier_config(args, kProgram);
  if (const int* code = std::get_if<int>(&config)) return *code;
  return serve(std::get<tessera::Config>(config));
}
