// ops::linear_cross_entropy and its backward against the unfused composition (matmul, then
// cross_entropy and cross_entropy_backward, then the two matmuls of the head's backward)
// computed in f64: every chunk size from 1 to wider than the vocabulary, odd row and vocabulary
// counts, ignored rows, all rows ignored, logits large enough that the running maximum must be
// rescaled across chunks, the gradients one at a time, bf16 inputs, and the argument errors.
//
// Tolerances, all against the f64 composition of the same (already rounded) inputs:
//   f64: tolerance_for(f64) (1e-12 abs + 1e-10 rel): the same sums in another order.
//   f32: tolerance_for(f32) (1e-5 abs + 1e-5 rel).
//   bf16: each logits chunk is rounded to bf16 like matmul's bf16 output, so a loss may move by
//         about |logit| 2^-8; with |logits| < 4 here the bound is 3e-2 abs on losses, and 2e-2
//         abs + 2e-2 rel on the gradients (they are rounded to bf16 too).
#include <cmath>

#include "helpers.h"

using namespace lamina;
using testing::compare;
using testing::random_tensor;
using testing::Tolerance;
using testing::tolerance_for;

namespace {

struct Reference {
  Tensor losses, lse, grad_hidden, grad_weight;
  int64_t target_count = 0;
};

// The unfused composition in f64: logits [N, V] materialised, cross_entropy over them, and the
// head's backward as two plain products.
Reference unfused(const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& grad_losses) {
  const Tensor h = ops::cast(hidden, DType::f64), w = ops::cast(weight, DType::f64);
  const int64_t width = h.size(-1);
  const Tensor rows = ops::contiguous(h).view({-1, width});
  const Tensor logits = ops::matmul(rows, w, false, true);
  const Tensor flat_targets = ops::contiguous(targets).view({-1});
  const ops::CrossEntropyResult forward = ops::cross_entropy(logits, flat_targets);
  const Tensor grad_logits = ops::cross_entropy_backward(ops::cast(grad_losses, DType::f64).reshape({-1}), logits,
                                                         flat_targets, forward.lse);
  Reference out;
  out.losses = forward.losses.reshape(targets.shape());
  out.lse = forward.lse.reshape(targets.shape());
  out.grad_hidden = ops::matmul(grad_logits, w).reshape(hidden.shape());
  out.grad_weight = ops::matmul(grad_logits, rows, true);
  out.target_count = forward.target_count;
  return out;
}

// Targets in [0, vocab) with every `ignore_every`-th flat position set to ignore_index.
Tensor targets_with_ignored(const Shape& shape, int64_t vocab, int64_t ignore_every, Generator& gen) {
  std::vector<int64_t> values = randint(0, vocab, shape, gen).to_vector<int64_t>();
  for (size_t i = 0; i < values.size(); ++i)
    if (ignore_every > 0 && i % size_t(ignore_every) == 1) values[i] = -100;
  return Tensor::from_vector(values, shape);
}

// Forward and backward of the fused op against the f64 composition; the lse only where a target is.
void check_against_unfused(const Tensor& hidden, const Tensor& weight, const Tensor& targets, int64_t chunk,
                           Tolerance loss_tolerance, Tolerance grad_tolerance) {
  INFO("hidden " << hidden.shape() << " " << dtype_name(hidden.dtype()) << ", weight " << weight.shape()
                 << ", chunk " << chunk);
  Generator gen(77);
  const Tensor grad_losses = uniform(targets.shape(), 0.5, 1.5, gen, DType::f32);
  const Reference expected = unfused(hidden, weight, targets, grad_losses);
  const ops::CrossEntropyResult result = ops::linear_cross_entropy(hidden, weight, targets, -100, chunk);
  CHECK(result.target_count == expected.target_count);
  CHECK_CLOSE(result.losses, expected.losses, loss_tolerance);
  const Tensor kept = ops::compare(ops::CompareOp::ne, targets, -100.0);
  CHECK_CLOSE(ops::where(kept, ops::cast(result.lse, DType::f64), zeros_like(expected.lse)),
              ops::where(kept, expected.lse, zeros_like(expected.lse)), loss_tolerance);
  const ops::LinearCrossEntropyGrads grads =
      ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, result.lse, -100, true, true, chunk);
  CHECK(grads.grad_hidden.dtype() == hidden.dtype());
  CHECK(grads.grad_weight.dtype() == weight.dtype());
  CHECK_CLOSE(grads.grad_hidden, expected.grad_hidden, grad_tolerance);
  CHECK_CLOSE(grads.grad_weight, expected.grad_weight, grad_tolerance);
}

}  // namespace

TEST_CASE("linear_cross_entropy: f64 and f32 equal the unfused composition for every chunk size") {
  Generator gen(1);
  const int64_t vocab = 37, width = 11;  // odd, and no chunk size below divides 37
  const Shape rows{3, 5};                // 15 rows in a [B, T] layout
  const Tensor targets = targets_with_ignored(rows, vocab, 4, gen);
  for (DType dtype : {DType::f64, DType::f32}) {
    const Tensor hidden = random_tensor({3, 5, width}, dtype, gen);
    const Tensor weight = random_tensor({vocab, width}, dtype, gen);
    for (int64_t chunk : {int64_t(1), int64_t(2), int64_t(8), int64_t(36), vocab, int64_t(100), int64_t(0)})
      check_against_unfused(hidden, weight, targets, chunk, tolerance_for(dtype), tolerance_for(dtype));
  }
}

TEST_CASE("linear_cross_entropy: strided inputs and rows without any ignored target") {
  Generator gen(2);
  const Tensor hidden = testing::noncontiguous(random_tensor({9, 6}, DType::f64, gen));
  const Tensor weight = testing::transposed_layout(random_tensor({13, 6}, DType::f64, gen));
  const Tensor targets = ops::cast(randint(0, 13, {9}, gen), DType::i32);
  for (int64_t chunk : {int64_t(4), int64_t(0)})
    check_against_unfused(hidden, weight, targets, chunk, tolerance_for(DType::f64), tolerance_for(DType::f64));
}

TEST_CASE("linear_cross_entropy: logits in the hundreds, the maximum in a late chunk, stay exact") {
  // Row r's largest logit sits in a different chunk for each row, so the running maximum of the
  // online log-sum-exp is replaced (and the sum so far rescaled) at different chunks; exp of the
  // raw logits would overflow.
  const int64_t vocab = 23, width = 2;
  std::vector<double> weight_values, hidden_values;
  for (int64_t v = 0; v < vocab; ++v) {
    weight_values.push_back(double(v));
    weight_values.push_back(1.0);
  }
  for (int64_t r = 0; r < 5; ++r) {
    hidden_values.push_back(r % 2 == 0 ? 40.0 : -40.0);  // the maximum at the last or the first column
    hidden_values.push_back(300.0 - 100.0 * double(r));
  }
  const Tensor weight = Tensor::from_vector(weight_values, {vocab, width});
  const Tensor hidden = Tensor::from_vector(hidden_values, {5, width});
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 22, 11, 3, 21}, {5});
  for (int64_t chunk : {int64_t(1), int64_t(5), int64_t(0)})
    check_against_unfused(hidden, weight, targets, chunk, tolerance_for(DType::f64), tolerance_for(DType::f64));
  const ops::CrossEntropyResult f32 = ops::linear_cross_entropy(ops::cast(hidden, DType::f32),
                                                                ops::cast(weight, DType::f32), targets, -100, 3);
  for (double loss : f32.losses.to_vector<double>()) CHECK(std::isfinite(loss));
}

TEST_CASE("linear_cross_entropy: bf16 inputs stay within the bf16 bound of the f64 composition") {
  Generator gen(3);
  const Tensor hidden = random_tensor({2, 7, 16}, DType::bf16, gen);
  const Tensor weight = random_tensor({45, 16}, DType::bf16, gen);
  const Tensor targets = targets_with_ignored({2, 7}, 45, 3, gen);
  for (int64_t chunk : {int64_t(1), int64_t(16), int64_t(0)})
    check_against_unfused(hidden, weight, targets, chunk, {3e-2, 0.0}, tolerance_for(DType::bf16));
  // The statistics are f32: the losses come back in f32, not bf16.
  CHECK(ops::linear_cross_entropy(hidden, weight, targets).losses.dtype() == DType::f32);
}

TEST_CASE("linear_cross_entropy: every row ignored gives loss 0, count 0, zero gradients, no NaN") {
  Generator gen(4);
  const Tensor hidden = random_tensor({4, 3}, DType::f32, gen);
  const Tensor weight = random_tensor({9, 3}, DType::f32, gen);
  const Tensor targets = full({4}, -100, DType::i64);
  const ops::CrossEntropyResult result = ops::linear_cross_entropy(hidden, weight, targets, -100, 2);
  CHECK(result.target_count == 0);
  for (double value : result.losses.to_vector<double>()) CHECK(value == 0.0);
  for (double value : result.lse.to_vector<double>()) CHECK(value == 0.0);
  const ops::LinearCrossEntropyGrads grads =
      ops::linear_cross_entropy_backward(ones({4}), hidden, weight, targets, result.lse, -100, true, true, 2);
  for (double value : grads.grad_hidden.to_vector<double>()) CHECK(value == 0.0);
  for (double value : grads.grad_weight.to_vector<double>()) CHECK(value == 0.0);
  // No rows at all: empty results.
  const ops::CrossEntropyResult empty =
      ops::linear_cross_entropy(zeros({0, 3}), weight, Tensor::from_vector(std::vector<int64_t>{}, {0}));
  CHECK(empty.losses.numel() == 0);
  CHECK(empty.target_count == 0);
}

TEST_CASE("linear_cross_entropy_backward: an unwanted gradient is left undefined, the other unchanged") {
  Generator gen(5);
  const Tensor hidden = random_tensor({6, 4}, DType::f64, gen);
  const Tensor weight = random_tensor({10, 4}, DType::f64, gen);
  const Tensor targets = targets_with_ignored({6}, 10, 3, gen);
  const Tensor grad_losses = uniform({6}, 0.5, 1.5, gen, DType::f64);
  const ops::CrossEntropyResult result = ops::linear_cross_entropy(hidden, weight, targets, -100, 3);
  const ops::LinearCrossEntropyGrads both =
      ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, result.lse, -100, true, true, 3);
  const ops::LinearCrossEntropyGrads only_hidden =
      ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, result.lse, -100, true, false, 3);
  const ops::LinearCrossEntropyGrads only_weight =
      ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, result.lse, -100, false, true, 3);
  CHECK_FALSE(only_hidden.grad_weight.defined());
  CHECK_FALSE(only_weight.grad_hidden.defined());
  CHECK_CLOSE(only_hidden.grad_hidden, both.grad_hidden, tolerance_for(DType::f64));
  CHECK_CLOSE(only_weight.grad_weight, both.grad_weight, tolerance_for(DType::f64));
  // A different ignore_index is honoured: -100 is then an out-of-range target, 7 is skipped.
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, weight, targets, 7), doctest::Contains("target -100"),
                       Error);
}

TEST_CASE("linear_cross_entropy: bad arguments are errors naming the argument") {
  Generator gen(6);
  const Tensor hidden = random_tensor({3, 4}, DType::f32, gen);
  const Tensor weight = random_tensor({5, 4}, DType::f32, gen);
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{0, 5, 1}, {3});
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, weight, targets),
                       doctest::Contains("target 5 at flat position 1 is outside the vocabulary of 5"), Error);
  const Tensor good_targets = Tensor::from_vector(std::vector<int64_t>{0, 4, 1}, {3});
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, random_tensor({5, 3}, DType::f32, gen), good_targets),
                       doctest::Contains("has width 4"), Error);
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, ops::cast(weight, DType::f64), good_targets),
                       doctest::Contains("weight"), Error);
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, weight, Tensor::from_vector(std::vector<int64_t>{0, 1}, {2})),
                       doctest::Contains("targets"), Error);
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy(hidden, weight, good_targets, -100, -1),
                       doctest::Contains("chunk_size"), Error);
}

TEST_CASE("linear_cross_entropy: the backward over the forward's kept logits equals the recomputing one bit for bit") {
  Generator gen(31);
  const Tensor hidden = random_tensor({2, 9, 6}, DType::f32, gen), weight = random_tensor({23, 6}, DType::f32, gen);
  Tensor targets = Tensor::from_vector(std::vector<int64_t>{3, -100, 22, 0, 7, 7, -100, 11, 5,  //
                                                            1, 2, 3, 4, -100, 19, 20, 21, 9},
                                       {2, 9});
  const Tensor grad_losses = uniform({2, 9}, 0.5, 1.5, gen, DType::f32);
  for (int64_t chunk : {0, 4, 23}) {
    CAPTURE(chunk);
    const ops::CrossEntropyResult plain = ops::linear_cross_entropy(hidden, weight, targets, -100, chunk);
    CHECK(plain.logit_chunks.empty());
    ops::CrossEntropyResult kept = ops::linear_cross_entropy(hidden, weight, targets, -100, chunk, true);
    CHECK(kept.logit_chunks.size() == size_t(chunk == 4 ? 6 : 1));
    CHECK(testing::same_bytes(kept.losses, plain.losses));
    const ops::LinearCrossEntropyGrads recomputed =
        ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, plain.lse, -100, true, true, chunk);
    const ops::LinearCrossEntropyGrads reused = ops::linear_cross_entropy_backward(
        grad_losses, hidden, weight, targets, kept.lse, -100, true, true, chunk, kept.logit_chunks);
    CHECK(testing::same_bytes(reused.grad_hidden, recomputed.grad_hidden));
    CHECK(testing::same_bytes(reused.grad_weight, recomputed.grad_weight));
  }
  // Chunks of another chunk size than the backward's are refused, naming both counts.
  const ops::CrossEntropyResult four = ops::linear_cross_entropy(hidden, weight, targets, -100, 4, true);
  CHECK_THROWS_WITH_AS(ops::linear_cross_entropy_backward(grad_losses, hidden, weight, targets, four.lse, -100, true,
                                                          true, 23, four.logit_chunks),
                       doctest::Contains("6 kept logit chunks for 1 chunks"), Error);
}
