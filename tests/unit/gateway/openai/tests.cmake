# Unit tests of gateway/openai (paths relative to tests/).
tessera_add_unit_test(gateway_stop_strings_test SOURCES unit/gateway/openai/stop_strings_test.cc
                      LIBS tessera_gateway_openai)
