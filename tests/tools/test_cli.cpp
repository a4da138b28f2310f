// The lamina executable end to end: exit codes, messages and outputs of real invocations.
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

TEST_CASE("help, version and usage errors") {
  const Run help = run_lamina("--help");
  CHECK(help.status == 0);
  CHECK(help.output.find("generate") != std::string::npos);
  CHECK(run_lamina("version").output.find("lamina ") == 0);
  const Run unknown = run_lamina("genrate");
  CHECK(unknown.status == 2);
  CHECK(unknown.output.find("unknown subcommand 'genrate' (did you mean 'generate'?)") != std::string::npos);
  const Run bad_flag = run_lamina("generate --modle x");
  CHECK(bad_flag.status == 2);
  CHECK(bad_flag.output.find("--modle") != std::string::npos);
  const Run no_model = run_lamina("generate --prompt-ids 1");
  CHECK(no_model.status == 2);
  CHECK(no_model.output.find("--model is required") != std::string::npos);
  const Run bad_ids = run_lamina("generate --model . --prompt-ids \"1 x\"");
  CHECK(bad_ids.status == 2);
  CHECK(bad_ids.output.find("'x' is not a token id") != std::string::npos);
  const Run bad_number = run_lamina("generate --model . --prompt-ids 1 --temperature hot");
  CHECK(bad_number.status == 2);
}

TEST_CASE("lamina generate reproduces the stories260k golden" * doctest::test_suite("assets")) {
  const fs::path dir = testing::assets_dir("stories260k");
  std::ifstream golden_file(dir / "greedy_from_bos.txt");
  std::string golden;
  std::getline(golden_file, golden);
  const Run run = run_lamina("generate --model " + dir.string() + " --prompt-ids 1 --max-new-tokens 40");
  CHECK(run.status == 0);
  CHECK(run.output == golden + "\n");
}

TEST_CASE("bad model folders fail with a message and exit status 1, never a crash") {
  ScratchDir dir("cli-bad-model");
  llama::LlamaForCausalLM(one_layer_llama_config(32)).save(dir.path.string());
  const std::string weights = (dir.path / "model.safetensors").string();
  const std::string command = "generate --model " + dir.path.string() + " --prompt-ids \"1 5\" --max-new-tokens 3";
  CHECK(run_lamina(command).status == 0);

  // Truncated weights.
  const auto size = fs::file_size(weights);
  fs::resize_file(weights, size - 7);
  Run run = run_lamina(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: safetensors: " + weights) != std::string::npos);
  CHECK(run.output.find("truncated file?") != std::string::npos);
  // Header length past the end of the file.
  {
    std::fstream file(weights, std::ios::in | std::ios::out | std::ios::binary);
    const char huge[8] = {char(0xff), char(0xff), char(0xff), 0, 0, 0, 0, 0};
    file.write(huge, 8);
  }
  run = run_lamina(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("runs past the end of the file") != std::string::npos);
  // Malformed config.json.
  std::ofstream(dir.path / "config.json") << "{\"hidden_size\": 8,}";
  run = run_lamina(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("config.json:1:19") != std::string::npos);
  // No such folder.
  run = run_lamina("generate --model /no/such/model --prompt-ids 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("cannot open /no/such/model/config.json") != std::string::npos);
}

namespace {

// A tiny random model that speaks the real Llama-3 vocabulary, with the asset's tokenizer
// files beside it: enough to drive text prompts, the chat format and streaming output.
fs::path tiny_instruct_model(const ScratchDir& dir, const fs::path& tokenizer_dir) {
  llama::LlamaConfig config = one_layer_llama_config(128256);
  config.bos_token_id = 128000;
  config.eos_token_ids = {128001, 128009};
  config.initializer_range = 1.0;
  random_llama(config, 5)->save(dir.path.string());
  fs::copy_file(tokenizer_dir / "tokenizer.json", dir.path / "tokenizer.json");
  fs::copy_file(tokenizer_dir / "tokenizer_config.json", dir.path / "tokenizer_config.json");
  return dir.path;
}

}  // namespace

TEST_CASE("text prompts, the chat format and streamed text output" * doctest::test_suite("assets")) {
  const fs::path tokenizer_dir = testing::assets_dir("llama3-tokenizer");
  ScratchDir dir("cli-instruct");
  const std::string model = tiny_instruct_model(dir, tokenizer_dir).string();
  // Plain text: BOS + the text's ids ("Hello world" -> 9906 1917), then new tokens.
  const Run plain =
      run_lamina("generate --model " + model + " --prompt \"Hello world\" --output ids --max-new-tokens 4 --no-stop");
  REQUIRE(plain.status == 0);
  const std::vector<int64_t> plain_ids = ids_of(plain.output);
  REQUIRE(plain_ids.size() == 7);
  CHECK(std::vector<int64_t>(plain_ids.begin(), plain_ids.begin() + 3) == std::vector<int64_t>{128000, 9906, 1917});
  // The same generation as text equals the detokenized new ids.
  const Run text = run_lamina("generate --model " + model + " --prompt \"Hello world\" --max-new-tokens 4 --no-stop");
  REQUIRE(text.status == 0);
  std::string new_ids;
  for (size_t i = 3; i < plain_ids.size(); ++i) new_ids += std::to_string(plain_ids[i]) + " ";
  const Run decoded = run_lamina("detokenize --tokenizer " + model + " --ids \"" + new_ids + "\"");
  REQUIRE(decoded.status == 0);
  CHECK(text.output == decoded.output + "\n");  // generate ends its text with a newline
  // --chat wraps the prompt as a user turn of the Llama-3 Instruct format.
  // The user turn of llama3.md 4.1's dialog: "This is a response." (the asset is 3.0 Instruct).
  const Run chat = run_lamina("generate --model " + model +
                              " --prompt \"This is a response.\" --chat --output ids --max-new-tokens 1 --no-stop");
  REQUIRE(chat.status == 0);
  const std::vector<int64_t> chat_ids = ids_of(chat.output);
  const std::vector<int64_t> expected_prompt = {128000, 128006, 882,    128007, 271, 2028, 374, 264,
                                                2077,   13,     128009, 128006, 78191, 128007, 271};
  REQUIRE(chat_ids.size() == expected_prompt.size() + 1);
  CHECK(std::vector<int64_t>(chat_ids.begin(), chat_ids.end() - 1) == expected_prompt);
  CHECK(run_lamina("generate --model " + model + " --prompt-ids 1 --chat").status == 2);
}

TEST_CASE("lamina chat holds a conversation from stdin" * doctest::test_suite("assets")) {
  const fs::path tokenizer_dir = testing::assets_dir("llama3-tokenizer");
  ScratchDir dir("cli-chat");
  const std::string model = tiny_instruct_model(dir, tokenizer_dir).string();
  const Run run = run_lamina("chat --model " + model + " --max-new-tokens 3",
                             {.input = "/system Be brief\nhello\n/reset\nagain\n/quit\n"});
  CHECK(run.status == 0);
  CHECK(run.output.find("(system message set; conversation cleared)") != std::string::npos);
  CHECK(run.output.find("(conversation cleared)") != std::string::npos);
  CHECK(run.output.find("lamina chat (llama3 format)") != std::string::npos);
  const Run no_tokenizer = run_lamina("chat --model /no/such/dir");
  CHECK(no_tokenizer.status == 1);
}

TEST_CASE("lamina bench preference: --help, a tiny run of every case as JSON lines, a filter matching nothing") {
  const Run help = run_lamina("bench preference --help");
  CHECK(help.status == 0);
  for (const char* flag : {"--pairs", "--prompts", "--generations", "--seq-len", "--filter", "--quick", "--device"}) {
    CAPTURE(flag);
    CHECK(help.output.find(flag) != std::string::npos);
  }
  CHECK(run_lamina("bench --help").output.find("  preference ") != std::string::npos);

  const Run run = run_lamina("bench preference --quick --pairs 1 --prompts 1 --generations 3 --seq-len 16 --threads 1");
  INFO(run.output);
  REQUIRE(run.status == 0);
  std::vector<json::Value> lines;
  std::istringstream output(run.output);
  for (std::string line; std::getline(output, line);) {
    if (line.empty() || line[0] != '{') continue;
    lines.push_back(json::parse(line, "bench output"));
  }
  REQUIRE(lines.size() == 4);
  const char* expected_cases[] = {"llama_30m_dpo_step", "llama_30m_dpo_lora_step", "llama_30m_grpo_step",
                                  "llama_30m_grpo_lora_step"};
  const char* expected_references[] = {"copy", "adapters-off", "none", "none"};  // GRPO's beta is 0 by default
  for (size_t i = 0; i < lines.size(); ++i) {
    const json::Value& line = lines[i];
    CAPTURE(i);
    CHECK(line.at("bench").as_string() == "preference");
    CHECK(line.at("case").as_string() == expected_cases[i]);
    CHECK(line.at("reference").as_string() == expected_references[i]);
    CHECK(line.at("seq_len").as_int64() == 16);
    const double step = line.at("step_seconds").as_double();
    CHECK(step > 0);
    if (i < 2) {
      CHECK(line.at("loss").as_string() == "sigmoid");
      CHECK(line.at("pairs").as_int64() == 1);
      const double reference = line.at("reference_seconds").as_double();
      // One pair: chosen + rejected rows of 16 tokens each.
      CHECK(line.at("tokens_per_s").as_double() == doctest::Approx(32 / step).epsilon(2e-3));
      CHECK(reference > 0);
      CHECK(reference < step);  // the step runs the reference forward and the policy's forward and backward
      CHECK(line.at("policy_seconds").as_double() == doctest::Approx(step - reference).epsilon(2e-3));
      CHECK(line.at("reference_share").as_double() > 0);
      CHECK(line.at("reference_share").as_double() < 1);
    } else {
      CHECK(line.at("loss").as_string() == "grpo");
      CHECK(line.at("prompts").as_int64() == 1);
      CHECK(line.at("generations").as_int64() == 3);
      CHECK(line.at("max_new_tokens").as_int64() == 8);  // the completion half of the row
      // Three rows of the 8-token prompt and a completion of 1 to 8 tokens (a random model
      // seldom meets its EOS early: most are full).
      const double tokens = line.at("step_tokens").as_double();
      CHECK(tokens > 3 * 8);
      CHECK(tokens <= 3 * 16);
      CHECK(line.at("tokens_per_s").as_double() == doctest::Approx(tokens / step).epsilon(2e-3));
      const double sampling = line.at("sampling_seconds").as_double();
      CHECK(sampling > 0);
      CHECK(sampling < step);  // the step samples, then runs the policy's forward and backward
      CHECK(line.at("update_seconds").as_double() == doctest::Approx(step - sampling).epsilon(2e-3));
      CHECK(line.at("sampling_share").as_double() == doctest::Approx(sampling / step).epsilon(2e-3));
      CHECK(line.at("sampling_share").as_double() < 1);
      CHECK(line.at("sampled_tokens_per_s").as_double() > 0);
    }
  }
  // LoRA trains the adapters only; full fine-tuning every weight.
  for (size_t full : {0, 2}) CHECK(lines[full].at("trained_parameters").as_int64() == lines[full].at("parameters").as_int64());
  for (size_t lora : {1, 3}) CHECK(lines[lora].at("trained_parameters").as_int64() < lines[lora].at("parameters").as_int64() / 10);

  const Run grpo_only = run_lamina("bench preference --quick --seq-len 16 --threads 1 --filter grpo_step");
  REQUIRE(grpo_only.status == 0);
  CHECK(grpo_only.output.find("\"case\":\"llama_30m_grpo_step\"") != std::string::npos);
  CHECK(grpo_only.output.find("dpo") == std::string::npos);

  const Run nothing = run_lamina("bench preference --quick --filter no-such-case");
  CHECK(nothing.status == 2);
  CHECK(nothing.output.find("--filter 'no-such-case' matches no case") != std::string::npos);
  CHECK(nothing.output.find("llama_30m_grpo_lora_step") != std::string::npos);  // the message lists the cases
}
