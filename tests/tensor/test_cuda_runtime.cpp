#include "helpers.h"
#include "tensor/cuda_runtime.h"

using namespace lamina;

TEST_CASE("CUDA availability is reported, with a reason when there is no device") {
  const CudaAvailability cuda = cuda_availability();
  CHECK(cuda.device_count >= 0);
  if (cuda.device_count == 0) {
    MESSAGE("SKIPPED: CUDA device tests (" << cuda.reason << ")");
    CHECK_FALSE(cuda.reason.empty());
  } else {
    CHECK(cuda.reason.empty());
  }
  if (!cuda_backend_built()) {
    CHECK(cuda.device_count == 0);
    CHECK(cuda.reason.find("without the CUDA backend") != std::string::npos);
  }
}
