// router/scheduler against a fake worker whose "model" reads each sequence's history back
// from the KV pages it was told to use: wrong page tables, a wrong prefix-cache hit or a
// bad recompute after preemption all change the tokens. Outputs must equal each request
// run alone, whatever the mix of arrivals, aborts, chunking, caching and preemption, and
// no page may leak — with each plan answered before the next, and with the next plan
// built while the worker has not answered the one before (two in flight).
#include "router/scheduler.h"

#include <catch2/catch.hpp>

#include <deque>
#include <map>
#include <random>
#include <set>

using namespace tessera;
using namespace tessera::router;

namespace {

constexpr int32_t kVocab = 1000;
constexpr int32_t kEos = 2;

// The fake model: the next token from the whole history (FNV-1a), EOS now and then.
int32_t next_token(const std::vector<int32_t>& history) {
  uint64_t h = 1469598103934665603ull;
  for (int32_t t : history) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
  if (h % 23 == 0) return kEos;
  return static_cast<int32_t>(3 + h % (kVocab - 3));
}

struct FakeWorker {
  int32_t page_size;
  std::vector<int32_t> kv;  // the "KV" of each slot: the token id computed there
  struct Seq {
    std::vector<int32_t> tokens;
    std::vector<int32_t> pages;
    int32_t computed = 0;
  };
  std::map<uint64_t, Seq> seqs;

  FakeWorker(int32_t num_pages, int32_t ps) : page_size(ps), kv(static_cast<size_t>(num_pages * ps), -1) {}

  int32_t& slot(const Seq& s, int32_t pos) {
    return kv[static_cast<size_t>(s.pages[static_cast<size_t>(pos / page_size)] * page_size + pos % page_size)];
  }

  StepOutcome run(const Plan& plan) {
    for (uint64_t id : plan.released_seq_ids) REQUIRE(seqs.erase(id) == 1);
    for (const PlanNewSequence& n : plan.new_sequences) {
      REQUIRE(seqs.count(n.seq_id) == 0);
      Seq s{n.token_ids, n.cached_pages, static_cast<int32_t>(n.num_cached_tokens)};
      // A prefix-cache hit must hand over pages that really hold these tokens.
      for (int32_t pos = 0; pos < s.computed; ++pos) REQUIRE(slot(s, pos) == s.tokens[static_cast<size_t>(pos)]);
      seqs[n.seq_id] = std::move(s);
    }
    StepOutcome out{plan.step_id, {}};
    for (const PlanSlice& sl : plan.scheduled) {
      Seq& s = seqs.at(sl.seq_id);
      s.pages.insert(s.pages.end(), sl.new_pages.begin(), sl.new_pages.end());
      REQUIRE(static_cast<int32_t>(sl.start_position) == s.computed);
      const int32_t end = s.computed + static_cast<int32_t>(sl.num_tokens);
      REQUIRE(end <= static_cast<int32_t>(s.tokens.size()));
      REQUIRE(static_cast<int32_t>(s.pages.size()) * page_size >= end);
      for (int32_t pos = s.computed; pos < end; ++pos) slot(s, pos) = s.tokens[static_cast<size_t>(pos)];
      s.computed = end;
      if (sl.sample) {
        REQUIRE(end == static_cast<int32_t>(s.tokens.size()));
        std::vector<int32_t> history;  // read back through the page table
        for (int32_t pos = 0; pos < end; ++pos) history.push_back(slot(s, pos));
        const int32_t t = next_token(history);
        s.tokens.push_back(t);
        out.sampled.push_back({sl.seq_id, t, false, nullptr});
      }
    }
    return out;
  }
};

// What a request produces run alone.
std::vector<int32_t> expected_output(const std::vector<int32_t>& prompt, const StopCriteria& stop, int32_t ctx) {
  std::vector<int32_t> tokens = prompt, out;
  while (true) {
    const int32_t t = next_token(tokens);
    tokens.push_back(t);
    out.push_back(t);
    const bool may_stop = out.size() > stop.min_tokens;
    if (may_stop && !stop.ignore_eos && t == kEos) break;
    if (stop.max_tokens && out.size() >= stop.max_tokens) break;
    if (static_cast<int32_t>(tokens.size()) >= ctx) break;
  }
  return out;
}

struct Harness {
  SchedulerOptions options;
  Scheduler scheduler;
  FakeWorker worker;
  std::map<uint64_t, std::vector<int32_t>> outputs;
  std::map<uint64_t, FinishReason> finished;
  int64_t max_step_tokens = 0;
  // Plans in flight: 1 answers each plan before the next; 2 builds the next plan first,
  // as the service does (the worker still runs them in order).
  int depth = 1;
  std::deque<Plan> sent;
  std::map<uint64_t, uint64_t> request_of_seq;
  // Sequences preempted while a plan in flight still computed for them.
  int64_t num_preempted_in_flight = 0;
  std::map<uint64_t, int64_t> num_slices;  // by request

  explicit Harness(SchedulerOptions o, int plans_in_flight = 1)
      : options(o), scheduler(o), worker(o.num_pages, o.page_size), depth(plans_in_flight) {}

  void take(const std::vector<RequestEvent>& events) {
    for (const RequestEvent& e : events) {
      REQUIRE(finished.count(e.request_id) == 0);
      if (e.token) outputs[e.request_id].push_back(*e.token);
      if (e.finish != FinishReason::kNone) finished[e.request_id] = e.finish;
    }
  }

  // Plans until `depth` are in flight, then the worker answers the oldest; false when
  // there was nothing to do.
  bool step() {
    while (static_cast<int>(sent.size()) < depth) {
      Plan plan = scheduler.next_plan();
      if (plan.empty()) break;
      check(plan);
      sent.push_back(std::move(plan));
    }
    if (sent.empty()) return false;
    REQUIRE(scheduler.num_plans_in_flight() == static_cast<int32_t>(sent.size()));
    const Plan plan = std::move(sent.front());
    sent.pop_front();
    take(scheduler.on_step_result(worker.run(plan)));
    return true;
  }

  void check(const Plan& plan) {
    int64_t tokens = 0;
    for (const PlanSlice& s : plan.scheduled) {
      tokens += s.num_tokens;
      if (!s.sample && options.prefill_chunk_tokens > 0) REQUIRE(s.num_tokens <= static_cast<uint32_t>(options.prefill_chunk_tokens));
    }
    REQUIRE(tokens <= options.max_batch_tokens);
    max_step_tokens = std::max(max_step_tokens, tokens);
    for (const PlanNewSequence& n : plan.new_sequences) request_of_seq[n.seq_id] = n.request_id;
    for (const PlanSlice& sl : plan.scheduled) ++num_slices[request_of_seq.at(sl.seq_id)];
    // A released sequence whose request goes on was preempted.
    for (uint64_t id : plan.released_seq_ids) {
      if (auto r = request_of_seq.find(id); r == request_of_seq.end() || finished.count(r->second)) continue;
      for (const Plan& p : sent) {
        for (const PlanSlice& sl : p.scheduled) num_preempted_in_flight += sl.seq_id == id ? 1 : 0;
      }
    }
  }

  void drain() {
    for (int i = 0; i < 100000 && step(); ++i) {
    }
    REQUIRE(sent.empty());
    REQUIRE(scheduler.idle());
  }

  // Only the prefix cache may still hold pages, and all of them are evictable.
  void require_no_leaks() {
    REQUIRE(scheduler.pages().num_used() == scheduler.prefix_cache().stats().num_cached_pages);
    scheduler.prefix_cache().evict(options.num_pages);
    REQUIRE(scheduler.pages().num_used() == 0);
  }
};

SchedulerOptions small_options() {
  SchedulerOptions o;
  o.num_pages = 64;
  o.page_size = 4;
  o.max_context_tokens = 200;
  o.max_num_seqs = 8;
  o.max_batch_tokens = 32;
  o.prefill_chunk_tokens = 12;
  o.eos_token_ids = {kEos};
  return o;
}

std::vector<int32_t> make_prompt(std::mt19937& rng, int prefix_id, int suffix_len) {
  std::vector<int32_t> p;
  std::mt19937 prefix_rng(static_cast<unsigned>(prefix_id));  // a few shared prefixes
  for (int i = 0; i < 20; ++i) p.push_back(static_cast<int32_t>(3 + prefix_rng() % (kVocab - 3)));
  for (int i = 0; i < suffix_len; ++i) p.push_back(static_cast<int32_t>(3 + rng() % (kVocab - 3)));
  return p;
}

RequestSpec request(uint64_t id, std::vector<int32_t> prompt, uint32_t max_tokens, bool ignore_eos = true) {
  RequestSpec r;
  r.request_id = id;
  r.prompt = std::move(prompt);
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = ignore_eos;
  return r;
}

}  // namespace

TEST_CASE("requests give the tokens they give alone, within the step budget and chunk size", "[scheduler]") {
  Harness h(small_options());
  std::mt19937 rng(1);
  std::map<uint64_t, std::vector<int32_t>> want;
  for (uint64_t id = 1; id <= 20; ++id) {
    RequestSpec r;
    r.request_id = id;
    r.prompt = make_prompt(rng, static_cast<int>(id % 3), static_cast<int>(rng() % 30));
    r.stop.max_tokens = 1 + rng() % 40;
    want[id] = expected_output(r.prompt, r.stop, 200);
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  h.drain();
  for (const auto& [id, tokens] : want) {
    INFO("request " << id);
    REQUIRE(h.outputs[id] == tokens);
  }
  REQUIRE(h.max_step_tokens == 32);
  REQUIRE(h.scheduler.stats().num_preemptions == 0);  // full reservation never preempts
  REQUIRE(h.scheduler.stats().prefix_cache.num_hit_tokens > 0);  // the shared prefixes hit
  h.require_no_leaks();
}

TEST_CASE("admission_batch admits waiting requests in groups, and they still give the tokens they give alone",
          "[scheduler]") {
  SchedulerOptions o = small_options();
  o.num_pages = 400;  // KV never limits admission here
  o.admission_batch = 4;
  Harness h(o);
  std::mt19937 rng(5);
  std::map<uint64_t, std::vector<int32_t>> want;
  for (uint64_t id = 1; id <= 30; ++id) {
    std::vector<int32_t> prompt = make_prompt(rng, static_cast<int>(id % 3), 1 + static_cast<int>(rng() % 20));
    const RequestSpec r = request(id, std::move(prompt), 1 + rng() % 30);
    want[id] = expected_output(r.prompt, r.stop, o.max_context_tokens);
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  int64_t groups = 0;
  while (true) {
    const SchedulerStats before = h.scheduler.stats();
    Plan plan = h.scheduler.next_plan();
    if (plan.empty()) break;
    h.check(plan);
    const int64_t admitted = static_cast<int64_t>(plan.new_sequences.size());
    const int64_t group = std::min<int64_t>(o.admission_batch, before.num_waiting);
    const int64_t free_slots = o.max_num_seqs - before.num_running;
    INFO("waiting " << before.num_waiting << " running " << before.num_running << " admitted " << admitted);
    if (admitted > 0) {
      REQUIRE(admitted >= group);  // a whole group, or everything that waits
      ++groups;
    }
    if (admitted == 0 && before.num_waiting > 0) REQUIRE(free_slots < group);  // waits only for a group's slots
    h.take(h.scheduler.on_step_result(h.worker.run(plan)));
  }
  REQUIRE(h.finished.size() == 30);
  for (const auto& [id, tokens] : want) {
    INFO("request " << id);
    REQUIRE(h.outputs[id] == tokens);
  }
  REQUIRE(groups < 30);
  h.require_no_leaks();

  SchedulerOptions bad = small_options();
  bad.admission_batch = 0;
  CHECK(bad.validate().code() == StatusCode::kInvalidArgument);
  bad.admission_batch = bad.max_num_seqs + 1;
  CHECK(bad.validate().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("admission never commits more KV pages than the pool holds", "[scheduler]") {
  SchedulerOptions o = small_options();
  o.num_pages = 40;
  o.enable_prefix_cache = false;
  Harness h(o);
  std::mt19937 rng(2);
  for (uint64_t id = 1; id <= 30; ++id) {
    RequestSpec r;
    r.request_id = id;
    r.prompt = make_prompt(rng, static_cast<int>(id), 10);
    r.stop.max_tokens = 60;
    r.stop.ignore_eos = true;
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  while (h.step()) {
    // Each running request reserves ceil((30 + 60) / 4) = 23 pages: one at a time fits.
    REQUIRE(h.scheduler.stats().num_running <= 1);
    REQUIRE(h.scheduler.pages().num_used() <= o.num_pages);
  }
  REQUIRE(h.finished.size() == 30);
  h.require_no_leaks();
}

TEST_CASE("preempted requests resume by recompute and finish with the same tokens", "[scheduler]") {
  SchedulerOptions o = small_options();
  o.num_pages = 24;
  o.reserve_output_ratio = 0.1;  // admit optimistically: pages run out mid-flight
  Harness h(o);
  std::mt19937 rng(3);
  std::map<uint64_t, std::vector<int32_t>> want;
  for (uint64_t id = 1; id <= 12; ++id) {
    RequestSpec r;
    r.request_id = id;
    r.prompt = make_prompt(rng, static_cast<int>(id % 2), 5);
    r.stop.max_tokens = 50;
    r.stop.ignore_eos = true;
    want[id] = expected_output(r.prompt, r.stop, 200);
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  h.drain();
  REQUIRE(h.scheduler.stats().num_preemptions > 0);
  for (const auto& [id, tokens] : want) {
    INFO("request " << id);
    REQUIRE(h.outputs[id] == tokens);
  }
  h.require_no_leaks();
}

TEST_CASE("stop conditions: eos, min_tokens, stop ids, max_tokens, context", "[scheduler]") {
  SchedulerOptions o = small_options();
  o.max_context_tokens = 40;
  Harness h(o);
  std::mt19937 rng(4);
  // Find a prompt whose first token is EOS, to see min_tokens and ignore_eos act on it.
  std::vector<int32_t> prompt;
  for (int i = 0; i < 10000; ++i) {
    prompt = make_prompt(rng, 9, 3);
    if (next_token(prompt) == kEos) break;
  }
  REQUIRE(next_token(prompt) == kEos);
  RequestSpec eos;
  eos.request_id = 1;
  eos.prompt = prompt;
  eos.stop.max_tokens = 10;
  RequestSpec min_tokens = eos;
  min_tokens.request_id = 2;
  min_tokens.stop.min_tokens = 3;
  RequestSpec stop_id = eos;
  stop_id.request_id = 3;
  stop_id.stop.ignore_eos = true;
  const int32_t second = next_token([&] {
    auto t = prompt;
    t.push_back(kEos);
    return t;
  }());
  stop_id.stop.stop_token_ids = {second};
  RequestSpec context = eos;
  context.request_id = 4;
  context.stop.max_tokens = 0;  // until the 40-token context is full
  context.stop.ignore_eos = true;
  for (const RequestSpec& r : {eos, min_tokens, stop_id, context}) REQUIRE(h.scheduler.submit(r).is_ok());
  h.drain();
  REQUIRE(h.finished[1] == FinishReason::kEos);
  REQUIRE(h.outputs[1].size() == 1);
  REQUIRE(h.outputs[2].size() >= 3);
  REQUIRE(h.finished[3] == FinishReason::kStopToken);
  REQUIRE(h.outputs[3] == std::vector<int32_t>{kEos, second});
  REQUIRE(h.finished[4] == FinishReason::kContextLength);
  REQUIRE(static_cast<int32_t>(prompt.size() + h.outputs[4].size()) == 40);
  h.require_no_leaks();
}

TEST_CASE("bad and excess requests are refused with the right code", "[scheduler]") {
  SchedulerOptions o = small_options();
  o.max_waiting_requests = 2;
  o.max_waiting_tokens = 60;
  o.max_context_tokens = 1000;  // 250 pages of 4: more than the pool's 64
  Scheduler s(o);
  RequestSpec r;
  r.request_id = 1;
  REQUIRE(s.submit(r).code() == StatusCode::kInvalidArgument);  // empty prompt
  r.prompt.assign(1000, 5);
  REQUIRE(s.submit(r).code() == StatusCode::kInvalidArgument);  // no room in the context
  r.prompt.assign(35, 5);
  r.stop.max_tokens = 900;
  REQUIRE(s.submit(r).code() == StatusCode::kInvalidArgument);  // more pages than the pool
  r.stop.max_tokens = 5;
  REQUIRE(s.submit(r).is_ok());
  REQUIRE(s.submit(r).code() == StatusCode::kInvalidArgument);  // duplicate id
  r.request_id = 2;
  REQUIRE(s.submit(r).code() == StatusCode::kResourceExhausted);  // 60 waiting tokens max
  r.prompt.assign(10, 5);
  REQUIRE(s.submit(r).is_ok());
  r.request_id = 3;
  REQUIRE(s.submit(r).code() == StatusCode::kResourceExhausted);  // 2 waiting requests max
}

TEST_CASE("10,000 random arrivals, aborts and steps leak no page and keep outputs exact", "[scheduler][pipeline]") {
  const int depth = GENERATE(1, 2);  // plans in flight
  INFO("plans in flight: " << depth);
  SchedulerOptions o = small_options();
  o.num_pages = 48;
  o.reserve_output_ratio = 0.5;
  Harness h(o, depth);
  std::mt19937 rng(depth == 1 ? 5 : 11);
  std::map<uint64_t, std::vector<int32_t>> want;
  std::set<uint64_t> aborted;
  uint64_t next_id = 1;
  for (int event = 0; event < 10000; ++event) {
    const unsigned kind = rng() % 10;
    if (kind < 3) {
      RequestSpec r;
      r.request_id = next_id++;
      r.prompt = make_prompt(rng, static_cast<int>(rng() % 4), static_cast<int>(rng() % 25));
      r.stop.max_tokens = 1 + rng() % 30;
      r.priority = static_cast<int32_t>(rng() % 3);
      want[r.request_id] = expected_output(r.prompt, r.stop, o.max_context_tokens);
      const Status s = h.scheduler.submit(r);
      if (!s.is_ok()) {
        REQUIRE(s.code() == StatusCode::kResourceExhausted);
        want.erase(r.request_id);
      }
    } else if (kind == 3 && next_id > 1) {
      const uint64_t id = 1 + rng() % (next_id - 1);
      if (auto ev = h.scheduler.abort(id)) {
        REQUIRE(ev->finish == FinishReason::kAborted);
        aborted.insert(id);
        h.take({*ev});
      }
    } else {
      h.step();
    }
    REQUIRE(h.scheduler.pages().num_used() <= o.num_pages);
  }
  h.drain();
  int64_t completed = 0;
  for (const auto& [id, tokens] : want) {
    if (aborted.count(id)) {
      // An aborted request's tokens are a prefix of what it would have produced.
      const auto& got = h.outputs[id];
      REQUIRE(got.size() <= tokens.size());
      REQUIRE(std::equal(got.begin(), got.end(), tokens.begin()));
      continue;
    }
    INFO("request " << id);
    REQUIRE(h.outputs[id] == tokens);
    ++completed;
  }
  REQUIRE(completed > 500);
  REQUIRE(!aborted.empty());
  REQUIRE(h.scheduler.stats().prefix_cache.num_hit_tokens > 0);
  if (depth == 2) {  // preemption hit sequences that a plan in flight was computing for
    REQUIRE(h.scheduler.stats().num_preemptions > 0);
    REQUIRE(h.num_preempted_in_flight > 0);
  }
  h.require_no_leaks();
}

TEST_CASE("a lost worker group fails running requests and keeps waiting ones", "[scheduler]") {
  SchedulerOptions o = small_options();
  o.max_num_seqs = 2;
  Harness h(o);
  std::mt19937 rng(6);
  for (uint64_t id = 1; id <= 4; ++id) {
    RequestSpec r;
    r.request_id = id;
    r.prompt = make_prompt(rng, 1, 5);
    r.stop.max_tokens = 20;
    r.stop.ignore_eos = true;
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  h.step();
  const Plan in_flight = h.scheduler.next_plan();  // never answered: the worker died
  REQUIRE(!in_flight.empty());
  const auto events = h.scheduler.fail_running(unavailable("worker lost"));
  REQUIRE(events.size() == 2);
  for (const auto& e : events) REQUIRE(e.finish == FinishReason::kError);
  REQUIRE(h.scheduler.stats().num_waiting == 2);
  REQUIRE(h.scheduler.pages().num_used() == 0);
  // A fresh worker takes the waiting requests.
  h.worker = FakeWorker(o.num_pages, o.page_size);
  h.take(events);
  h.drain();
  REQUIRE(h.finished.size() == 4);
  h.require_no_leaks();
}

// ---- two plans in flight: plan N+1 is built before step N's results ----

namespace {

// One prefill step for short prompts: the whole prompt in one slice.
SchedulerOptions one_step_prefill_options() {
  SchedulerOptions o = small_options();
  o.prefill_chunk_tokens = 0;
  o.max_batch_tokens = 128;
  return o;
}

const PlanSlice* slice_of(const Plan& plan, uint64_t seq_id) {
  for (const PlanSlice& s : plan.scheduled) {
    if (s.seq_id == seq_id) return &s;
  }
  return nullptr;
}

bool releases(const Plan& plan, uint64_t seq_id) {
  return std::find(plan.released_seq_ids.begin(), plan.released_seq_ids.end(), seq_id) != plan.released_seq_ids.end();
}

}  // namespace

TEST_CASE("plan N+1, built before step N's results, decodes what step N samples, and the tokens equal those of plans in lockstep",
          "[scheduler][pipeline]") {
  const SchedulerOptions o = one_step_prefill_options();
  std::mt19937 rng(7);
  std::vector<RequestSpec> requests;
  for (uint64_t id = 1; id <= 3; ++id) {
    requests.push_back(request(id, make_prompt(rng, static_cast<int>(id), static_cast<int>(id)), 20, /*ignore_eos=*/false));
  }
  Harness lockstep(o, 1);
  Harness h(o, 2);
  for (const RequestSpec& r : requests) {
    REQUIRE(lockstep.scheduler.submit(r).is_ok());
    REQUIRE(h.scheduler.submit(r).is_ok());
  }

  const Plan first = h.scheduler.next_plan();
  REQUIRE(first.new_sequences.size() == 3);
  const Plan second = h.scheduler.next_plan();  // no result yet
  REQUIRE(h.scheduler.num_plans_in_flight() == 2);
  REQUIRE(second.new_sequences.empty());
  REQUIRE(second.released_seq_ids.empty());
  REQUIRE(second.scheduled.size() == 3);
  for (const PlanNewSequence& n : first.new_sequences) {
    const PlanSlice* prefill = slice_of(first, n.seq_id);
    REQUIRE(prefill);
    REQUIRE(prefill->sample);
    // The decode of the token the prefill samples, at the position that token will take.
    const PlanSlice* decode = slice_of(second, n.seq_id);
    REQUIRE(decode);
    CHECK(decode->start_position == n.token_ids.size());
    CHECK(decode->num_tokens == 1);
    CHECK(decode->sample);
  }
  h.check(first);
  h.check(second);
  h.sent = {first, second};
  h.drain();
  lockstep.drain();

  REQUIRE(h.outputs == lockstep.outputs);
  REQUIRE(h.finished == lockstep.finished);
  for (const RequestSpec& r : requests) {
    INFO("request " << r.request_id);
    REQUIRE(h.outputs[r.request_id] == expected_output(r.prompt, r.stop, o.max_context_tokens));
  }
  h.require_no_leaks();
}

TEST_CASE("a sequence that max_tokens or the context ends at step N is not planned again", "[scheduler][pipeline]") {
  SchedulerOptions o = one_step_prefill_options();
  o.max_context_tokens = 40;
  Harness h(o, 2);
  std::mt19937 rng(8);
  const RequestSpec one_token = request(1, make_prompt(rng, 1, 3), 1);
  const RequestSpec context = request(2, make_prompt(rng, 2, 19), 0);  // 39 tokens: one more fills the context
  const RequestSpec five = request(3, make_prompt(rng, 3, 3), 5);
  for (const RequestSpec& r : {one_token, context, five}) REQUIRE(h.scheduler.submit(r).is_ok());

  const Plan first = h.scheduler.next_plan();
  REQUIRE(first.scheduled.size() == 3);
  const Plan second = h.scheduler.next_plan();
  REQUIRE(second.scheduled.size() == 1);  // only request 3 goes on
  h.check(first);
  h.check(second);
  h.sent = {first, second};
  h.drain();

  CHECK(h.finished[1] == FinishReason::kLength);
  CHECK(h.outputs[1].size() == 1);
  CHECK(h.finished[2] == FinishReason::kContextLength);
  CHECK(h.outputs[2].size() == 1);
  CHECK(h.finished[3] == FinishReason::kLength);
  CHECK(h.outputs[3] == expected_output(five.prompt, five.stop, o.max_context_tokens));
  // No decode past the last token: the prefill and four decodes for five tokens.
  CHECK(h.num_slices[1] == 1);
  CHECK(h.num_slices[2] == 1);
  CHECK(h.num_slices[3] == 5);
  h.require_no_leaks();
}

TEST_CASE("EOS at step N wastes one decode in plan N+1: no event from it, the id is released later, the pages go back",
          "[scheduler][pipeline]") {
  const SchedulerOptions o = one_step_prefill_options();
  Harness h(o, 2);
  std::mt19937 rng(4);
  // 23 tokens whose first output is EOS: the wasted decode (position 23) fills page 5.
  std::vector<int32_t> prompt;
  for (int i = 0; i < 10000; ++i) {
    prompt = make_prompt(rng, 9, 3);
    if (next_token(prompt) == kEos) break;
  }
  REQUIRE(next_token(prompt) == kEos);
  REQUIRE(prompt.size() == 23);
  const RequestSpec eos = request(1, prompt, 10, /*ignore_eos=*/false);
  const RequestSpec other = request(2, make_prompt(rng, 1, 3), 10);
  REQUIRE(h.scheduler.submit(eos).is_ok());
  REQUIRE(h.scheduler.submit(other).is_ok());

  const Plan first = h.scheduler.next_plan();
  const Plan second = h.scheduler.next_plan();
  h.check(first);
  h.check(second);
  const uint64_t eos_seq = first.new_sequences.at(0).seq_id;
  REQUIRE(first.new_sequences.at(0).request_id == 1);
  REQUIRE(slice_of(second, eos_seq));  // EOS cannot be foreseen

  h.take(h.scheduler.on_step_result(h.worker.run(first)));
  REQUIRE(h.finished[1] == FinishReason::kEos);
  REQUIRE(h.outputs[1] == std::vector<int32_t>{kEos});
  // Its pages are back: only the prefix cache (the two prompts' 5 full pages each) and
  // request 2's sixth page are held.
  const auto& cache = h.scheduler.prefix_cache();
  CHECK(cache.stats().num_cached_pages == 10);
  CHECK(h.scheduler.pages().num_used() == 11);

  const Plan third = h.scheduler.next_plan();  // while plan 2, with the wasted decode, runs
  h.check(third);
  CHECK(releases(third, eos_seq));
  CHECK_FALSE(releases(second, eos_seq));  // the worker still needs it for plan 2
  const StepOutcome wasted = h.worker.run(second);
  REQUIRE(std::any_of(wasted.sampled.begin(), wasted.sampled.end(), [&](const SampledToken& t) { return t.seq_id == eos_seq; }));
  const auto events = h.scheduler.on_step_result(wasted);
  REQUIRE(events.size() == 1);  // request 2's token only
  CHECK(events[0].request_id == 2);
  h.take(events);
  h.sent = {third};
  h.drain();
  CHECK(h.outputs[1] == std::vector<int32_t>{kEos});
  CHECK(h.outputs[2] == expected_output(other.prompt, other.stop, o.max_context_tokens));
  // Request 1 cached its 5 computed prompt pages, never the page its wasted decode filled;
  // request 2 its 8 full pages (23 + 9 computed tokens).
  CHECK(h.scheduler.prefix_cache().stats().num_cached_pages == 5 + 8);
  h.require_no_leaks();
}

TEST_CASE("an abort with two plans in flight: nothing more streams, its id goes in the next plan, its pages serve another",
          "[scheduler][pipeline]") {
  SchedulerOptions o = one_step_prefill_options();
  o.num_pages = 24;  // two requests of 11 pages at a time
  o.enable_prefix_cache = false;
  Harness h(o, 2);
  std::mt19937 rng(9);
  std::vector<RequestSpec> requests;
  for (uint64_t id = 1; id <= 3; ++id) requests.push_back(request(id, make_prompt(rng, static_cast<int>(id), 3), 20));
  for (const RequestSpec& r : requests) REQUIRE(h.scheduler.submit(r).is_ok());

  const Plan first = h.scheduler.next_plan();
  const Plan second = h.scheduler.next_plan();
  h.check(first);
  h.check(second);
  REQUIRE(first.new_sequences.size() == 2);  // request 3 waits for pages
  const uint64_t aborted_seq = first.new_sequences.at(0).seq_id;
  std::set<int32_t> aborted_pages;
  for (const Plan* p : {&first, &second}) {
    const PlanSlice* s = slice_of(*p, aborted_seq);
    REQUIRE(s);
    aborted_pages.insert(s->new_pages.begin(), s->new_pages.end());
  }
  const auto ev = h.scheduler.abort(1);
  REQUIRE(ev);
  REQUIRE(ev->finish == FinishReason::kAborted);
  h.take({*ev});

  const auto events = h.scheduler.on_step_result(h.worker.run(first));
  REQUIRE(events.size() == 1);
  CHECK(events[0].request_id == 2);
  h.take(events);
  const Plan third = h.scheduler.next_plan();
  h.check(third);
  CHECK(releases(third, aborted_seq));
  CHECK(!slice_of(third, aborted_seq));
  // Request 3 is admitted onto the aborted request's pages, which plan 2 still writes:
  // the worker runs plan 2 first.
  REQUIRE(third.new_sequences.size() == 1);
  const PlanSlice* prefill = slice_of(third, third.new_sequences[0].seq_id);
  REQUIRE(prefill);
  CHECK(std::any_of(prefill->new_pages.begin(), prefill->new_pages.end(), [&](int32_t p) { return aborted_pages.count(p) > 0; }));
  h.sent = {second, third};
  h.drain();
  CHECK(h.outputs[1].empty());
  CHECK(h.outputs[2] == expected_output(requests[1].prompt, requests[1].stop, o.max_context_tokens));
  CHECK(h.outputs[3] == expected_output(requests[2].prompt, requests[2].stop, o.max_context_tokens));
  h.require_no_leaks();
}

TEST_CASE("sequences preempted while a plan in flight computes for them resume with the same tokens", "[scheduler][pipeline]") {
  SchedulerOptions o = small_options();
  o.num_pages = 24;
  o.reserve_output_ratio = 0.1;
  Harness h(o, 2);
  std::mt19937 rng(3);
  std::map<uint64_t, std::vector<int32_t>> want;
  for (uint64_t id = 1; id <= 12; ++id) {
    const RequestSpec r = request(id, make_prompt(rng, static_cast<int>(id % 2), 5), 50);
    want[id] = expected_output(r.prompt, r.stop, o.max_context_tokens);
    REQUIRE(h.scheduler.submit(r).is_ok());
  }
  h.drain();
  REQUIRE(h.scheduler.stats().num_preemptions > 0);
  REQUIRE(h.num_preempted_in_flight > 0);
  for (const auto& [id, tokens] : want) {
    INFO("request " << id);
    REQUIRE(h.outputs[id] == tokens);
  }
  h.require_no_leaks();
}

TEST_CASE("a result for a step other than the oldest in flight is ignored", "[scheduler][pipeline]") {
  const SchedulerOptions o = one_step_prefill_options();
  Harness h(o, 2);
  std::mt19937 rng(10);
  const RequestSpec r = request(1, make_prompt(rng, 1, 2), 6);
  REQUIRE(h.scheduler.submit(r).is_ok());
  const Plan first = h.scheduler.next_plan();
  const Plan second = h.scheduler.next_plan();
  h.check(first);
  h.check(second);
  const StepOutcome out1 = h.worker.run(first);
  const StepOutcome out2 = h.worker.run(second);
  REQUIRE(h.scheduler.on_step_result(out2).empty());  // not the oldest
  REQUIRE(h.scheduler.on_step_result(StepOutcome{999, {}}).empty());
  REQUIRE(h.scheduler.num_plans_in_flight() == 2);
  h.take(h.scheduler.on_step_result(out1));
  REQUIRE(h.scheduler.on_step_result(out1).empty());  // already applied
  h.take(h.scheduler.on_step_result(out2));
  REQUIRE(h.scheduler.num_plans_in_flight() == 0);
  h.drain();
  CHECK(h.outputs[1] == expected_output(r.prompt, r.stop, o.max_context_tokens));
  h.require_no_leaks();
}

TEST_CASE("a lost worker group with two plans in flight fails running requests and frees every page", "[scheduler][pipeline]") {
  SchedulerOptions o = small_options();
  o.max_num_seqs = 2;
  Harness h(o, 2);
  std::mt19937 rng(6);
  for (uint64_t id = 1; id <= 4; ++id) REQUIRE(h.scheduler.submit(request(id, make_prompt(rng, 1, 5), 20)).is_ok());
  h.step();  // one plan answered, one in flight
  REQUIRE(!h.scheduler.next_plan().empty());  // never answered: the worker died
  REQUIRE(h.scheduler.num_plans_in_flight() == 2);
  const auto events = h.scheduler.fail_running(unavailable("worker lost"));
  REQUIRE(events.size() == 2);
  for (const auto& e : events) REQUIRE(e.finish == FinishReason::kError);
  REQUIRE(h.scheduler.num_plans_in_flight() == 0);
  REQUIRE(h.scheduler.stats().num_waiting == 2);
  REQUIRE(h.scheduler.pages().num_used() == 0);
  h.worker = FakeWorker(o.num_pages, o.page_size);
  h.sent.clear();
  h.take(events);
  h.drain();
  REQUIRE(h.finished.size() == 4);
  h.require_no_leaks();
}
