// `lamina generate`: continue a prompt with a Llama model directory.
#include <cstdio>
#include <sstream>

#include "models/generate/generate.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int64_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    int64_t id = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size()) throw UsageError("--prompt-ids: '" + word + "' is not a token id", "pass ids like \"1 450 4321\"");
    ids.push_back(id);
  }
  if (ids.empty()) throw UsageError("--prompt-ids is empty", "pass ids like \"1 450 4321\"");
  return ids;
}

}  // namespace

int run_generate(const Arguments& args) {
  FlagParser parser("lamina generate", "Continues a prompt with a Llama model (HF folder: config.json + safetensors).");
  parser.add_option("model", "DIR", "the model folder");
  parser.add_option("prompt", "TEXT", "the prompt as text (needs the model's tokenizer.json)");
  parser.add_option("prompt-ids", "\"1 2 3\"", "the prompt as token ids");
  parser.add_option("max-new-tokens", "N", "tokens to generate at most", "64");
  parser.add_option("temperature", "T", "0 = greedy; otherwise sample from logits / T", "0");
  parser.add_option("top-k", "K", "keep the K most likely tokens (0 = off)", "0");
  parser.add_option("top-p", "P", "keep the smallest set of tokens with probability >= P", "1");
  parser.add_option("min-p", "M", "drop tokens below M x the top probability", "0");
  parser.add_option("repetition-penalty", "R", "penalise tokens already in the context (1 = off)", "1");
  parser.add_option("seed", "S", "random seed for sampling", "0");
  parser.add_option("output", "text|ids", "print text, or the whole sequence (prompt + new) as ids", "ids");
  parser.add_switch("no-stop", "ignore the model's end-of-sequence tokens");
  if (!parser.parse(args)) return 0;

  const std::optional<std::string> directory = parser.value("model");
  if (!directory) throw UsageError("lamina generate: --model is required", "run 'lamina generate --help'");
  if (parser.is_set("prompt") == parser.is_set("prompt-ids"))
    throw UsageError("lamina generate: give exactly one of --prompt and --prompt-ids", "run 'lamina generate --help'");
  const std::string output = parser.value("output").value_or("ids");
  if (output != "ids" && output != "text")
    throw UsageError("lamina generate: --output must be 'text' or 'ids', got '" + output + "'", "run 'lamina generate --help'");
  if (parser.is_set("prompt") || output == "text")
    throw Error("text prompts and text output need the tokenizer, which this build does not have yet; use "
                "--prompt-ids and --output ids");

  generate::GenerateOptions options;
  options.max_new_tokens = parser.int_value("max-new-tokens", 64, 0, 1 << 20);
  options.sampling.temperature = parser.double_value("temperature", 0.0, 0.0, 1e6);
  options.sampling.top_k = parser.int_value("top-k", 0, 0, int64_t(1) << 40);
  options.sampling.top_p = parser.double_value("top-p", 1.0, 1e-9, 1.0);
  options.sampling.min_p = parser.double_value("min-p", 0.0, 0.0, 0.999999);
  options.sampling.repetition_penalty = parser.double_value("repetition-penalty", 1.0, 1e-6, 1e6);
  options.sampling.seed = uint64_t(parser.int_value("seed", 0, 0, INT64_MAX));
  options.use_config_stop_tokens = !parser.is_set("no-stop");
  const std::vector<int64_t> prompt = parse_ids(*parser.value("prompt-ids"));

  const auto model = llama::LlamaForCausalLM::load(*directory);
  const generate::GenerateResult result = generate::generate(*model, {prompt}, options);
  std::string line;
  for (int64_t id : prompt) line += std::to_string(id) + " ";
  for (int64_t id : result.tokens[0]) line += std::to_string(id) + " ";
  line.pop_back();
  std::printf("%s\n", line.c_str());
  return 0;
}

}  // namespace lamina::cli
