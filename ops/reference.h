// Naive f64 references: the oracle every fast kernel is tested against.
//
// Each is the op's definition written as plain loops over indices, in f64, with no care for
// speed; inputs of any dtype and layout are read as f64 and results are f64 tensors. They
// share no code with the kernels beyond reading elements.
#pragma once

#include <optional>
#include <vector>

#include "ops/ops.h"

namespace lamina::ops::reference {

Tensor unary(UnaryOp op, const Tensor& x);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);  // broadcasting
Tensor reduce_sum(const Tensor& x, const Shape& dims, bool keepdim);
Tensor reduce_mean(const Tensor& x, const Shape& dims, bool keepdim);
Tensor reduce_max(const Tensor& x, const Shape& dims, bool keepdim);
Tensor reduce_min(const Tensor& x, const Shape& dims, bool keepdim);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim);  // -> i64
Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim);
Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim);
Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
Tensor embedding(const Tensor& weight, const Tensor& ids);
Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps);
Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config);
std::vector<float> rope_frequencies_from_spec(const RopeConfig& config);  // f64, rounded to f32 once
Tensor swiglu(const Tensor& gate, const Tensor& up);
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index);  // per-token losses
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& options);
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);
Tensor gather(const Tensor& x, int64_t dim, const Tensor& index);
Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src);
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim);
// One AdamW step on f64 copies; returns the new {param, exp_avg, exp_avg_sq}.
std::vector<Tensor> adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                               const Tensor& exp_avg_sq, const AdamWStep& hyper);

}  // namespace lamina::ops::reference

namespace lamina::ops::reference {

// Per-token log softmax(logits / temperature)[label] where mask is true, else 0 (f64).
Tensor token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, double temperature);
// {entropy, logit_mean, log_sum_sq_probs, argmax_matches (as 0/1)} per token, f64; 0 where masked.
std::vector<Tensor> token_distribution_stats(const Tensor& logits, const Tensor& labels, const Tensor& mask,
                                             double temperature);
Tensor log1mexp(const Tensor& x);  // log(1 - exp(x)) in long double

}  // namespace lamina::ops::reference

namespace lamina::ops::reference {

// Attention under an AttentionPattern, evaluating its `allowed` predicate per element with
// plain loops in f64: {out [B, Hq, Tq, D], lse [B, Hq, Tq]} (0 and -inf for a row that sees
// no key), and the backward {dq, dk, dv} from grad_out, all f64 (ops/reference_attention.cpp).
std::vector<Tensor> flash_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                                    std::optional<double> scale = std::nullopt);
std::vector<Tensor> flash_attention_backward(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                                             const AttentionPattern& pattern, std::optional<double> scale = std::nullopt);
// ops::cached_attention's oracle: every (query, key) pair in plain loops, the predicate written
// out again from the spec -> {out, lse}, f64.
std::vector<Tensor> cached_attention(const Tensor& q, const std::vector<PositionedKeys>& runs,
                                     const AttentionPattern& pattern, std::optional<double> scale = std::nullopt);

}  // namespace lamina::ops::reference
