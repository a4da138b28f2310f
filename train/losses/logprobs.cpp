#include "train/losses/logprobs.h"

#include <algorithm>

#include "autograd/autograd.h"
#include "train/losses/common.h"

namespace lamina::train {
namespace {

Tensor as_bool(const Tensor& mask) {
  return mask.dtype() == DType::boolean ? mask : ops::compare(ops::CompareOp::ne, mask, 0.0);
}

void check_rows(const char* what, const Tensor& ids, const Tensor& mask) {
  LAMINA_CHECK(ids.dim() == 2, what, ": input_ids must be [B, T], got shape ", ids.shape());
  LAMINA_CHECK(mask.shape() == ids.shape(), what, ": completion_mask has shape ", mask.shape(), ", input_ids ",
               ids.shape());
}

// The shifted targets: labels = ids[:, 1:], mask = completion_mask[:, 1:].
std::pair<Tensor, Tensor> shifted_targets(const Tensor& input_ids, const Tensor& completion_mask) {
  const int64_t length = input_ids.size(1);
  return {input_ids.detach().slice(1, 1, length), as_bool(completion_mask).detach().slice(1, 1, length)};
}

}  // namespace

TokenLogps completion_logprobs(const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask,
                               double temperature) {
  check_rows("completion_logprobs", input_ids, completion_mask);
  LAMINA_CHECK(logits.dim() == 3 && logits.size(0) == input_ids.size(0) && logits.size(1) == input_ids.size(1),
               "completion_logprobs: logits must be [B, T, V] matching input_ids ", input_ids.shape(), ", got ",
               logits.shape());
  LAMINA_CHECK(input_ids.size(1) >= 2, "completion_logprobs: rows need at least 2 tokens to predict one, got T = ",
               input_ids.size(1));
  const auto [labels, mask] = shifted_targets(input_ids, completion_mask);
  // A view: the fused op reads these rows where they lie, no copy of the logits is made.
  const Tensor predicting = logits.slice(1, 0, logits.size(1) - 1);
  return {token_logprobs(predicting, labels, mask, temperature), mask};
}

Tensor token_counts(const Tensor& mask, DType dtype) { return tensor_like(row_counts(as_bool(mask)), zeros({}, dtype)); }

Tensor reduce_logprobs(const Tensor& token_logps, const Tensor& mask, LogprobReduction reduction) {
  LAMINA_CHECK(token_logps.dim() == 2 && mask.shape() == token_logps.shape(),
               "reduce_logprobs: token_logps and mask must both be [B, T], got ", token_logps.shape(), " and ",
               mask.shape());
  const Tensor kept = as_bool(mask);
  switch (reduction) {
    case LogprobReduction::per_token: return masked(token_logps, kept);
    case LogprobReduction::sum: return masked_row_sum(token_logps, kept);
    case LogprobReduction::average:
      return masked_row_sum(token_logps, kept) / clamp(token_counts(kept, token_logps.dtype()), 1.0, std::nullopt);
  }
  throw Error("reduce_logprobs: unknown reduction");
}

ConcatenatedPairs concatenate_pairs(const Tensor& chosen_ids, const Tensor& chosen_mask, const Tensor& rejected_ids,
                                    const Tensor& rejected_mask, int64_t pad_id) {
  check_rows("concatenate_pairs (chosen)", chosen_ids, chosen_mask);
  check_rows("concatenate_pairs (rejected)", rejected_ids, rejected_mask);
  LAMINA_CHECK(chosen_ids.size(0) == rejected_ids.size(0), "concatenate_pairs: ", chosen_ids.size(0),
               " chosen rows but ", rejected_ids.size(0), " rejected rows");
  const int64_t pairs = chosen_ids.size(0), width = std::max(chosen_ids.size(1), rejected_ids.size(1));
  std::vector<int64_t> ids(size_t(2 * pairs * width), pad_id);
  std::vector<uint8_t> mask(ids.size(), 0);
  const auto place = [&](const Tensor& source_ids, const Tensor& source_mask, int64_t first_row) {
    const std::vector<int64_t> values = source_ids.to_vector<int64_t>();
    const std::vector<bool> kept = as_bool(source_mask).to_vector<bool>();
    const int64_t source_width = source_ids.size(1);
    for (int64_t b = 0; b < pairs; ++b)
      for (int64_t t = 0; t < source_width; ++t) {
        const size_t at = size_t((first_row + b) * width + t), from = size_t(b * source_width + t);
        ids[at] = values[from];
        mask[at] = kept[from] ? 1 : 0;
      }
  };
  place(chosen_ids, chosen_mask, 0);
  place(rejected_ids, rejected_mask, pairs);
  const Tensor id_tensor = Tensor::from_vector(ids, {2 * pairs, width}, chosen_ids.dtype());
  const Tensor mask_tensor = Tensor::from_vector(mask, {2 * pairs, width}, DType::u8);
  return {id_tensor, ops::compare(ops::CompareOp::ne, mask_tensor, 0.0), pairs};
}

SplitPairs split_pairs(const Tensor& per_row, int64_t pairs) {
  LAMINA_CHECK(per_row.dim() >= 1 && per_row.size(0) == 2 * pairs, "split_pairs: expected ", 2 * pairs,
               " rows (chosen then rejected), got shape ", per_row.shape());
  return {per_row.slice(0, 0, pairs), per_row.slice(0, pairs, 2 * pairs)};
}

void add_logit_metrics(Metrics& metrics, const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask,
                       int64_t pairs, double temperature) {
  check_rows("add_logit_metrics", input_ids, completion_mask);
  const autograd::NoGradGuard no_grad;
  const auto [labels, mask] = shifted_targets(input_ids, completion_mask);
  const ops::TokenDistributionStats stats =
      ops::token_distribution_stats(logits.detach().slice(1, 0, logits.size(1) - 1), labels, mask, temperature);
  const std::vector<double> logit_mean = stats.logit_mean.to_vector<double>(), entropy = stats.entropy.to_vector<double>();
  const std::vector<bool> kept = mask.to_vector<bool>(), matches = stats.argmax_matches.to_vector<bool>();
  const size_t width = size_t(labels.size(1)), chosen_end = size_t(pairs) * width;
  double sums[2] = {0, 0}, counts[2] = {0, 0}, entropy_sum = 0, correct = 0;
  for (size_t i = 0; i < kept.size(); ++i) {
    if (!kept[i]) continue;
    const int side = i < chosen_end ? 0 : 1;
    sums[side] += logit_mean[i];
    counts[side] += 1;
    entropy_sum += entropy[i];
    if (side == 0 && matches[i]) correct += 1;
  }
  metrics.add("logits/chosen", counts[0] > 0 ? sums[0] / counts[0] : 0.0);
  metrics.add("logits/rejected", counts[1] > 0 ? sums[1] / counts[1] : 0.0);
  metrics.add("entropy", counts[0] + counts[1] > 0 ? entropy_sum / (counts[0] + counts[1]) : 0.0);
  metrics.add("mean_token_accuracy", counts[0] > 0 ? correct / counts[0] : 0.0);
}

Tensor wpo_weights_from_tokens(const Tensor& token_logps, const Tensor& log_sum_sq_probs, const Tensor& mask) {
  const autograd::NoGradGuard no_grad;
  const Tensor kept = as_bool(mask);
  const Tensor per_token = masked(token_logps.detach() - log_sum_sq_probs.detach(), kept);
  const Tensor counts = clamp(token_counts(kept, per_token.dtype()), 1.0, std::nullopt);
  return exp(sum(per_token, {1}) / counts);
}

Tensor wpo_weights(const Tensor& logits, const Tensor& input_ids, const Tensor& completion_mask, double temperature) {
  check_rows("wpo_weights", input_ids, completion_mask);
  const autograd::NoGradGuard no_grad;
  const auto [labels, mask] = shifted_targets(input_ids, completion_mask);
  const Tensor predicting = logits.detach().slice(1, 0, logits.size(1) - 1);
  const Tensor token_logps = ops::token_logprobs(predicting, labels, mask, temperature).logprobs;
  const ops::TokenDistributionStats stats = ops::token_distribution_stats(predicting, labels, mask, temperature);
  return wpo_weights_from_tokens(token_logps, stats.log_sum_sq_probs, mask);
}

Tensor wpo_pair_weights(const Tensor& chosen_weights, const Tensor& rejected_weights, bool clamp_at_one) {
  const autograd::NoGradGuard no_grad;
  const Tensor product = chosen_weights.detach() * rejected_weights.detach();
  return clamp_at_one ? clamp(product, std::nullopt, 1.0) : product;
}

std::vector<double> shared_lengths(const Tensor& chosen_mask, const Tensor& rejected_mask) {
  const std::vector<double> chosen = row_counts(as_bool(chosen_mask)), rejected = row_counts(as_bool(rejected_mask));
  LAMINA_CHECK(chosen.size() == rejected.size(), "shared_lengths: ", chosen.size(), " chosen rows but ",
               rejected.size(), " rejected rows");
  std::vector<double> shared(chosen.size());
  for (size_t i = 0; i < shared.size(); ++i) shared[i] = std::min(chosen[i], rejected[i]);
  return shared;
}

Tensor length_desensitized_logps(const Tensor& token_logps, const Tensor& mask, const std::vector<double>& shared,
                                 double alpha) {
  const Tensor kept = as_bool(mask);
  LAMINA_CHECK(token_logps.dim() == 2 && kept.shape() == token_logps.shape() &&
                   int64_t(shared.size()) == token_logps.size(0),
               "length_desensitized_logps: token_logps ", token_logps.shape(), ", mask ", kept.shape(), " and ",
               shared.size(), " shared lengths do not match");
  // Weight 1 on the first ℓ response tokens of each row, α after them, 0 off the mask.
  const int64_t rows = kept.size(0), width = kept.size(1);
  const std::vector<bool> flags = kept.to_vector<bool>();
  std::vector<double> weights(flags.size(), 0.0);
  for (int64_t b = 0; b < rows; ++b) {
    double seen = 0;
    for (int64_t t = 0; t < width; ++t) {
      const size_t at = size_t(b * width + t);
      if (!flags[at]) continue;
      seen += 1;
      weights[at] = seen <= shared[size_t(b)] ? 1.0 : alpha;
    }
  }
  const Tensor weight = Tensor::from_vector(weights, kept.shape(), token_logps.dtype());
  return sum(masked(token_logps, kept) * weight, {1});
}

}  // namespace lamina::train
