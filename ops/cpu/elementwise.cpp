// CPU elementwise kernels. Operands arrive validated and broadcast to the output's shape.
#include <cmath>

#include "ops/cpu/kernels.h"
#include "ops/cpu/map.h"
#include "ops/cpu/vec_math.h"

namespace lamina::ops::cpu {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

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

void unary(UnaryOp op, const Tensor& out, const Tensor& x) {
  visit_arithmetic(x.dtype(), unary_op_name(op), [&](auto tag) { unary_typed<typename decltype(tag)::type>(op, out, x); });
}

void unary_backward(UnaryOp op, const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, const Tensor& out) {
  visit_arithmetic(x.dtype(), unary_op_name(op), [&](auto tag) {
    unary_backward_typed<typename decltype(tag)::type>(op, grad_in, grad_out, x, out);
  });
}

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

void compare(CompareOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    switch (op) {
      case CompareOp::eq: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x == y; });
      case CompareOp::ne: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x != y; });
      case CompareOp::lt: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x < y; });
      case CompareOp::le: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x <= y; });
      case CompareOp::gt: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x > y; });
      case CompareOp::ge: return map2<bool, T, T>(out, a, b, [](C x, C y) { return x >= y; });
    }
  });
}

void logical(LogicalOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  switch (op) {
    case LogicalOp::logical_not: return map1<bool, bool>(out, a, [](bool x) { return !x; });
    case LogicalOp::logical_and: return map2<bool, bool, bool>(out, a, b, [](bool x, bool y) { return x && y; });
    case LogicalOp::logical_or: return map2<bool, bool, bool>(out, a, b, [](bool x, bool y) { return x || y; });
  }
}

void where(const Tensor& out, const Tensor& condition, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    map3<T, bool, T, T>(out, condition, a, b, [](bool c, C x, C y) { return c ? x : y; });
  });
}

void masked_fill(const Tensor& out, const Tensor& x, const Tensor& mask, double value) {
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const C fill = convert<C>(value);
    map2<T, T, bool>(out, x, mask, [fill](C v, bool m) { return m ? fill : v; });
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

void copy(const Tensor& dst, const Tensor& src) {
  visit_dtype(dst.dtype(), [&](auto out_tag) {
    using Out = typename decltype(out_tag)::type;
    visit_dtype(src.dtype(), [&](auto in_tag) {
      using In = typename decltype(in_tag)::type;
      map1<Out, In>(dst, src, [](compute_t<In> v) { return v; });
    });
  });
}

void fill(const Tensor& dst, double value) {
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T element = convert<T>(value);
    T* base = static_cast<T*>(dst.raw_data());
    for_each_run<1>(dst.shape(), {dst.strides()}, [&](const auto& at, int64_t n, const auto& step) {
      for (int64_t i = 0; i < n; ++i) base[at[0] + i * step[0]] = element;
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
