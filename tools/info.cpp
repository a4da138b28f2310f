// `lamina version` and `lamina info`: what this binary is and what it was built with.
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <string>

#include "tensor/cuda_runtime.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

// CMake passes its build type in (see CMakeLists.txt); an empty one means custom flags.
const char* build_type() { return LAMINA_BUILD_TYPE[0] != '\0' ? LAMINA_BUILD_TYPE : "none (custom flags)"; }

const char* cpu_vector_extensions() {
#if defined(__AVX512F__)
  return "AVX-512";
#elif defined(__AVX2__)
  return "AVX2";
#elif defined(__AVX__)
  return "AVX";
#elif defined(__ARM_NEON)
  return "NEON";
#else
  return "baseline (no -march=native)";
#endif
}

}  // namespace

int run_version(const Arguments& args) {
  FlagParser parser("lamina version", "Prints the version of this lamina binary.");
  if (!parser.parse(args)) return 0;
  std::printf("lamina %s\n", LAMINA_VERSION);
  return 0;
}

int run_info(const Arguments& args) {
  FlagParser parser("lamina info", "Prints the version, build configuration and thread count.");
  if (!parser.parse(args)) return 0;
  const char* thread_env = std::getenv("LAMINA_NUM_THREADS");
  const bool threads_from_env = thread_env != nullptr && std::atoi(thread_env) > 0;  // as tensor/parallel.cpp reads it
  const CudaAvailability cuda = cuda_availability();
  const std::string cuda_line =
      !cuda_backend_built() ? std::string("not built (CPU only)")
      : cuda.device_count > 0 ? "built; " + std::to_string(cuda.device_count) + " device(s) usable"
                              : "built; no usable device (" + cuda.reason + ")";
#if defined(LAMINA_SYSTEM_ALLOCATOR)
  const char* allocator = "system malloc (sanitizer build)";
#else
  const char* allocator = "mimalloc, large blocks cached for reuse";
#endif
  std::printf("lamina %s\n", LAMINA_VERSION);
  std::printf("  build type:       %s\n", build_type());
  std::printf("  compiler:         %s\n", __VERSION__);
  std::printf("  CPU vector code:  %s\n", cpu_vector_extensions());
  std::printf("  host allocator:   %s\n", allocator);
  std::printf("  CPU threads:      %d (%s; hardware threads: %u)\n", num_threads(),
              threads_from_env ? "from LAMINA_NUM_THREADS" : "default", std::thread::hardware_concurrency());
  std::printf("  CUDA backend:     %s\n", cuda_line.c_str());
  return 0;
}

}  // namespace lamina::cli
