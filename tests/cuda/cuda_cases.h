// Shared pieces of the CUDA suite: every CUDA op is compared with its CPU twin on the same inputs.
//
// - mirror(t) puts a CPU tensor's whole storage on the GPU and views it with the same shape,
//   strides and offset, so non-contiguous and offset inputs reach the kernels as they are (with
//   the padding values a kernel that ignores strides would read).
// - for_each_poison(body) runs body twice with every new CUDA allocation pre-filled with 0xFF
//   (NaN for floats, -1 for integers) and then 0x00: an output element a kernel never writes
//   differs from the CPU result in at least one of the runs.
// - Tolerances are per op and per dtype, stated where they are used (elementwise_tolerance and
//   scaled are in ops/op_cases.h, shared with the op-case harness); bit-exact results use kExact.
#pragma once

#include <cmath>
#include <functional>
#include <vector>

#include "helpers.h"
#include "ops/op_cases.h"
#include "tensor/cuda/allocator.h"
#include "tensor/cuda/memory.h"
#include "tensor/cuda/runtime.h"
#include "tensor/cuda_runtime.h"

namespace lamina::testing::gpu {

inline const Device kCuda = Device::cuda(0);
inline constexpr Tolerance kExact{0, 0};

inline constexpr DType kGpuFloatDTypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};

inline Tensor mirror(const Tensor& cpu) {
  REQUIRE(cpu.device().is_cpu());
  const size_t bytes = cpu.storage()->bytes();
  auto storage = Storage::allocate(bytes, kCuda);
  cuda::copy_to_device(storage->data(), cpu.storage()->data(), bytes, kCuda.index);
  return Tensor(storage, cpu.shape(), cpu.strides(), cpu.offset(), cpu.dtype());
}

inline Tensor to_cpu(const Tensor& t) { return ops::to_device(t, Device::cpu()); }

class Poison {
 public:
  explicit Poison(int byte) { cuda::set_allocation_fill(byte); }
  ~Poison() { cuda::set_allocation_fill(-1); }
  Poison(const Poison&) = delete;
  Poison& operator=(const Poison&) = delete;
};

inline void for_each_poison(const std::function<void()>& body) {
  for (int byte : {0xFF, 0x00}) {
    CAPTURE(byte);
    Poison poison(byte);
    body();
  }
  cuda::synchronize_stream(kCuda.index);  // surface any asynchronous fault here, not in a later case
}

// ||a - b|| / ||b|| over all elements (f64), for products whose per-element error depends on K.
inline double relative_error(const Tensor& actual, const Tensor& expected) {
  const std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - e[i]) * (a[i] - e[i]);
    norm += e[i] * e[i];
  }
  return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

}  // namespace lamina::testing::gpu
