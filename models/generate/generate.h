// Batched generation with a KV cache: a prefill over the (left-padded) prompts, then one decode
// call per new token, stopping each sequence at a stop token or the length limit.
//
// Lengths are held to the model's context (config max_position_embeddings): a prompt longer
// than the context is an error, and a sequence stops (finish reason "context") when prompt and
// new tokens fill it, so no position past the context is ever computed. The prefill runs in
// chunks of `prefill_chunk_tokens`, which bounds its attention scores to chunk x context.
//
// A model with a sparse-attention plan (model.model->sparse_attention not dense) generates with
// one ring-buffer cache per prompt (llama::SparseKvCache, sized to that prompt plus its new
// tokens, so its memory follows the plan): the prompts are prefilled one at a time, then step
// together, one token each, sampled in the same order as the batched path.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "models/generate/sampling.h"
#include "models/llama/model.h"

namespace lamina::generate {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  std::vector<int64_t> stop_tokens;  // default: the model config's eos_token_ids
  bool use_config_stop_tokens = true;
  // Called for every new token of every sequence as it is produced (stop tokens included);
  // return false to stop that sequence.
  std::function<bool(size_t sequence, int64_t token)> on_token;
  int64_t prefill_chunk_tokens = 512;  // prompt tokens per prefill call
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // the new tokens of each sequence, stop token excluded
  // "stop", "length" (max_new_tokens reached), "context" (the sequence filled the model's
  // context before max_new_tokens) or "callback"
  std::vector<std::string> finish_reasons;
};

// The tokens that end a sequence under `options`: its stop_tokens, plus the config's
// eos_token_ids when use_config_stop_tokens.
std::vector<int64_t> stop_tokens(const llama::LlamaConfig& config, const GenerateOptions& options);

// Refuses an empty prompt, one longer than the model's context and ids outside its vocabulary,
// naming the prompt by its index.
void check_prompts(const llama::LlamaConfig& config, const std::vector<std::vector<int64_t>>& prompts);

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options);

}  // namespace lamina::generate
