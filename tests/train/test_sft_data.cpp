// Supervised fine-tuning data that must not train on nothing: chat roles are checked (a
// misspelt role is an error, ShareGPT's names are read), lines without a target token are
// malformed, long examples are fitted to rows keeping their prompt (counted), the loader
// refuses what it would otherwise cut silently, and token shards are checked against the
// vocabulary.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "helpers.h"
#include "scratch_dir.h"
#include "models/tokenizer/builder.h"
#include "train/data.h"
#include "train/metrics.h"

using namespace lamina;
namespace fs = std::filesystem;

namespace {

const tokenizer::Tokenizer& byte_tokenizer() {
  static const tokenizer::Tokenizer tok = tokenizer::byte_level_tokenizer();
  return tok;
}

// Reads `lines` as a JSONL file named "data.jsonl" (errors name it).
std::vector<train::Example> read_lines(const std::string& lines, const train::JsonlOptions& options = {},
                                       train::JsonlStats* stats = nullptr) {
  std::istringstream in(lines);
  return train::read_jsonl(in, "data.jsonl", byte_tokenizer(), options, stats);
}

// The text of the tokens an example learns.
std::string learned_text(const train::Example& example) {
  std::string text;
  for (size_t i = 1; i < example.ids.size(); ++i)
    if (example.loss_mask[i]) text += std::string(byte_tokenizer().token_bytes(example.ids[i]));
  return text;
}

train::Example masked(std::vector<int32_t> ids, std::vector<uint8_t> mask) { return {std::move(ids), std::move(mask)}; }

}  // namespace

TEST_CASE("SFT data: a role outside the chat format is an error naming the line, the role and the accepted roles") {
  const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})";
  const std::string typo = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "Assistant", "content": "yo"}]})";
  CHECK_THROWS_WITH_AS(read_lines(good + "\n" + typo + "\n"),
                       doctest::Contains("data.jsonl:2: messages[1].role: unknown role \"Assistant\" (accepted: system, "
                                         "user, assistant; roles are case-sensitive: did you mean \"assistant\"?)"),
                       Error);
  // ShareGPT's names in the "messages" layout are unknown roles there, not silently unlearned turns.
  const std::string sharegpt_names = R"({"messages": [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}]})";
  CHECK_THROWS_WITH_AS(read_lines(sharegpt_names),
                       doctest::Contains("data.jsonl:1: messages[0].role: unknown role \"human\" (accepted: system, user, "
                                         "assistant; \"human\" and \"gpt\" are ShareGPT's names, read from "
                                         "{\"conversations\": [{\"from\", \"value\"}]})"),
                       Error);
  // Llama-3 has no tool role; Llama-3.1 has ipython, and HF's "tool" is written as ipython.
  const std::string tool = R"({"messages": [{"role": "user", "content": "2+2"}, {"role": "tool", "content": "4"}, )"
                           R"({"role": "assistant", "content": "four"}]})";
  CHECK_THROWS_WITH_AS(read_lines(tool), doctest::Contains("unknown role \"tool\" (accepted: system, user, assistant)"), Error);
  train::JsonlOptions llama31;
  llama31.chat.format = tokenizer::ChatFormat::llama3_1;
  const std::vector<train::Example> with_tool = read_lines(tool, llama31);
  REQUIRE(with_tool.size() == 1);
  const std::string text = byte_tokenizer().decode(with_tool[0].ids);
  CHECK(text.find("<|start_header_id|>ipython<|end_header_id|>\n\n4<|eot_id|>") != std::string::npos);
  CHECK(learned_text(with_tool[0]) == "four<|eot_id|>");
}

TEST_CASE("SFT data: the ShareGPT layout reads as the same chat, auto-detected or named") {
  const std::string sharegpt = R"({"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"}, )"
                               R"({"from": "gpt", "value": "yo"}]})";
  const std::string messages = R"({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, )"
                               R"({"role": "assistant", "content": "yo"}]})";
  const std::vector<train::Example> from_sharegpt = read_lines(sharegpt);
  const std::vector<train::Example> from_messages = read_lines(messages);
  REQUIRE(from_sharegpt.size() == 1);
  REQUIRE(from_messages.size() == 1);
  CHECK(from_sharegpt[0].ids == from_messages[0].ids);
  CHECK(from_sharegpt[0].loss_mask == from_messages[0].loss_mask);
  CHECK(learned_text(from_sharegpt[0]) == "yo<|eot_id|>");

  train::JsonlOptions named;
  named.format = train::data_format_from_name("sharegpt");
  CHECK(read_lines(sharegpt, named)[0].ids == from_messages[0].ids);
  CHECK_THROWS_WITH_AS(read_lines(messages, named), doctest::Contains("data.jsonl:1: missing \"conversations\" field"), Error);
  const std::string bot = R"({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]})";
  CHECK_THROWS_WITH_AS(read_lines(bot), doctest::Contains("conversations[1].from: unknown role \"bot\" (accepted: human, gpt, system)"),
                       Error);
  const std::string call = R"({"conversations": [{"from": "human", "value": "hi"}, {"from": "function_call", "value": "{}"}]})";
  CHECK_THROWS_WITH_AS(read_lines(call), doctest::Contains("unknown role \"function_call\""), Error);
  const std::string role_keys = R"({"conversations": [{"role": "user", "content": "hi"}]})";
  CHECK_THROWS_WITH_AS(read_lines(role_keys), doctest::Contains("conversations[0]: missing \"from\""), Error);
}

TEST_CASE("SFT data: a line with no target token is malformed, and a dataset of only such lines says why") {
  const std::string system_only = R"({"messages": [{"role": "system", "content": "you help"}, {"role": "user", "content": "hi"}]})";
  const std::string good = R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})";
  CHECK_THROWS_WITH_AS(read_lines(good + "\n" + system_only + "\n"),
                       doctest::Contains("data.jsonl:2: no target tokens: no message has the role \"assistant\""), Error);
  const std::string no_gpt = R"({"conversations": [{"from": "human", "value": "hi"}]})";
  CHECK_THROWS_WITH_AS(read_lines(no_gpt), doctest::Contains("data.jsonl:1: no target tokens: no message is from \"gpt\""), Error);

  train::JsonlOptions lenient;
  lenient.skip_malformed = true;
  train::JsonlStats stats;
  const std::vector<train::Example> kept = read_lines(good + "\n" + system_only + "\n" + good + "\n", lenient, &stats);
  CHECK(kept.size() == 2);
  CHECK(stats.skipped == 1);
  CHECK(stats.first_skipped.find("data.jsonl:2: no target tokens") != std::string::npos);
  CHECK_THROWS_WITH_AS(read_lines(system_only + "\n" + no_gpt + "\n", lenient),
                       doctest::Contains("data.jsonl: all 2 lines were skipped as malformed (first: data.jsonl:1: no target tokens"),
                       Error);

  // An empty completion learns only the end of text; without it, nothing.
  train::JsonlOptions no_eos;
  no_eos.add_eos = false;
  CHECK(read_lines(R"({"prompt": "Q", "completion": ""})").size() == 1);
  CHECK_THROWS_WITH_AS(read_lines(R"({"prompt": "Q", "completion": ""})", no_eos),
                       doctest::Contains("data.jsonl:1: no target tokens: \"completion\" adds nothing to predict (it is empty"), Error);
}

TEST_CASE("SFT data: malformed messages name the field") {
  const auto error_of = [](const std::string& line) {
    try {
      read_lines(line);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  CHECK(error_of(R"({"messages": [{"content": "hi"}]})") == "data.jsonl:1: messages[0]: missing \"role\"");
  CHECK(error_of(R"({"messages": [{"role": "user"}]})") == "data.jsonl:1: messages[0]: missing \"content\"");
  CHECK(error_of(R"({"messages": [{"role": 3, "content": "hi"}]})") == "data.jsonl:1: messages[0].role: expected a string, got number");
  CHECK(error_of(R"({"messages": [{"role": "user", "content": null}]})") ==
        "data.jsonl:1: messages[0].content: expected a string, got null");
  CHECK(error_of(R"({"messages": ["hi"]})") == "data.jsonl:1: messages[0]: expected an object, got string");
  CHECK(error_of(R"({"messages": {"role": "user"}})") == "data.jsonl:1: \"messages\": expected an array, got object");
  CHECK(error_of(R"({"messages": []})") == "data.jsonl:1: \"messages\" is empty");
  CHECK(error_of(R"({"prompt": "Q"})") == "data.jsonl:1: missing \"completion\" field");
}

TEST_CASE("fit_examples: plain text is cut, masked examples keep their prompt or are dropped, and it is counted") {
  const train::Example text = masked({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {0, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  const train::Example short_chat = masked({1, 2, 3, 4}, {0, 0, 1, 1});
  const train::Example long_answer = masked({1, 2, 3, 4, 5, 6, 7, 8}, {0, 0, 0, 1, 1, 1, 1, 1});
  const train::Example long_prompt = masked({1, 2, 3, 4, 5, 6, 7, 8}, {0, 0, 0, 0, 0, 0, 1, 1});
  train::FitStats stats;
  const std::vector<train::Example> fitted = train::fit_examples({text, short_chat, long_answer, long_prompt}, 5, &stats);
  REQUIRE(fitted.size() == 4);
  CHECK(fitted[0].ids == std::vector<int32_t>{1, 2, 3, 4, 5});
  CHECK(fitted[1].ids == std::vector<int32_t>{6, 7, 8, 9, 10});
  CHECK(fitted[2].ids == short_chat.ids);
  // The answer keeps its question: the head, with the answer's first two tokens.
  CHECK(fitted[3].ids == std::vector<int32_t>{1, 2, 3, 4, 5});
  CHECK(fitted[3].loss_mask == std::vector<uint8_t>{0, 0, 0, 1, 1});
  CHECK(stats.too_long == 3);
  CHECK(stats.chunked == 1);
  CHECK(stats.pieces == 2);
  CHECK(stats.truncated == 1);
  CHECK(stats.targets_truncated == 3);
  CHECK(stats.dropped == 1);
  CHECK(stats.summary() == "3 examples longer than 5 tokens: 1 plain-text cut into 2 pieces, 1 truncated keeping the prompt "
                           "(3 target tokens cut off), 1 dropped (the prompt alone exceeds the limit)");
  train::FitStats nothing;
  CHECK(train::fit_examples({short_chat}, 5, &nothing).size() == 1);
  CHECK(nothing.summary().empty());
}

TEST_CASE("DataLoader: an example longer than a row is an error rather than silently cut") {
  const train::Example fits = masked({1, 2, 3}, {0, 1, 1});
  const train::Example too_long = masked({1, 2, 3, 4, 5, 6}, {0, 0, 0, 0, 1, 1});
  const train::LoaderOptions options{1, 4, true, false, 0, 0};
  CHECK_THROWS_WITH_AS(train::DataLoader({fits, too_long}, options),
                       doctest::Contains("DataLoader: example 1 of 2 has 6 tokens, more than a row holds (seq_len + 1 = 5)"), Error);
  train::DataLoader loader({fits, masked({1, 2, 3, 4, 5}, {0, 0, 0, 0, 1})}, options);
  CHECK(loader.next().target_tokens == 2);
  CHECK(loader.next().target_tokens == 1);
}

TEST_CASE("read_jsonl reports progress in bytes, ending at the file's size") {
  const lamina::testing::ScratchDir scratch("progress-jsonl");  // its own folder: the ASan twin runs beside
  const fs::path path = scratch.path / "lamina-test-progress.jsonl";
  std::string lines;
  for (int i = 0; i < 50; ++i) lines += R"({"text": "line )" + std::to_string(i) + "\"}\n";
  std::ofstream(path, std::ios::binary) << lines;
  std::vector<std::pair<int64_t, int64_t>> calls;
  train::JsonlOptions options;
  options.on_progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  CHECK(train::read_jsonl(path.string(), byte_tokenizer(), options).size() == 50);
  REQUIRE(!calls.empty());
  CHECK(calls.back() == std::pair<int64_t, int64_t>(int64_t(lines.size()), int64_t(lines.size())));
  for (size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first >= calls[i - 1].first);
  fs::remove(path);
}

TEST_CASE("token shards: ids outside the vocabulary and malformed headers are errors naming the place") {
  const lamina::testing::ScratchDir scratch("vocab-bin");  // its own folder: the ASan twin runs beside
  const fs::path path = scratch.path / "lamina-test-vocab.bin";
  train::write_token_shard(path.string(), {5, 7, 300, 2}, 2);
  CHECK(train::read_token_shard(path.string(), 8).size() == 1);
  CHECK_THROWS_WITH_AS(train::read_token_shard(path.string(), 8, 256),
                       doctest::Contains("lamina-test-vocab.bin: token 2 (byte 20) is id 300, outside the model's vocabulary of 256"),
                       Error);
  std::string header("LMTOKENS\x02\x00\x01\x00\x00\x00\x00\x00", 16);  // width 0x10002: not 2
  CHECK_THROWS_WITH_AS(train::parse_token_shard(header + "ab", "odd.bin", 8), doctest::Contains("odd.bin: unsupported token width 65538"),
                       Error);
  std::string truncated("LMTOKENS\x04\x00\x00\x00\x00\x00\x00\x00", 16);
  CHECK_THROWS_WITH_AS(train::parse_token_shard(truncated + "abc", "short.bin", 8), doctest::Contains("short.bin: truncated"), Error);
  fs::remove(path);
}

TEST_CASE("training data and metrics readers refuse a FIFO instead of waiting for a writer forever") {
  const fs::path dir = fs::temp_directory_path() / ("lamina-data-fifo-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  for (const char* name : {"data.jsonl", "tokens.bin", "metrics.jsonl"})
    REQUIRE(::mkfifo((dir / name).c_str(), 0600) == 0);
  const auto fifo = [&](const char* name) { return (dir / name).string() + " is a FIFO (named pipe), not a regular file"; };
  CHECK_THROWS_WITH_AS(train::read_jsonl((dir / "data.jsonl").string(), byte_tokenizer()),
                       doctest::Contains(fifo("data.jsonl").c_str()), Error);
  CHECK_THROWS_WITH_AS(train::read_token_shard((dir / "tokens.bin").string(), 16, 300),
                       doctest::Contains(fifo("tokens.bin").c_str()), Error);
  CHECK_THROWS_WITH_AS(train::read_metrics((dir / "metrics.jsonl").string()), doctest::Contains(fifo("metrics.jsonl").c_str()),
                       Error);
  fs::remove_all(dir);
}
