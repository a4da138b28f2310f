// Llama-3's scanner tries the pattern's seven alternatives in order at each position, as the
// regex's leftmost-first alternation does, and emits the first one that matches (GPT-2's and
// SmolLM's scanner, match_word_gpt2, works the same way on its six):
//
//   1 (?i:'s|'t|'re|'ve|'m|'ll|'d)   contraction suffix, any case
//   2 [^\r\n\p{L}\p{N}]?\p{L}+        letters, with at most one non-letter/number/newline before
//   3 \p{N}{1,3}                     up to three numbers
//   4  ?[^\s\p{L}\p{N}]+[\r\n]*      "other" characters, an optional space before, newlines after
//   5 \s*[\r\n]+                     whitespace up to and including its last newline
//   6 \s+(?!\S)                      whitespace, leaving the last one for the next word
//   7 \s+                            a lone whitespace character
//
// Each quantifier in the pattern is greedy and the classes it repeats never overlap with what
// follows except in 5 and 6, whose backtracking is resolved in closed form below; so one
// forward pass per word suffices.
#include "models/tokenizer/pretokenize.h"

#include <algorithm>
#include <array>

#include "models/tokenizer/unicode.h"
#include "tensor/error.h"

namespace lamina::tokenizer {
namespace {

struct Char {
  char32_t code_point = 0;
  uint32_t length = 0;  // 0: past the end of the text
  CharClass char_class = CharClass::other;
};

// The classes of the characters of one and two bytes (below U+0800: ASCII, Latin, Greek,
// Cyrillic, Hebrew, Arabic...), looked up by the cursor for most characters of most text.
// (Built on first use, not at static initialization: a tokenizer may run before that.)
using ShortCharClasses = std::array<CharClass, 0x800>;
const ShortCharClasses& short_char_classes() {
  static const ShortCharClasses table = [] {
    ShortCharClasses classes{};
    for (char32_t cp = 0; cp < classes.size(); ++cp) classes[cp] = char_class(cp);
    return classes;
  }();
  return table;
}

// Decodes the character at a byte position. Positions are always character boundaries. It
// remembers the furthest position it was asked about: what the scan of a word depended on.
class Cursor {
 public:
  explicit Cursor(std::string_view text) : text_(text), classes_(short_char_classes()) {}

  // The common cases inline (decode_utf8's results, without the call): ASCII; a byte that
  // cannot start a character (80..C1, F5..FF) or a lead byte whose second byte is not one its
  // character allows, each an invalid sequence of its own, as are most bytes of binary data;
  // a two-byte character.
  Char at(size_t pos) const {
    reach_ = std::max(reach_, pos);
    if (pos >= text_.size()) return {};
    const uint8_t byte = uint8_t(text_[pos]);
    if (byte < 0x80) return {byte, 1, classes_[byte]};
    constexpr Char kInvalidByte{kReplacementCharacter, 1, CharClass::other};
    if (byte < 0xC2 || byte > 0xF4) return kInvalidByte;
    const uint8_t next = pos + 1 < text_.size() ? uint8_t(text_[pos + 1]) : 0;
    if (byte <= 0xDF) {
      if ((next & 0xC0) != 0x80) return kInvalidByte;
      const char32_t code_point = (char32_t(byte & 0x1F) << 6) | (next & 0x3F);
      return {code_point, 2, classes_[code_point]};
    }
    // Table 3-7 of Unicode: no overlongs (E0, F0), surrogates (ED) or code points past U+10FFFF (F4).
    const uint8_t low = byte == 0xE0 ? 0xA0 : byte == 0xF0 ? 0x90 : 0x80;
    const uint8_t high = byte == 0xED ? 0x9F : byte == 0xF4 ? 0x8F : 0xBF;
    if (next < low || next > high) return kInvalidByte;
    const Utf8Char c = decode_utf8(text_, pos);
    // Invalid bytes classify as U+FFFD would: "other".
    return {c.code_point, c.length, c.status == Utf8Char::ok ? char_class(c.code_point) : CharClass::other};
  }
  // The first position from `pos` on that does not hold an ASCII character of the class (a long
  // run of one class, one word, is scanned here a byte at a time without decoding).
  size_t skip_ascii(size_t pos, CharClass char_class) const {
    while (pos < text_.size() && uint8_t(text_[pos]) < 0x80 && classes_[uint8_t(text_[pos])] == char_class) ++pos;
    return pos;
  }
  size_t reach() const { return reach_; }

 private:
  std::string_view text_;
  const ShortCharClasses& classes_;
  mutable size_t reach_ = 0;
};

bool is_newline(char32_t cp) { return cp == '\r' || cp == '\n'; }

// Simple case folding of the letters in the contractions. Under Unicode case folding U+017F
// LATIN SMALL LETTER LONG S folds to 's', and the reference regex engines (HF tokenizers'
// Oniguruma, Python's regex) do match "'ſ" as a contraction; no other code point folds to
// one of these letters (CaseFolding.txt).
char32_t fold(char32_t cp) {
  if (cp >= 'A' && cp <= 'Z') return cp + ('a' - 'A');
  if (cp == 0x017F) return 's';
  return cp;
}

// The word starting at `begin` (whose character is `first`).
WordScan match_word(const Cursor& text, size_t begin, const Char& first) {
  const size_t after_first = begin + first.length;
  WordScan scan;
  const auto done = [&](size_t end, WordScan::Kind kind) {
    scan.end = end;
    scan.kind = kind;
    scan.reach = text.reach();
    return scan;
  };

  // 1: contractions.
  if (first.code_point == '\'') {
    const Char a = text.at(after_first);
    if (a.length != 0) {
      const char32_t fa = fold(a.code_point);
      if (fa == 's' || fa == 't' || fa == 'm' || fa == 'd') return done(after_first + a.length, WordScan::short_word);
      const Char b = text.at(after_first + a.length);
      if (b.length != 0) {
        const char32_t fb = fold(b.code_point);
        if ((fa == 'r' && fb == 'e') || (fa == 'v' && fb == 'e') || (fa == 'l' && fb == 'l')) {
          return done(after_first + a.length + b.length, WordScan::short_word);
        }
      }
    }
  }

  // 2: letters, optionally after one prefix character. A letter cannot be the prefix (the
  // prefix class excludes \p{L}), so when `first` is a letter the run simply starts there.
  const Char second = text.at(after_first);  // (4 needs it too)
  if (!is_newline(first.code_point) && first.char_class != CharClass::number &&
      (first.char_class == CharClass::letter || second.char_class == CharClass::letter)) {
    size_t end = after_first;
    for (Char c = second; c.length != 0 && c.char_class == CharClass::letter; c = text.at(end)) {
      end = text.skip_ascii(end + c.length, CharClass::letter);
    }
    return done(end, WordScan::letters);
  }

  // 3: one to three numbers.
  if (first.char_class == CharClass::number) {
    size_t end = after_first;
    for (int count = 1; count < 3; ++count) {
      const Char c = text.at(end);
      if (c.length == 0 || c.char_class != CharClass::number) break;
      end += c.length;
    }
    return done(end, WordScan::short_word);
  }

  // 4: an optional ASCII space, a run of "other" characters, then any CR/LF.
  const bool space_first = first.code_point == ' ';
  const Char run_first = space_first ? second : first;
  if (run_first.length != 0 && run_first.char_class == CharClass::other) {
    size_t end = space_first ? after_first + second.length : after_first;
    Char c = space_first ? text.at(end) : second;
    for (; c.length != 0 && c.char_class == CharClass::other; c = text.at(end)) end = text.skip_ascii(end + c.length, CharClass::other);
    for (; c.length != 0 && is_newline(c.code_point); c = text.at(end)) end += c.length;
    return done(end, WordScan::others);
  }

  // 5-7: a whitespace run [begin, end).
  size_t end = begin, last_start = begin, after_last_newline = 0;
  int count = 0;
  for (Char c = first; c.length != 0 && c.char_class == CharClass::whitespace; c = text.at(end)) {
    last_start = end;
    end += c.length;
    ++count;
    if (is_newline(c.code_point)) after_last_newline = end;
  }
  scan.after_last_newline = after_last_newline;
  scan.last_char_start = last_start;
  // 5: \s* backtracks until [\r\n]+ can match: the word ends after the run's last newline.
  if (after_last_newline != 0) return done(after_last_newline, WordScan::whitespace);
  // 6: \s+ backtracks one character so that (?!\S) holds, unless the run ends the text.
  const bool text_continues = text.at(end).length != 0;
  if (count > 1 && text_continues) return done(last_start, WordScan::whitespace);
  // 7 (or 6 at the end of the text): the whole run.
  return done(count >= 1 ? end : after_first, WordScan::whitespace);  // count is >= 1: every character has a class above
}

// GPT-2's pattern, tried in the same way (leftmost-first, one forward pass):
//
//   1 's|'t|'re|'ve|'m|'ll|'d     contraction suffix, lower case only
//   2  ?\p{L}+                    letters, an optional ASCII space before
//   3  ?\p{N}+                    numbers, likewise
//   4  ?[^\s\p{L}\p{N}]+          "other" characters, likewise
//   5 \s+(?!\S)                   whitespace, leaving the last one for the next word
//   6 \s+                         a lone whitespace character
//
// With `isolate_digits` (SmolLM) a number is a word alone and ends the piece before it: the
// scan reads it as the end of the text, which is what running the pattern on each piece
// between numbers means (a space before a number stays a word of its own).
WordScan match_word_gpt2(const Cursor& text, size_t begin, const Char& first, bool isolate_digits) {
  const auto at = [&](size_t pos) -> Char {
    const Char c = text.at(pos);
    return isolate_digits && c.char_class == CharClass::number ? Char{} : c;
  };
  const size_t after_first = begin + first.length;
  WordScan scan;
  const auto done = [&](size_t end, WordScan::Kind kind) {
    scan.end = end;
    scan.kind = kind;
    scan.reach = text.reach();
    return scan;
  };
  if (isolate_digits && first.char_class == CharClass::number) return done(after_first, WordScan::short_word);

  // 1: contractions, exactly as written (all ASCII, one byte a character).
  if (first.code_point == '\'') {
    const Char a = at(after_first);
    if (a.code_point == 's' || a.code_point == 't' || a.code_point == 'm' || a.code_point == 'd') {
      return done(after_first + 1, WordScan::short_word);
    }
    if (a.code_point == 'r' || a.code_point == 'v' || a.code_point == 'l') {
      const Char b = at(after_first + 1);
      if ((a.code_point == 'l' && b.code_point == 'l') || (a.code_point != 'l' && b.code_point == 'e')) {
        return done(after_first + 2, WordScan::short_word);
      }
    }
  }

  // 2-4: an optional space, then a run of one class. The three classes are disjoint, so the
  // first character after the space decides the alternative.
  const bool space_first = first.code_point == ' ';
  const Char run_first = space_first ? at(after_first) : first;
  if (run_first.length != 0 && run_first.char_class != CharClass::whitespace) {
    const CharClass run_class = run_first.char_class;
    size_t end = (space_first ? after_first : begin) + run_first.length;
    for (Char c = at(end); c.length != 0 && c.char_class == run_class; c = at(end)) {
      end = text.skip_ascii(end + c.length, run_class);  // (never skips a number when they are isolated: the run is not of numbers)
    }
    const WordScan::Kind kind = run_class == CharClass::letter   ? WordScan::letters
                                : run_class == CharClass::number ? WordScan::numbers
                                                                 : WordScan::others;
    return done(end, kind);
  }

  // 5-6: a whitespace run [begin, end).
  size_t end = begin, last_start = begin;
  int count = 0;
  for (Char c = first; c.length != 0 && c.char_class == CharClass::whitespace; c = at(end)) {
    last_start = end;
    end += c.length;
    ++count;
  }
  scan.last_char_start = last_start;
  const bool text_continues = at(end).length != 0;
  if (count > 1 && text_continues) return done(last_start, WordScan::whitespace);
  return done(end, WordScan::whitespace);
}

}  // namespace

std::string_view gguf_pre_tokenizer_name(PreTokenizer pre_tokenizer) {
  switch (pre_tokenizer) {
    case PreTokenizer::llama3: return "llama-bpe";
    case PreTokenizer::gpt2: return "gpt2";
    case PreTokenizer::smollm: return "smollm";
  }
  return "?";
}

PreTokenizer pre_tokenizer_from_gguf_name(std::string_view value, std::string_view where) {
  for (const PreTokenizer candidate : {PreTokenizer::llama3, PreTokenizer::gpt2, PreTokenizer::smollm}) {
    if (value == gguf_pre_tokenizer_name(candidate)) return candidate;
  }
  throw Error(str_cat(where, ": the pre-tokenizer \"", value, "\" is not supported (supported: \"llama-bpe\", \"gpt2\", \"smollm\")"));
}

WordScan scan_word(std::string_view text, size_t begin, PreTokenizer pre_tokenizer) {
  const Cursor cursor(text);
  const Char first = cursor.at(begin);
  if (pre_tokenizer == PreTokenizer::llama3) return match_word(cursor, begin, first);
  return match_word_gpt2(cursor, begin, first, pre_tokenizer == PreTokenizer::smollm);
}

std::string_view WordIterator::next() {
  if (pos_ >= text_.size()) return {};
  const size_t begin = pos_;
  pos_ = scan_word(text_, begin, pre_tokenizer_).end;
  return text_.substr(begin, pos_ - begin);
}

void split_words(std::string_view text, std::vector<std::string_view>& words, PreTokenizer pre_tokenizer) {
  WordIterator iterator(text, pre_tokenizer);
  for (std::string_view word = iterator.next(); !word.empty(); word = iterator.next()) words.push_back(word);
}

}  // namespace lamina::tokenizer
