// The lamina executable end to end: exit codes, messages and outputs of real invocations.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "models/llama/model.h"

using namespace lamina;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status = -1;
  std::string output;  // stdout and stderr together
};

// Runs `lamina <arguments>`, with `input` on its stdin when given.
Run run_cli(const std::string& arguments, const std::string& input = "") {
  std::string command = std::string(LAMINA_CLI_PATH) + " " + arguments + " 2>&1";
  const fs::path input_path = fs::temp_directory_path() / ("lamina-cli-input-" + std::to_string(::getpid()));
  if (!input.empty()) {
    std::ofstream(input_path) << input;
    command += " < " + input_path.string();
  }
  Run run;
  std::FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, read);
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (!input.empty()) fs::remove(input_path);
  return run;
}

struct ScratchDir {
  fs::path path;
  explicit ScratchDir(const std::string& name) : path(fs::temp_directory_path() / ("lamina-cli-" + name)) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("help, version and usage errors") {
  const Run help = run_cli("--help");
  CHECK(help.status == 0);
  CHECK(help.output.find("generate") != std::string::npos);
  CHECK(run_cli("version").output.find("lamina ") == 0);
  const Run unknown = run_cli("genrate");
  CHECK(unknown.status == 2);
  CHECK(unknown.output.find("unknown subcommand 'genrate' (did you mean 'generate'?)") != std::string::npos);
  const Run bad_flag = run_cli("generate --modle x");
  CHECK(bad_flag.status == 2);
  CHECK(bad_flag.output.find("--modle") != std::string::npos);
  const Run no_model = run_cli("generate --prompt-ids 1");
  CHECK(no_model.status == 2);
  CHECK(no_model.output.find("--model is required") != std::string::npos);
  const Run bad_ids = run_cli("generate --model . --prompt-ids \"1 x\"");
  CHECK(bad_ids.status == 2);
  CHECK(bad_ids.output.find("'x' is not a token id") != std::string::npos);
  const Run bad_number = run_cli("generate --model . --prompt-ids 1 --temperature hot");
  CHECK(bad_number.status == 2);
}

TEST_CASE("lamina generate reproduces the stories260k golden") {
  const fs::path dir = testing::assets_dir("stories260k");
  if (dir.empty()) return;
  std::ifstream golden_file(dir / "greedy_from_bos.txt");
  std::string golden;
  std::getline(golden_file, golden);
  const Run run = run_cli("generate --model " + dir.string() + " --prompt-ids 1 --max-new-tokens 40");
  CHECK(run.status == 0);
  CHECK(run.output == golden + "\n");
}

TEST_CASE("bad model folders fail with a message and exit status 1, never a crash") {
  ScratchDir dir("bad-model");
  llama::LlamaConfig config;
  config.vocab_size = 32;
  config.hidden_size = 8;
  config.intermediate_size = 16;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  llama::LlamaForCausalLM(config).save(dir.path.string());
  const std::string weights = (dir.path / "model.safetensors").string();
  const std::string command = "generate --model " + dir.path.string() + " --prompt-ids \"1 5\" --max-new-tokens 3";
  CHECK(run_cli(command).status == 0);

  // Truncated weights.
  const auto size = fs::file_size(weights);
  fs::resize_file(weights, size - 7);
  Run run = run_cli(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: safetensors: " + weights) != std::string::npos);
  CHECK(run.output.find("truncated file?") != std::string::npos);
  // Header length past the end of the file.
  {
    std::fstream file(weights, std::ios::in | std::ios::out | std::ios::binary);
    const char huge[8] = {char(0xff), char(0xff), char(0xff), 0, 0, 0, 0, 0};
    file.write(huge, 8);
  }
  run = run_cli(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("runs past the end of the file") != std::string::npos);
  // Malformed config.json.
  std::ofstream(dir.path / "config.json") << "{\"hidden_size\": 8,}";
  run = run_cli(command);
  CHECK(run.status == 1);
  CHECK(run.output.find("config.json:1:19") != std::string::npos);
  // No such folder.
  run = run_cli("generate --model /no/such/model --prompt-ids 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("cannot open /no/such/model/config.json") != std::string::npos);
}

namespace {

// A tiny random model that speaks the real Llama-3 vocabulary, with the asset's tokenizer
// files beside it: enough to drive text prompts, the chat format and streaming output.
fs::path tiny_instruct_model(const ScratchDir& dir, const fs::path& tokenizer_dir) {
  llama::LlamaConfig config;
  config.vocab_size = 128256;
  config.hidden_size = 8;
  config.intermediate_size = 16;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  config.bos_token_id = 128000;
  config.eos_token_ids = {128001, 128009};
  config.dtype = DType::f32;
  config.initializer_range = 1.0;
  llama::LlamaForCausalLM model(config);
  Generator gen(5);
  model.init_parameters(gen);
  model.save(dir.path.string());
  fs::copy_file(tokenizer_dir / "tokenizer.json", dir.path / "tokenizer.json");
  fs::copy_file(tokenizer_dir / "tokenizer_config.json", dir.path / "tokenizer_config.json");
  return dir.path;
}

std::vector<int64_t> ids_of(const std::string& line) {
  std::istringstream in(line);
  std::vector<int64_t> ids;
  for (int64_t id; in >> id;) ids.push_back(id);
  return ids;
}

}  // namespace

TEST_CASE("text prompts, the chat format and streamed text output") {
  const fs::path tokenizer_dir = testing::assets_dir("llama3-tokenizer");
  if (tokenizer_dir.empty()) return;
  ScratchDir dir("instruct");
  const std::string model = tiny_instruct_model(dir, tokenizer_dir).string();
  // Plain text: BOS + the text's ids ("Hello world" -> 9906 1917), then new tokens.
  const Run plain = run_cli("generate --model " + model + " --prompt \"Hello world\" --output ids --max-new-tokens 4 --no-stop");
  REQUIRE(plain.status == 0);
  const std::vector<int64_t> plain_ids = ids_of(plain.output);
  REQUIRE(plain_ids.size() == 7);
  CHECK(std::vector<int64_t>(plain_ids.begin(), plain_ids.begin() + 3) == std::vector<int64_t>{128000, 9906, 1917});
  // The same generation as text equals the detokenized new ids.
  const Run text = run_cli("generate --model " + model + " --prompt \"Hello world\" --max-new-tokens 4 --no-stop");
  REQUIRE(text.status == 0);
  std::string new_ids;
  for (size_t i = 3; i < plain_ids.size(); ++i) new_ids += std::to_string(plain_ids[i]) + " ";
  const Run decoded = run_cli("detokenize --tokenizer " + model + " --ids \"" + new_ids + "\"");
  REQUIRE(decoded.status == 0);
  CHECK(text.output == decoded.output + "\n");  // generate ends its text with a newline
  // --chat wraps the prompt as a user turn of the Llama-3 Instruct format.
  // The user turn of llama3.md 4.1's dialog: "This is a response." (the asset is 3.0 Instruct).
  const Run chat = run_cli("generate --model " + model +
                           " --prompt \"This is a response.\" --chat --output ids --max-new-tokens 1 --no-stop");
  REQUIRE(chat.status == 0);
  const std::vector<int64_t> chat_ids = ids_of(chat.output);
  const std::vector<int64_t> expected_prompt = {128000, 128006, 882,    128007, 271, 2028, 374, 264,
                                                2077,   13,     128009, 128006, 78191, 128007, 271};
  REQUIRE(chat_ids.size() == expected_prompt.size() + 1);
  CHECK(std::vector<int64_t>(chat_ids.begin(), chat_ids.end() - 1) == expected_prompt);
  CHECK(run_cli("generate --model " + model + " --prompt-ids 1 --chat").status == 2);
}

TEST_CASE("lamina chat holds a conversation from stdin") {
  const fs::path tokenizer_dir = testing::assets_dir("llama3-tokenizer");
  if (tokenizer_dir.empty()) return;
  ScratchDir dir("chat");
  const std::string model = tiny_instruct_model(dir, tokenizer_dir).string();
  const Run run = run_cli("chat --model " + model + " --max-new-tokens 3", "/system Be brief\nhello\n/reset\nagain\n/quit\n");
  CHECK(run.status == 0);
  CHECK(run.output.find("(system message set; conversation cleared)") != std::string::npos);
  CHECK(run.output.find("(conversation cleared)") != std::string::npos);
  CHECK(run.output.find("lamina chat (llama3 format)") != std::string::npos);
  const Run no_tokenizer = run_cli("chat --model /no/such/dir");
  CHECK(no_tokenizer.status == 1);
}
