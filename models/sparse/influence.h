// MoA's attention influence (sparse-attention.md §1.3): how much the loss would rise if one
// attention entry A[i, j] were masked and its row renormalised, to first order
//
//   E[i, j] = -dS[i, j] / (1 - A[i, j]),   dS = A ⊙ (dA - rowsum(dA ⊙ A))   (dA = dL/dA)
//
// dS is the softmax backward, the gradient w.r.t. the scores, so E falls out of an attention
// backward that keeps A. Positive E: masking the entry raises the loss. (Derivation: zeroing
// A[i, j] scales the rest of row i by 1 / (1 - A[i, j]); the first-order change is
// sum_n dA[i, n] dA'[i, n] = -A[i, j] / (1 - A[i, j]) (dA[i, j] - sum_n dA[i, n] A[i, n]); it is
// exact for a loss linear in A.) Where A[i, j] = 1 the row has nothing left to renormalise and E
// is reported as 0 (only a query that sees one key, which no rule masks: position 0 is a sink).
//
// Three pieces:
// - influence_attention: a differentiable attention that materialises A one (row, head) at a
//   time, never for the whole model: the forward keeps q, k, v only; the backward recomputes A,
//   hands every row of E to a callback and returns dq, dk, dv (the same as ops::attention's);
// - InfluenceLevel: E summed per (layer, head) over 64 x 64 blocks of positions, over the items
//   of one length level, and their block means (Ē); the loss increase of a rule,
//   ΔL = sum over masked (i, j) of Ē[i, j], counted block by block;
// - InfluenceProbe: the llama::AttentionProbe that routes every layer through
//   influence_attention into an InfluenceLevel.
//
// Profile file (JSON, written by `lamina sparse profile`):
//   { "format": "lamina-moa-profile", "version": 1, "layers": L, "heads": H, "block": 64,
//     ... other members (model, data) kept for the reader,
//     "levels": [ { "length": N, "items": n,
//                   "influence": [L][H][b (b + 1) / 2] } ] }
// where b = ceil(N / block) and each innermost list holds the block means of the lower
// triangle, row-major: block (r, c) with c <= r at index r (r + 1) / 2 + c. A block's mean is
// over its causal pairs (i >= j, both < N) and the items, an item shorter than N counting 0 past
// its end (as MoA's padding to the length level does).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/model.h"
#include "models/sparse/moa_plan.h"
#include "ops/attention_pattern.h"
#include "tensor/io/json.h"
#include "tensor/tensor.h"

namespace lamina::sparse {

// One row of E: query `query_position` (absolute) of batch row `batch_row`, query head `head`,
// over keys 0..keys-1 (0 where the pattern hides a key).
struct InfluenceRow {
  int64_t batch_row = 0, head = 0, query_position = 0, keys = 0;
  const double* values = nullptr;
};
using InfluenceCallback = std::function<void(const InfluenceRow& row)>;

// q [B, Hq, T, D], k and v [B, Hkv, S, D] (Hq a multiple of Hkv), under `pattern`'s mask
// (ops/attention_pattern.h, additive mask included) -> [B, Hq, T, D] in q's dtype. Computed in
// f64 for f64 inputs, else f32 (rows reduced in f64). CPU only. The backward calls
// `on_influence` once per (batch row, head, query row), in that order.
Tensor influence_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                           std::optional<double> scale, InfluenceCallback on_influence);

// Influence sums and block means for one length level of a model's layers x heads.
class InfluenceLevel {
 public:
  InfluenceLevel() = default;
  InfluenceLevel(int64_t length, int64_t layers, int64_t heads, int64_t block = 64);

  int64_t length() const { return length_; }
  int64_t layers() const { return layers_; }
  int64_t heads() const { return heads_; }
  int64_t block() const { return block_; }
  int64_t blocks() const { return blocks_; }  // per side: ceil(length / block)
  int64_t items() const { return items_; }

  // Adds one row of E for `layer`; positions at or past length() are ignored (a longer item
  // is the caller's error, checked there).
  void add_row(int64_t layer, const InfluenceRow& row);
  // Counts `count` finished items (the denominators of the means).
  void finish_items(int64_t count) { items_ += count; }

  // Block mean Ē of (layer, head) at block (row, column), column <= row.
  double block_mean(int64_t layer, int64_t head, int64_t block_row, int64_t block_column) const;
  // Sets a block mean directly (synthetic profiles in tests; reading a profile file).
  void set_block_mean(int64_t layer, int64_t head, int64_t block_row, int64_t block_column, double mean);

  // ΔL of running (layer, head) under `rule` at this level's length: the sum of Ē over the
  // (query, key) pairs the rule masks, each block's mean times its masked pairs.
  double rule_loss(int64_t layer, int64_t head, const ElasticRule& rule) const;
  // The same for many rules at once: [layers][heads][rules], flattened.
  std::vector<double> rule_losses(const std::vector<ElasticRule>& rules) const;

  json::Value to_json() const;
  static InfluenceLevel from_json(const json::Value& value, int64_t layers, int64_t heads, int64_t block,
                                  const std::string& what);

 private:
  int64_t triangle_index(int64_t block_row, int64_t block_column) const {
    return block_row * (block_row + 1) / 2 + block_column;
  }
  int64_t causal_pairs(int64_t block_row, int64_t block_column) const;
  // Pairs of the block that a head with (sink, window) hides, per block of the lower triangle.
  std::vector<int64_t> masked_pairs(int64_t sink, int64_t window) const;

  int64_t length_ = 0, layers_ = 0, heads_ = 0, block_ = 64, blocks_ = 0, items_ = 0;
  // Summed E per [layer][head][triangle block] while profiling; once read back from a file (or
  // set directly) the means themselves, with means_ true.
  std::vector<double> values_;
  bool means_ = false;
};

struct InfluenceProfile {
  int64_t layers = 0, heads = 0, block = 64;
  std::vector<InfluenceLevel> levels;
  json::Object extra;  // written before "levels" (model, data, loss)

  const InfluenceLevel& level(int64_t length) const;  // throws naming the lengths it has
  json::Value to_json() const;
  static InfluenceProfile from_json(const json::Value& value, const std::string& what);
  static InfluenceProfile read(const std::string& path);
  void write(const std::string& path) const;  // atomically
};

// Routes every layer's attention through influence_attention into `level` (which must have
// the model's layers and query heads). The caller runs forward and backward per item and then
// level.finish_items(batch).
// `absolute` (the default) adds |E| rather than E, as MoA's released profiler does (its pipeline
// takes the absolute value of every entry before the block aggregation): signed influences of one
// row nearly cancel (dS sums to 0 over a row), so masking many of them looks free to a first-order
// sum although it is not; magnitudes charge every masked entry that matters, either way.
class InfluenceProbe : public llama::AttentionProbe {
 public:
  explicit InfluenceProbe(InfluenceLevel& level, bool absolute = true) : level_(level), absolute_(absolute) {}
  Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v,
                const AttentionPattern& pattern) override;

 private:
  InfluenceLevel& level_;
  bool absolute_;
};

}  // namespace lamina::sparse
