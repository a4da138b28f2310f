// Tokenizer files to GGUF metadata and back (see tokenizer_export.h).
#include "models/tokenizer/tokenizer_export.h"

#include <filesystem>
#include <unordered_map>
#include <unordered_set>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"

namespace lamina::tokenizer {
namespace {

// llama.cpp's token types.
constexpr int32_t kNormal = 1, kControl = 3, kUserDefined = 4, kUnused = 5;

// Metadata values made here rather than with gguf_write.h's helpers: the tokenizer's fuzz
// targets link models/tokenizer/ and the GGUF reader only.
gguf::Value string_value(std::string text) {
  gguf::Value value;
  value.type = gguf::ValueType::string;
  value.text = std::move(text);
  return value;
}
gguf::Value fixed_value(gguf::ValueType type, uint64_t bits) {
  gguf::Value value;
  value.type = type;
  value.bits = bits;
  return value;
}
gguf::Value string_array(const std::vector<std::string>& texts) {
  gguf::Value value;
  value.type = gguf::ValueType::array;
  value.element_type = gguf::ValueType::string;
  value.elements.reserve(texts.size());
  for (const std::string& text : texts) value.elements.push_back(string_value(text));
  return value;
}
gguf::Value i32_array(const std::vector<int32_t>& numbers) {
  gguf::Value value;
  value.type = gguf::ValueType::array;
  value.element_type = gguf::ValueType::i32;
  value.elements.reserve(numbers.size());
  for (int32_t number : numbers) value.elements.push_back(fixed_value(gguf::ValueType::i32, uint64_t(int64_t(number))));
  return value;
}

// A special token of tokenizer_config.json: "<s>" or {"content": "<s>", ...}; nullopt when absent or null.
std::optional<std::string> config_token(const json::Value* config, const std::string& key, const std::string& where) {
  if (config == nullptr) return std::nullopt;
  const json::Value* value = config->find(key);
  if (value == nullptr || value->is_null()) return std::nullopt;
  if (value->is_string()) return value->as_string();
  const json::Value* content = value->find("content", where + ": " + key);
  LAMINA_CHECK(content != nullptr, where, ": ", key, ": expected a string or an object with \"content\"");
  return content->as_string(where + ": " + key + ".content");
}

// HF's chat_template: a string, or a list of {"name", "template"} whose "default" entry is the one.
std::optional<std::string> config_chat_template(const json::Value* config, const std::string& where) {
  if (config == nullptr) return std::nullopt;
  const json::Value* value = config->find("chat_template");
  if (value == nullptr || value->is_null()) return std::nullopt;
  if (value->is_string()) return value->as_string();
  const json::Array& entries = value->as_array(where + ": chat_template");
  for (const json::Value& entry : entries) {
    const json::Value* name = entry.find("name", where + ": chat_template[]");
    if (name != nullptr && name->is_string() && name->as_string() == "default")
      return entry.at("template", where + ": chat_template[default]").as_string(where + ": chat_template[default].template");
  }
  return std::nullopt;
}

// Whether tokenizer.json's post-processor puts `bos` first in a single sequence (HF's
// TemplateProcessing form), nullopt when it does not say.
std::optional<bool> post_processor_adds(const json::Value& root, const std::string& bos) {
  const json::Value* processor = root.find("post_processor");
  if (processor == nullptr || !processor->is_object()) return std::nullopt;
  const json::Value* type = processor->find("type");
  if (type == nullptr || !type->is_string() || type->as_string() != "TemplateProcessing") return std::nullopt;
  const json::Value* single = processor->find("single");
  if (single == nullptr || !single->is_array() || single->as_array().empty()) return false;
  const json::Value* special = single->as_array()[0].find("SpecialToken");
  if (special == nullptr || !special->is_object()) return false;
  const json::Value* id = special->find("id");
  return id != nullptr && id->is_string() && id->as_string() == bos;
}

const gguf::Value* find_key(const gguf::File& file, const std::string& key) { return file.find_metadata(key); }

}  // namespace

std::vector<std::pair<std::string, gguf::Value>> gguf_tokenizer_metadata(const std::string& folder, int64_t vocab_size,
                                                                         const ConfigTokenIds& config_ids) {
  const std::string path = (std::filesystem::path(folder) / "tokenizer.json").string();
  const json::Value root = json::parse_file(path);
  // Refuses what lamina cannot encode with, and names the pre-tokenizer.
  const Tokenizer checked = Tokenizer::from_json(root, path);

  const std::string config_path = (std::filesystem::path(folder) / "tokenizer_config.json").string();
  std::optional<json::Value> config_root;
  if (std::filesystem::is_regular_file(config_path)) {
    config_root = json::parse_file(config_path);
    LAMINA_CHECK(config_root->is_object(), config_path, ": expected a JSON object at the top level");
  }
  const json::Value* config = config_root ? &*config_root : nullptr;

  // Tokens by id: the vocabulary, then the added tokens over it (SmolLM2 repeats its specials in both).
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  const auto place = [&](int64_t id, const std::string& text, int32_t type, const std::string& where) {
    LAMINA_CHECK(id >= 0 && id < vocab_size, where, ": id ", id, " is outside the model's vocabulary of ", vocab_size);
    if (size_t(id) >= tokens.size()) tokens.resize(size_t(id) + 1), types.resize(size_t(id) + 1, 0);
    tokens[size_t(id)] = text;
    types[size_t(id)] = type;
  };
  const json::Value& model = root.at("model", path);
  for (const auto& [text, id] : model.at("vocab", path + ": model").as_object(path + ": model.vocab"))
    place(id.as_int64(path + ": model.vocab"), text, kNormal, path + ": model.vocab[\"" + text + "\"]");
  std::unordered_map<std::string, int32_t> added_ids;
  for (const AddedToken& token : checked.added_tokens()) {
    place(token.id, token.content, token.special ? kControl : kUserDefined, path + ": added_tokens");
    added_ids[token.content] = token.id;
  }
  // Ids nothing names, up to the model's vocabulary, as llama.cpp fills them.
  tokens.resize(size_t(vocab_size)), types.resize(size_t(vocab_size), 0);
  for (size_t id = 0; id < tokens.size(); ++id) {
    if (types[id] != 0) continue;
    tokens[id] = "[PAD" + std::to_string(id) + "]";
    types[id] = kUnused;
  }

  std::vector<std::string> merges;
  for (const json::Value& entry : model.at("merges", path + ": model").as_array(path + ": model.merges")) {
    if (entry.is_string()) {
      merges.push_back(entry.as_string());
    } else {
      const json::Array& pair = entry.as_array(path + ": model.merges[]");
      merges.push_back(pair.at(0).as_string() + " " + pair.at(1).as_string());
    }
  }

  // The id of a token named by content: an added token, else a vocabulary entry.
  const auto id_of = [&](const std::optional<std::string>& content, const std::string& key) -> std::optional<int64_t> {
    if (!content) return std::nullopt;
    const auto added = added_ids.find(*content);
    if (added != added_ids.end()) return added->second;
    for (size_t id = 0; id < tokens.size(); ++id)
      if (tokens[id] == *content) return int64_t(id);
    throw Error(str_cat(config_path, ": ", key, " \"", *content, "\" is no token of ", path));
  };
  const std::optional<std::string> bos_text = config_token(config, "bos_token", config_path);
  std::optional<int64_t> bos = id_of(bos_text, "bos_token");
  if (!bos) bos = config_ids.bos;
  if (!bos && checked.bos_id()) bos = *checked.bos_id();  // <|begin_of_text|>
  std::optional<int64_t> eos = id_of(config_token(config, "eos_token", config_path), "eos_token");
  if (!eos && !config_ids.eos.empty()) eos = config_ids.eos[0];
  std::optional<int64_t> eot;
  for (int64_t id : config_ids.eos)
    if (!eot && (!eos || id != *eos)) eot = id;
  std::optional<int64_t> pad = id_of(config_token(config, "pad_token", config_path), "pad_token");
  if (!pad) pad = config_ids.pad;
  const std::optional<int64_t> unk = id_of(config_token(config, "unk_token", config_path), "unk_token");

  // add_bos_token as tokenizer_config.json says, else as the post-processor says, else lamina's
  // rule for a tokenizer.json (BOS whenever the vocabulary has <|begin_of_text|>).
  bool add_bos = checked.adds_bos();
  const json::Value* add_bos_value = config ? config->find("add_bos_token") : nullptr;
  if (add_bos_value != nullptr && add_bos_value->is_bool()) {
    add_bos = add_bos_value->as_bool();
  } else if (bos) {
    if (const std::optional<bool> adds = post_processor_adds(root, tokens[size_t(*bos)])) add_bos = *adds;
  }
  LAMINA_CHECK(!add_bos || bos.has_value(), path, ": BOS is added to every text, but no BOS token is named");

  std::vector<std::pair<std::string, gguf::Value>> metadata;
  metadata.emplace_back("tokenizer.ggml.model", string_value("gpt2"));
  metadata.emplace_back("tokenizer.ggml.pre", string_value(std::string(gguf_pre_tokenizer_name(checked.pre_tokenizer()))));
  metadata.emplace_back("tokenizer.ggml.tokens", string_array(tokens));
  metadata.emplace_back("tokenizer.ggml.token_type", i32_array(types));
  metadata.emplace_back("tokenizer.ggml.merges", string_array(merges));
  const auto add_id = [&](const char* key, const std::optional<int64_t>& id) {
    if (!id) return;
    LAMINA_CHECK(*id >= 0 && *id < vocab_size, key, ": ", *id, " is outside the vocabulary of ", vocab_size);
    metadata.emplace_back(key, fixed_value(gguf::ValueType::u32, uint64_t(*id)));
  };
  add_id("tokenizer.ggml.bos_token_id", bos);
  add_id("tokenizer.ggml.eos_token_id", eos);
  add_id("tokenizer.ggml.eot_token_id", eot);
  add_id("tokenizer.ggml.unknown_token_id", unk);
  add_id("tokenizer.ggml.padding_token_id", pad);
  metadata.emplace_back("tokenizer.ggml.add_bos_token", fixed_value(gguf::ValueType::boolean, add_bos ? 1 : 0));
  metadata.emplace_back("tokenizer.ggml.add_eos_token", fixed_value(gguf::ValueType::boolean, 0));
  if (const std::optional<std::string> chat_template = config_chat_template(config, config_path))
    metadata.emplace_back("tokenizer.chat_template", string_value(*chat_template));
  return metadata;
}

bool gguf_has_tokenizer(const gguf::File& file) { return file.find_metadata("tokenizer.ggml.tokens") != nullptr; }

json::Value tokenizer_json_from_gguf(const gguf::File& file) {
  // Refuses what lamina cannot encode with (another model, an unknown pre-tokenizer, bad tokens).
  const Tokenizer checked = Tokenizer::from_gguf(file);
  const std::string where = file.path();
  const std::vector<gguf::Value>& tokens = file.metadata("tokenizer.ggml.tokens").as_array(where + ": tokenizer.ggml.tokens");
  const gguf::Value* types_value = find_key(file, "tokenizer.ggml.token_type");

  // The vocabulary holds every token, added ones too (under their byte-level spelling): HF's
  // tokenizer keeps an added token's id only when the vocabulary has it, else numbers it anew.
  json::Object vocab;
  vocab.reserve(tokens.size());
  std::unordered_set<std::string> seen;
  json::Array added;
  for (size_t id = 0; id < tokens.size(); ++id) {
    const std::string& text = tokens[id].as_string(where);
    const int64_t type = types_value ? types_value->as_array(where)[id].as_i64(where) : kNormal;
    if (type == kControl || type == kUserDefined) {
      json::Object entry;
      entry.emplace_back("id", json::Value(int64_t(id)));
      entry.emplace_back("content", json::Value(text));
      entry.emplace_back("single_word", json::Value(false));
      entry.emplace_back("lstrip", json::Value(false));
      entry.emplace_back("rstrip", json::Value(false));
      entry.emplace_back("normalized", json::Value(false));
      entry.emplace_back("special", json::Value(type == kControl));
      added.emplace_back(std::move(entry));
      const std::string spelled = byte_level_encode(text);
      if (seen.insert(spelled).second) vocab.emplace_back(spelled, json::Value(int64_t(id)));
      continue;
    }
    if (seen.insert(text).second) vocab.emplace_back(text, json::Value(int64_t(id)));
  }
  json::Array merges;
  if (const gguf::Value* merges_value = find_key(file, "tokenizer.ggml.merges")) {
    const std::vector<gguf::Value>& entries = merges_value->as_array(where);
    merges.reserve(entries.size());
    for (const gguf::Value& entry : entries) merges.emplace_back(entry.as_string(where));
  }

  const auto byte_level = [](bool use_regex) {
    json::Object step;
    step.emplace_back("type", json::Value("ByteLevel"));
    step.emplace_back("add_prefix_space", json::Value(false));
    step.emplace_back("trim_offsets", json::Value(true));
    step.emplace_back("use_regex", json::Value(use_regex));
    return json::Value(std::move(step));
  };
  json::Value pre_tokenizer;
  switch (checked.pre_tokenizer()) {
    case PreTokenizer::gpt2:
      pre_tokenizer = byte_level(true);
      break;
    case PreTokenizer::smollm: {
      json::Object digits;
      digits.emplace_back("type", json::Value("Digits"));
      digits.emplace_back("individual_digits", json::Value(true));
      json::Object sequence;
      sequence.emplace_back("type", json::Value("Sequence"));
      sequence.emplace_back("pretokenizers", json::Value(json::Array{json::Value(std::move(digits)), byte_level(true)}));
      pre_tokenizer = json::Value(std::move(sequence));
      break;
    }
    case PreTokenizer::llama3: {
      json::Object pattern;
      pattern.emplace_back("Regex", json::Value(std::string(kLlama3SplitPattern)));
      json::Object split;
      split.emplace_back("type", json::Value("Split"));
      split.emplace_back("pattern", json::Value(std::move(pattern)));
      split.emplace_back("behavior", json::Value("Isolated"));
      split.emplace_back("invert", json::Value(false));
      json::Object sequence;
      sequence.emplace_back("type", json::Value("Sequence"));
      sequence.emplace_back("pretokenizers", json::Value(json::Array{json::Value(std::move(split)), byte_level(false)}));
      pre_tokenizer = json::Value(std::move(sequence));
      break;
    }
  }

  // BOS as the GGUF asks for it: HF adds it through a TemplateProcessing post-processor.
  json::Value post_processor;
  const TokenRoles& roles = checked.roles();
  if (roles.add_bos && roles.bos) {
    const std::string bos(checked.token_bytes(*roles.bos));
    const auto special = [&](int type_id) {
      json::Object inner;
      inner.emplace_back("id", json::Value(bos));
      inner.emplace_back("type_id", json::Value(type_id));
      json::Object outer;
      outer.emplace_back("SpecialToken", json::Value(std::move(inner)));
      return json::Value(std::move(outer));
    };
    const auto sequence = [](const char* id, int type_id) {
      json::Object inner;
      inner.emplace_back("id", json::Value(id));
      inner.emplace_back("type_id", json::Value(type_id));
      json::Object outer;
      outer.emplace_back("Sequence", json::Value(std::move(inner)));
      return json::Value(std::move(outer));
    };
    json::Object special_tokens_entry;
    special_tokens_entry.emplace_back("id", json::Value(bos));
    special_tokens_entry.emplace_back("ids", json::Value(json::Array{json::Value(int64_t(*roles.bos))}));
    special_tokens_entry.emplace_back("tokens", json::Value(json::Array{json::Value(bos)}));
    json::Object special_tokens;
    special_tokens.emplace_back(bos, json::Value(std::move(special_tokens_entry)));
    json::Object processor;
    processor.emplace_back("type", json::Value("TemplateProcessing"));
    processor.emplace_back("single", json::Value(json::Array{special(0), sequence("A", 0)}));
    processor.emplace_back("pair", json::Value(json::Array{special(0), sequence("A", 0), special(1), sequence("B", 1)}));
    processor.emplace_back("special_tokens", json::Value(std::move(special_tokens)));
    post_processor = json::Value(std::move(processor));
  }

  json::Object decoder;
  decoder.emplace_back("type", json::Value("ByteLevel"));
  decoder.emplace_back("add_prefix_space", json::Value(true));
  decoder.emplace_back("trim_offsets", json::Value(true));
  decoder.emplace_back("use_regex", json::Value(true));

  json::Object bpe;
  bpe.emplace_back("type", json::Value("BPE"));
  bpe.emplace_back("dropout", json::Value());
  bpe.emplace_back("unk_token", json::Value());  // missing bytes are dropped, as lamina's GGUF reader does
  bpe.emplace_back("continuing_subword_prefix", json::Value());
  bpe.emplace_back("end_of_word_suffix", json::Value());
  bpe.emplace_back("fuse_unk", json::Value(false));
  bpe.emplace_back("byte_fallback", json::Value(false));
  bpe.emplace_back("ignore_merges", json::Value(false));
  bpe.emplace_back("vocab", json::Value(std::move(vocab)));
  bpe.emplace_back("merges", json::Value(std::move(merges)));

  json::Object root;
  root.emplace_back("version", json::Value("1.0"));
  root.emplace_back("truncation", json::Value());
  root.emplace_back("padding", json::Value());
  root.emplace_back("added_tokens", json::Value(std::move(added)));
  root.emplace_back("normalizer", json::Value());
  root.emplace_back("pre_tokenizer", std::move(pre_tokenizer));
  root.emplace_back("post_processor", std::move(post_processor));
  root.emplace_back("decoder", json::Value(std::move(decoder)));
  root.emplace_back("model", json::Value(std::move(bpe)));
  return json::Value(std::move(root));
}

json::Value tokenizer_config_from_gguf(const gguf::File& file) {
  const Tokenizer checked = Tokenizer::from_gguf(file);
  const TokenRoles& roles = checked.roles();
  const auto token = [&](const std::optional<int32_t>& id) {
    return id ? json::Value(std::string(checked.token_bytes(*id))) : json::Value();
  };
  json::Object config;
  config.emplace_back("add_bos_token", json::Value(roles.add_bos));
  config.emplace_back("add_eos_token", json::Value(false));
  config.emplace_back("bos_token", token(roles.bos));
  config.emplace_back("eos_token", token(roles.eos));
  config.emplace_back("pad_token", token(roles.pad));
  config.emplace_back("unk_token", token(roles.unk));
  if (const gguf::Value* chat_template = find_key(file, "tokenizer.chat_template"))
    config.emplace_back("chat_template", json::Value(chat_template->as_string(file.path() + ": tokenizer.chat_template")));
  config.emplace_back("clean_up_tokenization_spaces", json::Value(false));
  config.emplace_back("model_max_length", json::Value(int64_t(1) << 40));
  config.emplace_back("tokenizer_class", json::Value("PreTrainedTokenizerFast"));
  return json::Value(std::move(config));
}

}  // namespace lamina::tokenizer
