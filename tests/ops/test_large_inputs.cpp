// Inputs big enough that kernels split them across two threads (chunks of 32K elements that
// start mid-row), plus extreme and NaN values: the paths small random shapes do not reach.
#include <cmath>
#include <limits>

#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;
using ops::UnaryOp;

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
const Tolerance kExact{0, 0};

double smallest_normal(DType dtype) {
  if (dtype == DType::f64) return std::numeric_limits<double>::min();
  if (dtype == DType::f16) return 6.103515625e-05;
  return double(std::numeric_limits<float>::min());  // f32 and bf16 share the exponent range
}

// The f64 reference rounded once to dtype: what an exact kernel stores (inf where it overflows).
Tensor rounded(const Tensor& reference, DType dtype) {
  return Tensor::from_vector(reference.to_vector<double>(), reference.shape(), dtype);
}
}  // namespace

TEST_CASE("elementwise ops over two threads, strided and broadcast") {
  ThreadCountGuard threads(2);
  Generator gen(111);
  for (DType dtype : {DType::f32, DType::bf16, DType::i64}) {
    const bool floating = is_floating(dtype);
    auto values = [&](const Shape& shape) {
      return floating ? random_tensor(shape, dtype, gen, 0.5, 2) : integer_values(shape, dtype, gen, -99, 100);
    };
    const Tensor a = values({301, 257});
    const Tensor column = values({301, 1}), row = values({257});
    INFO(name(dtype));
    // Runs with the second operand broadcast along them, the first, or neither.
    CHECK_CLOSE(ops::add(a, column), ops::reference::binary(BinaryOp::add, a, column), tolerance_for(dtype));
    CHECK_CLOSE(ops::mul(column, a), ops::reference::binary(BinaryOp::mul, column, a), tolerance_for(dtype));
    CHECK_CLOSE(ops::sub(transposed_layout(a), row), ops::reference::binary(BinaryOp::sub, a, row), tolerance_for(dtype));
    CHECK_CLOSE(ops::binary(BinaryOp::maximum, column, row), ops::reference::binary(BinaryOp::maximum, column, row),
                tolerance_for(dtype));
    CHECK_CLOSE(ops::unary(UnaryOp::square, noncontiguous(a)), ops::reference::unary(UnaryOp::square, a),
                tolerance_for(dtype));
    const Tensor condition = integer_values({301, 257}, DType::boolean, gen, 0, 2);
    const Tensor not_condition = ops::reference::binary(BinaryOp::sub, scalar64(1), condition);
    const Tensor picked = ops::reference::binary(BinaryOp::add, ops::reference::binary(BinaryOp::mul, condition, a),
                                                 ops::reference::binary(BinaryOp::mul, not_condition, row));
    CHECK_CLOSE(ops::where(noncontiguous(condition), a, row), picked, tolerance_for(dtype));
    const Tensor dst = noncontiguous(zeros({301, 257}, DType::f64));
    ops::copy_(dst, transposed_layout(a));
    CHECK_CLOSE(dst, a, kExact);
    ops::fill_(dst, 3.0);
    CHECK_CLOSE(dst, full({301, 257}, 3.0, DType::f64), kExact);
    CHECK(ops::sum(views::as_strided(dst, {301, 257}, {514, 2}, 1)).item<double>() == 0);  // the gaps
  }
}

TEST_CASE("reductions and index ops over two threads") {
  ThreadCountGuard threads(2);
  Generator gen(112);
  const Tensor x = random_tensor({40, 30, 70}, DType::f32, gen);
  for (Layout layout : kLayouts) {
    const Tensor view = in_layout(x, layout);
    for (const Shape& dims : {Shape{0}, Shape{1}, Shape{2}, Shape{0, 2}, Shape{}}) {
      INFO(name(layout) << " dims " << dims);
      CHECK_CLOSE(ops::sum(view, dims), ops::reference::reduce_sum(x, dims, false), tolerance_for(DType::f32));
      CHECK_CLOSE(ops::max(view, dims, true), ops::reference::reduce_max(x, dims, true), tolerance_for(DType::f32));
      CHECK_CLOSE(ops::var(view, dims), ops::reference::var(x, dims, 1, false), tolerance_for(DType::f32));
    }
  }
  // Rows of 600 columns: index_add works in blocks of 256 columns.
  const Tensor src = integer_values({3, 5, 600}, DType::f32, gen, -9, 10);
  const std::vector<int64_t> rows = {1, 0, 1, 3, 1};
  std::vector<int64_t> spread(size_t(src.numel()));
  for (size_t p = 0; p < spread.size(); ++p) spread[p] = rows[(p / 600) % 5];
  const Tensor expected = ops::reference::scatter_add(zeros({3, 4, 600}, DType::f64), 1,
                                                      Tensor::from_vector(spread, {3, 5, 600}, DType::i64), src);
  CHECK_CLOSE(ops::index_add({3, 4, 600}, 1, Tensor::from_vector(rows, {5}, DType::i64), src), expected, kExact);
  const Tensor index = integer_values({40, 30, 70}, DType::i64, gen, 0, 40);
  CHECK_CLOSE(ops::gather(transposed_layout(x), 0, index), ops::reference::gather(x, 0, index), kExact);
  const Tensor picked_rows = integer_values({50}, DType::i32, gen, 0, 40);
  CHECK_CLOSE(ops::index_select(x, 0, picked_rows), ops::reference::index_select(x, 0, picked_rows), kExact);
}

TEST_CASE("unary ops at extreme inputs match the reference rounded to the dtype") {
  struct Extreme {
    UnaryOp op;
    std::vector<double> inputs;
  };
  const std::vector<double> wide = {-1e4, -200, -110, -104.5, -100, -88, -20, -1e-3, 0, 1e-3, 20, 88, 88.7, 89, 100, 1e4};
  const std::vector<double> positive = {1e-30, 1e-6, 0.5, 1, 3, 1e6, 1e30};
  const Extreme cases[] = {
      {UnaryOp::exp, wide},     {UnaryOp::sigmoid, wide},  {UnaryOp::silu, wide},        {UnaryOp::tanh, wide},
      {UnaryOp::gelu, wide},    {UnaryOp::softplus, wide}, {UnaryOp::log_sigmoid, wide}, {UnaryOp::relu, wide},
      {UnaryOp::log, positive}, {UnaryOp::sqrt, positive}, {UnaryOp::rsqrt, positive},   {UnaryOp::reciprocal, positive},
  };
  for (const Extreme& c : cases) {
    for (DType dtype : kFloatDTypes) {
      const Tensor x = Tensor::from_vector(c.inputs, {int64_t(c.inputs.size())}, dtype);
      INFO(name(c.op) << " " << name(dtype));
      // Relative accuracy down to the smallest normal number; results below it may flush to 0.
      const Tolerance tol{smallest_normal(dtype), tolerance_for(dtype).rtol};
      CHECK_CLOSE(ops::unary(c.op, x), rounded(ops::reference::unary(c.op, x), dtype), tol);
    }
  }
}

TEST_CASE("NaN propagates through maximum, minimum, max, min and argmax") {
  const Tensor a = Tensor::from_vector(std::vector<double>{kNaN, 1, 2}, {3});
  const Tensor b = Tensor::from_vector(std::vector<double>{1, kNaN, 3}, {3});
  for (BinaryOp op : {BinaryOp::maximum, BinaryOp::minimum}) {
    const std::vector<double> out = ops::binary(op, a, b).to_vector<double>();
    INFO(name(op));
    CHECK(std::isnan(out[0]));
    CHECK(std::isnan(out[1]));
    CHECK(out[2] == (op == BinaryOp::maximum ? 3 : 2));
  }
  const Tensor rows = Tensor::from_vector(std::vector<double>{1, kNaN, 5, 7, 2, 3}, {2, 3});
  CHECK(std::isnan(ops::max(rows, {1}).to_vector<double>()[0]));
  CHECK(ops::max(rows, {1}).to_vector<double>()[1] == 7);
  CHECK(std::isnan(ops::min(rows).item<double>()));
  CHECK(ops::argmax(rows, 1).to_vector<int64_t>() == std::vector<int64_t>{1, 0});
  CHECK(ops::logsumexp(Tensor::from_vector(std::vector<double>{-kInf, -kInf}, {2}), {0}).item<double>() == -kInf);
}
