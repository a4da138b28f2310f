// Block expansion (models/surgery/expand.h): the plans of --insert-after and --every, the
// expanded folder (renumbered blocks, zeroed output projections of the copies, config.json's
// layer count and other fields), logits bit-identical to the original's in f32 and bf16, bad
// plans and quantized folders refused; and --trainable (train/trainer.h) on an expanded model:
// after a step only the parameters of the new blocks have changed.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/surgery/expand.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

Tensor some_ids() { return Tensor::from_vector<int64_t>({1, 5, 9, 3, 17, 30, 2, 8, 11, 4}, {2, 5}); }

}  // namespace

TEST_CASE("expand plans: --insert-after places a copy after each chosen block, --every after each group") {
  const surgery::ExpansionPlan plan = surgery::plan_insert_after(4, {3, 1});
  CHECK(plan.source == std::vector<int64_t>{0, 1, 1, 2, 3, 3});
  CHECK(plan.inserted == std::vector<bool>{false, false, true, false, false, true});
  CHECK(plan.inserted_layers() == std::vector<int64_t>{2, 5});
  const surgery::ExpansionPlan every = surgery::plan_every(6, 3);
  CHECK(every.source == std::vector<int64_t>{0, 1, 2, 2, 3, 4, 5, 5});
  CHECK(every.inserted_layers() == std::vector<int64_t>{3, 7});
  CHECK(surgery::plan_every(3, 2).inserted_layers() == std::vector<int64_t>{2});  // a short last group gets none
  CHECK(error_of([] { surgery::plan_insert_after(4, {4}); }).find("block 4 does not exist") != std::string::npos);
  CHECK(error_of([] { surgery::plan_insert_after(4, {-1}); }).find("block -1 does not exist") != std::string::npos);
  CHECK(error_of([] { surgery::plan_insert_after(4, {2, 2}); }).find("given twice") != std::string::npos);
  CHECK(error_of([] { surgery::plan_insert_after(4, {}); }).find("no block to insert") != std::string::npos);
  CHECK(error_of([] { surgery::plan_every(4, 0); }).find("--every") != std::string::npos);
  CHECK(error_of([] { surgery::plan_every(4, 5); }).find("--every") != std::string::npos);
  CHECK(surgery::is_output_projection("self_attn.o_proj.weight"));
  CHECK(surgery::is_output_projection("mlp.down_proj.bias"));
  CHECK_FALSE(surgery::is_output_projection("self_attn.q_proj.weight"));
  CHECK_FALSE(surgery::is_output_projection("mlp.up_proj.weight"));
}

TEST_CASE("expand_blocks writes renumbered blocks whose copies add nothing: the logits are bit-identical") {
  const ScratchDir scratch("expand");
  llama::LlamaConfig config = tiny_llama_config(40);
  config.tie_word_embeddings = false;
  const auto original = random_llama(config, 7);
  original->save(scratch / "original");
  // A field lamina does not model must survive the rewrite of config.json.
  {
    json::Value raw = json::parse_file(scratch / "original/config.json");
    raw.set("custom_note", "kept");
    std::ofstream(scratch / "original/config.json") << raw.dump(2);
  }
  fs::create_directories(scratch / "out");
  const surgery::ExpandSummary summary =
      surgery::expand_blocks(scratch / "original", scratch / "out", surgery::plan_insert_after(2, {0, 1}));
  CHECK(summary.old_layers == 2);
  CHECK(summary.new_layers == 4);
  CHECK(summary.inserted_layers == std::vector<int64_t>{1, 3});
  CHECK(summary.weight_files == std::vector<std::string>{"model.safetensors"});
  const json::Value raw = json::parse_file(scratch / "out/config.json");
  CHECK(raw.at("num_hidden_layers").as_int64() == 4);
  CHECK(raw.at("custom_note").as_string() == "kept");

  const auto expanded = llama::LlamaForCausalLM::load(scratch / "out");
  CHECK(summary.tensors == int64_t(expanded->named_parameters().size()));
  const safetensors::Checkpoint source = safetensors::Checkpoint::open(scratch / "original");
  const safetensors::Checkpoint result = safetensors::Checkpoint::open(scratch / "out");
  const int64_t from[] = {0, 0, 1, 1};
  for (int64_t k = 0; k < 4; ++k)
    for (const char* within : {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                               "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                               "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"}) {
      CAPTURE(k);
      CAPTURE(within);
      const Tensor got = result.read("model.layers." + std::to_string(k) + "." + within);
      const Tensor copied = source.read("model.layers." + std::to_string(from[k]) + "." + within);
      const bool zeroed = (k == 1 || k == 3) && surgery::is_output_projection(within);
      CHECK(same_bytes(got, zeroed ? zeros(copied.shape(), copied.dtype()) : copied));
    }
  CHECK(same_bytes(result.read("lm_head.weight"), source.read("lm_head.weight")));

  const Tensor before = original->forward(some_ids());
  const Tensor after = expanded->forward(some_ids());
  CHECK(same_bytes(before, after));
}

TEST_CASE("expand_blocks keeps the weights' dtype and the logits of a bf16 folder; refuses what it cannot expand") {
  const ScratchDir scratch("expand-bf16");
  const auto original = random_llama(tiny_llama_config(40), 3);
  original->save(scratch / "original", DType::bf16);
  fs::create_directories(scratch / "out");
  surgery::expand_blocks(scratch / "original", scratch / "out", surgery::plan_every(2, 1));
  const safetensors::Checkpoint result = safetensors::Checkpoint::open(scratch / "out");
  CHECK(result.info("model.layers.3.mlp.down_proj.weight").file_dtype == "BF16");
  const auto before = llama::LlamaForCausalLM::load(scratch / "original");
  const auto after = llama::LlamaForCausalLM::load(scratch / "out");
  CHECK(after->config().num_hidden_layers == 4);
  CHECK(same_bytes(before->forward(some_ids()), after->forward(some_ids())));

  // A plan for another model, a missing folder, a quantized checkpoint.
  fs::create_directories(scratch / "out2");
  CHECK(error_of([&] { surgery::expand_blocks(scratch / "original", scratch / "out2", surgery::plan_insert_after(3, {2})); })
            .find("copies block 2") != std::string::npos);
  CHECK(error_of([&] { surgery::expand_blocks(scratch / "missing", scratch / "out2", surgery::plan_every(2, 1)); })
            .find("is not a folder") != std::string::npos);
  json::Value raw = json::parse_file(scratch / "original/config.json");
  raw.set("quantization_config", json::Object{});
  std::ofstream(scratch / "original/config.json") << raw.dump(2);
  CHECK(error_of([&] { surgery::expand_blocks(scratch / "original", scratch / "out2", surgery::plan_every(2, 1)); })
            .find("quantized") != std::string::npos);
}

TEST_CASE("--trainable trains only the matching parameters: the expanded blocks change, the rest stay bit-identical") {
  const ScratchDir scratch("expand-trainable");
  tiny_model(5)->save(scratch / "original");
  fs::create_directories(scratch / "out");
  surgery::expand_blocks(scratch / "original", scratch / "out", surgery::plan_insert_after(2, {1}));
  const auto model = llama::LlamaForCausalLM::load(scratch / "out");
  std::vector<std::pair<std::string, Tensor>> before;
  for (const auto& [name, parameter] : model->named_parameters()) before.emplace_back(name, parameter.clone());

  train::TrainOptions options;
  options.steps = 1;
  options.batch_size = 4;
  options.seq_len = 16;
  options.lr = 1e-2;
  options.warmup_steps = 0;
  options.precision = "f32";
  options.progress = false;
  options.trainable = "model.layers.2.*";
  train::Trainer trainer(model, options, examples(8, 1));
  trainer.run();
  CHECK(trainer.step() == 1);
  int64_t changed = 0;
  for (const auto& [name, parameter] : model->named_parameters()) {
    CAPTURE(name);
    const Tensor& old = std::find_if(before.begin(), before.end(), [&](const auto& entry) { return entry.first == name; })->second;
    const bool trained = name.rfind("model.layers.2.", 0) == 0;
    CHECK(parameter.requires_grad() == trained);
    if (!trained) CHECK(same_bytes(parameter, old));
    if (trained && !same_bytes(parameter, old)) ++changed;
  }
  // The zeroed output projections get the first gradients (the block's other weights get none
  // through a zero projection on the first step, only weight decay).
  for (const auto& [name, parameter] : model->named_parameters())
    if (name == "model.layers.2.self_attn.o_proj.weight" || name == "model.layers.2.mlp.down_proj.weight") {
      CAPTURE(name);
      CHECK_FALSE(same_bytes(parameter, zeros(parameter.shape(), parameter.dtype())));
    }
  CHECK(changed >= 2);

  // The memory estimate counts gradients and moments for the trained block alone.
  double block_parameters = 0;
  for (const auto& [name, parameter] : model->named_parameters())
    if (name.rfind("model.layers.2.", 0) == 0) block_parameters += double(parameter.numel());
  const train::TrainingMemory estimate = train::estimate_training_memory(model->config(), options);
  CHECK(estimate.gradients == block_parameters * 4);
  CHECK(estimate.moments == block_parameters * 8);
  train::TrainOptions everything = options;
  everything.trainable.clear();
  CHECK(train::estimate_training_memory(model->config(), everything).gradients == double(model->parameter_count()) * 4);

  // Substring patterns, several at once; a pattern matching nothing and LoRA are refused.
  const auto other = tiny_model(6);
  const std::vector<std::string> names = train::apply_trainable_patterns(*other, "embed_tokens,model.layers.1.mlp.*");
  CHECK(names == std::vector<std::string>{"model.embed_tokens.weight", "model.layers.1.mlp.gate_proj.weight",
                                          "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"});
  CHECK(error_of([&] { train::apply_trainable_patterns(*other, "embed_tokens,layers.7.*"); })
            .find("'layers.7.*' matches no parameter") != std::string::npos);
  CHECK(error_of([&] { train::apply_trainable_patterns(*other, "embed_tokens,,lm_head"); }).find("empty pattern") !=
        std::string::npos);
  train::TrainOptions with_lora = options;
  with_lora.lora = "r=4,alpha=8";
  CHECK(error_of([&] { with_lora.validate(); }).find("--trainable") != std::string::npos);
  CHECK(train::TrainOptions::from_json(options.to_json(), {}).trainable == "model.layers.2.*");
}
