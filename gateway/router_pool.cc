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

RouterPool::RouterPool(RouterPoolOptions options) : options_(std::move(options)) {
  for (const std::string& address : options_.addresses) {
    auto r = std::make_unique<Replica>();
    r->address = address;
    grpc::ChannelArguments args;
    // Reconnect quickly after a router restart (the default backoff grows to 2 minutes).
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    r->stub = v1::Router::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    replicas_.push_back(std::move(r));
    statuses_.push_back(ReplicaStatus{address, false, false, false, false, 0, ""});
    last_healthy_.emplace_back();
  }
  poller_ = std::thread([this] { poll_loop(); });
}

RouterPool::~RouterPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  changed_.notify_all();
  poller_.join();
}

void RouterPool::poll_loop() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    lock.unlock();
    poll_once();
    lock.lock();
    changed_.wait_for(lock, options_.poll_interval, [&] { return stop_; });
  }
}

void RouterPool::poll_once() {
  // The replicas are asked in parallel so one that hangs delays nobody's status.
  struct Call {
    grpc::ClientContext context;
    v1::RouterStats stats;
    grpc::Status status;
    bool done = false;
  };
  std::vector<std::unique_ptr<Call>> calls;
  std::mutex done_mutex;
  std::condition_variable done_cv;
  for (auto& r : replicas_) {
    auto call = std::make_unique<Call>();
    call->context.set_deadline(std::chrono::system_clock::now() + options_.stats_timeout);
    Call* c = call.get();
    r->stub->async()->GetStats(&c->context, &empty_request_, &c->stats, [c, &done_mutex, &done_cv](grpc::Status s) {
      std::lock_guard lock(done_mutex);
      c->status = std::move(s);
      c->done = true;
      done_cv.notify_all();
    });
    calls.push_back(std::move(call));
  }
  {
    std::unique_lock lock(done_mutex);
    done_cv.wait(lock, [&] {
      return std::all_of(calls.begin(), calls.end(), [](const auto& c) { return c->done; });
    });
  }
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  for (size_t i = 0; i < calls.size(); ++i) {
    const Call& c = *calls[i];
    ReplicaStatus& s = statuses_[i];
    s.reachable = c.status.ok();
    s.ready = s.reachable && c.stats.ready() && !c.stats.draining();
    s.healthy = s.reachable && c.stats.healthy();
    s.draining = s.reachable && c.stats.draining();
    s.load = s.reachable ? static_cast<int64_t>(c.stats.num_running()) + c.stats.num_waiting() : 0;
    s.replica = c.stats.replica();
    if (s.healthy) last_healthy_[i] = now;
    if (s.reachable && c.stats.has_model() && !model_) model_ = c.stats.model();
  }
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
