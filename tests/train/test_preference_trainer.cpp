// Offline preference training (train/preference_trainer.h) on a tiny model: every offline loss
// of the registry moves the policy towards the chosen completions (its implicit reward accuracy
// rises); the reference is the same whichever way it is computed (a frozen copy, precomputed
// once, the base under disabled LoRA adapters); micro-batches add up to the whole batch.
#include <cmath>
#include <set>

#include "autograd/autograd.h"
#include "helpers.h"
#include "nn/lora.h"
#include "train/losses/logprobs.h"
#include "train/losses/registry.h"
#include "train/preference_trainer.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// Pairs whose chosen completion follows a rule the rejected one breaks: after a prompt of random
// ids, chosen continues with the prompt's last id + 1, +2, +3 and rejected with random ids.
train::PreferenceData rule_pairs(int count, uint64_t seed) {
  Generator generator(seed);
  train::PreferenceData data;
  for (int i = 0; i < count; ++i) {
    const int64_t length = 3 + i % 4;
    std::vector<int64_t> prompt = randint(3, 30, {length}, generator).to_vector<int64_t>();
    prompt[0] = 1;
    train::PreferencePair pair;
    pair.prompt.assign(prompt.begin(), prompt.end());
    for (int64_t k = 1; k <= 3; ++k) pair.chosen.push_back(int32_t(prompt.back() + k));
    const std::vector<int64_t> noise = randint(3, kTinyVocabSize, {3}, generator).to_vector<int64_t>();
    pair.rejected.assign(noise.begin(), noise.end());
    if (pair.rejected == pair.chosen) pair.rejected[0] = 3;
    pair.rejected.push_back(2);
    pair.chosen.push_back(2);
    pair.line = i + 1;
    data.pairs.push_back(pair);
  }
  return data;
}

// Summed log-probs of each pair's chosen and rejected completion under `model`.
std::vector<std::pair<double, double>> pair_logps(llama::LlamaForCausalLM& model, const train::PreferenceData& data) {
  autograd::NoGradGuard no_grad;
  std::vector<std::pair<double, double>> out;
  for (const train::PreferencePair& pair : data.pairs) {
    const train::PreferencePair* one[] = {&pair};
    const train::PreferenceBatch batch =
        train::make_preference_batch(std::span<const train::PreferencePair* const>(one), {}, 0);
    const Tensor logits = model.forward(batch.input_ids);
    const train::TokenLogps logps = train::completion_logprobs(logits, batch.input_ids, batch.completion_mask);
    const std::vector<double> sums =
        train::reduce_logprobs(logps.logps, logps.mask, train::LogprobReduction::sum).to_vector<double>();
    out.emplace_back(sums[0], sums[1]);
  }
  return out;
}

train::TrainOptions options_for(int steps, int batch = 4, int micro = 0) {
  train::TrainOptions options;
  options.precision = "f32";  // the tiny models' thresholds are f32's, on every CPU
  options.steps = steps;
  options.batch_size = batch;
  options.micro_batch_size = micro;
  options.lr = 2e-2;
  options.warmup_steps = 0;
  options.schedule = "constant";
  options.weight_decay = 0;
  options.seq_len = 32;  // rows are at most 10 tokens
  options.progress = false;
  return options;
}

// The fraction of pairs whose implicit reward (policy minus reference log-prob) is larger for
// the chosen completion: TRL's rewards/accuracies with a reference, ties counted as wrong.
double implicit_accuracy(const std::vector<std::pair<double, double>>& policy,
                         const std::vector<std::pair<double, double>>& reference) {
  int right = 0;
  for (size_t i = 0; i < policy.size(); ++i)
    right += policy[i].first - reference[i].first > policy[i].second - reference[i].second ? 1 : 0;
  return double(right) / double(policy.size());
}

}  // namespace

TEST_CASE("preference trainer: every offline loss raises the implicit reward accuracy of its pairs") {
  const train::PreferenceData data = rule_pairs(8, 3);
  std::vector<std::string> trained, refused;
  for (const train::LossDefinition& definition : train::loss_registry()) {
    try {
      train::input_layout(definition);
    } catch (const Error&) {
      continue;  // online losses: their inputs come from sampling
    }
    CAPTURE(definition.name);
    auto model = tiny_model(5);
    const std::vector<std::pair<double, double>> before = pair_logps(*model, data);
    train::PreferenceOptions preference;
    preference.loss = definition.name;
    std::unique_ptr<train::PreferenceObjective> objective;
    try {
      objective = std::make_unique<train::PreferenceObjective>(preference, options_for(12), data);
    } catch (const Error& error) {
      // Only losses that need data pairs cannot give (judge scores, win rates) are refused.
      CHECK_MESSAGE(std::string(error.what()).find("which preference data does not give") != std::string::npos,
                    std::string(error.what()));
      refused.push_back(definition.name);
      continue;
    }
    train::Trainer trainer(model, options_for(12), std::move(objective));
    double first_loss = NAN, last_loss = NAN;
    trainer.on_metrics = [&](const json::Value& line) {
      if (std::isnan(first_loss)) first_loss = line.at("loss").as_double();
      last_loss = line.at("loss").as_double();
    };
    trainer.run();
    const std::vector<std::pair<double, double>> after = pair_logps(*model, data);
    CHECK(last_loss < first_loss);
    // DiscoPOP's loss is not monotonic around a zero margin: at rho = 0 with tau = 0.05 its
    // slope is (0.25/tau)(1 - ln 2) - 0.75 > 0, so from a reference equal to the policy it first
    // pushes the margin negative (as TRL's implementation does); it lowers its loss, not the margin.
    if (definition.name != "discopop") CHECK(implicit_accuracy(after, before) >= 0.75);
    trained.push_back(definition.name);
  }
  std::string listing;
  for (const std::string& name : refused) listing += " " + name;
  INFO("trained: " << trained.size() << ", refused:" << listing);
  // Soft SPPO reads win-rate estimates and INPO the previous iterate's log-probs: a judge and an
  // earlier model give those, not a file of pairs (the online trainers do).
  CHECK(listing == " sppo inpo");
  // The paired and unpaired families of preference-losses.md §2, §4 and §5.
  for (const char* name : {"sigmoid", "ipo", "hinge", "robust", "cdpo", "simpo", "cpo", "orpo", "kto", "bco",
                           "apo_zero", "apo_down", "discopop", "sigmoid_norm", "rpo", "dpop", "ld_dpo"})
    CHECK_MESSAGE(std::find(trained.begin(), trained.end(), name) != trained.end(), name);
}

TEST_CASE("preference trainer: a precomputed reference equals the live copy's bit for bit") {
  const train::PreferenceData data = rule_pairs(6, 7);
  auto model = tiny_model(9);
  train::PreferenceOptions copy;
  copy.reference = train::ReferenceKind::copy;
  train::PreferenceObjective live(copy, options_for(2), data);
  live.prepare(*model, options_for(2));
  train::PreferenceOptions precomputed = copy;
  precomputed.reference = train::ReferenceKind::precomputed;
  train::PreferenceObjective stored(precomputed, options_for(2), data);
  stored.prepare(*model, options_for(2));
  const std::vector<std::pair<double, double>> direct = pair_logps(*model, data);
  for (size_t i = 0; i < data.pairs.size(); ++i) {
    CAPTURE(i);
    const auto a = live.reference_logps(*model, i), b = stored.reference_logps(*model, i);
    CHECK(a.first == b.first);
    CHECK(a.second == b.second);
    CHECK(a.first == direct[i].first);  // the same as the model's own log-probs of the pair
  }
  // Through a checkpoint's JSON and back: the same doubles.
  train::PreferenceObjective restored(precomputed, options_for(2), data);
  restored.restore_state(json::parse(stored.state().dump()));
  for (size_t i = 0; i < data.pairs.size(); ++i) CHECK(restored.reference_logps(*model, i) == stored.reference_logps(*model, i));
}

TEST_CASE("preference trainer: the adapters-off reference is the base model's log-probs") {
  const train::PreferenceData data = rule_pairs(5, 11);
  auto base = tiny_model(13);
  auto adapted = tiny_model(13);
  nn::LoraConfig config;
  config.options.rank = 2;
  config.options.init = nn::LoraInit::random;  // non-zero: the adapted model differs from the base
  config.target_modules = {"all-linear"};
  nn::apply_lora(*adapted, config);
  train::TrainOptions options = options_for(2);
  options.lora = "r=2";
  train::PreferenceOptions preference;  // auto: adapters-off under LoRA
  train::PreferenceObjective objective(preference, options, data);
  CHECK(objective.reference() == train::ReferenceKind::adapters_off);
  objective.prepare(*adapted, options);
  const std::vector<std::pair<double, double>> expected = pair_logps(*base, data);
  const std::vector<std::pair<double, double>> with_adapter = pair_logps(*adapted, data);
  int differing = 0;
  for (size_t i = 0; i < data.pairs.size(); ++i) {
    CAPTURE(i);
    const auto reference = objective.reference_logps(*adapted, i);
    CHECK(reference.first == expected[i].first);
    CHECK(reference.second == expected[i].second);
    differing += with_adapter[i].first != expected[i].first ? 1 : 0;
  }
  CHECK(differing == int(data.pairs.size()));
  CHECK(nn::lora_selection(*adapted)->active == "default");  // the adapter is back on
}

TEST_CASE("preference trainer: micro-batches of 2 pairs make the step of 4, and bad settings are refused") {
  const train::PreferenceData data = rule_pairs(8, 17);
  std::vector<double> losses[2];
  for (int micro : {0, 2}) {
    auto model = tiny_model(21);
    train::Trainer trainer(model, options_for(3, 4, micro),
                           std::make_unique<train::PreferenceObjective>(train::PreferenceOptions{}, options_for(3, 4, micro), data));
    trainer.on_metrics = [&](const json::Value& line) {
      losses[micro == 0 ? 0 : 1].push_back(line.at("loss").as_double());
      CHECK(line.find("rewards/accuracies") != nullptr);
      CHECK(line.find("logps/chosen") != nullptr);
    };
    trainer.run();
  }
  REQUIRE(losses[0].size() == 3);
  REQUIRE(losses[1].size() == 3);
  for (int i = 0; i < 3; ++i) CHECK(losses[1][size_t(i)] == doctest::Approx(losses[0][size_t(i)]).epsilon(1e-5));
  train::PreferenceOptions simpo;
  simpo.loss = "simpo";
  simpo.reference = train::ReferenceKind::copy;
  CHECK_THROWS_WITH_AS(train::PreferenceObjective(simpo, options_for(1), data), doctest::Contains("takes no reference"),
                       Error);
  train::PreferenceOptions grpo;
  grpo.loss = "grpo";
  CHECK_THROWS_WITH_AS(train::PreferenceObjective(grpo, options_for(1), data),
                       doctest::Contains("is not an offline preference loss"), Error);
  train::PreferenceOptions adapters_off;
  adapters_off.reference = train::ReferenceKind::adapters_off;
  CHECK_THROWS_WITH_AS(train::PreferenceObjective(adapters_off, options_for(1), data), doctest::Contains("it needs --lora"),
                       Error);
}
