// Byte-pair encoding of one pre-tokenized word, on raw bytes: the vocabulary maps byte
// strings to ids and the merges say, in priority order, which adjacent pair of tokens joins
// into which token.
#pragma once

#include <cstdint>
#include <functional>
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

class BpeModel {
 public:
  // `vocab`: token bytes -> id (must contain all 256 single bytes). `merges`: pairs of token
  // byte strings in priority order; both sides and their concatenation must be in `vocab`.
  // `ignore_merges`: a word that is itself a token is emitted whole, before any merging (as
  // HF's BPE option of that name, and tiktoken, do for Llama-3). `source` names the file in
  // errors.
  BpeModel(StringIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           bool ignore_merges, std::string_view source);

  // Appends the ids of one word (non-empty) to `ids`.
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;

  // The id of a byte string that is one token, or -1.
  int32_t find(std::string_view bytes) const {
    const auto it = vocab_.find(bytes);
    return it == vocab_.end() ? -1 : it->second;
  }

  bool ignore_merges() const { return ignore_merges_; }
  const StringIdMap& vocab() const { return vocab_; }

 private:
  struct Merge {
    int32_t rank;    // position in the merges list: lower merges first
    int32_t result;  // id of the joined token
  };
  static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t(uint32_t(left)) << 32) | uint32_t(right); }
  const Merge* find_merge(int32_t left, int32_t right) const {
    const auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }

  StringIdMap vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_ids_[256];
  bool ignore_merges_;
};

}  // namespace lamina::tokenizer
