// The CUDA runtime queries of a build without the CUDA backend.
#include "tensor/cuda_runtime.h"

#include "tensor/error.h"

#if !LAMINA_WITH_CUDA
namespace lamina {

bool cuda_backend_built() { return false; }

CudaAvailability cuda_availability() { return {0, "lamina was built without the CUDA backend (LAMINA_CUDA=OFF or no nvcc)"}; }

void synchronize(Device device) {
  LAMINA_CHECK(device.is_cpu(), "synchronize: device ", device.str(),
               " is not available (this build has no CUDA backend)");
}

std::string device_name(Device device) {
  synchronize(device);  // the same error for a CUDA device
  return "cpu";
}

}  // namespace lamina
#endif
