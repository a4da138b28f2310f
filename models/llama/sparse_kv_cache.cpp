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
#include "models/llama/sparse_kv_cache.h"

#include <algorithm>

#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::llama {

struct SparseKvCache::Ring {
  int64_t first_kv_head = 0, kv_heads = 0;
  int64_t sink = 0, window = 0;  // the slot rule's s and W (both within max_length)
  int64_t capacity = 0;          // s + W
  std::vector<int64_t> sinks, windows;  // the plan's, per query head of these KV heads
  Tensor keys, values;                  // [B, kv_heads, capacity, D]
  Tensor positions;                     // i64 [capacity] on the host, -1 = empty

  // Slots filled after `length` positions: they fill in order and then wrap.
  int64_t filled(int64_t length) const { return std::min(length, capacity); }
  int64_t slot(int64_t position) const { return position < sink ? position : sink + (position - sink) % window; }
};

SparseKvCache::SparseKvCache(const LlamaConfig& config, SparseAttention plan, int64_t batch, int64_t max_length,
                             DType dtype, Device device)
    : batch_(batch),
      max_length_(max_length),
      heads_(config.num_attention_heads),
      kv_heads_(config.num_key_value_heads),
      head_dim_(config.head_dim),
      plan_(std::move(plan)),
      dtype_(dtype),
      device_(device) {
  LAMINA_CHECK(batch > 0, "SparseKvCache: batch must be > 0, got ", batch);
  LAMINA_CHECK(max_length > 0, "SparseKvCache: max_length must be > 0, got ", max_length);
  LAMINA_CHECK(is_floating(dtype), "SparseKvCache: the dtype must be floating, got ", dtype_name(dtype));
  LAMINA_CHECK(kv_heads_ > 0 && heads_ % kv_heads_ == 0, "SparseKvCache: ", heads_,
               " query heads are not a multiple of ", kv_heads_, " kv heads");
  plan_.check(config);
  const int64_t layers = config.num_hidden_layers, group = heads_ / kv_heads_;
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
      ring.positions = Tensor::from_vector(std::vector<int64_t>(size_t(ring.capacity), -1), {ring.capacity});
    }
  }
}

SparseKvCache::~SparseKvCache() = default;
SparseKvCache::SparseKvCache(SparseKvCache&&) noexcept = default;
SparseKvCache& SparseKvCache::operator=(SparseKvCache&&) noexcept = default;

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
  LAMINA_CHECK(length_ + tokens <= max_length_, "SparseKvCache: ", tokens, " more tokens after ", length_,
               " would pass the cache's max_length of ", max_length_);
  // The cache's dtype throughout (the op takes one dtype); the output goes back to q's.
  const auto as_cache = [this](const Tensor& t) { return t.dtype() == dtype_ ? t : ops::cast(t, dtype_); };
  const Tensor q = as_cache(q_in), k = as_cache(k_in), v = as_cache(v_in);
  const int64_t start = length_, group = heads_ / kv_heads_;
  std::vector<int64_t> chunk_positions(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) chunk_positions[size_t(t)] = start + t;
  const Tensor chunk_position_tensor = Tensor::from_vector(chunk_positions, {tokens});

  // Read first: every ring's live slots and the chunk's own keys (§4.3: the chunk may overwrite
  // slots its own earlier queries still see).
  std::vector<Tensor> outputs;
  for (const Ring& ring : rings_[size_t(layer)]) {
    const int64_t kv_begin = ring.first_kv_head, kv_end = ring.first_kv_head + ring.kv_heads;
    const int64_t filled = ring.filled(length_);
    std::vector<ops::PositionedKeys> runs;
    if (filled > 0)
      runs.push_back({views::slice(ring.keys, 2, 0, filled), views::slice(ring.values, 2, 0, filled),
                      views::slice(ring.positions, 0, 0, filled)});
    runs.push_back({views::slice(k, 1, kv_begin, kv_end), views::slice(v, 1, kv_begin, kv_end), chunk_position_tensor});
    AttentionPattern pattern = AttentionPattern::per_head_sink_window(ring.sinks, ring.windows);
    pattern.query_offset = start;
    outputs.push_back(ops::cached_attention(views::slice(q, 1, kv_begin * group, kv_end * group), runs, pattern).out);
  }

  // Then write the chunk's positions that stay live: the sinks among them and its last W.
  const int64_t end = start + tokens;
  for (Ring& ring : rings_[size_t(layer)]) {
    const Tensor chunk_keys = views::slice(k, 1, ring.first_kv_head, ring.first_kv_head + ring.kv_heads);
    const Tensor chunk_values = views::slice(v, 1, ring.first_kv_head, ring.first_kv_head + ring.kv_heads);
    int64_t* slot_positions = ring.positions.data<int64_t>();
    // Positions [from, to) go to consecutive slots from slot(from).
    const auto write = [&](int64_t from, int64_t to) {
      const int64_t first_slot = ring.slot(from), count = to - from;
      ops::copy_(views::slice(ring.keys, 2, first_slot, first_slot + count),
                 views::slice(chunk_keys, 2, from - start, to - start));
      ops::copy_(views::slice(ring.values, 2, first_slot, first_slot + count),
                 views::slice(chunk_values, 2, from - start, to - start));
      for (int64_t n = 0; n < count; ++n) slot_positions[first_slot + n] = from + n;
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
  pending_[size_t(layer)] = tokens;
  const Tensor out = outputs.size() == 1 ? outputs[0] : ops::cat(outputs, 1);
  return out.dtype() == q_in.dtype() ? out : ops::cast(out, q_in.dtype());
}

void SparseKvCache::advance(int64_t tokens) {
  for (size_t layer = 0; layer < pending_.size(); ++layer)
    LAMINA_CHECK(pending_[layer] == tokens, "SparseKvCache::advance(", tokens, "): layer ", layer, " attended ",
                 pending_[layer], " tokens since the last advance (every layer attends each chunk once)");
  std::fill(pending_.begin(), pending_.end(), 0);
  length_ += tokens;
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

std::vector<int64_t> SparseKvCache::slot_positions(int64_t layer, int64_t kv_head) const {
  return ring_of(rings_, layer, kv_head, kv_heads_).positions.template to_vector<int64_t>();
}

}  // namespace lamina::llama
