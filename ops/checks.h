// Argument checks shared by the public ops. Every message names the op and the argument.
#pragma once

#include <initializer_list>
#include <utility>

#include "tensor/tensor.h"

namespace lamina::ops {

using NamedTensor = std::pair<const char*, const Tensor*>;

// Every tensor defined and on one device, and that device has kernels in this build (every op has
// a CUDA kernel, so only a build without the CUDA backend refuses a device: a CUDA tensor there is
// a clear error, never a CPU kernel reading device memory).
Device check_device(const char* op, std::initializer_list<NamedTensor> tensors);

// Calls a kernel of ops/cpu/kernels.h or, on a CUDA device, its twin in ops/cuda/kernels.h:
//   LAMINA_DISPATCH(device, unary(op, out, x));
// Without the CUDA backend only the CPU kernel is named (check_device rejected CUDA devices).
#if LAMINA_WITH_CUDA
#define LAMINA_DISPATCH(device, ...) \
  ((device).is_cuda() ? ::lamina::ops::cuda::__VA_ARGS__ : ::lamina::ops::cpu::__VA_ARGS__)
#else
#define LAMINA_DISPATCH(device, ...) (static_cast<void>(device), ::lamina::ops::cpu::__VA_ARGS__)
#endif

void check_dtype(const char* op, const char* argument, const Tensor& t, DType expected);
void check_same_dtype(const char* op, std::initializer_list<NamedTensor> tensors);
void check_floating(const char* op, const char* argument, const Tensor& t);
void check_index_dtype(const char* op, const char* argument, const Tensor& t);
void check_dim(const char* op, const char* argument, const Tensor& t, int64_t expected_dims);
void check_shape(const char* op, const char* argument, const Tensor& t, const Shape& expected);
// The tensor is written in place: it must not be a broadcast view (two indices, one element).
void check_writable(const char* op, const char* argument, const Tensor& t);

}  // namespace lamina::ops
