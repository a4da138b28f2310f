// Errors carry their context (op, shapes, dtypes, file, offset) in the message; nothing in
// lamina aborts the process on bad input.
#pragma once

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace lamina {

namespace error_text {
// The length of the valid UTF-8 sequence at the start of `text` (1 to 4), or 0 when it is not
// one: a stray continuation byte, a sequence cut short, an overlong form, a surrogate or a
// code point past U+10FFFF (the rules of RFC 3629).
inline size_t utf8_sequence_length(std::string_view text) {
  const auto byte = [&](size_t i) { return uint8_t(text[i]); };
  const uint8_t lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length;
  uint8_t low = 0x80, high = 0xBF;  // the allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;   // overlong
    if (lead == 0xED) high = 0x9F;  // surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;   // overlong
    if (lead == 0xF4) high = 0x8F;  // past U+10FFFF
  } else {
    return 0;
  }
  if (text.size() < length || byte(1) < low || byte(1) > high) return 0;
  for (size_t i = 2; i < length; ++i)
    if (byte(i) < 0x80 || byte(i) > 0xBF) return 0;
  return length;
}

inline void append_escaped(std::string& out, uint8_t byte) {
  const char* digits = "0123456789abcdef";
  out += "\\x";
  out += digits[byte >> 4];
  out += digits[byte & 0xF];
}

}  // namespace error_text

// `text` made safe to print whole: a control character other than newline and tab, and every
// byte that is not part of valid UTF-8 (a lone 0xEF of a cut BOM), becomes "\xNN". Messages
// quote user input (file names, JSON strings, lines of data), and a NUL would cut what() short
// while raw bytes garble the terminal. (Header-only, like the rest of this file: the fuzz
// targets build a few library sources, and every one of them throws Error.)
inline std::string printable_message(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t at = 0; at < text.size();) {
    const size_t length = error_text::utf8_sequence_length(text.substr(at));
    const uint8_t lead = uint8_t(text[at]);
    // C0 controls and DEL, and the C1 controls (U+0080..U+009F, "\xc2\x80".."\xc2\x9f"), which
    // some terminals act on as they do on ESC.
    const bool control = (length == 1 && (lead < 0x20 || lead == 0x7F) && lead != '\n' && lead != '\t') ||
                         (length == 2 && lead == 0xC2 && uint8_t(text[at + 1]) < 0xA0);
    if (length == 0 || control) {
      for (size_t i = 0; i < std::max<size_t>(length, 1); ++i) error_text::append_escaped(out, uint8_t(text[at + i]));
      at += std::max<size_t>(length, 1);
    } else {
      out.append(text, at, length);
      at += length;
    }
  }
  return out;
}

// The message is made printable (printable_message) when the error is made, so what() is the
// whole message, valid UTF-8, whatever the input it quotes.
class Error : public std::runtime_error {
 public:
  explicit Error(std::string_view message) : std::runtime_error(printable_message(message)) {}
};

// Concatenates anything that has an operator<< into one string (a std::string part whole,
// NUL bytes included). When memory runs out midway the allocation failure is thrown, not a
// message silently cut short (a stream otherwise swallows it and stops writing).
template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  out.exceptions(std::ios::badbit);
  (out << ... << std::forward<Parts>(parts));
  return std::move(out).str();
}

}  // namespace lamina

// LAMINA_CHECK(cond, "op: ", detail, ...) throws lamina::Error with the message when cond fails.
#define LAMINA_CHECK(cond, ...)                                  \
  do {                                                           \
    if (!(cond)) throw ::lamina::Error(::lamina::str_cat(__VA_ARGS__)); \
  } while (0)

// Internal invariants: a failure here is a lamina bug, not a user error.
#define LAMINA_ASSERT(cond)                                                                   \
  do {                                                                                        \
    if (!(cond))                                                                              \
      throw ::lamina::Error(::lamina::str_cat("internal error: ", #cond, " at ", __FILE__, ":", \
                                              __LINE__));                                     \
  } while (0)
