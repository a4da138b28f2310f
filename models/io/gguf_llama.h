// Llama models from GGUF files: the `llama.*` and `tokenizer.ggml.*` metadata mapped to a
// LlamaConfig, GGUF tensor names mapped to Hugging Face's, and the q/k row permutation that
// GGUF converters apply (formats-and-quantization.md §2.6) undone, so that the loaded model is
// the Hugging Face model lamina computes with (rotate_half RoPE).
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "models/io/gguf.h"
#include "models/llama/config.h"
#include "models/llama/model.h"

namespace lamina::gguf {

// The config of a general.architecture = "llama" file. Required keys missing or of the wrong
// type, and RoPE scalings lamina does not compute, are errors naming the key.
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

}  // namespace lamina::gguf
