// The generated Unicode tables are those of Unicode 16.0.0, the version HF `tokenizers` uses:
// code points that became letters or numbers in 15.1 and 16.0 (5,004 of them, "other" in the
// 15.0 tables) classify as such, and the real Llama-3 tokenizer splits text around them as HF
// does. Every check here fails with the 15.0 tables.
#include <cstdio>
#include <string>
#include <vector>

#include "helpers.h"
#include "models/tokenizer/tokenizer.h"
#include "models/tokenizer/unicode.h"
#include "test_tokenizer_fixtures.h"

using namespace lamina;
using namespace lamina::tokenizer;
using Ids = std::vector<int32_t>;

namespace {

// "U+2EBF0" (INFO's stream ignores std::hex, so the digits are written here).
std::string code_point_name(char32_t code_point) {
  char name[16];
  std::snprintf(name, sizeof(name), "U+%04X", unsigned(code_point));
  return name;
}

// Code points in each class, summed over the tables.
int64_t count_class(CharClass wanted) {
  int64_t count = 0;
  for (size_t i = 0; i < kCharRangeCount; ++i) {
    if (kCharRanges[i].char_class == wanted) count += kCharRanges[i].last - kCharRanges[i].first + 1;
  }
  return count;
}

// The id of a single-byte token of Llama-3's vocabulary, worked out by hand rather than asked
// of the tokenizer: byte-level BPE writes each byte as one character in GPT-2's order (the
// printable bytes 0x21..0x7E, 0xA1..0xAC and 0xAE..0xFF, then the others 0x00..0x20,
// 0x7F..0xA0 and 0xAD), and the vocabulary numbers the 256 one-character tokens 0..255 in that
// order ("!" = 0, "x" = 0x78 - 0x21 = 87, " " = 188 + 0x20 = 220).
int32_t byte_token_id(unsigned char byte) {
  if (byte >= 0x21 && byte <= 0x7E) return byte - 0x21;
  if (byte >= 0xA1 && byte <= 0xAC) return 94 + (byte - 0xA1);
  if (byte >= 0xAE) return 106 + (byte - 0xAE);
  if (byte <= 0x20) return 188 + byte;
  if (byte <= 0xA0) return 188 + 33 + (byte - 0x7F);
  return 255;  // 0xAD, the last one
}

// The ids of bytes that no merge of Llama-3's joins: one single-byte token each.
Ids byte_token_ids(std::string_view bytes) {
  Ids ids;
  for (char byte : bytes) ids.push_back(byte_token_id(static_cast<unsigned char>(byte)));
  return ids;
}

Ids concat(Ids first, const Ids& second) {
  first.insert(first.end(), second.begin(), second.end());
  return first;
}

}  // namespace

TEST_CASE("unicode tables: Unicode 16.0.0, with the letters and numbers added in 15.1 and 16.0") {
  CHECK(std::string(kUnicodeVersion) == "16.0.0");

  // Totals of general categories L* and N* in UnicodeData.txt 16.0.0 (141,028 and 1,911; the
  // 15.0 tables have 136,104 and 1,831).
  CHECK(count_class(CharClass::letter) == 141028);
  CHECK(count_class(CharClass::number) == 1911);
  CHECK(count_class(CharClass::whitespace) == 25);

  // Each with its UnicodeData.txt 16.0.0 general category; all were unassigned in 15.0.
  const std::vector<std::pair<char32_t, CharClass>> known = {
      {0x2EBF0, CharClass::letter},  // first of CJK Unified Ideographs Extension I (Lo, 15.1)
      {0x2EE5D, CharClass::letter},  // its last (Lo, 15.1)
      {0x2EE5E, CharClass::other},   // unassigned, just past it
      {0x1C89, CharClass::letter},   // CYRILLIC CAPITAL LETTER TJE (Lu)
      {0xA7CB, CharClass::letter},   // LATIN CAPITAL LETTER RAMS HORN (Lu)
      {0xA7DC, CharClass::letter},   // LATIN CAPITAL LETTER LAMBDA WITH STROKE (Lu)
      {0x105C0, CharClass::letter},  // TODHRI LETTER A (Lo)
      {0x10D40, CharClass::number},  // GARAY DIGIT ZERO (Nd)
      {0x10D49, CharClass::number},  // GARAY DIGIT NINE (Nd)
      {0x10D4A, CharClass::letter},  // GARAY VOWEL SIGN A (Lo)
      {0x10D4E, CharClass::letter},  // GARAY VOWEL LENGTH MARK (Lm)
      {0x10D69, CharClass::other},   // GARAY VOWEL SIGN E (Mn)
      {0x10D6E, CharClass::other},   // GARAY HYPHEN (Pd)
      {0x11380, CharClass::letter},  // TULU-TIGALARI LETTER A (Lo)
      {0x116D0, CharClass::number},  // MYANMAR PAO DIGIT ZERO (Nd)
      {0x11BF0, CharClass::number},  // SUNUWAR DIGIT ZERO (Nd)
      {0x11BE1, CharClass::other},   // SUNUWAR SIGN PVO (Po)
      {0x13460, CharClass::letter},  // EGYPTIAN HIEROGLYPH-13460 (Lo)
      {0x143FA, CharClass::letter},  // EGYPTIAN HIEROGLYPH-143FA (Lo)
      {0x16130, CharClass::number},  // GURUNG KHEMA DIGIT ZERO (Nd)
      {0x16D40, CharClass::letter},  // KIRAT RAI SIGN ANUSVARA (Lm)
      {0x16D70, CharClass::number},  // KIRAT RAI DIGIT ZERO (Nd)
      {0x1CCF0, CharClass::number},  // OUTLINED DIGIT ZERO (Nd)
      {0x1CCF9, CharClass::number},  // OUTLINED DIGIT NINE (Nd)
      {0x1E5EE, CharClass::other},   // OL ONAL SIGN MU (Mn)
      {0x1E5F0, CharClass::letter},  // OL ONAL SIGN HODDOND (Lo)
      {0x1E5F1, CharClass::number},  // OL ONAL DIGIT ZERO (Nd)
      {0x2FFC, CharClass::other},    // IDEOGRAPHIC DESCRIPTION CHARACTER SURROUND FROM RIGHT (So, 15.1)
      {0x11F04, CharClass::letter},  // KAWI LETTER A (Lo, 15.0): earlier additions stay
      {0x11F50, CharClass::number},  // KAWI DIGIT ZERO (Nd, 15.0)
  };
  for (const auto& [code_point, expected] : known) {
    INFO(code_point_name(code_point));
    CHECK(char_class(code_point) == expected);
  }
}

// A new letter ends a letter run, so the "'s" after it is a contraction (token 596, the
// vocabulary's "'s"); as "other" it would start a run of others that takes the "'" and leaves
// "s" (ids 6 and 82). A new digit is a number, which takes no leading space, so " " (220) stays
// alone; as "other" the space would join it and merge with its first byte. No merge of
// Llama-3's applies within these characters' bytes, so each byte is its own token (see
// byte_token_id). The expected ids equal those of HF tokenizers 0.23.3 on this tokenizer.json;
// the 15.0 tables give [172 106 107 108 6 82] for the first and [109697 238 113 222] for the
// Garay digit.
TEST_CASE("llama3 tokenizer: splits around letters and digits of Unicode 15.1 and 16.0 as HF does" *
          doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  const Ids apostrophe_s = {596};
  const Ids space = {byte_token_id(' ')};
  struct Case {
    std::string what;
    std::string text;
    Ids expected;
  };
  const std::vector<Case> cases = {
      {"U+2EBF0, first of CJK Extension I (15.1): F0 AE AF B0", "\U0002EBF0's",
       concat(byte_token_ids("\xF0\xAE\xAF\xB0"), apostrophe_s)},
      {"U+A7CB LATIN CAPITAL LETTER RAMS HORN: EA 9F 8B", "\uA7CB's", concat(byte_token_ids("\xEA\x9F\x8B"), apostrophe_s)},
      {"U+10D4A GARAY VOWEL SIGN A: F0 90 B5 8A", "\U00010D4A's",
       concat(byte_token_ids("\xF0\x90\xB5\x8A"), apostrophe_s)},
      {"U+10D40 GARAY DIGIT ZERO: F0 90 B5 80", " \U00010D40", concat(space, byte_token_ids("\xF0\x90\xB5\x80"))},
      {"U+1CCF0 OUTLINED DIGIT ZERO: F0 9C B3 B0", " \U0001CCF0", concat(space, byte_token_ids("\xF0\x9C\xB3\xB0"))},
  };
  CHECK(byte_token_ids("!x ") == Ids{0, 87, 220});  // the order's anchors, as byte_token_id says
  for (const Case& test : cases) {
    INFO(test.what);
    CHECK(tokenizer.encode(test.text) == test.expected);
  }
}
