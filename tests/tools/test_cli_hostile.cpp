// The CLI on hostile input and circumstances found by the red team: memory that really runs out
// (ulimit -v), bytes that would cut or garble an error message, flags and chat lines that
// were silently ignored, bench and preference-loss paths that exited 0 or printed a result
// before failing. Each ends with a message that says what is wrong, and the right exit status.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

size_t occurrences(const std::string& text, const std::string& part) {
  size_t count = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

// A saved tiny model (one layer, zero weights) with the byte-level tokenizer and its chat format.
struct ModelFolder : ScratchDir {
  explicit ModelFolder(const std::string& name) : ScratchDir("cli-hostile-" + name) {
    llama::LlamaForCausalLM(byte_level_llama_config()).save(path.string());
    std::ofstream(path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  }
};

}  // namespace

TEST_CASE("a model too large for a ulimit -v is an out-of-memory error, not an abort") {
  Workspace workspace("cli-hostile-memory");
  json::Value config = json::parse_file(workspace / "config.json");
  config.set("num_hidden_layers", 1000000);
  std::ofstream(workspace / "big.json") << config.dump();
  const Run run = run_lamina("train pretrain --config " + (workspace / "big.json") + " --tokenizer " +
                                 (workspace / "tokenizer.json") + " --data " + (workspace / "text.jsonl") + " --output " +
                                 (workspace / "run") + " --steps 2 --batch-size 2 --seq-len 16",
                             {.timeout_seconds = 120, .address_space_kb = 1000000});
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(run.output.find("host memory") != std::string::npos);
  CHECK(run.output.find("terminate") == std::string::npos);
}

TEST_CASE("a NUL byte in a checkpoint index's shard name is shown as \\x00, the message whole") {
  ModelFolder model("nul-shard");
  std::ofstream(model.path / "model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model\u0000x.safetensors"}})";
  const Run run = run_lamina("generate --model " + model.path.string() + " --prompt-ids '1 2' --max-new-tokens 1");
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(run.output.find("lists the shard model\\x00x.safetensors, which is not in the folder") != std::string::npos);
}

TEST_CASE("generate: the whole uint64 range of --seed; --system without --chat is a usage error") {
  ModelFolder model("seed");
  const std::string generate = "generate --model " + model.path.string() + " --prompt-ids '1 2' --max-new-tokens 2";
  const Run largest = run_lamina(generate + " --temperature 1 --seed 18446744073709551615");
  INFO(largest.output);
  CHECK(largest.status == 0);
  const Run system = run_lamina(generate + " --system 'be brief'");
  INFO(system.output);
  CHECK(system.status == 2);
  CHECK(system.output.find("--system only applies with --chat") != std::string::npos);
}

TEST_CASE("chat: unknown or malformed /commands are refused, never sent; // sends a leading slash") {
  ModelFolder model("chat-commands");
  const Run run = run_lamina("chat --model " + model.path.string() + " --max-new-tokens 2",
                             {.input = "/quit extra\n/unknown\n/system \n/systemx\n//slash\n/quit\nnever read\n"});
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("(/quit takes nothing after it (got \"/quit extra\"))") != std::string::npos);
  CHECK(run.output.find("(unknown command \"/unknown\" (known: /system TEXT, /reset, /quit;") != std::string::npos);
  CHECK(run.output.find("(unknown command \"/systemx\"") != std::string::npos);
  CHECK(run.output.find("(/system needs the text of the system message: /system TEXT)") != std::string::npos);
  CHECK(occurrences(run.output, "unknown command") == 2);  // not "//slash"
  CHECK(run.output.find("system message set") == std::string::npos);
  CHECK(occurrences(run.output, "> ") == 6);  // /quit ended it: "never read" got no prompt
}

TEST_CASE("a tokenizer.json that is a FIFO is named as one, not reported missing") {
  ModelFolder model("fifo-tokenizer");
  fs::remove(model.path / "tokenizer.json");
  REQUIRE(::mkfifo((model.path / "tokenizer.json").c_str(), 0600) == 0);
  const Run run = run_lamina("generate --model " + model.path.string() + " --prompt hello", {.timeout_seconds = 60});
  INFO(run.output);
  CHECK(run.status == 1);
  CHECK(run.output.find("tokenizer.json is a FIFO (named pipe), not a regular file") != std::string::npos);
}

TEST_CASE("bench: the help lists every suite; a missing --stories folder and a filter matching nothing are errors") {
  const Run suites = run_lamina("bench --help");
  const Run help = run_lamina("help");
  REQUIRE(suites.status == 0);
  const size_t bench_line = help.output.find("  bench ");
  REQUIRE(bench_line != std::string::npos);
  const std::string summary = help.output.substr(bench_line, help.output.find('\n', bench_line) - bench_line);
  for (const char* suite : {"ops", "generate", "train", "tokenizer", "preference", "attention", "allreduce"}) {
    CAPTURE(suite);
    CHECK(suites.output.find(std::string("  ") + suite + " ") != std::string::npos);
    CHECK(summary.find(suite) != std::string::npos);
  }
  const Run missing = run_lamina("bench generate --quick --filter stories260k --stories /nonexistent-stories");
  INFO(missing.output);
  CHECK(missing.status == 1);
  CHECK(missing.output.find("--stories /nonexistent-stories is not a folder (it does not exist)") != std::string::npos);
  const Run nothing = run_lamina("bench generate --quick --filter no-such-case");
  INFO(nothing.output);
  CHECK(nothing.status == 2);
  CHECK(nothing.output.find("--filter 'no-such-case' matches no case") != std::string::npos);
}

TEST_CASE("preference-loss: state files are named with the reason; an unwritable --save-state prints nothing") {
  ScratchDir dir("cli-hostile-preference");
  const std::string inputs = dir / "inputs.json";
  std::ofstream(inputs) << R"({"policy_logps": [-1, -2], "reference_logps": [-1, -1], "labels": [true, false]})";
  const std::string command = "preference-loss --loss bco --inputs " + inputs;

  const Run missing = run_lamina(command + " --state " + (dir / "absent.json"));
  INFO(missing.output);
  CHECK(missing.status == 1);
  CHECK(missing.output.find("--state: json: cannot open " + (dir / "absent.json") + ": No such file or directory") !=
        std::string::npos);

  std::ofstream(dir / "wrong.json") << R"({"type": "kto_kl_estimate", "last": 0, "batches": 1})";
  const Run wrong = run_lamina(command + " --state " + (dir / "wrong.json"));
  INFO(wrong.output);
  CHECK(wrong.status == 1);
  CHECK(wrong.output.find("--state " + (dir / "wrong.json") + ": running_reward_baseline state: \"type\" must be") !=
        std::string::npos);

  const Run unwritable = run_lamina(command + " --save-state /nonexistent-folder/state.json");
  INFO(unwritable.output);
  CHECK(unwritable.status == 1);
  CHECK(unwritable.output.find("cannot write /nonexistent-folder/state.json: No such file or directory") != std::string::npos);
  CHECK(unwritable.output.find("\"loss\"") == std::string::npos);

  const Run saved = run_lamina(command + " --save-state " + (dir / "state.json"));
  INFO(saved.output);
  CHECK(saved.status == 0);
  CHECK(json::parse_file(dir / "state.json").at("type").as_string() == "running_reward_baseline");
}

TEST_CASE("a usage error quoting input with a NUL byte shows it as \\x00, the message whole" * doctest::test_suite("assets")) {
  const std::string tokenizer_folder = testing::assets_dir("llama3-tokenizer").string();
  const Run run = run_lamina("detokenize --tokenizer " + tokenizer_folder, {.input = std::string("1 2\0x 3", 7)});
  CAPTURE(run.output);
  CHECK(run.status == 2);
  CHECK(run.output.find("'2\\x00x' is not a token id") != std::string::npos);
}
