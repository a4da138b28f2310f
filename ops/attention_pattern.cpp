// The attention mask description: validation against a call's shapes, tile classification
// (spec §3.5, extended with documents and layouts) and the dense materialisation for tests.
#include "ops/attention_pattern.h"

#include <algorithm>

#include "tensor/error.h"

namespace lamina {

AttentionPattern AttentionPattern::dense(bool causal) {
  AttentionPattern pattern;
  pattern.causal = causal;
  return pattern;
}

AttentionPattern AttentionPattern::sink_window(int64_t sink, int64_t window) {
  return per_head_sink_window({sink}, {window});
}

AttentionPattern AttentionPattern::per_head_sink_window(std::vector<int64_t> sinks, std::vector<int64_t> windows) {
  AttentionPattern pattern;
  pattern.sinks = std::move(sinks);
  pattern.windows = std::move(windows);
  return pattern;
}

AttentionPattern AttentionPattern::documents(const Tensor& document_ids) {
  AttentionPattern pattern;
  pattern.document_ids = document_ids;
  return pattern;
}

AttentionPattern AttentionPattern::block_sparse(const Tensor& layout, int64_t block_queries, int64_t block_keys) {
  AttentionPattern pattern;
  pattern.windows = {0};  // only the layout (and causality) decide
  pattern.block_layout = layout;
  pattern.block_queries = block_queries;
  pattern.block_keys = block_keys;
  return pattern;
}

namespace {

std::vector<int64_t> per_head(const std::vector<int64_t>& values, int64_t heads, const char* op, const char* name) {
  LAMINA_CHECK(values.size() == 1 || int64_t(values.size()) == heads, op, ": the pattern's ", name, " has ",
               values.size(), " values; give one or one per query head (", heads, ")");
  for (int64_t value : values) LAMINA_CHECK(value >= 0, op, ": the pattern's ", name, " must be >= 0, got ", value);
  return values.size() == 1 ? std::vector<int64_t>(size_t(heads), values[0]) : values;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

ResolvedAttentionPattern::ResolvedAttentionPattern(const AttentionPattern& pattern, int64_t batch, int64_t query_heads,
                                                   int64_t queries, int64_t keys, const char* op)
    : batch_(batch),
      heads_(query_heads),
      queries_(queries),
      keys_(keys),
      offset_(pattern.query_offset.value_or(keys - queries)),
      causal_(pattern.causal),
      has_additive_mask_(pattern.additive_mask.defined()) {
  LAMINA_CHECK(offset_ >= 0, op, ": the query offset must be >= 0, got ", offset_, " (", queries, " queries, ",
               keys, " keys)");
  sinks_ = per_head(pattern.sinks, heads_, op, "sinks");
  windows_ = per_head(pattern.windows, heads_, op, "windows");
  if (pattern.document_ids.defined()) {
    const Tensor& ids = pattern.document_ids;
    LAMINA_CHECK(is_integral(ids.dtype()), op, ": document_ids must be integers, got ", dtype_name(ids.dtype()));
    LAMINA_CHECK((ids.dim() == 1 && ids.size(0) == keys) || (ids.dim() == 2 && ids.size(0) == batch && ids.size(1) == keys),
                 op, ": document_ids ", ids.shape(), " must be [", keys, "] or [", batch, ", ", keys, "]");
    LAMINA_CHECK(offset_ + queries <= keys, op, ": with document ids the queries (positions ", offset_, "..",
                 offset_ + queries, ") must lie among the ", keys, " keys");
    documents_ = ids.to_vector<int64_t>();
    documents_batch_stride_ = ids.dim() == 2 ? keys : 0;
  }
  if (pattern.block_layout.defined()) {
    const Tensor& layout = pattern.block_layout;
    LAMINA_CHECK(pattern.block_queries > 0 && pattern.block_keys > 0, op, ": block sizes must be > 0, got ",
                 pattern.block_queries, " x ", pattern.block_keys);
    block_queries_ = pattern.block_queries;
    block_keys_ = pattern.block_keys;
    const int64_t rows = ceil_div(offset_ + queries, block_queries_), columns = ceil_div(keys, block_keys_);
    LAMINA_CHECK(layout.dtype() == DType::boolean, op, ": block_layout must be bool, got ", dtype_name(layout.dtype()));
    LAMINA_CHECK(layout.dim() == 3 && (layout.size(0) == 1 || layout.size(0) == heads_) && layout.size(1) >= rows &&
                     layout.size(2) >= columns,
                 op, ": block_layout ", layout.shape(), " must be [1 or ", heads_, ", >= ", rows, ", >= ", columns,
                 "] for blocks of ", block_queries_, " x ", block_keys_);
    const std::vector<int64_t> values = layout.to_vector<int64_t>();
    layout_.assign(values.begin(), values.end());
    layout_columns_ = layout.size(2);
    // One layout for every head: reading it with head stride 0 needs no copies.
    layout_head_stride_ = layout.size(0) == 1 ? 0 : layout.size(1) * layout.size(2);
  }
}

TileKind ResolvedAttentionPattern::classify(int64_t b, int64_t h, int64_t row_begin, int64_t row_end,
                                            int64_t col_begin, int64_t col_end) const {
  const int64_t first_row = row_begin, last_row = row_end - 1, first_col = col_begin, last_col = col_end - 1;
  if (causal_ && first_col > last_row) return TileKind::skip;  // entirely above the diagonal
  const bool causal_full = !causal_ || last_col <= first_row;

  bool documents_full = true;
  if (!documents_.empty()) {
    const int64_t* ids = documents_.data() + b * documents_batch_stride_;
    const auto [row_min, row_max] = std::minmax_element(ids + first_row, ids + row_end);
    const auto [col_min, col_max] = std::minmax_element(ids + first_col, ids + col_end);
    if (*row_max < *col_min || *col_max < *row_min) return TileKind::skip;  // no shared document
    documents_full = *row_min == *row_max && *col_min == *col_max && *row_min == *col_min;
  }

  const int64_t sink = sinks_[size_t(h)], window = windows_[size_t(h)];
  // Sinks and window. Smallest i - j in the tile is first_row - last_col (<= 0 when the ranges
  // overlap, which the causal cut already bounds); the largest is last_row - first_col.
  const bool any_sink = first_col < sink;
  const bool any_window = window > 0 && (window == kAllKeys || first_row - last_col < window);
  bool all_sink_window;
  if (window == 0) {
    all_sink_window = last_col < sink;
  } else {
    // Keys hidden from row i by sink+window are [sink, i - window]; over the tile's rows that
    // is the gap [sink, last_row - window], empty for a window that reaches past the rows.
    const bool gap_empty = window == kAllKeys || last_row - window < sink;
    const int64_t gap_end = gap_empty ? 0 : last_row - window;
    all_sink_window = gap_empty || last_col < sink || first_col > gap_end;
  }

  bool any_layout = false, all_layout = false;
  if (!layout_.empty()) {
    all_layout = true;
    const uint8_t* head_layout = layout_.data() + h * layout_head_stride_;
    for (int64_t block_row = first_row / block_queries_; block_row <= last_row / block_queries_; ++block_row) {
      for (int64_t block_col = first_col / block_keys_; block_col <= last_col / block_keys_; ++block_col) {
        const bool on = head_layout[block_row * layout_columns_ + block_col] != 0;
        any_layout = any_layout || on;
        all_layout = all_layout && on;
      }
    }
  }

  if (!any_sink && !any_window && !any_layout) return TileKind::skip;
  const bool full = causal_full && documents_full && !has_additive_mask_ && (all_sink_window || all_layout);
  return full ? TileKind::full : TileKind::partial;
}

Tensor attention_pattern_mask(const AttentionPattern& pattern, int64_t batch, int64_t query_heads, int64_t queries,
                              int64_t keys) {
  const ResolvedAttentionPattern resolved(pattern, batch, query_heads, queries, keys, "attention_pattern_mask");
  std::vector<bool> bits;
  bits.reserve(size_t(batch * query_heads * queries * keys));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < query_heads; ++h)
      for (int64_t t = 0; t < queries; ++t)
        for (int64_t j = 0; j < keys; ++j) bits.push_back(resolved.allowed(b, h, resolved.query_offset() + t, j));
  std::vector<uint8_t> values(bits.begin(), bits.end());
  return Tensor::from_vector(values, {batch, query_heads, queries, keys}, DType::boolean);
}

AttentionTileCounts count_attention_tiles(const ResolvedAttentionPattern& pattern, int64_t tile_queries,
                                          int64_t tile_keys, bool count_pairs) {
  AttentionTileCounts counts;
  const int64_t offset = pattern.query_offset();
  for (int64_t b = 0; b < pattern.batch(); ++b) {
    for (int64_t h = 0; h < pattern.heads(); ++h) {
      for (int64_t row = 0; row < pattern.queries(); row += tile_queries) {
        const int64_t row_end = std::min(row + tile_queries, pattern.queries());
        for (int64_t col = 0; col < pattern.keys(); col += tile_keys) {
          const int64_t col_end = std::min(col + tile_keys, pattern.keys());
          ++counts.total;
          const TileKind kind = pattern.classify(b, h, offset + row, offset + row_end, col, col_end);
          if (kind == TileKind::skip) continue;
          ++counts.visited;
          if (kind == TileKind::partial) ++counts.partial;
        }
      }
      if (!count_pairs) continue;
      for (int64_t t = 0; t < pattern.queries(); ++t)
        for (int64_t j = 0; j < pattern.keys(); ++j) counts.allowed_pairs += pattern.allowed(b, h, offset + t, j);
    }
  }
  return counts;
}

}  // namespace lamina
