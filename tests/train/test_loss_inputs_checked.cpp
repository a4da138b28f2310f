// The JSON inputs of `lamina preference-loss` are checked for what they claim to be: a
// log-probability above 0 and a token loss with no token at all are errors naming the input,
// not a plausible-looking result. (The library losses themselves take any numbers a model
// produces; these checks sit where numbers are typed into a file.)
#include "helpers.h"
#include "train/losses/json_io.h"
#include "train/losses/registry.h"

using namespace lamina;

namespace {

void fails(const char* loss, const char* text, const char* message) {
  CAPTURE(text);
  CHECK_THROWS_WITH_AS(train::inputs_from_json(json::parse(text), train::find_loss(loss), "in.json"), doctest::Contains(message),
                       Error);
}

}  // namespace

TEST_CASE("preference-loss inputs: a log-probability above 0 is refused, naming the input and element") {
  fails("grpo", R"({"policy_token_logps": [[5, 800]], "rewards": [1]})",
        "in.json: policy_token_logps[0][0] is 5, but a log-probability is at most 0");
  fails("grpo", R"({"policy_token_logps": [[-1], [-1]], "old_token_logps": [[-1], [0.5]], "rewards": [1, 0]})",
        "in.json: old_token_logps[1][0] is 0.5, but a log-probability is at most 0");
  fails("dpo", R"({"policy_chosen_logps": [-12], "policy_rejected_logps": [3], "reference_chosen_logps": [-1],
                   "reference_rejected_logps": [-1]})",
        "in.json: policy_rejected_logps[0] is 3, but a log-probability is at most 0");
  // 0 itself, and rounding just above it, are log-probabilities; rewards may be anything.
  const json::Value rounding = json::parse(R"({"policy_token_logps": [[0, 1e-7]], "rewards": [25]})");
  CHECK(train::inputs_from_json(rounding, train::find_loss("grpo"), "in.json").inputs.has("policy_token_logps"));
}

TEST_CASE("preference-loss inputs: token inputs whose rows are all empty leave nothing to average") {
  fails("grpo", R"({"policy_token_logps": [[], []], "rewards": [1, 0]})",
        "in.json: policy_token_logps: every row is empty, so the loss has no token to average over");
  // One empty row among others is a completion of no tokens, which the losses handle.
  const json::Value some = json::parse(R"({"policy_token_logps": [[], [-1]], "rewards": [1, 0]})");
  CHECK(train::inputs_from_json(some, train::find_loss("grpo"), "in.json").inputs.get("completion_mask").to_vector<bool>() ==
        std::vector<bool>{0, 1});
}
