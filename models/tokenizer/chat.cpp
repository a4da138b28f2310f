#include "models/tokenizer/chat.h"

#include <algorithm>
#include <filesystem>

#include "models/io/gguf.h"
#include "models/tokenizer/unicode.h"
#include "tensor/error.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {
namespace {

constexpr const char* kBeginOfText = "<|begin_of_text|>";
constexpr const char* kStartHeader = "<|start_header_id|>";
constexpr const char* kEndHeader = "<|end_header_id|>";
constexpr const char* kEndOfTurn = "<|eot_id|>";
constexpr const char* kImStart = "<|im_start|>";
constexpr const char* kImEnd = "<|im_end|>";

// Both formats are a sequence of blocks `<|start_header_id|>{role}<|end_header_id|>\n\n{body}
// <|eot_id|>`; the writers below produce either the ids or the text of the same sequence.
struct Block {
  std::string_view role;
  std::string body;
  bool is_answer;  // an assistant message: its body and <|eot_id|> are masked in
};

// The blocks of a dialog, without <|begin_of_text|> and the generation prompt.
std::vector<Block> blocks_of(std::span<const Message> messages, const ChatOptions& options) {
  std::vector<Block> blocks;
  size_t first = 0;
  if (options.format == ChatFormat::llama3_1) {
    // HF's 3.1 template: a system block always comes first, and consumes a leading system message.
    std::string system;
    if (!messages.empty() && messages[0].role == "system") {
      system = std::string(strip_python_space(messages[0].content));
      first = 1;
    }
    blocks.push_back({"system",
                      "Cutting Knowledge Date: December 2023\nToday Date: " + options.date_string + "\n\n" + system, false});
  }
  // ChatML templates write their default system message before a first message of another role.
  if (options.format == ChatFormat::chatml && !messages.empty() && messages[0].role != "system" &&
      !options.default_system.empty())
    blocks.push_back({"system", options.default_system, false});
  for (size_t i = first; i < messages.size(); ++i) {
    const Message& message = messages[i];
    LAMINA_CHECK(!message.role.empty(), "chat: message ", i, " has an empty role");
    // Llama-3: Meta's .strip() and the HF template's | trim (Python's notion of whitespace).
    // ChatML templates write the content as it is.
    std::string body = options.format == ChatFormat::chatml ? message.content
                                                            : std::string(strip_python_space(message.content));
    blocks.push_back({message.role, std::move(body), message.role == "assistant"});
  }
  return blocks;
}

ChatTokens render_chatml(const Tokenizer& tokenizer, std::span<const Message> messages, const ChatOptions& options) {
  const int32_t im_start = tokenizer.require_added_token(kImStart);
  const int32_t im_end = tokenizer.require_added_token(kImEnd);
  ChatTokens out;
  const auto mark_from = [&](size_t begin, bool is_answer) {
    out.assistant_mask.resize(begin, 0);
    out.assistant_mask.resize(out.ids.size(), is_answer ? 1 : 0);
  };
  std::vector<int32_t> header;
  for (const Block& block : blocks_of(messages, options)) {
    out.ids.push_back(im_start);
    mark_from(out.ids.size(), false);
    // HF encodes the text between two special tokens as one piece: role, newline and content.
    const std::string role_line = str_cat(block.role, "\n");
    const size_t text_start = out.ids.size();
    tokenizer.encode_ordinary(role_line + block.body, out.ids);
    size_t answer_start = out.ids.size();
    if (block.is_answer) {
      // The answer starts after the tokens the role line has alone (the common prefix: a token
      // that spans the newline and the content counts as answer).
      header.clear();
      tokenizer.encode_ordinary(role_line, header);
      size_t common = 0;
      while (common < header.size() && text_start + common < out.ids.size() &&
             out.ids[text_start + common] == header[common])
        ++common;
      answer_start = text_start + std::min(common, header.size());
    }
    out.ids.push_back(im_end);
    mark_from(answer_start, block.is_answer);
    tokenizer.encode_ordinary("\n", out.ids);
    mark_from(out.assistant_mask.size(), false);
  }
  if (options.add_generation_prompt) {
    out.ids.push_back(im_start);
    tokenizer.encode_ordinary("assistant\n", out.ids);
    mark_from(out.assistant_mask.size(), false);
  }
  return out;
}

// A Jinja string literal's escapes (\n, \t, \\, \', \") in `text`, resolved.
std::string unescape_template_literal(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    const char next = text[++i];
    out += next == 'n' ? '\n' : next == 't' ? '\t' : next;
  }
  return out;
}

}  // namespace

const char* chat_format_name(ChatFormat format) {
  switch (format) {
    case ChatFormat::llama3: return "llama3";
    case ChatFormat::llama3_1: return "llama3.1";
    case ChatFormat::chatml: return "chatml";
  }
  return "unknown";
}

std::vector<std::string> chat_roles(ChatFormat format) {
  if (format == ChatFormat::llama3_1) return {"system", "user", "assistant", "ipython"};
  return {"system", "user", "assistant"};
}

ChatTokens render_chat(const Tokenizer& tokenizer, std::span<const Message> messages, const ChatOptions& options) {
  if (options.format == ChatFormat::chatml) return render_chatml(tokenizer, messages, options);
  const int32_t begin_of_text = tokenizer.require_added_token(kBeginOfText);
  const int32_t start_header = tokenizer.require_added_token(kStartHeader);
  const int32_t end_header = tokenizer.require_added_token(kEndHeader);
  const int32_t end_of_turn = tokenizer.require_added_token(kEndOfTurn);

  ChatTokens out;
  // Marks the ids appended since the last call as answer (1) or not (0).
  const auto mark = [&](bool is_answer) { out.assistant_mask.resize(out.ids.size(), is_answer ? 1 : 0); };
  const auto header = [&](std::string_view role) {
    out.ids.push_back(start_header);
    tokenizer.encode_ordinary(role, out.ids);
    out.ids.push_back(end_header);
    // "\n\n" is always a word of its own before a trimmed body (the pattern's \s*[\r\n]+
    // ends after the last newline), so encoding it apart from the body gives HF's ids.
    tokenizer.encode_ordinary("\n\n", out.ids);
    mark(false);
  };

  out.ids.push_back(begin_of_text);
  mark(false);
  for (const Block& block : blocks_of(messages, options)) {
    header(block.role);
    tokenizer.encode_ordinary(block.body, out.ids);
    out.ids.push_back(end_of_turn);
    mark(block.is_answer);
  }
  if (options.add_generation_prompt) header("assistant");
  return out;
}

std::string render_chat_text(std::span<const Message> messages, const ChatOptions& options) {
  if (options.format == ChatFormat::chatml) {
    std::string text;
    for (const Block& block : blocks_of(messages, options))
      text.append(kImStart).append(block.role).append("\n").append(block.body).append(kImEnd).append("\n");
    if (options.add_generation_prompt) text.append(kImStart).append("assistant\n");
    return text;
  }
  std::string text = kBeginOfText;
  const auto header = [&](std::string_view role) {
    text.append(kStartHeader).append(role).append(kEndHeader).append("\n\n");
  };
  for (const Block& block : blocks_of(messages, options)) {
    header(block.role);
    text.append(block.body).append(kEndOfTurn);
  }
  if (options.add_generation_prompt) header("assistant");
  return text;
}

std::vector<int32_t> stop_token_ids(const Tokenizer& tokenizer, ChatFormat format) {
  std::vector<int32_t> ids;
  std::vector<const char*> names = {"<|end_of_text|>", kEndOfTurn};
  if (format == ChatFormat::llama3_1) names.push_back("<|eom_id|>");
  if (format == ChatFormat::chatml) names = {kImEnd, "<|endoftext|>"};
  for (const char* name : names) {
    if (const std::optional<int32_t> id = tokenizer.added_token_id(name)) ids.push_back(*id);
  }
  return ids;
}

std::string read_chat_template(const std::string& path) {
  std::filesystem::path file = path;
  if (std::filesystem::is_regular_file(file) && file.extension() == ".gguf") {
    const gguf::File gguf_file = gguf::File::open(path);
    const gguf::Value* value = gguf_file.find_metadata("tokenizer.chat_template");
    return value == nullptr ? std::string() : value->as_string(path + ": tokenizer.chat_template");
  }
  if (!std::filesystem::is_directory(file)) file = file.parent_path();
  const std::filesystem::path config = file / "tokenizer_config.json";
  if (!std::filesystem::is_regular_file(config)) return {};
  const json::Value root = json::parse_file(config.string());
  LAMINA_CHECK(root.is_object(), config.string(), ": expected a JSON object at the top level, got ",
               json::type_name(root.type()));
  const json::Value* chat_template = root.find("chat_template");
  if (chat_template == nullptr || chat_template->is_null()) return {};
  if (chat_template->is_string()) return chat_template->as_string();
  LAMINA_CHECK(chat_template->is_array(), config.string(), ": chat_template: expected a string or a list of {name, template}, got ",
               json::type_name(chat_template->type()));
  for (const json::Value& entry : chat_template->as_array()) {
    const json::Value* name = entry.is_object() ? entry.find("name") : nullptr;
    const json::Value* text = entry.is_object() ? entry.find("template") : nullptr;
    if (name != nullptr && name->is_string() && name->as_string() == "default" && text != nullptr && text->is_string())
      return text->as_string();
  }
  throw Error(str_cat(config.string(), ": chat_template: a list without a \"default\" template"));
}

std::string chatml_default_system(const std::string& chat_template) {
  const std::string opening = str_cat(kImStart, "system");
  for (size_t at = chat_template.find(opening); at != std::string::npos; at = chat_template.find(opening, at + 1)) {
    size_t start = at + opening.size();
    if (chat_template.compare(start, 1, "\n") == 0) start += 1;
    else if (chat_template.compare(start, 2, "\\n") == 0) start += 2;
    else continue;
    const size_t end = chat_template.find(kImEnd, start);
    if (end == std::string::npos) break;
    const std::string_view candidate = std::string_view(chat_template).substr(start, end - start);
    // Only a literal: an expression (message['content'], a + join, a quote closing the string)
    // is the template writing the conversation's own system message.
    bool literal = !candidate.empty();
    for (size_t i = 0; i < candidate.size() && literal; ++i) {
      if (candidate[i] == '\\') ++i;  // an escaped quote belongs to the literal
      else literal = std::string_view("'\"{}+").find(candidate[i]) == std::string_view::npos;
    }
    if (literal) return unescape_template_literal(candidate);
  }
  return {};
}

ChatOptions detect_chat_options(const std::string& path, const Tokenizer& tokenizer) {
  const std::string chat_template = read_chat_template(path);
  ChatOptions options;
  const bool has_llama3_tokens = tokenizer.added_token_id(kStartHeader).has_value();
  const bool has_chatml_tokens = tokenizer.added_token_id(kImStart).has_value() && tokenizer.added_token_id(kImEnd).has_value();
  if (!chat_template.empty()) {
    if (chat_template.find(kImStart) != std::string::npos) {
      options.format = ChatFormat::chatml;
      options.default_system = chatml_default_system(chat_template);
    } else if (chat_template.find(kStartHeader) != std::string::npos) {
      options.format = chat_template.find("Cutting Knowledge Date") != std::string::npos ? ChatFormat::llama3_1
                                                                                       : ChatFormat::llama3;
    } else {
      throw Error(str_cat(path, ": the chat template is neither Llama-3's nor ChatML, the formats lamina renders; it starts: \"",
                          chat_template.substr(0, 80), chat_template.size() > 80 ? "...\"" : "\""));
    }
  } else if (has_llama3_tokens) {
    options.format = tokenizer.added_token_id("<|eom_id|>") ? ChatFormat::llama3_1 : ChatFormat::llama3;
  } else if (has_chatml_tokens) {
    options.format = ChatFormat::chatml;
  } else {
    throw Error(str_cat(path, ": no chat template, and the vocabulary has neither Llama-3's ", kStartHeader,
                        " nor ChatML's ", kImStart, " and ", kImEnd, ", so lamina cannot tell its chat format"));
  }
  const bool tokens_present = options.format == ChatFormat::chatml ? has_chatml_tokens : has_llama3_tokens;
  LAMINA_CHECK(tokens_present, path, ": the chat template is ", chat_format_name(options.format),
               " but the tokenizer lacks its special tokens (",
               options.format == ChatFormat::chatml ? str_cat(kImStart, ", ", kImEnd) : std::string(kStartHeader), ")");
  return options;
}

ChatFormat detect_chat_format(const std::string& path, const Tokenizer& tokenizer) {
  return detect_chat_options(path, tokenizer).format;
}

// ---- Conversation

Conversation::Conversation(const Tokenizer& tokenizer, ChatOptions options, int64_t context_length)
    : tokenizer_(&tokenizer), options_(std::move(options)), context_length_(context_length) {
  LAMINA_CHECK(context_length > 0, "chat: the context length must be positive, got ", context_length);
  options_.add_generation_prompt = true;
}

std::vector<Message> Conversation::with_system(const std::vector<Message>& turns) const {
  std::vector<Message> messages;
  if (!system_.empty()) messages.push_back({"system", system_});
  messages.insert(messages.end(), turns.begin(), turns.end());
  return messages;
}

std::vector<int32_t> Conversation::render(const std::vector<Message>& turns) const {
  return render_chat(*tokenizer_, with_system(turns), options_).ids;
}

int64_t Conversation::system_prompt_tokens(const std::string& system) const {
  std::vector<Message> messages;
  if (!system.empty()) messages.push_back({"system", system});
  // Without one, a ChatML template writes its default system message before the first turn.
  else if (options_.format == ChatFormat::chatml && !options_.default_system.empty())
    messages.push_back({"system", options_.default_system});
  return int64_t(render_chat(*tokenizer_, messages, options_).ids.size());
}

Conversation::Fit Conversation::add_user(std::string content, int64_t max_new_tokens) {
  Fit fit;
  const Message message{"user", std::move(content)};
  // Checked alone first, so that a message too long for any conversation leaves this one as it was.
  fit.alone_tokens = int64_t(render({message}).size());
  if (fit.alone_tokens >= context_length_) return fit;  // not even one token of answer fits
  fit.accepted = true;
  turns_.push_back(message);
  fit.prompt = render(turns_);
  while (int64_t(fit.prompt.size()) + max_new_tokens > context_length_ && turns_.size() > 1) {
    // One exchange: the oldest message and whatever follows it up to the next user message.
    const auto next_user =
        std::find_if(turns_.begin() + 1, turns_.end(), [](const Message& turn) { return turn.role == "user"; });
    fit.dropped_messages += next_user - turns_.begin();
    turns_.erase(turns_.begin(), next_user);
    fit.prompt = render(turns_);
  }
  fit.new_tokens = std::min(max_new_tokens, context_length_ - int64_t(fit.prompt.size()));
  return fit;
}

}  // namespace lamina::tokenizer
