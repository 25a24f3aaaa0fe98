#include "router/service/worker_hub.h"

#include "router/worker_codec.h"

namespace tessera::router {

namespace {
constexpr uint32_t kProtocolVersion = 1;
}  // namespace

void WorkerGroup::submit(RequestSpec spec, EventCallback on_event) {
  {
    std::lock_guard lock(mutex_);
    inbox_.push_back(Submit{std::move(spec), std::move(on_event), Clock::now()});
  }
  wake_.notify_all();
}

void WorkerGroup::abort(uint64_t request_id) {
  {
    std::lock_guard lock(mutex_);
    inbox_.push_back(Abort{request_id});
  }
  wake_.notify_all();
}

bool WorkerGroup::claim() {
  std::lock_guard lock(mutex_);
  if (attached_) return false;
  attached_ = true;
  return true;
}

bool WorkerGroup::attached() const {
  std::lock_guard lock(mutex_);
  return attached_;
}

SchedulerStats WorkerGroup::stats() const {
  std::lock_guard lock(mutex_);
  return last_stats_;
}

void WorkerGroup::deliver(const std::vector<RequestEvent>& events) {
  const Clock::time_point now = Clock::now();
  for (const RequestEvent& e : events) {
    if (auto t = timings_.find(e.request_id); t != timings_.end()) {
      if (e.token) {
        if (!t->second.first_token) t->second.first_token = now;
        t->second.last_token = now;
        ++t->second.num_tokens;
      }
      if (e.finish != FinishReason::kNone) {
        if (options_.metrics) {
          const Timing& tm = t->second;
          RequestTimes times;
          times.e2e = std::chrono::duration<double>(now - tm.arrival).count();
          if (tm.first_token) {
            times.first_token = std::chrono::duration<double>(*tm.first_token - tm.arrival).count();
            if (tm.num_tokens > 1) {
              times.inter_token =
                  std::chrono::duration<double>(tm.last_token - *tm.first_token).count() / (tm.num_tokens - 1);
            }
          }
          options_.metrics->observe_finished(e.finish, times);
        }
        timings_.erase(t);
      }
    }
    auto it = callbacks_.find(e.request_id);
    if (it == callbacks_.end()) continue;
    it->second(e);
    if (e.finish != FinishReason::kNone) callbacks_.erase(it);
  }
}

void WorkerGroup::serve(grpc::ServerContext* context, Stream* stream, const v1::WorkerDescription& worker) {
  // The scheduler is sized by the worker that attached (its KV pool and step limits).
  SchedulerOptions so;
  so.num_pages = static_cast<int32_t>(worker.num_kv_pages());
  so.page_size = static_cast<int32_t>(worker.page_size_tokens());
  so.max_context_tokens = static_cast<int32_t>(worker.model().context_length_tokens());
  so.max_num_seqs = std::min<int32_t>(options_.max_num_seqs, static_cast<int32_t>(worker.max_step_sequences()));
  so.max_batch_tokens = std::min<int32_t>(options_.max_batch_tokens, static_cast<int32_t>(worker.max_step_tokens()));
  so.prefill_chunk_tokens = options_.prefill_chunk_tokens;
  so.max_waiting_requests = options_.max_waiting_requests;
  so.max_waiting_tokens = options_.max_waiting_tokens;
  so.enable_prefix_cache = options_.enable_prefix_cache;
  so.eos_token_ids.assign(worker.model().eos_token_ids().begin(), worker.model().eos_token_ids().end());
  if (!scheduler_ || scheduler_->options().num_pages != so.num_pages ||
      scheduler_->options().page_size != so.page_size) {
    scheduler_ = std::make_unique<Scheduler>(so);
  }
  Status lost = unavailable("the worker of group " + name_ + " was lost");
  while (!context->IsCancelled()) {
    std::deque<std::variant<Submit, Abort>> inbox;
    {
      std::unique_lock lock(mutex_);
      // Sleep only when the scheduler has nothing either.
      if (scheduler_->idle()) wake_.wait_for(lock, std::chrono::milliseconds(50), [&] { return !inbox_.empty(); });
      inbox.swap(inbox_);
    }
    std::vector<RequestEvent> events;
    for (auto& item : inbox) {
      if (auto* s = std::get_if<Submit>(&item)) {
        const uint64_t id = s->spec.request_id;
        const Status st = scheduler_->submit(std::move(s->spec));
        if (st.is_ok()) {
          callbacks_[id] = std::move(s->on_event);
          timings_[id] = Timing{s->arrival, std::nullopt, s->arrival, 0};
        } else {
          RequestEvent e;
          e.request_id = id;
          e.finish = FinishReason::kError;
          e.error = st;
          s->on_event(e);
        }
      } else if (auto ev = scheduler_->abort(std::get<Abort>(item).request_id)) {
        events.push_back(*ev);
      }
    }
    deliver(events);
    Plan plan = scheduler_->next_plan();
    {
      std::lock_guard lock(mutex_);
      last_stats_ = scheduler_->stats();
    }
    if (plan.empty()) continue;
    const Clock::time_point step_start = Clock::now();
    int64_t step_tokens = 0;
    for (const PlanSlice& sl : plan.scheduled) step_tokens += sl.num_tokens;
    v1::RouterMessage out;
    *out.mutable_plan() = plan_to_proto(plan);
    if (!stream->Write(out)) break;
    v1::WorkerMessage in;
    bool answered = false;
    while (!answered && stream->Read(&in)) {
      if (in.has_result()) {
        if (options_.metrics) {
          options_.metrics->observe_step(std::chrono::duration<double>(Clock::now() - step_start).count(), step_tokens);
        }
        deliver(scheduler_->on_step_result(outcome_from_proto(in.result())));
        answered = true;
      } else if (in.has_fault()) {
        // The worker refused the plan: its view and ours disagree. Start over with a
        // fresh attachment (the worker forgets everything when the stream ends).
        lost = internal_error("worker fault in group " + name_ + ": " + in.fault().code() + ": " + in.fault().message());
        break;
      }
      // Heartbeats only prove the worker is alive.
    }
    if (!answered) break;
  }
  deliver(scheduler_->fail_running(lost));
  std::lock_guard lock(mutex_);
  attached_ = false;
  last_stats_ = scheduler_->stats();
}

WorkerGroup& WorkerHubService::group(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& g = groups_[name];
  if (!g) g = std::make_unique<WorkerGroup>(name, options_);
  return *g;
}

std::vector<std::pair<std::string, WorkerGroup*>> WorkerHubService::groups() {
  std::lock_guard lock(mutex_);
  std::vector<std::pair<std::string, WorkerGroup*>> out;
  for (auto& [name, g] : groups_) out.emplace_back(name, g.get());
  return out;
}

grpc::Status WorkerHubService::Attach(grpc::ServerContext* context, WorkerGroup::Stream* stream) {
  v1::WorkerMessage hello;
  if (!stream->Read(&hello) || !hello.has_describe()) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "the first message must describe the worker"};
  }
  const v1::WorkerDescription& d = hello.describe();
  auto detach = [&](const std::string& reason) {
    v1::RouterMessage m;
    m.mutable_detach()->set_reason(reason);
    stream->Write(m);
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, reason);
  };
  if (d.protocol_version() != kProtocolVersion) {
    return detach("protocol version " + std::to_string(d.protocol_version()) + " is not " +
                  std::to_string(kProtocolVersion));
  }
  if (d.world_size() != 1) return detach("multi-rank groups are not supported yet");
  if (d.num_kv_pages() == 0 || d.page_size_tokens() == 0 || d.model().context_length_tokens() < 2) {
    return detach("the description lacks KV pages, page size or context length");
  }
  WorkerGroup& g = group(d.group());
  if (!g.claim()) return detach("group " + d.group() + " already has a worker");
  v1::RouterMessage accepted;
  accepted.mutable_accepted()->set_group_id(1);
  stream->Write(accepted);
  g.serve(context, stream, d);  // a failed write shows up as a broken stream there
  return grpc::Status::OK;
}

}  // namespace tessera::router
