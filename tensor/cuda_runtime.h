// What the CUDA runtime can offer this process. Without the CUDA backend, or without a usable
// driver and device (as on a build machine), the count is 0 and `reason` says why; CUDA
// tests and benchmarks use this to skip visibly instead of failing.
#pragma once

#include <string>

#include "tensor/device.h"

namespace lamina {

struct CudaAvailability {
  int device_count = 0;
  std::string reason;  // empty when devices are usable
};

bool cuda_backend_built();
CudaAvailability cuda_availability();

// Waits until all work queued on `device` has finished (CUDA work is asynchronous; copies to
// the CPU wait by themselves). Nothing to wait for on the CPU.
void synchronize(Device device);

// "cpu", or the GPU's name as the driver reports it ("NVIDIA H100 80GB HBM3").
std::string device_name(Device device);

}  // namespace lamina
