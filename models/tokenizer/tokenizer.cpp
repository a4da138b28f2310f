#include "models/tokenizer/tokenizer.h"

#include <algorithm>
#include <bitset>
#include <filesystem>
#include <mutex>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "tensor/error.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {

// ---- added tokens: leftmost-longest exact matching with a byte trie (HF uses an
// Aho-Corasick automaton with the same semantics; 256 short strings need nothing more).

struct Tokenizer::AddedTokenMatcher {
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // byte -> node index
    int32_t token = -1;                                 // index into added_tokens_ when a token ends here
  };
  std::vector<Node> nodes{Node{}};
  std::bitset<256> first_bytes;

  void add(std::string_view content, int32_t token) {
    int32_t node = 0;
    for (const char c : content) {
      const uint8_t byte = uint8_t(c);
      auto& children = nodes[size_t(node)].children;
      auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
      if (it == children.end()) {
        children.emplace_back(byte, int32_t(nodes.size()));
        node = int32_t(nodes.size());
        nodes.emplace_back();
      } else {
        node = it->second;
      }
    }
    nodes[size_t(node)].token = token;
    first_bytes.set(uint8_t(content[0]));
  }

  // The longest allowed token starting at text[pos]: (index into added_tokens, length), or
  // index -1.
  std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos, const std::vector<AddedToken>& tokens,
                                        bool allow_special) const {
    std::pair<int32_t, size_t> best{-1, 0};
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      const auto& children = nodes[size_t(node)].children;
      const uint8_t byte = uint8_t(text[i]);
      auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
      if (it == children.end()) break;
      node = it->second;
      const int32_t token = nodes[size_t(node)].token;
      if (token >= 0 && (allow_special || !tokens[size_t(token)].special)) best = {token, i + 1 - pos};
    }
    return best;
  }
};

// ---- the cache of merged words, shared by every thread that encodes with this tokenizer.

struct Tokenizer::WordCache {
  static constexpr size_t kMaxEntries = size_t(1) << 17;
  static constexpr size_t kMaxWordBytes = 256;  // longer words are rare and costly to keep
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

// ---- loading

namespace {

std::string describe(const json::Value& value) {
  std::string text = value.dump();
  if (text.size() > 200) text = text.substr(0, 200) + "...";
  return text;
}

// The pre-tokenizer must be Llama-3's: Split(the pattern, Isolated) then ByteLevel without
// its own regex or prefix space. Only that pattern is implemented (by hand), so anything else
// is refused rather than tokenized differently from the reference.
void check_pre_tokenizer(const json::Value& root, std::string_view source) {
  const json::Value* pre = root.find("pre_tokenizer");
  const std::string where = std::string(source) + ": pre_tokenizer";
  LAMINA_CHECK(pre != nullptr && pre->is_object(), where, ": missing; expected Llama-3's Split + ByteLevel");
  const std::string type = pre->at("type").as_string(where + ".type");
  LAMINA_CHECK(type == "Sequence", where, ": expected a Sequence of Split and ByteLevel, got ", describe(*pre));
  const json::Array& steps = pre->at("pretokenizers").as_array(where + ".pretokenizers");
  LAMINA_CHECK(steps.size() == 2, where, ": expected Split then ByteLevel, got ", describe(*pre));

  const json::Value& split = steps[0];
  LAMINA_CHECK(split.at("type").as_string(where + "[0].type") == "Split", where, "[0]: expected Split, got ", describe(split));
  const json::Value* pattern = split.at("pattern").find("Regex");
  LAMINA_CHECK(pattern != nullptr && pattern->is_string() && pattern->as_string() == kLlama3SplitPattern, where,
               "[0]: only Llama-3's split pattern is implemented; this file has ", describe(split.at("pattern")));
  LAMINA_CHECK(split.at("behavior").as_string(where + "[0].behavior") == "Isolated", where,
               "[0]: expected behavior Isolated, got ", describe(split.at("behavior")));
  const json::Value* invert = split.find("invert");
  LAMINA_CHECK(invert == nullptr || !invert->as_bool(where + "[0].invert"), where, "[0]: invert must be false");

  const json::Value& byte_level = steps[1];
  LAMINA_CHECK(byte_level.at("type").as_string(where + "[1].type") == "ByteLevel", where, "[1]: expected ByteLevel, got ",
               describe(byte_level));
  for (const char* flag : {"add_prefix_space", "use_regex"}) {
    const json::Value* value = byte_level.find(flag);
    LAMINA_CHECK(value == nullptr || !value->as_bool(where + "[1]." + flag), where, "[1].", flag, " must be false");
  }
}

void check_model_options(const json::Value& model, std::string_view source) {
  const std::string where = std::string(source) + ": model";
  const json::Value* type = model.find("type");
  LAMINA_CHECK(type == nullptr || type->as_string(where + ".type") == "BPE", where, ": expected type BPE, got ", describe(*type));
  const json::Value* byte_fallback = model.find("byte_fallback");
  LAMINA_CHECK(byte_fallback == nullptr || !byte_fallback->as_bool(where + ".byte_fallback"), where,
               ": byte_fallback is not supported (byte-level BPE never needs it)");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json::Value* value = model.find(affix);
    LAMINA_CHECK(value == nullptr || value->is_null() || value->as_string().empty(), where, ".", affix, " is not supported");
  }
  const json::Value* dropout = model.find("dropout");
  LAMINA_CHECK(dropout == nullptr || dropout->is_null() || dropout->as_double(where + ".dropout") == 0.0, where,
               ": BPE dropout is not supported");
}

std::string to_bytes(const std::string& byte_level_text, std::string_view what) {
  std::optional<std::string> bytes = byte_level_decode(byte_level_text);
  LAMINA_CHECK(bytes.has_value(), what, " \"", byte_level_text, "\" is not written in the byte-level alphabet");
  return *std::move(bytes);
}

// Ids above this are refused: they would make the id-indexed tables absurdly large.
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::filesystem::path file = path;
  if (std::filesystem::is_directory(file)) file /= "tokenizer.json";
  LAMINA_CHECK(std::filesystem::is_regular_file(file), "tokenizer: ", file.string(), " not found",
               std::filesystem::is_directory(path) ? " (the model directory has no tokenizer.json)" : "");
  return from_json(json::parse_file(file.string()), file.string());
}

Tokenizer Tokenizer::from_json(const json::Value& root, std::string_view source) {
  const std::string name(source);
  LAMINA_CHECK(root.is_object(), name, ": expected a JSON object at the top level");
  const json::Value* normalizer = root.find("normalizer");
  LAMINA_CHECK(normalizer == nullptr || normalizer->is_null(), name, ": normalizers are not supported (Llama-3 has none), got ",
               normalizer ? describe(*normalizer) : "");
  check_pre_tokenizer(root, name);
  const json::Value* decoder = root.find("decoder");
  LAMINA_CHECK(decoder == nullptr || decoder->is_null() || decoder->at("type").as_string(name + ": decoder.type") == "ByteLevel",
               name, ": expected the ByteLevel decoder, got ", decoder ? describe(*decoder) : "");

  const json::Value& model = root.at("model");
  check_model_options(model, name);
  const json::Value* ignore_merges_value = model.find("ignore_merges");
  const bool ignore_merges = ignore_merges_value != nullptr && ignore_merges_value->as_bool(name + ": model.ignore_merges");

  StringIdMap vocab;
  const json::Object& vocab_entries = model.at("vocab").as_object(name + ": model.vocab");
  vocab.reserve(vocab_entries.size());
  for (const auto& [text, id_value] : vocab_entries) {
    const int64_t id = id_value.as_int64(name + ": model.vocab[\"" + text + "\"]");
    LAMINA_CHECK(id >= 0 && id <= kMaxTokenId, name, ": model.vocab[\"", text, "\"] = ", id, " is out of range [0, ", kMaxTokenId, "]");
    vocab.emplace(to_bytes(text, name + ": vocabulary token"), int32_t(id));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  const json::Array& merge_entries = model.at("merges").as_array(name + ": model.merges");
  merges.reserve(merge_entries.size());
  for (size_t i = 0; i < merge_entries.size(); ++i) {
    const json::Value& entry = merge_entries[i];
    const std::string what = name + ": merge " + std::to_string(i);
    std::string left, right;
    if (entry.is_string()) {  // "left right" (older files); byte-level tokens never contain ' '
      const std::string& text = entry.as_string();
      const size_t space = text.find(' ');
      LAMINA_CHECK(space != std::string::npos && space > 0 && space + 1 < text.size() && text.find(' ', space + 1) == std::string::npos,
                   what, ": expected \"left right\", got \"", text, "\"");
      left = text.substr(0, space), right = text.substr(space + 1);
    } else {  // ["left", "right"] (newer files)
      const json::Array& pair = entry.as_array(what);
      LAMINA_CHECK(pair.size() == 2, what, ": expected a pair of tokens, got ", describe(entry));
      left = pair[0].as_string(what), right = pair[1].as_string(what);
    }
    merges.emplace_back(to_bytes(left, what + ": token"), to_bytes(right, what + ": token"));
  }

  std::vector<AddedToken> added;
  if (const json::Value* entries = root.find("added_tokens"); entries != nullptr && !entries->is_null()) {
    for (const json::Value& entry : entries->as_array(name + ": added_tokens")) {
      const std::string what = name + ": added token";
      AddedToken token;
      const int64_t id = entry.at("id").as_int64(what + " id");
      LAMINA_CHECK(id >= 0 && id <= kMaxTokenId, what, " id ", id, " is out of range [0, ", kMaxTokenId, "]");
      token.id = int32_t(id);
      token.content = entry.at("content").as_string(what + " content");
      LAMINA_CHECK(!token.content.empty(), what, " ", id, " has empty content");
      if (const json::Value* special = entry.find("special")) token.special = special->as_bool(what + " special");
      // Options that change where a token matches; Llama-3 uses none of them.
      for (const char* option : {"single_word", "lstrip", "rstrip"}) {
        const json::Value* value = entry.find(option);
        LAMINA_CHECK(value == nullptr || !value->as_bool(), what, " \"", token.content, "\": ", option, " is not supported");
      }
      added.push_back(std::move(token));
    }
  }
  return Tokenizer(BpeModel(std::move(vocab), merges, ignore_merges, name), std::move(added), name);
}

Tokenizer::Tokenizer(BpeModel bpe, std::vector<AddedToken> added, std::string_view source)
    : bpe_(std::move(bpe)),
      added_tokens_(std::move(added)),
      matcher_(std::make_unique<AddedTokenMatcher>()),
      cache_(std::make_unique<WordCache>()) {
  int64_t size = 0;
  for (const auto& [bytes, id] : bpe_.vocab()) size = std::max<int64_t>(size, int64_t(id) + 1);
  for (const AddedToken& token : added_tokens_) size = std::max<int64_t>(size, int64_t(token.id) + 1);
  pieces_.resize(size_t(size));
  kinds_.assign(size_t(size), Kind::unassigned);

  for (const auto& [bytes, id] : bpe_.vocab()) {
    LAMINA_CHECK(kinds_[size_t(id)] == Kind::unassigned, source, ": id ", id, " is given to two vocabulary tokens (\"",
                 byte_level_encode(pieces_[size_t(id)]), "\" and \"", byte_level_encode(bytes), "\")");
    pieces_[size_t(id)] = bytes;
    kinds_[size_t(id)] = Kind::ordinary;
  }
  for (size_t i = 0; i < added_tokens_.size(); ++i) {
    const AddedToken& token = added_tokens_[i];
    const size_t id = size_t(token.id);
    // An added token may repeat a vocabulary entry (GPT-2's <|endoftext|> does), not contradict it.
    LAMINA_CHECK(kinds_[id] == Kind::unassigned || (kinds_[id] == Kind::ordinary && pieces_[id] == token.content), source,
                 ": added token \"", token.content, "\" has id ", token.id, ", which is already \"",
                 kinds_[id] == Kind::ordinary ? byte_level_encode(pieces_[id]) : pieces_[id], "\"");
    LAMINA_CHECK(added_ids_.emplace(token.content, token.id).second, source, ": added token \"", token.content, "\" appears twice");
    pieces_[id] = token.content;
    kinds_[id] = token.special ? Kind::special : Kind::added;
    matcher_->add(token.content, int32_t(i));
  }
  bos_id_ = added_token_id("<|begin_of_text|>");
}

// ---- encoding

void Tokenizer::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  // Most words of ordinary text are whole tokens: one hash lookup, no lock.
  if (bpe_.ignore_merges()) {
    const int32_t whole = bpe_.find(word);
    if (whole >= 0) {
      ids.push_back(whole);
      return;
    }
  }
  const bool cacheable = word.size() <= WordCache::kMaxWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_->mutex);
    const auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  bpe_.encode_word(word, ids);
  if (cacheable) {
    std::lock_guard lock(cache_->mutex);
    if (cache_->words.size() >= WordCache::kMaxEntries) cache_->words.clear();  // crude, bounded, rare
    cache_->words.emplace(std::string(word), std::vector<int32_t>(ids.begin() + std::ptrdiff_t(first), ids.end()));
  }
}

void Tokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& ids) const {
  std::vector<std::string_view> words;
  split_words(text, words);
  for (const std::string_view word : words) encode_word(word, ids);
}

void Tokenizer::encode(std::string_view text, const EncodeOptions& options, std::vector<int32_t>& ids) const {
  if (options.add_bos) {
    LAMINA_CHECK(bos_id_.has_value(), "tokenizer: add_bos asked for, but the vocabulary has no <|begin_of_text|>");
    ids.push_back(*bos_id_);
  }
  size_t piece_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    if (matcher_->first_bytes[uint8_t(text[pos])]) {
      const auto [token, length] = matcher_->longest_at(text, pos, added_tokens_, options.parse_special);
      if (token >= 0) {
        encode_ordinary(text.substr(piece_begin, pos - piece_begin), ids);
        ids.push_back(added_tokens_[size_t(token)].id);
        pos += length;
        piece_begin = pos;
        continue;
      }
    }
    ++pos;
  }
  encode_ordinary(text.substr(piece_begin), ids);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  encode(text, options, ids);
  return ids;
}

// ---- decoding and lookups

std::string_view Tokenizer::token_bytes(int32_t id) const {
  LAMINA_CHECK(contains(id), "tokenizer: token id ", id, " is not in the vocabulary (ids 0..", vocab_size() - 1, ")");
  return pieces_[size_t(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, const DecodeOptions& options) const {
  std::string text;
  for (const int32_t id : ids) {
    const std::string_view bytes = token_bytes(id);
    if (options.skip_special && kinds_[size_t(id)] == Kind::special) continue;
    text.append(bytes);
  }
  return text;
}

std::optional<int32_t> Tokenizer::added_token_id(std::string_view content) const {
  const auto it = added_ids_.find(content);
  if (it == added_ids_.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::require_added_token(std::string_view content) const {
  const std::optional<int32_t> id = added_token_id(content);
  LAMINA_CHECK(id.has_value(), "tokenizer: the vocabulary has no added token ", content);
  return *id;
}

size_t Tokenizer::cache_size() const {
  std::lock_guard lock(cache_->mutex);
  return cache_->words.size();
}

void Tokenizer::clear_cache() const {
  std::lock_guard lock(cache_->mutex);
  cache_->words.clear();
}

}  // namespace lamina::tokenizer
