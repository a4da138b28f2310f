// 4-bit checkpoints in transformers' bitsandbytes layout (models/io/bnb4bit.h): the keys, dtypes
// and shapes transformers writes, the quant_state JSON byte for byte, the quantization_config
// block, and a write-then-read round trip that gives back the same codes and scales. (The folder
// `lamina quantize` writes is checked in tests/tools/test_cli_quantize.cpp.)
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>

#include "helpers.h"
#include "models/io/bnb4bit.h"
#include "models/io/safetensors.h"
#include "ops/quant4.h"
#include "scratch_dir.h"

using namespace lamina;
using namespace lamina::testing;
using ops::Quant4Format;

namespace {

const char* kPrefix = "model.layers.0.self_attn.q_proj.weight";

void check_same(const ops::Quantized4Bit& a, const ops::Quantized4Bit& b) {
  CHECK(a.format == b.format);
  CHECK(a.shape == b.shape);
  CHECK(a.dtype == b.dtype);
  CHECK(a.blocksize == b.blocksize);
  CHECK(a.double_quant == b.double_quant);
  CHECK(a.codes.to_vector<int>() == b.codes.to_vector<int>());
  CHECK(a.absmax.dtype() == b.absmax.dtype());
  CHECK(a.absmax.to_vector<double>() == b.absmax.to_vector<double>());
  CHECK(a.code_values.to_vector<float>() == b.code_values.to_vector<float>());
  if (a.double_quant) {
    CHECK(a.nested_absmax.to_vector<float>() == b.nested_absmax.to_vector<float>());
    CHECK(a.nested_code_values.to_vector<float>() == b.nested_code_values.to_vector<float>());
    CHECK(a.nested_offset == b.nested_offset);
    CHECK(a.nested_blocksize == b.nested_blocksize);
  }
  CHECK(ops::dequantize_4bit(a).to_vector<float>() == ops::dequantize_4bit(b).to_vector<float>());
}

std::string text_of(const Tensor& t) {
  const std::vector<uint8_t> bytes = t.to_vector<uint8_t>();
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace

TEST_CASE("bnb4bit: keys, dtypes and shapes as transformers saves them, and a round trip") {
  Generator generator(4);
  const Tensor w = randn({40, 72}, generator);  // 2880 elements: 45 blocks of 64
  for (bool double_quant : {false, true}) {
    for (Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4}) {
      CAPTURE(double_quant);
      CAPTURE(ops::quant4_format_name(format));
      const ops::Quantized4Bit q = ops::quantize_4bit(ops::cast(w, DType::bf16), format, 64, double_quant);
      safetensors::NamedTensors tensors;
      bnb4bit::append_quantized_weight(tensors, kPrefix, q);
      tensors.emplace_back("model.norm.weight", ones({72}));
      ScratchDir dir("bnb4bit-roundtrip");
      safetensors::save_checkpoint(dir.path.string(), tensors);

      const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(dir.path.string());
      const std::string P = kPrefix;
      const std::string state_key = P + ".quant_state.bitsandbytes__" + ops::quant4_format_name(format);
      std::vector<std::string> expected = {P, P + ".absmax", P + ".quant_map", state_key, "model.norm.weight"};
      if (double_quant) {
        expected.push_back(P + ".nested_absmax");
        expected.push_back(P + ".nested_quant_map");
      }
      std::sort(expected.begin(), expected.end());
      CHECK(checkpoint.names() == expected);
      CHECK(checkpoint.info(P).file_dtype == "U8");
      CHECK(checkpoint.info(P).shape == Shape({1440, 1}));
      CHECK(checkpoint.info(P + ".absmax").file_dtype == (double_quant ? "U8" : "F32"));
      CHECK(checkpoint.info(P + ".absmax").shape == Shape({45}));
      CHECK(checkpoint.info(P + ".quant_map").file_dtype == "F32");
      CHECK(checkpoint.info(P + ".quant_map").shape == Shape({16}));
      CHECK(checkpoint.info(state_key).file_dtype == "U8");
      if (double_quant) {
        CHECK(checkpoint.info(P + ".nested_absmax").shape == Shape({1}));
        CHECK(checkpoint.info(P + ".nested_quant_map").shape == Shape({256}));
      }
      std::string expected_state = std::string("{\"quant_type\": \"") + ops::quant4_format_name(format) +
                                   "\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [40, 72]";
      if (double_quant) expected_state += ", \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": ";
      const std::string state = text_of(checkpoint.read(state_key));
      CHECK(state.substr(0, expected_state.size()) == expected_state);
      CHECK(state.back() == '}');

      CHECK(bnb4bit::quantized_weight_names(checkpoint) == std::vector<std::string>{P});
      check_same(bnb4bit::read_quantized_weight(checkpoint, P), q);
      const auto all = bnb4bit::load_quantized_weights(dir.path.string());
      REQUIRE(all.size() == 1);
      check_same(all.at(P), q);
    }
  }
}

TEST_CASE("bnb4bit: quant_state JSON is Python's json.dumps, offset in Python's float repr") {
  Generator generator(6);
  ops::Quantized4Bit q = ops::quantize_4bit(randn({3, 64}, generator), Quant4Format::nf4, 64, true);
  q.nested_offset = 1.1625000238f;
  CHECK(bnb4bit::quant_state_json(q) ==
        "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [3, 64], "
        "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 1.162500023841858}");
  const std::pair<float, const char*> reprs[] = {
      {1e-5f, "9.999999747378752e-06"},   {0.5f, "0.5"},
      {0.0f, "0.0"},                      {2.0f, "2.0"},
      {-0.25f, "-0.25"},                  {1e17f, "9.999999843067494e+16"},
      {0.0001f, "9.999999747378752e-05"}, {0.001f, "0.0010000000474974513"},
      {1024.0f, "1024.0"},                {123.456f, "123.45600128173828"}};
  for (const auto& [value, text] : reprs) {
    q.nested_offset = value;
    const std::string json = bnb4bit::quant_state_json(q);
    CHECK(json.substr(json.rfind(": ") + 2) == std::string(text) + "}");
  }
  ops::Quantized4Bit plain = ops::quantize_4bit(randn({3, 64}, generator), Quant4Format::fp4, 128, false);
  CHECK(bnb4bit::quant_state_json(plain) ==
        "{\"quant_type\": \"fp4\", \"blocksize\": 128, \"dtype\": \"float32\", \"shape\": [3, 64]}");
}

TEST_CASE("bnb4bit: quantization_config in transformers' order, read back") {
  bnb4bit::QuantizationConfig config;
  config.double_quant = true;
  CHECK(bnb4bit::quantization_config_json(config).dump() ==
        "{\"quant_method\":\"bitsandbytes\",\"load_in_4bit\":true,\"load_in_8bit\":false,\"_load_in_4bit\":true,"
        "\"_load_in_8bit\":false,\"bnb_4bit_quant_type\":\"nf4\",\"bnb_4bit_use_double_quant\":true,"
        "\"bnb_4bit_compute_dtype\":\"bfloat16\",\"bnb_4bit_quant_storage\":\"uint8\",\"llm_int8_skip_modules\":null,"
        "\"llm_int8_threshold\":6.0,\"llm_int8_has_fp16_weight\":false,\"llm_int8_enable_fp32_cpu_offload\":false}");
  json::Value file = json::Object{};
  file.set("model_type", "llama");
  CHECK_FALSE(bnb4bit::read_quantization_config(file).has_value());
  config.format = Quant4Format::fp4;
  file.set("quantization_config", bnb4bit::quantization_config_json(config));
  const auto read = bnb4bit::read_quantization_config(file);
  REQUIRE(read.has_value());
  CHECK(read->format == Quant4Format::fp4);
  CHECK(read->double_quant);
  // An 8-bit bitsandbytes config is not a 4-bit one.
  const json::Value eight_bit = json::parse(
      R"({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": false, "load_in_8bit": true}})");
  CHECK_FALSE(bnb4bit::read_quantization_config(eight_bit).has_value());

  CHECK(bnb4bit::is_default_quantized_weight("model.layers.12.self_attn.o_proj.weight"));
  CHECK(bnb4bit::is_default_quantized_weight("model.layers.0.mlp.down_proj.weight"));
  CHECK_FALSE(bnb4bit::is_default_quantized_weight("lm_head.weight"));
  CHECK_FALSE(bnb4bit::is_default_quantized_weight("model.embed_tokens.weight"));
  CHECK_FALSE(bnb4bit::is_default_quantized_weight("model.layers.0.input_layernorm.weight"));
  CHECK_FALSE(bnb4bit::is_default_quantized_weight("model.layers.0.mlp.down_proj.bias"));
}

TEST_CASE("bnb4bit: bf16 quant_storage holds the same bytes; inconsistent files are refused") {
  Generator generator(9);
  const ops::Quantized4Bit q = ops::quantize_4bit(randn({8, 64}, generator), Quant4Format::nf4, 64, false);
  const std::string P = kPrefix;
  // The packed bytes viewed as bf16, [(n+1)/2/2, 1], as a bnb_4bit_quant_storage=bfloat16 model saves them.
  Tensor as_bf16 = Tensor::empty({128, 1}, DType::bf16);
  std::memcpy(as_bf16.raw_data(), q.codes.raw_data(), 256);
  safetensors::NamedTensors tensors;
  bnb4bit::append_quantized_weight(tensors, P, q);
  tensors[0].second = as_bf16;
  ScratchDir dir("bnb4bit-storage");
  safetensors::save_checkpoint(dir.path.string(), tensors);
  check_same(bnb4bit::read_quantized_weight(safetensors::Checkpoint::open(dir.path.string()), P), q);

  // A quant_state whose shape disagrees with the packed bytes, and a missing absmax.
  safetensors::NamedTensors wrong_shape;
  bnb4bit::append_quantized_weight(wrong_shape, P, q);
  const std::string lie = "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [9, 64]}";
  Tensor lie_tensor = Tensor::empty({int64_t(lie.size())}, DType::u8);
  std::memcpy(lie_tensor.raw_data(), lie.data(), lie.size());
  wrong_shape.back().second = lie_tensor;
  ScratchDir bad("bnb4bit-bad");
  safetensors::save_checkpoint(bad.path.string(), wrong_shape);
  CHECK_THROWS_WITH_AS(bnb4bit::read_quantized_weight(safetensors::Checkpoint::open(bad.path.string()), P),
                       doctest::Contains("bytes"), Error);

  safetensors::NamedTensors no_absmax;
  bnb4bit::append_quantized_weight(no_absmax, P, q);
  no_absmax.erase(no_absmax.begin() + 1);
  ScratchDir missing("bnb4bit-missing");
  safetensors::save_checkpoint(missing.path.string(), no_absmax);
  CHECK_THROWS_WITH_AS(bnb4bit::read_quantized_weight(safetensors::Checkpoint::open(missing.path.string()), P),
                       doctest::Contains("absmax"), Error);
}
