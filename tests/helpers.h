// Shared test utilities: random inputs, non-contiguous copies, and tolerance checks that
// report the worst element.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "ops/ops.h"
#include "tensor/view.h"

namespace lamina::testing {

struct Tolerance {
  double atol;
  double rtol;
};

// Per-dtype tolerances for results compared with an f64 reference of the same inputs.
inline Tolerance tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::f64: return {1e-12, 1e-10};
    case DType::f32: return {1e-5, 1e-5};
    case DType::bf16: return {2e-2, 2e-2};
    case DType::f16: return {2e-3, 2e-3};
    default: return {0, 0};
  }
}

struct Comparison {
  bool ok = true;
  double max_abs = 0, max_rel = 0;
  std::string detail;
};

inline Comparison compare(const Tensor& actual, const Tensor& expected, Tolerance tol) {
  Comparison c;
  if (actual.shape() != expected.shape()) {
    c.ok = false;
    c.detail = str_cat("shape ", actual.shape(), " != expected ", expected.shape());
    return c;
  }
  const std::vector<double> a = actual.to_vector<double>(), e = expected.to_vector<double>();
  double worst = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool both_nan = std::isnan(a[i]) && std::isnan(e[i]);
    const bool same_inf = std::isinf(a[i]) && a[i] == e[i];
    if (both_nan || same_inf) continue;
    const double abs_err = std::abs(a[i] - e[i]);
    const double rel_err = abs_err / std::max(std::abs(e[i]), 1e-30);
    c.max_abs = std::max(c.max_abs, abs_err);
    c.max_rel = std::max(c.max_rel, std::min(rel_err, abs_err));
    // One side infinite (or NaN) and the other not: no tolerance covers it (and inf - inf
    // would make the excess NaN, which compares as "within tolerance").
    const bool unbounded = !std::isfinite(abs_err);
    const double excess = abs_err - (tol.atol + tol.rtol * std::abs(e[i]));
    if (excess > 0 || unbounded) {
      c.ok = false;
      if (excess > worst || unbounded) {
        worst = unbounded ? 1e300 : excess;
        c.detail = str_cat("at flat index ", i, ": got ", a[i], ", expected ", e[i]);
      }
    }
  }
  return c;
}

// CHECK that `actual` matches `expected` within tol; on failure prints the max errors and the
// worst element.
#define CHECK_CLOSE(actual, expected, tol)                                                          \
  do {                                                                                             \
    const ::lamina::testing::Comparison cmp_ = ::lamina::testing::compare((actual), (expected), (tol)); \
    INFO("max abs err " << cmp_.max_abs << ", max rel err " << cmp_.max_rel << "; " << cmp_.detail); \
    CHECK(cmp_.ok);                                                                                \
  } while (0)

inline Tensor random_tensor(const Shape& shape, DType dtype, Generator& gen, double low = -1.0, double high = 1.0) {
  if (is_floating(dtype)) return uniform(shape, low, high, gen, dtype);
  return ops::cast(randint(int64_t(low), int64_t(high), shape, gen, DType::i64), dtype);
}

// The same values as t, in a view whose last dim has stride 2 (so not contiguous).
inline Tensor noncontiguous(const Tensor& t) {
  Shape wide = t.shape();
  if (wide.empty()) return t;
  wide.back() *= 2;
  Tensor storage = zeros(wide, t.dtype());
  Tensor view = views::slice(storage, -1, 0, wide.back(), 2);
  ops::copy_(view, t);
  return view;
}

// The same values as t, held transposed in memory and viewed back (dims 0 and last swapped).
inline Tensor transposed_layout(const Tensor& t) {
  if (t.dim() < 2) return noncontiguous(t);
  Tensor flipped = ops::contiguous(views::transpose(t, 0, -1));
  return views::transpose(flipped, 0, -1);
}

// One entry of the shared test assets (LAMINA_ASSETS_DIR), e.g. "stories260k". Only cases of the
// "assets" doctest suite call it: ctest runs that suite as its own entry, which test_main.cpp
// reports as skipped as a whole when the assets are absent, so a missing asset here is an
// error of the checkout and fails the case instead of letting it pass without checking anything.
inline std::filesystem::path assets_dir(const std::string& name) {
  const std::filesystem::path path = std::filesystem::path(LAMINA_ASSETS_DIR) / name;
  REQUIRE_MESSAGE(std::filesystem::exists(path), "test asset not found: " << path.string());
  return path;
}

// Whether two tensors hold the same bytes (same dtype and shape): "bit-identical" in the tests.
inline bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const Tensor left = a.contiguous(), right = b.contiguous();
  return std::memcmp(left.raw_data(), right.raw_data(), left.nbytes()) == 0;
}

// The message of the lamina::Error that `make()` throws; empty when it throws none.
template <typename Function>
std::string error_of(Function make) {
  try {
    make();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

}  // namespace lamina::testing
