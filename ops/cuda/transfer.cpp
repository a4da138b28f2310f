// to_device across the host and CUDA devices: the source is made contiguous where it lives, then
// its bytes move in one transfer (staged through pinned buffers when large, tensor/cuda/memory.h).
#include "ops/cuda/kernels.h"
#include "tensor/cuda/memory.h"

namespace lamina::ops::cuda {

Tensor to_device(const Tensor& x, Device device) {
  const Tensor source = contiguous(x);  // on x's device: a CPU copy, or a CUDA kernel
  Tensor out = Tensor::empty(source.shape(), source.dtype(), device);
  const size_t bytes = source.nbytes();
  if (bytes == 0) return out;
  const Device from = source.device();
  if (from.is_cpu() && device.is_cuda()) {
    ::lamina::cuda::copy_to_device(out.raw_data(), source.raw_data(), bytes, device.index);
  } else if (from.is_cuda() && device.is_cpu()) {
    ::lamina::cuda::copy_to_host(out.raw_data(), source.raw_data(), bytes, from.index);
  } else if (from.is_cuda() && device.is_cuda()) {
    ::lamina::cuda::copy_between_devices(out.raw_data(), device.index, source.raw_data(), from.index, bytes);
  } else {
    throw Error(str_cat("to_device: cannot move a tensor from ", from.str(), " to ", device.str()));
  }
  return out;
}

}  // namespace lamina::ops::cuda
