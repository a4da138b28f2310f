// The chat formats lamina renders, in code (no template engine): Llama-3 and Llama-3.1
// Instruct, and ChatML (SmolLM2, Qwen2 and others). A model's format is recognised from its
// chat template's text (tokenizer_config.json or the GGUF's tokenizer.chat_template).
//
// Llama-3:
//   <|begin_of_text|>
//   for each message:  <|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}<|eot_id|>
//   <|start_header_id|>assistant<|end_header_id|>\n\n          (the generation prompt)
//
// Llama-3.1 always opens with a system block that starts with "Cutting Knowledge Date:
// December 2023\nToday Date: {date}\n\n" and then holds the system message, if any (HF's
// template without tools). Special tokens are inserted as ids; roles and contents are encoded
// as ordinary text, so a message cannot forge control tokens by writing "<|eot_id|>".
//
// ChatML:
//   [<|im_start|>system\n{default system message}<|im_end|>\n   when the first message is not a
//                                                              system message and the template
//                                                              has a default]
//   for each message:  <|im_start|>{role}\n{content, as is}<|im_end|>\n
//   <|im_start|>assistant\n                                      (the generation prompt)
//
// The ids equal HF's apply_chat_template for any message text that contains no special-token
// text.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "models/tokenizer/tokenizer.h"

namespace lamina::tokenizer {

enum class ChatFormat { llama3, llama3_1, chatml };
const char* chat_format_name(ChatFormat format);

struct Message {
  std::string role;  // "system", "user", "assistant", "ipython", ...
  std::string content;
};

// The roles a format defines: system, user and assistant; Llama-3.1 adds ipython (a tool's
// result). render_chat writes any role as given; readers of training data check theirs against
// this list, so that a misspelt role is an error rather than a turn the loss silently skips.
std::vector<std::string> chat_roles(ChatFormat format);

struct ChatOptions {
  ChatFormat format = ChatFormat::llama3;
  bool add_generation_prompt = true;  // end with the assistant header, ready to generate
  // Llama-3.1's "Today Date:" line; the HF template's fallback when no date is supplied.
  std::string date_string = "26 Jul 2024";
  // ChatML: the system message the template writes when the conversation does not open with one
  // (SmolLM2's "You are a helpful AI assistant named SmolLM, trained by Hugging Face"); empty:
  // none. detect_chat_options takes it from the template.
  std::string default_system;
};

struct ChatTokens {
  std::vector<int32_t> ids;
  // 1 for the tokens of assistant answers (each answer's content and the <|eot_id|> or
  // <|im_end|> that ends it, so that a model learns to stop), 0 for everything else (headers,
  // other roles, ChatML's newline after <|im_end|>, the generation prompt). SFT puts its loss on
  // the 1s. (In ChatML the role, its newline and the content are one piece of text, as HF
  // encodes them; where a token spans the newline and the content's first bytes, which happens
  // only when the content starts with whitespace, that token counts as answer.)
  std::vector<uint8_t> assistant_mask;
};

ChatTokens render_chat(const Tokenizer& tokenizer, std::span<const Message> messages, const ChatOptions& options = {});

// The same rendering as text, special tokens written out (HF's apply_chat_template with
// tokenize=False). Encoding it with parse_special gives render_chat's ids when no message
// contains special-token text.
std::string render_chat_text(std::span<const Message> messages, const ChatOptions& options = {});

// Ids that end a reply: <|end_of_text|> and <|eot_id|>, and for 3.1 also <|eom_id|> (a tool
// call is pending); ChatML: <|im_end|> and <|endoftext|>; those the vocabulary has.
std::vector<int32_t> stop_token_ids(const Tokenizer& tokenizer, ChatFormat format);

// The chat template of a model: `path` is a model folder, a tokenizer.json (its folder's
// tokenizer_config.json is read) or a GGUF file (tokenizer.chat_template). Empty when there is
// none. A template list (HF's [{"name", "template"}]) gives its "default" entry.
std::string read_chat_template(const std::string& path);

// The format a model (see read_chat_template for `path`) speaks, from its template: ChatML when
// it writes <|im_start|>; Llama-3 when it writes <|start_header_id|>, 3.1 when it also writes the
// "Cutting Knowledge Date" header. A template of neither kind is an error naming its start.
// Without a template, from the vocabulary: Llama-3 (3.1 with <|eom_id|>) when it has
// <|start_header_id|>, ChatML when it has <|im_start|> and <|im_end|>, else an error. The
// tokens the format needs must be in the vocabulary.
ChatFormat detect_chat_format(const std::string& path, const Tokenizer& tokenizer);
// The format and, for ChatML, the template's default system message.
ChatOptions detect_chat_options(const std::string& path, const Tokenizer& tokenizer);
// ChatML's default system message written in a template's text, or empty: the text between
// "<|im_start|>system" plus a newline and "<|im_end|>" inside a string literal.
std::string chatml_default_system(const std::string& chat_template);

// A conversation being held, for an interactive chat, kept within the model's context: the
// oldest exchanges are dropped when a new message would leave too little room for the answer,
// and a message that cannot fit even alone is refused, leaving the conversation as it was.
class Conversation {
 public:
  // `context_length`: the model's max_position_embeddings.
  Conversation(const Tokenizer& tokenizer, ChatOptions options, int64_t context_length);

  // Tokens of the system message alone with the generation prompt (the least any prompt takes).
  int64_t system_prompt_tokens(const std::string& system) const;
  void set_system(std::string system) { system_ = std::move(system); }  // empty: none
  void reset() { turns_.clear(); }  // forget the turns, keep the system message

  struct Fit {
    bool accepted = false;     // false: the message alone fills the context, nothing was changed
    int64_t alone_tokens = 0;  // the prompt of the system message and this message only
    int64_t dropped_messages = 0;
    int64_t new_tokens = 0;    // room for the answer: max_new_tokens, or less at the context's end
    std::vector<int32_t> prompt;  // every kept turn, rendered, ending with the generation prompt
  };
  // Adds a user message, then drops the oldest exchanges (a user message and the answers after
  // it) until the prompt leaves room for `max_new_tokens` or only this message is left.
  Fit add_user(std::string content, int64_t max_new_tokens);
  void add_assistant(std::string content) { turns_.push_back({"assistant", std::move(content)}); }
  std::vector<Message> messages() const { return with_system(turns_); }  // the system message first, when set

 private:
  std::vector<Message> with_system(const std::vector<Message>& turns) const;
  std::vector<int32_t> render(const std::vector<Message>& turns) const;

  const Tokenizer* tokenizer_;
  ChatOptions options_;
  int64_t context_length_;
  std::string system_;
  std::vector<Message> turns_;
};

}  // namespace lamina::tokenizer
