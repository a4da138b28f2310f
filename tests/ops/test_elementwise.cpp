// Elementwise forwards against the f64 references in ops/reference.h, over random shapes,
// layouts, broadcasting and every dtype each op accepts.
#include <cmath>
#include <optional>

#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;
using ops::CompareOp;
using ops::UnaryOp;

namespace {

struct BinaryCase {
  BinaryOp op;
  double a_low, a_high, b_low, b_high;
  bool b_signed_magnitude;
  bool accepts_integers;
};
const BinaryCase kBinaryCases[] = {
    {BinaryOp::add, -3, 3, -3, 3, false, true},     {BinaryOp::sub, -3, 3, -3, 3, false, true},
    {BinaryOp::mul, -3, 3, -3, 3, false, true},     {BinaryOp::div, -3, 3, 0.25, 3, true, false},
    {BinaryOp::pow, 0.1, 3, -2, 2, false, false},   {BinaryOp::maximum, -3, 3, -3, 3, false, true},
    {BinaryOp::minimum, -3, 3, -3, 3, false, true},
};

Tensor binary_operand(double low, double high, bool signed_magnitude, const Shape& shape, DType dtype,
                      Generator& gen) {
  if (!is_floating(dtype)) return integer_values(shape, dtype, gen, -20, 21);
  return signed_magnitude ? signed_magnitudes(shape, dtype, gen, low, high) : random_tensor(shape, dtype, gen, low, high);
}

std::vector<DType> dtypes_for(bool accepts_integers) {
  std::vector<DType> dtypes(std::begin(kFloatDTypes), std::end(kFloatDTypes));
  if (accepts_integers)
    for (DType dtype : kIntDTypes) dtypes.push_back(dtype);  // (insert() trips a GCC 12 -Wstringop-overread false positive)
  return dtypes;
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
const CompareOp kCompareOps[] = {CompareOp::eq, CompareOp::ne, CompareOp::lt,
                                 CompareOp::le, CompareOp::gt, CompareOp::ge};
std::string compare_name(CompareOp op) {
  const char* names[] = {"eq", "ne", "lt", "le", "gt", "ge"};
  return names[int(op)];
}

const Tolerance kExact{0, 0};

}  // namespace

TEST_CASE("unary ops match the f64 reference in every dtype, layout and shape") {
  Generator gen(11);
  for (const UnaryCase& c : kUnaryCases) {
    for (DType dtype : dtypes_for(c.accepts_integers)) {
      for (const Shape& shape : test_shapes(gen)) {
        const Tensor x = unary_input(c, shape, dtype, gen);
        const Tensor expected = ops::reference::unary(c.op, x);
        for (Layout layout : kLayouts) {
          INFO(name(c.op) << " " << name(dtype) << " " << shape << " " << name(layout));
          const Tensor out = ops::unary(c.op, in_layout(x, layout));
          CHECK(out.dtype() == dtype);
          CHECK(out.is_contiguous());
          CHECK_CLOSE(out, expected, tolerance_for(dtype));
        }
      }
    }
  }
}

TEST_CASE("unary ops read expanded (stride 0) views") {
  Generator gen(12);
  const Tensor row = random_tensor({1, 5}, DType::f32, gen, 0.1, 2.0);
  const Tensor expanded = views::expand(row, {4, 5});
  for (const UnaryCase& c : kUnaryCases) {
    INFO(name(c.op));
    const Tensor expected = ops::reference::unary(c.op, ops::contiguous(expanded));
    CHECK_CLOSE(ops::unary(c.op, expanded), expected, tolerance_for(DType::f32));
  }
}

TEST_CASE("binary ops broadcast and match the f64 reference") {
  Generator gen(21);
  for (const BinaryCase& c : kBinaryCases) {
    for (DType dtype : dtypes_for(c.accepts_integers)) {
      for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
        const Tensor a = binary_operand(c.a_low, c.a_high, false, shape_a, dtype, gen);
        const Tensor b = binary_operand(c.b_low, c.b_high, c.b_signed_magnitude, shape_b, dtype, gen);
        const Tensor expected = ops::reference::binary(c.op, a, b);
        for (size_t l = 0; l < std::size(kLayouts); ++l) {
          const Layout layout_a = kLayouts[l], layout_b = kLayouts[(l + 1) % std::size(kLayouts)];
          INFO(name(c.op) << " " << name(dtype) << " " << shape_a << " x " << shape_b << " "
                                         << name(layout_a) << "/" << name(layout_b));
          const Tensor out = ops::binary(c.op, in_layout(a, layout_a), in_layout(b, layout_b));
          CHECK(out.dtype() == dtype);
          CHECK_CLOSE(out, expected, tolerance_for(dtype));
        }
      }
    }
  }
}

TEST_CASE("binary ops with an expanded operand view") {
  Generator gen(22);
  for (const BinaryCase& c : kBinaryCases) {
    const Tensor a = binary_operand(c.a_low, c.a_high, false, {3, 4}, DType::f64, gen);
    const Tensor column = binary_operand(c.b_low, c.b_high, c.b_signed_magnitude, {3, 1}, DType::f64, gen);
    const Tensor b = views::expand(column, {3, 4});
    INFO(name(c.op));
    CHECK_CLOSE(ops::binary(c.op, a, b), ops::reference::binary(c.op, a, column), tolerance_for(DType::f64));
    CHECK_CLOSE(ops::binary(c.op, b, a), ops::reference::binary(c.op, column, a), tolerance_for(DType::f64));
  }
}

TEST_CASE("binary ops with a scalar on either side") {
  struct ScalarCase {
    BinaryOp op;
    double scalar;
    double low, high;
    bool signed_magnitude;  // of the tensor: keeps scalar / t finite
  };
  const ScalarCase cases[] = {
      {BinaryOp::add, 0.75, -3, 3, false},     {BinaryOp::sub, 1.5, -3, 3, false},
      {BinaryOp::mul, -2.5, -3, 3, false},     {BinaryOp::div, -1.25, 0.25, 3, true},
      {BinaryOp::pow, 2.0, 0.1, 3, false},     {BinaryOp::pow, 0.5, 0.1, 3, false},
      {BinaryOp::pow, -1.5, 0.1, 3, false},    {BinaryOp::maximum, 0.25, -3, 3, false},
      {BinaryOp::minimum, 0.25, -3, 3, false},
  };
  Generator gen(23);
  for (const ScalarCase& c : cases) {
    for (DType dtype : kFloatDTypes) {
      const Tensor t = noncontiguous(binary_operand(c.low, c.high, c.signed_magnitude, {3, 5}, dtype, gen));
      INFO(name(c.op) << " " << c.scalar << " " << name(dtype));
      CHECK_CLOSE(ops::binary(c.op, t, c.scalar), ops::reference::binary(c.op, t, scalar64(c.scalar)),
                  tolerance_for(dtype));
      // pow(scalar, t) needs a positive base.
      const double left = c.op == BinaryOp::pow ? std::abs(c.scalar) + 0.5 : c.scalar;
      CHECK_CLOSE(ops::binary(c.op, left, t), ops::reference::binary(c.op, scalar64(left), t), tolerance_for(dtype));
    }
  }
  for (BinaryOp op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::maximum, BinaryOp::minimum}) {
    for (DType dtype : kIntDTypes) {
      const Tensor t = integer_values({4, 3}, dtype, gen, -20, 21);
      INFO(name(op) << " " << name(dtype));
      CHECK_CLOSE(ops::binary(op, t, 3.0), ops::reference::binary(op, t, scalar64(3)), kExact);
      CHECK_CLOSE(ops::binary(op, -7.0, t), ops::reference::binary(op, scalar64(-7), t), kExact);
      CHECK(ops::binary(op, t, 3.0).dtype() == dtype);
    }
  }
}

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

TEST_CASE("compare: every op, tensor and scalar, with ties and broadcasting") {
  Generator gen(41);
  for (CompareOp op : kCompareOps) {
    for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
      for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
        const Tensor a = integer_values(shape_a, dtype, gen, -2, 3);
        const Tensor b = integer_values(shape_b, dtype, gen, -2, 3);
        INFO(compare_name(op) << " " << name(dtype) << " " << shape_a << " x " << shape_b);
        const Tensor out = ops::compare(op, transposed_layout(a), noncontiguous(b));
        CHECK(out.dtype() == DType::boolean);
        CHECK_CLOSE(out, expected_compare(op, a, b), kExact);
      }
      const Tensor t = integer_values({3, 4}, dtype, gen, -2, 3);
      for (double scalar : {1.0, -0.5, 2.5, 1e10}) {
        INFO(compare_name(op) << " " << name(dtype) << " scalar " << scalar);
        CHECK_CLOSE(ops::compare(op, t, scalar), expected_compare(op, t, scalar64(scalar)), kExact);
      }
    }
  }
}

TEST_CASE("logical_not, logical_and and logical_or on broadcast bool tensors") {
  Generator gen(42);
  for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
    const Tensor a = integer_values(shape_a, DType::boolean, gen, 0, 2);
    const Tensor b = integer_values(shape_b, DType::boolean, gen, 0, 2);
    INFO(shape_a << " x " << shape_b);
    CHECK_CLOSE(ops::logical_not(noncontiguous(a)), map_values(a, [](double v) { return 1 - v; }), kExact);
    // On 0/1 values "and" is the product and "or" the maximum.
    CHECK_CLOSE(ops::logical_and(a, transposed_layout(b)), ops::reference::binary(BinaryOp::mul, a, b), kExact);
    CHECK_CLOSE(ops::logical_or(noncontiguous(a), b), ops::reference::binary(BinaryOp::maximum, a, b), kExact);
  }
}

TEST_CASE("where and masked_fill pick elements with broadcast conditions") {
  Generator gen(43);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    for (const auto& [shape_a, shape_b] : broadcast_pairs(gen)) {
      const Shape shape = broadcast_shapes(shape_a, shape_b, "test");
      const Tensor condition = integer_values(broadcastable_to(shape, gen), DType::boolean, gen, 0, 2);
      const Tensor a = integer_values(shape_a, dtype, gen, -50, 51);
      const Tensor b = integer_values(shape_b, dtype, gen, -50, 51);
      // On a 0/1 condition: c a + (1 - c) b, exact for these small integers.
      const Tensor not_condition = ops::reference::binary(BinaryOp::sub, scalar64(1), condition);
      const Tensor expected = ops::reference::binary(BinaryOp::add, ops::reference::binary(BinaryOp::mul, condition, a),
                                                     ops::reference::binary(BinaryOp::mul, not_condition, b));
      INFO(name(dtype) << " " << condition.shape() << " " << shape_a << " " << shape_b);
      CHECK_CLOSE(ops::where(noncontiguous(condition), transposed_layout(a), b), expected, kExact);

      const Tensor x = integer_values(shape, dtype, gen, -50, 51);
      const double value = is_floating(dtype) ? -2.5 : 7.0;
      const Tensor mask = integer_values(broadcastable_to(shape, gen), DType::boolean, gen, 0, 2);
      const Tensor keep = ops::reference::binary(BinaryOp::sub, scalar64(1), mask);
      const Tensor filled = ops::reference::binary(BinaryOp::add, ops::reference::binary(BinaryOp::mul, keep, x),
                                                   ops::reference::binary(BinaryOp::mul, mask, scalar64(value)));
      CHECK_CLOSE(ops::masked_fill(transposed_layout(x), mask, value), filled, kExact);
    }
  }
}

TEST_CASE("clamp matches min(max(x, low), high) with either bound optional") {
  struct Bounds {
    std::optional<double> low, high;
  };
  const Bounds bounds[] = {{-0.5, 0.5}, {std::nullopt, 0.25}, {-0.25, std::nullopt}, {std::nullopt, std::nullopt},
                           {0.5, 0.5}};
  Generator gen(44);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    const double scale = is_floating(dtype) ? 1.0 : 4.0;  // integer bounds -2, 1, -1, 2
    for (const Bounds& b : bounds) {
      const Tensor x = is_floating(dtype) ? random_tensor({4, 5}, dtype, gen) : integer_values({4, 5}, dtype, gen, -5, 6);
      std::optional<double> low, high;
      if (b.low) low = *b.low * scale;
      if (b.high) high = *b.high * scale;
      Tensor expected = x;
      if (low) expected = ops::reference::binary(BinaryOp::maximum, expected, scalar64(*low));
      if (high) expected = ops::reference::binary(BinaryOp::minimum, expected, scalar64(*high));
      INFO(name(dtype) << " low " << low.value_or(-INFINITY) << " high " << high.value_or(INFINITY));
      CHECK_CLOSE(ops::clamp(noncontiguous(x), low, high), expected, kExact);
    }
  }
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
