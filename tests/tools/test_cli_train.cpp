// `lamina train`, `lamina plot` and `lamina demo` end to end, on tiny settings.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "models/llama/config.h"
#include "models/tokenizer/builder.h"
#include "train/metrics.h"

using namespace lamina;
namespace fs = std::filesystem;

namespace {

struct Run {
  int status = -1;
  std::string output;
};

Run run_lamina(const std::string& arguments) {
  const std::string command = std::string(LAMINA_CLI_PATH) + " " + arguments + " 2>&1";
  Run run;
  std::FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) run.output.append(buffer, read);
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

// A folder with a tiny model config, the byte-level tokenizer and some data.
struct Workspace {
  fs::path path;
  Workspace() : path(fs::temp_directory_path() / ("lamina-cli-train-" + std::to_string(::getpid()))) {
    fs::remove_all(path);
    fs::create_directories(path);
    const json::Value tokenizer = tokenizer::byte_level_tokenizer_json();
    std::ofstream(path / "tokenizer.json") << tokenizer.dump();
    llama::LlamaConfig config;
    config.vocab_size = tokenizer::byte_level_tokenizer().vocab_size();
    config.hidden_size = 16;
    config.intermediate_size = 32;
    config.num_hidden_layers = 1;
    config.num_attention_heads = 2;
    config.num_key_value_heads = 1;
    config.head_dim = 8;
    config.bos_token_id = 256;
    config.eos_token_ids = {257};
    config.dtype = DType::f32;
    std::ofstream(path / "config.json") << config.to_json().dump();
    std::ofstream text(path / "text.jsonl");
    for (int i = 0; i < 30; ++i) text << R"({"text": "the number )" << i << R"( comes after )" << i - 1 << R"(."})" << "\n";
    std::ofstream chat(path / "chat.jsonl");
    for (int i = 0; i < 12; ++i)
      chat << R"({"messages": [{"role": "user", "content": "next after )" << i << R"("}, {"role": "assistant", "content": ")" << i + 1
           << R"("}]})" << "\n";
  }
  ~Workspace() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

}  // namespace

TEST_CASE("pretrain from a config, resume, fine-tune, generate from the result and plot") {
  Workspace w;
  const std::string pretrain = "train pretrain --config " + (w / "config.json") + " --tokenizer " + (w / "tokenizer.json") +
                               " --data " + (w / "text.jsonl") + " --output " + (w / "pre") +
                               " --batch-size 2 --seq-len 32 --save-every 2 --quiet --steps ";
  Run run = run_lamina(pretrain + "4");
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(train::read_metrics(w / "pre/metrics.jsonl").size() == 4);
  CHECK(fs::exists(w / "pre/model/model.safetensors"));
  CHECK(fs::exists(w / "pre/model/tokenizer.json"));
  CHECK(fs::exists(w / "pre/checkpoints/step-00000004/optimizer.safetensors"));
  // Asking for more steps with --resume continues from step 4.
  run = run_lamina(pretrain + "6 --resume");
  REQUIRE(run.status == 0);
  CHECK(run.output.find("resuming from") != std::string::npos);
  const std::vector<json::Value> lines = train::read_metrics(w / "pre/metrics.jsonl");
  REQUIRE(lines.size() == 6);
  CHECK(lines.back().at("step").as_int64() == 6);
  // Fine-tune the pretrained model on chats, then generate from it.
  run = run_lamina("train sft --model " + (w / "pre/model") + " --data " + (w / "chat.jsonl") + " --output " + (w / "sft") +
                   " --steps 3 --batch-size 2 --seq-len 48 --quiet");
  REQUIRE(run.status == 0);
  CHECK(run.output.find("fine-tuned 3 steps") != std::string::npos);
  run = run_lamina("generate --model " + (w / "sft/model") + " --prompt \"next after 3\" --chat --max-new-tokens 3 --output ids");
  CHECK(run.status == 0);
  // Mixed precision: bf16 weights are what the run trains and saves.
  run = run_lamina("train sft --model " + (w / "pre/model") + " --data " + (w / "chat.jsonl") + " --output " +
                   (w / "sft-bf16") + " --steps 2 --batch-size 2 --seq-len 48 --quiet --precision bf16");
  REQUIRE(run.status == 0);
  CHECK(json::parse_file(w / "sft-bf16/model/config.json").at("torch_dtype").as_string() == "bfloat16");
  run = run_lamina("plot " + (w / "pre/metrics.jsonl") + " --output " + (w / "loss.svg"));
  CHECK(run.status == 0);
  std::ifstream svg(w / "loss.svg");
  std::string first_line;
  std::getline(svg, first_line);
  CHECK(first_line.rfind("<svg", 0) == 0);
}

TEST_CASE("bad training input: clear errors, non-zero exit, no crash") {
  Workspace w;
  std::ofstream(w / "bad.jsonl") << R"({"text": "fine"})" << "\n" << R"({"txt": "typo"})" << "\n";
  const std::string base = "train pretrain --config " + (w / "config.json") + " --tokenizer " + (w / "tokenizer.json") +
                           " --output " + (w / "out") + " --steps 1 --batch-size 1 --seq-len 16 --quiet --data ";
  Run run = run_lamina(base + (w / "bad.jsonl"));
  CHECK(run.status == 1);
  CHECK(run.output.find("bad.jsonl:2: expected a \"text\"") != std::string::npos);
  run = run_lamina(base + (w / "bad.jsonl") + " --skip-malformed");
  CHECK(run.status == 0);
  CHECK(run.output.find("skipped 1 malformed lines of 2") != std::string::npos);
  run = run_lamina(base + (w / "text.jsonl") + " --batch-size 3 --micro-batch-size 2");
  CHECK(run.status == 1);
  CHECK(run.output.find("not a multiple of the micro-batch size") != std::string::npos);
  std::ofstream(w / "options.json") << R"({"learning-rate": 1})";
  run = run_lamina(base + (w / "text.jsonl") + " --options " + (w / "options.json"));
  CHECK(run.status == 1);
  CHECK(run.output.find("unknown key \"learning-rate\"") != std::string::npos);
  run = run_lamina(base + (w / "text.jsonl") + " --device tpu");
  CHECK(run.status != 0);
  CHECK(run.output.find("unknown device 'tpu' (expected cpu, cuda or cuda:N)") != std::string::npos);
  run = run_lamina(base + (w / "text.jsonl") + " --precision fp8");
  CHECK(run.status != 0);
  CHECK(run.output.find("precision must be auto, f32 or bf16, got 'fp8'") != std::string::npos);
  CHECK(run_lamina("train pretrian").status == 2);
  CHECK(run_lamina("train sft --data x.jsonl --output o").status == 2);  // no --model
  run = run_lamina("plot " + (w / "missing.jsonl"));
  CHECK(run.status == 1);
  CHECK(run.output.find("cannot open") != std::string::npos);
}

TEST_CASE("lamina demo --quick runs the whole pipeline") {
  const fs::path output = fs::temp_directory_path() / ("lamina-demo-test-" + std::to_string(::getpid()));
  const Run run = run_lamina("demo --quick --output " + output.string());
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("| after fine-tuning |") != std::string::npos);
  for (const char* file : {"model/model.safetensors", "model/tokenizer.json", "pretrain/metrics.jsonl", "pretrain/loss.svg",
                           "sft/metrics.jsonl", "sft/loss.svg"})
    CHECK(fs::exists(output / file));
  fs::remove_all(output);
}
