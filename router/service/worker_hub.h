// The router side of WorkerHub.Attach.
//
// A worker group is the set of ranks (tensor × pipeline parallel) that hold one copy of the
// model and one KV pool. Each rank's Attach call registers its stream with the group and
// then only reads: results, faults and heartbeats go into the group's mailbox. The group's
// own step-loop thread runs a *session* once every rank has attached: GroupReady to every
// rank, then plan → every rank → wait for every rank's answer → stream the events (rank
// 0's sampled tokens are the group's), with up to `pipeline_depth` plans sent ahead of
// their answers (the ranks run them in order). The session ends when a rank's stream
// breaks, a rank reports a fault, a rank is silent for `worker_timeout` (heartbeats keep a
// slow step alive), or a step has no answer within `step_timeout` (the watchdog): every
// request of the group then ends with an error (UNAVAILABLE: the router service re-places
// requests that streamed nothing), the other ranks are detached so they re-dial, and the
// group serves again once all its ranks are back — no router restart.
//
// A rank that heartbeats `draining` (its worker got SIGTERM) makes the group stop taking
// work: waiting requests and new submissions are refused with UNAVAILABLE, running ones
// finish, and then the draining ranks get a final Detach (they exit) and the others a
// plain one.
//
// Threads: submit()/abort()/stats()/serving() from any thread; the scheduler belongs to
// the step loop. A request submitted while the group has no session waits up to
// `unattached_wait` for one, then fails with UNAVAILABLE; when a session ends, everything
// submitted to it (queued, running or not yet taken in) ends at once.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "tessera/common/placement.h"
#include "router/router_metrics.h"
#include "router/scheduler.h"
#include "tessera/v1/worker.grpc.pb.h"

namespace tessera::router {

using EventCallback = std::function<void(const RequestEvent&)>;

struct GroupOptions {
  int32_t max_num_seqs = 256;            // capped by the worker's max_step_sequences
  int32_t max_batch_tokens = 8192;       // capped by the worker's max_step_tokens
  int32_t prefill_chunk_tokens = 0;
  int32_t admission_batch = 1;           // capped by max_num_seqs
  int64_t max_waiting_requests = 1024;
  int64_t max_waiting_tokens = int64_t{1} << 20;
  bool enable_prefix_cache = true;
  // Stream step N's events and queue new requests after the next plan went out (while the
  // worker computes) instead of before.
  bool overlap = true;
  // Plans in flight, 1..Scheduler::kMaxPlansInFlight: 2 plans and sends step N+1 while the
  // worker computes step N (it finds N+1 queued when N ends); 1 waits for each result.
  int32_t pipeline_depth = 2;
  // A plan without every rank's answer this long after the ranks could start it (sent,
  // and the plan before it answered).
  std::chrono::milliseconds step_timeout{30000};
  std::chrono::milliseconds worker_timeout{10000};   // a rank that sends nothing
  std::chrono::milliseconds unattached_wait{30000};  // a request on a group with no session
  RouterMetrics* metrics = nullptr;  // step and request timings go here when set
};

class WorkerGroup {
 public:
  using Clock = std::chrono::steady_clock;
  using Stream = grpc::ServerReaderWriter<v1::RouterMessage, v1::WorkerMessage>;

  WorkerGroup(std::string name, uint32_t id, GroupOptions options);  // starts the step loop
  ~WorkerGroup();  // ends any session (requests fail) and joins the step loop

  // Queues a request; `on_event` receives its tokens and exactly one finish (possibly an
  // error), on the step loop's thread.
  void submit(RequestSpec spec, EventCallback on_event);
  void abort(uint64_t request_id);

  // All ranks attached, session running and not draining: new requests are welcome.
  bool serving() const;
  uint32_t num_attached_ranks() const;
  uint32_t world_size() const;  // 0 until a rank has attached
  // The model the group's ranks described (nullopt until a rank has attached).
  std::optional<v1::ModelInfo> model() const;
  SchedulerStats stats() const;
  // Requests submitted and not yet finished (placement's load).
  int64_t load() const { return load_; }
  PrefixAffinity& affinity() { return affinity_; }
  const std::string& name() const { return name_; }
  uint32_t id() const { return id_; }

  // False when the step loop has not come round for longer than the step timeout plus a
  // margin: it is stuck (a router bug), and /health says so.
  bool healthy() const;
  // Marks ranks silent for longer than worker_timeout lost and cancels their calls (also
  // unblocks a step-loop write stuck on a dead peer). Called by the hub's monitor.
  void check_liveness();

  // One rank's Attach call: registers the stream and reads it until it ends. Returns the
  // call's status; the step loop never touches the stream after this returns.
  grpc::Status attach(grpc::ServerContext* context, Stream* stream, const v1::WorkerDescription& worker);

  // Ends the session (requests still there fail with `reason`), detaches every rank (not
  // final: they re-dial whoever serves next) and refuses work from now on.
  void shutdown(const std::string& reason);

 private:
  struct Rank {
    Stream* stream = nullptr;
    grpc::ServerContext* context = nullptr;
    v1::WorkerDescription description;
    bool registered = false;  // AttachAccepted went out: the step loop may write
    Clock::time_point last_seen;
    std::deque<v1::WorkerMessage> replies;  // results and faults, in order
    bool draining = false;
    std::optional<Clock::time_point> detached;  // sent a Detach: waiting for the stream to close
    std::optional<std::string> lost;  // why the rank is gone
    bool released = false;            // the step loop is done with the stream
  };
  struct Submit {
    RequestSpec spec;
    EventCallback on_event;
    Clock::time_point arrival;
  };
  struct Abort {
    uint64_t request_id;
  };
  // A plan the ranks have and have not answered yet.
  struct SentPlan {
    uint64_t step_id = 0;
    int64_t num_tokens = 0;  // scheduled, for the step metrics
    Clock::time_point sent;
  };
  // When a request's milestones happened, for the latency histograms (step loop only).
  struct Timing {
    Clock::time_point arrival;
    std::optional<Clock::time_point> admitted;
    std::optional<Clock::time_point> first_token;
    Clock::time_point last_token;
    uint32_t num_tokens = 0;
  };

  void loop();
  // Between sessions: release lost ranks, expire requests that waited too long for a
  // session, start one when every rank is there.
  void idle_turn();
  void run_session();
  // Takes the inbox into the scheduler (or refuses it while draining).
  void take_inbox(bool refuse, const Status& refusal);
  // Sends the plan to every rank of the session.
  Status send_plan(const Plan& plan);
  // Waits for every rank's answer to `plan`, the oldest in flight, and applies rank 0's;
  // returns the events to stream. `started`: when the ranks could start it (sent, and the
  // plan before it answered); the watchdog (step_timeout) and the step-duration metric
  // count from there. An error ends the session.
  Result<std::vector<RequestEvent>> await_result(const SentPlan& plan, Clock::time_point started);
  void end_session(const Status& reason);
  void deliver(const std::vector<RequestEvent>& events);
  void fail_submit(Submit& s, const Status& error);
  // Writes to a rank (step loop only); false when the stream is broken.
  bool write(Rank& rank, const v1::RouterMessage& message);
  // The first lost rank's reason (mutex_ held).
  std::optional<std::string> lost_rank_locked() const;

  const std::string name_;
  const uint32_t id_;
  const GroupOptions options_;
  PrefixAffinity affinity_;
  std::atomic<int64_t> load_{0};
  std::atomic<int64_t> loop_tick_ns_{0};

  mutable std::mutex mutex_;
  std::condition_variable wake_;      // the step loop: inbox, replies, ranks
  std::condition_variable released_;  // attach handlers: their rank was let go
  std::deque<std::variant<Submit, Abort>> inbox_;
  std::map<uint32_t, std::shared_ptr<Rank>> ranks_;
  uint32_t world_size_ = 0;
  std::optional<v1::ModelInfo> model_;  // of the first rank that attached
  bool in_session_ = false;
  bool draining_ = false;
  bool shutting_down_ = false;
  std::optional<std::string> shutdown_reason_;
  SchedulerStats last_stats_;

  // Step loop only.
  std::unique_ptr<Scheduler> scheduler_;
  std::vector<std::shared_ptr<Rank>> session_ranks_;  // rank order
  std::map<uint64_t, EventCallback> callbacks_;
  std::map<uint64_t, Timing> timings_;
  std::thread thread_;
};

class WorkerHubService final : public v1::WorkerHub::Service {
 public:
  explicit WorkerHubService(GroupOptions options);
  ~WorkerHubService() override;
  grpc::Status Attach(grpc::ServerContext* context, WorkerGroup::Stream* stream) override;
  // The group of that name (created on first use).
  WorkerGroup& group(const std::string& name);
  // Every group known so far (groups live as long as the service).
  std::vector<WorkerGroup*> groups();
  bool any_serving();
  bool healthy();
  // Every group ends its session and refuses work (router shutdown).
  void shutdown(const std::string& reason);

 private:
  GroupOptions options_;
  std::mutex mutex_;
  std::map<std::string, std::unique_ptr<WorkerGroup>> groups_;
  std::atomic<bool> stop_{false};
  std::thread monitor_;  // check_liveness() of every group, every 100 ms
};

}  // namespace tessera::router
