// Llama models from GGUF files: the `llama.*` and `tokenizer.ggml.*` metadata mapped to a
// LlamaConfig, GGUF tensor names mapped to Hugging Face's, and the q/k row permutation that
// GGUF converters apply (formats-and-quantization.md §2.6) undone, so that the loaded model is
// the Hugging Face model lamina computes with (rotate_half RoPE).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "models/io/gguf.h"
#include "models/io/gguf_write.h"
#include "models/llama/config.h"
#include "models/llama/model.h"

namespace lamina::gguf {

// The config of a general.architecture = "llama" file. Required keys missing or of the wrong
// type, and RoPE scalings lamina does not compute, are errors naming the key. Llama 3.1's llama3
// RoPE scaling, which llama.cpp stores as per-frequency divisors (tensor rope_freqs.weight),
// becomes config.rope_scaling: parameters that give back exactly those divisors.
llama::LlamaConfig llama_config_from_gguf(const File& file);

// The Hugging Face name of a Llama GGUF tensor ("blk.3.attn_q.weight" ->
// "model.layers.3.self_attn.q_proj.weight"), or nullopt for a name outside the Llama layout.
std::optional<std::string> llama_hf_tensor_name(const std::string& gguf_name);

// Meta (interleaved) rows of a q or k projection [heads * head_dim, in] back to Hugging Face
// order: HF row h*hd + p*hd/2 + k is Meta row h*hd + 2k + p.
Tensor unpermute_meta_rows(const Tensor& weight, int64_t heads);

// The model of a Llama GGUF file: every tensor dequantized, q/k un-permuted, then converted to
// `dtype`. Missing, extra or misshapen tensors are errors found before the model is built.
std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf(const std::string& path, DType dtype = DType::f32);

// Every Llama tensor of `file` by its Hugging Face name, checked against `config`'s parameters
// (missing, extra or misshapen tensors are errors naming them) before anything is built.
std::map<std::string, const TensorInfo*> llama_tensors_by_hf_name(const File& file, const llama::LlamaConfig& config);

// ---- computing with the weights as stored (models/io/gguf_llama_quantized.cpp)

// Whether every matrix of the file that the model multiplies by (the projections, and the
// output head or the tied embedding) is in a format ops::gguf_matmul computes with (Q8_0, Q4_0,
// Q4_1, Q4_K, Q6_K); when not, `why` (if given) names the first one that is not.
bool llama_gguf_computes_quantized(const File& file, std::string* why = nullptr);

// The model of a Llama GGUF file computing with its weights as stored: every matrix stays in its
// block format, borrowed from the mapped file (nothing converted, no f32 copy; the model holds
// the mapping), the token embedding dequantizes the rows it looks up, the norms are f32. The q
// and k projections alone are copied, their rows put back in Hugging Face order (the
// converter's permutation undone on whole block rows), and their pages in the mapping released.
// The model runs on the CPU, in f32 activations; adapters can train over it; it cannot be saved
// as a folder. Refused (an error naming the tensor) when llama_gguf_computes_quantized is false.
std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf_quantized(const std::string& path);
// The same for a file already open (the model holds its mapping).
std::shared_ptr<llama::LlamaForCausalLM> load_llama_gguf_quantized(const File& file);

// ---- writing (the inverse of the above; see gguf_write.h for the file itself)

// The GGUF name of a Hugging Face Llama tensor ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"), or nullopt for a name outside the Llama layout.
std::optional<std::string> llama_gguf_tensor_name(const std::string& hf_name);

// Hugging Face rows of a q or k projection [heads * head_dim, in] into Meta (interleaved) order:
// Meta row h*hd + 2k + p is HF row h*hd + p*hd/2 + k. unpermute_meta_rows undoes it exactly.
Tensor permute_to_meta_rows(const Tensor& weight, int64_t heads);

// general.file_type for a file whose matrices are `type`: 0 F32, 1 F16, 32 BF16, 7 Q8_0, 2 Q4_0,
// 3 Q4_1, 14 Q4_K (llama.cpp's Q4_K_S; its Q4_K_M, 15, mixes in Q6_K matrices), 18 Q6_K.
uint32_t llama_file_type(TensorType type);

// Adds a Llama model to `writer` as llama.cpp's converter lays it out: general.architecture,
// general.name, the llama.* hyperparameters, general.file_type (and, for block types,
// quantization_version 2), then every weight under its GGUF name with q/k rows in Meta order.
// Matrices are stored as `type`, token_embd.weight and output.weight as `embedding_type` when
// given (llama.cpp's 4-bit presets keep those at 6 or 8 bits); 1-D weights (the norms) stay
// F32. A matrix whose rows are not whole blocks of its type falls back, reported through
// `note`: Q4_K to Q4_1 and Q6_K to Q8_0 (rows not a multiple of 256 but of 32; blocks of 32
// with about the same bits per weight, as llama.cpp falls back to a 32-block type), and any
// type to F16 when the rows are not whole blocks of 32 either. Tied embeddings write no
// output.weight. llama3 RoPE scaling writes rope_freqs.weight (F32 [hd/2], the divisor of each
// frequency) as llama.cpp does; lamina's reader does not read it back yet. The tensors' bytes
// are made when the writer writes, from the model's weights.
void add_llama_model(Writer& writer, const llama::LlamaForCausalLM& model, TensorType type, const std::string& name,
                     const std::function<void(const std::string&)>& note = {},
                     std::optional<TensorType> embedding_type = std::nullopt);

// For a model without a tokenizer: the config's token ids as tokenizer.ggml.bos_token_id,
// eos_token_id (its first EOS), eot_token_id (a second one) and padding_token_id, so that the
// config reads back the same (tokenizer metadata, when written, carries these keys itself).
void add_llama_token_ids(Writer& writer, const llama::LlamaConfig& config);

}  // namespace lamina::gguf
