# Unit tests of the gateway service (paths relative to tests/).
tessera_add_unit_test(gateway_http_server_test SOURCES unit/gateway/http_server_test.cc
                      LIBS tessera_gateway Boost::boost)
tessera_add_unit_test(gateway_generation_test SOURCES unit/gateway/generation_test.cc
                      LIBS tessera_gateway tessera_loader)
target_include_directories(gateway_generation_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/unit ${CMAKE_CURRENT_SOURCE_DIR}/unit/gateway)
target_compile_definitions(gateway_generation_test PRIVATE TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
