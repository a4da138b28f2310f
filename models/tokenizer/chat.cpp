#include "models/tokenizer/chat.h"

#include <algorithm>
#include <filesystem>

#include "models/tokenizer/unicode.h"
#include "tensor/error.h"
#include "tensor/io/json.h"

namespace lamina::tokenizer {
namespace {

constexpr const char* kBeginOfText = "<|begin_of_text|>";
constexpr const char* kStartHeader = "<|start_header_id|>";
constexpr const char* kEndHeader = "<|end_header_id|>";
constexpr const char* kEndOfTurn = "<|eot_id|>";

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
  for (size_t i = first; i < messages.size(); ++i) {
    const Message& message = messages[i];
    LAMINA_CHECK(!message.role.empty(), "chat: message ", i, " has an empty role");
    // Meta's .strip() and the HF template's | trim: Python's notion of whitespace.
    blocks.push_back({message.role, std::string(strip_python_space(message.content)), message.role == "assistant"});
  }
  return blocks;
}

}  // namespace

const char* chat_format_name(ChatFormat format) { return format == ChatFormat::llama3_1 ? "llama3.1" : "llama3"; }

std::vector<std::string> chat_roles(ChatFormat format) {
  if (format == ChatFormat::llama3_1) return {"system", "user", "assistant", "ipython"};
  return {"system", "user", "assistant"};
}

ChatTokens render_chat(const Tokenizer& tokenizer, std::span<const Message> messages, const ChatOptions& options) {
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
  for (const char* name : names) {
    if (const std::optional<int32_t> id = tokenizer.added_token_id(name)) ids.push_back(*id);
  }
  return ids;
}

ChatFormat detect_chat_format(const std::string& path, const Tokenizer& tokenizer) {
  // Both formats need their header tokens; a vocabulary without them speaks another format.
  LAMINA_CHECK(tokenizer.added_token_id(kStartHeader).has_value(), path, ": the tokenizer has no ", kStartHeader,
               ", so its chat format is not Llama-3's; lamina renders only the Llama-3 and 3.1 chat formats so far "
               "(ChatML, which SmolLM2 uses, is not supported yet)");
  std::filesystem::path directory = path;
  if (!std::filesystem::is_directory(directory)) directory = directory.parent_path();
  const std::filesystem::path config = directory / "tokenizer_config.json";
  if (std::filesystem::is_regular_file(config)) {
    const json::Value root = json::parse_file(config.string());
    LAMINA_CHECK(root.is_object(), config.string(), ": expected a JSON object at the top level, got ",
                 json::type_name(root.type()));
    const json::Value* chat_template = root.find("chat_template");
    if (chat_template != nullptr && chat_template->is_string()) {
      return chat_template->as_string().find("Cutting Knowledge Date") != std::string::npos ? ChatFormat::llama3_1
                                                                                            : ChatFormat::llama3;
    }
  }
  return tokenizer.added_token_id("<|eom_id|>") ? ChatFormat::llama3_1 : ChatFormat::llama3;
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
