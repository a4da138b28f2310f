// --attention-plan in generation: decoding through the per-head ring caches gives what
// recomputing the whole sequence under the plan gives. In training: the run trains under the plan's sinks and windows (its loss is
// the model's loss under that mask, not the dense one), records the plan so that a resume with
// another plan is refused, and refuses sinks with packed rows (a sink is a row's first tokens,
// not each packed document's).
#include <algorithm>
#include <cmath>
#include <sstream>

#include "autograd/autograd.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
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

namespace {

// The ids the CLI printed (prompt + new tokens) as numbers.
std::vector<int64_t> printed_ids(const std::string& output) {
  std::vector<int64_t> ids;
  std::istringstream words(output.substr(0, output.find('\n')));
  for (int64_t id; words >> id;) ids.push_back(id);
  return ids;
}

// Greedy continuation recomputing the whole sequence at every step (no cache), under whatever
// sparse attention the model holds: the oracle of the CLI's ring-cache generation.
std::vector<int64_t> greedy_by_recomputing(const llama::LlamaForCausalLM& model, std::vector<int64_t> ids,
                                           int64_t new_tokens) {
  autograd::NoGradGuard no_grad;
  for (int64_t step = 0; step < new_tokens; ++step) {
    const Tensor logits = model.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}));
    const std::vector<float> last = logits.select(0, 0).select(0, int64_t(ids.size()) - 1).to_vector<float>();
    ids.push_back(int64_t(std::max_element(last.begin(), last.end()) - last.begin()));
  }
  return ids;
}

}  // namespace

TEST_CASE("lamina generate --attention-plan: ring-cache decoding equals recomputing under the plan's mask") {
  ScratchDir dir("cli-attention-plan-generate");
  llama::LlamaConfig config = byte_level_llama_config();
  config.initializer_range = 1.0;  // peaked logits: a hidden key changes the greedy choice
  auto model = random_llama(config, 21);
  model->save(dir.path.string());
  std::ofstream(dir / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  write_fixed_span_plan(dir / "narrow.json", config, 2, 6);
  write_fixed_span_plan(dir / "wide.json", config, 2, 1000);
  std::vector<int64_t> prompt;
  for (int64_t i = 0; i < 20; ++i) prompt.push_back(40 + (i * 7) % 50);
  std::string prompt_text;
  for (int64_t id : prompt) prompt_text += (prompt_text.empty() ? "" : " ") + std::to_string(id);
  const std::string generate = str_cat("generate --model ", dir.path.string(), " --prompt-ids \"", prompt_text,
                                       "\" --max-new-tokens 30 --no-stop");
  const Run dense = run_lamina(generate);
  INFO(dense.output);
  REQUIRE(dense.status == 0);
  const Run wide = run_lamina(generate + " --attention-plan " + (dir / "wide.json"));
  CHECK(printed_ids(wide.output) == printed_ids(dense.output));  // a window past the sequence is dense

  const Run narrow = run_lamina(generate + " --attention-plan " + (dir / "narrow.json"));
  INFO(narrow.output);
  REQUIRE(narrow.status == 0);
  model->model->sparse_attention = llama::SparseAttention::uniform(config, 2, 4);
  const std::vector<int64_t> expected = greedy_by_recomputing(*model, prompt, 30);
  CHECK(printed_ids(narrow.output) == expected);
  CHECK(printed_ids(narrow.output) != printed_ids(dense.output));  // the plan hides keys that matter

}
