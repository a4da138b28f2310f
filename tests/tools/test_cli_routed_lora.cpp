// `lamina lora route` and `lamina generate --routed-lora`: two PEFT adapters of a tiny byte-level
// model, the gates trained a few steps on a mix; OUT holds the adapters' folders, the gates
// (router.safetensors), router_config.json and metrics.jsonl; generate's greedy ids equal those
// of the routed model rebuilt in-process from OUT; bad input (adapters of other targets or another
// base, --top-k above N, a missing folder) is a clear error that leaves no OUT behind.
#include <filesystem>
#include <fstream>

#include "model_presets.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "nn/layers.h"
#include "nn/routed_lora.h"
#include "tensor/io/json.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// An adapter (non-zero B) on a fresh copy of the model in `base`, saved to `folder`.
void save_random_adapter(const std::string& base, const std::string& folder, const std::vector<std::string>& targets,
                         uint64_t seed, const std::string& base_name) {
  const auto model = llama::LlamaForCausalLM::load(base);
  nn::LoraConfig config;
  config.target_modules = targets;
  config.options.rank = 2;
  config.options.alpha = 4;
  config.options.init = nn::LoraInit::random;
  config.seed = seed;
  config.base_model_name_or_path = base_name;
  nn::apply_lora(*model, config);
  peft::save_adapter(folder, *model, config);
}

// Greedy continuation of `prompt` by full forwards (no cache): the reference for generate.
std::vector<int64_t> greedy(const llama::LlamaForCausalLM& model, std::vector<int64_t> ids, int steps) {
  for (int step = 0; step < steps; ++step) {
    const Tensor logits = model.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}));
    const std::vector<float> last = logits.select(1, int64_t(ids.size()) - 1).to_vector<float>();
    ids.push_back(int64_t(std::max_element(last.begin(), last.end()) - last.begin()));
  }
  return ids;
}

struct RoutedFixture : Workspace {
  std::string base = *this / "base";
  RoutedFixture() : Workspace("cli-routed-lora") {
    save_byte_level_model(base, 4, 0.2);
    save_random_adapter(base, *this / "up", {"all-linear"}, 1, base);
    save_random_adapter(base, *this / "down", {"all-linear"}, 2, base);
    std::ofstream mix(path / "mix.jsonl");
    for (int i = 0; i < 16; ++i)
      mix << R"({"prompt": "up )" << i << R"(:", "completion": " )" << i + 1 << R"("})" << "\n"
          << R"({"prompt": "down )" << i << R"(:", "completion": " )" << i - 1 << R"("})" << "\n";
  }
  std::string route(const std::string& adapters, const std::string& out, const std::string& extra = "") const {
    return "lora route --model " + base + " --adapters " + adapters + " --data " + (*this / "mix.jsonl") + " --out " + out +
           " --steps 4 --batch-size 4 --seq-len 32 --lr 5e-2 --quiet " + extra;
  }
};

}  // namespace

TEST_CASE("lamina lora route writes the adapters, the trained gates and metrics; generate --routed-lora runs them") {
  RoutedFixture w;
  const std::string out = w / "routed";
  Run run = run_lamina(w.route(w / "up" + "," + (w / "down"), out, "--top-k 2"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("routing on the data") != std::string::npos);
  CHECK(folder_entries(out) ==
        std::vector<std::string>{"adapters", "metrics.jsonl", "router.safetensors", "router_config.json"});
  CHECK(folder_entries(fs::path(out) / "adapters") == std::vector<std::string>{"down", "up"});
  for (const char* name : {"up", "down"})
    for (const char* file : {"adapter_config.json", "adapter_model.safetensors"})
      CHECK(file_bytes(fs::path(out) / "adapters" / name / file) == file_bytes(fs::path(w / name) / file));
  const json::Value config = json::parse_file(out + "/router_config.json");
  CHECK(config.at("adapters").dump() == R"(["up","down"])");
  CHECK(config.at("top_k").as_int64() == 2);
  CHECK(config.at("steps").as_int64() == 4);
  {
    std::ifstream metrics(out + "/metrics.jsonl");
    int lines = 0;
    for (std::string line; std::getline(metrics, line);) lines += line.rfind("{\"step\"", 0) == 0 ? 1 : 0;
    CHECK(lines == 4);
  }

  // The gates: one per projection of the one layer, [2, in], HF-style names; trained away from
  // their seeded start.
  const auto model = llama::LlamaForCausalLM::load(w.base);
  peft::load_adapter(w / "up", *model, "up");
  peft::load_adapter(w / "down", *model, "down");
  const auto router = nn::add_lora_router(*model, {"up", "down"}, 2, 0);
  const safetensors::File gates = safetensors::File::open(out + "/router.safetensors");
  CHECK(gates.tensors().size() == 7);
  const safetensors::TensorInfo* q = gates.find("model.layers.0.self_attn.q_proj.lora_router.weight");
  REQUIRE(q != nullptr);
  CHECK(q->shape == Shape{2, 8});
  bool moved = false;
  for (const auto& [name, gate] : nn::router_parameters(*model)) {
    const Tensor trained = gates.read(name);
    moved = moved || trained.to_vector<float>() != gate.to_vector<float>();
    gate.set_data(trained.clone());
  }
  CHECK(moved);

  // generate --routed-lora: the greedy ids of the routed model rebuilt here.
  model->eval();
  const std::vector<int64_t> prompt = {1, 117, 112, 32, 51};
  const std::vector<int64_t> expected = greedy(*model, prompt, 6);
  nn::set_lora_router(*model, nullptr);
  nn::disable_adapters(*model);
  const std::vector<int64_t> base_only = greedy(*model, prompt, 6);
  run = run_lamina("generate --model " + w.base + " --routed-lora " + out +
                   " --prompt-ids \"1 117 112 32 51\" --max-new-tokens 6 --no-stop");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(ids_of(last_line(run.output)) == expected);
  CHECK(expected != base_only);  // the gates and adapters do change the answer

  run = run_lamina("generate --model " + w.base + " --routed-lora " + out + " --adapter " + (w / "up") +
                   " --prompt-ids \"1 5\" --max-new-tokens 2");
  CHECK(run.status != 0);
  CHECK(run.output.find("--routed-lora and --adapter do not go together") != std::string::npos);
  run = run_lamina("generate --model " + w.base + " --routed-lora " + (w / "nowhere") + " --prompt-ids \"1 5\"");
  CHECK(run.status != 0);
  CHECK(run.output.find("nowhere: not a folder") != std::string::npos);
}

TEST_CASE("lamina lora route refuses bad input with a clear error and writes nothing") {
  RoutedFixture w;
  const std::string out = w / "routed";
  const std::string both = w / "up" + "," + (w / "down");
  save_random_adapter(w.base, w / "q_only", {"q_proj"}, 3, w.base);
  save_random_adapter(w.base, w / "elsewhere", {"all-linear"}, 4, "/some/other/model");
  {
    // An adapter of a wider model: its shapes are not this base's.
    llama::LlamaConfig config = byte_level_llama_config();
    config.hidden_size = 16;
    config.head_dim = 8;
    random_llama(config, 5)->save(w / "wide");
    save_random_adapter(w / "wide", w / "wide_adapter", {"all-linear"}, 5, "");
  }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {w.route(w / "up" + "," + (w / "q_only"), out), "the routed adapters must target the same modules"},
      {w.route(w / "up" + "," + (w / "elsewhere"), out), "the adapters were trained on different bases"},
      {w.route(w / "up" + "," + (w / "wide_adapter"), out), "shape"},
      {w.route(both, out, "--top-k 3"), "--top-k 3 is more than the 2 adapters given"},
      {w.route(both, out, "--top-k 1"), "--top-k 1 gives every token's adapter the weight 1"},
      {w.route(w / "up" + "," + (w / "missing"), out), "missing is not a folder"},
      {w.route(both, out, "--names a"), "--names gives 1 names for 2 adapters"},
      {w.route(w / "up", out), "a router chooses between two or more"},
      {w.route(w / "up" + "," + (w / "up"), out), "two adapters are named 'up'"},
  };
  for (const auto& [command, message] : cases) {
    CAPTURE(command);
    const Run run = run_lamina(command);
    INFO(run.output);
    CHECK(run.status != 0);
    CHECK(run.output.find(message) != std::string::npos);
    CHECK(!fs::exists(out));
  }
  for (const auto& entry : fs::directory_iterator(w.path))
    CHECK(entry.path().filename().string().find("partial") == std::string::npos);
  // An existing OUT needs --overwrite.
  fs::create_directories(out);
  Run run = run_lamina(w.route(both, out));
  CHECK(run.status != 0);
  CHECK(run.output.find("exists; pass --overwrite") != std::string::npos);
  run = run_lamina(w.route(both, out, "--overwrite"));
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(fs::exists(fs::path(out) / "router.safetensors"));
}
