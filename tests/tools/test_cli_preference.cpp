// `lamina preference-loss` end to end: the listing, a worked example of the spec, errors.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

TEST_CASE("preference-loss --list names every loss family of the spec") {
  const Run run = run_lamina("preference-loss --list");
  REQUIRE(run.status == 0);
  const std::string listing = "\n" + run.output;  // each entry starts a line
  for (const char* name : {"sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot", "apo_zero",
                           "apo_down", "discopop", "simpo", "orpo", "cpo", "kto", "bco", "spin", "inpo", "rebel", "refuel",
                           "nash_md", "xpo", "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo_clip"}) {
    const std::string entry = std::string("\n") + name + " ";
    CAPTURE(entry);
    CHECK(listing.find(entry) != std::string::npos);
  }
}

TEST_CASE("preference-loss reproduces DPO on the spec's example E, with its gradient") {
  const fs::path inputs = fs::temp_directory_path() / ("lamina-pref-" + std::to_string(::getpid()) + ".json");
  std::ofstream(inputs) << R"({"policy_chosen_logps": [-12.0], "policy_rejected_logps": [-15.0],
                              "reference_chosen_logps": [-13.0], "reference_rejected_logps": [-14.5]})";
  const Run run = run_lamina("preference-loss --loss dpo --beta 0.1 --inputs " + inputs.string());
  REQUIRE(run.status == 0);
  const json::Value out = json::parse(run.output);
  CHECK(out.at("loss").as_double() == doctest::Approx(0.620957).epsilon(1e-6));  // preference-losses.md 2.1
  // dL/dS(y_w) = dL/dh = -beta sigma(-beta h) = -0.046257, and the opposite for y_l.
  CHECK(out.at("grad").at("policy_chosen_logps").as_array()[0].as_double() == doctest::Approx(-0.046257).epsilon(1e-5));
  CHECK(out.at("grad").at("policy_rejected_logps").as_array()[0].as_double() == doctest::Approx(0.046257).epsilon(1e-5));
  CHECK(out.at("metrics").at("rewards/accuracies").as_double() == 1.0);
  const Run unknown = run_lamina("preference-loss --loss dpoo --inputs " + inputs.string());
  CHECK(unknown.status != 0);
  CHECK(unknown.output.find("dpoo") != std::string::npos);
  std::ofstream(inputs) << R"({"policy_chosen_logps": [-12.0], "policy_rejected_logps": [-15.0, 1]})";
  const Run mismatched = run_lamina("preference-loss --loss dpo --inputs " + inputs.string());
  CHECK(mismatched.status == 1);
  CHECK(mismatched.output.find("error:") != std::string::npos);
  fs::remove(inputs);
}

TEST_CASE("preference-loss refuses a loss that is not finite instead of printing null") {
  const fs::path inputs = fs::temp_directory_path() / ("lamina-pref-inf-" + std::to_string(::getpid()) + ".json");
  // h = beta * ((-1e308 - 0) - (0 - -1e308)) overflows to -inf, so -log sigmoid(h) is +inf.
  std::ofstream(inputs) << R"({"policy_chosen_logps": [-1e308], "policy_rejected_logps": [0.0],
                              "reference_chosen_logps": [0.0], "reference_rejected_logps": [-1e308]})";
  const Run run = run_lamina("preference-loss --loss dpo --beta 10 --inputs " + inputs.string());
  fs::remove(inputs);
  CAPTURE(run.output);
  CHECK(run.status == 1);
  CHECK(run.output.find("not a finite number") != std::string::npos);
  CHECK(run.output.find("null") == std::string::npos);
}
