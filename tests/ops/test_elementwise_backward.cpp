// Elementwise backwards against central finite differences of the f64 references.
#include <cmath>

#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;
using ops::UnaryOp;

namespace {

// Step of the central differences: truncation error ~h^2 and rounding error ~1e-16/h both
// stay below 1e-9 for the smooth ops and input ranges used here.
constexpr double kStep = 1e-5;
const Tolerance kFiniteDifferenceF64{1e-8, 1e-7};

// f64 results are compared with the finite difference; every other dtype with its own
// tolerance, which is far wider than the finite-difference error.
Tolerance gradient_tolerance(DType dtype) {
  return dtype == DType::f64 ? kFiniteDifferenceF64 : tolerance_for(dtype);
}

struct UnaryDomain {
  UnaryOp op;
  double low, high;
  bool signed_magnitude;  // |x| in [low, high] with a random sign: away from kinks at 0
};
const UnaryDomain kUnaryDomains[] = {
    {UnaryOp::neg, -3, 3, false},      {UnaryOp::exp, -3, 3, false},     {UnaryOp::log, 0.1, 4, false},
    {UnaryOp::sqrt, 0.1, 4, false},    {UnaryOp::rsqrt, 0.2, 4, false},  {UnaryOp::abs, 0.05, 3, true},
    {UnaryOp::square, -3, 3, false},   {UnaryOp::reciprocal, 0.3, 3, true}, {UnaryOp::sigmoid, -6, 6, false},
    {UnaryOp::silu, -6, 6, false},     {UnaryOp::tanh, -3, 3, false},    {UnaryOp::relu, 0.05, 3, true},
    {UnaryOp::gelu, -4, 4, false},     {UnaryOp::softplus, -8, 8, false}, {UnaryOp::log_sigmoid, -8, 8, false},
};

Tensor shifted(const Tensor& t, double by) {
  return map_values(t, [by](double v) { return v + by; });
}

// d op(x) / dx at every element of x, by central differences of the f64 reference.
Tensor unary_derivative(UnaryOp op, const Tensor& x) {
  const Tensor up = ops::reference::unary(op, shifted(x, kStep));
  const Tensor down = ops::reference::unary(op, shifted(x, -kStep));
  return ops::reference::binary(BinaryOp::div, ops::reference::binary(BinaryOp::sub, up, down), scalar64(2 * kStep));
}

struct BinaryDomain {
  BinaryOp op;
  double a_low, a_high, b_low, b_high;
  bool b_signed_magnitude;
};
const BinaryDomain kBinaryDomains[] = {
    {BinaryOp::add, -1, 1, -1, 1, false},       {BinaryOp::sub, -1, 1, -1, 1, false},
    {BinaryOp::mul, -1, 1, -1, 1, false},       {BinaryOp::div, -1, 1, 0.5, 1.5, true},
    {BinaryOp::pow, 0.3, 2, -1.5, 1.5, false},  {BinaryOp::maximum, -1, 1, -1, 1, false},
    {BinaryOp::minimum, -1, 1, -1, 1, false},
};

// Gradients of sum(grad_out * op(a, b)) with respect to a and b, by central differences of
// the f64 reference on a and b broadcast to the output shape, then summed back.
std::pair<Tensor, Tensor> binary_gradients(BinaryOp op, const Tensor& grad_out, const Tensor& a, const Tensor& b) {
  const Shape shape = grad_out.shape();
  const Tensor zero = Tensor::from_vector(std::vector<double>(size_t(shape_numel(shape)), 0.0), shape, DType::f64);
  const Tensor a_full = ops::reference::binary(BinaryOp::add, a, zero);
  const Tensor b_full = ops::reference::binary(BinaryOp::add, b, zero);
  auto partial = [&](const Tensor& up, const Tensor& down) {
    const Tensor difference = ops::reference::binary(BinaryOp::sub, up, down);
    return ops::reference::binary(BinaryOp::mul, grad_out,
                                  ops::reference::binary(BinaryOp::div, difference, scalar64(2 * kStep)));
  };
  const Tensor grad_a = partial(ops::reference::binary(op, shifted(a_full, kStep), b_full),
                                ops::reference::binary(op, shifted(a_full, -kStep), b_full));
  const Tensor grad_b = partial(ops::reference::binary(op, a_full, shifted(b_full, kStep)),
                                ops::reference::binary(op, a_full, shifted(b_full, -kStep)));
  return {reference_sum_to(grad_a, a.shape()), reference_sum_to(grad_b, b.shape())};
}

}  // namespace

TEST_CASE("unary_backward matches finite differences of the f64 reference") {
  Generator gen(51);
  for (const UnaryDomain& d : kUnaryDomains) {
    for (DType dtype : kFloatDTypes) {
      for (const Shape& shape : {Shape{}, Shape{0, 3}, Shape{1, 6}, random_shape(gen, 2), random_shape(gen, 3)}) {
        const Tensor x = d.signed_magnitude ? signed_magnitudes(shape, dtype, gen, d.low, d.high)
                                            : random_tensor(shape, dtype, gen, d.low, d.high);
        const Tensor grad_out = random_tensor(shape, dtype, gen);
        const Tensor out = ops::unary(d.op, x);
        const Tensor expected = ops::reference::binary(BinaryOp::mul, grad_out, unary_derivative(d.op, x));
        INFO(name(d.op) << " " << name(dtype) << " " << shape);
        const Tensor grad_in = ops::unary_backward(d.op, noncontiguous(grad_out), transposed_layout(x), out);
        CHECK(grad_in.dtype() == dtype);
        CHECK_CLOSE(grad_in, expected, gradient_tolerance(dtype));
      }
    }
  }
}

TEST_CASE("relu and abs backward: the kink at 0 has gradient 0") {
  const Tensor x = Tensor::from_vector(std::vector<double>{-1, 0, 2}, {3});
  const Tensor g = Tensor::from_vector(std::vector<double>{5, 5, 5}, {3});
  CHECK(ops::unary_backward(UnaryOp::relu, g, x, ops::unary(UnaryOp::relu, x)).to_vector<double>() ==
        std::vector<double>{0, 0, 5});
  CHECK(ops::unary_backward(UnaryOp::abs, g, x, ops::unary(UnaryOp::abs, x)).to_vector<double>() ==
        std::vector<double>{-5, 0, 5});
}

TEST_CASE("binary_backward matches finite differences and sums broadcast dims") {
  Generator gen(52);
  const std::pair<Shape, Shape> shape_pairs[] = {
      {{3, 4}, {3, 4}}, {{2, 3}, {3}}, {{4, 1, 3}, {1, 5, 1}}, {{}, {2, 3}}, {{5, 1}, {1}}, {{0, 3}, {1, 3}},
      {{2, 3, 4}, {2, 1, 4}}};
  for (const BinaryDomain& d : kBinaryDomains) {
    for (DType dtype : kFloatDTypes) {
      for (const auto& [shape_a, shape_b] : shape_pairs) {
        const Tensor a = random_tensor(shape_a, dtype, gen, d.a_low, d.a_high);
        const Tensor b = d.b_signed_magnitude ? signed_magnitudes(shape_b, dtype, gen, d.b_low, d.b_high)
                                              : random_tensor(shape_b, dtype, gen, d.b_low, d.b_high);
        const Tensor out = ops::binary(d.op, a, b);
        const Tensor grad_out = random_tensor(out.shape(), dtype, gen);
        const auto [expected_a, expected_b] = binary_gradients(d.op, grad_out, a, b);
        const auto [grad_a, grad_b] = ops::binary_backward(d.op, grad_out, noncontiguous(a), transposed_layout(b), out);
        // In 16-bit dtypes every product is rounded before the broadcast sum: the error grows
        // with the number of summed terms, each at most ~2 in magnitude here.
        Tolerance tol_a = gradient_tolerance(dtype), tol_b = tol_a;
        if (dtype == DType::bf16 || dtype == DType::f16) {
          tol_a.atol *= double(std::max<int64_t>(1, out.numel() / std::max<int64_t>(1, a.numel())));
          tol_b.atol *= double(std::max<int64_t>(1, out.numel() / std::max<int64_t>(1, b.numel())));
        }
        INFO(name(d.op) << " " << name(dtype) << " " << shape_a << " x " << shape_b);
        CHECK(grad_a.shape() == shape_a);
        CHECK(grad_b.shape() == shape_b);
        CHECK_CLOSE(grad_a, expected_a, tol_a);
        CHECK_CLOSE(grad_b, expected_b, tol_b);
      }
    }
  }
}

TEST_CASE("maximum and minimum backward split the gradient evenly on ties") {
  const Tensor a = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  const Tensor b = Tensor::from_vector(std::vector<double>{2, 2, 1}, {3});
  const Tensor g = Tensor::from_vector(std::vector<double>{4, 4, 4}, {3});
  const auto [max_a, max_b] = ops::binary_backward(BinaryOp::maximum, g, a, b, ops::binary(BinaryOp::maximum, a, b));
  CHECK(max_a.to_vector<double>() == std::vector<double>{0, 2, 4});
  CHECK(max_b.to_vector<double>() == std::vector<double>{4, 2, 0});
  const auto [min_a, min_b] = ops::binary_backward(BinaryOp::minimum, g, a, b, ops::binary(BinaryOp::minimum, a, b));
  CHECK(min_a.to_vector<double>() == std::vector<double>{4, 2, 0});
  CHECK(min_b.to_vector<double>() == std::vector<double>{0, 2, 4});
  // A broadcast b collects the halves of every tie it takes part in.
  const Tensor scalar_b = Tensor::from_vector(std::vector<double>{2}, {1});
  const auto [bcast_a, bcast_b] =
      ops::binary_backward(BinaryOp::maximum, g, a, scalar_b, ops::binary(BinaryOp::maximum, a, scalar_b));
  CHECK(bcast_a.to_vector<double>() == std::vector<double>{0, 2, 4});
  CHECK(bcast_b.to_vector<double>() == std::vector<double>{6});
}
