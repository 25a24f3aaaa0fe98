// tessera.v1.Router for gateways: Generate streams one request's tokens from the worker
// group it was placed on (the attached group with the least work), Abort ends a request by
// id, GetStats reports the groups. A client that goes away is aborted within one polling
// interval (50 ms), so it stops costing compute.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "router/service/worker_hub.h"
#include "tessera/v1/router.grpc.pb.h"

namespace tessera::router {

class RouterService final : public v1::Router::Service {
 public:
  explicit RouterService(WorkerHubService& hub) : hub_(hub) {}

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Abort(grpc::ServerContext* context, const v1::AbortRequest* request,
                     v1::AbortResponse* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::RouterStats* response) override;

 private:
  WorkerHubService& hub_;
  std::atomic<uint64_t> next_id_{1};
  std::mutex mutex_;
  std::map<std::string, std::pair<WorkerGroup*, uint64_t>> live_;  // gateway id → (group, id)
};

}  // namespace tessera::router
