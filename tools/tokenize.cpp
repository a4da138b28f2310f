// `lamina tokenize` and `lamina detokenize`: text to Llama-3 token ids and back, with the
// tokenizer of a tokenizer.json file or of a model directory.
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <string>
#include <vector>

#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

std::string read_all_stdin() {
  std::string text;
  char buffer[1 << 16];
  size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, stdin)) > 0) text.append(buffer, count);
  LAMINA_CHECK(!std::ferror(stdin), "cannot read standard input");
  return text;
}

std::string require_option(const FlagParser& parser, const std::string& command, const std::string& name) {
  const std::optional<std::string> value = parser.value(name);
  if (!value) throw UsageError(command + ": --" + name + " is required", "run '" + command + " --help' for its flags");
  return *value;
}

// "1 2 3", "1,2,3", "[1, 2, 3]": integers separated by spaces, commas or newlines.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& command) {
  std::vector<int32_t> ids;
  const auto is_separator = [](char c) { return c == ' ' || c == ',' || c == '\n' || c == '\r' || c == '\t' || c == '[' || c == ']'; };
  size_t pos = 0;
  while (pos < text.size()) {
    if (is_separator(text[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < text.size() && !is_separator(text[end])) ++end;
    int32_t id = 0;
    const auto [stop, error] = std::from_chars(text.data() + pos, text.data() + end, id);
    if (error != std::errc() || stop != text.data() + end) {
      throw UsageError(command + ": '" + text.substr(pos, end - pos) + "' is not a token id",
                       "give the ids as integers separated by spaces or commas");
    }
    ids.push_back(id);
    pos = end;
  }
  return ids;
}

}  // namespace

int run_tokenize(const Arguments& args) {
  const std::string command = "lamina tokenize";
  FlagParser parser(command,
                    "Prints the Llama-3 token ids of a text, space-separated on one line. The text is --text, or\n"
                    "all of standard input, byte for byte (a trailing newline is part of it).");
  parser.add_option("tokenizer", "PATH", "tokenizer.json, or a model directory that holds one (required)");
  parser.add_option("text", "TEXT", "the text to encode", "standard input");
  parser.add_switch("bos", "prepend <|begin_of_text|>");
  parser.add_switch("parse-special", "turn special-token text such as <|eot_id|> into its id (off: encoded as text)");
  if (!parser.parse(args)) return 0;

  const std::string tokenizer_path = require_option(parser, command, "tokenizer");
  const std::string text = parser.is_set("text") ? *parser.value("text") : read_all_stdin();
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(tokenizer_path);
  const std::vector<int32_t> ids =
      tokenizer.encode(text, {.add_bos = parser.is_set("bos"), .parse_special = parser.is_set("parse-special")});
  std::string line;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) line += ' ';
    line += std::to_string(ids[i]);
  }
  std::printf("%s\n", line.c_str());
  return 0;
}

int run_detokenize(const Arguments& args) {
  const std::string command = "lamina detokenize";
  FlagParser parser(command,
                    "Prints the text of Llama-3 token ids: exactly the bytes they stand for, so that\n"
                    "detokenize(tokenize(text)) is the text again (a newline is added only on a terminal).");
  parser.add_option("tokenizer", "PATH", "tokenizer.json, or a model directory that holds one (required)");
  parser.add_option("ids", "IDS", "token ids separated by spaces or commas", "standard input");
  parser.add_switch("skip-special", "leave out special tokens such as <|eot_id|>");
  if (!parser.parse(args)) return 0;

  const std::string tokenizer_path = require_option(parser, command, "tokenizer");
  const std::string ids_text = parser.is_set("ids") ? *parser.value("ids") : read_all_stdin();
  const std::vector<int32_t> ids = parse_ids(ids_text, command);
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(tokenizer_path);
  const std::string text = tokenizer.decode(ids, {.skip_special = parser.is_set("skip-special")});
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (isatty(fileno(stdout))) std::fputc('\n', stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace lamina::cli
