// Indexing and joining: what a comparison with the f64 oracles does not check. split returns
// views that share storage, scatter_add's worked numbers, and one_hot (no oracle). ops::cat,
// ops::index_select, ops::index_add, ops::gather and ops::scatter_add along every dim, with i32
// and i64 indices, repeats, empty pieces, every dtype and layout, are op cases:
// tests/op_cases/index.cpp (test_op_cases.cpp here, gradcheck in tests/autograd/).
#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

const Tolerance kExact{0, 0};

// Index values of `shape` in [0, limit), stored as `dtype` (repeats are likely).
Tensor random_index(const Shape& shape, int64_t limit, DType dtype, Generator& gen) {
  return integer_values(shape, dtype, gen, 0, limit);
}

}  // namespace

TEST_CASE("split returns views that share storage and tile the input") {
  Generator gen(82);
  const Tensor x = random_tensor({4, 6, 3}, DType::f32, gen);
  const std::vector<Tensor> parts = ops::split(x, {2, 0, 3, 1}, -2);
  REQUIRE(parts.size() == 4);
  const std::vector<int64_t> starts = {0, 2, 2, 5}, sizes = {2, 0, 3, 1};
  for (size_t i = 0; i < parts.size(); ++i) {
    INFO("part " << i);
    CHECK(parts[i].shape() == Shape{4, sizes[i], 3});
    CHECK(parts[i].storage() == x.storage());
    std::vector<int64_t> rows(size_t(sizes[i]));
    for (int64_t r = 0; r < sizes[i]; ++r) rows[size_t(r)] = starts[i] + r;
    const Tensor index = Tensor::from_vector(rows, {sizes[i]}, DType::i64);
    CHECK_CLOSE(parts[i], ops::reference::index_select(x, 1, index), kExact);
  }
  // Writing through a part writes into x.
  ops::fill_(parts[3], 5.0);
  CHECK(views::select(x, 1, 5).to_vector<double>() == std::vector<double>(12, 5.0));
  CHECK_THROWS_WITH_AS(ops::split(x, {2, 2}, 1), doctest::Contains("split: sizes [2, 2] sum to 4"), Error);
}

TEST_CASE("scatter_add: repeated indices accumulate; base is not modified") {
  const Tensor base = Tensor::from_vector(std::vector<double>{1, 1, 1, 1}, {1, 4});
  const Tensor index = Tensor::from_vector(std::vector<int64_t>{2, 2, 0, 2}, {1, 4});
  const Tensor src = Tensor::from_vector(std::vector<double>{10, 20, 30, 40}, {1, 4});
  const Tensor out = ops::scatter_add(base, 1, index, src);
  CHECK(out.to_vector<double>() == std::vector<double>{31, 1, 71, 1});
  CHECK(base.to_vector<double>() == std::vector<double>{1, 1, 1, 1});  // base is not modified

}

TEST_CASE("one_hot sets exactly the indexed class") {
  Generator gen(87);
  for (DType index_dtype : kIntDTypes) {
    for (DType dtype : {DType::f32, DType::bf16, DType::i64}) {
      for (const Shape& shape : {Shape{}, Shape{0}, Shape{5}, Shape{3, 4}}) {
        const Tensor index = random_index(shape, 6, index_dtype, gen);
        const std::vector<int64_t> classes = index.to_vector<int64_t>();
        std::vector<double> expected(classes.size() * 6, 0.0);
        for (size_t i = 0; i < classes.size(); ++i) expected[i * 6 + size_t(classes[i])] = 1.0;
        Shape out_shape = shape;
        out_shape.push_back(6);
        INFO(name(index_dtype) << " -> " << name(dtype) << " " << shape);
        const Tensor out = ops::one_hot(transposed_layout(index), 6, dtype);
        CHECK(out.dtype() == dtype);
        CHECK(out.shape() == out_shape);
        CHECK(out.to_vector<double>() == expected);
      }
    }
  }
}
