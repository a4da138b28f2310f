// The tokenizer's text layer: Unicode tables, UTF-8 decoding, the byte-level alphabet and the
// hand-written pre-tokenizer against a backtracking reference. No assets needed.
#include <random>
#include <set>

#include "helpers.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/unicode.h"
#include "test_tokenizer_reference.h"

using namespace lamina;
using namespace lamina::tokenizer;

namespace {

std::string join(const std::vector<std::string_view>& words, const char* separator = "|") {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) out.append(i ? separator : "").append(words[i]);
  return out;
}

// The characters random strings are made of: everything the pattern treats specially.
const std::vector<std::string>& mixed_alphabet() {
  static const std::vector<std::string> pieces = {
      "a", "b", "Z", "s", "S", "t", "T", "r", "e", "v", "V", "l", "L", "m", "d", "D", "x",  // contraction letters
      "'", "'", "\u2019", "\u017f",                                                          // apostrophes, long s
      " ", " ", " ", "  ", "\t", "\n", "\n", "\r", "\r\n", "\v", "\f",                       // ASCII whitespace
      "\u00a0", "\u3000", "\u2028", "\u0085", "\u1680", "\u2009", "\u200b",                  // Unicode spaces (and not)
      "0", "1", "7", "\u0663", "\u096a", "\u00b2", "\u00bd", "\u216b", "\u2466",             // numbers
      "!", ".", ",", "(", "\"", "-", "#", "\x1c", "\x7f", std::string(1, '\0'),                            // other
      "\u00e9", "\u0439", "\u4e2d", "\u6587", "\ud55c", "\u1781", "\u17d2", "\u0928",         // letters of many scripts
      "\u0301", "\u0300", "\u093f",                                                          // combining marks
      "\U0001f600", "\u200d", "\ufe0f", "\U0001f3fd", "\U0001f468\u200d\U0001f469",          // emoji, ZWJ, VS16
      "\xff", "\x80", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xf0\x9f", "\xc0\xaf",             // invalid UTF-8
  };
  return pieces;
}

std::string random_mixed_string(std::mt19937& rng, int max_pieces) {
  const auto& pieces = mixed_alphabet();
  std::uniform_int_distribution<int> count_dist(0, max_pieces);
  std::uniform_int_distribution<size_t> piece_dist(0, pieces.size() - 1);
  std::string text;
  const int count = count_dist(rng);
  for (int i = 0; i < count; ++i) {
    text += pieces[piece_dist(rng)];
  }
  return text;
}

}  // namespace

TEST_CASE("unicode tables: version, shape and the classes of known code points") {
  CHECK(std::string(kUnicodeVersion) == "16.0.0");
  REQUIRE(kCharRangeCount > 500);
  int64_t whitespace = 0;
  for (size_t i = 0; i < kCharRangeCount; ++i) {
    CHECK(kCharRanges[i].first <= kCharRanges[i].last);
    if (i > 0) CHECK(kCharRanges[i - 1].last < kCharRanges[i].first);  // sorted, disjoint
    if (kCharRanges[i].char_class == CharClass::whitespace) whitespace += kCharRanges[i].last - kCharRanges[i].first + 1;
  }
  CHECK(whitespace == 25);  // the White_Space property, exactly

  const std::vector<std::pair<char32_t, CharClass>> known = {
      {'a', CharClass::letter},       {'Z', CharClass::letter},       {'0', CharClass::number},
      {' ', CharClass::whitespace},   {'\t', CharClass::whitespace},  {'\n', CharClass::whitespace},
      {0x0B, CharClass::whitespace},  {'!', CharClass::other},        {'\'', CharClass::other},
      {0x1C, CharClass::other},       {0x7F, CharClass::other},       {0x85, CharClass::whitespace},
      {0xA0, CharClass::whitespace},  {0x1680, CharClass::whitespace}, {0x200A, CharClass::whitespace},
      {0x200B, CharClass::other},     {0x2028, CharClass::whitespace}, {0x202F, CharClass::whitespace},
      {0x3000, CharClass::whitespace}, {0xB2, CharClass::number},     {0xBD, CharClass::number},
      {0x216B, CharClass::number},    {0x0663, CharClass::number},    {0x096A, CharClass::number},
      {0x2466, CharClass::number},    {0xE9, CharClass::letter},      {0x017F, CharClass::letter},
      {0x02B0, CharClass::letter},    {0x4E00, CharClass::letter},    {0x9FFF, CharClass::letter},
      {0xAC00, CharClass::letter},    {0xD7A3, CharClass::letter},    {0x20000, CharClass::letter},
      {0x2A6DF, CharClass::letter},   {0x1781, CharClass::letter},    {0x17D2, CharClass::other},
      {0x0301, CharClass::other},     {0x20DD, CharClass::other},     {0x1F600, CharClass::other},
      {0xFE0F, CharClass::other},     {0x200D, CharClass::other},     {0xE000, CharClass::other},
      {0xFFFD, CharClass::other},     {0x10FFFF, CharClass::other},   {0x0378, CharClass::other},  // unassigned
      {0x11F04, CharClass::letter},   // Kawi, new in Unicode 15.0
  };
  for (const auto& [code_point, expected] : known) {
    INFO("U+" << std::hex << uint32_t(code_point));
    CHECK(char_class(code_point) == expected);
  }
}

TEST_CASE("UTF-8 decoding: valid characters, maximal ill-formed subparts, truncation") {
  const auto check = [](std::string_view text, char32_t code_point, uint32_t length, Utf8Char::Status status) {
    const Utf8Char c = decode_utf8(text, 0);
    INFO("text of " << text.size() << " bytes");
    CHECK(c.code_point == code_point);
    CHECK(c.length == length);
    CHECK(c.status == status);
  };
  check("A", 'A', 1, Utf8Char::ok);
  check("\xc3\xa9", 0xE9, 2, Utf8Char::ok);
  check("\xe4\xb8\xad", 0x4E2D, 3, Utf8Char::ok);
  check("\xf0\x9f\x98\x80", 0x1F600, 4, Utf8Char::ok);
  check("\xf4\x8f\xbf\xbf", 0x10FFFF, 4, Utf8Char::ok);
  check("\x80", kReplacementCharacter, 1, Utf8Char::invalid);           // lone continuation byte
  check("\xc0\xaf", kReplacementCharacter, 1, Utf8Char::invalid);       // overlong lead
  check("\xe0\x80\x80", kReplacementCharacter, 1, Utf8Char::invalid);   // overlong 3-byte
  check("\xed\xa0\x80", kReplacementCharacter, 1, Utf8Char::invalid);   // surrogate
  check("\xf4\x90\x80\x80", kReplacementCharacter, 1, Utf8Char::invalid);  // above U+10FFFF
  check("\xf5", kReplacementCharacter, 1, Utf8Char::invalid);
  check("\xe2\x82x", kReplacementCharacter, 2, Utf8Char::invalid);      // maximal subpart E2 82
  check("\xf0\x9f\x98x", kReplacementCharacter, 3, Utf8Char::invalid);
  check("\xe2\x82", kReplacementCharacter, 2, Utf8Char::truncated);     // could still complete
  check("\xf0", kReplacementCharacter, 1, Utf8Char::truncated);

  // The same replacements as Python's bytes.decode("utf-8", "replace").
  CHECK(replace_invalid_utf8("a\xe2\x82x") == "a\uFFFDx");
  CHECK(replace_invalid_utf8("\xed\xa0\x80") == "\uFFFD\uFFFD\uFFFD");
  CHECK(replace_invalid_utf8("\xc0\xaf") == "\uFFFD\uFFFD");
  CHECK(replace_invalid_utf8("ok\xf0\x9f") == "ok\uFFFD");
  CHECK(replace_invalid_utf8("\xf0\x9f\x98\x80 fine") == "\xf0\x9f\x98\x80 fine");

  CHECK(strip_python_space(" \t\n\u3000 hi there \x1c\x1f\u00a0\r\n") == "hi there");
  CHECK(strip_python_space("\u200bhi\u200b") == "\u200bhi\u200b");  // ZERO WIDTH SPACE is not a space
  CHECK(strip_python_space("   ") == "");
  CHECK(strip_python_space(" \xff ") == "\xff");
}

TEST_CASE("byte-level alphabet: GPT-2's bytes_to_unicode") {
  const std::array<char32_t, 256> map = bytes_to_unicode();
  CHECK(map['!'] == '!');
  CHECK(map[0x00] == 0x100);
  CHECK(map['\t'] == 0x109);
  CHECK(map['\n'] == 0x10A);
  CHECK(map['\r'] == 0x10D);
  CHECK(map[' '] == 0x120);
  CHECK(map[0x7F] == 0x121);
  CHECK(map[0xA0] == 0x142);
  CHECK(map[0xAD] == 0x143);
  CHECK(map[0xE9] == 0xE9);
  std::set<char32_t> distinct(map.begin(), map.end());
  CHECK(distinct.size() == 256);
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes += char(b);
  CHECK(byte_level_decode(byte_level_encode(all_bytes)) == all_bytes);
  CHECK(byte_level_encode(" world") == "\u0120world");
  CHECK(byte_level_encode("\xc3\xa9") == "\u00c3\u00a9");
  CHECK_FALSE(byte_level_decode("\u0144").has_value());  // just past the alphabet
  CHECK_FALSE(byte_level_decode(" ").has_value());        // space itself is not in it
}

TEST_CASE("split_words: the examples of the spec") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"Hello, world!", "Hello|,| world|!"},
      {"I'm here", "I|'m| here"},
      {"HE'LL", "HE|'LL"},
      {"don't'S", "don|'t|'S"},
      {"x\u2019s", "x|\u2019s"},
      {"  hello", " | hello"},
      {" 12345678", " |123|456|78"},
      {"a\n\n b", "a|\n\n| b"},
      {"x \n\n\t y", "x| \n\n|\t| y"},
      {"foo   ", "foo|   "},
      {"(hello", "(hello"},
      {"\r\n\r\nok", "\r\n\r\n|ok"},
      {"x'\u017ftuff", "x|'\u017f|tuff"},          // long s folds to s: a contraction
      {"'Stuff 'LLx", "'S|tuff| '|LLx"},            // " '" is an other run, so 'LL is no contraction here
      {"e\u0301", "e|\u0301"},                      // a combining mark is "other"
      {"a\u0301b", "a|\u0301b"},                    // ...and may prefix letters
      {"!!\n\nx", "!!\n\n|x"},                      // other run takes its trailing newlines
      {" !?", " !?"},                               // one space prefixes an other run
      {"  !?", " | !?"},
      {"\u00a0x", "\u00a0x"},                       // NBSP prefixes letters
      {"\u00a0!", "\u00a0|!"},                      // but not an other run (only U+0020 does)
      {"12\u0663\u0664", "12\u0663|\u0664"},        // every \p{N} counts
      {"x\u200by", "x|\u200by"},
      {"", ""},
      {"   ", "   "},
      {" ", " "},
      {"\xff\xfe" "abc", "\xff\xfe|abc"},           // invalid bytes are "other", kept as they are
      {"\xe2\x82" "abc", "\xe2\x82" "abc"},         // one maximal subpart: one U+FFFD, prefixing letters
  };
  for (const auto& [text, expected] : cases) {
    INFO("text: " << text);
    CHECK(join(split_words(text)) == expected);
  }
}

TEST_CASE("split_words agrees with the backtracking reference on random mixed strings") {
  std::mt19937 rng(20240726);
  int compared = 0;
  for (int i = 0; i < 20000; ++i) {
    const std::string text = random_mixed_string(rng, i < 10000 ? 12 : 40);
    const std::vector<std::string_view> words = split_words(text);
    const std::vector<std::string_view> expected = testing::reference_split_words(text);
    std::string concatenated;
    for (const std::string_view word : words) {
      CHECK_FALSE(word.empty());
      concatenated += word;
    }
    REQUIRE(concatenated == text);
    if (words != expected) {
      INFO("text bytes: " << byte_level_encode(text));
      CHECK(join(words, "\u2502") == join(expected, "\u2502"));
      break;
    }
    ++compared;
  }
  CHECK(compared == 20000);
}

TEST_CASE("split_words agrees with the reference on lead and continuation bytes at every range edge") {
  // Binary data decodes mostly by the scanner's inline paths: a byte that cannot start a
  // character, a lead byte whose next byte its character does not allow (the edges of Table 3-7:
  // E0 A0, ED 9F, F0 90, F4 8F), a two-byte character and its class.
  const std::vector<uint8_t> leads = {0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xC3, 0xCE, 0xD0, 0xDF, 0xE0, 0xE1, 0xE4, 0xEC,
                                      0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
  const std::vector<uint8_t> followers = {0x7F, 0x80, 0x81, 0x8F, 0x90, 0x9F, 0xA0, 0xA9, 0xB5, 0xBF, 0xC0, 'a', ' ', '1', '\n'};
  std::mt19937 rng(31);
  int compared = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string text;
    const int pieces = 1 + int(rng() % 8);
    for (int piece = 0; piece < pieces; ++piece) {
      text += char(leads[rng() % leads.size()]);
      for (int follow = int(rng() % 4); follow > 0; --follow) text += char(followers[rng() % followers.size()]);
    }
    const std::vector<std::string_view> words = split_words(text);
    const std::vector<std::string_view> expected = testing::reference_split_words(text);
    if (words != expected) {
      INFO("text bytes: " << byte_level_encode(text));
      CHECK(join(words, "\u2502") == join(expected, "\u2502"));
      break;
    }
    ++compared;
  }
  CHECK(compared == 20000);
}

TEST_CASE("split_words handles long runs in linear time") {
  const std::string long_spaces(1 << 20, ' ');
  CHECK(split_words(long_spaces + "x").size() == 2);
  const std::string punctuation(1 << 20, '!');
  CHECK(split_words(punctuation).size() == 1);
  CHECK(split_words(std::string(3000, '7')).size() == 1000);
}
