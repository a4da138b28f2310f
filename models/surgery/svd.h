// Truncated singular value decompositions of weight matrices, for model surgery (LoRA extraction,
// CycleQD's SVD mutation): A ~ U diag(S) V^T with U [m, k], S [k] (descending), V [n, k].
//
// Small matrices, or ranks close to the full one, go to Eigen's exact divide-and-conquer SVD. Large
// matrices with a small rank use the randomized SVD of Halko, Martinsson and Tropp (2011): Y = A G
// for a Gaussian G of rank + oversampling columns, q power iterations (A^T, then A) with a QR
// after each product so that the small singular values are not lost to round-off, Q = qr(Y), and
// the exact SVD of the small B = Q^T A. Its error beyond the requested rank shrinks with q; the
// sketch is drawn from a Philox stream, so a seed gives the same result on every machine.
//
// The math is in f64: a weight matrix of a small model is a few MiB as doubles, and the
// difference of two f32 or bf16 weights (what LoRA extraction decomposes) loses little then.
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "tensor/tensor.h"

namespace lamina::surgery {

using Matrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXd;

struct Svd {
  Matrix U;  // [m, k], orthonormal columns
  Vector S;  // [k], descending, non-negative
  Matrix V;  // [n, k], orthonormal columns
  // U diag(S) V^T.
  Matrix reconstruct() const;
};

enum class SvdMethod {
  automatic,   // exact for small matrices or large ranks, randomized otherwise (prefer_randomized)
  exact,       // Eigen's BDCSVD, then truncated
  randomized,  // Halko-Martinsson-Tropp
};
const char* svd_method_name(SvdMethod method);
// "auto", "exact" or "randomized"; `what` names the source in the error.
SvdMethod parse_svd_method(const std::string& text, const std::string& what);

struct SvdOptions {
  SvdMethod method = SvdMethod::automatic;
  int64_t oversampling = 10;     // extra sketch columns beyond the rank
  int64_t power_iterations = 2;  // q
  uint64_t seed = 0;             // the Gaussian sketch's Philox seed
};

// Whether `automatic` picks the randomized SVD for an [rows, columns] matrix and rank `rank`:
// when the sketch (rank + oversampling) is at most a quarter of min(rows, columns) and that
// minimum is over 128, so that it is both cheaper and not a near-full decomposition.
bool prefer_randomized(int64_t rows, int64_t columns, int64_t rank, const SvdOptions& options);

// The full thin SVD (k = min(m, n)) by Eigen's BDCSVD.
Svd exact_svd(const Matrix& a);

// The top `rank` singular triplets by the randomized SVD; rank is clamped to min(m, n).
Svd randomized_svd(const Matrix& a, int64_t rank, const SvdOptions& options = {});

// The top `rank` triplets (clamped to min(m, n)) by the method `options` picks.
Svd truncated_svd(const Matrix& a, int64_t rank, const SvdOptions& options = {});

// The smallest k whose leading squared singular values hold at least `fraction` (in (0, 1]) of
// `total_energy` (the sum of all squared singular values, ||A||_F^2); when `singular_values` is
// a truncated spectrum that does not reach it, its whole length. A zero spectrum gives 1.
int64_t rank_for_energy(const Vector& singular_values, double total_energy, double fraction);
// The same with the total taken as the sum over `singular_values` (a complete spectrum).
int64_t rank_for_energy(const Vector& singular_values, double fraction);

// sum S[0..rank)^2 / total_energy (1 when total_energy is 0: nothing was lost).
double captured_energy(const Vector& singular_values, int64_t rank, double total_energy);

// A 2-D floating tensor of any dtype as an f64 matrix, and an f64 matrix as an f32 tensor.
Matrix to_matrix(const Tensor& tensor);
Tensor to_tensor(const Matrix& matrix, DType dtype = DType::f32);

// The i-th standard normal of Philox stream (seed, stream): Box-Muller over two 53-bit uniforms,
// so that a seed draws the same values on every platform.
double standard_normal(uint64_t seed, uint64_t stream, uint64_t index);

}  // namespace lamina::surgery
