// Elementwise CUDA ops against their CPU twins: unary and binary (with broadcasting, scalars and
// every layout), their backwards, comparisons and logic, where/masked_fill/clamp, in-place
// updates, casts between every dtype pair, fills, arange and the Philox generators.
//
// Tolerances: elementwise_tolerance(dtype) (cuda_cases.h) for computed values, a few ulps for
// f32/f64 and one ulp for bf16/f16; exact for integers, comparisons, casts, fills and the
// uniform/randint streams; randn agrees to f64 rounding (1e-6 absolute in f32, 1e-12 in f64).
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::BinaryOp;
using ops::CompareOp;
using ops::UnaryOp;

namespace {

std::vector<DType> dtypes_for(bool integers) {
  std::vector<DType> dtypes = {DType::f32, DType::bf16, DType::f16, DType::f64};
  if (integers) {
    dtypes.push_back(DType::i32);
    dtypes.push_back(DType::i64);
  }
  return dtypes;
}

// Shapes: scalar, empty, odd sizes, and one large enough for the packed kernels' tail and many blocks.
std::vector<Shape> gpu_shapes(Generator& gen) {
  std::vector<Shape> shapes = {{}, {0}, {1}, {5, 1, 3}, {3, 0, 2}, {7, 13}, {3, 257, 9}};
  for (int64_t rank = 1; rank <= 4; ++rank) shapes.push_back(random_shape(gen, rank));
  return shapes;
}

}  // namespace

TEST_CASE("unary ops and their backwards match the CPU on every dtype and layout") {
  Generator gen(101);
  const std::vector<Shape> shapes = gpu_shapes(gen);
  for (const UnaryCase& c : kUnaryCases) {
    for (DType dtype : dtypes_for(c.accepts_integers)) {
      for (const Shape& shape : shapes) {
        CAPTURE(name(c.op));
        CAPTURE(name(dtype));
        CAPTURE(shape);
        const Tensor x = unary_input(c, shape, dtype, gen);
        const Tensor expected = ops::unary(c.op, x);
        const Tolerance tol = scaled(elementwise_tolerance(dtype), 2);
        for (Layout layout : kLayouts) {
          CAPTURE(name(layout));
          const Tensor input = in_layout(x, layout);
          for_each_poison([&] { CHECK_CLOSE(ops::unary(c.op, mirror(input)), expected, tol); });
        }
        if (!is_floating(dtype)) continue;
        const Tensor grad = random_tensor(shape, dtype, gen);
        const Tensor expected_grad = ops::unary_backward(c.op, grad, x, expected);
        for_each_poison([&] {
          CHECK_CLOSE(ops::unary_backward(c.op, mirror(transposed_layout(grad)), mirror(x), mirror(expected)),
                      expected_grad, scaled(tol, 2));
        });
      }
    }
  }
}

TEST_CASE("binary ops broadcast, take scalars on either side, and backpropagate like the CPU") {
  struct Case {
    BinaryOp op;
    double a_low, a_high, b_low, b_high;
    bool integers;
  };
  const Case cases[] = {{BinaryOp::add, -3, 3, -3, 3, true},    {BinaryOp::sub, -3, 3, -3, 3, true},
                        {BinaryOp::mul, -3, 3, -3, 3, true},    {BinaryOp::div, -3, 3, 0.25, 3, false},
                        {BinaryOp::pow, 0.1, 3, -2, 2, false},  {BinaryOp::maximum, -3, 3, -3, 3, true},
                        {BinaryOp::minimum, -3, 3, -3, 3, true}};
  Generator gen(102);
  for (const Case& c : cases) {
    for (DType dtype : dtypes_for(c.integers)) {
      for (const Shape& shape : {Shape{}, Shape{4, 1, 6}, Shape{3, 5, 7}, Shape{2, 0, 3}, Shape{1000, 37}}) {
        CAPTURE(name(c.op));
        CAPTURE(name(dtype));
        CAPTURE(shape);
        const bool floats = is_floating(dtype);
        const Shape b_shape = broadcastable_to(shape, gen);
        const Tensor a =
            floats ? random_tensor(shape, dtype, gen, c.a_low, c.a_high) : integer_values(shape, dtype, gen, -20, 21);
        Tensor b = floats ? random_tensor(b_shape, dtype, gen, c.b_low, c.b_high)
                          : integer_values(b_shape, dtype, gen, -20, 21);
        if (c.op == BinaryOp::div)
          b = ops::binary(BinaryOp::maximum, ops::unary(UnaryOp::abs, b), 0.25);  // away from 0
        const Tolerance tol = scaled(elementwise_tolerance(dtype), 2);
        const Tensor expected = ops::binary(c.op, a, b);
        for (Layout layout : kLayouts) {
          CAPTURE(name(layout));
          const Tensor a_in = in_layout(a, layout), b_in = in_layout(b, layout);
          for_each_poison([&] { CHECK_CLOSE(ops::binary(c.op, mirror(a_in), mirror(b_in)), expected, tol); });
        }
        const double scalar = c.op == BinaryOp::pow ? 2.0 : (floats ? 1.75 : 3.0);
        for_each_poison([&] {
          CHECK_CLOSE(ops::binary(c.op, mirror(a), scalar), ops::binary(c.op, a, scalar), tol);
          const Tensor positive = c.op == BinaryOp::div || c.op == BinaryOp::pow ? ops::unary(UnaryOp::abs, a) : a;
          if (c.op == BinaryOp::div) {
            CHECK_CLOSE(ops::binary(c.op, scalar, mirror(b)), ops::binary(c.op, scalar, b), tol);
          } else {
            CHECK_CLOSE(ops::binary(c.op, scalar, mirror(positive)), ops::binary(c.op, scalar, positive), tol);
          }
        });
        if (!floats || shape.empty()) continue;
        const Tensor grad = random_tensor(shape, dtype, gen);
        const auto expected_grads = ops::binary_backward(c.op, grad, a, b, expected);
        for_each_poison([&] {
          const auto grads = ops::binary_backward(c.op, mirror(grad), mirror(a), mirror(b), mirror(expected));
          // The reductions of the broadcast adjoint add in another order: a little more room.
          CHECK_CLOSE(grads.first, expected_grads.first, scaled(tol, 4));
          CHECK_CLOSE(grads.second, expected_grads.second, scaled(tol, 4));
        });
      }
    }
  }
}

TEST_CASE("comparisons, logic, where, masked_fill and clamp are exact") {
  Generator gen(103);
  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::i32, DType::i64, DType::u8}) {
    CAPTURE(name(dtype));
    const Tensor a = integer_values({6, 9}, dtype, gen, 0, 5);  // many ties
    const Tensor b = integer_values({9}, dtype, gen, 0, 5);
    for (CompareOp op : {CompareOp::eq, CompareOp::ne, CompareOp::lt, CompareOp::le, CompareOp::gt, CompareOp::ge}) {
      for_each_poison([&] {
        CHECK_CLOSE(ops::compare(op, mirror(transposed_layout(a)), mirror(b)), ops::compare(op, a, b), kExact);
        CHECK_CLOSE(ops::compare(op, mirror(a), 2.5), ops::compare(op, a, 2.5), kExact);
      });
    }
    const Tensor condition = ops::compare(CompareOp::gt, a, 2.0);
    const Tensor other = integer_values({6, 1}, dtype, gen, 0, 5);
    for_each_poison([&] {
      CHECK_CLOSE(ops::where(mirror(condition), mirror(a), mirror(other)), ops::where(condition, a, other), kExact);
      CHECK_CLOSE(ops::masked_fill(mirror(a), mirror(condition), -1.0), ops::masked_fill(a, condition, -1.0), kExact);
      if (dtype == DType::u8) return;  // clamp takes the arithmetic dtypes
      CHECK_CLOSE(ops::clamp(mirror(noncontiguous(a)), 1.0, 3.0), ops::clamp(a, 1.0, 3.0), kExact);
      CHECK_CLOSE(ops::clamp(mirror(a), std::nullopt, 2.0), ops::clamp(a, std::nullopt, 2.0), kExact);
    });
  }
  const Tensor p = ops::compare(CompareOp::gt, random_tensor({5, 7}, DType::f32, gen), 0.0);
  const Tensor q = ops::compare(CompareOp::gt, random_tensor({7}, DType::f32, gen), 0.0);
  for_each_poison([&] {
    CHECK_CLOSE(ops::logical_not(mirror(p)), ops::logical_not(p), kExact);
    CHECK_CLOSE(ops::logical_and(mirror(p), mirror(q)), ops::logical_and(p, q), kExact);
    CHECK_CLOSE(ops::logical_or(mirror(transposed_layout(p)), mirror(q)), ops::logical_or(p, q), kExact);
  });
  for (DType dtype : kGpuFloatDTypes) {
    const Tensor x = random_tensor({300, 7}, dtype, gen, -2, 2), g = random_tensor({300, 7}, dtype, gen);
    for_each_poison([&] {
      CHECK_CLOSE(ops::clamp_backward(mirror(g), mirror(x), -0.5, 1.0), ops::clamp_backward(g, x, -0.5, 1.0), kExact);
    });
  }
}

TEST_CASE("add_ and mul_ update device views in place") {
  Generator gen(104);
  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::i64}) {
    CAPTURE(name(dtype));
    const bool floats = is_floating(dtype);
    const Tensor base = floats ? random_tensor({8, 10}, dtype, gen) : integer_values({8, 10}, dtype, gen, -9, 9);
    const Tensor src = floats ? random_tensor({10}, dtype, gen) : integer_values({10}, dtype, gen, -9, 9);
    Tensor expected = ops::clone(base);
    ops::add_(views::slice(expected, 0, 1, 8, 2), src, 0.5);
    ops::mul_(views::slice(expected, 1, 0, 10, 3), 3.0);
    Tensor actual = mirror(base);
    ops::add_(views::slice(actual, 0, 1, 8, 2), mirror(src), 0.5);
    ops::mul_(views::slice(actual, 1, 0, 10, 3), 3.0);
    CHECK_CLOSE(actual, expected, elementwise_tolerance(dtype));
  }
}

TEST_CASE("casts between every dtype pair are exact, in every layout") {
  Generator gen(105);
  for (DType from : kAllDTypes) {
    // Values that exercise rounding (fractions), saturation (beyond i32/u8), NaN and infinities.
    Tensor source = random_tensor({33, 17}, DType::f64, gen, -3e9, 3e9);
    if (from == DType::boolean) source = ops::compare(CompareOp::gt, source, 0.0);
    source = ops::cast(source, from);
    if (is_floating(from)) {
      std::vector<double> values = source.to_vector<double>();
      values[0] = NAN;
      values[1] = INFINITY;
      values[2] = -INFINITY;
      values[3] = 0.5;
      values[4] = -2.5;
      values[5] = 1e-3;
      source = Tensor::from_vector(values, source.shape(), from);
    }
    for (DType to : kAllDTypes) {
      CAPTURE(name(from));
      CAPTURE(name(to));
      const Tensor expected = ops::cast(source, to);
      for (Layout layout : kLayouts) {
        CAPTURE(name(layout));
        const Tensor input = in_layout(source, layout);
        for_each_poison([&] { CHECK_CLOSE(ops::cast(mirror(input), to), expected, kExact); });
      }
    }
  }
  // A large contiguous f32 <-> bf16 cast takes the packed kernel; an odd length leaves a tail.
  const Tensor big = random_tensor({1 << 20 | 3}, DType::f32, gen, -100, 100);
  for_each_poison([&] {
    CHECK_CLOSE(ops::cast(mirror(big), DType::bf16), ops::cast(big, DType::bf16), kExact);
    CHECK_CLOSE(ops::cast(ops::cast(mirror(big), DType::f16), DType::f32),
                ops::cast(ops::cast(big, DType::f16), DType::f32), kExact);
  });
}

TEST_CASE("full, zeros, ones and arange on the device") {
  for (DType dtype : kAllDTypes) {
    CAPTURE(name(dtype));
    for_each_poison([&] {
      for (double value : {0.0, 1.0, -1.0, 2.5, 300.0}) {
        CHECK_CLOSE(full({3, 7}, value, dtype, kCuda), full({3, 7}, value, dtype), kExact);
      }
      CHECK_CLOSE(zeros({0, 3}, dtype, kCuda), zeros({0, 3}, dtype), kExact);
      CHECK_CLOSE(ones({5}, dtype, kCuda), ones({5}, dtype), kExact);
      if (dtype != DType::boolean && dtype != DType::u8) {
        CHECK_CLOSE(arange(-7, 1000, 3, dtype, kCuda), arange(-7, 1000, 3, dtype), kExact);
        CHECK_CLOSE(arange(50, -50, -7, dtype, kCuda), arange(50, -50, -7, dtype), kExact);
      }
    });
  }
}

TEST_CASE("uniform, randint and dropout_mask reproduce the CPU's Philox streams exactly; randn to f64 rounding") {
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{3, 5}, Shape{1000, 333}}) {
    for (uint64_t offset : {uint64_t(0), uint64_t(12345), uint64_t(1) << 40}) {
      CAPTURE(shape);
      CAPTURE(offset);
      for (DType dtype : kGpuFloatDTypes) {
        CAPTURE(name(dtype));
        for (auto [low, high] : {std::pair{-1.0, 1.0}, std::pair{0.0, 1.0}, std::pair{-0.3, 2.7}}) {
          Generator cpu_gen(77, offset), gpu_gen(77, offset);
          const Tensor expected = uniform(shape, low, high, cpu_gen, dtype);
          for_each_poison([&] {
            Generator gen = gpu_gen;
            CHECK_CLOSE(uniform(shape, low, high, gen, dtype, kCuda), expected, kExact);
            CHECK(gen.offset() == cpu_gen.offset());
          });
        }
        Generator cpu_gen(5, offset), gpu_gen(5, offset);
        const Tensor expected = randn(shape, cpu_gen, dtype);
        const Tolerance tol = dtype == DType::f64   ? Tolerance{1e-12, 1e-12}
                              : dtype == DType::f32 ? Tolerance{1e-6, 1e-6}
                                                    : elementwise_tolerance(dtype);
        for_each_poison([&] {
          Generator gen = gpu_gen;
          CHECK_CLOSE(randn(shape, gen, dtype, kCuda), expected, tol);
          CHECK(gen.offset() == cpu_gen.offset());
        });
      }
      for (DType dtype : {DType::i64, DType::i32, DType::f32}) {
        using Range = std::pair<int64_t, int64_t>;
        for (auto [low, high] : {Range{0, 1000}, Range{-5, 6}, Range{0, int64_t(1) << 40}}) {
          if (dtype != DType::i64 && high > (int64_t(1) << 20)) continue;
          Generator cpu_gen(9, offset), gpu_gen(9, offset);
          const Tensor expected = randint(low, high, shape, cpu_gen, dtype);
          CHECK_CLOSE(randint(low, high, shape, gpu_gen, dtype, kCuda), expected, kExact);
          CHECK(gpu_gen.offset() == cpu_gen.offset());
        }
      }
      for (DType dtype : {DType::f32, DType::bf16}) {
        Generator cpu_gen(13, offset), gpu_gen(13, offset);
        const Tensor expected = ops::dropout_mask(shape, 0.7, cpu_gen, dtype);
        CHECK_CLOSE(ops::dropout_mask(shape, 0.7, gpu_gen, dtype, kCuda), expected, kExact);
        CHECK(gpu_gen.offset() == cpu_gen.offset());
      }
    }
  }
}
