// The SVD tools of models/surgery: exact and randomized truncated SVD against matrices whose
// decomposition is known, the energy rule on a hand-made spectrum, LoRA factors (full rank gives
// the difference back, rank r the best rank-r error) and CycleQD's mutation (sigma 0 is the
// identity; sigma > 0 keeps the singular vectors and scales the values by the seeded factors).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's false positive inside Eigen's AVX-512 GEMM
#endif
#include <Eigen/QR>
#include <cmath>

#include "helpers.h"
#include "models/surgery/extract.h"
#include "models/surgery/mutate.h"
#include "models/surgery/svd.h"

using namespace lamina;
using namespace lamina::surgery;

namespace {

// A rows x columns matrix of standard normals from Philox stream `stream`.
Matrix gaussian_matrix(int64_t rows, int64_t columns, uint64_t stream) {
  Matrix out(rows, columns);
  for (int64_t i = 0; i < out.size(); ++i) out.data()[i] = standard_normal(7, stream, uint64_t(i));
  return out;
}

double relative_error(const Matrix& actual, const Matrix& expected) {
  return (actual - expected).norm() / expected.norm();
}

// A matrix with orthonormal columns (Q of a random matrix).
Matrix random_orthonormal(int64_t rows, int64_t columns, uint64_t stream) {
  const Matrix g = gaussian_matrix(rows, columns, stream);
  Eigen::HouseholderQR<Matrix> qr(g);
  return qr.householderQ() * Matrix::Identity(rows, columns);
}

}  // namespace

TEST_CASE("exact SVD of a random f32 matrix reconstructs it, with orthonormal factors and sorted values") {
  // Through f32, as model weights come.
  const Matrix a = to_matrix(to_tensor(gaussian_matrix(37, 23, 1)));
  const Svd svd = exact_svd(a);
  REQUIRE(svd.S.size() == 23);
  CHECK(svd.U.rows() == 37);
  CHECK(svd.V.rows() == 23);
  CHECK(relative_error(svd.reconstruct(), a) < 1e-5);
  CHECK((svd.U.transpose() * svd.U - Matrix::Identity(23, 23)).norm() < 1e-10);
  CHECK((svd.V.transpose() * svd.V - Matrix::Identity(23, 23)).norm() < 1e-10);
  for (int64_t i = 1; i < svd.S.size(); ++i) CHECK(svd.S[i] <= svd.S[i - 1]);
  // A truncation keeps the leading triplets.
  const Svd top = truncated_svd(a, 5, {.method = SvdMethod::exact});
  CHECK(top.S.size() == 5);
  CHECK((top.S - svd.S.head(5)).norm() == 0);
}

TEST_CASE("randomized SVD recovers a matrix of known rank and its singular values") {
  // A B with A [300, 6], B [6, 220]: rank exactly 6, large enough that `auto` picks the randomized SVD.
  const Matrix a = gaussian_matrix(300, 6, 2) * gaussian_matrix(6, 220, 3);
  const SvdOptions options{.method = SvdMethod::automatic, .oversampling = 10, .power_iterations = 2, .seed = 5};
  REQUIRE(prefer_randomized(300, 220, 6, options));
  const Svd randomized = truncated_svd(a, 6, options);
  REQUIRE(randomized.S.size() == 6);
  CHECK(relative_error(randomized.reconstruct(), a) < 1e-4);
  const Svd exact = exact_svd(a);
  // The stated tolerance: the top values agree to 1e-6 relative (rank k is captured exactly).
  for (int64_t i = 0; i < 6; ++i) CHECK(std::abs(randomized.S[i] - exact.S[i]) <= 1e-6 * exact.S[i]);
  CHECK(exact.S[6] < 1e-9 * exact.S[0]);  // the matrix is rank 6 indeed

  // On a full-rank matrix with a decaying spectrum, the power iterations make the top values
  // accurate: 1e-3 relative with q = 2 where the spectrum decays by 0.9 per index.
  const int64_t n = 200;
  Vector spectrum(n);
  for (int64_t i = 0; i < n; ++i) spectrum[i] = 10 * std::pow(0.9, double(i));
  const Matrix u = random_orthonormal(260, n, 4), v = random_orthonormal(n, n, 6);
  const Matrix decaying = u * spectrum.asDiagonal() * v.transpose();
  const Svd top = randomized_svd(decaying, 8, options);
  for (int64_t i = 0; i < 8; ++i) CHECK(std::abs(top.S[i] - spectrum[i]) <= 1e-3 * spectrum[i]);
  // The seed makes it reproducible.
  CHECK((randomized_svd(decaying, 8, options).U - top.U).norm() == 0);
}

TEST_CASE("rank_for_energy picks the smallest rank reaching the fraction") {
  Vector spectrum(4);
  spectrum << 4, 2, 1, 1;  // squares 16, 4, 1, 1: total 22
  CHECK(rank_for_energy(spectrum, 0.70) == 1);  // 16/22 = 0.727
  CHECK(rank_for_energy(spectrum, 0.75) == 2);  // 20/22 = 0.909
  CHECK(rank_for_energy(spectrum, 0.91) == 3);  // 21/22 = 0.955
  CHECK(rank_for_energy(spectrum, 0.96) == 4);
  CHECK(rank_for_energy(spectrum, 1.0) == 4);
  // A truncated spectrum that does not reach the goal of a larger total: all of it.
  CHECK(rank_for_energy(spectrum, 100, 0.5) == 4);
  CHECK(captured_energy(spectrum, 2, 22) == doctest::Approx(20.0 / 22));
  CHECK_THROWS_WITH_AS(rank_for_energy(spectrum, 1.5), doctest::Contains("(0, 1]"), Error);
}

TEST_CASE("LoRA factors: full rank gives the difference back, rank r the best rank-r error") {
  const Matrix delta = to_matrix(to_tensor(gaussian_matrix(24, 16, 8)));
  const Svd exact = exact_svd(delta);
  const LoraFactors full = lora_factors(delta, 16, 0, {});
  CHECK(full.rank == 16);
  CHECK(full.lora_B.shape() == Shape{24, 16});
  CHECK(full.lora_A.shape() == Shape{16, 16});
  CHECK(full.captured_energy == doctest::Approx(1.0));
  const Matrix product = to_matrix(full.lora_B) * to_matrix(full.lora_A);
  CHECK(relative_error(product, delta) < 1e-5);
  // A rank above min(m, n) is clamped.
  CHECK(lora_factors(delta, 40, 0, {}).rank == 16);

  for (int64_t r : {1, 4, 9}) {
    CAPTURE(r);
    const LoraFactors factors = lora_factors(delta, r, 0, {});
    const Matrix approximation = to_matrix(factors.lora_B) * to_matrix(factors.lora_A);
    const double tail = exact.S.tail(16 - r).squaredNorm();
    CHECK((delta - approximation).norm() == doctest::Approx(std::sqrt(tail)).epsilon(1e-5));
    CHECK(factors.captured_energy == doctest::Approx(1 - tail / delta.squaredNorm()).epsilon(1e-9));
    // B and A share sqrt(S): their column and row norms are equal.
    for (int64_t i = 0; i < r; ++i)
      CHECK(to_matrix(factors.lora_B).col(i).norm() == doctest::Approx(to_matrix(factors.lora_A).row(i).norm()).epsilon(1e-5));
  }
  // The energy rule picks the rank of the spectrum.
  const double goal = 0.8;
  const LoraFactors by_energy = lora_factors(delta, 16, goal, {});
  CHECK(by_energy.rank == rank_for_energy(exact.S, goal));
  CHECK(by_energy.captured_energy >= goal);
}

TEST_CASE("SVD mutation: sigma 0 is the identity, sigma > 0 keeps U and V and scales S by the seeded factors") {
  const Matrix w = to_matrix(to_tensor(gaussian_matrix(20, 12, 9)));
  CHECK((mutate_matrix(w, 0, 3, 11, 0) - w).norm() == 0);
  const Svd svd = exact_svd(w);
  const double sigma = 0.2;
  const Matrix mutated = mutate_matrix(w, sigma, 3, 11, 0);
  // U^T W' V is diagonal with S * (1 + sigma * eps): the singular vectors are kept.
  const Matrix core = svd.U.transpose() * mutated * svd.V;
  Vector expected(12);
  for (int64_t i = 0; i < 12; ++i) expected[i] = svd.S[i] * (1 + sigma * standard_normal(3, 11, uint64_t(i)));
  CHECK((core.diagonal() - expected).norm() < 1e-10 * expected.norm());
  Matrix off_diagonal = core;
  off_diagonal.diagonal().setZero();
  CHECK(off_diagonal.norm() < 1e-10 * expected.norm());
  CHECK((mutated - w).norm() > 1e-2 * w.norm());  // it did change
  // Seeded: the same seed and stream give the same matrix, another seed another.
  CHECK((mutate_matrix(w, sigma, 3, 11, 0) - mutated).norm() == 0);
  CHECK((mutate_matrix(w, sigma, 4, 11, 0) - mutated).norm() > 0);

  // Rank-truncated: only the top 3 directions move; the rest of W is untouched.
  const Matrix top = mutate_matrix(w, sigma, 3, 11, 3);
  const Matrix top_core = svd.U.transpose() * top * svd.V;
  for (int64_t i = 0; i < 12; ++i) {
    CAPTURE(i);
    CHECK(top_core(i, i) == doctest::Approx(i < 3 ? expected[i] : svd.S[i]).epsilon(1e-9));
  }
}

TEST_CASE("to_matrix and to_tensor round-trip f32 and read bf16") {
  Generator generator(3);
  const Tensor values = testing::random_tensor({5, 7}, DType::f32, generator);
  CHECK(to_tensor(to_matrix(values)).to_vector<float>() == values.to_vector<float>());
  const Tensor half = values.to(DType::bf16);
  CHECK(to_tensor(to_matrix(half), DType::bf16).to_vector<float>() == half.to_vector<float>());
  CHECK_THROWS_WITH_AS(to_matrix(Tensor::empty({3})), doctest::Contains("2-D"), Error);
}
