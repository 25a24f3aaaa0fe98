# Unit tests of worker/loader (paths relative to tests/).
set(_loader_test_dir unit/worker/loader)
tessera_add_unit_test(loader_gguf_file_test
  SOURCES ${_loader_test_dir}/gguf_file_test.cc ${_loader_test_dir}/gguf_builder.cc
  LIBS tessera_loader nlohmann_json::nlohmann_json)
tessera_add_unit_test(loader_dequantize_test
  SOURCES ${_loader_test_dir}/dequantize_test.cc
  LIBS tessera_loader nlohmann_json::nlohmann_json)
tessera_add_unit_test(loader_safetensors_file_test
  SOURCES ${_loader_test_dir}/safetensors_file_test.cc
  LIBS tessera_loader nlohmann_json::nlohmann_json)
# Random truncations and byte flips of real and synthetic files; also run under
# ASan+UBSan (-DTESSERA_SANITIZE=address,undefined).
tessera_add_unit_test(loader_fuzz_test
  SOURCES ${_loader_test_dir}/loader_fuzz_test.cc ${_loader_test_dir}/gguf_builder.cc
  LIBS tessera_loader nlohmann_json::nlohmann_json)
foreach(_t loader_gguf_file_test loader_dequantize_test loader_safetensors_file_test loader_fuzz_test)
  target_compile_definitions(${_t} PRIVATE TESSERA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endforeach()
