#include "models/tokenizer/vocab_index.h"

#include <algorithm>
#include <limits>

#include "models/tokenizer/byte_level.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

VocabIndex::VocabIndex(const StringIdMap& vocab, std::string_view source) : count_(vocab.size()) {
  std::vector<std::pair<int32_t, const std::string*>> by_id;
  by_id.reserve(vocab.size());
  size_t total_bytes = 0;
  for (const auto& [bytes, id] : vocab) {
    LAMINA_CHECK(!bytes.empty(), source, ": model.vocab: the empty string is not a token (id ", id, ")");
    LAMINA_CHECK(id >= 0, source, ": model.vocab[\"", byte_level_encode(bytes), "\"]: negative id ", id);
    by_id.emplace_back(id, &bytes);
    total_bytes += bytes.size();
    longest_ = std::max(longest_, bytes.size());
  }
  LAMINA_CHECK(total_bytes < std::numeric_limits<uint32_t>::max(), source, ": model.vocab: the tokens add up to ",
               total_bytes, " bytes, more than 4 GiB");
  std::sort(by_id.begin(), by_id.end());
  const size_t id_end = by_id.empty() ? 0 : size_t(by_id.back().first) + 1;
  bytes_.reserve(total_bytes);
  offsets_.assign(id_end + 1, 0);
  size_t next = 0;
  for (size_t id = 0; id < id_end; ++id) {
    offsets_[id] = uint32_t(bytes_.size());
    if (next < by_id.size() && size_t(by_id[next].first) == id) {
      bytes_ += *by_id[next].second;
      ++next;
      LAMINA_CHECK(next == by_id.size() || size_t(by_id[next].first) != id, source, ": model.vocab: id ", id,
                   " is given to two vocabulary tokens (\"", byte_level_encode(*by_id[next - 1].second), "\" and \"",
                   byte_level_encode(*by_id[next].second), "\")");
    }
  }
  offsets_[id_end] = uint32_t(bytes_.size());

  int bits = 4;
  while ((size_t(1) << bits) < 2 * vocab.size()) ++bits;  // load factor at most 1/2
  slots_.assign(size_t(1) << bits, Slot{0, -1});
  mask_ = slots_.size() - 1;
  shift_ = 64 - bits;
  int filter_bits = 7;  // at least two words: a shift by 64 would be undefined
  while ((size_t(1) << filter_bits) < 16 * vocab.size()) ++filter_bits;
  filter_.assign(size_t(1) << (filter_bits - 6), 0);
  filter_shift_ = 64 - (filter_bits - 6);
  for (const auto& [id, bytes] : by_id) {
    const size_t hash = VocabIndex::hash(*bytes);
    filter_[filter_word(hash)] |= filter_mask(hash);
    size_t i = slot_of(hash);
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = {uint32_t(hash), id};
  }
}

}  // namespace lamina::tokenizer
