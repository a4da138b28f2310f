// A Llama model that computes with a GGUF file's weights as stored (gguf_llama.h): the matrices
// stay in their block formats inside the mapped file, so memory holds the file once and decode
// reads 4.5 to 8.5 bits per weight instead of 32.
#include <cstring>
#include <map>
#include <vector>

#include "models/io/gguf_llama.h"
#include "ops/gguf_matmul.h"

namespace lamina::gguf {
namespace {

ops::ggml::BlockType block_type(TensorType type) { return ops::ggml::BlockType(uint32_t(type)); }

bool is_matrix_name(const std::string& hf_name) { return hf_name.ends_with("_proj.weight") || hf_name == "lm_head.weight"; }

// The tensor's bytes borrowed from the mapping, as a matrix of the model's row-major shape.
ops::GgufWeight mapped_weight(const File& file, const TensorInfo& info) {
  const Shape shape = info.shape();
  return {{block_type(info.type), shape[0], shape[1], file.data(info)}, file.bytes_owner()};
}

// A q or k projection stored in Meta's interleaved row order, copied with its rows in Hugging
// Face order (HF row h*hd + p*hd/2 + k is Meta row h*hd + 2k + p). Rows are whole blocks, so
// moving them moves quantized bytes unchanged.
ops::GgufWeight hf_ordered_copy(const File& file, const TensorInfo& info, int64_t heads) {
  const Shape shape = info.shape();
  const int64_t rows = shape[0], columns = shape[1];
  LAMINA_CHECK(heads > 0 && rows % (2 * heads) == 0, "gguf: ", file.path(), ": tensor '", info.name, "' has ", rows,
               " rows, not an even head dimension for ", heads, " heads");
  const int64_t head_dim = rows / heads, half = head_dim / 2;
  const uint64_t row_bytes = info.bytes / uint64_t(rows);
  auto bytes = std::make_shared<std::vector<uint8_t>>(info.bytes);
  const uint8_t* from = file.data(info);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t k = 0; k < half; ++k) {
        const int64_t hf_row = h * head_dim + p * half + k, meta_row = h * head_dim + 2 * k + p;
        std::memcpy(bytes->data() + uint64_t(hf_row) * row_bytes, from + uint64_t(meta_row) * row_bytes, row_bytes);
      }
  file.release(info);  // the copy is what the model reads; the mapped pages need not stay resident
  const uint8_t* data = bytes->data();
  return {{block_type(info.type), rows, columns, data}, std::move(bytes)};
}

}  // namespace

bool llama_gguf_computes_quantized(const File& file, std::string* why) {
  const llama::LlamaConfig config = llama_config_from_gguf(file);
  const auto by_hf_name = llama_tensors_by_hf_name(file, config);
  for (const auto& [name, info] : by_hf_name) {
    const bool multiplied = is_matrix_name(name) || (config.tie_word_embeddings && name == "model.embed_tokens.weight");
    if (multiplied && !ops::gguf_matmul_supports(block_type(info->type))) {
      if (why != nullptr)
        *why = str_cat("tensor '", info->name, "' is ", tensor_type_name(uint32_t(info->type)),
                       " (quantized products exist for Q8_0, Q4_0, Q4_1, Q4_K and Q6_K)");
      return false;
    }
  }
  return true;
}

std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf_quantized(const std::string& path) {
  return load_llama_gguf_quantized(File::open(path));
}

std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf_quantized(const File& file) {
  const std::string& path = file.path();
  const llama::LlamaConfig config = llama_config_from_gguf(file);
  const std::map<std::string, const TensorInfo*> by_hf_name = llama_tensors_by_hf_name(file, config);
  std::string why;
  LAMINA_CHECK(llama_gguf_computes_quantized(file, &why), "gguf: ", path, " cannot be computed with as stored: ", why,
               "; load it dequantized instead");
  file.prefetch();

  // Projections built without a full-precision weight; the embedding (and an untied head) are
  // allocated but never written before they are replaced, so their pages never become resident.
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f32, nn::ParameterInit::uninitialized,
                                                         /*four_bit_projections=*/true);
  for (const auto& [path_in_model, linear] : nn::named_linears(*model)) {
    const std::string name = path_in_model + ".weight";
    const TensorInfo& info = *by_hf_name.at(name);
    if (info.name.ends_with(".attn_q.weight"))
      linear->set_base_gguf(hf_ordered_copy(file, info, config.num_attention_heads));
    else if (info.name.ends_with(".attn_k.weight"))
      linear->set_base_gguf(hf_ordered_copy(file, info, config.num_key_value_heads));
    else
      linear->set_base_gguf(mapped_weight(file, info));
  }
  model->model->embed_tokens->set_quantized_table(mapped_weight(file, *by_hf_name.at("model.embed_tokens.weight")));
  // What is left are the norms: small, read as f32.
  for (const auto& [name, parameter] : model->named_parameters()) parameter.set_data(file.read(by_hf_name.at(name)->name));
  return model;
}

}  // namespace lamina::gguf
