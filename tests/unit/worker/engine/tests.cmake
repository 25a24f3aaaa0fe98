# Unit tests of worker/engine (paths relative to tests/).
tessera_add_unit_test(worker_sampler_test SOURCES unit/worker/engine/sampler_test.cc LIBS tessera_sampler)
tessera_add_unit_test(worker_engine_reference_test SERIAL SOURCES unit/worker/engine/engine_reference_test.cc
                      LIBS tessera_engine nlohmann_json::nlohmann_json)
tessera_add_unit_test(worker_engine_batch_test SERIAL SOURCES unit/worker/engine/engine_batch_test.cc
                      LIBS tessera_engine nlohmann_json::nlohmann_json)
foreach(t worker_engine_reference_test worker_engine_batch_test)
  target_compile_definitions(${t} PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
endforeach()
tessera_add_unit_test(worker_engine_formats_test SERIAL SOURCES unit/worker/engine/engine_formats_test.cc
                      LIBS tessera_engine nlohmann_json::nlohmann_json)
target_compile_definitions(worker_engine_formats_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
target_include_directories(worker_engine_formats_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/unit/worker)
tessera_add_unit_test(worker_engine_families_test SOURCES unit/worker/engine/engine_families_test.cc
                      LIBS tessera_engine nlohmann_json::nlohmann_json)
target_compile_definitions(worker_engine_families_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
