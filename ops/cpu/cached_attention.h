// The CPU kernel of ops::cached_attention (ops/cpu/cached_attention.cpp): attention over keys
// that each carry their own absolute position, called by ops/cached_attention.cpp with
// validated arguments.
#pragma once

#include <cstdint>
#include <vector>

#include "ops/attention_pattern.h"

namespace lamina::ops::cpu {

// One run of keys along the key axis. keys and values [B, Hkv, S, D] of the kernel's input
// dtype (f32, f64, bf16 or f16), each row of D values contiguous (batch, head and row strides
// are free, so a view of a cache's filled slots needs no copy); positions: S absolute positions
// per KV head, `positions_head_stride` apart (0: one array for every head), -1 = an empty slot.
struct KeyRunView {
  Tensor keys, values;
  const int64_t* positions = nullptr;
  int64_t positions_head_stride = 0;
};

// How the work of one call is cut into tasks. The rows of a KV group (its query heads x the
// queries, query-major so that a tile's rows sit at nearby positions) go in tiles; the keys go
// in chunks whose normalised partial outputs and log-sum-exps are merged at the end. It depends
// on the shapes only, never on the thread count, so results do not either.
struct CachedAttentionSplit {
  int64_t row_tiles = 1;   // tiles of kCachedRowTile rows per (b, kv head)
  int64_t key_chunks = 1;  // chunks of chunk_keys keys (the last one shorter)
  int64_t chunk_keys = 0;
};
constexpr int64_t kCachedRowTile = 64;
CachedAttentionSplit cached_attention_split(int64_t batch, int64_t kv_heads, int64_t group_rows, int64_t keys);

// q [B, Hq, T, D] contiguous f32 or f64 (the compute dtype; every run's keys are of the input
// dtype and converted row by row); out [B, Hq, T, D] and lse [B, Hq, T] contiguous, q's dtype.
// `pattern` was resolved for q's shape; its query offset is the position of query row 0.
void cached_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<KeyRunView>& runs,
                      const ResolvedAttentionPattern& pattern, double scale);

}  // namespace lamina::ops::cpu
