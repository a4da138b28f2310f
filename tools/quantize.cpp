// `lamina quantize`: a Llama model's weights to fewer bits, in one of two worlds.
//
// --format q8_0|q4_0|q4_1|q4_k|q6_k: a GGUF file in ggml's block layouts (models/io/gguf_write.h
// has each quantizer's formula and error bound), from a Hugging Face folder or a GGUF file (which
// is dequantized first), tokenizer carried over; written under a temporary name and renamed into
// place when complete. As llama.cpp's 4-bit presets do, the 4-bit formats keep token_embd and
// output at more bits (one row of the embedding is a whole token's vector, and the output
// projection sets every logit): Q8_0 for q4_0 and q4_1, Q6_K for q4_k.
//
// --format nf4|fp4: a Hugging Face folder's Linear weights to 4 bits (with or without double
// quantization), written as transformers saves bitsandbytes models: the packed codes and their
// quant_state tensors in model.safetensors, a quantization_config block in config.json.
// Embeddings, norms and lm_head are copied unchanged, as transformers leaves them; so are the
// tokenizer and generation files. The folder is built as OUT.partial-<pid> and renamed into
// place only when complete.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "models/io/bnb4bit.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "models/io/safetensors.h"
#include "models/llama/model.h"
#include "models/tokenizer/tokenizer_export.h"
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

namespace {

const std::vector<std::string> kFormats = {"nf4", "fp4", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k"};

std::optional<gguf::TensorType> gguf_format(const std::string& text) {
  if (text == "q8_0") return gguf::TensorType::q8_0;
  if (text == "q4_0") return gguf::TensorType::q4_0;
  if (text == "q4_1") return gguf::TensorType::q4_1;
  if (text == "q4_k") return gguf::TensorType::q4_k;
  if (text == "q6_k") return gguf::TensorType::q6_k;
  return std::nullopt;
}

// What the 4-bit formats store token_embd and output as (see the top of this file).
std::optional<gguf::TensorType> embedding_type_for(gguf::TensorType type) {
  if (type == gguf::TensorType::q4_0 || type == gguf::TensorType::q4_1) return gguf::TensorType::q8_0;
  if (type == gguf::TensorType::q4_k) return gguf::TensorType::q6_k;
  return std::nullopt;
}

void quantize_to_gguf(const std::string& model_path, const std::string& out, gguf::TensorType type) {
  const bool from_gguf = is_gguf_file(model_path);
  std::fprintf(stderr, "loading %s\n", model_path.c_str());
  const auto model = from_gguf ? gguf::load_llama_gguf(model_path) : llama::LlamaForCausalLM::load(model_path);
  std::optional<gguf::File> source;
  if (from_gguf) source = gguf::File::open(model_path);

  std::string name = fs::path(model_path).lexically_normal().filename().string();
  if (from_gguf) {
    name = fs::path(model_path).stem().string();
    if (const gguf::Value* value = source->find_metadata("general.name"))
      if (value->type == gguf::ValueType::string && !value->text.empty()) name = value->text;
  }
  if (name.empty() || name == ".") name = fs::absolute(model_path).lexically_normal().parent_path().filename().string();

  // The fallback notes, grouped by what they say (a model's many same-shaped matrices share one).
  std::vector<std::pair<std::string, std::vector<std::string>>> notes;
  gguf::Writer writer;
  gguf::add_llama_model(
      writer, *model, type, name,
      [&](const std::string& note) {
        const size_t colon = note.find(": ");
        const std::string tensor = note.substr(0, colon), reason = colon == std::string::npos ? "" : note.substr(colon + 2);
        auto same = std::find_if(notes.begin(), notes.end(), [&](const auto& entry) { return entry.first == reason; });
        if (same == notes.end()) same = notes.insert(notes.end(), {reason, {}});
        same->second.push_back(tensor);
      },
      embedding_type_for(type));
  for (const auto& [reason, tensors] : notes) {
    if (tensors.size() == 1)
      std::fprintf(stderr, "note: %s: %s\n", tensors[0].c_str(), reason.c_str());
    else
      std::fprintf(stderr, "note: %zu tensors (%s ... %s): %s\n", tensors.size(), tensors.front().c_str(),
                   tensors.back().c_str(), reason.c_str());
  }
  // The tokenizer: a GGUF source's tokenizer.* metadata as it is (the token ids among it), a
  // folder's tokenizer.json converted as `lamina convert` does, else only the config's token ids.
  bool has_tokenizer = false;
  if (from_gguf) {
    for (const auto& [key, value] : source->metadata())
      if (key.rfind("tokenizer.", 0) == 0) writer.add_metadata(key, value), has_tokenizer = true;
  } else if (fs::exists(fs::path(model_path) / "tokenizer.json")) {
    const llama::LlamaConfig& config = model->config();
    tokenizer::ConfigTokenIds ids;
    ids.bos = config.bos_token_id;
    ids.eos = config.eos_token_ids;
    ids.pad = config.pad_token_id;
    for (auto& [key, value] : tokenizer::gguf_tokenizer_metadata(model_path, config.vocab_size, ids))
      writer.add_metadata(key, std::move(value));
    has_tokenizer = true;
  }
  if (!has_tokenizer) {
    std::fprintf(stderr, "note: %s has no tokenizer; the GGUF file will hold none\n", model_path.c_str());
    gguf::add_llama_token_ids(writer, model->config());
  }

  size_t done = 0;
  const size_t total = writer.tensor_count();
  writer.write(out, [&](const std::string& tensor) { std::fprintf(stderr, "[%zu/%zu] %s\n", ++done, total, tensor.c_str()); });

  // What each stored type cost, read back from the file written.
  const gguf::File written = gguf::File::open(out);
  struct Totals {
    size_t tensors = 0;
    uint64_t weights = 0, bytes = 0;
  };
  std::map<std::string, Totals> by_type;
  uint64_t all_weights = 0, all_bytes = 0;
  for (const gguf::TensorInfo& info : written.tensors()) {
    Totals& totals = by_type[gguf::tensor_type_name(uint32_t(info.type))];
    ++totals.tensors;
    totals.weights += info.elements;
    totals.bytes += info.bytes;
    all_weights += info.elements;
    all_bytes += info.bytes;
  }
  std::printf("quantized %s to %s (%zu tensors, %llu weights)\n", model_path.c_str(), gguf::tensor_type_name(uint32_t(type)),
              written.tensors().size(), static_cast<unsigned long long>(all_weights));
  for (const auto& [type_name, totals] : by_type)
    std::printf("  %-5s %4zu tensors %12llu weights %.4f bytes per weight\n", type_name.c_str(), totals.tensors,
                static_cast<unsigned long long>(totals.weights), double(totals.bytes) / double(totals.weights));
  std::printf("%.4f bytes (%.4f bits) per weight overall; file %llu bytes\n", double(all_bytes) / double(all_weights),
              8.0 * double(all_bytes) / double(all_weights),
              static_cast<unsigned long long>(fs::file_size(out)));
  std::printf("wrote %s\n", out.c_str());
}

}  // namespace

int run_quantize(const Arguments& args) {
  const std::string command = "lamina quantize";
  FlagParser parser(command,
                    "Quantizes a Llama model, to a GGUF file or to a bitsandbytes 4-bit folder.\n"
                    "--format q8_0, q4_0, q4_1, q4_k or q6_k: --model is a Hugging Face folder or a GGUF file (dequantized\n"
                    "first, so its own rounding adds to the new one); --out FILE.gguf gets every matrix rounded to nearest\n"
                    "per block in ggml's layout, norms in F32, the tokenizer carried over. Bytes per weight: q8_0 1.0625,\n"
                    "q4_0 0.5625, q4_1 0.625, q4_k 0.5625, q6_k 0.8203. As llama.cpp's 4-bit presets do, q4_0 and q4_1\n"
                    "keep the token embedding and output matrix in Q8_0, q4_k in Q6_K. A matrix whose rows are not whole\n"
                    "blocks falls back (noted on stderr): Q4_K rows not a multiple of 256 to Q4_1, Q6_K ones to Q8_0,\n"
                    "rows not a multiple of 32 to F16.\n"
                    "--format nf4 or fp4: --model is a Hugging Face folder; the q/k/v/o and gate/up/down weights of every\n"
                    "layer become packed codes with per-block absmax (8-bit with --double-quant), as transformers saves a\n"
                    "model loaded with load_in_4bit; embeddings, norms and lm_head are copied unchanged, with the\n"
                    "tokenizer files; --out is a folder.\n"
                    "Either way --out is written under a temporary name and renamed into place when complete.");
  parser.add_option("model", "PATH", "the model to quantize: a Hugging Face folder (config.json, model.safetensors), or a "
                                     "GGUF file for the GGUF formats");
  parser.add_option("format", "FORMAT", "nf4, fp4 (a folder) or q8_0, q4_0, q4_1, q4_k, q6_k (a GGUF file)", "nf4");
  parser.add_switch("double-quant", "nf4/fp4 only: also quantize the block scales to 8 bits (bnb_4bit_use_double_quant)");
  parser.add_option("blocksize", "N", "nf4/fp4 only: elements per scale block, a power of two from 32 to 4096", "64");
  parser.add_option("out", "PATH", "the folder (nf4/fp4) or .gguf file (GGUF formats) to write");
  parser.add_switch("overwrite", "replace OUT when it exists (otherwise an existing OUT is refused)");
  if (!parser.parse(args)) return 0;

  const std::string model = parser.required("model");
  const std::string out = parser.required("out");
  const std::string format_text = parser.value("format").value_or("nf4");
  if (std::find(kFormats.begin(), kFormats.end(), format_text) == kFormats.end()) {
    const std::string suggestion = closest_match(format_text, kFormats);
    throw UsageError(command + ": unknown --format '" + format_text + "'" +
                         (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                     "--format is one of nf4, fp4, q8_0, q4_0, q4_1, q4_k, q6_k");
  }

  std::error_code error;
  if (const std::optional<gguf::TensorType> type = gguf_format(format_text)) {
    if (parser.is_set("double-quant") || parser.is_set("blocksize"))
      throw UsageError(command + ": --double-quant and --blocksize apply to nf4/fp4; " + format_text +
                           " has ggml's fixed blocks",
                       "drop them, or use --format nf4|fp4");
    if (fs::path(out).extension() != ".gguf")
      throw UsageError(command + ": --format " + format_text + " writes a GGUF file, so --out must end in .gguf, got '" +
                           out + "'",
                       "run 'lamina quantize --help'");
    LAMINA_CHECK(fs::exists(model, error), command, ": --model ", model, " not found");
    LAMINA_CHECK(is_gguf_file(model) || fs::is_directory(model, error), command, ": --model ", model,
                 " is neither a .gguf file nor a Hugging Face folder");
    LAMINA_CHECK(!(fs::exists(out, error) && fs::equivalent(model, out, error)), command,
                 ": --model and --out are the same file");
    LAMINA_CHECK(!fs::is_directory(out, error), command, ": ", out, " is a folder; --format ", format_text,
                 " writes a file");
    if (fs::exists(out, error) && !parser.is_set("overwrite"))
      throw Error(command + ": " + out + " exists; pass --overwrite to replace it");
    quantize_to_gguf(model, out, *type);
    return 0;
  }

  const ops::Quant4Format format = ops::quant4_format_from_name(format_text);
  const int64_t blocksize = parser.int_value("blocksize", 64, 32, 4096);
  if ((blocksize & (blocksize - 1)) != 0)
    throw UsageError(command + ": --blocksize must be a power of two, got " + std::to_string(blocksize),
                     "use 32, 64, 128, ..., 4096");
  const bool double_quant = parser.is_set("double-quant");

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
