// Generation at its limits: prompts and answers against the model's context, a prefill split
// into chunks, sampling options at the ends of their ranges, and logits that are not numbers.
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/llama/model.h"

using namespace lamina;

namespace {

// The tiny preset with a context of the test's choosing.
llama::LlamaConfig small_config(int64_t context_length) {
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.max_position_embeddings = context_length;
  config.initializer_range = 0.2;  // large enough that the logits depend visibly on the input
  return config;
}

std::vector<int64_t> counting_prompt(int64_t length) {
  std::vector<int64_t> prompt(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) prompt[size_t(i)] = 3 + i % 30;
  return prompt;
}

// The greedy continuation computed the slow way: the whole sequence through the model each step.
std::vector<int64_t> greedy_by_recomputing(const llama::LlamaForCausalLM& model, std::vector<int64_t> sequence,
                                           int64_t new_tokens) {
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> produced;
  for (int64_t step = 0; step < new_tokens; ++step) {
    const Tensor logits = model.forward(Tensor::from_vector(sequence, {1, int64_t(sequence.size())}));
    const int64_t next = ops::argmax(logits.select(1, int64_t(sequence.size()) - 1), -1).item<int64_t>();
    produced.push_back(next);
    sequence.push_back(next);
  }
  return produced;
}

bool all_finite_and_normalised(const std::vector<double>& p) {
  for (double value : p)
    if (!std::isfinite(value) || value < 0) return false;
  return std::abs(std::accumulate(p.begin(), p.end(), 0.0) - 1.0) < 1e-12;
}

}  // namespace

TEST_CASE("generate holds prompts and answers to the model's context") {
  const auto model = testing::random_llama(small_config(16), 4);
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 10;
  CHECK_THROWS_WITH_AS(generate::generate(*model, {counting_prompt(17)}, options),
                       doctest::Contains("prompt 0 has 17 tokens, more than the model's context of 16 tokens"), Error);
  // 12 prompt tokens leave room for 4 new ones; a shorter prompt in the same batch gets all 10.
  const generate::GenerateResult batched = generate::generate(*model, {counting_prompt(12), counting_prompt(3)}, options);
  CHECK(batched.tokens[0].size() == 4);
  CHECK(batched.finish_reasons[0] == "context");
  CHECK(batched.tokens[1].size() == 10);
  CHECK(batched.finish_reasons[1] == "length");
  CHECK(batched.tokens[0] == greedy_by_recomputing(*model, counting_prompt(12), 4));
  CHECK(batched.tokens[1] == generate::generate(*model, {counting_prompt(3)}, options).tokens[0]);
  // A prompt that fills the context exactly is legal and leaves no room.
  const generate::GenerateResult full = generate::generate(*model, {counting_prompt(16)}, options);
  CHECK(full.tokens[0].empty());
  CHECK(full.finish_reasons[0] == "context");
  options.max_new_tokens = 0;
  const generate::GenerateResult none = generate::generate(*model, {counting_prompt(5)}, options);
  CHECK(none.tokens[0].empty());
  CHECK(none.finish_reasons[0] == "length");
}

TEST_CASE("a prefill in chunks gives the tokens of recomputing the whole sequence") {
  const auto model = testing::random_llama(small_config(64), 8);
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 5;
  const std::vector<int64_t> prompt = counting_prompt(23);
  const std::vector<int64_t> expected = greedy_by_recomputing(*model, prompt, 5);
  for (int64_t chunk : {1, 4, 7, 23, 512}) {
    CAPTURE(chunk);
    options.prefill_chunk_tokens = chunk;
    CHECK(generate::generate(*model, {prompt}, options).tokens[0] == expected);
    // Left padding spans chunks too.
    const generate::GenerateResult batched = generate::generate(*model, {counting_prompt(4), prompt}, options);
    CHECK(batched.tokens[1] == expected);
    CHECK(batched.tokens[0] == greedy_by_recomputing(*model, counting_prompt(4), 5));
  }
  options.prefill_chunk_tokens = 0;
  CHECK_THROWS_WITH_AS(generate::generate(*model, {prompt}, options), doctest::Contains("prefill_chunk_tokens must be > 0"),
                       Error);
}

TEST_CASE("sampling stays finite at the ends of every option's range") {
  const std::vector<float> logits = {2.0f, 5.0f, -1.0f, 4.5f, 0.0f};
  generate::SamplingOptions options;
  // Temperatures so small that logits / T overflow: the limit is greedy.
  for (double temperature : {1e-308, std::numeric_limits<double>::denorm_min(), 1e-30}) {
    CAPTURE(temperature);
    options.temperature = temperature;
    CHECK(generate::next_token_probabilities(logits, {}, options) == std::vector<double>{0, 1, 0, 0, 0});
    Generator generator(1);
    for (int draw = 0; draw < 20; ++draw) CHECK(generate::sample_next_token(logits.data(), 5, {}, options, generator) == 1);
  }
  // Exact ties split the mass even at a tiny temperature.
  const std::vector<double> tied = generate::next_token_probabilities({3.0f, 3.0f, 1.0f}, {}, options);
  CHECK(tied == std::vector<double>{0.5, 0.5, 0});
  // A huge temperature flattens the distribution to (nearly) uniform.
  options.temperature = 1e300;
  for (double p : generate::next_token_probabilities(logits, {}, options)) CHECK(p == doctest::Approx(0.2));
  // Penalties at both ends of the CLI's range, with the temperature at both ends too.
  for (double penalty : {1e-6, 1e6}) {
    for (double temperature : {1e-308, 1.0, 1e6}) {
      CAPTURE(penalty);
      CAPTURE(temperature);
      options.repetition_penalty = penalty;
      options.temperature = temperature;
      CHECK(all_finite_and_normalised(generate::next_token_probabilities({3e38f, -3e38f, 1.0f}, {0, 1}, options)));
      CHECK(all_finite_and_normalised(generate::next_token_probabilities(logits, {0, 1, 2, 3, 4}, options)));
    }
  }
  options.repetition_penalty = 1.0;
  options.temperature = 0.7;
  // top_k beyond the vocabulary keeps everything; the tightest top_p and min_p keep the top token.
  const std::vector<double> plain = generate::next_token_probabilities(logits, {}, options);
  options.top_k = int64_t(1) << 40;
  CHECK(generate::next_token_probabilities(logits, {}, options) == plain);
  options.top_k = 0;
  options.top_p = 1e-9;
  CHECK(generate::next_token_probabilities(logits, {}, options) == std::vector<double>{0, 1, 0, 0, 0});
  options.top_p = 1.0;
  options.min_p = 0.999999;
  CHECK(generate::next_token_probabilities(logits, {}, options) == std::vector<double>{0, 1, 0, 0, 0});
}

TEST_CASE("NaN and +inf logits are errors; -inf logits are masked tokens") {
  const float infinity = std::numeric_limits<float>::infinity();
  for (double temperature : {0.0, 1.0}) {
    generate::SamplingOptions options;
    options.temperature = temperature;
    CHECK_THROWS_WITH_AS(generate::next_token_probabilities({1.0f, std::nanf(""), 0.0f}, {}, options),
                         doctest::Contains("the logit of token 1 is NaN"), Error);
    CHECK_THROWS_WITH_AS(generate::next_token_probabilities({1.0f, 0.0f, infinity}, {}, options),
                         doctest::Contains("the logit of token 2 is +inf"), Error);
    CHECK_THROWS_WITH_AS(generate::next_token_probabilities({-infinity, -infinity}, {}, options),
                         doctest::Contains("every one of the 2 logits is -inf"), Error);
    const std::vector<double> masked = generate::next_token_probabilities({-infinity, 1.0f, -infinity, 1.0f}, {}, options);
    CHECK(masked[0] == 0);
    CHECK(masked[2] == 0);
    CHECK(masked[1] + masked[3] == 1.0);
  }
  CHECK(generate::first_non_finite_logit(std::vector<float>{0.0f, -infinity, 3.0f}.data(), 3) == -1);
}

TEST_CASE("generate names the step and sequence where a model's logits stop being numbers") {
  // All-zero weights give all-zero logits, so greedy decoding picks token 0; token 0's
  // embedding is NaN, so the step after it is the first to see non-finite logits.
  llama::LlamaForCausalLM model(small_config(16));
  float* embedding = model.parameter("model.embed_tokens.weight").data<float>();
  for (int64_t i = 0; i < model.config().hidden_size; ++i) embedding[i] = std::nanf("");
  generate::GenerateOptions options;
  options.use_config_stop_tokens = false;
  options.max_new_tokens = 4;
  std::vector<int64_t> streamed;
  options.on_token = [&streamed](size_t, int64_t token) {
    streamed.push_back(token);
    return true;
  };
  CHECK_THROWS_WITH_AS(generate::generate(model, {{1, 5}, {1, 6, 7}}, options),
                       doctest::Contains("non-finite logit (NaN for token 0) at step 1 (new token 2) of sequence 0"), Error);
  CHECK(streamed == std::vector<int64_t>{0, 0});
}
