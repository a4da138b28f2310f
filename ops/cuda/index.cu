// Index kernels on the GPU, the twins of ops/cpu/index.cpp. Tensors are viewed as
// [outer, size_along_dim, inner] where contiguous:
//   index_select: out[o, i, :] = x[o, index[i], :]
//   index_add:    out[o, index[i], :] += src[o, i, :]      (zeros first; index_select's adjoint)
//   gather:       out[p] = x[p with its dim coordinate replaced by index[p]]
//   scatter_add:  out[p with its dim coordinate replaced by index[p]] += src[p]
// index_add and scatter_add give each output element's accumulation to one thread, which adds
// in index order: the same order, hence the same sums, as the CPU, with no atomics.
#include "ops/cuda/common.cuh"
#include "ops/cuda/kernels.h"

namespace lamina::ops::cuda {
namespace {

// One block per output row (o, i), copying `units` Units of the selected input row.
template <typename Unit, typename I>
__global__ void __launch_bounds__(kMaxRowThreads) index_select_kernel(Unit* out, const Unit* x, const I* index, int64_t outer, int64_t count,
                                    int64_t size, int64_t units) {
  for (int64_t row = blockIdx.x; row < outer * count; row += gridDim.x) {
    const int64_t o = row / count, i = row % count;
    const Unit* source = x + (o * size + int64_t(index[i])) * units;
    for (int64_t u = threadIdx.x; u < units; u += blockDim.x) out[row * units + u] = source[u];
  }
}

// One thread per (o, column): the indices in order.
template <typename T, typename I>
__global__ void index_add_kernel(T* out, const T* src, const I* index, int64_t outer, int64_t count, int64_t size,
                                 int64_t inner) {
  for (int64_t e = global_thread(); e < outer * inner; e += grid_threads()) {
    const int64_t o = e / inner, column = e % inner;
    for (int64_t i = 0; i < count; ++i) {
      T* target = out + (o * size + int64_t(index[i])) * inner + column;
      *target = convert<T>(load(*target) + load(src[(o * count + i) * inner + column]));
    }
  }
}

// Operands over index's shape: 0 out, 1 index, 2 x with the gathered dim's stride zeroed.
template <typename Unit, typename I>
__global__ void gather_kernel(Unit* out, const Unit* x, const I* index, StridedLayout<3> layout, int64_t count,
                              int64_t dim_stride) {
  for (int64_t e = global_thread(); e < count; e += grid_threads()) {
    int64_t offsets[3];
    offsets_of(layout, e, offsets);
    out[offsets[0]] = x[offsets[2] + int64_t(index[offsets[1]]) * dim_stride];
  }
}

// Operands over index's shape with the scatter dim set to 1 (one thread per "rest" position):
// 0 src, 1 index, 2 out with the dim's stride zeroed; the thread walks the dim in order.
template <typename T, typename I>
__global__ void scatter_add_kernel(T* out, const T* src, const I* index, StridedLayout<3> layout, int64_t rests,
                                   int64_t along, int64_t src_step, int64_t index_step, int64_t dim_stride) {
  for (int64_t e = global_thread(); e < rests; e += grid_threads()) {
    int64_t offsets[3];
    offsets_of(layout, e, offsets);
    for (int64_t i = 0; i < along; ++i) {
      T* target = out + offsets[2] + int64_t(index[offsets[1] + i * index_step]) * dim_stride;
      *target = convert<T>(load(*target) + load(src[offsets[0] + i * src_step]));
    }
  }
}

}  // namespace

void index_select(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index) {
  const DimSplit in = split_around(x.shape(), dim);
  const int64_t count = index.numel();
  if (out.numel() == 0) return;
  const size_t row_bytes = size_t(in.inner) * x.element_size();
  const bool packed = row_bytes % 16 == 0 && aligned_to(x.raw_data(), 16) && aligned_to(out.raw_data(), 16);
  visit_index(index.dtype(), "index_select", [&](auto index_tag) {
    using I = device_t<decltype(index_tag)>;
    auto launch = [&](auto unit_tag, int64_t units) {
      using Unit = device_t<decltype(unit_tag)>;
      index_select_kernel<Unit, I><<<row_blocks(in.outer * count), row_threads(units), 0, stream_of(out)>>>(
          data_of<Unit>(out), data_of<const Unit>(x), data_of<const I>(index), in.outer, count, in.size, units);
    };
    if (packed) {
      launch(TypeTag<Pack<uint32_t, 4>>{}, int64_t(row_bytes / 16));
    } else {
      visit_bytes(x.element_size(), [&](auto unit_tag) { launch(unit_tag, in.inner); });
    }
    LAMINA_CUDA_CHECK_LAUNCH("index_select");
  });
}

void index_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  const DimSplit shape = split_around(out.shape(), dim);
  const int64_t count = index.numel();
  if (shape.outer * shape.inner == 0 || count == 0) return;
  visit_arithmetic(out.dtype(), "index_add", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    visit_index(index.dtype(), "index_add", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      index_add_kernel<T, I><<<grid_for(shape.outer * shape.inner, out.device().index), kThreads, 0, stream_of(out)>>>(
          data_of<T>(out), data_of<const T>(src), data_of<const I>(index), shape.outer, count, shape.size, shape.inner);
      LAMINA_CUDA_CHECK_LAUNCH("index_add");
    });
  });
}

void gather(const Tensor& out, const Tensor& x, int64_t dim, const Tensor& index) {
  const int64_t count = index.numel();
  if (count == 0) return;
  Shape rest_strides = x.strides();
  rest_strides[size_t(dim)] = 0;
  const StridedLayout<3> layout =
      make_layout<3>(index.shape(), {out.strides(), index.strides(), rest_strides}, "gather");
  visit_bytes(x.element_size(), [&](auto unit_tag) {
    using Unit = device_t<decltype(unit_tag)>;
    visit_index(index.dtype(), "gather", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      gather_kernel<Unit, I><<<grid_for(count, out.device().index), kThreads, 0, stream_of(out)>>>(
          data_of<Unit>(out), data_of<const Unit>(x), data_of<const I>(index), layout, count, x.stride(dim));
      LAMINA_CUDA_CHECK_LAUNCH("gather");
    });
  });
}

void scatter_add(const Tensor& out, int64_t dim, const Tensor& index, const Tensor& src) {
  if (index.numel() == 0) return;
  Shape rest_shape = index.shape();
  rest_shape[size_t(dim)] = 1;
  Shape rest_strides = out.strides();
  rest_strides[size_t(dim)] = 0;
  const StridedLayout<3> layout =
      make_layout<3>(rest_shape, {src.strides(), index.strides(), rest_strides}, "scatter_add");
  const int64_t rests = shape_numel(rest_shape);
  visit_arithmetic(out.dtype(), "scatter_add", [&](auto tag) {
    using T = device_t<decltype(tag)>;
    visit_index(index.dtype(), "scatter_add", [&](auto index_tag) {
      using I = device_t<decltype(index_tag)>;
      scatter_add_kernel<T, I><<<grid_for(rests, out.device().index), kThreads, 0, stream_of(out)>>>(
          data_of<T>(out), data_of<const T>(src), data_of<const I>(index), layout, rests, index.size(dim),
          src.stride(dim), index.stride(dim), out.stride(dim));
      LAMINA_CUDA_CHECK_LAUNCH("scatter_add");
    });
  });
}

}  // namespace lamina::ops::cuda
