// Bad arguments throw lamina::Error with a message naming the op and the offending shapes,
// dtypes or devices.
#include <functional>

#include "op_cases.h"
#include "tensor/cuda_runtime.h"

using namespace lamina;
using namespace lamina::testing;
using ops::BinaryOp;
using ops::CompareOp;
using ops::UnaryOp;

namespace {

struct ErrorCase {
  const char* what;
  std::function<void()> call;
  const char* message;  // a fragment of the expected message
};

Tensor f32(const Shape& shape) { return zeros(shape, DType::f32); }
Tensor i64(const std::vector<int64_t>& values) {
  return Tensor::from_vector(values, {int64_t(values.size())}, DType::i64);
}

}  // namespace

TEST_CASE("shape errors name the op and both shapes") {
  const ErrorCase cases[] = {
      {"add", [] { ops::add(f32({2, 3}), f32({4})); }, "add: shapes [2, 3] and [4] cannot be broadcast together"},
      {"compare", [] { ops::compare(CompareOp::lt, f32({2}), f32({3})); }, "compare: shapes [2] and [3]"},
      {"where", [] { ops::where(ones({3}, DType::boolean), f32({2, 3}), f32({2, 2})); }, "where: shapes [2, 3] and [2, 2]"},
      {"masked_fill",
       [] { ops::masked_fill(f32({3}), ones({2, 3}, DType::boolean), 0); },
       "masked_fill: mask [2, 3] does not broadcast to x [3]"},
      {"matmul inner",
       [] { ops::matmul(f32({2, 3}), f32({4, 5})); },
       "matmul: inner dimensions differ: a [2, 3] has 3, b [4, 5] has 4"},
      {"matmul transposed",
       [] { ops::matmul(f32({2, 3}), f32({4, 5}), true, true); },
       "matmul: inner dimensions differ: a [2, 3] (transposed) has 2, b [4, 5] (transposed) has 5"},
      {"matmul batch", [] { ops::matmul(f32({2, 2, 3}), f32({3, 3, 4})); }, "matmul: shapes [2] and [3]"},
      {"matmul 1-D", [] { ops::matmul(f32({3}), f32({3, 2})); }, "matmul: operands need at least 2 dims, got [3]"},
      {"unary_backward",
       [] { ops::unary_backward(UnaryOp::exp, f32({2}), f32({3}), f32({3})); },
       "exp_backward: 'grad_out' must have shape [3], got [2]"},
      {"clamp_backward",
       [] { ops::clamp_backward(f32({2}), f32({2, 1}), 0.0, 1.0); },
       "clamp_backward: 'grad_out' must have shape [2, 1], got [2]"},
      {"cat", [] { ops::cat({f32({2, 3}), f32({2, 4})}, 0); }, "cat: tensor 1 has shape [2, 4], tensor 0 has [2, 3]"},
      {"index_add src",
       [] { ops::index_add({4, 3}, 0, i64({0, 1}), f32({3, 3})); },
       "index_add: 'src' must have shape [2, 3], got [3, 3]"},
      {"gather rank", [] { ops::gather(f32({3, 4}), 1, zeros({3}, DType::i64)); }, "gather: index [3] must have as many dims as [3, 4]"},
      {"scatter_add src",
       [] { ops::scatter_add(f32({3, 4}), 1, zeros({3, 2}, DType::i64), f32({3, 3})); },
       "scatter_add: 'src' must have shape [3, 2], got [3, 3]"},
      {"index_select 2-D index",
       [] { ops::index_select(f32({3, 4}), 0, zeros({1, 1}, DType::i64)); },
       "index_select: 'index' must have 1 dims, got shape [1, 1]"},
      {"sum dim", [] { ops::sum(f32({2, 3}), {3}); }, "sum: dim 3 out of range for a tensor with 2 dims"},
      {"max negative dim", [] { ops::max(f32({2, 3}), {-3}); }, "max: dim -3 out of range for a tensor with 2 dims"},
      {"argmax dim", [] { ops::argmax(f32({2, 3}), 2); }, "argmax: dim 2 out of range"},
      {"var repeated dim", [] { ops::var(f32({2, 3}), {1, -1}); }, "var: dim -1 listed twice in [1, -1]"},
      {"adamw shape",
       [] { ops::adamw_step_(f32({2, 3}), f32({2, 3}), f32({6}), f32({2, 3}), {}); },
       "adamw_step_: 'exp_avg' must have shape [2, 3], got [6]"},
  };
  for (const ErrorCase& c : cases) {
    INFO(std::string(c.what));
    CHECK_THROWS_WITH_AS(c.call(), doctest::Contains(c.message), Error);
  }
}

TEST_CASE("dtype errors name the op and the dtypes") {
  const ErrorCase cases[] = {
      {"mixed add", [] { ops::add(f32({2}), zeros({2}, DType::f64)); }, "add: 'b' has dtype f64 but 'a' has f32"},
      {"mixed matmul", [] { ops::matmul(f32({2, 2}), zeros({2, 2}, DType::bf16)); }, "matmul: 'b' has dtype bf16"},
      {"integer exp", [] { ops::exp(zeros({2}, DType::i32)); }, "exp: 'x' must be floating (f32, f64, bf16, f16), got i32"},
      {"integer div", [] { ops::div(zeros({2}, DType::i64), zeros({2}, DType::i64)); }, "div: 'input' must be floating"},
      {"bool neg", [] { ops::neg(zeros({2}, DType::boolean)); }, "neg: expected an arithmetic dtype, got bool"},
      {"integer mean", [] { ops::mean(zeros({2}, DType::i32)); }, "mean: 'x' must be floating"},
      {"bool sum", [] { ops::sum(zeros({2}, DType::boolean)); }, "sum: expected an arithmetic dtype"},
      {"bool argmax", [] { ops::argmax(zeros({2}, DType::u8), 0); }, "argmax: expected an arithmetic dtype"},
      {"integer matmul", [] { ops::matmul(zeros({2, 2}, DType::i32), zeros({2, 2}, DType::i32)); }, "matmul: 'a' must be floating"},
      {"integer unary_backward",
       [] { ops::unary_backward(UnaryOp::neg, zeros({2}, DType::i32), zeros({2}, DType::i32), zeros({2}, DType::i32)); },
       "neg_backward: 'x' must be floating"},
      {"compare dtypes", [] { ops::compare(CompareOp::eq, f32({2}), zeros({2}, DType::i32)); }, "compare: 'b' has dtype i32"},
      {"float mask", [] { ops::masked_fill(f32({2}), f32({2}), 0); }, "masked_fill: 'mask' must have dtype bool, got f32"},
      {"float condition", [] { ops::where(f32({2}), f32({2}), f32({2})); }, "where: 'condition' must have dtype bool"},
      {"logical_and", [] { ops::logical_and(f32({2}), ones({2}, DType::boolean)); }, "logical_and: 'a' must have dtype bool"},
      {"float index", [] { ops::index_select(f32({3}), 0, f32({1})); }, "index_select: 'index' must hold integer indices"},
      {"cat dtypes", [] { ops::cat({f32({2}), zeros({2}, DType::f64)}, 0); }, "cat: tensor 1 has dtype f64, tensor 0 has f32"},
      {"adamw state dtype",
       [] { ops::adamw_step_(zeros({2}, DType::f64), zeros({2}, DType::f64), f32({2}), f32({2}), {}); },
       "adamw_step_: 'exp_avg' must have dtype f64, got f32"},
      {"integer adamw", [] { ops::adamw_step_(zeros({2}, DType::i32), f32({2}), f32({2}), f32({2}), {}); },
       "adamw_step_: 'param' must be floating"},
  };
  for (const ErrorCase& c : cases) {
    INFO(std::string(c.what));
    CHECK_THROWS_WITH_AS(c.call(), doctest::Contains(c.message), Error);
  }
}

TEST_CASE("index errors name the op, the index and the size") {
  const ErrorCase cases[] = {
      {"index_select", [] { ops::index_select(f32({4, 2}), 0, i64({1, 4})); },
       "index_select: index 4 at flat position 1 is out of range for size 4"},
      {"index_select negative", [] { ops::index_select(f32({4, 2}), 1, i64({-1})); },
       "index_select: index -1 at flat position 0 is out of range for size 2"},
      {"gather", [] { ops::gather(f32({2, 3}), 1, Tensor::from_vector(std::vector<int64_t>{0, 3}, {2, 1})); },
       "gather: index 3 at flat position 1 is out of range for size 3"},
      {"scatter_add", [] { ops::scatter_add(f32({2, 3}), 0, i64({2}).view({1, 1}), f32({1, 1})); },
       "scatter_add: index 2 at flat position 0 is out of range for size 2"},
      {"index_add", [] { ops::index_add({3}, 0, i64({5}), f32({1})); }, "index_add: index 5 at flat position 0"},
      {"one_hot", [] { ops::one_hot(i64({0, 3}), 3); }, "one_hot: index 3 at flat position 1 is out of range for size 3"},
      {"one_hot negative", [] { ops::one_hot(i64({-2}), 3); }, "one_hot: index -2"},
      {"one_hot classes", [] { ops::one_hot(i64({0}), 0); }, "one_hot: num_classes must be positive, got 0"},
      {"split", [] { ops::split(f32({5}), {2, -1, 4}, 0); }, "split: negative size in [2, -1, 4]"},
  };
  for (const ErrorCase& c : cases) {
    INFO(std::string(c.what));
    CHECK_THROWS_WITH_AS(c.call(), doctest::Contains(c.message), Error);
  }
}

TEST_CASE("argument errors: bounds, steps and hyperparameters") {
  CHECK_THROWS_WITH_AS(ops::clamp(f32({2}), 1.0, -1.0), doctest::Contains("clamp: low 1 is above high -1"), Error);
  CHECK_THROWS_WITH_AS(ops::var(f32({2}), {0}, -1), doctest::Contains("var: correction must be non-negative"), Error);
  ops::AdamWStep bad_beta;
  bad_beta.beta2 = 1.0;
  CHECK_THROWS_WITH_AS(ops::adamw_step_(f32({2}), f32({2}), f32({2}), f32({2}), bad_beta),
                       doctest::Contains("adamw_step_: betas must be in [0, 1), got 0.9 and 1"), Error);
  CHECK_THROWS_WITH_AS(ops::sum(Tensor(), {}), doctest::Contains("sum"), Error);
}

TEST_CASE("device errors name the device and the op") {
  if (cuda_backend_built()) {
    // CUDA devices exist in this build: the error is an index with no usable device behind it.
    const int missing = cuda_availability().device_count;  // no GPU here, or one past the last
    const std::string where = str_cat("device cuda:", missing);
    CHECK_THROWS_WITH_AS(zeros({2}, DType::f32, Device::cuda(missing)), doctest::Contains(("zeros: " + where).c_str()),
                         Error);
    CHECK_THROWS_WITH_AS(arange(0, 3, 1, DType::i64, Device::cuda(missing)),
                         doctest::Contains(("arange: " + where).c_str()), Error);
    Generator gen(1);
    CHECK_THROWS_WITH_AS(uniform({2}, 0, 1, gen, DType::f32, Device::cuda(missing)),
                         doctest::Contains(("uniform: " + where).c_str()), Error);
    CHECK_THROWS_WITH_AS(ops::to_device(f32({2}), Device::cuda(missing)), doctest::Contains(where.c_str()), Error);
    return;
  }
  CHECK_THROWS_WITH_AS(zeros({2}, DType::f32, Device::cuda(0)), doctest::Contains("zeros: no kernel for device cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(ones({2}, DType::f32, Device::cuda(1)), doctest::Contains("ones: no kernel for device cuda:1"),
                       Error);
  CHECK_THROWS_WITH_AS(full({2}, 1.0, DType::f32, Device::cuda(0)), doctest::Contains("full: no kernel for device cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(arange(0, 3, 1, DType::i64, Device::cuda(0)), doctest::Contains("arange: no kernel for device cuda:0"),
                       Error);
  Generator gen(1);
  CHECK_THROWS_WITH_AS(uniform({2}, 0, 1, gen, DType::f32, Device::cuda(0)), doctest::Contains("uniform"), Error);
  CHECK_THROWS_WITH_AS(ops::to_device(f32({2}), Device::cuda(0)),
                       doctest::Contains("to_device: cannot move a tensor from cpu to cuda:0"), Error);
}
