// `lamina expand` and `lamina extend-vocab`: a Llama folder grown into a new Hugging Face folder
// that computes what the original did (models/surgery):
//
//   lamina expand --model M --insert-after 3,7 --out DIR      # LLaMA Pro block expansion
//   lamina expand --model M --every 4 --out DIR
//   lamina expand --model M --parallel --layers 3,7 [--alpha 0.5] --out DIR   # Control LLM parallel blocks
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

namespace {

// "3,7" -> {3, 7}; an item that is not an integer is a usage error naming `flag`.
std::vector<int64_t> parse_indices(const std::string& text, const std::string& flag, const std::string& command,
                                   const std::string& hint) {
  std::vector<int64_t> indices;
  for (const std::string& item : split_on(text, ',')) {
    size_t used = 0;
    int64_t value = -1;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size())
      throw UsageError(command + ": --" + flag + ": '" + item + "' is not a block index", hint);
    indices.push_back(value);
  }
  return indices;
}

// `lamina expand --parallel`: Control LLM's parallel copies (surgery::add_parallel_blocks).
int run_expand_parallel(const FlagParser& parser, const std::string& command, const std::string& hint) {
  const std::string model = *parser.value("model"), out = *parser.value("out");
  if (!parser.is_set("layers")) throw UsageError(command + ": --parallel needs --layers I,J,...", hint);
  const std::vector<int64_t> layers = parse_indices(*parser.value("layers"), "layers", command, hint);
  const double alpha = parser.double_value("alpha", 0.5, 0.0, 1.0);
  const std::string interpolation = parser.value("interpolation").value_or("linear");
  check_output(parser, command, model, out);

  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr, "adding parallel blocks to %s\n", model.c_str());
  StagedFolder folder(out);
  const surgery::ParallelSummary summary =
      surgery::add_parallel_blocks(model, folder.path().string(), layers, alpha, interpolation);
  copy_companion_files(model, folder.path());
  folder.commit();

  json::Array parallel;
  for (const int64_t layer : summary.layers) parallel.emplace_back(layer);
  json::Value report = json::Object{};
  report.set("out", out);
  report.set("parallel", std::move(parallel));
  report.set("alpha", alpha);
  report.set("interpolation", interpolation);
  report.set("trainable", "expanded");
  report.set("tensors", json::Value(summary.tensors));
  report.set("bytes", json::Value(int64_t(summary.bytes_written)));
  report.set("seconds", seconds_since(start));
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  std::fprintf(stderr, "wrote %s (train only the copies with --trainable expanded)\n", out.c_str());
  return 0;
}

}  // namespace

int run_expand(const Arguments& args) {
  const std::string command = "lamina expand";
  const std::string hint = "run 'lamina expand --help'";
  FlagParser parser(command + " --model M (--insert-after I,J,... | --every N | --parallel --layers I,J,...) --out DIR",
                    "Block expansion of a Llama model (a full-precision Hugging Face folder), two kinds; the\n"
                    "expanded model's logits equal the original's exactly until it is trained (e.g. `lamina train\n"
                    "sft --trainable <the new blocks>`, the pattern printed here). The tokenizer files are copied.\n"
                    "\n"
                    "LLaMA Pro (--insert-after, --every): inserts new decoder blocks, each a copy of the block it\n"
                    "follows with its output projections (self_attn.o_proj, mlp.down_proj) zeroed, so it adds\n"
                    "nothing to the residual stream. config.json's num_hidden_layers is updated and the blocks\n"
                    "renumbered; transformers loads the result as a plain Llama.\n"
                    "\n"
                    "Control LLM (--parallel --layers): each chosen layer gets a parallel copy run on the same\n"
                    "input, and the layer's output becomes (1 - alpha) * original + alpha * copy (linear: the\n"
                    "paper's Lerp), or the same with a per-token alpha = sigmoid(w . [original; copy] + c) from a\n"
                    "trained gate that starts at --alpha (dynamic: its Dlerp; model.layers.<i>.expanded_gate.*).\n"
                    "The copies are stored as model.layers.<i>.expanded.*, the settings in config.json's\n"
                    "lamina_parallel_blocks; train the copies (and gates) alone with --trainable expanded.\n"
                    "lamina loads, trains and generates with such a folder; transformers has no class for it (it\n"
                    "would ignore the copies, reporting them as unexpected keys).\n"
                    "\n"
                    "Prints one JSON line: the new blocks' indices and their --trainable pattern, tensors, bytes,\n"
                    "seconds and peak resident memory.");
  parser.add_option("model", "DIR", "the model to expand (a Hugging Face folder) (required)");
  parser.add_option("insert-after", "I,J,...", "a copy of block I is inserted after block I (0-based original indices)");
  parser.add_option("every", "N", "one new block after every N blocks (after blocks N-1, 2N-1, ...)");
  parser.add_switch("parallel", "Control LLM: give the layers of --layers a parallel copy instead of inserting blocks");
  parser.add_option("layers", "I,J,...", "with --parallel: the layers (0-based) that get a parallel copy");
  parser.add_option("alpha", "A", "with --parallel: the copy's weight in the interpolation, in [0, 1] (dynamic: "
                    "its start, in (0, 1))", "0.5");
  parser.add_option("interpolation", "KIND", "with --parallel: linear (a fixed alpha) or dynamic (a per-token gate)",
                    "linear");
  parser.add_option("out", "DIR", "where the expanded Hugging Face folder goes (required)");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  if (!parser.is_set("model")) throw UsageError(command + ": --model is required", hint);
  if (!parser.is_set("out")) throw UsageError(command + ": --out is required", hint);
  const std::string model = *parser.value("model"), out = *parser.value("out");
  if (parser.is_set("parallel")) {
    if (parser.is_set("insert-after") || parser.is_set("every"))
      throw UsageError(command + ": --parallel adds copies beside layers; it does not go with --insert-after or --every",
                       hint);
    return run_expand_parallel(parser, command, hint);
  }
  for (const char* flag : {"layers", "alpha", "interpolation"})
    if (parser.is_set(flag)) throw UsageError(command + ": --" + flag + " goes with --parallel", hint);
  if (parser.is_set("insert-after") == parser.is_set("every"))
    throw UsageError(command + ": give exactly one of --insert-after I,J,... and --every N", hint);
  check_output(parser, command, model, out);

  const int64_t layers = surgery::count_layers(model);
  surgery::ExpansionPlan plan;
  if (parser.is_set("every")) {
    plan = surgery::plan_every(layers, parser.int_value("every", 1, 1, layers));
  } else {
    plan = surgery::plan_insert_after(layers, parse_indices(*parser.value("insert-after"), "insert-after", command, hint));
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
