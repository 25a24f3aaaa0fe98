// router/router_metrics: the DESIGN.md metric names appear with the scheduler's figures,
// counters advance by deltas (and survive a scheduler restarting from zero), finished
// reasons map to vLLM's labels.
#include "router/router_metrics.h"

#include <catch2/catch.hpp>

using namespace tessera;
using namespace tessera::router;

TEST_CASE("router metrics expose the scheduler's figures under vLLM-style names", "[metrics]") {
  metrics::Registry registry({{"tier", "router"}, {"model", "smollm2"}});
  RouterMetrics m(registry);
  SchedulerStats s;
  s.num_running = 3;
  s.num_waiting = 5;
  s.num_used_pages = 25;
  s.num_pages = 100;
  s.num_prompt_tokens = 400;
  s.num_generation_tokens = 50;
  s.num_preemptions = 1;
  s.prefix_cache.num_query_tokens = 400;
  s.prefix_cache.num_hit_tokens = 128;
  m.update("0", s);
  s.num_generation_tokens = 80;  // +30
  m.update("0", s);
  s.num_generation_tokens = 10;  // a restarted scheduler: +10, never down
  m.update("0", s);
  m.observe_step(0.004, 16);
  m.observe_finished(FinishReason::kEos, {0.01, 0.05, 0.5, 0.02});
  m.observe_finished(FinishReason::kContextLength, {0.01, 0.05, 0.5, 0.02});
  m.observe_finished(FinishReason::kAborted, {0.01, 0, 0.2, 0});
  const std::string text = registry.expose();
  INFO(text);
  auto has = [&](const std::string& line) { return text.find(line + "\n") != std::string::npos; };
  CHECK(has(R"(tessera_num_requests_running{tier="router",model="smollm2",group="0"} 3)"));
  CHECK(has(R"(tessera_num_requests_waiting{tier="router",model="smollm2",group="0"} 5)"));
  CHECK(has(R"(tessera_kv_cache_usage_ratio{tier="router",model="smollm2",group="0"} 0.25)"));
  CHECK(has(R"(tessera_prompt_tokens_total{tier="router",model="smollm2",group="0"} 400)"));
  CHECK(has(R"(tessera_generation_tokens_total{tier="router",model="smollm2",group="0"} 90)"));
  CHECK(has(R"(tessera_num_preemptions_total{tier="router",model="smollm2",group="0"} 1)"));
  CHECK(has(R"(tessera_prefix_cache_queries_total{tier="router",model="smollm2",group="0"} 400)"));
  CHECK(has(R"(tessera_prefix_cache_hits_total{tier="router",model="smollm2",group="0"} 128)"));
  CHECK(has(R"(tessera_request_success_total{tier="router",model="smollm2",finished_reason="stop"} 1)"));
  CHECK(has(R"(tessera_request_success_total{tier="router",model="smollm2",finished_reason="length"} 1)"));
  CHECK(has(R"(tessera_request_success_total{tier="router",model="smollm2",finished_reason="abort"} 1)"));
  CHECK(has(R"(tessera_time_to_first_token_seconds_count{tier="router",model="smollm2"} 2)"));
  CHECK(has(R"(tessera_e2e_request_latency_seconds_count{tier="router",model="smollm2"} 3)"));
  CHECK(has(R"(tessera_step_batch_tokens_count{tier="router",model="smollm2"} 1)"));
}
