// Long words: the linear-time encoder of long_word.h and its tables (bpe_tables.h) against the
// merge loop (merge_bytes, the reference BPE), on random vocabularies built to hold every trap
// the theory must survive, on the byte-level tokenizer of builder.h and on the real Llama-3
// tokenizer (those cases are in the "assets" test suite, which ctest reports as skipped without
// ../shared/assets).
#include <algorithm>
#include <random>
#include <set>

#include "helpers.h"
#include "models/tokenizer/bpe_tables.h"
#include "models/tokenizer/builder.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/long_word.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/tokenizer.h"
#include "test_tokenizer_fixtures.h"

using namespace lamina;
using namespace lamina::tokenizer;
using testing::random_string;
using testing::merged;
using testing::random_vocabulary;
using Ids = std::vector<int32_t>;

namespace {

// The long-word encoder fed in random pieces.
Ids long_encoded(const BpeTables& tables, std::string_view word, LongWordOptions options, std::mt19937& rng) {
  LongWordEncoder encoder(tables, options);
  Ids ids;
  std::uniform_int_distribution<size_t> piece_dist(1, 64);
  for (size_t offset = 0; offset < word.size();) {
    const size_t piece = std::min(word.size() - offset, piece_dist(rng));
    encoder.append(word.substr(offset, piece), ids);
    offset += piece;
  }
  encoder.finish(ids);
  return ids;
}

// Words that stress long-word encoding on a real vocabulary: runs of one character, repeated
// short patterns, random bytes, random text from small alphabets, mixed scripts.
std::vector<std::string> adversarial_words(std::mt19937& rng) {
  std::vector<std::string> words;
  for (const size_t length : {1, 2, 3, 7, 16, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 511, 777, 1024, 1500, 2049}) {
    for (const char* unit : {"a", " ", "!", "-", "=", "\n", "\t", "*", "\xff", "\u4e2d", "\u00e9", "ab", "xyz", " -", "=-",
                             "!?", "\u0430\u0431"}) {
      std::string word;
      while (word.size() < length) word += unit;
      words.push_back(word);
    }
  }
  const std::vector<std::string> bytes = [] {
    std::vector<std::string> all;
    for (int b = 0; b < 256; ++b) all.emplace_back(1, char(b));
    return all;
  }();
  const std::vector<std::string> dna = {"A", "C", "G", "T"};
  const std::vector<std::string> letters = {"a", "b", "c", "d", "e", "s", "t", "n", "r", "q", "z"};
  const std::vector<std::string> punctuation = {"!", "-", "=", "*", "#", ".", ",", "/", "\\", "_", "~", "\xe2\x80\x94"};
  const std::vector<std::string> scripts = {"\u4e2d", "\u6587", "\u5206", "\u0928", "\u093f", "\u0439", "\u043c", "\u00e9",
                                            "e", "\u0301", "\U0001f600", "\u200d", "\ud55c", "\u0e01", "\u0e32"};
  for (const size_t length : {50, 300, 1000, 3000}) {
    for (int i = 0; i < 3; ++i) {
      for (const auto* pieces : {&bytes, &dna, &letters, &punctuation, &scripts}) words.push_back(random_string(rng, *pieces, length));
    }
  }
  return words;
}

}  // namespace

TEST_CASE("long words: compatible() equals merging the two tokens, on random vocabularies") {
  std::mt19937 rng(11);
  int compatible = 0, incompatible = 0, invalid = 0;
  for (int round = 0; round < 40; ++round) {
    const Tokenizer tokenizer = testing::tiny_tokenizer(random_vocabulary(rng, round % 2 ? "ab" : "abc", 10 + round));
    const BpeTables& tables = tokenizer.bpe().tables();
    std::vector<int32_t> valid;
    for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
      const bool is_valid = tables.valid(id);
      if (tokenizer.contains(id)) CHECK(is_valid == (merged(tokenizer.bpe(), tokenizer.token_bytes(id)) == Ids{id}));
      if (is_valid && (id >= 256 || std::string("abc").find(char(id)) != std::string::npos)) valid.push_back(id);
      invalid += tokenizer.contains(id) && !is_valid;
    }
    for (const int32_t left : valid) {
      for (const int32_t right : valid) {
        const std::string joined = std::string(tokenizer.token_bytes(left)) + std::string(tokenizer.token_bytes(right));
        const bool expected = merged(tokenizer.bpe(), joined) == Ids{left, right};
        INFO("round " << round << ": " << tokenizer.token_bytes(left) << " | " << tokenizer.token_bytes(right));
        CHECK(tables.compatible(left, right) == expected);
        CHECK(tables.compatible_by_merging(left, right) == expected);
        (expected ? compatible : incompatible) += 1;
      }
    }
  }
  CHECK(compatible > 1000);
  CHECK(incompatible > 1000);
  CHECK(invalid > 40);
}

TEST_CASE("long words: the encoder equals the merge loop on random vocabularies, with certification forced often") {
  std::mt19937 rng(5);
  int compared = 0;
  for (int round = 0; round < 60; ++round) {
    const std::string alphabet = round % 3 == 0 ? "ab" : round % 3 == 1 ? "abc" : "abcd";
    const Tokenizer tokenizer = testing::tiny_tokenizer(random_vocabulary(rng, alphabet, 8 + round / 2));
    const BpeTables& tables = tokenizer.bpe().tables();
    std::vector<std::string> pieces;
    for (const char c : alphabet) pieces.emplace_back(1, c);
    for (int i = 0; i < 30; ++i) {
      std::string word = random_string(rng, pieces, 1 + rng() % 400);
      if (i % 5 == 0) word = std::string(1 + rng() % 300, alphabet[0]);
      if (i % 5 == 1) word = random_string(rng, {std::string(word.substr(0, 1 + rng() % 4))}, 1 + rng() % 300);
      const Ids expected = merged(tokenizer.bpe(), word);
      INFO("round " << round << ", word " << word);
      const size_t certify_bytes = 1 + rng() % 40, margin = 1 + rng() % 8;
      CHECK(long_encoded(tables, word, {.certify_bytes = certify_bytes, .margin = margin}, rng) == expected);
      Ids whole;
      encode_long_word(tables, word, whole);
      CHECK(whole == expected);
      ++compared;
    }
  }
  CHECK(compared == 1800);
}

TEST_CASE("long words: the encoder equals the merge loop with the byte-level tokenizer of builder.h") {
  // Merges that make runs of one letter several ways, and patterns that overlap.
  const Tokenizer tokenizer = byte_level_tokenizer({{"a", "a"}, {"aa", "a"}, {"aa", "aa"}, {"aaaa", "aaa"}, {" ", " "},
                                                    {"  ", "  "}, {"!", "!"}, {"!!", "!"}, {"a", "b"}, {"ab", "a"},
                                                    {"b", "a"}, {"ba", "ba"}, {"aba", "b"}, {"-", "="}, {"=", "-"}});
  const BpeTables& tables = tokenizer.bpe().tables();
  std::mt19937 rng(8);
  for (const std::string& word : adversarial_words(rng)) {
    const Ids expected = merged(tokenizer.bpe(), word);
    INFO("word " << byte_level_encode(word.substr(0, 80)) << " (" << word.size() << " bytes)");
    CHECK(long_encoded(tables, word, {.certify_bytes = 64, .margin = 4}, rng) == expected);
    Ids whole;
    encode_long_word(tables, word, whole);
    CHECK(whole == expected);
  }
}

TEST_CASE("llama3 tokenizer: compatible() equals merging the two tokens" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  const BpeTables& tables = tokenizer.bpe().tables();
  std::vector<int32_t> valid, runs;  // runs: tokens made of one repeated byte, where long words live
  int invalid = 0;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    if (!tables.valid(id)) {
      invalid += tokenizer.contains(id) && !tokenizer.is_special(id);
      continue;
    }
    valid.push_back(id);
    const std::string_view bytes = tables.bytes(id);
    if (bytes.find_first_not_of(bytes[0]) == std::string_view::npos) runs.push_back(id);
  }
  CHECK(valid.size() > 127000);
  CHECK(invalid > 500);  // tokens only a whole word finds, e.g. " jeho"
  std::mt19937 rng(23);
  int compatible = 0, checked = 0;
  const auto check = [&](int32_t left, int32_t right) {
    const bool expected = tables.compatible_by_merging(left, right);
    INFO(byte_level_encode(tables.bytes(left)) << " | " << byte_level_encode(tables.bytes(right)));
    CHECK(tables.compatible(left, right) == expected);
    compatible += expected;
    ++checked;
  };
  for (const int32_t left : runs) {
    for (const int32_t right : runs) {
      if (tables.bytes(left)[0] == tables.bytes(right)[0]) check(left, right);
    }
  }
  for (int i = 0; i < 30000; ++i) check(valid[rng() % valid.size()], valid[rng() % valid.size()]);
  // Pairs that share bytes at the seam, where merges across it are likeliest.
  for (int i = 0; i < 30000; ++i) {
    const int32_t left = valid[rng() % valid.size()];
    const std::string_view tail = tables.bytes(left).substr(tables.bytes(left).size() - 1);
    const int32_t right = tables.longest_prefix_token(std::string(tail) + std::string(tables.bytes(valid[rng() % valid.size()])));
    check(left, right);
  }
  CHECK(checked > 60000);
  CHECK(compatible > 10000);
  CHECK(checked - compatible > 10000);
}

TEST_CASE("llama3 tokenizer: the long-word encoder equals the merge loop on adversarial words" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  const BpeTables& tables = tokenizer.bpe().tables();
  std::mt19937 rng(29);
  int compared = 0;
  for (const std::string& word : adversarial_words(rng)) {
    const Ids expected = merged(tokenizer.bpe(), word);
    INFO("word " << byte_level_encode(word.substr(0, 80)) << " (" << word.size() << " bytes)");
    Ids whole;
    encode_long_word(tables, word, whole);
    CHECK(whole == expected);
    CHECK(long_encoded(tables, word, {.certify_bytes = 200 + rng() % 300, .margin = 1 + rng() % 64}, rng) == expected);
    ++compared;
  }
  CHECK(compared == 400);
}

namespace {

// 1 MiB runs of one unit fed to a LongWordEncoder: it holds a bounded number of bytes, its ids
// spell the run, and away from the ends they repeat what the merge loop does on a shorter run.
void check_bounded_state(const Tokenizer& tokenizer) {
  const BpeTables& tables = tokenizer.bpe().tables();
  for (const std::string unit : {"a", " ", "!", "ab", "\u4e2d"}) {
    std::string piece;
    while (piece.size() < 4096) piece += unit;
    piece.resize(4096 - 4096 % unit.size());
    LongWordEncoder encoder(tables, {.certify_bytes = 16384});
    Ids ids;
    size_t most_held = 0, fed = 0;
    for (int i = 0; i < 256; ++i) {  // 1 MiB
      encoder.append(piece, ids);
      fed += piece.size();
      most_held = std::max(most_held, encoder.held_bytes());
    }
    encoder.finish(ids);
    INFO("unit " << byte_level_encode(unit) << ", vocabulary of " << tokenizer.vocab_size());
    CHECK(most_held < 65536);
    std::string decoded;
    for (const int32_t id : ids) decoded += tokenizer.token_bytes(id);
    CHECK(decoded.size() == fed);
    CHECK(decoded.substr(0, piece.size()) == piece);
    const Ids reference = merged(tokenizer.bpe(), piece + piece);
    CHECK(std::equal(reference.begin(), reference.begin() + std::ptrdiff_t(reference.size() / 4), ids.begin()));
  }
}

}  // namespace

TEST_CASE("long words: the encoder's state stays bounded however long the word") {
  check_bounded_state(byte_level_tokenizer({{"a", "a"}, {"aa", "a"}, {"aa", "aa"}, {"a", "b"}, {"ab", "ab"}}));
}

TEST_CASE("llama3 tokenizer: the long-word encoder's state stays bounded however long the word" *
          doctest::test_suite("assets")) {
  check_bounded_state(testing::llama3_tokenizer());
}

namespace {

// A text of long words encodes as merging it word by word does, into a vector or, in one batch,
// into a sink.
void check_long_word_text(const Tokenizer& tokenizer) {
  const std::string text = std::string(3000, 'a') + " hello" + std::string(5000, ' ') + "x " + std::string(700, '!') +
                           "\n\n" + std::string(2000, '\xff') + std::string(900, '-') + "<|eot_id|>" + std::string(400, '=');
  Ids expected;
  for (const std::string_view word : split_words(text)) tokenizer.bpe().encode_word(word, expected);
  CHECK(tokenizer.encode(text) == expected);

  Ids sunk;
  int batches = 0;
  tokenizer.encode(text, {}, [&](std::span<const int32_t> ids) {
    sunk.insert(sunk.end(), ids.begin(), ids.end());
    ++batches;
  });
  CHECK(sunk == expected);
  CHECK(batches == 1);
}

}  // namespace

TEST_CASE("tokenizer: texts with long words encode as word-by-word merging does, through a vector or a sink") {
  const Tokenizer small = byte_level_tokenizer({{"a", "a"}, {"aa", "aa"}, {" ", " "}, {"!", "!"}, {" ", "!"}});
  check_long_word_text(small);
  // A large text reaches the sink in several batches, the same ids in the same order.
  const Tokenizer& tokenizer = small;
  std::mt19937 rng(3);
  const std::string large = random_string(rng, {"a", "b", " ", "!", "aa", "\n"}, 400000) + std::string(300000, 'a');
  Ids sunk;
  int batches = 0;
  tokenizer.encode(large, {.add_bos = true}, [&](std::span<const int32_t> ids) {
    CHECK(!ids.empty());
    sunk.insert(sunk.end(), ids.begin(), ids.end());
    ++batches;
  });
  CHECK(sunk == tokenizer.encode(large, {.add_bos = true}));
  CHECK(batches > 3);
}

TEST_CASE("llama3 tokenizer: texts with long words encode as word-by-word merging does, through a vector or a sink" *
          doctest::test_suite("assets")) {
  check_long_word_text(testing::llama3_tokenizer());
}
