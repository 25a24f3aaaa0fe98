// Response bodies and stream chunks in the schema OpenAI's clients parse.
#include "gateway/openai/response.h"

#include <catch2/catch.hpp>

using namespace tessera;
using nlohmann::json;

namespace {
const gateway::ResponseHead kHead{"cmpl-1", 1764000000, "smollm2"};
}

TEST_CASE("finish reasons map to OpenAI's words", "[gateway][openai]") {
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_EOS) == "stop");
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_STOP_TOKEN) == "stop");
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_STOP_STRING) == "stop");
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_LENGTH) == "length");
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_CONTEXT_LENGTH) == "length");
  CHECK(gateway::finish_reason_text(v1::FINISH_REASON_ABORTED) == "abort");
  CHECK_FALSE(gateway::finish_reason_text(v1::FINISH_REASON_UNSPECIFIED).has_value());
  CHECK_FALSE(gateway::finish_reason_text(v1::FINISH_REASON_ERROR).has_value());
}

TEST_CASE("completion and chat bodies carry choices, finish reasons and usage", "[gateway][openai]") {
  const gateway::UsageCounts usage{12, 5, 8};
  const json c = json::parse(gateway::completion_body(
      kHead, {{0, "Paris.", "stop", std::nullopt}, {1, "Lyon", "length", std::nullopt}}, usage));
  CHECK(c["id"] == "cmpl-1");
  CHECK(c["object"] == "text_completion");
  CHECK(c["created"] == 1764000000);
  CHECK(c["model"] == "smollm2");
  REQUIRE(c["choices"].size() == 2);
  CHECK(c["choices"][0]["text"] == "Paris.");
  CHECK(c["choices"][0]["finish_reason"] == "stop");
  CHECK(c["choices"][0]["logprobs"].is_null());
  CHECK(c["choices"][1]["index"] == 1);
  CHECK(c["usage"]["prompt_tokens"] == 12);
  CHECK(c["usage"]["completion_tokens"] == 5);
  CHECK(c["usage"]["total_tokens"] == 17);
  CHECK(c["usage"]["prompt_tokens_details"]["cached_tokens"] == 8);

  const json chat = json::parse(gateway::chat_body(kHead, {{0, "Hi!", "stop", std::nullopt}}, usage));
  CHECK(chat["object"] == "chat.completion");
  CHECK(chat["choices"][0]["message"]["role"] == "assistant");
  CHECK(chat["choices"][0]["message"]["content"] == "Hi!");
  CHECK(chat["choices"][0]["finish_reason"] == "stop");
}

TEST_CASE("stream chunks: the role first, then content deltas, a finish, usage, [DONE]", "[gateway][openai]") {
  const json first = json::parse(gateway::chat_chunk(kHead, {0, "", std::nullopt, std::nullopt}, true));
  CHECK(first["object"] == "chat.completion.chunk");
  CHECK(first["choices"][0]["delta"]["role"] == "assistant");
  CHECK(first["choices"][0]["delta"]["content"] == "");
  CHECK(first["choices"][0]["finish_reason"].is_null());
  const json mid = json::parse(gateway::chat_chunk(kHead, {0, "Hel", std::nullopt, std::nullopt}, false));
  CHECK_FALSE(mid["choices"][0]["delta"].contains("role"));
  CHECK(mid["choices"][0]["delta"]["content"] == "Hel");
  const json last = json::parse(gateway::chat_chunk(kHead, {0, "", "length", std::nullopt}, false));
  CHECK(last["choices"][0]["delta"].empty());
  CHECK(last["choices"][0]["finish_reason"] == "length");
  const json usage = json::parse(gateway::usage_chunk(kHead, true, {3, 2, 0}));
  CHECK(usage["choices"].empty());
  CHECK(usage["usage"]["total_tokens"] == 5);
  const json text = json::parse(gateway::completion_chunk(kHead, {2, "lo", std::nullopt, std::nullopt}));
  CHECK(text["object"] == "text_completion");
  CHECK(text["choices"][0]["index"] == 2);
  CHECK(text["choices"][0]["text"] == "lo");
  CHECK(gateway::sse_event(R"({"a":1})") == "data: {\"a\":1}\n\n");
  CHECK(gateway::kSseDone == "data: [DONE]\n\n");
}

TEST_CASE("logprobs in the completions and the chat formats", "[gateway][openai]") {
  const std::vector<gateway::TokenLogprobText> toks = {
      {"Hel", -0.1f, {{"Hel", -0.1f}, {"He", -2.5f}}, 0},
      {"lo", -0.3f, {{"lo", -0.3f}, {"lo", -4.0f}}, 3},  // two ids with the same text
  };
  const json c = gateway::completion_logprobs_json(toks);
  CHECK(c["tokens"] == json::array({"Hel", "lo"}));
  CHECK(c["token_logprobs"][1] == Approx(-0.3));
  CHECK(c["top_logprobs"][0]["He"] == Approx(-2.5));
  CHECK(c["top_logprobs"][1].size() == 1);
  CHECK(c["top_logprobs"][1]["lo"] == Approx(-0.3));
  CHECK(c["text_offset"] == json::array({0, 3}));
  const json chat = gateway::chat_logprobs_json(toks);
  REQUIRE(chat["content"].size() == 2);
  CHECK(chat["content"][0]["token"] == "Hel");
  CHECK(chat["content"][0]["bytes"] == json::array({72, 101, 108}));
  CHECK(chat["content"][0]["top_logprobs"][1]["token"] == "He");
  CHECK(chat["content"][1]["top_logprobs"].size() == 2);
}

TEST_CASE("chat logprob bytes are a token's raw bytes even when they are part of a character", "[gateway][openai]") {
  gateway::TokenLogprobText half;  // the first two bytes of U+1F31F, shown as U+FFFD
  half.token = "\xEF\xBF\xBD";
  half.bytes = "\xF0\x9F";
  half.top.push_back({"\xEF\xBF\xBD", -0.2f, "\xF0\x9F"});
  const json chat = gateway::chat_logprobs_json({half});
  CHECK(chat["content"][0]["bytes"] == json::array({240, 159}));
  CHECK(chat["content"][0]["top_logprobs"][0]["bytes"] == json::array({240, 159}));
}
