#include "models/tokenizer/builder.h"

#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"

namespace lamina::tokenizer {

std::vector<std::string> llama3_chat_special_tokens() {
  return {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
}

json::Value byte_level_tokenizer_json(const std::vector<std::pair<std::string, std::string>>& merges,
                                      const std::vector<std::string>& special_tokens) {
  json::Object vocab;
  for (int b = 0; b < 256; ++b) vocab.emplace_back(byte_level_encode(std::string(1, char(b))), int64_t(b));
  json::Array merge_list;
  int64_t next_id = 256;
  for (const auto& [left, right] : merges) {
    vocab.emplace_back(byte_level_encode(left + right), next_id++);
    merge_list.push_back(byte_level_encode(left) + " " + byte_level_encode(right));
  }
  json::Array added;
  for (const std::string& content : special_tokens) {
    json::Value token = json::Object{};
    token.set("id", next_id++);
    token.set("content", content);
    token.set("single_word", false);
    token.set("lstrip", false);
    token.set("rstrip", false);
    token.set("normalized", false);
    token.set("special", true);
    added.push_back(std::move(token));
  }
  json::Value split = json::Object{};
  split.set("type", "Split");
  json::Value pattern = json::Object{};
  pattern.set("Regex", std::string(kLlama3SplitPattern));
  split.set("pattern", std::move(pattern));
  split.set("behavior", "Isolated");
  split.set("invert", false);
  json::Value byte_level = json::Object{};
  byte_level.set("type", "ByteLevel");
  byte_level.set("add_prefix_space", false);
  byte_level.set("trim_offsets", true);
  byte_level.set("use_regex", false);
  json::Value pre_tokenizer = json::Object{};
  pre_tokenizer.set("type", "Sequence");
  pre_tokenizer.set("pretokenizers", json::Array{std::move(split), std::move(byte_level)});
  json::Value model = json::Object{};
  model.set("type", "BPE");
  model.set("dropout", nullptr);
  model.set("unk_token", nullptr);
  model.set("byte_fallback", false);
  model.set("ignore_merges", true);
  model.set("vocab", std::move(vocab));
  model.set("merges", std::move(merge_list));
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

Tokenizer byte_level_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges,
                               const std::vector<std::string>& special_tokens) {
  return Tokenizer::from_json(byte_level_tokenizer_json(merges, special_tokens), "byte-level tokenizer");
}

}  // namespace lamina::tokenizer
