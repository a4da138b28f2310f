// matmul: what a comparison with the f64 oracle does not check. A transposed view is the same
// product as the transpose flag (read in place), K = 0 gives zeros, and the split over threads
// does not change results. ops::matmul and ops::matmul_backward over every transpose flag,
// batch shape, broadcast, empty dim, dtype and layout are op cases: tests/op_cases/matmul.cpp
// (test_op_cases.cpp here, gradcheck in tests/autograd/).
#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;

TEST_CASE("matmul of transposed views equals matmul with transpose flags") {
  Generator gen(72);
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    const Tensor a_stored = random_tensor({2, 5, 3}, dtype, gen);  // a^T, stored
    const Tensor b_stored = random_tensor({4, 5}, dtype, gen);     // b^T, stored
    const Tensor a_view = views::transpose(a_stored, -1, -2);       // [2, 3, 5], no copy
    const Tensor b_view = views::transpose(b_stored, 0, 1);         // [5, 4], no copy
    CHECK(a_view.storage() == a_stored.storage());
    const Tensor expected = ops::reference::matmul(a_stored, b_stored, true, true);
    INFO(name(dtype));
    CHECK_CLOSE(ops::matmul(a_view, b_view), expected, tolerance_for(dtype));
    CHECK_CLOSE(ops::matmul(a_view, b_stored, false, true), expected, tolerance_for(dtype));
    CHECK_CLOSE(ops::matmul(a_stored, b_view, true, false), expected, tolerance_for(dtype));
    // An expanded (stride-0 batch) operand.
    const Tensor shared = views::expand(random_tensor({1, 3, 5}, dtype, gen), {4, 3, 5});
    CHECK_CLOSE(ops::matmul(shared, b_view), ops::reference::matmul(shared, b_view, false, false), tolerance_for(dtype));
  }
}

TEST_CASE("matmul with K = 0 gives zeros, also into a batch") {
  const Tensor out = ops::matmul(zeros({2, 3, 0}), zeros({0, 4}));
  CHECK(out.shape() == Shape{2, 3, 4});
  CHECK(out.to_vector<double>() == std::vector<double>(24, 0.0));
  CHECK(ops::matmul(ones({0, 3}), ones({0, 2}), true, false).to_vector<double>() == std::vector<double>(6, 0.0));
}

TEST_CASE("matmul splits large products over threads without changing results") {
  Generator gen(73);
  struct Large {
    Shape a, b;
    bool transpose_a, transpose_b;
  };
  // Row blocks, column blocks (few rows, many columns) and a batch of two on two threads.
  const Large cases[] = {{{70, 33}, {33, 5}, false, false},
                         {{3, 33}, {150, 33}, false, true},
                         {{33, 3}, {33, 150}, true, false},
                         {{2, 40, 20}, {20, 50}, false, false},
                         {{2, 20, 40}, {2, 50, 20}, true, true}};
  for (const Large& c : cases) {
    const Tensor a = random_tensor(c.a, DType::f32, gen), b = random_tensor(c.b, DType::f32, gen);
    const Tensor expected = ops::reference::matmul(a, b, c.transpose_a, c.transpose_b);
    Tensor one_thread, two_threads;
    {
      ThreadCountGuard guard(1);
      one_thread = ops::matmul(a, b, c.transpose_a, c.transpose_b);
    }
    {
      ThreadCountGuard guard(2);
      two_threads = ops::matmul(a, b, c.transpose_a, c.transpose_b);
    }
    INFO("a " << c.a << ", b " << c.b);
    // f32 sums of up to 50 products of values in [-1, 1].
    const Tolerance tol{5e-5, 1e-5};
    CHECK_CLOSE(one_thread, expected, tol);
    CHECK_CLOSE(two_threads, expected, tol);
    CHECK_CLOSE(two_threads, one_thread, tol);
  }
}

TEST_CASE("matmul f32: the inner dimension is summed in pieces, so the error does not grow with it") {
  // Random normal operands in f32; the reference is the same f32 values multiplied in f64. A
  // single f32 accumulator along K (what Eigen's kernel does within its cache block) gives a
  // relative error that grows with K: 4.3e-7 at K = 576 and 5.2e-7 at K = 4096 on this
  // machine. Summed in pieces of 256 it stays near 3e-7 whatever K is (2.8e-7 and 3.0e-7).
  const auto relative_error = [](int64_t inner) {
    Generator generator(7);
    const Tensor a = randn({128, inner}, generator, DType::f32), b = randn({inner, 96}, generator, DType::f32);
    const std::vector<double> got = ops::matmul(a, b).to_vector<double>();
    const std::vector<double> exact = ops::matmul(ops::cast(a, DType::f64), ops::cast(b, DType::f64)).to_vector<double>();
    double error = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      error += (got[i] - exact[i]) * (got[i] - exact[i]);
      norm += exact[i] * exact[i];
    }
    return std::sqrt(error / norm);
  };
  const double narrow = relative_error(576), wide = relative_error(4096);
  INFO("relative error at K=576: " << narrow << ", at K=4096: " << wide);
  CHECK(wide < 4e-7);
  CHECK(wide < 1.15 * narrow);
}
