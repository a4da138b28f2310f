// `lamina tokenize` and `lamina detokenize`: text to Llama-3 token ids and back, with the
// tokenizer of a tokenizer.json file or of a model directory.
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "models/tokenizer/encode_stream.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

// A failed write (a full disk, a closed pipe) is an error, not a silently short output.
void write_stdout(std::string_view bytes) {
  LAMINA_CHECK(std::fwrite(bytes.data(), 1, bytes.size(), stdout) == bytes.size(), "cannot write standard output: ",
               std::strerror(errno));
}

std::vector<int32_t> parse_ids(const std::string& text, const std::string& command) {
  const std::vector<int64_t> ids = parse_token_ids(text, command);
  return std::vector<int32_t>(ids.begin(), ids.end());  // each fits: parse_token_ids checks
}

}  // namespace

int run_tokenize(const Arguments& args) {
  const std::string command = "lamina tokenize";
  FlagParser parser(command,
                    "Prints the Llama-3 token ids of a text, space-separated on one line. The text is --text, or\n"
                    "all of standard input, byte for byte (a trailing newline is part of it). Standard input is\n"
                    "read and encoded piece by piece and ids are printed as they are made, so memory stays\n"
                    "bounded however large the input.");
  parser.add_option("tokenizer", "PATH", "tokenizer.json, or a model directory that holds one (required)");
  parser.add_option("text", "TEXT", "the text to encode (may be empty)", "standard input");
  parser.allow_empty_value("text");
  parser.add_switch("bos", "prepend <|begin_of_text|>");
  parser.add_switch("parse-special", "turn special-token text such as <|eot_id|> into its id (off: encoded as text)");
  if (!parser.parse(args)) return 0;

  const std::string tokenizer_path = parser.required("tokenizer");
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(tokenizer_path);
  bool first = true;
  std::string line;
  const auto print_ids = [&](std::span<const int32_t> ids) {
    line.resize(ids.size() * 12);  // a space and at most 11 characters each
    char* out = line.data();
    for (const int32_t id : ids) {
      if (!first) *out++ = ' ';
      first = false;
      out = std::to_chars(out, line.data() + line.size(), id).ptr;
    }
    write_stdout(std::string_view(line.data(), size_t(out - line.data())));
  };
  tokenizer::EncodeStream stream(tokenizer, {.add_bos = parser.is_set("bos"), .parse_special = parser.is_set("parse-special")},
                                 print_ids);
  if (parser.is_set("text")) {
    stream.push(*parser.value("text"));
  } else {
    std::vector<char> buffer(size_t(1) << 16);
    size_t count;
    while ((count = std::fread(buffer.data(), 1, buffer.size(), stdin)) > 0) stream.push(std::string_view(buffer.data(), count));
    LAMINA_CHECK(!std::ferror(stdin), "cannot read standard input: ", std::strerror(errno));
  }
  stream.finish();
  write_stdout("\n");
  LAMINA_CHECK(std::fflush(stdout) == 0, "cannot write standard output: ", std::strerror(errno));
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

  const std::string tokenizer_path = parser.required("tokenizer");
  const std::string ids_text = parser.is_set("ids") ? *parser.value("ids") : read_standard_input();
  const std::vector<int32_t> ids = parse_ids(ids_text, command);
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(tokenizer_path);
  const std::string text = tokenizer.decode(ids, {.skip_special = parser.is_set("skip-special")});
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (isatty(fileno(stdout))) std::fputc('\n', stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace lamina::cli
