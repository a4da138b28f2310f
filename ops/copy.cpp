// Copies and casts between dtypes, layouts and devices; fills; dropout masks. Kernels in
// ops/cpu/copy.cpp and ops/cuda/elementwise.cu; moves between devices in ops/cuda/transfer.cpp.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {

Tensor cast(const Tensor& x, DType dtype) {
  const Device device = check_device("cast", {{"x", &x}});
  Tensor out = Tensor::empty(x.shape(), dtype, device);
  LAMINA_DISPATCH(device, copy(out, x));
  return out;
}

Tensor contiguous(const Tensor& x) {
  check_defined(x, "contiguous", "x");
  return x.is_contiguous() ? x : cast(x, x.dtype());
}

Tensor clone(const Tensor& x) { return cast(x, x.dtype()); }

Tensor to_device(const Tensor& x, Device device) {
  check_defined(x, "to_device", "x");
  if (x.device() == device) return x;
#if LAMINA_WITH_CUDA
  return cuda::to_device(x, device);
#else
  throw Error(str_cat("to_device: cannot move a tensor from ", x.device().str(), " to ", device.str(),
                      " (CUDA backend not built)"));
#endif
}

void copy_(const Tensor& dst, const Tensor& src) {
  check_device("copy_", {{"dst", &dst}, {"src", &src}});
  check_writable("copy_", "dst", dst);
  LAMINA_CHECK(broadcast_shapes(dst.shape(), src.shape(), "copy_") == dst.shape(), "copy_: source shape ",
               src.shape(), " does not broadcast to destination shape ", dst.shape());
  LAMINA_DISPATCH(dst.device(), copy(dst, views::broadcast_to(src, dst.shape(), "copy_")));
}

void fill_(const Tensor& dst, double value) {
  check_device("fill_", {{"dst", &dst}});
  LAMINA_DISPATCH(dst.device(), fill(dst, value));
}

Tensor dropout_mask(const Shape& shape, double keep_prob, Generator& generator, DType dtype, Device device) {
  LAMINA_CHECK(keep_prob > 0.0 && keep_prob <= 1.0, "dropout_mask: keep probability ", keep_prob,
               " must be in (0, 1]");
  const Tensor draws = uniform(shape, 0.0, 1.0, generator, DType::f32, device);
  const Tensor kept = compare(CompareOp::lt, draws, keep_prob);
  return binary(BinaryOp::mul, cast(kept, dtype), 1.0 / keep_prob);
}

}  // namespace lamina::ops
