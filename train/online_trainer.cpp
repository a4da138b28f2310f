#include "train/online_trainer.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>

#include "autograd/autograd.h"
#include "models/generate/batch.h"
#include "nn/lora.h"
#include "train/losses/advantages.h"
#include "train/losses/common.h"
#include "train/losses/logprobs.h"
#include "train/metrics.h"
#include "train/sampler.h"
#include "train/trainer.h"

namespace lamina::train {
namespace {

// SplitMix64's finaliser: the sampling seed of each step, the fingerprint of the prompts' fields.
uint64_t mix(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

// The sampling seed of a step: unrelated to the epoch orders' (a different constant is mixed in).
uint64_t step_seed(uint64_t seed, int64_t step) { return mix(seed ^ mix(uint64_t(step) ^ 0x5A17E5EEDull)); }

Tensor on(const Tensor& t, Device device) { return t.device() == device ? t : ops::to_device(t, device); }

// Eval mode (no LoRA dropout) for a scope, training mode again however it ends.
struct EvalMode {
  llama::LlamaForCausalLM& model;
  explicit EvalMode(llama::LlamaForCausalLM& m) : model(m) { model.eval(); }
  ~EvalMode() { model.train(); }
};

// The seed of an iteration pool's order: unrelated to the sampling and epoch seeds.
constexpr uint64_t kPoolOrderSalt = 0x1735A7E0D5EEDull;

// A pair loss's inputs (online_dpo, inpo, rebel, spin) from the pairs' summed log-probs: the
// policy's with gradient; the reference's (undefined when the loss reads none) and the
// iterate's (INPO's and REBEL's π_t, SPIN's opponent) without; the rewards.
LossInputs pair_loss_inputs(const std::string& loss, const Tensor& policy_chosen, const Tensor& policy_rejected,
                            const Tensor& reference_chosen, const Tensor& reference_rejected,
                            const Tensor& iterate_chosen, const Tensor& iterate_rejected,
                            const std::vector<double>& chosen_scores, const std::vector<double>& rejected_scores) {
  LossInputs inputs;
  if (loss == "spin") {
    inputs.set("policy_real_logps", policy_chosen).set("policy_generated_logps", policy_rejected);
    inputs.set("opponent_real_logps", iterate_chosen).set("opponent_generated_logps", iterate_rejected);
    return inputs;
  }
  const bool rebel = loss == "rebel";
  inputs.set(rebel ? "policy_first_logps" : "policy_chosen_logps", policy_chosen);
  inputs.set(rebel ? "policy_second_logps" : "policy_rejected_logps", policy_rejected);
  if (reference_chosen.defined()) {
    inputs.set("reference_chosen_logps", reference_chosen);
    inputs.set("reference_rejected_logps", reference_rejected);
  }
  if (loss == "inpo") {
    inputs.set("iterate_chosen_logps", iterate_chosen);
    inputs.set("iterate_rejected_logps", iterate_rejected);
  }
  if (rebel) {
    inputs.set("iterate_first_logps", iterate_chosen);
    inputs.set("iterate_second_logps", iterate_rejected);
    inputs.set("first_rewards", tensor_like(chosen_scores, policy_chosen));
    inputs.set("second_rewards", tensor_like(rejected_scores, policy_chosen));
  }
  if (loss == "online_dpo" && !chosen_scores.empty()) {  // for its metrics; none with a judge alone
    inputs.set("chosen_scores", tensor_like(chosen_scores, policy_chosen));
    inputs.set("rejected_scores", tensor_like(rejected_scores, policy_chosen));
  }
  return inputs;
}

// grpo: per-token GRPO-style losses; pairs: a loss over each group's best and worst completion
// (online_dpo, inpo, rebel); spin: the data's answer against one completion of the iterate.
enum class Family { grpo, rloo, reinforce_pp, pairs, spin };

Family family_of(const LossDefinition& definition) {
  const std::string& name = definition.name;
  if (name == "grpo" || name == "dr_grpo" || name == "dapo" || name == "simplerl_zoo") return Family::grpo;
  if (name == "rloo") return Family::rloo;
  if (name == "reinforce_pp" || name == "reinforce_pp_baseline") return Family::reinforce_pp;
  if (name == "online_dpo" || name == "inpo" || name == "rebel") return Family::pairs;
  if (name == "spin") return Family::spin;
  throw Error(str_cat("the online trainer does not run loss '", name, "' (it runs ", [] {
    std::string names;
    for (const std::string& known : online_loss_names()) names += (names.empty() ? "" : ", ") + known;
    return names;
  }(), "; refuel's multi-turn rollouts are `lamina train refuel` (train/refuel_trainer.h); ppo_clip needs a value "
         "head, nash_md and xpo samples of a mixture or of the reference: not written yet)"));
}

// Whether the loss, with these hyperparameters, reads reference log-probs.
bool needs_reference(const LossDefinition& definition, Family family, const Hyperparameters& params) {
  switch (family) {
    case Family::grpo: return params.real("beta") > 0;
    case Family::rloo: return params.real("beta") > 0;
    case Family::reinforce_pp: return params.real("kl_coef") > 0 || params.real("kl_loss_coef") > 0;
    case Family::pairs: return definition.name != "rebel";  // REBEL's only reference is the iterate
    case Family::spin: return false;                          // SPIN's only other policy is the opponent π_t
  }
  return false;
}

// Each group's best and worst completion by reward (the first of equal ones), as row indices.
std::pair<std::vector<int64_t>, std::vector<int64_t>> ranked_pairs(const std::vector<double>& rewards, int64_t group_size) {
  std::vector<int64_t> chosen, rejected;
  for (int64_t start = 0; start < int64_t(rewards.size()); start += group_size) {
    int64_t best = start, worst = start;
    for (int64_t i = start + 1; i < start + group_size; ++i) {
      if (rewards[size_t(i)] > rewards[size_t(best)]) best = i;
      if (rewards[size_t(i)] < rewards[size_t(worst)]) worst = i;
    }
    // Equal rewards: the first is chosen and the second rejected (TRL trains on such pairs too).
    if (best == worst) worst = start + 1;
    chosen.push_back(best);
    rejected.push_back(worst);
  }
  return {chosen, rejected};
}

void add_completion_metrics(json::Value& metrics, const std::vector<double>& lengths,
                            const std::vector<std::string>& finish_reasons);

// The reward statistics of a step, over all of its completions, with TRL's names.
void add_reward_metrics(json::Value& metrics, const RewardScores& scores, const std::vector<double>& lengths,
                        const std::vector<std::string>& finish_reasons, int64_t group_size) {
  metrics.set("reward", mean_of(scores.total));
  metrics.set("reward_std", sample_std(scores.total));
  double zero = 0;
  const std::vector<double> stds = group_stds(scores.total, group_size);
  for (double std : stds) zero += std <= 1e-8 ? 1.0 : 0.0;
  metrics.set("frac_reward_zero_std", zero / double(std::max<size_t>(1, stds.size())));
  for (const auto& [name, values] : scores.parts) metrics.set(str_cat("rewards/", name, "/mean"), mean_of(values));
  add_completion_metrics(metrics, lengths, finish_reasons);
}

// The completions' length statistics, with TRL's names.
void add_completion_metrics(json::Value& metrics, const std::vector<double>& lengths,
                            const std::vector<std::string>& finish_reasons) {
  metrics.set("completions/mean_length", mean_of(lengths));
  metrics.set("completions/min_length", *std::min_element(lengths.begin(), lengths.end()));
  metrics.set("completions/max_length", *std::max_element(lengths.begin(), lengths.end()));
  double clipped = 0;
  for (const std::string& reason : finish_reasons) clipped += reason == "length" ? 1.0 : 0.0;
  metrics.set("completions/clipped_ratio", clipped / double(finish_reasons.size()));
}

// The policy's entropy at each completion token, [B, T-1] like the log-probs: on the graph when
// the loss has an entropy bonus (its gradient pushes the entropy up), else only for TRL's
// "entropy" metric.
Tensor token_entropies(const Tensor& logits, const Tensor& ids, const TokenLogps& policy, double temperature,
                       bool differentiable) {
  const int64_t length = logits.size(1);
  if (!differentiable) {
    autograd::NoGradGuard no_grad;
    const Tensor labels = ids.slice(1, 1, length);
    return ops::token_distribution_stats(logits.detach().slice(1, 0, length - 1), labels, policy.mask, temperature)
        .entropy;
  }
  LAMINA_CHECK(logits.dtype() == policy.logps.dtype(), "online: the entropy bonus (entropy_coef > 0) needs the logits "
               "in ", dtype_name(policy.logps.dtype()), ", not ", dtype_name(logits.dtype()), ": train with --precision f32");
  Tensor shifted = split(logits, {length - 1, 1}, 1)[0];
  if (temperature != 1.0) shifted = shifted / temperature;
  // H = -Σ_v p log p over the vocabulary, one [B, T-1, V] log-softmax.
  const Tensor log_probs = log_softmax(shifted, 2);
  return masked(-sum(exp(log_probs) * log_probs, {2}), policy.mask);
}

}  // namespace

const std::vector<std::string>& online_loss_names() {
  static const std::vector<std::string> names = {"grpo",         "dr_grpo", "dapo",         "simplerl_zoo",
                                                 "rloo",         "reinforce_pp", "reinforce_pp_baseline",
                                                 "online_dpo",   "inpo",    "rebel",        "spin"};
  return names;
}

bool is_online_loss(const std::string& name) {
  try {
    const std::string& resolved = find_loss(name).name;
    return std::find(online_loss_names().begin(), online_loss_names().end(), resolved) != online_loss_names().end();
  } catch (const Error&) {
    return false;
  }
}

std::vector<double> completion_advantages(const LossDefinition& loss, const Hyperparameters& params,
                                          const std::vector<double>& rewards, const std::vector<double>& lengths,
                                          const std::vector<double>& sequence_kl) {
  const int64_t group_size = params.has("num_generations") ? params.integer("num_generations") : 2;
  switch (family_of(loss)) {
    case Family::grpo: {
      std::vector<double> shaped = rewards;
      if (params.flag("overlong_shaping"))
        for (size_t i = 0; i < shaped.size(); ++i)
          shaped[i] += overlong_penalty(lengths[i], double(params.integer("overlong_max_length")),
                                        double(params.integer("overlong_buffer_length")));
      return group_advantages(shaped, group_size, params.choice("scale_rewards"), params.real("advantage_std_epsilon"));
    }
    case Family::rloo: {
      std::vector<double> adjusted = rewards;
      if (params.is_set("reward_clip_range")) {
        const auto [low, high] = params.interval("reward_clip_range");
        for (double& reward : adjusted) reward = std::clamp(reward, low, high);
      }
      if (params.real("beta") > 0 && !sequence_kl.empty())
        for (size_t i = 0; i < adjusted.size(); ++i) adjusted[i] -= params.real("beta") * sequence_kl[i];
      std::vector<double> advantages = leave_one_out_advantages(adjusted, group_size);
      if (params.flag("normalize_advantages")) {
        const double mean = mean_of(advantages), std = sample_std(advantages);
        for (double& a : advantages) a = (a - mean) / (std + 1e-4);
      }
      return advantages;
    }
    case Family::reinforce_pp:
      return params.choice("baseline") == "group_mean" ? group_centered(rewards, group_size) : rewards;
    case Family::pairs:
    case Family::spin: return {};
  }
  return {};
}

json::Value OnlineOptions::to_json() const {
  json::Value out = json::Object{};
  out.set("loss", loss);
  json::Value overrides = json::Object{};
  for (const auto& [name, value] : params) overrides.set(name, value);
  out.set("params", std::move(overrides));
  out.set("reference", reference_kind_name(reference));
  out.set("num_generations", num_generations);
  out.set("temperature", temperature);
  out.set("top_p", top_p);
  out.set("top_k", top_k);
  out.set("max_new_tokens", max_new_tokens);
  // Only when set, so that the settings of a one-step run are what they were before iterations.
  if (iteration_steps != 1 || iteration_prompts != 0) {
    out.set("iteration_steps", iteration_steps);
    out.set("iteration_prompts", iteration_prompts);
  }
  return out;
}

bool OnlineOptions::iterates() const {
  if (iteration_steps != 1 || iteration_prompts != 0) return true;
  try {
    return find_loss(loss).name == "spin";
  } catch (const Error&) {
    return false;
  }
}

struct OnlineObjective::Impl {
  OnlineOptions options;
  const LossDefinition* definition = nullptr;
  Family family = Family::grpo;
  Hyperparameters params;
  ReferenceKind reference = ReferenceKind::none;
  std::vector<OnlinePrompt> prompts, validation;
  std::unique_ptr<Reward> reward;    // null: SPIN, or a judge alone
  std::unique_ptr<PairwiseJudge> judge;  // decides the pairs when set
  CompletionDecoder decode;
  int64_t prompts_per_step = 0, prompts_per_forward = 0;
  uint64_t seed = 0;
  std::string output_dir;
  DataFingerprint data_fingerprint;
  std::unique_ptr<EpochSampler> sampler;  // the prompts' order
  // The last step run (restored from the cursor on resume): samples.jsonl keeps the lines up to it.
  int64_t steps_done = 0;
  bool restored = false;
  mutable std::unique_ptr<MetricsLog> samples;
  ReferenceModel reference_model;

  // ---- iterations: a pool of pairs sampled by π_t at an iteration's first step, trained on for
  // iteration_steps steps against the log-probs it had then.
  struct PoolPair {
    int64_t prompt = 0;  // index into prompts
    std::vector<int32_t> chosen, rejected;  // completions (SPIN: the data's answer, the generated one)
    bool chosen_first = true;               // the chosen completion's row comes first (its group's order)
    double chosen_reward = 0, rejected_reward = 0;
    double iterate_chosen = 0, iterate_rejected = 0;      // S_t: the policy's at the iteration's start
    double reference_chosen = 0, reference_rejected = 0;  // S_ref, when the loss reads a reference
  };
  struct Pool {
    int64_t start_step = 0;  // the iteration's first step; 0: no pool yet
    std::vector<PoolPair> pairs;
    std::vector<int64_t> order;  // the pairs in the order the iteration's steps take them
    json::Value metrics = json::Object{};  // the pool's reward and completion statistics
  };
  bool iterative = false;
  bool pool_reference = false;  // whether the pool holds reference log-probs
  int64_t iteration_steps = 1, iteration_prompts = 0;
  Pool pool;

  Impl(OnlineOptions o, const std::string& loss_name)
      : options(std::move(o)), definition(&find_loss(loss_name)), params(default_hyperparameters(*definition)) {}

  // G completions of each prompt, sampled by the current policy; the stop token that ended a
  // completion is kept.
  struct Rollout {
    std::vector<int64_t> prompt_of_row;  // index into prompts
    std::vector<std::vector<int32_t>> completions;
    std::vector<std::string> finish_reasons;
  };
  Rollout sample(llama::LlamaForCausalLM& model, const std::vector<int64_t>& indices, int64_t step) {
    const int64_t group = options.num_generations;
    Rollout rollout;
    std::vector<std::vector<int64_t>> inputs;
    generate::BatchOptions batch;
    for (int64_t index : indices)
      for (int64_t g = 0; g < group; ++g) {
        const OnlinePrompt& prompt = prompts[size_t(index)];
        rollout.prompt_of_row.push_back(index);
        inputs.emplace_back(prompt.ids.begin(), prompt.ids.end());
        batch.prompt_stop_tokens.push_back(prompt.stop_tokens);
      }
    batch.slots = int64_t(inputs.size());
    generate::GenerateOptions generation;
    generation.max_new_tokens = options.max_new_tokens;
    generation.sampling.temperature = options.temperature;
    generation.sampling.top_p = options.top_p;
    generation.sampling.top_k = options.top_k;
    generation.sampling.seed = step_seed(seed, step);
    std::vector<int64_t> last_token(inputs.size(), -1);
    generation.on_token = [&](size_t row, int64_t token) {
      last_token[row] = token;
      return true;
    };
    generate::BatchResult result;
    {
      autograd::NoGradGuard no_grad;
      // Eval mode for sampling (no LoRA dropout), training mode again however it ends.
      const EvalMode eval_mode(model);
      result = generate::generate_batch(model, inputs, generation, batch);
    }
    for (size_t row = 0; row < inputs.size(); ++row) {
      std::vector<int32_t> completion(result.tokens[row].begin(), result.tokens[row].end());
      if (result.finish_reasons[row] == "stop" && last_token[row] >= 0) completion.push_back(int32_t(last_token[row]));
      rollout.completions.push_back(std::move(completion));
      rollout.finish_reasons.push_back(result.finish_reasons[row]);
    }
    return rollout;
  }

  // Prompt + completion rows as a right-padded batch: ids [b, T] and completion mask.
  std::pair<Tensor, Tensor> padded_rows(const std::vector<int64_t>& prompt_of_row,
                                        const std::vector<const std::vector<int32_t>*>& completions,
                                        int64_t& tokens) const {
    int64_t width = 0;
    for (size_t r = 0; r < completions.size(); ++r)
      width = std::max(width, int64_t(prompts[size_t(prompt_of_row[r])].ids.size() + completions[r]->size()));
    const int64_t count = int64_t(completions.size());
    std::vector<int64_t> ids(size_t(count * width), options.pad_id);
    std::vector<uint8_t> mask(size_t(count * width), 0);
    for (size_t r = 0; r < completions.size(); ++r) {
      const std::vector<int32_t>& prompt = prompts[size_t(prompt_of_row[r])].ids;
      const std::vector<int32_t>& completion = *completions[r];
      const size_t row = r * size_t(width);
      std::copy(prompt.begin(), prompt.end(), ids.begin() + long(row));
      std::copy(completion.begin(), completion.end(), ids.begin() + long(row + prompt.size()));
      std::fill_n(mask.begin() + long(row + prompt.size()), completion.size(), uint8_t(1));
      tokens += int64_t(prompt.size() + completion.size());
    }
    return {Tensor::from_vector(ids, {count, width}, DType::i64),
            Tensor::from_vector(mask, {count, width}, DType::boolean)};
  }

  // Rows [begin, end) of the rollout as a right-padded batch.
  std::pair<Tensor, Tensor> rows(const Rollout& rollout, int64_t begin, int64_t end, int64_t& tokens) const {
    std::vector<int64_t> prompt_of_row;
    std::vector<const std::vector<int32_t>*> completions;
    for (int64_t r = begin; r < end; ++r) {
      prompt_of_row.push_back(rollout.prompt_of_row[size_t(r)]);
      completions.push_back(&rollout.completions[size_t(r)]);
    }
    return padded_rows(prompt_of_row, completions, tokens);
  }

  // The share of the step's loss a micro-batch of `rows` rows and `tokens` completion tokens holds.
  double weight_of(int64_t micro_rows, int64_t total_rows, double micro_tokens, double total_tokens) const {
    if (family == Family::grpo) {
      const std::string& aggregation = params.choice("loss_type");
      if (aggregation == "dapo" || aggregation == "cispo") return 1.0;  // divided by token_normalizer already
      if (aggregation == "bnpo") return micro_tokens / std::max(1.0, total_tokens);
    }
    return double(micro_rows) / double(total_rows);
  }

  void write_samples(int64_t step, const Rollout& rollout, const RewardScores& scores,
                     const std::vector<double>& advantages, const std::vector<int64_t>& chosen,
                     const std::vector<int64_t>& rejected, const std::vector<std::string>& texts) {
    if (output_dir.empty()) return;
    if (!samples)
      samples = std::make_unique<MetricsLog>((std::filesystem::path(output_dir) / "samples.jsonl").string(),
                                             restored ? steps_done : -1);
    for (size_t row = 0; row < rollout.completions.size(); ++row) {
      const OnlinePrompt& prompt = prompts[size_t(rollout.prompt_of_row[row])];
      json::Value line = json::Object{};
      line.set("step", step);
      line.set("prompt_index", rollout.prompt_of_row[row]);
      line.set("line", prompt.line);
      line.set("completion", valid_utf8_text(texts[row]));
      line.set("tokens", int64_t(rollout.completions[row].size()));
      line.set("finish_reason", rollout.finish_reasons[row]);
      if (!scores.total.empty()) line.set("reward", scores.total[row]);
      if (!scores.parts.empty()) {
        json::Value parts = json::Object{};
        for (const auto& [name, values] : scores.parts) parts.set(name, values[row]);
        line.set("rewards", std::move(parts));
      }
      if (family == Family::spin) {
        line.set("chosen", false);  // a generated response: the data's answer is the chosen one
      } else if (family == Family::pairs) {
        const int64_t r = int64_t(row);
        const bool is_chosen = std::find(chosen.begin(), chosen.end(), r) != chosen.end();
        const bool is_rejected = std::find(rejected.begin(), rejected.end(), r) != rejected.end();
        line.set("chosen", is_chosen ? json::Value(true) : is_rejected ? json::Value(false) : json::Value());
      } else {
        line.set("advantage", advantages[row]);
      }
      samples->write(line);
    }
  }

  // A rollout's completions as text, their lengths and, but for SPIN, their rewards.
  struct Scored {
    std::vector<std::string> texts;
    std::vector<double> lengths;
    double total_tokens = 0;
    RewardScores scores;
  };
  Scored score(const Rollout& rollout, int64_t step) const {
    Scored out;
    std::vector<RewardInput> reward_inputs;
    const int64_t total_rows = int64_t(rollout.completions.size());
    for (int64_t r = 0; r < total_rows; ++r) {
      const OnlinePrompt& prompt = prompts[size_t(rollout.prompt_of_row[size_t(r)])];
      out.texts.push_back(decode(rollout.completions[size_t(r)]));
      reward_inputs.push_back({prompt.prompt, out.texts.back(), int64_t(rollout.completions[size_t(r)].size()), prompt.fields});
      out.lengths.push_back(double(rollout.completions[size_t(r)].size()));
      out.total_tokens += out.lengths.back();
    }
    // No reward: SPIN (the data's answer is the preferred response), or a judge alone.
    if (reward == nullptr) return out;
    out.scores = reward->score(reward_inputs);
    LAMINA_CHECK(out.scores.total.size() == size_t(total_rows), "online: the reward gave ", out.scores.total.size(),
                 " scores for ", total_rows, " completions");
    for (size_t i = 0; i < out.scores.total.size(); ++i)
      LAMINA_CHECK(std::isfinite(out.scores.total[i]), "online: the reward of completion ", i, " of step ", step,
                   " is not finite (", out.scores.total[i], ")");
    return out;
  }

  // The chosen and rejected row of each group: the judge's choice of its two completions, else
  // the best and worst by reward.
  std::pair<std::vector<int64_t>, std::vector<int64_t>> choose_pairs(const Rollout& rollout, const Scored& scored) const {
    if (!judge) return ranked_pairs(scored.scores.total, options.num_generations);
    std::vector<JudgeInput> pairs;
    for (size_t row = 0; row + 1 < rollout.completions.size(); row += 2) {
      const OnlinePrompt& prompt = prompts[size_t(rollout.prompt_of_row[row])];
      pairs.push_back({prompt.prompt, scored.texts[row], scored.texts[row + 1], prompt.fields});
    }
    const std::vector<int> choices = judge->judge(pairs);
    LAMINA_CHECK(choices.size() == pairs.size(), "online: the judge gave ", choices.size(), " choices for ",
                 pairs.size(), " pairs");
    std::vector<int64_t> chosen, rejected;
    for (size_t k = 0; k < choices.size(); ++k) {
      chosen.push_back(int64_t(2 * k) + choices[k]);
      rejected.push_back(int64_t(2 * k) + 1 - choices[k]);
    }
    return {chosen, rejected};
  }

  // The reward statistics (with a reward) and the completions' (always) of a sampled batch.
  void add_sample_metrics(json::Value& metrics, const Rollout& rollout, const Scored& scored) const {
    if (scored.scores.total.empty())
      add_completion_metrics(metrics, scored.lengths, rollout.finish_reasons);
    else
      add_reward_metrics(metrics, scored.scores, scored.lengths, rollout.finish_reasons, options.num_generations);
  }

  StepResult run_step(llama::LlamaForCausalLM& model, int64_t step) {
    const int64_t group = options.num_generations;
    const std::vector<int64_t> indices = sampler->next(prompts_per_step);
    const Rollout rollout = sample(model, indices, step);
    const int64_t total_rows = int64_t(rollout.completions.size());
    const Scored scored = score(rollout, step);
    const std::vector<std::string>& texts = scored.texts;
    const std::vector<double>& lengths = scored.lengths;
    const double total_tokens = scored.total_tokens;
    const RewardScores& scores = scored.scores;
    const auto [chosen, rejected] =
        family == Family::pairs ? choose_pairs(rollout, scored) : std::pair<std::vector<int64_t>, std::vector<int64_t>>{};

    StepResult result;
    MetricsAverage loss_metrics;
    std::vector<double> sequence_kl;  // rloo: S_old - S_ref per row
    const int64_t rows_per_forward = prompts_per_forward * group;
    const Device device = model.device();
    const double temperature = options.temperature > 0 ? options.temperature : 1.0;
    for (int64_t begin = 0; begin < total_rows; begin += rows_per_forward) {
      const int64_t end = std::min(total_rows, begin + rows_per_forward);
      const auto [host_ids, host_mask] = rows(rollout, begin, end, result.tokens);
      const Tensor ids = on(host_ids, device), mask = on(host_mask, device);
      const Tensor logits = model.forward(ids);
      const TokenLogps policy = completion_logprobs(logits, ids, mask, temperature);
      Tensor reference;  // per-token, [b, T-1]
      if (this->reference != ReferenceKind::none && needs_reference(*definition, family, params)) {
        autograd::NoGradGuard no_grad;
        const Tensor reference_output = reference_model.logits(ids);
        const Device where = reference_output.device();
        reference = completion_logprobs(reference_output, on(ids, where), on(mask, where), temperature).logps;
        reference = on(reference, policy.logps.device());
      }
      // (None with a judge alone, whose pairs need no rewards.)
      const std::vector<double> micro_rewards =
          scores.total.empty() ? std::vector<double>{}
                               : std::vector<double>(scores.total.begin() + begin, scores.total.begin() + end);
      double micro_tokens = 0;
      for (int64_t r = begin; r < end; ++r) micro_tokens += lengths[size_t(r)];
      LossInputs inputs;
      if (family == Family::grpo || family == Family::reinforce_pp) {
        inputs.set("policy_token_logps", policy.logps).set("completion_mask", policy.mask);
        inputs.set("rewards", tensor_like(micro_rewards, policy.logps));
        if (reference.defined()) inputs.set("reference_token_logps", reference);
        if (family == Family::grpo) {
          inputs.set("token_entropies", token_entropies(logits, ids, policy, temperature, params.real("entropy_coef") > 0));
          const std::string& aggregation = params.choice("loss_type");
          if (aggregation == "dapo" || aggregation == "cispo")
            inputs.set("token_normalizer", scalar_like(std::max(1.0, total_tokens), policy.logps));
        }
      } else {
        const Tensor sums = reduce_logprobs(policy.logps, policy.mask, LogprobReduction::sum);
        const Tensor reference_sums =
            reference.defined() ? reduce_logprobs(reference, policy.mask, LogprobReduction::sum) : Tensor();
        if (family == Family::rloo) {
          inputs.set("policy_logps", sums).set("rewards", tensor_like(micro_rewards, sums));
          inputs.set("completion_lengths", token_counts(policy.mask, sums.dtype()));
          if (reference_sums.defined()) {
            inputs.set("reference_logps", reference_sums);
            const std::vector<double> policy_values = values_of(sums), reference_values = values_of(reference_sums);
            for (size_t i = 0; i < policy_values.size(); ++i) sequence_kl.push_back(policy_values[i] - reference_values[i]);
          }
        } else {  // the pairs of this micro-batch's groups, as local row indices
          std::vector<int64_t> local_chosen, local_rejected;
          std::vector<double> chosen_scores, rejected_scores;
          for (size_t k = 0; k < chosen.size(); ++k)
            if (chosen[k] >= begin && chosen[k] < end) {
              local_chosen.push_back(chosen[k] - begin);
              local_rejected.push_back(rejected[k] - begin);
              if (!scores.total.empty()) {
                chosen_scores.push_back(scores.total[size_t(chosen[k])]);
                rejected_scores.push_back(scores.total[size_t(rejected[k])]);
              }
            }
          const Tensor chosen_index = on(Tensor::from_vector(local_chosen, {int64_t(local_chosen.size())}, DType::i64), sums.device());
          const Tensor rejected_index =
              on(Tensor::from_vector(local_rejected, {int64_t(local_rejected.size())}, DType::i64), sums.device());
          const Tensor policy_chosen = index_select(sums, 0, chosen_index);
          const Tensor policy_rejected = index_select(sums, 0, rejected_index);
          autograd::NoGradGuard no_grad;
          Tensor reference_chosen, reference_rejected;
          if (reference_sums.defined()) {
            reference_chosen = index_select(reference_sums, 0, chosen_index);
            reference_rejected = index_select(reference_sums, 0, rejected_index);
          }
          // INPO's and REBEL's iterate π_t is the policy that sampled the batch (one update per
          // iteration): its log-probs are the policy's, without gradient.
          const Tensor iterate = sums.detach();
          inputs = pair_loss_inputs(definition->name, policy_chosen, policy_rejected, reference_chosen,
                                    reference_rejected, index_select(iterate, 0, chosen_index),
                                    index_select(iterate, 0, rejected_index), chosen_scores, rejected_scores);
        }
      }
      const LossResult loss = compute_loss(*definition, inputs, params);
      const double weight = weight_of(end - begin, total_rows, micro_tokens, total_tokens);
      result.loss += weight * loss.loss.item<double>();
      mul(loss.loss, weight).backward();
      // The loss's own metrics, averaged over the micro-batches by their share of the rows.
      loss_metrics.add(loss.metrics, double(end - begin) / double(total_rows));
    }
    for (const auto& [name, value] : loss_metrics.entries()) result.metrics.set(name, value);
    // The reward statistics over the whole step replace the micro-batches' averages.
    add_sample_metrics(result.metrics, rollout, scored);
    const std::vector<double> advantages = completion_advantages(*definition, params, scores.total, lengths, sequence_kl);
    write_samples(step, rollout, scores, advantages, chosen, rejected, texts);
    steps_done = step;
    return result;
  }

  // The two rows of each of the pool's pairs `indices`, in its group's order, padded.
  std::pair<Tensor, Tensor> pair_rows(const std::vector<int64_t>& indices, int64_t& tokens) const {
    std::vector<int64_t> prompt_of_row;
    std::vector<const std::vector<int32_t>*> completions;
    for (int64_t index : indices) {
      const PoolPair& pair = pool.pairs[size_t(index)];
      prompt_of_row.insert(prompt_of_row.end(), {pair.prompt, pair.prompt});
      completions.push_back(pair.chosen_first ? &pair.chosen : &pair.rejected);
      completions.push_back(pair.chosen_first ? &pair.rejected : &pair.chosen);
    }
    return padded_rows(prompt_of_row, completions, tokens);
  }

  // Where the chosen and rejected rows of the pairs `indices` are in their pair_rows batch.
  std::pair<Tensor, Tensor> pair_row_indices(const std::vector<int64_t>& indices, Device device) const {
    std::vector<int64_t> chosen, rejected;
    for (size_t k = 0; k < indices.size(); ++k) {
      const bool first = pool.pairs[size_t(indices[k])].chosen_first;
      chosen.push_back(int64_t(2 * k) + (first ? 0 : 1));
      rejected.push_back(int64_t(2 * k) + (first ? 1 : 0));
    }
    const int64_t count = int64_t(indices.size());
    return {on(Tensor::from_vector(chosen, {count}, DType::i64), device),
            on(Tensor::from_vector(rejected, {count}, DType::i64), device)};
  }

  // An iteration's start: draws its prompts, samples them with π_t (the policy now), makes the
  // pairs, writes the samples, orders the pairs, and computes their fixed log-probs.
  void build_pool(llama::LlamaForCausalLM& model, int64_t step) {
    const std::vector<int64_t> indices = sampler->next(iteration_prompts);
    const Rollout rollout = sample(model, indices, step);
    const Scored scored = score(rollout, step);
    Pool built;
    built.start_step = step;
    if (family == Family::spin) {
      for (size_t row = 0; row < rollout.completions.size(); ++row) {
        PoolPair pair;
        pair.prompt = rollout.prompt_of_row[row];
        pair.chosen = prompts[size_t(pair.prompt)].answer;
        pair.rejected = rollout.completions[row];
        built.pairs.push_back(std::move(pair));
      }
      add_completion_metrics(built.metrics, scored.lengths, rollout.finish_reasons);
      write_samples(step, rollout, scored.scores, {}, {}, {}, scored.texts);
    } else {
      const auto [chosen, rejected] = choose_pairs(rollout, scored);
      const bool rewarded = !scored.scores.total.empty();
      for (size_t k = 0; k < chosen.size(); ++k) {
        PoolPair pair;
        pair.prompt = rollout.prompt_of_row[size_t(chosen[k])];
        pair.chosen = rollout.completions[size_t(chosen[k])];
        pair.rejected = rollout.completions[size_t(rejected[k])];
        pair.chosen_first = chosen[k] < rejected[k];
        pair.chosen_reward = rewarded ? scored.scores.total[size_t(chosen[k])] : 0.0;
        pair.rejected_reward = rewarded ? scored.scores.total[size_t(rejected[k])] : 0.0;
        built.pairs.push_back(std::move(pair));
      }
      add_sample_metrics(built.metrics, rollout, scored);
      write_samples(step, rollout, scored.scores, {}, chosen, rejected, scored.texts);
    }
    built.order = epoch_permutation(int64_t(built.pairs.size()), mix(seed ^ kPoolOrderSalt), step);
    pool = std::move(built);

    // The fixed log-probs, in the micro-batches the steps use (so that with one step per
    // iteration they are the numbers the one-step path computes).
    autograd::NoGradGuard no_grad;
    const EvalMode eval_mode(model);
    const Device device = model.device();
    const double temperature = options.temperature > 0 ? options.temperature : 1.0;
    const int64_t count = int64_t(pool.pairs.size());
    for (int64_t begin = 0; begin < count; begin += prompts_per_forward) {
      std::vector<int64_t> chunk;
      for (int64_t k = begin; k < std::min(count, begin + prompts_per_forward); ++k) chunk.push_back(k);
      int64_t tokens = 0;
      const auto [host_ids, host_mask] = pair_rows(chunk, tokens);
      const Tensor ids = on(host_ids, device), mask = on(host_mask, device);
      const auto [chosen_index, rejected_index] = pair_row_indices(chunk, device);
      const TokenLogps policy = completion_logprobs(model.forward(ids), ids, mask, temperature);
      const Tensor sums = reduce_logprobs(policy.logps, policy.mask, LogprobReduction::sum);
      const std::vector<double> chosen = values_of(index_select(sums, 0, chosen_index));
      const std::vector<double> rejected = values_of(index_select(sums, 0, rejected_index));
      std::vector<double> reference_chosen, reference_rejected;
      if (pool_reference) {
        const Tensor reference_output = reference_model.logits(ids);
        const Device where = reference_output.device();
        const TokenLogps reference =
            completion_logprobs(reference_output, on(ids, where), on(mask, where), temperature);
        const Tensor reference_sums = on(reference_sums_of(reference, policy), device);
        reference_chosen = values_of(index_select(reference_sums, 0, chosen_index));
        reference_rejected = values_of(index_select(reference_sums, 0, rejected_index));
      }
      for (size_t k = 0; k < chunk.size(); ++k) {
        PoolPair& pair = pool.pairs[size_t(chunk[k])];
        pair.iterate_chosen = chosen[k];
        pair.iterate_rejected = rejected[k];
        if (pool_reference) {
          pair.reference_chosen = reference_chosen[k];
          pair.reference_rejected = reference_rejected[k];
        }
      }
    }
  }

  // The reference's summed log-probs over the policy's completion mask, as the one-step path
  // sums them (its per-token log-probs moved to the policy's device first).
  static Tensor reference_sums_of(const TokenLogps& reference, const TokenLogps& policy) {
    return reduce_logprobs(on(reference.logps, policy.logps.device()), policy.mask, LogprobReduction::sum);
  }

  // A step of an iteration: the next prompts-per-step pairs of the pool's order.
  StepResult run_pool_step(llama::LlamaForCausalLM& model, int64_t step) {
    const int64_t offset = (step - 1) % iteration_steps;
    if (offset == 0) build_pool(model, step);
    LAMINA_CHECK(pool.start_step == step - offset, "online: step ", step, " belongs to the iteration that starts at step ",
                 step - offset, ", but the pool at hand is the one of step ", pool.start_step,
                 " (the checkpoint does not hold this iteration's pool)");
    const int64_t count = int64_t(pool.pairs.size());
    std::vector<int64_t> selected;
    for (int64_t i = 0; i < prompts_per_step; ++i)
      selected.push_back(pool.order[size_t((offset * prompts_per_step + i) % count)]);
    std::sort(selected.begin(), selected.end());  // the pool's order within a step

    StepResult result;
    MetricsAverage loss_metrics;
    const int64_t total_rows = 2 * int64_t(selected.size());
    const Device device = model.device();
    const double temperature = options.temperature > 0 ? options.temperature : 1.0;
    for (size_t begin = 0; begin < selected.size(); begin += size_t(prompts_per_forward)) {
      const std::vector<int64_t> chunk(selected.begin() + long(begin),
                                       selected.begin() + long(std::min(selected.size(), begin + size_t(prompts_per_forward))));
      const auto [host_ids, host_mask] = pair_rows(chunk, result.tokens);
      const Tensor ids = on(host_ids, device), mask = on(host_mask, device);
      const auto [chosen_index, rejected_index] = pair_row_indices(chunk, device);
      const TokenLogps policy = completion_logprobs(model.forward(ids), ids, mask, temperature);
      const Tensor sums = reduce_logprobs(policy.logps, policy.mask, LogprobReduction::sum);
      std::vector<double> iterate_chosen, iterate_rejected, reference_chosen, reference_rejected, chosen_scores,
          rejected_scores;
      for (int64_t index : chunk) {
        const PoolPair& pair = pool.pairs[size_t(index)];
        iterate_chosen.push_back(pair.iterate_chosen);
        iterate_rejected.push_back(pair.iterate_rejected);
        reference_chosen.push_back(pair.reference_chosen);
        reference_rejected.push_back(pair.reference_rejected);
        if (reward != nullptr) {
          chosen_scores.push_back(pair.chosen_reward);
          rejected_scores.push_back(pair.rejected_reward);
        }
      }
      const auto fixed = [&](const std::vector<double>& values) { return on(tensor_like(values, sums), sums.device()); };
      const Tensor policy_chosen = index_select(sums, 0, chosen_index);
      const Tensor policy_rejected = index_select(sums, 0, rejected_index);
      const LossInputs inputs = pair_loss_inputs(
          definition->name, policy_chosen, policy_rejected, pool_reference ? fixed(reference_chosen) : Tensor(),
          pool_reference ? fixed(reference_rejected) : Tensor(), fixed(iterate_chosen), fixed(iterate_rejected),
          chosen_scores, rejected_scores);
      const LossResult loss = compute_loss(*definition, inputs, params);
      const int64_t rows = 2 * int64_t(chunk.size());
      const double weight = double(rows) / double(total_rows);
      result.loss += weight * loss.loss.item<double>();
      mul(loss.loss, weight).backward();
      loss_metrics.add(loss.metrics, weight);
    }
    for (const auto& [name, value] : loss_metrics.entries()) result.metrics.set(name, value);
    for (const auto& [name, value] : pool.metrics.as_object()) result.metrics.set(name, value);
    steps_done = step;
    return result;
  }

  json::Value pool_json() const {
    json::Value out = json::Object{};
    out.set("start_step", pool.start_step);
    json::Array pairs;
    const auto ids_of = [](const std::vector<int32_t>& ids) {
      json::Array out;
      for (int32_t id : ids) out.emplace_back(int64_t(id));
      return out;
    };
    for (const PoolPair& pair : pool.pairs) {
      json::Value entry = json::Object{};
      entry.set("prompt_index", pair.prompt);
      entry.set("chosen", ids_of(pair.chosen));
      entry.set("rejected", ids_of(pair.rejected));
      entry.set("chosen_first", pair.chosen_first);
      entry.set("chosen_reward", pair.chosen_reward);
      entry.set("rejected_reward", pair.rejected_reward);
      entry.set("iterate_chosen_logp", pair.iterate_chosen);
      entry.set("iterate_rejected_logp", pair.iterate_rejected);
      if (pool_reference) {
        entry.set("reference_chosen_logp", pair.reference_chosen);
        entry.set("reference_rejected_logp", pair.reference_rejected);
      }
      pairs.push_back(std::move(entry));
    }
    out.set("pairs", std::move(pairs));
    json::Array order;
    for (int64_t index : pool.order) order.emplace_back(index);
    out.set("order", std::move(order));
    out.set("metrics", pool.metrics);
    return out;
  }

  void restore_pool(const json::Value& state) {
    const std::string what = "trainer.json: objective_state.pool";
    Pool restored;
    restored.start_step = state.at("start_step", what).as_int64(what + ".start_step");
    const auto ids_of = [&](const json::Value& value, const std::string& name) {
      std::vector<int32_t> ids;
      for (const json::Value& id : value.as_array(name)) {
        const int64_t number = id.as_int64(name);
        LAMINA_CHECK(number >= 0 && number <= std::numeric_limits<int32_t>::max(), what, ": token id ", number, " out of range");
        ids.push_back(int32_t(number));
      }
      return ids;
    };
    for (const json::Value& entry : state.at("pairs", what).as_array(what + ".pairs")) {
      const std::string name = what + ".pairs[]";
      PoolPair pair;
      pair.prompt = entry.at("prompt_index", name).as_int64(name + ".prompt_index");
      LAMINA_CHECK(pair.prompt >= 0 && pair.prompt < int64_t(prompts.size()), name, ": prompt_index ", pair.prompt,
                   " is not one of the ", prompts.size(), " prompts");
      pair.chosen = ids_of(entry.at("chosen", name), name + ".chosen");
      pair.rejected = ids_of(entry.at("rejected", name), name + ".rejected");
      pair.chosen_first = entry.at("chosen_first", name).as_bool(name + ".chosen_first");
      pair.chosen_reward = entry.at("chosen_reward", name).as_double(name + ".chosen_reward");
      pair.rejected_reward = entry.at("rejected_reward", name).as_double(name + ".rejected_reward");
      pair.iterate_chosen = entry.at("iterate_chosen_logp", name).as_double(name + ".iterate_chosen_logp");
      pair.iterate_rejected = entry.at("iterate_rejected_logp", name).as_double(name + ".iterate_rejected_logp");
      if (pool_reference) {
        pair.reference_chosen = entry.at("reference_chosen_logp", name).as_double(name + ".reference_chosen_logp");
        pair.reference_rejected = entry.at("reference_rejected_logp", name).as_double(name + ".reference_rejected_logp");
      }
      restored.pairs.push_back(std::move(pair));
    }
    for (const json::Value& index : state.at("order", what).as_array(what + ".order")) {
      const int64_t number = index.as_int64(what + ".order");
      LAMINA_CHECK(number >= 0 && number < int64_t(restored.pairs.size()), what, ": order holds ", number, " for ",
                   restored.pairs.size(), " pairs");
      restored.order.push_back(number);
    }
    LAMINA_CHECK(restored.order.size() == restored.pairs.size() && !restored.pairs.empty(), what,
                 ": the order does not cover the pairs");
    restored.metrics = state.at("metrics", what);
    LAMINA_CHECK(restored.metrics.is_object(), what, ".metrics: expected an object");
    pool = std::move(restored);
  }
};

OnlineObjective::OnlineObjective(OnlineOptions options, const TrainOptions& train_options,
                                 std::vector<OnlinePrompt> prompts, std::unique_ptr<Reward> reward,
                                 CompletionDecoder decode, std::vector<OnlinePrompt> validation,
                                 std::unique_ptr<PairwiseJudge> judge) {
  const std::string loss_name = options.loss;
  impl_ = std::make_unique<Impl>(std::move(options), loss_name);
  Impl& impl = *impl_;
  impl.family = family_of(*impl.definition);
  const bool spin = impl.family == Family::spin;
  if (judge != nullptr) {
    LAMINA_CHECK(impl.definition->name == "online_dpo" || impl.definition->name == "inpo", "online: loss '",
                 impl.definition->name, "' trains on rewards, not on a judge's choices: a pairwise judge is for "
                 "online_dpo and inpo");
    LAMINA_CHECK(impl.options.num_generations == 2, "online: a pairwise judge compares two completions: "
                 "num_generations (--num-generations) must be 2 with a judge, not ", impl.options.num_generations);
  }
  LAMINA_CHECK(reward != nullptr || spin || judge != nullptr, "online: no reward (and no judge)");
  impl.judge = std::move(judge);
  LAMINA_CHECK(decode != nullptr, "online: no completion decoder");
  impl.reward = std::move(reward);
  impl.decode = std::move(decode);
  impl.prompts = std::move(prompts);
  impl.validation = std::move(validation);
  LAMINA_CHECK(!impl.prompts.empty(), "online: no prompts");
  const OnlineOptions& o = impl.options;
  if (spin) {
    LAMINA_CHECK(o.num_generations == 1, "online: spin generates one response per prompt (num_generations 1, not ",
                 o.num_generations, ") and pairs it with the data's own answer");
    for (const OnlinePrompt& prompt : impl.prompts)
      LAMINA_CHECK(!prompt.answer.empty(), "online: spin trains on the data's own answers, and prompt line ", prompt.line,
                   " has none: give {\"prompt\", \"completion\"} lines or chat lines ending with the assistant's answer");
    LAMINA_CHECK(impl.validation.empty() || impl.reward != nullptr,
                 "online: spin has no reward to score validation completions with");
  } else {
    LAMINA_CHECK(o.num_generations >= 2, "online: num_generations is ", o.num_generations,
                 ": a group needs at least 2 completions to compare");
  }
  LAMINA_CHECK(o.max_new_tokens >= 1, "online: max_new_tokens must be at least 1, not ", o.max_new_tokens);
  generate::SamplingOptions sampling;
  sampling.temperature = o.temperature;
  sampling.top_p = o.top_p;
  sampling.top_k = o.top_k;
  sampling.validate();
  for (const auto& [name, value] : o.params) {
    LAMINA_CHECK(name != "num_generations", "online: give the group size as num_generations of the run (--num-generations), "
                 "not as a loss parameter");
    impl.params.set(name, std::string_view(value));
  }
  const auto user_set = [&](const char* name) {
    return std::any_of(o.params.begin(), o.params.end(), [&](const auto& entry) { return entry.first == name; });
  };
  // What the loss's constants stand for in this run: the group size, the completion limit.
  if (impl.params.has("num_generations")) impl.params.set("num_generations", double(o.num_generations));
  if (impl.params.has("max_completion_length") && !user_set("max_completion_length"))
    impl.params.set("max_completion_length", double(o.max_new_tokens));
  if (impl.params.has("overlong_max_length") && !user_set("overlong_max_length")) {
    impl.params.set("overlong_max_length", double(o.max_new_tokens));
    if (!user_set("overlong_buffer_length"))  // DAPO's proportion: a buffer of a fifth of the limit
      impl.params.set("overlong_buffer_length", double(std::max<int64_t>(1, o.max_new_tokens / 5)));
  }
  impl.seed = train_options.seed;
  impl.output_dir = train_options.output_dir;
  impl.prompts_per_step = train_options.batch_size;
  impl.prompts_per_forward =
      train_options.micro_batch_size == 0 ? train_options.batch_size : train_options.micro_batch_size;
  // Iterations: the pair losses and SPIN (a GRPO-style loss would need the sampling policy's
  // log-probs for its ratio on every step after the first).
  LAMINA_CHECK(o.iteration_steps >= 1, "online: iteration_steps (--iteration-steps) must be at least 1, not ",
               o.iteration_steps);
  LAMINA_CHECK(o.iteration_prompts >= 0, "online: iteration_prompts (--iteration-prompts) must not be negative, not ",
               o.iteration_prompts);
  impl.iterative = o.iterates();
  LAMINA_CHECK(!impl.iterative || impl.family == Family::pairs || spin, "online: loss '", impl.definition->name,
               "' trains one step on each sampled batch: iterations of several steps (--iteration-steps, "
               "--iteration-prompts) are for online_dpo, inpo, rebel and spin");
  impl.iteration_steps = o.iteration_steps;
  impl.iteration_prompts = o.iteration_prompts == 0 ? impl.prompts_per_step * o.iteration_steps : o.iteration_prompts;
  LAMINA_CHECK(impl.iteration_prompts >= impl.prompts_per_step, "online: an iteration's pool of ",
               impl.iteration_prompts, " prompts (--iteration-prompts) is smaller than a step's ", impl.prompts_per_step,
               " (--prompts-per-step)");
  if (impl.prompts_per_forward < impl.prompts_per_step) {
    // Losses normalised over the whole batch do not split into micro-batches.
    const bool batch_wide = impl.family == Family::reinforce_pp ||
                            (impl.family == Family::grpo && impl.params.choice("scale_rewards") == "batch") ||
                            (impl.family == Family::rloo && impl.params.flag("normalize_advantages"));
    LAMINA_CHECK(!batch_wide, "online: loss '", impl.definition->name,
                 "' normalises over the whole batch (reinforce_pp, scale_rewards=batch, normalize_advantages): it "
                 "cannot run in micro-batches; drop --micro-batch-size");
  }
  const bool wants_reference = needs_reference(*impl.definition, impl.family, impl.params);
  ReferenceKind reference = o.reference;
  LAMINA_CHECK(reference != ReferenceKind::precomputed,
               "online: --reference precomputed does not apply: the completions are sampled anew every step");
  if (reference == ReferenceKind::automatic)
    reference = !wants_reference ? ReferenceKind::none
                : !train_options.lora.empty() ? ReferenceKind::adapters_off
                                              : ReferenceKind::copy;
  LAMINA_CHECK(reference != ReferenceKind::none || !wants_reference, "online: loss '", impl.definition->name,
               "' with these settings has a KL term to the reference: give --reference copy or adapters-off (or "
               "set its weight to 0)");
  LAMINA_CHECK(wants_reference || reference == ReferenceKind::none, "online: loss '", impl.definition->name,
               "' with these settings reads no reference (its KL weight is 0): drop --reference ",
               reference_kind_name(reference));
  LAMINA_CHECK(reference != ReferenceKind::adapters_off || !train_options.lora.empty(),
               "online: --reference adapters-off is the base model under LoRA adapters: it needs --lora");
  LAMINA_CHECK(reference != ReferenceKind::copy || train_options.lora.empty(),
               "online: with --lora the base is frozen and is the reference already: use --reference adapters-off");
  impl.reference = reference;
  impl.reference_model = ReferenceModel(reference);
  impl.pool_reference = reference != ReferenceKind::none && wants_reference;

  // The prompts' ids and fields, in order, as the fingerprint.
  std::vector<Example> examples;
  for (const OnlinePrompt& prompt : impl.prompts) {
    Example example;
    example.ids = prompt.ids;
    example.loss_mask.assign(prompt.ids.size(), 0);
    // SPIN's answers are part of the data (nothing is added for prompts without one).
    example.ids.insert(example.ids.end(), prompt.answer.begin(), prompt.answer.end());
    example.loss_mask.resize(example.ids.size(), 1);
    examples.push_back(std::move(example));
  }
  impl.data_fingerprint = train::fingerprint(examples);
  impl.sampler = std::make_unique<EpochSampler>(int64_t(impl.prompts.size()), impl.seed);
  for (const OnlinePrompt& prompt : impl.prompts)
    for (const char c : prompt.fields.dump()) impl.data_fingerprint.hash = mix(impl.data_fingerprint.hash ^ uint8_t(c));
}

OnlineObjective::~OnlineObjective() = default;

void OnlineObjective::prepare(llama::LlamaWithHead& model, const TrainOptions& options) {
  (void)options;
  impl_->reference_model.prepare(causal_lm(model, "online training"));
}

StepResult OnlineObjective::step(llama::LlamaWithHead& model, int64_t step) {
  if (impl_->iterative) return impl_->run_pool_step(causal_lm(model, "online training"), step);
  return impl_->run_step(causal_lm(model, "online training"), step);
}

bool OnlineObjective::has_validation() const { return !impl_->validation.empty() && impl_->reward != nullptr; }

json::Value OnlineObjective::validate(llama::LlamaWithHead& trained) {
  Impl& impl = *impl_;
  const llama::LlamaForCausalLM& model = causal_lm(trained, "online training");
  std::vector<std::vector<int64_t>> inputs;
  generate::BatchOptions batch;
  for (const OnlinePrompt& prompt : impl.validation) {
    inputs.emplace_back(prompt.ids.begin(), prompt.ids.end());
    batch.prompt_stop_tokens.push_back(prompt.stop_tokens);
  }
  batch.slots = std::min<int64_t>(int64_t(inputs.size()), 64);
  generate::GenerateOptions generation;
  generation.max_new_tokens = impl.options.max_new_tokens;  // greedy: temperature 0, nothing drawn
  std::vector<int64_t> last_token(inputs.size(), -1);
  generation.on_token = [&](size_t row, int64_t token) {
    last_token[row] = token;
    return true;
  };
  const generate::BatchResult result = generate::generate_batch(model, inputs, generation, batch);
  std::vector<RewardInput> reward_inputs;
  std::vector<double> lengths;
  for (size_t row = 0; row < inputs.size(); ++row) {
    std::vector<int32_t> completion(result.tokens[row].begin(), result.tokens[row].end());
    if (result.finish_reasons[row] == "stop" && last_token[row] >= 0) completion.push_back(int32_t(last_token[row]));
    const OnlinePrompt& prompt = impl.validation[row];
    reward_inputs.push_back({prompt.prompt, impl.decode(completion), int64_t(completion.size()), prompt.fields});
    lengths.push_back(double(completion.size()));
  }
  const RewardScores scores = impl.reward->score(reward_inputs);
  LAMINA_CHECK(scores.total.size() == inputs.size(), "online: the reward gave ", scores.total.size(), " scores for ",
               inputs.size(), " validation completions");
  return validation_reward_metrics(scores, lengths);
}

json::Value OnlineObjective::cursor() const {
  const Impl& impl = *impl_;
  // A checkpoint is being written: the samples of the steps it covers are made as durable as it.
  if (impl.samples) impl.samples->sync();
  return step_cursor(*impl.sampler, impl.steps_done);
}

void OnlineObjective::restore(const json::Value& cursor) {
  Impl& impl = *impl_;
  impl.steps_done = restore_step_cursor(*impl.sampler, cursor);
  impl.restored = true;
}

DataFingerprint OnlineObjective::fingerprint() const { return impl_->data_fingerprint; }

json::Value OnlineObjective::settings() const {
  json::Value out = impl_->options.to_json();
  out.set("loss", impl_->definition->name);
  out.set("reference", reference_kind_name(impl_->reference));
  out.set("reward", impl_->reward ? impl_->reward->spec() : std::string("none"));
  // Only with a judge, so that the settings of a run without one are what they were before judges.
  if (impl_->judge) out.set("judge", impl_->judge->spec());
  return out;
}

json::Value OnlineObjective::state() const {
  if (!impl_->iterative || impl_->pool.start_step == 0) return json::Value();
  json::Value out = json::Object{};
  out.set("pool", impl_->pool_json());
  return out;
}

void OnlineObjective::restore_state(const json::Value& state) {
  LAMINA_CHECK(impl_->iterative, "trainer.json: objective_state holds an iteration pool, but this run does not iterate");
  impl_->restore_pool(state.at("pool", "trainer.json: objective_state"));
}

ReferenceKind OnlineObjective::reference() const { return impl_->reference; }
const LossDefinition& OnlineObjective::loss() const { return *impl_->definition; }
const Hyperparameters& OnlineObjective::params() const { return impl_->params; }

}  // namespace lamina::train
