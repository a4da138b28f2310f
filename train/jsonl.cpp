// JSONL training data: the line layouts (text, prompt/completion, chat, ShareGPT) and the
// reader that turns a file of them into examples (train/data.h).
#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>

#include "tensor/io/regular_file.h"
#include "train/data.h"

namespace lamina::train {
namespace {

void append_text(const tokenizer::Tokenizer& tokenizer, std::string_view text, uint8_t mask, Example& example) {
  tokenizer.encode_ordinary(text, example.ids);
  example.loss_mask.resize(example.ids.size(), mask);
}

void append_token(int32_t id, uint8_t mask, Example& example) {
  example.ids.push_back(id);
  example.loss_mask.push_back(mask);
}

// A top-level string field: errors name it as "\"key\"".
const std::string& top_level_string(const json::Value& record, std::string_view key) {
  const json::Value* value = record.find(key);
  if (value == nullptr) throw Error(str_cat("missing \"", key, "\" field"));
  return value->as_string(str_cat("\"", key, "\""));
}

// How a conversation layout names its parts, and the chat role each of its role names means.
struct ConversationLayout {
  std::string_view list_key;     // "messages"
  std::string_view role_key;     // "role"
  std::string_view content_key;  // "content"
  std::vector<std::pair<std::string, std::string>> roles;  // layout's name -> chat role
};

ConversationLayout layout_of(DataFormat format, tokenizer::ChatFormat chat_format) {
  const std::vector<std::string> chat_roles = tokenizer::chat_roles(chat_format);
  const bool has_tool_role = std::find(chat_roles.begin(), chat_roles.end(), "ipython") != chat_roles.end();
  ConversationLayout layout;
  if (format == DataFormat::sharegpt) {
    layout = {"conversations", "from", "value", {{"human", "user"}, {"gpt", "assistant"}, {"system", "system"}}};
  } else {
    layout = {"messages", "role", "content", {}};
    for (const std::string& role : chat_roles) layout.roles.emplace_back(role, role);
  }
  // HF's Llama-3.1 template writes a "tool" message under the ipython header.
  if (has_tool_role) layout.roles.emplace_back("tool", "ipython");
  return layout;
}

// The chat role of a message's role name, or an error listing the names the layout accepts.
const std::string& chat_role(const ConversationLayout& layout, const std::string& name, std::string_view where) {
  for (const auto& [layout_name, role] : layout.roles)
    if (layout_name == name) return role;
  std::string lowered = name;
  std::transform(lowered.begin(), lowered.end(), lowered.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  std::string accepted, hint;
  for (const auto& [layout_name, role] : layout.roles) {
    accepted += str_cat(accepted.empty() ? "" : ", ", layout_name);
    if (lowered == layout_name) hint = str_cat("; roles are case-sensitive: did you mean \"", layout_name, "\"?");
  }
  if (layout.list_key == "messages" && (name == "human" || name == "gpt"))
    hint = "; \"human\" and \"gpt\" are ShareGPT's names, read from {\"conversations\": [{\"from\", \"value\"}]}";
  throw Error(str_cat(where, ": unknown role ", json::quote(json::valid_utf8(name) ? name : "<invalid UTF-8>"),
                      " (accepted: ", accepted, hint, ")"));
}

std::vector<tokenizer::Message> conversation(const json::Value& record, const ConversationLayout& layout) {
  const json::Value* list = record.find(layout.list_key);
  if (list == nullptr) throw Error(str_cat("missing \"", layout.list_key, "\" field"));
  const json::Array& items = list->as_array(str_cat("\"", layout.list_key, "\""));
  LAMINA_CHECK(!items.empty(), "\"", layout.list_key, "\" is empty");
  std::vector<tokenizer::Message> messages;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = str_cat(layout.list_key, "[", i, "]");
    const json::Value& item = items[i];
    LAMINA_CHECK(item.is_object(), where, ": expected an object, got ", json::type_name(item.type()));
    const json::Value* role = item.find(layout.role_key);
    const json::Value* content = item.find(layout.content_key);
    LAMINA_CHECK(role != nullptr, where, ": missing \"", layout.role_key, "\"");
    LAMINA_CHECK(content != nullptr, where, ": missing \"", layout.content_key, "\"");
    const std::string role_where = str_cat(where, ".", layout.role_key);
    const std::string& role_name = role->as_string(role_where);
    messages.push_back({chat_role(layout, role_name, role_where), content->as_string(str_cat(where, ".", layout.content_key))});
  }
  return messages;
}

// What a layout is called, as --format names it.
std::string format_name(DataFormat format) {
  switch (format) {
    case DataFormat::text: return "text";
    case DataFormat::prompt_completion: return "prompt-completion";
    case DataFormat::chat: return "chat";
    case DataFormat::sharegpt: return "sharegpt";
    case DataFormat::auto_detect: break;
  }
  return "auto";
}

// The layout a line is in, from its keys. A line with the keys of two layouts is ambiguous:
// reading it as either would silently drop the other's content.
DataFormat detect_format(const json::Value& record) {
  std::vector<std::pair<DataFormat, std::string>> found;
  if (record.find("messages") != nullptr) found.emplace_back(DataFormat::chat, "\"messages\"");
  if (record.find("conversations") != nullptr) found.emplace_back(DataFormat::sharegpt, "\"conversations\"");
  if (record.find("prompt") != nullptr || record.find("completion") != nullptr)
    found.emplace_back(DataFormat::prompt_completion, record.find("prompt") != nullptr ? "\"prompt\"" : "\"completion\"");
  if (record.find("text") != nullptr) found.emplace_back(DataFormat::text, "\"text\"");
  if (found.empty())
    throw Error("expected a \"messages\", \"conversations\", \"prompt\"/\"completion\" or \"text\" field");
  LAMINA_CHECK(found.size() == 1, "the line has both ", found[0].second, " and ", found[1].second,
               " fields, the keys of two layouts: name the one to read with --format (",
               format_name(found[0].first), " or ", format_name(found[1].first), ")");
  return found[0].first;
}

// Why an example of this layout learns nothing, for the error.
std::string why_no_targets(DataFormat format, const json::Value& record) {
  switch (format) {
    case DataFormat::chat: return "no message has the role \"assistant\" (only the assistant's replies are learned)";
    case DataFormat::sharegpt: return "no message is from \"gpt\" (only the assistant's replies are learned)";
    case DataFormat::prompt_completion:
    case DataFormat::text: {
      const std::string_view key = format == DataFormat::text ? "text" : "completion";
      return str_cat("\"", key, "\" adds nothing to predict (",
                     record.at(key).as_string().empty() ? "it is empty" : "a single token with nothing before it",
                     " and no <|end_of_text|> follows it)");
    }
    case DataFormat::auto_detect: break;
  }
  return "";
}

}  // namespace

DataFormat data_format_from_name(const std::string& name) {
  if (name == "auto") return DataFormat::auto_detect;
  if (name == "text") return DataFormat::text;
  if (name == "prompt-completion") return DataFormat::prompt_completion;
  if (name == "chat") return DataFormat::chat;
  if (name == "sharegpt") return DataFormat::sharegpt;
  throw Error(str_cat("unknown data format '", name, "' (expected auto, text, prompt-completion, chat or sharegpt)"));
}

int64_t target_count(const Example& example) {
  int64_t count = 0;
  for (size_t i = 1; i < example.loss_mask.size(); ++i) count += example.loss_mask[i] != 0;
  return count;
}

namespace {

// A line's example in `format` (never auto_detect).
Example example_in(const json::Value& record, DataFormat format, const tokenizer::Tokenizer& tokenizer,
                   const JsonlOptions& options) {
  Example example;
  const std::optional<int32_t> bos = tokenizer.bos_id();
  const std::optional<int32_t> eos = tokenizer.added_token_id("<|end_of_text|>");
  switch (format) {
    case DataFormat::text: {
      const std::string& text = top_level_string(record, "text");
      // Nothing but the BOS -> EOS transition would be learned: a line with nothing in it.
      LAMINA_CHECK(text.find_first_not_of(" \t\r\n\f\v") != std::string::npos, "\"text\" is ",
                   text.empty() ? "empty" : "only whitespace", ": there is nothing to learn from it");
      if (options.add_bos && bos) append_token(*bos, 0, example);
      append_text(tokenizer, text, 1, example);
      if (options.add_eos && eos) append_token(*eos, 1, example);
      break;
    }
    case DataFormat::prompt_completion: {
      const std::string& prompt = top_level_string(record, "prompt");
      const std::string& completion = top_level_string(record, "completion");
      if (options.add_bos && bos) append_token(*bos, 0, example);
      append_text(tokenizer, prompt, 0, example);
      append_text(tokenizer, completion, 1, example);
      if (options.add_eos && eos) append_token(*eos, 1, example);
      break;
    }
    case DataFormat::chat:
    case DataFormat::sharegpt: {
      const std::vector<tokenizer::Message> messages = conversation(record, layout_of(format, options.chat.format));
      tokenizer::ChatOptions chat = options.chat;
      chat.add_generation_prompt = false;
      tokenizer::ChatTokens rendered = tokenizer::render_chat(tokenizer, messages, chat);
      example.ids = std::move(rendered.ids);
      example.loss_mask = std::move(rendered.assistant_mask);
      break;
    }
    case DataFormat::auto_detect: break;
  }
  LAMINA_CHECK(target_count(example) > 0, "no target tokens: ", why_no_targets(format, record));
  return example;
}

}  // namespace

Example example_from_json(const json::Value& record, const tokenizer::Tokenizer& tokenizer, const JsonlOptions& options) {
  LAMINA_CHECK(record.is_object(), "expected a JSON object, got ", json::type_name(record.type()));
  const DataFormat format = options.format == DataFormat::auto_detect ? detect_format(record) : options.format;
  return example_in(record, format, tokenizer, options);
}

std::vector<Example> read_jsonl(std::istream& in, const std::string& name, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options, JsonlStats* stats) {
  JsonlStats local;
  JsonlStats& counts = stats != nullptr ? *stats : local;
  // The size, where the stream can tell it (not a pipe), for progress reports.
  int64_t bytes_total = -1;
  if (const std::streamoff start = in.tellg(); start >= 0) {
    in.seekg(0, std::ios::end);
    if (const std::streamoff end = in.tellg(); end >= start) bytes_total = int64_t(end - start);
    in.clear();
    in.seekg(start);
  }
  using Clock = std::chrono::steady_clock;
  constexpr auto kProgressInterval = std::chrono::milliseconds(250);
  Clock::time_point last_report = Clock::now();
  int64_t bytes_done = 0;
  const int64_t skipped_before = counts.skipped;
  std::string first_skipped;  // in this stream (counts may carry earlier files')

  std::vector<Example> examples;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    bytes_done += int64_t(line.size()) + 1;
    // A byte-order mark that some editors write at the start of a UTF-8 file.
    if (line_number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    if (options.on_progress && Clock::now() - last_report >= kProgressInterval) {
      options.on_progress(bytes_total >= 0 ? std::min(bytes_done, bytes_total) : bytes_done, bytes_total);
      last_report = Clock::now();
    }
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    ++counts.lines;
    try {
      const json::Value record = json::parse(line, "line");
      LAMINA_CHECK(record.is_object(), "expected a JSON object, got ", json::type_name(record.type()));
      const DataFormat format = options.format == DataFormat::auto_detect ? detect_format(record) : options.format;
      examples.push_back(example_in(record, format, tokenizer, options));
      ++counts.examples;
      ++counts.layouts[format_name(format)];
    } catch (const Error& error) {
      const std::string message = str_cat(name, ":", line_number, ": ", error.what());
      if (!options.skip_malformed) throw Error(message);
      if (first_skipped.empty()) first_skipped = message;
      if (counts.skipped++ == 0) counts.first_skipped = message;
    }
  }
  LAMINA_CHECK(!in.bad(), "error reading ", name);
  if (options.on_progress) options.on_progress(bytes_total >= 0 ? bytes_total : bytes_done, bytes_total);
  const int64_t skipped = counts.skipped - skipped_before;
  LAMINA_CHECK(!examples.empty() || skipped == 0, name, ": all ", skipped, " lines were skipped as malformed (first: ",
               first_skipped, ")");
  return examples;
}

std::vector<Example> read_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options, JsonlStats* stats) {
  io::check_regular_file(path, "JSONL data");  // a FIFO would block the read forever
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  return read_jsonl(in, path, tokenizer, options, stats);
}

}  // namespace lamina::train
