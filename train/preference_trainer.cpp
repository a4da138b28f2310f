#include "train/preference_trainer.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>

#include "autograd/autograd.h"
#include "train/distributed/data_parallel.h"
#include "train/losses/common.h"
#include "train/losses/logprobs.h"
#include "train/losses/state.h"
#include "train/sampler.h"
#include "train/trainer.h"

namespace lamina::train {
namespace {

bool has_input(const LossDefinition& definition, const char* name) {
  return std::any_of(definition.inputs.begin(), definition.inputs.end(),
                     [&](const InputSpec& spec) { return spec.name == name; });
}

// The examples as the causal-LM fingerprint sees them (ids and a completion mask), so that a
// resumed run can tell whether its data changed.
}  // namespace

DataFingerprint preference_fingerprint(const std::vector<PreferencePair>& pairs,
                                       const std::vector<UnpairedExample>& unpaired) {
  std::vector<Example> examples;
  const auto add = [&](const std::vector<int32_t>& prompt, const std::vector<int32_t>& completion, uint8_t flag) {
    Example example;
    example.ids = prompt;
    example.ids.insert(example.ids.end(), completion.begin(), completion.end());
    example.loss_mask.assign(prompt.size(), 0);
    example.loss_mask.resize(example.ids.size(), flag);
    examples.push_back(std::move(example));
  };
  for (const PreferencePair& pair : pairs) {
    add(pair.prompt, pair.chosen, 1);
    add(pair.prompt, pair.rejected, 1);
  }
  for (const UnpairedExample& example : unpaired) add(example.prompt, example.completion, example.label ? 1 : 0);
  return fingerprint(examples);
}

namespace {

// 1 on every real (non-padding) token of each row: TRL's NLL term reads the prompt too.
Tensor real_token_mask(const std::vector<int64_t>& lengths, int64_t tokens) {
  std::vector<uint8_t> mask(lengths.size() * size_t(tokens), 0);
  for (size_t row = 0; row < lengths.size(); ++row)
    std::fill_n(mask.begin() + int64_t(row) * tokens, std::min(lengths[row], tokens), uint8_t(1));
  return Tensor::from_vector(mask, {int64_t(lengths.size()), tokens}, DType::boolean);
}

// Model outputs moved where the loss runs (the host) are not needed: losses run where the
// log-probs are. Inputs built on the host go to the model's device.
Tensor on(const Tensor& t, Device device) { return t.device() == device ? t : ops::to_device(t, device); }

// Sums of the completion tokens' log-probs of each row, [rows], and the token log-probs.
struct RowLogps {
  TokenLogps tokens;  // [rows, T-1] and the shifted mask
  Tensor sums;        // [rows]
  Tensor lengths;     // [rows]: completion tokens
};

RowLogps row_logps(const Tensor& logits, const Tensor& ids, const Tensor& mask) {
  RowLogps out;
  out.tokens = completion_logprobs(logits, ids, mask);
  out.sums = reduce_logprobs(out.tokens.logps, out.tokens.mask, LogprobReduction::sum);
  out.lengths = token_counts(out.tokens.mask, out.sums.dtype());
  return out;
}

}  // namespace

json::Value PreferenceOptions::to_json() const {
  json::Value out = json::Object{};
  out.set("loss", loss);
  json::Value overrides = json::Object{};
  for (const auto& [name, value] : params) overrides.set(name, value);
  out.set("params", std::move(overrides));
  out.set("reference", reference_kind_name(reference));
  out.set("max_length", truncation.max_length);
  out.set("truncation_mode", truncation.mode == TruncationMode::keep_start ? "keep_start" : "keep_end");
  out.set("max_prompt_length", truncation.max_prompt_length);
  out.set("max_completion_length", truncation.max_completion_length);
  return out;
}

PreferenceInputLayout input_layout(const LossDefinition& definition) {
  if (has_input(definition, "policy_chosen_logps") || has_input(definition, "policy_chosen_token_logps"))
    return PreferenceInputLayout::pairs;
  if (has_input(definition, "policy_logps") && has_input(definition, "labels")) return PreferenceInputLayout::unpaired;
  throw Error(str_cat("loss '", definition.name, "' is not an offline preference loss (it reads neither chosen/rejected "
                      "log-probs nor labelled completions): its data comes from sampling, see the online trainers"));
}

bool takes_reference(const LossDefinition& definition) {
  for (const InputSpec& spec : definition.inputs)
    if (spec.name.rfind("reference_", 0) == 0) return true;
  return false;
}

struct PreferenceObjective::Impl {
  PreferenceOptions options;
  const LossDefinition* definition = nullptr;
  Hyperparameters params;
  std::unique_ptr<LossState> loss_state;
  PreferenceInputLayout layout = PreferenceInputLayout::pairs;
  ReferenceKind reference = ReferenceKind::none;
  std::vector<PreferencePair> pairs, validation_pairs;
  std::vector<UnpairedExample> unpaired, validation_unpaired;
  int64_t batch_size = 0, micro_batch_size = 0;
  uint64_t seed = 0;
  bool progress = false;
  DataFingerprint data_fingerprint;
  std::unique_ptr<EpochSampler> sampler;
  ReferenceModel reference_model;
  std::vector<std::pair<double, double>> precomputed, precomputed_validation;

  Impl(PreferenceOptions o, const std::string& loss_name)
      : options(std::move(o)), definition(&find_loss(loss_name)), params(default_hyperparameters(*definition)) {}

  int64_t examples() const {
    return layout == PreferenceInputLayout::pairs ? int64_t(pairs.size()) : int64_t(unpaired.size());
  }
  int64_t validation_examples() const {
    return layout == PreferenceInputLayout::pairs ? int64_t(validation_pairs.size())
                                                  : int64_t(validation_unpaired.size());
  }

  bool reference_free() const {
    return reference == ReferenceKind::none;
  }

  // KTO's mismatched completion for example k: the completion of the example before it in the
  // data (the first takes the last's), fixed by the data's order rather than the batch's, so
  // that a precomputed reference matches the live one.
  UnpairedExample kl_example(const std::vector<UnpairedExample>& data, int64_t k) const {
    const int64_t other = (k + int64_t(data.size()) - 1) % int64_t(data.size());
    UnpairedExample out = data[size_t(k)];
    out.completion = data[size_t(other)].completion;
    return out;
  }

  Tensor reference_logits(const Tensor& ids) { return reference_model.logits(ids); }

  // The reference's summed log-probs of one example's two rows, alone: {chosen, rejected} of a
  // pair, {completion, KL completion} of a labelled example.
  std::pair<double, double> live_reference(bool validation, int64_t k) {
    PreferenceBatch batch;
    if (layout == PreferenceInputLayout::pairs) {
      const PreferencePair& pair = validation ? validation_pairs[size_t(k)] : pairs[size_t(k)];
      const PreferencePair* one[] = {&pair};
      batch = make_preference_batch(std::span<const PreferencePair* const>(one), options.truncation, options.pad_id);
    } else {
      const std::vector<UnpairedExample>& data = validation ? validation_unpaired : unpaired;
      const UnpairedExample example = data[size_t(k)];
      const UnpairedExample mismatched = kl_example(data, k);
      const UnpairedExample* two[] = {&example, &mismatched};
      const UnpairedBatch rows =
          make_unpaired_batch(std::span<const UnpairedExample* const>(two), options.truncation, options.pad_id);
      batch.input_ids = rows.input_ids;
      batch.completion_mask = rows.completion_mask;
    }
    const Tensor logits = reference_logits(batch.input_ids);
    autograd::NoGradGuard no_grad;
    const RowLogps logps = row_logps(logits, on(batch.input_ids, logits.device()), on(batch.completion_mask, logits.device()));
    const std::vector<double> sums = values_of(logps.sums);
    return {sums[0], sums[1]};
  }

  std::pair<double, double> reference_of(bool validation, int64_t k) {
    if (reference == ReferenceKind::precomputed) return (validation ? precomputed_validation : precomputed)[size_t(k)];
    return live_reference(validation, k);
  }

  // Sets `name` when the loss takes it (an input it does not list is an error in compute_loss).
  void offer(LossInputs& inputs, const char* name, const Tensor& value) const {
    if (has_input(*definition, name)) inputs.set(name, value);
  }

  // One micro-batch: the loss over `indices` (of the training or validation data).
  LossResult micro_batch_loss(llama::LlamaForCausalLM& model, const std::vector<int64_t>& indices, bool validation,
                              int64_t& tokens) {
    const int64_t b = int64_t(indices.size());
    const Device device = model.device();
    LossInputs inputs;
    const bool token_level = has_input(*definition, "policy_chosen_token_logps");
    if (layout == PreferenceInputLayout::pairs) {
      std::vector<const PreferencePair*> chosen;
      for (int64_t k : indices) chosen.push_back(&(validation ? validation_pairs : pairs)[size_t(k)]);
      const PreferenceBatch batch = make_preference_batch(std::span<const PreferencePair* const>(chosen),
                                                          options.truncation, options.pad_id);
      for (int64_t length : batch.lengths) tokens += length;
      const Tensor ids = on(batch.input_ids, device), mask = on(batch.completion_mask, device);
      const Tensor logits = model.forward(ids);
      const RowLogps policy_logps = row_logps(logits, ids, mask);
      const SplitPairs sums = split_pairs(policy_logps.sums, b), lengths = split_pairs(policy_logps.lengths, b);
      offer(inputs, "policy_chosen_logps", sums.chosen);
      offer(inputs, "policy_rejected_logps", sums.rejected);
      offer(inputs, "chosen_lengths", lengths.chosen);
      offer(inputs, "rejected_lengths", lengths.rejected);
      if (token_level) {
        const SplitPairs token_logps = split_pairs(policy_logps.tokens.logps, b);
        const SplitPairs token_mask = split_pairs(policy_logps.tokens.mask, b);
        offer(inputs, "policy_chosen_token_logps", token_logps.chosen);
        offer(inputs, "policy_rejected_token_logps", token_logps.rejected);
        // The masks the token inputs name (InputSpec::mask).
        inputs.set("chosen_mask", token_mask.chosen).set("rejected_mask", token_mask.rejected);
      }
      if (has_input(*definition, "policy_chosen_nll_logps")) {
        // TRL's NLL term: every real token of the chosen rows, the prompt's included.
        const std::vector<int64_t> chosen_lengths(batch.lengths.begin(), batch.lengths.begin() + b);
        const Tensor nll_mask = on(real_token_mask(chosen_lengths, ids.size(1)), device);
        const RowLogps nll = row_logps(logits.narrow(0, 0, b), ids.narrow(0, 0, b), nll_mask);
        inputs.set("policy_chosen_nll_logps", nll.sums);
        if (has_input(*definition, "chosen_nll_lengths")) inputs.set("chosen_nll_lengths", nll.lengths);
      }
      if (!reference_free()) {
        if (token_level) {
          LAMINA_CHECK(reference != ReferenceKind::precomputed, "preference: loss '", definition->name,
                       "' reads per-token reference log-probs, which --reference precomputed does not keep: use "
                       "copy or adapters-off");
          const RowLogps reference_logps = [&] {
            const Tensor reference = reference_logits(batch.input_ids);
            autograd::NoGradGuard no_grad;
            return row_logps(reference, on(batch.input_ids, reference.device()), on(batch.completion_mask, reference.device()));
          }();
          const SplitPairs token_logps = split_pairs(on(reference_logps.tokens.logps, device), b);
          offer(inputs, "reference_chosen_token_logps", token_logps.chosen);
          offer(inputs, "reference_rejected_token_logps", token_logps.rejected);
        } else {
          std::vector<double> chosen_values, rejected_values;
          for (int64_t k : indices) {
            const auto [c, r] = reference_of(validation, k);
            chosen_values.push_back(c);
            rejected_values.push_back(r);
          }
          offer(inputs, "reference_chosen_logps", tensor_like(chosen_values, sums.chosen));
          offer(inputs, "reference_rejected_logps", tensor_like(rejected_values, sums.rejected));
        }
      }
    } else {
      const std::vector<UnpairedExample>& data = validation ? validation_unpaired : unpaired;
      std::vector<UnpairedExample> rows, kl_rows;
      for (int64_t k : indices) {
        rows.push_back(data[size_t(k)]);
        kl_rows.push_back(kl_example(data, k));
      }
      const UnpairedBatch batch = make_unpaired_batch(rows, options.truncation, options.pad_id);
      const Tensor ids = on(batch.input_ids, device), mask = on(batch.completion_mask, device);
      tokens += ids.numel();
      const RowLogps policy_logps = row_logps(model.forward(ids), ids, mask);
      inputs.set("policy_logps", policy_logps.sums).set("labels", on(batch.labels, device));
      if (has_input(*definition, "policy_kl_logps")) {
        // KTO's KL estimate: the policy on mismatched completions, without gradient.
        autograd::NoGradGuard no_grad;
        const UnpairedBatch kl = make_unpaired_batch(kl_rows, options.truncation, options.pad_id);
        const Tensor kl_ids = on(kl.input_ids, device);
        inputs.set("policy_kl_logps", row_logps(model.forward(kl_ids), kl_ids, on(kl.completion_mask, device)).sums);
      }
      if (!reference_free()) {
        std::vector<double> completion_values, kl_values;
        for (int64_t k : indices) {
          const auto [c, kl] = reference_of(validation, k);
          completion_values.push_back(c);
          kl_values.push_back(kl);
        }
        offer(inputs, "reference_logps", tensor_like(completion_values, policy_logps.sums));
        offer(inputs, "reference_kl_logps", tensor_like(kl_values, policy_logps.sums));
      }
    }
    return compute_loss(*definition, inputs, params, loss_state.get());
  }

  // The loss and metrics of `indices` in micro-batches, each weighted by its share of `total`
  // examples (0: indices.size()); with `backward`, each micro-batch's weighted loss is
  // back-propagated as it is computed. With `data_parallel`, `indices` are this rank's share of
  // the step: the last backward sends the gradients, and the loss, metrics and token count
  // returned are the sums over every rank.
  StepResult run(llama::LlamaForCausalLM& model, const std::vector<int64_t>& indices, bool validation, bool backward,
                 double total = 0, dist::DataParallel* data_parallel = nullptr) {
    StepResult result;
    MetricsAverage sums;
    if (total == 0) total = double(indices.size());
    for (size_t start = 0; start < indices.size(); start += size_t(micro_batch_size)) {
      const size_t end = std::min(indices.size(), start + size_t(micro_batch_size));
      const std::vector<int64_t> micro(indices.begin() + int64_t(start), indices.begin() + int64_t(end));
      const double weight = double(micro.size()) / total;
      const LossResult loss = micro_batch_loss(model, micro, validation, result.tokens);
      result.loss += weight * loss.loss.item<double>();
      if (backward && data_parallel != nullptr && end == indices.size()) data_parallel->expect_final_backward();
      if (backward) mul(loss.loss, weight).backward();
      sums.add(loss.metrics, weight);
    }
    for (const auto& [name, value] : sums.entries()) result.metrics.set(name, value);
    if (data_parallel != nullptr) {
      if (backward) data_parallel->finish();
      // One exchange for the step's numbers: loss, tokens, then the metrics in their order (every
      // rank computes the same loss, so the same metric names).
      std::vector<double> values = {result.loss, double(result.tokens)};
      for (const auto& [name, value] : sums.entries()) values.push_back(value);
      dist::Communicator& communicator = data_parallel->communicator();
      Tensor packed = Tensor::from_vector<double>(values, {int64_t(values.size())}).to(communicator.device());
      communicator.all_reduce(packed, dist::ReduceOp::sum);
      packed = packed.to(Device::cpu());
      result.loss = packed.data<double>()[0];
      result.tokens = int64_t(std::llround(packed.data<double>()[1]));
      size_t k = 2;
      for (const auto& entry : sums.entries()) result.metrics.set(entry.first, packed.data<double>()[k++]);
    }
    return result;
  }

  void precompute(llama::LlamaForCausalLM& model) {
    (void)model;
    const int64_t total = examples() + validation_examples();
    TaskProgress task(progress, "reference log-probs", total);
    precomputed.clear();
    precomputed_validation.clear();
    for (int64_t k = 0; k < examples(); ++k) {
      precomputed.push_back(live_reference(false, k));
      task.update(k + 1);
    }
    for (int64_t k = 0; k < validation_examples(); ++k) {
      precomputed_validation.push_back(live_reference(true, k));
      task.update(examples() + k + 1);
    }
    task.finish();
  }
};

PreferenceObjective::PreferenceObjective(PreferenceOptions options, const TrainOptions& train_options,
                                         PreferenceData train, PreferenceData validation) {
  const std::string loss_name = options.loss;
  impl_ = std::make_unique<Impl>(std::move(options), loss_name);
  Impl& impl = *impl_;
  for (const auto& [name, value] : impl.options.params) impl.params.set(name, std::string_view(value));
  impl.loss_state = make_state(*impl.definition);
  impl.layout = input_layout(*impl.definition);
  impl.seed = train_options.seed;
  impl.progress = train_options.progress;
  impl.batch_size = train_options.batch_size;
  impl.micro_batch_size = train_options.micro_batch_size == 0 ? train_options.batch_size : train_options.micro_batch_size;
  // Inputs a loss needs that pairs cannot give (scores, win rates, a judge's probabilities).
  static const std::vector<std::string> provided = {
      "policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
      "chosen_lengths", "rejected_lengths", "policy_chosen_token_logps", "policy_rejected_token_logps",
      "reference_chosen_token_logps", "reference_rejected_token_logps", "chosen_mask", "rejected_mask",
      "policy_chosen_nll_logps", "chosen_nll_lengths", "policy_logps", "labels", "policy_kl_logps",
      "reference_logps", "reference_kl_logps"};
  for (const InputSpec& spec : impl.definition->inputs)
    LAMINA_CHECK(!spec.required || std::find(provided.begin(), provided.end(), spec.name) != provided.end(),
                 "preference: loss '", impl.definition->name, "' needs '", spec.name, "' (", spec.help,
                 "), which preference data does not give: it is not an offline loss lamina train preference runs");
  const bool has_reference_free = std::any_of(impl.definition->params.begin(), impl.definition->params.end(),
                                              [](const ParamSpec& spec) { return spec.name == "reference_free"; });
  const bool wants_reference =
      takes_reference(*impl.definition) && !(has_reference_free && impl.params.flag("reference_free"));
  const auto reference_required = [&] {
    for (const InputSpec& spec : impl.definition->inputs)
      if (spec.name.rfind("reference_", 0) == 0 && spec.required) return true;
    return false;
  };
  ReferenceKind reference = impl.options.reference;
  if (reference == ReferenceKind::automatic)
    reference = !wants_reference ? ReferenceKind::none
                : !train_options.lora.empty() ? ReferenceKind::adapters_off
                                              : ReferenceKind::copy;
  LAMINA_CHECK(reference != ReferenceKind::none || !wants_reference || !reference_required(), "preference: loss '",
               impl.definition->name, "' needs reference log-probs: give --reference copy, adapters-off or precomputed");
  LAMINA_CHECK(wants_reference || reference == ReferenceKind::none, "preference: loss '", impl.definition->name,
               "' takes no reference", takes_reference(*impl.definition) ? " with reference_free=true" : "",
               ": drop --reference ", reference_kind_name(reference));
  LAMINA_CHECK(reference != ReferenceKind::adapters_off || !train_options.lora.empty(),
               "preference: --reference adapters-off is the base model under LoRA adapters: it needs --lora");
  LAMINA_CHECK(reference != ReferenceKind::copy || train_options.lora.empty(),
               "preference: with --lora the base is frozen and is the reference already: use --reference adapters-off "
               "(or precomputed) instead of a second copy");
  impl.reference = reference;
  // A precomputed reference is the policy before its first step, through the same forward.
  impl.reference_model = ReferenceModel(reference == ReferenceKind::precomputed ? ReferenceKind::adapters_off : reference);
  // Pairs for a loss on labelled completions: every chosen desirable, every rejected not.
  const auto take = [&](PreferenceData& data, std::vector<PreferencePair>& to_pairs,
                        std::vector<UnpairedExample>& to_unpaired, const char* what) {
    if (impl.layout == PreferenceInputLayout::pairs) {
      LAMINA_CHECK(data.unpaired.empty() && data.prompts.empty(), "preference: loss '", impl.definition->name,
                   "' compares a chosen and a rejected completion, but the ", what, " data holds ",
                   preference_layout_name(data.layout), " lines");
      to_pairs = std::move(data.pairs);
    } else {
      LAMINA_CHECK(data.prompts.empty(), "preference: the ", what, " data holds prompts only; loss '",
                   impl.definition->name, "' needs labelled completions (or pairs)");
      to_unpaired = data.pairs.empty() ? std::move(data.unpaired) : unpair_preferences(data.pairs);
    }
  };
  take(train, impl.pairs, impl.unpaired, "training");
  take(validation, impl.validation_pairs, impl.validation_unpaired, "validation");
  LAMINA_CHECK(impl.examples() > 0, "preference: no training examples");
  impl.data_fingerprint = preference_fingerprint(impl.pairs, impl.unpaired);
  impl.sampler = std::make_unique<EpochSampler>(impl.examples(), impl.seed);
}

PreferenceObjective::~PreferenceObjective() = default;

void PreferenceObjective::prepare(llama::LlamaWithHead& trained, const TrainOptions& options) {
  (void)options;
  impl_->reference_model.prepare(causal_lm(trained, "train preference"));
}

namespace {

// A stateful loss's batch statistics (BCO's reward baseline, KTO's KL estimate) taken over every
// rank's micro-batch at once, as TRL gathers them across processes: the ranks' counts, sums and
// sums of squares are summed, so the moments are those of all their values together.
void share_state_across_ranks(LossState* state, dist::Communicator& communicator) {
  const MomentsReducer reducer = [&communicator](const BatchMoments& local) {
    const std::vector<double> sums = {local.count, local.count * local.mean,
                                      local.count * (local.variance + local.mean * local.mean)};
    Tensor packed = Tensor::from_vector<double>(sums, {3}).to(communicator.device());
    communicator.all_reduce(packed, dist::ReduceOp::sum);
    const std::vector<double> total = packed.to(Device::cpu()).to_vector<double>();
    BatchMoments global;
    global.count = total[0];
    if (global.count > 0) {
      global.mean = total[1] / global.count;
      global.variance = std::max(0.0, total[2] / global.count - global.mean * global.mean);
    }
    return global;
  };
  if (auto* baseline = dynamic_cast<RunningRewardBaseline*>(state)) baseline->reduce_across_ranks = reducer;
  if (auto* estimate = dynamic_cast<KtoKlEstimate*>(state)) estimate->reduce_across_ranks = reducer;
}

}  // namespace

StepResult PreferenceObjective::step(llama::LlamaWithHead& trained, int64_t step) {
  (void)step;
  Impl& impl = *impl_;
  llama::LlamaForCausalLM& model = causal_lm(trained, "train preference");
  if (impl.reference == ReferenceKind::precomputed && impl.precomputed.empty()) impl.precompute(model);
  if (impl.loss_state) impl.loss_state->training = true;
  if (data_parallel_ == nullptr) return impl.run(model, impl.sampler->next(impl.batch_size), false, true);
  if (impl.loss_state) share_state_across_ranks(impl.loss_state.get(), data_parallel_->communicator());
  const int64_t rank = data_parallel_->rank();
  const std::vector<int64_t> drawn = impl.sampler->next(impl.batch_size * data_parallel_->world_size());
  const std::vector<int64_t> mine(drawn.begin() + rank * impl.batch_size, drawn.begin() + (rank + 1) * impl.batch_size);
  return impl.run(model, mine, false, true, double(drawn.size()), data_parallel_);
}

bool PreferenceObjective::has_validation() const { return impl_->validation_examples() > 0; }

std::string PreferenceObjective::data_parallel_support() const {
  LossState* state = impl_->loss_state.get();
  if (state != nullptr && dynamic_cast<RunningRewardBaseline*>(state) == nullptr &&
      dynamic_cast<KtoKlEstimate*>(state) == nullptr)
    return str_cat("loss '", impl_->definition->name, "' keeps state between micro-batches that the ranks cannot share");
  return "";
}


json::Value PreferenceObjective::validate(llama::LlamaWithHead& trained) {
  Impl& impl = *impl_;
  llama::LlamaForCausalLM& model = causal_lm(trained, "train preference");
  if (impl.reference == ReferenceKind::precomputed && impl.precomputed.empty()) impl.precompute(model);
  if (impl.loss_state) impl.loss_state->training = false;
  struct Training {
    LossState* state;
    ~Training() {
      if (state) state->training = true;
    }
  } restore{impl.loss_state.get()};
  std::vector<int64_t> indices(size_t(impl.validation_examples()));
  std::iota(indices.begin(), indices.end(), 0);
  const StepResult result = impl.run(model, indices, true, false);
  json::Value out = json::Object{};
  out.set("val_loss", result.loss);
  for (const auto& [name, value] : result.metrics.as_object()) out.set("val_" + name, value);
  return out;
}

json::Value PreferenceObjective::cursor() const { return impl_->sampler->cursor(); }

void PreferenceObjective::restore(const json::Value& cursor) { impl_->sampler->restore(cursor); }

DataFingerprint PreferenceObjective::fingerprint() const { return impl_->data_fingerprint; }

json::Value PreferenceObjective::settings() const {
  json::Value out = impl_->options.to_json();
  out.set("loss", impl_->definition->name);
  out.set("reference", reference_kind_name(impl_->reference));
  return out;
}

json::Value PreferenceObjective::state() const {
  const Impl& impl = *impl_;
  json::Value out = json::Object{};
  if (impl.loss_state) out.set("loss_state", impl.loss_state->save());
  if (impl.reference == ReferenceKind::precomputed && !impl.precomputed.empty()) {
    // Stored as numbers that read back to the same doubles (the JSON writer's shortest form).
    const auto list = [](const std::vector<std::pair<double, double>>& values) {
      json::Array array;
      for (const auto& [first, second] : values) array.emplace_back(json::Array{json::Value(first), json::Value(second)});
      return json::Value(std::move(array));
    };
    out.set("reference_logps", list(impl.precomputed));
    out.set("validation_reference_logps", list(impl.precomputed_validation));
  }
  return out.as_object().empty() ? json::Value() : out;
}

void PreferenceObjective::restore_state(const json::Value& state) {
  Impl& impl = *impl_;
  if (const json::Value* loss_state = state.find("loss_state"); loss_state != nullptr && impl.loss_state)
    impl.loss_state->restore(*loss_state);
  const auto read = [](const json::Value& array, std::vector<std::pair<double, double>>& into, int64_t expected,
                       const char* what) {
    into.clear();
    for (const json::Value& entry : array.as_array(what)) {
      const json::Array& two = entry.as_array(what);
      LAMINA_CHECK(two.size() == 2, "trainer.json: ", what, " holds an entry of ", two.size(), " values, not 2");
      into.emplace_back(two[0].as_double(what), two[1].as_double(what));
    }
    LAMINA_CHECK(int64_t(into.size()) == expected, "trainer.json: ", what, " holds ", into.size(),
                 " examples' reference log-probs, the data ", expected);
  };
  if (const json::Value* values = state.find("reference_logps"); values != nullptr)
    read(*values, impl.precomputed, impl.examples(), "reference_logps");
  if (const json::Value* values = state.find("validation_reference_logps"); values != nullptr)
    read(*values, impl.precomputed_validation, impl.validation_examples(), "validation_reference_logps");
}

ReferenceKind PreferenceObjective::reference() const { return impl_->reference; }
const LossDefinition& PreferenceObjective::loss() const { return *impl_->definition; }

std::pair<double, double> PreferenceObjective::reference_logps(llama::LlamaWithHead& trained, size_t example) {
  Impl& impl = *impl_;
  llama::LlamaForCausalLM& model = causal_lm(trained, "train preference");
  if (impl.reference == ReferenceKind::precomputed && impl.precomputed.empty()) impl.precompute(model);
  return impl.reference_of(false, int64_t(example));
}

}  // namespace lamina::train
