// The fused neural-network ops: what a comparison with the f64 oracles does not check. Edge
// rows of softmax, the backward of repeated embedding ids, thread-count independence of
// rms_norm's weight gradient, the RoPE frequency tables and worked numbers of llama3.md, RoPE's
// relative-position property, cross-entropy's ignored targets, a fully hidden attention row,
// and the argument errors. ops::softmax, ops::log_softmax, ops::embedding, ops::rms_norm,
// ops::rope, ops::swiglu, ops::cross_entropy and ops::attention over dtypes, shapes and layouts,
// and their backwards (ops::softmax_backward, ops::log_softmax_backward,
// ops::embedding_backward, ops::rms_norm_backward, ops::rope_backward, ops::swiglu_backward,
// ops::cross_entropy_backward, ops::attention_backward), are op cases: tests/op_cases/nn.cpp
// (test_op_cases.cpp here, gradcheck in tests/autograd/).
#include <cmath>

#include "op_cases.h"
#include "tensor/parallel.h"

using namespace lamina;
using testing::random_tensor;
using testing::tolerance_for;

TEST_CASE("softmax: large logits do not overflow; a row of -inf gives no NaN in the other rows") {
  const Tensor big = Tensor::from_vector(std::vector<double>{1000, 1001, 1002}, {1, 3});
  CHECK_CLOSE(ops::softmax(big, -1), ops::reference::softmax(big, -1), tolerance_for(DType::f32));
  const Tensor masked = Tensor::from_vector(std::vector<double>{0, -INFINITY, 1, -INFINITY}, {2, 2});
  const std::vector<double> probabilities = ops::softmax(masked, -1).to_vector<double>();
  CHECK(probabilities[0] == 1.0);
  CHECK(probabilities[1] == 0.0);
}

TEST_CASE("embedding_backward adds the rows of repeated ids; out-of-range ids are errors") {
  Generator gen(2);
  const Tensor weight = random_tensor({11, 6}, DType::f32, gen);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{3, 0, 10, 3, 7, 1}, {2, 3});
  // The backward sums the rows of every occurrence (id 3 appears twice).
  const Tensor grad = random_tensor({2, 3, 6}, DType::f64, gen);
  const Tensor dweight = ops::embedding_backward(grad, ids, 11);
  const std::vector<double> g = grad.to_vector<double>(), dw = dweight.to_vector<double>();
  for (int64_t j = 0; j < 6; ++j) {
    CHECK(dw[size_t(3 * 6 + j)] == doctest::Approx(g[size_t(0 * 6 + j)] + g[size_t(3 * 6 + j)]));
    CHECK(dw[size_t(2 * 6 + j)] == 0.0);
  }
  const Tensor bad = Tensor::from_vector(std::vector<int64_t>{0, 11}, {2});
  CHECK_THROWS_WITH_AS(ops::embedding(weight, bad), doctest::Contains("id 11 at flat position 1"), Error);
  CHECK_THROWS_WITH_AS(ops::embedding(weight, ops::cast(bad, DType::f32)), doctest::Contains("integer indices"), Error);
}

TEST_CASE("rms_norm checks the weight's shape") {
  Generator gen(3);
  const Tensor x = random_tensor({3, 7}, DType::f64, gen);
  CHECK_THROWS_WITH_AS(ops::rms_norm(x, random_tensor({6}, DType::f64, gen), 1e-5), doctest::Contains("'weight' must have shape [7]"), Error);
}

TEST_CASE("rms_norm weight gradient does not depend on the thread count") {
  Generator gen(4);
  const Tensor x = random_tensor({300, 64}, DType::f32, gen), w = random_tensor({64}, DType::f32, gen);
  const Tensor dy = random_tensor({300, 64}, DType::f32, gen);
  const Tensor rstd = ops::rms_norm(x, w, 1e-5).rstd;
  std::vector<double> one, two;
  {
    ThreadCountGuard guard(1);
    one = ops::rms_norm_backward(dy, x, w, rstd).dweight.to_vector<double>();
  }
  {
    ThreadCountGuard guard(2);
    two = ops::rms_norm_backward(dy, x, w, rstd).dweight.to_vector<double>();
  }
  CHECK(one == two);
}

TEST_CASE("rope frequencies equal the oracle's, computed in f64 from the spec") {
  // The oracle shares no code with ops::rope_frequencies, which computes in f32 as torch does:
  // the two agree to a few f32 ulps, in every band of the Llama 3.1 remapping.
  const std::vector<RopeConfig> configs = {
      {128, 500000.0, std::nullopt},
      {128, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 8192}},
      {64, 500000.0, Llama3RopeScaling{32.0, 1.0, 4.0, 8192}},
      {64, 10000.0, Llama3RopeScaling{4.0, 2.0, 8.0, 256}},
      {32, 10000.0, std::nullopt}};
  for (const RopeConfig& config : configs) {
    const std::vector<float> kernel = ops::rope_frequencies(config);
    const std::vector<float> oracle = ops::reference::rope_frequencies_from_spec(config);
    REQUIRE(kernel.size() == oracle.size());
    for (size_t i = 0; i < kernel.size(); ++i) {
      CAPTURE(config.head_dim);
      CAPTURE(i);
      CHECK(kernel[i] == doctest::Approx(oracle[i]).epsilon(5e-7));
    }
  }
  // The oracle on its own against llama3.md's f64 table (3.1 scaling, head_dim 128).
  const std::vector<float> oracle = ops::reference::rope_frequencies_from_spec(configs[1]);
  CHECK(oracle[29] == doctest::Approx(2.16657076e-3).epsilon(1e-7));
  CHECK(oracle[32] == doctest::Approx(5.24846161e-4).epsilon(1e-7));
  CHECK(oracle[63] == doctest::Approx(3.06892599e-7).epsilon(1e-7));
}

TEST_CASE("rope frequencies and rotations match the spec's worked numbers") {
  RopeConfig llama3_0{128, 500000.0, std::nullopt};
  RopeConfig llama3_1{128, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 8192}};
  const std::vector<float> base = ops::rope_frequencies(llama3_0), scaled = ops::rope_frequencies(llama3_1);
  // llama3.md section 6 (f64 values; f32 tables agree to ~1e-7 relative).
  const std::vector<std::tuple<int, double, double>> table = {
      {0, 1.0, 1.0}, {1, 0.814617234, 0.814617234}, {2, 0.663601238, 0.663601238},
      {29, 2.61609925e-3, 2.16657076e-3}, {32, 1.41421356e-3, 5.24846161e-4},
      {35, 7.64496988e-4, 9.55621235e-5}, {63, 2.45514079e-6, 3.06892599e-7}};
  for (const auto& [i, f30, f31] : table) {
    CAPTURE(i);
    CHECK(base[size_t(i)] == doctest::Approx(f30).epsilon(1e-6));
    CHECK(scaled[size_t(i)] == doctest::Approx(f31).epsilon(1e-6));
  }
  // The scaling bands: 0-28 unchanged, 29-34 blended, 35-63 divided by the factor.
  for (int i = 0; i < 64; ++i) {
    CAPTURE(i);
    if (i <= 28) CHECK(scaled[size_t(i)] == base[size_t(i)]);
    if (i >= 35) CHECK(scaled[size_t(i)] == doctest::Approx(base[size_t(i)] / 8.0).epsilon(1e-6));
    if (i >= 29 && i <= 34) CHECK((scaled[size_t(i)] < base[size_t(i)] && scaled[size_t(i)] > base[size_t(i)] / 8.0));
  }
  // Rotating x[k] = 0.01 (k + 1) at p = 100 with the 3.1 frequencies (rotate_half).
  std::vector<double> values(128);
  for (int k = 0; k < 128; ++k) values[size_t(k)] = 0.01 * (k + 1);
  const Tensor x = Tensor::from_vector(values, {1, 1, 1, 128});
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{100}, {1});
  const std::vector<double> y = ops::rope(x, positions, llama3_1).to_vector<double>();
  CHECK(y[0] == doctest::Approx(0.337761).epsilon(2e-5));
  CHECK(y[1] == doctest::Approx(0.163348).epsilon(2e-5));
  CHECK(y[64] == doctest::Approx(0.555444).epsilon(2e-5));
  CHECK(y[65] == doctest::Approx(0.639779).epsilon(2e-5));
  CHECK(y[63] == doctest::Approx(0.639961).epsilon(2e-5));
  CHECK(y[127] == doctest::Approx(1.280020).epsilon(2e-5));
  double norm = 0;
  for (double v : y) norm += v * v;
  CHECK(std::sqrt(norm) == doctest::Approx(8.409899).epsilon(1e-6));
}

TEST_CASE("rope preserves relative positions, its backward undoes it, and it checks head_dim") {
  Generator gen(5);
  RopeConfig config{16, 10000.0, std::nullopt};
  // <R(1000) q, R(990) k> == <R(20) q, R(10) k>
  const Tensor q = random_tensor({1, 1, 1, 16}, DType::f32, gen), k = random_tensor({1, 1, 1, 16}, DType::f32, gen);
  auto rotated_dot = [&](int64_t pq, int64_t pk) {
    const Tensor rq = ops::rope(q, Tensor::from_vector(std::vector<int64_t>{pq}, {1}), config);
    const Tensor rk = ops::rope(k, Tensor::from_vector(std::vector<int64_t>{pk}, {1}), config);
    return ops::sum(ops::mul(rq, rk)).item<double>();
  };
  CHECK(rotated_dot(1000, 990) == doctest::Approx(rotated_dot(20, 10)).epsilon(1e-4));
  // The backward is the inverse rotation: it undoes the forward.
  const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 7, 100}, {5});
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    CAPTURE(dtype_name(dtype));
    const Tensor x = random_tensor({2, 5, 3, 16}, dtype, gen);
    const Tensor restored = ops::rope_backward(ops::rope(x, positions, config), positions, config);
    CHECK_CLOSE(restored, x, testing::scaled(tolerance_for(dtype), 2));
  }
  CHECK_THROWS_WITH_AS(ops::rope(random_tensor({1, 2, 1, 6}, DType::f32, gen), Tensor::from_vector(std::vector<int64_t>{0, 1}, {2}), config),
                       doctest::Contains("head_dim is 16"), Error);
}

TEST_CASE("rope: a table of the call's positions gives the bits of computing each row's angles") {
  // Positions from 0 up to no more than the rows take a per-call table; one position p > 0 alone
  // (one row) computes its own angles. Every row must come out the same either way.
  Generator gen(9);
  RopeConfig config{16, 10000.0, std::nullopt};
  const Tensor shared = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5}, {6});
  const Tensor per_batch = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 11}, {2, 6});
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool inverse : {false, true}) {
      for (const Tensor& positions : {shared, per_batch}) {
        const Tensor x = random_tensor({2, 6, 3, 16}, dtype, gen);
        const Tensor whole = inverse ? ops::rope_backward(x, positions, config) : ops::rope(x, positions, config);
        int64_t mismatches = 0;
        for (int64_t b = 0; b < 2; ++b)
          for (int64_t t = 0; t < 6; ++t) {
            const int64_t p = positions.dim() == 1 ? positions.to_vector<int64_t>()[size_t(t)]
                                                   : positions.to_vector<int64_t>()[size_t(b * 6 + t)];
            const Tensor row = ops::contiguous(x.slice(0, b, b + 1).slice(1, t, t + 1));
            const Tensor one = Tensor::from_vector(std::vector<int64_t>{p}, {1});
            const Tensor alone = inverse ? ops::rope_backward(row, one, config) : ops::rope(row, one, config);
            const Tensor from_whole = ops::contiguous(whole.slice(0, b, b + 1).slice(1, t, t + 1));
            if (alone.to_vector<double>() != from_whole.to_vector<double>()) ++mismatches;
          }
        CAPTURE(dtype_name(dtype));
        CAPTURE(inverse);
        CAPTURE(positions.dim());
        CHECK(mismatches == 0);
      }
    }
  }
}

TEST_CASE("swiglu checks that gate and up have one shape") {
  Generator gen(6);
  const Tensor gate = random_tensor({4, 5}, DType::f64, gen, -5, 5);
  CHECK_THROWS_WITH_AS(ops::swiglu(gate, random_tensor({4, 6}, DType::f64, gen)), doctest::Contains("'up' must have shape [4, 5]"), Error);
}

TEST_CASE("cross-entropy: ignored targets count for nothing; its backward is softmax minus one-hot") {
  Generator gen(7);
  const Tensor logits = random_tensor({2, 3, 50}, DType::f32, gen, -5, 5);
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{4, -100, 49, 0, 7, -100}, {2, 3});
  const ops::CrossEntropyResult result = ops::cross_entropy(logits, targets);
  CHECK(result.target_count == 4);
  CHECK(result.losses.to_vector<double>()[1] == 0.0);
  CHECK(result.losses.to_vector<double>()[5] == 0.0);
  CHECK(result.losses.to_vector<double>()[0] > 0.0);
  // Backward: softmax minus one-hot, scaled per token; ignored rows get zero.
  const Tensor small = random_tensor({3, 6}, DType::f64, gen);
  const Tensor small_targets = Tensor::from_vector(std::vector<int64_t>{2, -100, 5}, {3});
  const ops::CrossEntropyResult forward = ops::cross_entropy(small, small_targets);
  const Tensor grad_losses = Tensor::from_vector(std::vector<double>{0.5, 3.0, -2.0}, {3}, DType::f64);
  const Tensor dlogits = ops::cross_entropy_backward(grad_losses, small, small_targets, forward.lse);
  const Tensor probabilities = ops::reference::softmax(small, -1);
  const std::vector<double> p = probabilities.to_vector<double>(), d = dlogits.to_vector<double>();
  for (int j = 0; j < 6; ++j) {
    CHECK(d[size_t(j)] == doctest::Approx(0.5 * (p[size_t(j)] - (j == 2 ? 1.0 : 0.0))));
    CHECK(d[size_t(6 + j)] == 0.0);
    CHECK(d[size_t(12 + j)] == doctest::Approx(-2.0 * (p[size_t(12 + j)] - (j == 5 ? 1.0 : 0.0))));
  }
  CHECK_THROWS_WITH_AS(ops::cross_entropy(small, Tensor::from_vector(std::vector<int64_t>{2, 6, 0}, {3})),
                       doctest::Contains("target 6 at flat position 1 is outside the vocabulary of 6"), Error);
  CHECK_THROWS_WITH_AS(ops::cross_entropy(small, Tensor::from_vector(std::vector<int64_t>{2, 6}, {2})),
                       doctest::Contains("'targets' must have shape [3]"), Error);
}

TEST_CASE("dense attention: a fully hidden row gives zeros; query heads must be a multiple of kv heads") {
  Generator gen(8);
  // A fully hidden row gives zeros (not NaN).
  const Tensor q = random_tensor({1, 1, 2, 4}, DType::f32, gen), k = random_tensor({1, 1, 2, 4}, DType::f32, gen);
  AttentionOptions hide_all;
  hide_all.causal = false;
  hide_all.mask = full({2, 2}, -INFINITY);
  for (double value : ops::attention(q, k, k, hide_all).out.to_vector<double>()) CHECK(value == 0.0);
  const Tensor two_kv_heads = random_tensor({1, 2, 2, 4}, DType::f32, gen);
  CHECK_THROWS_WITH_AS(ops::attention(random_tensor({1, 3, 2, 4}, DType::f32, gen), two_kv_heads, two_kv_heads, {}),
                       doctest::Contains("multiple of kv heads"), Error);
}
