// CycleQD's SVD mutation of a model: each chosen weight matrix W = U diag(S) V^T becomes
//
//   W' = U diag(S * (1 + sigma * eps)) V^T,   eps_i ~ N(0, 1) per singular value,
//
// which keeps the singular vectors and scales the singular values. It is computed as
// W + U_k diag(sigma * eps * S_k) V_k^T, so that sigma = 0 returns W bit for bit and a truncated
// rank k mutates only the top k directions (the rest of W is kept as it is). eps comes from a
// Philox stream keyed by the seed and the tensor's name, so a (seed, name) pair always draws the
// same values whatever else is mutated.
//
// The model is streamed: the input folder is mapped, each tensor is read, mutated when chosen and
// appended to the output, whose safetensors header is written first from the input's shapes.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "models/surgery/svd.h"

namespace lamina::surgery {

// W' for one matrix; `stream` keys its eps (mutation_stream of its name); rank 0 means full.
Matrix mutate_matrix(const Matrix& weight, double sigma, uint64_t seed, uint64_t stream, int64_t rank,
                     const SvdOptions& options = {});

// The eps stream of a tensor: an FNV-1a hash of its name.
uint64_t mutation_stream(const std::string& name);

struct MutateOptions {
  double sigma = 0.1;
  uint64_t seed = 0;
  // The Linear weights whose names contain any of these; empty: every Linear of the decoder
  // layers (the output head excluded).
  std::vector<std::string> filters;
  int64_t rank = 0;  // 0: the full SVD; otherwise only the top `rank` directions
  SvdOptions svd;
  uint64_t max_shard_bytes = uint64_t(5) << 30;
  std::function<void(int64_t done, int64_t total, const std::string& tensor)> on_tensor;
};

struct MutateSummary {
  int64_t tensors = 0;  // all written
  std::vector<std::string> mutated;
  uint64_t bytes_written = 0;
  std::vector<std::string> weight_files;
};

// The Linear weights (names) of `model_path` that `options` chooses, failing when a filter
// matches none.
std::vector<std::string> mutation_targets(const std::string& model_path, const MutateOptions& options);

// Writes config.json (copied) and the mutated weights (each in its input dtype) into `directory`,
// which must exist; each file is written under a temporary name and renamed when complete.
MutateSummary mutate_model(const std::string& model_path, const std::string& directory, const MutateOptions& options);

}  // namespace lamina::surgery
