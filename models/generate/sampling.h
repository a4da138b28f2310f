// Choosing the next token from logits (llama3.md section 5.2), in Hugging Face's order:
// repetition penalty, temperature (0 = greedy), top-k, top-p, min-p, then a seeded draw.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/rng.h"

namespace lamina::generate {

struct SamplingOptions {
  double temperature = 0.0;         // 0: greedy (argmax); otherwise logits / temperature
  int64_t top_k = 0;                // 0: off
  double top_p = 1.0;               // 1: off
  double min_p = 0.0;               // 0: off
  double repetition_penalty = 1.0;  // 1: off
  uint64_t seed = 0;

  void validate() const;  // throws naming the bad value
};

// The first token whose logit is NaN or +inf, or -1 when there is none (-inf is a legitimate
// logit: a masked token).
int64_t first_non_finite_logit(const float* logits, int64_t vocab);

// The probabilities the draw would use, after every step of the pipeline (all zero but the
// argmax when greedy). `context` holds the tokens seen so far (for the repetition penalty).
// Finite for every valid option: a NaN or +inf logit, or every logit -inf, is an error.
std::vector<double> next_token_probabilities(std::vector<float> logits, const std::vector<int64_t>& context,
                                             const SamplingOptions& options);

// Picks the next token: argmax when greedy, otherwise an inverse-CDF draw from `generator`.
int64_t sample_next_token(const float* logits, int64_t vocab, const std::vector<int64_t>& context,
                          const SamplingOptions& options, Generator& generator);

}  // namespace lamina::generate
