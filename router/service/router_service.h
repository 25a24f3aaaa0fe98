// tessera.v1.Router for gateways: Generate streams one request's tokens from the worker
// group it was placed on (placement.h: prefix affinity within a load slack), Abort ends a
// request by id, GetStats reports the groups. A request its group gives back before any
// token went out (worker lost, group draining) is placed again on another serving group.
// A client that goes away is aborted within one polling interval (50 ms), so it stops
// costing compute. Drain: stop_admitting() refuses new requests (UNAVAILABLE) and
// wait_drained() waits for the live ones to end.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <span>
#include <vector>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "router/service/worker_hub.h"
#include "tessera/v1/router.grpc.pb.h"

namespace tessera::router {

class RouterService final : public v1::Router::Service {
 public:
  // `replica` names this router in GetStats (host name or pod name).
  RouterService(WorkerHubService& hub, std::string replica) : hub_(hub), replica_(std::move(replica)) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::RouterStats* response) override;

  void stop_admitting();
  bool admitting() const { return admitting_; }
  // True when no request is live any more (before the timeout).
  bool wait_drained(std::chrono::milliseconds timeout);

 private:
  // The model of the first group a worker attached to (every group serves the same one).
  std::optional<v1::ModelInfo> served_model();
  WorkerGroup* place(std::span<const int32_t> prompt, const std::vector<WorkerGroup*>& excluded);

  WorkerHubService& hub_;
  const std::string replica_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> admitting_{true};
  std::mutex mutex_;
  std::condition_variable drained_;
  std::map<std::string, std::pair<WorkerGroup*, uint64_t>> live_;  // gateway id → (group, id)
};

}  // namespace tessera::router
