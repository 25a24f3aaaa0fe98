# Unit tests of router/ (paths relative to tests/).
tessera_add_unit_test(router_kv_test SOURCES unit/router/kv_test.cc LIBS tessera_router_kv)
tessera_add_unit_test(router_scheduler_test SOURCES unit/router/scheduler_test.cc LIBS tessera_router_core)
tessera_add_unit_test(router_wire_contract_test SOURCES unit/router/wire_contract_test.cc
                      LIBS tessera_router_codec tessera_worker_service)
tessera_add_unit_test(router_metrics_test SOURCES unit/router/router_metrics_test.cc LIBS tessera_router_core)
tessera_add_unit_test(router_worker_hub_test SOURCES unit/router/worker_hub_test.cc
                      LIBS tessera_router_service tessera_worker_service)
target_compile_definitions(router_worker_hub_test PRIVATE TESSERA_FIXTURES_DIR="${CMAKE_CURRENT_SOURCE_DIR}/fixtures")
tessera_add_unit_test(router_placement_test SOURCES unit/router/placement_test.cc LIBS tessera_router_core)
