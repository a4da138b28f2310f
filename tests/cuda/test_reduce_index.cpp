// Reductions and indexing on the GPU against the CPU: every reduction kind over dim sets and
// layouts (block-per-output and thread-per-output kernels), argmax ties and NaN; cat, split,
// index_select, index_add, gather, scatter_add and one_hot with repeated indices.
//
// Tolerances: sums, means, variances and logsumexp accumulate in f64 on both devices in
// different orders: elementwise_tolerance(dtype), doubled. max/min/argmax and all the index ops
// are exact (index_add/scatter_add add in the same order as the CPU).
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;
using ops::CompareOp;

TEST_CASE("reductions over any dims, layouts and dtypes match the CPU") {
  Generator gen(201);
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{7}, {}},
      {{7}, {0}},
      {{4, 9}, {1}},
      {{4, 9}, {0}},
      {{3, 5, 6}, {0, 2}},
      {{3, 5, 6}, {1}},
      {{2, 3, 4, 5}, {1, 3}},
      {{2, 3, 4, 5}, {}},
      {{3, 0, 2}, {0}},
      {{5, 1}, {1}},
      {{2000, 37}, {0}},
      {{37, 3000}, {1}},
      {{64, 64, 3}, {0, 1}},
      {{1, 200000}, {1}},
      {{300000}, {}},
      {{300, 2000}, {0}},  // many adjacent outputs over a strided dim: one thread per output
  };
  const std::vector<DType> dtypes = {DType::f32, DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64};
  for (const auto& [shape, dims] : cases) {
    for (DType dtype : dtypes) {
      CAPTURE(shape);
      CAPTURE(dims);
      CAPTURE(name(dtype));
      const bool floats = is_floating(dtype);
      const Tensor x = floats ? random_tensor(shape, dtype, gen, -2, 2) : integer_values(shape, dtype, gen, -9, 10);
      const bool empty = x.numel() == 0 || (!dims.empty() && x.size(dims[0]) == 0);
      const Tolerance tol = scaled(elementwise_tolerance(dtype), 2);
      for (Layout layout : kLayouts) {
        CAPTURE(name(layout));
        const Tensor input = in_layout(x, layout);
        for (bool keepdim : {false, true}) {
          for_each_poison([&] {
            const Tensor g = mirror(input);
            CHECK_CLOSE(ops::sum(g, dims, keepdim), ops::sum(x, dims, keepdim), tol);
            if (!empty) {
              CHECK_CLOSE(ops::max(g, dims, keepdim), ops::max(x, dims, keepdim), kExact);
              CHECK_CLOSE(ops::min(g, dims, keepdim), ops::min(x, dims, keepdim), kExact);
              if (dims.size() == 1)
                CHECK_CLOSE(ops::argmax(g, dims[0], keepdim), ops::argmax(x, dims[0], keepdim), kExact);
            }
            if (floats) {
              CHECK_CLOSE(ops::mean(g, dims, keepdim), ops::mean(x, dims, keepdim), tol);
              if (!dims.empty()) {
                CHECK_CLOSE(ops::logsumexp(g, dims, keepdim), ops::logsumexp(x, dims, keepdim), tol);
                CHECK_CLOSE(ops::var(g, dims, 1, keepdim), ops::var(x, dims, 1, keepdim), scaled(tol, 2));
                CHECK_CLOSE(ops::var(g, dims, 0, keepdim), ops::var(x, dims, 0, keepdim), scaled(tol, 2));
              }
            }
          });
        }
      }
    }
  }
}

TEST_CASE("argmax takes the first maximum, and a NaN wins; max and min propagate NaN") {
  std::vector<double> values = {1, 5, 5, 2, /**/ 3, 3, 3, 3, /**/ 0, NAN, 7, NAN, /**/ -INFINITY, -1, -1, 4};
  const Tensor x = Tensor::from_vector(values, {4, 4});
  for_each_poison([&] {
    CHECK_CLOSE(ops::argmax(mirror(x), 1), ops::argmax(x, 1), kExact);
    CHECK_CLOSE(ops::argmax(mirror(x), 0), ops::argmax(x, 0), kExact);
    CHECK_CLOSE(ops::max(mirror(x), {1}), ops::max(x, {1}), kExact);
    CHECK_CLOSE(ops::min(mirror(x), {0}), ops::min(x, {0}), kExact);
    CHECK_CLOSE(ops::logsumexp(mirror(x), {1}), ops::logsumexp(x, {1}), elementwise_tolerance(DType::f32));
  });
  // Long rows with the maximum repeated across many threads' ranges: the first one wins.
  const Tensor ties = full({3, 5000}, 1.0, DType::f32);
  Tensor marked = ops::clone(ties);
  ops::fill_(views::slice(marked, 1, 777, 5000, 1000), 2.0);
  for_each_poison([&] { CHECK_CLOSE(ops::argmax(mirror(marked), 1), ops::argmax(marked, 1), kExact); });
}

TEST_CASE("cat and split on the device") {
  Generator gen(202);
  for (DType dtype : {DType::f32, DType::bf16, DType::i64, DType::boolean}) {
    const Tensor a = random_tensor({3, 4, 5}, DType::f32, gen), b = random_tensor({3, 2, 5}, DType::f32, gen);
    const Tensor ta = dtype == DType::boolean ? ops::compare(CompareOp::gt, a, 0.0) : ops::cast(a, dtype);
    const Tensor tb = dtype == DType::boolean ? ops::compare(CompareOp::gt, b, 0.0) : ops::cast(b, dtype);
    for_each_poison([&] {
      const Tensor joined = ops::cat({mirror(ta), mirror(transposed_layout(tb))}, 1);
      CHECK_CLOSE(joined, ops::cat({ta, tb}, 1), kExact);
      const std::vector<Tensor> parts = ops::split(joined, {1, 5}, 1);
      CHECK(parts[1].device() == kCuda);
      CHECK_CLOSE(parts[1], ops::split(ops::cat({ta, tb}, 1), {1, 5}, 1)[1], kExact);
    });
  }
}

TEST_CASE("index_select, index_add, gather, scatter_add and one_hot, repeated indices included") {
  Generator gen(203);
  for (DType dtype : {DType::f32, DType::bf16, DType::f64, DType::i32}) {
    for (DType index_type : {DType::i64, DType::i32}) {
      CAPTURE(name(dtype));
      CAPTURE(name(index_type));
      const bool floats = is_floating(dtype);
      auto values = [&](const Shape& shape) {
        return floats ? random_tensor(shape, dtype, gen) : integer_values(shape, dtype, gen, -50, 50);
      };
      const Tensor x = values({6, 7, 8});
      for (int64_t dim = 0; dim < 3; ++dim) {
        CAPTURE(dim);
        const Tensor index = ops::cast(randint(0, x.size(dim), {11}, gen), index_type);  // repeats
        Shape src_shape = x.shape();
        src_shape[size_t(dim)] = 11;
        const Tensor src = values(src_shape);
        Shape gather_shape = x.shape();
        gather_shape[size_t(dim)] = 9;
        const Tensor gather_index = ops::cast(randint(0, x.size(dim), gather_shape, gen), index_type);
        const Tensor scatter_src = values(gather_shape);
        for (Layout layout : kLayouts) {
          CAPTURE(name(layout));
          const Tensor x_in = in_layout(x, layout);
          for_each_poison([&] {
            CHECK_CLOSE(ops::index_select(mirror(x_in), dim, mirror(index)), ops::index_select(x, dim, index), kExact);
            CHECK_CLOSE(ops::index_add(x.shape(), dim, mirror(index), mirror(in_layout(src, layout))),
                        ops::index_add(x.shape(), dim, index, src), kExact);
            CHECK_CLOSE(ops::gather(mirror(x_in), dim, mirror(in_layout(gather_index, layout))),
                        ops::gather(x, dim, gather_index), kExact);
            CHECK_CLOSE(ops::scatter_add(mirror(x_in), dim, mirror(in_layout(gather_index, layout)),
                                         mirror(in_layout(scatter_src, layout))),
                        ops::scatter_add(x, dim, gather_index, scatter_src), kExact);
          });
        }
      }
    }
  }
  const Tensor labels = randint(0, 10, {4, 6}, gen);
  for_each_poison([&] { CHECK_CLOSE(ops::one_hot(mirror(labels), 10), ops::one_hot(labels, 10), kExact); });
  // Out-of-range indices are caught on the host before any kernel runs.
  const Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 9}, {2});
  CHECK_THROWS_WITH_AS(ops::index_select(zeros({3, 4}, DType::f32, kCuda), 0, mirror(bad)),
                       doctest::Contains("index 9 at flat position 1"), Error);
}
