// The Unicode the tokenizer needs: UTF-8 decoding that never fails (invalid bytes decode as
// U+FFFD but keep their length, so no input byte is lost) and the four character classes of
// Llama-3's pre-tokenizer pattern.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lamina::tokenizer {

// The classes the pattern distinguishes: \p{L}, \p{N}, \s (the White_Space property: 25 code
// points, not Python's str.isspace) and everything else. They are disjoint.
enum class CharClass : uint8_t { other, letter, number, whitespace };

struct CharRange {
  char32_t first;
  char32_t last;  // inclusive
  CharClass char_class;
};

// Generated tables (unicode_tables.cpp, by tools/gen_unicode_tables.sh): sorted, disjoint
// ranges of letters, numbers and whitespace; every code point outside them is `other`.
extern const char* const kUnicodeVersion;
extern const CharRange kCharRanges[];
extern const size_t kCharRangeCount;

CharClass char_class(char32_t code_point);

inline constexpr char32_t kReplacementCharacter = 0xFFFD;

// One step of UTF-8 decoding at a position.
struct Utf8Char {
  char32_t code_point = 0;  // kReplacementCharacter unless `status` is ok
  uint32_t length = 0;      // bytes consumed, >= 1
  enum Status : uint8_t {
    ok,
    invalid,    // a maximal ill-formed subpart (Unicode's "U+FFFD substitution of maximal
                // subparts", as Python's errors="replace" and Rust's from_utf8_lossy do)
    truncated,  // a valid start of a character that the text ends in the middle of
  } status = ok;
};

// Decodes the character at text[pos] (pos < text.size()).
Utf8Char decode_utf8(std::string_view text, size_t pos);

// Appends the UTF-8 encoding of a code point (<= U+10FFFF, not a surrogate).
void append_utf8(std::string& out, char32_t code_point);

// `bytes` with every invalid or truncated sequence replaced by U+FFFD (maximal subparts).
std::string replace_invalid_utf8(std::string_view bytes);

// Python's str.isspace(), which Jinja's `trim` and Meta's `.strip()` use on chat messages: the
// White_Space property plus U+001C..U+001F.
bool is_python_space(char32_t code_point);

// `text` without leading and trailing is_python_space characters (invalid bytes are kept).
std::string_view strip_python_space(std::string_view text);

}  // namespace lamina::tokenizer
