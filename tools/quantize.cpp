// `lamina quantize`: a Hugging Face Llama folder's Linear weights to 4 bits (NF4 or FP4, with or
// without double quantization), written as transformers saves bitsandbytes models: the packed
// codes and their quant_state tensors in model.safetensors, a quantization_config block in
// config.json. Embeddings, norms and lm_head are copied unchanged, as transformers leaves them;
// so are the tokenizer and generation files. The folder is built as OUT.partial-<pid> and renamed
// into place only when complete.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/io/bnb4bit.h"
#include "models/io/safetensors.h"
#include "ops/quant4.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"

namespace lamina::cli {

namespace fs = std::filesystem;

int run_quantize(const Arguments& args) {
  const std::string command = "lamina quantize";
  FlagParser parser(command,
                    "Quantizes the Linear weights of a Hugging Face Llama folder to 4 bits in bitsandbytes' layout,\n"
                    "as transformers saves a model loaded with load_in_4bit: q/k/v/o and gate/up/down of every layer\n"
                    "become packed codes with per-block absmax (8-bit with --double-quant); embeddings, norms and\n"
                    "lm_head are copied unchanged, with the tokenizer files. The --out folder is written under a\n"
                    "temporary name and renamed into place when complete.");
  parser.add_option("model", "DIR", "the Hugging Face folder to quantize (config.json, model.safetensors)");
  parser.add_option("format", "FORMAT", "nf4 or fp4", "nf4");
  parser.add_switch("double-quant", "also quantize the block scales to 8 bits (bnb_4bit_use_double_quant)");
  parser.add_option("blocksize", "N", "elements per scale block: a power of two from 32 to 4096", "64");
  parser.add_option("out", "DIR", "the folder to write");
  parser.add_switch("overwrite", "replace OUT when it exists (otherwise an existing OUT is refused)");
  if (!parser.parse(args)) return 0;

  const std::string model = parser.required("model");
  const std::string out = parser.required("out");
  const std::string format_text = parser.value("format").value_or("nf4");
  if (format_text != "nf4" && format_text != "fp4")
    throw UsageError(command + ": unknown --format '" + format_text + "'", "--format is nf4 or fp4");
  const ops::Quant4Format format = ops::quant4_format_from_name(format_text);
  const int64_t blocksize = parser.int_value("blocksize", 64, 32, 4096);
  if ((blocksize & (blocksize - 1)) != 0)
    throw UsageError(command + ": --blocksize must be a power of two, got " + std::to_string(blocksize),
                     "use 32, 64, 128, ..., 4096");
  const bool double_quant = parser.is_set("double-quant");

  std::error_code error;
  LAMINA_CHECK(fs::is_directory(model, error), command, ": --model ", model, " is not a folder");
  LAMINA_CHECK(fs::exists(fs::path(model) / "config.json", error), command, ": ", model, " has no config.json");
  LAMINA_CHECK(!(fs::exists(out, error) && fs::equivalent(model, out, error)), command,
               ": --model and --out are the same folder");
  if (fs::exists(out, error) && !parser.is_set("overwrite"))
    throw Error(command + ": " + out + " exists; pass --overwrite to replace it");
  LAMINA_CHECK(!fs::exists(out, error) || fs::is_directory(out, error), command, ": ", out,
               " exists and is not a folder");

  json::Value config = json::parse_file((fs::path(model) / "config.json").string());
  LAMINA_CHECK(config.is_object(), command, ": ", model, "/config.json is not a JSON object");
  LAMINA_CHECK(config.find("quantization_config") == nullptr, command, ": ", model,
               " is already quantized (config.json has a quantization_config)");

  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(model);
  safetensors::NamedTensors tensors;
  int64_t quantized_parameters = 0, quantized_bytes = 0, tables_bytes = 0, other_parameters = 0;
  int quantized_count = 0;
  const std::vector<std::string> names = checkpoint.names();
  for (const std::string& name : names) {
    const Tensor tensor = checkpoint.read(name);
    if (!bnb4bit::is_default_quantized_weight(name)) {
      tensors.emplace_back(name, tensor);
      other_parameters += tensor.numel();
      continue;
    }
    LAMINA_CHECK(tensor.dim() == 2, command, ": ", name, " has shape ", tensor.shape(), "; a Linear weight is 2-D");
    LAMINA_CHECK(tensor.dtype() == DType::f32 || tensor.dtype() == DType::bf16 || tensor.dtype() == DType::f16,
                 command, ": ", name, " is ", dtype_name(tensor.dtype()), "; only f32, bf16 and f16 weights quantize");
    std::fprintf(stderr, "[%d] %s %s\n", ++quantized_count, name.c_str(), shape_str(tensor.shape()).c_str());
    const ops::Quantized4Bit q = ops::quantize_4bit(tensor, format, blocksize, double_quant);
    quantized_parameters += q.numel();
    const int64_t per_parameter_bytes =
        int64_t(q.codes.nbytes() + q.absmax.nbytes() + (double_quant ? q.nested_absmax.nbytes() : 0));
    quantized_bytes += per_parameter_bytes;
    tables_bytes += q.storage_bytes() - per_parameter_bytes;
    bnb4bit::append_quantized_weight(tensors, name, q);
  }
  LAMINA_CHECK(quantized_count > 0, command, ": ", model,
               " has no Linear weights to quantize (expected model.layers.N.self_attn.q_proj.weight and the like)");

  bnb4bit::QuantizationConfig settings;
  settings.format = format;
  settings.double_quant = double_quant;
  config.set("quantization_config", bnb4bit::quantization_config_json(settings));

  StagedFolder folder(out);
  safetensors::save_checkpoint(folder.path().string(), tensors);
  io::write_file_atomically((folder.path() / "config.json").string(), config.dump(2) + "\n");
  for (const char* file : kCompanionFiles) {
    const fs::path source = fs::path(model) / file;
    if (fs::is_regular_file(source, error)) fs::copy_file(source, folder.path() / file);
  }
  folder.commit();

  const double bits = quantized_parameters > 0 ? 8.0 * double(quantized_bytes) / double(quantized_parameters) : 0;
  std::printf("quantized %d Linear weights (%lld parameters) to %s%s, blocksize %lld\n", quantized_count,
              static_cast<long long>(quantized_parameters), format_text.c_str(),
              double_quant ? " with double quantization" : "", static_cast<long long>(blocksize));
  std::printf("%.4f bytes (%.4f bits) per base parameter: %lld bytes of codes and scales, plus %lld bytes of tables\n",
              bits / 8.0, bits, static_cast<long long>(quantized_bytes), static_cast<long long>(tables_bytes));
  std::printf("kept %lld other parameters unquantized (embeddings, norms, lm_head)\n",
              static_cast<long long>(other_parameters));
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace lamina::cli
