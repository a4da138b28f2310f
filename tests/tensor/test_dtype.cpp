#include <cmath>
#include <limits>

#include "helpers.h"
#include "tensor/dtype.h"

using namespace lamina;

TEST_CASE("bf16 rounds to nearest even") {
  // 1 + 2^-8 lies exactly halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to even (1).
  CHECK(bf16(1.0f + std::ldexp(1.0f, -8)).bits == bf16(1.0f).bits);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  CHECK(float(bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
  // Just above the halfway point rounds up.
  CHECK(float(bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20))) == 1.0f + std::ldexp(1.0f, -7));
  CHECK(bf16(1.0f).bits == 0x3f80);
  CHECK(bf16(-2.0f).bits == 0xc000);
  CHECK(std::isinf(float(bf16(std::numeric_limits<float>::infinity()))));
  CHECK(std::isnan(float(bf16(std::numeric_limits<float>::quiet_NaN()))));
  // The largest float rounds to infinity in bf16 (beyond bf16's max 3.3895e38).
  CHECK(std::isinf(float(bf16(std::numeric_limits<float>::max()))));
  CHECK(float(bf16(3.140625f)) == 3.140625f);  // exactly representable
}

TEST_CASE("f16 conversions: normals, subnormals, overflow, specials") {
  CHECK(f16(1.0f).bits == 0x3c00);
  CHECK(f16(-2.0f).bits == 0xc000);
  CHECK(f16(65504.0f).bits == 0x7bff);  // largest finite
  CHECK(f16(65520.0f).bits == 0x7c00);  // rounds to infinity
  CHECK(f16(65519.0f).bits == 0x7bff);
  CHECK(f16(std::ldexp(1.0f, -24)).bits == 0x0001);  // smallest subnormal
  CHECK(f16(std::ldexp(1.0f, -25)).bits == 0x0000);  // halfway to zero: ties to even (0)
  CHECK(f16(std::ldexp(3.0f, -25)).bits == 0x0002);  // 1.5 ulp: rounds to 2 (even)
  CHECK(f16(std::ldexp(1.0f, -14)).bits == 0x0400);  // smallest normal
  CHECK(f16(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);  // tie to even
  CHECK(f16(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);
  CHECK(std::isnan(float(f16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(float(f16::from_bits(0x7c00)) == std::numeric_limits<float>::infinity());
  CHECK(float(f16::from_bits(0x0001)) == std::ldexp(1.0f, -24));
  CHECK(float(f16::from_bits(0x3555)) == 0.333251953125f);
  // Every finite f16 survives a round trip through f32.
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const f16 h = f16::from_bits(uint16_t(bits));
    const float value = float(h);
    if (std::isnan(value)) continue;
    REQUIRE(f16(value).bits == h.bits);
  }
}

TEST_CASE("dtype names and sizes") {
  for (DType dtype : kAllDTypes) CHECK(dtype_from_name(dtype_name(dtype)) == dtype);
  CHECK(dtype_size(DType::bf16) == 2);
  CHECK(dtype_size(DType::i64) == 8);
  CHECK(dtype_size(DType::boolean) == 1);
  CHECK_THROWS_WITH_AS(dtype_from_name("f8"), doctest::Contains("unknown dtype 'f8'"), Error);
}

TEST_CASE("casts between every pair of dtypes") {
  const std::vector<double> values = {0.0, 1.0, 2.0, 3.0, 7.0, 100.0, 1.0, 0.0};
  for (DType from : kAllDTypes) {
    for (DType to : kAllDTypes) {
      CAPTURE(dtype_name(from));
      CAPTURE(dtype_name(to));
      const Tensor source = Tensor::from_vector(values, {2, 4}, from);
      const Tensor converted = ops::cast(source, to);
      CHECK(converted.dtype() == to);
      const std::vector<double> out = converted.to_vector<double>();
      for (size_t i = 0; i < values.size(); ++i) {
        const double expected = (from == DType::boolean || to == DType::boolean) ? (values[i] != 0 ? 1.0 : 0.0) : values[i];
        CHECK(out[i] == expected);
      }
    }
  }
  // Float to integer: truncation toward zero, saturation, NaN -> 0.
  const Tensor floats = Tensor::from_vector(std::vector<double>{-1.7, 2.9, 1e20, -1e20, NAN}, {5}, DType::f32);
  CHECK(ops::cast(floats, DType::i32).to_vector<int64_t>() ==
        std::vector<int64_t>{-1, 2, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 0});
  CHECK(ops::cast(floats, DType::u8).to_vector<int64_t>() == std::vector<int64_t>{0, 2, 255, 0, 0});
  // f32 -> bf16 -> f32 rounds to nearest even, like the scalar type.
  const Tensor halfway = Tensor::from_vector(std::vector<float>{1.0f + std::ldexp(1.0f, -8)}, {1});
  CHECK(ops::cast(ops::cast(halfway, DType::bf16), DType::f32).item<float>() == 1.0f);
}
