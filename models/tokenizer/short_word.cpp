#include "models/tokenizer/short_word.h"

#include "tensor/error.h"

namespace lamina::tokenizer {

void ShortWordMerger::merge(std::string_view word, Result& result) const {
  LAMINA_CHECK(word.size() >= 2 && word.size() <= kShortWordBytes, "tokenizer: internal error: a short-word merge of ",
               word.size(), " bytes");
  // Symbols stay where their first byte is, linked to their neighbours (no array is shifted,
  // which costs more than the whole merge on words this short); a merged-away one is skipped.
  // For each symbol, the rank and result of merging it with the next (kNoMergeRank: none).
  const int size = int(word.size());
  int32_t symbols[kShortWordBytes], ranks[kShortWordBytes], results[kShortWordBytes];
  uint8_t lengths[kShortWordBytes];
  int8_t next[kShortWordBytes], previous[kShortWordBytes];
  for (int i = 0; i < size; ++i) {
    symbols[i] = byte_ids_[uint8_t(word[size_t(i)])];
    lengths[i] = 1;
    next[i] = int8_t(i + 1);
    previous[i] = int8_t(i - 1);
  }
  for (int i = 0; i + 1 < size; ++i) {
    const BytePair& pair = byte_pair(uint8_t(word[size_t(i)]), uint8_t(word[size_t(i) + 1]));
    ranks[i] = pair.rank;
    results[i] = pair.token;
  }
  ranks[size - 1] = kNoMergeRank;
  const MergeTable& merges = *merges_;
  const auto look_up = [&](int i) {  // symbol i has a next one
    const Merge* merge = merges.find(symbols[i], symbols[next[i]]);
    ranks[i] = merge != nullptr ? merge->rank : kNoMergeRank;
    results[i] = merge != nullptr ? merge->result : -1;
  };

  while (true) {
    // The lowest rank, leftmost (strictly lower replaces it), without branches: which pair wins
    // is as good as random, and mispredicted branches cost more than the scan.
    int best = 0;
    int32_t best_rank = ranks[0];
    for (int i = 1; i + 1 < size; ++i) {
      const bool lower = ranks[i] < best_rank;
      best = lower ? i : best;
      best_rank = lower ? ranks[i] : best_rank;
    }
    if (best_rank == kNoMergeRank) break;
    const int gone = next[best];
    symbols[best] = results[best];
    lengths[best] = uint8_t(lengths[best] + lengths[gone]);
    ranks[gone] = kNoMergeRank;
    next[best] = next[gone];
    if (next[best] < size) {
      previous[next[best]] = int8_t(best);
      look_up(best);
    } else {
      ranks[best] = kNoMergeRank;
    }
    if (previous[best] >= 0) look_up(previous[best]);
  }
  result.count = 0;
  for (int i = 0; i < size; i = next[i]) {
    result.ids[result.count] = symbols[i];
    result.lengths[result.count++] = lengths[i];
  }
}

}  // namespace lamina::tokenizer
