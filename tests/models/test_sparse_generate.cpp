// Generation under a sparse-attention plan, end to end (spec §6 item 8): a small random Llama
// (2 layers, d 128, 4 query heads on 2 KV heads, head dim 32) with sink + window plans generates
// with its ring-buffer caches, token for token, what the same model generates by recomputing the
// whole prefix at every step under the plan's mask, well past the windows, for prompts of
// different lengths at once and with chunked prefill; with windows wider than prompt + new
// tokens it generates what the dense model generates; the logits of the cached path equal the
// recomputed ones. Continuous batching under a plan (generate_batch over one SparseKvCache, fewer
// slots than prompts so slots are reused) generates each prompt's tokens as generating it alone
// does, greedy and sampled, with per-prompt stop tokens and LoRA adapters; in both RoPE modes. The cache-slot mode
// streams past the model's context (what it generates does not depend on the context). A cache
// made for another plan than the model's is refused.
#include <algorithm>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/batch.h"
#include "models/generate/generate.h"
#include "models/llama/model.h"
#include "models/llama/sparse_kv_cache.h"
#include "nn/lora.h"

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

namespace {

std::vector<std::vector<int64_t>> five_prompts() {
  return {prompt_of(12, 0), prompt_of(3, 1), prompt_of(25, 2), prompt_of(7, 3), prompt_of(18, 4)};
}

}  // namespace

TEST_CASE("sparse generate: continuous batching under a plan equals each prompt generated alone") {
  auto model = small_model(5);
  const std::vector<std::vector<int64_t>> prompts = five_prompts();
  const int64_t new_tokens = 40;  // past 2 x every ring (at most 12 slots)
  generate::BatchOptions two_slots;
  two_slots.slots = 2;  // five prompts on two slots: three prefills into freed slots
  for (const llama::SparseAttention& plan : {mixed_plan(), llama::SparseAttention::uniform(model->config(), 4, 5)}) {
    model->model->sparse_attention = plan;
    INFO("layer 0 window of head 0: " << plan.windows[0][0]);
    const generate::BatchResult batched = generate::generate_batch(*model, prompts, greedy(new_tokens, 5), two_slots);
    CHECK(batched.slots_used == 2);
    CHECK(batched.reused_slots == 3);
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i);
      CHECK(batched.finish_reasons[i] == "length");
      CHECK(batched.tokens[i] == generate::generate(*model, {prompts[i]}, greedy(new_tokens, 512)).tokens[0]);
      if (i < 2) CHECK(batched.tokens[i] == recomputed(*model, prompts[i], new_tokens));  // the mask's own answer
    }
  }
  // The plan matters here too: the dense model's batch generates something else.
  const std::vector<std::vector<int64_t>> sparse_tokens =
      generate::generate_batch(*model, prompts, greedy(new_tokens, 5), two_slots).tokens;
  model->model->sparse_attention = llama::SparseAttention{};
  CHECK(generate::generate_batch(*model, prompts, greedy(new_tokens, 5), two_slots).tokens != sparse_tokens);
}

TEST_CASE("sparse generate: batched sampling, stop tokens and the cache-slot mode match single runs") {
  auto model = small_model(7);
  model->model->sparse_attention = mixed_plan();
  const std::vector<std::vector<int64_t>> prompts = five_prompts();
  generate::BatchOptions two_slots;
  two_slots.slots = 2;
  generate::BatchOptions one_slot;
  one_slot.slots = 1;

  // Sampling: each prompt draws from its own seed, so the slots do not change what it draws.
  generate::GenerateOptions sampled = greedy(30, 4);
  sampled.sampling.temperature = 1.0;
  sampled.sampling.seed = 17;
  const generate::BatchResult batched = generate::generate_batch(*model, prompts, sampled, two_slots);
  CHECK(batched.tokens == generate::generate_batch(*model, prompts, sampled, one_slot).tokens);
  CHECK(batched.tokens != generate::generate_batch(*model, prompts, greedy(30, 4), two_slots).tokens);

  // A prompt's own stop token ends it where it appears, as it would alone.
  const std::vector<int64_t> alone = generate::generate(*model, {prompts[2]}, greedy(30, 512)).tokens[0];
  generate::BatchOptions stopping = two_slots;
  stopping.prompt_stop_tokens.assign(prompts.size(), {});
  stopping.prompt_stop_tokens[2] = {alone[6]};
  const generate::BatchResult stopped = generate::generate_batch(*model, prompts, greedy(30, 4), stopping);
  CHECK(stopped.finish_reasons[2] == "stop");
  const size_t first = size_t(std::find(alone.begin(), alone.end(), alone[6]) - alone.begin());
  CHECK(stopped.tokens[2] == std::vector<int64_t>(alone.begin(), alone.begin() + int64_t(first)));
  CHECK(stopped.finish_reasons[0] == "length");

  // StreamingLLM's positions: batched equals alone in that mode too (with the same prefill chunks:
  // in this mode a chunk's tokens take the cache positions after the live entries, so the
  // chunking is part of the function), and the mode changes the tokens once the windows have
  // slid (so the option reaches the caches).
  generate::GenerateOptions streaming = greedy(40, 5);
  streaming.rope_positions = llama::RopePositions::cache_slot;
  const generate::BatchResult streamed = generate::generate_batch(*model, prompts, streaming, two_slots);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    CHECK(streamed.tokens[i] == generate::generate(*model, {prompts[i]}, streaming).tokens[0]);
  }
  CHECK(streamed.tokens != generate::generate_batch(*model, prompts, greedy(40, 5), two_slots).tokens);
}

TEST_CASE("sparse generate: cache-slot positions with windows wider than the sequence are the dense model's") {
  auto model = small_model(9);
  const std::vector<std::vector<int64_t>> prompts = {prompt_of(9, 3), prompt_of(20, 4)};
  const std::vector<std::vector<int64_t>> dense = generate::generate(*model, prompts, greedy(30, 7)).tokens;
  model->model->sparse_attention = llama::SparseAttention::uniform(model->config(), 2, 51);
  generate::GenerateOptions streaming = greedy(30, 7);
  streaming.rope_positions = llama::RopePositions::cache_slot;
  CHECK(generate::generate(*model, prompts, streaming).tokens == dense);
}

TEST_CASE("sparse generate: a sparse cache made for another plan than the model's is refused") {
  autograd::NoGradGuard no_grad;
  auto model = small_model(3);
  model->model->sparse_attention = mixed_plan();
  llama::SparseKvCache other(model->config(), llama::SparseAttention::uniform(model->config(), 4, 5), 1, 20);
  llama::ForwardOptions options;
  options.sparse_cache = &other;
  CHECK_THROWS_WITH_AS(model->forward(Tensor::from_vector(prompt_of(5, 0), {1, 5}), options),
                       doctest::Contains("made for another attention plan than the model's"), Error);
  llama::SparseKvCache same(model->config(), mixed_plan(), 1, 20);
  options.sparse_cache = &same;
  CHECK(model->forward(Tensor::from_vector(prompt_of(5, 0), {1, 5}), options).size(1) == 5);
}

TEST_CASE("sparse generate: cache-slot positions stream past the model's context") {
  // Two models of the same weights (the draws depend on the shapes only), contexts 64 and 256.
  auto short_context = [] {
    llama::LlamaConfig config = small_model(31)->config();
    config.max_position_embeddings = 64;
    auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f32);
    Generator generator(31);
    model->init_parameters(generator);
    return model;
  }();
  auto long_context = small_model(31);
  const llama::SparseAttention plan = llama::SparseAttention::uniform(long_context->config(), 2, 6);  // 8 slots
  short_context->model->sparse_attention = plan;
  long_context->model->sparse_attention = plan;
  const std::vector<std::vector<int64_t>> prompts = {prompt_of(10, 1), prompt_of(30, 2), prompt_of(21, 3)};
  generate::GenerateOptions streaming = greedy(100, 8);  // 30 + 100 positions: past the context of 64
  streaming.rope_positions = llama::RopePositions::cache_slot;
  CHECK(generate::streams_past_context(*short_context, streaming));
  const generate::GenerateResult streamed = generate::generate(*short_context, prompts, streaming);
  generate::BatchOptions two_slots;
  two_slots.slots = 2;
  const generate::BatchResult batched = generate::generate_batch(*short_context, prompts, streaming, two_slots);
  const generate::GenerateResult within = generate::generate(*long_context, prompts, streaming);
  for (size_t b = 0; b < prompts.size(); ++b) {
    INFO("prompt " << b);
    CHECK(streamed.finish_reasons[b] == "length");
    CHECK(streamed.tokens[b].size() == 100);
    // The context does not enter the computation: what the longer-context model generates.
    CHECK(streamed.tokens[b] == within.tokens[b]);
    CHECK(batched.tokens[b] == within.tokens[b]);
  }
  // The original positions stop at the context, and so do plans that do not stream: one with a
  // dense head, or a ring longer than the context.
  const generate::GenerateResult clipped = generate::generate(*short_context, prompts, greedy(100, 8));
  CHECK(clipped.finish_reasons[1] == "context");
  CHECK(clipped.tokens[1].size() == 34);
  llama::SparseAttention with_dense_head = plan;
  with_dense_head.windows[1][3] = kAllKeys;
  short_context->model->sparse_attention = with_dense_head;
  CHECK_FALSE(generate::streams_past_context(*short_context, streaming));
  short_context->model->sparse_attention = llama::SparseAttention::uniform(short_context->config(), 4, 61);
  CHECK_FALSE(generate::streams_past_context(*short_context, streaming));
  short_context->model->sparse_attention = llama::SparseAttention::uniform(short_context->config(), 4, 60);
  CHECK(generate::streams_past_context(*short_context, streaming));
  CHECK(generate::generate(*short_context, prompts, streaming).finish_reasons[1] == "length");
}

TEST_CASE("sparse generate: batched prompts under a plan each run with their own LoRA adapter") {
  autograd::NoGradGuard no_grad;
  auto model = small_model(37);
  for (const char* name : {"math", "poetry"}) {
    nn::LoraConfig config;
    config.options.rank = 4;
    config.options.init = nn::LoraInit::random;  // non-zero B: each adapter changes the output
    config.target_modules = {"q_proj", "v_proj", "down_proj"};
    config.seed = uint64_t(name[0]);
    nn::apply_lora(*model, config, name);
  }
  model->eval();
  model->model->sparse_attention = mixed_plan();
  const std::vector<std::vector<int64_t>> prompts = five_prompts();
  generate::BatchOptions batch;
  batch.slots = 2;
  batch.prompt_adapters = {0, 1, -1, 1, 0};  // math, poetry, the base, ...
  const generate::BatchResult result = generate::generate_batch(*model, prompts, greedy(30, 6), batch);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    const int64_t chosen = batch.prompt_adapters[i];
    if (chosen < 0)
      nn::disable_adapters(*model);
    else
      nn::set_active_adapter(*model, chosen == 0 ? "math" : "poetry");
    CHECK(result.tokens[i] == generate::generate(*model, {prompts[i]}, greedy(30, 6)).tokens[0]);
  }
  // The adapters matter: the base alone generates something else for the math prompts.
  nn::disable_adapters(*model);
  CHECK(result.tokens[0] != generate::generate(*model, {prompts[0]}, greedy(30, 6)).tokens[0]);
}
