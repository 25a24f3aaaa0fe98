// The router side of WorkerHub.Attach. A worker's description makes (or rejoins) its
// group; the group's step loop then runs on the Attach handler's thread: take submitted
// requests and aborts from the inbox, plan a step with the group's Scheduler, send it,
// wait for the result, stream the events to each request's callback. When the stream
// breaks (or the worker reports a fault) the group's running requests end with an error,
// waiting ones stay queued for the next worker to attach.
//
// Threads: submit()/abort()/stats() from any thread (they go through the inbox); the
// scheduler belongs to the step loop alone.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <chrono>
#include <map>
#include <optional>
#include <memory>
#include <mutex>
#include <string>
#include <variant>

#include "router/router_metrics.h"
#include "router/scheduler.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::router {

using EventCallback = std::function<void(const RequestEvent&)>;

struct GroupOptions {
  int32_t max_num_seqs = 256;            // capped by the worker's max_step_sequences
  int32_t max_batch_tokens = 8192;       // capped by the worker's max_step_tokens
  int32_t prefill_chunk_tokens = 0;
  int64_t max_waiting_requests = 1024;
  int64_t max_waiting_tokens = int64_t{1} << 20;
  bool enable_prefix_cache = true;
  RouterMetrics* metrics = nullptr;  // step and request timings go here when set
};

class WorkerGroup {
 public:
  WorkerGroup(std::string name, GroupOptions options) : name_(std::move(name)), options_(std::move(options)) {}

  // Queues a request; `on_event` receives its tokens and exactly one finish (possibly an
  // error), on the step loop's thread.
  void submit(RequestSpec spec, EventCallback on_event);
  void abort(uint64_t request_id);
  bool attached() const;
  SchedulerStats stats() const;

  // Claims the group for one worker; false when another is attached.
  bool claim();
  // Runs the step loop over an accepted stream until it breaks. Precondition: claim().
  using Stream = grpc::ServerReaderWriter<v1::RouterMessage, v1::WorkerMessage>;
  // Also ends when the call is cancelled (worker gone while idle, server shutdown).
  void serve(grpc::ServerContext* context, Stream* stream, const v1::WorkerDescription& worker);

 private:
  using Clock = std::chrono::steady_clock;
  struct Submit {
    RequestSpec spec;
    EventCallback on_event;
    Clock::time_point arrival;
  };
  // When a request's milestones happened, for the latency histograms (step loop only).
  struct Timing {
    Clock::time_point arrival;
    std::optional<Clock::time_point> first_token;
    Clock::time_point last_token;
    uint32_t num_tokens = 0;
  };
  struct Abort {
    uint64_t request_id;
  };
  void deliver(const std::vector<RequestEvent>& events);

  const std::string name_;
  const GroupOptions options_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::variant<Submit, Abort>> inbox_;
  bool attached_ = false;
  SchedulerStats last_stats_;
  // Owned by the step loop (and kept across attachments: waiting requests survive).
  std::unique_ptr<Scheduler> scheduler_;
  std::map<uint64_t, EventCallback> callbacks_;
  std::map<uint64_t, Timing> timings_;
};

class WorkerHubService final : public v1::WorkerHub::Service {
 public:
  explicit WorkerHubService(GroupOptions options) : options_(std::move(options)) {}
  grpc::Status Attach(grpc::ServerContext* context, WorkerGroup::Stream* stream) override;
  // The group of that name (created on first use: requests may wait for its worker).
  WorkerGroup& group(const std::string& name);
  // Every group known so far (groups live as long as the service).
  std::vector<std::pair<std::string, WorkerGroup*>> groups();

 private:
  GroupOptions options_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<WorkerGroup>> groups_;
};

}  // namespace tessera::router
