// RL policy-gradient losses, preference-losses.md §7: PPO-clip with GAE and a value loss, GRPO
// with its aggregation modes (and the Dr. GRPO, DAPO, SimpleRL-Zoo settings of it), RLOO and
// REINFORCE++. Notation: lp the current per-token log-probs (gradient), lo the behaviour ones
// (absent: lo = sg(lp), a single gradient step per rollout batch), lr the reference ones,
// ρ = exp(lp - lo), ℓ_t = -min(ρ A, clip(ρ, 1-ε_low, 1+ε_high) A).
#include "train/losses/policy_gradient.h"

#include <algorithm>
#include <cmath>

#include "train/losses/advantages.h"
#include "train/losses/common.h"

namespace lamina::train {
namespace {

// The per-token tensors of a batch, zeroed under the mask before any arithmetic (padding may
// hold anything; a NaN there must not reach the gradient through 0 * NaN).
struct Rollout {
  Tensor mask;                 // [B, T] bool
  std::vector<bool> kept;      // the same, flat
  Tensor policy;               // lp, masked, on the graph
  Tensor old;                  // lo (or sg(lp))
  Tensor reference;            // lr, undefined when not given
  std::vector<double> lengths; // |y_i|
  int64_t rows = 0;
  double tokens = 0;           // Σ mask
};

Rollout read_rollout(const LossInputs& inputs) {
  Rollout rollout;
  rollout.mask = inputs.get("completion_mask");
  rollout.kept = rollout.mask.to_vector<bool>();
  rollout.rows = rollout.mask.size(0);
  rollout.policy = masked(inputs.get("policy_token_logps"), rollout.mask);
  const Tensor* old = inputs.find("old_token_logps");
  rollout.old = old != nullptr ? masked(*old, rollout.mask) : rollout.policy.detach();
  if (const Tensor* reference = inputs.find("reference_token_logps")) rollout.reference = masked(*reference, rollout.mask);
  rollout.lengths = row_counts(rollout.mask);
  for (double length : rollout.lengths) rollout.tokens += length;
  return rollout;
}

Tensor token_tensor(const std::vector<double>& values, const Tensor& like) {
  return Tensor::from_vector(values, like.shape(), like.dtype());
}

Tensor per_row(const std::vector<double>& values, const Tensor& like) {
  return Tensor::from_vector(values, {int64_t(values.size()), 1}, like.dtype());
}

// ℓ = max(-ρ A, -clip(ρ, 1-low, 1+high) A); `capped` is ρ with GRPO's optional upper cap δ.
Tensor clipped_surrogate(const Tensor& ratio, const Tensor& capped, const Tensor& advantages, double low, double high) {
  return maximum(-(capped * advantages), -(clamp(ratio, 1.0 - low, 1.0 + high) * advantages));
}

// Σ M x / Σ M over the whole batch (the token mean; 0 for a batch without tokens).
Tensor token_mean(const Tensor& x, const Rollout& rollout) {
  return sum(masked(x, rollout.mask)) / std::max(1.0, rollout.tokens);
}

double kept_mean(const std::vector<double>& values, const std::vector<bool>& kept) {
  double total = 0, count = 0;
  for (size_t i = 0; i < values.size(); ++i)
    if (kept[i]) total += values[i], count += 1;
  return count > 0 ? total / count : 0.0;
}

// Fractions of kept tokens clipped below (ρ < 1-ε_low with A < 0) and above (ρ > 1+ε_high, A > 0).
void add_clip_metrics(Metrics& metrics, const Tensor& ratio, const std::vector<double>& token_advantages,
                      const Rollout& rollout, double low, double high) {
  const std::vector<double> rho = values_of(ratio.expand(rollout.mask.shape()));
  std::vector<double> low_clipped(rho.size()), high_clipped(rho.size()), region(rho.size());
  for (size_t i = 0; i < rho.size(); ++i) {
    low_clipped[i] = rho[i] < 1 - low && token_advantages[i] < 0 ? 1.0 : 0.0;
    high_clipped[i] = rho[i] > 1 + high && token_advantages[i] > 0 ? 1.0 : 0.0;
    region[i] = std::max(low_clipped[i], high_clipped[i]);
  }
  metrics.add("clip_ratio/low_mean", kept_mean(low_clipped, rollout.kept));
  metrics.add("clip_ratio/high_mean", kept_mean(high_clipped, rollout.kept));
  metrics.add("clip_ratio/region_mean", kept_mean(region, rollout.kept));
}

// Per-token advantages from one value per row.
std::vector<double> broadcast_rows(const std::vector<double>& row_values, const Rollout& rollout) {
  const size_t width = rollout.kept.size() / size_t(rollout.rows);
  std::vector<double> out(rollout.kept.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = row_values[i / width];
  return out;
}

}  // namespace

// ---- §7.1 PPO-clip: rewards -c_KL KL_t plus the score at the last token, GAE, optional
// whitening; L = masked mean ℓ + c_v ½ masked mean max((V - G)², (V_clip - G)²).
LossResult ppo_clip_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Rollout rollout = read_rollout(inputs);
  require(rollout.reference.defined(), params, "needs reference_token_logps (the KL penalty of the reward)");
  const std::vector<double> old = values_of(rollout.old), reference = values_of(rollout.reference);
  const std::vector<double> old_values = values_of(masked(inputs.get("old_values"), rollout.mask));
  const std::vector<double> scores = values_of(inputs.get("scores"));
  const double kl_coef = params.real("kl_coef");
  const bool k3 = params.choice("kl_estimator") == "k3";
  std::vector<double> kl(old.size(), 0.0), token_rewards(old.size(), 0.0), kl_sums(size_t(rollout.rows), 0.0);
  for (size_t i = 0; i < old.size(); ++i) {
    if (!rollout.kept[i]) continue;
    const double u = reference[i] - old[i];  // log(π_ref / π_behaviour)
    kl[i] = k3 ? std::exp(u) - u - 1 : -u;
    token_rewards[i] = -kl_coef * kl[i];
    kl_sums[i / (old.size() / size_t(rollout.rows))] += kl[i];
  }
  const std::vector<int64_t> last = last_kept_positions(rollout.kept, rollout.rows);
  for (int64_t b = 0; b < rollout.rows; ++b)
    if (last[size_t(b)] >= 0) token_rewards[size_t(last[size_t(b)])] += scores[size_t(b)];
  std::vector<double> advantages = generalized_advantages(token_rewards, old_values, rollout.kept, rollout.rows,
                                                          params.real("gamma"), params.real("lam"));
  std::vector<double> returns(advantages.size());
  for (size_t i = 0; i < returns.size(); ++i) returns[i] = advantages[i] + old_values[i];  // from unwhitened A
  if (params.flag("whiten_advantages")) whiten(advantages, rollout.kept);

  const double epsilon = params.real("epsilon"), value_epsilon = params.real("value_epsilon");
  const Tensor advantage = token_tensor(advantages, rollout.policy);
  const Tensor ratio = exp(rollout.policy - rollout.old);
  const Tensor policy_loss = token_mean(clipped_surrogate(ratio, ratio, advantage, epsilon, epsilon), rollout);
  const Tensor values = masked(inputs.get("values"), rollout.mask);
  const Tensor old_value_tensor = token_tensor(old_values, values);
  const Tensor target = token_tensor(returns, values);
  const Tensor clipped_values = old_value_tensor + clamp(values - old_value_tensor, -value_epsilon, value_epsilon);
  const Tensor value_terms = maximum(square(values - target), square(clipped_values - target));
  const Tensor value_loss = token_mean(value_terms, rollout) * 0.5;

  Metrics metrics;
  std::vector<double> rlhf_rewards(scores.size());
  for (size_t b = 0; b < scores.size(); ++b) rlhf_rewards[b] = scores[b] - kl_coef * kl_sums[b];
  metrics.add("objective/kl", mean_of(kl_sums));
  metrics.add("objective/scores", mean_of(scores));
  metrics.add("objective/rlhf_reward", mean_of(rlhf_rewards));
  metrics.add("loss/policy", policy_loss.item<double>());
  metrics.add("loss/value", value_loss.item<double>());
  const std::vector<double> log_ratio = values_of(rollout.policy - rollout.old);
  std::vector<double> approx_kl(log_ratio.size()), value_clipped(log_ratio.size());
  const std::vector<double> unclipped = values_of(square(values - target)), clipped = values_of(square(clipped_values - target));
  for (size_t i = 0; i < log_ratio.size(); ++i) {
    approx_kl[i] = 0.5 * log_ratio[i] * log_ratio[i];
    value_clipped[i] = clipped[i] > unclipped[i] ? 1.0 : 0.0;
  }
  metrics.add("policy/approxkl", kept_mean(approx_kl, rollout.kept));
  add_clip_metrics(metrics, ratio, advantages, rollout, epsilon, epsilon);
  metrics.add("value/clipfrac", kept_mean(value_clipped, rollout.kept));
  return batch_result(policy_loss + value_loss * params.real("vf_coef"), std::move(metrics));
}

// ---- §7.2 GRPO (and its Dr. GRPO / DAPO / SimpleRL-Zoo settings): group-normalised advantage
// per completion, a per-token policy term chosen by loss_type, + β k3_t (times ρ with TRL's
// use_bias_correction_kl), aggregated by loss_type. Follows TRL 1.16 GRPOTrainer._compute_loss:
//   clipped (grpo, bnpo, dapo, dr_grpo): ℓ_t = -min(ρ_cap A, clip(ρ, 1-ε_low, 1+ε_high) A)
//   cispo: ℓ_t = -sg(min(ρ, ε_high)) A lp_t        (ε_high unset = ε, as TRL)
//   sapo:  ℓ_t = -(4/τ) σ(τ (ρ - 1)) A,  τ = sapo_temperature_pos if A > 0 else _neg
// Aggregation: grpo, sapo: mean over sequences of the per-sequence token mean; bnpo: token mean;
// dapo, cispo: token sum / token_normalizer; dr_grpo: token sum / (B x max_completion_length).
// All but dapo and cispo divide by gradient_accumulation_steps; the entropy bonus, a token mean,
// is divided by it for every loss_type (so that it sums to one mean over an accumulated step).
LossResult grpo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Rollout rollout = read_rollout(inputs);
  std::vector<double> rewards = values_of(inputs.get("rewards"));
  if (params.flag("overlong_shaping")) {
    const double max_length = double(params.integer("overlong_max_length"));
    const double buffer = double(params.integer("overlong_buffer_length"));
    require(buffer <= max_length, params, "needs overlong_buffer_length <= overlong_max_length");
    for (size_t i = 0; i < rewards.size(); ++i) rewards[i] += overlong_penalty(rollout.lengths[i], max_length, buffer);
  }
  const int64_t group_size = params.integer("num_generations");
  require(rollout.rows % group_size == 0, params,
          str_cat("the batch of ", rollout.rows, " completions is not a whole number of groups of num_generations = ",
                  group_size));
  const std::string& scale = params.choice("scale_rewards");
  const std::vector<double> advantages =
      group_advantages(rewards, group_size, scale, params.real("advantage_std_epsilon"));
  const Tensor advantage = per_row(advantages, rollout.policy);

  Tensor log_ratio = rollout.policy - rollout.old;
  if (params.choice("importance_sampling_level") == "sequence") {  // GSPO: one ratio per sequence
    const Tensor lengths = per_row(rollout.lengths, rollout.policy);
    log_ratio = sum(log_ratio, {1}, true) / clamp(lengths, 1.0, std::nullopt);
  }
  const Tensor ratio = exp(log_ratio);  // TRL's coef_1, on the graph
  const double low = params.real("epsilon");
  const double high = params.is_set("epsilon_high") ? params.real("epsilon_high") : low;
  const std::string& aggregation = params.choice("loss_type");
  Tensor per_token;
  if (aggregation == "cispo") {
    // The clipped ratio is only a weight: the gradient flows through lp (REINFORCE with IS weights).
    const Tensor weight = clamp(ratio, std::nullopt, high).detach();
    per_token = -(weight * advantage * rollout.policy);
  } else if (aggregation == "sapo") {
    std::vector<double> temperatures(advantages.size()), scales(advantages.size());
    for (size_t i = 0; i < advantages.size(); ++i) {
      temperatures[i] = advantages[i] > 0 ? params.real("sapo_temperature_pos") : params.real("sapo_temperature_neg");
      scales[i] = 4.0 / temperatures[i];
    }
    const Tensor gate = sigmoid((ratio - 1.0) * per_row(temperatures, rollout.policy)) * per_row(scales, rollout.policy);
    per_token = -(gate * advantage);
  } else {
    Tensor capped = ratio;
    if (params.is_set("delta")) {
      require(params.real("delta") > 1 + high, params, "delta (the cap on ρ) must exceed 1 + epsilon_high");
      capped = clamp(ratio, std::nullopt, params.real("delta"));
    }
    per_token = clipped_surrogate(ratio, capped, advantage, low, high);
  }
  const double beta = params.real("beta");
  Metrics metrics;
  if (beta > 0) {
    require(rollout.reference.defined(), params, "beta > 0 needs reference_token_logps");
    const Tensor u = rollout.reference - rollout.policy;
    Tensor kl = exp(u) - u - 1.0;
    if (params.is_set("kl_clamp")) kl = clamp(kl, -params.real("kl_clamp"), params.real("kl_clamp"));
    // DeepSeek-V3.2's unbiased KL gradient: k3 weighted by the (differentiable) importance ratio,
    // which changes the gradient even on-policy where ρ = 1.
    if (params.flag("use_bias_correction_kl")) kl = kl * ratio;
    per_token = per_token + kl * beta;
    metrics.add("kl", kept_mean(values_of(kl), rollout.kept));  // TRL logs the corrected term
  }

  const Tensor token_sum = masked(per_token, rollout.mask);
  const bool token_normalized = aggregation == "dapo" || aggregation == "cispo";
  Tensor loss;
  if (aggregation == "grpo" || aggregation == "sapo") {
    loss = mean(sum(token_sum, {1}) / clamp(tensor_like(rollout.lengths, rollout.policy), 1.0, std::nullopt));
  } else if (aggregation == "bnpo") {
    loss = sum(token_sum) / std::max(1.0, rollout.tokens);
  } else if (token_normalized) {
    const Tensor* normalizer = inputs.find("token_normalizer");
    const double divisor = normalizer != nullptr ? normalizer->item<double>() : rollout.tokens;
    require(divisor > 0, params, "the token_normalizer must be > 0");
    loss = sum(token_sum) / divisor;
  } else {  // dr_grpo
    loss = sum(token_sum) / (double(rollout.rows) * double(params.integer("max_completion_length")));
  }
  const double policy_loss = loss.item<double>();  // TRL's policy_loss metric: before the accumulation division
  const double accumulation = double(params.integer("gradient_accumulation_steps"));
  if (!token_normalized) loss = loss / accumulation;

  const double entropy_coef = params.real("entropy_coef");
  if (const Tensor* entropies = inputs.find("token_entropies")) {
    const Tensor entropy = token_mean(*entropies, rollout);
    metrics.add("entropy", entropy.item<double>());
    if (entropy_coef != 0) {
      metrics.add("policy_loss", policy_loss);
      loss = loss - entropy * (entropy_coef / accumulation);
    }
  } else {
    require(entropy_coef == 0, params, "entropy_coef > 0 needs token_entropies");
  }

  // TRL's reward statistics: reward_std over the whole batch; a completion counts towards
  // frac_reward_zero_std when the std its advantage was scaled by (group, or batch) is ~0.
  std::vector<double> zero_std;
  if (scale == "batch") {
    zero_std.push_back(sample_std(rewards) <= 1e-8 ? 1.0 : 0.0);
  } else {
    for (double std : group_stds(rewards, group_size)) zero_std.push_back(std <= 1e-8 ? 1.0 : 0.0);
  }
  metrics.add("reward", mean_of(rewards));
  metrics.add("reward_std", sample_std(rewards));
  metrics.add("frac_reward_zero_std", mean_of(zero_std));
  metrics.add("completions/mean_length", mean_of(rollout.lengths));
  if (aggregation == "cispo") {
    const std::vector<double> rho = values_of(ratio.expand(rollout.mask.shape()));
    const std::vector<double> token_advantages = broadcast_rows(advantages, rollout);
    std::vector<double> clipped(rho.size());
    for (size_t i = 0; i < rho.size(); ++i) clipped[i] = rho[i] > high && token_advantages[i] > 0 ? 1.0 : 0.0;
    metrics.add("cispo_clip_ratio", kept_mean(clipped, rollout.kept));
  } else if (aggregation != "sapo") {
    add_clip_metrics(metrics, ratio, broadcast_rows(advantages, rollout), rollout, low, high);
  }
  return batch_result(loss, std::move(metrics));
}

// ---- §7.4 RLOO on sequence sums, as TRL 1.16's RLOOTrainer: rewards clipped to
// reward_clip_range, then R_i - β (S_old - S_ref) (KL in the reward), leave-one-out advantages,
// then REINFORCE -A S_θ (paper) or the sequence-level PPO clip with ε_low, ε_high (TRL).
LossResult rloo_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Tensor& policy = inputs.get("policy_logps");
  const Tensor old = inputs.has("old_logps") ? inputs.get("old_logps") : policy.detach();
  const std::vector<double> given_rewards = values_of(inputs.get("rewards"));
  std::vector<double> rewards = given_rewards;
  if (params.is_set("reward_clip_range")) {
    const auto [low, high] = params.interval("reward_clip_range");
    for (double& reward : rewards) reward = std::clamp(reward, low, high);
  }
  const double beta = params.real("beta");
  std::vector<double> kl(rewards.size(), 0.0);
  if (beta > 0) {
    require(inputs.has("reference_logps"), params, "beta > 0 needs reference_logps");
    kl = values_of(old - inputs.get("reference_logps"));  // Σ_t k1 of the behaviour policy
    for (size_t i = 0; i < rewards.size(); ++i) rewards[i] -= beta * kl[i];
  }
  const int64_t group_size = params.integer("num_generations");
  std::vector<double> advantages = leave_one_out_advantages(rewards, group_size);
  if (params.flag("normalize_advantages")) {
    const double mean = mean_of(advantages), std = sample_std(advantages);
    for (double& a : advantages) a = (a - mean) / (std + 1e-4);
  }
  const Tensor advantage = tensor_like(advantages, policy);
  const double low = params.real("epsilon");
  const double high = params.is_set("epsilon_high") ? params.real("epsilon_high") : low;
  const Tensor ratio = exp(policy - old);
  const Tensor losses = params.choice("objective") == "reinforce"
                            ? -(advantage * policy)
                            : clipped_surrogate(ratio, ratio, advantage, low, high);
  // TRL's metrics: reward and reward_std of the rewards as given (before clipping and the KL
  // penalty); frac_reward_zero_std of the groups of final rewards; kl the token mean of k1.
  Metrics metrics;
  metrics.add("reward", mean_of(given_rewards));
  metrics.add("reward_std", sample_std(given_rewards));
  std::vector<double> zero_std;
  for (double std : group_stds(rewards, group_size)) zero_std.push_back(std <= 1e-8 ? 1.0 : 0.0);
  metrics.add("frac_reward_zero_std", mean_of(zero_std));
  if (beta > 0) {
    metrics.add("kl_per_sequence", mean_of(kl));
    if (const Tensor* lengths = inputs.find("completion_lengths")) {
      double tokens = 0;
      for (double length : values_of(*lengths)) tokens += length;
      double total = 0;
      for (double value : kl) total += value;
      metrics.add("kl", total / std::max(1.0, tokens));
    }
  }
  const std::vector<double> rho = values_of(ratio);
  std::vector<double> low_clipped(rho.size()), high_clipped(rho.size()), region(rho.size());
  for (size_t i = 0; i < rho.size(); ++i) {
    low_clipped[i] = rho[i] < 1 - low && advantages[i] < 0 ? 1.0 : 0.0;
    high_clipped[i] = rho[i] > 1 + high && advantages[i] > 0 ? 1.0 : 0.0;
    region[i] = std::max(low_clipped[i], high_clipped[i]);
  }
  metrics.add("clip_ratio/low_mean", mean_of(low_clipped));
  metrics.add("clip_ratio/high_mean", mean_of(high_clipped));
  metrics.add("clip_ratio/region_mean", mean_of(region));
  return mean_result(losses, std::move(metrics));
}

// ---- §7.5 REINFORCE++: token rewards -c_KL k1_t plus the outcome (group-centred for the
// baseline variant) at the last token, returns-to-go, normalised over every kept token of the
// batch; token-mean PPO-clip, plus an optional KL loss term.
LossResult reinforce_pp_loss(const LossInputs& inputs, const Hyperparameters& params, LossState*) {
  const Rollout rollout = read_rollout(inputs);
  std::vector<double> outcome = values_of(inputs.get("rewards"));
  if (params.choice("baseline") == "group_mean") outcome = group_centered(outcome, params.integer("num_generations"));
  const double kl_coef = params.real("kl_coef"), kl_loss_coef = params.real("kl_loss_coef");
  require(rollout.reference.defined() || (kl_coef == 0 && kl_loss_coef == 0), params,
          "kl_coef > 0 or kl_loss_coef > 0 needs reference_token_logps");
  const std::vector<double> old = values_of(rollout.old);
  const std::vector<double> reference = rollout.reference.defined() ? values_of(rollout.reference) : old;
  std::vector<double> token_rewards(old.size(), 0.0), k1(old.size(), 0.0);
  for (size_t i = 0; i < old.size(); ++i) {
    if (!rollout.kept[i]) continue;
    k1[i] = old[i] - reference[i];
    token_rewards[i] = -kl_coef * k1[i];
  }
  const std::vector<int64_t> last = last_kept_positions(rollout.kept, rollout.rows);
  for (int64_t b = 0; b < rollout.rows; ++b)
    if (last[size_t(b)] >= 0) token_rewards[size_t(last[size_t(b)])] += outcome[size_t(b)];
  std::vector<double> advantages = returns_to_go(token_rewards, rollout.kept, rollout.rows, params.real("gamma"));
  const double mean_return = kept_mean(advantages, rollout.kept);
  const auto [norm_mean, norm_std] = normalize(advantages, rollout.kept, 1e-8);

  const double epsilon = params.real("epsilon");
  const Tensor ratio = exp(rollout.policy - rollout.old);
  const Tensor advantage = token_tensor(advantages, rollout.policy);
  Tensor loss = token_mean(clipped_surrogate(ratio, ratio, advantage, epsilon, epsilon), rollout);
  if (kl_loss_coef > 0) {
    const Tensor u = rollout.reference - rollout.policy;  // log(π_ref / π_θ)
    const std::string& estimator = params.choice("kl_loss_estimator");
    const Tensor kl = estimator == "k1" ? -u : estimator == "k2" ? square(u) * 0.5 : exp(u) - u - 1.0;
    loss = loss + token_mean(kl, rollout) * kl_loss_coef;
  }
  Metrics metrics;
  metrics.add("reward", mean_of(values_of(inputs.get("rewards"))));
  metrics.add("return", mean_return);
  metrics.add("kl", kept_mean(k1, rollout.kept));
  metrics.add("advantages/mean", norm_mean);
  metrics.add("advantages/std", norm_std);
  add_clip_metrics(metrics, ratio, advantages, rollout, epsilon, epsilon);
  return batch_result(loss, std::move(metrics));
}

}  // namespace lamina::train
