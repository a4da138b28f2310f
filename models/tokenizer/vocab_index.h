// A BPE vocabulary, token bytes <-> id, stored flat: every token's bytes in one buffer ordered by
// id, and an open-addressing table of (hash tag, id) for the lookup by bytes. Encoding looks up
// nearly every word whole; with a node-based std::unordered_map those lookups were most of the
// time spent on text of short, rare words (random bytes). The table (2 MB for Llama-3) does not
// stay in a core's cache, so a Bloom filter (16 bits a token, two of them set per token in one
// 64-bit word) turns away most words that are not tokens from cache.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lamina::tokenizer {

// Hashing and equality that accept a std::string_view key (no temporary std::string per lookup).
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class VocabIndex {
 public:
  // Tokens must be non-empty and ids distinct and non-negative; `source` names the file in errors.
  VocabIndex(const StringIdMap& vocab, std::string_view source);

  // The hash of the vocabulary and of the word cache: inline and cheap for the short words it
  // mostly sees (std::hash's out-of-line loop cost more than the lookup it serves). Each step
  // folds 8 bytes into the state by a 64x64->128-bit multiply, whose two halves mix every bit.
  static size_t hash(std::string_view bytes) {
    const char* data = bytes.data();
    size_t left = bytes.size();
    uint64_t state = mix(0x9E3779B97F4A7C15ull ^ left, 0xA0761D6478BD642Full);
    for (; left > 8; left -= 8, data += 8) state = mix(state ^ load(data, 8), 0xE7037ED1A0B428DBull);
    // The last 1..8 bytes: two overlapping 4-byte loads cover 4..8 of them, three single bytes 1..3.
    uint64_t tail = 0;
    if (left >= 4) {
      tail = (load(data, 4) << 32) | load(data + left - 4, 4);
    } else if (left > 0) {
      tail = (uint64_t(uint8_t(data[0])) << 16) | (uint64_t(uint8_t(data[left / 2])) << 8) | uint8_t(data[left - 1]);
    }
    return size_t(mix(state ^ tail, 0x8EBC6AF09C88C6E3ull));
  }

  // The id of a byte string that is one token, or -1.
  int32_t find(std::string_view bytes) const { return bytes.size() > longest_ ? -1 : find(bytes, hash(bytes)); }
  // The same, given hash(bytes).
  int32_t find(std::string_view bytes, size_t hash) const {
    if (bytes.empty() || bytes.size() > longest_) return -1;
    const uint64_t mask = filter_mask(hash);
    if ((filter_[filter_word(hash)] & mask) != mask) return -1;
    const uint32_t tag = uint32_t(hash);
    for (size_t i = slot_of(hash);; i = (i + 1) & mask_) {
      const Slot slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && this->bytes(slot.id) == bytes) return slot.id;
    }
  }

  // A token's bytes; empty for an id that is not a token.
  std::string_view bytes(int32_t id) const {
    if (id < 0 || size_t(id) + 1 >= offsets_.size()) return {};
    return std::string_view(bytes_).substr(offsets_[size_t(id)], offsets_[size_t(id) + 1] - offsets_[size_t(id)]);
  }
  bool contains(int32_t id) const { return !bytes(id).empty(); }
  int32_t id_end() const { return int32_t(offsets_.size() - 1); }  // largest id + 1
  size_t size() const { return count_; }
  size_t longest() const { return longest_; }

 private:
  struct Slot {
    uint32_t tag;  // low bits of the hash
    int32_t id;    // -1: empty
  };
  static uint64_t mix(uint64_t a, uint64_t b) {
    const unsigned __int128 product = static_cast<unsigned __int128>(a) * b;
    return uint64_t(product) ^ uint64_t(product >> 64);
  }
  static uint64_t load(const char* data, size_t count) {  // count <= 8 bytes, little-endian order irrelevant
    uint64_t value = 0;
    std::memcpy(&value, data, count);
    return value;
  }
  size_t slot_of(size_t hash) const { return size_t((uint64_t(hash) * 0x9E3779B97F4A7C15ull) >> shift_); }
  // The filter mixes the hash with another multiplier, so that its bits are independent of the slot.
  static uint64_t filter_hash(size_t hash) { return uint64_t(hash) * 0xD6E8FEB86659FD93ull; }
  size_t filter_word(size_t hash) const { return size_t(filter_hash(hash) >> filter_shift_); }
  static uint64_t filter_mask(size_t hash) {
    const uint64_t mixed = filter_hash(hash);
    return (uint64_t(1) << (mixed & 63)) | (uint64_t(1) << ((mixed >> 6) & 63));
  }

  std::string bytes_;              // the tokens' bytes, in id order
  std::vector<uint32_t> offsets_;  // token id's bytes are bytes_[offsets_[id], offsets_[id + 1])
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
  std::vector<uint64_t> filter_;
  int filter_shift_ = 60;
  size_t count_ = 0, longest_ = 0;
};

}  // namespace lamina::tokenizer
