# Unit tests of launcher/ (paths relative to tests/).
tessera_add_unit_test(launcher_supervisor_test SOURCES unit/launcher/supervisor_test.cc
                      LIBS tessera_launcher_supervisor)
