// Tiny Llama configurations for tests, small enough that a forward, a backward or a save takes
// milliseconds. A test that depends on one of their sizes sets that field itself, visibly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "models/llama/model.h"
#include "models/tokenizer/builder.h"

namespace lamina::testing {

// Two layers of 4 query heads sharing 2 KV heads (grouped-query attention), hidden size 16, a
// context of 64 tokens, f32 weights (random ones drawn with a spread of 0.1), BOS 1 and EOS 2;
// RoPE is Llama 3's (theta 500000, unscaled).
inline llama::LlamaConfig tiny_llama_config(int64_t vocab_size) {
  llama::LlamaConfig config;
  config.vocab_size = vocab_size;
  config.hidden_size = 16;
  config.intermediate_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  config.max_position_embeddings = 64;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  config.initializer_range = 0.1;
  return config;
}

// The smallest model the CLI tests save and run: one layer of 2 query heads on 1 KV head,
// hidden size 8, f32 weights, BOS 1 and EOS 2, and Llama 3's context of 8192 tokens, so that
// real text and chats fit.
inline llama::LlamaConfig one_layer_llama_config(int64_t vocab_size) {
  llama::LlamaConfig config;
  config.vocab_size = vocab_size;
  config.hidden_size = 8;
  config.intermediate_size = 16;
  config.num_hidden_layers = 1;
  config.num_attention_heads = 2;
  config.num_key_value_heads = 1;
  config.head_dim = 4;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  return config;
}

// The one-layer model over the byte-level tokenizer of models/tokenizer/builder.h, with that
// tokenizer's BOS and EOS: what the CLI tests train, chat with and generate from.
inline llama::LlamaConfig byte_level_llama_config() {
  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer();
  llama::LlamaConfig config = one_layer_llama_config(tokenizer.vocab_size());
  config.bos_token_id = tokenizer.require_added_token("<|begin_of_text|>");
  config.eos_token_ids = {tokenizer.require_added_token("<|end_of_text|>")};
  return config;
}

// A model of `config` in `dtype`, its weights drawn from `seed` (normal, config.initializer_range).
inline std::shared_ptr<llama::LlamaForCausalLM> random_llama(const llama::LlamaConfig& config, uint64_t seed,
                                                             DType dtype = DType::f32) {
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, dtype);
  Generator generator(seed);
  model->init_parameters(generator);
  return model;
}

// A model of `config` with weights drawn from `seed`, saved in `folder` with the byte-level
// tokenizer.json beside it: the model folder the CLI tests hand to lamina.
inline std::shared_ptr<llama::LlamaForCausalLM> save_byte_level_model(const std::string& folder, uint64_t seed,
                                                                      const llama::LlamaConfig& config = byte_level_llama_config()) {
  auto model = random_llama(config, seed);
  model->save(folder);
  std::ofstream(std::filesystem::path(folder) / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  return model;
}

}  // namespace lamina::testing
