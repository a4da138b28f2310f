// `lamina expand` and `lamina extend-vocab`: a saved byte-level model in, a folder out that loads
// with the original's logits (expand: bit-identical; extend-vocab: the hidden states bit-identical)
// and the tokenizer files; then
// `lamina train sft --trainable` on the expanded model changes the new block only. Bad flags, a
// bad block, an existing OUT and a no-op vocabulary are refused with nothing left behind.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<llama::LlamaForCausalLM> save_model(const std::string& folder, uint64_t seed) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.tie_word_embeddings = false;
  return save_byte_level_model(folder, seed, config);
}

Tensor some_ids() { return Tensor::from_vector<int64_t>({256, 72, 105, 33, 10, 200}, {1, 6}); }

}  // namespace

TEST_CASE("lamina expand inserts identity blocks; train sft --trainable then trains them alone") {
  const ScratchDir scratch("cli-expand");
  const auto original = save_model(scratch / "a", 1);
  Run run = run_lamina("expand --model " + (scratch / "a") + " --insert-after 0 --out " + (scratch / "x"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  CHECK(report.at("old_layers").as_int64() == 1);
  CHECK(report.at("new_layers").as_int64() == 2);
  CHECK(report.at("trainable").as_string() == "model.layers.1.*");
  CHECK(report.at("peak_rss_bytes").as_int64() > 0);
  CHECK(folder_entries(scratch.path / "x") == std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json"});
  const auto expanded = llama::LlamaForCausalLM::load(scratch / "x");
  CHECK(expanded->config().num_hidden_layers == 2);
  CHECK(same_bytes(original->forward(some_ids()), expanded->forward(some_ids())));

  run = run_lamina("expand --model " + (scratch / "a") + " --every 1 --out " + (scratch / "y"));
  CHECK(run.status == 0);
  CHECK(report_of(run.output).at("inserted").dump() == "[1]");

  std::ofstream(scratch / "data.jsonl") << "{\"text\": \"hello there, general kenobi\"}\n{\"text\": \"a second line of text\"}\n";
  const std::string train = "train sft --model " + (scratch / "x") + " --data " + (scratch / "data.jsonl") +
                            " --steps 1 --batch-size 2 --seq-len 32 --precision f32 --quiet --output " + (scratch / "run");
  run = run_lamina(train + " --trainable model.layers.1.*");
  INFO(run.output);
  REQUIRE(run.status == 0);
  const safetensors::Checkpoint before = safetensors::Checkpoint::open(scratch / "x");
  const safetensors::Checkpoint after = safetensors::Checkpoint::open(scratch / "run/model");
  int64_t changed = 0;
  for (const std::string& name : before.names()) {
    CAPTURE(name);
    const bool moved = !same_bytes(before.read(name), after.read(name));
    if (name.rfind("model.layers.1.", 0) != 0) CHECK_FALSE(moved);
    changed += moved;
  }
  CHECK(changed >= 2);  // the zeroed projections at least
  run = run_lamina(train + "2 --trainable layers.9.*");
  CHECK(run.status == 1);
  CHECK(run.output.find("--trainable pattern 'layers.9.*' matches no parameter") != std::string::npos);
  run = run_lamina(train + "3 --trainable lm_head --lora r=2,alpha=4");
  CHECK(run.status == 1);
  CHECK(run.output.find("drop one of the two") != std::string::npos);
}

TEST_CASE("lamina expand refuses bad flags, bad blocks and an existing OUT, leaving nothing behind") {
  const ScratchDir scratch("cli-expand-errors");
  save_model(scratch / "a", 2);
  const std::string model = " --model " + (scratch / "a");
  Run run = run_lamina("expand" + model + " --insert-after 0 --every 1 --out " + (scratch / "x"));
  CHECK(run.status == 2);
  CHECK(run.output.find("exactly one of --insert-after") != std::string::npos);
  run = run_lamina("expand" + model + " --insert-after 1 --out " + (scratch / "x"));
  CHECK(run.status == 1);
  CHECK(run.output.find("block 1 does not exist (the model has 1 blocks") != std::string::npos);
  run = run_lamina("expand" + model + " --insert-after zero --out " + (scratch / "x"));
  CHECK(run.status == 2);
  CHECK(run.output.find("'zero' is not a block index") != std::string::npos);
  run = run_lamina("expand --model " + (scratch / "missing") + " --every 1 --out " + (scratch / "x"));
  CHECK(run.status == 1);
  CHECK(run.output.find("is not a folder") != std::string::npos);
  fs::create_directories(scratch / "x");
  run = run_lamina("expand" + model + " --every 1 --out " + (scratch / "x"));
  CHECK(run.status == 1);
  CHECK(run.output.find("exists; pass --overwrite") != std::string::npos);
  run = run_lamina("expand" + model + " --every 1 --out " + (scratch / "a") + " --overwrite");
  CHECK(run.status == 1);
  CHECK(run.output.find("--out must differ from --model") != std::string::npos);
  fs::remove(scratch / "x");
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"a"});
  run = run_lamina("expand --help");
  CHECK(run.status == 0);
  CHECK(run.output.find("--insert-after I,J,...") != std::string::npos);
}

TEST_CASE("lamina extend-vocab adds tokens the tokenizer encodes, old logits unchanged") {
  const ScratchDir scratch("cli-extend-vocab");
  const auto original = save_model(scratch / "a", 3);
  Run run = run_lamina("extend-vocab --model " + (scratch / "a") + " --add-tokens '<|tool|>,<|eot_id|>,<|obs|>' --special"
                       " --pad-to-multiple 8 --out " + (scratch / "v"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  CHECK(report.at("added").dump() == R"({"<|tool|>":261,"<|obs|>":262})");
  CHECK(report.at("skipped").dump() == R"(["<|eot_id|>"])");
  CHECK(report.at("old_vocab_size").as_int64() == 261);
  CHECK(report.at("new_vocab_size").as_int64() == 264);
  CHECK(run.output.find("skipped '<|eot_id|>'") != std::string::npos);
  const auto extended = llama::LlamaForCausalLM::load(scratch / "v");
  // The trunk is the original's bit for bit; the old logits too, up to the GEMM's rounding of
  // a column in its edge path (tests/models/test_vocab_extend.cpp checks them bit for bit).
  CHECK(same_bytes(original->hidden_states(some_ids()), extended->hidden_states(some_ids())));
  const Tensor before = original->forward(some_ids()), after = extended->forward(some_ids());
  CHECK_CLOSE(after.narrow(2, 0, 261).contiguous(), before, (Tolerance{1e-7, 1e-6}));
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(scratch / "v");
  CHECK(tokenizer.is_special(262));
  tokenizer::EncodeOptions special;
  special.parse_special = true;
  CHECK(tokenizer.encode("<|obs|>!", special) == std::vector<int32_t>{262, '!'});

  std::ofstream(scratch / "tokens.txt") << "alpha\r\n\nbeta\n";
  run = run_lamina("extend-vocab --model " + (scratch / "a") + " --add-tokens-file " + (scratch / "tokens.txt") +
                   " --init zeros --out " + (scratch / "w"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(report_of(run.output).at("added").dump() == R"({"alpha":261,"beta":262})");

  run = run_lamina("extend-vocab --model " + (scratch / "a") + " --add-tokens '<|eot_id|>' --out " + (scratch / "z"));
  CHECK(run.status == 1);
  CHECK(run.output.find("nothing to add") != std::string::npos);
  run = run_lamina("extend-vocab --model " + (scratch / "a") + " --out " + (scratch / "z"));
  CHECK(run.status == 2);
  CHECK(run.output.find("exactly one of --add-tokens") != std::string::npos);
  run = run_lamina("extend-vocab --model " + (scratch / "a") + " --add-tokens a --init random --out " + (scratch / "z"));
  CHECK(run.status == 1);
  CHECK(run.output.find("--init is mean or zeros") != std::string::npos);
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"a", "tokens.txt", "v", "w"});
}
