// Fused AdamW step: argument checks, then the kernel of the tensors' device (ops/cpu/adamw.cpp,
// where the formula is written out, or ops/cuda/adamw.cu).
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {

void adamw_step_(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWStep& hyper, const Tensor& rounded) {
  check_device("adamw_step_", {{"param", &param}, {"grad", &grad}, {"exp_avg", &exp_avg}, {"exp_avg_sq", &exp_avg_sq}});
  check_floating("adamw_step_", "param", param);
  check_floating("adamw_step_", "grad", grad);
  const DType state = param.dtype() == DType::f64 ? DType::f64 : DType::f32;
  check_dtype("adamw_step_", "exp_avg", exp_avg, state);
  check_dtype("adamw_step_", "exp_avg_sq", exp_avg_sq, state);
  for (const auto& [name, t] : {NamedTensor{"param", &param}, NamedTensor{"grad", &grad},
                                NamedTensor{"exp_avg", &exp_avg}, NamedTensor{"exp_avg_sq", &exp_avg_sq}}) {
    check_shape("adamw_step_", name, *t, param.shape());
    LAMINA_CHECK(t->is_contiguous(), "adamw_step_: '", name, "' must be contiguous (optimizer state lives in flat buffers)");
  }
  LAMINA_CHECK(hyper.step >= 1, "adamw_step_: step must be >= 1 (1-based), got ", hyper.step);
  LAMINA_CHECK(hyper.lr >= 0 && hyper.eps > 0 && hyper.weight_decay >= 0, "adamw_step_: invalid lr ", hyper.lr,
               ", eps ", hyper.eps, " or weight_decay ", hyper.weight_decay);
  LAMINA_CHECK(hyper.beta1 >= 0 && hyper.beta1 < 1 && hyper.beta2 >= 0 && hyper.beta2 < 1,
               "adamw_step_: betas must be in [0, 1), got ", hyper.beta1, " and ", hyper.beta2);
  if (rounded.defined()) {
    check_device("adamw_step_", {{"param", &param}, {"rounded", &rounded}});
    LAMINA_CHECK(rounded.dtype() == DType::bf16 || rounded.dtype() == DType::f16,
                 "adamw_step_: 'rounded' must be bf16 or f16, got ", dtype_name(rounded.dtype()));
    check_shape("adamw_step_", "rounded", rounded, param.shape());
    LAMINA_CHECK(rounded.is_contiguous(), "adamw_step_: 'rounded' must be contiguous");
  }
#if LAMINA_WITH_CUDA
  if (param.device().is_cuda()) {
    cuda::adamw_step(param, grad, exp_avg, exp_avg_sq, hyper);
    if (rounded.defined()) copy_(rounded, param);  // the CUDA kernel has no fused rounding yet
    return;
  }
#endif
  cpu::adamw_step(param, grad, exp_avg, exp_avg_sq, hyper, rounded);
}

}  // namespace lamina::ops
