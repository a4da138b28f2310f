// The lamina executable end to end: exit codes, messages and outputs of real invocations.
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "models/llama/model.h"

using namespace lamina;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status = -1;
  std::string output;  // stdout and stderr together
};

Run run_cli(const std::string& arguments) {
  const std::string command = std::string(LAMINA_CLI_PATH) + " " + arguments + " 2>&1";
  Run run;
  std::FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, read);
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
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
