// `lamina lora`: LoRA adapters in PEFT's folder format (adapter_config.json +
// adapter_model.safetensors).
//
//   lamina lora merge --model M --adapter A --out DIR [--dtype f32|bf16|f16] [--overwrite]
//   lamina lora extract --base B --tuned T --rank R --out DIR [--target-modules q_proj,...]
//   lamina lora route ...: routed multi-LoRA gates (tools/lora_route.cpp)
//
// merge loads the model (a Hugging Face folder or a Llama GGUF file, dequantized to f32), adds
// the adapter, folds it into the base weights (W + s B A, or DoRA's rescaled W) and writes a plain
// Hugging Face folder that any Llama loader reads, tokenizer included. Everything is checked
// before anything is written, and the folder is built beside DIR under a temporary name and
// renamed into place when complete, so a failure leaves no DIR behind.
//
// extract writes the adapter that best approximates T - B at rank R (models/surgery/extract.h),
// one matrix at a time, and prints a JSON line: per-module rank and captured energy, the time and
// the peak resident memory.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/io/gguf.h"
#include "models/io/peft.h"
#include "models/llama/model.h"
#include "models/surgery/extract.h"
#include "models/tokenizer/tokenizer_export.h"
#include "nn/layers.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/lora_route.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"
#include "train/metrics.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

void write_tokenizer(const std::string& model_path, const fs::path& folder) {
  if (is_gguf_file(model_path)) {
    const gguf::File file = gguf::File::open(model_path);
    if (!tokenizer::gguf_has_tokenizer(file)) {
      std::fprintf(stderr, "note: %s holds no tokenizer; the merged folder gets none\n", model_path.c_str());
      return;
    }
    io::write_file_atomically((folder / "tokenizer.json").string(), tokenizer::tokenizer_json_from_gguf(file).dump(2) + "\n");
    io::write_file_atomically((folder / "tokenizer_config.json").string(),
                              tokenizer::tokenizer_config_from_gguf(file).dump(2) + "\n");
    return;
  }
  for (const char* name : kCompanionFiles) {
    const fs::path source = fs::path(model_path) / name;
    if (fs::is_regular_file(source)) fs::copy_file(source, folder / name);
  }
}

int run_merge(const Arguments& args) {
  const std::string command = "lamina lora merge";
  FlagParser parser(command + " --model M --adapter A --out DIR",
                    "Merges a PEFT LoRA adapter into its base model and writes a plain Hugging Face folder\n"
                    "(config.json, model.safetensors and the model's tokenizer files). M is a Hugging Face\n"
                    "folder or a Llama GGUF file; A is a folder holding adapter_config.json and\n"
                    "adapter_model.safetensors. The merge is computed in f32 (W + s*B*A; DoRA rescales each row\n"
                    "to its magnitude). DIR is built under a temporary name and renamed into place when complete.");
  parser.add_option("model", "M", "the base model: a Hugging Face folder or a .gguf file");
  parser.add_option("adapter", "A", "the PEFT adapter folder");
  parser.add_option("out", "DIR", "where the merged Hugging Face folder goes");
  parser.add_option("dtype", "DTYPE", "the merged weights' dtype: f32, bf16 or f16", "f32");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::string adapter_path = parser.required("adapter");
  const std::string out = parser.required("out");
  const std::string dtype_text = parser.value("dtype").value_or("f32");
  if (dtype_text != "f32" && dtype_text != "bf16" && dtype_text != "f16")
    throw UsageError(command + ": unknown --dtype '" + dtype_text + "'", "--dtype is one of f32, bf16, f16");

  std::error_code error;
  LAMINA_CHECK(fs::exists(model_path, error), command, ": ", model_path, " not found");
  LAMINA_CHECK(fs::is_directory(adapter_path, error), command, ": ", adapter_path,
               " is not a folder (a PEFT adapter is a folder holding adapter_config.json and adapter_model.safetensors)");
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), command, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), command, ": ", out, " exists and is not a folder");
    LAMINA_CHECK(!fs::equivalent(out, model_path, error) && !fs::equivalent(out, adapter_path, error), command,
                 ": --out must differ from --model and --adapter");
  }

  std::fprintf(stderr, "loading %s\n", model_path.c_str());
  const auto model = load_model_on(model_path, Device::cpu(), GgufWeights::dequantized);
  std::fprintf(stderr, "loading adapter %s\n", adapter_path.c_str());
  const nn::LoraConfig config = peft::load_adapter(adapter_path, *model, "default");
  int64_t merged = 0;
  for (const auto& [path, linear] : nn::named_linears(*model)) merged += linear->has_adapter("default") ? 1 : 0;
  std::fprintf(stderr, "merging %lld adapted layers (r %lld, alpha %g%s%s)\n", static_cast<long long>(merged),
               static_cast<long long>(config.options.rank), config.options.alpha,
               config.options.use_rslora ? ", rsLoRA" : "", config.options.use_dora ? ", DoRA" : "");
  nn::merge_and_unload(*model, "default");

  StagedFolder folder(out);
  model->save(folder.path().string(), dtype_from_name(dtype_text));
  write_tokenizer(model_path, folder.path());
  folder.commit();
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

double parse_fraction(const std::string& text, const std::string& command) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !(value > 0 && value <= 1))
    throw UsageError(command + ": --energy must be a number in (0, 1], got '" + text + "'",
                     "run 'lamina lora extract --help'");
  return value;
}

int run_extract(const Arguments& args) {
  const std::string command = "lamina lora extract";
  FlagParser parser(command + " --base B --tuned T --rank R --out DIR",
                    "Extracts a PEFT LoRA adapter from a fine-tuned model T and its base B (Hugging Face folders\n"
                    "of one architecture, full precision): for each targeted Linear, delta = W_T - W_B is\n"
                    "decomposed by a truncated SVD (f64) and written as lora_B = U_r sqrt(S_r), lora_A =\n"
                    "sqrt(S_r) V_r^T, lora_alpha = r (scale 1), so that B A is delta's best rank-r\n"
                    "approximation. A matrix with fewer than R singular values (or, with --energy, a smaller\n"
                    "rank holding that fraction of its energy) gets its own rank via rank_pattern and\n"
                    "alpha_pattern. The models are read one matrix at a time. `lamina lora merge` and `lamina\n"
                    "generate --adapter` load the folder, as PEFT does. Prints one JSON line: per-module rank and\n"
                    "captured energy (sum S_r^2 / sum S^2), seconds and peak resident memory.");
  parser.add_option("base", "B", "the base model (a Hugging Face folder)");
  parser.add_option("tuned", "T", "the fine-tuned model (a Hugging Face folder of B's architecture)");
  parser.add_option("rank", "R", "the adapter's rank (the largest, with --energy)", "16");
  parser.add_option("energy", "F", "per module, the smallest rank (at most R) holding fraction F of the energy");
  parser.add_option("target-modules", "NAMES", "comma-separated module names (PEFT's target_modules)",
                    "all-linear: every Linear but lm_head");
  parser.add_option("svd", "METHOD", "auto (randomized for large matrices and small ranks), exact or randomized",
                    "auto");
  parser.add_option("power-iterations", "Q", "randomized SVD: the power iterations", "2");
  parser.add_option("seed", "N", "randomized SVD: the seed of the Gaussian sketch", "0");
  parser.add_option("out", "DIR", "where the adapter folder goes");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  const std::string base = parser.required("base");
  const std::string tuned = parser.required("tuned");
  const std::string out = parser.required("out");
  surgery::ExtractOptions options;
  options.rank = parser.int_value("rank", 16, 1, INT64_MAX);
  if (parser.is_set("energy")) options.energy_fraction = parse_fraction(*parser.value("energy"), command);
  if (parser.is_set("target-modules"))
    options.target_modules = parser.list_value("target-modules");
  const std::string method = parser.value("svd").value_or("auto");
  if (method != "auto" && method != "exact" && method != "randomized")
    throw UsageError(command + ": unknown --svd '" + method + "'", "--svd is one of auto, exact, randomized");
  options.svd.method = surgery::parse_svd_method(method, command);
  options.svd.power_iterations = parser.int_value("power-iterations", 2, 0, 100);
  options.svd.seed = uint64_t(parser.int_value("seed", 0, 0, INT64_MAX));

  std::error_code error;
  for (const std::string& input : {base, tuned})
    LAMINA_CHECK(fs::exists(input, error), command, ": ", input, " not found");
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), command, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), command, ": ", out, " exists and is not a folder");
    LAMINA_CHECK(!fs::equivalent(out, base, error) && !fs::equivalent(out, tuned, error), command,
                 ": --out must differ from --base and --tuned");
  }

  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr, "extracting a rank-%lld adapter: %s - %s\n", static_cast<long long>(options.rank),
               tuned.c_str(), base.c_str());
  json::Array modules;
  options.on_module = [&](const std::string& module, int64_t out_features, int64_t in_features,
                          const surgery::LoraFactors& factors, double seconds) {
    std::fprintf(stderr, "  %s [%lld, %lld]: rank %lld, energy %.6f (%s, %.3f s)\n", module.c_str(),
                 static_cast<long long>(out_features), static_cast<long long>(in_features),
                 static_cast<long long>(factors.rank), factors.captured_energy,
                 factors.randomized ? "randomized" : "exact", seconds);
    json::Value entry = json::Object{};
    entry.set("module", module);
    entry.set("rank", json::Value(factors.rank));
    entry.set("captured_energy", factors.captured_energy);
    modules.push_back(std::move(entry));
  };
  StagedFolder folder(out);
  const surgery::ExtractSummary summary = surgery::extract_lora(base, tuned, folder.path().string(), options);
  folder.commit();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  double least = 1;
  for (const surgery::ModuleReport& module : summary.modules) least = std::min(least, module.captured_energy);
  json::Value report = json::Object{};
  report.set("out", out);
  report.set("rank", json::Value(options.rank));
  report.set("modules", json::Value(int64_t(summary.modules.size())));
  report.set("adapter_bytes", json::Value(int64_t(summary.adapter_bytes)));
  report.set("min_captured_energy", least);
  report.set("captured_energy", json::Value(std::move(modules)));
  report.set("seconds", seconds);
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

}  // namespace

int run_lora(const Arguments& args) {
  const std::string usage =
      "usage: lamina lora merge --model M --adapter A --out DIR [--dtype f32|bf16|f16] [--overwrite]\n"
      "       lamina lora extract --base B --tuned T --rank R --out DIR [--target-modules q_proj,...]\n"
      "       lamina lora route --model M --adapters DIR1,DIR2,... --data FILE.jsonl --top-k K --out OUT\n"
      "\n"
      "LoRA adapters in PEFT's folder format (adapter_config.json + adapter_model.safetensors).\n"
      "  merge     fold an adapter into its base model and write a plain Hugging Face folder\n"
      "  extract   the rank-R adapter closest to a fine-tuned model's difference from its base (SVD)\n"
      "  route     train per-token gates that mix N adapters of one base (MeteoRA), for generate --routed-lora\n"
      "Run 'lamina lora <subcommand> --help' for its flags.\n";
  if (args.empty()) throw UsageError("lamina lora: expected a subcommand (merge, extract, route)", "run 'lamina lora --help'");
  if (args[0] == "--help") {
    std::fputs(usage.c_str(), stdout);
    return 0;
  }
  if (args[0] == "merge") return run_merge(Arguments(args.begin() + 1, args.end()));
  if (args[0] == "extract") return run_extract(Arguments(args.begin() + 1, args.end()));
  if (args[0] == "route") return run_lora_route(Arguments(args.begin() + 1, args.end()));
  const std::string suggestion = closest_match(args[0], {"merge", "extract", "route"});
  throw UsageError("lamina lora: unknown subcommand '" + args[0] + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "run 'lamina lora --help'");
}

}  // namespace lamina::cli
