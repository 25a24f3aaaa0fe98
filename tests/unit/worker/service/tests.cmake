# Unit tests of worker/service (paths relative to tests/).
tessera_add_unit_test(worker_session_test SOURCES unit/worker/service/worker_session_test.cc
                      LIBS tessera_worker_service)
target_compile_definitions(worker_session_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
