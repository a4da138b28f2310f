// CUDA kernels of the GGUF block-format ops (ops/gguf_matmul.h; declared in
// ops/cuda/gguf_matmul.h), the twins of ops/cpu/gguf_dot.cpp (Q8_0, Q4_0, Q4_1),
// ops/cpu/gguf_kquant.cpp (Q4_K, Q6_K) and ops/ggml_blocks.cpp (dequantization).
//
// Decode (fewer than kGgufPanelProductMinRows rows of x, in launches of at most kDecodeRows):
// x is quantized to int8 exactly as the CPU quantizes it (per 32 values for the 32-value
// formats, per 256 with a clamp for the K-quants), each weight block meets the activations in
// __dp4a dot products of 4 bytes, and the f32 combination repeats the CPU reference's operations
// in the CPU's order:
//   * Q8_0, Q4_0, Q4_1 (the order of gguf_dot.h): a half-warp per weight row. Thread h = 8 * parity
//     + j is the CPU's float lane h: over the blocks b with b % 2 == parity it adds
//     fma(float(p), d_w * d_x, lane), p the dp4a of elements 4j .. 4j+3 of block b. The 16 lanes
//     are then summed by xor shuffles over 8, 4, 2, 1 (the CPU's halving tree k + k+8, k + k+4,
//     ...), and Q4_1's min term, the CPU's sequential fma chain over the blocks, run by thread 0
//     of the half-warp, is added last.
//   * Q4_K, Q6_K (gguf_kquant.h): a warp per weight row walks the super-blocks in order; lane l
//     forms the integer sums of values 8l .. 8l+7 (times their sub-block scale; Q4_K also the min
//     term's), a warp reduction gives the block's integers (exact in any order), and every lane
//     applies the CPU's f32 combination in block order: Q4_K sum += fma(d_x d, dots,
//     -(d_x dmin) mins), Q6_K sum = fma(d_x d, dots, sum).
//   Every f32 operation there is written with a rounding intrinsic (__fmul_rn, __fadd_rn,
//   __fmaf_rn): nvcc would otherwise contract a multiply and an add into an FMA where the CPU
//   rounds the product (the CPU's own FMAs are spelled std::fma, so no compiler chooses them).
//   With the same integers and the same f32 operations the outputs equal the CPU reference
//   path's bit for bit (and so its AVX2 / VNNI paths').
// Prefill (kGgufPanelProductMinRows rows or more) and the input gradient: like quant4.cu's fused
//   GEMM, 64x64 output tiles, 256 threads each owning a 4x4 patch, steps of 32 along the
//   reduction. A step of the B tile is one 32-value block (or one 32-value slice of a K-quant
//   super-block) of 64 weight rows, decoded straight from the blocks into shared memory with
//   ggml's formulas: W never exists in f32 beyond one 32x64 tile per thread block. The result is
//   matmul(x, dequantize(W)) up to f32 summation order, like the CPU's panel product.
// gguf_rows and gguf_dequantize decode 8 consecutive values per thread with the same decoder:
//   ggml's formulas in ggml's float operation order, the bits of ggml::dequantize. (Where the
//   CPU build contracts a formula into an FMA, Q4_1's q d + m and Q4_K's d1 q - m1, the product
//   is exact in f32 (an f16 scale, at most 6-bit factors), so fused or not gives the same bits.)
//
// Alignment: every block size (34, 18, 20, 144, 210 bytes) is even and device buffers are
// aligned, so 16-bit loads are aligned everywhere; a 32-bit word of quants is assembled from two
// of them, since a Q8_0, Q4_0 or Q6_K block may start at any even address.
#include <type_traits>

#include "ops/cuda/common.cuh"
#include "ops/cuda/gguf_matmul.h"

namespace lamina::ops::cuda {
namespace {

using ggml::BlockType;

constexpr int kSlice = 32;        // values per block of the 32-value formats, and per tile step
constexpr int kSuperBlock = 256;  // values per K-quant super-block
constexpr int kTile = 64;         // output tile edge of the tiled product
constexpr int kDecodeRows = 8;    // activation rows per decode launch (registers per thread)

// Bytes of one block (32 values, or a 256-value K-quant super-block).
template <BlockType kType>
constexpr int64_t kBlockBytes = kType == BlockType::q8_0   ? 34
                                : kType == BlockType::q4_0 ? 18
                                : kType == BlockType::q4_1 ? 20
                                : kType == BlockType::q4_k ? 144
                                                           : 210;  // q6_k

template <BlockType kType>
using TypeConstant = std::integral_constant<BlockType, kType>;

// fn(TypeConstant<type>{}) for the five formats with kernels; other types were refused by the op.
template <typename Fn>
void visit_block_type(BlockType type, Fn&& fn) {
  switch (type) {
    case BlockType::q8_0: return fn(TypeConstant<BlockType::q8_0>{});
    case BlockType::q4_0: return fn(TypeConstant<BlockType::q4_0>{});
    case BlockType::q4_1: return fn(TypeConstant<BlockType::q4_1>{});
    case BlockType::q4_k: return fn(TypeConstant<BlockType::q4_k>{});
    case BlockType::q6_k: return fn(TypeConstant<BlockType::q6_k>{});
    default: break;
  }
  throw Error(str_cat("gguf (CUDA): no kernel for ", ggml::block_type_name(type), " blocks"));
}

int64_t row_bytes_of(const GgufMatrix& w) {
  return w.cols / int64_t(ggml::block_elements(w.type)) * int64_t(ggml::block_bytes(w.type));
}

// ---- reading blocks

__device__ __forceinline__ uint32_t load_u16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }
// Four bytes at an even address, little-endian (byte 0 is the lowest, as dp4a reads them).
__device__ __forceinline__ int load_word(const uint8_t* p) { return int(load_u16(p) | (load_u16(p + 2) << 16)); }
// An f16 block scale (f16 to f32 is exact, as on the CPU).
__device__ __forceinline__ float half_at(const uint8_t* p) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(load_u16(p))));
}

// Q4_K: the 6-bit scale and min of sub-block j (0..7), unpacked from the 12 packed bytes as
// ggml does (ops/ggml_blocks.cpp, scale_and_min).
__device__ __forceinline__ void q4k_scale_and_min(const uint8_t* packed, int j, int& scale, int& min) {
  if (j < 4) {
    scale = packed[j] & 63;
    min = packed[j + 4] & 63;
  } else {
    scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
    min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
  }
}

// Values first .. first+7 (first in {0, 8, 16, 24}) of 32-value slice `slice` of a weight row,
// dequantized with ggml's formulas in ggml's float operation order (ops/ggml_blocks.cpp).
template <BlockType kType>
__device__ __forceinline__ void decode8(const uint8_t* row, int64_t slice, int first, float (&out)[8]) {
  if constexpr (kType == BlockType::q8_0) {
    const uint8_t* block = row + slice * 34;
    const float d = half_at(block);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __fmul_rn(float(int8_t(block[2 + first + i])), d);
  } else if constexpr (kType == BlockType::q4_0 || kType == BlockType::q4_1) {
    constexpr bool with_min = kType == BlockType::q4_1;
    const uint8_t* block = row + slice * (with_min ? 20 : 18);
    const float d = half_at(block);
    const uint8_t* qs = block + (with_min ? 4 : 2);
    // Element e: the low nibble of qs[e] for e < 16, the high nibble of qs[e - 16] after.
    const int shift = first >= 16 ? 4 : 0;
    const uint8_t* bytes = qs + (first & 15);
    if constexpr (with_min) {
      const float m = half_at(block + 2);
#pragma unroll
      for (int i = 0; i < 8; ++i) out[i] = __fadd_rn(__fmul_rn(float((bytes[i] >> shift) & 0xF), d), m);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) out[i] = __fmul_rn(float(int((bytes[i] >> shift) & 0xF) - 8), d);
    }
  } else if constexpr (kType == BlockType::q4_k) {
    const uint8_t* block = row + (slice / 8) * 144;
    const int sub = int(slice % 8);  // sub-block: 2c in the low nibbles of 32 bytes, 2c + 1 in their high ones
    const float d = half_at(block), dmin = half_at(block + 2);
    int scale, min;
    q4k_scale_and_min(block + 4, sub, scale, min);
    const float d1 = __fmul_rn(d, float(scale)), m1 = __fmul_rn(dmin, float(min));
    const uint8_t* bytes = block + 16 + 32 * (sub / 2) + first;
    const int shift = (sub & 1) * 4;
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = __fsub_rn(__fmul_rn(d1, float((bytes[i] >> shift) & 0xF)), m1);
  } else {
    static_assert(kType == BlockType::q6_k, "decode8: no decoder for this block type");
    const uint8_t* block = row + (slice / 8) * 210;
    const int within = int(slice % 8);  // 32-value slice of the super-block: half 0..1, quarter 0..3
    const int half = within / 4, quarter = within % 4;
    const uint8_t* low = block + 64 * half + 32 * (quarter & 1);
    const uint8_t* high = block + 128 + 32 * half;
    const int8_t* scales = reinterpret_cast<const int8_t*>(block + 192 + 8 * half);
    const float d = half_at(block + 208);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int l = first + i;
      const int q = int(((low[l] >> (4 * (quarter >> 1))) & 0xF) | (((high[l] >> (2 * quarter)) & 3) << 4)) - 32;
      out[i] = __fmul_rn(__fmul_rn(d, float(scales[l / 16 + 2 * quarter])), float(q));
    }
  }
}

// ---- activation quantization (the CPU's, value for value)

// gguf_dot.cpp's quantize_activations: per 32 values, d = max|x| / 127, q = round-half-even(x / d)
// through the inverse 1 / d, scaled sum d * sum(q) (Q4_1's min term); a block with an infinite
// value gets d = NaN and q = 0. One warp per block, a value per lane. NaN values are skipped by
// the maximum as std::max skips them on the CPU.
__global__ void quantize_blocks32_kernel(int8_t* values, float* scales, float* scaled_sums, const float* x,
                                         int64_t blocks) {
  const int lane = int(threadIdx.x % 32);
  const int64_t warps = grid_threads() / 32;
  for (int64_t block = global_thread() / 32; block < blocks; block += warps) {
    const float value = x[block * kSlice + lane];
    const float largest = warp_reduce(fmaxf(0.0f, fabsf(value)), MaxOp{});
    float scale = __int_as_float(0x7fc00000);  // NaN
    int q = 0;
    if (isfinite(largest)) {
      scale = __fdiv_rn(largest, 127.0f);
      const float inverse = scale != 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
      q = __float2int_rn(__fmul_rn(value, inverse));
    }
    const int sum = warp_reduce(q, SumOp{});
    values[block * kSlice + lane] = int8_t(q);
    if (lane == 0) {
      scales[block] = scale;
      scaled_sums[block] = __fmul_rn(scale, float(sum));
    }
  }
}

// gguf_kquant.cpp's quantize_activations: per 256 values, q = round-half-even(clamp(x * (127 /
// max|x|), -127, 127)), d = max|x| / 127; a block with a non-finite value gets d = NaN and q = 0,
// an all-zero block d = 0 and q = 0. One warp per super-block, 8 values per lane.
__global__ void quantize_superblocks_kernel(int8_t* values, float* scales, const float* x, int64_t blocks) {
  const int lane = int(threadIdx.x % 32);
  const int64_t warps = grid_threads() / 32;
  for (int64_t block = global_thread() / 32; block < blocks; block += warps) {
    const float* source = x + block * kSuperBlock + 8 * lane;
    float v[8];
    float largest = 0.0f;
    bool finite = true;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      v[i] = source[i];
      finite = finite && isfinite(v[i]);
      largest = fmaxf(largest, fabsf(v[i]));
    }
    largest = warp_reduce(largest, MaxOp{});
    finite = __all_sync(0xffffffffu, finite);
    const bool usable = finite && largest > 0.0f;
    const float inverse = usable ? __fdiv_rn(127.0f, largest) : 0.0f;
    int8_t* target = values + block * kSuperBlock + 8 * lane;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const float scaled = fminf(fmaxf(__fmul_rn(v[i], inverse), -127.0f), 127.0f);
      target[i] = usable ? int8_t(__float2int_rn(scaled)) : int8_t(0);
    }
    if (lane == 0) scales[block] = finite ? __fdiv_rn(largest, 127.0f) : __int_as_float(0x7fc00000);
  }
}

// ---- decode products

// The signed bytes of elements 4j .. 4j+3 of a 32-value block.
template <BlockType kType>
__device__ __forceinline__ int weight_word(const uint8_t* block, int j) {
  if constexpr (kType == BlockType::q8_0) {
    return load_word(block + 2 + 4 * j);
  } else {
    constexpr int quants = kType == BlockType::q4_1 ? 4 : 2;
    // Elements 0..15 are the low nibbles of the 16 quant bytes, 16..31 their high nibbles.
    const int nibbles = (load_word(block + quants + 4 * (j % 4)) >> (4 * (j / 4))) & 0x0F0F0F0F;
    if constexpr (kType == BlockType::q4_0) return int(__vsub4(unsigned(nibbles), 0x08080808u));  // nibble - 8
    return nibbles;
  }
}

// y[m * y_stride + r] for activation rows m < rows (<= kRows) and every weight row r: a
// half-warp per weight row (see the file comment for the order, which is the CPU's).
template <BlockType kType, int kRows>
__global__ void __launch_bounds__(256) dot_blocks32_kernel(float* y, int64_t y_stride, const uint8_t* weights,
                                                           int64_t weight_rows, int64_t blocks, const int8_t* q,
                                                           const float* x_scales, const float* x_scaled_sums,
                                                           int rows) {
  constexpr int64_t block_bytes = kBlockBytes<kType>;
  const int lane = int(threadIdx.x % 32);
  const int h = lane % 16, parity = h / 8, j = h % 8;
  const int64_t r = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * 2 + lane / 16;
  // A half-warp past the last row still runs (the shuffles need every lane) but stores nothing.
  const bool valid = r < weight_rows;
  const uint8_t* row = weights + (valid ? r : 0) * blocks * block_bytes;
  const int64_t cols = blocks * kSlice;
  float lanes[kRows], min_sum[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) lanes[m] = min_sum[m] = 0.0f;
  for (int64_t b = parity; b < blocks; b += 2) {
    const uint8_t* block = row + b * block_bytes;
    const float weight_scale = half_at(block);
    const int word = weight_word<kType>(block, j);
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {
        const int activations = *reinterpret_cast<const int*>(q + m * cols + b * kSlice + 4 * j);
        const int product = __dp4a(word, activations, 0);
        lanes[m] = __fmaf_rn(float(product), __fmul_rn(weight_scale, x_scales[m * blocks + b]), lanes[m]);
      }
    }
    if constexpr (kType == BlockType::q4_1) {
      if (h == 0) {  // an even b: the chain takes block b, then b + 1, as the CPU's loop does
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m < rows) {
            min_sum[m] = __fmaf_rn(half_at(block + 2), x_scaled_sums[m * blocks + b], min_sum[m]);
            if (b + 1 < blocks)
              min_sum[m] =
                  __fmaf_rn(half_at(block + block_bytes + 2), x_scaled_sums[m * blocks + b + 1], min_sum[m]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    float sum = lanes[m];
#pragma unroll
    for (int offset = 8; offset > 0; offset /= 2) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, offset));
    // The CPU adds its min term (0 for Q8_0 and Q4_0: -0 becomes +0 there too) last.
    if (h == 0 && valid && m < rows) y[m * y_stride + r] = __fadd_rn(sum, min_sum[m]);
  }
}

// y[m * y_stride + r] for a Q4_K or Q6_K matrix: a warp per weight row (see the file comment).
template <BlockType kType, int kRows>
__global__ void __launch_bounds__(256) dot_superblocks_kernel(float* y, int64_t y_stride, const uint8_t* weights,
                                                              int64_t weight_rows, int64_t blocks, const int8_t* q,
                                                              const float* x_scales, int rows) {
  constexpr bool q4k = kType == BlockType::q4_k;
  constexpr int64_t block_bytes = kBlockBytes<kType>;
  const int lane = int(threadIdx.x % 32);
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= weight_rows) return;  // the whole warp: no shuffle is left waiting
  const uint8_t* row = weights + r * blocks * block_bytes;
  const int64_t cols = blocks * kSuperBlock;
  // Where lane's 8 values lie in a block: the same for every block.
  int quant_offset, low_shift, high_offset = 0, high_shift = 0, sub;
  if constexpr (q4k) {
    // Values 64c .. 64c+31 are the low nibbles of bytes 32c .. 32c+31, 64c+32 .. the high ones.
    const int chunk = lane / 8, within = 8 * (lane % 8);
    quant_offset = 16 + 32 * chunk + (within & 31);
    low_shift = within >= 32 ? 4 : 0;
    sub = lane / 4;  // 32-value sub-block
  } else {
    // Half h (128 values) = 4 quarters of 32: low nibbles of ql[0..31], of ql[32..63], high
    // nibbles of ql[0..31], of ql[32..63]; 2 high bits each from qh[0..31] at shift 2 * quarter.
    const int half = lane / 16, quarter = (lane % 16) / 4, start = 8 * (lane % 4);
    quant_offset = 64 * half + 32 * (quarter & 1) + start;
    low_shift = 4 * (quarter >> 1);
    high_offset = 128 + 32 * half + start;
    high_shift = 2 * quarter;
    sub = lane / 2;  // 16-value sub-block
  }
  float sum[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) sum[m] = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* block = row + b * block_bytes;
    int w0, w1, scale, min = 0;
    float d, dmin = 0.0f;
    if constexpr (q4k) {
      d = half_at(block);
      dmin = half_at(block + 2);
      q4k_scale_and_min(block + 4, sub, scale, min);
      w0 = (load_word(block + quant_offset) >> low_shift) & 0x0F0F0F0F;
      w1 = (load_word(block + quant_offset + 4) >> low_shift) & 0x0F0F0F0F;
    } else {
      d = half_at(block + 208);
      scale = int(int8_t(block[192 + sub]));
      const int low0 = (load_word(block + quant_offset) >> low_shift) & 0x0F0F0F0F;
      const int low1 = (load_word(block + quant_offset + 4) >> low_shift) & 0x0F0F0F0F;
      const int high0 = ((load_word(block + high_offset) >> high_shift) & 0x03030303) << 4;
      const int high1 = ((load_word(block + high_offset + 4) >> high_shift) & 0x03030303) << 4;
      w0 = int(__vsub4(unsigned(low0 | high0), 0x20202020u));  // 6-bit value - 32
      w1 = int(__vsub4(unsigned(low1 | high1), 0x20202020u));
    }
#pragma unroll
    for (int m = 0; m < kRows; ++m) {
      if (m < rows) {
        const int8_t* activations = q + m * cols + b * kSuperBlock + 8 * lane;
        const int x0 = *reinterpret_cast<const int*>(activations), x1 = *reinterpret_cast<const int*>(activations + 4);
        const int dots = warp_reduce(scale * __dp4a(w1, x1, __dp4a(w0, x0, 0)), SumOp{});
        const float x_scale = x_scales[m * blocks + b];
        if constexpr (q4k) {
          const int mins = warp_reduce(min * __dp4a(0x01010101, x1, __dp4a(0x01010101, x0, 0)), SumOp{});
          const float term_scale = __fmul_rn(x_scale, d), min_scale = __fmul_rn(x_scale, dmin);
          const float min_term = __fmul_rn(min_scale, float(mins));
          sum[m] = __fadd_rn(sum[m], __fmaf_rn(term_scale, float(dots), -min_term));
        } else {
          sum[m] = __fmaf_rn(__fmul_rn(x_scale, d), float(dots), sum[m]);
        }
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int m = 0; m < kRows; ++m)
      if (m < rows) y[m * y_stride + r] = sum[m];
  }
}

// ---- the tiled product: C [m_rows, cols] = A [m_rows, reduce] B with B(k, p) = W(p, k) (the
// forward: reduce = W's columns, cols = W's rows) or B(r, p) = W(r, p) (the input gradient:
// reduce = W's rows, cols = W's columns).
template <BlockType kType, bool kInputGrad>
__global__ void __launch_bounds__(256) tiled_product_kernel(float* c, const float* a, const uint8_t* weights,
                                                            int64_t row_bytes, int64_t m_rows, int64_t reduce,
                                                            int64_t cols) {
  __shared__ float a_tile[kSlice][kTile + 1];
  __shared__ float b_tile[kSlice][kTile + 1];
  const int thread = int(threadIdx.x);
  const int64_t row0 = int64_t(blockIdx.y) * kTile, col0 = int64_t(blockIdx.x) * kTile;
  const int ty = thread / 16, tx = thread % 16;
  float acc[4][4] = {};
  for (int64_t k0 = 0; k0 < reduce; k0 += kSlice) {
    __syncthreads();  // the previous step's reads are done
#pragma unroll
    for (int e = 0; e < 8; ++e) {  // A: consecutive threads along a row of A
      const int index = thread + e * 256;
      const int i = index / kSlice, kk = index % kSlice;
      const int64_t row = row0 + i, k = k0 + kk;
      a_tile[kk][i] = (row < m_rows && k < reduce) ? a[row * reduce + k] : 0.0f;
    }
    float values[8];
    if constexpr (!kInputGrad) {
      // 64 weight rows x one 32-value slice: 4 threads per row, 8 values each.
      const int p = thread / 4, part = thread % 4;
      const int64_t weight_row = col0 + p;
      if (weight_row < cols) {
        decode8<kType>(weights + weight_row * row_bytes, k0 / kSlice, part * 8, values);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) values[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) b_tile[part * 8 + i][p] = values[i];
    } else {
      // 32 weight rows x 64 columns (two slices): 8 threads per row, 8 values each.
      const int kk = thread / 8, part = thread % 8;
      const int64_t weight_row = k0 + kk, col = col0 + part * 8;
      if (weight_row < reduce && col < cols) {  // cols is whole slices: a group of 8 is all in or all out
        decode8<kType>(weights + weight_row * row_bytes, col / kSlice, int(col % kSlice), values);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) values[i] = 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) b_tile[kk][part * 8 + i] = values[i];
    }
    __syncthreads();
    accumulate_tile_4x4(a_tile, b_tile, ty, tx, acc);
  }
  store_tile_4x4(c, m_rows, cols, row0 + ty * 4, col0 + tx * 4, acc);
}

// out[i, :] = row ids[i] of W dequantized (row i when ids is null): 8 values per thread.
template <BlockType kType>
__global__ void rows_kernel(float* out, const uint8_t* weights, int64_t row_bytes, int64_t cols, const int64_t* ids,
                            int64_t count) {
  const int64_t pieces = cols / 8, total = count * pieces;
  for (int64_t item = global_thread(); item < total; item += grid_threads()) {
    const int64_t i = item / pieces, col = (item % pieces) * 8;
    const int64_t row = ids != nullptr ? ids[i] : i;
    float values[8];
    decode8<kType>(weights + row * row_bytes, col / kSlice, int(col % kSlice), values);
    float* target = out + i * cols + col;  // 32-byte aligned: cols is a multiple of 32
    store_pack<4>(target, Pack<float, 4>{{values[0], values[1], values[2], values[3]}});
    store_pack<4>(target + 4, Pack<float, 4>{{values[4], values[5], values[6], values[7]}});
  }
}

void launch_tiled_product(const Tensor& out, const Tensor& a, const GgufMatrix& w, bool input_grad) {
  const int64_t m_rows = a.size(0);
  const int64_t reduce = input_grad ? w.rows : w.cols, cols = input_grad ? w.cols : w.rows;
  const dim3 grid(unsigned((cols + kTile - 1) / kTile), unsigned((m_rows + kTile - 1) / kTile));
  LAMINA_CHECK(grid.y <= 65535u, "gguf_matmul (CUDA): ", m_rows, " rows of input exceed one launch's grid");
  const cudaStream_t stream = stream_of(out);
  visit_block_type(w.type, [&](auto type) {
    constexpr BlockType kType = decltype(type)::value;
    if (input_grad)
      tiled_product_kernel<kType, true><<<grid, 256, 0, stream>>>(data_of<float>(out), data_of<const float>(a), w.data,
                                                                  row_bytes_of(w), m_rows, reduce, cols);
    else
      tiled_product_kernel<kType, false><<<grid, 256, 0, stream>>>(data_of<float>(out), data_of<const float>(a),
                                                                   w.data, row_bytes_of(w), m_rows, reduce, cols);
  });
  LAMINA_CUDA_CHECK_LAUNCH("gguf tiled product");
}

// The decode product of `rows` activation rows (<= kDecodeRows) starting at activation row
// `first`, with the smallest register set that holds them.
template <BlockType kType, int kRows>
void launch_decode(float* y, const GgufMatrix& w, const int8_t* q, const float* x_scales, const float* x_scaled_sums,
                   int64_t first, int rows, cudaStream_t stream) {
  const int64_t warps_per_block = 256 / 32;
  if constexpr (kType == BlockType::q4_k || kType == BlockType::q6_k) {
    const int64_t blocks = w.cols / kSuperBlock;
    const int64_t grid = (w.rows + warps_per_block - 1) / warps_per_block;
    dot_superblocks_kernel<kType, kRows><<<unsigned(grid), 256, 0, stream>>>(
        y + first * w.rows, w.rows, w.data, w.rows, blocks, q + first * w.cols, x_scales + first * blocks, rows);
  } else {
    const int64_t blocks = w.cols / kSlice;
    const int64_t rows_per_block = 2 * warps_per_block;  // a half-warp per weight row
    const int64_t grid = (w.rows + rows_per_block - 1) / rows_per_block;
    dot_blocks32_kernel<kType, kRows><<<unsigned(grid), 256, 0, stream>>>(
        y + first * w.rows, w.rows, w.data, w.rows, blocks, q + first * w.cols, x_scales + first * blocks,
        x_scaled_sums + first * blocks, rows);
  }
}

void decode_product(const Tensor& out, const Tensor& x, const GgufMatrix& w) {
  const int64_t n = x.size(0);
  const bool kquant = w.type == BlockType::q4_k || w.type == BlockType::q6_k;
  const int64_t group = kquant ? kSuperBlock : kSlice;
  const int64_t blocks = w.cols / group, x_blocks = n * blocks;
  const Device device = out.device();
  const cudaStream_t stream = stream_of(out);
  // The quantized activations: int8 values (in u8 storage), and per block d (and d * sum q).
  const Tensor values = Tensor::empty({n * w.cols}, DType::u8, device);
  const Tensor scales = Tensor::empty({x_blocks}, DType::f32, device);
  const Tensor scaled_sums = Tensor::empty({kquant ? 1 : x_blocks}, DType::f32, device);
  int8_t* q = data_of<int8_t>(values);
  const unsigned grid = grid_for(x_blocks * 32, device.index);
  if (kquant)
    quantize_superblocks_kernel<<<grid, kThreads, 0, stream>>>(q, data_of<float>(scales), data_of<const float>(x),
                                                               x_blocks);
  else
    quantize_blocks32_kernel<<<grid, kThreads, 0, stream>>>(q, data_of<float>(scales), data_of<float>(scaled_sums),
                                                            data_of<const float>(x), x_blocks);
  LAMINA_CUDA_CHECK_LAUNCH("gguf activation quantization");
  for (int64_t first = 0; first < n; first += kDecodeRows) {
    const int rows = int(std::min<int64_t>(kDecodeRows, n - first));
    visit_block_type(w.type, [&](auto type) {
      constexpr BlockType kType = decltype(type)::value;
      const float* x_scales = data_of<const float>(scales);
      const float* sums = data_of<const float>(scaled_sums);
      float* y = data_of<float>(out);
      if (rows == 1)
        launch_decode<kType, 1>(y, w, q, x_scales, sums, first, rows, stream);
      else if (rows == 2)
        launch_decode<kType, 2>(y, w, q, x_scales, sums, first, rows, stream);
      else if (rows <= 4)
        launch_decode<kType, 4>(y, w, q, x_scales, sums, first, rows, stream);
      else
        launch_decode<kType, kDecodeRows>(y, w, q, x_scales, sums, first, rows, stream);
    });
    LAMINA_CUDA_CHECK_LAUNCH("gguf decode product");
  }
}

void launch_rows(const Tensor& out, const int64_t* ids, int64_t count, const GgufMatrix& w) {
  const cudaStream_t stream = stream_of(out);
  const unsigned grid = grid_for(count * (w.cols / 8), out.device().index);
  visit_block_type(w.type, [&](auto type) {
    constexpr BlockType kType = decltype(type)::value;
    rows_kernel<kType><<<grid, kThreads, 0, stream>>>(data_of<float>(out), w.data, row_bytes_of(w), w.cols, ids, count);
  });
  LAMINA_CUDA_CHECK_LAUNCH("gguf rows");
}

}  // namespace

void gguf_matmul(const Tensor& out, const Tensor& x, const GgufMatrix& w) {
  if (x.size(0) >= kGgufPanelProductMinRows)
    launch_tiled_product(out, x, w, /*input_grad=*/false);
  else
    decode_product(out, x, w);
}

void gguf_matmul_input_grad(const Tensor& out, const Tensor& grad, const GgufMatrix& w) {
  launch_tiled_product(out, grad, w, /*input_grad=*/true);
}

void gguf_rows(const Tensor& out, const Tensor& ids, const GgufMatrix& w) {
  launch_rows(out, data_of<const int64_t>(ids), ids.numel(), w);
}

void gguf_dequantize(const Tensor& out, const GgufMatrix& w) { launch_rows(out, nullptr, w.rows, w); }

}  // namespace lamina::ops::cuda
