// What `lamina generate` shares with its --prompts mode (tools/generate_batch.cpp): the
// sampling flags, the model and tokenizer of --model, and the prompt checks.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/generate/generate.h"
#include "models/llama/model.h"
#include "models/tokenizer/tokenizer.h"
#include "tools/args.h"

namespace lamina::cli {

// --max-new-tokens, the sampling flags, --seed and --device.
void add_generation_flags(FlagParser& parser);
generate::GenerateOptions sampling_options(const FlagParser& parser, int64_t default_max_new_tokens);

// --adapter's value: one PEFT folder (named "default"), or NAME=DIR,NAME=DIR,... (several, which
// --prompts lines choose from). Names are unique and non-empty; the first one is active.
struct AdapterSpec {
  std::string name, directory;
};
std::vector<AdapterSpec> adapter_specs(const FlagParser& parser);

// A GGUF model computing with its weights as stored on the CPU is one whose peak memory is meant
// to stay near its file plus its KV cache: from before the file's metadata is parsed on, freed
// memory goes back to the system at once (return_freed_memory_promptly). Called by load_tokenizer
// and load_model; once is enough.
void keep_memory_small_for_gguf(const FlagParser& parser, const std::string& model_path);

// The model of `path` on the --device, with the --adapter folders loaded (the first active), in
// eval mode; its tokenizer (--tokenizer, else the model's own).
std::shared_ptr<llama::LlamaForCausalLM> load_model(const FlagParser& parser, const std::string& path);
tokenizer::Tokenizer load_tokenizer(const FlagParser& parser, const std::string& model_path);

// options.prefill_chunk_tokens from --prefill-chunk, by default memory_lean_prefill_chunk_tokens
// of the file for a model computing with a GGUF file's blocks as stored (which also releases the
// prefill's freed memory before decoding: release_memory_after_prefill); `path` is --model.
void choose_prefill_chunk(const FlagParser& parser, const llama::LlamaForCausalLM& model, const std::string& path,
                          generate::GenerateOptions& options);

std::vector<int64_t> widen(const std::vector<int32_t>& ids);

// Prompt ids outside the model's vocabulary, named with where they came from before any forward
// pass (generate() refuses them too, but cannot say which flag or line gave them).
void check_prompt_ids(const std::vector<int64_t>& ids, const llama::LlamaConfig& config, const std::string& source);

// `lamina generate --prompts FILE.jsonl`: every prompt of the file through batched generation
// with slot reuse, one JSONL line per prompt in --output, resuming where an earlier run stopped.
int run_generate_batch(const FlagParser& parser, const std::string& model_path);

}  // namespace lamina::cli
