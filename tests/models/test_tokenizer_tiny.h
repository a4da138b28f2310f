// Tiny synthetic Llama-3-style tokenizers built in code (256 byte tokens, a few merges, the
// chat's special tokens), so that BPE, added tokens and error paths are tested without the
// shared assets. No doctest here: the fuzz targets use it too.
#pragma once

#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/io/json.h"

namespace lamina::testing {

struct TinyTokenizerSpec {
  // Extra vocabulary entries (raw bytes) after the 256 single bytes, which take ids 0..255
  // (id = byte value).
  std::vector<std::pair<std::string, int64_t>> tokens = {
      {"ab", 256}, {"bc", 257}, {"abc", 258}, {"aa", 259}, {"xyz", 260}, {"aaaa", 261}, {" w", 262}, {" wo", 263},
  };
  // Merges as raw-byte pairs, in rank order.
  std::vector<std::pair<std::string, std::string>> merges = {
      {"b", "c"}, {"a", "b"}, {"a", "bc"}, {"a", "a"}, {"aa", "aa"}, {" ", "w"}, {" w", "o"},
  };
  bool pair_merges = false;  // ["a","b"] instead of "a b"
  bool ignore_merges = true;
  // Added tokens: (content, id, special).
  std::vector<std::tuple<std::string, int64_t, bool>> added = {
      {"<|begin_of_text|>", 300, true}, {"<|end_of_text|>", 301, true}, {"<|start_header_id|>", 302, true},
      {"<|end_header_id|>", 303, true}, {"<|eot_id|>", 304, true},      {"<|eom_id|>", 305, true},
      {"<tool>", 306, false},
  };
};

inline json::Value tiny_tokenizer_json(const TinyTokenizerSpec& spec = {}) {
  using tokenizer::byte_level_encode;
  json::Object vocab;
  for (int b = 0; b < 256; ++b) vocab.emplace_back(byte_level_encode(std::string(1, char(b))), int64_t(b));
  for (const auto& [bytes, id] : spec.tokens) vocab.emplace_back(byte_level_encode(bytes), id);
  json::Array merges;
  for (const auto& [left, right] : spec.merges) {
    if (spec.pair_merges) {
      merges.push_back(json::Array{byte_level_encode(left), byte_level_encode(right)});
    } else {
      merges.push_back(byte_level_encode(left) + " " + byte_level_encode(right));
    }
  }
  json::Array added;
  for (const auto& [content, id, special] : spec.added) {
    json::Value token = json::Object{};
    token.set("id", id);
    token.set("content", content);
    token.set("single_word", false);
    token.set("lstrip", false);
    token.set("rstrip", false);
    token.set("normalized", false);
    token.set("special", special);
    added.push_back(std::move(token));
  }

  json::Value split = json::Object{};
  split.set("type", "Split");
  json::Value pattern = json::Object{};
  pattern.set("Regex", std::string(tokenizer::kLlama3SplitPattern));
  split.set("pattern", pattern);
  split.set("behavior", "Isolated");
  split.set("invert", false);
  json::Value byte_level = json::Object{};
  byte_level.set("type", "ByteLevel");
  byte_level.set("add_prefix_space", false);
  byte_level.set("trim_offsets", true);
  byte_level.set("use_regex", false);
  json::Value pre_tokenizer = json::Object{};
  pre_tokenizer.set("type", "Sequence");
  pre_tokenizer.set("pretokenizers", json::Array{split, byte_level});

  json::Value model = json::Object{};
  model.set("type", "BPE");
  model.set("dropout", nullptr);
  model.set("unk_token", nullptr);
  model.set("byte_fallback", false);
  model.set("ignore_merges", spec.ignore_merges);
  model.set("vocab", std::move(vocab));
  model.set("merges", std::move(merges));

  json::Value decoder = json::Object{};
  decoder.set("type", "ByteLevel");

  json::Value root = json::Object{};
  root.set("version", "1.0");
  root.set("added_tokens", std::move(added));
  root.set("normalizer", nullptr);
  root.set("pre_tokenizer", std::move(pre_tokenizer));
  root.set("decoder", std::move(decoder));
  root.set("model", std::move(model));
  return root;
}

inline tokenizer::Tokenizer tiny_tokenizer(const TinyTokenizerSpec& spec = {}) {
  return tokenizer::Tokenizer::from_json(tiny_tokenizer_json(spec), "tiny tokenizer.json");
}

// A random vocabulary over `alphabet`, grown like BPE training (each merge joins two tokens
// already there), with the traps: several merges making the same token, ranks shuffled out of
// creation order (so that some tokens merge in decreasing rank order, and some merges can never
// apply), and tokens that no merge makes (found only as whole words).
inline TinyTokenizerSpec random_vocabulary(std::mt19937& rng, const std::string& alphabet, int merge_count) {
  TinyTokenizerSpec spec;
  spec.tokens.clear();
  spec.merges.clear();
  spec.added.clear();
  std::vector<std::string> tokens;
  for (const char c : alphabet) tokens.emplace_back(1, c);
  std::set<std::string> known(tokens.begin(), tokens.end());
  std::set<std::pair<std::string, std::string>> pairs;
  int64_t next_id = 256;
  for (int attempt = 0; int(spec.merges.size()) < merge_count && attempt < 100 * merge_count; ++attempt) {
    const std::string left = tokens[rng() % tokens.size()];
    const std::string right = tokens[rng() % tokens.size()];
    const std::string joined = left + right;
    if (joined.size() > 7 || !pairs.insert({left, right}).second) continue;
    if (known.insert(joined).second) {
      spec.tokens.emplace_back(joined, next_id++);
      tokens.push_back(joined);
    }
    spec.merges.emplace_back(left, right);
  }
  for (size_t i = 0; i < spec.merges.size() / 4; ++i) {  // some ranks out of order
    std::swap(spec.merges[rng() % spec.merges.size()], spec.merges[rng() % spec.merges.size()]);
  }
  for (int i = 0; i < 3; ++i) {  // unreachable tokens
    std::string lone;
    for (int k = 0; k < 3 + i; ++k) lone += alphabet[rng() % alphabet.size()];
    if (known.insert(lone).second) spec.tokens.emplace_back(lone, next_id++);
  }
  return spec;
}

inline std::string random_string(std::mt19937& rng, const std::vector<std::string>& pieces, size_t length) {
  std::string text;
  while (text.size() < length) text += pieces[rng() % pieces.size()];
  return text;
}

}  // namespace lamina::testing
