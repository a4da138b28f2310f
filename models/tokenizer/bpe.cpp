#include "models/tokenizer/bpe.h"

#include <queue>

#include "models/tokenizer/byte_level.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

BpeModel::BpeModel(StringIdMap vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   bool ignore_merges, std::string_view source)
    : vocab_(std::move(vocab)), ignore_merges_(ignore_merges) {
  for (int b = 0; b < 256; ++b) {
    const int32_t id = find(std::string(1, char(b)));
    LAMINA_CHECK(id >= 0, source, ": the vocabulary lacks the single-byte token ", byte_level_encode(std::string(1, char(b))),
                 " (byte 0x", std::hex, b, "); byte-level BPE needs all 256");
    byte_ids_[b] = id;
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& left = merges[rank].first;  // not a structured binding: clang 14 cannot capture those
    const std::string& right = merges[rank].second;
    const int32_t left_id = find(left), right_id = find(right), result = find(left + right);
    const auto name = [&] { return byte_level_encode(left) + " " + byte_level_encode(right); };
    LAMINA_CHECK(left_id >= 0 && right_id >= 0, source, ": merge ", rank, " (\"", name(), "\") uses a token not in the vocabulary");
    LAMINA_CHECK(result >= 0, source, ": merge ", rank, " (\"", name(), "\") makes a token not in the vocabulary");
    // A repeated pair takes its last rank, as in HF (which collects the list into a map).
    merges_.insert_or_assign(pair_key(left_id, right_id), Merge{int32_t(rank), result});
  }
}

// HF's merge loop (tokenizers' Word::merge_all): a min-heap of candidate merges ordered by
// (rank, position), over a linked list of symbols; entries made stale by an earlier merge
// are skipped when popped. This applies the lowest-ranked merge, leftmost first, until none
// applies, in O(n log n) for a word of n bytes (a long run of punctuation is one word).
void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    const int32_t whole = find(word);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }
  if (word.size() == 1) {
    ids.push_back(byte_ids_[uint8_t(word[0])]);
    return;
  }

  struct Symbol {
    int32_t id;
    int32_t prev, next;  // -1 at the ends
    bool removed;
  };
  struct Candidate {
    int32_t rank, pos, result;
    bool operator>(const Candidate& other) const { return rank != other.rank ? rank > other.rank : pos > other.pos; }
  };

  const int32_t n = int32_t(word.size());
  std::vector<Symbol> symbols(static_cast<size_t>(n));
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (int32_t i = 0; i < n; ++i) symbols[i] = {byte_ids_[uint8_t(word[i])], i - 1, i + 1 < n ? i + 1 : -1, false};
  const auto consider = [&](int32_t pos) {  // the pair starting at symbol `pos`, if it merges
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    if (const Merge* merge = find_merge(symbols[pos].id, symbols[next].id)) queue.push({merge->rank, pos, merge->result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    // Stale when either side has changed since the candidate was queued: the pair now there
    // has a different rank (ranks identify pairs), or none.
    const Merge* current = find_merge(left.id, symbols[left.next].id);
    if (current == nullptr || current->rank != top.rank) continue;

    Symbol& right = symbols[left.next];
    left.id = top.result;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (int32_t i = 0; i >= 0; i = symbols[i].next) ids.push_back(symbols[i].id);
}

}  // namespace lamina::tokenizer
