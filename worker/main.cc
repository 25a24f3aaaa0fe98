// tessera-worker: holds the model on one device (the CPU engine today), attaches to its
// router over WorkerHub.Attach and executes the router's step plans; serves /metrics,
// /health and /ready on worker.metrics_port. SIGTERM/SIGINT end it cleanly.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <cstdio>
#include <thread>

#include "kernels/cpu/cpu_features.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"
#include "tessera/common/http_status_server.h"
#include "tessera/common/metrics.h"
#include "worker/service/step_trace.h"
#include "worker/service/worker_session.h"
#if TESSERA_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif

namespace {

constexpr const char* kProgram = "tessera-worker";
constexpr const char* kHelp =
    "Usage: tessera-worker [--config FILE] [--set KEY=VALUE]... | --list-devices\n"
    "\n"
    "Holds the model on one device, attaches to the router (worker.router_address) and\n"
    "executes its step plans; serves /metrics, /health and /ready on worker.metrics_port.\n"
    "Re-dials the router with backoff when the connection breaks. SIGTERM/SIGINT drain it\n"
    "(the router finishes its requests, up to router.drain_timeout_s); a second one stops it.\n"
    "\n"
    "Options:\n"
    "  -c, --config FILE   YAML configuration (docs/CONFIGURATION.md); default: built-in defaults\n"
    "      --set KEY=VALUE override one key, e.g. --set worker.router_address=10.0.0.5:50051\n"
    "  -h, --help          show this help and exit\n"
    "      --version       print the version and exit\n"
    "      --list-devices  print the CPU features and CUDA devices this worker can use\n";

int list_devices() {
  namespace cpu = tessera::kernels::cpu;
  const auto& f = cpu::cpu_features();
  std::printf("cpu: %d logical cpus, kernels %s, features: %s\n", f.num_logical_cpus,
              cpu::simd_level_name(cpu::best_simd_level(f)), cpu::describe(f).c_str());
#if TESSERA_WITH_CUDA
  const auto q = tessera::kernels::cuda::query_devices();
  if (q.cuda_error != 0) {
    std::printf("cuda: error %d: %s\n", q.cuda_error, q.error_message.c_str());
    return 1;
  }
  std::printf("cuda: runtime %d, driver %d, %zu device(s)\n", q.runtime_version, q.driver_version, q.devices.size());
  for (const auto& d : q.devices) {
    std::printf("cuda:%d %s, sm_%d%d, %d SMs, %.1f GiB total, %.1f GiB free\n", d.ordinal, d.name.c_str(),
                d.compute_capability_major, d.compute_capability_minor, d.num_sms,
                static_cast<double>(d.total_memory_bytes) / (1 << 30), static_cast<double>(d.free_memory_bytes) / (1 << 30));
  }
#else
  std::printf("cuda: not built in (TESSERA_CUDA=OFF or no nvcc at build time)\n");
#endif
  return 0;
}

int serve(const tessera::Config& config) {
  using namespace tessera;
  if (config.worker.tensor_parallel_size != 1 || config.worker.pipeline_parallel_size != 1) {
    return cli::fail(kProgram, unimplemented("tensor/pipeline parallelism is not built yet: use one rank per group"));
  }
  auto path = resolve_model_path(config.model);
  if (!path) return cli::fail(kProgram, path.status());
  engine::EngineOptions eo;
  eo.num_threads = static_cast<int>(config.worker.num_threads);
  eo.page_size = config.worker.page_size_tokens;
  eo.max_batch_tokens = config.router.max_num_batched_tokens;
  eo.max_sequences = std::min<int64_t>(config.router.max_num_seqs, eo.max_batch_tokens);
  eo.kv_cache_bytes = static_cast<int64_t>(config.worker.kv_cache_bytes);  // 0: the engine's default capacity
  // auto: the GPU when this build has the CUDA backend and a device is visible.
  bool cuda = config.worker.device == Device::kCuda;
#if TESSERA_WITH_CUDA
  if (config.worker.device == Device::kAuto) cuda = !kernels::cuda::query_devices().devices.empty();
#endif
  if (cuda) {
    eo.device = engine::EngineDevice::kCuda;
    eo.device_index = static_cast<int>(config.worker.device_index);
    eo.gpu_memory_utilization = config.worker.gpu_memory_utilization;
  }
  engine::LoadFormat format = engine::LoadFormat::kAuto;
  switch (config.model.load_format) {
    case LoadFormat::kGguf: format = engine::LoadFormat::kGguf; break;
    case LoadFormat::kSafetensors: format = engine::LoadFormat::kSafetensors; break;
    case LoadFormat::kDummy: format = engine::LoadFormat::kDummy; break;
    case LoadFormat::kAuto: break;
  }
  // Opened before the model loads, so a bad path fails at once.
  std::unique_ptr<worker::StepTrace> trace;
  if (!config.worker.step_trace_path.empty()) {
    auto opened = worker::StepTrace::open(config.worker.step_trace_path);
    if (!opened) return cli::fail(kProgram, opened.status());
    trace = std::move(*opened);
  }
  // SIGTERM/SIGINT are blocked in every thread; one thread waits for them.
  const cli::StopSignals signals;

  std::atomic<bool> loaded{false};
  std::atomic<bool> stopping{false};
  std::atomic<const worker::WorkerSession*> session_ptr{nullptr};
  metrics::Registry registry({{"tier", "worker"}, {"group", config.worker.group}});
  auto& up = registry.gauge("tessera_worker_up", "1 once the model is loaded.");
  auto& steps = registry.counter("tessera_worker_steps_total", "Step plans executed.");
  auto& step_seconds = registry.counter("tessera_worker_step_seconds_total",
                                        "Time spent executing step plans (busy share = its rate).");
  auto& phases = registry.counter("tessera_worker_step_phase_seconds_total",
                                  "tessera_worker_step_seconds_total in parts: decode (the plan message), prepare (the "
                                  "step's batch), forward (on a GPU: enqueuing it), sample (on a GPU: waiting for the "
                                  "device, then the tokens), encode (the result message).",
                                  {"phase"});
  auto& faults = registry.counter("tessera_worker_faults_total", "Step plans refused (WorkerFault).");
  auto& attachments = registry.counter("tessera_worker_attachments_total", "Attachments the router accepted.");
  std::mutex scrape_mutex;
  double scraped_steps = 0, scraped_step_seconds = 0, scraped_faults = 0, scraped_attachments = 0;
  double scraped_phases[5] = {};
  auto status = http::StatusServer::start(
      {"0.0.0.0", static_cast<uint16_t>(config.worker.metrics_port), std::chrono::milliseconds(5000), 64},
      {{"/metrics",
        [&] {
          if (const worker::WorkerSession* s = session_ptr.load()) {
            std::lock_guard lock(scrape_mutex);
            const worker::WorkerSessionStats now = s->stats();
            steps.get().advance_to(static_cast<double>(now.num_steps), scraped_steps);
            step_seconds.get().advance_to(now.step_seconds, scraped_step_seconds);
            const std::pair<const char*, double> parts[] = {{"decode", now.decode_seconds},
                                                            {"prepare", now.engine.prepare},
                                                            {"forward", now.engine.forward},
                                                            {"sample", now.engine.sample},
                                                            {"encode", now.encode_seconds}};
            for (size_t i = 0; i < std::size(parts); ++i) {
              phases.with({parts[i].first}).advance_to(parts[i].second, scraped_phases[i]);
            }
            faults.get().advance_to(static_cast<double>(now.num_faults), scraped_faults);
            attachments.get().advance_to(static_cast<double>(now.num_attachments), scraped_attachments);
          }
          return http::Response{200, std::string(metrics::kExpositionContentType), registry.expose()};
        }},
       {"/health", [&] { return stopping ? http::text_response(503, "stopping\n") : http::text_response(200, "ok\n"); }},
       // Ready: loaded and attached to a router (it can take work); 503 while loading,
       // while the router is unreachable, and while stopping.
       {"/ready", [&] {
          const worker::WorkerSession* s = session_ptr.load();
          if (!loaded || stopping) return http::text_response(503, stopping ? "stopping\n" : "loading\n");
          return s && s->attached() ? http::text_response(200, "ready\n") : http::text_response(503, "not attached to a router\n");
        }}});
  if (!status) return cli::fail(kProgram, status.status());
  std::fprintf(stderr, "%s: /metrics, /health, /ready on port %u; loading %s\n", kProgram, (*status)->port(),
               path->c_str());

  const auto t0 = std::chrono::steady_clock::now();
  auto engine = engine::Engine::load({*path, format, config.model.dummy_seed}, eo);
  if (!engine) return cli::fail(kProgram, engine.status());
  if (config.worker.cuda_graph_max_context > 0) {
    const auto tg = std::chrono::steady_clock::now();
    auto graphs = (*engine)->capture_graphs(config.worker.cuda_graph_max_context);
    if (!graphs) return cli::fail(kProgram, graphs.status());
    if (*graphs > 0) {
      std::fprintf(stderr, "%s: captured %lld decode graphs (contexts up to %u tokens) in %.2f s\n", kProgram,
                   static_cast<long long>(*graphs), config.worker.cuda_graph_max_context,
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - tg).count());
    }
  }
  loaded = true;
  up.get().set(1);
  std::fprintf(stderr, "%s: loaded in %.2f s on %s (%lld KV pages of %lld tokens); attaching to %s as group %s\n",
               kProgram, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
               (*engine)->backend_name().c_str(), static_cast<long long>((*engine)->num_pages()),
               static_cast<long long>((*engine)->page_size()), config.worker.router_address.c_str(),
               config.worker.group.c_str());

  worker::WorkerSessionOptions session_options{config.worker.router_address, config.worker.group, "",
                                               served_model_name(config.model, *path),
                                               std::chrono::milliseconds(100), std::chrono::milliseconds(5000),
                                               std::chrono::milliseconds(config.worker.heartbeat_interval_ms)};
  session_options.step_trace = trace.get();
  worker::WorkerSession session(**engine, session_options);
  session_ptr = &session;
  std::atomic<bool> run_returned{false};
  // SIGTERM drains: the router finishes this worker's requests and then detaches it for
  // good (run() returns). A second signal, or router.drain_timeout_s, stops at once.
  std::thread waiter([&] {
    signals.wait();
    if (run_returned) return;
    stopping = true;
    if (session.attached()) {
      std::fprintf(stderr, "%s: draining (up to %u s)\n", kProgram, config.router.drain_timeout_s);
      session.drain();
      signals.wait_for(std::chrono::seconds(config.router.drain_timeout_s));
    }
    session.stop();
  });
  const Status result = session.run();
  run_returned = true;
  stopping = true;
  pthread_kill(waiter.native_handle(), SIGTERM);  // wakes the waiter if it still waits
  waiter.join();
  (*status)->stop();
  session_ptr = nullptr;
  if (!result.is_ok() && result.code() != StatusCode::kCancelled) return cli::fail(kProgram, result);
  std::fprintf(stderr, "%s: stopped\n", kProgram);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  if (args.size() == 1 && args[0] == "--list-devices") return list_devices();
  auto config = tessera::cli::load_tier_config(args, kProgram);
  if (const int* code = std::get_if<int>(&config)) return *code;
  return serve(std::get<tessera::Config>(config));
}
