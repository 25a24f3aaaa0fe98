# Unit tests of router/ (paths relative to tests/).
tessera_add_unit_test(router_kv_test SOURCES unit/router/kv_test.cc LIBS tessera_router_kv)
tessera_add_unit_test(router_scheduler_test SOURCES unit/router/scheduler_test.cc LIBS tessera_router_core)
tessera_add_unit_test(router_wire_contract_test SOURCES unit/router/wire_contract_test.cc
                      LIBS tessera_router_codec tessera_worker_service)
tessera_add_unit_test(router_metrics_test SOURCES unit/router/router_metrics_test.cc LIBS tessera_router_core)
tessera_add_unit_test(router_worker_hub_test SOURCES unit/router/worker_hub_test.cc
                      LIBS tessera_router_service tessera_worker_service)
target_compile_definitions(router_worker_hub_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
# The router and worker binaries as processes on the test model (one at a time: it
# measures nothing, but it loads the 2 cores).
tessera_add_unit_test(router_cluster_test SERIAL SOURCES unit/router/cluster_test.cc
                      LIBS tessera_proto tessera_engine)
target_compile_definitions(router_cluster_test PRIVATE
  TESSERA_ROUTER_BIN="$<TARGET_FILE:tessera-router>" TESSERA_WORKER_BIN="$<TARGET_FILE:tessera-worker>"
  TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
add_dependencies(router_cluster_test tessera-router tessera-worker)
