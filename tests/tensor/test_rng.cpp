#include <cmath>

#include "helpers.h"
#include "tensor/parallel.h"
#include "tensor/rng.h"

using namespace lamina;

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  CHECK(philox4x32_10({0, 0, 0, 0}, 0) == PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, 0xffffffffffffffffull) ==
        PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  CHECK(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, 0x299f31d0a4093822ull) ==
        PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("the same seed gives the same numbers on 1 and 2 threads") {
  auto draw = [](int threads) {
    ThreadCountGuard guard(threads);
    Generator gen(1234);
    std::vector<Tensor> out = {uniform({100003}, -2, 3, gen), randn({70001}, gen), randn({1001}, gen, DType::f64),
                               randint(5, 17, {50001}, gen), ops::dropout_mask({40000}, 0.7, gen)};
    return out;
  };
  const std::vector<Tensor> one = draw(1), two = draw(2);
  for (size_t i = 0; i < one.size(); ++i) CHECK(one[i].to_vector<double>() == two[i].to_vector<double>());
}

TEST_CASE("value i of a draw depends only on (seed, offset, i)") {
  Generator gen(7);
  const Tensor whole = uniform({64}, 0, 1, gen);
  CHECK(gen.offset() == 16);  // 64 values of one word, four words per counter
  // The same stream, drawn in two parts, matches when the split falls on a counter boundary.
  Generator again(7);
  const Tensor first = uniform({32}, 0, 1, again);
  const Tensor second = uniform({32}, 0, 1, again);
  const std::vector<double> a = whole.to_vector<double>(), b = first.to_vector<double>(), c = second.to_vector<double>();
  for (size_t i = 0; i < 32; ++i) {
    CHECK(a[i] == b[i]);
    CHECK(a[i + 32] == c[i]);
  }
  // And each value is the documented function of its word.
  CHECK(a[5] == double(uniform_from_word(philox_word(7, 0, 5))));
  Generator other(8);
  CHECK(uniform({64}, 0, 1, other).to_vector<double>() != a);
}

TEST_CASE("distributions have the right moments and ranges") {
  Generator gen(42);
  const std::vector<double> u = uniform({200000}, -1, 3, gen).to_vector<double>();
  double sum = 0, lo = 1e9, hi = -1e9;
  for (double v : u) {
    sum += v;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  CHECK(sum / double(u.size()) == doctest::Approx(1.0).epsilon(0.01));
  CHECK(lo >= -1.0);
  CHECK(hi < 3.0);
  const std::vector<double> n = randn({200000}, gen).to_vector<double>();
  double mean = 0, sq = 0;
  for (double v : n) mean += v;
  mean /= double(n.size());
  for (double v : n) sq += (v - mean) * (v - mean);
  CHECK(std::abs(mean) < 0.01);
  CHECK(sq / double(n.size()) == doctest::Approx(1.0).epsilon(0.01));
  const std::vector<int64_t> r = randint(-3, 4, {10000}, gen).to_vector<int64_t>();
  std::vector<int> counts(7, 0);
  for (int64_t v : r) {
    REQUIRE(v >= -3);
    REQUIRE(v < 4);
    ++counts[size_t(v + 3)];
  }
  for (int c : counts) CHECK(c > 1200);  // ~1428 each
  const Tensor mask = ops::dropout_mask({100000}, 0.8, gen);
  const std::vector<double> m = mask.to_vector<double>();
  double kept = 0;
  for (double v : m) {
    REQUIRE((v == 0.0 || std::abs(v - 1.25) < 1e-6));
    kept += v != 0.0;
  }
  CHECK(kept / double(m.size()) == doctest::Approx(0.8).epsilon(0.01));
  CHECK_THROWS_WITH_AS(randint(3, 3, {2}, gen), doctest::Contains("empty range"), Error);
}
