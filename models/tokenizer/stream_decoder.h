// Turns generated ids into text as they arrive, without ever printing half a UTF-8
// character: a token may end in the middle of a multi-byte character (emoji and CJK are often
// split across two or three byte-level tokens), so the bytes of an unfinished character are
// held back until the token that completes them.
//
// The output is always valid UTF-8: bytes that can no longer become a valid character are
// replaced by U+FFFD, exactly as replace_invalid_utf8 does on the whole decoded text. So the
// pieces returned by push() and finish() concatenate to
// replace_invalid_utf8(tokenizer.decode(ids, options)).
#pragma once

#include <cstdint>
#include <string>

#include "models/tokenizer/tokenizer.h"

namespace lamina::tokenizer {

class StreamDecoder {
 public:
  // The tokenizer must outlive the decoder. Special tokens are skipped by default: a chat
  // shows the answer, not <|eot_id|>.
  explicit StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options = {.skip_special = true});

  // The text that `id` completes (possibly empty); throws on an id outside the vocabulary.
  std::string push(int32_t id);
  // Whatever is still held back, as U+FFFD (the stream ended inside a character); resets.
  std::string finish();
  // Forgets held-back bytes (e.g. after /reset in a chat).
  void reset() { pending_.clear(); }

  // Bytes held back: at most 3, the valid start of a character.
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  DecodeOptions options_;
  std::string pending_;
};

}  // namespace lamina::tokenizer
