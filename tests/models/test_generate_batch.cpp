// Batched generation with slot reuse (models/generate/batch.h): the KV cache with rows of
// different lengths against recomputing each sequence alone, and every prompt of a mixed batch
// against the same prompt generated alone, on a tiny random model and on stories260k.
#include <algorithm>
#include <numeric>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/real_model.h"
#include "models/generate/batch.h"
#include "models/generate/generate.h"
#include "models/io/gguf_llama.h"
#include "models/llama/model.h"
#include "nn/lora.h"

using namespace lamina;
namespace fs = std::filesystem;

namespace {

llama::LlamaConfig small_config(int64_t context_length) {
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.max_position_embeddings = context_length;
  config.initializer_range = 0.2;  // large enough that the logits depend visibly on the input
  return config;
}

// A prompt of `length` ids in [3, 3 + spread), varied by `salt`.
std::vector<int64_t> varied_prompt(int64_t length, int64_t salt, int64_t spread = 30) {
  std::vector<int64_t> prompt(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) prompt[size_t(i)] = 3 + (i * 7 + salt * 13 + i * i) % spread;
  return prompt;
}

// Seven prompts of lengths from 1 to 40, longest not first, so that slots free in mixed order.
std::vector<std::vector<int64_t>> mixed_prompts(int64_t spread) {
  std::vector<std::vector<int64_t>> prompts;
  const std::vector<int64_t> lengths = {7, 1, 40, 3, 22, 12, 31};
  for (size_t i = 0; i < lengths.size(); ++i) prompts.push_back(varied_prompt(lengths[i], int64_t(i), spread));
  return prompts;
}

// Every prompt of `prompts` through generate_batch with `slots`, against the same prompt
// generated alone by the left-padded generate(); returns the batch's result.
generate::BatchResult check_each_equals_alone(const llama::LlamaForCausalLM& model,
                                              const std::vector<std::vector<int64_t>>& prompts,
                                              const generate::GenerateOptions& options, int64_t slots) {
  generate::BatchOptions batch;
  batch.slots = slots;
  std::vector<size_t> finished;
  batch.on_finish = [&](size_t prompt, const std::vector<int64_t>&, const std::string&) { finished.push_back(prompt); };
  const generate::BatchResult result = generate::generate_batch(model, prompts, options, batch);
  REQUIRE(result.tokens.size() == prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    const generate::GenerateResult alone = generate::generate(model, {prompts[i]}, options);
    CHECK(result.tokens[i] == alone.tokens[0]);
    CHECK(result.finish_reasons[i] == alone.finish_reasons[0]);
  }
  // Each prompt is reported finished exactly once.
  std::sort(finished.begin(), finished.end());
  std::vector<size_t> every(prompts.size());
  std::iota(every.begin(), every.end(), 0);
  CHECK(finished == every);
  return result;
}

}  // namespace

TEST_CASE("a KV cache with rows of different lengths gives the logits of recomputing each sequence") {
  const auto model = testing::random_llama(small_config(64), 3, DType::f64);
  autograd::NoGradGuard no_grad;
  llama::KvCache cache(model->config(), 3, 24, DType::f64);
  std::vector<std::vector<int64_t>> sequences = {varied_prompt(5, 0), varied_prompt(2, 1), varied_prompt(9, 2)};
  std::vector<Tensor> last_logits(3);
  // Prefill each row alone through its one-row view.
  const auto prefill = [&](int64_t row) {
    llama::KvCache view = cache.row_view(row);
    llama::ForwardOptions options;
    options.cache = &view;
    options.last_position_only = true;
    const std::vector<int64_t>& prompt = sequences[size_t(row)];
    last_logits[size_t(row)] = model->forward(Tensor::from_vector(prompt, {1, int64_t(prompt.size())}), options).squeeze(0);
    cache.set_row_length(row, view.length());
  };
  for (int64_t row = 0; row < 3; ++row) prefill(row);
  CHECK(cache.row_length(0) == 5);
  CHECK(cache.row_length(1) == 2);
  CHECK(cache.length() == 9);
  llama::ForwardOptions with_cache;
  with_cache.cache = &cache;
  with_cache.last_position_only = true;
  for (int64_t step = 0; step < 8; ++step) {
    CAPTURE(step);
    for (size_t b = 0; b < sequences.size(); ++b) {
      CAPTURE(b);
      // The reference: this sequence alone, recomputed from scratch without a cache.
      const Tensor full = model->forward(Tensor::from_vector(sequences[b], {1, int64_t(sequences[b].size())}));
      const Tensor expected = full.select(1, int64_t(sequences[b].size()) - 1);
      CHECK_CLOSE(last_logits[b], expected, (testing::Tolerance{1e-10, 1e-10}));
    }
    if (step == 3) {
      // Row 1 is freed and takes a new, longer prompt while the others keep their places.
      sequences[1] = varied_prompt(11, 5);
      cache.set_row_length(1, 0);
      prefill(1);
      CHECK(cache.row_length(1) == 11);
      continue;
    }
    std::vector<int64_t> next;
    for (size_t b = 0; b < sequences.size(); ++b) {
      next.push_back(3 + (5 * step + 11 * int64_t(b)) % 30);
      sequences[b].push_back(next.back());
    }
    const Tensor logits = model->forward(Tensor::from_vector(next, {3, 1}), with_cache);
    for (int64_t b = 0; b < 3; ++b) last_logits[size_t(b)] = logits.select(0, b);
  }
  CHECK(cache.row_length(0) == 5 + 7);
  CHECK(cache.row_length(1) == 11 + 4);
  // Rows of different lengths take one token at a time; a prefill goes through a row view.
  CHECK_THROWS_WITH_AS(model->forward(Tensor::from_vector(std::vector<int64_t>{3, 4, 5, 6, 7, 8}, {3, 2}), with_cache),
                       doctest::Contains("rows of different lengths take one token at a time"), Error);
}

TEST_CASE("generate_batch: each prompt of a mixed batch equals the prompt generated alone, slots reused") {
  // A context of 48: the prompt of 40 tokens has room for 8 new ones and stops at "context".
  const auto model = testing::random_llama(small_config(48), 21);
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 12;
  const std::vector<std::vector<int64_t>> prompts = mixed_prompts(30);
  for (int64_t slots : {1, 3, 7, 16}) {
    CAPTURE(slots);
    const generate::BatchResult result = check_each_equals_alone(*model, prompts, options, slots);
    CHECK(result.finish_reasons[2] == "context");
    CHECK(result.tokens[2].size() == 8);
    CHECK(result.tokens[0].size() == 12);
    CHECK(result.prefills == 7);
    CHECK(result.slots_used == std::min<int64_t>(slots, 7));
    CHECK(result.reused_slots == 7 - std::min<int64_t>(slots, 7));  // more prompts than slots: every slot is reused
  }
  // Stop tokens end rows at different steps; a short limit and a small prefill chunk too.
  const generate::BatchResult plain = generate::generate_batch(*model, prompts, options, {});
  options.stop_tokens = {plain.tokens[0][2], plain.tokens[4][5]};
  options.max_new_tokens = 9;
  options.prefill_chunk_tokens = 5;
  const generate::BatchResult stopped = check_each_equals_alone(*model, prompts, options, 3);
  CHECK(stopped.finish_reasons[0] == "stop");
  CHECK(stopped.tokens[0].size() <= 2);
  CHECK(stopped.reused_slots == 4);
  // Stop tokens of one prompt alone end that prompt and no other.
  options.stop_tokens.clear();
  generate::BatchOptions own_stop;
  own_stop.slots = 3;
  own_stop.prompt_stop_tokens.resize(prompts.size());
  own_stop.prompt_stop_tokens[5] = {plain.tokens[5][1]};
  const generate::BatchResult own = generate::generate_batch(*model, prompts, options, own_stop);
  CHECK(own.finish_reasons[5] == "stop");
  CHECK(own.tokens[5].size() <= 1);
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (i == 5) continue;
    CAPTURE(i);
    CHECK(own.tokens[i] == generate::generate(*model, {prompts[i]}, options).tokens[0]);
  }
  // A prompt that fills the context finishes at once, without a slot.
  std::vector<std::vector<int64_t>> with_full = prompts;
  with_full.insert(with_full.begin() + 1, varied_prompt(48, 9));
  const generate::BatchResult full = check_each_equals_alone(*model, with_full, options, 3);
  CHECK(full.tokens[1].empty());
  CHECK(full.finish_reasons[1] == "context");
  CHECK(full.prefills == 7);
  options.max_new_tokens = 0;
  const generate::BatchResult none = generate::generate_batch(*model, prompts, options, {});
  CHECK(none.prefills == 0);
  CHECK(none.finish_reasons[3] == "length");
}

TEST_CASE("generate_batch: each prompt runs with its own LoRA adapter, as if generated alone with it") {
  autograd::NoGradGuard no_grad;
  const auto model = testing::random_llama(small_config(64), 23);
  for (const char* name : {"math", "poetry"}) {
    nn::LoraConfig config;
    config.options.rank = 4;
    config.options.init = nn::LoraInit::random;  // non-zero B: each adapter changes the output
    config.target_modules = {"q_proj", "v_proj", "down_proj"};
    config.seed = name[0];
    nn::apply_lora(*model, config, name);
  }
  model->eval();
  nn::set_active_adapter(*model, "poetry");
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 10;
  const std::vector<std::vector<int64_t>> prompts = mixed_prompts(30);
  generate::BatchOptions batch;
  batch.slots = 3;
  batch.prompt_adapters = {0, 1, -1, 1, 0, -1, 0};  // math, poetry, the base, ...
  const generate::BatchResult result = generate::generate_batch(*model, prompts, options, batch);
  CHECK(nn::lora_selection(*model)->row_adapters.empty());  // the caller's choice is back
  CHECK(nn::lora_selection(*model)->active == "poetry");
  int differing = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    const int64_t chosen = batch.prompt_adapters[i];
    if (chosen < 0)
      nn::disable_adapters(*model);
    else
      nn::set_active_adapter(*model, chosen == 0 ? "math" : "poetry");
    const generate::GenerateResult alone = generate::generate(*model, {prompts[i]}, options);
    CHECK(result.tokens[i] == alone.tokens[0]);
    // The same prompt with another adapter (or none) generates something else: the choice matters.
    if (chosen == 0)
      nn::set_active_adapter(*model, "poetry");
    else
      nn::set_active_adapter(*model, "math");
    differing += generate::generate(*model, {prompts[i]}, options).tokens[0] != alone.tokens[0] ? 1 : 0;
  }
  CHECK(differing >= 4);
  batch.prompt_adapters = {0, 1, 2, 0, 0, 0, 0};
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, prompts, options, batch),
                       doctest::Contains("asks for adapter 2 but the model has 2"), Error);
  batch.prompt_adapters = {0, 1};
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, prompts, options, batch),
                       doctest::Contains("2 adapter choices for 7 prompts"), Error);
}

TEST_CASE("generate_batch: sampling seeds are per prompt, independent of the batch size and slot") {
  const auto model = testing::random_llama(small_config(64), 5);
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 10;
  options.sampling.temperature = 1.5;  // flat enough that the draws, not the argmax, decide
  options.sampling.seed = 77;
  const std::vector<std::vector<int64_t>> prompts = mixed_prompts(30);
  generate::BatchOptions one, three;
  one.slots = 1;
  three.slots = 3;
  const generate::BatchResult alone = generate::generate_batch(*model, prompts, options, one);
  const generate::BatchResult batched = generate::generate_batch(*model, prompts, options, three);
  CHECK(batched.tokens == alone.tokens);
  // A prompt run by itself with its index as the seed index draws the same tokens.
  generate::BatchOptions single;
  single.seed_indices = {4};
  CHECK(generate::generate_batch(*model, {prompts[4]}, options, single).tokens[0] == batched.tokens[4]);
  // The draws are really per prompt: prompts 0 and 1 given each other's seed index change.
  three.seed_indices = {1, 0, 2, 3, 4, 5, 6};
  const generate::BatchResult swapped = generate::generate_batch(*model, prompts, options, three);
  CHECK(swapped.tokens[0] != batched.tokens[0]);
  CHECK(swapped.tokens[2] == batched.tokens[2]);
  // And the base seed matters.
  options.sampling.seed = 78;
  CHECK(generate::generate_batch(*model, prompts, options, three).tokens != batched.tokens);
  CHECK(generate::prompt_seed(77, 0) != generate::prompt_seed(77, 1));
  CHECK(generate::prompt_seed(77, 0) != generate::prompt_seed(78, 0));
}

TEST_CASE("generate_batch refuses bad arguments before any forward pass") {
  const auto model = testing::random_llama(small_config(16), 2);
  generate::GenerateOptions options;
  generate::BatchOptions batch;
  batch.slots = 0;
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, {{1, 2}}, options, batch), doctest::Contains("at least one slot"),
                       Error);
  batch.slots = 2;
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, {{1, 2}, {1, 99}}, options, batch),
                       doctest::Contains("prompt 1 has token id 99 outside the vocabulary"), Error);
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, {{1, 2}, std::vector<int64_t>(17, 3)}, options, batch),
                       doctest::Contains("prompt 1 has 17 tokens, more than the model's context of 16"), Error);
  batch.seed_indices = {0};
  CHECK_THROWS_WITH_AS(generate::generate_batch(*model, {{1, 2}, {1, 3}}, options, batch),
                       doctest::Contains("1 seed indices for 2 prompts"), Error);
}

TEST_CASE("stories260k: a mixed batch with slot reuse equals each prompt generated alone" * doctest::test_suite("assets")) {
  const fs::path dir = testing::assets_dir("stories260k");
  const auto model = llama::LlamaForCausalLM::load(dir.string());
  generate::GenerateOptions options;
  options.max_new_tokens = 20;
  std::vector<std::vector<int64_t>> prompts = mixed_prompts(400);
  for (auto& prompt : prompts) prompt.insert(prompt.begin(), 1);  // BOS first, as the model was trained
  // 500 tokens in a context of 512: room for 12 new ones.
  prompts.push_back(varied_prompt(500, 8, 400));
  const generate::BatchResult result = check_each_equals_alone(*model, prompts, options, 3);
  CHECK(result.finish_reasons[7] == "context");
  CHECK(result.tokens[7].size() == 12);
  CHECK(result.reused_slots == 5);
  // Stop tokens picked from the answers end two rows early.
  REQUIRE(result.tokens[1].size() >= 4);
  REQUIRE(result.tokens[5].size() >= 7);
  options.stop_tokens = {result.tokens[1][3], result.tokens[5][6]};
  check_each_equals_alone(*model, prompts, options, 3);
  options.stop_tokens.clear();
  options.sampling.temperature = 1.0;
  options.sampling.seed = 3;
  generate::BatchOptions one, three;
  one.slots = 1;
  three.slots = 3;
  CHECK(generate::generate_batch(*model, prompts, options, one).tokens ==
        generate::generate_batch(*model, prompts, options, three).tokens);
}

TEST_CASE("SmolLM2 GGUF: a batch of 4 slots over 6 prompts equals each prompt generated alone" *
          doctest::test_suite("real_model")) {
  const auto model = gguf::load_llama_gguf(testing::smollm2_gguf_path());
  generate::GenerateOptions options;
  options.max_new_tokens = 16;
  // Prompts of 1 to 30 tokens: BOS-free ids of ordinary words, varied so the answers differ.
  std::vector<std::vector<int64_t>> prompts;
  const std::vector<int64_t> lengths = {9, 1, 30, 4, 17, 12};
  for (size_t i = 0; i < lengths.size(); ++i) prompts.push_back(varied_prompt(lengths[i], int64_t(i), 5000));
  const generate::BatchResult result = check_each_equals_alone(*model, prompts, options, 4);
  CHECK(result.reused_slots == 2);
  CHECK(result.slots_used == 4);
}
