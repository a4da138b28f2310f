// Reductions: what a comparison with the f64 oracles does not check. Empty reductions (0 for
// sum, an error for max), argmax's first maximum, sum_to's worked numbers and errors, the tie
// splitting of extremum_backward, and results that do not depend on the thread count. The
// forwards of ops::sum, ops::mean, ops::max, ops::min, ops::argmax, ops::logsumexp, ops::var and
// ops::sum_to over every dim list, keepdim, dtype and layout, and the backwards
// ops::logsumexp_backward, ops::var_backward and ops::extremum_backward, are op cases:
// tests/op_cases/reduce.cpp (test_op_cases.cpp here, gradcheck in tests/autograd/).
#include <cmath>
#include <functional>

#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;

TEST_CASE("sum of an empty dim is 0, max of one throws") {
  const Tensor x = zeros({2, 0, 3});
  const Tensor s = ops::sum(x, {1});
  CHECK(s.shape() == Shape{2, 3});
  CHECK(s.to_vector<double>() == std::vector<double>(6, 0.0));
  CHECK(ops::sum(x, {0}, true).shape() == Shape{1, 0, 3});
  CHECK(ops::max(x, {0}).shape() == Shape{0, 3});  // no output element reduces over nothing
  CHECK_THROWS_WITH_AS(ops::max(x, {1}), doctest::Contains("max: cannot reduce over zero elements"), Error);
  CHECK_THROWS_WITH_AS(ops::argmax(x, 1), doctest::Contains("argmax"), Error);
}

TEST_CASE("argmax returns the first maximum") {
  const Tensor ties = Tensor::from_vector(std::vector<double>{1, 3, 3, 0}, {4});
  CHECK(ops::argmax(ties, 0).item<int64_t>() == 1);
  const Tensor columns = Tensor::from_vector(std::vector<double>{2, 5, 2, 5, 1, 5}, {3, 2});
  CHECK(ops::argmax(columns, 0).to_vector<int64_t>() == std::vector<int64_t>{0, 0});
  CHECK(ops::argmax(columns, 1, true).to_vector<int64_t>() == std::vector<int64_t>{1, 1, 1});
}

TEST_CASE("sum_to sums broadcast dims back to the operand shape; it refuses shapes that do not broadcast") {
  const Tensor x = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(ops::sum_to(x, {3}).to_vector<double>() == std::vector<double>{5, 7, 9});
  CHECK(ops::sum_to(x, {2, 1}).to_vector<double>() == std::vector<double>{6, 15});
  CHECK(ops::sum_to(x, {}).to_vector<double>() == std::vector<double>{21});
  CHECK_THROWS_WITH_AS(ops::sum_to(x, {2}), doctest::Contains("sum_to: cannot sum shape [2, 3] to [2]"), Error);
}

TEST_CASE("extremum_backward splits the gradient evenly between ties") {
  const Tensor x = Tensor::from_vector(std::vector<double>{1, 3, 3, 2, 2, 2}, {2, 3});
  const Tensor grad = Tensor::from_vector(std::vector<double>{6, 3}, {2});
  const Tensor out = ops::max(x, {1});
  CHECK(ops::extremum_backward(grad, x, out, {1}, false).to_vector<double>() ==
        std::vector<double>{0, 3, 3, 1, 1, 1});
  const Tensor min_out = ops::min(x, {-1}, true);
  CHECK(ops::extremum_backward(grad.view({2, 1}), x, min_out, {-1}, true).to_vector<double>() ==
        std::vector<double>{6, 0, 0, 1, 1, 1});
  // Over every dim: the single maximum 3 appears twice.
  const Tensor all_grad = Tensor::from_vector(std::vector<double>{10}, {});
  CHECK(ops::extremum_backward(all_grad, x, ops::max(x), {}, false).to_vector<double>() ==
        std::vector<double>{0, 5, 5, 0, 0, 0});
  // Along dim 0 of a transposed view, with keepdim.
  const Tensor xt = transposed_layout(Tensor::from_vector(std::vector<double>{1, 4, 4, 0, 4, 2}, {3, 2}));
  const Tensor column_grad = Tensor::from_vector(std::vector<double>{2, 8}, {1, 2});
  CHECK(ops::extremum_backward(column_grad, xt, ops::max(xt, {0}, true), {0}, true).to_vector<double>() ==
        std::vector<double>{0, 8, 1, 0, 1, 0});
}

TEST_CASE("extremum_backward matches a count of ties over any dims") {
  using ops::BinaryOp;
  Generator gen(64);
  for (DType dtype : kFloatDTypes) {
    const Tensor x = integer_values({3, 4, 5}, dtype, gen, 0, 3);  // ties almost everywhere
    for (const Shape& dims : {Shape{1}, Shape{-1}, Shape{0, 2}, Shape{}}) {
      for (bool keepdim : {false, true}) {
        // mask = (x == max), each element's share = grad / (number of maxima in its group).
        const Tensor peak = ops::reference::reduce_max(x, dims, true);
        const Tensor mask = map_values(ops::reference::binary(BinaryOp::sub, x, peak), [](double d) { return d == 0; });
        const Tensor ties = ops::reference::reduce_sum(mask, dims, true);
        const Tensor grad = random_tensor(ops::reference::reduce_max(x, dims, keepdim).shape(), dtype, gen);
        const Tensor grad_kept = Tensor::from_vector(grad.to_vector<double>(), ties.shape(), DType::f64);
        const Tensor expected =
            ops::reference::binary(BinaryOp::mul, mask, ops::reference::binary(BinaryOp::div, grad_kept, ties));
        INFO(name(dtype) << " dims " << dims << " keepdim " << keepdim);
        const Tensor out = ops::max(x, dims, keepdim);
        CHECK_CLOSE(ops::extremum_backward(grad, noncontiguous(x), out, dims, keepdim), expected, tolerance_for(dtype));
      }
    }
  }
}

TEST_CASE("sum, mean and max are bitwise identical on 1 and 2 threads") {
  Generator gen(65);
  const Tensor x = random_tensor({300, 257}, DType::f32, gen);
  const Tensor xt = transposed_layout(x);
  const std::vector<std::function<Tensor()>> reductions = {
      [&] { return ops::sum(x, {1}); },  [&] { return ops::sum(xt, {0}); }, [&] { return ops::sum(x); },
      [&] { return ops::mean(x, {1}); }, [&] { return ops::mean(xt, {0, 1}); }, [&] { return ops::max(x, {1}); },
      [&] { return ops::max(xt, {0}); }};
  for (size_t i = 0; i < reductions.size(); ++i) {
    std::vector<float> one_thread, two_threads;
    {
      ThreadCountGuard guard(1);
      one_thread = reductions[i]().to_vector<float>();
    }
    {
      ThreadCountGuard guard(2);
      two_threads = reductions[i]().to_vector<float>();
    }
    INFO("reduction " << i);
    CHECK(one_thread == two_threads);
  }
}
