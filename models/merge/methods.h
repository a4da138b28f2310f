// The per-tensor arithmetic of model merging: weighted averages, task arithmetic, SLERP, TIES and
// DARE, each a function of one tensor per model that returns the merged tensor.
//
// Every input is f32, contiguous and on the CPU, all of one shape (the streaming driver in
// models/merge/merge.h converts each model's tensor before calling these); the result is a new
// f32 tensor of that shape. Sums run in f64 per element, so that merging copies of one model gives
// that model back exactly whenever the weights make it so in exact arithmetic.
//
// A "task vector" is a fine-tuned model minus its base (Ilharco et al. 2023). TIES (Yadav et al.
// 2023) trims each task vector to its largest entries, elects one sign per entry and averages
// only the entries that agree with it; DARE (Yu et al. 2023) drops task-vector entries at random
// and rescales the survivors so that each entry keeps its expected value.
#pragma once

#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace lamina::merge {

// sum_i w_i x_i, divided by sum_i w_i when `normalize` (a zero sum of weights is then an error).
Tensor linear(const std::vector<Tensor>& models, const std::vector<double>& weights, bool normalize);

// base + lambda * sum_i w_i (x_i - base), the sum divided by sum_i w_i when `normalize`.
Tensor task_arithmetic(const Tensor& base, const std::vector<Tensor>& models, const std::vector<double>& weights,
                       bool normalize, double lambda = 1.0);

// Spherical interpolation of the flattened tensors: t = 0 gives `from`, t = 1 gives `to`, between
// them the arc of the angle theta between their directions, scaled as
//   sin((1 - t) theta) / sin(theta) * from + sin(t theta) / sin(theta) * to.
// When the directions are nearly parallel (|cos theta| above `parallel_threshold`), or either
// tensor is zero, the arc is numerically meaningless and this is the linear (1 - t) from + t to.
inline constexpr double kSlerpParallelThreshold = 0.9995;
Tensor slerp(const Tensor& from, const Tensor& to, double t, double parallel_threshold = kSlerpParallelThreshold);

// SLERP's two coefficients from the flattened tensors' dot product and squared norms: what a
// caller that reads the tensors in chunks computes once (slerp() is these coefficients applied
// with linear(..., normalize = false)).
struct SlerpWeights {
  double from = 1, to = 0;
};
SlerpWeights slerp_weights(double dot, double from_norm_squared, double to_norm_squared, double t,
                           double parallel_threshold = kSlerpParallelThreshold);

// TIES' trim: `delta` with all but its floor(density * numel) largest-magnitude entries set to
// zero (ties at the cut broken by position, earlier first). density is in [0, 1].
Tensor keep_top_magnitude(const Tensor& delta, double density);

// keep_top_magnitude in two steps, for a tensor read in chunks: the cut found once from all the
// magnitudes (consumed: they are reordered), then applied chunk by chunk in order, `cut` counting
// down the entries equal to the cut that may still be kept.
struct MagnitudeCut {
  float magnitude = 0;     // entries above it are kept
  int64_t keep_at_cut = 0;  // and this many of those equal to it, the earliest first
  bool keep_all = false;
  bool keep_none = false;
};
MagnitudeCut magnitude_cut(std::vector<float>& magnitudes, double density);
Tensor apply_magnitude_cut(const Tensor& delta_chunk, MagnitudeCut& cut);

// DARE's drop: each entry of `delta` kept with probability `density` (dropped with p = 1 - density)
// and the kept ones multiplied by 1 / density. The choice for entry j depends only on (seed,
// stream, j): `stream` tells apart the tensors and models of one merge, so a tensor's mask does
// not depend on the order the tensors are merged in. density is in (0, 1]. A chunk of a larger
// tensor passes the flat index of its first entry (a multiple of 4), so that the drops do not
// depend on how the tensor was cut into chunks either.
Tensor drop_and_rescale(const Tensor& delta, double density, uint64_t seed, uint64_t stream, int64_t first_index = 0);

// TIES' combination of (already trimmed or dropped) task vectors d_i with weights w_i: per
// entry, the elected sign is that of sum_i w_i d_i (the side with the larger summed weighted
// magnitude); the result is sum over agreeing i (d_i nonzero with the elected sign) of w_i d_i,
// divided by the sum of those w_i when `normalize` (the disjoint mean). Entries where nothing
// agrees are zero.
Tensor sign_consensus_sum(const std::vector<Tensor>& deltas, const std::vector<double>& weights, bool normalize);

// The sum_i w_i d_i of task vectors, divided by sum_i w_i when `normalize`.
Tensor weighted_delta_sum(const std::vector<Tensor>& deltas, const std::vector<double>& weights, bool normalize);

// x - base, and base + lambda * delta.
Tensor subtract(const Tensor& x, const Tensor& base);
Tensor add_scaled(const Tensor& base, const Tensor& delta, double lambda);

}  // namespace lamina::merge
