// `lamina expand` and `lamina extend-vocab`: a Llama folder grown into a new Hugging Face folder
// that computes what the original did (models/surgery):
//
//   lamina expand --model M --insert-after 3,7 --out DIR      # LLaMA Pro block expansion
//   lamina expand --model M --every 4 --out DIR
//   lamina extend-vocab --model M --add-tokens "<a>,<b>" [--special] --out DIR
//   lamina extend-vocab --model M --add-tokens-file F [--init zeros] [--pad-to-multiple 64] --out DIR
//
// DIR is built under a temporary name and renamed into place when complete. A JSON line on
// stdout reports what was done, the time and the process's peak resident memory.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "models/surgery/expand.h"
#include "models/surgery/vocab.h"
#include "tensor/error.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"
#include "train/metrics.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> split_on(const std::string& text, char separator) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t end = text.find(separator, start);
    items.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return items;
    start = end + 1;
  }
}

// --out checked before any work: an existing folder only with --overwrite, never the input.
void check_output(const FlagParser& parser, const std::string& command, const std::string& model, const std::string& out) {
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(model, error), command, ": --model ", model,
               " is not a folder (this command reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), command, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), command, ": ", out, " exists and is not a folder");
    LAMINA_CHECK(!fs::equivalent(out, model, error), command, ": --out must differ from --model");
  }
}

// The tokenizer and generation files of `model` that the command did not write itself.
void copy_companion_files(const std::string& model, const fs::path& folder) {
  for (const char* name : kCompanionFiles) {
    const fs::path source = fs::path(model) / name;
    if (fs::is_regular_file(source) && !fs::exists(folder / name)) fs::copy_file(source, folder / name);
  }
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int run_expand(const Arguments& args) {
  const std::string command = "lamina expand";
  const std::string hint = "run 'lamina expand --help'";
  FlagParser parser(command + " --model M (--insert-after I,J,... | --every N) --out DIR",
                    "Block expansion (LLaMA Pro): inserts new decoder blocks into a Llama model (a full-precision\n"
                    "Hugging Face folder). Each new block is a copy of the block it follows with its output\n"
                    "projections (self_attn.o_proj, mlp.down_proj) zeroed, so it adds nothing to the residual\n"
                    "stream and the expanded model's logits equal the original's exactly until it is trained (e.g.\n"
                    "`lamina train sft --trainable <the new blocks>`, the names printed here). config.json's\n"
                    "num_hidden_layers is updated and the blocks renumbered; the tokenizer files are copied.\n"
                    "Prints one JSON line: the inserted blocks' indices and their --trainable patterns, tensors,\n"
                    "bytes, seconds and peak resident memory.");
  parser.add_option("model", "DIR", "the model to expand (a Hugging Face folder) (required)");
  parser.add_option("insert-after", "I,J,...", "a copy of block I is inserted after block I (0-based original indices)");
  parser.add_option("every", "N", "one new block after every N blocks (after blocks N-1, 2N-1, ...)");
  parser.add_option("out", "DIR", "where the expanded Hugging Face folder goes (required)");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  if (!parser.is_set("model")) throw UsageError(command + ": --model is required", hint);
  if (!parser.is_set("out")) throw UsageError(command + ": --out is required", hint);
  const std::string model = *parser.value("model"), out = *parser.value("out");
  if (parser.is_set("insert-after") == parser.is_set("every"))
    throw UsageError(command + ": give exactly one of --insert-after I,J,... and --every N", hint);
  check_output(parser, command, model, out);

  const int64_t layers = surgery::count_layers(model);
  surgery::ExpansionPlan plan;
  if (parser.is_set("every")) {
    plan = surgery::plan_every(layers, parser.int_value("every", 1, 1, layers));
  } else {
    std::vector<int64_t> after;
    for (const std::string& item : split_on(*parser.value("insert-after"), ',')) {
      size_t used = 0;
      int64_t value = -1;
      try {
        value = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (item.empty() || used != item.size())
        throw UsageError(command + ": --insert-after: '" + item + "' is not a block index", hint);
      after.push_back(value);
    }
    plan = surgery::plan_insert_after(layers, after);
  }

  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr, "expanding %s: %lld blocks -> %lld\n", model.c_str(), static_cast<long long>(layers),
               static_cast<long long>(plan.layers()));
  StagedFolder folder(out);
  const surgery::ExpandSummary summary = surgery::expand_blocks(model, folder.path().string(), plan);
  copy_companion_files(model, folder.path());
  folder.commit();

  json::Array inserted, patterns;
  for (const int64_t layer : summary.inserted_layers) {
    inserted.emplace_back(layer);
    patterns.emplace_back("model.layers." + std::to_string(layer) + ".*");
  }
  std::string trainable;
  for (const json::Value& pattern : patterns) trainable += (trainable.empty() ? "" : ",") + pattern.as_string();
  json::Value report = json::Object{};
  report.set("out", out);
  report.set("old_layers", json::Value(summary.old_layers));
  report.set("new_layers", json::Value(summary.new_layers));
  report.set("inserted", std::move(inserted));
  report.set("trainable", trainable);
  report.set("tensors", json::Value(summary.tensors));
  report.set("bytes", json::Value(int64_t(summary.bytes_written)));
  report.set("seconds", seconds_since(start));
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  std::fprintf(stderr, "wrote %s (train only the new blocks with --trainable %s)\n", out.c_str(), trainable.c_str());
  return 0;
}

int run_extend_vocab(const Arguments& args) {
  const std::string command = "lamina extend-vocab";
  const std::string hint = "run 'lamina extend-vocab --help'";
  FlagParser parser(command + " --model M (--add-tokens A,B,... | --add-tokens-file F) --out DIR",
                    "Adds tokens to a Llama model (a full-precision Hugging Face folder with tokenizer.json): each\n"
                    "becomes an added token of tokenizer.json (matched whole in text; --special marks them special)\n"
                    "with the next free id after the vocabulary, existing ids unchanged; a token the tokenizer has\n"
                    "already is skipped (and listed). model.embed_tokens and, when untied, lm_head get a row per new id,\n"
                    "the mean of the old rows (or zeros), so every old token's logit is unchanged; config.json's\n"
                    "vocab_size is updated (rounded up by --pad-to-multiple, the padding rows initialised alike).\n"
                    "Prints one JSON line: the new tokens and ids, the vocabulary sizes, seconds and peak resident memory.");
  parser.add_option("model", "DIR", "the model (a Hugging Face folder) (required)");
  parser.add_option("add-tokens", "A,B,...", "the tokens to add, comma-separated");
  parser.add_option("add-tokens-file", "FILE", "the tokens to add, one per line (empty lines skipped)");
  parser.add_switch("special", "the new tokens are special tokens (e.g. control tokens of a chat format)");
  parser.add_option("init", "mean|zeros", "the new rows of the embedding and head", "mean");
  parser.add_option("pad-to-multiple", "N", "round config.json's vocab_size up to a multiple of N", "1");
  parser.add_option("out", "DIR", "where the new Hugging Face folder goes (required)");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  if (!parser.is_set("model")) throw UsageError(command + ": --model is required", hint);
  if (!parser.is_set("out")) throw UsageError(command + ": --out is required", hint);
  if (parser.is_set("add-tokens") == parser.is_set("add-tokens-file"))
    throw UsageError(command + ": give exactly one of --add-tokens A,B,... and --add-tokens-file F", hint);
  const std::string model = *parser.value("model"), out = *parser.value("out");

  std::vector<std::string> tokens;
  if (parser.is_set("add-tokens")) {
    tokens = split_on(*parser.value("add-tokens"), ',');
    for (const std::string& token : tokens)
      if (token.empty()) throw UsageError(command + ": --add-tokens has an empty item", hint);
  } else {
    const std::string path = *parser.value("add-tokens-file");
    std::ifstream file(path, std::ios::binary);
    LAMINA_CHECK(file.good(), command, ": cannot read --add-tokens-file ", path);
    std::string line;
    while (std::getline(file, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty()) tokens.push_back(line);
    }
    LAMINA_CHECK(!tokens.empty(), command, ": --add-tokens-file ", path, " holds no token");
  }
  surgery::VocabularyOptions options;
  options.special = parser.is_set("special");
  options.init = surgery::row_init_from_name(parser.value("init").value_or("mean"));
  options.pad_to_multiple = parser.int_value("pad-to-multiple", 1, 1, 1 << 20);
  check_output(parser, command, model, out);

  const auto start = std::chrono::steady_clock::now();
  StagedFolder folder(out);
  const surgery::VocabularySummary summary = surgery::extend_vocabulary(model, folder.path().string(), tokens, options);
  copy_companion_files(model, folder.path());
  folder.commit();

  json::Value added = json::Object{};
  for (size_t i = 0; i < summary.added.size(); ++i) added.set(summary.added[i], json::Value(int64_t(summary.added_ids[i])));
  json::Array skipped, resized;
  for (const std::string& token : summary.skipped) skipped.emplace_back(token);
  for (const std::string& name : summary.resized) resized.emplace_back(name);
  json::Value report = json::Object{};
  report.set("out", out);
  report.set("added", std::move(added));
  report.set("skipped", std::move(skipped));
  report.set("old_vocab_size", json::Value(summary.old_vocab_size));
  report.set("new_vocab_size", json::Value(summary.new_vocab_size));
  report.set("resized", std::move(resized));
  report.set("seconds", seconds_since(start));
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  for (const std::string& token : summary.skipped)
    std::fprintf(stderr, "skipped '%s': the tokenizer has it already\n", token.c_str());
  std::fprintf(stderr, "wrote %s: %zu tokens added, vocab_size %lld -> %lld\n", out.c_str(), summary.added.size(),
               static_cast<long long>(summary.old_vocab_size), static_cast<long long>(summary.new_vocab_size));
  return 0;
}

}  // namespace lamina::cli
