// `lamina score --reward-model`: a reward model folder (LlamaForSequenceClassification) scores a
// text and every pair of a preference file with the rewards the library computes in memory.
#include <fstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/llama/reward_model.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

double reward_of(const llama::LlamaForSequenceClassification& model, const std::vector<int32_t>& ids) {
  autograd::NoGradGuard no_grad;
  const Tensor input = Tensor::from_vector(std::vector<int64_t>(ids.begin(), ids.end()), {1, int64_t(ids.size())});
  return model.forward(input, Tensor::from_vector(std::vector<int64_t>{int64_t(ids.size())}, {1})).to_vector<double>()[0];
}

}  // namespace

TEST_CASE("lamina score --reward-model scores a text and the pairs of a preference file") {
  const ScratchDir dir("cli-score-reward");
  llama::LlamaConfig config = byte_level_llama_config();
  config.initializer_range = 0.5;
  const auto causal = random_llama(config, 4);
  Generator generator(6);
  const auto model = llama::LlamaForSequenceClassification::from_causal_lm(*causal, {}, generator);
  model->save(dir / "rm");
  std::ofstream(dir.path / "rm" / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  const tokenizer::Tokenizer tok = tokenizer::byte_level_tokenizer();

  Run run = run_lamina("score --reward-model " + (dir / "rm") + " --text \"hello there\"");
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const json::Value line = json::parse(run.output.substr(run.output.find('{')));
  const std::vector<int32_t> ids = tok.encode("hello there", {.add_bos = tok.adds_bos()});
  CHECK(line.at("tokens").as_int64() == int64_t(ids.size()));
  CHECK(line.at("reward").as_double() == doctest::Approx(reward_of(*model, ids)).epsilon(1e-6));

  std::ofstream(dir.path / "pairs.jsonl") << R"({"prompt": "2+2=", "chosen": "4", "rejected": "5"})" << "\n"
                                          << R"({"prompt": "1+1=", "chosen": "2", "rejected": "11"})" << "\n";
  run = run_lamina("score --reward-model " + (dir / "rm") + " --data " + (dir / "pairs.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("2 pairs: accuracy") != std::string::npos);
  // The first pair's rewards are those of prompt + completion + EOS rows (TRL's text rule).
  const size_t first = run.output.find("{\"line\":1");
  REQUIRE(first != std::string::npos);
  const json::Value pair = json::parse(run.output.substr(first, run.output.find('\n', first) - first));
  std::vector<int32_t> chosen = tok.encode("2+2=4", {.add_bos = tok.adds_bos()});
  chosen.push_back(int32_t(config.eos_token_ids[0]));
  CHECK(pair.at("chosen_reward").as_double() == doctest::Approx(reward_of(*model, chosen)).epsilon(1e-6));
  CHECK(pair.at("rejected_reward").as_double() != doctest::Approx(pair.at("chosen_reward").as_double()));

  run = run_lamina("score --reward-model " + (dir / "rm") + " --model " + (dir / "rm") + " --text x");
  CHECK(run.status == 2);
  CHECK(run.output.find("--model does not go with --reward-model") != std::string::npos);
  run = run_lamina("score --reward-model " + (dir / "pairs.jsonl") + " --text x");
  CHECK(run.status == 1);
}
