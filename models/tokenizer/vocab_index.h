// A BPE vocabulary, token bytes <-> id, stored flat: every token's bytes in one buffer ordered by
// id, and an open-addressing table of (hash tag, id) for the lookup by bytes. Encoding looks up
// nearly every word whole; with a node-based std::unordered_map those lookups were most of the
// time spent on text of short, rare words (random bytes).
#pragma once

#include <cstdint>
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

  static size_t hash(std::string_view bytes) { return std::hash<std::string_view>{}(bytes); }

  // The id of a byte string that is one token, or -1.
  int32_t find(std::string_view bytes) const { return bytes.size() > longest_ ? -1 : find(bytes, hash(bytes)); }
  // The same, given hash(bytes).
  int32_t find(std::string_view bytes, size_t hash) const {
    if (bytes.empty() || bytes.size() > longest_) return -1;
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
  size_t slot_of(size_t hash) const { return size_t((uint64_t(hash) * 0x9E3779B97F4A7C15ull) >> shift_); }

  std::string bytes_;              // the tokens' bytes, in id order
  std::vector<uint32_t> offsets_;  // token id's bytes are bytes_[offsets_[id], offsets_[id + 1])
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 60;
  size_t count_ = 0, longest_ = 0;
};

}  // namespace lamina::tokenizer
