#include "gateway/router_pool.h"

#include <algorithm>

namespace tessera::gateway {

Status RouterPoolOptions::validate() const {
  if (addresses.empty()) return invalid_argument("gateway.routers: at least one router address is needed");
  for (const std::string& a : addresses) {
    if (a.empty() || a.find(':') == std::string::npos) {
      return invalid_argument("gateway.routers: '" + a + "' is not host:port");
    }
  }
  if (poll_interval.count() <= 0 || stats_timeout.count() <= 0) {
    return invalid_argument("router pool: poll interval and stats timeout must be positive");
  }
  return Status::ok();
}

namespace {

// gRPC 1.51 runs callback-API reactions on a shared completion queue with its own threads,
// created when the first channel uses it and torn down when the last such channel goes.
// When that last channel is released on one of those threads (a finished call's deferred
// cleanup, racing with the pool's destruction), the teardown joins its own thread and the
// process aborts (grpc/grpc#32584). A channel that uses the queue once and is never freed
// keeps it alive for the life of the process, so it is never torn down at all.
void keep_callback_queue_alive() {
  static const bool kept = [] {
    auto* channel = new std::shared_ptr<grpc::Channel>(
        grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));  // leaked on purpose
    auto* stub = v1::Router::NewStub(*channel).release();
    auto* context = new grpc::ClientContext;
    context->set_deadline(std::chrono::system_clock::now());
    auto* request = new v1::GetStatsRequest;
    auto* response = new v1::RouterStats;
    stub->async()->GetStats(context, request, response, [](grpc::Status) {});
    return true;
  }();
  (void)kept;
}

}  // namespace

RouterPool::RouterPool(RouterPoolOptions options) : options_(std::move(options)) {
  keep_callback_queue_alive();
  for (const std::string& address : options_.addresses) {
    auto r = std::make_unique<Replica>();
    r->address = address;
    grpc::ChannelArguments args;
    // Reconnect quickly after a router restart (the default backoff grows to 2 minutes).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    r->stub = v1::Router::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    replicas_.push_back(std::move(r));
    ReplicaStatus status;  // not reachable until a poll says otherwise
    status.address = address;
    statuses_.push_back(std::move(status));
    last_healthy_.emplace_back();
  }
  // One poller per replica, with blocking calls: a replica that hangs delays nobody else's
  // status, and no stats call is still in flight on gRPC's threads once the pollers are
  // joined (a channel released from a callback thread can bring gRPC 1.51 down).
  for (size_t i = 0; i < replicas_.size(); ++i) pollers_.emplace_back([this, i] { poll_loop(i); });
}

RouterPool::~RouterPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  for (auto& t : pollers_) t.join();
}

void RouterPool::poll_loop(size_t index) {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    lock.unlock();
    poll_once(index);
    lock.lock();
    changed_.wait_for(lock, options_.poll_interval, [&] { return stop_; });
  }
}

void RouterPool::poll_once(size_t index) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + options_.stats_timeout);
  v1::RouterStats stats;
  const grpc::Status status = replicas_[index]->stub->GetStats(&context, v1::GetStatsRequest(), &stats);
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  ReplicaStatus& s = statuses_[index];
  s.reachable = status.ok();
  s.ready = s.reachable && stats.ready() && !stats.draining();
  s.healthy = s.reachable && stats.healthy();
  s.draining = s.reachable && stats.draining();
  s.load = s.reachable ? static_cast<int64_t>(stats.num_running()) + stats.num_waiting() : 0;
  s.replica = stats.replica();
  if (s.healthy) last_healthy_[index] = now;
  if (s.reachable && stats.has_model() && !model_) model_ = stats.model();
  changed_.notify_all();
}

RouterPool::Replica* RouterPool::choose(std::span<const int32_t> prompt, std::span<Replica* const> excluded) {
  std::vector<size_t> indices;
  std::vector<PlacementCandidate> candidates;
  {
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < replicas_.size(); ++i) {
      Replica* r = replicas_[i].get();
      if (!statuses_[i].ready || std::find(excluded.begin(), excluded.end(), r) != excluded.end()) continue;
      indices.push_back(i);
      // The poll's load is stale by up to an interval; this gateway's own in-flight count is
      // current, so a burst from here spreads out at once.
      candidates.push_back({std::max<int64_t>(statuses_[i].load, r->num_in_flight.load()), 0});
    }
  }
  if (candidates.empty()) return nullptr;
  for (size_t k = 0; k < candidates.size(); ++k) {
    candidates[k].affinity_tokens = replicas_[indices[k]]->affinity.match(prompt);
  }
  Replica* r = replicas_[indices[choose_placement(candidates)]].get();
  r->affinity.record(prompt);
  return r;
}

void RouterPool::mark_down(Replica* replica) {
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < replicas_.size(); ++i) {
    if (replicas_[i].get() == replica) statuses_[i].ready = false;
  }
}

bool RouterPool::any_ready() const {
  std::lock_guard lock(mutex_);
  return std::any_of(statuses_.begin(), statuses_.end(), [](const ReplicaStatus& s) { return s.ready; });
}

bool RouterPool::healthy() const {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < statuses_.size(); ++i) {
    if (last_healthy_[i] != std::chrono::steady_clock::time_point{} && now - last_healthy_[i] <= options_.health_window) {
      return true;
    }
  }
  return false;
}

std::optional<v1::ModelInfo> RouterPool::model() const {
  std::lock_guard lock(mutex_);
  return model_;
}

std::vector<RouterPool::ReplicaStatus> RouterPool::statuses() const {
  std::lock_guard lock(mutex_);
  return statuses_;
}

bool RouterPool::wait_ready(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    return stop_ || std::any_of(statuses_.begin(), statuses_.end(), [](const ReplicaStatus& s) { return s.ready; });
  }) && !stop_;
}

}  // namespace tessera::gateway
