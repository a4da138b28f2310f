// A tiny Llama and variable-length examples with a masked prompt head: the fixtures of the
// training-loop tests, shared by the CPU suite and the CUDA suite (which runs the same loop on a GPU).
#pragma once

#include <memory>
#include <vector>

#include "models/llama/model.h"
#include "train/data.h"

namespace lamina::testing {

inline llama::LlamaConfig tiny_config(int64_t vocab = 48) {
  llama::LlamaConfig config;
  config.vocab_size = vocab;
  config.hidden_size = 16;
  config.intermediate_size = 32;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 4;
  config.max_position_embeddings = 64;
  config.rope_theta = 10000.0;
  config.bos_token_id = 1;
  config.eos_token_ids = {2};
  config.dtype = DType::f32;
  config.initializer_range = 0.1;
  return config;
}

inline std::shared_ptr<llama::LlamaForCausalLM> tiny_model(uint64_t seed, DType dtype = DType::f32) {
  auto model = std::make_shared<llama::LlamaForCausalLM>(tiny_config(), dtype);
  Generator gen(seed);
  model->init_parameters(gen);
  return model;
}

// Examples of varying length with a masked "prompt" head.
inline std::vector<train::Example> examples(int count, uint64_t seed) {
  Generator gen(seed);
  std::vector<train::Example> out;
  for (int i = 0; i < count; ++i) {
    const int64_t length = 4 + (i * 5) % 9;
    const std::vector<int64_t> ids = randint(3, 48, {length}, gen).to_vector<int64_t>();
    train::Example example;
    example.ids.assign(ids.begin(), ids.end());
    example.ids[0] = 1;
    for (int64_t t = 0; t < length; ++t) example.loss_mask.push_back(t >= 2 ? 1 : 0);
    out.push_back(example);
  }
  return out;
}

}  // namespace lamina::testing
