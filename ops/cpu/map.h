// Elementwise maps over strided operands: out[i] = f(in1[i], ...), for 1 to 3 inputs.
// Inputs must already be broadcast to out's shape (views with stride 0 where broadcast).
// f receives and returns compute types (f32 for bf16/f16); results are converted to Out.
#pragma once

#include <cmath>
#include <type_traits>

#include "ops/common/convert.h"
#include "ops/cpu/loops.h"
#include "tensor/tensor.h"

namespace lamina::ops::cpu {

template <typename T>
inline compute_t<T> load(const T& value) {
  return compute_t<T>(value);
}

template <typename Out, typename In, typename F>
void map1(const Tensor& out, const Tensor& in, F f) {
  Out* out_base = static_cast<Out*>(out.raw_data());
  const In* in_base = static_cast<const In*>(in.raw_data());
  for_each_run<2>(out.shape(), {out.strides(), in.strides()}, [&](const auto& at, int64_t n, const auto& step) {
    Out* o = out_base + at[0];
    const In* x = in_base + at[1];
    if (step[0] == 1 && step[1] == 1) {
      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(f(load(x[i])));
    } else {
      for (int64_t i = 0; i < n; ++i) o[i * step[0]] = convert<Out>(f(load(x[i * step[1]])));
    }
  });
}

template <typename Out, typename A, typename B, typename F>
void map2(const Tensor& out, const Tensor& a, const Tensor& b, F f) {
  Out* out_base = static_cast<Out*>(out.raw_data());
  const A* a_base = static_cast<const A*>(a.raw_data());
  const B* b_base = static_cast<const B*>(b.raw_data());
  for_each_run<3>(out.shape(), {out.strides(), a.strides(), b.strides()},
                  [&](const auto& at, int64_t n, const auto& step) {
                    Out* o = out_base + at[0];
                    const A* x = a_base + at[1];
                    const B* y = b_base + at[2];
                    if (step[0] == 1 && step[1] == 1 && step[2] == 1) {
                      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(f(load(x[i]), load(y[i])));
                    } else if (step[0] == 1 && step[1] == 1 && step[2] == 0) {
                      const auto y0 = load(y[0]);
                      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(f(load(x[i]), y0));
                    } else if (step[0] == 1 && step[1] == 0 && step[2] == 1) {
                      const auto x0 = load(x[0]);
                      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(f(x0, load(y[i])));
                    } else {
                      for (int64_t i = 0; i < n; ++i)
                        o[i * step[0]] = convert<Out>(f(load(x[i * step[1]]), load(y[i * step[2]])));
                    }
                  });
}

template <typename Out, typename A, typename B, typename C, typename F>
void map3(const Tensor& out, const Tensor& a, const Tensor& b, const Tensor& c, F f) {
  Out* out_base = static_cast<Out*>(out.raw_data());
  const A* a_base = static_cast<const A*>(a.raw_data());
  const B* b_base = static_cast<const B*>(b.raw_data());
  const C* c_base = static_cast<const C*>(c.raw_data());
  for_each_run<4>(out.shape(), {out.strides(), a.strides(), b.strides(), c.strides()},
                  [&](const auto& at, int64_t n, const auto& step) {
                    Out* o = out_base + at[0];
                    const A* x = a_base + at[1];
                    const B* y = b_base + at[2];
                    const C* z = c_base + at[3];
                    if (step[0] == 1 && step[1] == 1 && step[2] == 1 && step[3] == 1) {
                      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(f(load(x[i]), load(y[i]), load(z[i])));
                    } else {
                      for (int64_t i = 0; i < n; ++i)
                        o[i * step[0]] = convert<Out>(
                            f(load(x[i * step[1]]), load(y[i * step[2]]), load(z[i * step[3]])));
                    }
                  });
}

}  // namespace lamina::ops::cpu
