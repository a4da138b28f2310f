// Attention over keys that carry their own positions (ring-buffer KV caches, sparse-attention.md
// §3.6 and §4): argument checks, dtype handling (bf16/f16 computed in f32, f64 in f64), then the
// split-over-keys kernel of ops/cpu/cached_attention.cpp, or for CUDA tensors its twin in
// ops/cuda/cached_attention.cu (bf16/f16/f32 read as they are, f32 inside, out in q's dtype, lse
// f32; f64 on a CUDA device is a clear error). Positions may stay on the host while the keys are
// on the GPU (SparseKvCache keeps them there): they are read on the host for the checks either
// way, and the CUDA kernel copies them to the device.
#include <cmath>
#include <string>

#include "ops/attention_pattern.h"
#include "ops/checks.h"
#include "ops/cpu/cached_attention.h"
#include "ops/ops.h"
#if LAMINA_WITH_CUDA
#include "ops/cuda/kernels.h"
#endif

namespace lamina::ops {

AttentionResult cached_attention(const Tensor& q_in, const std::vector<PositionedKeys>& runs,
                                 const AttentionPattern& pattern, std::optional<double> scale) {
  const char* op = "cached_attention";
  check_floating(op, "q", q_in);
  check_dim(op, "q", q_in, 4);
  LAMINA_CHECK(pattern.query_offset.has_value(), op,
               ": the pattern's query_offset (the absolute position of query row 0) must be given");
  LAMINA_CHECK(!pattern.document_ids.defined() && !pattern.block_layout.defined() && !pattern.additive_mask.defined(),
               op, ": only causality, sinks and windows are supported (no document_ids, block_layout or additive_mask)");
  const int64_t batch = q_in.size(0), heads = q_in.size(1), queries = q_in.size(2), head_dim = q_in.size(3);
  const Device device = check_device(op, {{"q", &q_in}});
  const int64_t kv_heads = runs.empty() ? 1 : runs[0].keys.dim() == 4 ? runs[0].keys.size(1) : 0;
  // Contiguous i64 copies of positions given otherwise; the runs as the kernel reads them.
  std::vector<std::vector<int64_t>> converted_positions(runs.size());
  std::vector<cpu::KeyRunView> views;
  for (size_t n = 0; n < runs.size(); ++n) {
    const PositionedKeys& run = runs[n];
    const std::string where = "run " + std::to_string(n);
    const std::string keys_name = where + " keys", values_name = where + " values";
    const std::string positions_name = where + " positions";
    LAMINA_CHECK(run.keys.defined() && run.values.defined() && run.positions.defined(), op, ": ", where,
                 " needs keys, values and positions");
    check_device(op, {{"q", &q_in}, {keys_name.c_str(), &run.keys}, {values_name.c_str(), &run.values}});
    LAMINA_CHECK(run.positions.device() == device || run.positions.device().is_cpu(), op, ": ", positions_name,
                 " is on ", run.positions.device().str(), " but q is on ", device.str(),
                 " (positions may be on q's device or on the CPU)");
    check_same_dtype(op, {{"q", &q_in}, {keys_name.c_str(), &run.keys}, {values_name.c_str(), &run.values}});
    check_dim(op, keys_name.c_str(), run.keys, 4);
    check_shape(op, values_name.c_str(), run.values, run.keys.shape());
    const int64_t length = run.keys.size(2);
    LAMINA_CHECK(run.keys.size(0) == batch && run.keys.size(3) == head_dim, op, ": q ", q_in.shape(),
                 " [B, Hq, T, D] and ", keys_name, " ", run.keys.shape(), " [B, Hkv, S, D] disagree on B or D");
    LAMINA_CHECK(run.keys.size(1) == kv_heads, op, ": ", keys_name, " ", run.keys.shape(), " has ", run.keys.size(1),
                 " kv heads, run 0 has ", kv_heads);
    LAMINA_CHECK(is_integral(run.positions.dtype()), op, ": ", positions_name, " must be integers, got ",
                 dtype_name(run.positions.dtype()));
    const bool per_head = run.positions.dim() == 2;
    LAMINA_CHECK((run.positions.dim() == 1 && run.positions.size(0) == length) ||
                     (per_head && run.positions.size(0) == kv_heads && run.positions.size(1) == length),
                 op, ": ", positions_name, " ", run.positions.shape(), " must be [", length, "] or [", kv_heads, ", ",
                 length, "]");
    std::vector<int64_t>& values = converted_positions[n];
    values = run.positions.to_vector<int64_t>();
    for (size_t j = 0; j < values.size(); ++j)
      LAMINA_CHECK(values[j] >= -1, op, ": ", positions_name, " holds ", values[j], " at index ", j,
                   " (a position is >= 0, or -1 for an empty slot)");
    // The kernel walks rows of D contiguous values; any other layout is copied once.
    const auto rows_ready = [](const Tensor& t) { return t.stride(3) == 1 || t.size(3) == 1; };
    views.push_back({rows_ready(run.keys) ? run.keys : contiguous(run.keys),
                     rows_ready(run.values) ? run.values : contiguous(run.values), values.data(),
                     per_head ? length : 0});
  }
  LAMINA_CHECK(kv_heads > 0 && heads % kv_heads == 0, op, ": query heads (", heads, ") must be a multiple of kv heads (",
               kv_heads, ")");
  const ResolvedAttentionPattern resolved(pattern, batch, heads, queries, *pattern.query_offset + queries, op);
  const double scale_value = scale.value_or(1.0 / std::sqrt(double(head_dim)));
#if LAMINA_WITH_CUDA
  if (device.is_cuda()) {
    LAMINA_CHECK(q_in.dtype() != DType::f64, op,
                 ": the CUDA kernel takes bf16, f16 or f32; f64 runs on the CPU only (move the tensors to the CPU)");
    AttentionResult result{Tensor::empty(q_in.shape(), q_in.dtype(), device),
                           Tensor::empty({batch, heads, queries}, DType::f32, device)};
    cuda::cached_attention(result.out, result.lse, contiguous(q_in), views, resolved, scale_value);
    return result;
  }
#endif

  const DType compute = q_in.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor q = contiguous(q_in.dtype() == compute ? q_in : cast(q_in, compute));
  AttentionResult result{Tensor::empty(q.shape(), compute, device),
                         Tensor::empty({batch, heads, queries}, compute, device)};
  cpu::cached_attention(result.out, result.lse, q, views, resolved, scale_value);
  if (q_in.dtype() != compute) result.out = cast(result.out, q_in.dtype());
  return result;
}

}  // namespace lamina::ops
