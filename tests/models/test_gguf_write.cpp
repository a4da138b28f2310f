// The GGUF writer: ggml's Q8_0 and Q4_0 reference quantizers against bytes worked out by hand
// (and, once, against the `gguf` Python package), every metadata value type and tensor type
// read back by lamina's reader, atomic writes, the Llama mapping (q/k rows in Meta order, names,
// hyperparameters) with a tiny model going HF -> GGUF -> HF unchanged, and tokenizers going
// tokenizer.json -> GGUF -> tokenizer.json with the same ids.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "models/tokenizer/builder.h"
#include "models/tokenizer/tokenizer_export.h"
#include "scratch_dir.h"

using namespace lamina;
using testing::ScratchDir;

namespace {

std::string hex(const std::vector<uint8_t>& bytes) {
  std::string out;
  char buffer[4];
  for (uint8_t byte : bytes) {
    std::snprintf(buffer, sizeof buffer, "%02x ", byte);
    out += buffer;
  }
  if (!out.empty()) out.pop_back();
  return out;
}

std::vector<uint8_t> quantized(gguf::TensorType type, const std::vector<float>& values) {
  return gguf::encode(type, values.data(), values.size());
}

std::vector<float> random_values(size_t count, uint32_t seed, float spread = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> values(count);
  for (float& value : values) value = normal(rng);
  return values;
}

// Every file left in `folder` (to find .partial debris).
std::vector<std::string> entries(const std::string& folder) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<float> file_tensor(const gguf::File& file, const std::string& name) { return file.read(name).to_vector<float>(); }

}  // namespace

TEST_CASE("gguf writer: Q8_0 and Q4_0 blocks quantize to hand-computed bytes") {
  // Q8_0 with amax 127, so d = 1 (f16 3c00) and q = roundf(x): halves round away from zero
  // (2.5 -> 3, -2.5 -> -3, 126.5 -> 127), which round-half-even would not.
  std::vector<float> block(32, 0.0f);
  block[0] = -127, block[1] = 2.5f, block[2] = -2.5f, block[3] = 0.49f, block[4] = 126.5f;
  CHECK(hex(quantized(gguf::TensorType::q8_0, block)) ==
        "00 3c 81 03 fd 00 7f 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");

  // Q4_0, the spec's example: x_j = (j - 16) / 8; the largest magnitude is -2, so d = 0.25.
  std::vector<float> ramp(32);
  for (int j = 0; j < 32; ++j) ramp[size_t(j)] = float(j - 16) / 8.0f;
  CHECK(hex(quantized(gguf::TensorType::q4_0, ramp)) == "00 34 80 91 91 a2 a2 b3 b3 c4 c4 d5 d5 e6 e6 f7 f7 f8");

  // Q4_0 whose largest magnitude is positive: max 4 gives d = -0.5 (f16 b800), id = -2, and
  // q = min(15, trunc(x * -2 + 8.5)): 4 -> 0, -4 -> 16 clamped to 15, 1 -> 6, -3 -> 14, 0 -> 8.
  // Element j is the low nibble of byte j, element j + 16 the high one.
  std::vector<float> signed_block(32, 0.0f);
  signed_block[0] = 4, signed_block[1] = -4, signed_block[2] = 1, signed_block[17] = -3;
  CHECK(hex(quantized(gguf::TensorType::q4_0, signed_block)) == "00 b8 80 ef 86 88 88 88 88 88 88 88 88 88 88 88 88 88");
  // On a tie of magnitudes the first value wins: -4 first makes d = +0.5 (3800), id = 2, so
  // -4 -> 0, 4 -> 15 (clamped), -3 -> trunc(2.5) = 2.
  signed_block[0] = -4, signed_block[1] = 4;
  CHECK(hex(quantized(gguf::TensorType::q4_0, signed_block)).substr(0, 11) == "00 38 80 2f");

  // ggml rounds x * id to f32 before adding 8.5: here x * id is -4.50000014 exactly, -4.5 in
  // f32, so q = trunc(4.0) = 4; a fused multiply-add would give trunc(3.99999986) = 3.
  std::vector<float> rounding_block(32, 0.0f);
  rounding_block[0] = -0x1.86p-2f, rounding_block[1] = -0x1.b6cp-3f;
  CHECK(hex(quantized(gguf::TensorType::q4_0, rounding_block)).substr(0, 11) == "18 2a 80 84");

  // An all-zero block: id = 0, so Q8_0 is all zeros and every Q4_0 nibble is 8; Q4_0's
  // d = 0 / -8 is -0 (f16 8000), as in ggml.
  const std::vector<float> zeros(32, 0.0f);
  CHECK(quantized(gguf::TensorType::q8_0, zeros) == std::vector<uint8_t>(34, 0));
  std::vector<uint8_t> expected_q4(18, 0x88);
  expected_q4[0] = 0x00, expected_q4[1] = 0x80;
  CHECK(hex(quantized(gguf::TensorType::q4_0, zeros)) == hex(expected_q4));

  // F16 and BF16 round to nearest even: 1 + 2^-11 is a tie between 1 and 1 + 2^-10 (-> 1, 3c00),
  // 1 + 3 * 2^-11 one between 1 + 2^-10 and 1 + 2^-9 (-> the even 1 + 2^-9, 3c02).
  CHECK(hex(quantized(gguf::TensorType::f16, {1.0f + std::ldexp(1.0f, -11), 1.0f + 3 * std::ldexp(1.0f, -11)})) ==
        "00 3c 02 3c");
  // bf16 keeps 7 mantissa bits: 1 + 2^-8 ties to 1 (3f80), 1 + 3 * 2^-8 to 1 + 2^-6 (3f82).
  CHECK(hex(quantized(gguf::TensorType::bf16, {1.0f + std::ldexp(1.0f, -8), 1.0f + 3 * std::ldexp(1.0f, -8)})) ==
        "80 3f 82 3f");

  CHECK_THROWS_WITH_AS(quantized(gguf::TensorType::q8_0, std::vector<float>(48, 1.0f)),
                       doctest::Contains("not whole blocks of 32"), Error);
  CHECK_THROWS_WITH_AS(quantized(gguf::TensorType::q5_k, zeros), doctest::Contains("cannot write tensors of type Q5_K"),
                       Error);
}

TEST_CASE("gguf writer: every metadata type and tensor type reads back") {
  ScratchDir dir("gguf-write");
  gguf::Writer writer;
  writer.add_metadata("test.u8", gguf::u8_value(250));
  writer.add_metadata("test.i8", gguf::i8_value(-100));
  writer.add_metadata("test.u16", gguf::u16_value(65000));
  writer.add_metadata("test.i16", gguf::i16_value(-30000));
  writer.add_metadata("test.u32", gguf::u32_value(4000000000u));
  writer.add_metadata("test.i32", gguf::i32_value(-2000000000));
  writer.add_metadata("test.u64", gguf::u64_value(uint64_t(1) << 63));
  writer.add_metadata("test.i64", gguf::i64_value(-(int64_t(1) << 62)));
  writer.add_metadata("test.f32", gguf::f32_value(0.1f));
  writer.add_metadata("test.f64", gguf::f64_value(0.1));
  writer.add_metadata("test.true", gguf::bool_value(true));
  writer.add_metadata("test.false", gguf::bool_value(false));
  writer.add_metadata("test.string", gguf::string_value(std::string("héllo\0world", 12)));
  writer.add_metadata("test.strings", gguf::string_array({"a", "", "Ġb c"}));
  writer.add_metadata("test.ints", gguf::i32_array({1, -2, 3}));
  writer.add_metadata("test.floats", gguf::f32_array({0.5f, -1.25f}));
  writer.add_metadata("test.nested", gguf::array_value(gguf::ValueType::array, {gguf::i32_array({7}), gguf::i32_array({})}));
  CHECK_THROWS_WITH_AS(writer.add_metadata("test.u8", gguf::u8_value(1)), doctest::Contains("given twice"), Error);

  const std::vector<float> values = random_values(3 * 64, 1);
  const Tensor matrix = Tensor::from_vector(values, {3, 64});
  for (const auto& [name, type] : std::vector<std::pair<std::string, gguf::TensorType>>{
           {"f32", gguf::TensorType::f32}, {"f16", gguf::TensorType::f16}, {"bf16", gguf::TensorType::bf16},
           {"q8_0", gguf::TensorType::q8_0}, {"q4_0", gguf::TensorType::q4_0}})
    writer.add_tensor(name, matrix, type);
  writer.add_tensor("vector", Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}), gguf::TensorType::f32);
  writer.add_tensor("cube", Tensor::from_vector(random_values(2 * 3 * 5, 2), {2, 3, 5}), gguf::TensorType::f16);
  CHECK_THROWS_WITH_AS(writer.add_tensor("odd", Tensor::from_vector(random_values(40, 3), {2, 20}), gguf::TensorType::q8_0),
                       doctest::Contains("tensor 'odd': its rows of 20 values are not whole blocks of 32"), Error);
  CHECK_THROWS_WITH_AS(writer.add_tensor(std::string(64, 'x'), matrix, gguf::TensorType::f32),
                       doctest::Contains("1 to 63 bytes"), Error);
  CHECK_THROWS_WITH_AS(writer.add_tensor("f32", matrix, gguf::TensorType::f32), doctest::Contains("given twice"), Error);

  const std::string path = dir / "all.gguf";
  writer.write(path);
  CHECK(entries(dir.path.string()) == std::vector<std::string>{"all.gguf"});  // the partial file was renamed
  const gguf::File file = gguf::File::open(path);
  CHECK(file.version() == 3);
  CHECK(file.alignment() == 32);
  CHECK(file.data_start() % 32 == 0);
  CHECK(file.metadata("general.alignment").type == gguf::ValueType::u32);
  CHECK(file.metadata("test.u8").as_u64("") == 250);
  CHECK(file.metadata("test.i8").as_i64("") == -100);
  CHECK(file.metadata("test.u16").as_u64("") == 65000);
  CHECK(file.metadata("test.i16").as_i64("") == -30000);
  CHECK(file.metadata("test.u32").as_u64("") == 4000000000u);
  CHECK(file.metadata("test.i32").as_i64("") == -2000000000);
  CHECK(file.metadata("test.u64").as_u64("") == uint64_t(1) << 63);
  CHECK(file.metadata("test.i64").as_i64("") == -(int64_t(1) << 62));
  CHECK(file.metadata("test.f32").type == gguf::ValueType::f32);
  CHECK(file.metadata("test.f32").as_f64("") == double(0.1f));
  CHECK(file.metadata("test.f64").as_f64("") == 0.1);
  CHECK(file.metadata("test.true").as_bool(""));
  CHECK(!file.metadata("test.false").as_bool(""));
  CHECK(file.metadata("test.string").as_string("") == std::string("héllo\0world", 12));
  const auto& strings = file.metadata("test.strings").as_array("");
  REQUIRE(strings.size() == 3);
  CHECK(strings[0].as_string("") == "a");
  CHECK(strings[1].as_string("") == "");
  CHECK(strings[2].as_string("") == "Ġb c");
  const auto& ints = file.metadata("test.ints").as_array("");
  CHECK(file.metadata("test.ints").element_type == gguf::ValueType::i32);
  REQUIRE(ints.size() == 3);
  CHECK(ints[1].as_i64("") == -2);
  CHECK(file.metadata("test.floats").as_array("")[1].as_f64("") == -1.25);
  const auto& nested = file.metadata("test.nested").as_array("");
  REQUIRE(nested.size() == 2);
  CHECK(nested[0].as_array("")[0].as_i64("") == 7);
  CHECK(nested[1].as_array("").empty());

  for (const gguf::TensorInfo& info : file.tensors()) CHECK(info.offset % 32 == 0);
  CHECK(file.find("f32")->shape() == Shape{3, 64});
  CHECK(file.find("f32")->dims == std::vector<uint64_t>{64, 3});
  CHECK(file_tensor(file, "f32") == values);
  CHECK(file_tensor(file, "vector") == std::vector<float>{1, 2, 3});
  CHECK(file.find("cube")->shape() == Shape{2, 3, 5});
  std::vector<float> halves, brains;
  for (float value : values) halves.push_back(float(f16(value))), brains.push_back(float(bf16(value)));
  CHECK(file_tensor(file, "f16") == halves);
  CHECK(file_tensor(file, "bf16") == brains);

  // Q8_0 and Q4_0: within half a step (Q8_0) or one step (Q4_0, whose far end may clamp) of
  // each block's scale, plus what storing the scale as f16 moves the largest code (127 or 8
  // steps, each off by up to 2^-11 of a step); and stable: quantizing what was read back gives the stored bytes.
  for (const auto& [name, type] : std::vector<std::pair<std::string, gguf::TensorType>>{{"q8_0", gguf::TensorType::q8_0},
                                                                                        {"q4_0", gguf::TensorType::q4_0}}) {
    INFO(name);
    const gguf::TensorInfo& info = *file.find(name);
    const std::vector<float> read = file_tensor(file, name);
    const std::vector<uint8_t> stored(file.data(info), file.data(info) + info.bytes);
    CHECK(gguf::encode(type, read.data(), read.size()) == stored);
    for (size_t block = 0; block < values.size() / 32; ++block) {
      float amax = 0;
      for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(values[32 * block + j]));
      const float step = type == gguf::TensorType::q8_0 ? amax / 127 : amax / 8;
      const float bound = (type == gguf::TensorType::q8_0 ? 0.5f + 127.0f / 2048 : 1.0f + 8.0f / 2048) * step * 1.0001f;
      for (size_t j = 0; j < 32; ++j) CHECK(std::fabs(read[32 * block + j] - values[32 * block + j]) <= bound);
    }
  }
}

TEST_CASE("gguf writer: a failed write leaves no file, and an old file stays whole") {
  ScratchDir dir("gguf-write-fail");
  const std::string path = dir / "model.gguf";
  const auto failing_writer = [] {
    gguf::Writer writer;
    writer.add_tensor("good", Tensor::from_vector(random_values(64, 4), {64}), gguf::TensorType::f32);
    writer.add_tensor("bad", {32}, gguf::TensorType::f32, []() -> std::vector<uint8_t> { throw Error("source failed"); });
    return writer;
  };
  CHECK_THROWS_WITH_AS(failing_writer().write(path), doctest::Contains("source failed"), Error);
  CHECK(entries(dir.path.string()).empty());

  gguf::Writer good;
  good.add_metadata("test.value", gguf::u32_value(7));
  good.write(path);
  CHECK_THROWS_WITH_AS(failing_writer().write(path), doctest::Contains("source failed"), Error);
  CHECK(entries(dir.path.string()) == std::vector<std::string>{"model.gguf"});
  CHECK(gguf::File::open(path).metadata("test.value").as_u64("") == 7);

  // A source giving the wrong number of bytes is caught, not written.
  gguf::Writer short_source;
  short_source.add_tensor("t", {32}, gguf::TensorType::f16, [] { return std::vector<uint8_t>(10); });
  CHECK_THROWS_WITH_AS(short_source.write(path), doctest::Contains("tensor 't' gave 10 bytes where its dims and type need 64"),
                       Error);
  CHECK(entries(dir.path.string()) == std::vector<std::string>{"model.gguf"});
}

TEST_CASE("gguf llama: q/k rows to Meta order and back, HF names to GGUF names") {
  // The spec's example, head_dim 8: Meta row r holds HF row [0,4,1,5,2,6,3,7][r].
  std::vector<float> hf(16);
  for (int r = 0; r < 16; ++r) hf[size_t(r)] = float(r);
  const Tensor meta = gguf::permute_to_meta_rows(Tensor::from_vector(hf, {16, 1}), 2);
  CHECK(meta.to_vector<float>() == std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15});
  const Tensor wide = Tensor::from_vector(random_values(24 * 5, 5), {24, 5});
  CHECK(gguf::unpermute_meta_rows(gguf::permute_to_meta_rows(wide, 3), 3).to_vector<float>() == wide.to_vector<float>());
  CHECK(gguf::permute_to_meta_rows(wide, 3).to_vector<float>() != wide.to_vector<float>());

  const llama::LlamaConfig config = testing::tiny_llama_config(40);
  llama::LlamaConfig untied = config;
  untied.tie_word_embeddings = false;
  llama::LlamaForCausalLM::for_each_parameter_shape(untied, [](const std::string& name, const Shape&) {
    const std::optional<std::string> gguf_name = gguf::llama_gguf_tensor_name(name);
    REQUIRE_MESSAGE(gguf_name.has_value(), name);
    CHECK(gguf::llama_hf_tensor_name(*gguf_name) == name);
  });
  CHECK(gguf::llama_gguf_tensor_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight");
  CHECK(gguf::llama_gguf_tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight");
  CHECK(!gguf::llama_gguf_tensor_name("model.layers.01.mlp.down_proj.weight").has_value());
  CHECK(!gguf::llama_gguf_tensor_name("model.layers.0.mlp.fc.weight").has_value());
}

TEST_CASE("gguf llama: a tiny model written as GGUF reads back with identical weights and logits") {
  ScratchDir dir("gguf-write-llama");
  autograd::NoGradGuard no_grad;
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.tie_word_embeddings = false;
  config.rope_theta = 10000.0;
  config.rms_norm_eps = 1e-6;
  const auto model = testing::random_llama(config, 11);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 33, 2, 17}, {1, 6});
  const std::vector<float> logits = model->forward(ids).to_vector<float>();

  gguf::Writer writer;
  gguf::add_llama_model(writer, *model, gguf::TensorType::f32, "tiny");
  gguf::add_llama_token_ids(writer, config);
  writer.write(dir / "tiny.gguf");
  const gguf::File file = gguf::File::open(dir / "tiny.gguf");
  CHECK(file.metadata("general.architecture").as_string("") == "llama");
  CHECK(file.metadata("general.name").as_string("") == "tiny");
  CHECK(file.metadata("general.file_type").as_u64("") == 0);
  CHECK(file.metadata("llama.rope.dimension_count").as_u64("") == 4);
  CHECK(file.find_metadata("llama.attention.key_length") == nullptr);  // 4 heads of 4 fill the width of 16
  CHECK(file.find("output.weight") != nullptr);
  CHECK(file.find("blk.1.attn_norm.weight")->type == gguf::TensorType::f32);
  // The q rows are stored in Meta order.
  const Tensor q = model->named_parameters()[1].second;
  REQUIRE(model->named_parameters()[1].first == "model.layers.0.self_attn.q_proj.weight");
  CHECK(file_tensor(file, "blk.0.attn_q.weight") == gguf::permute_to_meta_rows(q, 4).to_vector<float>());

  const llama::LlamaConfig read_config = gguf::llama_config_from_gguf(file);
  llama::LlamaConfig expected = config;
  expected.rms_norm_eps = double(float(config.rms_norm_eps));  // stored as f32
  expected.initializer_range = read_config.initializer_range;  // a training setting GGUF does not carry
  CHECK(read_config.to_json().dump() == expected.to_json().dump());
  const auto loaded = gguf::load_llama_gguf(dir / "tiny.gguf");
  const auto parameters = model->named_parameters(), loaded_parameters = loaded->named_parameters();
  REQUIRE(parameters.size() == loaded_parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) {
    INFO(parameters[i].first);
    CHECK(loaded_parameters[i].first == parameters[i].first);
    CHECK(loaded_parameters[i].second.to_vector<float>() == parameters[i].second.to_vector<float>());
  }
  CHECK(loaded->forward(ids).to_vector<float>() == logits);

  // Tied embeddings write no output.weight; F16 stores the matrices (rounded), the norms in F32.
  config.tie_word_embeddings = true;
  const auto tied = testing::random_llama(config, 12);
  gguf::Writer tied_writer;
  gguf::add_llama_model(tied_writer, *tied, gguf::TensorType::f16, "tied");
  gguf::add_llama_token_ids(tied_writer, config);
  tied_writer.write(dir / "tied.gguf");
  const gguf::File tied_file = gguf::File::open(dir / "tied.gguf");
  CHECK(tied_file.find("output.weight") == nullptr);
  CHECK(tied_file.metadata("general.file_type").as_u64("") == 1);
  CHECK(tied_file.find("token_embd.weight")->type == gguf::TensorType::f16);
  CHECK(tied_file.find("output_norm.weight")->type == gguf::TensorType::f32);
  const auto tied_loaded = gguf::load_llama_gguf(dir / "tied.gguf");
  CHECK(tied_loaded->config().tie_word_embeddings);
  std::vector<float> rounded;
  for (float value : tied->named_parameters()[0].second.to_vector<float>()) rounded.push_back(float(f16(value)));
  CHECK(tied_loaded->named_parameters()[0].second.to_vector<float>() == rounded);
}

TEST_CASE("gguf llama: Q8_0 and Q4_0 models, rows that are not whole blocks fall back to F16") {
  ScratchDir dir("gguf-write-quant");
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.hidden_size = 32, config.intermediate_size = 64, config.head_dim = 8;
  const auto model = testing::random_llama(config, 13);
  for (const gguf::TensorType type : {gguf::TensorType::q8_0, gguf::TensorType::q4_0}) {
    INFO(gguf::tensor_type_name(uint32_t(type)));
    std::vector<std::string> notes;
    gguf::Writer writer;
    gguf::add_llama_model(writer, *model, type, "quantized", [&](const std::string& note) { notes.push_back(note); });
    gguf::add_llama_token_ids(writer, config);
    writer.write(dir / "model.gguf");
    CHECK(notes.empty());
    const gguf::File file = gguf::File::open(dir / "model.gguf");
    CHECK(file.metadata("general.quantization_version").as_u64("") == 2);
    CHECK(file.find("blk.0.attn_k.weight")->type == type);
    CHECK(file.find("blk.0.ffn_norm.weight")->type == gguf::TensorType::f32);
    // Read back and written again, the model gives the same bytes: dequantize then quantize is
    // stable, through the q/k permutation both ways.
    const auto loaded = gguf::load_llama_gguf(dir / "model.gguf");
    gguf::Writer again;
    gguf::add_llama_model(again, *loaded, type, "quantized");
    gguf::add_llama_token_ids(again, config);
    again.write(dir / "again.gguf");
    const gguf::File again_file = gguf::File::open(dir / "again.gguf");
    for (const gguf::TensorInfo& info : file.tensors()) {
      INFO(info.name);
      const gguf::TensorInfo& other = *again_file.find(info.name);
      REQUIRE(other.bytes == info.bytes);
      CHECK(std::memcmp(file.data(info), again_file.data(other), info.bytes) == 0);
    }
  }
  // Hidden size 16: rows of 16 values cannot be Q8_0 blocks, so they are F16 with a note.
  const auto narrow = testing::random_llama(testing::tiny_llama_config(40), 14);
  std::vector<std::string> notes;
  gguf::Writer writer;
  gguf::add_llama_model(writer, *narrow, gguf::TensorType::q8_0, "narrow", [&](const std::string& note) { notes.push_back(note); });
  gguf::add_llama_token_ids(writer, narrow->config());
  writer.write(dir / "narrow.gguf");
  const gguf::File file = gguf::File::open(dir / "narrow.gguf");
  CHECK(file.find("blk.0.attn_q.weight")->type == gguf::TensorType::f16);
  CHECK(file.find("blk.0.ffn_down.weight")->type == gguf::TensorType::q8_0);  // rows of 32
  REQUIRE(!notes.empty());
  CHECK(notes[0].find("not whole blocks of 32; stored as F16") != std::string::npos);
}

namespace {

// Writes a GGUF holding only the tokenizer metadata of `folder`, and returns its path.
std::string tokenizer_gguf(const ScratchDir& dir, const std::string& folder, int64_t vocab_size,
                           const tokenizer::ConfigTokenIds& ids = {}) {
  gguf::Writer writer;
  for (auto& [key, value] : tokenizer::gguf_tokenizer_metadata(folder, vocab_size, ids)) writer.add_metadata(key, std::move(value));
  const std::string path = dir / "tokenizer.gguf";
  writer.write(path);
  return path;
}

const std::vector<std::string>& varied_texts() {
  static const std::vector<std::string> texts = {
      "Hello world",
      " Hello   world!\n\nNew paragraph\twith a tab.",
      "Numbers: 1234567 3.14159 and 2024-12-07, ١٢٣ ٤٥ 1212",
      "I'm sure they'll've done it; we'd say 'yes' — don't you?",
      "Ünïcödé: 日本語のテキスト, 한국어, emoji 🤖🎉, Ελληνικά",
      "code: for (int i = 0; i < n; ++i) { x[i] += y[i]; }",
      "<|im_start|>user\nHi<|im_end|>\n<|begin_of_text|><|eot_id|> <|end_of_text|>",
      "    leading spaces and trailing   ",
      "",
  };
  return texts;
}

void check_same_ids(const tokenizer::Tokenizer& expected, const tokenizer::Tokenizer& actual) {
  for (const std::string& text : varied_texts()) {
    INFO("text: " << text);
    CHECK(actual.encode(text) == expected.encode(text));
    CHECK(actual.encode(text, {.add_bos = false, .parse_special = true}) ==
          expected.encode(text, {.add_bos = false, .parse_special = true}));
  }
}

// tokenizer.json of a GGUF file, written into `folder` and loaded by lamina.
tokenizer::Tokenizer rewritten(const ScratchDir& dir, const gguf::File& file, const std::string& folder) {
  std::filesystem::create_directories(dir / folder);
  std::ofstream(dir / (folder + "/tokenizer.json")) << tokenizer::tokenizer_json_from_gguf(file).dump();
  return tokenizer::Tokenizer::load(dir / folder);
}

}  // namespace

TEST_CASE("tokenizer export: tokenizer.json -> GGUF -> tokenizer.json keeps ids, types and roles") {
  ScratchDir dir("gguf-write-tokenizer");
  const std::vector<std::pair<std::string, std::string>> merges = {{"l", "l"}, {"e", "ll"}, {"h", "ell"}, {" ", "w"}, {"1", "2"}};
  json::Value document = tokenizer::byte_level_tokenizer_json(merges, {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"});
  std::filesystem::create_directories(dir / "hf");
  std::ofstream(dir / "hf/tokenizer.json") << document.dump();
  std::ofstream(dir / "hf/tokenizer_config.json")
      << R"({"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>"}, "chat_template": "{{ x }}"})";
  const tokenizer::Tokenizer original = tokenizer::Tokenizer::load(dir / "hf");
  const int64_t vocab_size = original.vocab_size() + 3;  // a model vocabulary larger than the tokenizer's

  const gguf::File file = gguf::File::open(tokenizer_gguf(dir, dir / "hf", vocab_size, {.bos = 0, .pad = 5, .eos = {7, 2}}));
  CHECK(file.metadata("tokenizer.ggml.model").as_string("") == "gpt2");
  CHECK(file.metadata("tokenizer.ggml.pre").as_string("") == "llama-bpe");
  const auto& tokens = file.metadata("tokenizer.ggml.tokens").as_array("");
  const auto& types = file.metadata("tokenizer.ggml.token_type").as_array("");
  REQUIRE(int64_t(tokens.size()) == vocab_size);
  CHECK(tokens[32].as_string("") == "Ġ");  // the byte ' ' in the byte-level alphabet
  CHECK(types[32].as_i64("") == 1);
  const int32_t bos = original.require_added_token("<|begin_of_text|>"), eot = original.require_added_token("<|eot_id|>");
  CHECK(tokens[size_t(bos)].as_string("") == "<|begin_of_text|>");
  CHECK(types[size_t(bos)].as_i64("") == 3);
  CHECK(tokens[size_t(vocab_size - 1)].as_string("") == "[PAD" + std::to_string(vocab_size - 1) + "]");
  CHECK(types[size_t(vocab_size - 1)].as_i64("") == 5);
  CHECK(file.metadata("tokenizer.ggml.merges").as_array("")[1].as_string("") == "e ll");
  CHECK(file.metadata("tokenizer.ggml.bos_token_id").as_u64("") == uint64_t(bos));  // tokenizer_config over config.json
  CHECK(file.metadata("tokenizer.ggml.eos_token_id").as_u64("") == uint64_t(eot));
  CHECK(file.metadata("tokenizer.ggml.eot_token_id").as_u64("") == 7);  // config.json's first other eos
  CHECK(file.metadata("tokenizer.ggml.padding_token_id").as_u64("") == 5);
  CHECK(file.metadata("tokenizer.ggml.add_bos_token").as_bool(""));  // lamina's rule: <|begin_of_text|> is there
  CHECK(file.metadata("tokenizer.chat_template").as_string("") == "{{ x }}");

  check_same_ids(original, tokenizer::Tokenizer::from_gguf(file));
  const tokenizer::Tokenizer back = rewritten(dir, file, "back");
  check_same_ids(original, back);
  CHECK(back.decode(back.encode("hello world 12")) == "hello world 12");
  const json::Value config = tokenizer::tokenizer_config_from_gguf(file);
  CHECK(config.at("bos_token").as_string() == "<|begin_of_text|>");
  CHECK(config.at("eos_token").as_string() == "<|eot_id|>");
  CHECK(config.at("add_bos_token").as_bool());
  CHECK(config.at("chat_template").as_string() == "{{ x }}");

  // SmolLM2's pre-tokenizer (digits one by one) and GPT-2's are named as llama.cpp names them.
  for (const auto& [pre, name] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]})",
            "smollm"},
           {R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})", "gpt2"}}) {
    INFO(name);
    document.as_object();
    json::Value changed = document;
    changed.set("pre_tokenizer", json::parse(pre));
    std::filesystem::create_directories(dir / name);
    std::ofstream(dir / (name + "/tokenizer.json")) << changed.dump();
    const tokenizer::Tokenizer source = tokenizer::Tokenizer::load(dir / name);
    const gguf::File named = gguf::File::open(tokenizer_gguf(dir, dir / name, source.vocab_size()));
    CHECK(named.metadata("tokenizer.ggml.pre").as_string("") == name);
    check_same_ids(source, tokenizer::Tokenizer::from_gguf(named));
    check_same_ids(source, rewritten(dir, named, name + "-back"));
    // The pre-tokenizers do differ: "1212" is "121" "2" for Llama-3, one word for GPT-2 (merged
    // twice by "1 2"), four single digits for SmolLM.
    CHECK(source.encode("1212") != original.encode("1212"));
  }
}

TEST_CASE("tokenizer export: Llama-3's tokenizer.json -> GGUF -> tokenizer.json keeps the ids" * doctest::test_suite("assets")) {
  ScratchDir dir("gguf-write-llama3-tokenizer");
  const std::string folder = testing::assets_dir("llama3-tokenizer").string();
  const tokenizer::Tokenizer original = tokenizer::Tokenizer::load(folder);
  const gguf::File file = gguf::File::open(tokenizer_gguf(dir, folder, 128256));
  CHECK(file.metadata("tokenizer.ggml.pre").as_string("") == "llama-bpe");
  CHECK(file.metadata("tokenizer.ggml.bos_token_id").as_u64("") == 128000);
  CHECK(file.metadata("tokenizer.ggml.eos_token_id").as_u64("") == 128001);
  CHECK(file.metadata("tokenizer.ggml.token_type").as_array("")[128009].as_i64("") == 3);
  CHECK(file.metadata("tokenizer.chat_template").as_string("").find("<|start_header_id|>") != std::string::npos);
  check_same_ids(original, tokenizer::Tokenizer::from_gguf(file));
  check_same_ids(original, rewritten(dir, file, "back"));
}

TEST_CASE("gguf llama: llama3 RoPE scaling goes out as rope_freqs.weight and comes back as the same frequencies") {
  ScratchDir dir("gguf-rope-freqs");
  autograd::NoGradGuard no_grad;
  // Heads of 16 (8 frequencies) with base 10000: wavelengths 2 pi 10000^(k/8) = 6.3, 19.9, 62.8,
  // 199, 628, 1987, 6283, 19869 tokens, so the scalings below keep, smooth and divide some of each.
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.hidden_size = 32;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 2;
  config.head_dim = 16;
  config.rope_theta = 10000.0;
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 33, 2, 17, 8, 3}, {1, 8});
  const auto round_trip = [&](const Llama3RopeScaling& scaling, const std::string& name) {
    config.rope_scaling = scaling;
    const auto model = testing::random_llama(config, 21);
    gguf::Writer writer;
    gguf::add_llama_model(writer, *model, gguf::TensorType::f32, name);
    gguf::add_llama_token_ids(writer, config);
    writer.write(dir / (name + ".gguf"));
    const auto loaded = gguf::load_llama_gguf(dir / (name + ".gguf"));
    REQUIRE(loaded->config().rope_scaling.has_value());
    const std::vector<float> expected = model->forward(ids).to_vector<float>(), got = loaded->forward(ids).to_vector<float>();
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == doctest::Approx(expected[i]).epsilon(1e-5));
    return *loaded->config().rope_scaling;
  };
  // Llama 3.1's own parameters (factor 8, low 1, high 4, 8192 tokens): read back as they were.
  const Llama3RopeScaling llama31 = round_trip(Llama3RopeScaling{8.0, 1.0, 4.0, 8192}, "llama31");
  CHECK(llama31.factor == 8.0);
  CHECK(llama31.low_freq_factor == 1.0);
  CHECK(llama31.high_freq_factor == 4.0);
  CHECK(llama31.original_max_position == 8192);
  // Other parameters (factor 4, low 2, high 8, 4096 tokens: smoothing from 512 to 2048 tokens).
  // The file keeps only the divisors; read against 8192 tokens, the same boundaries are low 4
  // and high 16, and the model computes the same frequencies (logits equal above).
  const Llama3RopeScaling other = round_trip(Llama3RopeScaling{4.0, 2.0, 8.0, 4096}, "other");
  CHECK(other.factor == 4.0);
  CHECK(other.low_freq_factor == doctest::Approx(4.0).epsilon(1e-6));
  CHECK(other.high_freq_factor == doctest::Approx(16.0).epsilon(1e-6));

  // Divisors no llama3 scaling gives (not monotone in the wavelength) are refused by name.
  config.rope_scaling.reset();
  const auto plain = testing::random_llama(config, 22);
  gguf::Writer writer;
  gguf::add_llama_model(writer, *plain, gguf::TensorType::f32, "odd");
  gguf::add_llama_token_ids(writer, config);
  const std::vector<float> odd = {1, 1, 3, 1, 1.5f, 2, 4, 4};
  writer.add_tensor("rope_freqs.weight", {8}, gguf::TensorType::f32,
                    [odd]() { return gguf::encode(gguf::TensorType::f32, odd.data(), odd.size()); });
  writer.write(dir / "odd.gguf");
  CHECK_THROWS_WITH_AS(gguf::load_llama_gguf(dir / "odd.gguf"), doctest::Contains("rope_freqs.weight' holds divisors"), Error);
}
