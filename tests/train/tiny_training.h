// A tiny Llama and variable-length examples with a masked prompt head: the fixtures of the
// training-loop tests, shared by the CPU suite and the CUDA suite (which runs the same loop on a GPU).
#pragma once

#include <memory>
#include <vector>

#include "model_presets.h"
#include "models/llama/model.h"
#include "train/data.h"

namespace lamina::testing {

// The training fixtures' vocabulary: the examples below draw their ids from it.
inline constexpr int64_t kTinyVocabSize = 48;

inline llama::LlamaConfig tiny_config() { return tiny_llama_config(kTinyVocabSize); }

inline std::shared_ptr<llama::LlamaForCausalLM> tiny_model(uint64_t seed, DType dtype = DType::f32) {
  return random_llama(tiny_config(), seed, dtype);
}

// Examples of varying length with a masked "prompt" head.
inline std::vector<train::Example> examples(int count, uint64_t seed) {
  Generator gen(seed);
  std::vector<train::Example> out;
  for (int i = 0; i < count; ++i) {
    const int64_t length = 4 + (i * 5) % 9;
    const std::vector<int64_t> ids = randint(3, kTinyVocabSize, {length}, gen).to_vector<int64_t>();
    train::Example example;
    example.ids.assign(ids.begin(), ids.end());
    example.ids[0] = 1;
    for (int64_t t = 0; t < length; ++t) example.loss_mask.push_back(t >= 2 ? 1 : 0);
    out.push_back(example);
  }
  return out;
}

}  // namespace lamina::testing
