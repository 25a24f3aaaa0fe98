// OpenAI request bodies: every accepted form lands in the native request and the
// SamplingParams, every bad value is a 400 in OpenAI's error shape naming the parameter.
#include "gateway/openai/request.h"

#include <catch2/catch.hpp>

using namespace tessera;
using gateway::ApiError;

namespace {

template <typename T>
const T& ok(const gateway::Parsed<T>& p) {
  if (const auto* e = std::get_if<ApiError>(&p)) FAIL("unexpected error: " << e->to_json());
  return std::get<T>(p);
}

template <typename T>
ApiError err(const gateway::Parsed<T>& p) {
  REQUIRE(std::holds_alternative<ApiError>(p));
  return std::get<ApiError>(p);
}

}  // namespace

TEST_CASE("completions accept the four prompt forms", "[gateway][openai]") {
  auto text = ok(gateway::parse_completion_request(R"({"model":"m","prompt":"Hello"})"));
  REQUIRE(text.prompts.size() == 1);
  CHECK(*text.prompts[0].text == "Hello");
  CHECK(text.options.max_tokens == 16u);  // OpenAI's completions default
  auto texts = ok(gateway::parse_completion_request(R"({"model":"m","prompt":["a","b"]})"));
  CHECK(texts.prompts.size() == 2);
  auto ids = ok(gateway::parse_completion_request(R"({"model":"m","prompt":[1,2,3]})"));
  REQUIRE(ids.prompts.size() == 1);
  CHECK(ids.prompts[0].token_ids == std::vector<int32_t>{1, 2, 3});
  auto lists = ok(gateway::parse_completion_request(R"({"model":"m","prompt":[[1,2],[3]]})"));
  REQUIRE(lists.prompts.size() == 2);
  CHECK(lists.prompts[1].token_ids == std::vector<int32_t>{3});
}

TEST_CASE("sampling parameters and extensions reach SamplingParams", "[gateway][openai]") {
  auto r = ok(gateway::parse_completion_request(R"({
    "model": "m", "prompt": "x", "max_tokens": 40, "temperature": 0.7, "top_p": 0.9, "n": 3,
    "stop": ["\n\n", "END"], "seed": 12345, "presence_penalty": 0.5, "frequency_penalty": -0.5,
    "logit_bias": {"50256": -100, "7": 2.5}, "logprobs": 3, "echo": true, "user": "u1",
    "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 4, "ignore_eos": true,
    "stop_token_ids": [2, 3], "skip_special_tokens": false, "stream": true,
    "stream_options": {"include_usage": true}, "some_future_field": {"x": 1}})"));
  const v1::SamplingParams& s = r.options.sampling;
  CHECK(s.max_tokens() == 40u);
  CHECK(s.temperature() == Approx(0.7));
  CHECK(s.top_p() == Approx(0.9));
  CHECK(r.options.n == 3u);
  CHECK(r.options.stop == std::vector<std::string>{"\n\n", "END"});
  CHECK(s.stop_size() == 2);
  CHECK(s.seed() == 12345u);
  CHECK(s.presence_penalty() == Approx(0.5));
  CHECK(s.frequency_penalty() == Approx(-0.5));
  CHECK(s.logit_bias().at(50256) == -100.0f);
  CHECK(s.logit_bias().at(7) == 2.5f);
  CHECK(s.logprobs());
  CHECK(s.top_logprobs() == 3u);
  CHECK(r.echo);
  CHECK(r.options.user == "u1");
  CHECK(s.top_k() == 40);
  CHECK(s.min_p() == Approx(0.05));
  CHECK(s.repetition_penalty() == Approx(1.1));
  CHECK(s.min_tokens() == 4u);
  CHECK(s.ignore_eos());
  CHECK(s.stop_token_ids_size() == 2);
  CHECK_FALSE(s.skip_special_tokens());
  CHECK(r.options.stream);
  CHECK(r.options.include_usage);
  // Unset stays unset: the worker's defaults apply.
  auto plain = ok(gateway::parse_completion_request(R"({"model":"m","prompt":"x","top_k":-1})"));
  CHECK_FALSE(plain.options.sampling.has_temperature());
  CHECK_FALSE(plain.options.sampling.has_seed());
  CHECK(plain.options.sampling.top_k() == 0);
}

TEST_CASE("bad bodies and values are 400s naming the parameter", "[gateway][openai]") {
  struct Case {
    const char* body;
    const char* param;
    const char* says;
  };
  const Case cases[] = {
      {R"({"model":"m","prompt":"x","temperature":"hot"})", "temperature", "must be a number"},
      {R"({"model":"m","prompt":"x","temperature":2.5})", "temperature", "must be in [0, 2]"},
      {R"({"model":"m","prompt":"x","top_p":0})", "top_p", "must be in (0, 1]"},
      {R"({"model":"m","prompt":"x","max_tokens":0})", "max_tokens", "must be in [1,"},
      {R"({"model":"m","prompt":"x","max_tokens":1.5})", "max_tokens", "must be an integer"},
      {R"({"model":"m","prompt":"x","n":0})", "n", "must be in [1, 128]"},
      {R"({"model":"m","prompt":"x","stop":["a","b","c","d","e"]})", "stop", "at most 4"},
      {R"({"model":"m","prompt":"x","stop":[""]})", "stop", "must not be empty"},
      {R"({"model":"m","prompt":"x","stop":7})", "stop", "string or a list of strings"},
      {R"({"model":"m","prompt":"x","logit_bias":{"abc":1}})", "logit_bias", "keys must be token ids"},
      {R"({"model":"m","prompt":"x","logit_bias":{"5":101}})", "logit_bias", "[-100, 100]"},
      {R"({"model":"m","prompt":"x","logprobs":21})", "logprobs", "must be in [0, 20]"},
      {R"({"model":"m","prompt":"x","presence_penalty":-3})", "presence_penalty", "[-2, 2]"},
      {R"({"model":"m","prompt":"x","max_tokens":5,"min_tokens":6})", "min_tokens", "must not exceed max_tokens"},
      {R"({"model":"m","prompt":"x","stream_options":{"include_usage":true}})", "stream_options", "only allowed when"},
      {R"({"model":"m","prompt":"x","best_of":3})", "best_of", "not supported"},
      {R"({"model":"m","prompt":""})", "prompt", "must not be empty"},
      {R"({"model":"m","prompt":[]})", "prompt", "must not be empty"},
      {R"({"model":"m","prompt":[1,-2]})", "prompt", "non-negative integers"},
      {R"({"model":"m","prompt":{"a":1}})", "prompt", "must be a string"},
      {R"({"model":"m"})", "prompt", "provide a prompt"},
      {R"({"prompt":"x"})", "model", "provide a model"},
      {R"({"model":5,"prompt":"x"})", "model", "must be a string"},
      {R"({"model":"m","prompt":"x","seed":"s"})", "seed", "must be an integer"},
  };
  for (const Case& c : cases) {
    INFO(c.body);
    const ApiError e = err(gateway::parse_completion_request(c.body));
    CHECK(e.status == 400);
    CHECK(e.type == "invalid_request_error");
    CHECK(e.param == c.param);
    CHECK(e.message.find(c.says) != std::string::npos);
    // The error body is OpenAI's shape.
    const auto j = nlohmann::json::parse(e.to_json());
    CHECK(j["error"]["param"] == c.param);
    CHECK(j["error"]["type"] == "invalid_request_error");
    CHECK(j["error"]["message"] == e.message);
  }
  const ApiError bad_json = err(gateway::parse_completion_request("{\"model\": "));
  CHECK(bad_json.status == 400);
  CHECK(bad_json.code == "invalid_json");
  CHECK(nlohmann::json::parse(bad_json.to_json())["error"]["param"].is_null());
  CHECK(err(gateway::parse_completion_request("[1,2]")).message.find("JSON object") != std::string::npos);
}

TEST_CASE("chat requests: messages, content parts, logprobs and max_completion_tokens", "[gateway][openai]") {
  auto r = ok(gateway::parse_chat_request(R"({
    "model": "m", "max_tokens": 10, "max_completion_tokens": 20, "logprobs": true, "top_logprobs": 2,
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
        "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "42"}
    ]})"));
  CHECK(r.options.max_tokens == 20u);  // max_completion_tokens wins
  CHECK(r.options.sampling.logprobs());
  CHECK(r.options.sampling.top_logprobs() == 2u);
  REQUIRE(r.messages.size() == 4);
  CHECK(r.messages[1].content == "Hi there");
  CHECK(r.messages[1].raw["content"] == "Hi there");
  CHECK(r.messages[2].raw.contains("tool_calls"));
  CHECK(r.messages[3].role == "tool");
  // Chat has no default max_tokens: up to the context.
  auto unbounded = ok(gateway::parse_chat_request(R"({"model":"m","messages":[{"role":"user","content":"x"}]})"));
  CHECK_FALSE(unbounded.options.max_tokens.has_value());
  CHECK_FALSE(unbounded.options.sampling.has_max_tokens());

  struct Case {
    const char* body;
    const char* param;
  };
  const Case cases[] = {
      {R"({"model":"m","messages":[]})", "messages"},
      {R"({"model":"m","messages":"hi"})", "messages"},
      {R"({"model":"m","messages":[{"role":"wizard","content":"x"}]})", "messages[0].role"},
      {R"({"model":"m","messages":[{"role":"user"}]})", "messages[0].content"},
      {R"({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})",
       "messages[0].content"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"},{"role":"tool","content":"1"}]})",
       "messages[1].tool_call_id"},
      {R"({"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":3})", "top_logprobs"},
  };
  for (const Case& c : cases) {
    INFO(c.body);
    CHECK(err(gateway::parse_chat_request(c.body)).param == c.param);
  }
}
