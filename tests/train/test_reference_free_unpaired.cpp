// Reference-free paired losses (preference-losses.md §4, §3's table) and unpaired losses (§5):
// worked examples to 1e-6, invariances, and the checkpointable state of KTO and BCO.
#include <cmath>

#include "autograd/functions.h"
#include "loss_helpers.h"
#include "train/losses/state.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// Example E without its reference terms (the §4 losses take none), with lengths.
train::LossInputs example_e_policy_only() {
  train::LossInputs inputs;
  inputs.set("policy_chosen_logps", f64s({-12.0}))
      .set("policy_rejected_logps", f64s({-15.0}))
      .set("chosen_lengths", f64s({8}))
      .set("rejected_lengths", f64s({6}));
  return inputs;
}

// §5 example U: log-ratios r = [1.0, -0.2, -0.5, 0.4], labels [D, D, U, U] (S_ref = -10).
train::LossInputs example_u() {
  train::LossInputs inputs;
  inputs.set("policy_logps", f64s({-9.0, -10.2, -10.5, -9.6}))
      .set("reference_logps", f64s({-10.0, -10.0, -10.0, -10.0}))
      .set("labels", Tensor::from_vector(std::vector<uint8_t>{1, 1, 0, 0}, {4}, DType::boolean));
  return inputs;
}

train::LossInputs example_u_with_kl() {
  train::LossInputs inputs = example_u();
  // KL-pair log-ratios [0.3, -0.1, 0.2, 0.4]
  inputs.set("policy_kl_logps", f64s({-7.7, -8.1, -7.8, -7.6})).set("reference_kl_logps", f64s({-8, -8, -8, -8}));
  return inputs;
}

}  // namespace

TEST_CASE("§4 CPO, SimPO, ORPO worked examples on E, and §3's table") {
  const train::LossInputs e = example_e_policy_only();
  CHECK(std::abs(loss_value("cpo", e) - 2.054355) < kSpecTolerance);                     // §4.1
  CHECK(std::abs(loss_value("cpo", e, {{"loss_type", "ipo"}, {"cpo_alpha", "0"}}) - 16.0) < kSpecTolerance);  // §3
  CHECK(std::abs(loss_value("simpo", e, {{"beta", "2.5"}, {"simpo_gamma", "1.375"}}) - 0.281150) < kSpecTolerance);
  CHECK(std::abs(loss_value("simpo", e, {{"beta", "2.0"}, {"simpo_gamma", "1.0"}}) - 0.313262) < kSpecTolerance);
  CHECK(std::abs(loss_value("simpo", e, {{"beta", "10"}, {"simpo_gamma", "3"}}) - 0.000911) < kSpecTolerance);
  CHECK(std::abs(loss_value("cpo", e, {{"loss_type", "simpo"}, {"beta", "2.5"}, {"simpo_gamma", "1.375"}, {"cpo_alpha", "0"}}) -
                 0.281150) < kSpecTolerance);
  const train::LossResult orpo = run_loss("orpo", e);  // §4.3: NLL 12/8 = 1.5
  CHECK(std::abs(orpo.loss.item<double>() - 1.527106) < kSpecTolerance);
  CHECK(std::abs(orpo.metrics.get("log_odds_chosen") - 1.166832) < kSpecTolerance);
  CHECK(std::abs(orpo.metrics.get("nll_loss") - 1.5) < 1e-12);
  CHECK(run_loss("cpo", e).metrics.get("nll_loss") == doctest::Approx(1.5));
}

TEST_CASE("§4 invariances and options") {
  const train::LossInputs e = example_e_policy_only();
  SUBCASE("SimPO with γ = 0 is length-normalised DPO without a reference") {
    for (const char* beta : {"0.1", "2.5"}) {
      train::LossInputs no_reference = e;
      no_reference.set("reference_chosen_logps", f64s({0.0})).set("reference_rejected_logps", f64s({0.0}));
      const double simpo = loss_value("simpo", e, {{"beta", beta}, {"simpo_gamma", "0"}});
      CHECK(simpo == doctest::Approx(loss_value("sigmoid_norm", no_reference, {{"beta", beta}})).epsilon(1e-14));
      CHECK(simpo == doctest::Approx(loss_value("sigmoid_norm", e, {{"beta", beta}, {"reference_free", "true"}})).epsilon(1e-14));
    }
  }
  SUBCASE("CPO without its NLL is reference-free DPO on sums") {
    train::LossInputs pair = e;
    CHECK(loss_value("cpo", pair, {{"cpo_alpha", "0"}}) ==
          doctest::Approx(loss_value("sigmoid", taken_by("sigmoid", pair), {{"reference_free", "true"}})).epsilon(1e-14));
  }
  SUBCASE("AlphaPO tends to plain CPO as α -> 0") {
    CHECK(loss_value("cpo", e, {{"alpha", "1e-7"}}) == doctest::Approx(loss_value("cpo", e)).epsilon(1e-6));
  }
  SUBCASE("ORPO's TRL-style NLL with prompt tokens comes from its own inputs") {
    train::LossInputs with_prompt = e;
    with_prompt.set("policy_chosen_nll_logps", f64s({-16.0})).set("chosen_nll_lengths", f64s({10}));
    const double trl = loss_value("orpo", with_prompt), paper = loss_value("orpo", e);
    CHECK(trl - paper == doctest::Approx(1.6 - 1.5).epsilon(1e-12));
    train::LossInputs half = e;
    half.set("policy_chosen_nll_logps", f64s({-16.0}));
    CHECK_THROWS_WITH_AS(loss_value("orpo", half), doctest::Contains("come together"), Error);
  }
  SUBCASE("ORPO refuses average log-probs that are not negative") {
    train::LossInputs impossible = e;
    impossible.set("policy_chosen_logps", f64s({0.0}));
    CHECK_THROWS_WITH_AS(loss_value("orpo", impossible), doctest::Contains("must be < 0"), Error);
  }
}

TEST_CASE("§5.1 KTO and §5.2 unpaired APO-zero on example U") {
  CHECK(std::abs(loss_value("kto", example_u_with_kl()) - 0.494379) < kSpecTolerance);
  CHECK(std::abs(loss_value("kto", example_u_with_kl(), {{"undesirable_weight", "1.33"}}) - 0.575848) < kSpecTolerance);
  CHECK(std::abs(loss_value("apo_zero_unpaired", example_u()) - 0.494380) < kSpecTolerance);
  const train::LossResult kto = run_loss("kto", example_u_with_kl());
  CHECK(kto.metrics.get("kl") == doctest::Approx(0.2).epsilon(1e-12));
  CHECK(kto.metrics.get("rewards/chosen") == doctest::Approx(0.04));   // mean of β r over [1.0, -0.2]
  CHECK(kto.metrics.get("rewards/rejected") == doctest::Approx(-0.005));  // over [-0.5, 0.4]
  CHECK(kto.metrics.get("rewards/margins") == doctest::Approx(0.045));
  CHECK_FALSE(kto.metrics.has("rewards/accuracies"));
  CHECK(kto.warnings.empty());  // λ_D n_D / (λ_U n_U) = 1
  CHECK(run_loss("kto", example_u_with_kl(), {{"undesirable_weight", "1.33"}}).warnings.size() == 1);
  // The weights multiply; they do not renormalise: λ_D = λ_U = 2 doubles the loss.
  CHECK(loss_value("kto", example_u_with_kl(), {{"desirable_weight", "2"}, {"undesirable_weight", "2"}}) ==
        doctest::Approx(2 * 0.494379).epsilon(1e-5));
  CHECK_THROWS_WITH_AS(loss_value("kto", example_u()), doctest::Contains("policy_kl_logps"), Error);
}

TEST_CASE("§5.1 KTO's KL estimate is a checkpointable state") {
  const train::LossDefinition& kto = train::find_loss("kto");
  const std::unique_ptr<train::LossState> state = train::make_state(kto);
  CHECK_THROWS_WITH_AS(run_loss("kto", example_u(), {{"kl_source", "last"}}, state.get()), doctest::Contains("seen a training batch"),
                       Error);
  const double batch_loss = loss_value("kto", example_u_with_kl(), {}, state.get());
  const json::Value saved = state->save();
  CHECK(saved.at("last").as_double() == doctest::Approx(0.2));
  const std::unique_ptr<train::LossState> restored = train::make_state(kto);
  restored->restore(json::parse(saved.dump()));
  CHECK(loss_value("kto", example_u(), {{"kl_source", "last"}}, restored.get()) == doctest::Approx(batch_loss).epsilon(1e-12));
  // Negative mismatched log-ratios clamp z to 0: the same as kl_source=none.
  train::LossInputs negative = example_u_with_kl();
  negative.set("reference_kl_logps", f64s({-7, -7, -7, -7}));
  CHECK(loss_value("kto", negative) == loss_value("kto", example_u(), {{"kl_source", "none"}}));
  CHECK_THROWS_WITH_AS(restored->restore(json::parse(R"({"type": "running_reward_baseline"})")),
                       doctest::Contains("\"type\" must be \"kto_kl_estimate\""), Error);
}

TEST_CASE("§5.3 BCO with its running reward baseline") {
  const train::LossDefinition& bco = train::find_loss("bco");
  const std::unique_ptr<train::LossState> state = train::make_state(bco);
  const train::LossResult result = run_loss("bco", example_u(), {}, state.get());
  CHECK(std::abs(result.loss.item<double>() - 0.682312) < kSpecTolerance);
  CHECK(result.metrics.get("delta") == doctest::Approx(0.0175).epsilon(1e-12));
  CHECK(result.metrics.get("count/chosen") == 2);
  CHECK(result.metrics.get("rewards/chosen_sum") == doctest::Approx(0.08));
  // A second batch with rewards [0.2, 0.0] moves δ to (4 · 0.0175 + 2 · 0.1) / 6 = 0.045.
  train::LossInputs second;
  second.set("policy_logps", f64s({-8.0, -10.0}))
      .set("reference_logps", f64s({-10.0, -10.0}))
      .set("labels", Tensor::from_vector(std::vector<uint8_t>{1, 0}, {2}, DType::boolean));
  const std::unique_ptr<train::LossState> checkpoint = train::make_state(bco);
  checkpoint->restore(state->save());
  run_loss("bco", second, {}, state.get());
  CHECK(static_cast<train::RunningRewardBaseline&>(*state).mean() == doctest::Approx(0.045).epsilon(1e-12));
  // Evaluation reads the baseline without moving it.
  checkpoint->training = false;
  const double evaluated = run_loss("bco", second, {}, checkpoint.get()).metrics.get("delta");
  CHECK(evaluated == doctest::Approx(0.0175).epsilon(1e-12));
  CHECK(static_cast<train::RunningRewardBaseline&>(*checkpoint).mean() == doctest::Approx(0.0175).epsilon(1e-12));
  // UDM: undesirable losses scaled by clamp(p / (1 - p), 0.5, 10); p = 0.5 leaves them alone.
  train::LossInputs udm = example_u();
  udm.set("desirable_probabilities", f64s({0.5, 0.5, 0.5, 0.5}));
  const std::unique_ptr<train::LossState> fresh = train::make_state(bco);
  CHECK(loss_value("bco", udm, {}, fresh.get()) == doctest::Approx(0.682312).epsilon(1e-6));
  CHECK_THROWS_WITH_AS(run_loss("bco", example_u()), doctest::Contains("RunningRewardBaseline"), Error);
}
