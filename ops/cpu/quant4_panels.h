// The AVX-512 panel products behind matmul_4bit and matmul_4bit_input_grad for many input rows
// (ops/cpu/quant4_panels.cpp): the weight is decoded 32 output columns by up to 256 reduced
// elements at a time straight into the layout the multiply kernel reads, and multiplied there
// by a 14 x 32 register-blocked kernel, with no general GEMM (and its second packing) between.
#pragma once

#include <cstdint>

#include "ops/cpu/quant4_decode.h"

namespace lamina::ops::cpu::quant4_detail {

// Whether this build has the panel products (compiled for AVX-512); without it the callers keep
// their Eigen path and the functions below throw.
bool panel_products_available();

// out [rows, out_features] = x [rows, in_features] @ W^T, f32, all contiguous.
void panel_matmul(float* out, const float* x, int64_t rows, const WeightView& w, int64_t out_features,
                  int64_t in_features);
// out [rows, in_features] = grad [rows, out_features] @ W, f32, all contiguous.
void panel_input_grad(float* out, const float* grad, int64_t rows, const WeightView& w, int64_t out_features,
                      int64_t in_features);

}  // namespace lamina::ops::cpu::quant4_detail
