// RMSNorm: checks and allocation; kernels in ops/cpu/norm.cpp (with the derivation) and
// ops/cuda/norm.cu.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {
namespace {

DType stats_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

Shape row_shape(const Tensor& x) { return Shape(x.shape().begin(), x.shape().end() - 1); }

void check_norm_inputs(const char* op, const Tensor& x, const Tensor& weight) {
  check_floating(op, "x", x);
  check_same_dtype(op, {{"x", &x}, {"weight", &weight}});
  LAMINA_CHECK(x.dim() >= 1, op, ": x must have at least 1 dim, got shape ", x.shape());
  check_shape(op, "weight", weight, {x.size(-1)});
}

}  // namespace

RmsNormResult rms_norm(const Tensor& x_in, const Tensor& weight_in, double eps) {
  const Device device = check_device("rms_norm", {{"x", &x_in}, {"weight", &weight_in}});
  check_norm_inputs("rms_norm", x_in, weight_in);
  LAMINA_CHECK(eps >= 0, "rms_norm: eps must be non-negative, got ", eps);
  const Tensor x = contiguous(x_in), weight = contiguous(weight_in);
  RmsNormResult result{Tensor::empty(x.shape(), x.dtype(), device),
                       Tensor::empty(row_shape(x), stats_dtype(x.dtype()), device)};
  LAMINA_DISPATCH(device, rms_norm(result.y, result.rstd, x, weight, eps));
  return result;
}

RmsNormGrads rms_norm_backward(const Tensor& grad_out, const Tensor& x_in, const Tensor& weight_in,
                               const Tensor& rstd) {
  const Device device = check_device("rms_norm_backward",
                                     {{"grad_out", &grad_out}, {"x", &x_in}, {"weight", &weight_in}, {"rstd", &rstd}});
  check_norm_inputs("rms_norm_backward", x_in, weight_in);
  check_same_dtype("rms_norm_backward", {{"grad_out", &grad_out}, {"x", &x_in}});
  check_shape("rms_norm_backward", "grad_out", grad_out, x_in.shape());
  check_shape("rms_norm_backward", "rstd", rstd, row_shape(x_in));
  check_dtype("rms_norm_backward", "rstd", rstd, stats_dtype(x_in.dtype()));
  const Tensor x = contiguous(x_in), weight = contiguous(weight_in);
  RmsNormGrads grads{Tensor::empty(x.shape(), x.dtype(), device),
                     Tensor::empty(weight.shape(), weight.dtype(), device)};
  LAMINA_DISPATCH(device,
                  rms_norm_backward(grads.dx, grads.dweight, contiguous(grad_out), x, weight, contiguous(rstd)));
  return grads;
}

}  // namespace lamina::ops
