# Unit tests of gateway/chat_template (paths relative to tests/).
tessera_add_unit_test(gateway_chat_template_test
  SOURCES unit/gateway/chat_template/language_test.cc
          unit/gateway/chat_template/fixtures_test.cc
          unit/gateway/chat_template/loader_test.cc
          unit/gateway/chat_template/render_limits_test.cc
          unit/gateway/chat_template/untrusted_input_test.cc
  LIBS tessera_chat_template)
target_compile_definitions(gateway_chat_template_test PRIVATE TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
