// The merges of a BPE vocabulary as an open-addressing hash table from a pair of token ids to
// (rank, result): BPE looks a pair up for nearly every input byte, and a node-based
// std::unordered_map spent most of the time of encoding random bytes chasing pointers. Most
// pairs of text that needs merging have no merge, and the table (16 MB for Llama-3) is far
// larger than a core's cache, so a small Bloom filter (8 to 16 bits a merge, two of them set per
// merge in one 64-bit word) answers most of those lookups from cache.
#pragma once

#include <cstdint>
#include <vector>

namespace lamina::tokenizer {

// The rank of "no merge", above every real one (for finding the lowest rank by comparison).
inline constexpr int32_t kNoMergeRank = INT32_MAX;

struct Merge {
  int32_t rank;    // position in the merges list: lower merges first
  int32_t result;  // id of the joined token
};

class MergeTable {
 public:
  explicit MergeTable(size_t expected_count) {
    int bits = 4;
    while ((size_t(1) << bits) < 2 * expected_count) ++bits;  // load factor at most 1/2
    slots_.assign(size_t(1) << bits, Slot{kEmpty, {}});
    mask_ = slots_.size() - 1;
    shift_ = 64 - bits;
    int filter_bits = 7;  // at least two words: a shift by 64 would be undefined
    while ((size_t(1) << filter_bits) < 8 * expected_count) ++filter_bits;
    filter_.assign(size_t(1) << (filter_bits - 6), 0);
    filter_shift_ = 64 - (filter_bits - 6);
  }

  // A repeated pair keeps the merge given last.
  void insert_or_assign(int32_t left, int32_t right, Merge merge) {
    const uint64_t key = pair_key(left, right);
    filter_[filter_word(key)] |= filter_mask(key);
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == kEmpty || slots_[i].key == key) {
        slots_[i] = {key, merge};
        return;
      }
    }
  }

  const Merge* find(int32_t left, int32_t right) const {
    const uint64_t key = pair_key(left, right);
    const uint64_t mask = filter_mask(key);
    if ((filter_[filter_word(key)] & mask) != mask) return nullptr;
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].merge;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  struct Slot {
    uint64_t key;
    Merge merge;
  };
  // Ids are never negative, so no pair has the key of (-1, -1).
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }
  // Fibonacci hashing: the top bits of the product mix every bit of both ids.
  size_t slot_of(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  // The filter uses another multiplier, so that its bits are independent of the slot.
  static uint64_t filter_hash(uint64_t key) { return key * 0xD6E8FEB86659FD93ull; }
  size_t filter_word(uint64_t key) const { return size_t(filter_hash(key) >> filter_shift_); }
  static uint64_t filter_mask(uint64_t key) {
    const uint64_t hash = filter_hash(key);
    return (uint64_t(1) << (hash & 63)) | (uint64_t(1) << ((hash >> 6) & 63));
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
  std::vector<uint64_t> filter_;
  int filter_shift_ = 60;
};

}  // namespace lamina::tokenizer
