// How one endpoint's generation reaches its client: an OpenAI body or an OpenAI SSE
// stream (completions and chat), or LightLLM's /generate body and /generate_stream events.
// A streamed response starts (200 and its headers) with the first delta, so a request
// refused before any token gets its real status (429, 503, ...); an error after that is
// one last `data: {"error": ...}` event. Each sink counts the request in the metrics and
// frees its in-flight slot exactly once, when the generation ends.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gateway/generation.h"
#include "gateway/http/http_server.h"

namespace tessera::gateway {

// A JSON error response; 429 and 503 carry Retry-After.
http::Response error_response(const ApiError& error);

struct SinkContext {
  std::shared_ptr<http::Exchange> exchange;
  GatewayMetrics* metrics = nullptr;
  std::string endpoint;            // metrics label, e.g. "/v1/completions"
  std::function<void()> release;   // frees the in-flight slot
};

enum class ApiFlavor { kCompletion, kChat };

struct OpenAiSinkOptions {
  ApiFlavor flavor = ApiFlavor::kCompletion;
  ResponseHead head;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  uint32_t n = 1;  // choices per prompt: usage counts each prompt once
  std::vector<std::string> echo_prefix;  // completions echo: the prompt's text, per choice
};

std::shared_ptr<GenerationSink> make_openai_sink(SinkContext context, OpenAiSinkOptions options);
std::shared_ptr<GenerationSink> make_generate_sink(SinkContext context, bool stream);

}  // namespace tessera::gateway
