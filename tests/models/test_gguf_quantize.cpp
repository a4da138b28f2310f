// The GGUF writer's Q4_1, Q4_K and Q6_K quantizers: bytes worked out by hand for chosen blocks;
// random blocks decoded by ggml's exact decoders (ops/ggml_blocks.h) within the bounds that
// gguf_write.h derives, each code the nearest one under the scales actually stored; blocks made of
// grid points quantize back to their own bytes; what encode() makes is what a written file holds;
// K-quant rows that are not whole blocks of 256 are refused, and the Llama writer falls back
// (Q4_K -> Q4_1, Q6_K -> Q8_0, -> F16) with a note. The `lamina quantize` command itself is
// tested in tests/tools/test_cli_quantize_gguf.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <tuple>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "models/io/gguf_write.h"
#include "ops/ggml_blocks.h"
#include "scratch_dir.h"

using namespace lamina;
using testing::ScratchDir;
using gguf::TensorType;

namespace {

std::string hex(const uint8_t* bytes, size_t count) {
  std::string out;
  char buffer[4];
  for (size_t i = 0; i < count; ++i) {
    std::snprintf(buffer, sizeof buffer, "%02x ", bytes[i]);
    out += buffer;
  }
  if (!out.empty()) out.pop_back();
  return out;
}

std::string repeated(const std::string& byte, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) out += (i == 0 ? "" : " ") + byte;
  return out;
}

std::vector<float> decoded(TensorType type, const std::vector<uint8_t>& bytes, size_t count) {
  std::vector<float> out(count);
  ops::ggml::dequantize(ops::ggml::BlockType(uint32_t(type)), bytes.data(), count, out.data());
  return out;
}

// Random blocks of several kinds: centred normal, all positive, all negative, sub-blocks whose
// spreads differ by up to 1000x (so that some 6-bit scales round to small codes), and one
// outlier per block.
std::vector<float> varied_blocks(size_t blocks, size_t block_size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> values(blocks * block_size);
  for (size_t b = 0; b < blocks; ++b) {
    float* block = values.data() + b * block_size;
    const int kind = int(b % 5);
    for (size_t i = 0; i < block_size; ++i) {
      const float spread = kind == 3 ? std::pow(10.0f, -3.0f * uniform(rng)) : 1.0f;
      float value = normal(rng) * spread;
      if (kind == 1) value = std::fabs(value) + 0.5f;
      if (kind == 2) value = -std::fabs(value) - 2.0f;
      block[i] = value;
    }
    if (kind == 4) block[size_t(uniform(rng) * float(block_size)) % block_size] = 40.0f * (uniform(rng) - 0.5f);
  }
  return values;
}

// Relative slack for f32 rounding in the decoders' and the tests' own arithmetic.
constexpr float kFloatSlack = 1e-5f;
constexpr float kScaleRounding = 1.0f / 126 + 1.0f / 2048;  // 6-bit code rounding + f16 of d (Q4_K)

}  // namespace

TEST_CASE("gguf quantize: Q4_1, Q4_K and Q6_K blocks with hand-worked bytes") {
  // Q4_1, x_j = (j mod 16) / 2 + 1: min 1 (f16 3c00), d = 7.5 / 15 = 0.5 (3800), q_j = j mod 16;
  // byte j holds q_j low and q_{j+16} high.
  std::vector<float> ramp(32);
  for (int j = 0; j < 32; ++j) ramp[size_t(j)] = float(j % 16) / 2.0f + 1.0f;
  std::vector<uint8_t> bytes = gguf::encode(TensorType::q4_1, ramp.data(), 32);
  CHECK(hex(bytes.data(), bytes.size()) == "00 38 00 3c 00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff");
  CHECK(decoded(TensorType::q4_1, bytes, 32) == ramp);
  // All equal (3, f16 4200): d = 0, every q = 0, the value is m. Zeros: zero bytes.
  std::vector<float> block(32, 3.0f);
  bytes = gguf::encode(TensorType::q4_1, block.data(), 32);
  CHECK(hex(bytes.data(), bytes.size()) == "00 00 00 42 " + repeated("00", 16));
  CHECK(decoded(TensorType::q4_1, bytes, 32) == block);
  std::fill(block.begin(), block.end(), 0.0f);
  bytes = gguf::encode(TensorType::q4_1, block.data(), 32);
  CHECK(hex(bytes.data(), bytes.size()) == repeated("00", 20));
  // One outlier: 15 at j = 21 among zeros: d = 1, m = 0, q_21 = 15 is the high nibble of byte 5.
  block[21] = 15.0f;
  bytes = gguf::encode(TensorType::q4_1, block.data(), 32);
  CHECK(hex(bytes.data(), bytes.size()) == "00 3c 00 00 00 00 00 00 00 f0 " + repeated("00", 10));
  // Halves round up: (x - m) / d = 2.5 gives 3 (the nibble of j = 1); 1.49 gives 1 (j = 2).
  block.assign(32, 0.0f);
  block[0] = 15.0f, block[1] = 2.5f, block[2] = 1.49f;
  bytes = gguf::encode(TensorType::q4_1, block.data(), 32);
  CHECK(hex(bytes.data(), 7) == "00 3c 00 00 0f 03 01");

  // Q4_K, every sub-block the ramp 0..15 twice: lo 0, scale 1, min 0. d = f16(1 / 63) = 2^-6 *
  // (1 + 16/1024) (2410), dmin 0; every 6-bit scale 63: bytes 0-3 63 | (63 >> 4) << 6 = ff, bytes
  // 4-7 the mins 0, bytes 8-11 (63 & 15) | (0 << 4) = 0f. D = 63 d = 0.99976, so q = x; the 32
  // bytes of each pair of sub-blocks hold q_l low and q_{32+l} high: 00 11 .. ff 00 11 .. ff.
  std::vector<float> k_block(256);
  for (int i = 0; i < 256; ++i) k_block[size_t(i)] = float(i % 16);
  bytes = gguf::encode(TensorType::q4_k, k_block.data(), 256);
  REQUIRE(bytes.size() == 144);
  const std::string ramp_nibbles = "00 11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff";
  CHECK(hex(bytes.data(), 16) == "10 24 00 00 ff ff ff ff 00 00 00 00 0f 0f 0f 0f");
  for (int row = 0; row < 8; ++row) CHECK(hex(bytes.data() + 16 + 16 * row, 16) == ramp_nibbles);
  std::vector<float> back = decoded(TensorType::q4_k, bytes, 256);
  for (int i = 0; i < 256; ++i) CHECK(std::fabs(back[size_t(i)] - k_block[size_t(i)]) <= 15 * 0.000245f);
  // The same ramp shifted to -8..7: lo -8, min 8, so dmin = f16(8 / 63) = 2^-3 * (1 + 16/1024)
  // (3010) and every 6-bit min 63 too: all 12 scale bytes ff. M = 63 dmin = 7.998, and
  // q = round((x + M) / D) = x + 8: the same nibbles.
  for (float& value : k_block) value -= 8.0f;
  bytes = gguf::encode(TensorType::q4_k, k_block.data(), 256);
  CHECK(hex(bytes.data(), 16) == "10 24 10 30 " + repeated("ff", 12));
  for (int row = 0; row < 8; ++row) CHECK(hex(bytes.data() + 16 + 16 * row, 16) == ramp_nibbles);
  // Zeros: zero bytes. All equal 2 (> 0, so lo = 0): scale 2/15 everywhere, min 0, every code 15.
  std::fill(k_block.begin(), k_block.end(), 0.0f);
  bytes = gguf::encode(TensorType::q4_k, k_block.data(), 256);
  CHECK(hex(bytes.data(), bytes.size()) == repeated("00", 144));
  std::fill(k_block.begin(), k_block.end(), 2.0f);
  bytes = gguf::encode(TensorType::q4_k, k_block.data(), 256);
  CHECK(hex(bytes.data() + 2, 14) == "00 00 ff ff ff ff 00 00 00 00 0f 0f 0f 0f");
  CHECK(hex(bytes.data() + 16, 128) == repeated("ff", 128));
  // All equal -3 (< 0): scale 0 (code 0, so every q = 0) and min 3: the value is -M = -63 dmin.
  std::fill(k_block.begin(), k_block.end(), -3.0f);
  bytes = gguf::encode(TensorType::q4_k, k_block.data(), 256);
  CHECK(hex(bytes.data(), 2) == "00 00");  // d = 0
  CHECK(hex(bytes.data() + 4, 12) == "00 00 00 00 ff ff ff ff f0 f0 f0 f0");  // mins 63: bytes 4-7 whole, 8-11 high nibbles
  CHECK(hex(bytes.data() + 16, 128) == repeated("00", 128));
  for (float value : decoded(TensorType::q4_k, bytes, 256)) CHECK(std::fabs(value + 3.0f) <= 3.0f / 2048);

  // Q6_K, every sub-block of 16 the values 4k - 32 (k = 0..15): the extreme -32 gives scale
  // -32 / -32 = 1 everywhere, S = 1, d = 1 / -128 (f16 a000), every int8 scale -128 (80), D = 1,
  // q = x and the stored code x + 32 = 4k. Code c of value l (< 32) is ql[l] low and qh[l] bits
  // 0-1; here values l, l+32, l+64, l+96 share a code, so ql[l] = (c & 15) * 0x11 and qh[l] =
  // (c >> 4) * 0x55: for l = 5, c = 20: 44 and 55; for l = 15, c = 60: cc and ff.
  std::vector<float> six(256);
  for (int i = 0; i < 256; ++i) six[size_t(i)] = float(4 * (i % 16) - 32);
  bytes = gguf::encode(TensorType::q6_k, six.data(), 256);
  REQUIRE(bytes.size() == 210);
  CHECK(hex(bytes.data() + 192, 18) == repeated("80", 16) + " 00 a0");
  CHECK(hex(bytes.data(), 16) == "00 44 88 cc 00 44 88 cc 00 44 88 cc 00 44 88 cc");
  CHECK(hex(bytes.data() + 128, 16) == "00 00 00 00 55 55 55 55 aa aa aa aa ff ff ff ff");
  CHECK(decoded(TensorType::q6_k, bytes, 256) == six);
  // One outlier, 100 among zeros: sub-block 0's scale 100 / -32 = -3.125 is S; d = -3.125 /
  // -128 = 0.0244140625 = 2^-6 * 1.5625 (f16 2640), its int8 scale -128 and 100 -> q = -32 (code
  // 0); the zero sub-blocks get scale 0 and code 32 (q = 0). Decoded exactly.
  std::fill(six.begin(), six.end(), 0.0f);
  six[3] = 100.0f;
  bytes = gguf::encode(TensorType::q6_k, six.data(), 256);
  CHECK(hex(bytes.data() + 192, 18) == "80 " + repeated("00", 15) + " 40 26");
  CHECK(bytes[3] == 0x00);         // the low nibbles of value 3 (code 0) and value 67 (code 32)
  CHECK(bytes[128 + 3] == 0xa8);  // top bits of values 3, 35, 67, 99: 0, 2, 2, 2
  CHECK(decoded(TensorType::q6_k, bytes, 256) == six);
  // Zeros: zero bytes.
  std::fill(six.begin(), six.end(), 0.0f);
  bytes = gguf::encode(TensorType::q6_k, six.data(), 256);
  CHECK(hex(bytes.data(), bytes.size()) == repeated("00", 210));
}

TEST_CASE("gguf quantize: random Q4_1 blocks decode within d/2 plus the f16 rounding of d and m") {
  const size_t blocks = 2000;
  const std::vector<float> values = varied_blocks(blocks, 32, 1);
  const std::vector<uint8_t> bytes = gguf::encode(TensorType::q4_1, values.data(), values.size());
  REQUIRE(bytes.size() == blocks * 20);
  const std::vector<float> back = decoded(TensorType::q4_1, bytes, values.size());
  double worst_ratio = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const float* x = values.data() + 32 * b;
    const float min = *std::min_element(x, x + 32), max = *std::max_element(x, x + 32);
    const float d = (max - min) / 15;
    // q = round((x - m) / d) is within d / 2 with the f32 d and m; the decoder's f16 ones move the
    // value by at most 15 |d - f16(d)| + |m - f16(m)|, each within 2^-11 relative.
    const float bound = d / 2 + 15 * d / 2048 + std::fabs(min) / 2048 + kFloatSlack * (std::fabs(min) + std::fabs(max));
    for (size_t j = 0; j < 32; ++j) {
      const float error = std::fabs(back[32 * b + j] - x[j]);
      CHECK_MESSAGE(error <= bound, "block ", b, " value ", j, ": ", x[j], " decoded ", back[32 * b + j]);
      if (d > 0) worst_ratio = std::max(worst_ratio, double(error / d));
    }
  }
  // Rounding to nearest uses its half step: neither far beyond it (a wrong rounding) nor far
  // inside it (a bound that could never fail).
  CHECK(worst_ratio > 0.45);
  CHECK(worst_ratio < 0.52);
}

TEST_CASE("gguf quantize: random Q4_K blocks: nearest codes under the stored scales, within the derived bound") {
  const size_t blocks = 600;
  const std::vector<float> values = varied_blocks(blocks, 256, 2);
  const std::vector<uint8_t> bytes = gguf::encode(TensorType::q4_k, values.data(), values.size());
  REQUIRE(bytes.size() == blocks * 144);
  const std::vector<float> back = decoded(TensorType::q4_k, bytes, values.size());
  double mean_error_over_scale = 0;
  size_t counted = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const float* x = values.data() + 256 * b;
    // What the decoder uses, found through the decoder: every code 0 decodes to -M_j, every code
    // 1 to D_j - M_j.
    std::vector<uint8_t> probe(bytes.begin() + 144 * b, bytes.begin() + 144 * (b + 1));
    std::fill(probe.begin() + 16, probe.end(), uint8_t(0x00));
    const std::vector<float> at_zero = decoded(TensorType::q4_k, probe, 256);
    std::fill(probe.begin() + 16, probe.end(), uint8_t(0x11));
    const std::vector<float> at_one = decoded(TensorType::q4_k, probe, 256);
    // The ideal sub-block scales and mins, from the values alone.
    float scale[8], min[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
      const float low = std::min(0.0f, *std::min_element(x + 32 * j, x + 32 * j + 32));
      const float high = *std::max_element(x + 32 * j, x + 32 * j + 32);
      scale[j] = (high - low) / 15, min[j] = -low;
      max_scale = std::max(max_scale, scale[j]), max_min = std::max(max_min, min[j]);
    }
    for (int j = 0; j < 8; ++j) {
      const float offset = -at_zero[size_t(32 * j)], step = at_one[size_t(32 * j)] - at_zero[size_t(32 * j)];
      // gguf_write.h's bound: the stored step is off the ideal by at most kScaleRounding of the
      // largest scale (min likewise), so the range [-M, 15 D - M] misses the sub-block's by at
      // most 15 of those plus one min's; inside the range, rounding costs D / 2.
      const float arithmetic = kFloatSlack * (offset + max_scale);  // step is (D - M) + M in f32
      CHECK(std::fabs(step - scale[j]) <= kScaleRounding * max_scale + arithmetic);
      CHECK(std::fabs(offset - min[j]) <= kScaleRounding * max_min + arithmetic);
      const float bound = step / 2 + kScaleRounding * (15 * max_scale + max_min) +
                          kFloatSlack * (15 * max_scale + max_min);
      for (int l = 0; l < 32; ++l) {
        const size_t i = size_t(32 * j + l);
        const float error = std::fabs(back[256 * b + i] - x[i]);
        CHECK_MESSAGE(error <= bound, "block ", b, " value ", i, ": ", x[i], " decoded ", back[256 * b + i]);
        // The code is the nearest one under the stored D and M: inside the range within half a
        // step, outside it the range's end.
        const float position = step > 0 ? (x[i] + offset) / step : 0.0f;
        const float slack = kFloatSlack * (std::fabs(x[i]) + offset + 15 * step);
        if (step == 0) CHECK(back[256 * b + i] == at_zero[i]);
        else if (position < 0) CHECK(back[256 * b + i] == at_zero[i]);
        else if (position > 15) CHECK(std::fabs(back[256 * b + i] - (15 * step - offset)) <= slack);
        else CHECK_MESSAGE(error <= step / 2 + slack, "block ", b, " value ", i);
        if (scale[j] > 0) mean_error_over_scale += error / scale[j], ++counted;
      }
    }
  }
  // Plain rounding errs by a quarter step on average (uniform on [-1/2, 1/2]); a systematic
  // half-step shift would double it.
  mean_error_over_scale /= double(counted);
  MESSAGE("Q4_K mean |error| / sub-block scale: ", mean_error_over_scale);
  CHECK(mean_error_over_scale < 0.32);
}

TEST_CASE("gguf quantize: random Q6_K blocks: nearest codes under the stored scales, within the derived bound") {
  const size_t blocks = 600;
  const std::vector<float> values = varied_blocks(blocks, 256, 3);
  const std::vector<uint8_t> bytes = gguf::encode(TensorType::q6_k, values.data(), values.size());
  REQUIRE(bytes.size() == blocks * 210);
  const std::vector<float> back = decoded(TensorType::q6_k, bytes, values.size());
  double mean_error_over_scale = 0;
  size_t counted = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const float* x = values.data() + 256 * b;
    // Every code 33 (q = 1: ql nibbles 1, qh bit pairs 2) decodes to D_j.
    std::vector<uint8_t> probe(bytes.begin() + 210 * b, bytes.begin() + 210 * (b + 1));
    std::fill(probe.begin(), probe.begin() + 128, uint8_t(0x11));
    std::fill(probe.begin() + 128, probe.begin() + 192, uint8_t(0xaa));
    const std::vector<float> steps = decoded(TensorType::q6_k, probe, 256);
    float scale[16], largest = 0;
    for (int j = 0; j < 16; ++j) {
      float magnitude = 0, extreme = 0;
      for (int l = 0; l < 16; ++l)
        if (std::fabs(x[16 * j + l]) > magnitude) magnitude = std::fabs(x[16 * j + l]), extreme = x[16 * j + l];
      scale[j] = extreme / -32;
      largest = std::max(largest, std::fabs(scale[j]));
    }
    // int8 rounding of scale / d with d = S / -128 costs |S| / 256, or |S| / 128 where 128
    // clamps to 127; f16 rounding of d 2^-11 of 128 |d|.
    const float scale_error = largest * (1.0f / 128 + 1.0f / 2048 + kFloatSlack);
    for (int j = 0; j < 16; ++j) {
      const float step = steps[size_t(16 * j)];
      CHECK(std::fabs(step - scale[j]) <= scale_error);
      // Inside [-32.5, 31.5] steps rounding costs |D| / 2; the clamp at 31 costs at most
      // |scale| + 31 |D - scale| (a value of -32 scale), the one at -32 at most 32 |D - scale|.
      const float bound = std::max(std::fabs(step) / 2, std::fabs(scale[j]) + 32 * scale_error) + kFloatSlack * largest * 32;
      for (int l = 0; l < 16; ++l) {
        const size_t i = size_t(16 * j + l);
        const float error = std::fabs(back[256 * b + i] - x[i]);
        CHECK_MESSAGE(error <= bound, "block ", b, " value ", i, ": ", x[i], " decoded ", back[256 * b + i]);
        const float slack = kFloatSlack * 32 * std::fabs(step);
        if (step == 0) {
          CHECK(back[256 * b + i] == 0.0f);
          continue;
        }
        const float position = x[i] / step;
        if (position < -32) CHECK(std::fabs(back[256 * b + i] + 32 * step) <= slack);
        else if (position > 31) CHECK(std::fabs(back[256 * b + i] - 31 * step) <= slack);
        else CHECK_MESSAGE(error <= std::fabs(step) / 2 + slack, "block ", b, " value ", i);
        if (scale[j] != 0) mean_error_over_scale += error / std::fabs(scale[j]), ++counted;
      }
    }
  }
  mean_error_over_scale /= double(counted);
  MESSAGE("Q6_K mean |error| / sub-block scale: ", mean_error_over_scale);
  CHECK(mean_error_over_scale < 0.32);
}

TEST_CASE("gguf quantize: grid points quantize back to their own bytes") {
  // Q4_1 and Q8_0: quantizing what a block decodes to gives the block again, for any block (the
  // decoded minimum is m exactly and the maximum 15 d, so d and m come back).
  for (const TensorType type : {TensorType::q4_1, TensorType::q8_0}) {
    INFO(gguf::tensor_type_name(uint32_t(type)));
    const std::vector<float> values = varied_blocks(2000, 32, 4);
    const std::vector<uint8_t> first = gguf::encode(type, values.data(), values.size());
    const std::vector<float> back = decoded(type, first, values.size());
    CHECK(gguf::encode(type, back.data(), back.size()) == first);
  }

  // Q4_K: blocks built on the grid where it holds: 6-bit scales and mins whose largest is 63
  // (so d and dmin come back from max / 63), every sub-block holding codes 0 and 15 (so its range
  // gives back D_j and M_j; M_j >= 0 is the -min the quantizer finds).
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> code(0, 15), six_bits(1, 63), int8_scale(-127, 127);
  std::uniform_real_distribution<float> unit(0.5f, 2.0f);
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    std::vector<uint8_t> block(144, 0);
    const uint16_t d_bits = f16::from_float(unit(rng) / 63), dmin_bits = f16::from_float(unit(rng) / 63);
    block[0] = uint8_t(d_bits), block[1] = uint8_t(d_bits >> 8), block[2] = uint8_t(dmin_bits), block[3] = uint8_t(dmin_bits >> 8);
    int scales[8], mins[8];
    for (int j = 0; j < 8; ++j) scales[j] = six_bits(rng), mins[j] = trial % 3 == 0 ? 0 : six_bits(rng);
    scales[trial % 8] = 63;
    mins[(trial + 3) % 8] = 63;
    for (int j = 0; j < 4; ++j) {
      block[4 + j] = uint8_t(scales[j] | ((scales[j + 4] >> 4) << 6));
      block[8 + j] = uint8_t(mins[j] | ((mins[j + 4] >> 4) << 6));
      block[12 + j] = uint8_t((scales[j + 4] & 15) | ((mins[j + 4] & 15) << 4));
    }
    int codes[256];
    for (int& c : codes) c = code(rng);
    for (int j = 0; j < 8; ++j) codes[32 * j + (trial % 32)] = 0, codes[32 * j + ((trial + 7) % 32)] = 15;
    for (int chunk = 0; chunk < 4; ++chunk)
      for (int l = 0; l < 32; ++l) block[16 + 32 * chunk + l] = uint8_t(codes[64 * chunk + l] | (codes[64 * chunk + 32 + l] << 4));
    const std::vector<float> grid = decoded(TensorType::q4_k, block, 256);
    const std::vector<uint8_t> again = gguf::encode(TensorType::q4_k, grid.data(), 256);
    CHECK(hex(again.data(), 144) == hex(block.data(), 144));
  }

  // Q6_K: int8 scales with one -128 (so d comes back from S / -128), none 0, and every
  // sub-block holding code -32, its unique value of largest magnitude (so its scale comes back).
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    std::vector<uint8_t> block(210, 0);
    const uint16_t d_bits = f16::from_float((trial % 2 == 0 ? 1 : -1) * unit(rng) / 128);
    block[208] = uint8_t(d_bits), block[209] = uint8_t(d_bits >> 8);
    for (int j = 0; j < 16; ++j) {
      int scale = 0;
      while (scale == 0) scale = int8_scale(rng);
      block[192 + size_t(j)] = uint8_t(int8_t(scale));
    }
    block[192 + size_t(trial % 16)] = 0x80;
    std::uniform_int_distribution<int> six_bit_code(1, 63);  // q = -31..31
    int codes[256];
    for (int& c : codes) c = six_bit_code(rng);
    for (int j = 0; j < 16; ++j) codes[16 * j + (trial % 16)] = 0;  // q = -32
    for (int half = 0; half < 2; ++half) {
      const int* q = codes + 128 * half;
      for (int l = 0; l < 32; ++l) {
        block[size_t(64 * half + l)] = uint8_t((q[l] & 15) | ((q[l + 64] & 15) << 4));
        block[size_t(64 * half + l + 32)] = uint8_t((q[l + 32] & 15) | ((q[l + 96] & 15) << 4));
        block[size_t(128 + 32 * half + l)] =
            uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
      }
    }
    const std::vector<float> grid = decoded(TensorType::q6_k, block, 256);
    const std::vector<uint8_t> again = gguf::encode(TensorType::q6_k, grid.data(), 256);
    CHECK(hex(again.data(), 210) == hex(block.data(), 210));
  }
}

TEST_CASE("gguf quantize: a written file holds exactly the bytes encode() made") {
  ScratchDir dir("gguf-quantize-bytes");
  const std::vector<float> values = varied_blocks(3 * 2, 256, 6);  // [3, 512]
  const Tensor matrix = Tensor::from_vector(values, {3, 512});
  const std::vector<TensorType> types = {TensorType::q8_0, TensorType::q4_0, TensorType::q4_1, TensorType::q4_k,
                                         TensorType::q6_k};
  gguf::Writer writer;
  for (const TensorType type : types) writer.add_tensor(gguf::tensor_type_name(uint32_t(type)), matrix, type);
  writer.write(dir / "types.gguf");
  const gguf::File file = gguf::File::open(dir / "types.gguf");
  for (const TensorType type : types) {
    const std::string name = gguf::tensor_type_name(uint32_t(type));
    INFO(name);
    const gguf::TensorInfo& info = *file.find(name);
    CHECK(info.type == type);
    CHECK(info.dims == std::vector<uint64_t>{512, 3});
    const std::vector<uint8_t> expected = gguf::encode(type, values.data(), values.size());
    REQUIRE(info.bytes == expected.size());
    CHECK(std::memcmp(file.data(info), expected.data(), expected.size()) == 0);
    CHECK(file.read(name).to_vector<float>() == decoded(type, expected, values.size()));
  }
  // Bytes per weight: 34/32, 18/32, 20/32, 144/256, 210/256.
  CHECK(double(file.find("Q8_0")->bytes) / 1536 == 1.0625);
  CHECK(double(file.find("Q4_0")->bytes) / 1536 == 0.5625);
  CHECK(double(file.find("Q4_1")->bytes) / 1536 == 0.625);
  CHECK(double(file.find("Q4_K")->bytes) / 1536 == 0.5625);
  CHECK(double(file.find("Q6_K")->bytes) / 1536 == 0.8203125);
}

TEST_CASE("gguf quantize: K-quant rows must be whole blocks of 256; the Llama writer falls back") {
  const std::vector<float> values(2 * 320, 0.5f);
  CHECK_THROWS_WITH_AS(gguf::encode(TensorType::q4_k, values.data(), 320),
                       doctest::Contains("320 values are not whole blocks of 256 for Q4_K"), Error);
  gguf::Writer writer;
  CHECK_THROWS_WITH_AS(writer.add_tensor("wide", Tensor::from_vector(values, {2, 320}), TensorType::q4_k),
                       doctest::Contains("tensor 'wide': its rows of 320 values are not whole blocks of 256 for Q4_K"),
                       Error);
  CHECK_THROWS_WITH_AS(writer.add_tensor("wide", Tensor::from_vector(values, {2, 320}), TensorType::q6_k),
                       doctest::Contains("not whole blocks of 256 for Q6_K"), Error);
  CHECK(gguf::writable_type(TensorType::q4_1));
  CHECK(!gguf::writable_type(TensorType::q5_k));
  CHECK(gguf::llama_file_type(TensorType::q4_1) == 3);
  CHECK(gguf::llama_file_type(TensorType::q4_k) == 14);
  CHECK(gguf::llama_file_type(TensorType::q6_k) == 18);

  // Hidden 256, intermediate 288: q/k/v/o, gate and up have rows of 256 (K-quant blocks), down
  // rows of 288 (blocks of 32 only), the embedding rows of 256; a second model with hidden 48
  // has rows of 48 nowhere whole blocks of 32.
  ScratchDir dir("gguf-quantize-fallback");
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.hidden_size = 256, config.intermediate_size = 288, config.head_dim = 64, config.num_hidden_layers = 1;
  config.tie_word_embeddings = false;
  const auto model = testing::random_llama(config, 7);
  for (const auto& [type, fallback, embedding] :
       std::vector<std::tuple<TensorType, TensorType, TensorType>>{{TensorType::q4_k, TensorType::q4_1, TensorType::q6_k},
                                                                   {TensorType::q6_k, TensorType::q8_0, TensorType::q6_k}}) {
    INFO(gguf::tensor_type_name(uint32_t(type)));
    std::vector<std::string> notes;
    gguf::Writer model_writer;
    gguf::add_llama_model(model_writer, *model, type, "fallback", [&](const std::string& note) { notes.push_back(note); },
                          embedding);
    gguf::add_llama_token_ids(model_writer, config);
    model_writer.write(dir / "model.gguf");
    const gguf::File file = gguf::File::open(dir / "model.gguf");
    CHECK(file.metadata("general.file_type").as_u64("") == gguf::llama_file_type(type));
    CHECK(file.metadata("general.quantization_version").as_u64("") == 2);
    CHECK(file.find("blk.0.attn_q.weight")->type == type);
    CHECK(file.find("blk.0.ffn_up.weight")->type == type);
    CHECK(file.find("blk.0.ffn_down.weight")->type == fallback);
    CHECK(file.find("token_embd.weight")->type == embedding);
    CHECK(file.find("output.weight")->type == embedding);
    CHECK(file.find("blk.0.attn_norm.weight")->type == TensorType::f32);
    REQUIRE(notes.size() == 1);
    CHECK(notes[0] == std::string("blk.0.ffn_down.weight: rows of 288 values are not whole blocks of 256; stored as ") +
                          gguf::tensor_type_name(uint32_t(fallback)) + " instead of " + gguf::tensor_type_name(uint32_t(type)));
    // The q rows went out in Meta order, quantized as encode() quantizes them.
    Tensor q_weight;
    for (const auto& [parameter_name, parameter] : model->named_parameters())
      if (parameter_name == "model.layers.0.self_attn.q_proj.weight") q_weight = parameter;
    const Tensor meta = gguf::permute_to_meta_rows(q_weight, config.num_attention_heads);
    const std::vector<uint8_t> expected = gguf::encode(type, meta.data<float>(), uint64_t(meta.numel()));
    const gguf::TensorInfo& q_info = *file.find("blk.0.attn_q.weight");
    CHECK(std::memcmp(file.data(q_info), expected.data(), expected.size()) == 0);
  }

  llama::LlamaConfig narrow = testing::tiny_llama_config(40);
  narrow.hidden_size = 48, narrow.intermediate_size = 64, narrow.head_dim = 12;
  std::vector<std::string> notes;
  gguf::Writer narrow_writer;
  gguf::add_llama_model(narrow_writer, *testing::random_llama(narrow, 8), TensorType::q4_k, "narrow",
                        [&](const std::string& note) { notes.push_back(note); });
  gguf::add_llama_token_ids(narrow_writer, narrow);
  narrow_writer.write(dir / "narrow.gguf");
  const gguf::File file = gguf::File::open(dir / "narrow.gguf");
  CHECK(file.find("blk.0.attn_q.weight")->type == TensorType::f16);   // rows of 48
  CHECK(file.find("blk.0.ffn_down.weight")->type == TensorType::q4_1);  // rows of 64
  CHECK(file.find("token_embd.weight")->type == TensorType::f16);
  REQUIRE(!notes.empty());
  CHECK(notes[0].find("not whole blocks of 256; stored as F16 instead of Q4_K") != std::string::npos);
}

namespace {

// sqrt(sum (got - expected)^2 / sum expected^2) over all logits.
double relative_rms(const std::vector<float>& expected, const std::vector<float>& got) {
  REQUIRE(expected.size() == got.size());
  double squares = 0, differences = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    squares += double(expected[i]) * expected[i];
    differences += (double(got[i]) - expected[i]) * (double(got[i]) - expected[i]);
  }
  return std::sqrt(differences / squares);
}

}  // namespace

TEST_CASE("gguf quantize: Q4_K and Q6_K models' logits stay near the f32 model's, as near as Q4_0's and Q8_0's") {
  // A random model (weights of spread 0.02, hidden 256 so every matrix is a K-quant) is
  // sensitive: each 4-bit matrix adds ~10% noise to its product. Measured relative RMS logit
  // errors: Q8_0 0.014, Q6_K 0.043, Q4_0 0.21, Q4_1 0.20, Q4_K 0.20 (0.16 with a Q6_K
  // embedding and output). The tolerances: Q6_K <= 0.06, Q4_K <= 0.25, and Q4_K no worse than
  // ggml's own Q4_0 (exact reference formulas, same 4.5 bits) by more than 5%.
  autograd::NoGradGuard no_grad;
  ScratchDir dir("gguf-quantize-logits");
  llama::LlamaConfig config = testing::tiny_llama_config(64);
  config.hidden_size = 256, config.intermediate_size = 512, config.head_dim = 64, config.num_hidden_layers = 2;
  config.tie_word_embeddings = false;
  config.initializer_range = 0.02;
  const auto model = testing::random_llama(config, 9);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 33, 2, 17, 60, 44}, {1, 8});
  const std::vector<float> expected = model->forward(ids).to_vector<float>();
  const auto error_of = [&](TensorType type, std::optional<TensorType> embedding) {
    gguf::Writer writer;
    std::vector<std::string> notes;
    gguf::add_llama_model(writer, *model, type, "logits", [&](const std::string& note) { notes.push_back(note); }, embedding);
    gguf::add_llama_token_ids(writer, config);
    writer.write(dir / "model.gguf");
    CHECK(notes.empty());
    const double error = relative_rms(expected, gguf::load_llama_gguf(dir / "model.gguf")->forward(ids).to_vector<float>());
    MESSAGE(std::string(gguf::tensor_type_name(uint32_t(type))), " relative RMS logit error ", error);
    return error;
  };
  const double q4_0 = error_of(TensorType::q4_0, std::nullopt), q4_k = error_of(TensorType::q4_k, std::nullopt);
  const double q4_k_mixed = error_of(TensorType::q4_k, TensorType::q6_k), q6_k = error_of(TensorType::q6_k, std::nullopt);
  CHECK(q4_k > 0);  // the weights were quantized
  CHECK(q4_k <= 0.25);
  CHECK(q4_k <= 1.05 * q4_0);
  CHECK(q4_k_mixed <= 0.25);
  CHECK(q6_k <= 0.06);
}
