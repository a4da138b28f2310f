// Iterative / online losses (preference-losses.md §6) and RL policy-gradient losses (§7):
// worked examples to 1e-6, advantage estimators, and invariances (one-member groups, η scaling,
// INPO reducing to IPO, stop-gradient surrogates).
#include <cmath>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "train/losses/advantages.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// §7.2's example: one prompt, G = 2; completion 1 has 2 tokens, completion 2 has 3.
train::LossInputs grpo_example() {
  train::LossInputs inputs;
  inputs.set("policy_token_logps", f64_rows({{-0.5, -1.0, 0}, {-2.0, -0.3, -1.5}}))
      .set("old_token_logps", f64_rows({{-0.6, -0.9, 0}, {-1.8, -0.3, -1.2}}))
      .set("reference_token_logps", f64_rows({{-0.55, -1.2, 0}, {-2.1, -0.4, -1.0}}))
      .set("completion_mask", bools({{1, 1, 0}, {1, 1, 1}}))
      .set("rewards", f64s({1.0, 0.0}));
  return inputs;
}

// §7.1's example: one 3-token response.
train::LossInputs ppo_example() {
  train::LossInputs inputs;
  inputs.set("policy_token_logps", f64_rows({{-1, -0.5, -2}}))
      .set("old_token_logps", f64_rows({{-1.1, -0.5, -1.6}}))
      .set("reference_token_logps", f64_rows({{-1.2, -0.4, -1.7}}))
      .set("values", f64_rows({{0.35, 0.45, 0.9}}))
      .set("old_values", f64_rows({{0.3, 0.5, 0.8}}))
      .set("completion_mask", bools({{1, 1, 1}}))
      .set("scores", f64s({1.0}));
  return inputs;
}

void check_close(const std::vector<double>& actual, const std::vector<double>& expected, double tolerance) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(actual[i] - expected[i]) < tolerance);
  }
}

}  // namespace

TEST_CASE("§6 worked examples: online DPO, SPIN, INPO, REBEL, REFUEL") {
  CHECK(std::abs(loss_value("online_dpo", example_e()) - 0.620957) < kSpecTolerance);  // §6.1
  train::LossInputs spin;                                                               // §6.2
  spin.set("policy_real_logps", f64s({-12})).set("opponent_real_logps", f64s({-12.5}))
      .set("policy_generated_logps", f64s({-15})).set("opponent_generated_logps", f64s({-14}));
  CHECK(std::abs(loss_value("spin", spin) - 0.620957) < kSpecTolerance);
  CHECK(run_loss("spin", spin).metrics.get("rewards/real") == doctest::Approx(0.05));

  train::LossInputs inpo = example_e();  // §6.4 with S_t(y_w) = -12.5, S_t(y_l) = -14.0
  inpo.set("iterate_chosen_logps", f64s({-12.5})).set("iterate_rejected_logps", f64s({-14.0}));
  CHECK(std::abs(loss_value("inpo", inpo) - 4246.694444) < kSpecTolerance);
  CHECK(std::abs(loss_value("inpo", inpo, {{"eta", "0.5"}, {"tau", "0.1"}}) - 0.25) < kSpecTolerance);
  CHECK_THROWS_WITH_AS(loss_value("inpo", inpo, {{"eta", "0.1"}, {"tau", "0.2"}}), doctest::Contains("tau < eta"), Error);

  train::LossInputs rebel;  // §6.5: E with π_t as above, R = 0.8 vs 0.3
  rebel.set("policy_first_logps", f64s({-12})).set("policy_second_logps", f64s({-15}))
      .set("iterate_first_logps", f64s({-12.5})).set("iterate_second_logps", f64s({-14}))
      .set("first_rewards", f64s({0.8})).set("second_rewards", f64s({0.3}));
  CHECK(std::abs(loss_value("rebel", rebel) - 1.0) < kSpecTolerance);
  CHECK(std::abs(loss_value("rebel", rebel, {{"eta", "2"}}) - 0.25) < kSpecTolerance);
  CHECK(std::abs(loss_value("rebel", rebel, {{"eta", "2"}, {"form", "paper"}}) - 0.0625) < kSpecTolerance);

  train::LossInputs refuel;  // §6.6
  refuel.set("policy_first_logps", f64s({-6.0})).set("policy_second_logps", f64s({-7.0}))
      .set("iterate_first_logps", f64s({-6.2})).set("iterate_second_logps", f64s({-6.5}))
      .set("first_rewards", f64s({0.9})).set("second_rewards", f64s({0.4}));
  CHECK(std::abs(loss_value("refuel", refuel) - 0.04) < kSpecTolerance);
}

TEST_CASE("§6 invariances") {
  SUBCASE("INPO with τ = 0 and π_t = π_ref is IPO (sum form) with β = η") {
    train::LossInputs inpo = example_e();
    inpo.set("iterate_chosen_logps", inpo.get("reference_chosen_logps"))
        .set("iterate_rejected_logps", inpo.get("reference_rejected_logps"));
    CHECK(loss_value("inpo", inpo, {{"eta", "0.3"}, {"tau", "0"}}) ==
          doctest::Approx(loss_value("ipo", example_e(), {{"beta", "0.3"}, {"ipo_normalization", "sum"}})).epsilon(1e-13));
  }
  SUBCASE("REBEL's code form is η² times its paper form, and symmetric in the two responses") {
    train::LossInputs rebel;
    rebel.set("policy_first_logps", f64s({-3, -7})).set("policy_second_logps", f64s({-5, -6}))
        .set("iterate_first_logps", f64s({-3.5, -6})).set("iterate_second_logps", f64s({-4, -6.5}))
        .set("first_rewards", f64s({0.1, 2})).set("second_rewards", f64s({0.7, -1}));
    const double code = loss_value("rebel", rebel, {{"eta", "3"}}), paper = loss_value("rebel", rebel, {{"eta", "3"}, {"form", "paper"}});
    CHECK(code == doctest::Approx(9 * paper).epsilon(1e-13));
    train::LossInputs flipped;
    flipped.set("policy_first_logps", rebel.get("policy_second_logps")).set("policy_second_logps", rebel.get("policy_first_logps"))
        .set("iterate_first_logps", rebel.get("iterate_second_logps")).set("iterate_second_logps", rebel.get("iterate_first_logps"))
        .set("first_rewards", rebel.get("second_rewards")).set("second_rewards", rebel.get("first_rewards"));
    CHECK(loss_value("rebel", flipped, {{"eta", "3"}}) == doctest::Approx(code).epsilon(1e-14));
  }
  SUBCASE("online DPO with loss_type=ipo is IPO's sum form") {
    CHECK(loss_value("online_dpo", example_e(), {{"loss_type", "ipo"}}) ==
          doctest::Approx(loss_value("ipo", example_e(), {{"ipo_normalization", "sum"}})).epsilon(1e-14));
  }
}

TEST_CASE("§6.7 Nash-MD surrogate: value, metrics and the stop-gradient gradient") {
  train::LossInputs nash;
  nash.set("policy_token_logps", f64_rows({{-3, -5}})).set("reference_token_logps", f64_rows({{-3.2, -5.3}}))
      .set("completion_mask", bools({{1, 1}}))
      .set("policy_sample_scores", f64s({1.2})).set("mixture_sample_scores", f64s({0.7}));
  const train::LossResult result = run_loss("nash_md", nash);
  CHECK(std::abs(result.loss.item<double>() - 0.769675) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("loss/kl") - -2.1) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("loss/score") - -0.979675) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("rewards/probabilities") - 0.622459) < kSpecTolerance);
  check_close(gradient_of("nash_md", nash, "policy_token_logps"), {-0.102459, -0.092459}, kSpecTolerance);
  // On random inputs: d/dlp_t = [β (lp_t - lr_t) - (P - ½)] / B on kept tokens, 0 on padding. The
  // finite-difference gradcheck does not apply (the stop-gradient makes value and gradient disagree).
  Generator gen(71);
  const Tensor policy = random_tensor({3, 4}, DType::f64, gen, -3, -0.1), reference = random_tensor({3, 4}, DType::f64, gen, -3, -0.1);
  const Tensor scores = random_tensor({3}, DType::f64, gen), mixture = random_tensor({3}, DType::f64, gen);
  train::LossInputs random;
  random.set("policy_token_logps", policy).set("reference_token_logps", reference)
      .set("completion_mask", bools({{1, 1, 1, 1}, {1, 1, 0, 0}, {1, 0, 0, 0}}))
      .set("policy_sample_scores", scores).set("mixture_sample_scores", mixture);
  const std::vector<double> grad = gradient_of("nash_md", random, "policy_token_logps", {{"beta", "0.3"}});
  const std::vector<double> lp = policy.to_vector<double>(), lr = reference.to_vector<double>();
  const std::vector<double> s = scores.to_vector<double>(), m = mixture.to_vector<double>();
  const std::vector<int> lengths{4, 2, 1};
  for (size_t i = 0; i < grad.size(); ++i) {
    const size_t row = i / 4;
    const double probability = 1 / (1 + std::exp(-(s[row] - m[row])));
    const double expected = int(i % 4) < lengths[row] ? (0.3 * (lp[i] - lr[i]) - (probability - 0.5)) / 3.0 : 0.0;
    CHECK(grad[i] == doctest::Approx(expected).epsilon(1e-12));
  }
}

TEST_CASE("§6.8 XPO: score-ordered pair plus the exploration term") {
  train::LossInputs xpo;
  xpo.set("policy_logps_policy_sample", f64s({-8})).set("reference_logps_policy_sample", f64s({-8.5}))
      .set("policy_logps_reference_sample", f64s({-9})).set("reference_logps_reference_sample", f64s({-8.7}))
      .set("policy_sample_scores", f64s({1.2})).set("reference_sample_scores", f64s({0.7}));
  const train::LossResult result = run_loss("xpo", xpo);
  CHECK(std::abs(result.loss.item<double>() - 0.653857) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("loss/dpo") - 0.653947) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("loss/xpo") - -0.00009) < kSpecTolerance);
  // Reversed scores make the reference sample the chosen one: h flips sign.
  xpo.set("reference_sample_scores", f64s({1.5}));
  CHECK(run_loss("xpo", xpo).metrics.get("loss/dpo") == doctest::Approx(std::log1p(std::exp(0.08))).epsilon(1e-12));
  // Ties go to the policy sample.
  xpo.set("reference_sample_scores", f64s({1.2}));
  CHECK(run_loss("xpo", xpo).metrics.get("loss/dpo") == doctest::Approx(0.653947).epsilon(1e-5));
}

TEST_CASE("§7.1 PPO-clip worked example (whitening off)") {
  const train::LossResult result = run_loss("ppo_clip", ppo_example(), {{"whiten_advantages", "false"}});
  CHECK(std::abs(result.metrics.get("loss/policy") - -0.450397) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("loss/value") - 0.112316) < kSpecTolerance);
  CHECK(std::abs(result.loss.item<double>() - -0.439165) < kSpecTolerance);
  // GAE and returns of the example, directly.
  const std::vector<bool> mask{true, true, true};
  const std::vector<double> advantages =
      train::generalized_advantages({-0.005, 0.005, 0.995}, {0.3, 0.5, 0.8}, mask, 1, 1.0, 0.95);
  check_close(advantages, {0.660738, 0.49025, 0.195}, kSpecTolerance);
  // Whitened advantages have mean 0 over the kept tokens.
  std::vector<double> whitened = advantages;
  train::whiten(whitened, mask);
  CHECK(std::abs(whitened[0] + whitened[1] + whitened[2]) < 1e-12);
}

TEST_CASE("§7.2 GRPO worked example in every aggregation, and §7.3 Dr. GRPO / DAPO") {
  const train::LossInputs inputs = grpo_example();
  // The spec's example is TRL's KL term before use_bias_correction_kl (TRL 1.16's default, which
  // test_trl_compatibility.cpp checks against TRL's own code).
  const Overrides base{{"num_generations", "2"}, {"beta", "0.04"}, {"use_bias_correction_kl", "false"}};
  const auto with = [&](const char* loss_type) {
    Overrides overrides = base;
    overrides.push_back({"loss_type", loss_type});
    return overrides;
  };
  CHECK(std::abs(loss_value("grpo", inputs, with("grpo")) - -0.045440) < kSpecTolerance);
  CHECK(std::abs(loss_value("grpo", inputs, with("bnpo")) - 0.087501) < kSpecTolerance);
  CHECK(std::abs(loss_value("grpo", inputs, with("dapo")) - 0.087501) < kSpecTolerance);
  Overrides dr = with("dr_grpo");
  dr.push_back({"max_completion_length", "4"});
  CHECK(std::abs(loss_value("grpo", inputs, dr) - 0.054688) < kSpecTolerance);
  check_close(train::group_advantages({1, 0}, 2, "group", 1e-4), {0.707007, -0.707007}, kSpecTolerance);
  CHECK(std::abs(loss_value("dr_grpo", inputs,
                            {{"num_generations", "2"}, {"beta", "0.04"}, {"max_completion_length", "4"},
                             {"use_bias_correction_kl", "false"}}) -
                 0.038937) < kSpecTolerance);
  CHECK(std::abs(loss_value("dapo", inputs, {{"num_generations", "2"}}) - 0.086074) < kSpecTolerance);
  // dapo with the global token count given: the same sum over a larger divisor.
  train::LossInputs global = inputs;
  global.set("token_normalizer", Tensor::scalar(10.0, DType::f64));
  CHECK(loss_value("dapo", global, {{"num_generations", "2"}}) == doctest::Approx(0.086074 * 5 / 10).epsilon(1e-5));
  const train::Metrics metrics = run_loss("grpo", inputs, with("grpo")).metrics;
  CHECK(metrics.get("reward") == 0.5);
  CHECK(metrics.get("frac_reward_zero_std") == 0.0);
  CHECK(metrics.get("clip_ratio/low_mean") == doctest::Approx(0.2));  // one of five tokens: ρ = 0.74 with A < 0
}

TEST_CASE("§7.2 GRPO invariances") {
  SUBCASE("one group member has zero advantage: only the KL term is left") {
    CHECK(train::group_advantages({0.3}, 1, "group", 1e-4) == std::vector<double>{0.0});
    const Overrides singleton{{"num_generations", "1"}};
    CHECK(loss_value("grpo", grpo_example(), singleton) == 0.0);
    for (double g : gradient_of("grpo", grpo_example(), "policy_token_logps", singleton)) CHECK(g == 0.0);
  }
  SUBCASE("identical rewards in a group give zero advantages") {
    train::LossInputs same = grpo_example();
    same.set("rewards", f64s({0.5, 0.5}));
    CHECK(loss_value("grpo", same, {{"num_generations", "2"}}) == 0.0);
    CHECK(run_loss("grpo", same, {{"num_generations", "2"}}).metrics.get("frac_reward_zero_std") == 1.0);
  }
  SUBCASE("without behaviour log-probs, ρ = 1 and the gradient is -A / |y| / B per token (grpo)") {
    train::LossInputs on_policy = grpo_example();
    const Tensor policy = on_policy.get("policy_token_logps");
    on_policy = train::LossInputs();
    on_policy.set("policy_token_logps", policy).set("completion_mask", grpo_example().get("completion_mask"))
        .set("rewards", f64s({1.0, 0.0}));
    const std::vector<double> grad =
        gradient_of("grpo", on_policy, "policy_token_logps", {{"num_generations", "2"}, {"loss_type", "grpo"}});
    const double a = 0.5 / (std::sqrt(0.5) + 1e-4);
    check_close(grad, {-a / 2 / 2, -a / 2 / 2, 0, a / 3 / 2, a / 3 / 2, a / 3 / 2}, 1e-12);
  }
  SUBCASE("sequence-level importance sampling equals token level when each sequence's log-ratios are equal") {
    train::LossInputs uniform_ratio = grpo_example();
    uniform_ratio.set("old_token_logps", f64_rows({{-0.6, -1.1, 0}, {-1.9, -0.2, -1.4}}));
    const Overrides token{{"num_generations", "2"}}, sequence{{"num_generations", "2"}, {"importance_sampling_level", "sequence"}};
    CHECK(loss_value("grpo", uniform_ratio, sequence) == doctest::Approx(loss_value("grpo", uniform_ratio, token)).epsilon(1e-13));
  }
  SUBCASE("padding never leaks: NaN under the mask changes nothing") {
    train::LossInputs padded = grpo_example();
    padded.set("policy_token_logps", f64_rows({{-0.5, -1.0, NAN}, {-2.0, -0.3, -1.5}}));
    const Overrides overrides{{"num_generations", "2"}, {"beta", "0.04"}};
    CHECK(loss_value("grpo", padded, overrides) == loss_value("grpo", grpo_example(), overrides));
    const std::vector<double> grad = gradient_of("grpo", padded, "policy_token_logps", overrides);
    for (double g : grad) CHECK(std::isfinite(g));
    CHECK(grad[2] == 0.0);
  }
  SUBCASE("DAPO's overlong penalty") {
    CHECK(train::overlong_penalty(16384, 20480, 4096) == 0.0);
    CHECK(train::overlong_penalty(18432, 20480, 4096) == doctest::Approx(-0.5));
    CHECK(train::overlong_penalty(20481, 20480, 4096) == -1.0);
  }
}

TEST_CASE("§7.4 RLOO: REINFORCE and clipped forms") {
  train::LossInputs rloo;
  rloo.set("policy_logps", f64s({-10, -12, -11})).set("rewards", f64s({1, 0, 0.5}));
  CHECK(std::abs(loss_value("rloo", rloo, {{"num_generations", "3"}, {"objective", "reinforce"}, {"beta", "0"}}) - -0.5) <
        kSpecTolerance);
  check_close(train::leave_one_out_advantages({1, 0, 0.5}, 3), {0.75, -0.75, 0}, 1e-12);
  // KL sums [2, 1, 0] (S_old - S_ref) and S_θ - S_old = [0.2, -0.5, 0].
  rloo.set("old_logps", f64s({-10.2, -11.5, -11})).set("reference_logps", f64s({-12.2, -12.5, -11}));
  CHECK(std::abs(loss_value("rloo", rloo, {{"num_generations", "3"}, {"beta", "0.05"}}) - -0.095) < kSpecTolerance);
  // Leave-one-out advantages are k/(k-1) times the mean-centred rewards.
  const std::vector<double> rewards{0.3, -1.2, 2.0, 0.4};
  const std::vector<double> centered = train::group_centered(rewards, 4), loo = train::leave_one_out_advantages(rewards, 4);
  for (size_t i = 0; i < rewards.size(); ++i) CHECK(loo[i] == doctest::Approx(4.0 / 3.0 * centered[i]).epsilon(1e-13));
}

TEST_CASE("§7.5 REINFORCE++ returns and globally normalised advantages") {
  // c_KL = 0.01; k1 = lo - lr = [0.2, -0.1, 0.3] and [0.5, 0.1]; outcomes 1 and 0.
  train::LossInputs inputs;
  inputs.set("policy_token_logps", f64_rows({{-1.0, -2.0, -0.5}, {-0.7, -1.3, 0}}))
      .set("reference_token_logps", f64_rows({{-1.2, -1.9, -0.8}, {-1.2, -1.4, 0}}))
      .set("completion_mask", bools({{1, 1, 1}, {1, 1, 0}}))
      .set("rewards", f64s({1, 0}));
  inputs.set("old_token_logps", inputs.get("policy_token_logps"));  // ρ = 1: the gradient shows A
  const train::LossResult result = run_loss("reinforce_pp", inputs);
  CHECK(std::abs(result.metrics.get("return") - 0.5968) < kSpecTolerance);
  CHECK(std::abs(result.metrics.get("advantages/std") - 0.490146) < kSpecTolerance);
  const std::vector<double> grad = gradient_of("reinforce_pp", inputs, "policy_token_logps");
  // Flat positions 0-2 are row 0's tokens, 3-4 row 1's, 5 padding; ℓ = -ρ A with ρ = 1 and the
  // token mean over 5 tokens gives dL/dlp = -A / 5.
  const std::vector<double> advantages{0.814451, 0.818532, 0.816492, -1.229838, -1.219637};
  for (size_t k = 0; k < advantages.size(); ++k) CHECK(std::abs(grad[k] * 5 - -advantages[k]) < kSpecTolerance);
  CHECK(grad[5] == 0.0);
  // The baseline variant centres outcomes per prompt: equal outcomes and no KL leave nothing to learn.
  inputs.set("rewards", f64s({0.7, 0.7}));
  CHECK(loss_value("reinforce_pp_baseline", inputs, {{"num_generations", "2"}, {"kl_loss_coef", "0"}}) == 0.0);
}
