// The paired losses of preference-losses.md §2 (and the §3 comparison table): every worked
// example to 1e-6, the standard metrics, and the invariances the spec states or implies.
#include <cmath>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "train/losses/state.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

struct Example {
  const char* section;
  const char* loss;
  Overrides overrides;
  double expected;
};

void check_examples(const train::LossInputs& inputs, const std::vector<Example>& examples) {
  for (const Example& example : examples) {
    INFO("§" << example.section << " " << example.loss);
    CHECK(std::abs(loss_value(example.loss, taken_by(example.loss, inputs), example.overrides) - example.expected) <
          kSpecTolerance);
  }
}

train::LossInputs swapped(const train::LossInputs& inputs) {
  train::LossInputs out;
  out.set("policy_chosen_logps", inputs.get("policy_rejected_logps"))
      .set("policy_rejected_logps", inputs.get("policy_chosen_logps"))
      .set("reference_chosen_logps", inputs.get("reference_rejected_logps"))
      .set("reference_rejected_logps", inputs.get("reference_chosen_logps"));
  return out;
}

}  // namespace

TEST_CASE("§2 worked examples on example E (β = 0.1)") {
  check_examples(example_e(), {
      {"2.1", "sigmoid", {}, 0.620957},
      {"2.1 alias", "dpo", {}, 0.620957},
      {"2.2", "cdpo", {{"label_smoothing", "0.1"}}, 0.635957},
      {"2.3", "robust", {{"label_smoothing", "0.1"}}, 0.602207},
      {"2.4", "hinge", {}, 0.85},
      {"2.5 paper", "ipo", {{"ipo_normalization", "sum"}}, 12.25},
      {"2.6", "exo_pair", {{"label_smoothing", "1e-3"}}, 2.505517},
      {"2.7", "nca_pair", {}, 1.350825},
      {"2.8 current TRL", "bco_pair", {}, 1.312856},
      {"2.9 hard", "sppo_hard", {}, 36.25},
      {"2.11 zero", "apo_zero", {}, 0.962523},
      {"2.11 down", "apo_down", {}, 0.987549},
      {"2.12", "discopop", {}, 0.849338},
      {"2.19 forward KL", "sigmoid", {{"f_divergence_type", "forward_kl"}}, 0.631154},
      {"2.19 JS", "sigmoid", {{"f_divergence_type", "js_divergence"}}, 0.660652},
      {"2.19 alpha", "sigmoid", {{"f_divergence_type", "alpha_divergence"}, {"f_alpha_divergence_coef", "0.5"}}, 0.627691},
  });
  check_examples(example_e_with_lengths(), {
      {"2.5 TRL", "ipo", {}, 22.960069},
      {"2.13", "sigmoid_norm", {}, 0.682785},
      {"2.14", "sft", {}, 1.5},
      {"2.15", "rpo", {{"rpo_alpha", "1.0"}}, 2.120957},
      {"2.15 paper NLL (same for one pair)", "rpo", {{"rpo_nll", "per_sequence"}}, 2.120957},
      {"2.16", "dpop", {}, 0.620957},
      {"2.17", "rdpo", {{"rdpo_alpha", "0.05"}}, 0.575939},
  });
  train::LossInputs slic = example_e();
  check_examples(train::LossInputs().set("policy_chosen_logps", slic.get("policy_chosen_logps"))
                     .set("policy_rejected_logps", slic.get("policy_rejected_logps")),
                 {{"2.4 SLiC, δ = 5", "slic", {{"margin", "5"}}, 2.0}});
}

TEST_CASE("§2.1 DPO gradient and the standard metrics of §1.4") {
  // dL/dh = -β σ(-β h) = -0.046257; h grows with S_θ(y_w) and falls with S_θ(y_l).
  CHECK(std::abs(gradient_of("sigmoid", example_e(), "policy_chosen_logps")[0] - -0.046257) < kSpecTolerance);
  CHECK(std::abs(gradient_of("sigmoid", example_e(), "policy_rejected_logps")[0] - 0.046257) < kSpecTolerance);
  const train::Metrics metrics = run_loss("sigmoid", example_e()).metrics;
  CHECK(metrics.get("rewards/chosen") == doctest::Approx(0.1));
  CHECK(metrics.get("rewards/rejected") == doctest::Approx(-0.05));
  CHECK(metrics.get("rewards/margins") == doctest::Approx(0.15));
  CHECK(metrics.get("rewards/accuracies") == 1.0);
  CHECK(metrics.get("logps/chosen") == -12.0);
  CHECK(metrics.get("logps/rejected") == -15.0);
  // Ties count as wrong.
  train::LossInputs tie = example_e();
  tie.set("policy_chosen_logps", f64s({-13.0 + 1.5 - 1.5})).set("reference_chosen_logps", f64s({-13.0 - 0.5 + 0.5}));
  tie.set("policy_rejected_logps", f64s({-14.5})).set("reference_rejected_logps", f64s({-14.5}));
  CHECK(run_loss("sigmoid", tie).metrics.get("rewards/accuracies") == 0.0);
}

TEST_CASE("§2.8 BCO pair with TRL <= 0.28's running baseline") {
  const train::LossDefinition& definition = train::find_loss("bco_pair");
  const std::unique_ptr<train::LossState> state = train::make_state(definition);
  const train::LossResult result = run_loss("bco_pair", example_e(), {{"running_baseline", "true"}}, state.get());
  CHECK(std::abs(result.loss.item<double>() - 1.312700) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("delta") - 0.025) < 1e-12);
  CHECK_THROWS_WITH_AS(run_loss("bco_pair", example_e(), {{"running_baseline", "true"}}), doctest::Contains("state"),
                       Error);
}

TEST_CASE("§2.9 SPPO soft and §2.10 AOT on {E, E2}") {
  train::LossInputs soft = example_e();
  soft.set("chosen_win_rates", f64s({0.7})).set("rejected_win_rates", f64s({0.4}));
  CHECK(std::abs(loss_value("sppo", soft, {{"beta", "0.1"}}) - 0.625) < kSpecTolerance);
  // P_w = 1, P_l = 0 makes the soft loss half the hard one.
  soft.set("chosen_win_rates", f64s({1.0})).set("rejected_win_rates", f64s({0.0}));
  CHECK(loss_value("sppo", soft, {{"beta", "0.1"}}) == doctest::Approx(0.5 * 36.25).epsilon(1e-12));

  const train::LossInputs batch = examples_e_e2();
  CHECK(std::abs(loss_value("aot", batch) - 0.763889) < kSpecTolerance);
  CHECK(std::abs(loss_value("sigmoid", batch) - 0.766986) < kSpecTolerance);
  CHECK(std::abs(loss_value("aot_unpaired", batch) - 0.757677) < kSpecTolerance);
  CHECK_THROWS_WITH_AS(loss_value("aot", example_e()), doctest::Contains("batch of at least 2"), Error);
}

TEST_CASE("§2.16 DPOP penalty and §2.18 LD-DPO worked examples") {
  CHECK(std::abs(loss_value("dpop", example_e(-13.2)) - 1.291419) < kSpecTolerance);
  CHECK(std::abs(loss_value("sigmoid", example_e(-13.2)) - 0.678260) < kSpecTolerance);

  train::LossInputs tokens;
  tokens.set("policy_chosen_token_logps", f64_rows({{-1, -2, -1.5, -0.5}}))
      .set("reference_chosen_token_logps", f64_rows({{-1.2, -2.1, -1.4, -0.9}}))
      .set("policy_rejected_token_logps", f64_rows({{-2, -1, 0, 0}}))
      .set("reference_rejected_token_logps", f64_rows({{-1.8, -0.7, 0, 0}}))
      .set("chosen_mask", bools({{1, 1, 1, 1}}))
      .set("rejected_mask", bools({{1, 1, 0, 0}}));
  CHECK(std::abs(loss_value("ld_dpo", tokens, {{"ld_alpha", "0.5"}}) - 0.646775) < kSpecTolerance);
  CHECK(std::abs(loss_value("ld_dpo", tokens, {{"ld_alpha", "1"}}) - 0.639659) < kSpecTolerance);
}

TEST_CASE("§2 invariances") {
  const train::LossInputs e = example_e(), e_lengths = example_e_with_lengths();
  const double dpo = loss_value("sigmoid", e);
  SUBCASE("label smoothing 0 is plain DPO") {
    CHECK(loss_value("cdpo", e, {{"label_smoothing", "0"}}) == doctest::Approx(dpo).epsilon(1e-14));
    CHECK(loss_value("robust", e, {{"label_smoothing", "0"}}) == doctest::Approx(dpo).epsilon(1e-14));
  }
  SUBCASE("robust DPO is unbiased: averaging over a flip with probability ε gives DPO") {
    const double epsilon = 0.2;
    const Overrides robust{{"label_smoothing", "0.2"}};
    const double expected_loss = (1 - epsilon) * loss_value("robust", e, robust) + epsilon * loss_value("robust", swapped(e), robust);
    CHECK(expected_loss == doctest::Approx(dpo).epsilon(1e-12));
  }
  SUBCASE("large β: DPO saturates (no gradient) on a right pair and becomes linear in -β h on a wrong one") {
    const Overrides large{{"beta", "1e4"}};
    CHECK(loss_value("sigmoid", e, large) < 1e-300);
    CHECK(gradient_of("sigmoid", e, "policy_chosen_logps", large)[0] == doctest::Approx(0.0));
    CHECK(loss_value("sigmoid", swapped(e), large) == doctest::Approx(1e4 * 1.5).epsilon(1e-12));
    CHECK(gradient_of("sigmoid", swapped(e), "policy_chosen_logps", large)[0] == doctest::Approx(-1e4).epsilon(1e-12));
    // IPO's target margin 1/(2β) shrinks to 0: the loss tends to h², pulling the policy to π_ref.
    CHECK(loss_value("ipo", e, {{"beta", "1e6"}, {"ipo_normalization", "sum"}}) == doctest::Approx(1.5 * 1.5).epsilon(1e-5));
  }
  SUBCASE("DPO depends on β h only") {
    train::LossInputs halved = e;
    for (const char* name : {"policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"})
      halved.set(name, e.get(name) * 0.5);
    CHECK(loss_value("sigmoid", halved, {{"beta", "0.2"}}) == doctest::Approx(dpo).epsilon(1e-14));
  }
  SUBCASE("zero-strength modifiers are plain DPO") {
    CHECK(loss_value("rpo", taken_by("rpo", e_lengths), {{"rpo_alpha", "0"}}) == doctest::Approx(dpo).epsilon(1e-14));
    CHECK(loss_value("dpop", example_e(-13.2), {{"dpop_lambda", "0"}}) ==
          doctest::Approx(loss_value("sigmoid", example_e(-13.2))).epsilon(1e-14));
    CHECK(loss_value("rdpo", e_lengths, {{"rdpo_alpha", "0"}}) == doctest::Approx(dpo).epsilon(1e-14));
    CHECK(loss_value("sigmoid", e, {{"f_divergence_type", "reverse_kl"}}) == dpo);
    train::LossInputs weighted = e;
    weighted.set("pair_weights", f64s({1.0}));
    CHECK(loss_value("sigmoid", weighted) == dpo);
  }
  SUBCASE("reference_free is DPO with zero reference terms") {
    train::LossInputs zero_reference = e;
    zero_reference.set("reference_chosen_logps", f64s({0.0})).set("reference_rejected_logps", f64s({0.0}));
    train::LossInputs no_reference;
    no_reference.set("policy_chosen_logps", e.get("policy_chosen_logps"))
        .set("policy_rejected_logps", e.get("policy_rejected_logps"));
    CHECK(loss_value("sigmoid", no_reference, {{"reference_free", "true"}}) == loss_value("sigmoid", zero_reference));
    CHECK_THROWS_WITH_AS(loss_value("sigmoid", no_reference), doctest::Contains("reference_free=true"), Error);
  }
  SUBCASE("EXO is 0, with zero gradient, where σ(β h) = 1 - ε") {
    const double epsilon = 1e-3, beta = 0.1, h = std::log((1 - epsilon) / epsilon) / beta;
    train::LossInputs at_minimum = e;
    at_minimum.set("policy_chosen_logps", f64s({-13.0 + h - 0.5 + 0.0})).set("policy_rejected_logps", f64s({-14.5 - 0.5}));
    // r_w - r_l = (h - 0.5) - (-0.5) = h
    CHECK(std::abs(loss_value("exo_pair", at_minimum)) < 1e-12);
    CHECK(std::abs(gradient_of("exo_pair", at_minimum, "policy_chosen_logps")[0]) < 1e-12);
  }
  SUBCASE("DiscoPOP stays finite where e^{-ρ} overflows") {
    const train::LossInputs wrong = example_e(-1e5);
    CHECK(std::isfinite(loss_value("discopop", wrong)));
    CHECK(std::isfinite(gradient_of("discopop", wrong, "policy_chosen_logps")[0]));
  }
  SUBCASE("AOT equals DPO when sorting pairs nothing up, and ignores the batch order") {
    train::LossInputs ordered;  // u = [1, 2, 3] and v = [0.5, 1, 2]: both already ascending
    ordered.set("policy_chosen_logps", f64s({-9, -8, -7})).set("policy_rejected_logps", f64s({-10, -10, -10}))
        .set("reference_chosen_logps", f64s({-9.5, -9, -8})).set("reference_rejected_logps", f64s({-10, -10, -10}));
    CHECK(loss_value("aot", ordered) == doctest::Approx(loss_value("sigmoid", ordered)).epsilon(1e-14));
    train::LossInputs permuted = examples_e_e2();
    for (const char* name : {"policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"}) {
      const std::vector<double> v = permuted.get(name).to_vector<double>();
      permuted.set(name, f64s({v[1], v[0]}));
    }
    CHECK(loss_value("aot", permuted) == doctest::Approx(loss_value("aot", examples_e_e2())).epsilon(1e-14));
  }
  SUBCASE("LD-DPO with equal lengths is DPO on the sums") {
    train::LossInputs tokens;
    tokens.set("policy_chosen_token_logps", f64_rows({{-1, -2}})).set("reference_chosen_token_logps", f64_rows({{-1.5, -2}}))
        .set("policy_rejected_token_logps", f64_rows({{-2, -1}})).set("reference_rejected_token_logps", f64_rows({{-1.5, -1}}))
        .set("chosen_mask", bools({{1, 1}})).set("rejected_mask", bools({{1, 1}}));
    train::LossInputs sums;
    sums.set("policy_chosen_logps", f64s({-3})).set("reference_chosen_logps", f64s({-3.5}))
        .set("policy_rejected_logps", f64s({-3})).set("reference_rejected_logps", f64s({-2.5}));
    CHECK(loss_value("ld_dpo", tokens, {{"ld_alpha", "0.3"}}) == doctest::Approx(loss_value("sigmoid", sums)).epsilon(1e-14));
  }
}
