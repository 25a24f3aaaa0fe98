#include "router/service/worker_hub.h"

#include <algorithm>
#include <utility>

#include "router/worker_codec.h"

namespace tessera::router {

namespace {

constexpr uint32_t kProtocolVersion = 1;
// How often the step loop comes round when nothing wakes it.
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// A detached rank whose worker does not close its stream within this is cancelled.
constexpr auto kDetachGrace = std::chrono::seconds(2);

double seconds_between(WorkerGroup::Clock::time_point from, WorkerGroup::Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

std::string ms_text(std::chrono::milliseconds ms) { return std::to_string(ms.count()) + " ms"; }

// Turns a worker away: a Detach with the reason (it logs it and re-dials), and the call's
// status.
grpc::Status refuse(WorkerGroup::Stream* stream, const std::string& reason) {
  v1::RouterMessage m;
  m.mutable_detach()->set_reason(reason);
  stream->Write(m);
  return {grpc::StatusCode::FAILED_PRECONDITION, reason};
}

// A second rank of the group must describe the same model and KV pool as the first.
std::string shape_mismatch(const v1::WorkerDescription& have, const v1::WorkerDescription& got) {
  auto differs = [](const char* what, auto a, auto b) {
    return a == b ? std::string() : std::string(what) + " " + std::to_string(b) + " (the group has " + std::to_string(a) + ")";
  };
  for (std::string d : {differs("world size", have.world_size(), got.world_size()),
                        differs("KV pages", have.num_kv_pages(), got.num_kv_pages()),
                        differs("page size", have.page_size_tokens(), got.page_size_tokens()),
                        differs("context length", have.model().context_length_tokens(), got.model().context_length_tokens()),
                        differs("vocabulary size", have.model().vocab_size(), got.model().vocab_size())}) {
    if (!d.empty()) return d;
  }
  if (have.model().architecture() != got.model().architecture()) {
    return "architecture " + got.model().architecture() + " (the group has " + have.model().architecture() + ")";
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------- WorkerGroup

WorkerGroup::WorkerGroup(std::string name, uint32_t id, GroupOptions options)
    : name_(std::move(name)), id_(id), options_(std::move(options)) {
  loop_tick_ns_ = Clock::now().time_since_epoch().count();
  thread_ = std::thread([this] { loop(); });
}

WorkerGroup::~WorkerGroup() {
  shutdown("the router is shutting down");
  thread_.join();
}

void WorkerGroup::submit(RequestSpec spec, EventCallback on_event) {
  ++load_;
  Submit s{std::move(spec), std::move(on_event), Clock::now()};
  {
    std::lock_guard lock(mutex_);
    if (!shutting_down_) {
      inbox_.push_back(std::move(s));
      wake_.notify_all();
      return;
    }
  }
  fail_submit(s, unavailable("worker group " + name_ + " is shut down"));
}

void WorkerGroup::abort(uint64_t request_id) {
  std::lock_guard lock(mutex_);
  inbox_.push_back(Abort{request_id});
  wake_.notify_all();
}

bool WorkerGroup::serving() const {
  std::lock_guard lock(mutex_);
  return in_session_ && !draining_ && !shutting_down_;
}

uint32_t WorkerGroup::num_attached_ranks() const {
  std::lock_guard lock(mutex_);
  uint32_t n = 0;
  for (const auto& [r, rank] : ranks_) n += rank->registered && !rank->lost ? 1 : 0;
  return n;
}

uint32_t WorkerGroup::world_size() const {
  std::lock_guard lock(mutex_);
  return world_size_;
}

std::optional<v1::ModelInfo> WorkerGroup::model() const {
  std::lock_guard lock(mutex_);
  return model_;
}

SchedulerStats WorkerGroup::stats() const {
  std::lock_guard lock(mutex_);
  return last_stats_;
}

bool WorkerGroup::healthy() const {
  const auto tick = Clock::time_point(Clock::duration(loop_tick_ns_.load()));
  return Clock::now() - tick < options_.step_timeout + std::chrono::seconds(5);
}

void WorkerGroup::check_liveness() {
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  for (auto& [r, rank] : ranks_) {
    if (rank->lost || !rank->registered) continue;
    if (rank->detached && now - *rank->detached > kDetachGrace) {
      rank->context->TryCancel();  // its worker did not close the stream after the Detach
    } else if (!rank->detached && now - rank->last_seen > options_.worker_timeout) {
      rank->lost = "rank " + std::to_string(r) + " of group " + name_ + " sent nothing for " +
                   ms_text(std::chrono::duration_cast<std::chrono::milliseconds>(now - rank->last_seen));
      rank->context->TryCancel();
      wake_.notify_all();
    }
  }
}

void WorkerGroup::shutdown(const std::string& reason) {
  std::lock_guard lock(mutex_);
  if (shutting_down_) return;
  shutting_down_ = true;
  shutdown_reason_ = reason;
  wake_.notify_all();
}

std::optional<std::string> WorkerGroup::lost_rank_locked() const {
  for (const auto& [r, rank] : ranks_) {
    if (rank->lost) return rank->lost;
  }
  return std::nullopt;
}

bool WorkerGroup::write(Rank& rank, const v1::RouterMessage& message) { return rank.stream->Write(message); }

void WorkerGroup::fail_submit(Submit& s, const Status& error) {
  RequestEvent e;
  e.request_id = s.spec.request_id;
  e.finish = error.code() == StatusCode::kCancelled ? FinishReason::kAborted : FinishReason::kError;
  e.error = error;
  e.num_prompt_tokens = static_cast<uint32_t>(s.spec.prompt.size());
  s.on_event(e);
  --load_;
}

grpc::Status WorkerGroup::attach(grpc::ServerContext* context, Stream* stream, const v1::WorkerDescription& worker) {
  const uint32_t r = worker.rank();
  auto rank = std::make_shared<Rank>();
  rank->stream = stream;
  rank->context = context;
  rank->description = worker;
  rank->last_seen = Clock::now();
  {
    std::lock_guard lock(mutex_);
    if (shutting_down_) return refuse(stream, "the router is shutting down");
    if (!ranks_.empty()) {
      const std::string diff = shape_mismatch(ranks_.begin()->second->description, worker);
      if (!diff.empty()) return refuse(stream, "group " + name_ + ": this worker has " + diff);
    }
    if (ranks_.count(r)) return refuse(stream, "group " + name_ + " already has rank " + std::to_string(r));
    world_size_ = worker.world_size();
    if (!model_) model_ = worker.model();
    ranks_[r] = rank;
  }
  v1::RouterMessage accepted;
  accepted.mutable_accepted()->set_group_id(id_);
  const bool sent = stream->Write(accepted);
  {
    std::lock_guard lock(mutex_);
    if (sent) {
      rank->registered = true;
    } else {
      rank->lost = "rank " + std::to_string(r) + " of group " + name_ + " went away while attaching";
    }
    wake_.notify_all();
  }
  v1::WorkerMessage in;
  while (sent && stream->Read(&in)) {
    std::lock_guard lock(mutex_);
    rank->last_seen = Clock::now();
    if (in.has_heartbeat()) {
      if (in.heartbeat().draining() && !rank->draining) {
        rank->draining = true;
        draining_ = true;
        wake_.notify_all();
      }
    } else if (in.has_result() || in.has_fault()) {
      rank->replies.push_back(std::move(in));
      wake_.notify_all();
    } else if (in.has_describe()) {
      rank->lost = "rank " + std::to_string(r) + " of group " + name_ + " described itself twice";
      wake_.notify_all();
      break;
    }
  }
  std::unique_lock lock(mutex_);
  if (!rank->lost) rank->lost = "the worker of rank " + std::to_string(r) + " of group " + name_ + " was lost";
  wake_.notify_all();
  released_.wait(lock, [&] { return rank->released; });
  return grpc::Status::OK;
}

void WorkerGroup::loop() {
  for (;;) {
    loop_tick_ns_ = Clock::now().time_since_epoch().count();
    {
      std::lock_guard lock(mutex_);
      if (shutting_down_ && !in_session_) break;
    }
    idle_turn();
  }
  // Let every rank go (their calls end) and fail what is still queued.
  std::deque<std::variant<Submit, Abort>> inbox;
  {
    std::lock_guard lock(mutex_);
    for (auto& [r, rank] : ranks_) {
      rank->released = true;
      rank->context->TryCancel();
    }
    ranks_.clear();
    world_size_ = 0;
    inbox.swap(inbox_);
    released_.notify_all();
  }
  for (auto& item : inbox) {
    if (auto* s = std::get_if<Submit>(&item)) fail_submit(*s, unavailable(shutdown_reason_.value_or("shut down")));
  }
}

void WorkerGroup::idle_turn() {
  std::vector<std::pair<Submit, Status>> failed;
  bool start = false;
  {
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, kPollInterval);
    // Ranks that are gone leave; their Attach calls return.
    for (auto it = ranks_.begin(); it != ranks_.end();) {
      if (it->second->lost) {
        it->second->released = true;
        it = ranks_.erase(it);
      } else {
        ++it;
      }
    }
    released_.notify_all();
    if (ranks_.empty()) world_size_ = 0;
    draining_ = std::any_of(ranks_.begin(), ranks_.end(), [](const auto& kv) { return kv.second->draining; });
    // Aborts of queued requests, and requests that waited too long for a session.
    const auto now = Clock::now();
    std::deque<std::variant<Submit, Abort>> keep;
    std::vector<uint64_t> aborts;
    for (auto& item : inbox_) {
      if (auto* a = std::get_if<Abort>(&item)) aborts.push_back(a->request_id);
    }
    for (auto& item : inbox_) {
      auto* s = std::get_if<Submit>(&item);
      if (!s) continue;
      if (std::find(aborts.begin(), aborts.end(), s->spec.request_id) != aborts.end()) {
        failed.emplace_back(std::move(*s), cancelled("aborted"));
      } else if (shutting_down_ || now - s->arrival > options_.unattached_wait) {
        failed.emplace_back(std::move(*s), unavailable("no worker group " + name_ + " serving within " +
                                                           ms_text(options_.unattached_wait)));
      } else {
        keep.push_back(std::move(item));
      }
    }
    inbox_.swap(keep);
    bool complete = world_size_ > 0 && ranks_.size() == world_size_;
    for (const auto& [r, rank] : ranks_) complete = complete && rank->registered && !rank->lost && !rank->detached;
    start = complete && !shutting_down_ && !draining_;
    if (start) in_session_ = true;
  }
  for (auto& [s, st] : failed) fail_submit(s, st);
  if (start) run_session();
}

void WorkerGroup::take_inbox(bool refuse, const Status& refusal) {
  std::deque<std::variant<Submit, Abort>> inbox;
  {
    std::lock_guard lock(mutex_);
    inbox.swap(inbox_);
  }
  std::vector<RequestEvent> events;
  for (auto& item : inbox) {
    if (auto* s = std::get_if<Submit>(&item)) {
      if (refuse) {
        fail_submit(*s, refusal);
        continue;
      }
      const uint64_t id = s->spec.request_id;  // the spec moves into the scheduler
      const Status st = scheduler_->submit(std::move(s->spec));
      if (!st.is_ok()) {
        fail_submit(*s, st);
        continue;
      }
      callbacks_[id] = std::move(s->on_event);
      timings_[id] = Timing{s->arrival, std::nullopt, std::nullopt, s->arrival, 0};
    } else if (auto ev = scheduler_->abort(std::get<Abort>(item).request_id)) {
      events.push_back(*ev);
    }
  }
  deliver(events);
}

void WorkerGroup::run_session() {
  {
    std::lock_guard lock(mutex_);
    session_ranks_.clear();
    for (auto& [r, rank] : ranks_) session_ranks_.push_back(rank);
  }
  // Sized by the ranks that attached (their KV pool and step limits).
  const v1::WorkerDescription& worker = session_ranks_.front()->description;
  SchedulerOptions so;
  so.num_pages = static_cast<int32_t>(worker.num_kv_pages());
  so.page_size = static_cast<int32_t>(worker.page_size_tokens());
  so.max_context_tokens = static_cast<int32_t>(worker.model().context_length_tokens());
  so.max_num_seqs = std::min<int32_t>(options_.max_num_seqs, static_cast<int32_t>(worker.max_step_sequences()));
  so.max_batch_tokens = std::min<int32_t>(options_.max_batch_tokens, static_cast<int32_t>(worker.max_step_tokens()));
  so.prefill_chunk_tokens = options_.prefill_chunk_tokens;
  so.admission_batch = std::min(options_.admission_batch, so.max_num_seqs);
  so.max_waiting_requests = options_.max_waiting_requests;
  so.max_waiting_tokens = options_.max_waiting_tokens;
  so.enable_prefix_cache = options_.enable_prefix_cache;
  so.eos_token_ids.assign(worker.model().eos_token_ids().begin(), worker.model().eos_token_ids().end());
  scheduler_ = std::make_unique<Scheduler>(so);
  affinity_.clear();  // a new KV pool holds no prefixes

  v1::RouterMessage ready;
  ready.mutable_group_ready();
  for (auto& rank : session_ranks_) {
    if (!write(*rank, ready)) {
      end_session(unavailable("group " + name_ + " lost a rank while starting"));
      return;
    }
  }
  const Status draining_refusal = unavailable("worker group " + name_ + " is draining");
  // Pipelining: up to `depth` plans in flight. After step N's results the loop plans and
  // sends what comes after the plan the worker is already computing, so the worker finds
  // its next plan queued when a step ends (scheduler.h says why planning ahead of results
  // is sound). Overlap: step N's events are streamed, and new requests queued, after that
  // plan went out, while the worker computes.
  const int32_t depth = std::clamp(options_.pipeline_depth, 1, Scheduler::kMaxPlansInFlight);
  std::deque<SentPlan> in_flight;  // oldest first: the worker answers in this order
  // When the last result came: the worker could not start the plan queued behind it before.
  Clock::time_point last_result = Clock::now();
  std::vector<RequestEvent> undelivered;
  for (;;) {
    loop_tick_ns_ = Clock::now().time_since_epoch().count();
    std::optional<std::string> stop;
    bool draining = false;
    {
      std::lock_guard lock(mutex_);
      if (shutting_down_) stop = shutdown_reason_;
      if (!stop) stop = lost_rank_locked();
      draining = draining_;
    }
    if (stop) {
      deliver(undelivered);
      end_session(unavailable(*stop));
      return;
    }
    take_inbox(draining, draining_refusal);
    if (draining) {
      deliver(scheduler_->fail_waiting(draining_refusal));
      if (scheduler_->idle()) {  // nothing in flight either
        deliver(undelivered);
        end_session(Status::ok());
        return;
      }
    }
    Status st = Status::ok();
    while (st.is_ok() && static_cast<int32_t>(in_flight.size()) < depth) {
      Plan plan = scheduler_->next_plan();
      const Clock::time_point planned = Clock::now();
      for (const PlanNewSequence& n : plan.new_sequences) {
        if (auto t = timings_.find(n.request_id); t != timings_.end() && !t->second.admitted) t->second.admitted = planned;
      }
      {
        std::lock_guard lock(mutex_);
        last_stats_ = scheduler_->stats();
      }
      if (plan.empty()) break;
      if (!options_.overlap) deliver(std::exchange(undelivered, {}));
      st = send_plan(plan);
      int64_t num_tokens = 0;
      for (const PlanSlice& sl : plan.scheduled) num_tokens += sl.num_tokens;
      in_flight.push_back({plan.step_id, num_tokens, planned});
    }
    if (st.is_ok() && in_flight.empty()) {
      deliver(std::exchange(undelivered, {}));
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, kPollInterval, [&] { return !inbox_.empty() || shutting_down_ || lost_rank_locked() || draining_ != draining; });
      continue;
    }
    if (st.is_ok()) {
      deliver(std::exchange(undelivered, {}));  // while the worker computes
      take_inbox(draining, draining_refusal);
      const SentPlan oldest = in_flight.front();
      in_flight.pop_front();
      auto events = await_result(oldest, std::max(oldest.sent, last_result));
      last_result = Clock::now();
      if (events) undelivered = std::move(*events);
      st = events.status();
    }
    if (!st.is_ok()) {
      deliver(undelivered);
      end_session(st);  // the plans still in flight fail with the rest
      return;
    }
  }
}

Status WorkerGroup::send_plan(const Plan& plan) {
  v1::RouterMessage out;
  *out.mutable_plan() = plan_to_proto(plan);
  for (auto& rank : session_ranks_) {
    if (!write(*rank, out)) return unavailable("the worker of group " + name_ + " went away during a step");
  }
  return Status::ok();
}

Result<std::vector<RequestEvent>> WorkerGroup::await_result(const SentPlan& plan, Clock::time_point started) {
  const Clock::time_point deadline = started + options_.step_timeout;
  std::optional<v1::StepResult> result;  // rank 0's (the first rank's)
  size_t answered = 0;
  std::vector<bool> done(session_ranks_.size(), false);
  {
    std::unique_lock lock(mutex_);
    while (answered < session_ranks_.size()) {
      loop_tick_ns_ = Clock::now().time_since_epoch().count();
      for (size_t i = 0; i < session_ranks_.size(); ++i) {
        Rank& rank = *session_ranks_[i];
        if (rank.lost) return unavailable(*rank.lost);
        while (!done[i] && !rank.replies.empty()) {
          v1::WorkerMessage m = std::move(rank.replies.front());
          rank.replies.pop_front();
          if (m.has_fault()) {
            return internal_error("worker fault in group " + name_ + ": " + m.fault().code() + ": " + m.fault().message());
          }
          if (m.result().step_id() != plan.step_id) {
            return internal_error("group " + name_ + " answered step " + std::to_string(m.result().step_id()) +
                                  " to plan " + std::to_string(plan.step_id));
          }
          if (i == 0) result = std::move(*m.mutable_result());
          done[i] = true;
          ++answered;
        }
      }
      if (answered == session_ranks_.size()) break;
      if (shutting_down_) return unavailable(shutdown_reason_.value_or("shut down"));
      if (Clock::now() >= deadline) {
        return deadline_exceeded("step " + std::to_string(plan.step_id) + " of group " + name_ +
                                 " had no answer within " + ms_text(options_.step_timeout) + " (watchdog)");
      }
      wake_.wait_until(lock, std::min(deadline, Clock::now() + kPollInterval));
    }
  }
  if (options_.metrics) options_.metrics->observe_step(seconds_between(started, Clock::now()), plan.num_tokens);
  return scheduler_->on_step_result(outcome_from_proto(*result));
}

void WorkerGroup::end_session(const Status& reason) {
  // OK means drained: nothing should be left, but whatever is ends as UNAVAILABLE.
  const Status error = reason.is_ok() ? unavailable("group " + name_ + " drained") : reason;
  std::vector<std::shared_ptr<Rank>> ranks;
  std::deque<std::variant<Submit, Abort>> inbox;
  {
    // Not serving before any request hears of the failure: a client that reacts to its
    // error (places it again, checks health) must not find this group still serving.
    std::lock_guard lock(mutex_);
    last_stats_ = scheduler_->stats();
    last_stats_.num_running = last_stats_.num_waiting = 0;
    in_session_ = false;
    for (auto& [r, rank] : ranks_) {
      if (!rank->lost && !rank->detached) ranks.push_back(rank);
    }
    inbox.swap(inbox_);
  }
  deliver(scheduler_->fail_running(error));
  deliver(scheduler_->fail_waiting(error));
  // Requests that had not reached the scheduler go back too (the router service places
  // them on another group, or says none serves), rather than waiting for this one.
  for (auto& item : inbox) {
    if (auto* s = std::get_if<Submit>(&item)) fail_submit(*s, error);
  }
  // The others re-dial (a drained worker exits); their streams close from their side.
  for (auto& rank : ranks) {
    v1::RouterMessage m;
    m.mutable_detach()->set_reason(error.message());
    m.mutable_detach()->set_final(reason.is_ok() && rank->draining);
    write(*rank, m);
    std::lock_guard lock(mutex_);
    rank->detached = Clock::now();
  }
  scheduler_.reset();
  session_ranks_.clear();
}

void WorkerGroup::deliver(const std::vector<RequestEvent>& events) {
  const Clock::time_point now = Clock::now();
  for (const RequestEvent& e : events) {
    if (auto t = timings_.find(e.request_id); t != timings_.end()) {
      Timing& tm = t->second;
      if (e.token) {
        if (!tm.first_token) tm.first_token = now;
        tm.last_token = now;
        ++tm.num_tokens;
      }
      if (e.finish != FinishReason::kNone) {
        if (options_.metrics) {
          RequestTimes times;
          times.e2e = seconds_between(tm.arrival, now);
          if (tm.admitted) times.queue = seconds_between(tm.arrival, *tm.admitted);
          if (tm.first_token) {
            times.first_token = seconds_between(tm.arrival, *tm.first_token);
            if (tm.num_tokens > 1) times.inter_token = seconds_between(*tm.first_token, tm.last_token) / (tm.num_tokens - 1);
          }
          options_.metrics->observe_finished(e.finish, times);
        }
        timings_.erase(t);
      }
    }
    auto it = callbacks_.find(e.request_id);
    if (it == callbacks_.end()) continue;
    it->second(e);
    if (e.finish != FinishReason::kNone) {
      callbacks_.erase(it);
      --load_;
    }
  }
}

// ---------------------------------------------------------------- WorkerHubService

WorkerHubService::WorkerHubService(GroupOptions options) : options_(std::move(options)) {
  monitor_ = std::thread([this] {
    while (!stop_) {
      for (WorkerGroup* g : groups()) g->check_liveness();
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

WorkerHubService::~WorkerHubService() {
  stop_ = true;
  monitor_.join();
}

WorkerGroup& WorkerHubService::group(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& g = groups_[name];
  if (!g) g = std::make_unique<WorkerGroup>(name, static_cast<uint32_t>(groups_.size()), options_);
  return *g;
}

std::vector<WorkerGroup*> WorkerHubService::groups() {
  std::lock_guard lock(mutex_);
  std::vector<WorkerGroup*> out;
  for (auto& [name, g] : groups_) out.push_back(g.get());
  return out;
}

bool WorkerHubService::any_serving() {
  for (WorkerGroup* g : groups()) {
    if (g->serving()) return true;
  }
  return false;
}

bool WorkerHubService::healthy() {
  for (WorkerGroup* g : groups()) {
    if (!g->healthy()) return false;
  }
  return true;
}

void WorkerHubService::shutdown(const std::string& reason) {
  for (WorkerGroup* g : groups()) g->shutdown(reason);
}

grpc::Status WorkerHubService::Attach(grpc::ServerContext* context, WorkerGroup::Stream* stream) {
  v1::WorkerMessage hello;
  if (!stream->Read(&hello) || !hello.has_describe()) {
    return {grpc::StatusCode::INVALID_ARGUMENT, "the first message must describe the worker"};
  }
  const v1::WorkerDescription& d = hello.describe();
  std::string problem;
  if (d.protocol_version() != kProtocolVersion) {
    problem = "protocol version " + std::to_string(d.protocol_version()) + " is not " + std::to_string(kProtocolVersion);
  } else if (d.world_size() < 1 || d.rank() >= d.world_size()) {
    problem = "rank " + std::to_string(d.rank()) + " is not below world size " + std::to_string(d.world_size());
  } else if (d.num_kv_pages() == 0 || d.page_size_tokens() == 0 || d.model().context_length_tokens() < 2) {
    problem = "the description lacks KV pages, page size or context length";
  } else if (d.group().empty()) {
    problem = "the description names no group";
  }
  if (!problem.empty()) return refuse(stream, problem);
  return group(d.group()).attach(context, stream, d);
}

}  // namespace tessera::router
