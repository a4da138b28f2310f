#include "models/generate/generate.h"

#include <algorithm>
#include <cmath>

#include "autograd/autograd.h"

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

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options) {
  options.sampling.validate();
  LAMINA_CHECK(!prompts.empty(), "generate: no prompts");
  LAMINA_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  LAMINA_CHECK(options.prefill_chunk_tokens > 0, "generate: prefill_chunk_tokens must be > 0, got ",
               options.prefill_chunk_tokens);
  const llama::LlamaConfig& config = model.config();
  const int64_t context_length = config.max_position_embeddings;
  size_t longest = 0;
  // New tokens each sequence may have: max_new_tokens, or fewer where the context ends first.
  std::vector<int64_t> room(prompts.size());
  check_prompts(config, prompts);
  for (size_t i = 0; i < prompts.size(); ++i) {
    longest = std::max(longest, prompts[i].size());
    room[i] = std::min(options.max_new_tokens, context_length - int64_t(prompts[i].size()));
  }
  const std::vector<int64_t> stop = stop_tokens(config, options);

  GenerateResult result;
  result.tokens.resize(prompts.size());
  result.finish_reasons.resize(prompts.size());
  std::vector<bool> finished(prompts.size(), false);
  for (size_t b = 0; b < prompts.size(); ++b) {
    result.finish_reasons[b] = room[b] < options.max_new_tokens ? "context" : "length";
    finished[b] = room[b] == 0;
  }
  const int64_t most_new_tokens = *std::max_element(room.begin(), room.end());
  if (most_new_tokens == 0) return result;  // nothing to generate: no forward pass at all

  autograd::NoGradGuard no_grad;
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
  std::vector<std::vector<int64_t>> context(prompts.begin(), prompts.end());
  Generator generator(options.sampling.seed);

  llama::ForwardOptions forward;
  forward.cache = &cache;
  forward.last_position_only = true;
  // Prefill chunk by chunk: each call's attention scores are [chunk, keys so far], not
  // [prompt, prompt], and the cache makes the chunks see each other as one prompt.
  const Tensor all_ids = Tensor::from_vector(ids, {batch, prompt_length});
  Tensor logits;
  for (int64_t start = 0; start < prompt_length; start += options.prefill_chunk_tokens) {
    const int64_t end = std::min(prompt_length, start + options.prefill_chunk_tokens);
    logits = model.forward(ops::to_device(ops::contiguous(all_ids.slice(1, start, end)), device), forward);
  }
  for (int64_t step = 0; step < most_new_tokens; ++step) {
    // Sampling runs on the host, in f32 (an f64 model's logits are rounded once here).
    const Tensor on_host = ops::to_device(logits, Device::cpu());
    const Tensor rows = ops::contiguous(on_host.dtype() == DType::f32 ? on_host : ops::cast(on_host, DType::f32));
    const float* data = rows.data<float>();
    std::vector<int64_t> next(size_t(batch), 0);
    size_t running = 0;
    for (size_t b = 0; b < prompts.size(); ++b) {
      next[b] = context[b].back();
      if (finished[b]) continue;
      const float* row = data + int64_t(b) * config.vocab_size;
      const int64_t bad = first_non_finite_logit(row, config.vocab_size);
      LAMINA_CHECK(bad < 0, "generate: the model produced a non-finite logit (",
                   std::isnan(row[std::max<int64_t>(bad, 0)]) ? "NaN" : "+inf",
                   " for token ", bad, ") at step ", step, " (new token ", step + 1, ") of sequence ", b,
                   "; check the model's weights for NaN or Inf values");
      const int64_t token = sample_next_token(row, config.vocab_size, context[b], options.sampling, generator);
      next[b] = token;
      context[b].push_back(token);
      const bool keep_going = !options.on_token || options.on_token(b, token);
      if (std::find(stop.begin(), stop.end(), token) != stop.end()) {
        finished[b] = true;
        result.finish_reasons[b] = "stop";
      } else {
        result.tokens[b].push_back(token);
        if (!keep_going) {
          finished[b] = true;
          result.finish_reasons[b] = "callback";
        } else if (int64_t(result.tokens[b].size()) == room[b]) {
          finished[b] = true;  // keeps the "length" or "context" set above
        }
      }
      running += !finished[b];
    }
    if (running == 0 || step + 1 == most_new_tokens) break;
    logits = model.forward(ops::to_device(Tensor::from_vector(next, {batch, 1}), device), forward);
  }
  return result;
}

}  // namespace lamina::generate
