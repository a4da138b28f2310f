// Generation over a queue of prompts with a fixed number of slots (continuous batching): each
// slot holds one sequence at its own length in the KV cache; a new prompt is prefilled alone into
// a free slot, then every busy slot advances by one token per decode step, and a sequence that
// finishes frees its slot for the next prompt at once. A model with a sparse-attention plan
// (model.model->sparse_attention not dense) does the same over a llama::SparseKvCache: each slot
// is a row of ring buffers with its own length and slot positions, in the RoPE mode of
// GenerateOptions::rope_positions, so a prompt generates what it generates alone under the plan.
//
// Limits and finish reasons are generate()'s (generate.h): a prompt longer than the context is
// an error, and a sequence stops at a stop token ("stop"), after max_new_tokens ("length"), when
// it fills the context ("context", never when streams_past_context) or when on_token returns
// false ("callback").
//
// Sampling is per prompt: prompt i draws from its own generator, seeded with
// prompt_seed(sampling.seed, seed index of i), so what a prompt produces does not depend on the
// batch size, on its slot or on the prompts around it. Greedy decoding draws nothing.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "models/generate/generate.h"

namespace lamina::generate {

struct BatchOptions {
  int64_t slots = 8;  // sequences decoded together
  // The index each prompt's seed is derived from; default: its position in `prompts`. A caller
  // that runs part of a list (a resumed job) passes the prompts' places in the whole list.
  std::vector<uint64_t> seed_indices;
  // Per prompt (empty: none): stop tokens added to options.stop_tokens for that prompt alone,
  // e.g. a chat format's end-of-turn ids for the prompts that are conversations.
  std::vector<std::vector<int64_t>> prompt_stop_tokens;
  // Per prompt (empty: every prompt runs with the model's current adapter choice): the LoRA
  // adapter it runs with, an index into nn::lora_selection(model)->adapters, -1 for the base
  // alone. A decode step runs each row with its own adapter (nn::set_row_adapters), so one
  // batch serves prompts of different tasks; the model's choice is restored afterwards.
  std::vector<int64_t> prompt_adapters;
  // Called once per prompt as soon as it finishes, in the order they finish.
  std::function<void(size_t prompt, const std::vector<int64_t>& tokens, const std::string& finish_reason)> on_finish;
};

struct BatchResult : GenerateResult {
  int64_t prefills = 0;        // prompts prefilled (each alone into its slot)
  int64_t reused_slots = 0;    // prefills into a slot that an earlier sequence had freed
  int64_t decode_steps = 0;    // forward calls of one token per busy slot
  int64_t slots_used = 0;      // the cache's batch: min(slots, prompts that generate anything)
};

// The seed of the sampling generator of prompt `index` under base seed `seed`: the two mixed so
// that neighbouring seeds and indices give unrelated streams.
uint64_t prompt_seed(uint64_t seed, uint64_t index);

// Generates a continuation for every prompt with at most options.slots sequences at a time.
// GenerateOptions::on_token gets the prompt's index.
BatchResult generate_batch(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int64_t>>& prompts,
                           const GenerateOptions& options, const BatchOptions& batch);

}  // namespace lamina::generate
