// `lamina train` refusing what would lose work or silently mean something else: an --overwrite
// that would delete its own input model, a model too large for the machine's memory, a resume
// across a changed config or precision, NaN in a flag, data that is not what it seems, and
// settings that run but do not do what was meant (warned about).
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "tools/train_workspace.h"
#include "train/metrics.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

bool has(const Run& run, const std::string& text) { return run.output.find(text) != std::string::npos; }

std::string sft_command(const Workspace& w, const std::string& model, const std::string& output) {
  return "train sft --model " + model + " --data " + (w / "chat.jsonl") + " --output " + output +
         " --steps 2 --batch-size 2 --seq-len 64 --quiet";
}

}  // namespace

TEST_CASE("sft --overwrite refuses a --model inside the run it would remove, and the model keeps its tokenizer") {
  Workspace w("cli-safety-overwrite");
  const std::string pretrain = w.pretrain_command() + " --data " + (w / "text.jsonl") +
                               " --batch-size 2 --seq-len 32 --steps 2 --save-every 1 --quiet --output " + (w / "run");
  REQUIRE(run_lamina(pretrain).status == 0);
  Run run = run_lamina(sft_command(w, w / "run/model", w / "run") + " --overwrite");
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(has(run, "--model " + (w / "run/model") + " is inside " + (w / "run/model/") + ", which --overwrite removes"));
  CHECK_FALSE(has(run, "data:"));  // refused before reading anything
  CHECK(fs::exists(w / "run/model/model.safetensors"));
  CHECK(fs::exists(w / "run/checkpoints/step-00000002/COMPLETE"));
  run = run_lamina(sft_command(w, w / "run/checkpoints/step-00000002", w / "run") + " --overwrite");
  CHECK(run.status == 1);
  CHECK(has(run, "is inside " + (w / "run/checkpoints/")));
  // Into a folder of its own it trains, and its model/ has the tokenizer it was read with.
  run = run_lamina(sft_command(w, w / "run/model", w / "sft"));
  CHECK(run.status == 0);
  CHECK(fs::exists(w / "sft/model/tokenizer.json"));
}

TEST_CASE("pretrain refuses, before building it, a model whose weights fit but whose training state does not") {
  Workspace w("cli-safety-memory");
  // 269M parameters: 1 GiB of f32 weights, 4 GiB with gradients and AdamW's moments, under a
  // 3 GB address-space limit.
  json::Value config = json::parse_file(w / "config.json");
  config.set("hidden_size", 1024);
  config.set("intermediate_size", 4096);
  config.set("num_hidden_layers", 16);
  config.set("num_attention_heads", 8);
  config.set("num_key_value_heads", 8);
  config.set("head_dim", 128);
  std::ofstream(w / "large.json") << config.dump();
  RunOptions limited;
  limited.address_space_kb = 3000000;
  const Run run = run_lamina("train pretrain --config " + (w / "large.json") + " --tokenizer " + (w / "tokenizer.json") +
                                 " --data " + (w / "text.jsonl") + " --steps 1 --batch-size 2 --seq-len 32 --precision f32 --quiet --output " +
                                 (w / "out"),
                             limited);
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(has(run, "training this model needs about 4.01 GiB of host memory (weights 1.00 GiB (269.0M parameters in f32), "
                 "gradients 1.00 GiB, AdamW moments 2.00 GiB"));
  CHECK_FALSE(has(run, "model: "));  // the model was never built
  CHECK_FALSE(fs::exists(w / "out"));
}

TEST_CASE("resume names a changed model config and a changed precision instead of calling checkpoints broken") {
  Workspace w("cli-safety-resume");
  const std::string data = " --data " + (w / "text.jsonl") + " --tokenizer " + (w / "tokenizer.json") +
                           " --batch-size 2 --seq-len 32 --schedule constant --quiet --output " + (w / "run");
  REQUIRE(run_lamina("train pretrain --config " + (w / "config.json") + data + " --steps 2 --precision f32").status == 0);
  json::Value config = json::parse_file(w / "config.json");
  config.set("rope_theta", 10000.0);
  std::ofstream(w / "changed.json") << config.dump();
  Run run = run_lamina("train pretrain --config " + (w / "changed.json") + data + " --steps 3 --resume --precision f32");
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(has(run, "config rope_theta: 5e+05 -> 10000.0"));
  run = run_lamina("train pretrain --config " + (w / "config.json") + data + " --steps 3 --resume --precision bf16");
  CHECK(run.status == 1);
  CHECK(has(run, "precision: f32 (f32) -> bf16 (bf16)"));
  CHECK_FALSE(has(run, "does not load"));
  run = run_lamina("train pretrain --config " + (w / "config.json") + data + " --steps 3 --resume --precision bf16 "
                   "--allow-option-changes");
  CHECK(run.status == 0);
  CHECK(train::read_metrics(w / "run/metrics.jsonl").size() == 3);
}

TEST_CASE("a resume says truly why it prunes, and a default --keep-checkpoints prunes nothing up front") {
  Workspace w("cli-safety-keep");
  const std::string run_folder = w.pretrain_command() + " --data " + (w / "text.jsonl") +
                                 " --batch-size 2 --seq-len 32 --schedule constant --save-every 1 --quiet --output " +
                                 (w / "run");
  REQUIRE(run_lamina(run_folder + " --steps 4 --keep-checkpoints 4").status == 0);
  Run run = run_lamina(run_folder + " --steps 4 --resume");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK_FALSE(has(run, "removed"));
  CHECK(fs::exists(w / "run/checkpoints/step-00000001"));
  // A checkpoint the stopped run would have pruned (its keep count is 4 and it has 5).
  fs::copy(w / "run/checkpoints/step-00000001", w / "run/checkpoints/step-00000000");
  run = run_lamina(run_folder + " --steps 4 --resume");
  CHECK(has(run, "step-00000000: beyond the 4 checkpoints the run keeps (--keep-checkpoints); it was stopped before "
                 "pruning it"));
  CHECK(fs::exists(w / "run/checkpoints/step-00000001"));
}

TEST_CASE("flags and data that are not what they seem: NaN numbers, shards by header, a BOM, output paths") {
  Workspace w("cli-safety-inputs");
  const std::string base = w.pretrain_command() + " --steps 1 --batch-size 2 --seq-len 32 --quiet";
  const std::string train_text = base + " --data " + (w / "text.jsonl") + " --output " + (w / "out");
  for (const auto& [flag, range] : std::vector<std::pair<std::string, std::string>>{
           {"--lr", "[1e-12, 10], got nan"}, {"--clip", "[0, 1e+12], got nan"}, {"--min-lr-ratio", "[0, 1], got nan"}}) {
    const Run run = run_lamina(train_text + " " + flag + " nan");
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(has(run, range));
  }
  // A token shard is known by its LMTOKENS header, whatever the file is called.
  std::string shard("LMTOKENS\x04\0\0\0\0\0\0\0", 16);
  for (int i = 0; i < 200; ++i)
    for (int byte : {10 + i % 50, 0, 0, 0}) shard += char(byte);
  std::ofstream(w / "tokens.dat", std::ios::binary) << shard;
  Run run = run_lamina("train pretrain --config " + (w / "config.json") + " --data " + (w / "tokens.dat") +
                       " --steps 1 --batch-size 2 --seq-len 32 --quiet --output " + (w / "shard"));
  INFO(run.output);
  CHECK(run.status == 0);
  run = run_lamina("train pretrain --config " + (w / "config.json") + " --data " + (w / "text.jsonl") +
                   " --steps 1 --quiet --output " + (w / "no-tokenizer"));
  CHECK(run.status == 1);
  CHECK(has(run, (w / "text.jsonl") + ": JSONL data (it does not start with a token shard's LMTOKENS header) needs a "
                                      "tokenizer"));
  // A UTF-8 byte-order mark before the first line is not part of it.
  std::ifstream text(w / "text.jsonl");
  std::ofstream(w / "bom.jsonl") << "\xEF\xBB\xBF" << text.rdbuf();
  run = run_lamina(base + " --data " + (w / "bom.jsonl") + " --output " + (w / "bom"));
  CHECK(run.status == 0);
  CHECK(has(run, "data: 29 training examples, 1 validation examples"));
  // An output folder that cannot be made is found before the data is read.
  std::ofstream(w / "afile") << "x";
  run = run_lamina(base + " --data " + (w / "text.jsonl") + " --output " + (w / "afile/sub"));
  CHECK(run.status == 1);
  CHECK(has(run, "cannot create output folder " + (w / "afile/sub") + ": " + (w / "afile") + " is not a folder"));
  CHECK_FALSE(has(run, "data:"));
  // Texts with nothing in them are lines with nothing to learn.
  std::ofstream empty(w / "empty-texts.jsonl");
  for (int i = 0; i < 5; ++i) empty << R"({"text": ""})" << "\n";
  empty.close();
  run = run_lamina(base + " --data " + (w / "empty-texts.jsonl") + " --output " + (w / "empty"));
  CHECK(run.status == 1);
  CHECK(has(run, "empty-texts.jsonl:1: \"text\" is empty"));
}

TEST_CASE("settings that run but do not do what was meant: refused or warned about") {
  Workspace w("cli-safety-settings");
  const std::string base = w.pretrain_command() + " --data " + (w / "text.jsonl") + " --seq-len 32 --quiet";
  std::ofstream(w / "empty.jsonl") << "";
  Run run = run_lamina(base + " --steps 1 --batch-size 2 --validation " + (w / "empty.jsonl") + " --output " + (w / "a"));
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(has(run, "--validation " + (w / "empty.jsonl") + " holds no examples"));
  run = run_lamina(base + " --steps 3 --batch-size 2 --warmup-steps 1000 --output " + (w / "b"));
  CHECK(run.status == 0);
  CHECK(has(run, "warning: --warmup-steps 1000 is more than --steps 3: the learning rate never reaches its peak"));
  run = run_lamina(base + " --steps 1 --batch-size 100 --no-pack --output " + (w / "c"));
  CHECK(run.status == 0);
  CHECK(has(run, "warning: a step of --batch-size 100 holds more than the training data (100 rows for 29 examples, one "
                 "per row): every step repeats examples, about 3.4 passes over the data per step"));
  run = run_lamina(base + " --steps 1 --batch-size 2 --output " + (w / "d"));
  CHECK_FALSE(has(run, "warning"));
  // A file that mixes layouts trains, and says so.
  std::ofstream mixed(w / "mixed.jsonl");
  mixed << R"({"text": "plain"})" << "\n" << R"({"prompt": "q", "completion": "a"})" << "\n";
  mixed.close();
  run = run_lamina(w.pretrain_command() + " --data " + (w / "mixed.jsonl") +
                   " --seq-len 32 --quiet --steps 1 --batch-size 1 --validation-fraction 0 --output " + (w / "e"));
  CHECK(run.status == 0);
  CHECK(has(run, "lines of several layouts, each read by its keys: 1 prompt-completion, 1 text examples"));
}

TEST_CASE("--options takes the knobs its help lists, switches included, and names the flags it does not take") {
  Workspace w("cli-safety-options");
  std::ofstream(w / "options.json") << R"({"no-pack": true, "quiet": true, "output": ")" << (w / "out")
                                    << R"(", "steps": 1, "batch-size": 2, "seq-len": 32})";
  Run run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --options " + (w / "options.json"));
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK_FALSE(has(run, "step 1/1"));  // quiet
  CHECK(fs::exists(w / "out/model/model.safetensors"));
  std::ofstream(w / "data-key.json") << R"({"data": "x.jsonl"})";
  run = run_lamina(w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / "x") + " --options " +
                   (w / "data-key.json"));
  CHECK(run.status == 1);
  CHECK(has(run, "\"data\" is given as a flag only (--data), not in an options file"));
  run = run_lamina("train pretrain --help");
  CHECK(has(run, "keyed like their flags (switches true or false): steps, batch-size,"));
  CHECK(has(run, "no-pack,"));
  CHECK(has(run, "output, quiet;"));
}
