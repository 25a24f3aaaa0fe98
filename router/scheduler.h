// The scheduler of one worker group: every token of every request is decided here.
//
//   submit() ─▶ waiting (priority, then FCFS; bounded in requests and tokens)
//   next_plan() ─▶ admit while the KV pages the running requests may still need fit
//                  (LightLLM-style: each request reserves its projected peak, prompt +
//                  max_tokens), reusing cached prefix pages; then one step: a decode token
//                  for every running sequence first, prefill chunks in what is left of the
//                  token budget; pages allocated as sequences grow (evicting unreferenced
//                  prefix-cache pages, preempting the newest sequence by recompute when
//                  even that is not enough)
//   on_step_result() ─▶ append sampled tokens, finish (EOS, stop ids, max_tokens,
//                  context), release pages, keep full prompt pages in the prefix cache
//
// Up to kMaxPlansInFlight plans may be in flight: plan N+1 is built before step N's
// results. That works because the worker runs plans in order and appends each sampled
// token itself (a slice never carries its input token): a sequence that samples in plan N
// decodes in plan N+1 at the position of the token N will sample. Planning counts what is
// scheduled (num_scheduled, pending samples); what is known computed (num_computed, the
// only thing the prefix cache trusts) moves with results only. A sequence known to finish
// at its pending sample (max_tokens, context) is not scheduled again; one that stops on
// EOS or a stop id gets one wasted decode, whose result is ignored. Pages freed while
// plans are in flight may go to another sequence in a later plan: the worker's in-order
// execution puts the older plan's writes first.
//
// Native types only (the service's codec converts proto ↔ these). Not thread-safe: the
// group's step loop owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "router/kv/page_pool.h"
#include "router/kv/prefix_cache.h"
#include "tessera/common/status.h"

namespace tessera::router {

enum class FinishReason { kNone, kEos, kStopToken, kLength, kContextLength, kAborted, kError };
const char* finish_reason_name(FinishReason reason);

struct StopCriteria {
  uint32_t max_tokens = 0;  // 0: until the context is full
  uint32_t min_tokens = 0;  // EOS and stop ids are ignored before this many tokens
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
};

struct RequestSpec {
  uint64_t request_id = 0;
  std::vector<int32_t> prompt;
  StopCriteria stop;
  int32_t priority = 0;  // higher is admitted first; FCFS within a priority
  uint64_t seed = 0;
  // How the worker samples: opaque here, carried into the plan's NewSequence.
  std::shared_ptr<const void> sampling;
};

struct SchedulerOptions {
  int32_t num_pages = 0;           // the group's KV capacity
  int32_t page_size = 16;
  int32_t max_context_tokens = 0;  // the model's context length
  int32_t max_num_seqs = 64;       // running sequences
  int32_t max_batch_tokens = 512;  // tokens per step, decodes and prefill chunks together
  int32_t prefill_chunk_tokens = 0;  // > 0: a prompt advances at most this much per step
  // Waiting requests are admitted once this many sequence slots are free, or as many as
  // are waiting: under saturation, prompts arrive in the batch in groups (fewer, larger
  // prefill steps) instead of one each time a sequence finishes. 1: whenever one is free.
  int32_t admission_batch = 1;
  int64_t max_waiting_requests = 1024;
  int64_t max_waiting_tokens = int64_t{1} << 22;  // prompt tokens waiting, summed
  bool enable_prefix_cache = true;
  // Share of max_tokens reserved at admission: 1 never preempts; below 1 admits more and
  // preempts (recompute) when the pages run out.
  double reserve_output_ratio = 1.0;
  std::vector<int32_t> eos_token_ids;
  [[nodiscard]] Status validate() const;
};

// ---- a step plan (mirrors tessera.v1.StepPlan) ----
struct PlanNewSequence {
  uint64_t seq_id = 0;
  std::vector<int32_t> token_ids;  // prompt, then output generated before a preemption
  uint32_t num_prompt_tokens = 0;
  std::vector<int32_t> cached_pages;
  uint32_t num_cached_tokens = 0;
  uint64_t seed = 0;
  std::shared_ptr<const void> sampling;
  uint64_t request_id = 0;  // router-side only (queue-time metrics); not sent
};

struct PlanSlice {
  uint64_t seq_id = 0;
  uint32_t start_position = 0;
  uint32_t num_tokens = 0;
  std::vector<int32_t> new_pages;
  bool sample = false;
};

struct Plan {
  uint64_t step_id = 0;
  std::vector<PlanNewSequence> new_sequences;
  std::vector<PlanSlice> scheduled;
  std::vector<uint64_t> released_seq_ids;
  // True when the plan has nothing for the worker (no slices, news or releases).
  bool empty() const { return new_sequences.empty() && scheduled.empty() && released_seq_ids.empty(); }
};

struct SampledToken {
  uint64_t seq_id = 0;
  int32_t token_id = 0;
  bool failed = false;  // the worker could not sample this sequence (bad logits)
  std::shared_ptr<const void> extra;  // logprobs etc., passed through to the event
};

struct StepOutcome {
  uint64_t step_id = 0;
  std::vector<SampledToken> sampled;
};

// What a request's stream receives: a token, a finish, or both.
struct RequestEvent {
  uint64_t request_id = 0;
  std::optional<int32_t> token;
  std::shared_ptr<const void> extra;
  FinishReason finish = FinishReason::kNone;
  Status error;  // with kError
  uint32_t num_prompt_tokens = 0;
  uint32_t num_output_tokens = 0;
  uint32_t num_cached_tokens = 0;  // prompt tokens served from the prefix cache
};

struct SchedulerStats {
  int32_t num_running = 0;
  int32_t num_waiting = 0;
  int64_t num_waiting_tokens = 0;
  int32_t num_used_pages = 0;
  int32_t num_pages = 0;
  int64_t num_preemptions = 0;
  int64_t num_prompt_tokens = 0;      // admitted prompts, summed
  int64_t num_generation_tokens = 0;  // sampled tokens
  PrefixCacheStats prefix_cache;
  double kv_usage() const { return num_pages ? static_cast<double>(num_used_pages) / num_pages : 0.0; }
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);
  ~Scheduler();

  // Queues a request. INVALID_ARGUMENT when it can never run (empty, too long for the
  // context or the KV pool, duplicate id); RESOURCE_EXHAUSTED when the waiting queue is
  // full (the client may retry later).
  [[nodiscard]] Status submit(RequestSpec spec);
  // Ends a request wherever it is; its pages are free for the next plan. Returns its
  // final event, or nothing for an unknown (or already finished) id.
  std::optional<RequestEvent> abort(uint64_t request_id);
  static constexpr int32_t kMaxPlansInFlight = 2;

  // The next step, planned on top of the plans in flight (whose results have not come).
  // Precondition: fewer than kMaxPlansInFlight in flight. An empty plan means there is
  // nothing more to do until a result comes (or a request, when none is in flight); it
  // does not go in flight.
  Plan next_plan();
  int32_t num_plans_in_flight() const { return static_cast<int32_t>(in_flight_.size()); }
  // Applies the results of the oldest plan in flight; returns the events to stream. A
  // result for any other step is ignored (no events): the worker answers in order, and the
  // service checks that before calling.
  std::vector<RequestEvent> on_step_result(const StepOutcome& outcome);
  // The worker group is gone: every request it was running (or had in flight) ends with
  // `error`; waiting requests stay queued; the plans in flight, the KV state and the prefix
  // cache are forgotten.
  std::vector<RequestEvent> fail_running(const Status& error);
  // Every waiting request ends with `error` (the group stops taking work).
  std::vector<RequestEvent> fail_waiting(const Status& error);

  SchedulerStats stats() const;
  // Nothing to run, release or hear back.
  bool idle() const {
    return running_.empty() && waiting_.empty() && pending_release_.empty() && in_flight_.empty();
  }
  const SchedulerOptions& options() const { return options_; }
  // Pages held by running sequences and the cache: the test's leak check.
  const PagePool& pages() const { return pool_; }
  RadixPrefixCache& prefix_cache() { return cache_; }

 private:
  struct Sequence;
  using WaitKey = std::pair<int64_t, uint64_t>;  // (-priority, arrival): the order of waiting_

  int32_t peak_pages(const Sequence& s) const;
  // The sample pending in a plan in flight ends the sequence whatever the token
  // (max_tokens or the context): nothing more is scheduled for it.
  bool finishes_at_pending_sample(const Sequence& s) const;
  bool try_admit(Plan& plan);
  // Pages for seq to hold `tokens` tokens; false when none could be found even after
  // evicting and preempting (the sequence waits).
  bool grow(Sequence& seq, int32_t tokens, PlanSlice& slice, Plan& plan);
  void preempt(Sequence& victim, Plan& plan);
  void cache_computed_pages(Sequence& seq);
  void release_pages(Sequence& seq);
  RequestEvent finish(Sequence& seq, FinishReason reason, Status error = {});

  SchedulerOptions options_;
  PagePool pool_;
  RadixPrefixCache cache_;
  uint64_t next_seq_id_ = 1;
  uint64_t next_step_id_ = 1;
  uint64_t arrival_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Sequence>> requests_;  // by request id
  std::unordered_map<uint64_t, Sequence*> by_seq_;  // running sequences by worker seq id
  std::map<WaitKey, Sequence*> waiting_;
  std::vector<Sequence*> running_;  // admission order
  std::vector<uint64_t> pending_release_;  // seq ids the worker must forget next plan
  std::deque<Plan> in_flight_;  // sent, oldest first; results come in this order
  int64_t waiting_tokens_ = 0;
  int64_t num_preemptions_ = 0;
  int64_t num_prompt_tokens_ = 0;
  int64_t num_generation_tokens_ = 0;
};

}  // namespace tessera::router
