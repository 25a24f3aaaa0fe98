#include "gateway/chat_template/chat_template.h"

#include <new>
#include <stdexcept>

#include "gateway/chat_template/evaluator.h"
#include "gateway/chat_template/parser.h"
#include "tessera/common/files.h"

namespace tessera::chat_template {
namespace {

// tokenizer_config.json spells special tokens as "<s>" or as an AddedToken object.
std::optional<std::string> special_token(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

std::tm system_local_time() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  return tm;
}

}  // namespace

Result<ChatTemplate> ChatTemplate::from_string(std::string_view source) {
  ChatTemplate t;
  try {
    t.program_ = parse_template(source);
  } catch (const TemplateError& e) {
    return e.status();
  } catch (const std::bad_alloc&) {
    return resource_exhausted("chat template: out of memory while loading");
  }
  t.source_ = std::make_shared<const std::string>(source);
  return t;
}

Result<ChatTemplate> ChatTemplate::from_tokenizer_config(const nlohmann::json& config, std::string_view name) {
  if (!config.is_object()) return invalid_argument("tokenizer_config: not a JSON object");
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return not_found("tokenizer_config: no chat_template");
  std::string source;
  if (it->is_string()) {
    source = it->get<std::string>();
  } else if (it->is_array()) {
    bool found = false;
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == name && entry.contains("template") &&
          entry["template"].is_string()) {
        source = entry["template"].get<std::string>();
        found = true;
      }
    }
    if (!found) return not_found("tokenizer_config: no chat_template named '" + std::string(name) + "'");
  } else {
    return invalid_argument("tokenizer_config: chat_template is neither a string nor a list");
  }
  Result<ChatTemplate> t = from_string(source);
  if (!t.is_ok()) return t.status().with_context("tokenizer_config: ");
  t->set_special_tokens(special_token(config, "bos_token"), special_token(config, "eos_token"));
  return t;
}

Result<ChatTemplate> ChatTemplate::from_tokenizer_config_file(const std::filesystem::path& path,
                                                              std::string_view name) {
  auto text = read_file(path, "tokenizer config");
  if (!text.is_ok()) return text.status();
  nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return invalid_argument(path.string() + ": invalid JSON");
  Result<ChatTemplate> t = from_tokenizer_config(config, name);
  if (!t.is_ok()) return t.status().with_context(path.string() + ": ");
  return t;
}

Result<std::string> ChatTemplate::render(const ChatRenderRequest& request) const {
  if (!request.messages.is_array()) return invalid_argument("messages must be a list");
  if (!request.extra_context.is_null() && !request.extra_context.is_object()) {
    return invalid_argument("extra_context must be an object");
  }
  LocalClock clock = request.local_clock ? request.local_clock : LocalClock(system_local_time);
  try {
    // The variables transformers passes: messages, tools, documents, add_generation_prompt,
    // then the tokenizer's special tokens, then the caller's kwargs. Converting them can fail
    // too: the client's JSON may nest too deep.
    ValueDict vars;
    if (request.extra_context.is_object()) {
      for (const auto& [k, v] : request.extra_context.items()) vars.set(k, Value::from_json(v));
    }
    std::optional<std::string> bos = request.bos_token ? request.bos_token : bos_token_;
    std::optional<std::string> eos = request.eos_token ? request.eos_token : eos_token_;
    if (bos) vars.set("bos_token", Value(*bos));
    if (eos) vars.set("eos_token", Value(*eos));
    vars.set("messages", Value::from_json(request.messages));
    vars.set("tools", request.tools ? Value::from_json(*request.tools) : Value::none());
    vars.set("documents", Value::none());
    vars.set("add_generation_prompt", Value(request.add_generation_prompt));
    return render_program(*program_, vars, clock);
  } catch (const TemplateError& e) {
    return e.status();
  } catch (const std::bad_alloc&) {
    // The limits bound each string and list, not the sum of everything live at once.
    return resource_exhausted("chat template: out of memory while rendering");
  } catch (const std::length_error& e) {
    return resource_exhausted(std::string("chat template: ") + e.what());
  } catch (const std::exception& e) {
    // A bug of ours, not the template's: still a Status, never an exception out of render().
    return internal_error(std::string("chat template: unexpected error: ") + e.what());
  }
}

}  // namespace tessera::chat_template
