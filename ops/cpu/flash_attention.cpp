// Fused attention on the CPU in the FlashAttention-2 manner (spec: sparse-attention.md §3):
// tiles of 64 queries x 64 keys, an online softmax, only the log-sum-exp kept for the backward,
// and tiles that the pattern leaves empty never visited, so that the cost follows density.
//
// Per (b, query head h) with kv head g = h / (Hq / Hkv), query tile I and key tile J:
//   S = scale * Q_I K_J^T, masked (-inf) where the pattern hides a key (partial tiles only)
//   m' = max(m, rowmax S);  P = exp(S - m');  l = exp(m - m') l + rowsum P
//   acc = exp(m - m') acc + P V_J;  at the end O = acc / l, lse = m + log l
// A row that never sees a key keeps m = -inf and l = 0: O = 0, lse = -inf (no NaN: exp(-inf)
// is 0 and the rescale is skipped while m' is -inf).
// Backward, with P = exp(S - lse) recomputed tile by tile and Delta_t = dO_t . O_t:
//   dV_J += P^T dO_I;  dP = dO_I V_J^T;  dS = scale * P (dP - Delta);
//   dQ_I += dS K_J;    dK_J += dS^T Q_I
// (Delta replaces sum_j P_tj dP_tj: both equal dO_t . sum_j P_tj v_j.)
//
// Threads: the forward runs one task per (b, h, query tile), each writing only its rows. The
// backward runs one task per (b, kv head) and walks key tiles in order, the group's query heads
// and query tiles inside: dK and dV of a key tile sum privately, and dQ rows receive the key
// tiles in increasing order, so every sum has a fixed order and the results do not depend on
// the thread count (the cost: at most B x Hkv tasks run in parallel in the backward).
//
// Memory: besides the outputs, the forward allocates K^T (the size of k, padded to whole key
// tiles) and the backward K^T and V^T; per thread a few tile-sized buffers (2 x 64 x 64 scores,
// 2 x 64 x D accumulators). Nothing grows with Tq x Tk.
//
// Tile skipping never changes a result: a tile that is visited but fully masked adds exactly
// zero to every sum and rescales by exp(0) = 1, so a pattern and the same pattern given as an
// additive -inf mask give equal results (tests/ops/test_flash_attention.cpp checks it).
#include "ops/cpu/flash_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/vec_math.h"
#include "tensor/parallel.h"

namespace lamina::ops::cpu {
namespace {

constexpr int64_t kTileQueries = kFlashTileQueries;
constexpr int64_t kTileKeys = kFlashTileKeys;
// Rows of scores handled together by tile_products: each loaded line of the other operand
// feeds this many accumulators (24 of the 32 AVX-512 registers for 64 f32 columns).
constexpr int kRowGroup = 6;
constexpr int kLanes = 16;

template <typename C>
constexpr C kMinusInfinity = -std::numeric_limits<C>::infinity();

struct FlashDims {
  int64_t batch, heads, kv_heads, queries, keys, head_dim;
  int64_t group() const { return heads / kv_heads; }
  int64_t query_tiles() const { return (queries + kTileQueries - 1) / kTileQueries; }
  int64_t key_tiles() const { return (keys + kTileKeys - 1) / kTileKeys; }
  int64_t padded_keys() const { return key_tiles() * kTileKeys; }
};

FlashDims dims_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

// scores[a][c] = scale * sum_d rows[a][d] * columns_t[d][c], for a < count and all kTileKeys
// columns. rows: `count` rows of D values; columns_t: D rows, `columns_stride` apart.
// Rows go kRowGroup at a time (6 x 64 columns: 24 accumulator registers, each loaded line of
// columns_t feeding 6 of them), then 4, then 1.
template <typename C, int kD>
void tile_products(C* __restrict scores, const C* __restrict rows, int64_t count, const C* __restrict columns_t,
                   int64_t columns_stride, int64_t head_dim, C scale) {
  const int64_t D = kD > 0 ? kD : head_dim;
  const auto run = [&]<int kRows>(int64_t a) {
    C acc[kRows][kTileKeys] = {};
    for (int64_t d = 0; d < D; ++d) {
      const C* column = columns_t + d * columns_stride;
      for (int g = 0; g < kRows; ++g) {
        const C x = rows[(a + g) * D + d];
        for (int64_t c = 0; c < kTileKeys; ++c) acc[g][c] += x * column[c];
      }
    }
    for (int g = 0; g < kRows; ++g)
      for (int64_t c = 0; c < kTileKeys; ++c) scores[(a + g) * kTileKeys + c] = acc[g][c] * scale;
  };
  int64_t a = 0;
  for (; a + kRowGroup <= count; a += kRowGroup) run.template operator()<kRowGroup>(a);
  for (; a + 4 <= count; a += 4) run.template operator()<4>(a);
  for (; a < count; ++a) run.template operator()<1>(a);
}

// 64 bytes of C as one GCC/Clang vector value (one AVX-512 register).
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

// out[a][:] += sum_{k < n} weight(a, k) * source[k][:] for a < count, with weight(a, k) =
// weights[a * weight_a_stride + k * weight_k_stride]; out rows are D apart, source rows D apart.
// For D = 64 and 128 the accumulators are held in 64-byte vector variables (GCC/Clang vector
// extensions), a group of rows at a time: written as plain arrays, GCC kept them in memory and
// stored every FMA's result back (a load-add-store per FMA, 3.6x slower than Q K^T).
template <typename C, int kD>
void accumulate_products(C* __restrict out, int64_t count, const C* __restrict weights, int64_t weight_a_stride,
                         int64_t weight_k_stride, const C* __restrict source, int64_t n, int64_t head_dim) {
  if constexpr (kD > 0) {
    using Vec = typename Vector64<C>::type;
    constexpr int kWidth = int(64 / sizeof(C));
    constexpr int kVecs = kD / kWidth;
    constexpr int kGroup = kVecs >= 24 ? 1 : 24 / kVecs;  // at most 24 accumulator registers
    static_assert(kD % kWidth == 0);
    const auto run = [&]<int kRows>(int64_t a) {
      Vec acc[kRows][kVecs];
#pragma GCC unroll 16
      for (int g = 0; g < kRows; ++g)
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(&acc[g][v], out + (a + g) * kD + v * kWidth, 64);
      for (int64_t k = 0; k < n; ++k) {
        Vec row[kVecs];
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(&row[v], source + k * kD + v * kWidth, 64);
#pragma GCC unroll 16
        for (int g = 0; g < kRows; ++g) {
          const C w = weights[(a + g) * weight_a_stride + k * weight_k_stride];
#pragma GCC unroll 16
          for (int v = 0; v < kVecs; ++v) acc[g][v] += w * row[v];
        }
      }
#pragma GCC unroll 16
      for (int g = 0; g < kRows; ++g)
#pragma GCC unroll 16
        for (int v = 0; v < kVecs; ++v) __builtin_memcpy(out + (a + g) * kD + v * kWidth, &acc[g][v], 64);
    };
    int64_t a = 0;
    for (; a + kGroup <= count; a += kGroup) run.template operator()<kGroup>(a);
    if constexpr (kGroup > 4) {
      for (; a + 4 <= count; a += 4) run.template operator()<4>(a);
    }
    for (; a < count; ++a) run.template operator()<1>(a);
  } else {
    const int64_t D = head_dim;
    for (int64_t a = 0; a < count; ++a)
      for (int64_t k = 0; k < n; ++k) {
        const C w = weights[a * weight_a_stride + k * weight_k_stride];
        for (int64_t d = 0; d < D; ++d) out[a * D + d] += w * source[k * D + d];
      }
  }
}

// Where a partial tile's keys are hidden, -inf; elsewhere the additive mask, if any, is added.
// Columns past the last key (a ragged last tile) are hidden too.
template <typename C>
struct TileMasker {
  const ResolvedAttentionPattern& pattern;
  const Tensor& mask;

  void apply(C* scores, int64_t b, int64_t h, int64_t first_query, int64_t rows, int64_t first_key,
             int64_t columns) const {
    const C* mask_bh = nullptr;
    if (mask.defined())
      mask_bh = static_cast<const C*>(mask.raw_data()) + b * mask.stride(0) + h * mask.stride(1);
    const int64_t offset = pattern.query_offset();
    if (pattern.sink_window_only()) {
      // The same predicate as ResolvedAttentionPattern::allowed, branch-free so that it vectorises.
      const int64_t sink = pattern.sink(h), window = pattern.window(h);
      const bool causal = pattern.causal();
      for (int64_t r = 0; r < rows; ++r) {
        C* row = scores + r * kTileKeys;
        const int64_t t = first_query + r, i = offset + t;
        const auto keep = [&](int64_t c) {
          const int64_t j = first_key + c;
          return c < columns && (!causal || j <= i) && (j < sink || (window > 0 && i - j < window));
        };
        if (mask_bh == nullptr) {
          for (int64_t c = 0; c < kTileKeys; ++c) row[c] = keep(c) ? row[c] : kMinusInfinity<C>;
        } else {
          for (int64_t c = 0; c < kTileKeys; ++c)
            row[c] = keep(c) ? row[c] + mask_bh[t * mask.stride(2) + (first_key + c) * mask.stride(3)] : kMinusInfinity<C>;
        }
      }
      return;
    }
    for (int64_t r = 0; r < rows; ++r) {
      C* row = scores + r * kTileKeys;
      const int64_t t = first_query + r;
      for (int64_t c = 0; c < kTileKeys; ++c) {
        const int64_t j = first_key + c;
        if (c >= columns || !pattern.allowed(b, h, offset + t, j)) {
          row[c] = kMinusInfinity<C>;
        } else if (mask_bh != nullptr) {
          row[c] += mask_bh[t * mask.stride(2) + j * mask.stride(3)];
        }
      }
    }
  }
};

// dst [B, Hkv, D, padded_keys] = src [B, Hkv, Tk, D] transposed per head, zero past Tk.
template <typename C>
Tensor transposed_keys(const Tensor& src, const FlashDims& s) {
  const int64_t padded = s.padded_keys(), D = s.head_dim, T = s.keys;
  Tensor dst = Tensor::empty({s.batch, s.kv_heads, D, padded}, src.dtype(), Device::cpu());
  const C* src_data = static_cast<const C*>(src.raw_data());
  C* dst_data = static_cast<C*>(dst.raw_data());
  parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t head = begin; head < end; ++head) {
      const C* from = src_data + head * T * D;
      C* to = dst_data + head * D * padded;
      // Blocks of 16 keys: their rows stay in L1 while each d writes 16 contiguous values.
      for (int64_t j0 = 0; j0 < T; j0 += 16) {
        const int64_t count = std::min<int64_t>(16, T - j0);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t j = 0; j < count; ++j) to[d * padded + j0 + j] = from[(j0 + j) * D + d];
      }
      for (int64_t d = 0; d < D; ++d)
        for (int64_t j = T; j < padded; ++j) to[d * padded + j] = 0;
    }
  });
  return dst;
}

template <typename C, int kD>
void forward_typed(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const ResolvedAttentionPattern& pattern, const Tensor& mask, C scale) {
  const FlashDims s = dims_of(q, k);
  const int64_t D = kD > 0 ? kD : s.head_dim, Tq = s.queries, Tk = s.keys, padded = s.padded_keys();
  const Tensor keys_t = transposed_keys<C>(k, s);
  const C* q_data = static_cast<const C*>(q.raw_data());
  const C* kt_data = static_cast<const C*>(keys_t.raw_data());
  const C* v_data = static_cast<const C*>(v.raw_data());
  C* out_data = static_cast<C*>(out.raw_data());
  C* lse_data = static_cast<C*>(lse.raw_data());
  const TileMasker<C> masker{pattern, mask};
  const int64_t offset = pattern.query_offset();
  parallel_for(0, s.batch * s.heads * s.query_tiles(), 1, [&](int64_t begin, int64_t end) {
    std::vector<C> scores(size_t(kTileQueries * kTileKeys)), acc(size_t(kTileQueries * D));
    C row_max[kTileQueries], row_sum[kTileQueries], rescale[kTileQueries];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / s.query_tiles(), tile = task % s.query_tiles();
      const int64_t b = bh / s.heads, h = bh % s.heads, g = h / s.group();
      const int64_t t0 = tile * kTileQueries, rows = std::min(kTileQueries, Tq - t0);
      const C* q_tile = q_data + (bh * Tq + t0) * D;
      const C* kt_bg = kt_data + (b * s.kv_heads + g) * D * padded;
      const C* v_bg = v_data + (b * s.kv_heads + g) * Tk * D;
      std::fill(row_max, row_max + rows, kMinusInfinity<C>);
      std::fill(row_sum, row_sum + rows, C(0));
      std::fill(acc.begin(), acc.end(), C(0));
      for (int64_t key_tile = 0; key_tile < s.key_tiles(); ++key_tile) {
        const int64_t c0 = key_tile * kTileKeys, columns = std::min(kTileKeys, Tk - c0);
        const TileKind kind = pattern.classify(b, h, offset + t0, offset + t0 + rows, c0, c0 + columns);
        if (kind == TileKind::skip) continue;
        tile_products<C, kD>(scores.data(), q_tile, rows, kt_bg + c0, padded, D, scale);
        if (kind == TileKind::partial || columns < kTileKeys) masker.apply(scores.data(), b, h, t0, rows, c0, columns);
        for (int64_t r = 0; r < rows; ++r) {
          C* row = scores.data() + r * kTileKeys;
          C lanes[kLanes];
          for (C& lane : lanes) lane = kMinusInfinity<C>;
          for (int64_t c = 0; c < kTileKeys; c += kLanes)
            for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = std::max(lanes[lane], row[c + lane]);
          C new_max = row_max[r];
          for (C lane : lanes) new_max = std::max(new_max, lane);
          if (new_max == kMinusInfinity<C>) {  // nothing visible in this row yet
            std::fill(row, row + kTileKeys, C(0));
            rescale[r] = 1;
            continue;
          }
          rescale[r] = fast_exp(row_max[r] - new_max);
          for (int64_t c = 0; c < kTileKeys; ++c) row[c] = fast_exp(row[c] - new_max);
          for (C& lane : lanes) lane = 0;
          for (int64_t c = 0; c < kTileKeys; c += kLanes)
            for (int lane = 0; lane < kLanes; ++lane) lanes[lane] += row[c + lane];
          C tile_sum = 0;
          for (C lane : lanes) tile_sum += lane;
          row_sum[r] = rescale[r] * row_sum[r] + tile_sum;
          row_max[r] = new_max;
        }
        for (int64_t r = 0; r < rows; ++r) {
          if (rescale[r] == C(1)) continue;
          C* acc_row = acc.data() + r * D;
          for (int64_t d = 0; d < D; ++d) acc_row[d] *= rescale[r];
        }
        accumulate_products<C, kD>(acc.data(), rows, scores.data(), kTileKeys, 1, v_bg + c0 * D, columns, D);
      }
      for (int64_t r = 0; r < rows; ++r) {
        C* out_row = out_data + (bh * Tq + t0 + r) * D;
        const C* acc_row = acc.data() + r * D;
        const bool empty = row_sum[r] == C(0);
        const C inverse = empty ? C(0) : C(1) / row_sum[r];
        for (int64_t d = 0; d < D; ++d) out_row[d] = acc_row[d] * inverse;
        lse_data[bh * Tq + t0 + r] = empty ? kMinusInfinity<C> : row_max[r] + std::log(row_sum[r]);
      }
    }
  });
}

template <typename C, int kD>
void backward_typed(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                    const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                    const ResolvedAttentionPattern& pattern, const Tensor& mask, C scale) {
  const FlashDims s = dims_of(q, k);
  const int64_t D = kD > 0 ? kD : s.head_dim, Tq = s.queries, Tk = s.keys, padded = s.padded_keys();
  const Tensor keys_t = transposed_keys<C>(k, s), values_t = transposed_keys<C>(v, s);
  const C* q_data = static_cast<const C*>(q.raw_data());
  const C* k_data = static_cast<const C*>(k.raw_data());
  const C* kt_data = static_cast<const C*>(keys_t.raw_data());
  const C* vt_data = static_cast<const C*>(values_t.raw_data());
  const C* o_data = static_cast<const C*>(out.raw_data());
  const C* do_data = static_cast<const C*>(dout.raw_data());
  const C* lse_data = static_cast<const C*>(lse.raw_data());
  C* dq_data = static_cast<C*>(dq.raw_data());
  C* dk_data = static_cast<C*>(dk.raw_data());
  C* dv_data = static_cast<C*>(dv.raw_data());
  const TileMasker<C> masker{pattern, mask};
  const int64_t offset = pattern.query_offset();
  parallel_for(0, s.batch * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> probs(size_t(kTileQueries * kTileKeys)), grad_scores(size_t(kTileQueries * kTileKeys));
    std::vector<C> dk_tile(size_t(kTileKeys * D)), dv_tile(size_t(kTileKeys * D));
    std::vector<C> delta(size_t(s.group() * Tq));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.kv_heads, g = task % s.kv_heads;
      const int64_t first_head = g * s.group();
      // Delta_t = dO_t . O_t for the group's query heads; their dq rows start at zero.
      for (int64_t hh = 0; hh < s.group(); ++hh) {
        const int64_t bh = b * s.heads + first_head + hh;
        for (int64_t t = 0; t < Tq; ++t) {
          C dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += do_data[(bh * Tq + t) * D + d] * o_data[(bh * Tq + t) * D + d];
          delta[size_t(hh * Tq + t)] = dot;
        }
        std::fill(dq_data + bh * Tq * D, dq_data + (bh + 1) * Tq * D, C(0));
      }
      const C* kt_bg = kt_data + task * D * padded;
      const C* vt_bg = vt_data + task * D * padded;
      for (int64_t key_tile = 0; key_tile < s.key_tiles(); ++key_tile) {
        const int64_t c0 = key_tile * kTileKeys, columns = std::min(kTileKeys, Tk - c0);
        const C* k_rows = k_data + (task * Tk + c0) * D;
        std::fill(dk_tile.begin(), dk_tile.end(), C(0));
        std::fill(dv_tile.begin(), dv_tile.end(), C(0));
        for (int64_t hh = 0; hh < s.group(); ++hh) {
          const int64_t h = first_head + hh, bh = b * s.heads + h;
          for (int64_t tile = 0; tile < s.query_tiles(); ++tile) {
            const int64_t t0 = tile * kTileQueries, rows = std::min(kTileQueries, Tq - t0);
            const TileKind kind = pattern.classify(b, h, offset + t0, offset + t0 + rows, c0, c0 + columns);
            if (kind == TileKind::skip) continue;
            const C* q_tile = q_data + (bh * Tq + t0) * D;
            const C* do_tile = do_data + (bh * Tq + t0) * D;
            tile_products<C, kD>(probs.data(), q_tile, rows, kt_bg + c0, padded, D, scale);
            if (kind == TileKind::partial || columns < kTileKeys)
              masker.apply(probs.data(), b, h, t0, rows, c0, columns);
            for (int64_t r = 0; r < rows; ++r) {
              C* row = probs.data() + r * kTileKeys;
              const C row_lse = lse_data[bh * Tq + t0 + r];
              if (row_lse == kMinusInfinity<C>) {  // a row that sees no key: no gradient
                std::fill(row, row + kTileKeys, C(0));
                continue;
              }
              for (int64_t c = 0; c < kTileKeys; ++c) row[c] = fast_exp(row[c] - row_lse);
            }
            tile_products<C, kD>(grad_scores.data(), do_tile, rows, vt_bg + c0, padded, D, C(1));
            for (int64_t r = 0; r < rows; ++r) {
              const C row_delta = delta[size_t(hh * Tq + t0 + r)];
              C* grad_row = grad_scores.data() + r * kTileKeys;
              const C* prob_row = probs.data() + r * kTileKeys;
              for (int64_t c = 0; c < kTileKeys; ++c) grad_row[c] = scale * prob_row[c] * (grad_row[c] - row_delta);
            }
            // dV_J += P^T dO_I;  dK_J += dS^T Q_I;  dQ_I += dS K_J
            accumulate_products<C, kD>(dv_tile.data(), columns, probs.data(), 1, kTileKeys, do_tile, rows, D);
            accumulate_products<C, kD>(dk_tile.data(), columns, grad_scores.data(), 1, kTileKeys, q_tile, rows, D);
            accumulate_products<C, kD>(dq_data + (bh * Tq + t0) * D, rows, grad_scores.data(), kTileKeys, 1, k_rows,
                                       columns, D);
          }
        }
        std::copy(dk_tile.begin(), dk_tile.begin() + columns * D, dk_data + (task * Tk + c0) * D);
        std::copy(dv_tile.begin(), dv_tile.begin() + columns * D, dv_data + (task * Tk + c0) * D);
      }
    }
  });
}

template <typename C>
void forward_dispatch(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                      const ResolvedAttentionPattern& pattern, const Tensor& mask, C scale) {
  switch (q.size(3)) {
    case 64: return forward_typed<C, 64>(out, lse, q, k, v, pattern, mask, scale);
    case 128: return forward_typed<C, 128>(out, lse, q, k, v, pattern, mask, scale);
    default: return forward_typed<C, 0>(out, lse, q, k, v, pattern, mask, scale);
  }
}

template <typename C>
void backward_dispatch(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                       const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                       const ResolvedAttentionPattern& pattern, const Tensor& mask, C scale) {
  switch (q.size(3)) {
    case 64: return backward_typed<C, 64>(dq, dk, dv, dout, q, k, v, out, lse, pattern, mask, scale);
    case 128: return backward_typed<C, 128>(dq, dk, dv, dout, q, k, v, out, lse, pattern, mask, scale);
    default: return backward_typed<C, 0>(dq, dk, dv, dout, q, k, v, out, lse, pattern, mask, scale);
  }
}

}  // namespace

void flash_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const ResolvedAttentionPattern& pattern, const Tensor& mask, double scale) {
  if (q.dtype() == DType::f64) {
    forward_dispatch<double>(out, lse, q, k, v, pattern, mask, scale);
  } else {
    forward_dispatch<float>(out, lse, q, k, v, pattern, mask, float(scale));
  }
}

void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const ResolvedAttentionPattern& pattern, const Tensor& mask,
                              double scale) {
  if (q.dtype() == DType::f64) {
    backward_dispatch<double>(dq, dk, dv, dout, q, k, v, out, lse, pattern, mask, scale);
  } else {
    backward_dispatch<float>(dq, dk, dv, dout, q, k, v, out, lse, pattern, mask, float(scale));
  }
}

}  // namespace lamina::ops::cpu
