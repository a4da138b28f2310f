// CUDA runtime queries (built only with the CUDA backend).
#include <cuda_runtime.h>

#include "tensor/cuda_runtime.h"

namespace lamina {

bool cuda_backend_built() { return true; }

CudaAvailability cuda_availability() {
  CudaAvailability availability;
  const cudaError_t status = cudaGetDeviceCount(&availability.device_count);
  if (status != cudaSuccess) {
    // Any failure here (no driver, driver too old, no device) means "no GPU".
    availability.device_count = 0;
    availability.reason = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error
  } else if (availability.device_count == 0) {
    availability.reason = "no CUDA device found";
  }
  return availability;
}

}  // namespace lamina
