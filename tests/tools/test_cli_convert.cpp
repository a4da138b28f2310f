// `lamina convert`: a tiny model through HF -> GGUF -> HF with its weights, logits and tokenizer
// unchanged, the refusals (an existing OUT, unknown types, wrong directions), no debris or
// half-written OUT when a write fails, and the real SmolLM2 GGUF converted both ways.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/real_model.h"
#include "models/tokenizer/builder.h"
#include "models/tokenizer/tokenizer.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

const char* kChatTemplate = "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}";

// A random model whose rows are whole blocks of 32 (so q8_0 applies to every matrix), over the
// byte-level tokenizer, saved as a Hugging Face folder with tokenizer.json and tokenizer_config.json.
std::shared_ptr<llama::LlamaForCausalLM> save_tiny_folder(const std::string& folder) {
  const std::vector<std::pair<std::string, std::string>> merges = {{"a", "b"}, {"ab", "c"}};
  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer(merges);
  llama::LlamaConfig config = one_layer_llama_config(tokenizer.vocab_size());
  config.bos_token_id = tokenizer.require_added_token("<|begin_of_text|>");
  config.eos_token_ids = {tokenizer.require_added_token("<|end_of_text|>")};
  config.hidden_size = 32, config.intermediate_size = 64, config.num_attention_heads = 4;
  config.num_key_value_heads = 2, config.head_dim = 8, config.num_hidden_layers = 2;
  config.max_position_embeddings = 128;
  const auto model = random_llama(config, 21);
  model->save(folder);
  std::ofstream(fs::path(folder) / "tokenizer.json") << tokenizer::byte_level_tokenizer_json(merges).dump();
  json::Value settings = json::Object{};
  settings.set("bos_token", "<|begin_of_text|>");
  settings.set("eos_token", "<|end_of_text|>");
  settings.set("chat_template", kChatTemplate);
  std::ofstream(fs::path(folder) / "tokenizer_config.json") << settings.dump();
  return model;
}

const std::vector<std::string> kTexts = {
    "abc abcabc hello, world 12345", "  spaces\tand\nlines ", "ünïcödé 日本 🤖", "<|begin_of_text|>x<|eot_id|>", ""};

void check_same_ids(const tokenizer::Tokenizer& expected, const tokenizer::Tokenizer& actual) {
  for (const std::string& text : kTexts) {
    INFO("text: " << text);
    CHECK(actual.encode(text) == expected.encode(text));
    CHECK(actual.encode(text, {.add_bos = false, .parse_special = true}) ==
          expected.encode(text, {.add_bos = false, .parse_special = true}));
  }
}

void check_same_weights(const llama::LlamaForCausalLM& expected, const llama::LlamaForCausalLM& actual) {
  const auto want = expected.named_parameters(), got = actual.named_parameters();
  REQUIRE(want.size() == got.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO(want[i].first);
    CHECK(got[i].first == want[i].first);
    CHECK(got[i].second.to_vector<float>() == want[i].second.to_vector<float>());
  }
}

}  // namespace

TEST_CASE("lamina convert: HF folder -> GGUF -> HF folder keeps weights, logits, config and tokenizer") {
  ScratchDir dir("cli-convert");
  const std::string hf = dir / "hf";
  const auto model = save_tiny_folder(hf);

  const Run to_gguf = run_lamina("convert " + hf + " " + dir / "model.gguf --type f32");
  INFO(to_gguf.output);
  REQUIRE(to_gguf.status == 0);
  CHECK(to_gguf.output.find("blk.1.ffn_down.weight") != std::string::npos);  // progress names the tensors
  const gguf::File file = gguf::File::open(dir / "model.gguf");
  CHECK(file.metadata("general.name").as_string("") == "hf");
  CHECK(file.metadata("tokenizer.ggml.pre").as_string("") == "llama-bpe");
  CHECK(file.metadata("tokenizer.chat_template").as_string("") == kChatTemplate);
  const auto from_gguf = gguf::load_llama_gguf(dir / "model.gguf");
  check_same_weights(*model, *from_gguf);
  CHECK(from_gguf->config().to_json().at("eos_token_id").dump() == model->config().to_json().at("eos_token_id").dump());
  const tokenizer::Tokenizer original = tokenizer::Tokenizer::load(hf);
  check_same_ids(original, tokenizer::Tokenizer::from_gguf(file));

  const Run to_hf = run_lamina("convert " + dir / "model.gguf" + " " + dir / "back");
  INFO(to_hf.output);
  REQUIRE(to_hf.status == 0);
  CHECK(folder_entries(dir.path) == std::vector<std::string>{"back", "hf", "model.gguf"});
  const auto back = llama::LlamaForCausalLM::load(dir / "back");
  check_same_weights(*model, *back);
  CHECK(back->config().to_json().dump() == [&] {
    llama::LlamaConfig expected = model->config();
    expected.rms_norm_eps = double(float(expected.rms_norm_eps));  // GGUF stores it as f32
    expected.initializer_range = back->config().initializer_range;  // not carried by GGUF
    return expected.to_json().dump();
  }());
  {
    autograd::NoGradGuard no_grad;
    const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 97, 98, 99, 32, 100}, {1, 6});
    CHECK(back->forward(ids).to_vector<float>() == model->forward(ids).to_vector<float>());
  }
  check_same_ids(original, tokenizer::Tokenizer::load(dir / "back"));
  const json::Value settings = json::parse_file(dir / "back/tokenizer_config.json");
  CHECK(settings.at("chat_template").as_string() == kChatTemplate);
  CHECK(settings.at("bos_token").as_string() == "<|begin_of_text|>");
  CHECK(settings.at("eos_token").as_string() == "<|end_of_text|>");
  CHECK(settings.at("add_bos_token").as_bool());

  // Q8_0 (and the f16 default): the matrices in that type, the norms in F32, readable by lamina.
  REQUIRE(run_lamina("convert " + hf + " " + dir / "q8.gguf --type q8_0").status == 0);
  const gguf::File quantized = gguf::File::open(dir / "q8.gguf");
  CHECK(quantized.find("blk.0.attn_q.weight")->type == gguf::TensorType::q8_0);
  CHECK(quantized.find("token_embd.weight")->type == gguf::TensorType::q8_0);
  CHECK(quantized.find("blk.0.attn_norm.weight")->type == gguf::TensorType::f32);
  CHECK(quantized.metadata("general.file_type").as_u64("") == 7);
  REQUIRE(run_lamina("convert " + hf + "/ " + dir / "f16.gguf --name tiny-f16").status == 0);
  const gguf::File half = gguf::File::open(dir / "f16.gguf");
  CHECK(half.find("blk.0.ffn_up.weight")->type == gguf::TensorType::f16);
  CHECK(half.metadata("general.name").as_string("") == "tiny-f16");
  CHECK(gguf::load_llama_gguf(dir / "q8.gguf")->config().hidden_size == 32);

  // GGUF -> HF in bf16.
  REQUIRE(run_lamina("convert " + dir / "f16.gguf" + " " + dir / "bf16 --dtype bf16").status == 0);
  CHECK(llama::LlamaConfig::load(dir / "bf16/config.json").dtype == DType::bf16);
}

TEST_CASE("lamina convert: refusals are usage errors or errors naming the problem, and OUT stays as it was") {
  ScratchDir dir("cli-convert-refusals");
  const std::string hf = dir / "hf";
  save_tiny_folder(hf);
  REQUIRE(run_lamina("convert " + hf + " " + dir / "model.gguf").status == 0);
  const std::string before = file_bytes(dir / "model.gguf");

  const Run exists = run_lamina("convert " + hf + " " + dir / "model.gguf --type q8_0");
  CHECK(exists.status == 1);
  CHECK_MESSAGE(exists.output.find("exists; pass --overwrite") != std::string::npos, exists.output);
  CHECK(file_bytes(dir / "model.gguf") == before);
  const Run overwrite = run_lamina("convert " + hf + " " + dir / "model.gguf --type q8_0 --overwrite");
  CHECK(overwrite.status == 0);
  CHECK(gguf::File::open(dir / "model.gguf").find("blk.0.attn_q.weight")->type == gguf::TensorType::q8_0);

  const Run unknown_type = run_lamina("convert " + hf + " " + dir / "other.gguf --type q5_0");
  CHECK(unknown_type.status == 2);
  CHECK_MESSAGE(unknown_type.output.find("unknown --type 'q5_0'") != std::string::npos, unknown_type.output);
  const Run not_gguf = run_lamina("convert " + hf + " " + dir / "model.bin");
  CHECK(not_gguf.status == 2);
  CHECK_MESSAGE(not_gguf.output.find("must end in .gguf") != std::string::npos, not_gguf.output);
  const Run type_for_folder = run_lamina("convert " + dir / "model.gguf" + " " + dir / "out --type q8_0");
  CHECK(type_for_folder.status == 2);
  const Run gguf_to_gguf = run_lamina("convert " + dir / "model.gguf" + " " + dir / "again.gguf");
  CHECK(gguf_to_gguf.status == 2);
  CHECK_MESSAGE(gguf_to_gguf.output.find("ends in .gguf") != std::string::npos, gguf_to_gguf.output);
  CHECK(run_lamina("convert " + hf).status == 2);
  CHECK(run_lamina("convert " + hf + " a.gguf b.gguf").status == 2);
  const Run missing = run_lamina("convert " + dir / "nothing" + " " + dir / "x.gguf");
  CHECK(missing.status == 1);
  CHECK_MESSAGE(missing.output.find("not found") != std::string::npos, missing.output);
  // The folder exists: refused too, and kept.
  const Run folder_exists = run_lamina("convert " + dir / "model.gguf" + " " + hf);
  CHECK(folder_exists.status == 1);
  CHECK(fs::exists(fs::path(hf) / "tokenizer_config.json"));
  // Replacing a folder: the new one takes its place and the old one leaves nothing behind.
  REQUIRE(run_lamina("convert " + dir / "model.gguf" + " " + dir / "folder").status == 0);
  std::ofstream(dir / "folder/stale") << "from before";
  CHECK(run_lamina("convert " + dir / "model.gguf" + " " + dir / "folder --overwrite").status == 0);
  CHECK(folder_entries(dir / "folder") ==
        std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"});
  const Run help = run_lamina("convert --help");
  CHECK(help.status == 0);
  CHECK(help.output.find("q4_0") != std::string::npos);
  CHECK(folder_entries(dir.path) == std::vector<std::string>{"folder", "hf", "model.gguf"});
}

TEST_CASE("lamina convert: a write that fails leaves neither OUT nor debris, and an old OUT whole") {
  ScratchDir dir("cli-convert-fail");
  const std::string hf = dir / "hf";
  save_tiny_folder(hf);
  REQUIRE(run_lamina("convert " + hf + " " + dir / "model.gguf --type f32").status == 0);
  const std::string gguf_before = file_bytes(dir / "model.gguf");
  fs::create_directories(dir / "out");
  std::ofstream(dir / "out/marker") << "old";
  // A file size limit far below the outputs: writes fail with EFBIG (the signal that would
  // otherwise end the process is ignored), as a full disk would fail them.
  const RunOptions limited{.environment = "trap '' XFSZ; ulimit -f 8;"};

  const Run to_gguf = run_lamina("convert " + hf + " " + dir / "new.gguf", limited);
  CHECK(to_gguf.status == 1);
  CHECK_MESSAGE(to_gguf.output.find("error") != std::string::npos, to_gguf.output);
  const Run replace_gguf = run_lamina("convert " + hf + " " + dir / "model.gguf --overwrite --type f16", limited);
  CHECK(replace_gguf.status == 1);
  CHECK(file_bytes(dir / "model.gguf") == gguf_before);

  const Run to_hf = run_lamina("convert " + dir / "model.gguf" + " " + dir / "new-hf", limited);
  CHECK(to_hf.status == 1);
  const Run replace_hf = run_lamina("convert " + dir / "model.gguf" + " " + dir / "out --overwrite", limited);
  CHECK(replace_hf.status == 1);
  CHECK(folder_entries(dir / "out") == std::vector<std::string>{"marker"});
  CHECK(folder_entries(dir.path) == std::vector<std::string>{"hf", "model.gguf", "out"});
}

TEST_CASE("lamina convert: SmolLM2's GGUF to a folder and to Q8_0, the same answers and ids" *
          doctest::test_suite("real_model")) {
  ScratchDir dir("cli-convert-smollm2");
  const std::string source = smollm2_gguf_path();
  const Run to_hf = run_lamina("convert " + source + " " + dir / "hf");
  INFO(to_hf.output);
  REQUIRE(to_hf.status == 0);
  const Run to_q8 = run_lamina("convert " + dir / "hf" + " " + dir / "q8.gguf --type q8_0");
  INFO(to_q8.output);
  REQUIRE(to_q8.status == 0);

  // "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
  const std::vector<int64_t> prompt = {1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198};
  const auto greedy = [&](const llama::LlamaForCausalLM& model) {
    generate::GenerateOptions options;
    options.max_new_tokens = 12;
    return generate::generate(model, {prompt}, options).tokens[0];
  };
  const std::vector<int64_t> answer = greedy(*gguf::load_llama_gguf(source));
  CHECK(answer == std::vector<int64_t>{504, 3575, 282, 4649, 314, 7042, 30});  // "The capital of France is Paris."
  CHECK(greedy(*llama::LlamaForCausalLM::load(dir / "hf")) == answer);
  CHECK(greedy(*gguf::load_llama_gguf(dir / "q8.gguf")) == answer);

  const gguf::File original_file = gguf::File::open(source);
  const tokenizer::Tokenizer original = tokenizer::Tokenizer::from_gguf(original_file);
  const tokenizer::Tokenizer folder = tokenizer::Tokenizer::load(dir / "hf");
  const gguf::File q8_file = gguf::File::open(dir / "q8.gguf");
  const tokenizer::Tokenizer q8 = tokenizer::Tokenizer::from_gguf(q8_file);
  for (const std::string& text :
       {std::string("What is the capital of France? Paris, 2024-12-07: 3.14159 or 1000000."),
        std::string("  Leading spaces,\ttabs\n\nand newlines; I'm sure they'll've done it."),
        std::string("Ünïcödé 日本語 한국어 🤖🎉 Ελληνικά \x04\xff bytes the vocabulary lacks"),
        std::string("<|im_start|>user\nHi<|im_end|>\n<|endoftext|>"), std::string("def f(x):\n    return x**2  # ok")}) {
    INFO("text: " << text);
    CHECK(folder.encode(text) == original.encode(text));
    CHECK(folder.encode(text, {.add_bos = false, .parse_special = true}) ==
          original.encode(text, {.add_bos = false, .parse_special = true}));
    CHECK(q8.encode(text, {.add_bos = false, .parse_special = true}) ==
          original.encode(text, {.add_bos = false, .parse_special = true}));
  }
  // The round trip keeps the tokenizer metadata itself.
  for (const char* key : {"tokenizer.ggml.pre", "tokenizer.chat_template"})
    CHECK(q8_file.metadata(key).as_string(key) == original_file.metadata(key).as_string(key));
  for (const char* key : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                          "tokenizer.ggml.unknown_token_id"})
    CHECK(q8_file.metadata(key).as_u64(key) == original_file.metadata(key).as_u64(key));
  CHECK(!q8_file.metadata("tokenizer.ggml.add_bos_token").as_bool(""));
  const auto& tokens = q8_file.metadata("tokenizer.ggml.tokens").as_array("");
  const auto& original_tokens = original_file.metadata("tokenizer.ggml.tokens").as_array("");
  REQUIRE(tokens.size() == original_tokens.size());
  size_t differing = 0;
  for (size_t i = 0; i < tokens.size(); ++i) differing += tokens[i].as_string("") != original_tokens[i].as_string("");
  CHECK(differing == 0);
}
