// Elementwise backwards where the derivative is a choice rather than a limit: the kinks of
// relu and abs, and ties of maximum and minimum. Everywhere else ops::unary_backward and
// ops::binary_backward (with the broadcast sum) are op cases (tests/op_cases/elementwise.cpp):
// every dtype and layout against the f64 backward in test_op_cases.cpp, the f64 backward against
// finite differences by gradcheck in tests/autograd/test_op_gradcheck.cpp.
#include "op_cases.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;
using ops::UnaryOp;

TEST_CASE("relu and abs backward: the kink at 0 has gradient 0") {
  const Tensor x = Tensor::from_vector(std::vector<double>{-1, 0, 2}, {3});
  const Tensor g = Tensor::from_vector(std::vector<double>{5, 5, 5}, {3});
  CHECK(ops::unary_backward(UnaryOp::relu, g, x, ops::unary(UnaryOp::relu, x)).to_vector<double>() ==
        std::vector<double>{0, 0, 5});
  CHECK(ops::unary_backward(UnaryOp::abs, g, x, ops::unary(UnaryOp::abs, x)).to_vector<double>() ==
        std::vector<double>{-5, 0, 5});
}

TEST_CASE("maximum and minimum backward split the gradient evenly on ties") {
  const Tensor a = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3});
  const Tensor b = Tensor::from_vector(std::vector<double>{2, 2, 1}, {3});
  const Tensor g = Tensor::from_vector(std::vector<double>{4, 4, 4}, {3});
  const auto [max_a, max_b] = ops::binary_backward(BinaryOp::maximum, g, a, b, ops::binary(BinaryOp::maximum, a, b));
  CHECK(max_a.to_vector<double>() == std::vector<double>{0, 2, 4});
  CHECK(max_b.to_vector<double>() == std::vector<double>{4, 2, 0});
  const auto [min_a, min_b] = ops::binary_backward(BinaryOp::minimum, g, a, b, ops::binary(BinaryOp::minimum, a, b));
  CHECK(min_a.to_vector<double>() == std::vector<double>{4, 2, 0});
  CHECK(min_b.to_vector<double>() == std::vector<double>{0, 2, 4});
  // A broadcast b collects the halves of every tie it takes part in.
  const Tensor scalar_b = Tensor::from_vector(std::vector<double>{2}, {1});
  const auto [bcast_a, bcast_b] =
      ops::binary_backward(BinaryOp::maximum, g, a, scalar_b, ops::binary(BinaryOp::maximum, a, scalar_b));
  CHECK(bcast_a.to_vector<double>() == std::vector<double>{0, 2, 4});
  CHECK(bcast_b.to_vector<double>() == std::vector<double>{6});
}
