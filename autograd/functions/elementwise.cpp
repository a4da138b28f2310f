// Differentiable elementwise functions. Rules: ops::unary_backward / ops::binary_backward,
// plus the scalar forms written out here.
#include "autograd/functions/common.h"

namespace lamina {
namespace {

using autograd::Grads;
using autograd::saved;

Tensor unary_function(ops::UnaryOp op, const Tensor& x) {
  const profiler::Scope scope("forward:", ops::unary_op_name(op));
  Tensor out = ops::unary(op, x);
  autograd::record(ops::unary_op_name(op), {&out}, {x}, [op, x = saved(x), y = saved(out)](const Grads& g) {
    return Grads{ops::unary_backward(op, g[0], x, y)};
  });
  return out;
}

// Each op keeps for backward only what its rule reads: add and sub their operands' shapes (to
// sum a broadcast gradient back), the others their operands, and div and pow their output too.
// A saved tensor lives until backward: a sum that kept both addends and the result held three
// activations alive for nothing (on every residual and every LoRA branch).
Tensor binary_function(ops::BinaryOp op, const Tensor& a, const Tensor& b) {
  const profiler::Scope scope("forward:", ops::binary_op_name(op));
  Tensor out = ops::binary(op, a, b);
  if (op == ops::BinaryOp::add || op == ops::BinaryOp::sub) {
    autograd::record(ops::binary_op_name(op), {&out}, {a, b},
                     [op, a_shape = a.shape(), b_shape = b.shape()](const Grads& g) {
                       const Tensor grad_b = op == ops::BinaryOp::sub ? ops::neg(g[0]) : g[0];
                       return Grads{ops::sum_to(g[0], a_shape), ops::sum_to(grad_b, b_shape)};
                     });
    return out;
  }
  const bool reads_output = op == ops::BinaryOp::div || op == ops::BinaryOp::pow;
  autograd::record(ops::binary_op_name(op), {&out}, {a, b},
                   [op, a = saved(a), b = saved(b), y = reads_output ? saved(out) : Tensor()](const Grads& g) {
                     auto [grad_a, grad_b] = ops::binary_backward(op, g[0], a, b, y);
                     return Grads{grad_a, grad_b};
                   });
  return out;
}

// What a scalar op's backward reads besides the incoming gradient. Saving only that matters:
// a saved tensor lives until backward, and `x * scale` on every LoRA branch once kept two
// activations per projection alive for nothing (a third of a LoRA step's memory).
enum class Saves { nothing, input, input_and_output };

// out = forward() = op(a, s) for a scalar s; `rule` maps (g, a, out) to the gradient of a, where
// a and out are undefined unless `saves` keeps them.
template <typename Forward, typename Rule>
Tensor scalar_function(const char* name, Forward forward, const Tensor& a, Saves saves, Rule rule) {
  const profiler::Scope scope("forward:", name);
  Tensor out = forward();
  const Tensor kept_input = saves == Saves::nothing ? Tensor() : saved(a);
  const Tensor kept_output = saves == Saves::input_and_output ? saved(out) : Tensor();
  autograd::record(name, {&out}, {a}, [rule, a = kept_input, y = kept_output](const Grads& g) {
    return Grads{rule(g[0], a, y)};
  });
  return out;
}

}  // namespace

Tensor neg(const Tensor& x) { return unary_function(ops::UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return unary_function(ops::UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary_function(ops::UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return unary_function(ops::UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary_function(ops::UnaryOp::rsqrt, x); }
Tensor abs(const Tensor& x) { return unary_function(ops::UnaryOp::abs, x); }
Tensor square(const Tensor& x) { return unary_function(ops::UnaryOp::square, x); }
Tensor reciprocal(const Tensor& x) { return unary_function(ops::UnaryOp::reciprocal, x); }
Tensor sigmoid(const Tensor& x) { return unary_function(ops::UnaryOp::sigmoid, x); }
Tensor silu(const Tensor& x) { return unary_function(ops::UnaryOp::silu, x); }
Tensor tanh(const Tensor& x) { return unary_function(ops::UnaryOp::tanh, x); }
Tensor relu(const Tensor& x) { return unary_function(ops::UnaryOp::relu, x); }
Tensor gelu(const Tensor& x) { return unary_function(ops::UnaryOp::gelu, x); }
Tensor softplus(const Tensor& x) { return unary_function(ops::UnaryOp::softplus, x); }
Tensor log_sigmoid(const Tensor& x) { return unary_function(ops::UnaryOp::log_sigmoid, x); }

Tensor add(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::div, a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::pow, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary_function(ops::BinaryOp::minimum, a, b); }

Tensor add(const Tensor& a, double b) {
  return scalar_function("add_scalar", [&] { return ops::binary(ops::BinaryOp::add, a, b); }, a, Saves::nothing,
                         [](const Tensor& g, const Tensor&, const Tensor&) { return g; });
}

Tensor sub(const Tensor& a, double b) { return add(a, -b); }

Tensor sub(double a, const Tensor& b) {
  return scalar_function("rsub_scalar", [&] { return ops::binary(ops::BinaryOp::sub, a, b); }, b, Saves::nothing,
                         [](const Tensor& g, const Tensor&, const Tensor&) { return ops::neg(g); });
}

Tensor mul(const Tensor& a, double b) {
  return scalar_function("mul_scalar", [&] { return ops::binary(ops::BinaryOp::mul, a, b); }, a, Saves::nothing,
                         [b](const Tensor& g, const Tensor&, const Tensor&) { return ops::binary(ops::BinaryOp::mul, g, b); });
}

Tensor div(const Tensor& a, double b) {
  return scalar_function("div_scalar", [&] { return ops::binary(ops::BinaryOp::div, a, b); }, a, Saves::nothing,
                         [b](const Tensor& g, const Tensor&, const Tensor&) { return ops::binary(ops::BinaryOp::div, g, b); });
}

// d(s / b)/db = -s / b^2 = -out / b
Tensor div(double a, const Tensor& b) {
  return scalar_function("rdiv_scalar", [&] { return ops::binary(ops::BinaryOp::div, a, b); }, b,
                         Saves::input_and_output,
                         [](const Tensor& g, const Tensor& x, const Tensor& y) {
                           return ops::neg(ops::div(ops::mul(g, y), x));
                         });
}

// d(a^e)/da = e a^(e-1)
Tensor pow(const Tensor& a, double exponent) {
  return scalar_function("pow_scalar", [&] { return ops::binary(ops::BinaryOp::pow, a, exponent); }, a,
                         Saves::input,
                         [exponent](const Tensor& g, const Tensor& x, const Tensor&) {
                           const Tensor slope = ops::binary(ops::BinaryOp::mul,
                                                            ops::binary(ops::BinaryOp::pow, x, exponent - 1.0), exponent);
                           return ops::mul(g, slope);
                         });
}

Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b) {
  const profiler::Scope scope("forward:", "where");
  Tensor out = ops::where(condition, a, b);
  autograd::record("where", {&out}, {a, b},
                   [condition = saved(condition), a_shape = a.shape(), b_shape = b.shape()](const Grads& g) {
                     const Tensor zero = zeros({}, g[0].dtype(), g[0].device());
                     return Grads{ops::sum_to(ops::where(condition, g[0], zero), a_shape),
                                  ops::sum_to(ops::where(condition, zero, g[0]), b_shape)};
                   });
  return out;
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  const profiler::Scope scope("forward:", "masked_fill");
  Tensor out = ops::masked_fill(x, mask, value);
  autograd::record("masked_fill", {&out}, {x},
                   [mask = saved(mask)](const Grads& g) { return Grads{ops::masked_fill(g[0], mask, 0.0)}; });
  return out;
}

Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high) {
  const profiler::Scope scope("forward:", "clamp");
  Tensor out = ops::clamp(x, low, high);
  autograd::record("clamp", {&out}, {x}, [x = saved(x), low, high](const Grads& g) {
    return Grads{ops::clamp_backward(g[0], x, low, high)};
  });
  return out;
}

}  // namespace lamina
