// adamw_step_ against ops::reference::adamw_step over several steps.
#include <cmath>
#include <cstring>
#include <limits>

#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

ops::AdamWStep hyper_for_step(int64_t step) {
  ops::AdamWStep hyper;
  hyper.lr = 1e-2;
  hyper.beta1 = 0.9;
  hyper.beta2 = 0.99;
  hyper.eps = 1e-8;
  hyper.weight_decay = 0.1;
  hyper.step = step;
  return hyper;
}

Tensor f64_copy(const Tensor& t) { return Tensor::from_vector(t.to_vector<double>(), t.shape(), DType::f64); }

}  // namespace

TEST_CASE("adamw_step_ follows the reference step by step") {
  struct Case {
    DType param, grad;
  };
  const Case cases[] = {{DType::f32, DType::f32}, {DType::f64, DType::f64}, {DType::bf16, DType::bf16},
                        {DType::bf16, DType::f32}, {DType::f32, DType::bf16}};
  Generator gen(101);
  for (const Case& c : cases) {
    const DType state = c.param == DType::f64 ? DType::f64 : DType::f32;
    // 300 elements: more than one vector's worth, with a tail.
    const Tensor param = random_tensor({3, 100}, c.param, gen);
    const Tensor exp_avg = zeros({3, 100}, state), exp_avg_sq = zeros({3, 100}, state);
    for (int64_t step = 1; step <= 5; ++step) {
      const Tensor grad = random_tensor({3, 100}, c.grad, gen);
      const ops::AdamWStep hyper = hyper_for_step(step);
      // Expected from the current (already rounded) state, so each step is checked on its own.
      const std::vector<Tensor> expected = ops::reference::adamw_step(param, grad, exp_avg, exp_avg_sq, hyper);
      ops::adamw_step_(param, grad, exp_avg, exp_avg_sq, hyper);
      INFO(name(c.param) << " param, " << name(c.grad) << " grad, step " << step);
      CHECK_CLOSE(param, expected[0], tolerance_for(c.param));
      CHECK_CLOSE(exp_avg, expected[1], tolerance_for(state));
      CHECK_CLOSE(exp_avg_sq, expected[2], tolerance_for(state));
    }
  }
}

TEST_CASE("adamw_step_ over five steps stays on the f64 trajectory") {
  Generator gen(102);
  for (DType dtype : {DType::f32, DType::f64}) {
    const Tensor param = random_tensor({17}, dtype, gen);
    const Tensor exp_avg = zeros({17}, dtype), exp_avg_sq = zeros({17}, dtype);
    Tensor ref_param = f64_copy(param), ref_avg = f64_copy(exp_avg), ref_avg_sq = f64_copy(exp_avg_sq);
    for (int64_t step = 1; step <= 5; ++step) {
      const Tensor grad = random_tensor({17}, dtype, gen);
      const ops::AdamWStep hyper = hyper_for_step(step);
      ops::adamw_step_(param, grad, exp_avg, exp_avg_sq, hyper);
      const std::vector<Tensor> next = ops::reference::adamw_step(ref_param, grad, ref_avg, ref_avg_sq, hyper);
      ref_param = next[0];
      ref_avg = next[1];
      ref_avg_sq = next[2];
    }
    INFO(name(dtype));
    CHECK_CLOSE(param, ref_param, tolerance_for(dtype));
    CHECK_CLOSE(exp_avg, ref_avg, tolerance_for(dtype));
    CHECK_CLOSE(exp_avg_sq, ref_avg_sq, tolerance_for(dtype));
  }
}

TEST_CASE("adamw_step_ without gradient signal only decays the weights") {
  const Tensor param = Tensor::from_vector(std::vector<double>{2, -4}, {2}, DType::f64);
  const Tensor grad = zeros({2}, DType::f64), exp_avg = zeros({2}, DType::f64), exp_avg_sq = zeros({2}, DType::f64);
  ops::AdamWStep hyper = hyper_for_step(1);
  ops::adamw_step_(param, grad, exp_avg, exp_avg_sq, hyper);
  // p (1 - lr wd) - lr * 0 / (0 + eps) = p * 0.999
  CHECK_CLOSE(param, Tensor::from_vector(std::vector<double>{2 * 0.999, -4 * 0.999}, {2}, DType::f64),
              tolerance_for(DType::f64));
  CHECK(exp_avg_sq.to_vector<double>() == std::vector<double>{0, 0});
}

TEST_CASE("adamw_step_ rejects state it cannot update in place") {
  const Tensor param = zeros({2, 3});
  const Tensor grad = zeros({2, 3});
  const Tensor state = zeros({2, 3});
  const Tensor strided_state = noncontiguous(zeros({2, 3}));
  CHECK_THROWS_WITH_AS(ops::adamw_step_(param, grad, strided_state, state, {}),
                       doctest::Contains("adamw_step_: 'exp_avg' must be contiguous"), Error);
  CHECK_THROWS_WITH_AS(ops::adamw_step_(param, grad, state, zeros({2, 3}, DType::f64), {}),
                       doctest::Contains("adamw_step_: 'exp_avg_sq' must have dtype f32, got f64"), Error);
  CHECK_THROWS_WITH_AS(ops::adamw_step_(param, zeros({3, 2}), state, state, {}),
                       doctest::Contains("adamw_step_: 'grad' must have shape [2, 3], got [3, 2]"), Error);
  ops::AdamWStep zero_step;
  zero_step.step = 0;
  CHECK_THROWS_WITH_AS(ops::adamw_step_(param, grad, state, state, zero_step),
                       doctest::Contains("adamw_step_: step must be >= 1"), Error);
}

TEST_CASE("adamw_step_ writes the rounded weights in the same pass as the master's update") {
  // Mixed precision: the f32 master is updated and the bf16 (or f16) weight must equal that master
  // rounded to nearest even, bit for bit, as ops::copy_ rounds it after the step.
  Generator gen(7);
  for (DType weight_dtype : {DType::bf16, DType::f16}) {
    const Tensor master = random_tensor({5, 77}, DType::f32, gen);  // 385 elements: a tail
    const Tensor master_twin = ops::cast(master, DType::f32);
    const Tensor exp_avg = zeros({5, 77}, DType::f32), exp_avg_sq = zeros({5, 77}, DType::f32);
    const Tensor exp_avg_twin = zeros({5, 77}, DType::f32), exp_avg_sq_twin = zeros({5, 77}, DType::f32);
    const Tensor weight = zeros({5, 77}, weight_dtype), weight_twin = zeros({5, 77}, weight_dtype);
    for (int64_t step = 1; step <= 3; ++step) {
      const Tensor grad = random_tensor({5, 77}, weight_dtype, gen);
      ops::adamw_step_(master, grad, exp_avg, exp_avg_sq, hyper_for_step(step), weight);
      ops::adamw_step_(master_twin, grad, exp_avg_twin, exp_avg_sq_twin, hyper_for_step(step));
      ops::copy_(weight_twin, master_twin);
      INFO(name(weight_dtype) << " step " << step);
      CHECK(master.to_vector<double>() == master_twin.to_vector<double>());
      CHECK(weight.to_vector<double>() == weight_twin.to_vector<double>());
      CHECK(weight.to_vector<double>() != zeros({5, 77}, weight_dtype).to_vector<double>());
    }
  }
  CHECK_THROWS_WITH_AS(ops::adamw_step_(zeros({4}), zeros({4}), zeros({4}), zeros({4}), hyper_for_step(1), zeros({4})),
                       doctest::Contains("'rounded' must be bf16 or f16, got f32"), Error);
  CHECK_THROWS_WITH_AS(
      ops::adamw_step_(zeros({4}), zeros({4}), zeros({4}), zeros({4}), hyper_for_step(1), zeros({3}, DType::bf16)),
      doctest::Contains("'rounded' must have shape [4]"), Error);
}

TEST_CASE("adamw_step_ gives the same bits on 1 and 3 threads; NaN and infinity round as copy_ rounds them") {
  // 100003 elements: three chunks on three threads, each ending inside a vector, so that some
  // elements fall in a scalar tail on one thread count and in the vector loop on the other.
  Generator gen(8);
  const int64_t n = 100003;
  std::vector<Tensor> masters, weights;
  const Tensor initial = random_tensor({n}, DType::f32, gen);
  std::vector<std::vector<Tensor>> grads;
  for (int64_t step = 1; step <= 2; ++step) grads.push_back({random_tensor({n}, DType::f32, gen)});
  // A NaN and an infinite gradient: the master becomes NaN there, the bf16 copy a quiet NaN.
  float* first_grad = static_cast<float*>(grads[0][0].raw_data());
  first_grad[5] = std::numeric_limits<float>::quiet_NaN();
  first_grad[77777] = std::numeric_limits<float>::infinity();
  // A NaN master whose payload is all ones: rounding it as a number would carry into the sign
  // bit (0x7fffffff + 0x8000 wraps to -0); x86 keeps the payload through the arithmetic.
  const uint32_t nan_all_ones = 0x7fffffffu;
  std::memcpy(static_cast<float*>(initial.raw_data()) + 9, &nan_all_ones, sizeof(nan_all_ones));
  for (int threads : {1, 3}) {
    ThreadCountGuard guard(threads);
    const Tensor master = ops::cast(initial, DType::f32);
    const Tensor exp_avg = zeros({n}, DType::f32), exp_avg_sq = zeros({n}, DType::f32);
    const Tensor weight = zeros({n}, DType::bf16);
    for (int64_t step = 1; step <= 2; ++step)
      ops::adamw_step_(master, grads[size_t(step - 1)][0], exp_avg, exp_avg_sq, hyper_for_step(step), weight);
    masters.push_back(master);
    weights.push_back(weight);
  }
  CHECK(std::memcmp(masters[0].raw_data(), masters[1].raw_data(), size_t(n) * sizeof(float)) == 0);
  CHECK(std::memcmp(weights[0].raw_data(), weights[1].raw_data(), size_t(n) * sizeof(uint16_t)) == 0);
  const Tensor copied = zeros({n}, DType::bf16);
  ops::copy_(copied, masters[0]);
  CHECK(std::memcmp(weights[0].raw_data(), copied.raw_data(), size_t(n) * sizeof(uint16_t)) == 0);
  const float* master = static_cast<const float*>(masters[0].raw_data());
  CHECK(std::isnan(master[5]));
  CHECK(std::isnan(master[77777]));  // inf / sqrt(inf) is NaN
  CHECK(std::isfinite(master[6]));
  const uint16_t* weight = static_cast<const uint16_t*>(weights[0].raw_data());
  CHECK((weight[5] & 0x7fc0u) == 0x7fc0u);  // a quiet NaN
  CHECK((weight[9] & 0x7fc0u) == 0x7fc0u);
}
