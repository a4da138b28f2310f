#include "models/tokenizer/encode_stream.h"

#include <algorithm>

#include "models/tokenizer/added_token_matcher.h"
#include "models/tokenizer/long_word.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/unicode.h"
#include "tensor/error.h"

namespace lamina::tokenizer {
namespace {

constexpr size_t kMaxCharBytes = 4;
constexpr size_t kBatch = size_t(1) << 16;  // ids handed to the sink at a time

// The last character boundary at or before `limit`, walking from the boundary `from`. A
// character that starts at least 4 bytes before the end of the held bytes decodes the same
// whatever follows, so boundaries found this way stay boundaries.
size_t boundary_before(std::string_view text, size_t from, size_t limit) {
  size_t pos = from;
  while (pos < limit) {
    const size_t next = pos + decode_utf8(text, pos).length;
    if (next > limit) break;
    pos = next;
  }
  return pos;
}

// After `count` characters from `from`.
size_t after_chars(std::string_view text, size_t from, size_t count) {
  size_t pos = from;
  for (size_t i = 0; i < count && pos < text.size(); ++i) pos += decode_utf8(text, pos).length;
  return pos;
}

// What is kept of a long word that starts at `begin` once its certain part is handed over:
// enough for the scan to make the same choices on the kept bytes that follow.
std::string head_of(std::string_view text, size_t begin, const WordScan& scan) {
  if (scan.kind == WordScan::whitespace) return scan.after_last_newline != 0 ? " \n" : "  ";
  return std::string(text.substr(begin, after_chars(text, begin, 3) - begin));  // the choice needs 3 at most
}

}  // namespace

EncodeStream::EncodeStream(const Tokenizer& tokenizer, const EncodeOptions& options, Tokenizer::IdSink sink,
                           EncodeStreamOptions stream_options)
    : tokenizer_(tokenizer), options_(options), sink_(std::move(sink)), stream_options_(stream_options) {
  // A word that could be one token must go through the whole-word lookup of encode_word.
  stream_options_.long_word_bytes = std::max(stream_options_.long_word_bytes, tokenizer.bpe().vocab().longest() + 1);
  process_at_ = stream_options_.chunk_bytes;
  if (options_.add_bos) {
    LAMINA_CHECK(tokenizer.bos_id().has_value(), "tokenizer: add_bos asked for, but the vocabulary has no <|begin_of_text|>");
    ids_.push_back(*tokenizer.bos_id());
  }
}

EncodeStream::~EncodeStream() = default;

void EncodeStream::push(std::string_view bytes) {
  LAMINA_CHECK(!finished_, "tokenizer: EncodeStream::push after finish");
  pending_.append(bytes);
  if (pending_.size() < process_at_) return;
  process(false);
  // When little could be encoded (text held until it is certain), wait for as much again:
  // scanning the held bytes on every piece would be quadratic.
  process_at_ = pending_.size() + std::max(stream_options_.chunk_bytes, pending_.size());
}

void EncodeStream::finish() {
  LAMINA_CHECK(!finished_, "tokenizer: EncodeStream::finish called twice");
  process(true);
  finished_ = true;
  drain(true);
}

void EncodeStream::drain(bool all) {
  if (ids_.empty() || (!all && ids_.size() < kBatch)) return;
  sink_(ids_);
  ids_.clear();
}

// As Tokenizer::encode: added tokens split the text into pieces, each piece into words. A
// token's match must be decided (no longer token could still match with more bytes), and a
// long word's head cannot start a token (its bytes were searched when they first arrived).
void EncodeStream::process(bool final) {
  const AddedTokenMatcher& matcher = *tokenizer_.matcher_;
  size_t pos = 0;
  size_t search_from = long_word_ ? head_length_ : 0;
  while (true) {
    size_t piece_end = pending_.size();
    bool complete = final;
    AddedTokenMatcher::Match match;
    for (size_t p = std::max(pos, search_from); p < pending_.size(); ++p) {
      if (!matcher.may_start(uint8_t(pending_[p]))) continue;
      const AddedTokenMatcher::Match found = matcher.longest_at(pending_, p, options_.parse_special);
      if (!found.decided && !final) {
        piece_end = p, complete = false;
        break;
      }
      if (found.index >= 0) {
        piece_end = p, complete = true, match = found;
        break;
      }
    }
    pos = encode_words(pos, piece_end, complete);
    if (pos < piece_end || match.index < 0) break;
    ids_.push_back(tokenizer_.added_tokens_[size_t(match.index)].id);
    pos = search_from = piece_end + match.length;
  }
  pending_.erase(0, pos);
  drain(false);
}

// Encodes the certain words of pending_[pos, end) (all of them when the piece is complete) and
// returns where it stopped.
size_t EncodeStream::encode_words(size_t pos, size_t end, bool complete) {
  const std::string_view text(pending_.data(), end);
  Tokenizer::Output out{ids_};
  while (pos < end) {
    const WordScan scan = scan_word(text, pos, tokenizer_.pre_tokenizer());
    const bool certain = complete || scan.reach + kMaxCharBytes <= end;
    if (long_word_ && pos == 0) {  // the long word, behind its kept head
      const size_t feed_end = certain ? scan.end : certain_end(text, head_length_, scan);
      std::string kept;
      if (feed_end > head_length_) {
        long_word_->append(tokenizer_.without_dropped_bytes(text.substr(head_length_, feed_end - head_length_), kept), ids_);
      }
      if (!certain) {
        const std::string head = head_of(text, 0, scan);
        pending_.replace(0, std::max(feed_end, head_length_), head);
        head_length_ = head.size();
        return 0;
      }
      long_word_->finish(ids_);
      long_word_.reset();
      pos = std::max(scan.end, head_length_);
      continue;
    }
    if (!certain) {
      if (scan.kind != WordScan::short_word && end - pos >= stream_options_.long_word_bytes) start_long_word(text, pos, scan);
      return long_word_ ? 0 : pos;
    }
    tokenizer_.encode_word(text.substr(pos, scan.end - pos), out);
    pos = scan.end;
    drain(false);
  }
  return pos;
}

// How far the uncertain word that starts at `begin` (after a kept head, in a long word) is
// certainly part of it, whatever bytes come next.
size_t EncodeStream::certain_end(std::string_view text, size_t begin, const WordScan& scan) const {
  if (scan.kind == WordScan::whitespace) {
    // With a newline, the word reaches at least past it (5 of the pattern); without, the run
    // gives its last character to the next word at most (6).
    return scan.after_last_newline != 0 ? std::max(begin, scan.after_last_newline) : std::max(begin, scan.last_char_start);
  }
  // A run of letters or of other characters: all of it but a character that may be cut short.
  const size_t limit = std::min(scan.end, text.size() >= kMaxCharBytes ? text.size() - kMaxCharBytes : 0);
  return limit > begin ? boundary_before(text, begin, limit) : begin;
}

void EncodeStream::start_long_word(std::string_view text, size_t begin, const WordScan& scan) {
  const size_t fed_end = certain_end(text, begin, scan);
  const std::string head = head_of(text, begin, scan);
  // The head must be handed over with the rest (a whitespace head stands for what was).
  const size_t head_end = scan.kind == WordScan::whitespace ? begin + 1 : begin + head.size();
  if (fed_end < head_end) return;  // wait for more
  long_word_ = std::make_unique<LongWordEncoder>(tokenizer_.bpe().tables());
  std::string kept;
  long_word_->append(tokenizer_.without_dropped_bytes(text.substr(begin, fed_end - begin), kept), ids_);
  pending_.replace(0, fed_end, head);
  head_length_ = head.size();
}

}  // namespace lamina::tokenizer
