// The pre-tokenizers: Llama-3's split pattern and GPT-2's (alone, or after SmolLM's split of
// every digit into a word of its own), each implemented by hand as a scanner over code points
// (no regex engine). Each match is one "word"; BPE never merges across words. The file a
// tokenizer comes from names which one it uses (PreTokenizer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace lamina::tokenizer {

// The pattern exactly as tokenizer.json spells it (the loader checks the file against it).
inline constexpr std::string_view kLlama3SplitPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// GPT-2's pattern, as HF's ByteLevel pre-tokenizer applies it when use_regex is set. Unlike
// Llama-3's, its contractions are case-sensitive and only a space may lead a word.
inline constexpr std::string_view kGpt2SplitPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class PreTokenizer : uint8_t {
  llama3,  // kLlama3SplitPattern (GGUF "llama-bpe")
  gpt2,    // kGpt2SplitPattern (GGUF "gpt2")
  // SmolLM2's HF Sequence[Digits(individual_digits), ByteLevel(use_regex)]: every \p{N}
  // character is a word of its own, and GPT-2's pattern runs on each piece between them, as if
  // the piece were the whole text (so " 12" is " ", "1", "2"). GGUF "smollm".
  smollm,
};
// The name GGUF's tokenizer.ggml.pre gives it: "llama-bpe", "gpt2", "smollm".
std::string_view gguf_pre_tokenizer_name(PreTokenizer pre_tokenizer);
// The pre-tokenizer a tokenizer.ggml.pre value names; an error naming `value`, `where` and the
// supported names otherwise.
PreTokenizer pre_tokenizer_from_gguf_name(std::string_view value, std::string_view where);

// The words of `text` one at a time, as views into it, without collecting them (a list of
// views costs more memory than the text itself). They concatenate to `text`.
//
// Any bytes are accepted. An invalid UTF-8 sequence counts as one U+FFFD per maximal
// ill-formed subpart (class "other"), so the words are those of the text that a lossy UTF-8
// decode (Python's errors="replace") would give, but they keep the original bytes.
class WordIterator {
 public:
  explicit WordIterator(std::string_view text, PreTokenizer pre_tokenizer = PreTokenizer::llama3)
      : text_(text), pre_tokenizer_(pre_tokenizer) {}
  // The next word; empty at the end of the text.
  std::string_view next();

 private:
  std::string_view text_;
  size_t pos_ = 0;
  PreTokenizer pre_tokenizer_;
};

// One word's scan, for encoding text that arrives in pieces: a word is certain only when the
// scan read nothing at or past the end of the bytes known so far (reach + 4 <= their length:
// a character is at most 4 bytes).
struct WordScan {
  enum Kind : uint8_t {
    letters,     // [^\r\n\p{L}\p{N}]?\p{L}+
    others,      //  ?[^\s\p{L}\p{N}]+[\r\n]*
    whitespace,  // \s*[\r\n]+, \s+(?!\S), \s+
    short_word,  // a contraction, up to three numbers (Llama-3), one number (SmolLM)
    numbers,     // GPT-2:  ?\p{N}+
  };
  size_t end = 0;
  size_t reach = 0;  // the furthest position at which the scan read a character (or found the end)
  Kind kind = short_word;
  size_t after_last_newline = 0;  // whitespace: after the run's last CR/LF, 0 when none (always 0 for GPT-2)
  size_t last_char_start = 0;     // whitespace: where the run's last character starts
};
// Scans the word of `text` that starts at `begin` (< text.size(), a word boundary).
WordScan scan_word(std::string_view text, size_t begin, PreTokenizer pre_tokenizer = PreTokenizer::llama3);

// Appends the words of `text` to `words`.
void split_words(std::string_view text, std::vector<std::string_view>& words,
                 PreTokenizer pre_tokenizer = PreTokenizer::llama3);

inline std::vector<std::string_view> split_words(std::string_view text, PreTokenizer pre_tokenizer = PreTokenizer::llama3) {
  std::vector<std::string_view> words;
  split_words(text, words, pre_tokenizer);
  return words;
}

}  // namespace lamina::tokenizer
