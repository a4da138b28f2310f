// Batched generation with a KV cache: a prefill over the (left-padded) prompts, then one decode
// call per new token, stopping each sequence at a stop token or the length limit.
//
// Lengths are held to the model's context (config max_position_embeddings): a prompt longer
// than the context is an error, and a sequence stops (finish reason "context") when prompt and
// new tokens fill it, so no position past the context is ever computed; except under a sparse
// plan in the cache_slot RoPE mode (streams_past_context), where every RoPE position stays below
// the ring's size and a sequence runs to max_new_tokens. The prefill runs in
// chunks of `prefill_chunk_tokens`, which bounds its attention scores to chunk x context.
//
// A model with a sparse-attention plan (model.model->sparse_attention not dense) generates with
// one ring-buffer cache per prompt (llama::SparseKvCache, sized to that prompt plus its new
// tokens, so its memory follows the plan, in the RoPE mode of `rope_positions`): the prompts are
// prefilled one at a time, then step together, one token each, sampled in the same order as the
// batched path.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "models/generate/sampling.h"
#include "models/llama/model.h"
#include "models/llama/sparse_kv_cache.h"

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
  // After each prompt's prefill, before the output head's product: give the memory the chunks'
  // activations were freed into back to the system (release_free_host_memory), so that the
  // head's pages and the rest of the KV cache, which decoding brings in, do not add to it. For a
  // process whose peak memory should stay near its weights plus its cache (`lamina generate`
  // and `chat` with a GGUF model computed as stored); costs the decode's first allocations
  // their page faults again.
  bool release_memory_after_prefill = false;
  // Under a sparse plan: the ring caches' RoPE positions (original: MoA's, each key at its true
  // position; cache_slot: StreamingLLM's, keys rotated by their place in the cache at every step).
  // Ignored by a dense model. In the cache_slot mode a prefill chunk's tokens take the cache
  // positions after the live entries, so prefill_chunk_tokens is part of what is computed.
  llama::RopePositions rope_positions = llama::RopePositions::original;
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

// Whether a sequence may run past the model's context (max_position_embeddings): StreamingLLM's
// case, the cache_slot RoPE mode under a sparse plan whose rings each hold at most the context's
// number of keys (per layer and KV group, the widest sink + the widest window; no dense head), so
// that no cache position reaches the context. The prompt itself must still fit the context.
bool streams_past_context(const llama::LlamaForCausalLM& model, const GenerateOptions& options);
// New tokens a prompt of `prompt_length` may have: max_new_tokens, or fewer where the context
// ends first (unless streams_past_context).
int64_t new_token_room(const llama::LlamaForCausalLM& model, const GenerateOptions& options, int64_t prompt_length);

// f32 bytes one prompt token's activations take during a prefill forward, by the shape: a layer's
// live tensors (residual, normed input, q/k/v, attention output, its projection, gate, up and their
// product). The attention itself is fused (no chunk x context scores are kept), so the chunk's
// activations grow with its tokens alone.
int64_t prefill_activation_bytes_per_token(const llama::LlamaConfig& config);

// The prefill chunk for a model whose weights take `weight_bytes` in memory (a GGUF file computed
// as stored): the largest power of two from 64 to 512 tokens whose activations take at most 1/24
// of the weights, so that a small quantized model's peak memory stays near its file plus its KV
// cache (a 512-token chunk's layer takes ~16 MB of activations for SmolLM2-135M's 98 MB file).
// 128 for SmolLM2 in Q4_1 and Q8_0, 128 for a 1B model in Q4_0: measured, SmolLM2 Q8_0's peak
// is 202 MB at 512, 194 at 256, 188 at 128; Q4_1's and the 1B's change by under 2 MB below 256.
// Never below 64, where the per-chunk overhead shows. The chunks before the last run without the
// head product, so the output matrix's pages (a tied embedding is a third of SmolLM2's Q4_1
// file) only come in after the activations are gone.
int64_t memory_lean_prefill_chunk_tokens(const llama::LlamaConfig& config, int64_t weight_bytes);

// Refuses an empty prompt, one longer than the model's context and ids outside its vocabulary,
// naming the prompt by its index.
void check_prompts(const llama::LlamaConfig& config, const std::vector<std::vector<int64_t>>& prompts);

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options);

}  // namespace lamina::generate
