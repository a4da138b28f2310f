// The ring-buffer KV cache of a sparse-attention plan (sparse-attention.md §4). Per layer, KV
// heads whose query heads need the same slot rule share one ring tensor; attention runs through
// ops::cached_attention, which takes each slot's absolute position, so the ring's slot order
// never matters (§4.2).
//
// Slot rule of a ring with sink s and window W (§4.1): position p goes to slot p when p < s and
// to s + (p - s) mod W otherwise, overwriting the position W earlier, which no query from p on
// may see. s and W are the largest sink and window among the ring's query heads, so the ring
// keeps the union of what those heads see; each head still masks by its own sink and window.
// A window that reaches past max_length (or kAllKeys) keeps every position: the ring is then
// max_length slots and the rule never wraps. W = 0 keeps the sinks only.
//
// Rows: every row has its own length and its own slot positions ([B, capacity] on the host).
// Rows of one length attend with one op call per ring (their slot positions are equal: a row's
// slots are a function of its length, which set_row_length checks); rows of different lengths
// attend one row per call, each at its own positions (the op takes one position list per call).
#include "models/llama/sparse_kv_cache.h"

#include <algorithm>
#include <numeric>

#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::llama {

const char* rope_positions_name(RopePositions mode) {
  return mode == RopePositions::cache_slot ? "cache-slot" : "original";
}

struct SparseKvCache::Ring {
  int64_t first_kv_head = 0, kv_heads = 0;
  int64_t sink = 0, window = 0;  // the slot rule's s and W (both within max_length)
  int64_t capacity = 0;          // s + W
  std::vector<int64_t> sinks, windows;  // the plan's, per query head of these KV heads
  Tensor keys, values;                  // [B, kv_heads, capacity, D]
  Tensor positions;                     // i64 [B, capacity] on the host, -1 = empty

  // Slots filled after `length` positions: they fill in order and then wrap.
  int64_t filled(int64_t length) const { return std::min(length, capacity); }
  int64_t slot(int64_t position) const { return position < sink ? position : sink + (position - sink) % window; }
  int64_t* row_positions(int64_t row) const { return positions.data<int64_t>() + row * positions.stride(0); }
  // What a row's slots hold after positions [0, length) were written, in any chunks.
  std::vector<int64_t> positions_after(int64_t length) const {
    std::vector<int64_t> held(static_cast<size_t>(capacity), -1);
    for (int64_t p = 0; p < std::min(length, sink); ++p) held[size_t(p)] = p;
    if (window > 0)
      for (int64_t p = std::max(sink, length - window); p < length; ++p) held[size_t(slot(p))] = p;
    return held;
  }
};

SparseKvCache::SparseKvCache(const LlamaConfig& config, SparseAttention plan, int64_t batch, int64_t max_length,
                             DType dtype, Device device, RopePositions rope_positions)
    : batch_(batch),
      max_length_(max_length),
      heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      plan_(std::move(plan)),
      dtype_(dtype),
      device_(device),
      rope_positions_(rope_positions),
      rope_(config.rope()) {
  LAMINA_CHECK(batch > 0, "SparseKvCache: batch must be > 0, got ", batch);
  LAMINA_CHECK(max_length > 0, "SparseKvCache: max_length must be > 0, got ", max_length);
  LAMINA_CHECK(is_floating(dtype), "SparseKvCache: the dtype must be floating, got ", dtype_name(dtype));
  LAMINA_CHECK(kv_heads_ > 0 && heads_ % kv_heads_ == 0, "SparseKvCache: ", heads_,
               " query heads are not a multiple of ", kv_heads_, " kv heads");
  plan_.check(config);
  const int64_t layers = config.num_hidden_layers, group = heads_ / kv_heads_;
  lengths_.assign(size_t(batch), 0);
  rings_.resize(size_t(layers));
  pending_.assign(size_t(layers), 0);
  for (int64_t layer = 0; layer < layers; ++layer) {
    for (int64_t g = 0; g < kv_heads_; ++g) {
      std::vector<int64_t> sinks, windows;
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        sinks.push_back(plan_.dense() ? 0 : plan_.sinks[size_t(layer)][size_t(h)]);
        windows.push_back(plan_.dense() ? kAllKeys : plan_.windows[size_t(layer)][size_t(h)]);
      }
      const int64_t widest_sink = *std::max_element(sinks.begin(), sinks.end());
      const int64_t widest_window = *std::max_element(windows.begin(), windows.end());
      const int64_t sink = std::min(widest_sink, max_length);
      // A window reaching past the last position keeps everything after the sinks.
      const int64_t window = widest_window >= max_length - sink ? max_length - sink : widest_window;
      std::vector<Ring>& layer_rings = rings_[size_t(layer)];
      if (!layer_rings.empty() && layer_rings.back().sink == sink && layer_rings.back().window == window) {
        Ring& ring = layer_rings.back();
        ++ring.kv_heads;
        ring.sinks.insert(ring.sinks.end(), sinks.begin(), sinks.end());
        ring.windows.insert(ring.windows.end(), windows.begin(), windows.end());
        continue;
      }
      Ring ring;
      ring.first_kv_head = g;
      ring.kv_heads = 1;
      ring.sink = sink;
      ring.window = window;
      ring.capacity = sink + window;
      ring.sinks = sinks;
      ring.windows = windows;
      layer_rings.push_back(std::move(ring));
    }
    // Storage starts zeroed: an empty slot is never attended, but it is read beside live ones.
    for (Ring& ring : rings_[size_t(layer)]) {
      ring.keys = zeros({batch_, ring.kv_heads, ring.capacity, head_dim_}, dtype_, device_);
      ring.values = zeros({batch_, ring.kv_heads, ring.capacity, head_dim_}, dtype_, device_);
      ring.positions = Tensor::from_vector(std::vector<int64_t>(size_t(batch_ * ring.capacity), -1),
                                           {batch_, ring.capacity});
    }
  }
}

SparseKvCache::SparseKvCache(const SparseKvCache& parent, int64_t row)
    : batch_(1),
      max_length_(parent.max_length_),
      heads_(parent.heads_),
      kv_heads_(parent.kv_heads_),
      head_dim_(parent.head_dim_),
      plan_(parent.plan_),
      dtype_(parent.dtype_),
      device_(parent.device_),
      rope_positions_(parent.rope_positions_),
      rope_(parent.rope_),
      lengths_{0},
      rings_(parent.rings_),
      pending_(parent.pending_.size(), 0) {
  for (std::vector<Ring>& layer_rings : rings_)
    for (Ring& ring : layer_rings) {
      ring.keys = views::slice(ring.keys, 0, row, row + 1);
      ring.values = views::slice(ring.values, 0, row, row + 1);
      ring.positions = views::slice(ring.positions, 0, row, row + 1);
    }
}

SparseKvCache::~SparseKvCache() = default;
SparseKvCache::SparseKvCache(SparseKvCache&&) noexcept = default;
SparseKvCache& SparseKvCache::operator=(SparseKvCache&&) noexcept = default;

void SparseKvCache::check_row(int64_t row) const {
  LAMINA_CHECK(row >= 0 && row < batch_, "SparseKvCache: no row ", row, " in a batch of ", batch_);
}

int64_t SparseKvCache::length() const { return *std::max_element(lengths_.begin(), lengths_.end()); }

int64_t SparseKvCache::row_length(int64_t row) const {
  check_row(row);
  return lengths_[size_t(row)];
}

Tensor SparseKvCache::next_positions(int64_t tokens) const {
  std::vector<int64_t> positions;
  for (int64_t b = 0; b < batch_; ++b)
    for (int64_t t = 0; t < tokens; ++t) positions.push_back(lengths_[size_t(b)] + t);
  return ops::to_device(Tensor::from_vector(positions, {batch_, tokens}), device_);
}

namespace {

// `t` [B, H, S, D] rotated by RoPE at `positions` (one per S), as [B, H, S, D] again.
Tensor rotate(const Tensor& t, const std::vector<int64_t>& positions, const RopeConfig& rope) {
  const Tensor position_tensor = ops::to_device(Tensor::from_vector(positions, {int64_t(positions.size())}), t.device());
  return views::transpose(ops::rope(views::transpose(t, 1, 2), position_tensor, rope), 1, 2);
}

}  // namespace

Tensor SparseKvCache::attend(int64_t layer, const Tensor& q_in, const Tensor& k_in, const Tensor& v_in) {
  LAMINA_CHECK(layer >= 0 && layer < int64_t(rings_.size()), "SparseKvCache: layer ", layer, " out of range [0, ",
               rings_.size(), ")");
  LAMINA_CHECK(q_in.defined() && k_in.defined() && v_in.defined(), "SparseKvCache::attend: q, k and v must be given");
  LAMINA_CHECK(q_in.dim() == 4 && q_in.size(0) == batch_ && q_in.size(1) == heads_ && q_in.size(3) == head_dim_,
               "SparseKvCache::attend: q ", q_in.shape(), " must be [", batch_, ", ", heads_, ", T, ", head_dim_, "]");
  const int64_t tokens = q_in.size(2);
  const Shape kv_shape{batch_, kv_heads_, tokens, head_dim_};
  LAMINA_CHECK(k_in.shape() == kv_shape && v_in.shape() == kv_shape, "SparseKvCache::attend: k ", k_in.shape(),
               " and v ", v_in.shape(), " must be ", kv_shape);
  LAMINA_CHECK(tokens > 0, "SparseKvCache::attend: no tokens");
  LAMINA_CHECK(pending_[size_t(layer)] == 0, "SparseKvCache: layer ", layer,
               " attended twice without advance() between (every layer attends once per chunk, then advance)");
  const bool rows_differ =
      std::any_of(lengths_.begin(), lengths_.end(), [&](int64_t length) { return length != lengths_[0]; });
  LAMINA_CHECK(!rows_differ || tokens == 1, "SparseKvCache: rows of different lengths take one token at a time, got ",
               tokens, " (prefill a row alone through row_view)");
  for (int64_t b = 0; b < batch_; ++b)
    LAMINA_CHECK(lengths_[size_t(b)] + tokens <= max_length_, "SparseKvCache: ", tokens, " more tokens after ",
                 lengths_[size_t(b)], " (row ", b, ") would pass the cache's max_length of ", max_length_);
  // The cache's dtype throughout (the op takes one dtype); the output goes back to q's.
  const auto as_cache = [this](const Tensor& t) { return t.dtype() == dtype_ ? t : ops::cast(t, dtype_); };
  const Tensor q = as_cache(q_in), k = as_cache(k_in), v = as_cache(v_in);
  const int64_t group = heads_ / kv_heads_;
  const bool cache_slot = rope_positions_ == RopePositions::cache_slot;

  // Rows that share a length attend together: all of them, or each alone.
  std::vector<std::pair<int64_t, int64_t>> row_groups;
  if (rows_differ)
    for (int64_t b = 0; b < batch_; ++b) row_groups.emplace_back(b, b + 1);
  else
    row_groups.emplace_back(0, batch_);

  std::vector<Tensor> group_outputs;
  for (const auto& [first_row, end_row] : row_groups) {
    const int64_t start = lengths_[size_t(first_row)], end = start + tokens;
    const auto rows = [&, first = first_row, last = end_row](const Tensor& t) { return views::slice(t, 0, first, last); };
    std::vector<int64_t> chunk_positions(static_cast<size_t>(tokens));
    std::iota(chunk_positions.begin(), chunk_positions.end(), start);
    const Tensor chunk_position_tensor = Tensor::from_vector(chunk_positions, {tokens});

    // Read first: every ring's live slots and the chunk's own keys (§4.3: the chunk may
    // overwrite slots its own earlier queries still see).
    std::vector<Tensor> outputs;
    for (const Ring& ring : rings_[size_t(layer)]) {
      const int64_t kv_begin = ring.first_kv_head, kv_end = ring.first_kv_head + ring.kv_heads;
      const int64_t filled = ring.filled(start);
      Tensor ring_keys = views::slice(rows(ring.keys), 2, 0, filled);
      Tensor chunk_keys = views::slice(rows(k), 1, kv_begin, kv_end);
      Tensor ring_q = views::slice(rows(q), 1, kv_begin * group, kv_end * group);
      if (cache_slot) {
        // Logical positions: the ring's entries that the chunk's first query may still see under
        // the ring's rule (the one its first token overwrites is hidden from every head) ranked
        // by absolute position; the chunk's tokens after them. A hidden entry's rotation does
        // not matter (it is masked by its absolute position); it gets 0.
        const int64_t* held = ring.row_positions(first_row);
        std::vector<int64_t> counted;
        for (int64_t s = 0; s < filled; ++s)
          if (held[s] < ring.sink || start - held[s] < ring.window) counted.push_back(s);
        std::sort(counted.begin(), counted.end(), [&](int64_t a, int64_t b) { return held[a] < held[b]; });
        std::vector<int64_t> slot_logical(static_cast<size_t>(filled), 0);
        for (size_t rank = 0; rank < counted.size(); ++rank) slot_logical[size_t(counted[rank])] = int64_t(rank);
        std::vector<int64_t> chunk_logical(static_cast<size_t>(tokens));
        std::iota(chunk_logical.begin(), chunk_logical.end(), int64_t(counted.size()));
        if (filled > 0) ring_keys = rotate(ring_keys, slot_logical, rope_);
        chunk_keys = rotate(chunk_keys, chunk_logical, rope_);
        ring_q = rotate(ring_q, chunk_logical, rope_);
      }
      std::vector<ops::PositionedKeys> runs;
      if (filled > 0)
        runs.push_back({ring_keys, views::slice(rows(ring.values), 2, 0, filled),
                        views::slice(views::select(ring.positions, 0, first_row), 0, 0, filled)});
      runs.push_back({chunk_keys, views::slice(rows(v), 1, kv_begin, kv_end), chunk_position_tensor});
      AttentionPattern pattern = AttentionPattern::per_head_sink_window(ring.sinks, ring.windows);
      pattern.query_offset = start;
      outputs.push_back(ops::cached_attention(ring_q, runs, pattern).out);
    }
    group_outputs.push_back(outputs.size() == 1 ? outputs[0] : ops::cat(outputs, 1));

    // Then write the chunk's positions that stay live (the keys as given: after RoPE in the
    // original mode, before it in the cache_slot mode): the sinks among them and its last W.
    for (Ring& ring : rings_[size_t(layer)]) {
      const Tensor ring_keys = rows(ring.keys), ring_values = rows(ring.values);
      const Tensor chunk_keys = views::slice(rows(k), 1, ring.first_kv_head, ring.first_kv_head + ring.kv_heads);
      const Tensor chunk_values = views::slice(rows(v), 1, ring.first_kv_head, ring.first_kv_head + ring.kv_heads);
      // Positions [from, to) go to consecutive slots from slot(from).
      const auto write = [&](int64_t from, int64_t to) {
        const int64_t first_slot = ring.slot(from), count = to - from;
        ops::copy_(views::slice(ring_keys, 2, first_slot, first_slot + count),
                   views::slice(chunk_keys, 2, from - start, to - start));
        ops::copy_(views::slice(ring_values, 2, first_slot, first_slot + count),
                   views::slice(chunk_values, 2, from - start, to - start));
        for (int64_t b = first_row; b < end_row; ++b) {
          int64_t* slot_positions = ring.row_positions(b);
          for (int64_t n = 0; n < count; ++n) slot_positions[first_slot + n] = from + n;
        }
      };
      if (start < ring.sink) write(start, std::min(end, ring.sink));
      if (ring.window == 0) continue;
      int64_t from = std::max({start, ring.sink, end - ring.window});
      while (from < end) {
        // Up to the end of the ring region, where the slots wrap to the first ring slot.
        const int64_t until_wrap = ring.capacity - ring.slot(from);
        const int64_t to = std::min(end, from + until_wrap);
        write(from, to);
        from = to;
      }
    }
  }
  pending_[size_t(layer)] = tokens;
  const Tensor out = group_outputs.size() == 1 ? group_outputs[0] : ops::cat(group_outputs, 0);
  return out.dtype() == q_in.dtype() ? out : ops::cast(out, q_in.dtype());
}

void SparseKvCache::advance(int64_t tokens) {
  for (size_t layer = 0; layer < pending_.size(); ++layer)
    LAMINA_CHECK(pending_[layer] == tokens, "SparseKvCache::advance(", tokens, "): layer ", layer, " attended ",
                 pending_[layer], " tokens since the last advance (every layer attends each chunk once)");
  std::fill(pending_.begin(), pending_.end(), 0);
  for (int64_t& length : lengths_) length += tokens;
}

SparseKvCache SparseKvCache::row_view(int64_t row) {
  check_row(row);
  LAMINA_CHECK(std::all_of(pending_.begin(), pending_.end(), [](int64_t n) { return n == 0; }),
               "SparseKvCache::row_view: layers attended without advance()");
  for (const std::vector<Ring>& layer_rings : rings_)
    for (const Ring& ring : layer_rings) std::fill_n(ring.row_positions(row), ring.capacity, int64_t(-1));
  lengths_[size_t(row)] = 0;
  return SparseKvCache(*this, row);
}

void SparseKvCache::set_row_length(int64_t row, int64_t length) {
  check_row(row);
  LAMINA_CHECK(length >= 0 && length <= max_length_, "SparseKvCache: row length ", length, " outside [0, ",
               max_length_, "]");
  LAMINA_CHECK(std::all_of(pending_.begin(), pending_.end(), [](int64_t n) { return n == 0; }),
               "SparseKvCache::set_row_length: layers attended without advance()");
  for (size_t layer = 0; layer < rings_.size(); ++layer)
    for (const Ring& ring : rings_[layer]) {
      int64_t* held = ring.row_positions(row);
      if (length == 0) {
        std::fill_n(held, ring.capacity, int64_t(-1));
        continue;
      }
      const std::vector<int64_t> expected = ring.positions_after(length);
      LAMINA_CHECK(std::equal(expected.begin(), expected.end(), held), "SparseKvCache: row ", row,
                   " does not hold the positions of a length of ", length, " (layer ", layer, ", kv head ",
                   ring.first_kv_head, "): set_row_length takes 0 (free the row) or the length a prefill through "
                   "row_view reached");
    }
  lengths_[size_t(row)] = length;
}

int64_t SparseKvCache::bytes() const {
  int64_t total = 0;
  for (const std::vector<Ring>& layer_rings : rings_)
    for (const Ring& ring : layer_rings)
      total += 2 * batch_ * ring.kv_heads * ring.capacity * head_dim_ * int64_t(dtype_size(dtype_));
  return total;
}

namespace {
template <typename Rings>
auto& ring_of(Rings& rings, int64_t layer, int64_t kv_head, int64_t kv_heads) {
  LAMINA_CHECK(layer >= 0 && layer < int64_t(rings.size()) && kv_head >= 0 && kv_head < kv_heads,
               "SparseKvCache: layer ", layer, ", kv head ", kv_head, " out of range (", rings.size(), " layers, ",
               kv_heads, " kv heads)");
  for (auto& ring : rings[size_t(layer)])
    if (kv_head < ring.first_kv_head + ring.kv_heads) return ring;
  return rings[size_t(layer)].back();  // unreachable: the runs cover every KV head
}
}  // namespace

int64_t SparseKvCache::capacity(int64_t layer, int64_t kv_head) const {
  return ring_of(rings_, layer, kv_head, kv_heads_).capacity;
}

std::vector<int64_t> SparseKvCache::slot_positions(int64_t layer, int64_t kv_head, int64_t row) const {
  check_row(row);
  const Ring& ring = ring_of(rings_, layer, kv_head, kv_heads_);
  const int64_t* held = ring.row_positions(row);
  return std::vector<int64_t>(held, held + ring.capacity);
}

}  // namespace lamina::llama
