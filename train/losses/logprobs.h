// The shared machinery of preference-losses.md §1: from logits to the per-sequence numbers the
// losses consume, plus the log-prob based extras (WPO weights §2.20, LD-DPO sums §2.18).
//
// Layout: a row is prompt + response (+ padding); completion_mask [B, T] is true on response
// tokens. Logits at position t predict token t + 1, so everything is shifted by one:
// logits[:, :-1] score input_ids[:, 1:] under completion_mask[:, 1:].
#pragma once

#include <vector>

#include "train/losses/loss.h"

namespace lamina::train {

// ---- §1.1 per-token log-probs
struct TokenLogps {
  Tensor logps;  // [B, T-1]: log p(token t+1 | ...) in f32 (f64 for f64 logits), 0 off the mask
  Tensor mask;   // [B, T-1] bool: the shifted completion mask
};
// logits [B, T, V] (any float dtype; f32 arithmetic), input_ids [B, T] (i32/i64),
// completion_mask [B, T] (bool or 0/1 numbers). Logits are divided by `temperature` first
// (§1.1 step 6). Fused: only the label's logit and each row's logsumexp are computed, one row
// at a time, reading the shifted view in place; no [B, T, V] log-softmax is ever made.
// Padding ids under a false mask may be anything (they are never read).
TokenLogps completion_logprobs(const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask,
                               double temperature = 1.0);

enum class LogprobReduction { sum, average, per_token };
// [B, T] token log-probs -> [B] sums S, [B] averages S / max(1, |y|), or the masked [B, T].
Tensor reduce_logprobs(const Tensor& token_logps, const Tensor& mask, LogprobReduction reduction);
// [B]: tokens per row of a [B, T] mask, in `dtype` (the |y| of the averaged losses).
Tensor token_counts(const Tensor& mask, DType dtype);

// ---- §1.2 one forward pass for chosen and rejected
struct ConcatenatedPairs {
  Tensor input_ids;        // [2B, T]: chosen rows 0..B-1, rejected rows B..2B-1, right-padded
  Tensor completion_mask;  // [2B, T] bool, false on padding
  int64_t pairs = 0;       // B
};
ConcatenatedPairs concatenate_pairs(const Tensor& chosen_ids, const Tensor& chosen_mask, const Tensor& rejected_ids,
                                    const Tensor& rejected_mask, int64_t pad_id);
struct SplitPairs {
  Tensor chosen, rejected;  // views of rows [0, B) and [B, 2B) (differentiable)
};
SplitPairs split_pairs(const Tensor& per_row, int64_t pairs);

// ---- §1.4 the logit-based standard metrics (no gradient), for a concatenated batch:
// logits/chosen|rejected (response-token average of the vocabulary-mean logit), entropy (mean
// over all response tokens) and mean_token_accuracy (argmax = label on chosen tokens).
void add_logit_metrics(Metrics& metrics, const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask,
                       int64_t pairs, double temperature = 1.0);

// ---- §2.20 WPO: w(y) = exp(mean_t [log p_t(y_t) - log Σ_v p_t(v)²]) per row, no gradient.
Tensor wpo_weights(const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask,
                   double temperature = 1.0);
// The same from per-token log-probs and log Σ_v p_t(v)² (e.g. from ops::token_distribution_stats).
Tensor wpo_weights_from_tokens(const Tensor& token_logps, const Tensor& log_sum_sq_probs, const Tensor& mask);
// W = w(y_w) w(y_l), clamped at 1 when clamp_at_one (TRL v0.19; current TRL does not clamp).
Tensor wpo_pair_weights(const Tensor& chosen_weights, const Tensor& rejected_weights, bool clamp_at_one = false);

// ---- §2.18 LD-DPO: S^LD(y) = Σ_{t <= ℓ} lp_t + α Σ_{t > ℓ} lp_t over the response tokens of
// each row (counted along the mask), ℓ = min(|y_w|, |y_l|) of the pair. Differentiable in lp.
std::vector<double> shared_lengths(const Tensor& chosen_mask, const Tensor& rejected_mask);
Tensor length_desensitized_logps(const Tensor& token_logps, const Tensor& mask, const std::vector<double>& shared,
                                 double alpha);

}  // namespace lamina::train
