// `lamina generate` on broken model folders: a config that disagrees with its weights, a FIFO in
// place of the weights, a malformed config field. Each is an error naming the file and the
// problem, at once: the commands run under a timeout and a memory limit, so that a regression
// (building a million layers, waiting on the FIFO) fails the test instead of hanging CI or
// filling the machine.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// `lamina generate --model <model> --prompt-ids "1 2"`, within 4 GB of address space and 60 s.
Run generate_with(const fs::path& model) {
  return run_lamina("generate --model " + model.string() + " --prompt-ids '1 2' --max-new-tokens 2",
                    {.timeout_seconds = 60, .address_space_kb = 4000000});
}

// A scratch folder holding a saved tiny model (2 layers, zero weights) for a test to break.
struct TinyModelFolder : ScratchDir {
  explicit TinyModelFolder(const std::string& name) : ScratchDir("cli-loading-" + name) {
    llama::LlamaForCausalLM(tiny_llama_config(40)).save(path.string());
  }
};

void set_config_field(const fs::path& dir, const std::string& key, json::Value value) {
  json::Value config = json::parse_file((dir / "config.json").string());
  config.set(key, std::move(value));
  std::ofstream(dir / "config.json") << config.dump(2);
}

}  // namespace

TEST_CASE("generate: a config claiming a million layers fails at once, naming the first missing tensor") {
  const TinyModelFolder folder("layers");
  const fs::path& dir = folder.path;
  set_config_field(dir, "num_hidden_layers", int64_t(1000000));
  const Run run = generate_with(dir);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: load: " + dir.string() +
                        " has no tensor 'model.layers.2.self_attn.q_proj.weight' (config.json says num_hidden_layers "
                        "is 1000000; the checkpoint's tensors name 2 layers)") != std::string::npos);
}

TEST_CASE("generate: a FIFO named model.safetensors is refused, not waited on") {
  const TinyModelFolder folder("fifo");
  const fs::path& dir = folder.path;
  fs::remove(dir / "model.safetensors");
  REQUIRE(::mkfifo((dir / "model.safetensors").c_str(), 0600) == 0);
  const Run run = generate_with(dir);
  CHECK(run.status == 1);  // 124 when the timeout had to end it
  CHECK(run.output.find("error: safetensors: " + (dir / "model.safetensors").string() +
                        " is a FIFO (named pipe), not a regular file") != std::string::npos);
}

TEST_CASE("generate: a malformed config field is named with its file") {
  const TinyModelFolder folder("rope");
  const fs::path& dir = folder.path;
  set_config_field(dir, "rope_scaling", "llama3");
  const Run run = generate_with(dir);
  CHECK(run.status == 1);
  CHECK(run.output.find("error: " + (dir / "config.json").string() + ": rope_scaling: expected an object, got string") !=
        std::string::npos);
}
