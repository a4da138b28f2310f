// `lamina generate --prompts FILE --attention-plan PLAN` end to end: continuous batching over the
// plan's ring caches (fewer slots than prompts) writes, for every prompt, the greedy tokens that
// recomputing the whole sequence under the plan's mask gives; `--rope-positions cache-slot`
// (StreamingLLM's positions) gives each prompt what the single-prompt command gives in that mode
// and changes the answers, and runs past the model's context where the original positions stop
// at it; the option is refused without a plan or with an unknown value, is in --help, and is
// part of what a resumed --output must match.
#include <algorithm>
#include <fstream>
#include <sstream>

#include "autograd/autograd.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/attention_plan_file.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The completion ids of every line of a --prompts output, by the line's index.
std::vector<std::vector<int64_t>> completions(const std::string& output_path, size_t prompts) {
  std::vector<std::vector<int64_t>> ids(prompts);
  std::istringstream lines(read_text(output_path));
  size_t seen = 0;
  for (std::string line; std::getline(lines, line); ++seen) {
    const json::Value value = json::parse(line);
    const size_t index = size_t(value.at("index").as_int64());
    REQUIRE(index < prompts);
    for (const json::Value& id : value.at("completion_ids").as_array()) ids[index].push_back(id.as_int64());
  }
  CHECK(seen == prompts);
  return ids;
}

// Greedy new tokens recomputing the whole sequence at every step (no cache), under whatever
// sparse attention the model holds.
std::vector<int64_t> greedy_by_recomputing(const llama::LlamaForCausalLM& model, std::vector<int64_t> ids,
                                           int64_t new_tokens) {
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> out;
  for (int64_t step = 0; step < new_tokens; ++step) {
    const Tensor logits = model.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}));
    const std::vector<float> last = logits.select(0, 0).select(0, int64_t(ids.size()) - 1).to_vector<float>();
    out.push_back(int64_t(std::max_element(last.begin(), last.end()) - last.begin()));
    ids.push_back(out.back());
  }
  return out;
}

std::vector<int64_t> prompt_ids(int64_t length, int64_t salt) {
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < length; ++i) ids.push_back(40 + (i * 7 + salt * 13) % 50);
  return ids;
}

std::string joined(const std::vector<int64_t>& ids, const char* separator) {
  std::string text;
  for (int64_t id : ids) text += (text.empty() ? "" : separator) + std::to_string(id);
  return text;
}

}  // namespace

TEST_CASE("lamina generate --prompts --attention-plan: batched ring caches answer as the plan's mask does") {
  ScratchDir dir("sparse-cli-generate");
  llama::LlamaConfig config = byte_level_llama_config();
  config.initializer_range = 1.0;  // peaked logits: a hidden key changes the greedy choice
  auto model = random_llama(config, 21);
  model->save(dir.path.string());
  std::ofstream(dir / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  write_fixed_span_plan(dir / "narrow.json", config, 2, 6);  // sink 2 + window 4 at every length
  const std::vector<std::vector<int64_t>> prompts = {prompt_ids(20, 0), prompt_ids(5, 1), prompt_ids(12, 2),
                                                     prompt_ids(9, 3)};
  {
    std::ofstream file(dir / "prompts.jsonl");
    for (const std::vector<int64_t>& prompt : prompts) file << "{\"prompt_ids\": [" << joined(prompt, ", ") << "]}\n";
  }
  const std::string common = str_cat("generate --model ", dir.path.string(), " --prompts ", dir / "prompts.jsonl",
                                     " --attention-plan ", dir / "narrow.json", " --max-new-tokens 30 --no-stop --batch 2");
  const Run batched = run_lamina(common + " --output " + (dir / "original.jsonl"));
  INFO(batched.output);
  REQUIRE(batched.status == 0);
  const std::vector<std::vector<int64_t>> original = completions(dir / "original.jsonl", prompts.size());
  model->model->sparse_attention = llama::SparseAttention::uniform(config, 2, 4);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    CHECK(original[i] == greedy_by_recomputing(*model, prompts[i], 30));
  }
  const std::string written = read_text(dir / "original.jsonl");
  const json::Value first_options = json::parse(written.substr(0, written.find('\n'))).at("options");
  CHECK(first_options.at("rope_positions").as_string() == "original");
  CHECK(first_options.at("attention_plan").as_string() == dir / "narrow.json");

  // StreamingLLM's positions: each prompt as the single-prompt command answers it in that mode.
  const Run streamed = run_lamina(common + " --rope-positions cache-slot --output " + (dir / "streamed.jsonl"));
  INFO(streamed.output);
  REQUIRE(streamed.status == 0);
  const std::vector<std::vector<int64_t>> cache_slot = completions(dir / "streamed.jsonl", prompts.size());
  for (size_t i : {size_t(0), size_t(1)}) {
    INFO("prompt " << i);
    const Run single = run_lamina(str_cat("generate --model ", dir.path.string(), " --prompt-ids \"",
                                          joined(prompts[i], " "), "\" --max-new-tokens 30 --no-stop --attention-plan ",
                                          dir / "narrow.json", " --rope-positions cache-slot"));
    REQUIRE(single.status == 0);
    std::vector<int64_t> expected = prompts[i];
    expected.insert(expected.end(), cache_slot[i].begin(), cache_slot[i].end());
    CHECK(ids_of(single.output) == expected);
  }
  CHECK(cache_slot != original);

  // Resuming the original run's output in the other mode mixes two settings: refused.
  const Run mixed = run_lamina(common + " --rope-positions cache-slot --output " + (dir / "original.jsonl"));
  CHECK(mixed.status == 1);
  CHECK(mixed.output.find("other options") != std::string::npos);
}

TEST_CASE("lamina generate --rope-positions: only with --attention-plan, a known value, and in --help") {
  ScratchDir dir("sparse-cli-rope-positions");
  const llama::LlamaConfig config = byte_level_llama_config();
  random_llama(config, 3)->save(dir.path.string());
  std::ofstream(dir / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  write_fixed_span_plan(dir / "plan.json", config, 2, 6);
  const std::string generate = str_cat("generate --model ", dir.path.string(), " --prompt-ids \"1 50 60\"");
  const Run without_plan = run_lamina(generate + " --rope-positions cache-slot");
  CHECK(without_plan.status == 2);
  CHECK(without_plan.output.find("only applies with --attention-plan") != std::string::npos);
  const Run unknown = run_lamina(generate + " --attention-plan " + (dir / "plan.json") + " --rope-positions slots");
  CHECK(unknown.status == 2);
  CHECK(unknown.output.find("must be 'original' or 'cache-slot', got 'slots'") != std::string::npos);
  const Run help = run_lamina("generate --help");
  CHECK(help.status == 0);
  CHECK(help.output.find("--rope-positions") != std::string::npos);
  CHECK(help.output.find("cache-slot (StreamingLLM)") != std::string::npos);
  const Run chat_help = run_lamina("chat --help");
  CHECK(chat_help.output.find("--rope-positions") != std::string::npos);
}

TEST_CASE("lamina generate --rope-positions cache-slot: generation streams past the model's context") {
  ScratchDir dir("sparse-cli-streaming");
  llama::LlamaConfig config = byte_level_llama_config();
  config.max_position_embeddings = 64;
  random_llama(config, 5)->save(dir.path.string());
  std::ofstream(dir / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  write_fixed_span_plan(dir / "narrow.json", config, 2, 6);
  const std::string generate = str_cat("generate --model ", dir.path.string(), " --prompt-ids \"",
                                       joined(prompt_ids(20, 4), " "), "\" --max-new-tokens 80 --no-stop --attention-plan ",
                                       dir / "narrow.json");
  const Run clipped = run_lamina(generate);
  INFO(clipped.output);
  REQUIRE(clipped.status == 0);
  CHECK(clipped.output.find("generating at most 44 new tokens") != std::string::npos);
  CHECK(ids_of(clipped.output.substr(clipped.output.find('\n') + 1)).size() == 64);
  const Run streamed = run_lamina(generate + " --rope-positions cache-slot");
  INFO(streamed.output);
  REQUIRE(streamed.status == 0);
  CHECK(ids_of(streamed.output).size() == 100);  // the prompt's 20 and all 80 new tokens

  // The same through --prompts: the line runs to its 80 tokens ("length", not "context").
  std::ofstream(dir / "prompts.jsonl") << "{\"prompt_ids\": [" << joined(prompt_ids(20, 4), ", ") << "]}\n";
  const Run batch = run_lamina(str_cat("generate --model ", dir.path.string(), " --prompts ", dir / "prompts.jsonl",
                                       " --max-new-tokens 80 --no-stop --attention-plan ", dir / "narrow.json",
                                       " --rope-positions cache-slot --output ", dir / "out.jsonl"));
  INFO(batch.output);
  REQUIRE(batch.status == 0);
  const json::Value line = json::parse(read_text(dir / "out.jsonl"));
  CHECK(line.at("completion_tokens").as_int64() == 80);
  CHECK(line.at("finish_reason").as_string() == "length");
  std::vector<int64_t> expected = prompt_ids(20, 4);
  for (const json::Value& id : line.at("completion_ids").as_array()) expected.push_back(id.as_int64());
  CHECK(ids_of(streamed.output) == expected);
}
