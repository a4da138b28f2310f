// `lamina version` and `lamina info`: what this binary is and what it was built with.
#include <link.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "ops/cpu/cpu_features.h"
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

// The wide instructions this CPU offers that lamina's run-time-dispatched kernels (quantized dot
// products, bf16 GEMM) use: they are chosen at run time, so a build without -march=native still
// runs them, unlike the "CPU vector code" above, which is fixed when compiling.
std::string cpu_runtime_kernels() {
  const ops::cpu::CpuFeatures& features = ops::cpu::cpu_features();
  std::string names;
  const auto add = [&names](bool present, const char* name) {
    if (!present) return;
    if (!names.empty()) names += ", ";
    names += name;
  };
  add(features.avx2_fma, "AVX2+FMA");
  add(features.avx_vnni, "AVX-VNNI");
  add(features.avx512f, "AVX-512F");
  add(features.avx512vnni, "AVX-512 VNNI");
  add(features.avx512bf16, "AVX-512 BF16");
  add(features.amx_bf16, "AMX-BF16");
  return names.empty() ? "none beyond the baseline" : names;
}

// The shared libraries loaded into this process, as the dynamic loader reports them: none for a
// statically linked binary (see LAMINA_STATIC in CMakeLists.txt). Read at run time, so it tells
// what the binary really is, whatever flags it was meant to be built with.
std::string link_description() {
  std::string libraries;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* context) {
        const char* path = info->dlpi_name;
        if (path == nullptr || path[0] == '\0') return 0;  // the executable itself
        const char* slash = std::strrchr(path, '/');
        const char* name = slash != nullptr ? slash + 1 : path;
        // The kernel's vDSO is mapped into every process, static ones included: not a library.
        if (std::strncmp(name, "linux-vdso", 10) == 0 || std::strncmp(name, "linux-gate", 10) == 0) return 0;
        auto& list = *static_cast<std::string*>(context);
        if (!list.empty()) list += ", ";
        list += name;
        return 0;
      },
      &libraries);
  return libraries.empty() ? "static (no shared libraries)" : "dynamic (" + libraries + ")";
}

}  // namespace

int run_version(const Arguments& args) {
  FlagParser parser("lamina version", "Prints the version of this lamina binary.");
  if (!parser.parse(args)) return 0;
  std::printf("lamina %s\n", LAMINA_VERSION);
  return 0;
}

int run_info(const Arguments& args) {
  FlagParser parser("lamina info",
                    "Prints the version, the build configuration (compiler, CPU code, allocator, CUDA backend, "
                    "static or dynamic link), the CPU kernels chosen at run time and the thread count.");
  if (!parser.parse(args)) return 0;
  const char* thread_env = std::getenv("LAMINA_NUM_THREADS");
  const bool threads_from_env = thread_env != nullptr && std::atoi(thread_env) > 0;  // as tensor/parallel.cpp reads it
  const CudaAvailability cuda = cuda_availability();
  const std::string cuda_line =
      !cuda_backend_built() ? std::string("not built (CPU only)")
      : cuda.device_count > 0 ? "built; " + std::to_string(cuda.device_count) + " device(s) usable"
                              : "built; no usable device (" + cuda.reason + ")";
#if defined(LAMINA_SYSTEM_ALLOCATOR)
  const char* allocator = "system malloc (a sanitizer build, or a static build without mimalloc's archive)";
#else
  const char* allocator = "mimalloc, large blocks cached for reuse";
#endif
  std::printf("lamina %s\n", LAMINA_VERSION);
  std::printf("  build type:       %s\n", build_type());
  std::printf("  compiler:         %s\n", __VERSION__);
  std::printf("  CPU vector code:  %s\n", cpu_vector_extensions());
  std::printf("  CPU kernels:      %s (detected at run time)\n", cpu_runtime_kernels().c_str());
  std::printf("  host allocator:   %s\n", allocator);
  std::printf("  CPU threads:      %d (%s; hardware threads: %u)\n", num_threads(),
              threads_from_env ? "from LAMINA_NUM_THREADS" : "default", std::thread::hardware_concurrency());
  std::printf("  CUDA backend:     %s\n", cuda_line.c_str());
  std::printf("  link:             %s\n", link_description().c_str());
  return 0;
}

}  // namespace lamina::cli
