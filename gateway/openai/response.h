// OpenAI response bodies and Server-Sent-Events chunks for completions and chat, in the
// schema the official clients parse: `text_completion` / `chat.completion` objects,
// `chat.completion.chunk` stream chunks, `usage` (with prompt_tokens_details.cached_tokens)
// and both logprobs formats. The handlers fill the native structs; nothing here knows
// about tokens beyond the text the tokenizer gave them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tessera/v1/common.pb.h"

namespace tessera::gateway {

// "stop" (EOS, a stop token id or a stop string), "length" (max_tokens or the context),
// "abort"; nullopt for a request still running (and for errors, which are not a finish).
std::optional<std::string> finish_reason_text(v1::FinishReason reason);

struct UsageCounts {
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  uint32_t cached_prompt_tokens = 0;
};
nlohmann::json usage_json(const UsageCounts& u);

// An alternative token at one position: its text and, when they differ (part of a UTF-8
// character), its raw bytes.
struct LogprobAlternative {
  std::string token;
  float logprob = 0;
  std::string bytes;  // empty: the bytes of `token`
};

// One generated token's logprob with its text (and the most likely alternatives).
struct TokenLogprobText {
  std::string token;
  float logprob = 0;
  std::vector<LogprobAlternative> top;  // most likely first
  size_t text_offset = 0;  // completions: where the token's text starts in the choice, in characters
  std::string bytes;       // empty: the bytes of `token`
};
// Completions: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}.
nlohmann::json completion_logprobs_json(const std::vector<TokenLogprobText>& tokens);
// Chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
nlohmann::json chat_logprobs_json(const std::vector<TokenLogprobText>& tokens);

struct ResponseHead {
  std::string id;       // "cmpl-..." / "chatcmpl-..."
  int64_t created = 0;  // Unix seconds
  std::string model;
};

struct Choice {
  uint32_t index = 0;
  std::string text;
  std::optional<std::string> finish_reason;
  std::optional<nlohmann::json> logprobs;  // unset: null
};

std::string completion_body(const ResponseHead& head, const std::vector<Choice>& choices, const UsageCounts& usage);
std::string chat_body(const ResponseHead& head, const std::vector<Choice>& choices, const UsageCounts& usage);

// Stream chunks. The first chat chunk of a choice carries the assistant role.
std::string completion_chunk(const ResponseHead& head, const Choice& choice);
std::string chat_chunk(const ResponseHead& head, const Choice& choice, bool first);
// The last chunk when stream_options.include_usage: no choices, the usage.
std::string usage_chunk(const ResponseHead& head, bool chat, const UsageCounts& usage);

// "data: <json>\n\n", and the stream's end.
std::string sse_event(std::string_view json);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

}  // namespace tessera::gateway
