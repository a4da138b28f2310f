#include "tools/model_files.h"

#include <cstdio>
#include <filesystem>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "tensor/error.h"

namespace lamina::cli {

bool is_gguf_file(const std::string& path) {
  const std::filesystem::path file(path);
  return file.extension() == ".gguf" && !std::filesystem::is_directory(file);
}

std::shared_ptr<llama::LlamaForCausalLM> load_model_on(const std::string& path, Device device, GgufWeights gguf) {
  if (is_gguf_file(path) && gguf == GgufWeights::as_stored) {
    std::string why;
    if (const gguf::File file = gguf::File::open(path); gguf::llama_gguf_computes_quantized(file, &why)) {
      auto model = gguf::load_llama_gguf_quantized(file);  // the file parsed once
      // On a GPU the blocks are copied into device memory as they are (ops/gguf_matmul.h's
      // CUDA kernels); the norms move as f32.
      if (!device.is_cpu()) model->to(device, DType::f32);
      return model;
    }
    std::fprintf(stderr, "note: %s is dequantized to f32: %s\n", path.c_str(), why.c_str());
  }
  auto model = is_gguf_file(path) ? gguf::load_llama_gguf(path) : llama::LlamaForCausalLM::load(path);
  model->to(device, DType::f32);
  return model;
}

void add_dequantize_option(FlagParser& parser) {
  parser.add_switch("dequantize",
                    "a GGUF model computes with its weights dequantized to f32 instead of as stored (exact weights "
                    "and activations, ~5x the memory, slower; the reference the quantized kernels are tested against)");
}

GgufWeights gguf_weights_choice(const FlagParser& parser) {
  return parser.is_set("dequantize") ? GgufWeights::dequantized : GgufWeights::as_stored;
}

tokenizer::Tokenizer load_model_tokenizer(const std::string& model_path, const std::optional<std::string>& tokenizer_path) {
  if (tokenizer_path) return tokenizer::Tokenizer::load(*tokenizer_path);
  if (is_gguf_file(model_path)) return tokenizer::Tokenizer::from_gguf(gguf::File::open(model_path));
  if (!std::filesystem::exists(std::filesystem::path(model_path) / "tokenizer.json"))
    throw Error("the model folder " + model_path + " has no tokenizer.json; pass --tokenizer PATH");
  return tokenizer::Tokenizer::load(model_path);
}

}  // namespace lamina::cli
