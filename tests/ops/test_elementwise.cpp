// Elementwise semantics that a comparison with an oracle does not check: in-place updates of
// strided views, and clamp's gradient on its bounds. The forwards of ops::unary, ops::binary
// (broadcast, scalars, expanded operands), ops::compare, ops::logical_not, ops::logical_and,
// ops::logical_or, ops::where, ops::masked_fill and ops::clamp against their f64 oracles, in every
// dtype and layout, are op cases: tests/op_cases/elementwise.cpp, run by test_op_cases.cpp.
#include <cmath>
#include <optional>

#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;

namespace {
const Tolerance kExact{0, 0};
}  // namespace

TEST_CASE("add_ and mul_ update a strided view in place and leave its gaps alone") {
  Generator gen(31);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    const bool floating = is_floating(dtype);
    const Tensor start = floating ? random_tensor({3, 4}, dtype, gen) : integer_values({3, 4}, dtype, gen, -9, 10);
    const Tensor src = floating ? random_tensor({4}, dtype, gen) : integer_values({4}, dtype, gen, -9, 10);
    const double alpha = floating ? -0.5 : 3.0;
    const Tensor dst = noncontiguous(start);
    INFO(name(dtype));
    ops::add_(dst, src, alpha);
    const Tensor scaled_src = ops::reference::binary(BinaryOp::mul, src, scalar64(alpha));
    CHECK_CLOSE(dst, ops::reference::binary(BinaryOp::add, start, scaled_src), tolerance_for(dtype));
    ops::add_(dst, src);
    const Tensor after_add = ops::reference::binary(BinaryOp::add, ops::reference::binary(BinaryOp::add, start, scaled_src), src);
    CHECK_CLOSE(dst, after_add, tolerance_for(dtype));
    const Tensor before_mul = Tensor::from_vector(dst.to_vector<double>(), dst.shape(), DType::f64);
    ops::mul_(dst, floating ? 1.5 : -2.0);
    CHECK_CLOSE(dst, ops::reference::binary(BinaryOp::mul, before_mul, scalar64(floating ? 1.5 : -2.0)),
                tolerance_for(dtype));
    // noncontiguous() leaves zeros between the view's elements; in-place ops must not touch them.
    const Tensor whole = views::as_strided(dst, {3, 8}, {8, 1}, 0);
    CHECK_CLOSE(views::slice(whole, 1, 1, 8, 2), zeros({3, 4}, DType::f64), kExact);
  }
  const Tensor broadcast_dst = views::expand(zeros({1, 3}), {2, 3});
  CHECK_THROWS_WITH_AS(ops::add_(broadcast_dst, ones({2, 3})), doctest::Contains("add_: 'dst'"), Error);
  CHECK_THROWS_WITH_AS(ops::mul_(broadcast_dst, 2.0), doctest::Contains("broadcast view"), Error);
}

TEST_CASE("clamp_backward passes the gradient only where low <= x <= high") {
  Generator gen(45);
  for (DType dtype : kFloatDTypes) {
    // Integer-valued x so that some elements sit exactly on the bounds.
    const Tensor x = integer_values({6, 7}, dtype, gen, -3, 4);
    const Tensor grad = random_tensor({6, 7}, dtype, gen);
    const std::vector<double> xs = x.to_vector<double>(), gs = grad.to_vector<double>();
    const std::pair<std::optional<double>, std::optional<double>> bounds[] = {
        {-1.0, 2.0}, {std::nullopt, 0.0}, {1.0, std::nullopt}, {std::nullopt, std::nullopt}};
    for (const auto& [low, high] : bounds) {
      std::vector<double> expected(xs.size());
      for (size_t i = 0; i < xs.size(); ++i) {
        const bool inside = (!low || xs[i] >= *low) && (!high || xs[i] <= *high);
        expected[i] = inside ? gs[i] : 0.0;
      }
      INFO(name(dtype) << " low " << low.value_or(-INFINITY) << " high " << high.value_or(INFINITY));
      CHECK_CLOSE(ops::clamp_backward(noncontiguous(grad), transposed_layout(x), low, high),
                  Tensor::from_vector(expected, x.shape(), DType::f64), kExact);
    }
  }
}
