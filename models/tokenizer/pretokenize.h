// Llama-3's pre-tokenizer: the split pattern below, implemented by hand as a scanner over
// code points (no regex engine). Each match is one "word"; BPE never merges across words.
#pragma once

#include <string_view>
#include <vector>

namespace lamina::tokenizer {

// The pattern exactly as tokenizer.json spells it (the loader checks the file against it).
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Appends the words of `text` to `words` as views into `text`; they concatenate to `text`.
//
// Any bytes are accepted. An invalid UTF-8 sequence counts as one U+FFFD per maximal
// ill-formed subpart (class "other"), so the words are those of the text that a lossy UTF-8
// decode (Python's errors="replace") would give, but they keep the original bytes.
void split_words(std::string_view text, std::vector<std::string_view>& words);

inline std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> words;
  split_words(text, words);
  return words;
}

}  // namespace lamina::tokenizer
