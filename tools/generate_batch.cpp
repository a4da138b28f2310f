// `lamina generate --prompts FILE.jsonl --batch N --output FILE.jsonl`: many prompts through
// batched generation with slot reuse (models/generate/batch.h). Each prompt's line is written
// whole and flushed as it finishes (finish order; "index" gives the prompt's place), so an
// interrupted run leaves at most one unfinished line, which the next run drops before it
// continues with the prompts the file does not hold yet. Under --attention-plan the slots are
// ring caches (llama::SparseKvCache), the plan resolved once for the file's longest sequence.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "models/generate/batch.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/unicode.h"
#include "nn/lora.h"
#include "tensor/io/json.h"
#include "tools/attention_plan_option.h"
#include "tools/generate_support.h"

namespace lamina::cli {
namespace {

// ---- --prompts FILE.jsonl: many prompts, batched, resumable

// One prompt of a --prompts file.
struct BatchPrompt {
  int64_t line = 0;                    // in the file, from 1
  std::optional<json::Value> id;       // the line's "id", echoed in the output
  std::string text;                    // "prompt" as given, a chat as rendered
  bool text_from_ids = false;          // "prompt_ids": the text is the ids decoded
  std::vector<int64_t> ids;
  std::vector<int64_t> stop_tokens;    // a chat's end-of-turn ids, for "messages"
  std::optional<json::Value> adapter;  // the line's "adapter": a name, or null for the base alone
};

// Everything a --prompts run needs to turn lines into ids.
struct PromptSource {
  const tokenizer::Tokenizer& text_tokenizer;
  std::string chat_source;  // where the chat template is detected from
  bool use_stop_tokens = true;
  std::optional<tokenizer::ChatOptions> chat;  // detected at the first "messages" line
};

std::vector<tokenizer::Message> parse_messages(const json::Value& value, const std::string& where) {
  std::vector<tokenizer::Message> messages;
  for (const json::Value& message : value.as_array(where + ": messages")) {
    const json::Value* role = message.find("role", where + ": a message");
    const json::Value* content = message.find("content", where + ": a message");
    if (role == nullptr || content == nullptr)
      throw Error(str_cat(where, ": each message needs a \"role\" and a \"content\""));
    messages.push_back({role->as_string(where + ": role"), content->as_string(where + ": content")});
  }
  if (messages.empty()) throw Error(str_cat(where, ": \"messages\" is empty"));
  return messages;
}

// One line of the file: an object with exactly one of "prompt", "messages", "prompt_ids", and
// optionally "id". Errors name the file and line.
BatchPrompt parse_prompt_line(const std::string& text, const std::string& where, PromptSource& source) {
  json::Value value;
  try {
    value = json::parse(text, where);
  } catch (const Error& error) {
    throw Error(str_cat("lamina generate: ", where, ": not a JSON line: ", error.what()));
  }
  if (!value.is_object()) throw Error(str_cat("lamina generate: ", where, ": expected a JSON object, got ", json::type_name(value.type())));
  BatchPrompt prompt;
  int kinds = 0;
  for (const auto& [key, member] : value.as_object()) {
    if (key == "id") {
      if (!member.is_string() && !(member.is_number() && member.as_number().is_integer))
        throw Error(str_cat("lamina generate: ", where, ": \"id\" must be a string or an integer"));
      prompt.id = member;
    } else if (key == "adapter") {
      if (!member.is_string() && !member.is_null())
        throw Error(str_cat("lamina generate: ", where, ": \"adapter\" must be an adapter's name (a string) or null "
                            "(the base alone)"));
      prompt.adapter = member;
    } else if (key == "prompt") {
      ++kinds;
      prompt.text = member.as_string(where + ": prompt");
      prompt.ids = widen(source.text_tokenizer.encode(prompt.text, {.add_bos = source.text_tokenizer.adds_bos()}));
    } else if (key == "messages") {
      ++kinds;
      const std::vector<tokenizer::Message> messages = parse_messages(member, where);
      if (!source.chat) source.chat = tokenizer::detect_chat_options(source.chat_source, source.text_tokenizer);
      prompt.ids = widen(tokenizer::render_chat(source.text_tokenizer, messages, *source.chat).ids);
      prompt.text = source.text_tokenizer.decode(std::vector<int32_t>(prompt.ids.begin(), prompt.ids.end()));
      if (source.use_stop_tokens) prompt.stop_tokens = widen(tokenizer::stop_token_ids(source.text_tokenizer, source.chat->format));
    } else if (key == "prompt_ids") {
      ++kinds;
      for (const json::Value& id : member.as_array(where + ": prompt_ids")) {
        const int64_t token = id.as_int64(where + ": prompt_ids");
        if (token < 0 || token > INT32_MAX) throw Error(str_cat("lamina generate: ", where, ": token id ", token, " is out of range"));
        prompt.ids.push_back(token);
      }
      prompt.text_from_ids = true;  // decoded when written: the ids are checked against the model first
    } else {
      throw Error(str_cat("lamina generate: ", where, ": unknown key \"", key,
                          "\" (a line holds one of \"prompt\", \"messages\", \"prompt_ids\", and optionally \"id\" and \"adapter\")"));
    }
  }
  if (kinds != 1)
    throw Error(str_cat("lamina generate: ", where, ": give exactly one of \"prompt\", \"messages\" and \"prompt_ids\" (got ",
                        kinds, ")"));
  if (prompt.ids.empty()) throw Error(str_cat("lamina generate: ", where, ": the prompt has no tokens"));
  return prompt;
}

// The prompts of `path`, one per non-blank line (blank lines are skipped but counted in line
// numbers); their index is their order among the prompts.
std::vector<BatchPrompt> read_prompts(const std::string& path, PromptSource& source) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat("lamina generate: cannot read --prompts ", path));
  std::vector<BatchPrompt> prompts;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = str_cat(path, ":", number);
    try {
      prompts.push_back(parse_prompt_line(line, where, source));
    } catch (const Error& error) {
      // Errors from the tokenizer or the chat template do not know the line: name it.
      const std::string message = error.what();
      if (message.find(where) != std::string::npos) throw;
      throw Error(str_cat("lamina generate: ", where, ": ", message));
    }
    prompts.back().line = number;
  }
  if (prompts.empty()) throw Error(str_cat("lamina generate: --prompts ", path, " has no prompts"));
  return prompts;
}

// The options that decide a prompt's output, written on every output line: a resumed run must
// use the same ones, or its file would mix answers of two settings. (--batch is not among them:
// it does not change what a prompt produces.)
json::Value output_options(const generate::GenerateOptions& options, bool no_stop, const std::vector<AdapterSpec>& adapters) {
  json::Value object{json::Object{}};
  object.set("max_new_tokens", options.max_new_tokens);
  object.set("temperature", options.sampling.temperature);
  object.set("top_k", options.sampling.top_k);
  object.set("top_p", options.sampling.top_p);
  object.set("min_p", options.sampling.min_p);
  object.set("repetition_penalty", options.sampling.repetition_penalty);
  object.set("seed", std::to_string(options.sampling.seed));  // all 64 bits, as text
  object.set("no_stop", no_stop);
  if (!adapters.empty()) {
    json::Value folders{json::Object{}};
    for (const AdapterSpec& adapter : adapters) folders.set(adapter.name, adapter.directory);
    object.set("adapters", std::move(folders));
  }
  return object;
}

// The prompts an existing --output already holds, after checking that its lines belong to this
// run: each complete line parses, names a prompt of this file (index, id and prompt length)
// once, and carries the same options. A last line without its newline is what an interrupted
// run left: it is cut off the file (and its prompt runs again).
std::set<int64_t> resume_output(const std::string& path, const std::vector<BatchPrompt>& prompts,
                                const json::Value& options) {
  std::set<int64_t> done;
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return done;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(str_cat("lamina generate: cannot read --output ", path, " to resume from it"));
  const std::string contents((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const size_t complete = contents.rfind('\n') == std::string::npos ? 0 : contents.rfind('\n') + 1;
  if (complete < contents.size()) {
    std::fprintf(stderr, "note: dropping the unfinished last line of %s (an interrupted run); its prompt runs again\n",
                 path.c_str());
    std::filesystem::resize_file(path, complete);
  }
  const std::string expected_options = options.dump();
  size_t start = 0;
  for (int64_t number = 1; start < complete; ++number) {
    const size_t end = contents.find('\n', start);
    const std::string line = contents.substr(start, end - start);
    start = end + 1;
    const std::string where = str_cat(path, ":", number);
    const std::string refuse = " (remove the file to start over, or write to another --output)";
    json::Value value;
    try {
      value = json::parse(line, where);
    } catch (const Error& parse_error) {
      throw Error(str_cat("lamina generate: cannot resume: ", where, " is not a line of this command: ", parse_error.what(), refuse));
    }
    const json::Value* index = value.is_object() ? value.find("index") : nullptr;
    if (index == nullptr || !index->is_number() || !index->as_number().is_integer)
      throw Error(str_cat("lamina generate: cannot resume: ", where, " has no integer \"index\"", refuse));
    const int64_t i = index->as_int64();
    if (i < 0 || i >= int64_t(prompts.size()))
      throw Error(str_cat("lamina generate: cannot resume: ", where, " is for prompt ", i, " but the prompts file has ",
                          prompts.size(), " prompts: the output belongs to another prompts file", refuse));
    if (!done.insert(i).second)
      throw Error(str_cat("lamina generate: cannot resume: ", where, " repeats prompt ", i, refuse));
    const json::Value* written_options = value.find("options");
    if (written_options == nullptr || written_options->dump() != expected_options)
      throw Error(str_cat("lamina generate: cannot resume: ", where, " was written with other options (",
                          written_options == nullptr ? "none" : written_options->dump(), ", now ", expected_options, ")",
                          refuse));
    const BatchPrompt& prompt = prompts[size_t(i)];
    const json::Value* prompt_tokens = value.find("prompt_tokens");
    const json::Value* id = value.find("id");
    const bool same_id = (id == nullptr && !prompt.id) || (id != nullptr && prompt.id && id->dump() == prompt.id->dump());
    if (prompt_tokens == nullptr || !prompt_tokens->is_number() || prompt_tokens->as_double() != double(prompt.ids.size()) ||
        !same_id)
      throw Error(str_cat("lamina generate: cannot resume: ", where, " does not match prompt ", i, " (line ", prompt.line,
                          " of the prompts file): the output belongs to another prompts file", refuse));
  }
  return done;
}

// `adapter`: the adapter's name or null, when the run has adapters.
std::string output_line(const BatchPrompt& prompt, int64_t index, const std::vector<int64_t>& tokens,
                        const std::string& finish_reason, const tokenizer::Tokenizer& text_tokenizer,
                        const json::Value& options, const std::optional<json::Value>& adapter) {
  json::Value object{json::Object{}};
  object.set("index", index);
  if (prompt.id) object.set("id", *prompt.id);
  if (adapter) object.set("adapter", *adapter);
  // Decoded text may end inside a character (or hold bytes that are no UTF-8 at all): JSON
  // needs valid UTF-8, so those bytes are written as U+FFFD; the ids stay exact.
  const std::string prompt_text =
      prompt.text_from_ids ? text_tokenizer.decode(std::vector<int32_t>(prompt.ids.begin(), prompt.ids.end())) : prompt.text;
  object.set("prompt", tokenizer::replace_invalid_utf8(prompt_text));
  object.set("completion", tokenizer::replace_invalid_utf8(
                                        text_tokenizer.decode(std::vector<int32_t>(tokens.begin(), tokens.end()))));
  json::Array ids;
  for (int64_t token : tokens) ids.emplace_back(token);
  object.set("completion_ids", std::move(ids));
  object.set("finish_reason", finish_reason);
  object.set("prompt_tokens", int64_t(prompt.ids.size()));
  object.set("completion_tokens", int64_t(tokens.size()));
  object.set("options", options);
  return object.dump();
}

}  // namespace

int run_generate_batch(const FlagParser& parser, const std::string& model_path) {
  for (const char* single : {"prompt", "prompt-ids", "chat", "system"})
    if (parser.is_set(single))
      throw UsageError(str_cat("lamina generate: --", single, " does not go with --prompts (each line holds its own prompt)"),
                       "run 'lamina generate --help'");
  if (!parser.is_set("output"))
    throw UsageError("lamina generate: --prompts needs --output FILE.jsonl (where the answers go)", "run 'lamina generate --help'");
  const std::string prompts_path = *parser.value("prompts"), output_path = *parser.value("output");
  if (output_path == "text" || output_path == "ids")
    throw UsageError("lamina generate: with --prompts, --output is the JSONL file to write, not '" + output_path + "'",
                     "pass --output answers.jsonl");
  const int64_t slots = parser.int_value("batch", 8, 1, 4096);
  const bool no_stop = parser.is_set("no-stop");
  generate::GenerateOptions options = sampling_options(parser, 64);
  options.use_config_stop_tokens = !no_stop;
  options.rope_positions = read_rope_positions(parser, "lamina generate");
  const std::vector<AdapterSpec> adapters = adapter_specs(parser);
  json::Value written_options = output_options(options, no_stop, adapters);
  if (const std::optional<std::string> plan_path = parser.value("attention-plan")) {
    // The plan decides the answers: a resumed run must use the same one (and the same RoPE mode).
    written_options.set("attention_plan", *plan_path);
    written_options.set("rope_positions", llama::rope_positions_name(options.rope_positions));
  }

  const tokenizer::Tokenizer text_tokenizer = load_tokenizer(parser, model_path);
  PromptSource source{text_tokenizer, parser.value("tokenizer").value_or(model_path), !no_stop, std::nullopt};
  const std::vector<BatchPrompt> prompts = read_prompts(prompts_path, source);
  const auto model = load_model(parser, model_path);
  choose_prefill_chunk(parser, *model, model_path, options);
  const llama::LlamaConfig& config = model->config();
  for (const BatchPrompt& prompt : prompts) {
    const std::string where = str_cat(prompts_path, ":", prompt.line);
    check_prompt_ids(prompt.ids, config, where);
    if (int64_t(prompt.ids.size()) > config.max_position_embeddings)
      throw Error(str_cat("lamina generate: ", where, ": the prompt has ", prompt.ids.size(),
                          " tokens, more than the model's context of ", config.max_position_embeddings, " tokens"));
  }
  // One plan for the whole file, resolved for its longest sequence (prompt + new tokens, within
  // the context unless the plan streams past it), whichever prompts this run still has to do: a
  // resumed run resolves the same.
  if (const std::optional<sparse::MoaPlan> plan = read_attention_plan(parser, config)) {
    int64_t longest = 0;
    for (const BatchPrompt& prompt : prompts) longest = std::max(longest, int64_t(prompt.ids.size()));
    apply_attention_plan(*model->model, config, *plan, longest + options.max_new_tokens);
    if (!generate::streams_past_context(*model, options))
      apply_attention_plan(*model->model, config, *plan,
                           std::min(config.max_position_embeddings, longest + options.max_new_tokens));
  }
  // Each prompt's adapter: the one its line names, the base for null, the first --adapter when it names none.
  std::vector<int64_t> prompt_adapters(prompts.size(), adapters.empty() ? -1 : 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (!prompts[i].adapter) continue;
    const std::string where = str_cat(prompts_path, ":", prompts[i].line);
    if (prompts[i].adapter->is_null()) {
      prompt_adapters[i] = -1;
      continue;
    }
    const std::string& name = prompts[i].adapter->as_string();
    std::string known;
    for (size_t a = 0; a < adapters.size(); ++a) {
      if (adapters[a].name == name) prompt_adapters[i] = nn::adapter_index(*model, name);
      known += (a == 0 ? "" : ", ") + adapters[a].name;
    }
    if (adapters.empty())
      throw Error(str_cat("lamina generate: ", where, ": the line asks for adapter '", name,
                          "' but no --adapter was given (--adapter NAME=DIR,...)"));
    if (std::none_of(adapters.begin(), adapters.end(), [&](const AdapterSpec& a) { return a.name == name; }))
      throw Error(str_cat("lamina generate: ", where, ": no adapter named '", name, "' (--adapter gave: ", known, ")"));
  }
  const auto adapter_of = [&](size_t i) -> std::optional<json::Value> {
    if (adapters.empty()) return std::nullopt;
    return prompt_adapters[i] < 0 ? json::Value() : json::Value(nn::lora_selection(*model)->adapters[size_t(prompt_adapters[i])]);
  };
  const std::set<int64_t> done = resume_output(output_path, prompts, written_options);
  if (!done.empty())
    std::fprintf(stderr, "resuming: %zu of %zu prompts are already in %s\n", done.size(), prompts.size(), output_path.c_str());
  std::vector<std::vector<int64_t>> todo;
  std::vector<int64_t> todo_index;
  generate::BatchOptions batch;
  batch.slots = slots;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (done.count(int64_t(i)) != 0) continue;
    todo.push_back(prompts[i].ids);
    todo_index.push_back(int64_t(i));
    batch.seed_indices.push_back(uint64_t(i));
    batch.prompt_stop_tokens.push_back(prompts[i].stop_tokens);
    batch.prompt_adapters.push_back(prompt_adapters[i]);
  }
  if (todo.empty()) {
    std::fprintf(stderr, "all %zu prompts are already in %s\n", prompts.size(), output_path.c_str());
    return 0;
  }

  std::FILE* output = std::fopen(output_path.c_str(), "ab");
  if (output == nullptr) throw Error(str_cat("lamina generate: cannot write --output ", output_path));
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  size_t finished = done.size();
  int64_t new_tokens = 0;
  size_t reported = 0;  // prompts done at the last progress line
  const auto report = [&](bool final) {
    const auto now = std::chrono::steady_clock::now();
    if (final ? reported == finished : now - last_report < std::chrono::seconds(1)) return;
    last_report = now;
    reported = finished;
    const double seconds = std::max(1e-9, std::chrono::duration<double>(now - start).count());
    std::fprintf(stderr, "generate: %zu/%zu prompts done, %lld new tokens, %.1f tokens/s\n", finished, prompts.size(),
                 static_cast<long long>(new_tokens), double(new_tokens) / seconds);
  };
  // Each line is written whole and flushed as its prompt finishes, so an interrupted run leaves
  // at most one unfinished line, which the next run drops.
  batch.on_finish = [&](size_t position, const std::vector<int64_t>& tokens, const std::string& reason) {
    const int64_t index = todo_index[position];
    const std::string line = output_line(prompts[size_t(index)], index, tokens, reason, text_tokenizer, written_options,
                                         adapter_of(size_t(index))) +
                             "\n";
    if (std::fwrite(line.data(), 1, line.size(), output) != line.size() || std::fflush(output) != 0)
      throw Error(str_cat("lamina generate: writing ", output_path, " failed"));  // closed below
    ++finished;
    new_tokens += int64_t(tokens.size());
    report(false);
  };
  try {
    generate::generate_batch(*model, todo, options, batch);
  } catch (...) {
    std::fclose(output);
    throw;
  }
  report(true);
  if (std::fclose(output) != 0) throw Error(str_cat("lamina generate: closing ", output_path, " failed"));
  return 0;
}

}  // namespace lamina::cli
