// Block expansion (LLaMA Pro): new decoder blocks inserted into a trained Llama, each a copy of
// the block before it with its output projections (self_attn.o_proj and mlp.down_proj, and their
// biases if any) zeroed. A zeroed output projection makes the block add exactly zero to the
// residual stream, so the expanded model computes the same logits, bit for bit, until the new
// blocks are trained (`lamina train sft --trainable ...`, typically on the new blocks alone).
//
// The expansion streams like a copy: the source tensors are views of its mapped safetensors
// files, renumbered, and only the zeroed projections are new memory.
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

// Reads the Hugging Face Llama folder `model_directory` (full precision: a quantized checkpoint is
// refused) and writes into `out_directory` (which must exist) config.json, with
// num_hidden_layers updated and every other field kept, and the expanded weights, sharded above
// max_shard_bytes. Companion files (tokenizer, generation config) are the caller's to copy.
ExpandSummary expand_blocks(const std::string& model_directory, const std::string& out_directory,
                            const ExpansionPlan& plan, uint64_t max_shard_bytes = uint64_t(5) << 30);

// The number of layers config.json of `model_directory` declares (num_hidden_layers).
int64_t count_layers(const std::string& model_directory);

}  // namespace lamina::surgery
