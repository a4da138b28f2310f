// `lamina lora merge`: a tiny model and a PEFT adapter folder in, a plain Hugging Face folder out
// whose logits are the model-with-adapter's (plain LoRA and DoRA; a folder or a GGUF base),
// tokenizer copied; broken
// adapters and an existing OUT refused with clear errors and nothing written.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "models/tokenizer/builder.h"
#include "nn/layers.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {


// An adapter with non-zero B (and magnitude, with DoRA) on `model`, saved to `folder`.
void save_adapter(llama::LlamaForCausalLM& model, const std::string& folder, bool dora) {
  nn::LoraConfig config;
  config.target_modules = {"all-linear"};
  config.options.rank = 2;
  config.options.alpha = 4;
  config.options.use_dora = dora;
  config.options.init = nn::LoraInit::random;
  nn::apply_lora(model, config);
  if (dora) {
    Generator generator(4);
    for (const auto& [path, linear] : nn::named_linears(model))
      if (linear->has_adapter("default"))
        linear->adapter("default").magnitude.set_data(
            random_tensor({linear->out_features()}, DType::f32, generator, 0.5, 2.0));
  }
  peft::save_adapter(folder, model, config);
}

}  // namespace

TEST_CASE("lamina lora merge writes a folder whose logits equal the model with its adapter") {
  for (const bool dora : {false, true}) {
    CAPTURE(dora);
    const ScratchDir scratch("cli-lora-merge");
    const auto model = save_byte_level_model(scratch / "model", 3);
    save_adapter(*model, scratch / "adapter", dora);
    model->eval();
    const Tensor ids = Tensor::from_vector<int64_t>({72, 101, 108, 108, 111, 33}, {1, 6});
    const Tensor adapted = model->forward(ids);
    nn::disable_adapters(*model);
    const Tensor base = model->forward(ids);

    const Run run = run_lamina("lora merge --model " + (scratch / "model") + " --adapter " + (scratch / "adapter") +
                               " --out " + (scratch / "merged"));
    INFO(run.output);
    REQUIRE(run.status == 0);
    CHECK(folder_entries(scratch.path / "merged") ==
          std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json"});
    CHECK(file_bytes(scratch / "merged/tokenizer.json") == file_bytes(scratch / "model/tokenizer.json"));
    const auto merged = llama::LlamaForCausalLM::load(scratch / "merged");
    for (const auto& [name, parameter] : merged->named_parameters()) CHECK(name.find("lora") == std::string::npos);
    const Tensor logits = merged->forward(ids);
    CHECK_CLOSE(logits, adapted, (Tolerance{2e-5, 2e-5}));
    CHECK(compare(logits, base, Tolerance{2e-5, 2e-5}).ok == false);
    CHECK(folder_entries(scratch.path) == std::vector<std::string>{"adapter", "merged", "model"});
  }
}

TEST_CASE("lamina lora merge takes a GGUF base model, tokenizer included") {
  const ScratchDir scratch("cli-lora-gguf");
  const auto model = save_byte_level_model(scratch / "model", 3);
  save_adapter(*model, scratch / "adapter", false);
  model->eval();
  const Tensor ids = Tensor::from_vector<int64_t>({72, 105, 33}, {1, 3});
  const Tensor adapted = model->forward(ids);
  Run run = run_lamina("convert " + (scratch / "model") + " " + (scratch / "model.gguf") + " --type f32");
  INFO(run.output);
  REQUIRE(run.status == 0);
  run = run_lamina("lora merge --model " + (scratch / "model.gguf") + " --adapter " + (scratch / "adapter") + " --out " +
                   (scratch / "merged"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(fs::exists(scratch / "merged/tokenizer.json"));
  CHECK_CLOSE(llama::LlamaForCausalLM::load(scratch / "merged")->forward(ids), adapted, (Tolerance{2e-5, 2e-5}));
}

TEST_CASE("lamina lora merge refuses broken adapters and an existing OUT, leaving nothing behind") {
  const ScratchDir scratch("cli-lora-errors");
  const auto model = save_byte_level_model(scratch / "model", 3);
  save_adapter(*model, scratch / "adapter", false);
  const std::string merge = "lora merge --model " + (scratch / "model") + " --adapter " + (scratch / "adapter") + " --out ";

  SUBCASE("a missing key") {
    const std::string weights = scratch / "adapter/adapter_model.safetensors";
    const safetensors::File file = safetensors::File::open(weights);
    safetensors::NamedTensors kept;
    for (const auto& info : file.tensors())
      if (info.name != "base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
        kept.emplace_back(info.name, ops::clone(file.read(info.name)));
    safetensors::save(weights + ".new", kept);
    fs::rename(weights + ".new", weights);
    const Run run = run_lamina(merge + (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find(weights) != std::string::npos);
    CHECK(run.output.find("missing key base_model.model.model.layers.0.mlp.up_proj.lora_B.weight") != std::string::npos);
  }
  SUBCASE("a wrong shape") {
    const std::string weights = scratch / "adapter/adapter_model.safetensors";
    safetensors::save(weights, {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", zeros({2, 5})}});
    const Run run = run_lamina(merge + (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find("q_proj.lora_A.weight has shape [2, 5], expected [2, 8]") != std::string::npos);
  }
  SUBCASE("not an adapter folder") {
    const Run run = run_lamina("lora merge --model " + (scratch / "model") + " --adapter " + (scratch / "model") +
                               " --out " + (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find("adapter_config.json not found") != std::string::npos);
  }
  SUBCASE("an existing OUT without --overwrite, then with it") {
    fs::create_directories(scratch / "merged");
    std::ofstream(scratch / "merged/keep") << "x";
    Run run = run_lamina(merge + (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find("--overwrite") != std::string::npos);
    CHECK(fs::exists(scratch / "merged/keep"));
    run = run_lamina(merge + (scratch / "merged") + " --overwrite");
    CHECK(run.status == 0);
    CHECK(!fs::exists(scratch / "merged/keep"));
    CHECK(fs::exists(scratch / "merged/model.safetensors"));
    return;
  }
  SUBCASE("usage mistakes") {
    CHECK(run_lamina("lora").status == 2);
    CHECK(run_lamina("lora mrege").output.find("did you mean 'merge'") != std::string::npos);
    CHECK(run_lamina("lora merge --model x").status == 2);
    const Run help = run_lamina("lora merge --help");
    CHECK(help.status == 0);
    CHECK(help.output.find("--adapter") != std::string::npos);
    CHECK(run_lamina("lora --help").status == 0);
  }
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"adapter", "model"});
}
