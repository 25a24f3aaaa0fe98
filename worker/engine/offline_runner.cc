#include "worker/engine/offline_runner.h"

#include <algorithm>
#include <deque>
#include <string>

namespace tessera::engine {

const char* generation_finish_name(GenerationFinish finish) {
  switch (finish) {
    case GenerationFinish::kLength: return "length";
    case GenerationFinish::kEos: return "eos";
    case GenerationFinish::kStopToken: return "stop_token";
    case GenerationFinish::kContextLength: return "context_length";
    case GenerationFinish::kError: return "error";
  }
  return "?";
}

Result<std::vector<GenerationResult>> OfflineRunner::run(std::span<const GenerationRequest> requests) {
  stats_ = {};
  const models::ModelConfig& config = engine_.config();
  const int64_t ps = engine_.page_size();
  const int64_t budget = options_.max_batch_tokens > 0 ? std::min(options_.max_batch_tokens, engine_.options().max_batch_tokens)
                                                       : engine_.options().max_batch_tokens;
  const int64_t max_running = options_.max_running > 0 ? std::min(options_.max_running, engine_.options().max_sequences)
                                                       : engine_.options().max_sequences;
  std::vector<GenerationResult> results(requests.size());

  struct Running {
    size_t index;
    uint64_t seq_id;
    int64_t num_tokens;    // known tokens (prompt + generated)
    int64_t num_computed;  // tokens in the KV cache
    int64_t prompt_len;
    std::vector<int32_t> pages;  // reserved at admission, handed to the engine on first use
    bool pages_sent = false;
    bool is_new = true;
  };
  std::vector<int32_t> free_pages;
  for (int64_t p = engine_.num_pages() - 1; p >= 0; --p) free_pages.push_back(static_cast<int32_t>(p));
  std::deque<size_t> waiting;
  for (size_t i = 0; i < requests.size(); ++i) waiting.push_back(i);
  std::vector<Running> running;
  std::vector<uint64_t> to_release;
  uint64_t next_id = 1;

  while (!waiting.empty() || !running.empty()) {
    StepInput in;
    in.released_seq_ids = std::move(to_release);
    to_release.clear();
    in.return_logits = options_.keep_first_logits;
    // Admission, in request order: the whole sequence's pages or nothing.
    while (!waiting.empty() && static_cast<int64_t>(running.size()) < max_running) {
      const size_t i = waiting.front();
      const GenerationRequest& r = requests[i];
      const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
      const int64_t limit = std::min<int64_t>(total, config.max_position_embeddings);
      const int64_t pages = (limit + ps - 1) / ps;
      // Requests the engine would refuse end here, alone, with the reason.
      Status bad = engine_.check_sequence(r.prompt, r.sampling).with_context("prompt");
      if (bad.is_ok() && r.max_tokens < 1) bad = invalid_argument("max_tokens must be at least 1");
      if (bad.is_ok() && r.prompt.size() >= config.max_position_embeddings) {
        bad = invalid_argument("prompt of " + std::to_string(r.prompt.size()) + " tokens leaves no room in the " +
                               std::to_string(config.max_position_embeddings) + "-token context");
      }
      if (bad.is_ok() && pages > engine_.num_pages()) {
        bad = resource_exhausted("prompt + max_tokens need " + std::to_string(pages) + " KV pages; the cache has " +
                                 std::to_string(engine_.num_pages()));
      }
      if (!bad.is_ok()) {
        results[i].finish = GenerationFinish::kError;
        results[i].error = bad;
        waiting.pop_front();
        continue;
      }
      if (pages > static_cast<int64_t>(free_pages.size())) break;
      Running run{i, next_id++, static_cast<int64_t>(r.prompt.size()), 0, static_cast<int64_t>(r.prompt.size()), {}};
      run.pages.assign(free_pages.end() - pages, free_pages.end());
      free_pages.resize(free_pages.size() - static_cast<size_t>(pages));
      // Ascending page ids: attention then walks each sequence's KV forward in memory.
      std::sort(run.pages.begin(), run.pages.end());
      in.new_sequences.push_back({run.seq_id, r.prompt, static_cast<uint32_t>(r.prompt.size()), r.sampling, {}, 0});
      running.push_back(std::move(run));
      waiting.pop_front();
    }
    stats_.max_running = std::max<int64_t>(stats_.max_running, static_cast<int64_t>(running.size()));
    // Decodes first (one token each), then prefill chunks in the remaining budget.
    int64_t left = budget;
    bool has_decode = false, has_prefill = false;
    for (int pass = 0; pass < 2; ++pass) {
      for (Running& run : running) {
        const bool decoding = run.num_computed >= run.prompt_len;
        if ((pass == 0) != decoding || left == 0) continue;
        int64_t n = run.num_tokens - run.num_computed;
        if (!decoding && options_.prefill_chunk_tokens > 0) n = std::min(n, options_.prefill_chunk_tokens);
        n = std::min(n, left);
        ScheduledSlice sl;
        sl.seq_id = run.seq_id;
        sl.start_position = static_cast<uint32_t>(run.num_computed);
        sl.num_tokens = static_cast<uint32_t>(n);
        sl.sample = run.num_computed + n == run.num_tokens;
        if (!run.pages_sent) {
          sl.new_pages = run.pages;
          run.pages_sent = true;
        }
        in.scheduled.push_back(std::move(sl));
        left -= n;
        (decoding ? has_decode : has_prefill) = true;
        (decoding ? stats_.num_decode_tokens : stats_.num_prefill_tokens) += n;
      }
    }
    if (in.scheduled.empty() && in.new_sequences.empty() && in.released_seq_ids.empty()) {
      if (waiting.empty() && running.empty()) break;  // every remaining request was refused
      return internal_error("offline runner: no progress possible");
    }
    Result<StepOutput> out = engine_.step(in);
    if (!out) return out.status();
    ++stats_.num_steps;
    stats_.num_mixed_steps += (has_decode && has_prefill) ? 1 : 0;
    for (const ScheduledSlice& sl : in.scheduled) {
      for (Running& run : running) {
        if (run.seq_id == sl.seq_id) run.num_computed += sl.num_tokens;
      }
    }
    for (size_t si = 0; si < out->sampled.size(); ++si) {
      const SampledToken& st = out->sampled[si];
      auto it = std::find_if(running.begin(), running.end(), [&](const Running& r) { return r.seq_id == st.seq_id; });
      GenerationResult& res = results[it->index];
      const GenerationRequest& req = requests[it->index];
      bool done = false;
      if (!st.status.is_ok()) {
        res.finish = GenerationFinish::kError;
        res.error = st.status;
        done = true;
      } else {
        if (options_.keep_first_logits && res.tokens.empty()) {
          const size_t vocab = config.vocab_size;
          res.first_logits.assign(out->logits.begin() + static_cast<std::ptrdiff_t>(si * vocab),
                                  out->logits.begin() + static_cast<std::ptrdiff_t>((si + 1) * vocab));
        }
        const int32_t tok = st.sample.token_id;
        res.tokens.push_back(tok);
        res.samples.push_back(st.sample);
        ++it->num_tokens;
        const bool is_eos = std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), tok) !=
                            config.eos_token_ids.end();
        const bool is_stop = std::find(req.stop_token_ids.begin(), req.stop_token_ids.end(), tok) !=
                             req.stop_token_ids.end();
        if (is_eos && !req.ignore_eos) {
          res.finish = GenerationFinish::kEos;
          done = true;
        } else if (is_stop) {
          res.finish = GenerationFinish::kStopToken;
          done = true;
        } else if (res.tokens.size() >= req.max_tokens) {
          res.finish = GenerationFinish::kLength;
          done = true;
        } else if (it->num_tokens >= static_cast<int64_t>(config.max_position_embeddings)) {
          res.finish = GenerationFinish::kContextLength;
          done = true;
        }
      }
      if (done) {
        to_release.push_back(it->seq_id);
        free_pages.insert(free_pages.end(), it->pages.begin(), it->pages.end());
        running.erase(it);
      }
    }
  }
  if (!to_release.empty()) {
    StepInput in;
    in.released_seq_ids = std::move(to_release);
    Result<StepOutput> out = engine_.step(in);
    if (!out) return out.status();
  }
  return results;
}

}  // namespace tessera::engine
