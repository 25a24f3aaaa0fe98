# Unit tests of worker/models (paths relative to tests/).
tessera_add_unit_test(worker_model_config_test SOURCES unit/worker/models/model_config_test.cc LIBS tessera_models)
target_compile_definitions(worker_model_config_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
tessera_add_unit_test(worker_dummy_weights_test SOURCES unit/worker/models/dummy_weights_test.cc LIBS tessera_models)
