// Generation under a sparse-attention plan, end to end (spec §6 item 8): a small random Llama
// (2 layers, d 128, 4 query heads on 2 KV heads, head dim 32) with sink + window plans generates
// with its ring-buffer caches, token for token, what the same model generates by recomputing the
// whole prefix at every step under the plan's mask, well past the windows, for prompts of
// different lengths at once and with chunked prefill; with windows wider than prompt + new
// tokens it generates what the dense model generates; the logits of the cached path equal the
// recomputed ones.
#include <algorithm>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/llama/model.h"
#include "models/llama/sparse_kv_cache.h"

using namespace lamina;

namespace {

std::shared_ptr<llama::LlamaForCausalLM> small_model(uint64_t seed) {
  llama::LlamaConfig config = testing::tiny_llama_config(64);
  config.hidden_size = 128;
  config.intermediate_size = 256;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 32;
  config.max_position_embeddings = 256;
  config.initializer_range = 0.3;  // attention far from uniform: the mask moves the tokens
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f32);
  Generator generator(seed);
  model->init_parameters(generator);
  return model;
}

std::vector<int64_t> prompt_of(int64_t length, int64_t salt) {
  std::vector<int64_t> prompt(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) prompt[size_t(i)] = 3 + (i * 11 + salt * 7 + i * i) % 60;
  return prompt;
}

// Greedy tokens by recomputing the whole prefix at every step (no cache): the model applies its
// plan through the fused kernel's mask over all positions.
std::vector<int64_t> recomputed(const llama::LlamaForCausalLM& model, std::vector<int64_t> ids, int64_t new_tokens) {
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> out;
  llama::ForwardOptions options;
  options.last_position_only = true;
  for (int64_t step = 0; step < new_tokens; ++step) {
    const Tensor logits = model.forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}), options);
    const std::vector<float> row = logits.to_vector<float>();
    const int64_t token = int64_t(std::max_element(row.begin(), row.end()) - row.begin());
    out.push_back(token);
    ids.push_back(token);
  }
  return out;
}

generate::GenerateOptions greedy(int64_t new_tokens, int64_t prefill_chunk) {
  generate::GenerateOptions options;
  options.max_new_tokens = new_tokens;
  options.use_config_stop_tokens = false;  // every sequence runs its full length
  options.prefill_chunk_tokens = prefill_chunk;
  return options;
}

llama::SparseAttention mixed_plan() {
  llama::SparseAttention plan;
  plan.sinks = {{1, 0, 2, 1}, {2, 2, 2, 2}};
  plan.windows = {{6, 10, 4, 8}, {8, 8, 8, 8}};
  return plan;
}

}  // namespace

TEST_CASE("sparse generate: ring caches generate what recomputing the prefix under the plan generates") {
  auto model = small_model(5);
  const std::vector<std::vector<int64_t>> prompts = {prompt_of(12, 0), prompt_of(3, 1), prompt_of(25, 2)};
  const int64_t new_tokens = 40;  // 40 + prompt positions, past 2 x every ring (at most 12 slots)
  for (const llama::SparseAttention& plan : {mixed_plan(), llama::SparseAttention::uniform(model->config(), 4, 5)}) {
    model->model->sparse_attention = plan;
    for (int64_t chunk : {512, 5}) {
      INFO("prefill chunks of " << chunk << ", layer 0 window of head 0: " << plan.windows[0][0]);
      const generate::GenerateResult result = generate::generate(*model, prompts, greedy(new_tokens, chunk));
      for (size_t b = 0; b < prompts.size(); ++b) {
        INFO("prompt " << b);
        CHECK(result.finish_reasons[b] == "length");
        CHECK(result.tokens[b] == recomputed(*model, prompts[b], new_tokens));
      }
    }
  }
  // The plan matters: the dense model generates something else (so the comparison above could fail).
  const std::vector<std::vector<int64_t>> sparse_tokens = generate::generate(*model, prompts, greedy(new_tokens, 512)).tokens;
  model->model->sparse_attention = llama::SparseAttention{};
  const std::vector<std::vector<int64_t>> dense_tokens = generate::generate(*model, prompts, greedy(new_tokens, 512)).tokens;
  CHECK(sparse_tokens != dense_tokens);
}

TEST_CASE("sparse generate: windows wider than prompt + new tokens generate what the dense model generates") {
  auto model = small_model(9);
  const std::vector<std::vector<int64_t>> prompts = {prompt_of(9, 3), prompt_of(20, 4)};
  const generate::GenerateOptions options = greedy(30, 7);
  const std::vector<std::vector<int64_t>> dense = generate::generate(*model, prompts, options).tokens;
  // Sink 2 + window 51 covers the 20 + 30 positions of the longest sequence (the last new token
  // is never fed back).
  model->model->sparse_attention = llama::SparseAttention::uniform(model->config(), 2, 51);
  CHECK(generate::generate(*model, prompts, options).tokens == dense);
}

TEST_CASE("sparse generate: the cached forward's logits equal the recomputed ones at every step") {
  autograd::NoGradGuard no_grad;
  auto model = small_model(13);
  model->model->sparse_attention = mixed_plan();
  const std::vector<int64_t> ids = prompt_of(45, 5);
  llama::SparseKvCache cache(model->config(), mixed_plan(), 1, 45);
  CHECK(cache.bytes() < llama::SparseKvCache(model->config(), llama::SparseAttention{}, 1, 45).bytes());
  llama::ForwardOptions cached;
  cached.sparse_cache = &cache;
  cached.last_position_only = true;
  llama::ForwardOptions full;
  full.last_position_only = true;
  const Tensor all = Tensor::from_vector(ids, {1, 45});
  // A prefill of 9 tokens, then one token at a time.
  for (int64_t end = 9; end <= 45; ++end) {
    const int64_t start = end == 9 ? 0 : end - 1;
    const Tensor step_logits = model->forward(ops::contiguous(all.slice(1, start, end)), cached);
    const Tensor expected = model->forward(ops::contiguous(all.slice(1, 0, end)), full);
    INFO("after position " << end - 1);
    CHECK_CLOSE(step_logits, expected, (testing::Tolerance{2e-5, 1e-4}));
  }
}

TEST_CASE("sparse generate: a bf16 model keeps a bf16 ring cache and generates under its plan") {
  auto model = small_model(21);
  model->to(Device::cpu(), DType::bf16);
  model->model->sparse_attention = mixed_plan();
  llama::SparseKvCache cache(model->config(), mixed_plan(), 1, 60, model->dtype());
  CHECK(cache.bytes() * 2 == llama::SparseKvCache(model->config(), mixed_plan(), 1, 60).bytes());
  const generate::GenerateResult result = generate::generate(*model, {prompt_of(14, 6), prompt_of(4, 7)}, greedy(30, 6));
  for (size_t b = 0; b < 2; ++b) {
    CHECK(result.finish_reasons[b] == "length");
    CHECK(result.tokens[b].size() == 30);
  }
}
