// Differentiable reductions and matmul.
//   sum: the gradient broadcast back;  mean: the same over the count
//   max/min, logsumexp, var: ops::*_backward;  matmul: ops::matmul_backward
#include "autograd/functions/common.h"

namespace lamina {
namespace {

using autograd::Grads;
using autograd::saved;

Tensor broadcast_back(const Tensor& grad, const Shape& input_shape, const Shape& dims, bool keepdim) {
  return ops::unsqueeze_reduced(grad, input_shape, dims, keepdim).expand(input_shape);
}

}  // namespace

Tensor sum(const Tensor& x, const Shape& dims, bool keepdim) {
  const profiler::Scope scope("forward:", "sum");
  Tensor out = ops::sum(x, dims, keepdim);
  autograd::record("sum", {&out}, {x}, [shape = x.shape(), dims, keepdim](const Grads& g) {
    return Grads{broadcast_back(g[0], shape, dims, keepdim)};
  });
  return out;
}

Tensor mean(const Tensor& x, const Shape& dims, bool keepdim) {
  const profiler::Scope scope("forward:", "mean");
  Tensor out = ops::mean(x, dims, keepdim);
  const double count = out.numel() == 0 ? 1.0 : double(x.numel()) / double(out.numel());
  autograd::record("mean", {&out}, {x}, [shape = x.shape(), dims, keepdim, count](const Grads& g) {
    return Grads{ops::binary(ops::BinaryOp::div, broadcast_back(g[0], shape, dims, keepdim), count)};
  });
  return out;
}

namespace {
Tensor extremum(bool is_max, const Tensor& x, const Shape& dims, bool keepdim) {
  const profiler::Scope scope("forward:", is_max ? "max" : "min");
  Tensor out = is_max ? ops::max(x, dims, keepdim) : ops::min(x, dims, keepdim);
  autograd::record(is_max ? "max" : "min", {&out}, {x}, [x = saved(x), y = saved(out), dims, keepdim](const Grads& g) {
    return Grads{ops::extremum_backward(g[0], x, y, dims, keepdim)};
  });
  return out;
}
}  // namespace

Tensor max(const Tensor& x, const Shape& dims, bool keepdim) { return extremum(true, x, dims, keepdim); }
Tensor min(const Tensor& x, const Shape& dims, bool keepdim) { return extremum(false, x, dims, keepdim); }

Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim) {
  const profiler::Scope scope("forward:", "logsumexp");
  Tensor out = ops::logsumexp(x, dims, keepdim);
  autograd::record("logsumexp", {&out}, {x}, [x = saved(x), y = saved(out), dims, keepdim](const Grads& g) {
    return Grads{ops::logsumexp_backward(g[0], x, y, dims, keepdim)};
  });
  return out;
}

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  const profiler::Scope scope("forward:", "var");
  Tensor out = ops::var(x, dims, correction, keepdim);
  autograd::record("var", {&out}, {x}, [x = saved(x), dims, correction, keepdim](const Grads& g) {
    return Grads{ops::var_backward(g[0], x, dims, correction, keepdim)};
  });
  return out;
}

// Only the gradients some input wants are computed, and only what they read is kept: with a
// frozen weight (LoRA's base, a reference model) there is no dW product and x is not saved for it.
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b) {
  const profiler::Scope scope("forward:", "matmul");
  Tensor out = ops::matmul(a, b, transpose_a, transpose_b);
  const bool want_a = autograd::needs_grad({&a}), want_b = autograd::needs_grad({&b});
  autograd::record("matmul", {&out}, {a, b},
                   [a = want_b ? saved(a) : Tensor(), b = want_a ? saved(b) : Tensor(), a_shape = a.shape(),
                    b_shape = b.shape(), transpose_a, transpose_b, want_a, want_b](const Grads& g) {
                     auto [grad_a, grad_b] = ops::matmul_backward(g[0], a, b, a_shape, b_shape, transpose_a,
                                                                  transpose_b, want_a, want_b);
                     return Grads{grad_a, grad_b};
                   });
  return out;
}

}  // namespace lamina
