#include "models/tokenizer/tokenizer.h"

#include <algorithm>

#include "models/tokenizer/added_token_matcher.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/long_word.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/word_cache.h"
#include "tensor/error.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer::Tokenizer(BpeModel bpe, std::vector<AddedToken> added, std::string_view source, PreTokenizer pre_tokenizer)
    : bpe_(std::move(bpe)),
      added_tokens_(std::move(added)),
      pre_tokenizer_(pre_tokenizer),
      matcher_(std::make_unique<AddedTokenMatcher>()),
      cache_(std::make_unique<WordCache>()) {
  const VocabIndex& vocab = bpe_.vocab();
  // For the error below: the added token that took an id first (added_pieces_ is not sorted yet).
  const auto earlier_piece = [this](int32_t id) {
    for (const auto& [piece_id, piece] : added_pieces_)
      if (piece_id == id) return piece;
    return std::string();
  };
  int64_t size = vocab.id_end();
  for (const AddedToken& token : added_tokens_) size = std::max<int64_t>(size, int64_t(token.id) + 1);
  kinds_.assign(size_t(size), Kind::unassigned);
  for (int32_t id = 0; id < vocab.id_end(); ++id) {
    if (vocab.contains(id)) kinds_[size_t(id)] = Kind::ordinary;
  }
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const AddedToken& token = added_tokens_[i];
    const size_t id = size_t(token.id);
    // An added token may repeat a vocabulary entry (GPT-2's <|endoftext|> does), not contradict it.
    LAMINA_CHECK(kinds_[id] == Kind::unassigned || (kinds_[id] == Kind::ordinary && vocab.bytes(token.id) == token.content),
                 source, ": added_tokens[", i, "]: \"", token.content, "\" has id ", token.id, ", which is already \"",
                 kinds_[id] == Kind::ordinary ? byte_level_encode(vocab.bytes(token.id)) : earlier_piece(token.id), "\"");
    LAMINA_CHECK(added_ids_.emplace(token.content, token.id).second, source, ": added_tokens[", i, "]: \"", token.content, "\" appears twice");
    added_pieces_.emplace_back(token.id, token.content);
    kinds_[id] = token.special ? Kind::special : Kind::added;
    matcher_->add(token.content, int32_t(i), token.special);
  }
  std::sort(added_pieces_.begin(), added_pieces_.end());  // ids are distinct: checked above
  bos_id_ = added_token_id("<|begin_of_text|>");
}

// ---- encoding

// Longer words go to the linear-time encoder (long_word.h).
constexpr size_t kLongWordBytes = 256;

std::string_view Tokenizer::without_dropped_bytes(std::string_view word, std::string& kept) const {
  if (!drops_bytes_) return word;
  const auto dropped = [&](char byte) { return dropped_bytes_[uint8_t(byte)]; };
  if (std::none_of(word.begin(), word.end(), dropped)) return word;
  kept.clear();
  for (const char byte : word) {
    if (!dropped(byte)) kept += byte;
  }
  return kept;
}

std::array<bool, 256> Tokenizer::add_missing_bytes(StringIdMap& vocab, int32_t first_free_id) {
  std::array<bool, 256> missing{};
  int32_t next_id = first_free_id;
  for (int byte = 0; byte < 256; ++byte) {
    if (vocab.emplace(std::string(1, char(byte)), next_id).second) missing[size_t(byte)] = true, ++next_id;
  }
  return missing;
}

void Tokenizer::drop_bytes(const std::array<bool, 256>& dropped, int32_t vocab_size) {
  dropped_bytes_ = dropped;
  drops_bytes_ = std::find(dropped.begin(), dropped.end(), true) != dropped.end();
  LAMINA_ASSERT(vocab_size <= int32_t(kinds_.size()));
  kinds_.resize(size_t(vocab_size));
  std::erase_if(added_pieces_, [vocab_size](const auto& piece) { return piece.first >= vocab_size; });
}

void Tokenizer::encode_word(std::string_view word, Output& out) const {
  std::vector<int32_t>& ids = out.ids;
  std::string kept;
  word = without_dropped_bytes(word, kept);
  if (word.empty()) return;  // only bytes the vocabulary lacks
  if (word.size() == 1) {  // every byte is a token
    ids.push_back(bpe_.byte_id(uint8_t(word[0])));
    return;
  }
  if (word.size() == 2) {  // all such words are in one flat table
    bpe_.encode_two_bytes(word, ids);
    return;
  }
  // Most words of ordinary text are whole tokens: one hash lookup, no lock.
  const size_t hash = VocabIndex::hash(word);
  if (bpe_.ignore_merges()) {
    const int32_t whole = bpe_.vocab().find(word, hash);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }
  if (word.size() > kLongWordBytes) {  // the merge loop's state would be ~30 bytes a byte
    LongWordEncoder encoder(bpe_.tables());
    constexpr size_t kPiece = size_t(1) << 18;  // ids reach a sink at least this often
    for (size_t offset = 0; offset < word.size(); offset += kPiece) {
      encoder.append(word.substr(offset, kPiece), ids);
      out.drain_if_large();
    }
    encoder.finish(ids);
    return;
  }
  if (!WordCache::cacheable(word) || !out.cache_policy.consult(hash)) {
    bpe_.merge_word_fast(word, ids);
    return;
  }
  const bool hit = cache_->find(word, hash, ids);
  out.cache_policy.record(hit);
  if (hit) return;
  const size_t first = ids.size();
  bpe_.merge_word_fast(word, ids);
  cache_->insert(word, hash, std::span(ids).subspan(first));
}

void Tokenizer::encode_ordinary(std::string_view text, Output& out) const {
  WordIterator words(text, pre_tokenizer_);
  for (std::string_view word = words.next(); !word.empty(); word = words.next()) {
    encode_word(word, out);
    out.drain_if_large();
  }
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
  Output out{ids};
  encode_ordinary(text, out);
}

void Tokenizer::encode(std::string_view text, const EncodeOptions& options, Output& out) const {
  if (options.add_bos) {
    LAMINA_CHECK(bos_id_.has_value(), "tokenizer: add_bos asked for, but the vocabulary has no <|begin_of_text|> (nor a BOS id of its file)");
    out.ids.push_back(*bos_id_);
  }
  size_t piece_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (matcher_->may_start(uint8_t(text[pos]))) {
      const AddedTokenMatcher::Match match = matcher_->longest_at(text, pos, options.parse_special);
      if (match.index >= 0) {
        encode_ordinary(text.substr(piece_begin, pos - piece_begin), out);
        out.ids.push_back(added_tokens_[size_t(match.index)].id);
        pos += match.length;
        piece_begin = pos;
        continue;
      }
    }
    ++pos;
  }
  encode_ordinary(text.substr(piece_begin), out);
}

void Tokenizer::encode(std::string_view text, const EncodeOptions& options, std::vector<int32_t>& ids) const {
  Output out{ids};
  encode(text, options, out);
}

void Tokenizer::encode(std::string_view text, const EncodeOptions& options, const IdSink& sink) const {
  std::vector<int32_t> batch;
  Output out{batch, &sink};
  encode(text, options, out);
  out.drain();
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  encode(text, options, ids);
  return ids;
}

// ---- decoding and lookups

std::string_view Tokenizer::token_bytes(int32_t id) const {
  LAMINA_CHECK(contains(id), "tokenizer: token id ", id, " is not in the vocabulary (ids 0..", vocab_size() - 1, ")");
  if (kinds_[size_t(id)] == Kind::ordinary) [[likely]]
    return bpe_.vocab().bytes(id);
  return added_piece(id);
}

// Out of the way of token_bytes's ordinary path, which decoding takes for nearly every id.
[[gnu::noinline]] std::string_view Tokenizer::added_piece(int32_t id) const {
  const auto found = std::lower_bound(added_pieces_.begin(), added_pieces_.end(), id,
                                      [](const auto& piece, int32_t wanted) { return piece.first < wanted; });
  return found != added_pieces_.end() && found->first == id ? std::string_view(found->second) : std::string_view();
}

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& options) const {
  std::string text;
  for (const int32_t id : ids) {
    const std::string_view bytes = token_bytes(id);
    if (options.skip_special && kinds_[size_t(id)] == Kind::special) continue;
    text.append(bytes);
  }
  return text;
}

std::optional<int32_t> Tokenizer::added_token_id(std::string_view content) const {
  const auto it = added_ids_.find(content);
  if (it == added_ids_.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::require_added_token(std::string_view content) const {
  const std::optional<int32_t> id = added_token_id(content);
  LAMINA_CHECK(id.has_value(), "tokenizer: the vocabulary has no added token ", content);
  return *id;
}

size_t Tokenizer::cache_size() const { return cache_->size(); }

void Tokenizer::clear_cache() const { cache_->clear(); }

}  // namespace lamina::tokenizer
