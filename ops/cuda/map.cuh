// Elementwise maps over strided operands on the GPU: out[i] = f(in1[i], ...), for 1 to 3
// inputs, the counterpart of ops/cpu/map.h. Inputs arrive broadcast to out's shape (stride 0
// where broadcast); f takes and returns math values (f32 for bf16/f16), converted to Out as the
// CPU converts.
//
// Two kernels per map: a grid-stride loop over any strides (dims merged first, so contiguous
// operands index linearly), and, when every operand is contiguous and 16-byte aligned, a
// packed loop that moves 16 bytes per load (floating element types only: the bandwidth-bound
// cases).
#pragma once

#include "ops/cuda/common.cuh"

namespace lamina::ops::cuda {

template <typename T>
inline constexpr bool kFloating =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, bfloat16> || std::is_same_v<T, half>;

template <int N, typename F>
__global__ void strided_map_kernel(StridedLayout<N> layout, int64_t count, F f) {
  for (int64_t i = global_thread(); i < count; i += grid_threads()) {
    int64_t offsets[N];
    offsets_of(layout, i, offsets);
    f.at(offsets);
  }
}

// f.pack<V>(first) handles elements [first, first + V); f.one(i) a single element of the tail.
template <int V, typename F>
__global__ void packed_map_kernel(int64_t count, F f) {
  const int64_t packs = count / V;
  for (int64_t p = global_thread(); p < packs; p += grid_threads()) f.template pack<V>(p * V);
  const int64_t tail = packs * V + global_thread();
  if (tail < count) f.one(tail);
}

template <typename Out, typename In, typename F>
struct Map1 {
  Out* out;
  const In* in;
  F f;
  __device__ void at(const int64_t (&o)[2]) const { out[o[0]] = convert<Out>(f(load(in[o[1]]))); }
  __device__ void one(int64_t i) const { out[i] = convert<Out>(f(load(in[i]))); }
  template <int V>
  __device__ void pack(int64_t i) const {
    const Pack<In, V> x = load_pack<V>(in + i);
    Pack<Out, V> y;
#pragma unroll
    for (int v = 0; v < V; ++v) y.values[v] = convert<Out>(f(load(x.values[v])));
    store_pack<V>(out + i, y);
  }
};

template <typename Out, typename A, typename B, typename F>
struct Map2 {
  Out* out;
  const A* a;
  const B* b;
  F f;
  __device__ void at(const int64_t (&o)[3]) const { out[o[0]] = convert<Out>(f(load(a[o[1]]), load(b[o[2]]))); }
  __device__ void one(int64_t i) const { out[i] = convert<Out>(f(load(a[i]), load(b[i]))); }
  template <int V>
  __device__ void pack(int64_t i) const {
    const Pack<A, V> x = load_pack<V>(a + i);
    const Pack<B, V> y = load_pack<V>(b + i);
    Pack<Out, V> z;
#pragma unroll
    for (int v = 0; v < V; ++v) z.values[v] = convert<Out>(f(load(x.values[v]), load(y.values[v])));
    store_pack<V>(out + i, z);
  }
};

template <typename Out, typename A, typename B, typename C, typename F>
struct Map3 {
  Out* out;
  const A* a;
  const B* b;
  const C* c;
  F f;
  __device__ void at(const int64_t (&o)[4]) const {
    out[o[0]] = convert<Out>(f(load(a[o[1]]), load(b[o[2]]), load(c[o[3]])));
  }
  __device__ void one(int64_t i) const { out[i] = convert<Out>(f(load(a[i]), load(b[i]), load(c[i]))); }
  template <int V>
  __device__ void pack(int64_t i) const {
    const Pack<A, V> x = load_pack<V>(a + i);
    const Pack<B, V> y = load_pack<V>(b + i);
    const Pack<C, V> z = load_pack<V>(c + i);
    Pack<Out, V> w;
#pragma unroll
    for (int v = 0; v < V; ++v) w.values[v] = convert<Out>(f(load(x.values[v]), load(y.values[v]), load(z.values[v])));
    store_pack<V>(out + i, w);
  }
};

// Launches `map` over out's elements: packed when `packable` and every operand is contiguous
// and aligned to a pack, strided otherwise.
template <int V, int N, typename M>
void launch_map(const char* op, const Tensor& out, const std::array<const Tensor*, N>& operands, const M& map,
                bool packable) {
  const int64_t count = out.numel();
  if (count == 0) return;
  const int device = out.device().index;
  const cudaStream_t stream = stream_of(out);
  if constexpr (V > 1) {
    if (packable) {
      for (const Tensor* t : operands)
        packable = packable && t->is_contiguous() && aligned_to(t->raw_data(), size_t(V) * t->element_size());
    }
    if (packable) {
      packed_map_kernel<V><<<grid_for((count + V - 1) / V, device), kThreads, 0, stream>>>(count, map);
      ::lamina::cuda::check_cuda(cudaGetLastError(), op, __FILE__, __LINE__);
      return;
    }
  }
  std::array<Shape, N> strides;
  for (int k = 0; k < N; ++k) strides[size_t(k)] = operands[size_t(k)]->strides();
  const StridedLayout<N> layout = make_layout<N>(out.shape(), strides, op);
  strided_map_kernel<N><<<grid_for(count, device), kThreads, 0, stream>>>(layout, count, map);
  ::lamina::cuda::check_cuda(cudaGetLastError(), op, __FILE__, __LINE__);
}

// Elements per 16-byte pack for the widest of the element types; 1 (no packed kernel) unless
// they are all floating.
template <typename... Ts>
inline constexpr int kMapPack = (kFloating<Ts> && ...) ? std::min({kPack<Ts>...}) : 1;

template <typename Out, typename In, typename F>
void map1(const char* op, const Tensor& out, const Tensor& in, F f) {
  const Map1<Out, In, F> map{data_of<Out>(out), static_cast<const In*>(in.raw_data()), f};
  launch_map<kMapPack<Out, In>, 2>(op, out, {&out, &in}, map, true);
}

template <typename Out, typename A, typename B, typename F>
void map2(const char* op, const Tensor& out, const Tensor& a, const Tensor& b, F f) {
  const Map2<Out, A, B, F> map{data_of<Out>(out), static_cast<const A*>(a.raw_data()),
                               static_cast<const B*>(b.raw_data()), f};
  launch_map<kMapPack<Out, A, B>, 3>(op, out, {&out, &a, &b}, map, true);
}

template <typename Out, typename A, typename B, typename C, typename F>
void map3(const char* op, const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c, F f) {
  const Map3<Out, A, B, C, F> map{data_of<Out>(out), static_cast<const A*>(a.raw_data()),
                                  static_cast<const B*>(b.raw_data()), static_cast<const C*>(c.raw_data()), f};
  launch_map<kMapPack<Out, A, B, C>, 4>(op, out, {&out, &a, &b, &c}, map, true);
}

// Strided kernel only (for maps that are not bandwidth-critical: fewer instantiations).
template <typename Out, typename A, typename B, typename C, typename F>
void map3_strided(const char* op, const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c, F f) {
  const Map3<Out, A, B, C, F> map{data_of<Out>(out), static_cast<const A*>(a.raw_data()),
                                  static_cast<const B*>(b.raw_data()), static_cast<const C*>(c.raw_data()), f};
  launch_map<1, 4>(op, out, {&out, &a, &b, &c}, map, false);
}

}  // namespace lamina::ops::cuda
