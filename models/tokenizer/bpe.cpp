#include "models/tokenizer/bpe.h"

#include <algorithm>
#include <mutex>

#include "models/tokenizer/bpe_tables.h"
#include "models/tokenizer/byte_level.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

struct BpeModel::LazyTables {
  std::once_flag once;
  std::unique_ptr<BpeTables> tables;
};

BpeModel::BpeModel(const StringIdMap& vocab, const std::vector<std::pair<std::string, std::string>>& merges,
                   bool ignore_merges, std::string_view source)
    : vocab_(std::make_shared<VocabIndex>(vocab, source)), ignore_merges_(ignore_merges), tables_(std::make_unique<LazyTables>()) {
  for (int b = 0; b < 256; ++b) {
    const int32_t id = find(std::string(1, char(b)));
    LAMINA_CHECK(id >= 0, source, ": model.vocab: lacks the single-byte token ", byte_level_encode(std::string(1, char(b))),
                 " (byte 0x", std::hex, b, "); byte-level BPE needs all 256");
    byte_ids_[b] = id;
  }
  auto table = std::make_shared<MergeTable>(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& left = merges[rank].first;  // not a structured binding: clang 14 cannot capture those
    const std::string& right = merges[rank].second;
    const int32_t left_id = find(left), right_id = find(right), result = find(left + right);
    const auto name = [&] { return byte_level_encode(left) + " " + byte_level_encode(right); };
    LAMINA_CHECK(left_id >= 0 && right_id >= 0, source, ": model.merges[", rank, "] (\"", name(),
                 "\") uses a token not in the vocabulary");
    LAMINA_CHECK(result >= 0, source, ": model.merges[", rank, "] (\"", name(), "\") makes a token not in the vocabulary");
    // A repeated pair takes its last rank, as in HF (which collects the list into a map).
    table->insert_or_assign(left_id, right_id, Merge{int32_t(rank), result});
  }
  merges_ = std::move(table);

  short_words_ = std::make_shared<ShortWordMerger>(
      byte_ids_, merges_, [&](uint8_t first, uint8_t second) { return find(std::string{char(first), char(second)}); });
}

BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;
BpeModel::~BpeModel() = default;

const BpeTables& BpeModel::tables() const {
  std::call_once(tables_->once, [&] { tables_->tables = std::make_unique<BpeTables>(*this); });
  return *tables_->tables;
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (ignore_merges_) {
    const int32_t whole = find(word);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }
  merge_word(word, ids);
}

// A min-heap of candidate merges ordered by (rank, position), over a linked list of symbols;
// entries made stale by an earlier merge are skipped when popped. The two arrays are kept per
// thread, so that the many short words of a text cost no allocation.
void merge_bytes(std::string_view word, const int32_t (&byte_ids)[256], const MergeTable& merges,
                 std::vector<int32_t>& ids, MergeTrace* trace) {
  if (word.size() == 1) {
    ids.push_back(byte_ids[uint8_t(word[0])]);
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
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> queue;  // a heap under std::greater: the top is the lowest (rank, pos)
  constexpr size_t kKeep = size_t(1) << 16;   // scratch kept between words, in elements
  struct Release {  // after a long word, give its scratch back
    ~Release() {
      if (symbols.capacity() > kKeep) std::vector<Symbol>().swap(symbols);
      if (queue.capacity() > kKeep) std::vector<Candidate>().swap(queue);
    }
  } release;

  const int32_t n = int32_t(word.size());
  symbols.resize(static_cast<size_t>(n));
  queue.clear();
  const auto push = [&](Candidate candidate) {
    queue.push_back(candidate);
    std::push_heap(queue.begin(), queue.end(), std::greater<>{});
  };
  for (int32_t i = 0; i < n; ++i) symbols[i] = {byte_ids[uint8_t(word[i])], i - 1, i + 1 < n ? i + 1 : -1, false};
  const auto consider = [&](int32_t pos) {  // the pair starting at symbol `pos`, if it merges
    const int32_t next = symbols[pos].next;
    if (next < 0) return;
    if (const Merge* merge = merges.find(symbols[pos].id, symbols[next].id)) push({merge->rank, pos, merge->result});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);

  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), std::greater<>{});
    const Candidate top = queue.back();
    queue.pop_back();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    // Stale when either side has changed since the candidate was queued: the pair now there
    // has a different rank (ranks identify pairs), or none.
    const Merge* current = merges.find(left.id, symbols[left.next].id);
    if (current == nullptr || current->rank != top.rank) continue;

    Symbol& right = symbols[left.next];
    if (trace != nullptr) {
      trace->ranks_non_decreasing = trace->ranks_non_decreasing && (trace->merges == 0 || top.rank >= trace->last.rank);
      ++trace->merges;
      trace->last = {top.rank, top.result};
      trace->last_left = left.id, trace->last_right = right.id;
    }
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
