// The CUDA runtime queries of a build without the CUDA backend.
#include "tensor/cuda_runtime.h"

#if !LAMINA_WITH_CUDA
namespace lamina {

bool cuda_backend_built() { return false; }

CudaAvailability cuda_availability() { return {0, "lamina was built without the CUDA backend (LAMINA_CUDA=OFF or no nvcc)"}; }

}  // namespace lamina
#endif
