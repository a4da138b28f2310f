// The CUDA kernels behind the GGUF block-format ops (ops/gguf_matmul.h), in
// ops/cuda/gguf_matmul.cu; their oracles are the CPU kernels (ops/cpu/gguf_dot.cpp,
// ops/cpu/gguf_kquant.cpp, ops/ggml_blocks.cpp). Arguments arrive checked by the public ops:
// the matrix on the tensors' CUDA device, of a type gguf_matmul_supports (gguf_rows and
// gguf_dequantize: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K too), f32 tensors contiguous, sizes non-zero.
// No CUDA types here (ops/gguf_matmul.cpp includes it in every CUDA build), C++17.
#pragma once

#include "ops/gguf_matmul.h"
#include "tensor/tensor.h"

namespace lamina::ops::cuda {

// out [n, w.rows] = x [n, w.cols] times W^T. Below kGgufPanelProductMinRows rows of x: x is
// quantized as the CPU quantizes it and the integer sums are combined in the CPU's f32 order
// (the same bits as the CPU reference path); from there on, dequantized tiles of W in f32.
void gguf_matmul(const Tensor& out, const Tensor& x, const GgufMatrix& w);

// out [n, w.cols] = grad [n, w.rows] times W, with tiles of W dequantized exactly (f32 sums).
void gguf_matmul_input_grad(const Tensor& out, const Tensor& grad, const GgufMatrix& w);

// out [ids.numel(), w.cols] = the rows `ids` (i64, contiguous, already in range) of W, dequantized
// with ggml's formulas in their float operation order: the CPU's bits.
void gguf_rows(const Tensor& out, const Tensor& ids, const GgufMatrix& w);

// out [w.rows, w.cols] = all of W dequantized (the same bits as ggml::dequantize).
void gguf_dequantize(const Tensor& out, const GgufMatrix& w);

}  // namespace lamina::ops::cuda
