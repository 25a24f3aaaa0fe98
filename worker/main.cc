// tessera-worker: holds one shard of the model on one device and executes the router's
// step plans.
//
// The service itself lands with its issue (see docs/DEVELOPING.md); until then the binary
// answers --help, --version and --list-devices, and refuses to start rather than pretend
// to serve.
#include <cstdio>

#include "kernels/cpu/cpu_features.h"
#include "tessera/common/cli.h"
#if TESSERA_WITH_CUDA
#include "kernels/cuda/device_info.h"
#endif

namespace {

constexpr const char* kProgram = "tessera-worker";
constexpr const char* kHelp =
    "Usage: tessera-worker [--help] [--version] [--list-devices]\n"
    "\n"
    "Holds one shard of the model on one device and executes the router's step plans.\n"
    "\n"
    "Options:\n"
    "  -h, --help          show this help and exit\n"
    "      --version       print the version and exit\n"
    "      --list-devices  print the CPU features and CUDA devices this worker can use\n";

int list_devices() {
  namespace cpu = tessera::kernels::cpu;
  const auto& f = cpu::cpu_features();
  std::printf("cpu: %d logical cpus, kernels %s, features: %s\n", f.num_logical_cpus,
              cpu::simd_level_name(cpu::best_simd_level(f)), cpu::describe(f).c_str());
#if TESSERA_WITH_CUDA
  const auto q = tessera::kernels::cuda::query_devices();
  if (q.cuda_error != 0) {
    std::printf("cuda: error %d: %s\n", q.cuda_error, q.error_message.c_str());
    return 1;
  }
  std::printf("cuda: runtime %d, driver %d, %zu device(s)\n", q.runtime_version, q.driver_version, q.devices.size());
  for (const auto& d : q.devices) {
    std::printf("cuda:%d %s, sm_%d%d, %d SMs, %.1f GiB total, %.1f GiB free\n", d.ordinal, d.name.c_str(),
                d.compute_capability_major, d.compute_capability_minor, d.num_sms,
                static_cast<double>(d.total_memory_bytes) / (1 << 30), static_cast<double>(d.free_memory_bytes) / (1 << 30));
  }
#else
  std::printf("cuda: not built in (TESSERA_CUDA=OFF or no nvcc at build time)\n");
#endif
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  if (args.size() == 1 && args[0] == "--list-devices") return list_devices();
  if (!args.empty()) return tessera::cli::usage_error(kProgram, "unknown argument '" + args.front() + "'");
  std::fprintf(stderr, "%s: the service is not built yet in this version\n", kProgram);
  return 1;
}
