// The tokenizer's fast paths against their oracles: the short-word merge (short_word.h) and the
// two-byte table against the heap merge loop, the vocabulary's Bloom filter against a plain
// map, the trie's prefix tokens against vocabulary lookups, the remembered compatibility of
// small pairs against merging, and the word cache's policy. On random vocabularies and on the
// real Llama-3 tokenizer (those cases are in the "assets" test suite, which ctest reports as
// skipped without ../shared/assets).
#include <random>
#include <unordered_map>

#include "helpers.h"
#include "models/tokenizer/bpe_tables.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/tokenizer.h"
#include "models/tokenizer/word_cache.h"
#include "test_tokenizer_fixtures.h"

using namespace lamina;
using namespace lamina::tokenizer;
using testing::random_string;
using testing::merged;
using testing::random_vocabulary;
using Ids = std::vector<int32_t>;

namespace {

// The short-word merge of `word`, checked for lengths that spell the word.
Ids merged_short(const BpeModel& bpe, std::string_view word) {
  ShortWordMerger::Result result;
  bpe.short_words()->merge(word, result);
  Ids ids(result.ids, result.ids + result.count);
  size_t offset = 0;
  for (int i = 0; i < result.count; ++i) {
    CHECK(bpe.vocab().bytes(result.ids[i]) == word.substr(offset, result.lengths[i]));
    offset += result.lengths[i];
  }
  CHECK(offset == word.size());
  return ids;
}

// Texts whose words and windows exercise a real vocabulary: random bytes, letters, punctuation,
// runs of one character and prose.
std::vector<std::string> varied_texts(std::mt19937& rng) {
  std::vector<std::string> bytes, letters;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(1, char(b));
  for (char c = 'a'; c <= 'z'; ++c) letters.emplace_back(1, c);
  const std::vector<std::string> punctuation = {"!", "\"", "#", "$", "%", "&", "(", ")", "*", "+", ",", "-", ".", "/",
                                                ":", ";", "<", "=", ">", "?", "@", "[", "\\", "]", "^", "_", "{", "}"};
  std::vector<std::string> texts;
  for (int i = 0; i < 4; ++i) {
    texts.push_back(random_string(rng, bytes, 3000));
    texts.push_back(random_string(rng, letters, 3000));
    texts.push_back(random_string(rng, punctuation, 3000));
  }
  for (const char* unit : {"a", " ", "!", "\n", "ab", "\u4e2d", "\xff"}) texts.push_back(random_string(rng, {unit}, 200));
  texts.push_back("The quick brown fox jumps over the lazy dog; antidisestablishmentarianism, Kilimanjaro, 12345.");
  return texts;
}

// The valid tokens that are prefixes of `text`, shortest first, found by looking each prefix up.
std::vector<std::pair<int32_t, size_t>> prefix_tokens_by_lookup(const BpeModel& bpe, const BpeTables& tables,
                                                                std::string_view text) {
  std::vector<std::pair<int32_t, size_t>> tokens;
  for (size_t length = 1; length <= text.size(); ++length) {
    const int32_t id = bpe.find(text.substr(0, length));
    if (id >= 0 && tables.valid(id)) tokens.emplace_back(id, length);
  }
  return tokens;
}

std::vector<std::pair<int32_t, size_t>> prefix_tokens_by_trie(const BpeTables& tables, std::string_view text) {
  std::vector<BpeTables::PrefixToken> found(text.size());
  found.resize(tables.prefix_tokens(text, found.data()));
  std::vector<std::pair<int32_t, size_t>> tokens;
  for (const BpeTables::PrefixToken& token : found) {
    CHECK(token.token.small_index == tables.ref(token.token.id).small_index);
    tokens.emplace_back(token.token.id, token.length);
  }
  return tokens;
}

}  // namespace

TEST_CASE("short words: the short-word merge equals the merge loop, on random vocabularies") {
  std::mt19937 rng(41);
  int compared = 0;
  for (int round = 0; round < 60; ++round) {
    const std::string alphabet = round % 3 == 0 ? "ab" : round % 3 == 1 ? "abc" : "abcd";
    const Tokenizer tokenizer = testing::tiny_tokenizer(random_vocabulary(rng, alphabet, 8 + round / 2));
    std::vector<std::string> pieces;
    for (const char c : alphabet) pieces.emplace_back(1, c);
    for (int i = 0; i < 100; ++i) {
      std::string word = random_string(rng, pieces, 2 + rng() % (kShortWordBytes - 1));
      if (i % 4 == 0) word = std::string(word.size(), alphabet[0]);  // equal ranks side by side: leftmost first
      word.resize(std::min(word.size(), kShortWordBytes));
      INFO("round " << round << ", word " << word);
      CHECK(merged_short(tokenizer.bpe(), word) == merged(tokenizer.bpe(), word));
      ++compared;
    }
  }
  CHECK(compared == 6000);
}

TEST_CASE("llama3 tokenizer: the short-word merge equals the merge loop" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  std::mt19937 rng(43);
  int compared = 0;
  const auto compare = [&](std::string_view word) {
    INFO("word " << byte_level_encode(word));
    CHECK(merged_short(tokenizer.bpe(), word) == merged(tokenizer.bpe(), word));
    ++compared;
  };
  for (const std::string& text : varied_texts(rng)) {
    for (const std::string_view word : split_words(text)) {
      if (word.size() >= 2 && word.size() <= kShortWordBytes) compare(word);
    }
    for (size_t offset = 0; offset + kShortWordBytes <= text.size(); offset += 7) {  // windows of long words
      compare(std::string_view(text).substr(offset, 2 + rng() % (kShortWordBytes - 1)));
    }
  }
  CHECK(compared > 5000);
}

namespace {

// Every word of two bytes through the flat table, against what the vocabulary and the merges
// say: the whole-word token when ignore_merges finds one, else the merge loop. Returns how many
// came out as one token.
int check_two_byte_words(const BpeModel& bpe, bool ignore_merges) {
  int whole = 0;
  for (int pair = 0; pair < 65536; ++pair) {
    const std::string word{char(pair >> 8), char(pair & 0xFF)};
    Ids expected;
    const int32_t token = bpe.find(word);
    if (ignore_merges && token >= 0) {
      expected = {token};
    } else {
      bpe.merge_word(word, expected);
    }
    Ids ids;
    bpe.encode_two_bytes(word, ids);
    INFO("word " << byte_level_encode(word) << ", ignore_merges " << ignore_merges);
    CHECK(ids == expected);
    whole += ids.size() == 1;
  }
  return whole;
}

}  // namespace

TEST_CASE("tokenizer: words of two bytes come from the flat table as the vocabulary and merges say") {
  // "zz" is a token that no merge makes: a whole word with ignore_merges, two bytes without.
  testing::TinyTokenizerSpec spec;
  spec.tokens.emplace_back("zz", 270);
  for (const bool ignore_merges : {true, false}) {
    spec.ignore_merges = ignore_merges;
    const Tokenizer tiny = testing::tiny_tokenizer(spec);
    CHECK(check_two_byte_words(tiny.bpe(), ignore_merges) > 0);
    Ids ids;
    tiny.bpe().encode_two_bytes("zz", ids);
    CHECK(ids == (ignore_merges ? Ids{270} : Ids{'z', 'z'}));
  }
}

TEST_CASE("llama3 tokenizer: words of two bytes come from the flat table as the vocabulary and merges say" *
          doctest::test_suite("assets")) {
  const BpeModel& bpe = testing::llama3_tokenizer().bpe();
  REQUIRE(bpe.ignore_merges());  // as the asset's tokenizer.json says
  CHECK(check_two_byte_words(bpe, true) > 0);
}

namespace {

// The vocabulary finds each of its tokens, and a string near a token only when it is one too.
void check_vocabulary_lookups(const VocabIndex& vocab, std::mt19937& rng) {
  std::unordered_map<std::string, int32_t> all;
  for (int32_t id = 0; id < vocab.id_end(); ++id) {
    if (!vocab.contains(id)) continue;
    all.emplace(vocab.bytes(id), id);
    CHECK(vocab.find(vocab.bytes(id)) == id);
  }
  int absent = 0;
  for (int i = 0; i < 200000; ++i) {  // strings near tokens: a token with a byte changed, added or cut
    std::string text(vocab.bytes(int32_t(rng() % uint32_t(vocab.id_end()))));
    if (text.empty()) continue;
    const int edit = int(rng() % 3);
    if (edit == 0) text[rng() % text.size()] = char(rng());
    if (edit == 1) text.insert(text.begin() + std::ptrdiff_t(rng() % (text.size() + 1)), char(rng()));
    if (edit == 2) text.erase(text.begin() + std::ptrdiff_t(rng() % text.size()));
    const auto it = all.find(text);
    CHECK(vocab.find(text) == (it == all.end() ? -1 : it->second));
    absent += it == all.end();
  }
  CHECK(absent > 1000);
}

}  // namespace

TEST_CASE("tokenizer: the vocabulary finds every token and nothing else, past its Bloom filter") {
  const Tokenizer tiny = testing::tiny_tokenizer();
  std::mt19937 rng(47);
  check_vocabulary_lookups(tiny.bpe().vocab(), rng);
}

TEST_CASE("llama3 tokenizer: the vocabulary finds every token and nothing else, past its Bloom filter" *
          doctest::test_suite("assets")) {
  std::mt19937 rng(47);
  check_vocabulary_lookups(testing::llama3_tokenizer().bpe().vocab(), rng);
}

TEST_CASE("long words: the trie's prefix tokens are the valid tokens that begin the text") {
  std::mt19937 rng(53);
  int compared = 0;
  for (int round = 0; round < 30; ++round) {  // random vocabularies: few children per node
    const std::string alphabet = round % 2 ? "ab" : "abcd";
    const Tokenizer tokenizer = testing::tiny_tokenizer(random_vocabulary(rng, alphabet, 10 + round));
    const BpeTables& tables = tokenizer.bpe().tables();
    std::vector<std::string> pieces;
    for (const char c : alphabet) pieces.emplace_back(1, c);
    for (int i = 0; i < 50; ++i) {
      const std::string text = random_string(rng, pieces, 1 + rng() % 12);
      CHECK(prefix_tokens_by_trie(tables, text) == prefix_tokens_by_lookup(tokenizer.bpe(), tables, text));
      ++compared;
    }
  }
  CHECK(compared == 1500);
}

TEST_CASE("llama3 tokenizer: the trie's prefix tokens are the valid tokens that begin the text" *
          doctest::test_suite("assets")) {
  const BpeModel& bpe = testing::llama3_tokenizer().bpe();  // nodes with up to 256 children
  const BpeTables& tables = bpe.tables();
  std::mt19937 rng(53);
  int compared = 0;
  for (const std::string& text : varied_texts(rng)) {
    for (size_t offset = 0; offset < text.size(); offset += 1 + rng() % 5) {
      const std::string_view rest = std::string_view(text).substr(offset, tables.max_token_length());
      INFO("text " << byte_level_encode(rest.substr(0, 40)));
      CHECK(prefix_tokens_by_trie(tables, rest) == prefix_tokens_by_lookup(bpe, tables, rest));
      ++compared;
    }
  }
  CHECK(compared > 10000);
}

namespace {

// tables.compatible() against merging, on random pairs of valid tokens of one or two bytes,
// asked twice: decided, then remembered. `alphabet`, when not empty, keeps only tokens made of
// its bytes (a random vocabulary's other bytes never merge).
void check_remembered_compatibility(const BpeTables& tables, int32_t id_end, std::string_view alphabet, std::mt19937& rng) {
  std::vector<int32_t> small;
  for (int32_t id = 0; id < id_end; ++id) {
    const bool in_alphabet = alphabet.empty() || tables.bytes(id).find_first_not_of(alphabet) == std::string_view::npos;
    if (tables.valid(id) && tables.length(id) <= 2 && in_alphabet) small.push_back(id);
  }
  REQUIRE(small.size() > 4);
  int compatible = 0, checked = 0;
  for (int i = 0; i < 20000; ++i) {
    const int32_t left = small[rng() % small.size()], right = small[rng() % small.size()];
    const bool expected = tables.compatible_by_merging(left, right);
    INFO(byte_level_encode(tables.bytes(left)) << " | " << byte_level_encode(tables.bytes(right)));
    CHECK(tables.compatible(left, right) == expected);  // decided, then remembered
    CHECK(tables.compatible(left, right) == expected);  // remembered
    compatible += expected;
    ++checked;
  }
  CHECK(compatible > 1000);
  CHECK(checked - compatible > 1000);
}

}  // namespace

TEST_CASE("long words: compatibility remembered for pairs of small tokens equals merging them") {
  std::mt19937 rng(59);
  const Tokenizer tiny = testing::tiny_tokenizer(random_vocabulary(rng, "abc", 300));
  check_remembered_compatibility(tiny.bpe().tables(), tiny.bpe().vocab().id_end(), "abc", rng);
}

TEST_CASE("llama3 tokenizer: compatibility remembered for pairs of small tokens equals merging them" *
          doctest::test_suite("assets")) {
  std::mt19937 rng(59);
  const BpeModel& bpe = testing::llama3_tokenizer().bpe();
  check_remembered_compatibility(bpe.tables(), bpe.vocab().id_end(), {}, rng);
}

TEST_CASE("word cache policy: off while lookups miss, on again when the sampled words hit") {
  WordCachePolicy policy;
  std::mt19937_64 rng(61);
  CHECK(policy.consult(1));  // on at first
  for (uint32_t i = 0; i < WordCachePolicy::kWindow; ++i) policy.record(false);
  int consulted = 0, sampled = 0;
  for (int i = 0; i < 32000; ++i) {
    const size_t hash = size_t(rng());
    consulted += policy.consult(hash);
    sampled += hash % WordCachePolicy::kSampleEvery == 0;
  }
  CHECK(consulted == sampled);  // only the sample, chosen by hash
  CHECK(sampled > 500);
  for (uint32_t i = 0; i < WordCachePolicy::kWindow; ++i) policy.record(i % 2 == 0);  // half of the sample hits
  CHECK(policy.consult(1));
}
