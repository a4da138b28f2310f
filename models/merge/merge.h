// Merging whole models by a recipe, streamed: each input folder is mapped, tensors are merged one
// at a time and each in chunks converted to f32, so that merging N models of S bytes holds a few
// chunks per model (and, for TIES, one tensor's magnitudes) rather than N * S bytes. The output's
// safetensors header is written first (every shape and dtype is known from the inputs' headers)
// and the merged chunks are appended as they are computed. The mapped input pages of the tensor
// being merged are given back to the system once it is done.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "models/llama/config.h"
#include "models/merge/recipe.h"
#include "tensor/tensor.h"

namespace lamina::merge {

// How many entries of a tensor are merged at a time: 16 MiB of f32 per model.
inline constexpr int64_t kDefaultChunkElements = int64_t(1) << 22;

// Merges tensor `name` of a model of `num_layers` layers from `inputs` (one per
// recipe.input_paths() entry, in that order; any floating dtype, e.g. views of mapped files),
// reading `chunk_elements` entries of each at a time (rounded up to a multiple of 4), and hands
// each merged chunk (flat, f32) to `write`, in order. Methods that need the whole tensor (TIES'
// magnitude cut, SLERP's angle) first pass over it once to compute that. `stream` separates the
// random drops (DARE) of different tensors; the driver derives it from the name.
void merge_tensor_chunks(const Recipe& recipe, const std::string& name, const std::vector<Tensor>& inputs,
                         int64_t num_layers, uint64_t stream, int64_t chunk_elements,
                         const std::function<void(const Tensor& chunk)>& write);

// The whole merged tensor (f32, the inputs' shape): merge_tensor_chunks collected.
Tensor merge_tensor(const Recipe& recipe, const std::string& name, const std::vector<Tensor>& inputs,
                    int64_t num_layers, uint64_t stream, int64_t chunk_elements = kDefaultChunkElements);

// The DARE random stream of a tensor: a hash of its name.
uint64_t tensor_stream(const std::string& name);

struct MergeOptions {
  uint64_t max_shard_bytes = uint64_t(5) << 30;  // as safetensors::save_checkpoint shards
  int64_t chunk_elements = kDefaultChunkElements;
  // Called after each tensor is written (done of total).
  std::function<void(int64_t done, int64_t total, const std::string& tensor)> on_tensor;
};

struct MergeSummary {
  int64_t tensors = 0;
  uint64_t bytes_written = 0;  // the merged weights
  llama::LlamaConfig config;   // what config.json says
  std::vector<std::string> weight_files;
};

// Checks that every input of `recipe` is a full-precision Llama folder of one architecture with
// the same tensors (names, shapes, floating dtypes), naming the first difference, then writes
// config.json (the first input's, its dtype the output's) and the merged weights into
// `directory`, which must exist. Each weights file is written under a temporary name and renamed
// when complete; the caller stages the folder as a whole.
MergeSummary merge_models(const Recipe& recipe, const std::string& directory, const MergeOptions& options = {});

}  // namespace lamina::merge
