// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A Generator is a seed plus a counter offset. A draw of n values reserves a range of
// counters; value i of the draw depends only on (seed, first counter, i), never on how the
// work is split across threads or devices, so CPU and CUDA produce the same stream.
//
// Words: each 128-bit counter yields four 32-bit words. A draw that needs w words per value
// reserves ceil(n * w / 4) counters; value i reads words [i*w, i*w + w) of the draw.
#pragma once

#include <array>
#include <cstdint>

namespace lamina {

using PhiloxBlock = std::array<uint32_t, 4>;

// Ten rounds of Philox4x32 on a 128-bit counter with a 64-bit key.
inline PhiloxBlock philox4x32_10(PhiloxBlock counter, uint64_t key64) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t key0 = uint32_t(key64), key1 = uint32_t(key64 >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t product0 = uint64_t(kMul0) * counter[0];
    const uint64_t product1 = uint64_t(kMul1) * counter[2];
    counter = {uint32_t(product1 >> 32) ^ counter[1] ^ key0, uint32_t(product1),
               uint32_t(product0 >> 32) ^ counter[3] ^ key1, uint32_t(product0)};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// Word `word_index` of the stream that starts at counter `first_counter`.
inline uint32_t philox_word(uint64_t seed, uint64_t first_counter, uint64_t word_index) {
  const uint64_t counter = first_counter + word_index / 4;
  const PhiloxBlock block = philox4x32_10({uint32_t(counter), uint32_t(counter >> 32), 0u, 0u}, seed);
  return block[word_index % 4];
}

// Uniform in [0, 1) from 24 random bits (every float in the range is a multiple of 2^-24).
inline float uniform_from_word(uint32_t word) { return float(word >> 8) * 5.9604644775390625e-08f; }
// Uniform in [0, 1) from 53 random bits of two words.
inline double uniform53_from_words(uint32_t high, uint32_t low) {
  return double((uint64_t(high) << 21) ^ (low >> 11)) * 1.1102230246251565e-16;
}

class Generator {
 public:
  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed_(seed), offset_(offset) {}

  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }  // the next unused counter
  void set_offset(uint64_t offset) { offset_ = offset; }

  // Reserves the counters for `values` values of `words_per_value` words; returns the first.
  uint64_t reserve(uint64_t values, uint64_t words_per_value) {
    const uint64_t first = offset_;
    offset_ += (values * words_per_value + 3) / 4;
    return first;
  }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace lamina
