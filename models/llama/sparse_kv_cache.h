// The KV cache of a sparse-attention plan (sparse-attention.md section 4): per layer and KV head a
// ring buffer of capacity sink + W (W = the widest window among the query heads sharing that KV
// head), with the absolute position held in each slot, so that memory stops growing once a
// head's window is full. Keys are stored after RoPE at their true positions (the MoA mode), so
// attention over the ring's slots, in any order, equals dense attention under the plan's mask.
// Dense heads (window kAllKeys) keep every position: their ring is as long as the capacity the
// cache was made for. The sink is the largest of the group's query heads too, and each query
// head still masks by its own sink and window. Consecutive KV heads of a layer with the same
// slot rule (sink and ring length) share one ring tensor, so a uniform plan attends with one
// ops::cached_attention call per layer. Inference only (no gradients); CPU only so far (the op
// has no CUDA kernel).
//
// Every row of the batch advances together (no padding): a batch of prompts of different
// lengths is generated one prompt at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "models/llama/config.h"
#include "models/llama/model.h"

namespace lamina::llama {

class SparseKvCache {
 public:
  // `max_length`: the most positions a row will hold (prompt + new tokens); it sizes dense heads
  // and any window wider than it. The plan must fit the config (SparseAttention::check); a dense
  // plan is legal (every head keeps max_length slots).
  SparseKvCache(const LlamaConfig& config, SparseAttention plan, int64_t batch, int64_t max_length,
                DType dtype = DType::f32, Device device = Device::cpu());
  ~SparseKvCache();
  SparseKvCache(SparseKvCache&&) noexcept;
  SparseKvCache& operator=(SparseKvCache&&) noexcept;

  int64_t batch() const { return batch_; }
  int64_t length() const { return length_; }  // positions stored so far, [0, length)
  int64_t max_length() const { return max_length_; }
  const SparseAttention& plan() const { return plan_; }

  // One layer's attention for a chunk of T new tokens at positions [length(), length() + T):
  // q [B, Hq, T, D], k and v [B, Hkv, T, D] (after RoPE). Each query row attends over the ring's
  // live slots and the chunk's own keys under its head's sink + window and causality (the chunk
  // is read before any of it is written), then the chunk's keys that stay live are written into
  // the ring. Returns the attention output [B, Hq, T, D] (before o_proj), in q's dtype.
  // Every layer attends, then advance(T).
  Tensor attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v);
  void advance(int64_t tokens);

  // Bytes of key and value storage of every layer (the ring capacities times the row size).
  int64_t bytes() const;
  // Slots of layer `layer`, KV head `kv_head`: sink + widest window, or max_length.
  int64_t capacity(int64_t layer, int64_t kv_head) const;
  // The absolute position held in each of those slots, -1 where none is (yet).
  std::vector<int64_t> slot_positions(int64_t layer, int64_t kv_head) const;

 private:
  // A run of consecutive KV heads of one layer that share a slot rule: keys and values
  // [B, kv heads, capacity, D], the absolute position held in each slot (shared by those heads).
  struct Ring;
  int64_t batch_, max_length_, length_ = 0;
  int64_t heads_, kv_heads_, head_dim_;
  SparseAttention plan_;
  DType dtype_;
  Device device_;
  std::vector<std::vector<Ring>> rings_;  // [layer][run of KV heads]
  std::vector<int64_t> pending_;          // [layer]: tokens attended since the last advance
};

}  // namespace lamina::llama
