#include "models/tokenizer/byte_level.h"

#include "models/tokenizer/unicode.h"

namespace lamina::tokenizer {
namespace {

bool is_printable_byte(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

// The inverse over U+0000..U+0143, the alphabet's whole span; -1 outside the alphabet.
const std::array<int16_t, 0x144>& inverse_table() {
  static const std::array<int16_t, 0x144> table = [] {
    std::array<int16_t, 0x144> inverse;
    inverse.fill(-1);
    const std::array<char32_t, 256> forward = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) inverse[forward[b]] = int16_t(b);
    return inverse;
  }();
  return table;
}

}  // namespace

std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next_extra = 0x100;
  for (int b = 0; b < 256; ++b) map[b] = is_printable_byte(b) ? char32_t(b) : next_extra++;
  return map;
}

std::optional<uint8_t> unicode_to_byte(char32_t code_point) {
  if (code_point >= 0x144) return std::nullopt;
  const int16_t b = inverse_table()[code_point];
  if (b < 0) return std::nullopt;
  return uint8_t(b);
}

std::optional<std::string> byte_level_decode(std::string_view text) {
  std::string bytes;
  bytes.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Char c = decode_utf8(text, pos);
    if (c.status != Utf8Char::ok) return std::nullopt;
    const std::optional<uint8_t> b = unicode_to_byte(c.code_point);
    if (!b) return std::nullopt;
    bytes += char(*b);
    pos += c.length;
  }
  return bytes;
}

std::string byte_level_encode(std::string_view bytes) {
  static const std::array<char32_t, 256> forward = bytes_to_unicode();
  std::string text;
  text.reserve(bytes.size() * 2);
  for (const char b : bytes) append_utf8(text, forward[uint8_t(b)]);
  return text;
}

}  // namespace lamina::tokenizer
