// What a TRL user relies on, checked against TRL 1.16's own code: GRPO's entropy bonus under
// gradient accumulation, use_bias_correction_kl, the cispo and sapo loss types, RLOO's
// epsilon_high and reward_clip_range, TRL 1.x's input names as aliases, TRL's defaults (and
// where the spec keeps another, said so), and metrics that mean what TRL's mean.
//
// The reference numbers come from running TRL 1.16.0's GRPOTrainer._compute_loss and
// RLOOTrainer._compute_loss (with a stand-in trainer object in place of the model, float64) on
// the spec's §7.2 and §7.4 examples; docs/preference-losses.md says how to rerun that.
#include <cmath>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "train/losses/json_io.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// TRL's own values are f64 here, so the match is to rounding.
constexpr double kTrlTolerance = 1e-12;

void check_values(const std::vector<double>& actual, const std::vector<double>& expected, double tolerance) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(actual[i] - expected[i]) <= tolerance);
  }
}

// The spec's §7.2 example (one prompt, G = 2), with per-token entropies for the bonus.
train::LossInputs grpo_example() {
  train::LossInputs inputs;
  inputs.set("policy_token_logps", f64_rows({{-0.5, -1.0, 0}, {-2.0, -0.3, -1.5}}))
      .set("old_token_logps", f64_rows({{-0.6, -0.9, 0}, {-1.8, -0.3, -1.2}}))
      .set("reference_token_logps", f64_rows({{-0.55, -1.2, 0}, {-2.1, -0.4, -1.0}}))
      .set("completion_mask", bools({{1, 1, 0}, {1, 1, 1}}))
      .set("rewards", f64s({1.0, 0.0}));
  return inputs;
}

train::LossInputs with_entropies(train::LossInputs inputs) {
  inputs.set("token_entropies", f64_rows({{0.9, 1.1, 0}, {0.5, 0.7, 1.3}}));
  return inputs;
}

Overrides grpo(std::initializer_list<std::pair<std::string, std::string>> extra) {
  Overrides overrides{{"num_generations", "2"}};
  overrides.insert(overrides.end(), extra.begin(), extra.end());
  return overrides;
}

}  // namespace

TEST_CASE("GRPO's entropy bonus is divided by the accumulation steps for every loss_type, as TRL 1.16") {
  // TRL: loss - coef * (token mean of the entropies) / gradient_accumulation_steps. Before the
  // fix lamina divided only the policy term, so the entropy gradient was 2x (4x) too large.
  const train::LossInputs inputs = with_entropies(grpo_example());
  SUBCASE("grpo, 2 accumulation steps") {
    const Overrides overrides = grpo({{"loss_type", "grpo"}, {"gradient_accumulation_steps", "2"}, {"entropy_coef", "0.1"}});
    const train::LossResult result = run_loss("grpo", inputs, overrides);
    CHECK(std::abs(result.loss.item<double>() - -0.06834782424034863) < kTrlTolerance);
    CHECK(std::abs(result.metrics.get("policy_loss") - -0.04669564848069724) < kTrlTolerance);
    CHECK(std::abs(result.metrics.get("entropy") - 0.9) < kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "token_entropies", overrides), {-0.01, -0.01, 0, -0.01, -0.01, -0.01},
                 kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.09767041863461401, -0.0799657754021593, 0, 0.04823735049742218, 0.058917232943890285, 0},
                 kTrlTolerance);
  }
  SUBCASE("dapo, whose policy term is normalised by the global token count instead") {
    train::LossInputs global = inputs;
    global.set("token_normalizer", Tensor::scalar(10.0, DType::f64));  // two micro-batches of 5 tokens
    const Overrides overrides = grpo({{"loss_type", "dapo"}, {"gradient_accumulation_steps", "2"}, {"entropy_coef", "0.1"}});
    CHECK(std::abs(loss_value("grpo", global, overrides) - -0.001962911473709014) < kTrlTolerance);
    check_values(gradient_of("grpo", global, "token_entropies", overrides), {-0.01, -0.01, 0, -0.01, -0.01, -0.01},
                 kTrlTolerance);
  }
  SUBCASE("bnpo with a KL term and 4 accumulation steps") {
    const Overrides overrides = grpo({{"loss_type", "bnpo"}, {"beta", "0.04"}, {"gradient_accumulation_steps", "4"},
                                      {"entropy_coef", "0.05"}});
    CHECK(std::abs(loss_value("grpo", inputs, overrides) - 0.010543105060229893) < kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "token_entropies", overrides),
                 {-0.0025, -0.0025, 0, -0.0025, -0.0025, -0.0025}, kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.03895765036203804, -0.031624375193649336, 0, 0.029106156449068905, 0.03555033976633418,
                  -0.000740818220681718},
                 kTrlTolerance);
  }
}

TEST_CASE("GRPO use_bias_correction_kl: TRL 1.16's default, k3 times the differentiable importance ratio") {
  CHECK(params_for("grpo").flag("use_bias_correction_kl"));
  const train::LossInputs inputs = grpo_example();
  SUBCASE("grpo aggregation: value, gradient and the kl metric of the corrected term") {
    const Overrides overrides = grpo({{"loss_type", "grpo"}, {"beta", "0.04"}});
    const train::LossResult result = run_loss("grpo", inputs, overrides);
    CHECK(std::abs(result.loss.item<double>() - -0.04571942245555888) < kTrlTolerance);
    CHECK(std::abs(result.metrics.get("kl") - 0.027456079708439197) < kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.1947882518101902, -0.15812187596824667, 0, 0.09702052149689636, 0.11850113255444725,
                  -0.0024693940689390604},
                 kTrlTolerance);
    // Turned off it is the spec's §7.2 value (TRL <= 1.10's default).
    CHECK(std::abs(loss_value("grpo", inputs, grpo({{"loss_type", "grpo"}, {"beta", "0.04"}, {"use_bias_correction_kl", "false"}})) -
                   -0.04544007265976324) < kTrlTolerance);
  }
  SUBCASE("dapo (the default loss_type)") {
    CHECK(std::abs(loss_value("grpo", inputs, grpo({{"beta", "0.04"}})) - 0.08717242024091958) < kTrlTolerance);
  }
  SUBCASE("on-policy (no behaviour log-probs): ρ = 1 in value but not in gradient") {
    train::LossInputs on_policy = inputs;
    on_policy = train::LossInputs();
    for (const char* name : {"policy_token_logps", "reference_token_logps", "completion_mask", "rewards"})
      on_policy.set(name, inputs.get(name));
    const Overrides overrides = grpo({{"loss_type", "grpo"}, {"beta", "0.04"}});
    CHECK(std::abs(loss_value("grpo", on_policy, overrides) - 0.0012555758209339407) < kTrlTolerance);
    check_values(gradient_of("grpo", on_policy, "policy_token_logps", overrides),
                 {-0.17625169883167086, -0.17475169883167085, 0, 0.11850113255444725, 0.11850113255444725,
                  0.11450113255444723},
                 kTrlTolerance);
  }
  SUBCASE("sequence-level importance sampling (GSPO) weights every token's KL by the sequence ratio") {
    const Overrides overrides = grpo({{"loss_type", "grpo"}, {"beta", "0.04"}, {"importance_sampling_level", "sequence"}});
    const train::LossResult result = run_loss("grpo", inputs, overrides);
    CHECK(std::abs(result.loss.item<double>() - -0.05317576734762086) < kTrlTolerance);
    CHECK(std::abs(result.metrics.get("kl") - 0.03080791745101131) < kTrlTolerance);
  }
}

TEST_CASE("GRPO loss_type cispo and sapo, as TRL 1.16") {
  const train::LossInputs inputs = grpo_example();
  SUBCASE("cispo with TRL's default cap (epsilon_high unset = epsilon = 0.2)") {
    const Overrides overrides = grpo({{"loss_type", "cispo"}});
    const train::LossResult result = run_loss("grpo", inputs, overrides);
    CHECK(std::abs(result.loss.item<double>() - -0.06504462517005487) < kTrlTolerance);
    CHECK(std::abs(result.metrics.get("cispo_clip_ratio") - 0.4) < kTrlTolerance);
    CHECK_FALSE(result.metrics.has("clip_ratio/low_mean"));  // TRL logs those for the clipped types only
    // The clipped ratio is a stop-gradient weight: dL/dlp = -min(ρ, 0.2) A / tokens.
    const double a = 0.5 / (std::sqrt(0.5) + 1e-4);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.2 * a / 5, -0.2 * a / 5, 0, 0.2 * a / 5, 0.2 * a / 5, 0.2 * a / 5}, kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.02828027181306734, -0.02828027181306734, 0, 0.02828027181306734, 0.02828027181306734,
                  0.02828027181306734},
                 kTrlTolerance);
  }
  SUBCASE("cispo with ScaleRL's cap 5 and a KL term") {
    const Overrides overrides = grpo({{"loss_type", "cispo"}, {"epsilon_high", "5"}, {"beta", "0.04"}});
    CHECK(std::abs(loss_value("grpo", inputs, overrides) - -0.22390892620488295) < kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.15583060144815217, -0.12649750077459734, 0, 0.11642462579627562, 0.1422013590653367,
                  0.10178943034203257},
                 kTrlTolerance);
  }
  SUBCASE("sapo: a soft gate per token, per-sequence mean") {
    // TRL builds the temperatures with torch.where from Python floats, i.e. in f32: its 1.05 is
    // 1.0499999523162842. With that value the match is to f64 rounding.
    const Overrides overrides = grpo({{"loss_type", "sapo"}, {"beta", "0.04"}, {"sapo_temperature_neg", "1.0499999523162842"}});
    CHECK(std::abs(loss_value("grpo", inputs, overrides) - -0.08610425007613298) < kTrlTolerance);
    check_values(gradient_of("grpo", inputs, "policy_token_logps", overrides),
                 {-0.1942490835929738, -0.15776034005226622, 0, 0.09615203387606955, 0.11850113255444725,
                  0.08322800718870381},
                 kTrlTolerance);
    // At ρ = 1 the gate's slope is 1 for every τ: on-policy, sapo's policy gradient is -A, as GRPO's.
    train::LossInputs on_policy;
    for (const char* name : {"policy_token_logps", "completion_mask", "rewards"}) on_policy.set(name, inputs.get(name));
    const std::vector<double> soft = gradient_of("grpo", on_policy, "policy_token_logps", grpo({{"loss_type", "sapo"}}));
    const std::vector<double> hard = gradient_of("grpo", on_policy, "policy_token_logps", grpo({{"loss_type", "grpo"}}));
    check_values(soft, hard, 1e-15);
    // Temperatures that differ change the value off-policy.
    CHECK(loss_value("grpo", inputs, grpo({{"loss_type", "sapo"}, {"sapo_temperature_neg", "3"}})) !=
          doctest::Approx(loss_value("grpo", inputs, grpo({{"loss_type", "sapo"}}))).epsilon(1e-6));
  }
  SUBCASE("sapo is smooth: its gradient checks against finite differences") {
    const train::LossInputs base = grpo_example();
    expect_gradcheck("sapo", [&](const std::vector<Tensor>& in) {
      train::LossInputs current = base;
      current.set("policy_token_logps", in[0]);
      return run_loss("grpo", current, grpo({{"loss_type", "sapo"}, {"beta", "0.04"}})).loss;
    }, {base.get("policy_token_logps")});
  }
}

TEST_CASE("RLOO epsilon_high and reward_clip_range, as TRL 1.16") {
  // The spec's §7.4 example: S_θ - S_old = [0.2, -0.5, 0], KL sums [2, 1, 0], β = 0.05.
  train::LossInputs inputs;
  inputs.set("policy_logps", f64s({-10, -12, -11}))
      .set("old_logps", f64s({-10.2, -11.5, -11}))
      .set("reference_logps", f64s({-12.2, -12.5, -11}))
      .set("rewards", f64s({1, 0, 0.5}));
  const Overrides base{{"num_generations", "3"}};
  CHECK_FALSE(params_for("rloo").is_set("epsilon_high"));
  CHECK_FALSE(params_for("rloo").is_set("reward_clip_range"));
  const train::LossResult symmetric = run_loss("rloo", inputs, base);
  CHECK(std::abs(symmetric.loss.item<double>() - -0.09499999999999997) < kTrlTolerance);
  CHECK(symmetric.metrics.get("clip_ratio/high_mean") == doctest::Approx(1.0 / 3));
  CHECK(symmetric.metrics.get("clip_ratio/region_mean") == doctest::Approx(2.0 / 3));
  SUBCASE("epsilon_high 0.28 lets the first completion's ρ = 1.2214 through") {
    Overrides high = base;
    high.push_back({"epsilon_high", "0.28"});
    const train::LossResult result = run_loss("rloo", inputs, high);
    CHECK(std::abs(result.loss.item<double>() - -0.09981562058603799) < kTrlTolerance);
    CHECK(result.metrics.get("clip_ratio/high_mean") == 0.0);
    check_values(gradient_of("rloo", inputs, "policy_logps", high), {-0.27481562058603803, 0.0, -0.024999999999999984},
                 kTrlTolerance);
  }
  SUBCASE("reward_clip_range clamps the rewards before the KL penalty; reward logs them as given") {
    Overrides clipped = base;
    clipped.push_back({"reward_clip_range", "0,0.6"});
    const train::LossResult result = run_loss("rloo", inputs, clipped);
    CHECK(std::abs(result.loss.item<double>() - -0.05499999999999999) < kTrlTolerance);
    check_values(gradient_of("rloo", inputs, "policy_logps", clipped), {0.0, 0.0, -0.09166666666666667}, kTrlTolerance);
    CHECK(result.metrics.get("reward") == doctest::Approx(0.5));  // TRL: the unclipped rewards
    // TRL prints its tuples as "(0.0, 0.6)": that form is accepted too.
    Overrides printed = base;
    printed.push_back({"reward_clip_range", "(0.0, 0.6)"});
    CHECK(loss_value("rloo", inputs, printed) == result.loss.item<double>());
    CHECK_THROWS_WITH_AS(params_for("rloo", {{"reward_clip_range", "1,0"}}),
                         doctest::Contains("needs low <= high, got '1,0'"), Error);
    CHECK_THROWS_WITH_AS(params_for("rloo", {{"reward_clip_range", "1"}}),
                         doctest::Contains("needs two finite numbers low,high"), Error);
  }
  SUBCASE("kl is TRL's token mean of k1 when the completion lengths are given") {
    train::LossInputs with_lengths = inputs;
    with_lengths.set("completion_lengths", f64s({4, 2, 4}));
    const train::Metrics metrics = run_loss("rloo", with_lengths, base).metrics;
    CHECK(metrics.get("kl") == doctest::Approx(3.0 / 10));
    CHECK(metrics.get("kl_per_sequence") == doctest::Approx(1.0));
    CHECK_FALSE(symmetric.metrics.has("kl"));  // without the lengths the token mean is unknown
  }
}

TEST_CASE("TRL 1.x input names are aliases; one input under two names is an error naming both") {
  const train::LossInputs canonical = example_e();
  SUBCASE("DPO: chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps") {
    train::LossInputs trl;
    trl.set("chosen_logps", f64s({-12.0})).set("rejected_logps", f64s({-15.0}))
        .set("ref_chosen_logps", f64s({-13.0})).set("ref_rejected_logps", f64s({-14.5}));
    CHECK(loss_value("sigmoid", trl) == loss_value("sigmoid", canonical));
    check_values(gradient_of("sigmoid", trl, "chosen_logps"), gradient_of("sigmoid", canonical, "policy_chosen_logps"), 0.0);
    train::LossInputs both = canonical;
    both.set("chosen_logps", f64s({-12.0}));
    CHECK_THROWS_WITH_AS(loss_value("sigmoid", both),
                         doctest::Contains("input policy_chosen_logps is given twice, as 'policy_chosen_logps' and as "
                                           "'chosen_logps'"),
                         Error);
    // Unknown names still fail, and the message lists the aliases.
    train::LossInputs typo = canonical;
    typo.set("chosen_logp", f64s({-12.0}));
    CHECK_THROWS_WITH_AS(loss_value("sigmoid", typo), doctest::Contains("chosen_logps (= policy_chosen_logps)"), Error);
  }
  SUBCASE("KTO: label, ref_logps, KL_logps, ref_KL_logps") {
    train::LossInputs ours, trl;
    ours.set("policy_logps", f64s({-3, -4, -5, -6})).set("reference_logps", f64s({-4, -3.8, -4.5, -6.4}))
        .set("labels", f64s({1, 1, 0, 0})).set("policy_kl_logps", f64s({-3, -4, -5, -6}))
        .set("reference_kl_logps", f64s({-3.3, -3.9, -5.2, -6.4}));
    trl.set("logps", f64s({-3, -4, -5, -6})).set("ref_logps", f64s({-4, -3.8, -4.5, -6.4}))
        .set("label", f64s({1, 1, 0, 0})).set("KL_logps", f64s({-3, -4, -5, -6}))
        .set("ref_KL_logps", f64s({-3.3, -3.9, -5.2, -6.4}));
    const train::LossResult expected = run_loss("kto", ours), actual = run_loss("kto", trl);
    CHECK(actual.loss.item<double>() == expected.loss.item<double>());
    CHECK(actual.metrics.get("kl") == expected.metrics.get("kl"));
    CHECK(expected.metrics.get("kl") == doctest::Approx(0.2));  // the spec's §5.1 example
  }
  SUBCASE("GRPO: per_token_logps, old_per_token_logps, ref_per_token_logps, entropies") {
    const train::LossInputs ours = with_entropies(grpo_example());
    train::LossInputs trl;
    trl.set("per_token_logps", ours.get("policy_token_logps")).set("old_per_token_logps", ours.get("old_token_logps"))
        .set("ref_per_token_logps", ours.get("reference_token_logps")).set("entropies", ours.get("token_entropies"))
        .set("completion_mask", ours.get("completion_mask")).set("rewards", ours.get("rewards"));
    const Overrides overrides = grpo({{"beta", "0.04"}, {"entropy_coef", "0.01"}});
    CHECK(loss_value("grpo", trl, overrides) == loss_value("grpo", ours, overrides));
    train::LossInputs both = ours;
    both.set("old_per_token_logps", ours.get("old_token_logps"));
    CHECK_THROWS_WITH_AS(loss_value("grpo", both, overrides), doctest::Contains("'old_token_logps' and as 'old_per_token_logps'"),
                         Error);
  }
  SUBCASE("weighted loss lists route an alias to every term that takes it") {
    train::LossInputs trl;
    trl.set("chosen_logps", f64s({-12.0})).set("rejected_logps", f64s({-15.0}))
        .set("ref_chosen_logps", f64s({-13.0})).set("ref_rejected_logps", f64s({-14.5})).set("chosen_lengths", f64s({8}));
    std::vector<train::WeightedLoss> terms;
    terms.push_back({&train::find_loss("sigmoid"), 1.0, params_for("sigmoid"), nullptr});
    terms.push_back({&train::find_loss("sft"), 1.0, params_for("sft"), nullptr});
    CHECK(train::compute_weighted_losses(terms, trl).loss.item<double>() == doctest::Approx(0.620957 + 1.5).epsilon(1e-6));
  }
  SUBCASE("JSON inputs") {
    const train::LossDefinition& dpo = train::find_loss("dpo");
    const json::Value document = json::parse(
        R"({"chosen_logps": [-12.0], "rejected_logps": [-15.0], "ref_chosen_logps": [-13.0], "ref_rejected_logps": [-14.5]})");
    const train::JsonInputs parsed = train::inputs_from_json(document, dpo, "trl.json");
    CHECK(parsed.warnings.empty());
    CHECK(loss_value("dpo", parsed.inputs) == loss_value("dpo", canonical));
    const json::Value twice = json::parse(
        R"({"policy_chosen_logps": [-12.0], "chosen_logps": [-12.0], "rejected_logps": [-15.0],
            "ref_chosen_logps": [-13.0], "ref_rejected_logps": [-14.5]})");
    CHECK_THROWS_WITH_AS(train::inputs_from_json(twice, dpo, "trl.json"),
                         doctest::Contains("trl.json: input policy_chosen_logps is given twice, as 'policy_chosen_logps' "
                                           "and as 'chosen_logps'"),
                         Error);
  }
}

TEST_CASE("defaults are TRL's config defaults where a loss has TRL's name, unless the spec fixes another") {
  // Every default says where it comes from (printed by `lamina preference-loss --list`).
  for (const train::LossDefinition& definition : train::loss_registry())
    for (const train::ParamSpec& spec : definition.params) {
      CAPTURE(definition.name);
      CAPTURE(spec.name);
      CHECK_FALSE(spec.source.empty());
    }
  const auto source = [](const std::string& loss, const std::string& name) {
    for (const train::ParamSpec& spec : train::find_loss(loss).params)
      if (spec.name == name) return spec.source;
    return std::string("(no such hyperparameter)");
  };
  // TRL's: robust DPO smooths nothing by default (it was 0.1, the paper's suggestion).
  CHECK(params_for("robust").real("label_smoothing") == 0.0);
  CHECK(source("robust", "label_smoothing") == "TRL 1.16 DPOConfig");
  CHECK(loss_value("robust", example_e()) == doctest::Approx(0.620957).epsilon(1e-6));  // = DPO
  CHECK(params_for("cpo").real("cpo_alpha") == 1.0);
  CHECK(source("cpo", "cpo_alpha") == "TRL 1.16 CPOConfig");
  // GRPOConfig: the dapo aggregation, the bias-corrected KL, max_completion_length 512.
  const train::Hyperparameters grpo_defaults = params_for("grpo");
  CHECK(grpo_defaults.choice("loss_type") == "dapo");
  CHECK(grpo_defaults.integer("max_completion_length") == 512);
  CHECK(grpo_defaults.real("sapo_temperature_pos") == 1.0);
  CHECK(grpo_defaults.real("sapo_temperature_neg") == 1.05);
  CHECK(source("grpo", "loss_type") == "TRL 1.16 GRPOConfig");
  // The spec's: SimPO has no NLL term (CPOConfig's 1.0 makes it CPO-SimPO), EXO's ε must be > 0,
  // SimpleRL-Zoo's verl KL has no importance weight.
  CHECK(params_for("simpo").real("cpo_alpha") == 0.0);
  CHECK(source("simpo", "cpo_alpha").rfind("spec §4.2", 0) == 0);
  CHECK(params_for("exo_pair").real("label_smoothing") == 1e-3);
  CHECK(source("exo_pair", "label_smoothing").rfind("spec §2.6", 0) == 0);
  CHECK_FALSE(params_for("simplerl_zoo").flag("use_bias_correction_kl"));
  CHECK(source("simplerl_zoo", "use_bias_correction_kl").rfind("spec §7.6", 0) == 0);
  CHECK(params_for("cdpo").real("label_smoothing") == 0.1);
  CHECK(source("cdpo", "label_smoothing").rfind("spec §2.2", 0) == 0);
}

TEST_CASE("metric names mean what TRL means") {
  SUBCASE("logps/* of the length-averaged reference-free losses are averages (CPO ipo/simpo, SimPO, ORPO)") {
    const train::LossInputs e = example_e_with_lengths();  // S = -12 / 8 tokens and -15 / 6 tokens
    for (const char* loss : {"simpo", "orpo"}) {
      CAPTURE(loss);
      const train::Metrics metrics = run_loss(loss, taken_by(loss, e)).metrics;
      CHECK(metrics.get("logps/chosen") == doctest::Approx(-1.5).epsilon(1e-15));
      CHECK(metrics.get("logps/rejected") == doctest::Approx(-2.5).epsilon(1e-15));
    }
    const train::LossInputs cpo = taken_by("cpo", e);
    CHECK(run_loss("cpo", cpo, {{"loss_type", "ipo"}}).metrics.get("logps/chosen") == doctest::Approx(-1.5).epsilon(1e-15));
    // AlphaPO transforms the rewards, not the logged log-probs (TRL).
    CHECK(run_loss("cpo", cpo, {{"loss_type", "simpo"}, {"alpha", "0.5"}}).metrics.get("logps/chosen") ==
          doctest::Approx(-1.5).epsilon(1e-15));
    // The summed forms keep sums, as DPO's losses do even when they average inside (ipo).
    CHECK(run_loss("cpo", cpo).metrics.get("logps/chosen") == -12.0);
    CHECK(run_loss("ipo", e).metrics.get("logps/chosen") == -12.0);
  }
  SUBCASE("GRPO reward_std is the std of the whole batch's rewards") {
    train::LossInputs batch;
    batch.set("policy_token_logps", f64_rows({{-1.0}, {-1.0}, {-1.0}, {-1.0}}))
        .set("completion_mask", bools({{1}, {1}, {1}, {1}}))
        .set("rewards", f64s({1, 0, 3, 3}));
    const train::Metrics metrics = run_loss("grpo", batch, {{"num_generations", "2"}}).metrics;
    CHECK(metrics.get("reward_std") == doctest::Approx(1.5).epsilon(1e-14));  // Bessel over all 4: sqrt(6.75 / 3)
    CHECK(metrics.get("frac_reward_zero_std") == 0.5);  // the second group is all 3
    CHECK(run_loss("grpo", batch, {{"num_generations", "2"}, {"scale_rewards", "batch"}}).metrics.get("frac_reward_zero_std") ==
          0.0);
  }
}
