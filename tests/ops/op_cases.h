// Inputs for the op tests: seeded random shapes, the same values in other memory layouts, and
// small f64 helpers that build expected values without calling the op under test.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "helpers.h"
#include "ops/reference.h"

namespace lamina::testing {

inline constexpr DType kFloatDTypes[] = {DType::f32, DType::f64, DType::bf16, DType::f16};
inline constexpr DType kIntDTypes[] = {DType::i32, DType::i64};

inline Tolerance scaled(Tolerance t, double factor) { return {t.atol * factor, t.rtol * factor}; }

// Tolerances of a CUDA result against the CPU result on the same inputs. Both compute in f32 (f64
// for f64) with different but equally accurate library functions and summation orders, so f32
// and f64 agree to a few ulps; 16-bit results are rounded from nearly equal f32 values and agree
// to within one unit in the last place.
inline Tolerance elementwise_tolerance(DType dtype) {
  switch (dtype) {
    case DType::f32: return {1e-6, 1e-5};
    case DType::f64: return {1e-13, 1e-12};
    case DType::bf16: return {1e-5, 1.0 / 128};  // one bf16 ulp is 2^-8 relative
    case DType::f16: return {1e-6, 1.0 / 1024};  // one f16 ulp is 2^-11 relative
    default: return {0, 0};
  }
}

// `count` integers drawn uniformly from [low, high).
inline std::vector<int64_t> random_ints(Generator& gen, int64_t count, int64_t low, int64_t high) {
  return randint(low, high, {count}, gen).to_vector<int64_t>();
}

// A shape of `rank` dims, each in [1, max_size].
inline Shape random_shape(Generator& gen, int64_t rank, int64_t max_size = 7) {
  return Shape(random_ints(gen, rank, 1, max_size + 1));
}

// Random shapes of rank 0 to 4 plus the awkward ones: size-1 dims and empty (size-0) dims.
inline std::vector<Shape> test_shapes(Generator& gen) {
  std::vector<Shape> shapes = {{}, {1}, {0}, {1, 1}, {5, 1, 3}, {3, 0, 2}, {1, 7}};
  for (int64_t rank = 1; rank <= 4; ++rank) shapes.push_back(random_shape(gen, rank));
  shapes.push_back(Shape(random_ints(gen, 3, 2, 8)));  // no size-1 dim for a kernel to skip
  return shapes;
}

// Names as std::string: doctest's INFO prints a bare const char* as a pointer.
inline std::string name(DType dtype) { return dtype_name(dtype); }
inline std::string name(ops::UnaryOp op) { return ops::unary_op_name(op); }
inline std::string name(ops::BinaryOp op) { return ops::binary_op_name(op); }

// Where the same values can live in memory.
enum class Layout { contiguous, strided, transposed, offset_slice };
inline constexpr Layout kLayouts[] = {Layout::contiguous, Layout::strided, Layout::transposed,
                                      Layout::offset_slice};

inline std::string name(Layout layout) {
  switch (layout) {
    case Layout::contiguous: return "contiguous";
    case Layout::strided: return "strided";
    case Layout::transposed: return "transposed";
    case Layout::offset_slice: return "offset_slice";
  }
  return "?";
}

// The values of t in the given layout. offset_slice puts them at a non-zero storage offset,
// between rows of -7 that a kernel ignoring the offset would read.
inline Tensor in_layout(const Tensor& t, Layout layout) {
  if (t.dim() == 0) return t;
  switch (layout) {
    case Layout::contiguous: return t;
    case Layout::strided: return noncontiguous(t);
    case Layout::transposed: return transposed_layout(t);
    case Layout::offset_slice: {
      Shape padded = t.shape();
      padded[0] += 2;
      const Tensor storage = full(padded, -7.0, t.dtype());
      const Tensor view = views::slice(storage, 0, 1, 1 + t.size(0));
      ops::copy_(view, t);
      return view;
    }
  }
  return t;
}

// f64 copy of t with f applied to every value (computed here, not by lamina ops).
inline Tensor map_values(const Tensor& t, const std::function<double(double)>& f, DType dtype = DType::f64) {
  std::vector<double> values = t.to_vector<double>();
  for (double& v : values) v = f(v);
  return Tensor::from_vector(values, t.shape(), dtype);
}

inline Tensor scalar64(double value) { return Tensor::scalar(value, DType::f64); }

// Random values in [low, high] with a random sign: keeps inputs away from zero (for 1/x and
// for kinks such as relu and abs). The result is rounded to dtype like any input.
inline Tensor signed_magnitudes(const Shape& shape, DType dtype, Generator& gen, double low, double high) {
  const std::vector<double> magnitude = uniform(shape, low, high, gen, DType::f64).to_vector<double>();
  const std::vector<int64_t> sign = random_ints(gen, int64_t(magnitude.size()), 0, 2);
  std::vector<double> values(magnitude.size());
  for (size_t i = 0; i < values.size(); ++i) values[i] = sign[i] ? magnitude[i] : -magnitude[i];
  return Tensor::from_vector(values, shape, dtype);
}

// Small integer values stored in `dtype`: exact in every dtype and full of ties.
inline Tensor integer_values(const Shape& shape, DType dtype, Generator& gen, int64_t low, int64_t high) {
  const std::vector<int64_t> values = random_ints(gen, shape_numel(shape), low, high);
  return Tensor::from_vector(values, shape, dtype);
}

// Unary op inputs in the domain where the op is defined and well conditioned.
struct UnaryCase {
  ops::UnaryOp op;
  double low, high;
  bool signed_magnitude;  // [low, high] is |x|, with a random sign (keeps x away from 0 and kinks)
  bool accepts_integers;
};
inline constexpr UnaryCase kUnaryCases[] = {
    {ops::UnaryOp::neg, -3, 3, false, true},        {ops::UnaryOp::exp, -3, 3, false, false},
    {ops::UnaryOp::log, 0.05, 4, false, false},     {ops::UnaryOp::sqrt, 0.01, 4, false, false},
    {ops::UnaryOp::rsqrt, 0.1, 4, false, false},    {ops::UnaryOp::abs, 0.05, 3, true, true},
    {ops::UnaryOp::square, -3, 3, false, true},     {ops::UnaryOp::reciprocal, 0.2, 3, true, false},
    {ops::UnaryOp::sigmoid, -6, 6, false, false},   {ops::UnaryOp::silu, -6, 6, false, false},
    {ops::UnaryOp::tanh, -3, 3, false, false},      {ops::UnaryOp::relu, 0.05, 3, true, false},
    {ops::UnaryOp::gelu, -4, 4, false, false},      {ops::UnaryOp::softplus, -8, 8, false, false},
    {ops::UnaryOp::log_sigmoid, -8, 8, false, false},
};

inline Tensor unary_input(const UnaryCase& c, const Shape& shape, DType dtype, Generator& gen) {
  if (!is_floating(dtype)) return integer_values(shape, dtype, gen, -50, 51);
  return c.signed_magnitude ? signed_magnitudes(shape, dtype, gen, c.low, c.high)
                            : random_tensor(shape, dtype, gen, c.low, c.high);
}

// The broadcast adjoint in f64: sums t over the dims that broadcasting `shape` added.
inline Tensor reference_sum_to(const Tensor& t, const Shape& shape) {
  const size_t lead = size_t(t.dim()) - shape.size();
  Shape dims;
  for (size_t d = 0; d < size_t(t.dim()); ++d)
    if (d < lead || (shape[d - lead] == 1 && t.size(int64_t(d)) != 1)) dims.push_back(int64_t(d));
  const Tensor summed = dims.empty() ? t : ops::reference::reduce_sum(t, dims, true);
  return Tensor::from_vector(summed.to_vector<double>(), shape, DType::f64);
}

// A shape that broadcasts to `shape`: some dims set to 1 and possibly fewer leading dims.
inline Shape broadcastable_to(const Shape& shape, Generator& gen) {
  const std::vector<int64_t> coin = random_ints(gen, int64_t(shape.size()) + 1, 0, 2);
  Shape out;
  const size_t drop = coin.back() && !shape.empty() ? 1 : 0;
  for (size_t d = drop; d < shape.size(); ++d) out.push_back(coin[d] ? 1 : shape[d]);
  return out;
}

}  // namespace lamina::testing
