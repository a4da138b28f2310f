// What every CUDA kernel file shares: device element types and conversions that round exactly
// as the CPU kernels do, strided layouts passed by value, vector packs, block reductions,
// launch sizes and dtype dispatch. Only for .cu files (C++17, CUDA headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "ops/common/strided.h"
#include "tensor/cuda/runtime.h"
#include "tensor/tensor.h"

namespace lamina::ops::cuda {

using bfloat16 = __nv_bfloat16;
using half = __half;

// ---- element types. The dtype visitors are the same as the CPU's (tensor/dtype.h); their tags
// name host types, and device_t gives the type a kernel stores: CUDA's own bf16/f16, stored as
// themselves and computed in f32 (compute_t), like the CPU's.

template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<bf16> {
  using type = bfloat16;
};
template <>
struct DeviceType<f16> {
  using type = half;
};
// The device element type of a visitor's tag: `using T = device_t<decltype(tag)>;`.
template <typename Tag>
using device_t = typename DeviceType<typename Tag::type>::type;

template <typename T>
struct ComputeType {
  using type = ::lamina::compute_t<T>;
};
template <>
struct ComputeType<bfloat16> {
  using type = float;
};
template <>
struct ComputeType<half> {
  using type = float;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

template <typename T>
__device__ __forceinline__ T load(T value) {
  return value;
}
__device__ __forceinline__ float load(bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ float load(half value) { return __half2float(value); }

template <typename T>
struct IntLimits;
template <>
struct IntLimits<int32_t> {
  static constexpr int32_t lowest = -2147483647 - 1, highest = 2147483647;
};
template <>
struct IntLimits<int64_t> {
  static constexpr int64_t lowest = -9223372036854775807LL - 1, highest = 9223372036854775807LL;
};
template <>
struct IntLimits<uint8_t> {
  static constexpr uint8_t lowest = 0, highest = 255;
};

// A math value to element type Out, exactly as ops/common/convert.h: float to integer
// truncates, saturates and maps NaN to 0; 16-bit floats round to nearest even from f32.
template <typename Out, typename Value>
__device__ __forceinline__ Out convert(Value value) {
  if constexpr (std::is_same_v<Out, bool>) {
    return value != Value(0);
  } else if constexpr (std::is_same_v<Out, bfloat16>) {
    return __float2bfloat16_rn(float(value));
  } else if constexpr (std::is_same_v<Out, half>) {
    return __float2half_rn(float(value));
  } else if constexpr (std::is_integral_v<Out> && std::is_floating_point_v<Value>) {
    if (value != value) return Out(0);
    if (value <= Value(IntLimits<Out>::lowest)) return IntLimits<Out>::lowest;
    if (value >= Value(IntLimits<Out>::highest)) return IntLimits<Out>::highest;
    return Out(value);
  } else {
    return Out(value);
  }
}

// Rounds a math value through element type T and back (the CPU kernels sometimes store an
// intermediate in T and read it again; doing the same keeps the results identical).
template <typename T, typename Value>
__device__ __forceinline__ compute_t<T> round_through(Value value) {
  return load(convert<T>(value));
}

// ---- device math on f32 and f64 by overload (full-precision library functions, never intrinsics)
namespace dmath {
__device__ __forceinline__ float exp(float x) { return ::expf(x); }
__device__ __forceinline__ double exp(double x) { return ::exp(x); }
__device__ __forceinline__ float log(float x) { return ::logf(x); }
__device__ __forceinline__ double log(double x) { return ::log(x); }
__device__ __forceinline__ float log1p(float x) { return ::log1pf(x); }
__device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float expm1(float x) { return ::expm1f(x); }
__device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
__device__ __forceinline__ float sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float tanh(float x) { return ::tanhf(x); }
__device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float erf(float x) { return ::erff(x); }
__device__ __forceinline__ double erf(double x) { return ::erf(x); }
__device__ __forceinline__ float pow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ double pow(double x, double y) { return ::pow(x, y); }
__device__ __forceinline__ float cos(float x) { return ::cosf(x); }
__device__ __forceinline__ double cos(double x) { return ::cos(x); }
__device__ __forceinline__ float sin(float x) { return ::sinf(x); }
__device__ __forceinline__ double sin(double x) { return ::sin(x); }
__device__ __forceinline__ float abs(float x) { return ::fabsf(x); }
__device__ __forceinline__ double abs(double x) { return ::fabs(x); }
template <typename C>
__device__ __forceinline__ C sigmoid(C x) {
  return C(1) / (C(1) + exp(-x));
}
}  // namespace dmath

// ---- strided layouts: shape and per-operand strides (elements), passed to kernels by value

inline constexpr int kMaxDims = 8;

template <int N>
struct StridedLayout {
  int ndim = 1;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[N][kMaxDims] = {};
};

// Merges dims every operand steps through back to back (so contiguous operands become 1-D).
template <int N>
StridedLayout<N> make_layout(const Shape& shape, const std::array<Shape, N>& strides, const char* op) {
  const Runs<N> runs = coalesce<N>(shape, strides);
  LAMINA_CHECK(runs.shape.size() <= size_t(kMaxDims), op, ": CUDA kernels take at most ", kMaxDims,
               " dims after merging contiguous ones; shape ", shape, " has ", runs.shape.size());
  StridedLayout<N> layout;
  layout.ndim = int(runs.shape.size());
  for (int d = 0; d < layout.ndim; ++d) {
    layout.sizes[d] = runs.shape[size_t(d)];
    for (int k = 0; k < N; ++k) layout.strides[k][d] = runs.strides[size_t(k)][size_t(d)];
  }
  return layout;
}

// Element offsets of row-major element `linear` in each operand.
template <int N>
__device__ __forceinline__ void offsets_of(const StridedLayout<N>& layout, int64_t linear, int64_t (&offsets)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) offsets[k] = 0;
  if (layout.ndim == 1) {
#pragma unroll
    for (int k = 0; k < N; ++k) offsets[k] = linear * layout.strides[k][0];
    return;
  }
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < layout.ndim) {
      const int64_t size = layout.sizes[d];
      const int64_t coordinate = linear % size;
      linear /= size;
#pragma unroll
      for (int k = 0; k < N; ++k) offsets[k] += coordinate * layout.strides[k][d];
    }
  }
}

// ---- vector packs: 16-byte loads and stores of contiguous, aligned data

template <typename T>
inline constexpr int kPack = sizeof(T) >= 16 ? 1 : int(16 / sizeof(T));

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T values[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& pack) {
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

inline bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---- block reductions (blockDim.x a multiple of 32, at most 1024); every thread gets the result

template <typename C, typename Op>
__device__ __forceinline__ C warp_reduce(C value, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// `scratch` holds 32 values in shared memory; the leading barrier lets one scratch serve
// consecutive reductions.
template <typename C, typename Op>
__device__ __forceinline__ C block_reduce(C value, Op op, C identity, C* scratch) {
  const int lane = int(threadIdx.x % 32), warp = int(threadIdx.x / 32);
  value = warp_reduce(value, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = int((blockDim.x + 31) / 32);
  value = lane < warps ? scratch[lane] : identity;
  return warp_reduce(value, op);
}

struct SumOp {
  template <typename C>
  __device__ __forceinline__ C operator()(C a, C b) const {
    return a + b;
  }
};
// NaN-ignoring like std::max over lanes on the CPU (fmax returns the other operand).
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// ---- launches

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `work` items: enough to fill the device twice over, no more.
inline unsigned grid_for(int64_t work, int device, int threads = kThreads) {
  const int64_t wanted = (work + threads - 1) / threads;
  const int64_t cap = int64_t(::lamina::cuda::device_info(device).multiprocessors) * (4096 / threads);
  return unsigned(std::max<int64_t>(1, std::min(wanted, cap)));
}

__host__ __device__ constexpr int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ int64_t global_thread() { return int64_t(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// The device's compute stream, made current on this thread.
inline cudaStream_t stream_of(const Tensor& t) { return ::lamina::cuda::use_device(t.device().index); }

template <typename T>
T* data_of(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// ---- dispatch on element size

// Element types by size only, for kernels that move bytes (gathers, row copies).
template <typename Fn>
decltype(auto) visit_bytes(size_t element_size, Fn&& fn) {
  switch (element_size) {
    case 1: return fn(TypeTag<uint8_t>{});
    case 2: return fn(TypeTag<uint16_t>{});
    case 4: return fn(TypeTag<uint32_t>{});
    case 8: return fn(TypeTag<uint64_t>{});
    default: break;
  }
  throw Error(str_cat("visit_bytes: unsupported element size ", element_size));
}

}  // namespace lamina::ops::cuda

namespace lamina::ops::cuda {

// ---- row kernels: one block per row, V elements per load (1, or kPack<T> when every row is
// aligned to a pack), each thread owning the same elements of the row in every pass.

// Row kernels are declared __launch_bounds__(kMaxRowThreads), so that the compiler keeps them
// within the registers a block of that size may use and every launch below fits.
inline constexpr int kMaxRowThreads = 1024;

// Threads for a row of `units` loads: about four loads per thread, 32 to kMaxRowThreads.
inline int row_threads(int64_t units) {
  int threads = 32;
  while (threads < kMaxRowThreads && int64_t(threads) * 4 < units) threads *= 2;
  return threads;
}

// Whether rows of `width` elements of type T starting at each pointer can be read in packs.
template <typename T>
bool rows_packable(int64_t width, std::initializer_list<const void*> rows) {
  if (kPack<T> == 1 || width % kPack<T> != 0) return false;
  for (const void* p : rows)
    if (!aligned_to(p, 16)) return false;
  return true;
}

// Blocks for one block per row (grid-stride beyond the limit).
inline unsigned row_blocks(int64_t rows) {
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(rows, int64_t(1) << 30)));
}

// ---- the register tile of the small tiled products (quant4.cu, gguf_matmul.cu): a 64 x 64
// block of C on 16 x 16 threads, thread (ty, tx) owning rows 4 ty .. 4 ty + 3 and columns
// 4 tx .. 4 tx + 3, fed from shared tiles a[k][row] and b[k][column] (both k-major).

// acc[i][j] += a[k][4 ty + i] * b[k][4 tx + j] for k = 0, 1, ..., kDepth - 1 in order, one fmaf each.
template <int kDepth, int kPitch>
__device__ __forceinline__ void accumulate_tile_4x4(const float (&a)[kDepth][kPitch], const float (&b)[kDepth][kPitch],
                                                    int ty, int tx, float (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kDepth; ++kk) {
    float av[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) av[i] = a[kk][ty * 4 + i];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = b[kk][tx * 4 + j];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// Stores the thread's 4 x 4 outputs at C[first_row + i, first_col + j] (row-major, `cols` wide),
// skipping those past rows x cols.
__device__ __forceinline__ void store_tile_4x4(float* c, int64_t rows, int64_t cols, int64_t first_row,
                                               int64_t first_col, const float (&acc)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = first_row + i;
    if (row >= rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = first_col + j;
      if (col < cols) c[row * cols + col] = acc[i][j];
    }
  }
}

}  // namespace lamina::ops::cuda
