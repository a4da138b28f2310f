// The merge loop on short words, fast: the same ids as merge_bytes (bpe.h), for words of 2 to
// kShortWordBytes bytes, which most words of any text are. Shared by the word encoder
// (BpeModel) and the long-word encoder, which merges short windows of a long word (long_word.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "models/tokenizer/merge_table.h"

namespace lamina::tokenizer {

inline constexpr size_t kShortWordBytes = 32;

// What two single bytes make, for all 65536 pairs in one flat table (512 KB). The first round of
// every merge loop looks up each pair of its word's bytes; in the merge table's scattered slots
// (16 MB for Llama-3) those lookups miss the cache, here they mostly hit.
struct BytePair {
  int32_t token = -1;           // the two-byte string's id, or -1
  int32_t rank = kNoMergeRank;  // the rank of the merge of the two bytes, whose result is `token`
};

class ShortWordMerger {
 public:
  // `token_of_two_bytes(first, second)`: the id of that two-byte string, or -1.
  template <typename TokenOfTwoBytes>
  ShortWordMerger(const int32_t (&byte_ids)[256], std::shared_ptr<const MergeTable> merges, TokenOfTwoBytes token_of_two_bytes)
      : merges_(std::move(merges)), byte_pairs_(size_t(1) << 16) {
    for (int byte = 0; byte < 256; ++byte) byte_ids_[byte] = byte_ids[byte];
    for (size_t pair = 0; pair < byte_pairs_.size(); ++pair) {
      const uint8_t first = uint8_t(pair >> 8), second = uint8_t(pair);
      byte_pairs_[pair].token = token_of_two_bytes(first, second);
      if (const Merge* merge = merges_->find(byte_ids_[first], byte_ids_[second])) byte_pairs_[pair].rank = merge->rank;
    }
  }

  struct Result {
    int count = 0;
    int32_t ids[kShortWordBytes];
    uint8_t lengths[kShortWordBytes];  // in bytes
  };
  // The merge loop without its heap, linked list and per-thread scratch: each round scans the (at
  // most 31) pairs for the lowest rank, leftmost on a tie, as the heap orders them. O(n^2)
  // comparisons, but each pair is still looked up once, when it forms (a pair of bytes in
  // byte_pairs_), and on short words the scan costs less than the heap's upkeep.
  void merge(std::string_view word, Result& result) const;

  const BytePair& byte_pair(uint8_t first, uint8_t second) const { return byte_pairs_[size_t(first) << 8 | second]; }
  int32_t byte_id(uint8_t byte) const { return byte_ids_[byte]; }

 private:
  int32_t byte_ids_[256];
  std::shared_ptr<const MergeTable> merges_;
  std::vector<BytePair> byte_pairs_;  // by first byte * 256 + second byte
};

}  // namespace lamina::tokenizer
