#include "models/generate/generate.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "autograd/autograd.h"
#include "models/llama/sparse_kv_cache.h"
#include "tensor/host_memory.h"

namespace lamina::generate {

std::vector<int64_t> stop_tokens(const llama::LlamaConfig& config, const GenerateOptions& options) {
  std::vector<int64_t> stop = options.stop_tokens;
  if (options.use_config_stop_tokens) stop.insert(stop.end(), config.eos_token_ids.begin(), config.eos_token_ids.end());
  return stop;
}

void check_prompts(const llama::LlamaConfig& config, const std::vector<std::vector<int64_t>>& prompts) {
  const int64_t context_length = config.max_position_embeddings;
  for (size_t i = 0; i < prompts.size(); ++i) {
    LAMINA_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty (start it with the BOS token)");
    LAMINA_CHECK(int64_t(prompts[i].size()) <= context_length, "generate: prompt ", i, " has ", prompts[i].size(),
                 " tokens, more than the model's context of ", context_length, " tokens (max_position_embeddings)");
    for (int64_t id : prompts[i])
      LAMINA_CHECK(id >= 0 && id < config.vocab_size, "generate: prompt ", i, " has token id ", id,
                   " outside the vocabulary of ", config.vocab_size);
  }
}

int64_t prefill_activation_bytes_per_token(const llama::LlamaConfig& config) {
  const int64_t attention_width = (config.num_attention_heads + 2 * config.num_key_value_heads) * config.head_dim;
  const int64_t floats = 4 * config.hidden_size + attention_width + 3 * config.intermediate_size;
  return floats * int64_t(sizeof(float));
}

int64_t memory_lean_prefill_chunk_tokens(const llama::LlamaConfig& config, int64_t weight_bytes) {
  constexpr int64_t kLargest = 512, kSmallest = 64, kWeightShare = 24;
  const int64_t budget = weight_bytes / kWeightShare, per_token = prefill_activation_bytes_per_token(config);
  int64_t chunk = kLargest;
  while (chunk > kSmallest && chunk * per_token > budget) chunk /= 2;
  return chunk;
}

bool streams_past_context(const llama::LlamaForCausalLM& model, const GenerateOptions& options) {
  const llama::SparseAttention& plan = model.model->sparse_attention;
  if (options.rope_positions != llama::RopePositions::cache_slot || plan.dense()) return false;
  const llama::LlamaConfig& config = model.config();
  const int64_t group = config.num_attention_heads / config.num_key_value_heads;
  for (size_t layer = 0; layer < plan.sinks.size(); ++layer)
    for (int64_t first = 0; first < config.num_attention_heads; first += group) {
      int64_t sink = 0, window = 0;
      for (int64_t h = first; h < first + group; ++h) {
        sink = std::max(sink, plan.sinks[layer][size_t(h)]);
        window = std::max(window, plan.windows[layer][size_t(h)]);
      }
      // A ring of sink + window slots gives cache positions below sink + window.
      if (window == kAllKeys || sink > config.max_position_embeddings - window) return false;
    }
  return true;
}

int64_t new_token_room(const llama::LlamaForCausalLM& model, const GenerateOptions& options, int64_t prompt_length) {
  if (streams_past_context(model, options)) return options.max_new_tokens;
  return std::max<int64_t>(0, std::min(options.max_new_tokens, model.config().max_position_embeddings - prompt_length));
}

namespace {

// What every sequence has produced so far and whether it is done: the sampling step that the
// batched path and the sparse path (one cache per prompt) share, so that both draw from the
// generator in the same order (sequence by sequence within a step) and stop for the same reasons.
class Sequences {
 public:
  Sequences(const std::vector<std::vector<int64_t>>& prompts, std::vector<int64_t> room, const GenerateOptions& options,
            std::vector<int64_t> stop)
      : context(prompts.begin(), prompts.end()),
        room_(std::move(room)),
        options_(options),
        stop_(std::move(stop)),
        finished_(prompts.size(), false) {
    result.tokens.resize(prompts.size());
    result.finish_reasons.resize(prompts.size());
    for (size_t b = 0; b < prompts.size(); ++b) {
      result.finish_reasons[b] = room_[b] < options.max_new_tokens ? "context" : "length";
      finished_[b] = room_[b] == 0;
    }
  }

  bool finished(size_t b) const { return finished_[b]; }
  int64_t room(size_t b) const { return room_[b]; }

  // Draws sequence b's next token from its logits `row` (f32, vocabulary long) at `step`,
  // records it, and marks b finished at a stop token, a refusing callback or its length limit.
  int64_t take(size_t b, const float* row, int64_t vocab, int64_t step, Generator& generator) {
    const int64_t bad = first_non_finite_logit(row, vocab);
    LAMINA_CHECK(bad < 0, "generate: the model produced a non-finite logit (",
                 std::isnan(row[std::max<int64_t>(bad, 0)]) ? "NaN" : "+inf", " for token ", bad, ") at step ", step,
                 " (new token ", step + 1, ") of sequence ", b, "; check the model's weights for NaN or Inf values");
    const int64_t token = sample_next_token(row, vocab, context[b], options_.sampling, generator);
    context[b].push_back(token);
    const bool keep_going = !options_.on_token || options_.on_token(b, token);
    if (std::find(stop_.begin(), stop_.end(), token) != stop_.end()) {
      finished_[b] = true;
      result.finish_reasons[b] = "stop";
    } else {
      result.tokens[b].push_back(token);
      if (!keep_going) {
        finished_[b] = true;
        result.finish_reasons[b] = "callback";
      } else if (int64_t(result.tokens[b].size()) == room_[b]) {
        finished_[b] = true;  // keeps the "length" or "context" set above
      }
    }
    return token;
  }

  GenerateResult result;
  std::vector<std::vector<int64_t>> context;  // prompt and new tokens of each sequence

 private:
  std::vector<int64_t> room_;
  const GenerateOptions& options_;
  std::vector<int64_t> stop_;
  std::vector<bool> finished_;
};

// Logits [B, 1, V] on the host in f32 (an f64 model's logits are rounded once here).
Tensor host_logits(const Tensor& logits) {
  const Tensor on_host = ops::to_device(logits, Device::cpu());
  return ops::contiguous(on_host.dtype() == DType::f32 ? on_host : ops::cast(on_host, DType::f32));
}

// Generation under the model's sparse-attention plan: a SparseKvCache per prompt (the rings
// advance every row together and have no padding), sized to its prompt and new tokens, so its
// memory follows the plan; the prompts step together, one token each per step, in order.
void generate_sparse(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                     const GenerateOptions& options, Sequences& sequences, int64_t most_new_tokens) {
  const llama::LlamaConfig& config = model.config();
  const Device device = model.device();
  std::vector<std::unique_ptr<llama::SparseKvCache>> caches(prompts.size());
  std::vector<Tensor> logits(prompts.size());
  for (size_t b = 0; b < prompts.size(); ++b) {
    if (sequences.finished(b)) continue;
    const int64_t prompt_length = int64_t(prompts[b].size());
    caches[b] = std::make_unique<llama::SparseKvCache>(config, model.model->sparse_attention, 1,
                                                       prompt_length + sequences.room(b), model.dtype(), device,
                                                       options.rope_positions);
    llama::ForwardOptions forward;
    forward.sparse_cache = caches[b].get();
    forward.last_position_only = true;
    const Tensor ids = Tensor::from_vector(prompts[b], {1, prompt_length});
    for (int64_t start = 0; start < prompt_length; start += options.prefill_chunk_tokens) {
      const int64_t end = std::min(prompt_length, start + options.prefill_chunk_tokens);
      const Tensor chunk = ops::to_device(ops::contiguous(ids.slice(1, start, end)), device);
      const Tensor hidden = model.hidden_states(chunk, forward);  // before the last chunk only the cache is wanted
      if (end < prompt_length) continue;
      if (options.release_memory_after_prefill) release_free_host_memory();
      logits[b] = model.head_product(hidden);
    }
  }
  Generator generator(options.sampling.seed);
  for (int64_t step = 0; step < most_new_tokens; ++step) {
    size_t running = 0;
    for (size_t b = 0; b < prompts.size(); ++b) {
      if (sequences.finished(b)) continue;
      const Tensor row = host_logits(logits[b]);
      sequences.take(b, row.data<float>(), config.vocab_size, step, generator);
      if (sequences.finished(b)) caches[b].reset();  // its memory goes back at once
      running += !sequences.finished(b);
    }
    if (running == 0 || step + 1 == most_new_tokens) break;
    for (size_t b = 0; b < prompts.size(); ++b) {
      if (sequences.finished(b)) continue;
      llama::ForwardOptions forward;
      forward.sparse_cache = caches[b].get();
      forward.last_position_only = true;
      const Tensor next = Tensor::from_vector(std::vector<int64_t>{sequences.context[b].back()}, {1, 1});
      logits[b] = model.forward(ops::to_device(next, device), forward);
    }
  }
}

}  // namespace

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options) {
  options.sampling.validate();
  LAMINA_CHECK(!prompts.empty(), "generate: no prompts");
  LAMINA_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  LAMINA_CHECK(options.prefill_chunk_tokens > 0, "generate: prefill_chunk_tokens must be > 0, got ",
               options.prefill_chunk_tokens);
  const llama::LlamaConfig& config = model.config();
  size_t longest = 0;
  // New tokens each sequence may have: max_new_tokens, or fewer where the context ends first.
  std::vector<int64_t> room(prompts.size());
  check_prompts(config, prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    longest = std::max(longest, prompts[i].size());
    room[i] = new_token_room(model, options, int64_t(prompts[i].size()));
  }
  Sequences sequences(prompts, room, options, stop_tokens(config, options));
  const int64_t most_new_tokens = *std::max_element(room.begin(), room.end());
  if (most_new_tokens == 0) return sequences.result;  // nothing to generate: no forward pass at all

  autograd::NoGradGuard no_grad;
  if (!model.model->sparse_attention.dense()) {
    generate_sparse(model, prompts, options, sequences, most_new_tokens);
    return sequences.result;
  }
  const int64_t batch = int64_t(prompts.size()), prompt_length = int64_t(longest);
  std::vector<int64_t> padding, ids;
  for (const auto& prompt : prompts) {
    const int64_t pad = prompt_length - int64_t(prompt.size());
    padding.push_back(pad);
    ids.insert(ids.end(), size_t(pad), prompt.front());  // any id: padding slots are masked
    ids.insert(ids.end(), prompt.begin(), prompt.end());
  }
  const Device device = model.device();
  // Keys and values in the model's own dtype: attention takes q, k and v of one dtype, and a
  // bf16 model's cache is half the size of an f32 one. The last new token is never fed back,
  // so the cache holds the prompt and most_new_tokens - 1 more: no row's real tokens pass the
  // context (left padding adds at most the spread of the prompt lengths).
  llama::KvCache cache(config, batch, prompt_length + most_new_tokens - 1, model.dtype(), padding, device);
  Generator generator(options.sampling.seed);

  llama::ForwardOptions forward;
  forward.cache = &cache;
  forward.last_position_only = true;
  // Prefill chunk by chunk: each call's attention scores are [chunk, keys so far], not
  // [prompt, prompt], and the cache makes the chunks see each other as one prompt.
  const Tensor all_ids = Tensor::from_vector(ids, {batch, prompt_length});
  // The chunks before the last one fill the cache alone: their logits would be thrown away, and
  // the head product would bring the whole output matrix (a tied embedding: a third of
  // SmolLM2's file) into memory while later chunks' activations are still to come.
  Tensor logits;
  for (int64_t start = 0; start < prompt_length; start += options.prefill_chunk_tokens) {
    const int64_t end = std::min(prompt_length, start + options.prefill_chunk_tokens);
    const Tensor chunk = ops::to_device(ops::contiguous(all_ids.slice(1, start, end)), device);
    const Tensor hidden = model.hidden_states(chunk, forward);
    if (end < prompt_length) continue;
    if (options.release_memory_after_prefill) release_free_host_memory();
    logits = model.head_product(hidden);  // host_logits makes a bf16 model's logits f32, as forward would
  }
  for (int64_t step = 0; step < most_new_tokens; ++step) {
    const Tensor rows = host_logits(logits);
    const float* data = rows.data<float>();
    std::vector<int64_t> next(size_t(batch), 0);
    size_t running = 0;
    for (size_t b = 0; b < prompts.size(); ++b) {
      if (!sequences.finished(b))
        sequences.take(b, data + int64_t(b) * config.vocab_size, config.vocab_size, step, generator);
      next[b] = sequences.context[b].back();
      running += !sequences.finished(b);
    }
    if (running == 0 || step + 1 == most_new_tokens) break;
    logits = model.forward(ops::to_device(Tensor::from_vector(next, {batch, 1}), device), forward);
  }
  return sequences.result;
}

}  // namespace lamina::generate
