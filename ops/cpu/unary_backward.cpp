// CPU kernels of the unary ops' gradients: grad_in = grad_out * d op(x) / dx.
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"
#include "ops/cpu/vec_math.h"

namespace lamina::ops::cpu {
namespace {

// grad_in = grad_out * d op(x) / dx, written with whichever of x and out = op(x) is cheaper.
template <typename T>
void unary_backward_typed(UnaryOp op, const Tensor& grad_in, const Tensor& g, const Tensor& x, const Tensor& y) {
  using C = compute_t<T>;
  auto run = [&](auto derivative) { map3<T, T, T, T>(grad_in, g, x, y, derivative); };
  if constexpr (std::is_integral_v<T>) {
    throw Error(str_cat(unary_op_name(op), "_backward: integer tensors have no gradient"));
  } else {
    switch (op) {
      case UnaryOp::neg: return run([](C dy, C, C) { return -dy; });
      case UnaryOp::exp: return run([](C dy, C, C out) { return dy * out; });
      case UnaryOp::log: return run([](C dy, C in, C) { return dy / in; });
      case UnaryOp::sqrt: return run([](C dy, C, C out) { return dy * C(0.5) / out; });
      case UnaryOp::rsqrt: return run([](C dy, C, C out) { return dy * C(-0.5) * out * out * out; });
      case UnaryOp::abs:
        return run([](C dy, C in, C) { return in > C(0) ? dy : (in < C(0) ? -dy : C(0)); });
      case UnaryOp::square: return run([](C dy, C in, C) { return C(2) * in * dy; });
      case UnaryOp::reciprocal: return run([](C dy, C, C out) { return -dy * out * out; });
      case UnaryOp::sigmoid: return run([](C dy, C, C out) { return dy * out * (C(1) - out); });
      case UnaryOp::silu:
        return run([](C dy, C in, C) {
          const C s = fast_sigmoid(in);
          return dy * s * (C(1) + in * (C(1) - s));
        });
      case UnaryOp::tanh: return run([](C dy, C, C out) { return dy * (C(1) - out * out); });
      case UnaryOp::relu: return run([](C dy, C in, C) { return in > C(0) ? dy : C(0); });
      case UnaryOp::gelu:
        return run([](C dy, C in, C) {
          const C cdf = C(0.5) * (C(1) + std::erf(in * C(kInvSqrt2)));
          const C pdf = C(kInvSqrt2Pi) * std::exp(C(-0.5) * in * in);
          return dy * (cdf + in * pdf);
        });
      case UnaryOp::softplus: return run([](C dy, C in, C) { return dy * fast_sigmoid(in); });
      case UnaryOp::log_sigmoid: return run([](C dy, C in, C) { return dy * fast_sigmoid(-in); });
    }
  }
}

}  // namespace

void unary_backward(UnaryOp op, const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, const Tensor& out) {
  visit_arithmetic(x.dtype(), unary_op_name(op), [&](auto tag) {
    unary_backward_typed<typename decltype(tag)::type>(op, grad_in, grad_out, x, out);
  });
}

}  // namespace lamina::ops::cpu
