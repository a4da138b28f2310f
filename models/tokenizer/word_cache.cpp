#include "models/tokenizer/word_cache.h"

#include <algorithm>
#include <cstring>

namespace lamina::tokenizer {

WordCache::WordCache() = default;
WordCache::~WordCache() = default;

WordCache::Slot* WordCache::slots() const {
  std::call_once(allocated_, [&] { slots_ = std::make_unique<Slot[]>(size_t(1) << kSlotBits); });
  return slots_.get();
}

bool WordCache::find(std::string_view word, size_t hash, std::vector<int32_t>& ids) const {
  const size_t index = slot_of(hash);
  const Slot& slot = slots()[index];
  std::lock_guard lock(stripes_[index % kStripes]);
  if (slot.word_length != word.size() || slot.hash != hash || std::memcmp(slot.word, word.data(), word.size()) != 0) return false;
  ids.insert(ids.end(), slot.ids, slot.ids + slot.id_count);
  return true;
}

void WordCache::insert(std::string_view word, size_t hash, std::span<const int32_t> ids) {
  if (!cacheable(word) || ids.size() > kMaxIds) return;
  const size_t index = slot_of(hash);
  Slot& slot = slots()[index];
  std::lock_guard lock(stripes_[index % kStripes]);
  slot.hash = hash;
  slot.word_length = uint8_t(word.size());
  slot.id_count = uint8_t(ids.size());
  std::memcpy(slot.word, word.data(), word.size());
  std::copy(ids.begin(), ids.end(), slot.ids);
}

size_t WordCache::size() const {
  size_t count = 0;
  for (size_t stripe = 0; stripe < kStripes; ++stripe) {
    std::lock_guard lock(stripes_[stripe]);
    for (size_t index = stripe; index < (size_t(1) << kSlotBits); index += kStripes) count += slots()[index].word_length > 0;
  }
  return count;
}

void WordCache::clear() {
  for (size_t stripe = 0; stripe < kStripes; ++stripe) {
    std::lock_guard lock(stripes_[stripe]);
    for (size_t index = stripe; index < (size_t(1) << kSlotBits); index += kStripes) slots()[index].word_length = 0;
  }
}

}  // namespace lamina::tokenizer
