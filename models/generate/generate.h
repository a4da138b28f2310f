// Batched generation with a KV cache: one prefill call over the (left-padded) prompts, then
// one decode call per new token, stopping each sequence at a stop token or the length limit.
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
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // the new tokens of each sequence, stop token excluded
  std::vector<std::string> finish_reasons;   // "stop", "length" or "callback"
};

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options);

}  // namespace lamina::generate
