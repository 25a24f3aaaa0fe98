#include "router/scheduler.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace tessera::router {

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone: return "none";
    case FinishReason::kEos: return "eos";
    case FinishReason::kStopToken: return "stop_token";
    case FinishReason::kLength: return "length";
    case FinishReason::kContextLength: return "context_length";
    case FinishReason::kAborted: return "aborted";
    case FinishReason::kError: return "error";
  }
  return "?";
}

Status SchedulerOptions::validate() const {
  if (num_pages < 1) return invalid_argument("scheduler: num_pages must be at least 1");
  if (page_size < 1) return invalid_argument("scheduler: page_size must be at least 1");
  if (max_context_tokens < 2) return invalid_argument("scheduler: max_context_tokens must be at least 2");
  if (max_num_seqs < 1) return invalid_argument("scheduler: max_num_seqs must be at least 1");
  if (max_batch_tokens < 1) return invalid_argument("scheduler: max_batch_tokens must be at least 1");
  if (prefill_chunk_tokens < 0) return invalid_argument("scheduler: prefill_chunk_tokens must be >= 0");
  if (admission_batch < 1 || admission_batch > max_num_seqs) {
    return invalid_argument("scheduler: admission_batch must be in 1..max_num_seqs");
  }
  if (max_waiting_requests < 1 || max_waiting_tokens < 1) {
    return invalid_argument("scheduler: waiting queue bounds must be positive");
  }
  if (!(reserve_output_ratio > 0 && reserve_output_ratio <= 1)) {
    return invalid_argument("scheduler: reserve_output_ratio must be in (0, 1]");
  }
  return Status::ok();
}

struct Scheduler::Sequence {
  RequestSpec spec;
  uint64_t arrival = 0;
  uint32_t num_prompt = 0;
  std::vector<int32_t> tokens;  // prompt, then output
  uint32_t num_output = 0;
  uint32_t num_cached = 0;      // prompt tokens the prefix cache served at (last) admission
  // While running:
  uint64_t seq_id = 0;          // a fresh worker id at every admission
  bool running = false;
  bool on_worker = false;       // the worker has been told about seq_id
  int32_t num_computed = 0;     // tokens whose KV is in pages (results say so)
  int32_t num_scheduled = 0;    // num_computed plus what plans in flight compute
  int32_t num_pending_samples = 0;  // slices in flight that sample: tokens not yet known
  std::vector<int32_t> pages;   // this sequence holds one count on each
  bool prompt_cached = false;   // its full prompt pages went into the prefix cache

  WaitKey wait_key() const { return {-static_cast<int64_t>(spec.priority), arrival}; }
  // Tokens the worker will hold once the plans in flight have run.
  int32_t num_planned_tokens() const { return static_cast<int32_t>(tokens.size()) + num_pending_samples; }
};

Scheduler::Scheduler(SchedulerOptions options)
    : options_(std::move(options)), pool_(options_.num_pages), cache_(pool_, options_.page_size) {}

Scheduler::~Scheduler() = default;

int32_t Scheduler::peak_pages(const Sequence& s) const {
  const int64_t ctx = options_.max_context_tokens;
  const int64_t known = static_cast<int64_t>(s.tokens.size());
  const int64_t remaining_output =
      s.spec.stop.max_tokens ? std::max<int64_t>(0, int64_t{s.spec.stop.max_tokens} - s.num_output) : ctx - known;
  const auto reserved = static_cast<int64_t>(std::ceil(static_cast<double>(remaining_output) * options_.reserve_output_ratio));
  const int64_t tokens = std::min(known + reserved, ctx);
  return static_cast<int32_t>((tokens + options_.page_size - 1) / options_.page_size);
}

bool Scheduler::finishes_at_pending_sample(const Sequence& s) const {
  if (s.num_pending_samples == 0) return false;
  const uint32_t max_tokens = s.spec.stop.max_tokens;
  return (max_tokens && s.num_output + static_cast<uint32_t>(s.num_pending_samples) >= max_tokens) ||
         s.num_planned_tokens() >= options_.max_context_tokens;
}

Status Scheduler::submit(RequestSpec spec) {
  if (requests_.count(spec.request_id)) {
    return invalid_argument("request " + std::to_string(spec.request_id) + " already exists");
  }
  if (spec.prompt.empty()) return invalid_argument("empty prompt");
  if (static_cast<int64_t>(spec.prompt.size()) >= options_.max_context_tokens) {
    return invalid_argument("prompt of " + std::to_string(spec.prompt.size()) + " tokens leaves no room in the " +
                            std::to_string(options_.max_context_tokens) + "-token context");
  }
  auto seq = std::make_unique<Sequence>();
  seq->spec = std::move(spec);
  seq->tokens = seq->spec.prompt;
  seq->num_prompt = static_cast<uint32_t>(seq->tokens.size());
  // Even reserving everything, the request must fit in an otherwise empty pool.
  const int64_t ctx = options_.max_context_tokens;
  const int64_t all = seq->spec.stop.max_tokens ? std::min<int64_t>(seq->num_prompt + int64_t{seq->spec.stop.max_tokens}, ctx)
                                                : ctx;
  const int64_t need = (all + options_.page_size - 1) / options_.page_size;
  if (need > options_.num_pages) {
    return invalid_argument("prompt + max_tokens need " + std::to_string(need) + " KV pages; the worker group has " +
                            std::to_string(options_.num_pages));
  }
  if (static_cast<int64_t>(waiting_.size()) >= options_.max_waiting_requests) {
    return resource_exhausted("the waiting queue is full (" + std::to_string(options_.max_waiting_requests) +
                              " requests)");
  }
  if (waiting_tokens_ + seq->num_prompt > options_.max_waiting_tokens) {
    return resource_exhausted("the waiting queue is full (" + std::to_string(options_.max_waiting_tokens) +
                              " prompt tokens)");
  }
  seq->arrival = arrival_++;
  waiting_tokens_ += seq->num_prompt;
  Sequence* raw = seq.get();
  requests_.emplace(raw->spec.request_id, std::move(seq));
  waiting_.emplace(raw->wait_key(), raw);
  return Status::ok();
}

void Scheduler::release_pages(Sequence& seq) {
  for (int32_t page : seq.pages) pool_.release(page);
  seq.pages.clear();
}

void Scheduler::cache_computed_pages(Sequence& seq) {
  if (!options_.enable_prefix_cache) return;
  const int32_t ps = options_.page_size;
  const int32_t full = std::min<int32_t>(seq.num_computed / ps, static_cast<int32_t>(seq.pages.size()));
  if (full == 0) return;
  cache_.insert({std::span<const int32_t>(seq.tokens).first(static_cast<size_t>(full) * ps),
                 std::span<const int32_t>(seq.pages).first(static_cast<size_t>(full))});
}

RequestEvent Scheduler::finish(Sequence& seq, FinishReason reason, Status error) {
  RequestEvent ev;
  ev.request_id = seq.spec.request_id;
  ev.finish = reason;
  ev.error = std::move(error);
  ev.num_prompt_tokens = seq.num_prompt;
  ev.num_output_tokens = seq.num_output;
  ev.num_cached_tokens = seq.num_cached;
  if (seq.running) {
    if (reason != FinishReason::kError) cache_computed_pages(seq);
    release_pages(seq);
    if (seq.on_worker) pending_release_.push_back(seq.seq_id);
    by_seq_.erase(seq.seq_id);
    running_.erase(std::find(running_.begin(), running_.end(), &seq));
  } else {
    waiting_.erase(seq.wait_key());
    waiting_tokens_ -= static_cast<int64_t>(seq.tokens.size());
  }
  requests_.erase(ev.request_id);  // destroys seq
  return ev;
}

std::optional<RequestEvent> Scheduler::abort(uint64_t request_id) {
  auto it = requests_.find(request_id);
  if (it == requests_.end()) return std::nullopt;
  return finish(*it->second, FinishReason::kAborted);
}

void Scheduler::preempt(Sequence& victim, Plan& plan) {
  // Recompute later: the KV goes, the tokens stay (generated ones count as output).
  release_pages(victim);
  auto news = std::find_if(plan.new_sequences.begin(), plan.new_sequences.end(),
                           [&](const PlanNewSequence& n) { return n.seq_id == victim.seq_id; });
  if (news != plan.new_sequences.end()) {
    plan.new_sequences.erase(news);  // the worker never heard of it
  } else if (victim.on_worker) {
    plan.released_seq_ids.push_back(victim.seq_id);
  }
  std::erase_if(plan.scheduled, [&](const PlanSlice& s) { return s.seq_id == victim.seq_id; });
  by_seq_.erase(victim.seq_id);
  running_.erase(std::find(running_.begin(), running_.end(), &victim));
  victim.running = false;
  victim.on_worker = false;
  victim.num_computed = 0;
  victim.num_scheduled = 0;
  victim.num_pending_samples = 0;  // what the plans in flight sample for it is dropped
  victim.prompt_cached = false;
  waiting_.emplace(victim.wait_key(), &victim);
  waiting_tokens_ += static_cast<int64_t>(victim.tokens.size());
  ++num_preemptions_;
}

bool Scheduler::grow(Sequence& seq, int32_t tokens, PlanSlice& slice, Plan& plan) {
  const int32_t ps = options_.page_size;
  const int32_t need = (tokens + ps - 1) / ps - static_cast<int32_t>(seq.pages.size());
  if (need <= 0) return true;
  if (pool_.num_free() < need) cache_.evict(need - pool_.num_free());
  while (pool_.num_free() < need) {
    // The newest sequence of the lowest priority gives way (never the one growing).
    Sequence* victim = nullptr;
    for (Sequence* s : running_) {
      if (s == &seq) continue;
      if (!victim || s->wait_key() > victim->wait_key()) victim = s;
    }
    if (!victim) return false;
    preempt(*victim, plan);
    cache_.evict(std::max(0, need - pool_.num_free()));
  }
  auto pages = pool_.allocate(need);
  assert(pages);
  seq.pages.insert(seq.pages.end(), pages->begin(), pages->end());
  slice.new_pages.insert(slice.new_pages.end(), pages->begin(), pages->end());
  return true;
}

bool Scheduler::try_admit(Plan& plan) {
  bool admitted = false;
  if (waiting_.empty() || static_cast<int32_t>(running_.size()) >= options_.max_num_seqs) return false;
  const int64_t batch = std::min<int64_t>(options_.admission_batch, static_cast<int64_t>(waiting_.size()));
  if (options_.max_num_seqs - static_cast<int64_t>(running_.size()) < batch) return false;
  // Pages the running sequences may still claim, against what is free or freeable. The
  // evictable count walks the whole tree, so it is taken only when free pages fall short,
  // at most once per plan, then kept up to date by hand (a later match retains pages that
  // may have been evictable; admission only takes).
  int64_t committed = 0;
  for (const Sequence* s : running_) {
    committed += std::max<int64_t>(0, peak_pages(*s) - static_cast<int64_t>(s->pages.size()));
  }
  std::optional<int64_t> evictable;
  while (!waiting_.empty() && static_cast<int32_t>(running_.size()) < options_.max_num_seqs) {
    Sequence& seq = *waiting_.begin()->second;
    PrefixMatch match;
    if (options_.enable_prefix_cache) {
      match = cache_.match({seq.tokens, static_cast<int32_t>(seq.tokens.size()) - 1, /*count_in_stats=*/false});
    }
    // Matched pages held only by the cache were evictable; now the sequence holds them.
    if (evictable) {
      for (int32_t page : match.pages) *evictable -= pool_.ref_count(page) == 2 ? 1 : 0;
    }
    const int64_t need = peak_pages(seq) - static_cast<int64_t>(match.pages.size());
    if (committed + need > pool_.num_free() && !evictable) {
      evictable = options_.enable_prefix_cache ? cache_.num_evictable_pages() : 0;
    }
    if (committed + need > pool_.num_free() + std::max<int64_t>(0, evictable.value_or(0))) {
      for (int32_t page : match.pages) pool_.release(page);  // FCFS: the head waits
      break;
    }
    committed += need;
    if (options_.enable_prefix_cache) {
      cache_.record_query(static_cast<int64_t>(seq.tokens.size()), match.num_tokens);
    }
    waiting_.erase(waiting_.begin());
    waiting_tokens_ -= static_cast<int64_t>(seq.tokens.size());
    seq.running = true;
    seq.seq_id = next_seq_id_++;
    seq.pages = std::move(match.pages);
    seq.num_computed = match.num_tokens;
    seq.num_scheduled = match.num_tokens;
    seq.num_pending_samples = 0;
    seq.num_cached = static_cast<uint32_t>(std::min<int64_t>(match.num_tokens, seq.num_prompt));
    seq.on_worker = true;
    running_.push_back(&seq);
    by_seq_[seq.seq_id] = &seq;
    num_prompt_tokens_ += seq.num_prompt;
    PlanNewSequence n;
    n.seq_id = seq.seq_id;
    n.request_id = seq.spec.request_id;
    n.token_ids = seq.tokens;
    n.num_prompt_tokens = seq.num_prompt;
    n.cached_pages = seq.pages;
    n.num_cached_tokens = static_cast<uint32_t>(match.num_tokens);
    n.seed = seq.spec.seed;
    n.sampling = seq.spec.sampling;
    plan.new_sequences.push_back(std::move(n));
    admitted = true;
  }
  return admitted;
}

Plan Scheduler::next_plan() {
  assert(in_flight_.size() < static_cast<size_t>(kMaxPlansInFlight));
  Plan plan;
  plan.step_id = next_step_id_++;
  plan.released_seq_ids = std::move(pending_release_);
  pending_release_.clear();
  try_admit(plan);

  int32_t budget = options_.max_batch_tokens;
  // Decodes (one token left to compute) first, then prefill chunks, in admission order.
  // Counted from what the plans in flight leave: a pending sample is a token the worker
  // will have appended when this plan runs.
  const std::vector<Sequence*> order = running_;
  for (int pass = 0; pass < 2 && budget > 0; ++pass) {
    for (Sequence* s : order) {
      if (budget == 0) break;
      if (!s->running) continue;  // preempted earlier in this plan
      if (finishes_at_pending_sample(*s)) continue;
      const int32_t remaining = s->num_planned_tokens() - s->num_scheduled;
      if (remaining <= 0 || (pass == 0) != (remaining == 1)) continue;
      int32_t n = remaining;
      if (pass == 1 && options_.prefill_chunk_tokens > 0) n = std::min(n, options_.prefill_chunk_tokens);
      n = std::min(n, budget);
      PlanSlice slice;
      slice.seq_id = s->seq_id;
      slice.start_position = static_cast<uint32_t>(s->num_scheduled);
      slice.num_tokens = static_cast<uint32_t>(n);
      slice.sample = s->num_scheduled + n == s->num_planned_tokens();
      if (!grow(*s, s->num_scheduled + n, slice, plan)) continue;
      s->num_scheduled += n;
      if (slice.sample) ++s->num_pending_samples;
      plan.scheduled.push_back(std::move(slice));
      budget -= n;
    }
  }
  if (!plan.empty()) in_flight_.push_back(plan);
  return plan;
}

std::vector<RequestEvent> Scheduler::on_step_result(const StepOutcome& outcome) {
  std::vector<RequestEvent> events;
  if (in_flight_.empty() || outcome.step_id != in_flight_.front().step_id) return events;
  const Plan plan = std::move(in_flight_.front());
  in_flight_.pop_front();
  for (const PlanSlice& slice : plan.scheduled) {
    // Seq ids are never reused: a sequence finished, aborted or preempted (re-admitted
    // under a new id) since the plan went out is not found, and its slice counts for
    // nothing (a wasted decode after EOS included).
    auto it = by_seq_.find(slice.seq_id);
    if (it == by_seq_.end()) continue;
    Sequence& seq = *it->second;
    seq.num_computed += static_cast<int32_t>(slice.num_tokens);
    if (slice.sample) --seq.num_pending_samples;
    // A computed prompt is shareable at once: requests arriving now can reuse it.
    if (!seq.prompt_cached && seq.num_computed >= static_cast<int32_t>(seq.num_prompt)) {
      cache_computed_pages(seq);
      seq.prompt_cached = true;
    }
  }
  for (const SampledToken& st : outcome.sampled) {
    auto it = by_seq_.find(st.seq_id);
    if (it == by_seq_.end()) continue;
    Sequence& seq = *it->second;
    if (st.failed) {
      events.push_back(finish(seq, FinishReason::kError, internal_error("the worker could not sample this request")));
      continue;
    }
    seq.tokens.push_back(st.token_id);
    ++seq.num_output;
    ++num_generation_tokens_;
    const StopCriteria& stop = seq.spec.stop;
    FinishReason reason = FinishReason::kNone;
    const bool may_stop = seq.num_output > stop.min_tokens;
    const auto& eos = options_.eos_token_ids;
    if (may_stop && !stop.ignore_eos && std::find(eos.begin(), eos.end(), st.token_id) != eos.end()) {
      reason = FinishReason::kEos;
    } else if (may_stop && std::find(stop.stop_token_ids.begin(), stop.stop_token_ids.end(), st.token_id) !=
                               stop.stop_token_ids.end()) {
      reason = FinishReason::kStopToken;
    } else if (stop.max_tokens && seq.num_output >= stop.max_tokens) {
      reason = FinishReason::kLength;
    } else if (static_cast<int32_t>(seq.tokens.size()) >= options_.max_context_tokens) {
      reason = FinishReason::kContextLength;
    }
    if (reason == FinishReason::kNone) {
      RequestEvent ev;
      ev.request_id = seq.spec.request_id;
      ev.token = st.token_id;
      ev.extra = st.extra;
      ev.num_prompt_tokens = seq.num_prompt;
      ev.num_output_tokens = seq.num_output;
      ev.num_cached_tokens = seq.num_cached;
      events.push_back(std::move(ev));
    } else {
      RequestEvent ev = finish(seq, reason);
      ev.token = st.token_id;
      ev.extra = st.extra;
      events.push_back(std::move(ev));
    }
  }
  return events;
}

std::vector<RequestEvent> Scheduler::fail_running(const Status& error) {
  std::vector<RequestEvent> events;
  in_flight_.clear();
  while (!running_.empty()) events.push_back(finish(*running_.back(), FinishReason::kError, error));
  pending_release_.clear();  // the worker that would have released them is gone
  cache_.clear();
  return events;
}

std::vector<RequestEvent> Scheduler::fail_waiting(const Status& error) {
  std::vector<RequestEvent> events;
  while (!waiting_.empty()) events.push_back(finish(*waiting_.begin()->second, FinishReason::kError, error));
  return events;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats s;
  s.num_running = static_cast<int32_t>(running_.size());
  s.num_waiting = static_cast<int32_t>(waiting_.size());
  s.num_waiting_tokens = waiting_tokens_;
  s.num_used_pages = pool_.num_used();
  s.num_pages = pool_.num_pages();
  s.num_preemptions = num_preemptions_;
  s.num_prompt_tokens = num_prompt_tokens_;
  s.num_generation_tokens = num_generation_tokens_;
  s.prefix_cache = cache_.stats();
  return s;
}

}  // namespace tessera::router
