#include "models/generate/generate.h"

#include <algorithm>

#include "autograd/autograd.h"

namespace lamina::generate {

GenerateResult generate(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                        const GenerateOptions& options) {
  options.sampling.validate();
  LAMINA_CHECK(!prompts.empty(), "generate: no prompts");
  LAMINA_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  const llama::LlamaConfig& config = model.config();
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    LAMINA_CHECK(!prompts[i].empty(), "generate: prompt ", i, " is empty (start it with the BOS token)");
    for (int64_t id : prompts[i])
      LAMINA_CHECK(id >= 0 && id < config.vocab_size, "generate: prompt ", i, " has token id ", id,
                   " outside the vocabulary of ", config.vocab_size);
    longest = std::max(longest, prompts[i].size());
  }
  std::vector<int64_t> stop = options.stop_tokens;
  if (options.use_config_stop_tokens) stop.insert(stop.end(), config.eos_token_ids.begin(), config.eos_token_ids.end());

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
  // bf16 model's cache is half the size of an f32 one.
  llama::KvCache cache(config, batch, prompt_length + std::max<int64_t>(options.max_new_tokens, 1), model.dtype(),
                       padding, device);
  GenerateResult result;
  result.tokens.resize(prompts.size());
  result.finish_reasons.assign(prompts.size(), "length");
  std::vector<std::vector<int64_t>> context(prompts.begin(), prompts.end());
  std::vector<bool> finished(prompts.size(), false);
  Generator generator(options.sampling.seed);

  llama::ForwardOptions forward;
  forward.cache = &cache;
  forward.last_position_only = true;
  Tensor logits = model.forward(ops::to_device(Tensor::from_vector(ids, {batch, prompt_length}), device), forward);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    // Sampling runs on the host, in f32 (an f64 model's logits are rounded once here).
    const Tensor on_host = ops::to_device(logits, Device::cpu());
    const Tensor rows = ops::contiguous(on_host.dtype() == DType::f32 ? on_host : ops::cast(on_host, DType::f32));
    const float* data = rows.data<float>();
    std::vector<int64_t> next(size_t(batch), 0);
    size_t running = 0;
    for (size_t b = 0; b < prompts.size(); ++b) {
      next[b] = context[b].back();
      if (finished[b]) continue;
      const int64_t token =
          sample_next_token(data + int64_t(b) * config.vocab_size, config.vocab_size, context[b], options.sampling, generator);
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
        }
      }
      running += !finished[b];
    }
    if (running == 0 || step + 1 == options.max_new_tokens) break;
    logits = model.forward(ops::to_device(Tensor::from_vector(next, {batch, 1}), device), forward);
  }
  return result;
}

}  // namespace lamina::generate
