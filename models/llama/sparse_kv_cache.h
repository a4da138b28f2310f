// The KV cache of a sparse-attention plan (sparse-attention.md section 4): per layer and KV head a
// ring buffer of capacity sink + W (W = the widest window among the query heads sharing that KV
// head), with the absolute position held in each slot, so that memory stops growing once a
// head's window is full. Dense heads (window kAllKeys) keep every position: their ring is as long
// as the capacity the cache was made for. The sink is the largest of the group's query heads too,
// and each query head still masks by its own sink and window. Consecutive KV heads of a layer with
// the same slot rule (sink and ring length) share one ring tensor, so a uniform plan attends with
// one ops::cached_attention call per layer. Inference only (no gradients). The op has a CUDA kernel
// (ops/cuda/cached_attention.cu, positions may stay on the host) that has not run on a GPU yet;
// the model runs sparse plans on the CPU only until the CUDA attention twins are verified.
//
// Each row b holds its own number of positions, row_length(b), and its own slot positions, as
// KvCache's rows do (slot reuse in continuous batching, models/generate/batch.h): a row's prompt
// is prefilled alone through row_view(b), set_row_length records the result (or 0 frees the
// row), and a decode step of one token writes each row at its own slot rule position and
// attends only that row's live slots. Rows of one length advance together by any number of
// tokens; rows of different lengths take one token at a time.
//
// RoPE positions (sparse-attention.md §2.1, §4.2), chosen when the cache is made:
// - original (MoA's, the default): keys are stored after RoPE at their true positions, so
//   attention over the ring's slots, in any order, equals dense attention under the plan's mask.
// - cache_slot (StreamingLLM's): keys are stored before RoPE, and at every step each live key is
//   rotated by its logical cache position: its rank by absolute position among the ring's entries
//   that the chunk's first token may still see under the ring's sink and window (the sinks
//   0..s-1, then the window oldest first; the entry that token overwrites is seen by no one).
//   The chunk's tokens take the positions after those entries, each query its own token's. A
//   decode step's query is thus at most capacity - 1, and every query-key distance stays below
//   the ring's capacity (plus the chunk in a prefill), which lets generation stream past the
//   model's trained context (generate::streams_past_context). The model hands attend() q and k
//   before RoPE in this mode (LlamaAttention::forward asks rope_positions()). Which keys a query
//   sees is still decided by the true positions (the plan's sink and window).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/llama/config.h"
#include "models/llama/model.h"

namespace lamina::llama {

enum class RopePositions { original, cache_slot };
const char* rope_positions_name(RopePositions mode);  // "original", "cache-slot"

class SparseKvCache {
 public:
  // `max_length`: the most positions a row will hold (prompt + new tokens); it sizes dense heads
  // and any window wider than it. The plan must fit the config (SparseAttention::check); a dense
  // plan is legal (every head keeps max_length slots).
  SparseKvCache(const LlamaConfig& config, SparseAttention plan, int64_t batch, int64_t max_length,
                DType dtype = DType::f32, Device device = Device::cpu(),
                RopePositions rope_positions = RopePositions::original);
  ~SparseKvCache();
  SparseKvCache(SparseKvCache&&) noexcept;
  SparseKvCache& operator=(SparseKvCache&&) noexcept;

  int64_t batch() const { return batch_; }
  int64_t length() const;  // the longest row's positions stored so far
  int64_t row_length(int64_t row) const;
  int64_t max_length() const { return max_length_; }
  const SparseAttention& plan() const { return plan_; }
  RopePositions rope_positions() const { return rope_positions_; }
  // The absolute positions [B, T] of each row's next T tokens: its length onwards.
  Tensor next_positions(int64_t tokens) const;

  // One layer's attention for a chunk of T new tokens, row b's at positions [row_length(b),
  // row_length(b) + T): q [B, Hq, T, D], k and v [B, Hkv, T, D] (after RoPE in the original mode,
  // before it in the cache_slot mode). Each query row attends over its row's live slots and the
  // chunk's own keys under its head's sink + window and causality (the chunk is read before any
  // of it is written), then the chunk's keys that stay live are written into the row's ring.
  // Rows of different lengths take T = 1. Returns the attention output [B, Hq, T, D] (before
  // o_proj), in q's dtype. Every layer attends, then advance(T).
  Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v);
  void advance(int64_t tokens);

  // A cache of batch 1 whose storage is row `row` of this one, starting empty (the row's slots
  // are emptied and its length here set to 0): prefilling through it fills the row in place.
  // Give its length to this cache with set_row_length(row, view.row_length(0)).
  SparseKvCache row_view(int64_t row);
  // Declares a row's length: 0 frees the row (its slots are emptied); otherwise the length a
  // prefill through row_view reached, which is checked against the positions the row's slots
  // hold (a length the slots do not hold is an error, not stale keys made visible).
  void set_row_length(int64_t row, int64_t length);

  // Bytes of key and value storage of every layer (the ring capacities times the row size).
  int64_t bytes() const;
  // Slots of layer `layer`, KV head `kv_head`: sink + widest window, or max_length.
  int64_t capacity(int64_t layer, int64_t kv_head) const;
  // The absolute position held in each of those slots of row `row`, -1 where none is (yet).
  std::vector<int64_t> slot_positions(int64_t layer, int64_t kv_head, int64_t row = 0) const;

 private:
  // A run of consecutive KV heads of one layer that share a slot rule: keys and values
  // [B, kv heads, capacity, D], the absolute position held in each slot of each row [B, capacity]
  // (shared by those heads).
  struct Ring;
  SparseKvCache(const SparseKvCache& parent, int64_t row);  // row_view's
  void check_row(int64_t row) const;

  int64_t batch_, max_length_;
  int64_t heads_, kv_heads_, head_dim_;
  SparseAttention plan_;
  DType dtype_;
  Device device_;
  RopePositions rope_positions_;
  RopeConfig rope_;
  std::vector<int64_t> lengths_;          // [row]
  std::vector<std::vector<Ring>> rings_;  // [layer][run of KV heads]
  std::vector<int64_t> pending_;          // [layer]: tokens attended since the last advance
};

}  // namespace lamina::llama
