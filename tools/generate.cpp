// `lamina generate` and `lamina chat`: text from a Llama model folder.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "models/generate/generate.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/stream_decoder.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int64_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    int64_t id = 0;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size()) throw UsageError("--prompt-ids: '" + word + "' is not a token id", "pass ids like \"1 450 4321\"");
    ids.push_back(id);
  }
  if (ids.empty()) throw UsageError("--prompt-ids is empty", "pass ids like \"1 450 4321\"");
  return ids;
}

void add_generation_flags(FlagParser& parser) {
  parser.add_option("max-new-tokens", "N", "tokens to generate at most", "64");
  parser.add_option("temperature", "T", "0 = greedy; otherwise sample from logits / T", "0");
  parser.add_option("top-k", "K", "keep the K most likely tokens (0 = off)", "0");
  parser.add_option("top-p", "P", "keep the smallest set of tokens with probability >= P", "1");
  parser.add_option("min-p", "M", "drop tokens below M x the top probability", "0");
  parser.add_option("repetition-penalty", "R", "penalise tokens already in the context (1 = off)", "1");
  parser.add_option("seed", "S", "random seed for sampling", "0");
  parser.add_option("device", "DEVICE", "where the model runs: cpu, cuda or cuda:N", "cpu");
}

// The model of `directory` (f32) on the --device.
std::shared_ptr<llama::LlamaForCausalLM> load_model(const FlagParser& parser, const std::string& directory) {
  const Device device = Device::parse(parser.value("device").value_or("cpu"));
  auto model = llama::LlamaForCausalLM::load(directory);
  model->to(device, DType::f32);
  return model;
}

generate::GenerateOptions sampling_options(const FlagParser& parser, int64_t default_max_new_tokens) {
  generate::GenerateOptions options;
  options.max_new_tokens = parser.int_value("max-new-tokens", default_max_new_tokens, 0, 1 << 20);
  options.sampling.temperature = parser.double_value("temperature", 0.0, 0.0, 1e6);
  options.sampling.top_k = parser.int_value("top-k", 0, 0, int64_t(1) << 40);
  options.sampling.top_p = parser.double_value("top-p", 1.0, 1e-9, 1.0);
  options.sampling.min_p = parser.double_value("min-p", 0.0, 0.0, 0.999999);
  options.sampling.repetition_penalty = parser.double_value("repetition-penalty", 1.0, 1e-6, 1e6);
  options.sampling.seed = uint64_t(parser.int_value("seed", 0, 0, INT64_MAX));
  return options;
}

std::string require_model(const FlagParser& parser, const char* command) {
  const std::optional<std::string> directory = parser.value("model");
  if (!directory) throw UsageError(std::string(command) + ": --model is required", std::string("run '") + command + " --help'");
  return *directory;
}

// The tokenizer named by --tokenizer, or the model folder's own tokenizer.json.
tokenizer::Tokenizer load_tokenizer(const FlagParser& parser, const std::string& model_directory) {
  const std::string path = parser.value("tokenizer").value_or(model_directory);
  if (!parser.is_set("tokenizer") && !std::filesystem::exists(std::filesystem::path(path) / "tokenizer.json"))
    throw Error("the model folder " + model_directory + " has no tokenizer.json; pass --tokenizer PATH");
  return tokenizer::Tokenizer::load(path);
}

std::vector<int64_t> widen(const std::vector<int32_t>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

// Prints each new token's text as soon as it is complete UTF-8, and keeps the whole text.
struct TextStream {
  tokenizer::StreamDecoder decoder;
  std::string text;

  void write(const std::string& piece) {
    text += piece;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  }
  bool operator()(size_t, int64_t token) {
    write(decoder.push(int32_t(token)));
    return true;
  }
  void finish() {
    write(decoder.finish());
    std::printf("\n");
  }
};

}  // namespace

int run_generate(const Arguments& args) {
  FlagParser parser("lamina generate", "Continues a prompt with a Llama model (HF folder: config.json + safetensors).");
  parser.add_option("model", "DIR", "the model folder");
  parser.add_option("prompt", "TEXT", "the prompt as text (encoded with the model's tokenizer.json)");
  parser.add_option("prompt-ids", "\"1 2 3\"", "the prompt as token ids");
  parser.add_switch("chat", "wrap --prompt in the model's chat format as a user message");
  parser.add_option("system", "TEXT", "with --chat: a system message");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's)");
  add_generation_flags(parser);
  parser.add_option("output", "text|ids", "the new text, or the whole sequence (prompt + new) as ids",
                    "text for --prompt, ids for --prompt-ids");
  parser.add_switch("no-stop", "ignore the model's end-of-sequence tokens");
  if (!parser.parse(args)) return 0;

  const std::string directory = require_model(parser, "lamina generate");
  if (parser.is_set("prompt") == parser.is_set("prompt-ids"))
    throw UsageError("lamina generate: give exactly one of --prompt and --prompt-ids", "run 'lamina generate --help'");
  if (parser.is_set("chat") && !parser.is_set("prompt"))
    throw UsageError("lamina generate: --chat needs a text --prompt", "run 'lamina generate --help'");
  const std::string output = parser.value("output").value_or(parser.is_set("prompt") ? "text" : "ids");
  if (output != "ids" && output != "text")
    throw UsageError("lamina generate: --output must be 'text' or 'ids', got '" + output + "'", "run 'lamina generate --help'");
  generate::GenerateOptions options = sampling_options(parser, 64);
  options.use_config_stop_tokens = !parser.is_set("no-stop");
  const std::vector<int64_t> prompt_ids = parser.is_set("prompt-ids") ? parse_ids(*parser.value("prompt-ids")) : std::vector<int64_t>{};

  // The tokenizer is needed for text in or out; load it before the (larger) model.
  std::optional<tokenizer::Tokenizer> text_tokenizer;
  if (parser.is_set("prompt") || output == "text") text_tokenizer.emplace(load_tokenizer(parser, directory));
  std::vector<int64_t> prompt = prompt_ids;
  if (parser.is_set("prompt")) {
    const std::string text = *parser.value("prompt");
    if (parser.is_set("chat")) {
      tokenizer::ChatOptions chat;
      chat.format = tokenizer::detect_chat_format(parser.value("tokenizer").value_or(directory), *text_tokenizer);
      std::vector<tokenizer::Message> messages;
      if (parser.is_set("system")) messages.push_back({"system", *parser.value("system")});
      messages.push_back({"user", text});
      prompt = widen(tokenizer::render_chat(*text_tokenizer, messages, chat).ids);
      if (!parser.is_set("no-stop")) options.stop_tokens = widen(tokenizer::stop_token_ids(*text_tokenizer, chat.format));
    } else {
      prompt = widen(text_tokenizer->encode(text, {.add_bos = text_tokenizer->bos_id().has_value()}));
    }
    if (prompt.empty()) throw UsageError("lamina generate: the prompt encodes to no tokens", "pass a non-empty --prompt");
  }

  const auto model = load_model(parser, directory);
  if (output == "text") {
    TextStream stream{tokenizer::StreamDecoder(*text_tokenizer), {}};
    options.on_token = [&stream](size_t sequence, int64_t token) { return stream(sequence, token); };
    generate::generate(*model, {prompt}, options);
    stream.finish();
    return 0;
  }
  const generate::GenerateResult result = generate::generate(*model, {prompt}, options);
  std::string line;
  for (int64_t id : prompt) line += std::to_string(id) + " ";
  for (int64_t id : result.tokens[0]) line += std::to_string(id) + " ";
  line.pop_back();
  std::printf("%s\n", line.c_str());
  return 0;
}

int run_chat(const Arguments& args) {
  FlagParser parser("lamina chat",
                    "Talks with an Instruct model, answers streamed as they are generated. Type a message and press "
                    "enter; /system TEXT sets the system message, /reset forgets the conversation, /quit (or end of "
                    "input) leaves.");
  parser.add_option("model", "DIR", "the model folder (with tokenizer.json)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's)");
  parser.add_option("system", "TEXT", "the system message to start with");
  add_generation_flags(parser);
  if (!parser.parse(args)) return 0;
  const std::string directory = require_model(parser, "lamina chat");
  const tokenizer::Tokenizer text_tokenizer = load_tokenizer(parser, directory);
  tokenizer::ChatOptions chat;
  chat.format = tokenizer::detect_chat_format(parser.value("tokenizer").value_or(directory), text_tokenizer);
  generate::GenerateOptions options = sampling_options(parser, 512);
  options.stop_tokens = widen(tokenizer::stop_token_ids(text_tokenizer, chat.format));
  const auto model = load_model(parser, directory);
  tokenizer::Conversation conversation(text_tokenizer, chat);
  if (parser.is_set("system")) conversation.set_system(*parser.value("system"));
  std::fprintf(stderr, "lamina chat (%s format): /system TEXT, /reset, /quit\n", tokenizer::chat_format_name(chat.format));

  std::string line;
  while (true) {
    std::fprintf(stderr, "> ");
    std::fflush(stderr);
    if (!std::getline(std::cin, line) || line == "/quit") break;
    if (line.empty()) continue;
    if (line == "/reset") {
      conversation.reset();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.rfind("/system", 0) == 0) {
      conversation.set_system(line.size() > 8 ? line.substr(8) : "");
      conversation.reset();
      std::fprintf(stderr, "(system message set; conversation cleared)\n");
      continue;
    }
    conversation.add_user(line);
    TextStream stream{tokenizer::StreamDecoder(text_tokenizer), {}};
    options.on_token = [&stream](size_t sequence, int64_t token) { return stream(sequence, token); };
    generate::generate(*model, {widen(conversation.prompt())}, options);
    stream.finish();
    conversation.add_assistant(stream.text);
  }
  return 0;
}

}  // namespace lamina::cli
