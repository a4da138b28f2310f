// Op cases of the elementwise family: every UnaryOp and BinaryOp (broadcast, expanded operands,
// scalars on either side), the comparisons, logical ops, where, masked_fill and clamp.
#include <cmath>
#include <optional>

#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace elementwise_family {

using ops::BinaryOp;
using ops::CompareOp;
using ops::UnaryOp;

const Tolerance kExact{0, 0};

std::vector<DType> float_dtypes(bool with_integers) {
  std::vector<DType> dtypes(std::begin(kFloatDTypes), std::end(kFloatDTypes));
  if (with_integers)
    for (DType dtype : kIntDTypes) dtypes.push_back(dtype);
  return dtypes;
}

// The dtypes of the selection ops, which take any dtype with values.
const std::vector<DType> kSelectDTypes = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                          DType::i32, DType::i64, DType::u8};

// Small integers that every dtype holds exactly: ties for the comparisons, exact sums for where.
Tensor small_integers(const Shape& shape, DType dtype, Generator& gen, int64_t low, int64_t high) {
  if (dtype == DType::u8) return integer_values(shape, dtype, gen, 0, high - low);  // no negatives in u8
  return integer_values(shape, dtype, gen, low, high);
}

// Shape pairs that broadcast, in both directions, including empty results.
std::vector<std::pair<Shape, Shape>> broadcast_pairs(Generator& gen) {
  std::vector<std::pair<Shape, Shape>> pairs = {
      {{2, 3}, {3}}, {{4, 1, 3}, {1, 5, 1}}, {{0, 3}, {1, 3}}, {{}, {2, 2}}, {{3, 1}, {0}}, {{1}, {}}};
  for (int64_t rank = 1; rank <= 4; ++rank) {
    const Shape full_shape = random_shape(gen, rank);
    pairs.push_back({full_shape, broadcastable_to(full_shape, gen)});
    pairs.push_back({broadcastable_to(full_shape, gen), full_shape});
  }
  return pairs;
}

std::string shape_label(const Shape& shape) { return shape_str(shape); }

// ---- unary

Tensor differentiable_unary(UnaryOp op, const Tensor& x) {
  switch (op) {
    case UnaryOp::neg: return lamina::neg(x);
    case UnaryOp::exp: return lamina::exp(x);
    case UnaryOp::log: return lamina::log(x);
    case UnaryOp::sqrt: return lamina::sqrt(x);
    case UnaryOp::rsqrt: return lamina::rsqrt(x);
    case UnaryOp::abs: return lamina::abs(x);
    case UnaryOp::square: return lamina::square(x);
    case UnaryOp::reciprocal: return lamina::reciprocal(x);
    case UnaryOp::sigmoid: return lamina::sigmoid(x);
    case UnaryOp::silu: return lamina::silu(x);
    case UnaryOp::tanh: return lamina::tanh(x);
    case UnaryOp::relu: return lamina::relu(x);
    case UnaryOp::gelu: return lamina::gelu(x);
    case UnaryOp::softplus: return lamina::softplus(x);
    case UnaryOp::log_sigmoid: return lamina::log_sigmoid(x);
  }
  return Tensor();
}

OpCase unary_case(const UnaryCase& domain) {
  const UnaryOp op = domain.op;
  OpCase c;
  c.name = "ops::unary(" + name(op) + ")";
  c.dtypes = float_dtypes(domain.accepts_integers);
  c.calls = [domain](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const Shape& shape : test_shapes(gen)) calls.push_back({shape_label(shape), {unary_input(domain, shape, dtype, gen)}});
    // A stride-0 input: every row reads the same values.
    calls.push_back({"[4, 5] expanded from [1, 5]", {views::expand(unary_input(domain, {1, 5}, dtype, gen), {4, 5})}});
    if (with_large) calls.push_back({"[3, 257, 9]", {unary_input(domain, {3, 257, 9}, dtype, gen)}});
    return calls;
  };
  c.forward = [op](const OpCall&, const Tensors& in) { return Tensors{ops::unary(op, in[0])}; };
  c.oracle = [op](const OpCall&, const Tensors& in) { return Tensors{ops::reference::unary(op, in[0])}; };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.layout_independent = true;
  c.backward = [op](const OpCall&, const Tensors& in, const Tensors& out, const Tensor& grad) {
    return Tensors{ops::unary_backward(op, grad, in[0], out[0])};
  };
  c.differentiable = [op](const OpCall&, const Tensors& in) { return differentiable_unary(op, in[0]); };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  return c;
}

// ---- binary

// Where the operands come from: two tensors, or a tensor and a scalar on either side.
enum class BinaryForm { tensors, tensor_scalar, scalar_tensor };
struct BinaryArgs {
  BinaryForm form = BinaryForm::tensors;
  double scalar = 0;
};

struct BinaryDomain {
  BinaryOp op;
  double a_low, a_high, b_low, b_high;
  bool b_signed_magnitude;  // |b| in [b_low, b_high] with a random sign: keeps a / b finite
  bool accepts_integers;
  std::vector<double> scalars;  // for the scalar forms
};

Tensor binary_operand(double low, double high, bool signed_magnitude, const Shape& shape, DType dtype, Generator& gen) {
  if (!is_floating(dtype)) return integer_values(shape, dtype, gen, -20, 21);
  return signed_magnitude ? signed_magnitudes(shape, dtype, gen, low, high) : random_tensor(shape, dtype, gen, low, high);
}

Tensor differentiable_binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  switch (op) {
    case BinaryOp::add: return lamina::add(a, b);
    case BinaryOp::sub: return lamina::sub(a, b);
    case BinaryOp::mul: return lamina::mul(a, b);
    case BinaryOp::div: return lamina::div(a, b);
    case BinaryOp::pow: return lamina::pow(a, b);
    case BinaryOp::maximum: return lamina::maximum(a, b);
    case BinaryOp::minimum: return lamina::minimum(a, b);
  }
  return Tensor();
}

// autograd/functions.h has the scalar forms of add, sub, mul and div, and tensor ^ scalar; the
// other scalar calls skip gradcheck.
bool has_scalar_gradient(BinaryOp op, BinaryForm form) {
  switch (op) {
    case BinaryOp::add:
    case BinaryOp::sub:
    case BinaryOp::mul:
    case BinaryOp::div: return true;
    case BinaryOp::pow: return form == BinaryForm::tensor_scalar;
    default: return false;
  }
}

Tensor differentiable_scalar_form(BinaryOp op, BinaryForm form, const Tensor& t, double s) {
  const bool right = form == BinaryForm::tensor_scalar;
  switch (op) {
    case BinaryOp::add: return right ? t + s : s + t;
    case BinaryOp::sub: return right ? t - s : s - t;
    case BinaryOp::mul: return right ? t * s : s * t;
    case BinaryOp::div: return right ? t / s : s / t;
    case BinaryOp::pow: return lamina::pow(t, s);
    default: return Tensor();
  }
}

OpCase binary_case(const BinaryDomain& domain) {
  const BinaryOp op = domain.op;
  OpCase c;
  c.name = "ops::binary(" + name(op) + ")";
  c.dtypes = float_dtypes(domain.accepts_integers);
  c.calls = [domain](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto operands = [&](const Shape& a_shape, const Shape& b_shape) {
      return Tensors{binary_operand(domain.a_low, domain.a_high, false, a_shape, dtype, gen),
                     binary_operand(domain.b_low, domain.b_high, domain.b_signed_magnitude, b_shape, dtype, gen)};
    };
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      const Tensors in = operands(shape_a, shape_b);
      calls.push_back({shapes_label(in), in, BinaryArgs{}});
    }
    // An expanded (stride-0) operand on either side.
    const Tensors plain = operands({3, 4}, {3, 4}), columns = operands({3, 1}, {3, 1});
    calls.push_back({"[3, 4] x [3, 4] expanded from [3, 1]", {plain[0], views::expand(columns[1], {3, 4})}, BinaryArgs{}});
    calls.push_back({"[3, 4] expanded from [3, 1] x [3, 4]", {views::expand(columns[0], {3, 4}), plain[1]}, BinaryArgs{}});
    // Scalars on either side. scalar / t needs t away from 0 and scalar ^ t a positive scalar.
    const std::vector<double> scalars = is_floating(dtype) ? domain.scalars : std::vector<double>{3.0, -7.0};
    for (double s : scalars) {
      const Tensors t = operands({3, 5}, {3, 5});  // the right-hand one has b's domain
      OpCall tensor_scalar{"[3, 5] op " + number_label(s), {t[0]}, BinaryArgs{BinaryForm::tensor_scalar, s}};
      tensor_scalar.gradcheck = has_scalar_gradient(domain.op, BinaryForm::tensor_scalar);
      calls.push_back(tensor_scalar);
      const double left = domain.op == BinaryOp::pow ? std::abs(s) + 0.5 : s;
      OpCall scalar_tensor{number_label(left) + " op [3, 5]", {t[1]}, BinaryArgs{BinaryForm::scalar_tensor, left}};
      scalar_tensor.gradcheck = has_scalar_gradient(domain.op, BinaryForm::scalar_tensor);
      calls.push_back(scalar_tensor);
    }
    if (with_large) {
      const Tensors big = operands({1000, 37}, {1000, 1});
      calls.push_back({shapes_label(big), big, BinaryArgs{}});
    }
    return calls;
  };
  c.forward = [op](const OpCall& call, const Tensors& in) {
    const BinaryArgs& args = call.args<BinaryArgs>();
    switch (args.form) {
      case BinaryForm::tensors: return Tensors{ops::binary(op, in[0], in[1])};
      case BinaryForm::tensor_scalar: return Tensors{ops::binary(op, in[0], args.scalar)};
      case BinaryForm::scalar_tensor: return Tensors{ops::binary(op, args.scalar, in[0])};
    }
    return Tensors{};
  };
  c.oracle = [op](const OpCall& call, const Tensors& in) {
    const BinaryArgs& args = call.args<BinaryArgs>();
    switch (args.form) {
      case BinaryForm::tensors: return Tensors{ops::reference::binary(op, in[0], in[1])};
      case BinaryForm::tensor_scalar: return Tensors{ops::reference::binary(op, in[0], scalar64(args.scalar))};
      case BinaryForm::scalar_tensor: return Tensors{ops::reference::binary(op, scalar64(args.scalar), in[0])};
    }
    return Tensors{};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.layout_independent = true;
  c.backward = [op](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
    if (call.args<BinaryArgs>().form != BinaryForm::tensors) return Tensors{};
    const auto [grad_a, grad_b] = ops::binary_backward(op, grad, in[0], in[1], out[0]);
    return Tensors{grad_a, grad_b};
  };
  // In 16-bit dtypes each step of a rule is rounded (pow's b a^(b-1) g takes three), and every
  // product before the broadcast sum: the error grows with the number of terms summed into one
  // gradient element.
  c.backward_tolerance = [](DType dtype, const OpCall& call, size_t index) {
    Tolerance tol = tolerance_for(dtype);
    if (dtype == DType::bf16 || dtype == DType::f16) {
      tol = scaled(tol, 2);
      const int64_t out_numel = shape_numel(broadcast_shapes(call.inputs[0].shape(), call.inputs[1].shape(), "test"));
      tol.atol *= double(std::max<int64_t>(1, out_numel / std::max<int64_t>(1, call.inputs[index].numel())));
    }
    return tol;
  };
  c.differentiable = [op](const OpCall& call, const Tensors& in) {
    const BinaryArgs& args = call.args<BinaryArgs>();
    if (args.form == BinaryForm::tensors) return differentiable_binary(op, in[0], in[1]);
    return differentiable_scalar_form(op, args.form, in[0], args.scalar);
  };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  // The reductions of the broadcast adjoint add in another order.
  c.cuda_backward_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 8); };
  return c;
}


// ---- comparisons and logic

std::string compare_name(CompareOp op) {
  const char* names[] = {"eq", "ne", "lt", "le", "gt", "ge"};
  return names[int(op)];
}

// Expected compare(op, a, b): the sign of a - b, exact in f64 for the small values used here.
Tensor expected_compare(CompareOp op, const Tensor& a, const Tensor& b) {
  return map_values(ops::reference::binary(BinaryOp::sub, a, b), [op](double d) -> double {
    switch (op) {
      case CompareOp::eq: return d == 0;
      case CompareOp::ne: return d != 0;
      case CompareOp::lt: return d < 0;
      case CompareOp::le: return d <= 0;
      case CompareOp::gt: return d > 0;
      case CompareOp::ge: return d >= 0;
    }
    return -1;
  });
}

// A comparison with a tensor or (when `scalar` is set) a scalar on the right.
struct CompareArgs {
  std::optional<double> scalar;
};

OpCase compare_case(CompareOp op) {
  OpCase c;
  c.name = "ops::compare(" + compare_name(op) + ")";
  c.dtypes = kSelectDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      const Tensors in{small_integers(shape_a, dtype, gen, -2, 3), small_integers(shape_b, dtype, gen, -2, 3)};
      calls.push_back({shapes_label(in), in, CompareArgs{}});
    }
    const Tensor t = small_integers({3, 4}, dtype, gen, -2, 3);
    for (double scalar : {1.0, -0.5, 2.5, 1e10}) calls.push_back({"[3, 4] op " + number_label(scalar), {t}, CompareArgs{scalar}});
    return calls;
  };
  c.forward = [op](const OpCall& call, const Tensors& in) {
    const auto& scalar = call.args<CompareArgs>().scalar;
    return Tensors{scalar ? ops::compare(op, in[0], *scalar) : ops::compare(op, in[0], in[1])};
  };
  c.oracle = [op](const OpCall& call, const Tensors& in) {
    const auto& scalar = call.args<CompareArgs>().scalar;
    return Tensors{expected_compare(op, in[0], scalar ? scalar64(*scalar) : in[1])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.output_dtypes = [](DType) { return std::vector<DType>{DType::boolean}; };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

enum class LogicalOp { logical_not, logical_and, logical_or };

OpCase logical_case(LogicalOp op) {
  OpCase c;
  const char* names[] = {"ops::logical_not", "ops::logical_and", "ops::logical_or"};
  c.name = names[int(op)];
  c.dtypes = {DType::boolean};
  c.calls = [op](DType, Generator& gen, bool) {
    std::vector<OpCall> calls;
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      Tensors in{integer_values(shape_a, DType::boolean, gen, 0, 2)};
      if (op != LogicalOp::logical_not) in.push_back(integer_values(shape_b, DType::boolean, gen, 0, 2));
      calls.push_back({shapes_label(in), in});
    }
    return calls;
  };
  c.forward = [op](const OpCall&, const Tensors& in) {
    switch (op) {
      case LogicalOp::logical_not: return Tensors{ops::logical_not(in[0])};
      case LogicalOp::logical_and: return Tensors{ops::logical_and(in[0], in[1])};
      case LogicalOp::logical_or: return Tensors{ops::logical_or(in[0], in[1])};
    }
    return Tensors{};
  };
  // On 0/1 values "not" is 1 - x, "and" the product and "or" the maximum.
  c.oracle = [op](const OpCall&, const Tensors& in) {
    switch (op) {
      case LogicalOp::logical_not: return Tensors{map_values(in[0], [](double v) { return 1 - v; })};
      case LogicalOp::logical_and: return Tensors{ops::reference::binary(BinaryOp::mul, in[0], in[1])};
      case LogicalOp::logical_or: return Tensors{ops::reference::binary(BinaryOp::maximum, in[0], in[1])};
    }
    return Tensors{};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

// ---- selection

// c a + (1 - c) b on a 0/1 condition, exact for the small integer values used here.
Tensor expected_where(const Tensor& condition, const Tensor& a, const Tensor& b) {
  const Tensor not_condition = ops::reference::binary(BinaryOp::sub, scalar64(1), condition);
  return ops::reference::binary(BinaryOp::add, ops::reference::binary(BinaryOp::mul, condition, a),
                                ops::reference::binary(BinaryOp::mul, not_condition, b));
}

OpCase where_case() {
  OpCase c;
  c.name = "ops::where";
  c.dtypes = kSelectDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      const Shape shape = broadcast_shapes(shape_a, shape_b, "test");
      const Tensors in{integer_values(broadcastable_to(shape, gen), DType::boolean, gen, 0, 2),
                       small_integers(shape_a, dtype, gen, -50, 51), small_integers(shape_b, dtype, gen, -50, 51)};
      calls.push_back({shapes_label(in), in});
    }
    if (with_large) {
      const Tensors big{integer_values({301, 257}, DType::boolean, gen, 0, 2),
                        small_integers({301, 257}, dtype, gen, -50, 51), small_integers({257}, dtype, gen, -50, 51)};
      calls.push_back({shapes_label(big), big});
    }
    return calls;
  };
  c.forward = [](const OpCall&, const Tensors& in) { return Tensors{ops::where(in[0], in[1], in[2])}; };
  c.oracle = [](const OpCall&, const Tensors& in) { return Tensors{expected_where(in[0], in[1], in[2])}; };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.grad_inputs = {1, 2};
  c.differentiable = [](const OpCall&, const Tensors& in) { return lamina::where(in[0], in[1], in[2]); };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

struct FillArgs {
  double value;
};

OpCase masked_fill_case() {
  OpCase c;
  c.name = "ops::masked_fill";
  c.dtypes = kSelectDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    const double value = is_floating(dtype) ? -2.5 : 7.0;
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      const Shape shape = broadcast_shapes(shape_a, shape_b, "test");
      const Tensors in{small_integers(shape, dtype, gen, -50, 51),
                       integer_values(broadcastable_to(shape, gen), DType::boolean, gen, 0, 2)};
      calls.push_back({shapes_label(in), in, FillArgs{value}});
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::masked_fill(in[0], in[1], call.args<FillArgs>().value)};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{expected_where(in[1], scalar64(call.args<FillArgs>().value), in[0])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.grad_inputs = {0};
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    return lamina::masked_fill(in[0], in[1], call.args<FillArgs>().value);
  };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

struct ClampArgs {
  std::optional<double> low, high;
};

std::string bound_label(const std::optional<double>& bound) { return bound ? number_label(*bound) : "none"; }

OpCase clamp_case() {
  OpCase c;
  c.name = "ops::clamp";
  c.dtypes = float_dtypes(true);
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    const bool floating = is_floating(dtype);
    const double scale = floating ? 1.0 : 4.0;  // integer bounds -2, 1, -1, 2
    const std::pair<std::optional<double>, std::optional<double>> bounds[] = {
        {-0.5, 0.5}, {std::nullopt, 0.25}, {-0.25, std::nullopt}, {std::nullopt, std::nullopt}, {0.5, 0.5}};
    for (const auto& [low_unit, high_unit] : bounds) {
      ClampArgs args;
      if (low_unit) args.low = *low_unit * scale;
      if (high_unit) args.high = *high_unit * scale;
      for (const Shape& shape : {Shape{4, 5}, Shape{}, Shape{0, 3}, Shape{2, 3, 4}}) {
        const Tensor x = floating ? random_tensor(shape, dtype, gen) : integer_values(shape, dtype, gen, -5, 6);
        calls.push_back({shape_label(shape) + " low " + bound_label(args.low) + " high " + bound_label(args.high), {x}, args});
      }
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ClampArgs& args = call.args<ClampArgs>();
    return Tensors{ops::clamp(in[0], args.low, args.high)};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    const ClampArgs& args = call.args<ClampArgs>();
    Tensor expected = in[0];
    if (args.low) expected = ops::reference::binary(BinaryOp::maximum, expected, scalar64(*args.low));
    if (args.high) expected = ops::reference::binary(BinaryOp::minimum, expected, scalar64(*args.high));
    return Tensors{ops::reference::binary(BinaryOp::add, expected, scalar64(0))};  // f64 even without bounds
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors&, const Tensor& grad) {
    const ClampArgs& args = call.args<ClampArgs>();
    return Tensors{ops::clamp_backward(grad, in[0], args.low, args.high)};
  };
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    const ClampArgs& args = call.args<ClampArgs>();
    return lamina::clamp(in[0], args.low, args.high);
  };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.cuda_backward_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

}  // namespace elementwise_family

std::vector<OpCase> elementwise_cases() {
  using namespace elementwise_family;
  std::vector<OpCase> cases;
  for (const UnaryCase& domain : kUnaryCases) cases.push_back(unary_case(domain));
  const BinaryDomain binary_domains[] = {
      {BinaryOp::add, -3, 3, -3, 3, false, true, {0.75}},
      {BinaryOp::sub, -3, 3, -3, 3, false, true, {1.5}},
      {BinaryOp::mul, -3, 3, -3, 3, false, true, {-2.5}},
      {BinaryOp::div, -3, 3, 0.25, 3, true, false, {-1.25}},
      {BinaryOp::pow, 0.1, 3, -2, 2, false, false, {2.0, 0.5, -1.5}},
      {BinaryOp::maximum, -3, 3, -3, 3, false, true, {0.25}},
      {BinaryOp::minimum, -3, 3, -3, 3, false, true, {0.25}},
  };
  for (const BinaryDomain& domain : binary_domains) cases.push_back(binary_case(domain));
  for (CompareOp op : {CompareOp::eq, CompareOp::ne, CompareOp::lt, CompareOp::le, CompareOp::gt, CompareOp::ge})
    cases.push_back(compare_case(op));
  for (LogicalOp op : {LogicalOp::logical_not, LogicalOp::logical_and, LogicalOp::logical_or}) cases.push_back(logical_case(op));
  cases.push_back(where_case());
  cases.push_back(masked_fill_case());
  cases.push_back(clamp_case());
  return cases;
}

}  // namespace lamina::testing::op_cases
