// Loading a Llama folder checks before it allocates: the checkpoint's tensor list against the
// config from the headers alone, the parameters' size against the host's memory, and the same
// for a KV cache. A config that disagrees with its weights or cannot fit is an error at once,
// not a model built (or a machine filled) first.
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/llama/model.h"
#include "scratch_dir.h"
#include "tensor/host_memory.h"

using namespace lamina;
using testing::ScratchDir;
namespace fs = std::filesystem;

namespace {

// The tiny preset, its output head tied to the embeddings or not.
llama::LlamaConfig tiny_config(bool tied) {
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.tie_word_embeddings = tied;
  return config;
}

// Replaces one integer field of a saved config.json.
void set_config_field(const fs::path& dir, const std::string& key, int64_t value) {
  json::Value config = json::parse_file((dir / "config.json").string());
  config.set(key, value);
  std::ofstream(dir / "config.json") << config.dump(2);
}

}  // namespace

TEST_CASE("the parameter list from a config alone is the built model's, name by name and shape by shape") {
  for (const bool tied : {false, true}) {
    CAPTURE(tied);
    const llama::LlamaConfig config = tiny_config(tied);
    const auto built = llama::LlamaForCausalLM(config).named_parameters();
    std::vector<std::pair<std::string, Shape>> listed;
    llama::LlamaForCausalLM::for_each_parameter_shape(
        config, [&](const std::string& name, const Shape& shape) { listed.emplace_back(name, shape); });
    REQUIRE(listed.size() == built.size());
    for (size_t i = 0; i < built.size(); ++i) {
      CHECK(listed[i].first == built[i].first);
      CHECK(listed[i].second == built[i].second.shape());
    }
  }
}

TEST_CASE("a config claiming more layers than its checkpoint fails from the headers, before building anything") {
  ScratchDir dir("load-many-layers");
  llama::LlamaForCausalLM(tiny_config(false)).save(dir.path.string());
  // Building 20000 layers first (the old order) would allocate ~150 MiB before the error.
  set_config_field(dir.path, "num_hidden_layers", 20000);
  const int64_t live_before = memory_stats(Device::cpu()).live_bytes;
  reset_peak_memory(Device::cpu());
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()),
                       doctest::Contains("has no tensor 'model.layers.2.self_attn.q_proj.weight' (config.json says "
                                         "num_hidden_layers is 20000; the checkpoint's tensors name 2 layers)"),
                       Error);
  CHECK(memory_stats(Device::cpu()).peak_bytes - live_before < (int64_t(1) << 20));
  // Fewer layers in the config than in the checkpoint: the first extra tensor, with the count.
  set_config_field(dir.path, "num_hidden_layers", 1);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()),
                       doctest::Contains("has a tensor 'model.layers.1.input_layernorm.weight' that this Llama config has "
                                         "no parameter for (config.json says num_hidden_layers is 1)"),
                       Error);
}

TEST_CASE("a checkpoint tensor of the wrong shape or dtype is named before the model is built") {
  ScratchDir dir("load-bad-tensor");
  const llama::LlamaConfig config = tiny_config(true);
  llama::LlamaForCausalLM(config).save(dir.path.string());
  safetensors::NamedTensors tensors = llama::LlamaForCausalLM(config).named_parameters();
  tensors[1].second = zeros({8, 16});  // q_proj of layer 0 should be [16, 16]
  safetensors::save((dir.path / "model.safetensors").string(), tensors);
  const int64_t live_before = memory_stats(Device::cpu()).live_bytes;
  reset_peak_memory(Device::cpu());
  const std::string expected = "tensor 'model.layers.0.self_attn.q_proj.weight' in " + dir.path.string() +
                               " has shape [8, 16] but the config needs [16, 16]";
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains(expected.c_str()), Error);
  // The model (~21 KiB of f32 parameters) was never allocated.
  CHECK(memory_stats(Device::cpu()).peak_bytes - live_before < 4096);
  tensors = llama::LlamaForCausalLM(config).named_parameters();
  tensors[1].second = Tensor::from_vector(std::vector<int64_t>(256, 0), {16, 16}, DType::i32);
  safetensors::save((dir.path / "model.safetensors").string(), tensors);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()),
                       doctest::Contains("'model.layers.0.self_attn.q_proj.weight' in"), Error);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(dir.path.string()), doctest::Contains("has dtype I32, expected a floating dtype"),
                       Error);
}

TEST_CASE("a model or a KV cache too large for the machine is refused before anything is allocated") {
  // 2^30 x 2^16 embeddings: 512 TiB of f32 parameters, more than any machine and more than the
  // address space, so that the old behaviour failed on an allocation instead of an estimate.
  llama::LlamaConfig huge = tiny_config(false);
  huge.vocab_size = int64_t(1) << 30;
  huge.hidden_size = int64_t(1) << 16;
  huge.num_attention_heads = 4;
  huge.num_key_value_heads = 2;
  huge.head_dim = 4;
  const std::string expected = "out of host memory: a Llama model of " + std::to_string(huge.parameter_count()) +
                               " parameters in f32 (2 layers, hidden size 65536, vocabulary 1073741824) needs";
  const int64_t live_before = memory_stats(Device::cpu()).live_bytes;
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM(huge, DType::f32), doctest::Contains(expected.c_str()), Error);
  CHECK(memory_stats(Device::cpu()).live_bytes == live_before);

  // 2 layers x 2 x [1, 2, 2^43, 4] f32: 1 PiB of keys and values.
  const llama::LlamaConfig config = tiny_config(false);
  CHECK_THROWS_WITH_AS(llama::KvCache(config, 1, int64_t(1) << 43),
                       doctest::Contains("out of host memory: a KV cache of 2 layers x 2 x [1, 2, 8796093022208, 4] f32 "
                                         "(batch 1, capacity 8796093022208 tokens) needs 1.00 PiB"),
                       Error);
  CHECK(memory_stats(Device::cpu()).live_bytes == live_before);
  CHECK_NOTHROW(llama::KvCache(config, 2, 64));
}
