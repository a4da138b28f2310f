// CUDA elementwise kernels, the twins of ops/cpu/elementwise.cpp: the same formulas in the same
// precision, written as math functors over ops/cuda/map.cuh. Operands arrive validated and
// broadcast to the output's shape.
#include <cstring>

#include "ops/common/convert.h"
#include "ops/cuda/kernels.h"
#include "ops/cuda/map.cuh"

namespace lamina::ops::cuda {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <typename C>
__device__ __forceinline__ C softplus_value(C v) {  // log(1 + e^v) without overflow
  return dmath::log1p(dmath::exp(-dmath::abs(v))) + (v > C(0) ? v : C(0));
}

template <typename C>
__device__ __forceinline__ C apply_unary(UnaryOp op, C v) {
  if constexpr (std::is_integral_v<C>) {
    switch (op) {
      case UnaryOp::neg: return C(-v);
      case UnaryOp::abs: return C(v < 0 ? -v : v);
      case UnaryOp::square: return C(v * v);
      default: return v;  // rejected on the host
    }
  } else {
    switch (op) {
      case UnaryOp::neg: return -v;
      case UnaryOp::exp: return dmath::exp(v);
      case UnaryOp::log: return dmath::log(v);
      case UnaryOp::sqrt: return dmath::sqrt(v);
      case UnaryOp::rsqrt: return C(1) / dmath::sqrt(v);
      case UnaryOp::abs: return dmath::abs(v);
      case UnaryOp::square: return v * v;
      case UnaryOp::reciprocal: return C(1) / v;
      case UnaryOp::sigmoid: return dmath::sigmoid(v);
      case UnaryOp::silu: return v * dmath::sigmoid(v);
      case UnaryOp::tanh: return dmath::tanh(v);
      case UnaryOp::relu: return v > C(0) ? v : C(0);
      case UnaryOp::gelu: return C(0.5) * v * (C(1) + dmath::erf(v * C(kInvSqrt2)));
      case UnaryOp::softplus: return softplus_value(v);
      case UnaryOp::log_sigmoid: return -softplus_value(-v);
    }
    return v;
  }
}

// grad_in = grad_out * d op(x) / dx, from x or out = op(x) as the CPU rule does.
template <typename C>
__device__ __forceinline__ C apply_unary_backward(UnaryOp op, C dy, C in, C out) {
  switch (op) {
    case UnaryOp::neg: return -dy;
    case UnaryOp::exp: return dy * out;
    case UnaryOp::log: return dy / in;
    case UnaryOp::sqrt: return dy * C(0.5) / out;
    case UnaryOp::rsqrt: return dy * C(-0.5) * out * out * out;
    case UnaryOp::abs: return in > C(0) ? dy : (in < C(0) ? -dy : C(0));
    case UnaryOp::square: return C(2) * in * dy;
    case UnaryOp::reciprocal: return -dy * out * out;
    case UnaryOp::sigmoid: return dy * out * (C(1) - out);
    case UnaryOp::silu: {
      const C s = dmath::sigmoid(in);
      return dy * s * (C(1) + in * (C(1) - s));
    }
    case UnaryOp::tanh: return dy * (C(1) - out * out);
    case UnaryOp::relu: return in > C(0) ? dy : C(0);
    case UnaryOp::gelu: {
      const C cdf = C(0.5) * (C(1) + dmath::erf(in * C(kInvSqrt2)));
      const C pdf = C(kInvSqrt2Pi) * dmath::exp(C(-0.5) * in * in);
      return dy * (cdf + in * pdf);
    }
    case UnaryOp::softplus: return dy * dmath::sigmoid(in);
    case UnaryOp::log_sigmoid: return dy * dmath::sigmoid(-in);
  }
  return dy;
}

template <typename C>
__device__ __forceinline__ C apply_binary(BinaryOp op, C x, C y) {
  switch (op) {
    case BinaryOp::add: return C(x + y);
    case BinaryOp::sub: return C(x - y);
    case BinaryOp::mul: return C(x * y);
    case BinaryOp::maximum: return (x != x || x > y) ? x : y;
    case BinaryOp::minimum: return (x != x || x < y) ? x : y;
    case BinaryOp::div:
      if constexpr (!std::is_integral_v<C>) return x / y;
      break;
    case BinaryOp::pow:
      if constexpr (!std::is_integral_v<C>) return y == C(2) ? x * x : dmath::pow(x, y);
      break;
  }
  return x;  // integer div/pow: rejected on the host
}

struct UnaryMath {
  UnaryOp op;
  template <typename C>
  __device__ C operator()(C v) const {
    return apply_unary(op, v);
  }
};

struct UnaryBackwardMath {
  UnaryOp op;
  template <typename C>
  __device__ C operator()(C dy, C in, C out) const {
    return apply_unary_backward(op, dy, in, out);
  }
};

struct BinaryMath {
  BinaryOp op;
  template <typename C>
  __device__ C operator()(C x, C y) const {
    return apply_binary(op, x, y);
  }
};

// One tensor operand and a scalar in compute precision; `scalar_first` computes f(scalar, x)
// for sub/div/pow (scalar_binary), whose CPU pow has no x*x shortcut.
template <typename C>
struct ScalarMath {
  BinaryOp op;
  C scalar;
  bool scalar_first;
  __device__ C operator()(C x) const {
    if (!scalar_first) return apply_binary(op, x, scalar);
    if constexpr (!std::is_integral_v<C>) {
      if (op == BinaryOp::div) return scalar / x;
      if (op == BinaryOp::pow) return dmath::pow(scalar, x);
    }
    return C(scalar - x);  // sub
  }
};

struct CompareMath {
  CompareOp op;
  template <typename C>
  __device__ bool operator()(C x, C y) const {
    switch (op) {
      case CompareOp::eq: return x == y;
      case CompareOp::ne: return x != y;
      case CompareOp::lt: return x < y;
      case CompareOp::le: return x <= y;
      case CompareOp::gt: return x > y;
      case CompareOp::ge: return x >= y;
    }
    return false;
  }
};

struct NotMath {
  __device__ bool operator()(bool x) const { return !x; }
};

struct AndOrMath {
  bool is_and;
  __device__ bool operator()(bool x, bool y) const { return is_and ? (x && y) : (x || y); }
};

struct WhereMath {
  template <typename C>
  __device__ C operator()(bool condition, C x, C y) const {
    return condition ? x : y;
  }
};

template <typename C>
struct MaskedFillMath {
  C fill;
  __device__ C operator()(C v, bool masked) const { return masked ? fill : v; }
};

template <typename C>
struct ClampMath {
  C low, high;
  __device__ C operator()(C v) const { return v < low ? low : (v > high ? high : v); }
};

struct ClampBackwardMath {
  double low, high;
  template <typename C>
  __device__ C operator()(C g, C v) const {
    return (double(v) >= low && double(v) <= high) ? g : C(0);
  }
};

struct Identity {
  template <typename C>
  __device__ C operator()(C v) const {
    return v;
  }
};

template <typename C>
struct AddScaledMath {
  C scale;
  bool unit;
  __device__ C operator()(C x, C y) const { return unit ? C(x + y) : C(x + scale * y); }
};

// The host type with the same bits as device element type T, for conversions done on the host.
template <typename T>
struct HostType {
  using type = T;
};
template <>
struct HostType<bfloat16> {
  using type = lamina::bf16;
};
template <>
struct HostType<half> {
  using type = lamina::f16;
};

// A double converted to T exactly as the CPU kernels convert it (ops/common/convert.h), as T's bits.
template <typename T>
T host_convert(double value) {
  using Host = typename HostType<T>::type;
  const Host converted = ops::convert<Host>(value);
  T out;
  static_assert(sizeof(Host) == sizeof(T), "host and device element types differ in size");
  std::memcpy(static_cast<void*>(&out), &converted, sizeof(T));
  return out;
}

template <typename T>
__global__ void fill_kernel(StridedLayout<1> layout, int64_t count, T value, T* base) {
  for (int64_t i = global_thread(); i < count; i += grid_threads()) {
    int64_t offsets[1];
    offsets_of(layout, i, offsets);
    base[offsets[0]] = value;
  }
}

}  // namespace

void unary(UnaryOp op, const Tensor& out, const Tensor& x) {
  visit_arithmetic(x.dtype(), unary_op_name(op), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if constexpr (std::is_integral_v<T>) {
      LAMINA_CHECK(op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::square, unary_op_name(op),
                   ": integer tensors are not supported");
    }
    map1<T, T>(unary_op_name(op), out, x, UnaryMath{op});
  });
}

void unary_backward(UnaryOp op, const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, const Tensor& out) {
  visit_floating(x.dtype(), unary_op_name(op), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map3_strided<T, T, T, T>(unary_op_name(op), grad_in, grad_out, x, out, UnaryBackwardMath{op});
  });
}

void binary(BinaryOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  visit_arithmetic(a.dtype(), binary_op_name(op), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if constexpr (std::is_integral_v<T>) {
      LAMINA_CHECK(op != BinaryOp::div && op != BinaryOp::pow, binary_op_name(op),
                   ": integer tensors are not supported");
    }
    map2<T, T, T>(binary_op_name(op), out, a, b, BinaryMath{op});
  });
}

void binary_scalar(BinaryOp op, const Tensor& out, const Tensor& a, double b) {
  visit_arithmetic(a.dtype(), binary_op_name(op), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    if constexpr (std::is_integral_v<T>) {
      LAMINA_CHECK(op != BinaryOp::div && op != BinaryOp::pow, binary_op_name(op),
                   ": integer tensors are not supported");
    }
    map1<T, T>(binary_op_name(op), out, a, ScalarMath<C>{op, C(b), false});
  });
}

void scalar_binary(BinaryOp op, const Tensor& out, double a, const Tensor& b) {
  visit_arithmetic(b.dtype(), binary_op_name(op), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    if constexpr (std::is_integral_v<T>) {
      LAMINA_CHECK(op != BinaryOp::div && op != BinaryOp::pow, binary_op_name(op),
                   ": integer tensors are not supported");
    }
    // add, mul, maximum, minimum: the CPU computes f(x, scalar), as binary_scalar does.
    const bool scalar_first = op == BinaryOp::sub || op == BinaryOp::div || op == BinaryOp::pow;
    map1<T, T>(binary_op_name(op), out, b, ScalarMath<C>{op, C(a), scalar_first});
  });
}

void compare(CompareOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map2<bool, T, T>("compare", out, a, b, CompareMath{op});
  });
}

void logical(LogicalOp op, const Tensor& out, const Tensor& a, const Tensor& b) {
  if (op == LogicalOp::logical_not) return map1<bool, bool>("logical_not", out, a, NotMath{});
  map2<bool, bool, bool>(op == LogicalOp::logical_and ? "logical_and" : "logical_or", out, a, b,
                         AndOrMath{op == LogicalOp::logical_and});
}

void where(const Tensor& out, const Tensor& condition, const Tensor& a, const Tensor& b) {
  visit_dtype(a.dtype(), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map3_strided<T, bool, T, T>("where", out, condition, a, b, WhereMath{});
  });
}

void masked_fill(const Tensor& out, const Tensor& x, const Tensor& mask, double value) {
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    map2<T, T, bool>("masked_fill", out, x, mask, MaskedFillMath<C>{ops::convert<C>(value)});
  });
}

void clamp(const Tensor& out, const Tensor& x, double low, double high) {
  visit_arithmetic(x.dtype(), "clamp", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    map1<T, T>("clamp", out, x, ClampMath<C>{ops::convert<C>(low), ops::convert<C>(high)});
  });
}

void clamp_backward(const Tensor& grad_in, const Tensor& grad_out, const Tensor& x, double low, double high) {
  visit_floating(x.dtype(), "clamp_backward", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    map2<T, T, T>("clamp_backward", grad_in, grad_out, x, ClampBackwardMath{low, high});
  });
}

void copy(const Tensor& dst, const Tensor& src) {
  if (dst.numel() == 0) return;
  // Same dtype, both contiguous: a device-to-device memcpy.
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous()) {
    LAMINA_CUDA_CHECK(
        cudaMemcpyAsync(dst.raw_data(), src.raw_data(), dst.nbytes(), cudaMemcpyDeviceToDevice, stream_of(dst)));
    return;
  }
  visit_dtype(dst.dtype(), [&](auto out_tag) {
    using Out = device_t<decltype(out_tag)>;
    visit_dtype(src.dtype(), [&](auto in_tag) {
      using In = device_t<decltype(in_tag)>;
      map1<Out, In>("copy", dst, src, Identity{});
    });
  });
}

void fill(const Tensor& dst, double value) {
  if (dst.numel() == 0) return;
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = device_t<decltype(tag)>;
    const T element = host_convert<T>(value);
    unsigned char bytes[sizeof(T)];
    std::memcpy(bytes, &element, sizeof(T));
    bool uniform_bytes = true;
    for (size_t i = 1; i < sizeof(T); ++i) uniform_bytes = uniform_bytes && bytes[i] == bytes[0];
    if (uniform_bytes && dst.is_contiguous()) {  // zeros, -1, NaN patterns: a memset
      LAMINA_CUDA_CHECK(cudaMemsetAsync(dst.raw_data(), bytes[0], dst.nbytes(), stream_of(dst)));
      return;
    }
    const StridedLayout<1> layout = make_layout<1>(dst.shape(), {dst.strides()}, "fill");
    fill_kernel<T><<<grid_for(dst.numel(), dst.device().index), kThreads, 0, stream_of(dst)>>>(
        layout, dst.numel(), element, data_of<T>(dst));
    LAMINA_CUDA_CHECK_LAUNCH("fill");
  });
}

void add_scaled_inplace(const Tensor& dst, const Tensor& src, double alpha) {
  visit_arithmetic(dst.dtype(), "add_", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    using C = compute_t<T>;
    map2<T, T, T>("add_", dst, dst, src, AddScaledMath<C>{C(alpha), alpha == 1.0});
  });
}

}  // namespace lamina::ops::cuda
