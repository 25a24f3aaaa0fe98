#include "router/service/router_service.h"

#include <condition_variable>
#include <deque>
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

}  // namespace

grpc::Status RouterService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                     grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (request->prompt_token_ids().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "empty prompt"};
  // The attached group with the least work takes it.
  WorkerGroup* group = nullptr;
  int64_t best_load = 0;
  for (auto& [name, g] : hub_.groups()) {
    if (!g->attached()) continue;
    const SchedulerStats s = g->stats();
    const int64_t load = s.num_running + s.num_waiting;
    if (!group || load < best_load) {
      group = g;
      best_load = load;
    }
  }
  if (!group) return {grpc::StatusCode::UNAVAILABLE, "no worker group is attached to this router"};

  const v1::SamplingParams& sp = request->sampling();
  RequestSpec spec;
  spec.request_id = next_id_++;
  spec.prompt.assign(request->prompt_token_ids().begin(), request->prompt_token_ids().end());
  spec.stop.max_tokens = sp.has_max_tokens() ? sp.max_tokens() : 0;
  spec.stop.min_tokens = sp.min_tokens();
  spec.stop.ignore_eos = sp.ignore_eos();
  spec.stop.stop_token_ids.assign(sp.stop_token_ids().begin(), sp.stop_token_ids().end());
  spec.priority = request->priority();
  spec.seed = sp.has_seed() ? sp.seed() : std::random_device{}();
  spec.sampling = sampling_payload(sp);
  const uint64_t id = spec.request_id;
  const std::string gateway_id = request->request_id().empty() ? std::to_string(id) : request->request_id();
  {
    std::lock_guard lock(mutex_);
    if (!live_.emplace(gateway_id, std::make_pair(group, id)).second) {
      return {grpc::StatusCode::ALREADY_EXISTS, "request " + gateway_id + " is already running"};
    }
  }
  auto queue = std::make_shared<EventQueue>();
  group->submit(std::move(spec), [queue](const RequestEvent& e) { queue->push(e); });

  grpc::Status result = grpc::Status::OK;
  bool done = false;
  bool streamed = false;
  while (!done) {
    std::deque<RequestEvent> batch;
    {
      std::unique_lock lock(queue->mutex);
      queue->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return !queue->events.empty(); });
      batch.swap(queue->events);
    }
    if (batch.empty() && context->IsCancelled()) {
      group->abort(id);  // the client is gone: stop computing for it
      result = {grpc::StatusCode::CANCELLED, "client cancelled"};
      break;
    }
    for (const RequestEvent& e : batch) {
      // An error before anything was streamed is the call's status (a refused request,
      // or no worker to run it: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAVAILABLE...);
      // after tokens went out it is the stream's finish.
      if (e.finish == FinishReason::kError && !e.token && !streamed && !e.error.is_ok()) {
        result = to_grpc(e.error);
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
        result = {grpc::StatusCode::CANCELLED, "client went away"};
        done = true;
        break;
      }
      if (done) break;
    }
  }
  std::lock_guard lock(mutex_);
  live_.erase(gateway_id);
  return result;
}

grpc::Status RouterService::Abort(grpc::ServerContext*, const v1::AbortRequest* request, v1::AbortResponse* response) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(request->request_id());
  response->set_found(it != live_.end());
  if (it != live_.end()) it->second.first->abort(it->second.second);
  return grpc::Status::OK;
}

grpc::Status RouterService::GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::RouterStats* response) {
  uint32_t group_id = 0;
  bool any_attached = false;
  for (auto& [name, g] : hub_.groups()) {
    const SchedulerStats s = g->stats();
    const bool attached = g->attached();
    any_attached = any_attached || attached;
    response->set_num_running(response->num_running() + static_cast<uint32_t>(s.num_running));
    response->set_num_waiting(response->num_waiting() + static_cast<uint32_t>(s.num_waiting));
    response->set_num_waiting_tokens(response->num_waiting_tokens() + static_cast<uint64_t>(s.num_waiting_tokens));
    v1::GroupStats* gs = response->add_groups();
    gs->set_group_id(++group_id);
    gs->set_num_attached_ranks(attached ? 1 : 0);
    gs->set_num_ranks(1);
    gs->set_num_kv_pages(static_cast<uint64_t>(s.num_pages));
    gs->set_num_kv_pages_used(static_cast<uint64_t>(s.num_used_pages));
    gs->set_num_running(static_cast<uint32_t>(s.num_running));
  }
  response->set_ready(any_attached);
  return grpc::Status::OK;
}

}  // namespace tessera::router
