// SwiGLU: checks and allocation; kernels in ops/cpu/swiglu.cpp (with the derivation) and
// ops/cuda/swiglu.cu.
#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"

namespace lamina::ops {

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  const Device device = check_device("swiglu", {{"gate", &gate}, {"up", &up}});
  check_floating("swiglu", "gate", gate);
  check_same_dtype("swiglu", {{"gate", &gate}, {"up", &up}});
  check_shape("swiglu", "up", up, gate.shape());
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), device);
  LAMINA_DISPATCH(device, swiglu(out, gate, up));
  return out;
}

std::pair<Tensor, Tensor> swiglu_backward(const Tensor& grad_out, const Tensor& gate, const Tensor& up) {
  const Device device = check_device("swiglu_backward", {{"grad_out", &grad_out}, {"gate", &gate}, {"up", &up}});
  check_floating("swiglu_backward", "gate", gate);
  check_same_dtype("swiglu_backward", {{"grad_out", &grad_out}, {"gate", &gate}, {"up", &up}});
  check_shape("swiglu_backward", "up", up, gate.shape());
  check_shape("swiglu_backward", "grad_out", grad_out, gate.shape());
  Tensor grad_gate = Tensor::empty(gate.shape(), gate.dtype(), device);
  Tensor grad_up = Tensor::empty(gate.shape(), gate.dtype(), device);
  LAMINA_DISPATCH(device,
                  swiglu_backward(grad_gate, grad_up, contiguous(grad_out), contiguous(gate), contiguous(up)));
  return {grad_gate, grad_up};
}

}  // namespace lamina::ops
