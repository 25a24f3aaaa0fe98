// ChatTemplate: renders a conversation into a prompt with a model's Jinja chat template,
// as transformers' apply_chat_template does, byte for byte.
//
// A template is compiled once, at load: syntax the engine does not support (unknown tags,
// filters, tests, unclosed blocks) fails there with line:column, never as a wrong prompt
// later. A compiled template is immutable; render() may run on any thread concurrently.
#pragma once

#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "tessera/common/status.h"

namespace tessera::chat_template {

struct Program;

struct ChatRenderRequest {
  // [{role, content, tool_calls?, tool_call_id?, name?}, ...]. content is a string, null, or
  // a list of parts ({"type": "text", "text": ...}); the template sees them as given.
  // ordered_json: key order reaches the prompt through tojson, as with Python dicts.
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  // Tool schemas ({"type": "function", "function": {...}}); nullopt renders as `tools=None`.
  std::optional<nlohmann::ordered_json> tools;
  bool add_generation_prompt = false;
  // Override the template's defaults (from tokenizer_config.json); nullopt keeps them.
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  // Further template variables (e.g. date_string, enable_thinking); they shadow nothing
  // above. Must be an object or null.
  nlohmann::ordered_json extra_context;
  // The local time strftime_now() sees; default: the system clock in local time.
  std::function<std::tm()> local_clock;
};

class ChatTemplate {
 public:
  // The template text itself, e.g. GGUF `tokenizer.chat_template`.
  [[nodiscard]] static Result<ChatTemplate> from_string(std::string_view source);
  // A parsed tokenizer_config.json: `chat_template` is a string or a list of {name, template}
  // (the one named `name` is used). bos_token/eos_token (strings or AddedToken objects)
  // become the render defaults.
  [[nodiscard]] static Result<ChatTemplate> from_tokenizer_config(const nlohmann::json& config,
                                                                  std::string_view name = "default");
  [[nodiscard]] static Result<ChatTemplate> from_tokenizer_config_file(const std::filesystem::path& path,
                                                                       std::string_view name = "default");

  [[nodiscard]] Result<std::string> render(const ChatRenderRequest& request) const;

  const std::string& source() const { return *source_; }
  const std::optional<std::string>& bos_token() const { return bos_token_; }
  const std::optional<std::string>& eos_token() const { return eos_token_; }
  void set_special_tokens(std::optional<std::string> bos, std::optional<std::string> eos) {
    bos_token_ = std::move(bos);
    eos_token_ = std::move(eos);
  }

 private:
  ChatTemplate() = default;

  std::shared_ptr<const std::string> source_;
  std::shared_ptr<const Program> program_;
  std::optional<std::string> bos_token_;
  std::optional<std::string> eos_token_;
};

}  // namespace tessera::chat_template
