// Reductions over any set of dims on the GPU, the twin of ops/cpu/reduce.cpp: the same
// accumulators (f64 for floating sums, means, variances and logsumexp, i64 for integers), the
// same NaN rules and the same first-index rule for argmax. The order of the additions differs
// from the CPU's (a tree across threads), so float results agree to rounding, integers exactly.
//
// Two layouts of the work: one block per output when the reduced elements are contiguous
// (a warp reads consecutive elements), one thread per output when they are strided and the
// outputs are contiguous (consecutive threads read consecutive elements, e.g. a sum over rows).
#include <cmath>

#include "ops/common/convert.h"
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

// Kept dims (one output each, row-major) and reduced dims (merged), as strides of x.
struct ReduceLayout {
  StridedLayout<1> kept;
  StridedLayout<1> reduced;
  int64_t outputs = 1;
  int64_t count = 1;  // reduced elements per output
};

ReduceLayout make_reduce_layout(const Tensor& x, const std::vector<bool>& reduce_dim) {
  Shape kept_shape, kept_strides, reduced_shape, reduced_strides;
  for (int64_t d = 0; d < x.dim(); ++d) {
    Shape& shape = reduce_dim[size_t(d)] ? reduced_shape : kept_shape;
    Shape& strides = reduce_dim[size_t(d)] ? reduced_strides : kept_strides;
    shape.push_back(x.size(d));
    strides.push_back(x.stride(d));
  }
  ReduceLayout layout;
  layout.outputs = shape_numel(kept_shape);
  layout.count = shape_numel(reduced_shape);
  layout.kept = make_layout<1>(kept_shape, {kept_strides}, "reduce");
  layout.reduced = make_layout<1>(reduced_shape, {reduced_strides}, "reduce");
  return layout;
}

__device__ __forceinline__ int64_t offset_in(const StridedLayout<1>& layout, int64_t linear) {
  int64_t offsets[1];
  offsets_of(layout, linear, offsets);
  return offsets[0];
}

template <typename T>
using accumulate_t = std::conditional_t<std::is_floating_point_v<compute_t<T>>, double, int64_t>;

// A running (value, index) for argmax: the first NaN if any, else the first maximum.
template <typename C>
struct ArgBest {
  C value;
  int64_t index;  // -1: nothing seen
};

template <typename C>
__device__ __forceinline__ bool is_nan(C v) {
  return v != v;
}

template <typename C>
__device__ __forceinline__ ArgBest<C> arg_combine(ArgBest<C> a, ArgBest<C> b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  const bool a_nan = is_nan(a.value), b_nan = is_nan(b.value);
  if (a_nan || b_nan) {
    if (a_nan && b_nan) return a.index < b.index ? a : b;
    return a_nan ? a : b;
  }
  if (a.value > b.value) return a;
  if (b.value > a.value) return b;
  return a.index < b.index ? a : b;
}

// Accumulates the elements r = first, first + step, ... of one output's reduced range.
// `combine_block` merges the per-thread partials across the block (block-per-output layout).
template <typename T>
struct Reducer {
  using C = compute_t<T>;
  using Acc = accumulate_t<T>;

  const T* base;
  StridedLayout<1> reduced;
  int64_t count;
  int64_t first, step;
  bool combine_block;

  __device__ T element(int64_t r) const { return base[offset_in(reduced, r)]; }

  template <typename V, typename Op>
  __device__ V across(V value, Op op, V identity) const {
    if (!combine_block) return value;
    __shared__ V scratch[32];
    return block_reduce(value, op, identity, scratch);
  }

  __device__ Acc sum() const {
    Acc acc = 0;
    for (int64_t r = first; r < count; r += step) acc += Acc(load(element(r)));
    return across(acc, SumOp{}, Acc(0));
  }

  // max (or min) and whether a NaN was seen; NaN wins, as on the CPU.
  __device__ C extreme(bool is_max) const {
    C best;
    if constexpr (std::is_floating_point_v<C>) {
      best = is_max ? C(-INFINITY) : C(INFINITY);
    } else {
      best = is_max ? IntLimits<C>::lowest : IntLimits<C>::highest;
    }
    int seen_nan = 0;
    for (int64_t r = first; r < count; r += step) {
      const C v = load(element(r));
      seen_nan |= is_nan(v) ? 1 : 0;
      best = is_max ? (v > best ? v : best) : (v < best ? v : best);
    }
    struct Pick {
      bool is_max;
      __device__ C operator()(C a, C b) const { return is_max ? (b > a ? b : a) : (b < a ? b : a); }
    };
    best = across(best, Pick{is_max}, best);
    seen_nan = across(seen_nan, SumOp{}, 0);
    if constexpr (std::is_floating_point_v<C>) {
      if (seen_nan) return C(NAN);
    }
    return best;
  }

  __device__ int64_t argmax() const {
    ArgBest<C> best{C(0), -1};
    for (int64_t r = first; r < count; r += step) {
      const C v = load(element(r));
      if (best.index < 0 || (!is_nan(best.value) && (v > best.value || is_nan(v)))) best = {v, r};
    }
    if (!combine_block) return best.index;
    // Two shuffles per step: the value and the index travel together.
    __shared__ C values[32];
    __shared__ int64_t indices[32];
    const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
    for (int offset = 16; offset > 0; offset /= 2) {
      const ArgBest<C> other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                             __shfl_xor_sync(0xffffffffu, best.index, offset)};
      best = arg_combine(best, other);
    }
    __syncthreads();
    if (lane == 0) {
      values[warp] = best.value;
      indices[warp] = best.index;
    }
    __syncthreads();
    const int warps = int((blockDim.x + 31) / 32);
    best = lane < warps ? ArgBest<C>{values[lane], indices[lane]} : ArgBest<C>{C(0), -1};
    for (int offset = 16; offset > 0; offset /= 2) {
      const ArgBest<C> other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                             __shfl_xor_sync(0xffffffffu, best.index, offset)};
      best = arg_combine(best, other);
    }
    return best.index;
  }

  // peak + log(sum exp(x - peak)) in f64; an infinite (or empty) peak is the result.
  __device__ double logsumexp() const {
    double peak = -INFINITY;
    for (int64_t r = first; r < count; r += step) peak = fmax(peak, double(load(element(r))));
    peak = across(peak, MaxOp{}, double(-INFINITY));
    if (!(peak > -INFINITY && peak < INFINITY)) return peak;
    double total = 0;
    for (int64_t r = first; r < count; r += step) total += ::exp(double(load(element(r))) - peak);
    total = across(total, SumOp{}, 0.0);
    return peak + ::log(total);
  }

  // Two passes in f64: the mean, then the squared deviations.
  __device__ double variance(int64_t correction) const {
    double total = 0;
    for (int64_t r = first; r < count; r += step) total += double(load(element(r)));
    total = across(total, SumOp{}, 0.0);
    const double n = double(count);
    const double average = total / n;
    double squares = 0;
    for (int64_t r = first; r < count; r += step) {
      const double deviation = double(load(element(r))) - average;
      squares += deviation * deviation;
    }
    squares = across(squares, SumOp{}, 0.0);
    return squares / fmax(0.0, n - double(correction));
  }
};

template <typename T>
__device__ void reduce_one(ReduceKind kind, const Reducer<T>& reducer, int64_t correction, void* out, int64_t o,
                           bool writer) {
  switch (kind) {
    case ReduceKind::sum:
    case ReduceKind::mean: {
      const auto acc = reducer.sum();
      if (!writer) return;
      if (kind == ReduceKind::mean) {
        static_cast<T*>(out)[o] = convert<T>(double(acc) / double(reducer.count));
      } else {
        static_cast<T*>(out)[o] = convert<T>(acc);
      }
      return;
    }
    case ReduceKind::max:
    case ReduceKind::min: {
      const auto best = reducer.extreme(kind == ReduceKind::max);
      if (writer) static_cast<T*>(out)[o] = convert<T>(best);
      return;
    }
    case ReduceKind::argmax: {
      const int64_t index = reducer.argmax();
      if (writer) static_cast<int64_t*>(out)[o] = index;
      return;
    }
    case ReduceKind::logsumexp:
    case ReduceKind::var: {
      if constexpr (std::is_floating_point_v<compute_t<T>>) {
        const double value = kind == ReduceKind::logsumexp ? reducer.logsumexp() : reducer.variance(correction);
        if (writer) static_cast<T*>(out)[o] = convert<T>(value);
      }
      return;
    }
  }
}

// One block per output, threads stride over its reduced elements.
template <typename T>
__global__ void reduce_blocks_kernel(ReduceKind kind, const T* x, void* out, ReduceLayout layout, int64_t correction) {
  for (int64_t o = blockIdx.x; o < layout.outputs; o += gridDim.x) {
    const Reducer<T> reducer{
        x + offset_in(layout.kept, o), layout.reduced, layout.count, threadIdx.x, blockDim.x, true};
    reduce_one<T>(kind, reducer, correction, out, o, threadIdx.x == 0);
  }
}

// One thread per output, walking its reduced elements in order.
template <typename T>
__global__ void reduce_threads_kernel(ReduceKind kind, const T* x, void* out, ReduceLayout layout, int64_t correction) {
  for (int64_t o = global_thread(); o < layout.outputs; o += grid_threads()) {
    const Reducer<T> reducer{x + offset_in(layout.kept, o), layout.reduced, layout.count, 0, 1, false};
    reduce_one<T>(kind, reducer, correction, out, o, true);
  }
}

}  // namespace

void reduce(ReduceKind kind, const Tensor& out, const Tensor& x, const std::vector<bool>& reduce_dim,
            int64_t correction) {
  if (out.numel() == 0) return;
  const ReduceLayout layout = make_reduce_layout(x, reduce_dim);
  const int device = x.device().index;
  // Threads per output when the reduced elements are strided but consecutive outputs are
  // adjacent (a warp then reads one contiguous run), or when there are few elements per output.
  const bool reduced_contiguous = layout.count <= 1 || (layout.reduced.ndim == 1 && layout.reduced.strides[0][0] == 1);
  const bool outputs_adjacent = layout.kept.strides[0][layout.kept.ndim - 1] == 1;
  const bool per_thread = layout.count < 64 || (!reduced_contiguous && outputs_adjacent && layout.outputs >= 1024);
  visit_arithmetic(x.dtype(), "reduce", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    if constexpr (std::is_integral_v<T>) {
      LAMINA_CHECK(kind != ReduceKind::logsumexp && kind != ReduceKind::var,
                   "logsumexp/var: integer tensors are not supported");
    }
    const T* input = static_cast<const T*>(x.raw_data());
    if (per_thread) {
      reduce_threads_kernel<T><<<grid_for(layout.outputs, device), kThreads, 0, stream_of(x)>>>(
          kind, input, out.raw_data(), layout, correction);
    } else {
      const unsigned blocks = unsigned(std::min<int64_t>(layout.outputs, int64_t(1) << 30));
      reduce_blocks_kernel<T><<<blocks, kThreads, 0, stream_of(x)>>>(kind, input, out.raw_data(), layout, correction);
    }
    LAMINA_CUDA_CHECK_LAUNCH("reduce");
  });
}

}  // namespace lamina::ops::cuda
