// Byte-pair encoding of one pre-tokenized word, on raw bytes: the vocabulary maps byte
// strings to ids and the merges say, in priority order, which adjacent pair of tokens joins
// into which token.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/merge_table.h"
#include "models/tokenizer/short_word.h"
#include "models/tokenizer/vocab_index.h"

namespace lamina::tokenizer {

class BpeTables;

// What one run of the merge loop did (for the tables of bpe_tables.h).
struct MergeTrace {
  int32_t merges = 0;
  bool ranks_non_decreasing = true;  // each merge ranked no lower than the one before
  Merge last{-1, -1};                // the final merge
  int32_t last_left = -1, last_right = -1;
};

// HF's merge loop (tokenizers' Word::merge_all) on the bytes of `word` (non-empty), appending
// the resulting ids: apply the lowest-ranked merge, leftmost first, until none applies. O(n log n)
// time and ~30 bytes of state per byte of the word. This is BPE as the reference defines it;
// every faster path is tested against it.
void merge_bytes(std::string_view word, const int32_t (&byte_ids)[256], const MergeTable& merges,
                 std::vector<int32_t>& ids, MergeTrace* trace = nullptr);

class BpeModel {
 public:
  // `vocab`: token bytes -> id (must contain all 256 single bytes). `merges`: pairs of token
  // byte strings in priority order; both sides and their concatenation must be in `vocab`.
  // `ignore_merges`: a word that is itself a token is emitted whole, before any merging (as
  // HF's BPE option of that name, and tiktoken, do for Llama-3). `source` names the file in
  // errors.
  BpeModel(const StringIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
           bool ignore_merges, std::string_view source);
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  ~BpeModel();

  // Appends the ids of one word (non-empty) to `ids`: the whole word when ignore_merges and it
  // is a token, else merge_word.
  void encode_word(std::string_view word, std::vector<int32_t>& ids) const;
  // The merge loop alone (merge_bytes).
  void merge_word(std::string_view word, std::vector<int32_t>& ids, MergeTrace* trace = nullptr) const {
    merge_bytes(word, byte_ids_, *merges_, ids, trace);
  }
  // The merge loop's result, by the fastest exact path for the word's length (short_word.h).
  void merge_word_fast(std::string_view word, std::vector<int32_t>& ids) const {
    if (word.size() < 2 || word.size() > kShortWordBytes) return merge_word(word, ids);
    ShortWordMerger::Result merged;
    short_words_->merge(word, merged);
    for (int i = 0; i < merged.count; ++i) ids.push_back(merged.ids[i]);  // (insert's block copy costs more here)
  }
  // encode_word for a word of two bytes, from one flat table.
  void encode_two_bytes(std::string_view word, std::vector<int32_t>& ids) const {
    const uint8_t first = uint8_t(word[0]), second = uint8_t(word[1]);
    const BytePair& pair = short_words_->byte_pair(first, second);
    // The word is one token when the vocabulary has it and ignore_merges, or when its bytes
    // merge (into that token: a merge makes the token spelled by its two sides).
    if (pair.token >= 0 && (ignore_merges_ || pair.rank != kNoMergeRank)) {
      ids.push_back(pair.token);
    } else {
      ids.push_back(byte_ids_[first]);
      ids.push_back(byte_ids_[second]);
    }
  }

  // The id of a byte string that is one token, or -1.
  int32_t find(std::string_view bytes) const { return vocab_->find(bytes); }
  const Merge* find_merge(int32_t left, int32_t right) const { return merges_->find(left, right); }
  int32_t byte_id(uint8_t byte) const { return byte_ids_[byte]; }
  const int32_t (&byte_ids() const)[256] { return byte_ids_; }
  const std::shared_ptr<const MergeTable>& merges() const { return merges_; }
  const std::shared_ptr<const ShortWordMerger>& short_words() const { return short_words_; }

  bool ignore_merges() const { return ignore_merges_; }
  const VocabIndex& vocab() const { return *vocab_; }
  const std::shared_ptr<const VocabIndex>& vocab_index() const { return vocab_; }

  // The tables of the long-word encoder (bpe_tables.h), built on first use: they take a
  // fraction of a second for Llama-3, which text made of short words never needs. Thread-safe.
  const BpeTables& tables() const;

 private:
  struct LazyTables;

  std::shared_ptr<const VocabIndex> vocab_;
  std::shared_ptr<const MergeTable> merges_;
  int32_t byte_ids_[256];
  std::shared_ptr<const ShortWordMerger> short_words_;
  bool ignore_merges_;
  std::unique_ptr<LazyTables> tables_;
};

}  // namespace lamina::tokenizer
