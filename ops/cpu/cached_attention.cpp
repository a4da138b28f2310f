// Attention over positioned keys on the CPU (spec: sparse-attention.md §3.6, §4): the kernel of
// decode and chunked prefill over ring-buffer KV caches, where slot order is not position order.
//
// Per (b, kv head g) the rows are the group's query heads x the queries, query-major (row r is
// query t = r / rep of head g·rep + r % rep, at position query_offset + t), so each key and
// value row is read once for all the heads that share it (GQA packing). Per task (row tile,
// key chunk), over sub-tiles of 64 keys in slot order:
//   s = scale · q_r · k_c, -inf where the slot is empty or allowed(h_r, i_r, pos_c) is false
//   m' = max(m, rowmax s);  p = exp(s - m');  l = exp(m - m') l + rowsum p
//   acc = exp(m - m') acc + p V;  at the end O_c = acc / l, LSE_c = m + log l
// A chunk's rows are normalised on their own; chunks are merged in chunk order:
//   LSE = log sum_c exp(LSE_c),  O = sum_c exp(LSE_c - LSE) O_c
// A row that sees nothing in a chunk has LSE_c = -inf and O_c = 0 and adds nothing; a row that
// sees nothing at all gets O = 0 and LSE = -inf (no NaN: every -inf - -inf is guarded).
//
// Softmax over the keys is order-free, so slots may hold any positions in any order. A key
// whose weight is exactly 0 (hidden, or underflowed) is not read in the P·V product, so stale
// values in a hidden slot never reach the output even when they are not finite.
//
// Sub-tiles whose positions no row of the tile may see are skipped (classified with
// ResolvedAttentionPattern::classify over the rectangle of the tile's query positions and the
// sub-tile's position range, which contains the actual positions); sub-tiles every row sees
// entirely are not masked per element.
//
// bf16/f16 keys and values are converted to f32 a sub-tile at a time (the cache stays in its
// dtype); f64 is computed in f64. The task split depends only on the shapes (see
// cached_attention_split), and each sum has a fixed order, so results do not depend on the
// thread count.
#include "ops/cpu/cached_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/cpu/vec_math.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

constexpr int64_t kRowTile = kCachedRowTile;
constexpr int64_t kKeyTile = 64;
// Chunks of at least this many keys: below it the merge costs more than the parallelism gains.
constexpr int64_t kMinChunkKeys = 256;
// Tasks wanted per call when rows alone do not provide them (decode: one row tile per head).
constexpr int64_t kTargetTasks = 32;
constexpr int kLanes = 16;
// From this many rows in a tile the keys are transposed for the products (see transposed_scores).
constexpr int64_t kTransposedRows = 8;

template <typename C>
constexpr C kMinusInfinity = -std::numeric_limits<C>::infinity();

// 64 bytes of C as one GCC/Clang vector value (one AVX-512 register, two AVX2 ones).
template <typename C>
struct Vector64;
template <>
struct Vector64<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct Vector64<double> {
  typedef double type __attribute__((vector_size(64)));
};

// The lanes of a 64-byte vector added as a tree (halves, then quarters): a serial chain of
// lane-by-lane additions cost more than the products themselves at D = 64.
inline float horizontal_sum(Vector64<float>::type v) {
  typedef float Half __attribute__((vector_size(32)));
  typedef float Quarter __attribute__((vector_size(16)));
  Half low, high;
  __builtin_memcpy(&low, &v, 32);
  __builtin_memcpy(&high, reinterpret_cast<const char*>(&v) + 32, 32);
  const Half halves = low + high;
  Quarter first, second;
  __builtin_memcpy(&first, &halves, 16);
  __builtin_memcpy(&second, reinterpret_cast<const char*>(&halves) + 16, 16);
  const Quarter quarters = first + second;
  return (quarters[0] + quarters[2]) + (quarters[1] + quarters[3]);
}
inline double horizontal_sum(Vector64<double>::type v) {
  typedef double Half __attribute__((vector_size(32)));
  Half low, high;
  __builtin_memcpy(&low, &v, 32);
  __builtin_memcpy(&high, reinterpret_cast<const char*>(&v) + 32, 32);
  const Half halves = low + high;
  return (halves[0] + halves[2]) + (halves[1] + halves[3]);
}

// a · b over D values. The sum runs in independent lanes (a vector register for D = 64 and 128)
// that are added at the end: a plain running sum would not vectorise (its order is fixed).
template <typename C, int kD>
C dot(const C* __restrict a, const C* __restrict b, int64_t head_dim) {
  if constexpr (kD > 0) {
    using Vec = typename Vector64<C>::type;
    constexpr int kWidth = int(64 / sizeof(C));
    static_assert(kD % kWidth == 0);
    Vec sum = {};
#pragma GCC unroll 16
    for (int v = 0; v < kD / kWidth; ++v) {
      Vec x, y;
      __builtin_memcpy(&x, a + v * kWidth, 64);
      __builtin_memcpy(&y, b + v * kWidth, 64);
      sum += x * y;
    }
    return horizontal_sum(sum);
  } else {
    C lanes[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= head_dim; d += kLanes)
      for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += a[d + lane] * b[d + lane];
    C total = 0;
    for (; d < head_dim; ++d) total += a[d] * b[d];
    for (C lane : lanes) total += lane;
    return total;
  }
}

// scores[r][c] = scale · q_r · k_c for r < rows and every column c of a sub-tile, from the keys
// transposed (keys_t[d][c], zero past the last key). Four rows at a time: each loaded key column
// feeds four accumulators (16 AVX-512 registers of f32 for 64 keys).
template <typename C, int kD>
void transposed_scores(C* __restrict scores, const C* const* query_rows, int64_t rows, const C* __restrict keys_t,
                       int64_t head_dim, C scale) {
  const int64_t D = kD > 0 ? kD : head_dim;
  constexpr int kGroup = 4;
  int64_t r = 0;
  for (; r + kGroup <= rows; r += kGroup) {
    C acc[kGroup][kKeyTile] = {};
    for (int64_t d = 0; d < D; ++d) {
      const C* column = keys_t + d * kKeyTile;
      for (int g = 0; g < kGroup; ++g) {
        const C x = query_rows[r + g][d];
        for (int64_t c = 0; c < kKeyTile; ++c) acc[g][c] += x * column[c];
      }
    }
    for (int g = 0; g < kGroup; ++g)
      for (int64_t c = 0; c < kKeyTile; ++c) scores[(r + g) * kKeyTile + c] = acc[g][c] * scale;
  }
  for (; r < rows; ++r) {
    C acc[kKeyTile] = {};
    for (int64_t d = 0; d < D; ++d) {
      const C x = query_rows[r][d];
      for (int64_t c = 0; c < kKeyTile; ++c) acc[c] += x * keys_t[d * kKeyTile + c];
    }
    for (int64_t c = 0; c < kKeyTile; ++c) scores[r * kKeyTile + c] = acc[c] * scale;
  }
}

// acc[r][:] += sum over the listed keys c of weights[r][c] · value_rows[c][:], for r < rows (acc
// rows D apart, weights rows kKeyTile apart). For D = 64 and 128 a group of rows' accumulators
// stays in vector registers while the keys stream past (GCC/Clang vector extensions: written as
// plain arrays they went through memory at every product).
template <typename C, int kD>
void weighted_values(C* __restrict acc, int64_t rows, const C* __restrict weights, const C* const* value_rows,
                     const int64_t* keys, int64_t key_count, int64_t head_dim) {
  if constexpr (kD > 0) {
    using Vec = typename Vector64<C>::type;
    constexpr int kWidth = int(64 / sizeof(C));
    constexpr int kVecs = kD / kWidth;
    constexpr int kGroup = kVecs >= 16 ? 1 : 16 / kVecs;  // at most 16 accumulator registers
    static_assert(kD % kWidth == 0);
    const auto run = [&]<int kRows>(int64_t a) {
      Vec sums[kRows][kVecs];
#pragma GCC unroll 16
      for (int g = 0; g < kRows; ++g)
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(&sums[g][v], acc + (a + g) * kD + v * kWidth, 64);
      for (int64_t n = 0; n < key_count; ++n) {
        const int64_t c = keys[n];
        Vec row[kVecs];
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(&row[v], value_rows[c] + v * kWidth, 64);
#pragma GCC unroll 16
        for (int g = 0; g < kRows; ++g) {
          const C w = weights[(a + g) * kKeyTile + c];
#pragma GCC unroll 16
          for (int v = 0; v < kVecs; ++v) sums[g][v] += w * row[v];
        }
      }
#pragma GCC unroll 16
      for (int g = 0; g < kRows; ++g)
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(acc + (a + g) * kD + v * kWidth, &sums[g][v], 64);
    };
    int64_t a = 0;
    for (; a + kGroup <= rows; a += kGroup) run.template operator()<kGroup>(a);
    for (; a < rows; ++a) run.template operator()<1>(a);
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < key_count; ++n) {
        const C w = weights[r * kKeyTile + keys[n]];
        const C* value = value_rows[keys[n]];
        for (int64_t d = 0; d < head_dim; ++d) acc[r * head_dim + d] += w * value[d];
      }
  }
}

// acc += weight · row over D values.
template <typename C, int kD>
void add_scaled(C* __restrict acc, C weight, const C* __restrict row, int64_t head_dim) {
  const int64_t D = kD > 0 ? kD : head_dim;
  for (int64_t d = 0; d < D; ++d) acc[d] += weight * row[d];
}

struct Dims {
  int64_t batch, heads, kv_heads, queries, head_dim;
  int64_t group() const { return heads / kv_heads; }
  int64_t group_rows() const { return group() * queries; }
};

template <typename C, typename In, int kD>
void run_typed(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<KeyRunView>& runs,
               const ResolvedAttentionPattern& pattern, C scale) {
  const int64_t kv_heads = runs.empty() ? 1 : runs[0].keys.size(1);
  const Dims s{q.size(0), q.size(1), kv_heads, q.size(2), q.size(3)};
  const int64_t D = kD > 0 ? kD : s.head_dim, T = s.queries, rep = s.group();
  if (s.batch == 0 || s.group_rows() == 0) return;  // no query rows: nothing to write
  // Where each run starts in the keys taken end to end.
  std::vector<int64_t> run_start(runs.size() + 1, 0);
  for (size_t n = 0; n < runs.size(); ++n) run_start[n + 1] = run_start[n] + runs[n].keys.size(2);
  const int64_t total_keys = run_start.back();
  const CachedAttentionSplit split = cached_attention_split(s.batch, s.kv_heads, s.group_rows(), total_keys);
  const int64_t chunks = split.key_chunks;

  const C* q_data = static_cast<const C*>(q.raw_data());
  C* out_data = static_cast<C*>(out.raw_data());
  C* lse_data = static_cast<C*>(lse.raw_data());
  const int64_t all_rows = s.batch * s.heads * T;
  // With several chunks each writes its normalised rows here, merged below; with one, the
  // task writes the output itself.
  std::vector<C> partial_out, partial_lse;
  if (chunks > 1) {
    partial_out.resize(size_t(chunks * all_rows * D));
    partial_lse.resize(size_t(chunks * all_rows));
  }
  const int64_t offset = pattern.query_offset();
  const int64_t tasks = s.batch * s.kv_heads * split.row_tiles * chunks;

  parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> scores(size_t(kRowTile * kKeyTile)), acc(size_t(kRowTile * D)), keys_t(size_t(D * kKeyTile));
    std::vector<C> converted_keys, converted_values;
    if constexpr (!std::is_same_v<In, C>) {
      converted_keys.resize(size_t(kKeyTile * D));
      converted_values.resize(size_t(kKeyTile * D));
    }
    C row_max[kRowTile], row_sum[kRowTile], rescale[kRowTile];
    const C* query_rows[kRowTile];
    int64_t row_head[kRowTile], row_position[kRowTile], row_index[kRowTile];
    const C* key_rows[kKeyTile];
    const C* value_rows[kKeyTile];
    int64_t used_keys[kKeyTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t tile = (task / chunks) % split.row_tiles;
      const int64_t bg = task / (chunks * split.row_tiles);
      const int64_t b = bg / s.kv_heads, g = bg % s.kv_heads;
      const int64_t r0 = tile * kRowTile, rows = std::min(kRowTile, s.group_rows() - r0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = (r0 + r) / rep, h = g * rep + (r0 + r) % rep;
        row_head[r] = h;
        row_position[r] = offset + t;
        row_index[r] = (b * s.heads + h) * T + t;
        query_rows[r] = q_data + row_index[r] * D;
      }
      // The tile's heads (every head of the group, or the few rows of a short last tile) and
      // query positions, for skipping sub-tiles that none of them sees.
      const int64_t tile_heads = rows >= rep ? rep : rows;
      const int64_t first_position = row_position[0], last_position = row_position[rows - 1];
      std::fill(row_max, row_max + rows, kMinusInfinity<C>);
      std::fill(row_sum, row_sum + rows, C(0));
      std::fill(acc.begin(), acc.begin() + rows * D, C(0));

      const int64_t chunk_begin = chunk * split.chunk_keys;
      const int64_t chunk_end = std::min(total_keys, chunk_begin + split.chunk_keys);
      for (size_t n = 0; n < runs.size(); ++n) {
        const int64_t from = std::max(chunk_begin, run_start[n]) - run_start[n];
        const int64_t to = std::min(chunk_end, run_start[n + 1]) - run_start[n];
        if (from >= to) continue;
        const KeyRunView& run = runs[n];
        const In* keys = static_cast<const In*>(run.keys.raw_data()) + b * run.keys.stride(0) + g * run.keys.stride(1);
        const In* values =
            static_cast<const In*>(run.values.raw_data()) + b * run.values.stride(0) + g * run.values.stride(1);
        const int64_t key_stride = run.keys.stride(2), value_stride = run.values.stride(2);
        const int64_t* positions = run.positions + g * run.positions_head_stride;
        for (int64_t j0 = from; j0 < to; j0 += kKeyTile) {
          const int64_t count = std::min(kKeyTile, to - j0);
          const int64_t* pos = positions + j0;
          int64_t lowest = std::numeric_limits<int64_t>::max(), highest = -1;
          bool any_empty = false;
          for (int64_t c = 0; c < count; ++c) {
            if (pos[c] < 0) {
              any_empty = true;
              continue;
            }
            lowest = std::min(lowest, pos[c]);
            highest = std::max(highest, pos[c]);
          }
          if (highest < 0) continue;  // every slot empty
          bool all_skip = true, all_full = !any_empty;
          for (int64_t hh = 0; hh < tile_heads; ++hh) {
            const int64_t h = rows >= rep ? g * rep + hh : row_head[hh];
            const TileKind kind = pattern.classify(b, h, first_position, last_position + 1, lowest, highest + 1);
            all_skip = all_skip && kind == TileKind::skip;
            all_full = all_full && kind == TileKind::full;
          }
          if (all_skip) continue;

          for (int64_t c = 0; c < count; ++c) {
            const In* key = keys + (j0 + c) * key_stride;
            const In* value = values + (j0 + c) * value_stride;
            if constexpr (std::is_same_v<In, C>) {
              key_rows[c] = key;
              value_rows[c] = value;
            } else {
              C* key_copy = converted_keys.data() + c * D;
              C* value_copy = converted_values.data() + c * D;
              for (int64_t d = 0; d < D; ++d) {
                key_copy[d] = C(float(key[d]));
                value_copy[d] = C(float(value[d]));
              }
              key_rows[c] = key_copy;
              value_rows[c] = value_copy;
            }
          }
          if (rows >= kTransposedRows) {
            // Many rows (prefill): the sub-tile's keys transposed once, then products that
            // vectorise over the keys with no horizontal sums.
            for (int64_t c = 0; c < count; ++c)
              for (int64_t d = 0; d < D; ++d) keys_t[size_t(d * kKeyTile + c)] = key_rows[c][d];
            for (int64_t d = 0; d < D && count < kKeyTile; ++d)
              std::fill(keys_t.begin() + d * kKeyTile + count, keys_t.begin() + (d + 1) * kKeyTile, C(0));
            transposed_scores<C, kD>(scores.data(), query_rows, rows, keys_t.data(), D, scale);
          } else {
            // Few rows (decode): each key row is loaded once for all of them.
            for (int64_t c = 0; c < count; ++c)
              for (int64_t r = 0; r < rows; ++r)
                scores[size_t(r * kKeyTile + c)] = scale * dot<C, kD>(query_rows[r], key_rows[c], D);
          }
          if (!all_full) {
            for (int64_t r = 0; r < rows; ++r) {
              C* row = scores.data() + r * kKeyTile;
              for (int64_t c = 0; c < count; ++c)
                if (pos[c] < 0 || !pattern.allowed(b, row_head[r], row_position[r], pos[c])) row[c] = kMinusInfinity<C>;
            }
          }
          // Rows padded with hidden columns to a whole sub-tile, so that the maximum, exp and sum
          // below run over kKeyTile columns in kLanes independent lanes (they vectorise).
          for (int64_t r = 0; r < rows; ++r) {
            C* row = scores.data() + r * kKeyTile;
            std::fill(row + count, row + kKeyTile, kMinusInfinity<C>);
            C lanes[kLanes];
            std::fill(lanes, lanes + kLanes, kMinusInfinity<C>);
            for (int64_t c = 0; c < kKeyTile; c += kLanes)
              for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = std::max(lanes[lane], row[c + lane]);
            C new_max = row_max[r];
            for (C lane : lanes) new_max = std::max(new_max, lane);
            if (new_max == kMinusInfinity<C>) {  // nothing visible in this row yet
              std::fill(row, row + kKeyTile, C(0));
              rescale[r] = 1;
              continue;
            }
            rescale[r] = fast_exp(row_max[r] - new_max);
            for (int64_t c = 0; c < kKeyTile; ++c) row[c] = fast_exp(row[c] - new_max);
            std::fill(lanes, lanes + kLanes, C(0));
            for (int64_t c = 0; c < kKeyTile; c += kLanes)
              for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += row[c + lane];
            C tile_sum = 0;
            for (C lane : lanes) tile_sum += lane;
            row_sum[r] = rescale[r] * row_sum[r] + tile_sum;
            row_max[r] = new_max;
            if (rescale[r] != C(1)) {
              C* acc_row = acc.data() + r * D;
              for (int64_t d = 0; d < D; ++d) acc_row[d] *= rescale[r];
            }
          }
          // P V over the keys some row gives weight: an empty slot is hidden from every row, so
          // its stale values are never read.
          int64_t used = 0;
          for (int64_t c = 0; c < count; ++c) {
            bool any = false;
            for (int64_t r = 0; r < rows; ++r) any = any || scores[size_t(r * kKeyTile + c)] != C(0);
            if (any) used_keys[used++] = c;
          }
          weighted_values<C, kD>(acc.data(), rows, scores.data(), value_rows, used_keys, used, D);
        }
      }

      for (int64_t r = 0; r < rows; ++r) {
        const bool empty = row_sum[r] == C(0);
        const C inverse = empty ? C(0) : C(1) / row_sum[r];
        const C row_lse = empty ? kMinusInfinity<C> : row_max[r] + std::log(row_sum[r]);
        C* target = chunks > 1 ? partial_out.data() + (chunk * all_rows + row_index[r]) * D
                               : out_data + row_index[r] * D;
        const C* acc_row = acc.data() + r * D;
        for (int64_t d = 0; d < D; ++d) target[d] = acc_row[d] * inverse;
        (chunks > 1 ? partial_lse[size_t(chunk * all_rows + row_index[r])] : lse_data[row_index[r]]) = row_lse;
      }
    }
  });
  if (chunks == 1) return;

  // LSE = log sum_c exp(LSE_c), O = sum_c exp(LSE_c - LSE) O_c, in chunk order.
  parallel_for(0, all_rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      C peak = kMinusInfinity<C>;
      for (int64_t c = 0; c < chunks; ++c) peak = std::max(peak, partial_lse[size_t(c * all_rows + row)]);
      C* target = out_data + row * D;
      std::fill(target, target + D, C(0));
      if (peak == kMinusInfinity<C>) {
        lse_data[row] = kMinusInfinity<C>;
        continue;
      }
      C total = 0;
      for (int64_t c = 0; c < chunks; ++c) total += std::exp(partial_lse[size_t(c * all_rows + row)] - peak);
      const C row_lse = peak + std::log(total);
      lse_data[row] = row_lse;
      for (int64_t c = 0; c < chunks; ++c) {
        const C chunk_lse = partial_lse[size_t(c * all_rows + row)];
        if (chunk_lse == kMinusInfinity<C>) continue;
        add_scaled<C, kD>(target, std::exp(chunk_lse - row_lse), partial_out.data() + (c * all_rows + row) * D, D);
      }
    }
  });
}

template <typename C, typename In>
void dispatch_head_dim(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<KeyRunView>& runs,
                       const ResolvedAttentionPattern& pattern, C scale) {
  switch (q.size(3)) {
    case 64: return run_typed<C, In, 64>(out, lse, q, runs, pattern, scale);
    case 128: return run_typed<C, In, 128>(out, lse, q, runs, pattern, scale);
    default: return run_typed<C, In, 0>(out, lse, q, runs, pattern, scale);
  }
}

}  // namespace

CachedAttentionSplit cached_attention_split(int64_t batch, int64_t kv_heads, int64_t group_rows, int64_t keys) {
  CachedAttentionSplit split;
  split.row_tiles = std::max<int64_t>(1, (group_rows + kRowTile - 1) / kRowTile);
  const int64_t slices = batch * kv_heads * split.row_tiles;
  const int64_t wanted = std::max<int64_t>(1, (kTargetTasks + slices - 1) / slices);
  const int64_t most = std::max<int64_t>(1, keys / kMinChunkKeys);
  int64_t chunks = std::min(wanted, most);
  // Whole sub-tiles per chunk, then as few chunks as those need.
  split.chunk_keys = std::max<int64_t>(kKeyTile, ((keys + chunks - 1) / chunks + kKeyTile - 1) / kKeyTile * kKeyTile);
  split.key_chunks = std::max<int64_t>(1, (keys + split.chunk_keys - 1) / split.chunk_keys);
  return split;
}

void cached_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<KeyRunView>& runs,
                      const ResolvedAttentionPattern& pattern, double scale) {
  const DType input = runs.empty() ? q.dtype() : runs[0].keys.dtype();
  if (q.dtype() == DType::f64) return dispatch_head_dim<double, double>(out, lse, q, runs, pattern, scale);
  switch (input) {
    case DType::bf16: return dispatch_head_dim<float, bf16>(out, lse, q, runs, pattern, float(scale));
    case DType::f16: return dispatch_head_dim<float, f16>(out, lse, q, runs, pattern, float(scale));
    default: return dispatch_head_dim<float, float>(out, lse, q, runs, pattern, float(scale));
  }
}

}  // namespace lamina::ops::cpu
