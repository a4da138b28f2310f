// Slow, independent oracles for the tokenizer, shared by the tests and the fuzz target:
//
// - reference_split_words: Llama-3's split pattern run by a generic backtracking matcher,
//   written from the pattern's text (each alternative is a sequence of quantified character
//   sets, optionally followed by (?!\S)), tried leftmost-first at each position. It shares
//   only the character classes and the UTF-8 decoding with the scanner under test.
// - reference_merge: BPE as its definition reads: repeatedly merge the lowest-ranked adjacent
//   pair, leftmost first, in O(n^2).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "models/tokenizer/unicode.h"

namespace lamina::testing {

struct ReferenceChar {
  char32_t code_point;
  tokenizer::CharClass char_class;
  size_t offset;  // of its first byte in the text
};

// Each maximal ill-formed UTF-8 subpart counts as one U+FFFD of class "other".
inline std::vector<ReferenceChar> reference_decode(std::string_view text) {
  std::vector<ReferenceChar> chars;
  for (size_t pos = 0; pos < text.size();) {
    const tokenizer::Utf8Char c = tokenizer::decode_utf8(text, pos);
    const bool valid = c.status == tokenizer::Utf8Char::ok;
    chars.push_back({c.code_point, valid ? tokenizer::char_class(c.code_point) : tokenizer::CharClass::other, pos});
    pos += c.length;
  }
  return chars;
}

// One quantified character set: `min` to `max` characters that satisfy `accepts`, greedy.
struct ReferenceItem {
  std::function<bool(const ReferenceChar&)> accepts;
  int min, max;
};

struct ReferenceAlternative {
  std::vector<ReferenceItem> items;
  bool then_not_followed_by_non_space = false;  // (?!\S)
};

inline std::vector<ReferenceAlternative> llama3_reference_pattern() {
  using tokenizer::CharClass;
  constexpr int kMany = 1 << 30;
  const auto is = [](CharClass wanted) { return [wanted](const ReferenceChar& c) { return c.char_class == wanted; }; };
  const auto is_cr_or_lf = [](const ReferenceChar& c) { return c.code_point == '\r' || c.code_point == '\n'; };
  // (?i:...) on a lowercase ASCII letter: the letter, its uppercase, and every code point whose
  // case folding is that letter (only U+017F LONG S, for 's', per CaseFolding.txt).
  const auto letter_any_case = [](char letter) {
    return [letter](const ReferenceChar& c) {
      return c.code_point == char32_t(letter) || c.code_point == char32_t(letter - 'a' + 'A') ||
             (letter == 's' && c.code_point == 0x017F);
    };
  };
  const auto apostrophe = [](const ReferenceChar& c) { return c.code_point == '\''; };

  std::vector<ReferenceAlternative> alternatives;
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)
  for (const std::string suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
    ReferenceAlternative contraction;
    contraction.items.push_back({apostrophe, 1, 1});
    for (const char letter : suffix) contraction.items.push_back({letter_any_case(letter), 1, 1});
    alternatives.push_back(contraction);
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  alternatives.push_back({{{[is_cr_or_lf](const ReferenceChar& c) {
                              return !is_cr_or_lf(c) && c.char_class != CharClass::letter && c.char_class != CharClass::number;
                            }, 0, 1},
                           {is(CharClass::letter), 1, kMany}}});
  // \p{N}{1,3}
  alternatives.push_back({{{is(CharClass::number), 1, 3}}});
  // ' '?[^\s\p{L}\p{N}]+[\r\n]*
  alternatives.push_back({{{[](const ReferenceChar& c) { return c.code_point == ' '; }, 0, 1},
                           {is(CharClass::other), 1, kMany},
                           {is_cr_or_lf, 0, kMany}}});
  // \s*[\r\n]+
  alternatives.push_back({{{is(CharClass::whitespace), 0, kMany}, {is_cr_or_lf, 1, kMany}}});
  // \s+(?!\S)
  alternatives.push_back({{{is(CharClass::whitespace), 1, kMany}}, true});
  // \s+
  alternatives.push_back({{{is(CharClass::whitespace), 1, kMany}}});
  return alternatives;
}

// The end (a char index) of the preferred match of items[k..] at chars[pos], with backtracking.
inline std::optional<size_t> reference_match(const std::vector<ReferenceChar>& chars, const ReferenceAlternative& alternative,
                                             size_t k, size_t pos) {
  if (k == alternative.items.size()) {
    if (alternative.then_not_followed_by_non_space && pos < chars.size() &&
        chars[pos].char_class != tokenizer::CharClass::whitespace) {
      return std::nullopt;
    }
    return pos;
  }
  const ReferenceItem& item = alternative.items[k];
  int count = 0;
  while (count < item.max && pos + size_t(count) < chars.size() && item.accepts(chars[pos + size_t(count)])) ++count;
  for (; count >= item.min; --count) {  // greedy: the longest first, then give back one at a time
    if (const std::optional<size_t> end = reference_match(chars, alternative, k + 1, pos + size_t(count))) return end;
  }
  return std::nullopt;
}

inline std::vector<std::string_view> reference_split_words(std::string_view text) {
  static const std::vector<ReferenceAlternative> pattern = llama3_reference_pattern();
  const std::vector<ReferenceChar> chars = reference_decode(text);
  const auto offset = [&](size_t index) { return index < chars.size() ? chars[index].offset : text.size(); };
  std::vector<std::string_view> words;
  size_t pos = 0;
  while (pos < chars.size()) {
    size_t end = pos + 1;  // taken only if no alternative matches, which cannot happen for this pattern
    for (const ReferenceAlternative& alternative : pattern) {
      const std::optional<size_t> match_end = reference_match(chars, alternative, 0, pos);
      if (match_end && *match_end > pos) {
        end = *match_end;
        break;
      }
    }
    words.push_back(text.substr(offset(pos), offset(end) - offset(pos)));
    pos = end;
  }
  return words;
}

// BPE of one word by definition; `rank_of(left, right)` gives (rank, merged id) or nothing.
inline std::vector<int32_t> reference_merge(
    std::vector<int32_t> symbols, const std::function<std::optional<std::pair<int32_t, int32_t>>(int32_t, int32_t)>& rank_of) {
  while (symbols.size() > 1) {
    size_t best = 0;
    std::optional<std::pair<int32_t, int32_t>> best_merge;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const auto merge = rank_of(symbols[i], symbols[i + 1]);
      if (merge && (!best_merge || merge->first < best_merge->first)) best = i, best_merge = merge;
    }
    if (!best_merge) break;
    symbols[best] = best_merge->second;
    symbols.erase(symbols.begin() + std::ptrdiff_t(best) + 1);
  }
  return symbols;
}

}  // namespace lamina::testing
