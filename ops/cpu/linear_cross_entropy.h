// Row kernels of the fused LM head + cross-entropy (ops/linear_cross_entropy.cpp): they work on
// one chunk of logits [R, c] at a time, the columns [first_column, first_column + c) of the
// vocabulary, so that the [R, V] logits never exist at once.
#pragma once

#include <cstdint>

#include "tensor/tensor.h"

namespace lamina::ops::cpu {

// Online log-sum-exp over the vocabulary chunks. running_max and running_sum [R] (f32; f64 for
// f64 logits) hold, per row, the largest logit m seen so far and sum exp(x - m) over the columns
// seen so far; target_logit [R] takes the target's logit when the target falls in this chunk.
// logits [R, c] contiguous; targets [R] (i32/i64) in range or ignore_index.
void linear_cross_entropy_update(const Tensor& running_max, const Tensor& running_sum, const Tensor& target_logit,
                                 const Tensor& logits, const Tensor& targets, int64_t first_column,
                                 int64_t ignore_index);
// After the last chunk: lse = m + log(sum), loss = lse - target_logit (0 at ignore_index).
void linear_cross_entropy_finish(const Tensor& losses, const Tensor& lse, const Tensor& running_max,
                                 const Tensor& running_sum, const Tensor& target_logit, const Tensor& targets,
                                 int64_t ignore_index);
// In place: logits [R, c] become the chunk of the logits' gradient,
//   g_r (exp(x[r, j] - lse_r) - [first_column + j = t_r]),  0 on rows whose target is ignore_index.
// grad_losses and lse [R] in the statistics' dtype (f32; f64 for f64 logits).
void linear_cross_entropy_chunk_gradient(const Tensor& logits, const Tensor& grad_losses, const Tensor& lse,
                                         const Tensor& targets, int64_t first_column, int64_t ignore_index);

}  // namespace lamina::ops::cpu
