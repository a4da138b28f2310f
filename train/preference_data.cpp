// Preference data (train/preference_data.h): TRL's line layouts checked and tokenised, and the
// policy's batches built from them.
#include "train/preference_data.h"

#include <algorithm>
#include <cctype>
#include <fstream>

#include "tensor/io/regular_file.h"

namespace lamina::train {
namespace {

using tokenizer::Message;

// Where a key lives in the line, for errors: "\"chosen\"".
std::string quoted(std::string_view key) { return str_cat("\"", key, "\""); }

// The chat roles a message may have in `format`, as (name in the data, role rendered). HF's
// Llama-3.1 template writes a "tool" message under the ipython header.
std::vector<std::pair<std::string, std::string>> accepted_roles(tokenizer::ChatFormat format) {
  std::vector<std::pair<std::string, std::string>> roles;
  bool has_ipython = false;
  for (const std::string& role : tokenizer::chat_roles(format)) {
    roles.emplace_back(role, role);
    has_ipython |= role == "ipython";
  }
  if (has_ipython) roles.emplace_back("tool", "ipython");
  return roles;
}

// A role outside the format would render a turn the model was never taught: an error naming
// the roles accepted (and the right spelling, when only the case is wrong).
std::string role_of(const std::string& name, tokenizer::ChatFormat format, const std::string& where) {
  const auto roles = accepted_roles(format);
  for (const auto& [data_name, role] : roles)
    if (data_name == name) return role;
  std::string lowered = name;
  std::transform(lowered.begin(), lowered.end(), lowered.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  std::string accepted, hint;
  for (const auto& [data_name, role] : roles) {
    accepted += str_cat(accepted.empty() ? "" : ", ", data_name);
    if (lowered == data_name) hint = str_cat("; roles are case-sensitive: did you mean \"", data_name, "\"?");
  }
  throw Error(str_cat(where, ": unknown role ", json::quote(name), " (accepted: ", accepted, hint, ")"));
}

// A part of the line under `key`: text, or a non-empty list of {"role", "content"} messages.
PreferencePart read_part(const json::Value& value, std::string_view key, tokenizer::ChatFormat format) {
  PreferencePart part;
  if (value.is_string()) {
    part.text = value.as_string();
    return part;
  }
  LAMINA_CHECK(value.is_array(), quoted(key), ": expected a string or a list of {\"role\", \"content\"} messages, got ",
               json::type_name(value.type()));
  const json::Array& items = value.as_array();
  LAMINA_CHECK(!items.empty(), quoted(key), " is an empty list");
  part.conversational = true;
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string where = str_cat(key, "[", i, "]");
    const json::Value& item = items[i];
    LAMINA_CHECK(item.is_object(), where, ": expected a {\"role\", \"content\"} object, got ", json::type_name(item.type()));
    const json::Value* role = item.find("role");
    const json::Value* content = item.find("content");
    LAMINA_CHECK(role != nullptr, where, ": missing \"role\"");
    LAMINA_CHECK(content != nullptr, where, ": missing \"content\"");
    LAMINA_CHECK(role->is_string(), where, ".role: expected a string, got ", json::type_name(role->type()));
    LAMINA_CHECK(content->is_string(), where, ".content: expected a string, got ", json::type_name(content->type()));
    part.messages.push_back({role_of(role->as_string(), format, where + ".role"), content->as_string()});
  }
  return part;
}

const char* kind_of(const PreferencePart& part) { return part.conversational ? "a list of messages" : "text"; }

// The part under `key`, which the layout requires.
PreferencePart required_part(const json::Value& record, std::string_view key, tokenizer::ChatFormat format,
                             PreferenceLayout layout) {
  const json::Value* value = record.find(key);
  LAMINA_CHECK(value != nullptr, "missing ", quoted(key), " (", preference_layout_name(layout), ")");
  return read_part(*value, key, format);
}

// A completion must answer: start with the assistant's turn and say something. `where` names it
// ("\"chosen\"", or "\"chosen\" after the shared prompt of 2 messages").
void check_completion(const PreferencePart& completion, const std::string& where) {
  if (!completion.conversational) {
    LAMINA_CHECK(!completion.text.empty(), where, " is empty");
    return;
  }
  LAMINA_CHECK(!completion.messages.empty(), where, " has no message");
  const Message& first = completion.messages.front();
  LAMINA_CHECK(first.role == "assistant", where, " starts with a ", json::quote(first.role),
               " message: a completion starts with the assistant's turn");
  const bool has_content = std::any_of(completion.messages.begin(), completion.messages.end(),
                                       [](const Message& message) { return !message.content.empty(); });
  LAMINA_CHECK(has_content, where, " is empty (no message has content)");
}

// Index where the text `b` first differs from `a`, in bytes, moved back to a code point start
// (JSON strings are valid UTF-8), or npos when one is a prefix of the other.
size_t first_text_difference(std::string_view a, std::string_view b) {
  const size_t common = std::min(a.size(), b.size());
  for (size_t i = 0; i < common; ++i) {
    if (a[i] == b[i]) continue;
    while (i > 0 && (uint8_t(a[i]) & 0xC0) == 0x80) --i;
    return i;
  }
  return std::string_view::npos;
}

// The byte offset where the last code point of `text` starts (0 for empty text).
size_t last_code_point_start(std::string_view text) {
  if (text.empty()) return 0;
  size_t at = text.size() - 1;
  while (at > 0 && (uint8_t(text[at]) & 0xC0) == 0x80) --at;
  return at;
}

bool same_message(const Message& a, const Message& b) { return a.role == b.role && a.content == b.content; }

std::vector<int32_t> keep(std::vector<int32_t> ids, int64_t limit, TruncationMode mode, bool& truncated) {
  if (limit <= 0 || int64_t(ids.size()) <= limit) return ids;
  truncated = true;
  if (mode == TruncationMode::keep_start) {
    ids.resize(size_t(limit));
  } else {
    ids.erase(ids.begin(), ids.end() - limit);
  }
  return ids;
}

// The id that ends a text completion: the option, else the tokenizer's.
int32_t end_of_text_id(const tokenizer::Tokenizer& tokenizer, const PreferenceDataOptions& options) {
  if (options.eos_id) return *options.eos_id;
  if (tokenizer.roles().eos) return *tokenizer.roles().eos;
  for (const char* name : {"<|end_of_text|>", "<|endoftext|>"})
    if (const std::optional<int32_t> id = tokenizer.added_token_id(name)) return *id;
  throw Error("text completions end with EOS, and the tokenizer has no <|end_of_text|> or <|endoftext|> token "
              "(set PreferenceDataOptions::eos_id)");
}

std::vector<int32_t> text_prefix(const tokenizer::Tokenizer& tokenizer, const PreferenceDataOptions& options) {
  std::vector<int32_t> ids;
  if (options.add_bos && tokenizer.adds_bos() && tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
  return ids;
}

std::vector<Message> joined(const std::vector<Message>& prompt, const std::vector<Message>& completion) {
  std::vector<Message> all = prompt;
  all.insert(all.end(), completion.begin(), completion.end());
  return all;
}

std::vector<int32_t> render(const tokenizer::Tokenizer& tokenizer, const std::vector<Message>& messages,
                            const PreferenceDataOptions& options, bool generation_prompt) {
  tokenizer::ChatOptions chat = options.chat;
  chat.add_generation_prompt = generation_prompt;
  return tokenizer::render_chat(tokenizer, messages, chat).ids;
}

// The untruncated prompt ids of a part.
std::vector<int32_t> prompt_ids(const tokenizer::Tokenizer& tokenizer, const PreferencePart& prompt,
                                const PreferenceDataOptions& options) {
  if (prompt.conversational) return render(tokenizer, prompt.messages, options, true);
  std::vector<int32_t> ids = text_prefix(tokenizer, options);
  tokenizer.encode_ordinary(prompt.text, ids);
  return ids;
}

}  // namespace

std::string preference_layout_name(PreferenceLayout layout) {
  switch (layout) {
    case PreferenceLayout::paired: return "paired {\"prompt\", \"chosen\", \"rejected\"}";
    case PreferenceLayout::implicit_prompt: return "implicit prompt {\"chosen\", \"rejected\"}";
    case PreferenceLayout::unpaired: return "unpaired {\"prompt\", \"completion\", \"label\"}";
    case PreferenceLayout::prompt_only: return "prompt-only {\"prompt\"}";
  }
  return "unknown";
}

TruncationMode truncation_mode_from_name(const std::string& name) {
  if (name == "keep_start") return TruncationMode::keep_start;
  if (name == "keep_end") return TruncationMode::keep_end;
  throw Error(str_cat("unknown truncation mode ", json::quote(name), " (expected keep_start or keep_end)"));
}

ExtractedPrompt extract_prompt(const PreferencePart& chosen, const PreferencePart& rejected) {
  LAMINA_CHECK(chosen.conversational == rejected.conversational, "extract_prompt: \"chosen\" is ", kind_of(chosen),
               " but \"rejected\" is ", kind_of(rejected));
  ExtractedPrompt out;
  out.prompt.conversational = out.chosen.conversational = out.rejected.conversational = chosen.conversational;
  if (chosen.conversational) {
    const std::vector<Message>& a = chosen.messages;
    const std::vector<Message>& b = rejected.messages;
    const size_t common = std::min(a.size(), b.size());
    size_t split = 0;
    while (split < common && same_message(a[split], b[split])) ++split;
    // TRL's loop variable stops at the last index it visited when no message differs.
    if (split == common && common > 0) split = common - 1;
    out.prompt.messages.assign(a.begin(), a.begin() + long(split));
    out.chosen.messages.assign(a.begin() + long(split), a.end());
    out.rejected.messages.assign(b.begin() + long(split), b.end());
    return out;
  }
  const std::string& a = chosen.text;
  const std::string& b = rejected.text;
  size_t split = first_text_difference(a, b);
  if (split == std::string::npos) {
    split = last_code_point_start(a.size() <= b.size() ? a : b);  // TRL: one character short of the shorter
  } else if (split > 0 && a[split - 1] == ' ') {
    split -= 1;  // the space belongs to the completions
  }
  out.prompt.text = a.substr(0, split);
  out.chosen.text = a.substr(split);
  out.rejected.text = b.substr(split);
  return out;
}

PreferenceRecord parse_preference_record(const json::Value& record, tokenizer::ChatFormat format) {
  LAMINA_CHECK(record.is_object(), "expected a JSON object, got ", json::type_name(record.type()));
  const bool has_prompt = record.find("prompt") != nullptr;
  const bool has_pair = record.find("chosen") != nullptr || record.find("rejected") != nullptr;
  const bool has_unpaired = record.find("completion") != nullptr || record.find("label") != nullptr;
  LAMINA_CHECK(!(has_pair && has_unpaired),
               "the line has both \"chosen\"/\"rejected\" (paired) and \"completion\"/\"label\" (unpaired) keys: "
               "which to train on is ambiguous");
  PreferenceRecord out;
  if (has_pair) {
    out.layout = has_prompt ? PreferenceLayout::paired : PreferenceLayout::implicit_prompt;
  } else if (has_unpaired) {
    out.layout = PreferenceLayout::unpaired;
  } else if (has_prompt) {
    out.layout = PreferenceLayout::prompt_only;
  } else {
    throw Error("expected the keys of a preference layout: {\"prompt\", \"chosen\", \"rejected\"}, {\"chosen\", "
                "\"rejected\"}, {\"prompt\", \"completion\", \"label\"} or {\"prompt\"}");
  }

  switch (out.layout) {
    case PreferenceLayout::paired:
    case PreferenceLayout::implicit_prompt: {
      PreferencePart chosen = required_part(record, "chosen", format, out.layout);
      PreferencePart rejected = required_part(record, "rejected", format, out.layout);
      LAMINA_CHECK(chosen.conversational == rejected.conversational, "\"chosen\" is ", kind_of(chosen),
                   " but \"rejected\" is ", kind_of(rejected), ": both must be of one kind");
      out.conversational = chosen.conversational;
      std::optional<PreferencePart> prompt;
      if (has_prompt) prompt = required_part(record, "prompt", format, out.layout);
      // TRL's maybe_extract_prompt: a text prompt beside conversations that hold the whole
      // dialog (UltraFeedback-binarized) is a label, not the prompt to render.
      if (prompt && prompt->conversational != chosen.conversational) {
        LAMINA_CHECK(!prompt->conversational,
                     "\"prompt\" is a list of messages but \"chosen\" and \"rejected\" are text: all must be of one kind");
        prompt.reset();
      }
      if (prompt) {
        out.prompt = std::move(*prompt);
        check_completion(chosen, "\"chosen\"");
        check_completion(rejected, "\"rejected\"");
        out.chosen = std::move(chosen);
        out.rejected = std::move(rejected);
        break;
      }
      ExtractedPrompt extracted = extract_prompt(chosen, rejected);
      out.prompt_extracted = true;
      const bool empty_prompt =
          extracted.prompt.conversational ? extracted.prompt.messages.empty() : extracted.prompt.text.empty();
      LAMINA_CHECK(!empty_prompt, "\"chosen\" and \"rejected\" differ from their first ",
                   out.conversational ? "message" : "character",
                   ": there is no shared prompt to extract (give it as \"prompt\")");
      const std::string after =
          out.conversational ? str_cat(" after the shared prompt of ", extracted.prompt.messages.size(), " messages") : "";
      check_completion(extracted.chosen, "\"chosen\"" + after);
      check_completion(extracted.rejected, "\"rejected\"" + after);
      out.prompt = std::move(extracted.prompt);
      out.chosen = std::move(extracted.chosen);
      out.rejected = std::move(extracted.rejected);
      break;
    }
    case PreferenceLayout::unpaired: {
      out.prompt = required_part(record, "prompt", format, out.layout);
      out.completion = required_part(record, "completion", format, out.layout);
      const json::Value* label = record.find("label");
      LAMINA_CHECK(label != nullptr, "missing \"label\" (", preference_layout_name(out.layout), ")");
      LAMINA_CHECK(label->is_bool(), "\"label\": expected true or false, got ",
                   label->is_string() ? str_cat("the string ", json::quote(label->as_string()))
                                      : std::string(json::type_name(label->type())));
      out.label = label->as_bool();
      LAMINA_CHECK(out.prompt.conversational == out.completion.conversational, "\"prompt\" is ", kind_of(out.prompt),
                   " but \"completion\" is ", kind_of(out.completion), ": both must be of one kind");
      out.conversational = out.prompt.conversational;
      check_completion(out.completion, "\"completion\"");
      break;
    }
    case PreferenceLayout::prompt_only: {
      out.prompt = required_part(record, "prompt", format, out.layout);
      out.conversational = out.prompt.conversational;
      LAMINA_CHECK(out.conversational || !out.prompt.text.empty(), "\"prompt\" is empty");
      break;
    }
  }
  return out;
}

PromptCompletionIds tokenize_prompt_completion(const tokenizer::Tokenizer& tokenizer, const PreferencePart& prompt,
                                               const PreferencePart& completion, const PreferenceDataOptions& options) {
  LAMINA_CHECK(prompt.conversational == completion.conversational, "tokenize_prompt_completion: the prompt is ",
               kind_of(prompt), " but the completion is ", kind_of(completion));
  PromptCompletionIds out;
  out.prompt = prompt_ids(tokenizer, prompt, options);
  std::vector<int32_t> whole;
  if (prompt.conversational) {
    whole = render(tokenizer, joined(prompt.messages, completion.messages), options, false);
  } else {
    const int32_t eos = end_of_text_id(tokenizer, options);
    // TRL appends the EOS token's text unless the completion already ends with it; lamina
    // encodes text without reading special tokens, so a trailing EOS text is taken off and the
    // id appended either way.
    std::string_view text = completion.text;
    const std::string_view eos_text = tokenizer.token_bytes(eos);
    if (!eos_text.empty() && text.size() >= eos_text.size() && text.substr(text.size() - eos_text.size()) == eos_text)
      text.remove_suffix(eos_text.size());
    whole = text_prefix(tokenizer, options);
    tokenizer.encode_ordinary(prompt.text + std::string(text), whole);
    whole.push_back(eos);
  }
  out.prompt_is_prefix =
      whole.size() >= out.prompt.size() && std::equal(out.prompt.begin(), out.prompt.end(), whole.begin());
  // TRL's slice, whether or not the prompt begins the whole.
  if (whole.size() > out.prompt.size()) out.completion.assign(whole.begin() + long(out.prompt.size()), whole.end());
  const PreferenceTruncation& limits = options.truncation;
  out.prompt = keep(std::move(out.prompt), limits.max_prompt_length, limits.prompt_mode, out.prompt_truncated);
  out.completion = keep(std::move(out.completion), limits.max_completion_length, TruncationMode::keep_start,
                        out.completion_truncated);
  return out;
}

std::vector<int32_t> tokenize_prompt(const tokenizer::Tokenizer& tokenizer, const PreferencePart& prompt,
                                     const PreferenceDataOptions& options) {
  bool truncated = false;
  return keep(prompt_ids(tokenizer, prompt, options), options.truncation.max_prompt_length,
              options.truncation.prompt_mode, truncated);
}

std::string PreferenceDataStats::summary() const {
  std::vector<std::string> parts;
  if (prompts_extracted > 0) parts.push_back(str_cat(prompts_extracted, " prompts extracted from chosen/rejected"));
  if (dropped > 0) parts.push_back(str_cat(dropped, " dropped (the prompt alone fills max_length)"));
  if (prompts_truncated > 0) parts.push_back(str_cat(prompts_truncated, " prompts cut to max_prompt_length"));
  if (completions_truncated > 0)
    parts.push_back(str_cat(completions_truncated, " completions cut to max_completion_length"));
  if (boundary_mismatches > 0)
    parts.push_back(str_cat(boundary_mismatches,
                            " completions whose prompt's tokens do not begin the whole's (a token spans the boundary)"));
  if (skipped > 0) parts.push_back(str_cat(skipped, " malformed lines skipped (first: ", first_skipped, ")"));
  std::string text;
  for (size_t i = 0; i < parts.size(); ++i) text += (i == 0 ? "" : "; ") + parts[i];
  return text;
}

PreferenceData read_preference_jsonl(std::istream& in, const std::string& name, const tokenizer::Tokenizer& tokenizer,
                                     const PreferenceDataOptions& options) {
  PreferenceData data;
  PreferenceDataStats& stats = data.stats;
  const PreferenceTruncation& limits = options.truncation;
  LAMINA_CHECK(limits.max_length >= 0 && limits.max_prompt_length >= 0 && limits.max_completion_length >= 0,
               "preference data: length limits must be >= 0 (0: none)");
  // With keep_start a prompt of max_length tokens or more leaves no completion token (TRL drops it).
  const auto fills_row = [&](const std::vector<int32_t>& prompt) {
    return limits.max_length > 0 && limits.mode == TruncationMode::keep_start && int64_t(prompt.size()) >= limits.max_length;
  };
  int64_t first_line = 0;  // the line that set the file's layout
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line_number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    ++stats.lines;
    try {
      const json::Value value = json::parse(line, "line");
      const PreferenceRecord record = parse_preference_record(value, options.chat.format);
      if (first_line == 0) {
        data.layout = record.layout;
        first_line = line_number;
      }
      LAMINA_CHECK(record.layout == data.layout, "this line is ", preference_layout_name(record.layout), " but line ",
                   first_line, " is ", preference_layout_name(data.layout), ": a file holds one layout");
      ++stats.records;
      ++(record.conversational ? stats.conversational : stats.text);
      stats.prompts_extracted += record.prompt_extracted;
      switch (record.layout) {
        case PreferenceLayout::paired:
        case PreferenceLayout::implicit_prompt: {
          const PromptCompletionIds chosen = tokenize_prompt_completion(tokenizer, record.prompt, record.chosen, options);
          const PromptCompletionIds rejected =
              tokenize_prompt_completion(tokenizer, record.prompt, record.rejected, options);
          stats.boundary_mismatches += !chosen.prompt_is_prefix + !rejected.prompt_is_prefix;
          stats.prompts_truncated += chosen.prompt_truncated;
          stats.completions_truncated += chosen.completion_truncated + rejected.completion_truncated;
          if (fills_row(chosen.prompt)) {
            ++stats.dropped;
            break;
          }
          data.pairs.push_back({chosen.prompt, chosen.completion, rejected.completion, line_number});
          break;
        }
        case PreferenceLayout::unpaired: {
          const PromptCompletionIds ids = tokenize_prompt_completion(tokenizer, record.prompt, record.completion, options);
          stats.boundary_mismatches += !ids.prompt_is_prefix;
          stats.prompts_truncated += ids.prompt_truncated;
          stats.completions_truncated += ids.completion_truncated;
          if (fills_row(ids.prompt)) {
            ++stats.dropped;
            break;
          }
          data.unpaired.push_back({ids.prompt, ids.completion, record.label, line_number});
          break;
        }
        case PreferenceLayout::prompt_only: {
          PromptOnly prompt;
          prompt.prompt = prompt_ids(tokenizer, record.prompt, options);
          bool truncated = false;
          prompt.prompt = keep(std::move(prompt.prompt), limits.max_prompt_length, limits.prompt_mode, truncated);
          stats.prompts_truncated += truncated;
          prompt.messages = record.prompt.messages;
          prompt.text = record.prompt.text;
          for (const auto& [key, field] : value.as_object()) {
            if (key == "prompt") prompt.prompt_value = field;
            else prompt.fields.set(key, field);
          }
          prompt.line = line_number;
          data.prompts.push_back(std::move(prompt));
          break;
        }
      }
    } catch (const Error& error) {
      const std::string message = str_cat(name, ":", line_number, ": ", error.what());
      if (!options.skip_malformed) throw Error(message);
      if (stats.skipped++ == 0) stats.first_skipped = message;
    }
  }
  LAMINA_CHECK(!in.bad(), "error reading ", name);
  LAMINA_CHECK(stats.lines > 0, name, ": no preference lines (the file is empty)");
  LAMINA_CHECK(stats.records > 0, name, ": all ", stats.skipped, " lines were skipped as malformed (first: ",
               stats.first_skipped, ")");
  return data;
}

PreferenceData read_preference_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                     const PreferenceDataOptions& options) {
  io::check_regular_file(path, "preference data");  // a FIFO would block the read forever
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  return read_preference_jsonl(in, path, tokenizer, options);
}

std::vector<UnpairedExample> unpair_preferences(std::span<const PreferencePair> pairs) {
  std::vector<UnpairedExample> out;
  out.reserve(2 * pairs.size());
  for (const PreferencePair& pair : pairs) out.push_back({pair.prompt, pair.chosen, true, pair.line});
  for (const PreferencePair& pair : pairs) out.push_back({pair.prompt, pair.rejected, false, pair.line});
  return out;
}

PreferenceRow preference_row(std::span<const int32_t> prompt, std::span<const int32_t> completion,
                             const PreferenceTruncation& truncation) {
  PreferenceRow row;
  row.ids.assign(prompt.begin(), prompt.end());
  row.ids.insert(row.ids.end(), completion.begin(), completion.end());
  row.completion_mask.assign(prompt.size(), 0);
  row.completion_mask.resize(row.ids.size(), 1);
  const int64_t limit = truncation.max_length;
  if (limit > 0 && int64_t(row.ids.size()) > limit) {
    if (truncation.mode == TruncationMode::keep_start) {
      row.ids.resize(size_t(limit));
      row.completion_mask.resize(size_t(limit));
    } else {
      row.ids.erase(row.ids.begin(), row.ids.end() - limit);
      row.completion_mask.erase(row.completion_mask.begin(), row.completion_mask.end() - limit);
    }
  }
  return row;
}

namespace {

// Rows right-padded to the longest: ids [R, T] i64 with pad_id, mask [R, T] bool.
std::pair<Tensor, Tensor> pad_rows(const std::vector<PreferenceRow>& rows, int32_t pad_id) {
  size_t width = 0;
  for (const PreferenceRow& row : rows) width = std::max(width, row.ids.size());
  const int64_t count = int64_t(rows.size());
  std::vector<int64_t> ids(rows.size() * width, pad_id);
  std::vector<uint8_t> mask(rows.size() * width, 0);
  for (size_t r = 0; r < rows.size(); ++r)
    for (size_t t = 0; t < rows[r].ids.size(); ++t) {
      ids[r * width + t] = rows[r].ids[t];
      mask[r * width + t] = rows[r].completion_mask[t] != 0 ? 1 : 0;
    }
  return {Tensor::from_vector(ids, {count, int64_t(width)}),
          Tensor::from_vector(mask, {count, int64_t(width)}, DType::boolean)};
}

template <typename T>
std::vector<const T*> pointers_to(std::span<const T> items) {
  std::vector<const T*> out;
  out.reserve(items.size());
  for (const T& item : items) out.push_back(&item);
  return out;
}

}  // namespace

PreferenceBatch make_preference_batch(std::span<const PreferencePair* const> pairs,
                                      const PreferenceTruncation& truncation, int32_t pad_id) {
  LAMINA_CHECK(!pairs.empty(), "make_preference_batch: no pairs");
  std::vector<PreferenceRow> rows;
  rows.reserve(2 * pairs.size());
  for (const PreferencePair* pair : pairs) rows.push_back(preference_row(pair->prompt, pair->chosen, truncation));
  for (const PreferencePair* pair : pairs) rows.push_back(preference_row(pair->prompt, pair->rejected, truncation));
  PreferenceBatch batch;
  std::tie(batch.input_ids, batch.completion_mask) = pad_rows(rows, pad_id);
  for (const PreferenceRow& row : rows) batch.lengths.push_back(int64_t(row.ids.size()));
  batch.pairs = int64_t(pairs.size());
  return batch;
}

PreferenceBatch make_preference_batch(std::span<const PreferencePair> pairs, const PreferenceTruncation& truncation,
                                      int32_t pad_id) {
  const std::vector<const PreferencePair*> pointers = pointers_to(pairs);
  return make_preference_batch(std::span<const PreferencePair* const>(pointers), truncation, pad_id);
}

UnpairedBatch make_unpaired_batch(std::span<const UnpairedExample* const> examples,
                                  const PreferenceTruncation& truncation, int32_t pad_id, bool kl_rows) {
  LAMINA_CHECK(!examples.empty(), "make_unpaired_batch: no examples");
  std::vector<PreferenceRow> rows;
  std::vector<uint8_t> labels;
  for (const UnpairedExample* example : examples) {
    rows.push_back(preference_row(example->prompt, example->completion, truncation));
    labels.push_back(example->label ? 1 : 0);
  }
  UnpairedBatch batch;
  std::tie(batch.input_ids, batch.completion_mask) = pad_rows(rows, pad_id);
  batch.labels = Tensor::from_vector(labels, {int64_t(labels.size())}, DType::boolean);
  if (kl_rows) {
    // TRL rotates the completions by one within the batch: (x_i, y_{i-1}), (x_0, y_{B-1}).
    std::vector<PreferenceRow> mismatched;
    const size_t count = examples.size();
    for (size_t i = 0; i < count; ++i)
      mismatched.push_back(
          preference_row(examples[i]->prompt, examples[(i + count - 1) % count]->completion, truncation));
    std::tie(batch.kl_input_ids, batch.kl_completion_mask) = pad_rows(mismatched, pad_id);
  }
  return batch;
}

UnpairedBatch make_unpaired_batch(std::span<const UnpairedExample> examples, const PreferenceTruncation& truncation,
                                  int32_t pad_id, bool kl_rows) {
  const std::vector<const UnpairedExample*> pointers = pointers_to(examples);
  return make_unpaired_batch(std::span<const UnpairedExample* const>(pointers), truncation, pad_id, kl_rows);
}

}  // namespace lamina::train
