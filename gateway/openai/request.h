// OpenAI request bodies → checked native requests, or an error in OpenAI's shape.
//
// `POST /v1/completions` and `POST /v1/chat/completions` bodies are parsed and every
// parameter is checked for type and range, naming the parameter the way OpenAI does
// ({"error": {"message", "type", "param", "code"}}). Sampling parameters land in a
// tessera.v1.SamplingParams, ready for Router.Generate. Parameters Tessera does not know
// are ignored (as vLLM does), so clients that send newer fields keep working.
// Context-length checks need the tokenized prompt and happen later, in the handler.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "tessera/v1/common.pb.h"

namespace tessera::gateway {

struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // empty: null
  std::string code;   // empty: null
  // {"error": {...}} as OpenAI sends it.
  std::string to_json() const;
};

// One prompt: text to tokenize, or token ids as given.
struct PromptInput {
  std::optional<std::string> text;
  std::vector<int32_t> token_ids;
};

// What both endpoints share.
struct GenerationOptions {
  std::string model;
  std::optional<uint32_t> max_tokens;  // unset: up to the context
  uint32_t n = 1;
  std::vector<std::string> stop;  // at most 4, none empty; applied by the gateway
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  std::string user;
  bool skip_special_tokens = true;
  v1::SamplingParams sampling;  // temperature, top_p/top_k/min_p, penalties, logit_bias,
                                // seed, min_tokens, ignore_eos, stop_token_ids, logprobs
};

struct CompletionRequest {
  GenerationOptions options;
  std::vector<PromptInput> prompts;  // one or more (a batch)
  bool echo = false;
};

struct ChatMessage {
  std::string role;  // system, developer, user, assistant or tool
  std::string content;  // text parts joined
  nlohmann::json raw;   // the message as sent (tool_calls, name, tool_call_id...) for the template
};

struct ChatRequest {
  GenerationOptions options;
  std::vector<ChatMessage> messages;
  std::optional<nlohmann::json> tools;  // function schemas, for the chat template (tool_choice is not enforced)
  bool add_generation_prompt = true;
};

// LightLLM's `POST /generate` and `/generate_stream`: {"inputs": text, "parameters": {...}}
// with do_sample, temperature, top_p, top_k, repetition/presence/frequency penalties,
// max_new_tokens (default 16), min_new_tokens, stop_sequences, ignore_eos, seed,
// skip_special_tokens.
struct GenerateApiRequest {
  std::string inputs;
  GenerationOptions options;  // model unset: the served one
};

template <typename T>
using Parsed = std::variant<T, ApiError>;

Parsed<CompletionRequest> parse_completion_request(std::string_view body);
Parsed<ChatRequest> parse_chat_request(std::string_view body);
// The same, for a body already parsed (e.g. /v1/tokenize with messages).
Parsed<ChatRequest> parse_chat_request_json(const nlohmann::json& body);
Parsed<GenerateApiRequest> parse_generate_request(std::string_view body);

}  // namespace tessera::gateway
