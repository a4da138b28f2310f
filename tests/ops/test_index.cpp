// Indexing and joining against the f64 references: cat, split, index_select, index_add,
// gather, scatter_add and one_hot, with i32 and i64 indices, repeats, strided and empty inputs.
#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

const Tolerance kExact{0, 0};
const DType kValueDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64};

Tensor values_for(const Shape& shape, DType dtype, Generator& gen) {
  return is_floating(dtype) ? random_tensor(shape, dtype, gen) : integer_values(shape, dtype, gen, -100, 100);
}

// Index values of `shape` in [0, limit), stored as `dtype` (repeats are likely).
Tensor random_index(const Shape& shape, int64_t limit, DType dtype, Generator& gen) {
  return integer_values(shape, dtype, gen, 0, limit);
}

}  // namespace

TEST_CASE("cat joins along any dim, including empty pieces and strided inputs") {
  Generator gen(81);
  for (DType dtype : kValueDTypes) {
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank, 4);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const size_t d = size_t(normalize_dim(dim, rank, "test"));
        std::vector<Tensor> pieces;
        for (int64_t size : {int64_t(2), int64_t(0), int64_t(3), int64_t(1)}) {
          Shape piece = shape;
          piece[d] = size;
          pieces.push_back(values_for(piece, dtype, gen));
        }
        std::vector<Tensor> laid_out;
        for (size_t i = 0; i < pieces.size(); ++i) laid_out.push_back(in_layout(pieces[i], kLayouts[i % 4]));
        INFO(name(dtype) << " " << shape << " dim " << dim);
        const Tensor out = ops::cat(laid_out, dim);
        CHECK(out.dtype() == dtype);
        CHECK_CLOSE(out, ops::reference::cat(pieces, dim), kExact);
      }
    }
  }
  CHECK(ops::cat({zeros({2, 3})}, 1).shape() == Shape{2, 3});
}

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

TEST_CASE("index_select picks rows along any dim with repeated and empty indices") {
  Generator gen(83);
  for (DType dtype : kValueDTypes) {
    for (DType index_dtype : kIntDTypes) {
      for (int64_t rank = 1; rank <= 4; ++rank) {
        const Shape shape = random_shape(gen, rank, 5);
        const Tensor x = values_for(shape, dtype, gen);
        for (int64_t dim = -rank; dim < rank; ++dim) {
          for (int64_t count : {int64_t(0), int64_t(1), int64_t(7)}) {
            const Tensor index = random_index({count}, x.size(dim), index_dtype, gen);
            INFO(name(dtype) << " " << shape << " dim " << dim << " index " << index.to_vector<int64_t>().size());
            const Tensor out = ops::index_select(transposed_layout(x), dim, noncontiguous(index));
            CHECK_CLOSE(out, ops::reference::index_select(x, dim, index), kExact);
          }
        }
      }
    }
  }
}

TEST_CASE("index_add accumulates src rows into the indexed rows of zeros") {
  Generator gen(84);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::i32, DType::i64}) {
    for (int64_t rank = 1; rank <= 3; ++rank) {
      const Shape shape = random_shape(gen, rank, 5);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const int64_t d = normalize_dim(dim, rank, "test");
        const std::vector<int64_t> rows = random_ints(gen, 6, 0, shape[size_t(d)]);  // repeats likely
        const Tensor index = Tensor::from_vector(rows, {6}, DType::i64);
        Shape src_shape = shape;
        src_shape[size_t(d)] = 6;
        // Integer values: exact sums in every dtype, so repeats must add up exactly.
        const Tensor src = integer_values(src_shape, dtype, gen, -20, 21);
        // index_add == scatter_add into zeros with index[i] spread over every src position.
        std::vector<int64_t> spread(size_t(shape_numel(src_shape)));
        const Shape strides = contiguous_strides(src_shape);
        for (size_t p = 0; p < spread.size(); ++p) spread[p] = rows[size_t((int64_t(p) / strides[size_t(d)]) % 6)];
        const Tensor expected = ops::reference::scatter_add(zeros(shape, DType::f64), d,
                                                            Tensor::from_vector(spread, src_shape, DType::i64), src);
        INFO(name(dtype) << " " << shape << " dim " << dim);
        const Tensor out = ops::index_add(shape, dim, index, noncontiguous(src));
        CHECK(out.dtype() == dtype);
        CHECK_CLOSE(out, expected, kExact);
      }
    }
  }
}

TEST_CASE("gather reads x at the index along dim") {
  Generator gen(85);
  for (DType dtype : kValueDTypes) {
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank, 5);
      const Tensor x = values_for(shape, dtype, gen);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const int64_t d = normalize_dim(dim, rank, "test");
        Shape index_shape;  // no larger than x off `dim`, any size along it
        for (int64_t k = 0; k < rank; ++k) index_shape.push_back(k == d ? 4 : random_ints(gen, 1, 1, shape[size_t(k)] + 1)[0]);
        for (DType index_dtype : kIntDTypes) {
          const Tensor index = random_index(index_shape, shape[size_t(d)], index_dtype, gen);
          INFO(name(dtype) << " " << shape << " dim " << dim << " index " << index_shape);
          const Tensor out = ops::gather(in_layout(x, kLayouts[size_t(d) % 4]), dim, transposed_layout(index));
          CHECK(out.shape() == index_shape);
          CHECK_CLOSE(out, ops::reference::gather(x, dim, index), kExact);
        }
      }
    }
  }
}

TEST_CASE("scatter_add: repeated indices accumulate") {
  const Tensor base = Tensor::from_vector(std::vector<double>{1, 1, 1, 1}, {1, 4});
  const Tensor index = Tensor::from_vector(std::vector<int64_t>{2, 2, 0, 2}, {1, 4});
  const Tensor src = Tensor::from_vector(std::vector<double>{10, 20, 30, 40}, {1, 4});
  const Tensor out = ops::scatter_add(base, 1, index, src);
  CHECK(out.to_vector<double>() == std::vector<double>{31, 1, 71, 1});
  CHECK(base.to_vector<double>() == std::vector<double>{1, 1, 1, 1});  // base is not modified

  Generator gen(86);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    for (int64_t rank = 1; rank <= 3; ++rank) {
      const Shape shape = random_shape(gen, rank, 4);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const int64_t d = normalize_dim(dim, rank, "test");
        Shape index_shape;
        for (int64_t k = 0; k < rank; ++k) index_shape.push_back(k == d ? 6 : random_ints(gen, 1, 1, shape[size_t(k)] + 1)[0]);
        const Tensor base_values = integer_values(shape, dtype, gen, -20, 21);
        const Tensor src_values = integer_values(index_shape, dtype, gen, -20, 21);  // exact sums
        const Tensor idx = random_index(index_shape, shape[size_t(d)], DType::i64, gen);
        INFO(name(dtype) << " " << shape << " dim " << dim << " index " << index_shape);
        const Tensor result = ops::scatter_add(noncontiguous(base_values), dim, idx, transposed_layout(src_values));
        CHECK_CLOSE(result, ops::reference::scatter_add(base_values, dim, idx, src_values), kExact);
      }
    }
  }
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
