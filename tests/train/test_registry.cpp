// The registry as a whole: every loss of the spec is there, every loss gradchecks (f64) with
// respect to its policy inputs on random data, hyperparameters and inputs are validated with
// clear messages, the multi-loss combination works, and inputs/results round-trip through JSON.
#include <algorithm>
#include <set>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "train/losses/json_io.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

constexpr int64_t kBatch = 4, kTokens = 5;

// Kept tokens per row of every generated mask (left-aligned).
const int64_t kRowLengths[kBatch] = {5, 3, 4, 2};

Tensor generated_mask() {
  std::vector<std::vector<int>> rows;
  for (int64_t length : kRowLengths) {
    std::vector<int> row(kTokens, 0);
    for (int64_t t = 0; t < length; ++t) row[size_t(t)] = 1;
    rows.push_back(row);
  }
  return bools(rows);
}

// Plausible random values for one input, by what it means.
Tensor random_input(const train::InputSpec& spec, Generator& gen) {
  using train::ValueKind;
  if (spec.shape == train::InputShape::scalar) return Tensor::scalar(23.0, DType::f64);  // token_normalizer
  const Shape shape = spec.shape == train::InputShape::token ? Shape{kBatch, kTokens} : Shape{kBatch};
  switch (spec.kind) {
    case ValueKind::log_prob:
      return spec.shape == train::InputShape::token ? random_tensor(shape, DType::f64, gen, -3, -0.1)
                                                     : random_tensor(shape, DType::f64, gen, -20, -5);
    case ValueKind::length: return f64s({6, 3, 8, 5});
    case ValueKind::label: return Tensor::from_vector(std::vector<uint8_t>{1, 0, 1, 0}, {kBatch}, DType::boolean);
    case ValueKind::probability: return random_tensor(shape, DType::f64, gen, 0.1, 0.9);
    case ValueKind::weight: return random_tensor(shape, DType::f64, gen, 0.5, 1.5);
    default: return random_tensor(shape, DType::f64, gen, -1, 1);
  }
}

// Every input of the loss, optional ones included. Behaviour log-probs sit close to the current
// ones so that ratios stay inside the clip range, away from its kinks.
train::LossInputs random_inputs(const train::LossDefinition& definition, Generator& gen) {
  train::LossInputs inputs;
  for (const train::InputSpec& spec : definition.inputs) {
    inputs.set(spec.name, random_input(spec, gen));
    if (!spec.mask.empty()) inputs.set(spec.mask, generated_mask());
  }
  if (inputs.has("old_token_logps"))
    inputs.set("old_token_logps", inputs.get("policy_token_logps") + random_tensor({kBatch, kTokens}, DType::f64, gen, -0.05, 0.05));
  if (inputs.has("old_logps"))
    inputs.set("old_logps", inputs.get("policy_logps") + random_tensor({kBatch}, DType::f64, gen, -0.05, 0.05));
  return inputs;
}

// Overrides that make every loss run on the generated batch and exercise its optional paths.
Overrides gradcheck_overrides(const train::LossDefinition& definition) {
  Overrides overrides;
  const train::Hyperparameters params = train::default_hyperparameters(definition);
  if (params.has("num_generations")) overrides.push_back({"num_generations", "2"});
  if (params.has("max_completion_length")) overrides.push_back({"max_completion_length", "6"});
  if (definition.name == "grpo" || definition.name == "dr_grpo" || definition.name == "dapo")
    overrides.push_back({"beta", "0.04"});
  if (definition.name == "reinforce_pp") overrides.push_back({"kl_loss_coef", "0.1"});
  if (definition.name == "slic") overrides.push_back({"regularization", "0.5"});
  return overrides;
}

}  // namespace

TEST_CASE("the registry holds every loss of the spec under its TRL / spec name") {
  const std::vector<std::string> expected = {
      "sigmoid", "dpo", "cdpo", "robust", "hinge", "slic", "ipo", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "sppo",
      "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "sft", "rpo", "dpop", "rdpo", "ld_dpo",
      "cpo", "simpo", "orpo", "kto", "apo_zero_unpaired", "bco", "online_dpo", "spin", "inpo", "rebel", "refuel",
      "nash_md", "xpo", "ppo_clip", "grpo", "dr_grpo", "dapo", "simplerl_zoo", "rloo", "reinforce_pp",
      "reinforce_pp_baseline"};
  for (const std::string& name : expected) {
    CAPTURE(name);
    CHECK_NOTHROW(train::find_loss(name));
  }
  CHECK(train::find_loss("dpo").name == "sigmoid");
  CHECK(train::loss_registry().size() == expected.size() - 1);  // dpo is an alias
  for (const train::LossDefinition& definition : train::loss_registry()) {
    CAPTURE(definition.name);
    CHECK(!definition.section.empty());
    CHECK(!definition.summary.empty());
    CHECK((definition.compute != nullptr));
    for (const train::ParamSpec& spec : definition.params) CHECK(!spec.help.empty());
    for (const train::InputSpec& spec : definition.inputs) CHECK(!spec.help.empty());
  }
}

TEST_CASE("every loss gradchecks in f64 with respect to its policy inputs") {
  Generator gen(81);
  for (const train::LossDefinition& definition : train::loss_registry()) {
    // Nash-MD's surrogate has a stop-gradient inside, so its value and gradient disagree by
    // design; test_online_rl_losses.cpp checks its gradient against the closed form instead.
    if (definition.name == "nash_md") continue;
    CAPTURE(definition.name);
    const train::LossInputs inputs = random_inputs(definition, gen);
    // Stateful losses read their state without updating it, so that the finite differences see
    // the same baseline as the analytic gradient.
    std::unique_ptr<train::LossState> state = train::make_state(definition);
    if (state) state->training = false;
    std::vector<std::string> policy_names;
    std::vector<Tensor> policy_values;
    for (const train::InputSpec& spec : definition.inputs) {
      if (spec.role != train::InputRole::policy) continue;
      policy_names.push_back(spec.name);
      policy_values.push_back(inputs.get(spec.name));
    }
    REQUIRE(!policy_values.empty());
    const Overrides overrides = gradcheck_overrides(definition);
    if (definition.name == "bco_pair") {
      Overrides running = overrides;
      running.push_back({"running_baseline", "true"});
      expect_gradcheck("bco_pair running baseline", [&](const std::vector<Tensor>& in) {
        train::LossInputs current = inputs;
        for (size_t i = 0; i < in.size(); ++i) current.set(policy_names[i], in[i]);
        return run_loss(definition.name, current, running, state.get()).loss;
      }, policy_values);
    }
    expect_gradcheck(definition.name, [&](const std::vector<Tensor>& in) {
      train::LossInputs current = inputs;
      for (size_t i = 0; i < in.size(); ++i) current.set(policy_names[i], in[i]);
      return run_loss(definition.name, current, overrides, state.get()).loss;
    }, policy_values);
  }
}

TEST_CASE("hyperparameters: defaults, typed access and clear errors") {
  train::Hyperparameters params = params_for("cdpo");
  CHECK(params.real("beta") == 0.1);
  CHECK(params.real("label_smoothing") == 0.1);
  CHECK(params.is_default("beta"));
  params.set("beta", "0.25");
  CHECK(params.real("beta") == 0.25);
  CHECK_FALSE(params.is_default("beta"));
  CHECK_THROWS_WITH_AS(params.set("betta", 0.2),
                       doctest::Contains("loss 'cdpo' has no hyperparameter 'betta'; its hyperparameters are: beta"), Error);
  CHECK_THROWS_WITH_AS(params.set("label_smoothing", 0.5),
                       doctest::Contains("hyperparameter label_smoothing must be in [0, 0.5), got 0.5"), Error);
  CHECK_THROWS_WITH_AS(params.set("beta", "-1"), doctest::Contains("beta must be in (0, inf), got -1"), Error);
  CHECK_THROWS_WITH_AS(params.set("beta", "fast"), doctest::Contains("needs a finite number, got 'fast'"), Error);
  CHECK_THROWS_WITH_AS(params.set("beta", "nan"), doctest::Contains("needs a finite number"), Error);
  CHECK_THROWS_WITH_AS(params.set("f_divergence_type", "kl"),
                       doctest::Contains("must be one of reverse_kl|forward_kl|js_divergence|alpha_divergence, got 'kl'"),
                       Error);
  CHECK_THROWS_WITH_AS(params.set("reference_free", "yes"), doctest::Contains("is a flag"), Error);
  train::Hyperparameters grpo = params_for("grpo");
  CHECK_FALSE(grpo.is_set("epsilon_high"));
  CHECK_THROWS_WITH_AS(grpo.set("num_generations", "2.5"), doctest::Contains("must be an integer"), Error);
  CHECK_THROWS_WITH_AS(grpo.set("num_generations", "1e300"), doctest::Contains("magnitude at most 2^53"), Error);
  CHECK(params_for("dapo").real("epsilon_high") == 0.28);
  CHECK(params_for("dapo").choice("loss_type") == "dapo");
  CHECK(params_for("dr_grpo").choice("scale_rewards") == "none");
  // Hyperparameters of one loss cannot be passed to another.
  CHECK_THROWS_WITH_AS(train::compute_loss(train::find_loss("ipo"), example_e(), params_for("sigmoid")),
                       doctest::Contains("made for loss 'sigmoid' passed to loss 'ipo'"), Error);
}

TEST_CASE("inputs are validated with messages that name the loss and the input") {
  CHECK_THROWS_WITH_AS(train::find_loss("dpoo"), doctest::Contains("unknown loss 'dpoo'; known losses: sigmoid (dpo), cdpo"),
                       Error);
  train::LossInputs missing = example_e();
  missing = train::LossInputs().set("policy_chosen_logps", f64s({-1.0}));
  CHECK_THROWS_WITH_AS(loss_value("ipo", missing), doctest::Contains("loss 'ipo' needs input 'policy_rejected_logps'"), Error);
  train::LossInputs extra = example_e();
  extra.set("labels", f64s({1}));
  CHECK_THROWS_WITH_AS(loss_value("sigmoid", extra), doctest::Contains("does not take an input named 'labels'"), Error);
  train::LossInputs uneven = example_e();
  uneven.set("policy_rejected_logps", f64s({-1, -2}));
  CHECK_THROWS_WITH_AS(loss_value("sigmoid", uneven), doctest::Contains("policy_rejected_logps has batch size 2"), Error);
  train::LossInputs lengths = example_e_with_lengths();
  lengths.set("chosen_lengths", f64s({2.5}));
  CHECK_THROWS_WITH_AS(loss_value("ipo", lengths), doctest::Contains("chosen_lengths at flat position 0 must be a non-negative integer"),
                       Error);
  train::LossInputs infinite = example_e();
  infinite.set("reference_chosen_logps", f64s({INFINITY}));
  CHECK_THROWS_WITH_AS(loss_value("sigmoid", infinite), doctest::Contains("is not finite"), Error);
  train::LossInputs labels;
  labels.set("policy_logps", f64s({-1})).set("reference_logps", f64s({-1})).set("labels", f64s({2}));
  CHECK_THROWS_WITH_AS(loss_value("apo_zero_unpaired", labels), doctest::Contains("labels at flat position 0 must be 0/false"),
                       Error);
  train::LossInputs tokens;
  tokens.set("policy_token_logps", f64_rows({{-1}})).set("rewards", f64s({1}));
  CHECK_THROWS_WITH_AS(loss_value("grpo", tokens, {{"num_generations", "1"}}), doctest::Contains("needs its mask 'completion_mask'"),
                       Error);
  train::LossInputs mixed = example_e();
  mixed.set("policy_rejected_logps", Tensor::from_vector(std::vector<float>{-15.0f}, {1}));
  CHECK_THROWS_WITH_AS(loss_value("sigmoid", mixed), doctest::Contains("policy inputs must share one dtype"), Error);
  train::LossInputs three;
  three.set("policy_token_logps", f64_rows({{-1}, {-2}, {-3}})).set("completion_mask", bools({{1}, {1}, {1}}))
      .set("rewards", f64s({1, 0, 1}));
  CHECK_THROWS_WITH_AS(loss_value("grpo", three), doctest::Contains("not a whole number of groups of num_generations = 8"),
                       Error);
}

TEST_CASE("f32 inputs run and agree with f64") {
  train::LossInputs f32_inputs;
  const train::LossInputs e = example_e();
  for (const std::string& name : e.names()) f32_inputs.set(name, ops::cast(e.get(name), DType::f32));
  const train::LossResult result = run_loss("sigmoid", f32_inputs);
  CHECK(result.loss.dtype() == DType::f32);
  CHECK(result.loss.item<double>() == doctest::Approx(0.620957).epsilon(1e-6));
}

TEST_CASE("weighted loss lists: MPO's sigmoid 0.8 + bco_pair 0.2 + sft 1.0") {
  const train::LossDefinition& sigmoid = train::find_loss("sigmoid");
  const train::LossDefinition& bco_pair = train::find_loss("bco_pair");
  const train::LossDefinition& sft = train::find_loss("sft");
  const std::vector<train::WeightedLoss> terms = {
      {&sigmoid, 0.8, train::default_hyperparameters(sigmoid)},
      {&bco_pair, 0.2, train::default_hyperparameters(bco_pair)},
      {&sft, 1.0, train::default_hyperparameters(sft)}};
  train::LossInputs inputs = example_e_with_lengths();
  inputs.set("rejected_lengths", f64s({6}));
  CHECK_THROWS_WITH_AS(train::compute_weighted_losses(terms, inputs), doctest::Contains("no loss term takes the input 'rejected_lengths'"),
                       Error);
  train::LossInputs used = example_e();
  used.set("chosen_lengths", f64s({8}));
  const train::LossResult result = train::compute_weighted_losses(terms, used);
  CHECK(result.loss.item<double>() == doctest::Approx(0.8 * 0.620957 + 0.2 * 1.312856 + 1.5).epsilon(1e-6));
  CHECK(result.metrics.get("loss/bco_pair") == doctest::Approx(1.312856).epsilon(1e-6));
  CHECK(result.metrics.get("sigmoid/rewards/chosen") == doctest::Approx(0.1));
}

TEST_CASE("inputs and results as JSON") {
  const train::LossDefinition& grpo = train::find_loss("grpo");
  const json::Value document = json::parse(R"({
    "policy_token_logps": [[-0.5, -1.0], [-2.0, -0.3, -1.5]],
    "old_token_logps": [[-0.6, -0.9], [-1.8, -0.3, -1.2]],
    "reference_token_logps": [[-0.55, -1.2], [-2.1, -0.4, -1.0]],
    "rewards": [1, 0],
    "chosen_lengths": [1, 2]
  })");
  train::JsonInputs parsed = train::inputs_from_json(document, grpo, "example.json");
  REQUIRE(parsed.warnings.size() == 1);  // chosen_lengths belongs to other losses
  CHECK(parsed.warnings[0] == "example.json: key 'chosen_lengths' is not an input of loss 'grpo'; ignored");
  CHECK(parsed.inputs.get("completion_mask").to_vector<bool>() == std::vector<bool>{1, 1, 0, 1, 1, 1});
  const Tensor leaf = parsed.inputs.get("policy_token_logps");
  leaf.set_requires_grad(true);
  // The spec's §7.2 example: the paper's aggregation, TRL's KL term before the bias correction.
  const Overrides spec_example{
      {"num_generations", "2"}, {"beta", "0.04"}, {"loss_type", "grpo"}, {"use_bias_correction_kl", "false"}};
  const train::LossResult result = train::compute_loss(grpo, parsed.inputs, params_for("grpo", spec_example));
  result.loss.backward();
  const json::Value out = train::result_to_json(result, grpo, parsed.inputs);
  CHECK(out.at("loss").as_double() == doctest::Approx(-0.045440).epsilon(1e-5));
  const json::Array& grad = out.at("grad").at("policy_token_logps").as_array();
  REQUIRE(grad.size() == 2);
  CHECK(grad[0].as_array().size() == 2);  // ragged like the input
  CHECK(grad[1].as_array().size() == 3);
  CHECK(out.at("metrics").find("reward") != nullptr);
  CHECK(out.at("grad").find("old_token_logps") == nullptr);  // frozen: no gradient reported

  const auto fails = [&](const char* text, const char* message) {
    CAPTURE(text);
    CHECK_THROWS_WITH_AS(train::inputs_from_json(json::parse(text), grpo, "bad.json"), doctest::Contains(message), Error);
  };
  fails(R"({"rewards": [1, 0]})", "bad.json: missing key 'policy_token_logps'");
  fails(R"({"policy_token_logps": [[-1], [-2]], "rewards": [1, 0, 1]})", "bad.json: rewards has 3 entries, but 'policy_token_logps' has 2");
  fails(R"({"policy_token_logps": [[-1], [-2]], "old_token_logps": [[-1, -2], [-2]], "rewards": [1, 0]})",
        "old_token_logps[0] has 2 tokens, but 'policy_token_logps[0]' has 1");
  fails(R"({"policy_token_logps": [[-1], ["x"]], "rewards": [1, 0]})", "bad.json: policy_token_logps[1][0]: expected a number");
  fails(R"({"policy_token_logps": [[-1]], "rewards": [1], "completion_mask": [[1]]})", "'completion_mask' is derived");
  fails(R"({"policy_token_logps": [[-1]], "rewards": [1], "reward": [1]})", "unknown key 'reward'");
  fails(R"([1, 2])", "bad.json: expected a JSON object");
  const json::Value labels = json::parse(R"({"policy_logps": [-1, -2], "reference_logps": [-1, -1], "labels": [true, 0]})");
  CHECK(train::inputs_from_json(labels, train::find_loss("kto"), "u.json").inputs.get("labels").to_vector<double>() ==
        std::vector<double>{1, 0});
}
