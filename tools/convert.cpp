// `lamina convert IN OUT`: a Llama model between a Hugging Face folder and a GGUF file, either
// way, tokenizer included. The direction comes from IN: a .gguf file gives a Hugging Face folder
// (config.json, model.safetensors, tokenizer.json, tokenizer_config.json), a folder gives a
// GGUF file (OUT must end in .gguf). Nothing half-written is ever left under OUT: the GGUF goes
// to OUT.partial-<pid> and the folder is built as a sibling OUT.partial-<pid>/, each renamed
// into place only when complete; a failure removes them.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "models/llama/model.h"
#include "models/tokenizer/tokenizer_export.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

gguf::TensorType parse_type(const std::string& text) {
  static const std::vector<std::pair<std::string, gguf::TensorType>> kTypes = {
      {"f32", gguf::TensorType::f32},   {"f16", gguf::TensorType::f16},   {"bf16", gguf::TensorType::bf16},
      {"q8_0", gguf::TensorType::q8_0}, {"q4_0", gguf::TensorType::q4_0}, {"q4_1", gguf::TensorType::q4_1},
      {"q4_k", gguf::TensorType::q4_k}, {"q6_k", gguf::TensorType::q6_k}};
  std::vector<std::string> names;
  for (const auto& [name, type] : kTypes) {
    if (text == name) return type;
    names.push_back(name);
  }
  const std::string suggestion = closest_match(text, names);
  throw UsageError("lamina convert: unknown --type '" + text + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "--type is one of f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q6_k");
}

void hf_to_gguf(const std::string& in, const std::string& out, gguf::TensorType type, const std::string& name) {
  std::fprintf(stderr, "loading %s\n", in.c_str());
  const auto model = llama::LlamaForCausalLM::load(in);
  gguf::Writer writer;
  gguf::add_llama_model(writer, *model, type, name,
                        [](const std::string& note) { std::fprintf(stderr, "note: %s\n", note.c_str()); });
  if (fs::exists(fs::path(in) / "tokenizer.json")) {
    const llama::LlamaConfig& config = model->config();
    tokenizer::ConfigTokenIds ids;
    ids.bos = config.bos_token_id;
    ids.eos = config.eos_token_ids;
    ids.pad = config.pad_token_id;
    for (auto& [key, value] : tokenizer::gguf_tokenizer_metadata(in, config.vocab_size, ids))
      writer.add_metadata(key, std::move(value));
  } else {
    std::fprintf(stderr, "note: %s has no tokenizer.json; the GGUF file will hold no tokenizer\n", in.c_str());
    gguf::add_llama_token_ids(writer, model->config());
  }
  size_t done = 0;
  const size_t total = writer.tensor_count();
  writer.write(out, [&](const std::string& tensor) {
    std::fprintf(stderr, "[%zu/%zu] %s\n", ++done, total, tensor.c_str());
  });
  std::fprintf(stderr, "wrote %s\n", out.c_str());
}

void gguf_to_hf(const std::string& in, const std::string& out, DType dtype) {
  std::fprintf(stderr, "loading %s\n", in.c_str());
  const gguf::File file = gguf::File::open(in);
  const auto model = gguf::load_llama_gguf(in);
  StagedFolder folder(out);
  std::fprintf(stderr, "writing config.json and model.safetensors (%s)\n", dtype_name(dtype));
  model->save(folder.path().string(), dtype);
  if (tokenizer::gguf_has_tokenizer(file)) {
    std::fprintf(stderr, "writing tokenizer.json and tokenizer_config.json\n");
    io::write_file_atomically((folder.path() / "tokenizer.json").string(),
                              tokenizer::tokenizer_json_from_gguf(file).dump(2) + "\n");
    io::write_file_atomically((folder.path() / "tokenizer_config.json").string(),
                              tokenizer::tokenizer_config_from_gguf(file).dump(2) + "\n");
  } else {
    std::fprintf(stderr, "note: %s holds no tokenizer; the folder gets none\n", in.c_str());
  }
  folder.commit();
  std::fprintf(stderr, "wrote %s\n", out.c_str());
}

}  // namespace

int run_convert(const Arguments& args) {
  const std::string command = "lamina convert";
  FlagParser parser(command + " IN OUT",
                    "Converts a Llama model between a Hugging Face folder and a GGUF file, tokenizer included.\n"
                    "IN a .gguf file: OUT becomes a Hugging Face folder (config.json, model.safetensors,\n"
                    "tokenizer.json, tokenizer_config.json), weights dequantized and written as --dtype.\n"
                    "IN a Hugging Face folder: OUT (ending in .gguf) becomes a GGUF v3 file in llama.cpp's layout,\n"
                    "matrices stored as --type (every one, the embedding included; `lamina quantize` keeps the\n"
                    "embedding at more bits for 4-bit types); norms stay F32. A matrix whose rows are not whole blocks\n"
                    "falls back: q4_k rows not a multiple of 256 to Q4_1, q6_k ones to Q8_0, rows not a multiple of 32\n"
                    "to F16. OUT is written under a temporary name and renamed into place when complete.");
  parser.add_option("type", "TYPE", "GGUF output only: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k or q6_k", "f16");
  parser.add_option("dtype", "DTYPE", "Hugging Face output only: f32, bf16 or f16 safetensors", "f32");
  parser.add_option("name", "TEXT", "GGUF output only: general.name", "the input folder's name");
  parser.add_switch("overwrite", "replace OUT when it exists (otherwise an existing OUT is refused)");

  // IN and OUT are the arguments that are neither flags nor a flag's value.
  std::vector<std::string> positional, flags;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].rfind("--", 0) != 0) {
      positional.push_back(args[i]);
      continue;
    }
    flags.push_back(args[i]);
    const bool takes_value = args[i] == "--type" || args[i] == "--dtype" || args[i] == "--name";
    if (takes_value && i + 1 < args.size()) flags.push_back(args[++i]);
  }
  if (!parser.parse(flags)) return 0;
  if (positional.size() != 2)
    throw UsageError(command + ": expected IN and OUT, got " + std::to_string(positional.size()) + " argument(s)",
                     "run 'lamina convert --help'");
  const std::string& in = positional[0];
  const std::string& out = positional[1];

  std::error_code error;
  LAMINA_CHECK(fs::exists(in, error), command, ": ", in, " not found");
  LAMINA_CHECK(!fs::equivalent(in, out, error), command, ": IN and OUT are the same path");
  if (fs::exists(out, error) && !parser.is_set("overwrite"))
    throw Error(command + ": " + out + " exists; pass --overwrite to replace it");

  if (is_gguf_file(in)) {
    if (parser.is_set("type") || parser.is_set("name"))
      throw UsageError(command + ": --type and --name apply to GGUF output; " + in + " is converted to a folder",
                       "use --dtype to choose the safetensors dtype");
    if (fs::path(out).extension() == ".gguf")
      throw UsageError(command + ": IN is a GGUF file, so OUT becomes a Hugging Face folder, but '" + out +
                           "' ends in .gguf",
                       "to change a GGUF file's type, convert it to a folder, then that folder to GGUF");
    const std::string dtype_text = parser.value("dtype").value_or("f32");
    if (dtype_text != "f32" && dtype_text != "bf16" && dtype_text != "f16")
      throw UsageError(command + ": unknown --dtype '" + dtype_text + "'", "--dtype is one of f32, bf16, f16");
    LAMINA_CHECK(!fs::exists(out, error) || fs::is_directory(out, error), command, ": ", out,
                 " exists and is not a folder; a GGUF file converts to a Hugging Face folder");
    gguf_to_hf(in, out, dtype_from_name(dtype_text));
    return 0;
  }
  LAMINA_CHECK(fs::is_directory(in, error), command, ": ", in, " is neither a .gguf file nor a Hugging Face folder");
  if (parser.is_set("dtype"))
    throw UsageError(command + ": --dtype applies to Hugging Face output; " + in + " is converted to GGUF",
                     "use --type to choose the GGUF tensor type");
  if (fs::path(out).extension() != ".gguf")
    throw UsageError(command + ": OUT must end in .gguf when IN is a Hugging Face folder, got '" + out + "'",
                     "run 'lamina convert --help'");
  LAMINA_CHECK(!fs::is_directory(out, error), command, ": ", out, " is a folder; the GGUF output must be a file");
  const gguf::TensorType type = parse_type(parser.value("type").value_or("f16"));
  std::string name = parser.value("name").value_or("");
  if (name.empty()) name = fs::path(in).lexically_normal().filename().string();
  if (name.empty() || name == ".") name = fs::absolute(in).lexically_normal().parent_path().filename().string();
  hf_to_gguf(in, out, type, name);
  return 0;
}

}  // namespace lamina::cli
