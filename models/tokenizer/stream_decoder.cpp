#include "models/tokenizer/stream_decoder.h"

#include "models/tokenizer/unicode.h"

namespace lamina::tokenizer {

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, DecodeOptions options)
    : tokenizer_(&tokenizer), options_(options) {}

std::string StreamDecoder::push(int32_t id) {
  const std::string_view bytes = tokenizer_->token_bytes(id);
  if (options_.skip_special && tokenizer_->is_special(id)) return {};
  pending_.append(bytes);

  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Char c = decode_utf8(pending_, pos);
    // A valid start of a character that the bytes so far end inside: wait for more.
    if (c.status == Utf8Char::truncated) break;
    if (c.status == Utf8Char::ok) {
      out.append(pending_, pos, c.length);
    } else {
      append_utf8(out, kReplacementCharacter);
    }
    pos += c.length;
  }
  pending_.erase(0, pos);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = pending_.empty() ? std::string() : replace_invalid_utf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace lamina::tokenizer
