// --attention-plan in training: the run trains under the plan's sinks and windows (its loss is
// the model's loss under that mask, not the dense one), records the plan so that a resume with
// another plan is refused, and refuses sinks with packed rows (a sink is a row's first tokens,
// not each packed document's).
#include <cmath>

#include "tools/attention_plan_file.h"
#include "tools/cli_runner.h"
#include "tools/train_workspace.h"
#include "train/metrics.h"

using namespace lamina;
using namespace lamina::testing;

TEST_CASE("lamina train --attention-plan: trained under the plan, recorded, checked on resume") {
  Workspace w("cli-attention-plan");
  const llama::LlamaConfig config = byte_level_llama_config();
  write_fixed_span_plan(w / "narrow.json", config, 0, 4);
  write_fixed_span_plan(w / "wide.json", config, 0, 1000);
  write_fixed_span_plan(w / "sinks.json", config, 2, 6);
  const std::string pretrain = w.pretrain_command() + " --seq-len 32 --steps 2 --batch-size 2 --schedule constant " +
                               "--save-every 1 --data " + (w / "text.jsonl");

  // The first step's loss comes from the same starting weights: a narrow plan sees less context
  // than dense attention, a plan wider than the sequence is dense.
  const auto first_loss = [&](const std::string& run_name, const std::string& extra) {
    const Run run = run_lamina(pretrain + " --output " + (w / run_name) + " " + extra);
    INFO(run.output);
    REQUIRE(run.status == 0);
    return train::read_metrics(w / (run_name + "/metrics.jsonl")).at(0).at("loss").as_double();
  };
  const double dense = first_loss("dense", "");
  CHECK(first_loss("wide", "--attention-plan " + (w / "wide.json")) == doctest::Approx(dense).epsilon(1e-6));
  CHECK(std::abs(first_loss("narrow", "--attention-plan " + (w / "narrow.json")) - dense) > 1e-4);

  // The plan is part of the run: resuming under another one is a change that breaks exactness.
  const Run resumed = run_lamina(pretrain + " --output " + (w / "narrow") + " --attention-plan " +
                                 (w / "wide.json") + " --resume");
  CHECK(resumed.status == 1);
  CHECK(resumed.output.find("attention-plan: ") != std::string::npos);

  const Run packed = run_lamina(pretrain + " --output " + (w / "sinks") + " --attention-plan " + (w / "sinks.json"));
  CHECK(packed.status == 1);
  CHECK(packed.output.find("--no-pack") != std::string::npos);
  const Run unpacked =
      run_lamina(pretrain + " --output " + (w / "sinks") + " --no-pack --attention-plan " + (w / "sinks.json"));
  INFO(unpacked.output);
  CHECK(unpacked.status == 0);
  CHECK(unpacked.output.find("attention plan: ") != std::string::npos);
}
