#include "router/service/router_service.h"

#include <condition_variable>
#include <deque>
#include <algorithm>
#include <random>

#include "router/worker_codec.h"

namespace tessera::router {

namespace {

v1::FinishReason to_proto(FinishReason r) {
  switch (r) {
    case FinishReason::kEos: return v1::FINISH_REASON_EOS;
    case FinishReason::kStopToken: return v1::FINISH_REASON_STOP_TOKEN;
    case FinishReason::kLength: return v1::FINISH_REASON_LENGTH;
    case FinishReason::kContextLength: return v1::FINISH_REASON_CONTEXT_LENGTH;
    case FinishReason::kAborted: return v1::FINISH_REASON_ABORTED;
    case FinishReason::kError: return v1::FINISH_REASON_ERROR;
    case FinishReason::kNone: break;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

grpc::Status to_grpc(const Status& s) {
  return {static_cast<grpc::StatusCode>(static_cast<int>(s.code())), s.message()};
}

// Events of one request, handed from the group's step loop to the Generate thread.
struct EventQueue {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<RequestEvent> events;
  void push(const RequestEvent& e) {
    {
      std::lock_guard lock(mutex);
      events.push_back(e);
    }
    cv.notify_one();
  }
};

int64_t unix_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Why a request names a token id outside [0, vocab_size), if it does.
std::optional<std::string> outside_vocabulary(const v1::GenerateRequest& request, uint32_t vocab_size) {
  auto bad = [&](int64_t id) { return id < 0 || id >= static_cast<int64_t>(vocab_size); };
  auto say = [&](const char* what, int64_t id) {
    return std::string(what) + " has token id " + std::to_string(id) + ", outside the vocabulary (0.." +
           std::to_string(vocab_size - 1) + ")";
  };
  for (int32_t id : request.prompt_token_ids()) {
    if (bad(id)) return say("the prompt", id);
  }
  for (int32_t id : request.sampling().stop_token_ids()) {
    if (bad(id)) return say("stop_token_ids", id);
  }
  for (const auto& [id, bias] : request.sampling().logit_bias()) {
    if (bad(id)) return say("logit_bias", id);
  }
  return std::nullopt;
}

}  // namespace

WorkerGroup* RouterService::place(std::span<const int32_t> prompt, const std::vector<WorkerGroup*>& excluded) {
  std::vector<WorkerGroup*> serving;
  std::vector<PlacementCandidate> candidates;
  for (WorkerGroup* g : hub_.groups()) {
    if (!g->serving() || std::find(excluded.begin(), excluded.end(), g) != excluded.end()) continue;
    serving.push_back(g);
    candidates.push_back({g->load(), g->affinity().match(prompt)});
  }
  if (serving.empty()) return nullptr;
  WorkerGroup* g = serving[choose_placement(candidates)];
  g->affinity().record(prompt);
  return g;
}

grpc::Status RouterService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (request->prompt_token_ids().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "empty prompt"};
  if (!admitting_) return {grpc::StatusCode::UNAVAILABLE, "the router is draining (shutting down)"};
  const auto model = served_model();
  if (model && !request->model().empty() && model->name() != request->model()) {
    return {grpc::StatusCode::NOT_FOUND, "this router serves " + model->name() + ", not " + request->model()};
  }
  // Token ids reach the worker's kernels and sampler: one outside the vocabulary must be
  // this request's error, never a fault that ends the whole group's session.
  if (model && model->vocab_size() > 0) {
    if (auto bad = outside_vocabulary(*request, model->vocab_size())) return {grpc::StatusCode::INVALID_ARGUMENT, *bad};
  }
  const v1::SamplingParams& sp = request->sampling();
  RequestSpec spec;
  spec.prompt.assign(request->prompt_token_ids().begin(), request->prompt_token_ids().end());
  spec.stop.max_tokens = sp.has_max_tokens() ? sp.max_tokens() : 0;
  spec.stop.min_tokens = sp.min_tokens();
  spec.stop.ignore_eos = sp.ignore_eos();
  spec.stop.stop_token_ids.assign(sp.stop_token_ids().begin(), sp.stop_token_ids().end());
  spec.priority = -request->priority();  // the contract: lower runs first; the scheduler: higher
  spec.seed = sp.has_seed() ? sp.seed() : std::random_device{}();
  spec.sampling = sampling_payload(sp);
  const std::string gateway_id = request->request_id().empty() ? "r" + std::to_string(next_id_++) : request->request_id();
  {
    std::lock_guard lock(mutex_);
    if (!live_.emplace(gateway_id, std::make_pair(nullptr, 0)).second) {
      return {grpc::StatusCode::ALREADY_EXISTS, "request " + gateway_id + " is already running"};
    }
  }
  struct Forget {
    RouterService* self;
    const std::string& id;
    ~Forget() {
      std::lock_guard lock(self->mutex_);
      self->live_.erase(id);
      self->drained_.notify_all();
    }
  } forget{this, gateway_id};

  // A request that a group gave back before streaming anything (its worker went away or
  // it drains: UNAVAILABLE) is placed again on another serving group.
  std::vector<WorkerGroup*> tried;
  grpc::Status result = {grpc::StatusCode::UNAVAILABLE, "no worker group is serving on this router"};
  bool streamed = false;
  for (;;) {
    WorkerGroup* group = place(spec.prompt, tried);
    if (!group) return result;
    tried.push_back(group);
    const uint64_t id = next_id_++;
    spec.request_id = id;
    {
      std::lock_guard lock(mutex_);
      live_[gateway_id] = {group, id};
    }
    auto queue = std::make_shared<EventQueue>();
    group->submit(spec, [queue](const RequestEvent& e) { queue->push(e); });
    bool done = false;
    bool again = false;
    while (!done) {
      std::deque<RequestEvent> batch;
      {
        std::unique_lock lock(queue->mutex);
        queue->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return !queue->events.empty(); });
        batch.swap(queue->events);
      }
      if (batch.empty() && context->IsCancelled()) {
        group->abort(id);  // the client is gone: stop computing for it
        return {grpc::StatusCode::CANCELLED, "client cancelled"};
      }
      if (request->deadline_unix_us() > 0 && unix_now_us() > request->deadline_unix_us()) {
        group->abort(id);
        return {grpc::StatusCode::DEADLINE_EXCEEDED, "the request ran past its deadline"};
      }
      for (const RequestEvent& e : batch) {
        // An error before anything was streamed is the call's status (a refused request,
        // or no worker to run it: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE...);
        // after tokens went out it is the stream's finish.
        if (e.finish == FinishReason::kError && !e.token && !streamed && !e.error.is_ok()) {
          result = to_grpc(e.error);
          again = e.error.code() == StatusCode::kUnavailable;
          done = true;
          break;
        }
        v1::GenerateResponse out;
        out.set_request_id(gateway_id);
        if (e.token) out.add_token_ids(*e.token);
        if (e.extra) *out.add_logprobs() = *std::static_pointer_cast<const v1::PositionLogprobs>(e.extra);
        if (e.finish != FinishReason::kNone) {
          v1::FinishInfo* f = out.mutable_finished();
          f->set_reason(to_proto(e.finish));
          if (!e.error.is_ok()) f->set_error_message(e.error.message());
          v1::Usage* u = out.mutable_usage();
          u->set_prompt_tokens(e.num_prompt_tokens);
          u->set_completion_tokens(e.num_output_tokens);
          u->set_cached_prompt_tokens(e.num_cached_tokens);
          done = true;
        }
        streamed = true;
        if (!writer->Write(out)) {
          group->abort(id);
          return {grpc::StatusCode::CANCELLED, "client went away"};
        }
        if (done) break;
      }
    }
    if (!again) return streamed ? grpc::Status::OK : result;
  }
}

void RouterService::stop_admitting() { admitting_ = false; }

std::optional<v1::ModelInfo> RouterService::served_model() {
  for (WorkerGroup* g : hub_.groups()) {
    if (auto model = g->model()) return model;
  }
  return std::nullopt;
}

bool RouterService::wait_drained(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return drained_.wait_for(lock, timeout, [&] { return live_.empty(); });
}

grpc::Status RouterService::Abort(grpc::ServerContext*, const v1::AbortRequest* request, v1::AbortResponse* response) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(request->request_id());
  response->set_found(it != live_.end());
  if (it != live_.end() && it->second.first) it->second.first->abort(it->second.second);
  return grpc::Status::OK;
}

grpc::Status RouterService::GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::RouterStats* response) {
  bool any_serving = false;
  for (WorkerGroup* g : hub_.groups()) {
    const SchedulerStats s = g->stats();
    any_serving = any_serving || g->serving();
    response->set_num_running(response->num_running() + static_cast<uint32_t>(s.num_running));
    response->set_num_waiting(response->num_waiting() + static_cast<uint32_t>(s.num_waiting));
    response->set_num_waiting_tokens(response->num_waiting_tokens() + static_cast<uint64_t>(s.num_waiting_tokens));
    v1::GroupStats* gs = response->add_groups();
    gs->set_group_id(g->id());
    gs->set_num_attached_ranks(g->num_attached_ranks());
    gs->set_num_ranks(g->world_size());
    gs->set_num_kv_pages(static_cast<uint64_t>(s.num_pages));
    gs->set_num_kv_pages_used(static_cast<uint64_t>(s.num_used_pages));
    gs->set_num_running(static_cast<uint32_t>(s.num_running));
  }
  if (auto model = served_model()) *response->mutable_model() = *model;
  response->set_ready(any_serving && admitting_);
  response->set_draining(!admitting_);
  response->set_healthy(hub_.healthy());
  response->set_replica(replica_);
  return grpc::Status::OK;
}

}  // namespace tessera::router
