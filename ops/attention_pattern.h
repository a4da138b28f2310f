// Which keys each query may attend to: the one mask semantics of the fused attention
// (ops::flash_attention), its f64 oracle and its tests (spec: sparse-attention.md §2.4).
//
// For batch row b, query head h, query at absolute position i and key at position j:
//   allowed(b, h, i, j) = (!causal || j <= i)
//                      && (no documents || document[b][i] == document[b][j])
//                      && (  j < sink[h]                                  // attention sinks
//                         || (window[h] > 0 && i - j < window[h])         // sliding window
//                         || (layout && layout[h][i / block_queries][j / block_keys]))
// The components are a union, cut by causality and by the document boundaries. Dense causal
// attention is the default (sink 0, window kAllKeys); StreamingLLM is sink 4 + window W; an
// MoA head is sink 64 + its own window; a block-sparse head sets window 0 and a layout. An
// optional additive mask is added to the scores of allowed keys (use -inf to hide more).
// Query row t sits at absolute position query_offset + t; unset, the queries are the last Tq
// of the Tk keys (a KV-cache prefix of Tk - Tq keys), as in ops::attention.
// A row with no allowed key is legal: its output is 0 and its log-sum-exp -inf.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "tensor/tensor.h"

namespace lamina {

// A window that covers every earlier key (dense attention).
constexpr int64_t kAllKeys = std::numeric_limits<int64_t>::max();

struct AttentionPattern {
  bool causal = true;
  std::optional<int64_t> query_offset;  // absolute position of query row 0; default Tk - Tq
  // Per query head, or one value for every head.
  std::vector<int64_t> sinks{0};           // keys [0, sink) always visible
  std::vector<int64_t> windows{kAllKeys};  // the last `window` keys up to the query; 0 = none
  // Packed documents: integer ids [Tk] or [B, Tk] of each key position; a query at absolute
  // position i belongs to document_ids[i] (so query_offset + Tq <= Tk is required).
  Tensor document_ids;
  // Block-sparse layout: bool [1 or Hq, query blocks, key blocks] over absolute positions,
  // at least ceil((query_offset + Tq) / block_queries) by ceil(Tk / block_keys).
  Tensor block_layout;
  int64_t block_queries = 64;
  int64_t block_keys = 64;
  // Anything else: an additive mask broadcastable to [B, Hq, Tq, Tk] (floating). Tiles it
  // covers are always evaluated element by element, so it costs time but never skips work.
  Tensor additive_mask;

  static AttentionPattern dense(bool causal = true);
  static AttentionPattern sink_window(int64_t sink, int64_t window);
  static AttentionPattern per_head_sink_window(std::vector<int64_t> sinks, std::vector<int64_t> windows);
  static AttentionPattern documents(const Tensor& document_ids);  // causal inside each document
  static AttentionPattern block_sparse(const Tensor& layout, int64_t block_queries, int64_t block_keys);
};

// How a tile of queries x keys is treated: not visited at all, visited without evaluating the
// mask per element, or visited with the per-element predicate.
enum class TileKind : uint8_t { skip, full, partial };

// The pattern checked against the shapes of one call and flattened into plain host arrays, so
// that the kernels evaluate `allowed` and classify tiles without touching tensors.
class ResolvedAttentionPattern {
 public:
  // Throws lamina::Error naming `op` when the pattern does not fit q [B, Hq, Tq, .] and k [., ., Tk, .].
  ResolvedAttentionPattern(const AttentionPattern& pattern, int64_t batch, int64_t query_heads, int64_t queries,
                           int64_t keys, const char* op = "flash_attention");

  int64_t batch() const { return batch_; }
  int64_t heads() const { return heads_; }
  int64_t queries() const { return queries_; }
  int64_t keys() const { return keys_; }
  int64_t query_offset() const { return offset_; }
  bool causal() const { return causal_; }
  int64_t sink(int64_t h) const { return sinks_[size_t(h)]; }
  int64_t window(int64_t h) const { return windows_[size_t(h)]; }
  // Only causality, sinks and windows: `allowed` is then plain arithmetic that kernels inline.
  bool sink_window_only() const { return documents_.empty() && layout_.empty(); }

  // i and j are absolute positions (query row t is at query_offset() + t).
  bool allowed(int64_t b, int64_t h, int64_t i, int64_t j) const {
    if (causal_ && j > i) return false;
    if (!documents_.empty()) {
      const int64_t* row = documents_.data() + b * documents_batch_stride_;
      if (row[i] != row[j]) return false;
    }
    const int64_t sink = sinks_[size_t(h)], window = windows_[size_t(h)];
    if (j < sink) return true;
    if (window > 0 && (window == kAllKeys || i - j < window)) return true;
    return !layout_.empty() && layout_[size_t(h * layout_head_stride_ + (i / block_queries_) * layout_columns_ +
                                              j / block_keys_)] != 0;
  }

  // The tile of absolute query positions [row_begin, row_end) and key positions
  // [col_begin, col_end): skip only when no element is allowed, full only when every element
  // is (and no additive mask applies), partial otherwise. O(1) for causal/sink/window, plus
  // the tile's document ids and layout blocks when those are given.
  TileKind classify(int64_t b, int64_t h, int64_t row_begin, int64_t row_end, int64_t col_begin,
                    int64_t col_end) const;

 private:
  int64_t batch_, heads_, queries_, keys_, offset_;
  bool causal_;
  bool has_additive_mask_;
  std::vector<int64_t> sinks_, windows_;  // one per query head
  std::vector<int64_t> documents_;        // [B or 1, Tk], empty without documents
  int64_t documents_batch_stride_ = 0;
  std::vector<uint8_t> layout_;  // [Hq or 1, rows, columns], empty without a layout
  int64_t layout_head_stride_ = 0, layout_columns_ = 0;
  int64_t block_queries_ = 1, block_keys_ = 1;
};

// The pattern as a dense bool mask [B, Hq, Tq, Tk] (true = allowed; the additive mask is not
// part of it): for tests and the reference path, O(B·Hq·Tq·Tk) memory.
Tensor attention_pattern_mask(const AttentionPattern& pattern, int64_t batch, int64_t query_heads, int64_t queries,
                              int64_t keys);

// Tiles of `tile_queries` x `tile_keys` that a kernel with those tiles visits, for tests (tile
// accounting catches a silent fall back to dense) and for the benchmark's density column.
struct AttentionTileCounts {
  int64_t total = 0;    // every tile of every (b, h)
  int64_t visited = 0;  // full + partial
  int64_t partial = 0;
  int64_t allowed_pairs = 0;  // allowed (query, key) pairs, counted element by element
};
AttentionTileCounts count_attention_tiles(const ResolvedAttentionPattern& pattern, int64_t tile_queries,
                                          int64_t tile_keys, bool count_pairs = false);

}  // namespace lamina
