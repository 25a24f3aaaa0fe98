// The worker side of WorkerHub.Attach: dial the router, describe this worker, then execute
// the plans that come down the stream in order and send each result (or a WorkerFault)
// back. When the stream breaks the worker forgets every sequence — the router fails or
// recomputes them — and dials again with exponential backoff, so a router restart or a
// network blip needs no worker restart.
//
// While attached, a side thread sends a Heartbeat whenever nothing else went out for
// `heartbeat_interval`, so the router tells a long step from a dead worker. drain() (on
// SIGTERM) tells the router, which stops admitting to the group, lets its requests finish
// and then detaches the worker for good; run() then returns OK.
//
// Thread: run() blocks on the calling thread, which also runs the engine's steps; stop()
// and drain() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "tessera/common/status.h"
#include "worker/engine/engine.h"

namespace grpc {
class ClientContext;
}

namespace tessera::worker {

inline constexpr uint32_t kProtocolVersion = 1;

class StepTrace;

struct WorkerSessionOptions {
  std::string router_address;  // host:port of the router's WorkerHub
  std::string group = "default";
  std::string worker_id;       // empty: host/pid
  std::string model_name;      // served model name (ModelInfo.name)
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{5000};
  std::chrono::milliseconds heartbeat_interval{1000};
  // This worker's place in its group (tensor × pipeline parallel ranks).
  uint32_t rank = 0;
  uint32_t world_size = 1;
  // Not null: every executed plan is recorded there (worker.step_trace_path). Not owned.
  StepTrace* step_trace = nullptr;
  [[nodiscard]] Status validate() const;
};

struct WorkerSessionStats {
  int64_t num_attachments = 0;  // streams opened and accepted
  int64_t num_steps = 0;
  int64_t num_faults = 0;
  int64_t num_heartbeats = 0;
  double step_seconds = 0;  // time spent executing plans (the rest of an attachment is waiting)
  // step_seconds in parts: decoding the plan message, the engine's phases, encoding the result.
  double decode_seconds = 0;
  engine::StepPhaseSeconds engine;
  double encode_seconds = 0;
};

class WorkerSession {
 public:
  WorkerSession(engine::Engine& engine, WorkerSessionOptions options);
  ~WorkerSession();

  // Serves until the router sends a final Detach (OK) or stop() is called (CANCELLED).
  [[nodiscard]] Status run();
  void stop();
  // Asks the router to finish this worker's requests and let it go (see above). Returns
  // at once; run() returns when the router detaches the worker.
  void drain();
  bool draining() const { return draining_; }
  WorkerSessionStats stats() const;
  // True while a router has accepted this worker on a live stream.
  bool attached() const { return attached_; }

 private:
  // One attachment: OK when the router detached for good, an error when the stream broke.
  Status serve_once(bool* final_detach);

  engine::Engine& engine_;
  WorkerSessionOptions options_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> attached_{false};
  std::atomic<bool> draining_{false};
  std::atomic<uint64_t> current_step_{0};
  mutable std::mutex mutex_;  // guards context_ and stats_
  std::condition_variable wake_heartbeat_;  // drain() and the end of an attachment
  grpc::ClientContext* context_ = nullptr;  // of the live stream, for stop()
  WorkerSessionStats stats_;
};

}  // namespace tessera::worker
