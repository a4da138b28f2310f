#include "tools/model_files.h"

#include <filesystem>

#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "tensor/error.h"

namespace lamina::cli {

bool is_gguf_file(const std::string& path) {
  const std::filesystem::path file(path);
  return file.extension() == ".gguf" && !std::filesystem::is_directory(file);
}

std::shared_ptr<llama::LlamaForCausalLM> load_model_on(const std::string& path, Device device) {
  auto model = is_gguf_file(path) ? gguf::load_llama_gguf(path) : llama::LlamaForCausalLM::load(path);
  model->to(device, DType::f32);
  return model;
}

tokenizer::Tokenizer load_model_tokenizer(const std::string& model_path, const std::optional<std::string>& tokenizer_path) {
  if (tokenizer_path) return tokenizer::Tokenizer::load(*tokenizer_path);
  if (is_gguf_file(model_path)) return tokenizer::Tokenizer::from_gguf(gguf::File::open(model_path));
  if (!std::filesystem::exists(std::filesystem::path(model_path) / "tokenizer.json"))
    throw Error("the model folder " + model_path + " has no tokenizer.json; pass --tokenizer PATH");
  return tokenizer::Tokenizer::load(model_path);
}

}  // namespace lamina::cli
