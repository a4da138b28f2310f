// `lamina lora`: LoRA adapters in PEFT's folder format (adapter_config.json +
// adapter_model.safetensors).
//
//   lamina lora merge --model M --adapter A --out DIR [--dtype f32|bf16|f16] [--overwrite]
//
// merge loads the model (a Hugging Face folder or a Llama GGUF file, dequantized to f32), adds
// the adapter, folds it into the base weights (W + s B A, or DoRA's rescaled W) and writes a plain
// Hugging Face folder that any Llama loader reads, tokenizer included. Everything is checked
// before anything is written, and the folder is built beside DIR under a temporary name and
// renamed into place when complete, so a failure leaves no DIR behind.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/io/gguf.h"
#include "models/io/peft.h"
#include "models/llama/model.h"
#include "models/tokenizer/tokenizer_export.h"
#include "nn/layers.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"

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

}  // namespace

int run_lora(const Arguments& args) {
  const std::string usage =
      "usage: lamina lora merge --model M --adapter A --out DIR [--dtype f32|bf16|f16] [--overwrite]\n"
      "\n"
      "LoRA adapters in PEFT's folder format (adapter_config.json + adapter_model.safetensors).\n"
      "  merge   fold an adapter into its base model and write a plain Hugging Face folder\n"
      "Run 'lamina lora merge --help' for its flags.\n";
  if (args.empty()) throw UsageError("lamina lora: expected a subcommand (merge)", "run 'lamina lora --help'");
  if (args[0] == "--help") {
    std::fputs(usage.c_str(), stdout);
    return 0;
  }
  if (args[0] == "merge") return run_merge(Arguments(args.begin() + 1, args.end()));
  const std::string suggestion = closest_match(args[0], {"merge"});
  throw UsageError("lamina lora: unknown subcommand '" + args[0] + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "run 'lamina lora --help'");
}

}  // namespace lamina::cli
