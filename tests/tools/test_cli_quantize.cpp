// `lamina quantize`: a tiny Llama folder to 4 bits. Every Linear weight of the layers (and
// nothing else) comes back from the written folder as exactly quantize_4bit of the original, the
// other tensors unchanged, config.json gains transformers' quantization_config, the tokenizer
// files come along, the reported size per parameter is right, and the refusals hold. The folder
// then loads as a model of 4-bit bases and trains LoRA adapters on them.
#include <filesystem>
#include <fstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/io/bnb4bit.h"
#include "models/tokenizer/builder.h"
#include "nn/layers.h"
#include "nn/lora.h"
#include "models/io/safetensors.h"
#include "ops/quant4.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// Two layers, hidden 32: q/k/v/o and gate/up/down of each (14 weights), in `dtype`.
void save_tiny_folder(const std::string& folder, DType dtype) {
  llama::LlamaConfig config = one_layer_llama_config(64);
  config.hidden_size = 32, config.intermediate_size = 48, config.num_attention_heads = 4;
  config.num_key_value_heads = 2, config.head_dim = 8, config.num_hidden_layers = 2;
  config.tie_word_embeddings = false;
  random_llama(config, 31)->save(folder, dtype);
  std::ofstream(fs::path(folder) / "tokenizer.json") << "{\"not\": \"read by quantize\"}";
  std::ofstream(fs::path(folder) / "tokenizer_config.json") << "{}";
}

// Checks that `out` holds every Linear weight of `in` as quantize_4bit(weight, ...) and every
// other tensor unchanged.
void check_quantized_folder(const std::string& in, const std::string& out, ops::Quant4Format format,
                            int64_t blocksize, bool double_quant) {
  const safetensors::Checkpoint source = safetensors::Checkpoint::open(in);
  const safetensors::Checkpoint written = safetensors::Checkpoint::open(out);
  const auto weights = bnb4bit::load_quantized_weights(out);
  size_t linear = 0;
  for (const std::string& name : source.names()) {
    CAPTURE(name);
    const Tensor original = source.read(name);
    if (!bnb4bit::is_default_quantized_weight(name)) {
      REQUIRE(written.contains(name));
      CHECK(written.info(name).file_dtype == source.info(name).file_dtype);
      CHECK(written.read(name).to_vector<double>() == original.to_vector<double>());
      continue;
    }
    ++linear;
    REQUIRE(weights.count(name) == 1);
    const ops::Quantized4Bit& loaded = weights.at(name);
    const ops::Quantized4Bit expected = ops::quantize_4bit(original, format, blocksize, double_quant);
    CHECK(loaded.format == format);
    CHECK(loaded.blocksize == blocksize);
    CHECK(loaded.double_quant == double_quant);
    CHECK(loaded.dtype == original.dtype());
    CHECK(loaded.shape == original.shape());
    CHECK(loaded.codes.to_vector<int>() == expected.codes.to_vector<int>());
    CHECK(ops::dequantize_4bit(loaded).to_vector<float>() == ops::dequantize_4bit(expected).to_vector<float>());
  }
  CHECK(linear == 14);
  CHECK(weights.size() == 14);
  CHECK_FALSE(written.contains("lm_head.weight.absmax"));
  CHECK_FALSE(written.contains("model.embed_tokens.weight.absmax"));
}

}  // namespace

TEST_CASE("lamina quantize: NF4 with double quantization, FP4 without, and the folder's other files") {
  ScratchDir dir("cli-quantize");
  const std::string in = dir / "model", out = dir / "model-nf4";
  save_tiny_folder(in, DType::bf16);

  const Run help = run_lamina("quantize --help");
  CHECK(help.status == 0);
  CHECK(help.output.find("--double-quant") != std::string::npos);

  const Run nf4 = run_lamina("quantize --model " + in + " --format nf4 --double-quant --out " + out);
  INFO(nf4.output);
  REQUIRE(nf4.status == 0);
  CHECK(nf4.output.find("quantized 14 Linear weights") != std::string::npos);
  CHECK(nf4.output.find("bytes") != std::string::npos);
  check_quantized_folder(in, out, ops::Quant4Format::nf4, 64, true);
  const json::Value config = json::parse_file(out + "/config.json");
  const auto settings = bnb4bit::read_quantization_config(config);
  REQUIRE(settings.has_value());
  CHECK(settings->format == ops::Quant4Format::nf4);
  CHECK(settings->double_quant);
  CHECK(config.at("hidden_size").as_int64() == 32);
  CHECK(fs::exists(out + "/tokenizer.json"));
  CHECK(fs::exists(out + "/tokenizer_config.json"));
  for (const auto& entry : fs::directory_iterator(dir.path))
    CHECK(entry.path().filename().string().find(".partial") == std::string::npos);

  // FP4 without double quantization, blocksize 128: 4 + 32/128 = 4.25 bits a parameter, exactly.
  const std::string fp4_out = dir / "model-fp4";
  const Run fp4 = run_lamina("quantize --model " + in + " --format fp4 --blocksize 128 --out " + fp4_out);
  INFO(fp4.output);
  REQUIRE(fp4.status == 0);
  CHECK(fp4.output.find("(4.2500 bits) per base parameter") != std::string::npos);
  check_quantized_folder(in, fp4_out, ops::Quant4Format::fp4, 128, false);
}

TEST_CASE("lamina quantize: f32 weights, and the refusals") {
  ScratchDir dir("cli-quantize-refusals");
  const std::string in = dir / "model", out = dir / "out";
  save_tiny_folder(in, DType::f32);

  const Run first = run_lamina("quantize --model " + in + " --out " + out);
  INFO(first.output);
  REQUIRE(first.status == 0);
  CHECK(first.output.find("(4.5000 bits) per base parameter") != std::string::npos);  // NF4, B = 64, fp32 absmax
  check_quantized_folder(in, out, ops::Quant4Format::nf4, 64, false);

  const Run exists = run_lamina("quantize --model " + in + " --out " + out);
  CHECK(exists.status == 1);
  CHECK(exists.output.find("--overwrite") != std::string::npos);
  const Run replaced = run_lamina("quantize --model " + in + " --format fp4 --out " + out + " --overwrite");
  CHECK(replaced.status == 0);
  check_quantized_folder(in, out, ops::Quant4Format::fp4, 64, false);

  CHECK(run_lamina("quantize --model " + in + " --format q4 --out " + dir / "x").status == 2);
  CHECK(run_lamina("quantize --model " + in + " --blocksize 48 --out " + dir / "x").status == 2);
  CHECK(run_lamina("quantize --model " + in + " --blocksize 16 --out " + dir / "x").status == 2);
  CHECK(run_lamina("quantize --out " + dir / "x").status == 2);
  const Run again = run_lamina("quantize --model " + out + " --out " + dir / "twice");
  CHECK(again.status == 1);
  CHECK(again.output.find("already quantized") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "x"));
  CHECK_FALSE(fs::exists(dir / "twice"));
}

TEST_CASE("a 4-bit folder loads as a model of 4-bit bases: the logits of quantizing in memory, QLoRA on it") {
  ScratchDir dir("cli-quantize-load");
  save_tiny_folder(dir / "full", DType::f32);
  Run run = run_lamina("quantize --model " + dir / "full" + " --format nf4 --double-quant --out " + dir / "q");
  INFO(run.output);
  REQUIRE(run.status == 0);
  autograd::NoGradGuard no_grad;
  // The folder's model: 4-bit projections, never expanded to full-precision weights.
  const auto loaded = llama::LlamaForCausalLM::load(dir / "q");
  int64_t four_bit = 0;
  for (const auto& [path, linear] : nn::named_linears(*loaded)) four_bit += linear->base_4bit() != nullptr;
  CHECK(four_bit == 14);  // q/k/v/o and gate/up/down of 2 layers; lm_head stays
  // The same model quantized in memory computes the same logits, bit for bit.
  const auto in_memory = llama::LlamaForCausalLM::load(dir / "full");
  nn::quantize_base_weights(*in_memory, ops::Quant4Format::nf4, 64, true);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 9, 4, 33, 2, 17}, {1, 6});
  CHECK(loaded->forward(ids).to_vector<float>() == in_memory->forward(ids).to_vector<float>());

  // A 4-bit model's projections train only through adapters (a model with the byte-level
  // tokenizer's vocabulary, so that text data can be read).
  random_llama(byte_level_llama_config(), 5)->save(dir / "text-model");
  std::ofstream(dir.path / "text-model/tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  run = run_lamina("quantize --model " + dir / "text-model" + " --format nf4 --out " + dir / "text-q");
  REQUIRE(run.status == 0);
  std::ofstream(dir.path / "text.jsonl") << R"({"text": "a b c d e f g"})" << "\n" << R"({"text": "h i j k l m n"})" << "\n";
  const std::string sft = "train sft --model " + dir / "text-q" + " --data " + dir / "text.jsonl" +
                          " --steps 2 --batch-size 2 --seq-len 8 --validation-fraction 0 --quiet --output ";
  run = run_lamina(sft + dir / "no-adapters");
  CHECK(run.status == 1);
  CHECK(run.output.find("give --lora to train adapters") != std::string::npos);
  run = run_lamina(sft + dir / "qlora" + " --lora r=2,targets=all-linear");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(fs::exists(dir.path / "qlora/model/adapter_model.safetensors"));
}
