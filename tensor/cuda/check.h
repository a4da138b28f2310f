// Error checks for every CUDA runtime and cuBLAS call: a failure throws lamina::Error naming the
// call as written, the file and line, and the runtime's own description.
//
//   LAMINA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, stream));
//   LAMINA_CUBLAS_CHECK(cublasLtMatmul(...));
//   kernel<<<grid, block, 0, stream>>>(...);
//   LAMINA_CUDA_CHECK_LAUNCH("softmax_rows");  // launch errors (bad configuration, no device)
//
// C++17 (included from .cu files, which nvcc compiles as C++17).
#pragma once

#include <cuda_runtime.h>

namespace lamina::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(int status, const char* call, const char* file, int line);

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, call, file, line);
}

inline void check_cublas(int status, const char* call, const char* file, int line) {
  if (status != 0) throw_cublas_error(status, call, file, line);  // 0 is CUBLAS_STATUS_SUCCESS
}

}  // namespace lamina::cuda

#define LAMINA_CUDA_CHECK(call) ::lamina::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define LAMINA_CUBLAS_CHECK(call) ::lamina::cuda::check_cublas(static_cast<int>(call), #call, __FILE__, __LINE__)
#define LAMINA_CUDA_CHECK_LAUNCH(kernel_name) \
  ::lamina::cuda::check_cuda(cudaGetLastError(), "launch of kernel " kernel_name, __FILE__, __LINE__)
