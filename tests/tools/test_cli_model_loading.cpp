// `lamina generate` on broken model folders: a config that disagrees with its weights, a FIFO in
// place of the weights, a malformed config field. Each is an error naming the file and the
// problem, at once: the commands run under a timeout and a memory limit, so that a regression
// (building a million layers, waiting on the FIFO) fails the test instead of hanging CI or
// filling the machine.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

// `lamina generate --model <model> --prompt-ids "1 2"`, within 4 GB of address space and 60 s.
Run generate_with(const fs::path& model) {
  const std::string command = "ulimit -v 4000000; timeout 60 " + std::string(LAMINA_CLI_PATH) + " generate --model " +
                              model.string() + " --prompt-ids '1 2' --max-new-tokens 2 2>&1";
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

// A saved tiny model (2 layers, zero weights) for a test to break.
fs::path tiny_model_folder(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("lamina-cli-loading-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  llama::LlamaConfig config;
  config.vocab_size = 40;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  config.max_position_embeddings = 64;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  llama::LlamaForCausalLM(config).save(dir.string());
  return dir;
}

void set_config_field(const fs::path& dir, const std::string& key, json::Value value) {
  json::Value config = json::parse_file((dir / "config.json").string());
  config.set(key, std::move(value));
  std::ofstream(dir / "config.json") << config.dump(2);
}

}  // namespace

TEST_CASE("generate: a config claiming a million layers fails at once, naming the first missing tensor") {
  const fs::path dir = tiny_model_folder("layers");
  set_config_field(dir, "num_hidden_layers", int64_t(1000000));
  const Run run = generate_with(dir);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: load: " + dir.string() +
                        " has no tensor 'model.layers.2.self_attn.q_proj.weight' (config.json says num_hidden_layers "
                        "is 1000000; the checkpoint's tensors name 2 layers)") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("generate: a FIFO named model.safetensors is refused, not waited on") {
  const fs::path dir = tiny_model_folder("fifo");
  fs::remove(dir / "model.safetensors");
  REQUIRE(::mkfifo((dir / "model.safetensors").c_str(), 0600) == 0);
  const Run run = generate_with(dir);
  CHECK(run.status == 1);  // 124 when the timeout had to end it
  CHECK(run.output.find("error: safetensors: " + (dir / "model.safetensors").string() +
                        " is a FIFO (named pipe), not a regular file") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("generate: a malformed config field is named with its file") {
  const fs::path dir = tiny_model_folder("rope");
  set_config_field(dir, "rope_scaling", "llama3");
  const Run run = generate_with(dir);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: " + (dir / "config.json").string() + ": rope_scaling: expected an object, got string") !=
        std::string::npos);
  fs::remove_all(dir);
}
