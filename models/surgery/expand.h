// Block expansion, two kinds.
//
// LLaMA Pro: new decoder blocks inserted into a trained Llama, each a copy of
// the block before it with its output projections (self_attn.o_proj and mlp.down_proj, and their
// biases if any) zeroed. A zeroed output projection makes the block add exactly zero to the
// residual stream, so the expanded model computes the same logits, bit for bit, until the new
// blocks are trained (`lamina train sft --trainable ...`, typically on the new blocks alone).
//
// Control LLM (Wei et al. 2025, section 3): chosen layers get a parallel copy of themselves, run
// on the same input, whose output is interpolated with the original's (models/llama/config.h's
// ParallelBlocks). The copy starts equal to the original, so the function is unchanged (bit for
// bit) until the copies are trained (`--trainable expanded`). The copies are stored as
// "model.layers.<i>.expanded.<name>" and the settings in config.json's "lamina_parallel_blocks":
// lamina runs such a folder, transformers has no class for it (it would ignore the copies).
//
// Both stream like a copy: the source tensors are views of its mapped safetensors files,
// renamed, and only the zeroed projections are new memory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lamina::surgery {

// Where each block of the expanded model comes from: source[k] is the original block that block k
// copies, and inserted[k] says whether block k is a new (zero-output) copy.
struct ExpansionPlan {
  std::vector<int64_t> source;
  std::vector<bool> inserted;
  int64_t layers() const { return int64_t(source.size()); }
  // The indices (in the expanded model) of the inserted blocks, in order.
  std::vector<int64_t> inserted_layers() const;
};

// A copy of block i after each i of `insert_after` (original indices, 0-based, each below
// num_layers, no repeats; order does not matter). An empty list, an index out of range or a
// repeat is an error naming it.
ExpansionPlan plan_insert_after(int64_t num_layers, std::vector<int64_t> insert_after);

// LLaMA Pro's layout: the blocks in groups of `every` and one new block after each full group
// (after blocks every-1, 2*every-1, ...); `every` lies in [1, num_layers].
ExpansionPlan plan_every(int64_t num_layers, int64_t every);

// Whether a block's tensor (its name after "model.layers.<i>.") is one that an inserted copy
// zeroes: self_attn.o_proj.* or mlp.down_proj.*.
bool is_output_projection(const std::string& name_within_block);

struct ExpandSummary {
  int64_t old_layers = 0, new_layers = 0;
  std::vector<int64_t> inserted_layers;  // indices in the expanded model
  int64_t tensors = 0;                   // written
  uint64_t bytes_written = 0;            // the weights
  std::vector<std::string> weight_files;
};

// Reads the Hugging Face Llama folder `model_directory` (full precision: a quantized checkpoint, or
// one with parallel blocks, whose layer indices would be renumbered, is refused) and writes into `out_directory` (which must exist) config.json, with
// num_hidden_layers updated and every other field kept, and the expanded weights, sharded above
// max_shard_bytes. Companion files (tokenizer, generation config) are the caller's to copy.
ExpandSummary expand_blocks(const std::string& model_directory, const std::string& out_directory,
                            const ExpansionPlan& plan, uint64_t max_shard_bytes = uint64_t(5) << 30);

struct ParallelSummary {
  std::vector<int64_t> layers;  // the layers given a parallel copy, ascending
  int64_t tensors = 0;          // written
  uint64_t bytes_written = 0;   // the weights
  std::vector<std::string> weight_files;
};

// Control LLM's parallel blocks: a copy of each layer of `layers` (0-based, each below the model's
// layer count, no repeats, any order) beside it, mixed as (1 - alpha) * original + alpha * copy
// (`interpolation` "linear"; alpha in [0, 1]) or by a per-token gate that starts at alpha
// ("dynamic", its weight zero and its bias logit(alpha); alpha in (0, 1)). Reads the full-precision Hugging Face Llama folder
// `model_directory`, which must not have parallel blocks already, and writes into `out_directory`
// (which must exist) every source tensor, the copies, and config.json with
// "lamina_parallel_blocks" added. Companion files are the caller's to copy.
ParallelSummary add_parallel_blocks(const std::string& model_directory, const std::string& out_directory,
                                    std::vector<int64_t> layers, double alpha, const std::string& interpolation,
                                    uint64_t max_shard_bytes = uint64_t(5) << 30);

// The number of layers config.json of `model_directory` declares (num_hidden_layers).
int64_t count_layers(const std::string& model_directory);

}  // namespace lamina::surgery
