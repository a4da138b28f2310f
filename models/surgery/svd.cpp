// Exact and randomized truncated SVD on Eigen (svd.h).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized inside Eigen's GEMM and SVD (the
// known false positive that CMakeLists.txt silences for ops/cpu/matmul.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "models/surgery/svd.h"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <algorithm>
#include <cmath>

#include "tensor/error.h"
#include "tensor/rng.h"

namespace lamina::surgery {
namespace {

// An orthonormal basis of the columns of `y` (which has no more columns than rows): the thin Q of
// its Householder QR.
Matrix orthonormal_columns(const Matrix& y) {
  Eigen::HouseholderQR<Matrix> qr(y);
  return qr.householderQ() * Matrix::Identity(y.rows(), y.cols());
}

Svd truncate(Svd svd, int64_t rank) {
  const int64_t k = std::min<int64_t>(rank, svd.S.size());
  svd.U = svd.U.leftCols(k).eval();
  svd.S = svd.S.head(k).eval();
  svd.V = svd.V.leftCols(k).eval();
  return svd;
}

}  // namespace

Matrix Svd::reconstruct() const { return U * S.asDiagonal() * V.transpose(); }

const char* svd_method_name(SvdMethod method) {
  switch (method) {
    case SvdMethod::automatic: return "auto";
    case SvdMethod::exact: return "exact";
    case SvdMethod::randomized: return "randomized";
  }
  return "?";
}

SvdMethod parse_svd_method(const std::string& text, const std::string& what) {
  if (text == "auto") return SvdMethod::automatic;
  if (text == "exact") return SvdMethod::exact;
  if (text == "randomized") return SvdMethod::randomized;
  throw Error(str_cat(what, ": unknown SVD method '", text, "' (auto, exact or randomized)"));
}

bool prefer_randomized(int64_t rows, int64_t columns, int64_t rank, const SvdOptions& options) {
  const int64_t smaller = std::min(rows, columns);
  return smaller > 128 && 4 * (rank + options.oversampling) <= smaller;
}

Svd exact_svd(const Matrix& a) {
  LAMINA_CHECK(a.rows() > 0 && a.cols() > 0, "exact_svd: empty matrix");
  // BDCSVD falls back to Jacobi for small matrices itself.
  Eigen::BDCSVD<Matrix> svd(a, Eigen::ComputeThinU | Eigen::ComputeThinV);
  LAMINA_CHECK(svd.info() == Eigen::Success, "exact_svd: the SVD of a ", a.rows(), "x", a.cols(),
               " matrix did not converge (non-finite entries?)");
  return Svd{svd.matrixU(), svd.singularValues(), svd.matrixV()};
}

Svd randomized_svd(const Matrix& a, int64_t rank, const SvdOptions& options) {
  LAMINA_CHECK(a.rows() > 0 && a.cols() > 0, "randomized_svd: empty matrix");
  LAMINA_CHECK(rank > 0, "randomized_svd: rank must be positive, got ", rank);
  LAMINA_CHECK(options.oversampling >= 0 && options.power_iterations >= 0,
               "randomized_svd: oversampling and power_iterations must not be negative");
  LAMINA_CHECK(a.allFinite(), "randomized_svd: the matrix has non-finite entries");
  const int64_t smaller = std::min<int64_t>(a.rows(), a.cols());
  const int64_t k = std::min(rank, smaller);
  const int64_t sketch = std::min(k + options.oversampling, smaller);
  Matrix gaussian(a.cols(), sketch);
  for (int64_t i = 0; i < gaussian.size(); ++i) gaussian.data()[i] = standard_normal(options.seed, 0, uint64_t(i));
  Matrix q = orthonormal_columns(a * gaussian);
  for (int64_t iteration = 0; iteration < options.power_iterations; ++iteration) {
    // Re-orthonormalising after each product keeps the directions of small singular values,
    // which (A A^T)^q would otherwise drown in round-off.
    const Matrix z = orthonormal_columns(a.transpose() * q);
    q = orthonormal_columns(a * z);
  }
  const Matrix small = q.transpose() * a;  // [sketch, n]
  Svd inner = exact_svd(small);
  inner.U = (q * inner.U).eval();
  return truncate(std::move(inner), k);
}

Svd truncated_svd(const Matrix& a, int64_t rank, const SvdOptions& options) {
  LAMINA_CHECK(rank > 0, "truncated_svd: rank must be positive, got ", rank);
  const bool randomized = options.method == SvdMethod::randomized ||
                          (options.method == SvdMethod::automatic && prefer_randomized(a.rows(), a.cols(), rank, options));
  return randomized ? randomized_svd(a, rank, options) : truncate(exact_svd(a), rank);
}

int64_t rank_for_energy(const Vector& singular_values, double total_energy, double fraction) {
  LAMINA_CHECK(fraction > 0 && fraction <= 1, "rank_for_energy: the energy fraction must be in (0, 1], got ", fraction);
  if (singular_values.size() == 0 || total_energy <= 0) return 1;
  const double goal = fraction * total_energy;
  double sum = 0;
  for (int64_t k = 0; k < singular_values.size(); ++k) {
    sum += singular_values[k] * singular_values[k];
    // A relative slack, so that fraction 1 is reached despite round-off in the total.
    if (sum >= goal * (1 - 1e-12)) return k + 1;
  }
  return singular_values.size();
}

int64_t rank_for_energy(const Vector& singular_values, double fraction) {
  return rank_for_energy(singular_values, singular_values.squaredNorm(), fraction);
}

double captured_energy(const Vector& singular_values, int64_t rank, double total_energy) {
  if (total_energy <= 0) return 1;
  const int64_t k = std::min<int64_t>(rank, singular_values.size());
  return std::min(1.0, singular_values.head(k).squaredNorm() / total_energy);
}

Matrix to_matrix(const Tensor& tensor) {
  LAMINA_CHECK(tensor.dim() == 2, "to_matrix: expected a 2-D tensor, got shape ", shape_str(tensor.shape()));
  const Tensor values = tensor.to(DType::f32).contiguous();
  Matrix out(values.shape()[0], values.shape()[1]);
  const float* data = values.data<float>();
  for (int64_t i = 0; i < out.size(); ++i) out.data()[i] = data[i];
  return out;
}

Tensor to_tensor(const Matrix& matrix, DType dtype) {
  Tensor out = Tensor::empty({matrix.rows(), matrix.cols()});
  float* data = out.data<float>();
  for (int64_t i = 0; i < matrix.size(); ++i) data[i] = float(matrix.data()[i]);
  return dtype == DType::f32 ? out : out.to(dtype);
}

double standard_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  // Four words per value: two uniforms of 53 bits. The stream is folded into the Philox key (a
  // golden-ratio multiple keeps nearby streams apart), so each stream starts at counter 0.
  const uint64_t key = seed ^ (stream * 0x9E3779B97F4A7C15ull);
  const double u1 = uniform53_from_words(philox_word(key, 0, 4 * index), philox_word(key, 0, 4 * index + 1));
  const double u2 = uniform53_from_words(philox_word(key, 0, 4 * index + 2), philox_word(key, 0, 4 * index + 3));
  constexpr double kTwoPi = 6.283185307179586;
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(kTwoPi * u2);  // 1 - u1 is in (0, 1]
}

}  // namespace lamina::surgery
