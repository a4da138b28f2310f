// Factories (arange, zeros, ones, full) and copies (fill_, copy_, cast, contiguous, clone).
#include <cmath>

#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;

TEST_CASE("arange counts from start towards end by step") {
  struct Case {
    int64_t start, end, step;
    std::vector<double> expected;
  };
  const Case cases[] = {{0, 5, 1, {0, 1, 2, 3, 4}}, {0, 10, 3, {0, 3, 6, 9}}, {5, -3, -2, {5, 3, 1, -1}},
                        {-2, 1, 1, {-2, -1, 0}},   {2, 2, 1, {}},               {3, 1, 1, {}},
                        {1, 3, -1, {}},           {7, 8, 5, {7}}};
  for (const Case& c : cases) {
    for (DType dtype : {DType::i64, DType::i32, DType::f32, DType::f64, DType::bf16}) {
      INFO(c.start << ".." << c.end << " by " << c.step << " " << name(dtype));
      const Tensor t = arange(c.start, c.end, c.step, dtype);
      CHECK(t.dtype() == dtype);
      CHECK(t.shape() == Shape{int64_t(c.expected.size())});
      CHECK(t.to_vector<double>() == c.expected);
    }
  }
  CHECK_THROWS_WITH_AS(arange(0, 4, 0), doctest::Contains("arange: step must not be 0"), Error);
}

TEST_CASE("zeros, ones, full and zeros_like fill every element, in any dtype") {
  for (DType dtype : kAllDTypes) {
    for (const Shape& shape : {Shape{}, Shape{0, 3}, Shape{2, 3}, Shape{1, 4, 1}}) {
      INFO(name(dtype) << " " << shape);
      const auto n = size_t(shape_numel(shape));
      const Tensor z = zeros(shape, dtype), o = ones(shape, dtype), f = full(shape, 2.5, dtype);
      CHECK(z.shape() == shape);
      CHECK(z.dtype() == dtype);
      CHECK(z.is_contiguous());
      CHECK(z.to_vector<double>() == std::vector<double>(n, 0.0));
      CHECK(o.to_vector<double>() == std::vector<double>(n, 1.0));
      // 2.5 is exact in every float dtype; integers truncate, bool is "non-zero".
      const double stored = is_floating(dtype) ? 2.5 : (dtype == DType::boolean ? 1.0 : 2.0);
      CHECK(f.to_vector<double>() == std::vector<double>(n, stored));
      CHECK(zeros_like(f).to_vector<double>() == std::vector<double>(n, 0.0));
      CHECK(zeros_like(f).dtype() == dtype);
    }
  }
  CHECK(full({2}, -3.75, DType::i32).to_vector<double>() == std::vector<double>{-3, -3});
  CHECK(full({1}, 1.0 / 3.0, DType::bf16).to_vector<double>()[0] == double(float(bf16(1.0f / 3.0f))));
  CHECK_THROWS_WITH_AS(zeros({2, -1}), doctest::Contains("negative size in shape [2, -1]"), Error);
}

TEST_CASE("fill_ writes a strided view and nothing else") {
  const Tensor base = zeros({3, 4});
  const Tensor column = views::slice(base, 1, 1, 4, 2);  // columns 1 and 3
  ops::fill_(column, 7.0);
  CHECK(base.to_vector<double>() == std::vector<double>{0, 7, 0, 7, 0, 7, 0, 7, 0, 7, 0, 7});
  const Tensor empty = zeros({0, 2});
  ops::fill_(empty, 1.0);
  CHECK(empty.numel() == 0);
}

TEST_CASE("copy_ broadcasts and casts the source into a strided destination") {
  Generator gen(91);
  for (DType src_dtype : kFloatDTypes) {
    for (DType dst_dtype : kFloatDTypes) {
      const Tensor src = random_tensor({1, 5}, src_dtype, gen);
      const Tensor base = full({3, 10}, -9.0, dst_dtype);
      const Tensor dst = views::slice(base, 1, 0, 10, 2);
      ops::copy_(dst, src);
      // Expected: each source value rounded once to the destination dtype.
      const std::vector<double> values = src.to_vector<double>();
      std::vector<double> rows;
      for (int r = 0; r < 3; ++r) rows.insert(rows.end(), values.begin(), values.end());
      INFO(name(src_dtype) << " -> " << name(dst_dtype));
      CHECK(dst.to_vector<double>() == Tensor::from_vector(rows, {3, 5}, dst_dtype).to_vector<double>());
      CHECK(views::slice(base, 1, 1, 10, 2).to_vector<double>() == std::vector<double>(15, -9.0));
    }
  }
  const Tensor target = zeros({2, 3}, DType::i32);
  ops::copy_(target, Tensor::from_vector(std::vector<double>{2.7, -2.7, 1e12}, {3}, DType::f64));
  CHECK(target.to_vector<double>() == std::vector<double>{2, -2, 2147483647, 2, -2, 2147483647});
  CHECK_THROWS_WITH_AS(ops::copy_(zeros({2, 3}), zeros({2, 2})), doctest::Contains("copy_"), Error);
  CHECK_THROWS_WITH_AS(ops::copy_(views::expand(zeros({1, 3}), {2, 3}), zeros({2, 3})),
                       doctest::Contains("copy_: 'dst' (shape [2, 3], strides [0, 1]) is a broadcast view"), Error);
}

TEST_CASE("cast rounds to nearest even and converts between every dtype pair") {
  // 1 + 2^-8 lies halfway between the bf16 neighbours 1 and 1 + 2^-7: ties go to the even 1.
  const Tensor halfway = Tensor::from_vector(std::vector<double>{1 + 1.0 / 256, 1 + 3.0 / 256, -1 - 1.0 / 256}, {3});
  CHECK(ops::cast(halfway, DType::bf16).to_vector<double>() == std::vector<double>{1, 1 + 4.0 / 256, -1});
  CHECK(ops::cast(halfway, DType::f16).to_vector<double>() ==
        std::vector<double>{1 + 1.0 / 256, 1 + 3.0 / 256, -1 - 1.0 / 256});  // exact in f16
  const Tensor mixed = Tensor::from_vector(std::vector<double>{0, 1, -3, 2.5, 100}, {5});
  const std::vector<double> truncated = {0, 1, -3, 2, 100};
  for (DType from : kAllDTypes) {
    for (DType to : kAllDTypes) {
      if (from == DType::boolean || from == DType::u8 || to == DType::u8) continue;  // value range differs
      const Tensor x = ops::cast(mixed, from);
      std::vector<double> expected = is_floating(from) ? mixed.to_vector<double>() : truncated;
      for (double& v : expected) {
        if (to == DType::boolean) v = v != 0;
        if (!is_floating(to)) v = std::trunc(v);
      }
      INFO(name(from) << " -> " << name(to));
      const Tensor y = ops::cast(transposed_layout(x), to);
      CHECK(y.dtype() == to);
      CHECK(y.to_vector<double>() == expected);
    }
  }
}

TEST_CASE("contiguous returns x itself when already contiguous; clone always copies") {
  Generator gen(92);
  const Tensor x = random_tensor({3, 4}, DType::f32, gen);
  CHECK(ops::contiguous(x).is_same(x));
  const Tensor xt = views::transpose(x, 0, 1);
  const Tensor packed = ops::contiguous(xt);
  CHECK(packed.is_contiguous());
  CHECK(packed.storage() != x.storage());
  CHECK(packed.to_vector<double>() == xt.to_vector<double>());
  const Tensor copy = ops::clone(x);
  CHECK(copy.storage() != x.storage());
  CHECK(copy.to_vector<double>() == x.to_vector<double>());
  ops::fill_(copy, 0.0);
  CHECK(x.to_vector<double>() != copy.to_vector<double>());  // the original is untouched
  const Tensor sliced = in_layout(x, Layout::offset_slice);
  CHECK(ops::clone(sliced).to_vector<double>() == x.to_vector<double>());
  CHECK(ops::to_device(x, Device::cpu()).is_same(x));
}
