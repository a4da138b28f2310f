// The Llama-3 tokenizer: byte-level BPE loaded from a Hugging Face tokenizer.json, producing
// the same ids as HF `tokenizers` for the same text. Also GPT-2 / SmolLM2 style ones, from a
// tokenizer.json or a GGUF file, with the pre-tokenizer the file names (pretokenize.h).
//
// Encoding: added tokens are split out first by exact, leftmost-longest match (special ones
// only when asked: see EncodeOptions::parse_special); each piece between them is split into
// words by the hand-written pre-tokenizer (pretokenize.h); each word is looked up whole in
// the vocabulary, else merged by BPE (bpe.h). Words that need merging are cached; long ones
// (a run of one letter, spaces or punctuation is one word) go to the linear-time encoder of
// long_word.h, which hands out ids as it goes, so memory stays bounded however long the word.
// Text that arrives in pieces (standard input) is encoded with an EncodeStream
// (encode_stream.h): the same ids, without holding the whole text.
//
// Decoding returns the exact bytes the ids stand for, so decode(encode(s)) == s for any
// bytes s, valid UTF-8 or not (except bytes that are no token of a vocabulary that lacks some,
// see dropped_bytes_). Use replace_invalid_utf8 (unicode.h) or a StreamDecoder
// (stream_decoder.h) where text must be valid UTF-8.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "models/tokenizer/bpe.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/word_cache.h"

namespace lamina::json {
class Value;
}
namespace lamina::gguf {
class File;
}

namespace lamina::tokenizer {

class AddedTokenMatcher;
class EncodeStream;

// A token from tokenizer.json's `added_tokens`, matched by its literal text.
struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;  // control tokens such as <|eot_id|>; see EncodeOptions::parse_special
};

struct EncodeOptions {
  bool add_bos = false;  // prepend <|begin_of_text|>
  // Recognise special tokens written in the text ("<|eot_id|>" becomes 128009). HF does this
  // by default; Meta's encode() does not. Off by default: text from users or datasets must
  // not be able to forge control tokens. (Added tokens that are not special always match.)
  bool parse_special = false;
};

// The ids a GGUF file names for roles (tokenizer.ggml.{bos,eos,padding,unknown}_token_id) and
// whether it asks for BOS (tokenizer.ggml.add_bos_token). Empty for a tokenizer.json.
struct TokenRoles {
  std::optional<int32_t> bos, eos, pad, unk;
  bool add_bos = false;
};

struct DecodeOptions {
  bool skip_special = false;  // leave special tokens out instead of writing their text
};

class Tokenizer {
 public:
  // Reads a tokenizer.json file, or the tokenizer.json inside a model directory.
  static Tokenizer load(const std::string& path);
  // From parsed tokenizer.json; `source` names it in errors.
  static Tokenizer from_json(const json::Value& root, std::string_view source = "tokenizer.json");
  // From a GGUF file's tokenizer.ggml.* metadata (tokenizer_gguf.cpp): byte-level BPE ("gpt2"
  // model), the pre-tokenizer its tokenizer.ggml.pre names, control tokens as special tokens.
  static Tokenizer from_gguf(const gguf::File& file);

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options = {}) const;
  // Appends the ids of `text` to `ids`.
  void encode(std::string_view text, const EncodeOptions& options, std::vector<int32_t>& ids) const;
  // Hands the ids of `text` to `sink` in order, a batch at a time (the same ids): output can be
  // written as it is made instead of held whole.
  using IdSink = std::function<void(std::span<const int32_t> ids)>;
  void encode(std::string_view text, const EncodeOptions& options, const IdSink& sink) const;
  // Appends the ids of ordinary text: no added tokens recognised, no BOS.
  void encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const;

  // The bytes the ids stand for; throws on an id outside the vocabulary.
  std::string decode(std::span<const int32_t> ids, const DecodeOptions& options = {}) const;

  // One token's bytes: raw bytes for an ordinary token, the literal text of an added one.
  std::string_view token_bytes(int32_t id) const;
  bool contains(int32_t id) const { return id >= 0 && id < vocab_size() && kinds_[size_t(id)] != Kind::unassigned; }
  bool is_special(int32_t id) const { return contains(id) && kinds_[size_t(id)] == Kind::special; }

  // The id of an added token by its text (e.g. "<|eot_id|>"), or nothing.
  std::optional<int32_t> added_token_id(std::string_view content) const;
  // The same, throwing an error that names the token when it is absent.
  int32_t require_added_token(std::string_view content) const;
  // <|begin_of_text|>, when the vocabulary has it; a GGUF file's own BOS id.
  std::optional<int32_t> bos_id() const { return bos_id_; }
  const TokenRoles& roles() const { return roles_; }
  // Whether a text's ids start with BOS unless a caller says otherwise: as a GGUF file says
  // (tokenizer.ggml.add_bos_token; SmolLM2's is false, its BOS being <|im_start|>), else whenever
  // there is a BOS (Llama-3's tokenizer.json template writes <|begin_of_text|> first).
  bool adds_bos() const { return roles_.bos ? roles_.add_bos : bos_id_.has_value(); }
  PreTokenizer pre_tokenizer() const { return pre_tokenizer_; }

  int32_t vocab_size() const { return int32_t(kinds_.size()); }  // largest id + 1
  const std::vector<AddedToken>& added_tokens() const { return added_tokens_; }

  // The BPE model (for tests that compare its encoders).
  const BpeModel& bpe() const { return bpe_; }

  // The cache of words that needed BPE merges (for benchmarks; results never depend on it).
  size_t cache_size() const;
  void clear_cache() const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  friend class EncodeStream;
  enum class Kind : uint8_t { unassigned, ordinary, special, added };
  // Where ids go: a vector, which a sink (when there is one) empties whenever it grows past a
  // batch. It also carries what the encode call learns about its text's words.
  struct Output {
    static constexpr size_t kBatch = size_t(1) << 16;
    std::vector<int32_t>& ids;
    const IdSink* sink = nullptr;
    WordCachePolicy cache_policy{};

    void drain_if_large() {
      if (sink != nullptr && ids.size() >= kBatch) drain();
    }
    void drain() {
      if (sink == nullptr) return;
      if (!ids.empty()) (*sink)(ids);
      ids.clear();
    }
  };

  Tokenizer(BpeModel bpe, std::vector<AddedToken> added, std::string_view source,
            PreTokenizer pre_tokenizer = PreTokenizer::llama3);
  void encode(std::string_view text, const EncodeOptions& options, Output& out) const;
  void encode_ordinary(std::string_view text, Output& out) const;
  void encode_word(std::string_view word, Output& out) const;
  // `word` without the bytes the vocabulary lacks (copied to `kept` when it has any).
  std::string_view without_dropped_bytes(std::string_view word, std::string& kept) const;
  // For the loaders: gives each single byte `vocab` lacks an id from `first_free_id` on, and
  // returns which bytes those are; after construction, drop_bytes remembers them and trims the
  // id tables back to `vocab_size` (the placeholder ids are no tokens).
  static std::array<bool, 256> add_missing_bytes(StringIdMap& vocab, int32_t first_free_id);
  void drop_bytes(const std::array<bool, 256>& dropped, int32_t vocab_size);

  BpeModel bpe_;
  std::vector<AddedToken> added_tokens_;
  StringIdMap added_ids_;             // added token text -> id
  // The text of each added token, sorted by id (ordinary tokens' bytes are in bpe_). Not a table
  // by id: for SmolLM2's 49k ids and 17 added tokens that was 1.5 MB of empty strings.
  std::vector<std::pair<int32_t, std::string>> added_pieces_;
  std::string_view added_piece(int32_t id) const;
  std::vector<Kind> kinds_;          // by id
  std::optional<int32_t> bos_id_;
  TokenRoles roles_;
  PreTokenizer pre_tokenizer_ = PreTokenizer::llama3;
  // Single bytes that are no token (SmolLM2 lacks 21, such as 0x04 and 0xFF). As HF's BPE does
  // without an unknown token, they are left out of each word before merging; the BPE model
  // holds them under ids past the vocabulary that are never emitted.
  std::array<bool, 256> dropped_bytes_{};
  bool drops_bytes_ = false;
  std::unique_ptr<AddedTokenMatcher> matcher_;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace lamina::tokenizer
