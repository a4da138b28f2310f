// Products with weights kept in a GGUF block format (Q8_0, Q4_0, Q4_1; the K-quants Q4_K and Q6_K
// come from ops/cpu/gguf_kquant*), never expanded to f32.
//
// The activations are quantized per 32 values to int8 with an f32 scale (ggml's Q8_0 of
// activations), and each product is an integer dot product per block, scaled by the two block
// scales and summed in f32. The result therefore matches matmul(x, dequantize(W), false, true)
// up to the activation rounding: per block, |error| <= sum_j |w_j| * d_x / 2 where d_x is the
// block's activation scale (max |x| / 127), plus f32 summation rounding.
//
// From 16 rows of x on (a prefill), W is instead dequantized a panel of 64 rows at a time and
// multiplied in f32 by the GEMM: the dequantization is then paid once per weight for many
// products, and the result has no activation rounding (f32 summation error only).
//
// CPU paths: AVX-512 VNNI, AVX2, and a plain C++ reference that defines the integer sums; they
// give bit-identical results for Q8_0, Q4_0 and Q4_1 (the same integer sums, scaled and summed
// in the same order). $LAMINA_CPU_QDOT (vnni | avx2 | reference | auto) or set_gguf_dot_path
// forces one; forcing a path this CPU lacks is an error.
//
// CUDA (ops/cuda/gguf_matmul.cu): a matrix whose bytes lie in device memory (GgufWeight::to)
// multiplies an x on the same device. The ops dispatch on x's device; x and the matrix on
// different devices is an error naming both. Below 16 rows of x the GPU computes the CPU's
// integer sums and f32 combination in the CPU's order (bit-identical to the reference path);
// from 16 rows on it multiplies dequantized tiles of W in f32 (the CPU's panel product up to
// f32 summation order).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ops/ggml_blocks.h"
#include "tensor/tensor.h"

namespace lamina::ops {

// A weight matrix [rows, cols] kept in a GGUF block format (ggml order: each row is
// cols / block_elements blocks, rows stored one after another), borrowed from memory that
// outlives it (a mapped file, or a device buffer). `device` says where `data` points: host
// memory (the default) or a CUDA device's memory, which only the CUDA kernels may read.
struct GgufMatrix {
  ggml::BlockType type = ggml::BlockType::q8_0;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  Device device = Device::cpu();
};

// Bytes the matrix's blocks take: rows * (cols / block_elements) * block_bytes.
int64_t gguf_matrix_bytes(const GgufMatrix& w);

// A GgufMatrix with whatever keeps its bytes alive (the mapped file they lie in, a buffer of
// rows copied out of it, or a device tensor holding a copy): what a model layer holds.
struct GgufWeight {
  GgufMatrix matrix;
  std::shared_ptr<const void> owner;

  // The same blocks, byte for byte, on `device`: a u8 tensor from that device's allocator holds
  // them (and is the owner of the result). Itself when already there. Throws lamina::Error when
  // the CUDA backend is not built or the device cannot be reached.
  GgufWeight to(Device device) const;
};

// y [..., rows] (f32) = x [..., cols] (f32) times the matrix transposed, as matmul(x, W, false,
// true) on the dequantized W would give, within the activation quantization's error (above).
// x must be f32 (other dtypes are refused, not cast) on the matrix's device. On the CPU, threads
// over rows of W, and over rows of x for N > 1.
Tensor gguf_matmul(const Tensor& x, const GgufMatrix& w);

// gguf_matmul of one x by several matrices of the same width (a layer's q, k and v, or gate and
// up projections): the same results, with x quantized once and one split over threads of all the
// matrices' rows, so that a decode step wakes the threads once per group instead of once per
// matrix.
std::vector<Tensor> gguf_matmul_many(const Tensor& x, const std::vector<const GgufMatrix*>& ws);

// W as an f32 tensor [rows, cols] on the matrix's device: ggml::dequantize of every block (the
// CUDA kernel uses the same formulas and float operation order: the same bits).
Tensor gguf_dequantize(const GgufMatrix& w);

// The input gradient of gguf_matmul: grad [..., rows] (f32) times W -> [..., cols] (f32), with W
// dequantized one panel of rows at a time (never the whole matrix; no activation rounding, so it
// equals matmul(grad, dequantize(W)) up to f32 summation order). A frozen quantized base under
// LoRA adapters needs it.
Tensor gguf_matmul_input_grad(const Tensor& grad, const GgufMatrix& w);

// Rows `ids` [...] (i32/i64, each in [0, rows), on the matrix's device) of W, dequantized exactly:
// [..., cols] f32 on that device, the same bits on either. An embedding lookup in a table kept
// quantized.
Tensor gguf_rows(const Tensor& ids, const GgufMatrix& w);

// From this many rows of x on, gguf_matmul multiplies dequantized panels (tiles on the GPU) of W
// in f32 instead of quantizing x; below it, the integer products. CPU and CUDA switch at the
// same row count, so that both compute the same function of x at every size.
inline constexpr int64_t kGgufPanelProductMinRows = 16;

// Whether gguf_matmul can multiply `type` (Q8_0, Q4_0, Q4_1, and Q4_K, Q6_K once their kernels
// are registered).
bool gguf_matmul_supports(ggml::BlockType type);

// Which CPU code path the integer dot products use.
enum class GgufDotPath { automatic, vnni, avx2, reference };
const char* gguf_dot_path_name(GgufDotPath path);  // "auto", "vnni", "avx2", "reference"
// Forces a path for this process (tests, benchmarks); `automatic` goes back to the fastest one
// this CPU has (or $LAMINA_CPU_QDOT when set). Throws, naming the missing instructions, for a
// path this CPU cannot run.
void set_gguf_dot_path(GgufDotPath path);
// The path gguf_matmul runs now: never `automatic`.
GgufDotPath gguf_dot_path();
// Whether this CPU can run `path` (reference and automatic always can).
bool gguf_dot_path_available(GgufDotPath path);

}  // namespace lamina::ops
