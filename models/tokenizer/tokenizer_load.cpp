// Loading a Hugging Face tokenizer.json. Every error names the file and the place in it, as a
// path of keys and indices: "tokenizer.json: model.merges[3]: expected \"left right\", ...".
#include <algorithm>
#include <filesystem>

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"
#include "tensor/io/json.h"
#include "tensor/io/regular_file.h"

namespace lamina::tokenizer {
namespace {

std::string describe(const json::Value& value) {
  std::string text = value.dump();
  if (text.size() > 200) text = text.substr(0, 200) + "...";
  return text;
}

// A place in the file: its name, then the path to a value.
class Field {
 public:
  explicit Field(std::string file) : file_(std::move(file)) {}
  Field member(std::string_view key) const { return Field(file_, path_.empty() ? std::string(key) : path_ + "." + std::string(key)); }
  Field element(size_t index) const { return Field(file_, path_ + "[" + std::to_string(index) + "]"); }
  Field keyed(std::string_view key) const { return Field(file_, path_ + "[\"" + std::string(key) + "\"]"); }
  std::string name() const { return path_.empty() ? file_ : file_ + ": " + path_; }

 private:
  Field(std::string file, std::string path) : file_(std::move(file)), path_(std::move(path)) {}
  std::string file_, path_;
};

// The member `key` of `value` (which is at `field`), or nullptr when absent or null.
const json::Value* optional_member(const json::Value& value, const Field& field, std::string_view key) {
  LAMINA_CHECK(value.is_object(), field.name(), ": expected an object, got ", describe(value));
  const json::Value* member = value.find(key);
  return member == nullptr || member->is_null() ? nullptr : member;
}

const json::Value& member(const json::Value& value, const Field& field, std::string_view key) {
  const json::Value* found = optional_member(value, field, key);
  LAMINA_CHECK(found != nullptr, field.member(key).name(), ": missing");
  return *found;
}

// The member `key` that must be false (or absent) for the only behaviour lamina implements.
void require_false(const json::Value& value, const Field& field, std::string_view key, std::string_view reason) {
  const json::Value* flag = optional_member(value, field, key);
  LAMINA_CHECK(flag == nullptr || !flag->as_bool(field.member(key).name()), field.member(key).name(), ": must be false (",
               reason, ")");
}

// A ByteLevel pre-tokenizer that splits with GPT-2's pattern itself (use_regex, which HF
// defaults to true) and adds no space: the GPT-2 / SmolLM form.
bool is_gpt2_byte_level(const json::Value& step, const Field& field) {
  if (!step.is_object()) return false;
  const json::Value* type = optional_member(step, field, "type");
  if (type == nullptr || !type->is_string() || type->as_string() != "ByteLevel") return false;
  require_false(step, field, "add_prefix_space", "GPT-2's pattern runs on the text as it is");
  const json::Value* use_regex = optional_member(step, field, "use_regex");
  return use_regex == nullptr || use_regex->as_bool(field.member("use_regex").name());
}

// Digits(individual_digits: true): every number character a piece of its own.
bool is_individual_digits(const json::Value& step, const Field& field) {
  if (!step.is_object()) return false;
  const json::Value* type = optional_member(step, field, "type");
  if (type == nullptr || !type->is_string() || type->as_string() != "Digits") return false;
  const json::Value* individual = optional_member(step, field, "individual_digits");
  LAMINA_CHECK(individual != nullptr && individual->as_bool(field.member("individual_digits").name()),
               field.member("individual_digits").name(), ": only individual digits are implemented, got ", describe(step));
  return true;
}

// The pre-tokenizer, one of those implemented by hand (pretokenize.h):
//   Llama-3: Sequence[Split(its pattern, Isolated), ByteLevel without regex or prefix space]
//   GPT-2:   ByteLevel(use_regex, no prefix space), alone or as a Sequence of one
//   SmolLM:  Sequence[Digits(individual_digits), that ByteLevel]
// Anything else is refused rather than tokenized differently from the reference.
PreTokenizer check_pre_tokenizer(const json::Value& root, const Field& file) {
  const Field field = file.member("pre_tokenizer");
  const json::Value* pre = optional_member(root, file, "pre_tokenizer");
  LAMINA_CHECK(pre != nullptr, field.name(), ": missing; expected Llama-3's Split + ByteLevel, GPT-2's ByteLevel or SmolLM's Digits + ByteLevel");
  if (is_gpt2_byte_level(*pre, field)) return PreTokenizer::gpt2;
  const std::string& type = member(*pre, field, "type").as_string(field.member("type").name());
  LAMINA_CHECK(type == "Sequence", field.member("type").name(),
               ": expected a Sequence of Split and ByteLevel (Llama-3), of Digits and ByteLevel (SmolLM) or GPT-2's ByteLevel, got ",
               describe(*pre));
  const Field steps_field = field.member("pretokenizers");
  const json::Array& steps = member(*pre, field, "pretokenizers").as_array(steps_field.name());
  if (steps.size() == 1 && is_gpt2_byte_level(steps[0], steps_field.element(0))) return PreTokenizer::gpt2;
  if (steps.size() == 2 && is_individual_digits(steps[0], steps_field.element(0))) {
    LAMINA_CHECK(is_gpt2_byte_level(steps[1], steps_field.element(1)), steps_field.element(1).name(),
                 ": expected ByteLevel with use_regex after Digits, got ", describe(steps[1]));
    return PreTokenizer::smollm;
  }
  LAMINA_CHECK(steps.size() == 2, steps_field.name(), ": expected Split then ByteLevel, got ", describe(*pre));

  const json::Value& split = steps[0];
  const Field split_field = steps_field.element(0);
  LAMINA_CHECK(member(split, split_field, "type").as_string(split_field.member("type").name()) == "Split",
               split_field.name(), ": expected Split, got ", describe(split));
  const json::Value& pattern = member(split, split_field, "pattern");
  const json::Value* regex = optional_member(pattern, split_field.member("pattern"), "Regex");
  LAMINA_CHECK(regex != nullptr && regex->is_string() && regex->as_string() == kLlama3SplitPattern,
               split_field.member("pattern").name(), ": only Llama-3's split pattern is implemented; this file has ",
               describe(pattern));
  const json::Value& behavior = member(split, split_field, "behavior");
  LAMINA_CHECK(behavior.as_string(split_field.member("behavior").name()) == "Isolated", split_field.member("behavior").name(),
               ": expected Isolated, got ", describe(behavior));
  require_false(split, split_field, "invert", "Llama-3 splits out its matches");

  const json::Value& byte_level = steps[1];
  const Field byte_level_field = steps_field.element(1);
  LAMINA_CHECK(member(byte_level, byte_level_field, "type").as_string(byte_level_field.member("type").name()) == "ByteLevel",
               byte_level_field.name(), ": expected ByteLevel, got ", describe(byte_level));
  require_false(byte_level, byte_level_field, "add_prefix_space", "Llama-3 adds no space");
  require_false(byte_level, byte_level_field, "use_regex", "the Split before it splits the words");
  return PreTokenizer::llama3;
}

void check_model_options(const json::Value& model, const Field& field) {
  if (const json::Value* type = optional_member(model, field, "type")) {
    LAMINA_CHECK(type->as_string(field.member("type").name()) == "BPE", field.member("type").name(), ": expected BPE, got ",
                 describe(*type));
  }
  require_false(model, field, "byte_fallback", "byte-level BPE never needs it");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json::Value* value = optional_member(model, field, affix);
    LAMINA_CHECK(value == nullptr || value->as_string(field.member(affix).name()).empty(), field.member(affix).name(),
                 ": not supported (Llama-3 has none), got ", describe(*value));
  }
  const json::Value* dropout = optional_member(model, field, "dropout");
  LAMINA_CHECK(dropout == nullptr || dropout->as_double(field.member("dropout").name()) == 0.0, field.member("dropout").name(),
               ": BPE dropout is not supported");
}

std::string to_bytes(const std::string& byte_level_text, const Field& field) {
  std::optional<std::string> bytes = byte_level_decode(byte_level_text);
  LAMINA_CHECK(bytes.has_value(), field.name(), ": \"", byte_level_text, "\" is not written in the byte-level alphabet");
  return *std::move(bytes);
}

// Ids above this are refused: they would make the id-indexed tables absurdly large.
constexpr int64_t kMaxTokenId = (int64_t(1) << 24) - 1;

int32_t token_id(const json::Value& value, const Field& field) {
  const int64_t id = value.as_int64(field.name());
  LAMINA_CHECK(id >= 0 && id <= kMaxTokenId, field.name(), ": ", id, " is out of range [0, ", kMaxTokenId, "]");
  return int32_t(id);
}

std::pair<std::string, std::string> merge_pair(const json::Value& entry, const Field& field) {
  std::string left, right;
  if (entry.is_string()) {  // "left right" (older files); byte-level tokens never contain ' '
    const std::string& text = entry.as_string();
    const size_t space = text.find(' ');
    LAMINA_CHECK(space != std::string::npos && space > 0 && space + 1 < text.size() && text.find(' ', space + 1) == std::string::npos,
                 field.name(), ": expected \"left right\", got \"", text, "\"");
    left = text.substr(0, space), right = text.substr(space + 1);
  } else {  // ["left", "right"] (newer files)
    const json::Array& pair = entry.as_array(field.name() + " (a merge: \"left right\" or [left, right])");
    LAMINA_CHECK(pair.size() == 2, field.name(), ": expected a pair of tokens, got ", describe(entry));
    left = pair[0].as_string(field.element(0).name()), right = pair[1].as_string(field.element(1).name());
  }
  return {to_bytes(left, field), to_bytes(right, field)};
}

AddedToken added_token(const json::Value& entry, const Field& field) {
  AddedToken token;
  token.id = token_id(member(entry, field, "id"), field.member("id"));
  token.content = member(entry, field, "content").as_string(field.member("content").name());
  LAMINA_CHECK(!token.content.empty(), field.member("content").name(), ": empty");
  if (const json::Value* special = optional_member(entry, field, "special")) {
    token.special = special->as_bool(field.member("special").name());
  }
  // Options that change where a token matches; Llama-3 uses none of them.
  for (const char* option : {"single_word", "lstrip", "rstrip"}) {
    const json::Value* value = optional_member(entry, field, option);
    LAMINA_CHECK(value == nullptr || !value->as_bool(field.member(option).name()), field.member(option).name(), " (\"",
                 token.content, "\"): ", option, " is not supported");
  }
  return token;
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::filesystem::path file = path;
  const bool directory = std::filesystem::is_directory(file);
  if (directory) file /= "tokenizer.json";
  // "Not found" only when it is missing; anything else there (a FIFO, /dev/stdin, a file that
  // cannot be opened) is named for what it is by the check that follows.
  std::error_code error;
  LAMINA_CHECK(std::filesystem::exists(file, error) || error, "tokenizer: ", file.string(), " not found",
               directory ? " (the model directory has no tokenizer.json)" : "");
  io::check_regular_file(file.string(), "tokenizer");
  return from_json(json::parse_file(file.string()), file.string());
}

Tokenizer Tokenizer::from_json(const json::Value& root, std::string_view source) {
  const std::string name(source);
  const Field file(name);
  LAMINA_CHECK(root.is_object(), name, ": expected a JSON object at the top level, got ", describe(root));
  const json::Value* normalizer = optional_member(root, file, "normalizer");
  LAMINA_CHECK(normalizer == nullptr, file.member("normalizer").name(), ": normalizers are not supported (Llama-3 has none), got ",
               normalizer ? describe(*normalizer) : "");
  const PreTokenizer pre_tokenizer = check_pre_tokenizer(root, file);
  if (const json::Value* decoder = optional_member(root, file, "decoder")) {
    const Field field = file.member("decoder");
    LAMINA_CHECK(member(*decoder, field, "type").as_string(field.member("type").name()) == "ByteLevel", field.name(),
                 ": expected the ByteLevel decoder, got ", describe(*decoder));
  }

  const Field model_field = file.member("model");
  const json::Value& model = member(root, file, "model");
  check_model_options(model, model_field);
  const json::Value* ignore_merges_value = optional_member(model, model_field, "ignore_merges");
  const bool ignore_merges = ignore_merges_value != nullptr && ignore_merges_value->as_bool(model_field.member("ignore_merges").name());

  StringIdMap vocab;
  const Field vocab_field = model_field.member("vocab");
  const json::Object& vocab_entries = member(model, model_field, "vocab").as_object(vocab_field.name());
  vocab.reserve(vocab_entries.size());
  for (const auto& [text, id_value] : vocab_entries) {
    const Field field = vocab_field.keyed(text);
    vocab.emplace(to_bytes(text, field), token_id(id_value, field));
  }

  std::vector<std::pair<std::string, std::string>> merges;
  const Field merges_field = model_field.member("merges");
  const json::Array& merge_entries = member(model, model_field, "merges").as_array(merges_field.name());
  merges.reserve(merge_entries.size());
  for (size_t i = 0; i < merge_entries.size(); ++i) merges.push_back(merge_pair(merge_entries[i], merges_field.element(i)));

  std::vector<AddedToken> added;
  if (const json::Value* entries = optional_member(root, file, "added_tokens")) {
    const Field field = file.member("added_tokens");
    const json::Array& list = entries->as_array(field.name());
    for (size_t i = 0; i < list.size(); ++i) added.push_back(added_token(list[i], field.element(i)));
  }
  // A GPT-2 style vocabulary may lack single bytes (SmolLM2's lacks 21); HF's BPE then drops
  // them from words, and so does lamina (Tokenizer::dropped_bytes_), with placeholder ids past
  // all others. Llama-3's has all 256, so there a missing one is a damaged file (BpeModel says so).
  int32_t id_end = 0;
  for (const auto& [bytes, id] : vocab) id_end = std::max(id_end, id + 1);
  for (const AddedToken& token : added) id_end = std::max(id_end, token.id + 1);
  const std::array<bool, 256> dropped = pre_tokenizer == PreTokenizer::llama3 ? std::array<bool, 256>{} : add_missing_bytes(vocab, id_end);
  Tokenizer tokenizer(BpeModel(vocab, merges, ignore_merges, name), std::move(added), name, pre_tokenizer);
  tokenizer.drop_bytes(dropped, id_end);
  return tokenizer;
}

}  // namespace lamina::tokenizer
