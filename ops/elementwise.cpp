// Elementwise ops: checks, broadcasting, output allocation; the CPU kernels are split by op
// family (ops/cpu/unary.cpp, binary.cpp, select.cpp, ...), the CUDA ones are ops/cuda/elementwise.cu.
#include <cmath>
#include <limits>

#include "ops/checks.h"
#include "ops/cpu/kernels.h"
#include "ops/cuda/kernels.h"
#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::ops {
namespace {

bool unary_accepts_integers(UnaryOp op) {
  return op == UnaryOp::neg || op == UnaryOp::abs || op == UnaryOp::square;
}

bool binary_accepts_integers(BinaryOp op) { return op != BinaryOp::div && op != BinaryOp::pow; }

void check_binary_dtype(BinaryOp op, const Tensor& t) {
  if (binary_accepts_integers(op)) {
    LAMINA_CHECK(is_floating(t.dtype()) || t.dtype() == DType::i32 || t.dtype() == DType::i64,
                 binary_op_name(op), ": expected an arithmetic dtype, got ", dtype_name(t.dtype()));
  } else {
    check_floating(binary_op_name(op), "input", t);
  }
}

}  // namespace

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::abs: return "abs";
    case UnaryOp::square: return "square";
    case UnaryOp::reciprocal: return "reciprocal";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::silu: return "silu";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu: return "gelu";
    case UnaryOp::softplus: return "softplus";
    case UnaryOp::log_sigmoid: return "log_sigmoid";
  }
  return "unknown-unary-op";
}

const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::pow: return "pow";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::minimum: return "minimum";
  }
  return "unknown-binary-op";
}

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = unary_op_name(op);
  const Device device = check_device(name, {{"x", &x}});
  if (unary_accepts_integers(op)) {
    LAMINA_CHECK(is_floating(x.dtype()) || x.dtype() == DType::i32 || x.dtype() == DType::i64, name,
                 ": expected an arithmetic dtype, got ", dtype_name(x.dtype()));
  } else {
    check_floating(name, "x", x);
  }
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, unary(op, out, x));
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& grad_out, const Tensor& x, const Tensor& out) {
  const std::string name = str_cat(unary_op_name(op), "_backward");
  check_device(name.c_str(), {{"grad_out", &grad_out}, {"x", &x}, {"out", &out}});
  check_floating(name.c_str(), "x", x);
  check_same_dtype(name.c_str(), {{"grad_out", &grad_out}, {"x", &x}, {"out", &out}});
  check_shape(name.c_str(), "grad_out", grad_out, x.shape());
  check_shape(name.c_str(), "out", out, x.shape());
  Tensor grad_in = Tensor::empty(x.shape(), x.dtype(), x.device());
  LAMINA_DISPATCH(grad_in.device(), unary_backward(op, grad_in, grad_out, x, out));
  return grad_in;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = binary_op_name(op);
  const Device device = check_device(name, {{"a", &a}, {"b", &b}});
  check_same_dtype(name, {{"a", &a}, {"b", &b}});
  check_binary_dtype(op, a);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), device);
  LAMINA_DISPATCH(device, binary(op, out, views::broadcast_to(a, shape, name), views::broadcast_to(b, shape, name)));
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, double b) {
  const char* name = binary_op_name(op);
  const Device device = check_device(name, {{"a", &a}});
  check_binary_dtype(op, a);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), device);
  LAMINA_DISPATCH(device, binary_scalar(op, out, a, b));
  return out;
}

Tensor binary(BinaryOp op, double a, const Tensor& b) {
  const char* name = binary_op_name(op);
  const Device device = check_device(name, {{"b", &b}});
  check_binary_dtype(op, b);
  Tensor out = Tensor::empty(b.shape(), b.dtype(), device);
  LAMINA_DISPATCH(device, scalar_binary(op, out, a, b));
  return out;
}

// out = op(a, b). The rules, before summing broadcast dims away:
//   add: (g, g)   sub: (g, -g)   mul: (g b, g a)   div: (g / b, -g out / b)
//   pow: (g b a^(b-1), g out ln a)
//   maximum/minimum: g to the winning side, split in half on ties
std::pair<Tensor, Tensor> binary_backward(BinaryOp op, const Tensor& grad_out, const Tensor& a, const Tensor& b,
                                          const Tensor& out) {
  Tensor grad_a, grad_b;
  switch (op) {
    case BinaryOp::add:
      grad_a = grad_out;
      grad_b = grad_out;
      break;
    case BinaryOp::sub:
      grad_a = grad_out;
      grad_b = neg(grad_out);
      break;
    case BinaryOp::mul:
      grad_a = mul(grad_out, b);
      grad_b = mul(grad_out, a);
      break;
    case BinaryOp::div:
      grad_a = div(grad_out, b);
      grad_b = neg(div(mul(grad_out, out), b));
      break;
    case BinaryOp::pow:
      grad_a = mul(grad_out, mul(b, binary(BinaryOp::pow, a, binary(BinaryOp::sub, b, 1.0))));
      grad_b = mul(grad_out, mul(out, log(a)));
      break;
    case BinaryOp::maximum:
    case BinaryOp::minimum: {
      const CompareOp wins = op == BinaryOp::maximum ? CompareOp::gt : CompareOp::lt;
      const Tensor a_share = add(cast(compare(wins, a, b), a.dtype()),
                                 binary(BinaryOp::mul, cast(compare(CompareOp::eq, a, b), a.dtype()), 0.5));
      grad_a = mul(grad_out, a_share);
      grad_b = mul(grad_out, binary(BinaryOp::sub, 1.0, a_share));
      break;
    }
  }
  return {sum_to(grad_a, a.shape()), sum_to(grad_b, b.shape())};
}

void add_(const Tensor& dst, const Tensor& src, double alpha) {
  check_device("add_", {{"dst", &dst}, {"src", &src}});
  check_same_dtype("add_", {{"dst", &dst}, {"src", &src}});
  check_writable("add_", "dst", dst);
  LAMINA_DISPATCH(dst.device(), add_scaled_inplace(dst, views::broadcast_to(src, dst.shape(), "add_"), alpha));
}

void mul_(const Tensor& dst, double factor) {
  check_device("mul_", {{"dst", &dst}});
  check_writable("mul_", "dst", dst);
  LAMINA_DISPATCH(dst.device(), binary_scalar(BinaryOp::mul, dst, dst, factor));
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  const Device device = check_device("compare", {{"a", &a}, {"b", &b}});
  check_same_dtype("compare", {{"a", &a}, {"b", &b}});
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), "compare");
  Tensor out = Tensor::empty(shape, DType::boolean, device);
  LAMINA_DISPATCH(device,
                  compare(op, out, views::broadcast_to(a, shape, "compare"), views::broadcast_to(b, shape, "compare")));
  return out;
}

Tensor compare(CompareOp op, const Tensor& a, double b) {
  check_defined(a, "compare", "a");
  // An integer dtype cannot hold 2.5 (or 1e12 in i32): converting b would change the answer
  // (x < 2.5 is not x < 2), so such comparisons run in f64, exact for these integers.
  const bool b_fits = is_floating(a.dtype()) || full({}, b, a.dtype()).item<double>() == b;  // checked on the CPU
  if (!b_fits) return compare(op, cast(a, DType::f64), full({}, b, DType::f64, a.device()));
  return compare(op, a, full({}, b, a.dtype(), a.device()));
}

Tensor logical_not(const Tensor& x) {
  const Device device = check_device("logical_not", {{"x", &x}});
  check_dtype("logical_not", "x", x, DType::boolean);
  Tensor out = Tensor::empty(x.shape(), DType::boolean, device);
  LAMINA_DISPATCH(device, logical(LogicalOp::logical_not, out, x, x));
  return out;
}

namespace {
Tensor logical_binary(LogicalOp op, const char* name, const Tensor& a, const Tensor& b) {
  const Device device = check_device(name, {{"a", &a}, {"b", &b}});
  check_dtype(name, "a", a, DType::boolean);
  check_dtype(name, "b", b, DType::boolean);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, DType::boolean, device);
  LAMINA_DISPATCH(device, logical(op, out, views::broadcast_to(a, shape, name), views::broadcast_to(b, shape, name)));
  return out;
}
}  // namespace

Tensor logical_and(const Tensor& a, const Tensor& b) {
  return logical_binary(LogicalOp::logical_and, "logical_and", a, b);
}

Tensor logical_or(const Tensor& a, const Tensor& b) {
  return logical_binary(LogicalOp::logical_or, "logical_or", a, b);
}

Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b) {
  const Device device = check_device("where", {{"condition", &condition}, {"a", &a}, {"b", &b}});
  check_dtype("where", "condition", condition, DType::boolean);
  check_same_dtype("where", {{"a", &a}, {"b", &b}});
  const Shape shape = broadcast_shapes(broadcast_shapes(condition.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = Tensor::empty(shape, a.dtype(), device);
  LAMINA_DISPATCH(device, where(out, views::broadcast_to(condition, shape, "where"),
                                views::broadcast_to(a, shape, "where"), views::broadcast_to(b, shape, "where")));
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  const Device device = check_device("masked_fill", {{"x", &x}, {"mask", &mask}});
  check_dtype("masked_fill", "mask", mask, DType::boolean);
  LAMINA_CHECK(broadcast_shapes(x.shape(), mask.shape(), "masked_fill") == x.shape(), "masked_fill: mask ",
               mask.shape(), " does not broadcast to x ", x.shape());
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, masked_fill(out, x, views::broadcast_to(mask, x.shape(), "masked_fill"), value));
  return out;
}

Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high) {
  const Device device = check_device("clamp", {{"x", &x}});
  LAMINA_CHECK(!low || !high || *low <= *high, "clamp: low ", *low, " is above high ", *high);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  LAMINA_DISPATCH(device, clamp(out, x, low.value_or(-std::numeric_limits<double>::infinity()),
                                high.value_or(std::numeric_limits<double>::infinity())));
  return out;
}

Tensor clamp_backward(const Tensor& grad_out, const Tensor& x, std::optional<double> low,
                      std::optional<double> high) {
  check_device("clamp_backward", {{"grad_out", &grad_out}, {"x", &x}});
  check_same_dtype("clamp_backward", {{"grad_out", &grad_out}, {"x", &x}});
  check_shape("clamp_backward", "grad_out", grad_out, x.shape());
  Tensor grad_in = Tensor::empty(x.shape(), x.dtype(), x.device());
  LAMINA_DISPATCH(grad_in.device(),
                  clamp_backward(grad_in, grad_out, x, low.value_or(-std::numeric_limits<double>::infinity()),
                                 high.value_or(std::numeric_limits<double>::infinity())));
  return grad_in;
}

}  // namespace lamina::ops
