# Unit tests of gateway/openai (paths relative to tests/).
tessera_add_unit_test(gateway_stop_strings_test SOURCES unit/gateway/openai/stop_strings_test.cc
                      LIBS tessera_gateway_openai)
tessera_add_unit_test(gateway_openai_request_test SOURCES unit/gateway/openai/request_test.cc
                      LIBS tessera_gateway_openai)
tessera_add_unit_test(gateway_openai_response_test SOURCES unit/gateway/openai/response_test.cc
                      LIBS tessera_gateway_openai)
