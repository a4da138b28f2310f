// The cache of words that needed merging, shared by every thread that encodes with one
// tokenizer. A fixed table of slots, each holding one short word and its ids inline, picked
// by the word's hash; a new word overwrites whatever held its slot. No allocation per word and
// a bounded size, so that the rare words of prose that repeat are merged once; on text whose
// words never repeat (random bytes), WordCachePolicy leaves it alone.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

namespace lamina::tokenizer {

class WordCache {
 public:
  // Shorter words merge faster than a lookup; longer ones are rare.
  static constexpr size_t kMinWordBytes = 4, kMaxWordBytes = 48, kMaxIds = 12;
  static bool cacheable(std::string_view word) { return word.size() >= kMinWordBytes && word.size() <= kMaxWordBytes; }

  WordCache();
  ~WordCache();

  // Appends a cached word's ids to `ids`; false when the word is not cached. `hash` is the
  // word's VocabIndex::hash.
  bool find(std::string_view word, size_t hash, std::vector<int32_t>& ids) const;
  // Caches a cacheable word with at most kMaxIds ids (others are ignored).
  void insert(std::string_view word, size_t hash, std::span<const int32_t> ids);

  size_t size() const;
  void clear();

 private:
  static constexpr int kSlotBits = 14;
  static constexpr size_t kStripes = 64;  // locks, each for the slots with its index mod 64
  struct Slot {
    uint64_t hash;
    uint8_t word_length;  // 0: empty
    uint8_t id_count;
    char word[kMaxWordBytes];
    int32_t ids[kMaxIds];
  };
  static size_t slot_of(size_t hash) { return size_t((uint64_t(hash) * 0x9E3779B97F4A7C15ull) >> (64 - kSlotBits)); }
  Slot* slots() const;

  mutable std::once_flag allocated_;  // on first use: tokenizers that never merge a word pay nothing
  mutable std::unique_ptr<Slot[]> slots_;
  mutable std::mutex stripes_[kStripes];
};

// Whether one encode call should consult the cache, learned from the words it looks up: on text
// whose words do not repeat (random bytes) every lookup misses and every insertion is wasted,
// which costs more than merging those words. While the cache is off, a sample of the words
// (chosen by hash, so that a word is always in it or never) still goes through it, and their
// hit rate, which is the text's, turns it back on.
class WordCachePolicy {
 public:
  // Decided again every kWindow lookups: on while at least one in kMinHitShare hits. While off,
  // one word in kSampleEvery still goes through the cache.
  static constexpr uint32_t kWindow = 64, kMinHitShare = 8, kSampleEvery = 32;

  bool consult(size_t hash) const { return enabled_ || hash % kSampleEvery == 0; }
  void record(bool hit) {
    ++lookups_;
    hits_ += hit ? 1 : 0;
    if (lookups_ < kWindow) return;
    enabled_ = hits_ * kMinHitShare >= lookups_;
    lookups_ = hits_ = 0;
  }

 private:
  bool enabled_ = true;
  uint32_t lookups_ = 0, hits_ = 0;
};

}  // namespace lamina::tokenizer
