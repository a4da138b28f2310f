#include "models/tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace lamina::tokenizer {
namespace {

CharClass search_ranges(char32_t code_point) {
  const CharRange* end = kCharRanges + kCharRangeCount;
  // The first range whose last code point is >= code_point.
  const CharRange* range = std::lower_bound(kCharRanges, end, code_point,
                                            [](const CharRange& r, char32_t cp) { return r.last < cp; });
  if (range != end && range->first <= code_point) return range->char_class;
  return CharClass::other;
}

// ASCII is most of the text the tokenizer sees: one table lookup instead of a search.
const std::array<CharClass, 128>& ascii_classes() {
  static const std::array<CharClass, 128> table = [] {
    std::array<CharClass, 128> classes{};
    for (char32_t cp = 0; cp < 128; ++cp) classes[cp] = search_ranges(cp);
    return classes;
  }();
  return table;
}

}  // namespace

CharClass char_class(char32_t code_point) {
  if (code_point < 128) return ascii_classes()[code_point];
  return search_ranges(code_point);
}

// Unicode 15, Table 3-7 (well-formed UTF-8 byte sequences): the lead byte fixes the length
// and the allowed range of the second byte; later bytes are always 80..BF.
Utf8Char decode_utf8(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return uint8_t(text[i]); };
  const uint8_t lead = byte(pos);
  if (lead < 0x80) return {lead, 1, Utf8Char::ok};

  uint32_t length = 0;
  char32_t code_point = 0;
  uint8_t second_low = 0x80, second_high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, code_point = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, code_point = lead & 0x0F;
    if (lead == 0xE0) second_low = 0xA0;   // no overlongs
    if (lead == 0xED) second_high = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, code_point = lead & 0x07;
    if (lead == 0xF0) second_low = 0x90;   // no overlongs
    if (lead == 0xF4) second_high = 0x8F;  // nothing above U+10FFFF
  } else {
    return {kReplacementCharacter, 1, Utf8Char::invalid};  // 80..C1 or F5..FF
  }

  for (uint32_t i = 1; i < length; ++i) {
    if (pos + i >= text.size()) return {kReplacementCharacter, i, Utf8Char::truncated};
    const uint8_t next = byte(pos + i);
    const uint8_t low = i == 1 ? second_low : 0x80;
    const uint8_t high = i == 1 ? second_high : 0xBF;
    if (next < low || next > high) return {kReplacementCharacter, i, Utf8Char::invalid};
    code_point = (code_point << 6) | (next & 0x3F);
  }
  return {code_point, length, Utf8Char::ok};
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::string replace_invalid_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Char c = decode_utf8(bytes, pos);
    if (c.status == Utf8Char::ok) {
      out.append(bytes.substr(pos, c.length));
    } else {
      append_utf8(out, kReplacementCharacter);
    }
    pos += c.length;
  }
  return out;
}

bool is_python_space(char32_t code_point) {
  if (code_point >= 0x1C && code_point <= 0x1F) return true;
  return char_class(code_point) == CharClass::whitespace;
}

std::string_view strip_python_space(std::string_view text) {
  size_t begin = 0;
  while (begin < text.size()) {
    const Utf8Char c = decode_utf8(text, begin);
    if (c.status != Utf8Char::ok || !is_python_space(c.code_point)) break;
    begin += c.length;
  }
  // Walk forward to find where the trailing run of spaces starts (UTF-8 is not easily read
  // backwards when it may be invalid).
  size_t end = begin, pos = begin;
  while (pos < text.size()) {
    const Utf8Char c = decode_utf8(text, pos);
    pos += c.length;
    if (c.status != Utf8Char::ok || !is_python_space(c.code_point)) end = pos;
  }
  return text.substr(begin, end - begin);
}

}  // namespace lamina::tokenizer
