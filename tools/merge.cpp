// `lamina merge`: N models of one architecture merged into one Hugging Face folder by a JSON
// recipe (models/merge/recipe.h) or, for the common case, by flags:
//
//   lamina merge --recipe R.json --out DIR [--overwrite]
//   lamina merge --method linear --models A,B --weights 0.5,0.5 --out DIR
//   lamina merge --method ties --base B --models A,C --density 0.5 --out DIR
//   lamina merge --method slerp --base A --models B --interpolation 0.3 --out DIR
//
// The merge streams tensor by tensor, in chunks (models/merge/merge.h), so memory stays at a few tensors.
// DIR is built under a temporary name and renamed into place when complete; it gets config.json,
// the weights and the first input's tokenizer files. A JSON line on stdout reports the time and
// the process's peak resident memory.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "models/merge/merge.h"
#include "models/merge/recipe.h"
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

const std::string kCommand = "lamina merge";

double parse_number(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty())
    throw UsageError(kCommand + ": " + flag + ": '" + text + "' is not a number", "run 'lamina merge --help'");
  return value;
}

// The recipe the simple flags describe, as the JSON a recipe file would hold, so that one reader
// checks both.
json::Value recipe_from_flags(const FlagParser& parser) {
  const std::string hint = "run 'lamina merge --help'";
  if (!parser.is_set("method")) throw UsageError(kCommand + ": give --recipe R.json, or --method and --models", hint);
  if (!parser.is_set("models")) throw UsageError(kCommand + ": --method needs --models A,B,...", hint);
  json::Value recipe = json::Object{};
  recipe.set("method", *parser.value("method"));
  if (parser.is_set("base")) recipe.set("base_model", *parser.value("base"));
  const std::vector<std::string> models = parser.list_value("models");
  std::vector<double> weights;
  if (parser.is_set("weights")) {
    for (const std::string& item : parser.list_value("weights"))
      weights.push_back(parse_number(item, "--weights"));
    if (weights.size() != models.size())
      throw UsageError(kCommand + ": --weights has " + std::to_string(weights.size()) + " values for " +
                           std::to_string(models.size()) + " --models",
                       hint);
  }
  json::Array entries;
  for (size_t i = 0; i < models.size(); ++i) {
    json::Value entry = json::Object{};
    entry.set("model", models[i]);
    if (!weights.empty()) entry.set("weight", weights[i]);
    entries.push_back(std::move(entry));
  }
  recipe.set("models", std::move(entries));
  json::Value parameters = json::Object{};
  for (const auto& [flag, key] : {std::pair<const char*, const char*>{"density", "density"}, {"interpolation", "t"},
                                  {"lambda", "lambda"}})
    if (parser.is_set(flag)) parameters.set(key, parse_number(*parser.value(flag), std::string("--") + flag));
  if (const std::optional<std::string> normalize = parser.value("normalize")) {
    if (*normalize != "true" && *normalize != "false")
      throw UsageError(kCommand + ": --normalize is true or false, got '" + *normalize + "'", hint);
    parameters.set("normalize", *normalize == "true");
  }
  recipe.set("parameters", std::move(parameters));
  if (parser.is_set("dtype")) recipe.set("dtype", *parser.value("dtype"));
  if (parser.is_set("seed")) recipe.set("seed", json::Value(parser.int_value("seed", 0, 0, INT64_MAX)));
  return recipe;
}

void copy_companion_files(const std::string& model, const fs::path& folder) {
  for (const char* name : kCompanionFiles) {
    const fs::path source = fs::path(model) / name;
    if (fs::is_regular_file(source)) fs::copy_file(source, folder / name);
  }
}

}  // namespace

int run_merge_models(const Arguments& args) {
  FlagParser parser(kCommand + " (--recipe R.json | --method M --models A,B,...) --out DIR",
                    "Merges models of one Llama architecture (Hugging Face folders) into a new folder: config.json\n"
                    "and the first input's tokenizer files, and the merged weights, computed in f32 per tensor and\n"
                    "stored in each tensor's dtype in the first input (or --dtype / the recipe's \"dtype\").\n"
                    "Methods (mergekit's names): linear (weighted average; normalize defaults to true),\n"
                    "task_arithmetic (base + lambda * sum w_i (m_i - base); normalize false), slerp (two models, t\n"
                    "from the base, or the first model, to the other), ties (task vectors trimmed to their top\n"
                    "`density` fraction by magnitude, a sign elected per entry by summed weighted value, the agreeing\n"
                    "entries averaged; normalize true), dare_linear and dare_ties (entries kept with probability\n"
                    "`density`, rescaled by 1/density, seeded by `seed`, then summed or combined as ties; normalize\n"
                    "false and true). A recipe is JSON: {\"method\": \"ties\", \"base_model\": \"B\", \"models\":\n"
                    "[{\"model\": \"A\", \"weight\": 0.5, \"density\": 0.7}, ...], \"parameters\": {\"lambda\": 1},\n"
                    "\"dtype\": \"bf16\", \"seed\": 0}; a numeric parameter may be a number, a list of numbers (a\n"
                    "gradient over the layers) or rules [{\"filter\": \"self_attn\", \"value\": 0.3}, {\"value\": 0.5}]\n"
                    "(the first rule whose filter is in the tensor's name applies). The merge streams tensor by tensor\n"
                    "in chunks, so memory stays at a few tensors; DIR is built under a temporary name and renamed\n"
                    "into place when complete. Prints one JSON line: tensors, bytes, seconds and peak resident memory.");
  parser.add_option("recipe", "R.json", "the merge recipe (JSON); or the flags below for a simple merge");
  parser.add_option("method", "M", "linear, task_arithmetic, slerp, ties, dare_linear or dare_ties");
  parser.add_option("models", "A,B,...", "the models to merge (Hugging Face folders), comma-separated");
  parser.add_option("base", "DIR", "the base model: task vectors are taken from it; slerp's t = 0 end");
  parser.add_option("weights", "W1,W2,...", "one weight per --models entry", "1 each");
  parser.add_option("density", "D", "ties: the fraction of each task vector kept; dare: the keep probability");
  parser.add_option("interpolation", "T", "slerp: the recipe's t, from 0 (the base) to 1 (the other model)");
  parser.add_option("lambda", "L", "task methods: the scale of the merged task vector", "1");
  parser.add_option("normalize", "true|false", "divide by the sum of the weights", "the method's");
  parser.add_option("seed", "N", "dare: the seed of the random drops", "0");
  parser.add_option("dtype", "DTYPE", "the merged weights' dtype: f32, bf16 or f16", "the first input's");
  parser.add_option("out", "DIR", "where the merged Hugging Face folder goes");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  const std::string out = parser.required("out");

  merge::Recipe recipe;
  if (parser.is_set("recipe")) {
    for (const char* flag : {"method", "models", "base", "weights", "density", "interpolation", "lambda", "normalize", "seed", "dtype"})
      if (parser.is_set(flag))
        throw UsageError(kCommand + ": --" + flag + " cannot be combined with --recipe (set it in the recipe)",
                         "run 'lamina merge --help'");
    recipe = merge::Recipe::load(*parser.value("recipe"));
  } else {
    recipe = merge::Recipe::from_json(recipe_from_flags(parser), "lamina merge flags");
  }
  const std::vector<std::string> inputs = recipe.input_paths();

  std::error_code error;
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), kCommand, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), kCommand, ": ", out, " exists and is not a folder");
    for (const std::string& input : inputs)
      LAMINA_CHECK(!fs::equivalent(out, input, error), kCommand, ": --out must differ from every input (", input, ")");
  }

  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr, "merging %zu models (%s) into %s\n", inputs.size(), merge::method_name(recipe.method), out.c_str());
  StagedFolder folder(out);
  merge::MergeOptions options;
  int64_t last_tenth = 0;
  options.on_tensor = [&](int64_t done, int64_t total, const std::string&) {
    const int64_t tenth = done * 10 / total;
    if (tenth != last_tenth) std::fprintf(stderr, "  %lld/%lld tensors\n", static_cast<long long>(done), static_cast<long long>(total));
    last_tenth = tenth;
  };
  const merge::MergeSummary summary = merge::merge_models(recipe, folder.path().string(), options);
  copy_companion_files(inputs[0], folder.path());
  folder.commit();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  json::Value report = json::Object{};
  report.set("out", out);
  report.set("method", merge::method_name(recipe.method));
  report.set("models", json::Value(int64_t(inputs.size())));
  report.set("tensors", json::Value(summary.tensors));
  report.set("bytes", json::Value(int64_t(summary.bytes_written)));
  report.set("seconds", seconds);
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

}  // namespace lamina::cli
