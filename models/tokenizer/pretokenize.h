// Llama-3's pre-tokenizer: the split pattern below, implemented by hand as a scanner over
// code points (no regex engine). Each match is one "word"; BPE never merges across words.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lamina::tokenizer {

// The pattern exactly as tokenizer.json spells it (the loader checks the file against it).
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The words of `text` one at a time, as views into it, without collecting them (a list of
// views costs more memory than the text itself). They concatenate to `text`.
//
// Any bytes are accepted. An invalid UTF-8 sequence counts as one U+FFFD per maximal
// ill-formed subpart (class "other"), so the words are those of the text that a lossy UTF-8
// decode (Python's errors="replace") would give, but they keep the original bytes.
class WordIterator {
 public:
  explicit WordIterator(std::string_view text) : text_(text) {}
  // The next word; empty at the end of the text.
  std::string_view next();

 private:
  std::string_view text_;
  size_t pos_ = 0;
};

// One word's scan, for encoding text that arrives in pieces: a word is certain only when the
// scan read nothing at or past the end of the bytes known so far (reach + 4 <= their length:
// a character is at most 4 bytes).
struct WordScan {
  enum Kind : uint8_t {
    letters,     // [^\r\n\p{L}\p{N}]?\p{L}+
    others,      //  ?[^\s\p{L}\p{N}]+[\r\n]*
    whitespace,  // \s*[\r\n]+, \s+(?!\S), \s+
    short_word,  // a contraction or up to three numbers
  };
  size_t end = 0;
  size_t reach = 0;  // the furthest position at which the scan read a character (or found the end)
  Kind kind = short_word;
  size_t after_last_newline = 0;  // whitespace: after the run's last CR/LF, 0 when none
  size_t last_char_start = 0;     // whitespace: where the run's last character starts
};
// Scans the word of `text` that starts at `begin` (< text.size(), a word boundary).
WordScan scan_word(std::string_view text, size_t begin);

// Appends the words of `text` to `words`.
void split_words(std::string_view text, std::vector<std::string_view>& words);

inline std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  split_words(text, words);
  return words;
}

}  // namespace lamina::tokenizer
