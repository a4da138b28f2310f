// The CUDA suite's main: without a usable device it prints why and exits with 77, which ctest
// reports as "Skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt), so a CPU-only CI run shows
// the suite as skipped rather than passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "tensor/cuda_runtime.h"

int main(int argc, char** argv) {
  const lamina::CudaAvailability cuda = lamina::cuda_availability();
  if (cuda.device_count == 0) {
    std::printf("SKIPPED: CUDA suite: %s\n", cuda.reason.c_str());
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
