// The vectorisable exp against std::exp in f64, over the whole f32 range.
#include <cmath>
#include <cstring>
#include <limits>

#include "helpers.h"
#include "ops/cpu/vec_math.h"

using lamina::ops::cpu::exp_f32;

namespace {
// |got - want| in units of the f32 spacing at want.
double ulp_error(float got, double want) {
  const float nearest = float(want);
  const double spacing =
      double(std::nextafter(nearest, std::numeric_limits<float>::infinity())) - double(nearest);
  return std::abs(double(got) - want) / (spacing > 0 ? spacing : std::numeric_limits<double>::denorm_min());
}
}  // namespace

TEST_CASE("exp_f32 is within 2 ulp everywhere and exact at the specials") {
  double worst = 0;
  float worst_at = 0;
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 4099) {  // ~1M values, both signs
    float x;
    const uint32_t b = uint32_t(bits);
    std::memcpy(&x, &b, 4);
    if (!std::isfinite(x)) continue;
    const double want = std::exp(double(x));
    if (want > double(std::numeric_limits<float>::max())) {
      REQUIRE(std::isinf(exp_f32(x)));
      continue;
    }
    if (want < double(std::numeric_limits<float>::min())) {  // subnormal results: absolute error
      REQUIRE(std::abs(double(exp_f32(x)) - want) <= double(std::numeric_limits<float>::denorm_min()));
      continue;
    }
    const double error = ulp_error(exp_f32(x), want);
    if (error > worst) {
      worst = error;
      worst_at = x;
    }
  }
  INFO("worst " << worst << " ulp at x = " << worst_at);
  CHECK(worst <= 2.0);
  CHECK(exp_f32(0.0f) == 1.0f);
  CHECK(exp_f32(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(exp_f32(-1000.0f) == 0.0f);
  CHECK(std::isinf(exp_f32(std::numeric_limits<float>::infinity())));
  CHECK(std::isinf(exp_f32(89.0f)));
  CHECK(std::isfinite(exp_f32(88.72f)));
  CHECK(std::isnan(exp_f32(std::numeric_limits<float>::quiet_NaN())));
}
