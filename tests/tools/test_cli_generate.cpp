// `lamina generate` and `lamina chat` at their limits: prompts and conversations against the
// model's context, bad ids, extreme sampling flags, streamed ids, and broken weights.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/real_model.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A tiny random model over the byte-level tokenizer (saved beside it), with a short context.
// `nan_token`: that token's embedding is NaN and every other weight is zero, so the logits are
// all 0 (greedy picks token 0) until the token is fed back.
std::string tiny_model(const ScratchDir& dir, int64_t context_length, int64_t nan_token = -1) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.max_position_embeddings = context_length;
  config.initializer_range = 1.0;
  llama::LlamaForCausalLM model(config);
  if (nan_token < 0) {
    Generator gen(5);
    model.init_parameters(gen);
  } else {
    float* embedding = model.parameter("model.embed_tokens.weight").data<float>();
    for (int64_t i = 0; i < config.hidden_size; ++i) embedding[nan_token * config.hidden_size + i] = std::nanf("");
  }
  model.save(dir.path.string());
  std::ofstream(dir.path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  return dir.path.string();
}

std::string counting_ids(int64_t count) {
  std::string ids;
  for (int64_t i = 0; i < count; ++i) ids += (i ? " " : "") + std::to_string(32 + i % 90);
  return ids;
}

size_t occurrences(const std::string& text, const std::string& part) {
  size_t count = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++count;
  return count;
}

}  // namespace

TEST_CASE("lamina generate refuses a prompt longer than the context and clips the answer to it") {
  ScratchDir dir("cli-generate-context");
  const std::string model = tiny_model(dir, 32);
  Run run = run_lamina("generate --model " + model + " --prompt-ids \"" + counting_ids(33) + "\" --max-new-tokens 1");
  CHECK(run.status == 1);
  CHECK(run.output.find("error: lamina generate: the prompt has 33 tokens, more than the model's context of 32 tokens") !=
        std::string::npos);
  run = run_lamina("generate --model " + model + " --prompt-ids \"" + counting_ids(30) +
                   "\" --max-new-tokens 10 --no-stop");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("note: generating at most 2 new tokens, not 10") != std::string::npos);
  CHECK(ids_of(last_line(run.output)).size() == 32);
  // Text prompts too: 40 bytes of text are 40 tokens of the byte-level tokenizer.
  run = run_lamina("generate --model " + model + " --prompt \"" + std::string(40, 'a') + "\"");
  CHECK(run.status == 1);
  CHECK(run.output.find("more than the model's context of 32 tokens") != std::string::npos);
}

TEST_CASE("lamina generate: bad prompt ids, no new tokens, an empty prompt and a tiny temperature") {
  ScratchDir dir("cli-generate-flags");
  const std::string model = tiny_model(dir, 64);
  const std::string vocab = std::to_string(tokenizer::byte_level_tokenizer().vocab_size());
  for (const std::string& bad : {std::string("999"), std::string("-3"), vocab}) {
    const Run run = run_lamina("generate --model " + model + " --prompt-ids \"1 " + bad + "\"");
    CHECK(run.status == 1);
    CHECK(run.output.find("--prompt-ids has token id " + bad + ", outside the model's vocabulary of " + vocab + " tokens") !=
          std::string::npos);
  }
  Run run = run_lamina("generate --model " + model + " --prompt-ids \"1 5 9\" --max-new-tokens 0");
  CHECK(run.status == 0);
  CHECK(run.output == "1 5 9\n");
  run = run_lamina("generate --model " + model + " --prompt \"\" --max-new-tokens 2");
  CHECK(run.status == 2);
  CHECK(run.output.find("error: lamina generate:") != std::string::npos);
  CHECK(run.output.find("--prompt") != std::string::npos);
  // A temperature whose scaled logits overflow samples like greedy decoding.
  const std::string prompt = "generate --model " + model + " --prompt-ids \"1 5 9\" --max-new-tokens 6 --no-stop";
  const Run greedy = run_lamina(prompt);
  REQUIRE(greedy.status == 0);
  REQUIRE(ids_of(greedy.output).size() == 9);
  run = run_lamina(prompt + " --temperature 1e-308");
  CHECK(run.status == 0);
  CHECK(run.output == greedy.output);
}

TEST_CASE("lamina generate streams ids as it goes and stops at non-finite logits") {
  ScratchDir dir("cli-generate-nan");
  const std::string model = tiny_model(dir, 64, 0);
  const Run run = run_lamina("generate --model " + model + " --prompt-ids \"1 5\" --max-new-tokens 5 --no-stop");
  INFO(run.output);
  CHECK(run.status == 1);
  // The prompt and the first new id were printed before the second step failed.
  CHECK(run.output.rfind("1 5 0\n", 0) == 0);
  CHECK(run.output.find("error: generate: the model produced a non-finite logit (NaN for token 0) at step 1 (new token 2) "
                        "of sequence 0; check the model's weights") != std::string::npos);
}

TEST_CASE("lamina chat keeps the conversation within the context and survives bad input") {
  ScratchDir dir("cli-generate-chat");
  const std::string model = tiny_model(dir, 160);
  const std::string chat = "chat --model " + model + " --max-new-tokens 8";
  // A message of 30 bytes is 39 tokens of the byte-level tokenizer with its header, an answer
  // 13 or more: the fourth message leaves no room for 8 new tokens until the oldest are dropped.
  std::string messages;
  for (const char* ordinal : {"first", "second", "third", "fourth"}) {
    const std::string message = std::string(ordinal) + " question, at length";
    messages += message + std::string(30 - message.size(), '.') + "\n";
  }
  const Run run = run_lamina(chat, {.input = messages});
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("oldest messages to fit the model's context of 160 tokens)") != std::string::npos);
  CHECK(run.output.find("error") == std::string::npos);
  // A message that cannot fit even alone is refused and the chat goes on; so is an endless line.
  const std::string input = std::string(200, 'x') + "\nshort\n" + std::string(size_t(3) << 20, 'y') + "\nlast words";
  const Run refused = run_lamina(chat, {.input = input});
  INFO(refused.output);
  CHECK(refused.status == 0);
  CHECK(refused.output.find("system message it takes 2") != std::string::npos);
  CHECK(refused.output.find("(line ignored: it is longer than 1048576 bytes") != std::string::npos);
  // Every line got its prompt, and the input's end (without a newline) ended the chat cleanly.
  CHECK(occurrences(refused.output, "> ") >= 5);
  // A system message that fills the context is refused too.
  const Run system = run_lamina(chat + " --system " + std::string(170, 's'));
  CHECK(system.status == 1);
  CHECK(system.output.find("the --system message takes") != std::string::npos);
  const Run system_command = run_lamina(chat, {.input = "/system " + std::string(170, 's') + "\nhello\n"});
  CHECK(system_command.status == 0);
  CHECK(system_command.output.find("(system message not set") != std::string::npos);
  // A model folder without tokenizer.json.
  fs::remove(dir.path / "tokenizer.json");
  const Run no_tokenizer = run_lamina(chat, {.input = "hello\n"});
  CHECK(no_tokenizer.status == 1);
  CHECK(no_tokenizer.output.find("has no tokenizer.json; pass --tokenizer PATH") != std::string::npos);
}

TEST_CASE("stories260k: a prompt past its context of 512 is refused; a long one leaves room to the end" * doctest::test_suite("assets")) {
  const fs::path dir = testing::assets_dir("stories260k");
  Run run = run_lamina("generate --model " + dir.string() + " --prompt-ids \"" + counting_ids(513) + "\"");
  CHECK(run.status == 1);
  CHECK(run.output.find("the prompt has 513 tokens, more than the model's context of 512 tokens") != std::string::npos);
  run = run_lamina("generate --model " + dir.string() + " --prompt-ids \"" + counting_ids(500) +
                   "\" --max-new-tokens 40 --no-stop");
  CHECK(run.status == 0);
  CHECK(run.output.find("note: generating at most 12 new tokens, not 40") != std::string::npos);
  CHECK(ids_of(last_line(run.output)).size() == 512);
}

TEST_CASE("lamina generate --output ids prints the whole sequence, the stop token that ended it included") {
  // All weights zero: every logit is 0 and greedy picks token 0, made the model's stop token.
  ScratchDir dir("cli-generate-stop-token");
  llama::LlamaConfig config = byte_level_llama_config();
  config.eos_token_ids = {0};
  llama::LlamaForCausalLM(config).save(dir.path.string());
  std::ofstream(dir.path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  const std::string command = "generate --model " + dir.path.string() + " --prompt-ids \"1 5\" --max-new-tokens 4";
  Run run = run_lamina(command);
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(last_line(run.output) == "1 5 0");  // as transformers' generate returns it
  run = run_lamina(command + " --no-stop");
  CHECK(last_line(run.output) == "1 5 0 0 0 0");
}

TEST_CASE("lamina tokenize --text '' encodes the empty text, as empty standard input does") {
  ScratchDir dir("cli-tokenize-empty");
  std::ofstream(dir.path / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  const Run from_flag = run_lamina("tokenize --tokenizer " + dir.path.string() + " --text ''");
  INFO(from_flag.output);
  CHECK(from_flag.status == 0);
  CHECK(from_flag.output == "\n");
  const std::string bos = std::to_string(*tokenizer::byte_level_tokenizer().bos_id());
  CHECK(run_lamina("tokenize --tokenizer " + dir.path.string() + " --text '' --bos").output == bos + "\n");
  CHECK(run_lamina("tokenize --tokenizer " + dir.path.string() + " --text 'a' --bos").output != bos + "\n");
  CHECK(run_lamina("generate --model " + dir.path.string() + " --prompt ''").status == 2);  // still refused elsewhere
}

TEST_CASE("lamina generate runs a GGUF model: SmolLM2's greedy answer, as transformers gives it" *
          doctest::test_suite("real_model")) {
  // Prompt and answer ids as in tests/models/test_smollm2.cpp (transformers 5.25 on the same
  // file): "What is the capital of France?" -> "The capital of France is Paris." <|im_end|>.
  const std::string prompt = "1 4093 198 1780 314 260 3575 282 4649 47 2 198 1 520 9531 198";
  const Run run = run_lamina("generate --model " + testing::smollm2_gguf_path() + " --prompt-ids \"" + prompt +
                             "\" --max-new-tokens 40");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(last_line(run.output) == prompt + " 504 3575 282 4649 314 7042 30 2");
  // --chat renders the file's own template (ChatML, with its default system message) and stops at
  // <|im_end|>: the text answer, not Llama-3 headers the model never saw. With the weights
  // dequantized (the f32 model transformers runs) the answer names Paris; as stored, the 8-bit
  // activation rounding parts from it at a close step of this longer prompt (its answer is checked
  // for the template only).
  for (const std::string weights : {" --dequantize", ""}) {
    INFO("weights:" << weights);
    const Run chat = run_lamina("generate --model " + testing::smollm2_gguf_path() +
                                " --prompt 'What is the capital of France?' --chat --max-new-tokens 40" + weights);
    CHECK(chat.status == 0);
    if (!weights.empty()) CHECK_MESSAGE(chat.output.find("Paris") != std::string::npos, chat.output);
    CHECK_MESSAGE(chat.output.find("<|im") == std::string::npos, chat.output);
  }
}

TEST_CASE("lamina generate --prefill-chunk: any chunk gives the same tokens; 0 is refused") {
  ScratchDir dir("cli_prefill_chunk");
  const std::string model = tiny_model(dir, 64);
  const std::string base = "generate --model " + model + " --prompt-ids \"" + counting_ids(40) + "\" --max-new-tokens 12 --no-stop";
  const Run whole = run_lamina(base);
  REQUIRE(whole.status == 0);
  for (const std::string chunk : {"1", "7", "64"}) {
    const Run chunked = run_lamina(base + " --prefill-chunk " + chunk);
    INFO("--prefill-chunk " << chunk << ": " << chunked.output);
    CHECK(chunked.status == 0);
    CHECK(last_line(chunked.output) == last_line(whole.output));
  }
  const Run refused = run_lamina(base + " --prefill-chunk 0");
  CHECK(refused.status != 0);
  CHECK_MESSAGE(refused.output.find("--prefill-chunk") != std::string::npos, refused.output);
  CHECK(run_lamina("generate --help").output.find("--prefill-chunk N") != std::string::npos);
}
