// The fused attention on the GPU, the twin of ops/cpu/flash_attention.cpp (spec:
// sparse-attention.md §3): tiles of 64 queries x 64 keys, an online softmax in f32, only the
// log-sum-exp kept for the backward, and the tiles the pattern leaves empty never visited.
//
// Equations (the CPU file's, unchanged), per (b, query head h), kv head g = h / (Hq / Hkv):
//   S = scale * Q_I K_J^T, -inf where the pattern hides a key, + the additive mask elsewhere
//   m' = max(m, rowmax S);  P = exp(S - m');  l = exp(m - m') l + rowsum P
//   acc = exp(m - m') acc + P V_J;  at the end O = acc / l, lse = m + log l
//   backward: P = exp(S - lse);  Delta_t = dO_t . O_t;  dS = scale * P (dO V^T - Delta)
//             dV_J = sum P^T dO_I;  dK_J = sum dS^T Q_I;  dQ_I = sum dS K_J
// A row that sees no key keeps m = -inf and l = 0: O = 0, lse = -inf, and its P is 0 in the
// backward (never exp(-inf - -inf)), so no NaN appears anywhere.
//
// Tile classification is done on the host by ResolvedAttentionPattern::classify, the function
// the CPU kernel calls, over the same 64 x 64 tiles, so both visit exactly the same tiles. The
// table (one byte per tile) is computed once per distinct head pattern (heads with equal sink,
// window and layout share it) and per batch row only when document ids differ per row. Partial
// tiles (and the ragged last key tile) evaluate the predicate per element on the device from a
// device copy of the pattern's arrays; full tiles skip it.
//
// Kernels, all 256 threads = 8 warps, f32 arithmetic on CUDA cores (no tensor cores yet: the
// first version is meant to be right, not fast), Q/K/V/O/dO read in their own dtype and
// converted to f32 on the way into shared memory (zero-padded to the tile's full 64 rows and
// to kDim columns, so that padding adds exact zeros to every dot product):
//   * forward: one block per (b, h, query tile). Warp w owns query rows 8w..8w+7 ("split-Q",
//     no cross-warp softmax reduction); each lane scores key columns lane and lane + 32, and
//     accumulates output columns lane + 32 j. Per-row statistics are warp-wide shuffles.
//   * delta: Delta_t = dO_t . O_t in f32, one warp per row.
//   * dK/dV: one block per (b, kv head, key tile), walking the group's query heads and their
//     query tiles in order (as the CPU does); warp w owns keys 8w..8w+7, dK and dV stay in
//     registers, so they need no atomics and sum in a fixed order.
//   * dQ: one block per (b, h, query tile) walking the key tiles in order, recomputing S and
//     dP. This second pass costs two extra tile products per visited tile, but dQ gets a fixed
//     summation order (deterministic: no atomics, no f32 side buffer) and is written once in
//     the output dtype.
// Shared memory rows are kDim + 4 floats apart: float4 reads of 8 consecutive rows then fall in
// distinct banks ((kDim + 4) / 4 is odd for kDim = 64 and 128).
#include <cmath>
#include <map>
#include <tuple>
#include <vector>

#include "ops/cpu/flash_attention.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

using namespace attention_tiles;

constexpr int kTileQueries = 64;
constexpr int kTileKeys = 64;
static_assert(kTileQueries == cpu::kFlashTileQueries && kTileKeys == cpu::kFlashTileKeys,
              "the GPU must visit the CPU's tiles, so that both classify them identically");
constexpr int kFlashThreads = 256;
constexpr int kFlashWarps = kFlashThreads / 32;
constexpr int kRowsPerWarp = kTileQueries / kFlashWarps;  // 8 query rows (or keys) per warp
static_assert(kRowsPerWarp * kFlashWarps == kTileQueries && kTileKeys == 64, "lanes own columns lane and lane + 32");
// The largest head dim with a kernel: beyond 128 the backward's tiles and register
// accumulators would not fit (and no model lamina runs uses more).
constexpr int64_t kMaxHeadDim = 128;

constexpr uint8_t kSkip = uint8_t(TileKind::skip), kPartial = uint8_t(TileKind::partial);
static_assert(uint8_t(TileKind::full) != kSkip && uint8_t(TileKind::full) != kPartial, "three distinct kinds");

__host__ __device__ constexpr int64_t ceil_div64(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sizes of one call.
struct FlashShape {
  int64_t batch, heads, kv_heads, queries, keys, head_dim;
  __host__ __device__ int64_t group() const { return heads / kv_heads; }
  __host__ __device__ int64_t query_tiles() const { return ceil_div64(queries, kTileQueries); }
  __host__ __device__ int64_t key_tiles() const { return ceil_div64(keys, kTileKeys); }
};

// The pattern on the device: the same fields as ResolvedAttentionPattern, as device pointers.
struct DevicePattern {
  int64_t query_offset;
  bool causal;
  const int64_t* sinks;       // [Hq]
  const int64_t* windows;     // [Hq]
  const int64_t* documents;   // [B or 1, Tk] or null
  int64_t documents_batch_stride;
  const uint8_t* layout;      // [Hq or 1, rows, columns] or null
  int64_t layout_head_stride, layout_columns, block_queries, block_keys;
  const float* mask;          // additive mask, f32, or null
  int64_t mask_strides[4];    // over [B, Hq, Tq, Tk]
  // Tile kinds [batch classes, head classes, query tiles, key tiles]; head h uses class
  // head_class[h], batch row b uses batch class b * kinds_batch_step (0 or 1).
  const uint8_t* kinds;
  const int64_t* head_class;  // [Hq]
  int64_t kinds_batch_step, kinds_classes;
};

__device__ __forceinline__ const uint8_t* kinds_of(const DevicePattern& p, const FlashShape& s, int64_t b, int64_t h) {
  const int64_t per_class = s.query_tiles() * s.key_tiles();
  return p.kinds + ((b * p.kinds_batch_step) * p.kinds_classes + p.head_class[h]) * per_class;
}

// ResolvedAttentionPattern::allowed, for absolute positions i and j (both < Tk when documents
// are given: the caller checks the row and column are inside the call).
__device__ __forceinline__ bool key_allowed(const DevicePattern& p, int64_t b, int64_t h, int64_t i, int64_t j,
                                            int64_t sink, int64_t window) {
  if (p.causal && j > i) return false;
  if (p.documents != nullptr) {
    const int64_t* row = p.documents + b * p.documents_batch_stride;
    if (row[i] != row[j]) return false;
  }
  if (j < sink) return true;
  if (window > 0 && (window == kAllKeys || i - j < window)) return true;
  return p.layout != nullptr &&
         p.layout[h * p.layout_head_stride + (i / p.block_queries) * p.layout_columns + j / p.block_keys] != 0;
}

// A scaled score after the pattern: -inf for a hidden key (and for rows/columns past the ends
// of a ragged tile), plus the additive mask for an allowed one. `check` is false for full
// tiles, where every key is allowed and no mask applies. The product is rounded before the
// mask is added (no fused multiply-add), as on the CPU, so that a pattern and the same
// pattern given as a dense mask give bit-identical scores.
__device__ __forceinline__ float masked_score(const DevicePattern& p, bool check, float dot, float scale, int64_t b,
                                              int64_t h, int64_t t, int64_t j, bool row_inside, bool column_inside,
                                              int64_t sink, int64_t window) {
  const float score = __fmul_rn(dot, scale);
  if (!check) return score;
  if (!row_inside || !column_inside || !key_allowed(p, b, h, p.query_offset + t, j, sink, window)) return -INFINITY;
  if (p.mask == nullptr) return score;
  const float added = p.mask[b * p.mask_strides[0] + h * p.mask_strides[1] + t * p.mask_strides[2] + j * p.mask_strides[3]];
  return __fadd_rn(score, added);
}

// rows [count, D] of T (row-major, D apart) -> tile [64][row_stride] f32, zero past `count`
// rows and past D columns (up to kDim).
template <typename T, int kDim>
__device__ __forceinline__ void load_tile(float* tile, const T* rows, int64_t count, int64_t head_dim) {
  constexpr int kStride = padded_row_stride<kDim>();
  for (int e = int(threadIdx.x); e < kTileQueries * kDim; e += kFlashThreads) {
    const int r = e / kDim, d = e % kDim;
    tile[r * kStride + d] = (r < count && d < head_dim) ? float(load(rows[int64_t(r) * head_dim + d])) : 0.0f;
  }
}

// Shared memory: `tiles` tiles of [64][row_stride] f32, then `extra` floats.
template <int kDim>
constexpr size_t shared_bytes(int tiles, int extra) {
  return (size_t(tiles) * kTileQueries * padded_row_stride<kDim>() + size_t(extra)) * sizeof(float);
}

// ---- forward

template <typename T, int kDim>
__global__ void __launch_bounds__(kFlashThreads)
    flash_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v, FlashShape s, DevicePattern p,
                         float scale) {
  constexpr int kStride = padded_row_stride<kDim>();
  constexpr int kPer = kDim / 32;
  extern __shared__ float4 shared_raw[];
  float* q_tile = reinterpret_cast<float*>(shared_raw);
  float* k_tile = q_tile + kTileQueries * kStride;
  float* v_tile = k_tile + kTileKeys * kStride;
  float* p_tile = v_tile + kTileKeys * kStride;  // [64][64]: each warp's 8 rows of P

  const int64_t query_tiles = s.query_tiles(), key_tiles = s.key_tiles();
  const int64_t tile = int64_t(blockIdx.x) % query_tiles, bh = int64_t(blockIdx.x) / query_tiles;
  const int64_t b = bh / s.heads, h = bh % s.heads, g = h / s.group();
  const int64_t t0 = tile * kTileQueries, rows = min64(kTileQueries, s.queries - t0);
  const int64_t D = s.head_dim;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, first_row = warp * kRowsPerWarp;
  const int64_t sink = p.sinks[h], window = p.windows[h];
  const uint8_t* kinds = kinds_of(p, s, b, h) + tile * key_tiles;
  const T* k_head = k + (b * s.kv_heads + g) * s.keys * D;
  const T* v_head = v + (b * s.kv_heads + g) * s.keys * D;

  load_tile<T, kDim>(q_tile, q + (bh * s.queries + t0) * D, rows, D);

  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kPer];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[i][c] = 0.0f;
  }

  for (int64_t key_tile = 0; key_tile < key_tiles; ++key_tile) {
    const uint8_t kind = kinds[key_tile];  // the same for every thread of the block
    if (kind == kSkip) continue;
    const int64_t c0 = key_tile * kTileKeys, columns = min64(kTileKeys, s.keys - c0);
    const bool check = kind == kPartial || columns < kTileKeys;
    __syncthreads();  // every warp is done with the previous K/V tile
    load_tile<T, kDim>(k_tile, k_head + c0 * D, columns, D);
    load_tile<T, kDim>(v_tile, v_head + c0 * D, columns, D);
    __syncthreads();  // K/V (and, the first time, Q) are in shared memory

    float score[kRowsPerWarp][2];
    rows_dot_lane_rows<kDim, kRowsPerWarp>(score, q_tile, first_row, k_tile, lane);
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = first_row + i;
      const int64_t t = t0 + r;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int column = lane + 32 * c;
        score[i][c] = masked_score(p, check, score[i][c], scale, b, h, t, c0 + column, r < rows, column < columns,
                                   sink, window);
      }
      online_softmax_step(score[i], row_max[i], row_sum[i], acc[i], p_tile + r * kTileKeys, lane);
    }
    __syncwarp();  // this warp's P rows are written
    accumulate_weighted_rows<kDim, kRowsPerWarp, kTileKeys>(acc, p_tile + first_row * kTileKeys, v_tile, lane);
    __syncwarp();  // and read, before the next tile overwrites them
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = first_row + i;
    if (r >= rows) continue;
    const int64_t row = bh * s.queries + t0 + r;
    const bool empty = row_sum[i] == 0.0f;
    const float inverse = empty ? 0.0f : 1.0f / row_sum[i];
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int d = lane + 32 * c;
      if (d < D) out[row * D + d] = convert<T>(acc[i][c] * inverse);
    }
    if (lane == 0) lse[row] = empty ? -INFINITY : row_max[i] + logf(row_sum[i]);
  }
}

// ---- backward

// delta[row] = sum_d dout[row][d] * out[row][d] in f32, one warp per row.
template <typename T>
__global__ void __launch_bounds__(kFlashThreads)
    flash_delta_kernel(float* delta, const T* dout, const T* out, int64_t rows, int64_t head_dim) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int64_t row = int64_t(blockIdx.x) * kFlashWarps + warp; row < rows; row += int64_t(gridDim.x) * kFlashWarps) {
    float sum = 0.0f;
    for (int64_t d = lane; d < head_dim; d += 32) sum += float(load(dout[row * head_dim + d])) * float(load(out[row * head_dim + d]));
    sum = warp_sum(sum);
    if (lane == 0) delta[row] = sum;
  }
}

// dK and dV of one key tile of one (b, kv head): warp w owns keys 8w..8w+7; for the scores each
// lane takes query rows lane and lane + 32 of the current query tile.
template <typename T, int kDim>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_kv_kernel(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                             const float* delta, FlashShape s, DevicePattern p, float scale) {
  constexpr int kStride = padded_row_stride<kDim>();
  constexpr int kPer = kDim / 32;
  extern __shared__ float4 shared_raw[];
  float* k_tile = reinterpret_cast<float*>(shared_raw);
  float* v_tile = k_tile + kTileKeys * kStride;
  float* q_tile = v_tile + kTileKeys * kStride;
  float* do_tile = q_tile + kTileQueries * kStride;
  float* weights = do_tile + kTileQueries * kStride;  // [64 keys][64 queries]: P^T, then dS^T
  float* lse_tile = weights + kTileKeys * kTileQueries;
  float* delta_tile = lse_tile + kTileQueries;

  const int64_t query_tiles = s.query_tiles(), key_tiles = s.key_tiles();
  const int64_t key_tile = int64_t(blockIdx.x) % key_tiles, bg = int64_t(blockIdx.x) / key_tiles;
  const int64_t b = bg / s.kv_heads, g = bg % s.kv_heads;
  const int64_t c0 = key_tile * kTileKeys, columns = min64(kTileKeys, s.keys - c0);
  const int64_t D = s.head_dim;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, first_key = warp * kRowsPerWarp;

  load_tile<T, kDim>(k_tile, k + (bg * s.keys + c0) * D, columns, D);
  load_tile<T, kDim>(v_tile, v + (bg * s.keys + c0) * D, columns, D);

  float dk_acc[kRowsPerWarp][kPer], dv_acc[kRowsPerWarp][kPer];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i)
#pragma unroll
    for (int c = 0; c < kPer; ++c) dk_acc[i][c] = dv_acc[i][c] = 0.0f;

  for (int64_t hh = 0; hh < s.group(); ++hh) {
    const int64_t h = g * s.group() + hh, bh = b * s.heads + h;
    const int64_t sink = p.sinks[h], window = p.windows[h];
    const uint8_t* kinds = kinds_of(p, s, b, h);
    for (int64_t tile = 0; tile < query_tiles; ++tile) {
      const uint8_t kind = kinds[tile * key_tiles + key_tile];  // block-uniform
      if (kind == kSkip) continue;
      const int64_t t0 = tile * kTileQueries, rows = min64(kTileQueries, s.queries - t0);
      const bool check = kind == kPartial || columns < kTileKeys;
      __syncthreads();  // the previous query tile's buffers are no longer read
      load_tile<T, kDim>(q_tile, q + (bh * s.queries + t0) * D, rows, D);
      load_tile<T, kDim>(do_tile, dout + (bh * s.queries + t0) * D, rows, D);
      for (int r = int(threadIdx.x); r < kTileQueries; r += kFlashThreads) {
        // Rows past the end: lse -inf makes their P (and so dS) exactly 0.
        lse_tile[r] = r < rows ? lse[bh * s.queries + t0 + r] : -INFINITY;
        delta_tile[r] = r < rows ? delta[bh * s.queries + t0 + r] : 0.0f;
      }
      __syncthreads();

      // P^T for this warp's keys x the lane's two query rows.
      float probs[kRowsPerWarp][2];
      rows_dot_lane_rows<kDim, kRowsPerWarp>(probs, k_tile, first_key, q_tile, lane);
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int key = first_key + i;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int r = lane + 32 * c;
          const float row_lse = lse_tile[r];
          const float score = masked_score(p, check, probs[i][c], scale, b, h, t0 + r, c0 + key, r < rows,
                                           key < columns, sink, window);
          probs[i][c] = row_lse == -INFINITY ? 0.0f : expf(score - row_lse);
          weights[key * kTileQueries + r] = probs[i][c];
        }
      }
      __syncwarp();
      accumulate_weighted_rows<kDim, kRowsPerWarp, kTileKeys>(dv_acc, weights + first_key * kTileQueries, do_tile, lane);  // dV += P^T dO
      __syncwarp();

      // dP^T = V dO^T, then dS^T = scale * P^T (dP^T - Delta) over the same buffer.
      float grads[kRowsPerWarp][2];
      rows_dot_lane_rows<kDim, kRowsPerWarp>(grads, v_tile, first_key, do_tile, lane);
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int key = first_key + i;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int r = lane + 32 * c;
          weights[key * kTileQueries + r] = scale * probs[i][c] * (grads[i][c] - delta_tile[r]);
        }
      }
      __syncwarp();
      accumulate_weighted_rows<kDim, kRowsPerWarp, kTileKeys>(dk_acc, weights + first_key * kTileQueries, q_tile, lane);  // dK += dS^T Q
      __syncwarp();
    }
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int key = first_key + i;
    if (key >= columns) continue;
    const int64_t row = bg * s.keys + c0 + key;
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int d = lane + 32 * c;
      if (d < D) {
        dk[row * D + d] = convert<T>(dk_acc[i][c]);
        dv[row * D + d] = convert<T>(dv_acc[i][c]);
      }
    }
  }
}

// dQ of one query tile of one (b, h): warp w owns query rows 8w..8w+7, lanes score key columns
// lane and lane + 32, and accumulate dQ columns lane + 32 c.
template <typename T, int kDim>
__global__ void __launch_bounds__(kFlashThreads)
    flash_backward_q_kernel(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                            const float* delta, FlashShape s, DevicePattern p, float scale) {
  constexpr int kStride = padded_row_stride<kDim>();
  constexpr int kPer = kDim / 32;
  extern __shared__ float4 shared_raw[];
  float* q_tile = reinterpret_cast<float*>(shared_raw);
  float* do_tile = q_tile + kTileQueries * kStride;
  float* k_tile = do_tile + kTileQueries * kStride;
  float* v_tile = k_tile + kTileKeys * kStride;
  float* ds_tile = v_tile + kTileKeys * kStride;  // [64 queries][64 keys]

  const int64_t query_tiles = s.query_tiles(), key_tiles = s.key_tiles();
  const int64_t tile = int64_t(blockIdx.x) % query_tiles, bh = int64_t(blockIdx.x) / query_tiles;
  const int64_t b = bh / s.heads, h = bh % s.heads, g = h / s.group();
  const int64_t t0 = tile * kTileQueries, rows = min64(kTileQueries, s.queries - t0);
  const int64_t D = s.head_dim;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, first_row = warp * kRowsPerWarp;
  const int64_t sink = p.sinks[h], window = p.windows[h];
  const uint8_t* kinds = kinds_of(p, s, b, h) + tile * key_tiles;
  const T* k_head = k + (b * s.kv_heads + g) * s.keys * D;
  const T* v_head = v + (b * s.kv_heads + g) * s.keys * D;

  load_tile<T, kDim>(q_tile, q + (bh * s.queries + t0) * D, rows, D);
  load_tile<T, kDim>(do_tile, dout + (bh * s.queries + t0) * D, rows, D);
  float row_lse[kRowsPerWarp], row_delta[kRowsPerWarp], dq_acc[kRowsPerWarp][kPer];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = first_row + i;
    row_lse[i] = r < rows ? lse[bh * s.queries + t0 + r] : -INFINITY;
    row_delta[i] = r < rows ? delta[bh * s.queries + t0 + r] : 0.0f;
#pragma unroll
    for (int c = 0; c < kPer; ++c) dq_acc[i][c] = 0.0f;
  }

  for (int64_t key_tile = 0; key_tile < key_tiles; ++key_tile) {
    const uint8_t kind = kinds[key_tile];  // block-uniform
    if (kind == kSkip) continue;
    const int64_t c0 = key_tile * kTileKeys, columns = min64(kTileKeys, s.keys - c0);
    const bool check = kind == kPartial || columns < kTileKeys;
    __syncthreads();
    load_tile<T, kDim>(k_tile, k_head + c0 * D, columns, D);
    load_tile<T, kDim>(v_tile, v_head + c0 * D, columns, D);
    __syncthreads();

    float probs[kRowsPerWarp][2], grads[kRowsPerWarp][2];
    rows_dot_lane_rows<kDim, kRowsPerWarp>(probs, q_tile, first_row, k_tile, lane);
    rows_dot_lane_rows<kDim, kRowsPerWarp>(grads, do_tile, first_row, v_tile, lane);
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = first_row + i;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int column = lane + 32 * c;
        const float score = masked_score(p, check, probs[i][c], scale, b, h, t0 + r, c0 + column, r < rows,
                                         column < columns, sink, window);
        const float prob = row_lse[i] == -INFINITY ? 0.0f : expf(score - row_lse[i]);
        ds_tile[r * kTileKeys + column] = scale * prob * (grads[i][c] - row_delta[i]);
      }
    }
    __syncwarp();
    accumulate_weighted_rows<kDim, kRowsPerWarp, kTileKeys>(dq_acc, ds_tile + first_row * kTileKeys, k_tile, lane);  // dQ += dS K
    __syncwarp();
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int r = first_row + i;
    if (r >= rows) continue;
    const int64_t row = bh * s.queries + t0 + r;
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int d = lane + 32 * c;
      if (d < D) dq[row * D + d] = convert<T>(dq_acc[i][c]);
    }
  }
}

// ---- host side

FlashShape shape_of(const Tensor& q, const Tensor& k) {
  return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
}

// The pattern's arrays and the tile table on the device; `view` points into the two buffers,
// which must outlive the kernels' queueing (the stream orders any reuse after them).
struct UploadedPattern {
  Tensor integers, bytes;
  DevicePattern view{};
};

UploadedPattern upload_pattern(const AttentionPattern& pattern, const ResolvedAttentionPattern& resolved,
                               const Tensor& mask, const FlashShape& s, Device device) {
  const int64_t heads = s.heads, query_tiles = s.query_tiles(), key_tiles = s.key_tiles();
  const bool layout_per_head = pattern.block_layout.defined() && pattern.block_layout.size(0) != 1;
  const bool documents_per_row = pattern.document_ids.defined() && pattern.document_ids.dim() == 2;

  // Heads with the same sink, window and layout slice classify every tile alike.
  std::vector<int64_t> head_class(static_cast<size_t>(heads)), class_head;
  std::map<std::tuple<int64_t, int64_t, int64_t>, int64_t> classes;
  for (int64_t h = 0; h < heads; ++h) {
    const auto key = std::make_tuple(resolved.sink(h), resolved.window(h), layout_per_head ? h : int64_t(-1));
    const auto found = classes.find(key);
    if (found != classes.end()) {
      head_class[size_t(h)] = found->second;
    } else {
      head_class[size_t(h)] = int64_t(class_head.size());
      classes.emplace(key, int64_t(class_head.size()));
      class_head.push_back(h);
    }
  }
  const int64_t batch_classes = documents_per_row ? s.batch : 1;
  const int64_t offset = resolved.query_offset();
  std::vector<uint8_t> bytes;
  bytes.reserve(size_t(batch_classes * int64_t(class_head.size()) * query_tiles * key_tiles) + 1);
  for (int64_t b = 0; b < batch_classes; ++b)
    for (const int64_t h : class_head)
      for (int64_t tile = 0; tile < query_tiles; ++tile) {
        const int64_t t0 = tile * kTileQueries, t1 = std::min<int64_t>(t0 + kTileQueries, s.queries);
        for (int64_t key_tile = 0; key_tile < key_tiles; ++key_tile) {
          const int64_t c0 = key_tile * kTileKeys, c1 = std::min<int64_t>(c0 + kTileKeys, s.keys);
          bytes.push_back(uint8_t(resolved.classify(b, h, offset + t0, offset + t1, c0, c1)));
        }
      }
  const size_t layout_start = bytes.size();
  if (pattern.block_layout.defined()) {
    for (const int64_t bit : pattern.block_layout.to_vector<int64_t>()) bytes.push_back(uint8_t(bit != 0));
  }
  bytes.push_back(0);  // never empty

  std::vector<int64_t> integers;
  for (int64_t h = 0; h < heads; ++h) integers.push_back(resolved.sink(h));
  for (int64_t h = 0; h < heads; ++h) integers.push_back(resolved.window(h));
  for (int64_t h = 0; h < heads; ++h) integers.push_back(head_class[size_t(h)]);
  const size_t documents_start = integers.size();
  if (pattern.document_ids.defined()) {
    const std::vector<int64_t> ids = pattern.document_ids.to_vector<int64_t>();
    integers.insert(integers.end(), ids.begin(), ids.end());
  }
  integers.push_back(0);

  UploadedPattern up;
  up.integers = to_device(Tensor::from_vector(integers, {int64_t(integers.size())}, DType::i64), device);
  up.bytes = to_device(Tensor::from_vector(bytes, {int64_t(bytes.size())}, DType::u8), device);
  const int64_t* ints = data_of<const int64_t>(up.integers);
  const uint8_t* u8 = data_of<const uint8_t>(up.bytes);
  DevicePattern& view = up.view;
  view.query_offset = offset;
  view.causal = resolved.causal();
  view.sinks = ints;
  view.windows = ints + heads;
  view.head_class = ints + 2 * heads;
  view.documents = pattern.document_ids.defined() ? ints + documents_start : nullptr;
  view.documents_batch_stride = documents_per_row ? s.keys : 0;
  view.layout = pattern.block_layout.defined() ? u8 + layout_start : nullptr;
  if (pattern.block_layout.defined()) {
    const Tensor& layout = pattern.block_layout;
    view.layout_head_stride = layout_per_head ? layout.size(1) * layout.size(2) : 0;
    view.layout_columns = layout.size(2);
    view.block_queries = pattern.block_queries;
    view.block_keys = pattern.block_keys;
  } else {
    view.layout_head_stride = view.layout_columns = 0;
    view.block_queries = view.block_keys = 1;
  }
  view.mask = mask.defined() ? data_of<const float>(mask) : nullptr;
  for (int d = 0; d < 4; ++d) view.mask_strides[d] = mask.defined() ? mask.stride(d) : 0;
  view.kinds = u8;
  view.kinds_batch_step = documents_per_row ? 1 : 0;
  view.kinds_classes = int64_t(class_head.size());
  return up;
}

void check_mask(const char* op, const Tensor& mask, const Tensor& q) {
  if (!mask.defined()) return;
  LAMINA_CHECK(mask.dtype() == DType::f32 && mask.device() == q.device() && mask.dim() == 4, op,
               ": the CUDA kernel takes the additive mask as an f32 view on q's device broadcast to [B, Hq, Tq, Tk]");
}

// What the kernels take: bf16, f16 or f32, head_dim up to kMaxHeadDim.
void check_supported(const char* op, const Tensor& q) {
  LAMINA_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::bf16 || q.dtype() == DType::f16, op,
               ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only, got ", dtype_name(q.dtype()));
  LAMINA_CHECK(q.size(3) <= kMaxHeadDim, op, ": the CUDA kernel takes head_dim up to ", kMaxHeadDim, ", got ",
               q.size(3), " (the CPU kernel takes any)");
}

// Calls fn(element, dim tag) for the input dtype (bf16, f16, f32) and the head dim's kernel width.
template <typename Fn>
void visit_flash(const char* op, DType dtype, int64_t head_dim, Fn&& fn) {
  visit_floating(dtype, op, [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, double>) {
      throw Error(str_cat(op, ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only"));
    } else if (head_dim <= 64) {
      fn(T{}, std::integral_constant<int, 64>{});
    } else {
      fn(T{}, std::integral_constant<int, 128>{});
    }
  });
}

}  // namespace

void flash_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const AttentionPattern& pattern, const ResolvedAttentionPattern& resolved, const Tensor& mask,
                     double scale) {
  const char* op = "flash_attention";
  const FlashShape s = shape_of(q, k);
  check_supported(op, q);
  check_mask(op, mask, q);
  LAMINA_CHECK(lse.dtype() == DType::f32, op, ": the CUDA kernel writes an f32 lse");
  const int64_t blocks = s.batch * s.heads * s.query_tiles();
  if (blocks == 0) return;  // no query rows: nothing to write
  const int device = q.device().index;
  const UploadedPattern up = upload_pattern(pattern, resolved, mask, s, q.device());
  visit_flash(op, q.dtype(), s.head_dim, [&](auto element, auto dim) {
    using T = decltype(element);
    constexpr int kDim = decltype(dim)::value;
    const cudaStream_t stream = stream_of(q);  // first: makes q's device current for the attribute
    const size_t bytes = shared_bytes<kDim>(3, kTileQueries * kTileKeys);
    allow_shared(flash_forward_kernel<T, kDim>, bytes, device, op);
    flash_forward_kernel<T, kDim><<<grid_blocks(blocks, op), kFlashThreads, bytes, stream>>>(
        data_of<T>(out), data_of<float>(lse), data_of<const T>(q), data_of<const T>(k), data_of<const T>(v), s, up.view,
        float(scale));
    LAMINA_CUDA_CHECK_LAUNCH("flash_attention (forward)");
  });
}

void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                              const AttentionPattern& pattern, const ResolvedAttentionPattern& resolved,
                              const Tensor& mask, double scale) {
  const char* op = "flash_attention_backward";
  const FlashShape s = shape_of(q, k);
  check_supported(op, q);
  check_mask(op, mask, q);
  LAMINA_CHECK(lse.dtype() == DType::f32, op, ": the CUDA kernel reads an f32 lse");
  const int64_t query_rows = s.batch * s.heads * s.queries;
  const int64_t q_blocks = s.batch * s.heads * s.query_tiles(), kv_blocks = s.batch * s.kv_heads * s.key_tiles();
  if (q_blocks == 0 && kv_blocks == 0) return;
  const int device = q.device().index;
  const UploadedPattern up = upload_pattern(pattern, resolved, mask, s, q.device());
  const Tensor delta = Tensor::empty({std::max<int64_t>(query_rows, 1)}, DType::f32, q.device());
  visit_flash(op, q.dtype(), s.head_dim, [&](auto element, auto dim) {
    using T = decltype(element);
    constexpr int kDim = decltype(dim)::value;
    const cudaStream_t stream = stream_of(q);  // first: makes q's device current for the attributes
    if (query_rows > 0) {
      const int64_t wanted = ceil_div64(query_rows, kFlashWarps);
      flash_delta_kernel<T><<<unsigned(std::min<int64_t>(wanted, int64_t(1) << 20)), kFlashThreads, 0, stream>>>(
          data_of<float>(delta), data_of<const T>(dout), data_of<const T>(out), query_rows, s.head_dim);
      LAMINA_CUDA_CHECK_LAUNCH("flash_attention_backward (delta)");
    }
    if (kv_blocks > 0) {
      // Rows of dK/dV in a key tile that no query visits still get their zeros here.
      const size_t bytes = shared_bytes<kDim>(4, kTileKeys * kTileQueries + 2 * kTileQueries);
      allow_shared(flash_backward_kv_kernel<T, kDim>, bytes, device, op);
      flash_backward_kv_kernel<T, kDim><<<grid_blocks(kv_blocks, op), kFlashThreads, bytes, stream>>>(
          data_of<T>(dk), data_of<T>(dv), data_of<const T>(q), data_of<const T>(k), data_of<const T>(v),
          data_of<const T>(dout), data_of<const float>(lse), data_of<const float>(delta), s, up.view, float(scale));
      LAMINA_CUDA_CHECK_LAUNCH("flash_attention_backward (dK, dV)");
    }
    if (q_blocks > 0) {
      const size_t bytes = shared_bytes<kDim>(4, kTileQueries * kTileKeys);
      allow_shared(flash_backward_q_kernel<T, kDim>, bytes, device, op);
      flash_backward_q_kernel<T, kDim><<<grid_blocks(q_blocks, op), kFlashThreads, bytes, stream>>>(
          data_of<T>(dq), data_of<const T>(q), data_of<const T>(k), data_of<const T>(v), data_of<const T>(dout),
          data_of<const float>(lse), data_of<const float>(delta), s, up.view, float(scale));
      LAMINA_CUDA_CHECK_LAUNCH("flash_attention_backward (dQ)");
    }
  });
}

}  // namespace lamina::ops::cuda
