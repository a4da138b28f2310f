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

TEST_CASE("devices parse from their names; anything else is an error naming the text") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:3") == Device::cuda(3));
  CHECK(Device::parse(Device::cuda(12).str()) == Device::cuda(12));
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:1:2", ""}) {
    const std::string expected = std::string("unknown device '") + bad + "'";
    CHECK_THROWS_WITH_AS(Device::parse(bad), doctest::Contains(expected.c_str()), Error);
  }
  CHECK(device_name(Device::cpu()) == "cpu");
}
