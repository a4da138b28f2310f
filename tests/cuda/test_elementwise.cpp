// Elementwise CUDA ops against their CPU twins where no op case applies: in-place updates, casts
// between every dtype pair, fills, arange and the Philox generators. (ops::unary,
// ops::unary_backward, ops::binary, ops::binary_backward, ops::compare, ops::logical_not,
// ops::logical_and, ops::logical_or, ops::where, ops::masked_fill, ops::clamp and
// ops::clamp_backward are op cases, compared with the CPU by test_op_cases.cpp.)
//
// Tolerances: elementwise_tolerance(dtype) (ops/op_cases.h) for computed values; exact for
// casts, fills and the uniform/randint streams; randn agrees to f64 rounding (1e-6 absolute in
// f32, 1e-12 in f64).
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::CompareOp;

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
