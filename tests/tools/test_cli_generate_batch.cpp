// `lamina generate --prompts FILE.jsonl --batch N --output FILE.jsonl` end to end on a tiny model:
// the output lines, answers equal to single-prompt runs, resuming after an interrupted run,
// refusing an output that belongs to another run, and JSONL errors that name the line.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/peft.h"
#include "models/tokenizer/builder.h"
#include "nn/lora.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A tiny random model over the byte-level tokenizer, saved with it; a context of 64 tokens, so
// that the longest prompt below runs into it.
std::string tiny_model(const ScratchDir& dir) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.max_position_embeddings = 64;
  config.initializer_range = 1.0;
  llama::LlamaForCausalLM model(config);
  Generator generator(11);
  model.init_parameters(generator);
  model.save(dir.path.string());
  std::ofstream(dir.path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  return dir.path.string();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The output's lines ordered by their "index" (runs write them as prompts finish).
std::vector<std::string> by_index(const std::string& text) {
  std::vector<std::string> lines = lines_of(text);
  std::sort(lines.begin(), lines.end(), [](const std::string& a, const std::string& b) {
    return json::parse(a).at("index").as_int64() < json::parse(b).at("index").as_int64();
  });
  return lines;
}

// Seven prompts of every kind; the blank line is skipped, so the fourth prompt is on line 5.
const char* kPrompts =
    "{\"prompt\": \"Once upon a time\", \"id\": \"first\"}\n"
    "{\"prompt_ids\": [1, 72, 105]}\n"
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi there\"}], \"id\": 3}\n"
    "\n"
    "{\"prompt\": \"x\"}\n"
    "{\"prompt\": \"A longer prompt: fifty-six bytes, so the context ends it\"}\n"
    "{\"prompt_ids\": [1, 40, 41, 42, 43, 44, 45, 46, 47, 48]}\n"
    "{\"prompt\": \"The end\"}\n";

}  // namespace

TEST_CASE("lamina generate --prompts writes a line per prompt, each as a single-prompt run would") {
  ScratchDir dir("cli-generate-batch");
  const std::string model = tiny_model(dir);
  write_file(dir / "prompts.jsonl", kPrompts);
  const std::string common = "generate --model " + model + " --prompts " + (dir / "prompts.jsonl") + " --max-new-tokens 12 --no-stop";
  const Run run = run_lamina(common + " --batch 3 --output " + (dir / "out.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  CHECK(run.output.find("7/7 prompts done") != std::string::npos);
  const std::vector<std::string> lines = by_index(read_file(dir / "out.jsonl"));
  REQUIRE(lines.size() == 7);
  for (size_t i = 0; i < lines.size(); ++i) {
    CAPTURE(lines[i]);
    const json::Value line = json::parse(lines[i]);
    CHECK(line.at("index").as_int64() == int64_t(i));
    const int64_t completion_tokens = line.at("completion_tokens").as_int64();
    CHECK(int64_t(line.at("completion_ids").as_array().size()) == completion_tokens);
    CHECK(line.at("prompt_tokens").as_int64() + completion_tokens <= 64);
    CHECK(line.at("options").at("max_new_tokens").as_int64() == 12);
  }
  const json::Value first = json::parse(lines[0]);
  CHECK(first.at("id").as_string() == "first");
  CHECK(first.at("prompt").as_string() == "Once upon a time");
  CHECK(first.at("finish_reason").as_string() == "length");
  CHECK(json::parse(lines[2]).at("id").as_int64() == 3);
  CHECK(json::parse(lines[2]).at("prompt").as_string().find("Hi there") != std::string::npos);  // rendered as a chat
  CHECK(json::parse(lines[1]).find("id") == nullptr);
  // 56 bytes (and a BOS) leave no room for 12 new tokens in the context of 64.
  const json::Value clipped = json::parse(lines[4]);
  CHECK(clipped.at("finish_reason").as_string() == "context");
  CHECK(clipped.at("prompt_tokens").as_int64() + clipped.at("completion_tokens").as_int64() == 64);
  // The ids of the prompt_ids lines equal what the single-prompt command prints after the prompt.
  for (const auto& [index, ids] : std::vector<std::pair<size_t, std::string>>{{1, "1 72 105"}, {5, "1 40 41 42 43 44 45 46 47 48"}}) {
    CAPTURE(index);
    const Run single = run_lamina("generate --model " + model + " --prompt-ids \"" + ids + "\" --max-new-tokens 12 --no-stop");
    REQUIRE_MESSAGE(single.status == 0, single.output);
    std::string expected;
    for (const json::Value& id : json::parse(lines[index]).at("completion_ids").as_array())
      expected += " " + std::to_string(id.as_int64());
    CHECK(single.output.find(ids + expected + "\n") != std::string::npos);
  }
  // Another batch size writes the same lines.
  const Run one = run_lamina(common + " --batch 1 --output " + (dir / "one.jsonl"));
  REQUIRE_MESSAGE(one.status == 0, one.output);
  CHECK(by_index(read_file(dir / "one.jsonl")) == lines);
}

TEST_CASE("lamina generate --prompts resumes an interrupted run and refuses another run's output") {
  ScratchDir dir("cli-generate-batch-resume");
  const std::string model = tiny_model(dir);
  write_file(dir / "prompts.jsonl", kPrompts);
  // Sampling: each prompt draws from its own seed, so a resumed run's answers are the same.
  const std::string common = "generate --model " + model + " --prompts " + (dir / "prompts.jsonl") +
                             " --max-new-tokens 10 --temperature 1 --seed 42";
  const Run whole = run_lamina(common + " --batch 2 --output " + (dir / "whole.jsonl"));
  REQUIRE_MESSAGE(whole.status == 0, whole.output);
  const std::string complete = read_file(dir / "whole.jsonl");
  const std::vector<std::string> written = lines_of(complete);
  REQUIRE(written.size() == 7);
  // An interrupted run: three whole lines, then half of the fourth.
  write_file(dir / "partial.jsonl", written[0] + "\n" + written[1] + "\n" + written[2] + "\n" +
                                        written[3].substr(0, written[3].size() / 2));
  const Run resumed = run_lamina(common + " --batch 3 --output " + (dir / "partial.jsonl"));
  REQUIRE_MESSAGE(resumed.status == 0, resumed.output);
  CHECK(resumed.output.find("unfinished last line") != std::string::npos);
  CHECK(resumed.output.find("3 of 7 prompts are already in") != std::string::npos);
  const std::string after = read_file(dir / "partial.jsonl");
  CHECK(lines_of(after).size() == 7);
  CHECK(by_index(after) == by_index(complete));
  // A finished output is left alone.
  const Run again = run_lamina(common + " --output " + (dir / "partial.jsonl"));
  CHECK(again.status == 0);
  CHECK(again.output.find("all 7 prompts are already in") != std::string::npos);
  CHECK(read_file(dir / "partial.jsonl") == after);
  // Other options, or another prompts file, are refused and the file is kept.
  const Run other_options = run_lamina(common + " --top-k 5 --output " + (dir / "partial.jsonl"));
  CHECK(other_options.status == 1);
  CHECK(other_options.output.find("was written with other options") != std::string::npos);
  write_file(dir / "short.jsonl", "{\"prompt\": \"Once upon a time\", \"id\": \"first\"}\n");
  const Run other_prompts = run_lamina("generate --model " + model + " --prompts " + (dir / "short.jsonl") +
                                       " --max-new-tokens 10 --temperature 1 --seed 42 --output " + (dir / "partial.jsonl"));
  CHECK(other_prompts.status == 1);
  CHECK(other_prompts.output.find("belongs to another prompts file") != std::string::npos);
  CHECK(read_file(dir / "partial.jsonl") == after);
  write_file(dir / "garbage.jsonl", "not json\n");
  const Run garbage = run_lamina(common + " --output " + (dir / "garbage.jsonl"));
  CHECK(garbage.status == 1);
  CHECK(garbage.output.find("garbage.jsonl:1 is not a line of this command") != std::string::npos);
}

TEST_CASE("lamina generate --prompts names the file and line of a malformed prompt") {
  ScratchDir dir("cli-generate-batch-errors");
  const std::string model = tiny_model(dir);
  const std::string command = "generate --model " + model + " --prompts " + (dir / "prompts.jsonl") + " --output " + (dir / "out.jsonl");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"prompt\": \"a\"}\n\n{\"prompt\": \"b\"\n", "prompts.jsonl:3: not a JSON line"},
      {"{\"prompt\": \"a\"}\n{\"promt\": \"b\"}\n", "prompts.jsonl:2: unknown key \"promt\""},
      {"{\"prompt\": \"a\", \"prompt_ids\": [1]}\n", "prompts.jsonl:1: give exactly one of"},
      {"{\"prompt_ids\": [1, 100000]}\n", "prompts.jsonl:1 has token id 100000"},
      {"[1, 2]\n", "prompts.jsonl:1: expected a JSON object"},
      {"{\"messages\": [{\"role\": \"user\"}]}\n", "prompts.jsonl:1: each message needs"},
  };
  for (const auto& [text, expected] : cases) {
    CAPTURE(text);
    write_file(dir / "prompts.jsonl", text);
    const Run run = run_lamina(command);
    CHECK(run.status == 1);
    CHECK_MESSAGE(run.output.find(expected) != std::string::npos, run.output);
    CHECK_FALSE(fs::exists(dir / "out.jsonl"));  // nothing written before the whole file is read
  }
  const Run no_output = run_lamina("generate --model " + model + " --prompts " + (dir / "prompts.jsonl"));
  CHECK(no_output.status == 2);
  CHECK(no_output.output.find("--prompts needs --output") != std::string::npos);
  const Run mixed = run_lamina(command + " --prompt hi");
  CHECK(mixed.status == 2);
  const Run help = run_lamina("generate --help");
  CHECK(help.status == 0);
  CHECK(help.output.find("--prompts") != std::string::npos);
  CHECK(help.output.find("--batch") != std::string::npos);
}

TEST_CASE("lamina generate --prompts runs each line with the adapter it names, as --adapter alone would") {
  ScratchDir dir("cli-generate-batch-adapters");
  const std::string model = tiny_model(dir);
  // Two adapters with non-zero B on the same base, saved as PEFT folders.
  for (const char* name : {"math", "poetry"}) {
    const auto base = llama::LlamaForCausalLM::load(model);
    nn::LoraConfig config;
    config.target_modules = {"all-linear"};
    config.options.rank = 2;
    config.options.init = nn::LoraInit::random;
    config.seed = uint64_t(name[0]);
    nn::apply_lora(*base, config);
    peft::save_adapter(dir / name, *base, config);
  }
  write_file(dir / "prompts.jsonl",
             "{\"prompt\": \"Once upon a time\", \"adapter\": \"poetry\"}\n"
             "{\"prompt\": \"Once upon a time\", \"adapter\": \"math\"}\n"
             "{\"prompt\": \"Once upon a time\", \"adapter\": null}\n"
             "{\"prompt\": \"Once upon a time\"}\n");
  const std::string adapters = " --adapter math=" + (dir / "math") + ",poetry=" + (dir / "poetry");
  const std::string common = "generate --model " + model + " --max-new-tokens 10 --no-stop";
  const Run run = run_lamina(common + adapters + " --prompts " + (dir / "prompts.jsonl") + " --batch 4 --output " +
                             (dir / "out.jsonl"));
  REQUIRE_MESSAGE(run.status == 0, run.output);
  const std::vector<std::string> lines = by_index(read_file(dir / "out.jsonl"));
  REQUIRE(lines.size() == 4);
  // Each line's completion is what a single-prompt run with that adapter alone (or none) gives.
  const auto single = [&](const std::string& flags) {
    const Run alone = run_lamina(common + " --prompt \"Once upon a time\" --output ids" + flags);
    REQUIRE_MESSAGE(alone.status == 0, alone.output);
    return alone.output;
  };
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"poetry", single(" --adapter " + (dir / "poetry"))},
      {"math", single(" --adapter " + (dir / "math"))},
      {"", single("")},
      {"math", single(" --adapter " + (dir / "math"))}};  // no "adapter": the first of --adapter
  std::set<std::string> completions;
  for (size_t i = 0; i < lines.size(); ++i) {
    CAPTURE(lines[i]);
    const json::Value line = json::parse(lines[i]);
    if (expected[i].first.empty())
      CHECK(line.at("adapter").is_null());
    else
      CHECK(line.at("adapter").as_string() == expected[i].first);
    std::string ids;
    for (const json::Value& id : line.at("completion_ids").as_array()) ids += " " + std::to_string(id.as_int64());
    CHECK(expected[i].second.find(ids + "\n") != std::string::npos);
    completions.insert(ids);
  }
  CHECK(completions.size() == 3);  // the three choices answer differently
  CHECK(json::parse(lines[0]).at("options").at("adapters").at("poetry").as_string() == dir / "poetry");
  // A line naming an adapter that was not given is an error naming the line.
  write_file(dir / "bad.jsonl", "{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"adapter\": \"chemistry\"}\n");
  const Run bad = run_lamina(common + adapters + " --prompts " + (dir / "bad.jsonl") + " --output " + (dir / "bad-out.jsonl"));
  CHECK(bad.status == 1);
  CHECK(bad.output.find("bad.jsonl:2: no adapter named 'chemistry' (--adapter gave: math, poetry)") != std::string::npos);
  const Run none = run_lamina(common + " --prompts " + (dir / "bad.jsonl") + " --output " + (dir / "bad-out.jsonl"));
  CHECK(none.status == 1);
  CHECK(none.output.find("bad.jsonl:2: the line asks for adapter 'chemistry' but no --adapter was given") != std::string::npos);
  const Run twice = run_lamina(common + " --adapter a=" + (dir / "math") + ",a=" + (dir / "poetry") + " --prompt x");
  CHECK(twice.status == 2);
  CHECK(twice.output.find("--adapter names 'a' twice") != std::string::npos);
}
