// Loading a tokenizer from a GGUF file's tokenizer.ggml.* metadata (llama.cpp's layout):
//   model        "gpt2" (byte-level BPE; the only kind lamina implements)
//   pre          the pre-tokenizer's name ("llama-bpe", "gpt2", "smollm"): chosen, not assumed
//   tokens       the vocabulary by id, written in the byte-level alphabet as in tokenizer.json
//   merges       "left right", in priority order
//   token_type   by id: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
//   bos/eos/padding/unknown_token_id, add_bos_token
// Control tokens become special added tokens (their text is literal, matched in text only when
// EncodeOptions::parse_special asks), user-defined ones added tokens matched always: the roles
// tokenizer.json's added_tokens give them. Single bytes that are no token (SmolLM2 lacks 21)
// are left out of words before merging, as HF's BPE does when it has no unknown token: such
// bytes do not survive encode then decode. Every error names the file and the key.
#include <array>

#include "models/io/gguf.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"

namespace lamina::tokenizer {
namespace {

// llama.cpp's token types.
constexpr int64_t kNormal = 1, kControl = 3, kUserDefined = 4, kByte = 6;

std::string element_name(const std::string& key, size_t index) { return key + "[" + std::to_string(index) + "]"; }

std::string to_bytes(const std::string& byte_level_text, const std::string& where) {
  std::optional<std::string> bytes = byte_level_decode(byte_level_text);
  LAMINA_CHECK(bytes.has_value(), where, ": \"", byte_level_text, "\" is not written in the byte-level alphabet");
  return *std::move(bytes);
}

// An id a tokenizer.ggml.*_token_id key names, when present; it must be a token.
std::optional<int32_t> role_id(const gguf::File& file, const std::string& key, size_t token_count) {
  const gguf::Value* value = file.find_metadata(key);
  if (value == nullptr) return std::nullopt;
  const std::string where = file.path() + ": " + key;
  const uint64_t id = value->as_u64(where);
  LAMINA_CHECK(id < token_count, where, ": ", id, " is not a token id (the vocabulary has ", token_count, " tokens)");
  return int32_t(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const gguf::File& file) {
  const std::string& source = file.path();
  const auto where = [&](const std::string& key) { return source + ": " + key; };

  const std::string model_key = "tokenizer.ggml.model";
  const std::string& model = file.metadata(model_key).as_string(where(model_key));
  LAMINA_CHECK(model == "gpt2", where(model_key), ": \"", model,
               "\" is not supported (only \"gpt2\", byte-level BPE, is implemented)");

  const std::string pre_key = "tokenizer.ggml.pre";
  const gguf::Value* pre = file.find_metadata(pre_key);
  LAMINA_CHECK(pre != nullptr, where(pre_key), ": missing; the file must name its pre-tokenizer (supported: \"llama-bpe\", \"gpt2\", \"smollm\")");
  const PreTokenizer pre_tokenizer = pre_tokenizer_from_gguf_name(pre->as_string(where(pre_key)), where(pre_key));

  const std::string tokens_key = "tokenizer.ggml.tokens";
  const std::vector<gguf::Value>& tokens = file.metadata(tokens_key).as_array(where(tokens_key));
  // Ids are int32 and index tables of their own: refuse absurd vocabularies before building them.
  constexpr size_t kMaxTokens = size_t(1) << 24;
  LAMINA_CHECK(!tokens.empty() && tokens.size() <= kMaxTokens, where(tokens_key), ": ", tokens.size(),
               " tokens (expected 1 to ", kMaxTokens, ")");

  const std::string types_key = "tokenizer.ggml.token_type";
  const gguf::Value* types_value = file.find_metadata(types_key);
  const std::vector<gguf::Value>* types = types_value ? &types_value->as_array(where(types_key)) : nullptr;
  LAMINA_CHECK(types == nullptr || types->size() == tokens.size(), where(types_key), ": ", types ? types->size() : 0,
               " types for ", tokens.size(), " tokens");

  StringIdMap vocab;
  vocab.reserve(tokens.size());
  std::vector<AddedToken> added;
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string token_where = element_name(where(tokens_key), id);
    const std::string& text = tokens[id].as_string(token_where);
    const int64_t type = types ? (*types)[id].as_i64(element_name(where(types_key), id)) : kNormal;
    LAMINA_CHECK(type >= kNormal && type <= kByte, element_name(where(types_key), id), ": unknown token type ", type);
    if (type == kControl || type == kUserDefined) {
      // Literal text, as tokenizer.json's added tokens are (not in the byte-level alphabet).
      LAMINA_CHECK(!text.empty(), token_where, ": an empty control or user-defined token");
      added.push_back(AddedToken{int32_t(id), text, type == kControl});
      continue;
    }
    const auto [it, inserted] = vocab.emplace(to_bytes(text, token_where), int32_t(id));
    LAMINA_CHECK(inserted, token_where, ": \"", text, "\" is also token ", it->second);
  }

  // Bytes that are no token get ids past the vocabulary, for the BPE model's tables only; the
  // tokenizer leaves them out of words (Tokenizer::dropped_bytes_).
  const std::array<bool, 256> dropped = add_missing_bytes(vocab, int32_t(tokens.size()));

  const std::string merges_key = "tokenizer.ggml.merges";
  std::vector<std::pair<std::string, std::string>> merges;
  if (const gguf::Value* merges_value = file.find_metadata(merges_key)) {
    const std::vector<gguf::Value>& entries = merges_value->as_array(where(merges_key));
    merges.reserve(entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      const std::string merge_where = element_name(where(merges_key), i);
      const std::string& text = entries[i].as_string(merge_where);
      // Byte-level tokens never contain ' ' (it is written 'Ġ'), so one space separates the two.
      const size_t space = text.find(' ');
      LAMINA_CHECK(space != std::string::npos && space > 0 && space + 1 < text.size() &&
                       text.find(' ', space + 1) == std::string::npos,
                   merge_where, ": expected \"left right\", got \"", text, "\"");
      merges.emplace_back(to_bytes(text.substr(0, space), merge_where), to_bytes(text.substr(space + 1), merge_where));
    }
  }

  // GGUF's gpt2 BPE applies merges to every word (no whole-word shortcut: ignore_merges off).
  Tokenizer tokenizer(BpeModel(vocab, merges, /*ignore_merges=*/false, source), std::move(added), source, pre_tokenizer);
  tokenizer.drop_bytes(dropped, int32_t(tokens.size()));
  TokenRoles& roles = tokenizer.roles_;
  roles.bos = role_id(file, "tokenizer.ggml.bos_token_id", tokens.size());
  roles.eos = role_id(file, "tokenizer.ggml.eos_token_id", tokens.size());
  roles.pad = role_id(file, "tokenizer.ggml.padding_token_id", tokens.size());
  roles.unk = role_id(file, "tokenizer.ggml.unknown_token_id", tokens.size());
  if (const gguf::Value* add_bos = file.find_metadata("tokenizer.ggml.add_bos_token")) {
    roles.add_bos = add_bos->as_bool(where("tokenizer.ggml.add_bos_token"));
  }
  LAMINA_CHECK(!roles.add_bos || roles.bos.has_value(), where("tokenizer.ggml.add_bos_token"),
               ": true, but the file names no tokenizer.ggml.bos_token_id");
  if (roles.bos) tokenizer.bos_id_ = roles.bos;
  return tokenizer;
}

}  // namespace lamina::tokenizer
