// Model folders whose files say two things at once, or something that cannot be told: each is
// an error naming the field, never a silent choice. A tied lm_head that differs from the
// embedding, dtype against torch_dtype, a rope_scaling block without a type; and a tokenizer
// path that is not a regular file is named for what it is, not reported missing.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "scratch_dir.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

json::Value tiny_config_json() { return tiny_llama_config(40).to_json(); }

llama::LlamaConfig config_with(const std::string& key, json::Value value) {
  json::Value config = tiny_config_json();
  config.set(key, std::move(value));
  return llama::LlamaConfig::from_json(config, "config.json");
}

// A saved tiny model with an lm_head of its own (untied), then its config switched to tied.
void save_then_tie(const fs::path& dir, bool random_weights) {
  llama::LlamaConfig config = tiny_llama_config(40);
  config.tie_word_embeddings = false;
  if (random_weights)
    random_llama(config, 3)->save(dir.string());
  else
    llama::LlamaForCausalLM(config).save(dir.string());
  json::Value saved = json::parse_file((dir / "config.json").string());
  saved.set("tie_word_embeddings", true);
  std::ofstream(dir / "config.json") << saved.dump(2);
}

}  // namespace

TEST_CASE("a tied model whose checkpoint has a different lm_head.weight is refused, an equal one is loaded") {
  ScratchDir different("tied-head-different");
  save_then_tie(different.path, true);
  CHECK_THROWS_WITH_AS(llama::LlamaForCausalLM::load(different.path.string()),
                       doctest::Contains("'lm_head.weight' (shape [40, 16]) that differs from 'model.embed_tokens.weight', "
                                         "but config.json says tie_word_embeddings is true"),
                       Error);
  ScratchDir equal("tied-head-equal");
  save_then_tie(equal.path, false);  // zero weights: the head equals the embedding
  const auto model = llama::LlamaForCausalLM::load(equal.path.string());
  CHECK(model->config().tie_word_embeddings);
  CHECK(model->lm_head == nullptr);
}

TEST_CASE("config: dtype and torch_dtype must agree when both are given") {
  json::Value both = tiny_config_json();
  both.set("dtype", "bfloat16");
  both.set("torch_dtype", "float32");
  CHECK_THROWS_WITH_AS(llama::LlamaConfig::from_json(both, "config.json"),
                       "config.json: dtype \"bfloat16\" and torch_dtype \"float32\" disagree (give one, or the same in both)",
                       Error);
  both.set("torch_dtype", "bfloat16");
  CHECK(llama::LlamaConfig::from_json(both, "config.json").dtype == DType::bf16);
  both.set("torch_dtype", json::Value());  // null: as if absent
  both.set("dtype", "float16");
  CHECK(llama::LlamaConfig::from_json(both, "config.json").dtype == DType::f16);
}

TEST_CASE("config: a rope_scaling block without a type is an error, null is no scaling") {
  CHECK_THROWS_WITH_AS(config_with("rope_scaling", json::Object{}),
                       doctest::Contains("config.json: rope_scaling: no \"rope_type\" (or \"type\") in the block"), Error);
  CHECK_THROWS_WITH_AS(config_with("rope_scaling", json::Object{{"factor", 8.0}}),
                       doctest::Contains("rope_scaling: no \"rope_type\""), Error);
  CHECK_FALSE(config_with("rope_scaling", json::Value()).rope_scaling.has_value());
  CHECK_FALSE(config_with("rope_scaling", json::Object{{"rope_type", "default"}}).rope_scaling.has_value());
  // The newer rope_parameters always describes RoPE: there no type means the default.
  const llama::LlamaConfig parameters = config_with("rope_parameters", json::Object{{"rope_theta", 10000.0}});
  CHECK_FALSE(parameters.rope_scaling.has_value());
  CHECK(parameters.rope_theta == 10000.0);
}

TEST_CASE("tokenizer: a FIFO or a device is named for what it is, a missing file as missing") {
  ScratchDir dir("tokenizer-kinds");
  const std::string fifo = dir / "tokenizer.json";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  CHECK_THROWS_WITH_AS(tokenizer::Tokenizer::load(fifo), doctest::Contains("is a FIFO (named pipe), not a regular file"), Error);
  CHECK_THROWS_WITH_AS(tokenizer::Tokenizer::load(dir.path.string()),
                       doctest::Contains("tokenizer.json is a FIFO (named pipe), not a regular file"), Error);
  CHECK_THROWS_WITH_AS(tokenizer::Tokenizer::load("/dev/null"), doctest::Contains("/dev/null is a character device"), Error);
  fs::remove(fifo);
  CHECK_THROWS_WITH_AS(tokenizer::Tokenizer::load(dir.path.string()),
                       doctest::Contains("not found (the model directory has no tokenizer.json)"), Error);
}
