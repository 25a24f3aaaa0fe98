// The router replicas behind one gateway: a gRPC channel to each, a poller that asks each
// for its stats (RouterStats: ready, healthy, draining, load, model) every poll interval,
// and the choice of a replica for a new request (placement.h: prefix affinity within a load
// slack, over the replicas that are ready). A replica whose stats call fails, or that says
// it is unhealthy or draining, gets no new requests until a poll finds it well again; a
// request that finds a replica unreachable marks it down at once (mark_down).
//
// Thread-safe: a poller thread per replica writes replica state under a mutex; any thread chooses.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "tessera/common/placement.h"
#include "tessera/common/status.h"
#include "tessera/v1/router.grpc.pb.h"

namespace tessera::gateway {

struct RouterPoolOptions {
  std::vector<std::string> addresses;  // host:port of each replica
  std::chrono::milliseconds poll_interval{500};
  std::chrono::milliseconds stats_timeout{1000};  // a GetStats slower than this counts as a failure
  // /health stays true while some replica answered healthy within this long.
  std::chrono::milliseconds health_window{5000};
  [[nodiscard]] Status validate() const;
};

class RouterPool {
 public:
  struct Replica {
    std::string address;
    std::unique_ptr<v1::Router::Stub> stub;
    PrefixAffinity affinity;
    std::atomic<int64_t> num_in_flight{0};  // this gateway's requests on it right now
  };

  // A replica's state as the last poll saw it.
  struct ReplicaStatus {
    std::string address;
    bool reachable = false;
    bool ready = false;    // a group serves and the replica admits
    bool healthy = false;  // its step loops come round
    bool draining = false;
    int64_t load = 0;  // running + waiting requests (of every gateway)
    std::string replica;  // the router's own name for itself
  };

  explicit RouterPool(RouterPoolOptions options);  // starts the poller
  ~RouterPool();                                   // stops it
  RouterPool(const RouterPool&) = delete;
  RouterPool& operator=(const RouterPool&) = delete;

  // A ready replica for this prompt, not one of `excluded`; nullptr when there is none.
  // The choice is recorded in the replica's affinity.
  Replica* choose(std::span<const int32_t> prompt, std::span<Replica* const> excluded);
  // A request found this replica unreachable or draining: no new requests until a poll
  // finds it ready again.
  void mark_down(Replica* replica);

  bool any_ready() const;
  // Some replica answered healthy within the health window.
  bool healthy() const;
  // The model the replicas serve (from the first that reported one).
  std::optional<v1::ModelInfo> model() const;
  std::vector<ReplicaStatus> statuses() const;
  // Blocks until a poll found a replica ready, or the timeout; true when one is.
  bool wait_ready(std::chrono::milliseconds timeout);

 private:
  void poll_loop(size_t index);
  void poll_once(size_t index);

  const RouterPoolOptions options_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<ReplicaStatus> statuses_;  // by replica index
  std::vector<std::chrono::steady_clock::time_point> last_healthy_;
  std::optional<v1::ModelInfo> model_;
  bool stop_ = false;
  std::vector<std::thread> pollers_;  // one per replica
};

}  // namespace tessera::gateway
