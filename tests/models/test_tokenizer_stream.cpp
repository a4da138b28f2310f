// Encoding a text given in pieces (encode_stream.h) against encoding it whole: the same ids for
// any way of cutting it, with a bounded number of bytes held for long runs. The real Llama-3
// cases are in the "assets" test suite, which ctest reports as skipped without ../shared/assets.
#include <random>

#include "helpers.h"
#include "models/tokenizer/builder.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/encode_stream.h"
#include "models/tokenizer/tokenizer.h"
#include "test_tokenizer_fixtures.h"

using namespace lamina;
using namespace lamina::tokenizer;
using Ids = std::vector<int32_t>;

namespace {

// The text in random pieces of 1 to max_piece bytes.
Ids streamed(const Tokenizer& tokenizer, std::string_view text, const EncodeOptions& options, EncodeStreamOptions stream_options,
             std::mt19937& rng, size_t max_piece, size_t* most_held = nullptr) {
  Ids ids;
  EncodeStream stream(tokenizer, options, [&](std::span<const int32_t> batch) { ids.insert(ids.end(), batch.begin(), batch.end()); },
                      stream_options);
  std::uniform_int_distribution<size_t> piece_dist(1, max_piece);
  for (size_t offset = 0; offset < text.size();) {
    const size_t piece = std::min(text.size() - offset, piece_dist(rng));
    stream.push(text.substr(offset, piece));
    offset += piece;
    if (most_held != nullptr) *most_held = std::max(*most_held, stream.held_bytes());
  }
  stream.finish();
  return ids;
}

// Pieces of text that make every kind of word, every boundary between them, and the long runs.
std::string random_text(std::mt19937& rng, size_t pieces) {
  static const std::vector<std::string> parts = {
      "a", "b", "ab", "aaaa", "xyz", "Z", "s", "'s", "'S", "'ll", "'re", "'", "\u017f", "\u00e9", "\u4e2d", "\u0301",
      " ", " ", "  ", "\t", "\n", "\n", "\r\n", "\r", "\u3000", "\u00a0", "\u2028", "\v",
      "0", "12", "345", "\u0663", "!", "!!", ".", "-", "=", "<", "|", ">", "\"", "\x7f", std::string(1, '\0'),
      "\xff", "\x80", "\xc3", "\xe2\x82", "\xed\xa0\x80", "\xf0\x9f", "\U0001f600",
      "<|eot_id|>", "<|begin_of_text|>", "<|eot_id", "<|", "<tool>", "<too",
  };
  static const std::vector<std::string> runs = {"a", " ", "!", "\n", " \n", "\t ", "ab", "\u4e2d", "\xff", "=-", "\r\n "};
  std::string text;
  for (size_t i = 0; i < pieces; ++i) {
    if (rng() % 16 == 0) {  // a run, often longer than the thresholds
      const std::string& unit = runs[rng() % runs.size()];
      for (size_t n = 1 + rng() % 200; n > 0; --n) text += unit;
    } else {
      text += parts[rng() % parts.size()];
    }
  }
  return text;
}

// Merges across every kind of character, so that a word boundary in the wrong place shows in
// the ids (with few merges most cuts of a run give the same single-byte ids). The first ones
// join characters that a word boundary should separate, ahead of everything else.
Tokenizer merging_tokenizer() {
  return byte_level_tokenizer({{"!", "\xe4"}, {"a", "\xe4"}, {" ", "\xe3"}, {"!", "\r"}, {"a", "a"}, {"a", "b"}, {" ", "a"}, {" ", " "}, {"  ", "  "}, {" ", "\n"}, {"\n", " "},
                               {"\n", "\n"}, {"\t", "\t"}, {"\t", " "}, {"!", "!"}, {" ", "!"}, {"!", "\n"}, {"'", "s"},
                               {"\r", "\n"}, {"=", "-"}, {"-", "="}, {"<", "|"}, {"\xe3\x80", "\x80"}, {"\xe3", "\x80"},
                               {"\xe4\xb8", "\xad"}, {"\xe4", "\xb8"}, {"\xff", "\xff"}, {"1", "2"}, {"x", "y"}});
}

}  // namespace

TEST_CASE("encode stream: the same ids as encoding the whole text, however it is cut") {
  const Tokenizer tokenizer = merging_tokenizer();
  std::mt19937 rng(41);
  int compared = 0;
  for (int i = 0; i < 600; ++i) {
    const std::string text = random_text(rng, 1 + rng() % 120);
    const EncodeOptions options{.add_bos = i % 3 == 0, .parse_special = i % 2 == 0};
    const EncodeStreamOptions stream_options{.chunk_bytes = 1 + rng() % 64, .long_word_bytes = 1 + rng() % 40};
    INFO("text: " << byte_level_encode(text));
    CHECK(streamed(tokenizer, text, options, stream_options, rng, 1 + rng() % 50) == tokenizer.encode(text, options));
    ++compared;
  }
  CHECK(compared == 600);
}

namespace {

// Texts of one long word each (and the text around it), 128 KiB, streamed: few bytes held, the
// ids of the whole text.
void check_long_runs_streamed(const Tokenizer& tokenizer, std::mt19937& rng) {
  for (const std::string unit : {"a", " ", "!", "\n", "ab", "\u4e2d", "-=", "\t", "\n!"}) {
    std::string text = "Start: ";
    while (text.size() < (size_t(1) << 17)) text += unit;
    text += " end.";
    size_t most_held = 0;
    const Ids ids = streamed(tokenizer, text, {}, {.chunk_bytes = 4096, .long_word_bytes = 8192}, rng, 3000, &most_held);
    INFO("unit " << byte_level_encode(unit) << ", vocabulary of " << tokenizer.vocab_size());
    CHECK(most_held < 16384);
    CHECK(ids == tokenizer.encode(text));
  }
}

}  // namespace

TEST_CASE("encode stream: long runs are handed over as they come, holding few bytes") {
  std::mt19937 rng(43);
  check_long_runs_streamed(merging_tokenizer(), rng);
}

TEST_CASE("llama3 tokenizer: long runs are streamed as they come, holding few bytes" * doctest::test_suite("assets")) {
  std::mt19937 rng(43);
  check_long_runs_streamed(testing::llama3_tokenizer(), rng);
}

TEST_CASE("encode stream: whitespace that may still join the word before its newline is held, and encodes right") {
  const Tokenizer tokenizer = merging_tokenizer();
  std::mt19937 rng(47);
  // A long run whose newline comes after it started streaming: the word then ends at the run's
  // last newline, wherever the run ends.
  for (const std::string newline : {"\n", "\r\n", "\n\n", "\r"}) {
    for (const std::string space : {" ", "\t", "\u3000"}) {
      for (const std::string after : {"y", "", " y", "!", "<|eot_id|>"}) {
        std::string text = "x";
        for (int i = 0; i < 3000; ++i) text += space;
        text += newline;
        for (int i = 0; i < 2000; ++i) text += space;
        text += after;
        INFO("newline " << byte_level_encode(newline) << ", space " << byte_level_encode(space) << ", after " << after);
        for (const size_t piece : {size_t(97), size_t(500), size_t(4096)}) {
          CHECK(streamed(tokenizer, text, {.parse_special = true}, {.chunk_bytes = 256, .long_word_bytes = 1024}, rng, piece) ==
                tokenizer.encode(text, {.parse_special = true}));
        }
      }
    }
  }
  for (const std::string tail : {"x", "\n", " x", "", "\n\n  y", "<|eot_id|>"}) {
    const std::string text = "word \n" + std::string(50000, ' ') + tail;
    INFO("tail " << byte_level_encode(tail));
    CHECK(streamed(tokenizer, text, {.parse_special = true}, {.chunk_bytes = 512, .long_word_bytes = 1024}, rng, 700) ==
          tokenizer.encode(text, {.parse_special = true}));
  }
}

TEST_CASE("encode stream: a long run cut anywhere near its end, where a character may be cut in two") {
  const Tokenizer tokenizer = merging_tokenizer();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string(3000, '!'), "\u4e2d\u6587 end"},      // punctuation, then a letter cut in two
      {std::string(3000, '!'), "\xe4\xb8!!"},            // ... or an invalid sequence that might have been one
      {std::string(3000, 'a'), "\u4e2d\xe4\xb8!"},      // letters, then more letters and an invalid sequence
      {std::string(3000, ' '), "\u3000\u3000x"},         // spaces, then more spaces of three bytes
      {std::string(3000, ' '), "\xe3\x80!"},             // ... or an invalid sequence that might have been one
      {std::string(3000, '!'), "\r\n\r\nx"},           // punctuation and its newlines
      {"x" + std::string(3000, ' '), "\n          y"},     // a newline after the run started streaming
      {std::string(3000, '<'), "|eot_id|>!"},              // an added token at the end of a run
  };
  for (const auto& [run, after] : cases) {
    const std::string text = run + after;
    const Ids expected = tokenizer.encode(text, {.parse_special = true});
    for (size_t cut = run.size() - 12; cut <= text.size(); ++cut) {
      Ids ids;
      EncodeStream stream(tokenizer, {.parse_special = true}, [&](std::span<const int32_t> batch) { ids.insert(ids.end(), batch.begin(), batch.end()); },
                          {.chunk_bytes = 1, .long_word_bytes = 1024});
      stream.push(std::string_view(text).substr(0, cut));
      stream.push(std::string_view(text).substr(cut));
      stream.finish();
      INFO("after " << byte_level_encode(after) << ", cut at " << cut);
      CHECK(ids == expected);
    }
  }
}

TEST_CASE("llama3 tokenizer: the encode stream gives the ids of the whole text" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  std::mt19937 rng(53);
  for (int i = 0; i < 60; ++i) {
    const std::string text = random_text(rng, 50 + rng() % 400);
    const EncodeOptions options{.add_bos = i % 2 == 0, .parse_special = i % 3 == 0};
    INFO("text: " << byte_level_encode(text));
    CHECK(streamed(tokenizer, text, options, {.chunk_bytes = 1 + rng() % 300, .long_word_bytes = 1 + rng() % 400}, rng,
                   1 + rng() % 200) == tokenizer.encode(text, options));
  }
}
