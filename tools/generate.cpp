// `lamina generate` and `lamina chat`: text from a Llama model (HF folder or GGUF file).
// `lamina generate --prompts` is in tools/generate_batch.cpp.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "models/generate/generate.h"
#include "models/io/peft.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/stream_decoder.h"
#include "tensor/host_memory.h"
#include "tools/args.h"
#include "tools/attention_plan_option.h"
#include "tools/commands.h"
#include "tools/generate_support.h"
#include "tools/lora_route.h"
#include "tools/model_files.h"

namespace lamina::cli {
namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids = parse_token_ids(text, "--prompt-ids");
  if (ids.empty()) throw UsageError("--prompt-ids is empty", "pass ids like \"1 450 4321\"");
  return ids;
}

}  // namespace

void add_generation_flags(FlagParser& parser) {
  parser.add_option("max-new-tokens", "N", "tokens to generate at most (fewer where the model's context ends, unless "
                    "--rope-positions cache-slot streams past it)", "64");
  parser.add_option("temperature", "T", "0 = greedy; otherwise sample from logits / T", "0");
  parser.add_option("top-k", "K", "keep the K most likely tokens (0 = off)", "0");
  parser.add_option("top-p", "P", "keep the smallest set of tokens with probability >= P", "1");
  parser.add_option("min-p", "M", "drop tokens below M x the top probability", "0");
  parser.add_option("repetition-penalty", "R", "penalise tokens already in the context (1 = off)", "1");
  parser.add_option("seed", "S", "random seed for sampling", "0");
  parser.add_option("device", "DEVICE", "where the model runs: cpu, cuda or cuda:N", "cpu");
  parser.add_option("prefill-chunk", "N",
                    "prompt tokens per prefill pass (more: faster prefill, more memory for activations)",
                    "512; for a GGUF model computing with its weights as stored (in the original RoPE mode), the "
                    "largest power of two from 64 to 512 whose activations take at most 1/24 of the file (128 for "
                    "SmolLM2-135M)");
  add_dequantize_option(parser);
  add_attention_plan_option(parser, "each answer's prompt + --max-new-tokens tokens (with --prompts: once, for the "
                                    "file's longest prompt + --max-new-tokens)");
  add_rope_positions_option(parser);
  parser.add_option("adapter", "DIR",
                    "a LoRA adapter (PEFT folder, e.g. a `train --lora` run's model/) to run the model with; or "
                    "several as NAME=DIR,NAME=DIR,... on one base, which --prompts lines choose from with "
                    "\"adapter\": NAME (the first is the default; null: the base alone)");
  parser.add_option("routed-lora", "DIR", "a routed multi-LoRA folder (`lamina lora route`'s OUT): per token, its "
                    "gates mix its adapters");
}

std::vector<AdapterSpec> adapter_specs(const FlagParser& parser) {
  const std::optional<std::string> value = parser.value("adapter");
  if (!value) return {};
  // One folder, whatever characters its path holds; otherwise a NAME=DIR list.
  std::error_code error;
  if (std::filesystem::is_directory(*value, error) || value->find('=') == std::string::npos) return {{"default", *value}};
  std::vector<AdapterSpec> specs;
  size_t start = 0;
  while (start <= value->size()) {
    const size_t comma = std::min(value->find(',', start), value->size());
    const std::string item = value->substr(start, comma - start);
    const size_t equals = item.find('=');
    if (equals == std::string::npos || equals == 0 || equals + 1 == item.size())
      throw UsageError(str_cat("lamina: --adapter: '", item, "' is not NAME=DIR"),
                       "--adapter DIR, or --adapter math=runs/math/model,chat=runs/chat/model");
    AdapterSpec spec{item.substr(0, equals), item.substr(equals + 1)};
    for (const AdapterSpec& earlier : specs)
      if (earlier.name == spec.name)
        throw UsageError(str_cat("lamina: --adapter names '", spec.name, "' twice"), "give each adapter its own name");
    specs.push_back(std::move(spec));
    start = comma + 1;
  }
  return specs;
}

std::shared_ptr<llama::LlamaForCausalLM> load_model(const FlagParser& parser, const std::string& path) {
  const std::vector<AdapterSpec> adapters = adapter_specs(parser);
  keep_memory_small_for_gguf(parser, path);
  auto model = load_model_on(path, Device::parse(parser.value("device").value_or("cpu")), gguf_weights_choice(parser));
  for (const AdapterSpec& adapter : adapters) {
    const nn::LoraConfig config = peft::load_adapter(adapter.directory, *model, adapter.name);
    std::string targets;
    for (const std::string& name : config.target_modules) targets += (targets.empty() ? "" : "+") + name;
    std::fprintf(stderr, "adapter %s%s%s: rank %lld, targets %s\n", adapters.size() > 1 ? adapter.name.c_str() : "",
                 adapters.size() > 1 ? " = " : "", adapter.directory.c_str(), (long long)config.options.rank,
                 targets.empty() ? config.target_regex.c_str() : targets.c_str());
  }
  if (!adapters.empty()) nn::set_active_adapter(*model, adapters.front().name);
  if (const std::optional<std::string> routed = parser.value("routed-lora")) {
    if (!adapters.empty()) throw UsageError("lamina: --routed-lora and --adapter do not go together", "give one of them");
    const auto router = load_routed_lora(*routed, *model);
    std::fprintf(stderr, "routed LoRA %s: top-%lld of %zu adapters\n", routed->c_str(), (long long)router->top_k(),
                 router->adapters().size());
  }
  model->eval();  // generation never drops out (LoRA dropout)
  return model;
}

void choose_prefill_chunk(const FlagParser& parser, const llama::LlamaForCausalLM& model, const std::string& path,
                          generate::GenerateOptions& options) {
  const auto first_layer = model.model->layers->size() == 0
                               ? nullptr
                               : std::dynamic_pointer_cast<llama::LlamaDecoderLayer>((*model.model->layers)[0]);
  const bool as_stored = first_layer != nullptr && first_layer->self_attn->q_proj->base_gguf() != nullptr;
  // Such a model's peak memory is meant to stay near its file plus its KV cache: what the prefill
  // freed (activations, and the parsed metadata of the file) goes back before decoding starts.
  options.release_memory_after_prefill = as_stored;
  // In the cache_slot RoPE mode the chunk is part of what is computed: keep the default there.
  const bool lean = as_stored && options.rope_positions == llama::RopePositions::original;
  const int64_t fallback =
      lean ? generate::memory_lean_prefill_chunk_tokens(model.config(), int64_t(std::filesystem::file_size(path)))
           : options.prefill_chunk_tokens;
  options.prefill_chunk_tokens = parser.int_value("prefill-chunk", fallback, 1, int64_t(1) << 30);
}

generate::GenerateOptions sampling_options(const FlagParser& parser, int64_t default_max_new_tokens) {
  generate::GenerateOptions options;
  options.max_new_tokens = parser.int_value("max-new-tokens", default_max_new_tokens, 0, 1 << 20);
  options.sampling.temperature = parser.double_value("temperature", 0.0, 0.0, 1e6);
  options.sampling.top_k = parser.int_value("top-k", 0, 0, int64_t(1) << 40);
  options.sampling.top_p = parser.double_value("top-p", 1.0, 1e-9, 1.0);
  options.sampling.min_p = parser.double_value("min-p", 0.0, 0.0, 0.999999);
  options.sampling.repetition_penalty = parser.double_value("repetition-penalty", 1.0, 1e-6, 1e6);
  options.sampling.seed = parser.unsigned_value("seed", 0);
  return options;
}

void keep_memory_small_for_gguf(const FlagParser& parser, const std::string& model_path) {
  const Device device = Device::parse(parser.value("device").value_or("cpu"));
  if (is_gguf_file(model_path) && device.is_cpu() && gguf_weights_choice(parser) == GgufWeights::as_stored)
    return_freed_memory_promptly();
}

tokenizer::Tokenizer load_tokenizer(const FlagParser& parser, const std::string& model_path) {
  keep_memory_small_for_gguf(parser, model_path);  // before parsing the file's metadata
  return load_model_tokenizer(model_path, parser.value("tokenizer"));
}

std::vector<int64_t> widen(const std::vector<int32_t>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

void check_prompt_ids(const std::vector<int64_t>& ids, const llama::LlamaConfig& config, const std::string& source) {
  for (int64_t id : ids)
    if (id < 0 || id >= config.vocab_size)
      throw Error(str_cat("lamina generate: ", source, " has token id ", id, ", outside the model's vocabulary of ",
                          config.vocab_size, " tokens (ids 0 to ", config.vocab_size - 1, ")"));
}

namespace {

// max_new_tokens, clipped with a note on stderr to what the context leaves after the prompt:
// a long answer is still worth having when only part of it fits. A prompt longer than the
// context is an error: dropping its start silently would change what is asked.
int64_t new_tokens_within_context(int64_t prompt_tokens, int64_t max_new_tokens, const llama::LlamaConfig& config) {
  const int64_t context_length = config.max_position_embeddings;
  if (prompt_tokens > context_length)
    throw Error(str_cat("lamina generate: the prompt has ", prompt_tokens, " tokens, more than the model's context of ",
                        context_length, " tokens (max_position_embeddings in config.json)"));
  const int64_t room = context_length - prompt_tokens;
  if (max_new_tokens <= room) return max_new_tokens;
  std::fprintf(stderr,
               "note: generating at most %lld new tokens, not %lld: the prompt's %lld tokens leave no more room in the "
               "model's context of %lld tokens\n",
               static_cast<long long>(room), static_cast<long long>(max_new_tokens), static_cast<long long>(prompt_tokens),
               static_cast<long long>(context_length));
  return room;
}

// Prints each new token's text as soon as it is complete UTF-8, and keeps the whole text.
struct TextStream {
  tokenizer::StreamDecoder decoder;
  std::string text;

  void write(const std::string& piece) {
    text += piece;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  }
  bool operator()(size_t, int64_t token) {
    write(decoder.push(int32_t(token)));
    return true;
  }
  void finish() {
    write(decoder.finish());
    std::printf("\n");
  }
};

// Prints the prompt's ids at once and then each new id as it is produced, the stop token that
// ended the sequence included (the whole sequence, as transformers' generate returns it): one
// line of space-separated ids when done.
struct IdStream {
  void start(const std::vector<int64_t>& prompt) {
    for (size_t i = 0; i < prompt.size(); ++i) std::printf(i == 0 ? "%lld" : " %lld", static_cast<long long>(prompt[i]));
    std::fflush(stdout);
  }
  bool operator()(size_t, int64_t token) {
    std::printf(" %lld", static_cast<long long>(token));
    std::fflush(stdout);
    return true;
  }
  void finish() { std::printf("\n"); }
};

// Runs a generation whose tokens are streamed to stdout; when it fails part-way, ends the
// streamed line first, so that the error message starts on a line of its own.
void generate_streamed(const llama::LlamaForCausalLM& model, const std::vector<int64_t>& prompt,
                       const generate::GenerateOptions& options) {
  try {
    generate::generate(model, {prompt}, options);
  } catch (...) {
    std::printf("\n");
    std::fflush(stdout);
    throw;
  }
}

// Reads one line of `in` without its newline. Only the first `limit` bytes are kept (`too_long`
// says when more were skipped), so an endless line costs no more memory than a long one.
// Returns false at the end of the input when nothing was read; a last line without a newline
// is still a line.
bool read_line(std::istream& in, std::string& line, size_t limit, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* buffer = in.rdbuf();
  bool any = false;
  for (int c = buffer->sbumpc(); c != std::char_traits<char>::eof(); c = buffer->sbumpc()) {
    any = true;
    if (c == '\n') return true;
    if (line.size() < limit)
      line.push_back(char(c));
    else
      too_long = true;
  }
  return any;
}

// A chat line that starts with "/" (but not "//"): one of the commands, or why it is none.
struct ChatCommand {
  enum Kind { quit, reset, system, invalid } kind;
  std::string text;  // system: the message; invalid: what to tell the user
};

ChatCommand parse_chat_command(const std::string& line) {
  const size_t space = line.find(' ');
  const std::string name = line.substr(0, space);
  const std::string argument = space == std::string::npos ? "" : line.substr(space + 1);
  const bool has_argument = argument.find_first_not_of(" \t") != std::string::npos;
  if (name == "/quit" && !has_argument) return {ChatCommand::quit, {}};
  if (name == "/reset" && !has_argument) return {ChatCommand::reset, {}};
  if (name == "/system" && has_argument) return {ChatCommand::system, argument};
  if (name == "/system") return {ChatCommand::invalid, "/system needs the text of the system message: /system TEXT"};
  if (name == "/quit" || name == "/reset")
    return {ChatCommand::invalid, str_cat(name, " takes nothing after it (got \"", printable_message(line), "\")")};
  return {ChatCommand::invalid,
          str_cat("unknown command \"", printable_message(name),
                  "\" (known: /system TEXT, /reset, /quit; to send a message that starts with /, begin it with //)")};
}


}  // namespace

int run_generate(const Arguments& args) {
  FlagParser parser("lamina generate",
                    "Continues a prompt with a Llama model (HF folder: config.json + safetensors, or GGUF). With "
                    "--prompts, continues every prompt of a JSONL file, --batch at a time (a finished prompt's slot "
                    "goes to the next one), and writes one JSON line per prompt to --output: {\"index\", \"id\" "
                    "(when the line had one), \"prompt\", \"completion\", \"completion_ids\", \"finish_reason\" "
                    "(stop, length or context), \"prompt_tokens\", \"completion_tokens\", \"options\"}. Lines are "
                    "written as prompts finish, not in prompt order: sort by index. Each prompt samples from its own "
                    "seed (--seed and its index), so answers do not depend on --batch. When --output exists the run "
                    "resumes: prompts already in it are skipped, an unfinished last line is dropped, and a file "
                    "written for other prompts or options is refused.");
  parser.add_option("model", "PATH", "a Hugging Face model folder, or a Llama GGUF file");
  parser.add_option("prompt", "TEXT", "the prompt as text (encoded with the model's tokenizer)");
  parser.add_option("prompt-ids", "\"1 2 3\"", "the prompt as token ids");
  parser.add_option("prompts", "FILE.jsonl",
                    "many prompts, one JSON object a line: {\"prompt\": TEXT}, {\"messages\": [{\"role\", "
                    "\"content\"}, ...]} (rendered in the model's chat format, which also adds its end-of-turn stop "
                    "tokens) or {\"prompt_ids\": [1, 2, 3]}, each with an optional \"id\" (string or integer) and "
                    "\"adapter\" (a name from --adapter NAME=DIR,..., or null for the base alone); blank lines are "
                    "skipped");
  parser.add_option("batch", "N", "with --prompts: sequences generated together", "8");
  parser.add_switch("chat", "wrap --prompt in the model's chat format as a user message");
  parser.add_option("system", "TEXT", "with --chat: a system message");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's, or the GGUF file's own)");
  add_generation_flags(parser);
  parser.add_option("output", "text|ids|FILE",
                    "the new text, or the whole sequence (prompt + new, with the stop token that ended it) as ids; "
                    "with --prompts: the JSONL file to write (required)",
                    "text for --prompt, ids for --prompt-ids");
  parser.add_switch("no-stop", "ignore the model's end-of-sequence tokens (and a chat's end-of-turn tokens)");
  if (!parser.parse(args)) return 0;

  if (parser.is_set("prompts")) return run_generate_batch(parser, parser.required("model"));
  if (parser.is_set("batch"))
    throw UsageError("lamina generate: --batch only applies with --prompts", "run 'lamina generate --help'");
  const std::string directory = parser.required("model");
  if (parser.is_set("prompt") == parser.is_set("prompt-ids"))
    throw UsageError("lamina generate: give exactly one of --prompt, --prompt-ids and --prompts", "run 'lamina generate --help'");
  if (parser.is_set("chat") && !parser.is_set("prompt"))
    throw UsageError("lamina generate: --chat needs a text --prompt", "run 'lamina generate --help'");
  if (parser.is_set("system") && !parser.is_set("chat"))
    throw UsageError("lamina generate: --system only applies with --chat (a plain prompt has no system message)",
                     "add --chat, or drop --system");
  const std::string output = parser.value("output").value_or(parser.is_set("prompt") ? "text" : "ids");
  if (output != "ids" && output != "text")
    throw UsageError("lamina generate: --output must be 'text' or 'ids', got '" + output + "'", "run 'lamina generate --help'");
  generate::GenerateOptions options = sampling_options(parser, 64);
  options.use_config_stop_tokens = !parser.is_set("no-stop");
  options.rope_positions = read_rope_positions(parser, "lamina generate");
  const std::vector<int64_t> prompt_ids = parser.is_set("prompt-ids") ? parse_ids(*parser.value("prompt-ids")) : std::vector<int64_t>{};

  // The tokenizer is needed for text in or out; load it before the (larger) model.
  std::optional<tokenizer::Tokenizer> text_tokenizer;
  if (parser.is_set("prompt") || output == "text") text_tokenizer.emplace(load_tokenizer(parser, directory));
  std::vector<int64_t> prompt = prompt_ids;
  if (parser.is_set("prompt")) {
    const std::string text = *parser.value("prompt");
    if (parser.is_set("chat")) {
      tokenizer::ChatOptions chat;
      chat = tokenizer::detect_chat_options(parser.value("tokenizer").value_or(directory), *text_tokenizer);
      std::vector<tokenizer::Message> messages;
      if (parser.is_set("system")) messages.push_back({"system", *parser.value("system")});
      messages.push_back({"user", text});
      prompt = widen(tokenizer::render_chat(*text_tokenizer, messages, chat).ids);
      if (!parser.is_set("no-stop")) options.stop_tokens = widen(tokenizer::stop_token_ids(*text_tokenizer, chat.format));
    } else {
      prompt = widen(text_tokenizer->encode(text, {.add_bos = text_tokenizer->adds_bos()}));
    }
    if (prompt.empty()) throw UsageError("lamina generate: the prompt encodes to no tokens", "pass a non-empty --prompt");
  }

  const auto model = load_model(parser, directory);
  choose_prefill_chunk(parser, *model, directory, options);
  check_prompt_ids(prompt, model->config(),
                   parser.is_set("prompt-ids") ? "--prompt-ids" : "the encoded prompt (does the tokenizer fit the model?)");
  const int64_t prompt_tokens = int64_t(prompt.size()), wanted = options.max_new_tokens;
  const std::optional<sparse::MoaPlan> plan = read_attention_plan(parser, model->config());
  if (plan) apply_attention_plan(*model->model, model->config(), *plan, prompt_tokens + wanted);
  if (generate::streams_past_context(*model, options)) {
    new_tokens_within_context(prompt_tokens, 0, model->config());  // the prompt must still fit
  } else {
    // The plan is resolved for the length generated: again when the context shortens it.
    options.max_new_tokens = new_tokens_within_context(prompt_tokens, wanted, model->config());
    if (plan && options.max_new_tokens != wanted)
      apply_attention_plan(*model->model, model->config(), *plan, prompt_tokens + options.max_new_tokens);
  }
  if (output == "text") {
    TextStream stream{tokenizer::StreamDecoder(*text_tokenizer), {}};
    options.on_token = [&stream](size_t sequence, int64_t token) { return stream(sequence, token); };
    generate_streamed(*model, prompt, options);
    stream.finish();
    return 0;
  }
  IdStream stream;
  options.on_token = [&stream](size_t sequence, int64_t token) { return stream(sequence, token); };
  stream.start(prompt);
  generate_streamed(*model, prompt, options);
  stream.finish();
  return 0;
}

int run_chat(const Arguments& args) {
  FlagParser parser("lamina chat",
                    "Talks with an Instruct model, answers streamed as they are generated. Type a message and press "
                    "enter; /system TEXT sets the system message, /reset forgets the conversation, /quit (or end of "
                    "input) leaves. Any other line starting with / is refused as an unknown command: to send a message "
                    "that starts with /, type it as // (the first / is dropped). When the conversation outgrows the "
                    "model's context, its oldest exchanges are dropped (and you are told).");
  parser.add_option("model", "DIR", "the model folder (with tokenizer.json)");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's, or the GGUF file's own)");
  parser.add_option("system", "TEXT", "the system message to start with");
  add_generation_flags(parser);
  if (!parser.parse(args)) return 0;
  const std::string directory = parser.required("model");
  const tokenizer::Tokenizer text_tokenizer = load_tokenizer(parser, directory);
  // The model's own template: its format, and for ChatML its default system message.
  const tokenizer::ChatOptions chat =
      tokenizer::detect_chat_options(parser.value("tokenizer").value_or(directory), text_tokenizer);
  generate::GenerateOptions options = sampling_options(parser, 512);
  options.rope_positions = read_rope_positions(parser, "lamina chat");
  const int64_t max_new_tokens = options.max_new_tokens;
  options.stop_tokens = widen(tokenizer::stop_token_ids(text_tokenizer, chat.format));
  const auto model = load_model(parser, directory);
  choose_prefill_chunk(parser, *model, directory, options);
  const std::optional<sparse::MoaPlan> plan = read_attention_plan(parser, model->config());
  const int64_t context_length = model->config().max_position_embeddings;
  tokenizer::Conversation history(text_tokenizer, chat, context_length);
  // A system message must leave room for a message and an answer.
  const auto system_fits = [&](const std::string& system) { return history.system_prompt_tokens(system) < context_length; };
  if (parser.is_set("system")) {
    if (!system_fits(*parser.value("system")))
      throw Error(str_cat("lamina chat: the --system message takes ", history.system_prompt_tokens(*parser.value("system")),
                          " tokens, which fills the model's context of ", context_length, " tokens"));
    history.set_system(*parser.value("system"));
  }
  std::fprintf(stderr, "lamina chat (%s format): /system TEXT, /reset, /quit (// starts a message with /)\n",
               tokenizer::chat_format_name(chat.format));

  // No longer line fits the context when tokens are at most 256 bytes long (real vocabularies'
  // tokens are shorter), and reading it whole could take any amount of memory.
  const size_t line_limit = std::max<size_t>(size_t(1) << 20, size_t(context_length) * 256);
  std::string line;
  bool too_long = false;
  while (true) {
    std::fprintf(stderr, "> ");
    std::fflush(stderr);
    if (!read_line(std::cin, line, line_limit, too_long)) break;
    if (too_long) {
      std::fprintf(stderr, "(line ignored: it is longer than %zu bytes, more than the model's context of %lld tokens holds)\n",
                   line_limit, static_cast<long long>(context_length));
      continue;
    }
    if (line.empty()) continue;
    if (line.rfind("//", 0) == 0) {
      line.erase(0, 1);  // an escaped slash: a message that starts with "/"
    } else if (line[0] == '/') {
      const ChatCommand command = parse_chat_command(line);
      if (command.kind == ChatCommand::quit) break;
      if (command.kind == ChatCommand::reset) {
        history.reset();
        std::fprintf(stderr, "(conversation cleared)\n");
      } else if (command.kind == ChatCommand::system && !system_fits(command.text)) {
        std::fprintf(stderr, "(system message not set: it takes %lld tokens, which fills the model's context of %lld)\n",
                     static_cast<long long>(history.system_prompt_tokens(command.text)), static_cast<long long>(context_length));
      } else if (command.kind == ChatCommand::system) {
        history.set_system(command.text);
        history.reset();
        std::fprintf(stderr, "(system message set; conversation cleared)\n");
      } else {
        std::fprintf(stderr, "(%s)\n", command.text.c_str());
      }
      continue;
    }
    const tokenizer::Conversation::Fit fit = history.add_user(line, max_new_tokens);
    if (!fit.accepted) {
      std::fprintf(stderr,
                   "(message not sent: with the chat format's headers and the system message it takes %lld tokens, "
                   "which leaves no room for an answer in the model's context of %lld tokens)\n",
                   static_cast<long long>(fit.alone_tokens), static_cast<long long>(context_length));
      continue;
    }
    if (fit.dropped_messages > 0)
      std::fprintf(stderr, "(dropped the %lld oldest messages to fit the model's context of %lld tokens)\n",
                   static_cast<long long>(fit.dropped_messages), static_cast<long long>(context_length));
    if (fit.new_tokens < max_new_tokens)
      std::fprintf(stderr, "(this answer can have at most %lld tokens: the conversation fills the rest of the context)\n",
                   static_cast<long long>(fit.new_tokens));
    options.max_new_tokens = fit.new_tokens;
    if (plan) apply_attention_plan(*model->model, model->config(), *plan, int64_t(fit.prompt.size()) + fit.new_tokens);
    TextStream stream{tokenizer::StreamDecoder(text_tokenizer), {}};
    options.on_token = [&stream](size_t sequence, int64_t token) { return stream(sequence, token); };
    generate_streamed(*model, widen(fit.prompt), options);
    stream.finish();
    history.add_assistant(stream.text);
  }
  return 0;
}

}  // namespace lamina::cli
