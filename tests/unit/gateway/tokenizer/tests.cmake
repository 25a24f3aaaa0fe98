# Unit tests of gateway/tokenizer (paths relative to tests/).
tessera_add_unit_test(gateway_tokenizer_fixtures_test
  SOURCES unit/gateway/tokenizer/fixtures_test.cc
  LIBS tessera_tokenizer tessera_loader nlohmann_json::nlohmann_json)
target_compile_definitions(gateway_tokenizer_fixtures_test PRIVATE TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
tessera_add_unit_test(gateway_tokenizer_test
  SOURCES unit/gateway/tokenizer/tokenizer_test.cc unit/gateway/tokenizer/hostile_input_test.cc
  LIBS tessera_tokenizer tessera_loader nlohmann_json::nlohmann_json)
target_compile_definitions(gateway_tokenizer_test PRIVATE TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
