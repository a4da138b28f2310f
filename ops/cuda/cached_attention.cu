// Attention over positioned keys on the GPU, the twin of ops/cpu/cached_attention.cpp (spec:
// sparse-attention.md §3.6, §4): decode (T = 1) and chunked prefill (T > 1) over ring-buffer KV
// caches, where slot order is not position order. Same contract and equations as the CPU file:
//
// Per (b, kv head g) the rows are the group's query heads x the queries, query-major (row r is
// query t = r / rep of head g·rep + r % rep, at position query_offset + t), so every key and
// value row brought into shared memory serves all the heads that share it (GQA packing). The
// keys of the runs are cut into pieces of at most chunk_keys slots (a piece never crosses the
// end of a run, so a block reads one run's strides and positions). One block per
// (b, g, row tile, piece), over sub-tiles of 64 slots in slot order:
//   s = scale · q_r · k_c, -inf where the slot is empty or allowed(h_r, i_r, pos_c) is false
//   m' = max(m, rowmax s);  p = exp(s - m');  l = exp(m - m') l + rowsum p
//   acc = exp(m - m') acc + p V;  at the end O_p = acc / l, LSE_p = m + log l
// With exactly one piece the block writes out and lse itself. Otherwise (several pieces, or
// none at all) every piece writes its normalised rows to an f32 side buffer and a merge kernel
// combines them in piece order (flash-decoding):
//   LSE = log sum_p exp(LSE_p),  O = sum_p exp(LSE_p - LSE) O_p
// A row that sees nothing in a piece has LSE_p = -inf and O_p = 0 and adds nothing; a row that
// sees nothing at all gets O = 0 and LSE = -inf (no exp(-inf - -inf) anywhere, so no NaN).
//
// A value row that no row of the block weights (an empty slot, a hidden key, an underflowed
// weight) is stored as zeros in shared memory without being read, so stale values in such a
// slot never reach the output even when they are not finite (the CPU kernel skips them too).
// Key rows are read for every slot; a hidden slot's score is replaced by -inf before use.
//
// The mask is evaluated per element from the slots' positions (held in shared memory per
// sub-tile): unlike the CPU kernel no sub-tile is classified or skipped, which costs arithmetic
// on hidden slots but never changes a result (their weight is exactly 0 either way).
//
// Blocks are 256 threads = 8 warps; warp w owns rows w·R .. w·R + R - 1 of the row tile (R = 1
// for up to 8 rows per group: decode with GQA up to 8; R = 8, a tile of 64 rows, otherwise).
// Each lane scores slots lane and lane + 32 of the sub-tile and accumulates output columns
// lane + 32 j. Q, K and V are converted to f32 on the way into shared memory (zero-padded to
// kDim columns, so that padding adds exact zeros to the dot products); all arithmetic is f32
// for bf16, f16 and f32 inputs; f64 is refused (the CPU kernel computes it). head_dim up to 128.
// CUDA cores only, element-wise global loads: a first version meant to be right, not fast.
#include <cmath>
#include <cstring>
#include <vector>

#include "ops/cpu/cached_attention.h"
#include "ops/cuda/attention_tiles.cuh"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"
#include "tensor/cuda/check.h"

namespace lamina::ops::cuda {
namespace {

using namespace attention_tiles;

constexpr int kCachedThreads = 256;
constexpr int kCachedWarps = kCachedThreads / 32;
constexpr int kSlotTile = 64;  // slots per sub-tile: lanes own slots lane and lane + 32
// Pieces of at least this many slots: below it the merge costs more than the parallelism gains.
constexpr int64_t kMinPieceSlots = 256;
// Blocks wanted per multiprocessor when the rows alone do not provide them (decode).
constexpr int64_t kBlocksPerMultiprocessor = 2;
constexpr int64_t kMaxHeadDim = 128;

// Sizes of one call, by value to every block.
struct CachedShape {
  int64_t batch, heads, kv_heads, queries, head_dim;
  int64_t row_tiles, pieces, query_offset;
  bool causal;
  __host__ __device__ int64_t group() const { return heads / kv_heads; }
  __host__ __device__ int64_t group_rows() const { return group() * queries; }
  __host__ __device__ int64_t all_rows() const { return batch * heads * queries; }
};

// One piece of one run, as uploaded to the device: the address of its first slot's key and value
// rows (batch 0, kv head 0), the element strides over (batch, kv head, slot), and where its
// positions start in the uploaded positions (head 0), `positions_head_stride` apart per kv head.
struct Piece {
  int64_t keys, values;
  int64_t key_strides[3], value_strides[3];
  int64_t positions, positions_head_stride;
  int64_t count;
};
static_assert(sizeof(Piece) % sizeof(int64_t) == 0, "pieces travel as 64-bit words");
constexpr int64_t kPieceWords = int64_t(sizeof(Piece) / sizeof(int64_t));

// ResolvedAttentionPattern::allowed for causality, sinks and windows (the op refuses documents,
// layouts and additive masks); i and j are absolute positions, j >= 0.
__device__ __forceinline__ bool slot_allowed(bool causal, int64_t i, int64_t j, int64_t sink, int64_t window) {
  if (causal && j > i) return false;
  if (j < sink) return true;
  return window > 0 && (window == kAllKeys || i - j < window);
}

// Shared memory of the attention kernel: slot positions (int64) and used flags (int) for one
// sub-tile, then Q [rows][stride], K and V [64][stride] and P [rows][64] in f32.
template <int kDim, int kRowsPerWarp>
constexpr size_t cached_shared_bytes() {
  constexpr int kRows = kCachedWarps * kRowsPerWarp;
  return size_t(kSlotTile) * (sizeof(int64_t) + sizeof(int)) +
         (size_t(kRows + 2 * kSlotTile) * padded_row_stride<kDim>() + size_t(kRows) * kSlotTile) * sizeof(float);
}

template <typename T, int kDim, int kRowsPerWarp>
__global__ void __launch_bounds__(kCachedThreads)
    cached_attention_kernel(T* out, float* lse, float* partial_out, float* partial_lse, const T* q,
                            const Piece* pieces, const int64_t* sinks, const int64_t* windows,
                            const int64_t* positions, CachedShape s, float scale) {
  constexpr int kRows = kCachedWarps * kRowsPerWarp;
  constexpr int kStride = padded_row_stride<kDim>();
  constexpr int kPer = kDim / 32;
  extern __shared__ float4 shared_raw[];
  int64_t* slot_position = reinterpret_cast<int64_t*>(shared_raw);  // [64], -1 past the piece
  int* slot_used = reinterpret_cast<int*>(slot_position + kSlotTile);  // [64]
  float* q_tile = reinterpret_cast<float*>(slot_used + kSlotTile);    // 768 bytes in: 16-byte aligned
  float* k_tile = q_tile + kRows * kStride;
  float* v_tile = k_tile + kSlotTile * kStride;
  float* p_tile = v_tile + kSlotTile * kStride;  // [kRows][64]

  // Block order: piece fastest, then row tile, kv head, batch row.
  int64_t index = int64_t(blockIdx.x);
  const int64_t piece_index = index % s.pieces;
  index /= s.pieces;
  const int64_t tile = index % s.row_tiles;
  index /= s.row_tiles;
  const int64_t g = index % s.kv_heads, b = index / s.kv_heads;
  const Piece& piece = pieces[piece_index];
  const int64_t rep = s.group(), D = s.head_dim, queries = s.queries;
  const int64_t r0 = tile * kRows, rows = min64(kRows, s.group_rows() - r0);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, first_row = warp * kRowsPerWarp;
  const bool warp_has_rows = first_row < rows;  // warp-uniform

  for (int e = int(threadIdx.x); e < kRows * kDim; e += kCachedThreads) {
    const int r = e / kDim, d = e % kDim;
    float value = 0.0f;
    if (r < rows && d < D) {
      const int64_t row = r0 + r, t = row / rep, h = g * rep + row % rep;
      value = float(load(q[((b * s.heads + h) * queries + t) * D + d]));
    }
    q_tile[r * kStride + d] = value;
  }

  int64_t row_position[kRowsPerWarp], row_sink[kRowsPerWarp], row_window[kRowsPerWarp];
  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][kPer];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int64_t row = r0 + first_row + i;
    const bool inside = first_row + i < rows;
    const int64_t h = g * rep + row % rep;
    row_position[i] = s.query_offset + row / rep;
    row_sink[i] = inside ? sinks[h] : 0;
    row_window[i] = inside ? windows[h] : 0;  // sink 0 + window 0: a padding row sees nothing
    row_max[i] = -INFINITY;
    row_sum[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPer; ++c) acc[i][c] = 0.0f;
  }

  const T* keys = reinterpret_cast<const T*>(piece.keys) + b * piece.key_strides[0] + g * piece.key_strides[1];
  const T* values = reinterpret_cast<const T*>(piece.values) + b * piece.value_strides[0] + g * piece.value_strides[1];
  const int64_t* piece_positions = positions + piece.positions + g * piece.positions_head_stride;
  const int64_t key_row_stride = piece.key_strides[2], value_row_stride = piece.value_strides[2];

  for (int64_t j0 = 0; j0 < piece.count; j0 += kSlotTile) {
    const int64_t count = min64(kSlotTile, piece.count - j0);
    __syncthreads();  // every warp is done with the previous sub-tile (and Q is in place)
    if (threadIdx.x < kSlotTile) {
      const int c = int(threadIdx.x);
      slot_position[c] = c < count ? piece_positions[j0 + c] : int64_t(-1);
    }
    for (int e = int(threadIdx.x); e < kSlotTile * kDim; e += kCachedThreads) {
      const int c = e / kDim, d = e % kDim;
      k_tile[c * kStride + d] = (c < count && d < D) ? float(load(keys[(j0 + c) * key_row_stride + d])) : 0.0f;
    }
    __syncthreads();  // positions and K are in shared memory

    if (warp_has_rows) {
      float score[kRowsPerWarp][2];
      rows_dot_lane_rows<kDim, kRowsPerWarp>(score, q_tile, first_row, k_tile, lane);
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t position = slot_position[lane + 32 * c];
          const bool visible =
              position >= 0 && slot_allowed(s.causal, row_position[i], position, row_sink[i], row_window[i]);
          // Rounded product, no fused multiply-add: the CPU kernel rounds scale · (q · k) too.
          score[i][c] = visible ? __fmul_rn(score[i][c], scale) : -INFINITY;
        }
        online_softmax_step(score[i], row_max[i], row_sum[i], acc[i], p_tile + (first_row + i) * kSlotTile, lane);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        p_tile[(first_row + i) * kSlotTile + lane] = 0.0f;
        p_tile[(first_row + i) * kSlotTile + lane + 32] = 0.0f;
      }
    }
    __syncthreads();  // P of every row is written

    if (threadIdx.x < kSlotTile) {
      int used = 0;
      for (int r = 0; r < kRows; ++r) used |= p_tile[r * kSlotTile + int(threadIdx.x)] != 0.0f;
      slot_used[threadIdx.x] = used;
    }
    __syncthreads();  // the used flags are set
    for (int e = int(threadIdx.x); e < kSlotTile * kDim; e += kCachedThreads) {
      const int c = e / kDim, d = e % kDim;
      // Unused slots (never past the piece: their weight is 0) are not read at all.
      v_tile[c * kStride + d] = (slot_used[c] && d < D) ? float(load(values[(j0 + c) * value_row_stride + d])) : 0.0f;
    }
    __syncthreads();  // V is in shared memory
    if (warp_has_rows)
      accumulate_weighted_rows<kDim, kRowsPerWarp, kSlotTile>(acc, p_tile + first_row * kSlotTile, v_tile, lane);
  }

  const bool direct = s.pieces == 1;
  const int64_t all_rows = s.all_rows();
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    if (first_row + i >= rows) continue;
    const int64_t row = r0 + first_row + i, t = row / rep, h = g * rep + row % rep;
    const int64_t out_row = (b * s.heads + h) * queries + t;
    const bool empty = row_sum[i] == 0.0f;
    const float inverse = empty ? 0.0f : 1.0f / row_sum[i];
    const float row_lse = empty ? -INFINITY : row_max[i] + logf(row_sum[i]);
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int d = lane + 32 * c;
      if (d >= D) continue;
      if (direct) {
        out[out_row * D + d] = convert<T>(acc[i][c] * inverse);
      } else {
        partial_out[(piece_index * all_rows + out_row) * D + d] = acc[i][c] * inverse;
      }
    }
    if (lane == 0) (direct ? lse[out_row] : partial_lse[piece_index * all_rows + out_row]) = row_lse;
  }
}

// out and lse of every row from the pieces' normalised rows, in piece order; one warp per row.
// With no pieces at all every row is empty: out 0, lse -inf.
template <typename T>
__global__ void __launch_bounds__(kCachedThreads)
    cached_merge_kernel(T* out, float* lse, const float* partial_out, const float* partial_lse, int64_t pieces,
                        int64_t all_rows, int64_t head_dim) {
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  for (int64_t row = int64_t(blockIdx.x) * kCachedWarps + warp; row < all_rows;
       row += int64_t(gridDim.x) * kCachedWarps) {
    float peak = -INFINITY;
    for (int64_t p = 0; p < pieces; ++p) peak = fmaxf(peak, partial_lse[p * all_rows + row]);
    if (peak == -INFINITY) {
      for (int64_t d = lane; d < head_dim; d += 32) out[row * head_dim + d] = convert<T>(0.0f);
      if (lane == 0) lse[row] = -INFINITY;
      continue;
    }
    float total = 0.0f;
    for (int64_t p = 0; p < pieces; ++p) total += expf(partial_lse[p * all_rows + row] - peak);
    const float row_lse = peak + logf(total);
    for (int64_t d = lane; d < head_dim; d += 32) {
      float sum = 0.0f;
      for (int64_t p = 0; p < pieces; ++p) {
        const float piece_lse = partial_lse[p * all_rows + row];
        if (piece_lse == -INFINITY) continue;  // O_p is 0; never exp(-inf - x) times a stale value
        sum += expf(piece_lse - row_lse) * partial_out[(p * all_rows + row) * head_dim + d];
      }
      out[row * head_dim + d] = convert<T>(sum);
    }
    if (lane == 0) lse[row] = row_lse;
  }
}

}  // namespace

void cached_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const std::vector<cpu::KeyRunView>& runs,
                      const ResolvedAttentionPattern& pattern, double scale) {
  const char* op = "cached_attention";
  LAMINA_CHECK(q.dtype() == DType::f32 || q.dtype() == DType::bf16 || q.dtype() == DType::f16, op,
               ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only, got ", dtype_name(q.dtype()));
  LAMINA_CHECK(q.size(3) <= kMaxHeadDim, op, ": the CUDA kernel takes head_dim up to ", kMaxHeadDim, ", got ",
               q.size(3), " (the CPU kernel takes any)");
  LAMINA_CHECK(q.is_contiguous() && out.is_contiguous() && lse.is_contiguous() && lse.dtype() == DType::f32 &&
                   out.dtype() == q.dtype(),
               op, ": the CUDA kernel takes a contiguous q and writes contiguous out (q's dtype) and lse (f32)");
  CachedShape s{};
  s.batch = q.size(0);
  s.heads = q.size(1);
  s.kv_heads = runs.empty() ? 1 : runs[0].keys.size(1);
  s.queries = q.size(2);
  s.head_dim = q.size(3);
  s.query_offset = pattern.query_offset();
  s.causal = pattern.causal();
  const int64_t all_rows = s.all_rows();
  if (all_rows == 0) return;  // no query rows: nothing to write
  const int device = q.device().index;
  const cudaStream_t stream = stream_of(q);  // first: makes q's device current

  // The split: row tiles of 8 rows (R = 1) when a group has at most 8 rows, of 64 otherwise;
  // then enough pieces per (b, g, row tile) for about two blocks per multiprocessor, each of at
  // least kMinPieceSlots slots (whole sub-tiles), cut at the ends of the runs.
  const bool narrow = s.group_rows() <= kCachedWarps;
  const int64_t tile_rows = narrow ? kCachedWarps : kCachedWarps * 8;
  s.row_tiles = (s.group_rows() + tile_rows - 1) / tile_rows;
  int64_t total_slots = 0;
  for (const cpu::KeyRunView& run : runs) total_slots += run.keys.size(2);
  const int64_t slices = s.batch * s.kv_heads * s.row_tiles;
  const int64_t target = kBlocksPerMultiprocessor * ::lamina::cuda::device_info(device).multiprocessors;
  const int64_t wanted = std::max<int64_t>(1, (target + slices - 1) / slices);
  const int64_t most = std::max<int64_t>(1, total_slots / kMinPieceSlots);
  const int64_t chunks = std::min(wanted, most);
  const int64_t chunk_slots =
      std::max<int64_t>(kSlotTile, ((total_slots + chunks - 1) / chunks + kSlotTile - 1) / kSlotTile * kSlotTile);

  // One upload: the pieces, then the per-head sinks and windows, then every run's positions.
  std::vector<Piece> pieces;
  std::vector<int64_t> all_positions;
  for (const cpu::KeyRunView& run : runs) {
    const int64_t length = run.keys.size(2);
    const int64_t heads_with_positions = run.positions_head_stride == 0 ? 1 : s.kv_heads;
    const int64_t positions_start = int64_t(all_positions.size());
    all_positions.insert(all_positions.end(), run.positions, run.positions + heads_with_positions * length);
    const size_t element = run.keys.element_size();
    for (int64_t begin = 0; begin < length; begin += chunk_slots) {
      Piece piece{};
      piece.keys = int64_t(reinterpret_cast<intptr_t>(static_cast<const char*>(run.keys.raw_data()) +
                                                      begin * run.keys.stride(2) * int64_t(element)));
      piece.values = int64_t(reinterpret_cast<intptr_t>(static_cast<const char*>(run.values.raw_data()) +
                                                        begin * run.values.stride(2) * int64_t(element)));
      for (int d = 0; d < 3; ++d) {
        piece.key_strides[d] = run.keys.stride(d);
        piece.value_strides[d] = run.values.stride(d);
      }
      piece.positions = positions_start + begin;
      piece.positions_head_stride = run.positions_head_stride;
      piece.count = std::min(chunk_slots, length - begin);
      pieces.push_back(piece);
    }
  }
  s.pieces = int64_t(pieces.size());
  std::vector<int64_t> words(size_t(s.pieces * kPieceWords));
  if (!pieces.empty()) std::memcpy(words.data(), pieces.data(), pieces.size() * sizeof(Piece));
  const int64_t sinks_start = int64_t(words.size());
  for (int64_t h = 0; h < s.heads; ++h) words.push_back(pattern.sink(h));
  for (int64_t h = 0; h < s.heads; ++h) words.push_back(pattern.window(h));
  const int64_t positions_start = int64_t(words.size());
  words.insert(words.end(), all_positions.begin(), all_positions.end());
  // The host vector is copied before this returns; the device buffer lives until the end of
  // this function, and the stream orders any reuse of its memory after the kernels.
  const Tensor uploaded = to_device(Tensor::from_vector(words, {int64_t(words.size())}, DType::i64), q.device());
  const int64_t* table = data_of<const int64_t>(uploaded);

  const bool direct = s.pieces == 1;
  Tensor partial_out, partial_lse;
  if (!direct && s.pieces > 0) {
    partial_out = Tensor::empty({s.pieces * all_rows * s.head_dim}, DType::f32, q.device());
    partial_lse = Tensor::empty({s.pieces * all_rows}, DType::f32, q.device());
  }
  float* partial_out_data = partial_out.defined() ? data_of<float>(partial_out) : nullptr;
  float* partial_lse_data = partial_lse.defined() ? data_of<float>(partial_lse) : nullptr;

  visit_floating(q.dtype(), op, [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, double>) {
      throw Error(str_cat(op, ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only"));
    } else {
      const auto launch = [&](auto kernel, size_t bytes) {
        allow_shared(kernel, bytes, device, op);
        kernel<<<grid_blocks(s.batch * s.kv_heads * s.row_tiles * s.pieces, op), kCachedThreads, bytes, stream>>>(
            data_of<T>(out), data_of<float>(lse), partial_out_data, partial_lse_data, data_of<const T>(q),
            reinterpret_cast<const Piece*>(table), table + sinks_start, table + sinks_start + s.heads,
            table + positions_start, s, float(scale));
        LAMINA_CUDA_CHECK_LAUNCH("cached_attention (pieces)");
      };
      if (s.pieces > 0) {
        if (s.head_dim <= 64) {
          if (narrow) launch(cached_attention_kernel<T, 64, 1>, cached_shared_bytes<64, 1>());
          else launch(cached_attention_kernel<T, 64, 8>, cached_shared_bytes<64, 8>());
        } else {
          if (narrow) launch(cached_attention_kernel<T, 128, 1>, cached_shared_bytes<128, 1>());
          else launch(cached_attention_kernel<T, 128, 8>, cached_shared_bytes<128, 8>());
        }
      }
      if (!direct) {
        const int64_t wanted_blocks = (all_rows + kCachedWarps - 1) / kCachedWarps;
        cached_merge_kernel<T><<<unsigned(std::min<int64_t>(wanted_blocks, int64_t(1) << 20)), kCachedThreads, 0,
                                 stream>>>(data_of<T>(out), data_of<float>(lse), partial_out_data, partial_lse_data,
                                           s.pieces, all_rows, s.head_dim);
        LAMINA_CUDA_CHECK_LAUNCH("cached_attention (merge)");
      }
    }
  });
}

}  // namespace lamina::ops::cuda
