// CPU kernels of the unary elementwise ops (exp, silu, gelu, ...): out = op(x), with the
// operand validated by ops/elementwise.cpp. (The elementwise kernels are split by op family
// so that no one file's template instantiations dominate a build.)
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"
#include "ops/cpu/vec_math.h"

namespace lamina::ops::cpu {
namespace {

template <typename C>
C softplus_value(C v) {  // log(1 + e^v) without overflow
  return std::log1p(fast_exp(-std::abs(v))) + (v > C(0) ? v : C(0));
}

template <typename T>
void unary_typed(UnaryOp op, const Tensor& out, const Tensor& x) {
  using C = compute_t<T>;
  if constexpr (std::is_integral_v<T>) {
    switch (op) {
      case UnaryOp::neg: return map1<T, T>(out, x, [](C v) { return C(-v); });
      case UnaryOp::abs: return map1<T, T>(out, x, [](C v) { return C(v < 0 ? -v : v); });
      case UnaryOp::square: return map1<T, T>(out, x, [](C v) { return C(v * v); });
      default: throw Error(str_cat(unary_op_name(op), ": integer tensors are not supported"));
    }
  } else {
    switch (op) {
      case UnaryOp::neg: return map1<T, T>(out, x, [](C v) { return -v; });
      case UnaryOp::exp: return map1<T, T>(out, x, [](C v) { return fast_exp(v); });
      case UnaryOp::log: return map1<T, T>(out, x, [](C v) { return std::log(v); });
      case UnaryOp::sqrt: return map1<T, T>(out, x, [](C v) { return std::sqrt(v); });
      case UnaryOp::rsqrt: return map1<T, T>(out, x, [](C v) { return C(1) / std::sqrt(v); });
      case UnaryOp::abs: return map1<T, T>(out, x, [](C v) { return std::abs(v); });
      case UnaryOp::square: return map1<T, T>(out, x, [](C v) { return v * v; });
      case UnaryOp::reciprocal: return map1<T, T>(out, x, [](C v) { return C(1) / v; });
      case UnaryOp::sigmoid: return map1<T, T>(out, x, [](C v) { return fast_sigmoid(v); });
      case UnaryOp::silu: return map1<T, T>(out, x, [](C v) { return v * fast_sigmoid(v); });
      case UnaryOp::tanh: return map1<T, T>(out, x, [](C v) { return std::tanh(v); });
      case UnaryOp::relu: return map1<T, T>(out, x, [](C v) { return v > C(0) ? v : C(0); });
      case UnaryOp::gelu:
        return map1<T, T>(out, x, [](C v) { return C(0.5) * v * (C(1) + std::erf(v * C(kInvSqrt2))); });
      case UnaryOp::softplus: return map1<T, T>(out, x, [](C v) { return softplus_value(v); });
      case UnaryOp::log_sigmoid: return map1<T, T>(out, x, [](C v) { return -softplus_value(-v); });
    }
  }
}

}  // namespace

void unary(UnaryOp op, const Tensor& out, const Tensor& x) {
  visit_arithmetic(x.dtype(), unary_op_name(op), [&](auto tag) { unary_typed<typename decltype(tag)::type>(op, out, x); });
}

}  // namespace lamina::ops::cpu
