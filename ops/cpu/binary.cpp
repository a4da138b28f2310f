// CPU kernels of the binary elementwise ops (add, mul, pow, ...) with a tensor or a scalar on
// either side, clamp and its gradient, and the in-place add_. Operands arrive validated and
// broadcast to the output's shape.
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"

namespace lamina::ops::cpu {
namespace {

template <typename T, typename B>
void binary_typed(BinaryOp op, const Tensor& out, const Tensor& a, const B& b_operand) {
  using C = compute_t<T>;
  // b_operand is a Tensor broadcast to out, or a scalar in compute precision.
  auto run = [&](auto f) {
    if constexpr (std::is_same_v<B, Tensor>) {
      map2<T, T, T>(out, a, b_operand, f);
    } else {
      const C b = C(b_operand);
      map1<T, T>(out, a, [&](C x) { return f(x, b); });
    }
  };
  switch (op) {
    case BinaryOp::add: return run([](C x, C y) { return C(x + y); });
    case BinaryOp::sub: return run([](C x, C y) { return C(x - y); });
    case BinaryOp::mul: return run([](C x, C y) { return C(x * y); });
    case BinaryOp::maximum: return run([](C x, C y) { return (x != x || x > y) ? x : y; });
    case BinaryOp::minimum: return run([](C x, C y) { return (x != x || x < y) ? x : y; });
    case BinaryOp::div:
    case BinaryOp::pow:
      if constexpr (std::is_integral_v<T>) {
        throw Error(str_cat(binary_op_name(op), ": integer tensors are not supported"));
      } else if (op == BinaryOp::div) {
        return run([](C x, C y) { return x / y; });
      } else {
        return run([](C x, C y) { return y == C(2) ? x * x : std::pow(x, y); });
      }
  }
}

}  // namespace

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  visit_arithmetic(a.dtype(), binary_op_name(op),
                   [&](auto tag) { binary_typed<typename decltype(tag)::type>(op, out, a, b); });
}

void binary_scalar(BinaryOp op, const Tensor& out, const Tensor& a, double b) {
  visit_arithmetic(a.dtype(), binary_op_name(op),
                   [&](auto tag) { binary_typed<typename decltype(tag)::type>(op, out, a, b); });
}

void scalar_binary(BinaryOp op, const Tensor& out, double a, const Tensor& b) {
  visit_arithmetic(b.dtype(), binary_op_name(op), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C x = C(a);
    switch (op) {
      case BinaryOp::sub: return map1<T, T>(out, b, [x](C y) { return C(x - y); });
      case BinaryOp::div:
        if constexpr (!std::is_integral_v<T>) return map1<T, T>(out, b, [x](C y) { return x / y; });
        break;
      case BinaryOp::pow:
        if constexpr (!std::is_integral_v<T>) return map1<T, T>(out, b, [x](C y) { return std::pow(x, y); });
        break;
      default: return binary_typed<T>(op, out, b, a);  // commutative: add, mul, maximum, minimum
    }
    throw Error(str_cat(binary_op_name(op), ": integer tensors are not supported"));
  });
}

void clamp(const Tensor& out, const Tensor& x, double low, double high) {
  visit_arithmetic(x.dtype(), "clamp", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C lo = convert<C>(low), hi = convert<C>(high);
    map1<T, T>(out, x, [lo, hi](C v) { return v < lo ? lo : (v > hi ? hi : v); });
  });
}

void clamp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, double low, double high) {
  visit_floating(x.dtype(), "clamp_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map2<T, T, T>(grad_in, grad_out, x, [low, high](C g, C v) {
      return (double(v) >= low && double(v) <= high) ? g : C(0);
    });
  });
}

void add_scaled_inplace(const Tensor& dst, const Tensor& src, double alpha) {
  visit_arithmetic(dst.dtype(), "add_", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C scale = C(alpha);
    if (alpha == 1.0) {
      map2<T, T, T>(dst, dst, src, [](C x, C y) { return C(x + y); });
    } else {
      map2<T, T, T>(dst, dst, src, [scale](C x, C y) { return C(x + scale * y); });
    }
  });
}

}  // namespace lamina::ops::cpu
