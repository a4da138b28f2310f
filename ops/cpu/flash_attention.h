// The CPU kernels of the fused attention (ops/cpu/flash_attention.cpp), called by
// ops/flash_attention.cpp with validated arguments.
#pragma once

#include "ops/attention_pattern.h"

namespace lamina::ops::cpu {

// Tile sizes: queries x keys processed together. 64 x 64 keeps a tile's scores (16 KiB in f32)
// and the K/V rows it reads (2 x 16 KiB at D = 64) inside L1/L2.
constexpr int64_t kFlashTileQueries = 64;
constexpr int64_t kFlashTileKeys = 64;

// q [B, Hq, Tq, D], k and v [B, Hkv, Tk, D], contiguous f32 or f64; out [B, Hq, Tq, D] and lse
// [B, Hq, Tq] contiguous, same dtype. mask: undefined or a view of the compute dtype broadcast to
// [B, Hq, Tq, Tk]. Results do not depend on the thread count.
void flash_attention(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const ResolvedAttentionPattern& pattern, const Tensor& mask, double scale);
// dq, dk, dv contiguous, shaped and typed as q, k, v; every input contiguous of the same dtype.
void flash_attention_backward(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                              const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                              const Tensor& lse, const ResolvedAttentionPattern& pattern, const Tensor& mask,
                              double scale);

}  // namespace lamina::ops::cpu
