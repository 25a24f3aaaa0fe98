// Loading templates from tokenizer_config.json and from a bare string (GGUF metadata).
#include <catch2/catch.hpp>

#include "gateway/chat_template/chat_template.h"

using tessera::StatusCode;
using tessera::chat_template::ChatRenderRequest;
using tessera::chat_template::ChatTemplate;

TEST_CASE("tokenizer_config chat_template as a string, with its special tokens", "[chat_template][loader]") {
  auto config = nlohmann::json::parse(R"({
    "bos_token": {"content": "<s>", "lstrip": false},
    "eos_token": "</s>",
    "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
  })");
  auto t = ChatTemplate::from_tokenizer_config(config);
  REQUIRE(t.is_ok());
  ChatRenderRequest request;
  request.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  auto out = t->render(request);
  REQUIRE(out.is_ok());
  CHECK(*out == "<s>hi</s>");
  request.bos_token = "[BOS]";
  CHECK(*t->render(request) == "[BOS]hi</s>");
}

TEST_CASE("tokenizer_config chat_template as a named list picks 'default'", "[chat_template][loader]") {
  auto config = nlohmann::json::parse(R"({"chat_template": [
    {"name": "tool_use", "template": "tools"},
    {"name": "default", "template": "plain"}]})");
  auto t = ChatTemplate::from_tokenizer_config(config);
  REQUIRE(t.is_ok());
  CHECK(*t->render({}) == "plain");
  auto tool = ChatTemplate::from_tokenizer_config(config, "tool_use");
  REQUIRE(tool.is_ok());
  CHECK(*tool->render({}) == "tools");
  CHECK(ChatTemplate::from_tokenizer_config(config, "rag").status().code() == StatusCode::kNotFound);
}

TEST_CASE("tokenizer_config without a chat_template is NOT_FOUND", "[chat_template][loader]") {
  auto t = ChatTemplate::from_tokenizer_config(nlohmann::json::parse(R"({"eos_token": "</s>"})"));
  CHECK(t.status().code() == StatusCode::kNotFound);
}

TEST_CASE("a broken template in tokenizer_config fails at load with its position", "[chat_template][loader]") {
  auto t = ChatTemplate::from_tokenizer_config(nlohmann::json::parse(R"({"chat_template": "ok\n{% frobnicate %}"})"));
  REQUIRE_FALSE(t.is_ok());
  CHECK(t.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(t.status().message(), Catch::Contains("2:4") && Catch::Contains("frobnicate"));
}

TEST_CASE("missing tokenizer_config file is NOT_FOUND", "[chat_template][loader]") {
  CHECK(ChatTemplate::from_tokenizer_config_file("/nonexistent/tokenizer_config.json").status().code() ==
        StatusCode::kNotFound);
}
