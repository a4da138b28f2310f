// The --lora spec: its settings and defaults, its errors, and the trainable-parameter count the
// memory estimate uses, checked against the adapters apply_lora really adds.
#include "helpers.h"
#include "model_presets.h"
#include "nn/lora.h"
#include "train/lora_spec.h"
#include "train/trainer.h"

using namespace lamina;

TEST_CASE("lora spec: settings, PEFT's defaults and errors that name the setting") {
  const nn::LoraConfig defaults = train::parse_lora_spec("r=16");
  CHECK(defaults.options.rank == 16);
  CHECK(defaults.options.alpha == 16.0);  // alpha defaults to r: a scale of 1
  CHECK(defaults.options.dropout == 0.0);
  CHECK(defaults.target_modules == std::vector<std::string>{"q_proj", "v_proj"});
  const nn::LoraConfig full = train::parse_lora_spec("r=4,alpha=32,dropout=0.05,targets=q_proj+down_proj,rslora,dora,init=gaussian");
  CHECK(full.options.rank == 4);
  CHECK(full.options.alpha == 32.0);
  CHECK(full.options.dropout == 0.05);
  CHECK(full.target_modules == std::vector<std::string>{"q_proj", "down_proj"});
  CHECK(full.options.use_rslora);
  CHECK(full.options.use_dora);
  CHECK(full.options.init == nn::LoraInit::gaussian);
  CHECK(full.options.scale() == doctest::Approx(32.0 / 2.0));  // rsLoRA: alpha / sqrt(r)
  for (const auto& [spec, message] : std::vector<std::pair<std::string, std::string>>{
           {"", "empty"},
           {"r=0", "r must be an integer in [1, 65536]"},
           {"r=2.5", "r must be an integer"},
           {"r=8,r=4", "r is given twice"},
           {"alpha=-1", "alpha must be positive"},
           {"dropout=1", "dropout must be in [0, 1)"},
           {"dora=1", "dora is a switch"},
           {"alpha", "alpha needs a value"},
           {"targets=q_proj++v_proj", "targets has an empty name"},
           {"init=zeros", "init must be true"},
           {"rank2=3", "unknown setting 'rank2'"}}) {
    INFO(spec);
    CHECK_THROWS_WITH_AS(train::parse_lora_spec(spec), doctest::Contains(message.c_str()), Error);
  }
  train::TrainOptions options;
  options.lora = "r=0";
  CHECK_THROWS_WITH_AS(options.validate(), doctest::Contains("--lora: r must be"), Error);
}

TEST_CASE("lora spec: the trainable-parameter count from the configs equals the adapters' parameters") {
  const llama::LlamaConfig config = testing::tiny_llama_config(40);
  for (const std::string& spec : {"r=2", "r=3,targets=all-linear", "r=2,targets=o_proj+up_proj,dora"}) {
    INFO(spec);
    llama::LlamaForCausalLM model(config);
    const nn::LoraConfig lora = train::parse_lora_spec(spec);
    nn::apply_lora(model, lora);
    CHECK(train::lora_parameter_count(config, lora) == model.parameter_count(true));
  }
}
