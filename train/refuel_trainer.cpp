#include "train/refuel_trainer.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "autograd/autograd.h"
#include "models/generate/batch.h"
#include "train/losses/advantages.h"
#include "train/losses/common.h"
#include "train/losses/logprobs.h"
#include "train/metrics.h"
#include "train/sampler.h"
#include "train/trainer.h"

extern char** environ;

namespace lamina::train {
namespace {

// SplitMix64's finaliser: the seeds of a step's draws, the fingerprint of the starts' fields.
uint64_t scramble(uint64_t value) {
  value += 0x9E3779B97F4A7C15ull;
  value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ull;
  value = (value ^ (value >> 27)) * 0x94D049BB133111EBull;
  return value ^ (value >> 31);
}

// Salts that keep the step's seeds unrelated to each other and to the epoch orders'.
constexpr uint64_t kTurnSalt = 0x7E0F0E1Dull, kBranchSalt = 0xB2A9C4E1ull;

uint64_t refuel_step_seed(uint64_t seed, int64_t step) { return scramble(seed ^ scramble(uint64_t(step) ^ kTurnSalt)); }

Tensor on(const Tensor& t, Device device) { return t.device() == device ? t : ops::to_device(t, device); }

// Eval mode (no LoRA dropout) for a scope, training mode again however it ends.
struct EvalScope {
  llama::LlamaForCausalLM& model;
  explicit EvalScope(llama::LlamaForCausalLM& m) : model(m) { model.eval(); }
  ~EvalScope() { model.train(); }
};

json::Value messages_json(const std::vector<tokenizer::Message>& messages, size_t count) {
  json::Array out;
  for (size_t i = 0; i < count && i < messages.size(); ++i) {
    json::Value message = json::Object{};
    message.set("role", messages[i].role);
    message.set("content", valid_utf8_text(messages[i].content));
    out.push_back(std::move(message));
  }
  return out;
}

// ---- the scripted user: the start line's "user_turns".
class ScriptedUser : public UserSimulator {
 public:
  std::vector<std::string> next_turns(const std::vector<UserTurnRequest>& requests) override {
    std::vector<std::string> out;
    for (const UserTurnRequest& request : requests) {
      const std::vector<std::string>& script = request.start->user_turns;
      LAMINA_CHECK(request.turn >= 1 && request.turn <= int64_t(script.size()), "user simulator script: line ",
                   request.start->line, " has ", script.size(), " \"user_turns\", and a message after assistant turn ",
                   request.turn, " was asked for");
      out.push_back(script[size_t(request.turn - 1)]);
    }
    return out;
  }
  void check(const DialogueStart& start, int64_t turns, const std::string& source) const override {
    LAMINA_CHECK(int64_t(start.user_turns.size()) >= turns - 1, source, ":", start.line, ": has ",
                 start.user_turns.size(), " \"user_turns\", and --turns ", turns, " needs ", turns - 1,
                 " (the user's message after each assistant turn but the last)");
  }
  std::string spec() const override { return "script"; }
};

// ---- an external program as the user (the protocol in the header).
class CommandUser : public UserSimulator {
 public:
  explicit CommandUser(std::string command) : command_(std::move(command)) {}

  std::vector<std::string> next_turns(const std::vector<UserTurnRequest>& requests) override {
    std::string input;
    for (const UserTurnRequest& request : requests) {
      json::Value line = json::Object{};
      line.set("messages", messages_json(*request.messages, request.messages->size()));
      line.set("turn", request.turn);
      for (const auto& [key, value] : request.start->fields.as_object())
        if (key != "messages" && key != "turn") line.set(key, value);
      input += line.dump() + "\n";
    }
    const std::string output = run(input);
    std::vector<std::string> turns;
    size_t begin = 0;
    int64_t number = 0;
    while (begin < output.size()) {
      size_t end = output.find('\n', begin);
      if (end == std::string::npos) end = output.size();
      std::string text = output.substr(begin, end - begin);
      begin = end + 1;
      if (!text.empty() && text.back() == '\r') text.pop_back();
      ++number;
      LAMINA_CHECK(turns.size() < requests.size(), "user simulator command '", command_, "': output line ", number,
                   " is beyond the ", requests.size(), " dialogues it was given: ", text.substr(0, 200));
      json::Value value;
      try {
        value = json::parse(text, "user simulator output");
      } catch (const Error& error) {
        throw Error(str_cat("user simulator command '", command_, "': output line ", number, " is not JSON (",
                            error.what(), "): ", text.substr(0, 200)));
      }
      const json::Value* content = value.is_object() ? value.find("content") : &value;
      LAMINA_CHECK(content != nullptr && content->is_string(), "user simulator command '", command_, "': output line ",
                   number, " is neither a string nor {\"content\": string}: ", text.substr(0, 200));
      turns.push_back(content->as_string());
    }
    LAMINA_CHECK(turns.size() == requests.size(), "user simulator command '", command_, "' wrote ", turns.size(),
                 " lines for the ", requests.size(), " dialogues it was given (one line per input line, in order)");
    return turns;
  }
  std::string spec() const override { return "command=" + command_; }

 private:
  // Runs the command with `input` as its stdin (an unlinked temporary file, so that neither side
  // waits on a full pipe) and returns its stdout; an error when it does not start or fails.
  std::string run(const std::string& input) const {
    std::string name = (std::filesystem::temp_directory_path() / "lamina-user-XXXXXX").string();
    const int input_fd = ::mkostemp(name.data(), O_CLOEXEC);
    LAMINA_CHECK(input_fd >= 0, "user simulator command '", command_, "': cannot make a temporary file: ",
                 std::strerror(errno));
    ::unlink(name.c_str());
    struct Closer {
      int fd;
      ~Closer() {
        if (fd >= 0) ::close(fd);
      }
    } input_closer{input_fd};
    for (size_t written = 0; written < input.size();) {
      const ssize_t n = ::write(input_fd, input.data() + written, input.size() - written);
      if (n < 0 && errno == EINTR) continue;
      LAMINA_CHECK(n > 0, "user simulator command '", command_, "': cannot write its input: ", std::strerror(errno));
      written += size_t(n);
    }
    ::lseek(input_fd, 0, SEEK_SET);
    int pipe_fds[2];
    LAMINA_CHECK(::pipe2(pipe_fds, O_CLOEXEC) == 0, "user simulator command '", command_,
                 "': cannot make a pipe: ", std::strerror(errno));
    Closer read_end{pipe_fds[0]}, write_end{pipe_fds[1]};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, input_fd, 0);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
    const char* argv[] = {"/bin/sh", "-c", command_.c_str(), nullptr};
    pid_t pid = 0;
    const int spawned = posix_spawn(&pid, "/bin/sh", &actions, nullptr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    LAMINA_CHECK(spawned == 0, "user simulator command '", command_, "' does not start: ", std::strerror(spawned));
    ::close(write_end.fd);
    write_end.fd = -1;
    std::string output;
    char buffer[4096];
    for (;;) {
      const ssize_t n = ::read(read_end.fd, buffer, sizeof buffer);
      if (n > 0) {
        output.append(buffer, size_t(n));
      } else if (n == 0 || errno != EINTR) {
        break;
      }
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
      throw Error(str_cat("user simulator command '", command_, "' exited with status ", WEXITSTATUS(status),
                          WEXITSTATUS(status) == 127 ? " (the shell could not run it)" : ""));
    if (WIFSIGNALED(status))
      throw Error(str_cat("user simulator command '", command_, "' was killed by signal ", WTERMSIG(status)));
    return output;
  }

  std::string command_;
};

// ---- a lamina model as the user.
class ModelUser : public UserSimulator {
 public:
  ModelUser(std::shared_ptr<const llama::LlamaForCausalLM> model, std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
            tokenizer::ChatOptions chat, int64_t max_new_tokens, std::string spec)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)), chat_(std::move(chat)),
        max_new_tokens_(max_new_tokens), spec_(std::move(spec)) {
    LAMINA_CHECK(model_ != nullptr && tokenizer_ != nullptr, "user simulator ", spec_, ": no model or tokenizer");
    LAMINA_CHECK(max_new_tokens_ >= 1, "user simulator ", spec_, ": max_new_tokens must be at least 1");
    chat_.add_generation_prompt = true;
    for (int32_t id : tokenizer::stop_token_ids(*tokenizer_, chat_.format)) stops_.push_back(id);
  }

  std::vector<std::string> next_turns(const std::vector<UserTurnRequest>& requests) override {
    std::vector<std::vector<int64_t>> inputs;
    generate::BatchOptions batch;
    const int64_t context = model_->config().max_position_embeddings;
    for (const UserTurnRequest& request : requests) {
      // The simulator answers as "assistant" to a dialogue in which the policy is the "user".
      std::vector<tokenizer::Message> swapped = *request.messages;
      for (tokenizer::Message& message : swapped)
        message.role = message.role == "user" ? "assistant" : message.role == "assistant" ? "user" : message.role;
      const std::vector<int32_t> ids = tokenizer::render_chat(*tokenizer_, swapped, chat_).ids;
      LAMINA_CHECK(int64_t(ids.size()) + max_new_tokens_ <= context, "user simulator ", spec_, ": the dialogue of line ",
                   request.start->line, " holds ", ids.size(), " tokens after assistant turn ", request.turn,
                   ", which with ", max_new_tokens_, " new tokens exceed its context (", context, ")");
      inputs.emplace_back(ids.begin(), ids.end());
      batch.prompt_stop_tokens.push_back(stops_);
    }
    batch.slots = int64_t(inputs.size());
    generate::GenerateOptions generation;
    generation.max_new_tokens = max_new_tokens_;  // greedy: temperature 0
    generate::BatchResult result;
    {
      autograd::NoGradGuard no_grad;
      result = generate::generate_batch(*model_, inputs, generation, batch);
    }
    std::vector<std::string> out;
    tokenizer::DecodeOptions decode;
    decode.skip_special = true;
    for (const std::vector<int64_t>& tokens : result.tokens) {
      const std::vector<int32_t> ids(tokens.begin(), tokens.end());
      out.push_back(tokenizer_->decode(ids, decode));
    }
    return out;
  }
  std::string spec() const override { return spec_; }

 private:
  std::shared_ptr<const llama::LlamaForCausalLM> model_;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  tokenizer::ChatOptions chat_;
  int64_t max_new_tokens_;
  std::string spec_;
  std::vector<int64_t> stops_;
};

}  // namespace

// ---- dialogue starts

DialogueStart parse_dialogue_start(const json::Value& line, tokenizer::ChatFormat format, const std::string& where) {
  LAMINA_CHECK(line.is_object(), where, ": expected a JSON object");
  const json::Value* prompt = line.find("prompt");
  const json::Value* messages = line.find("messages");
  LAMINA_CHECK(prompt == nullptr || messages == nullptr, where,
               ": give the dialogue's start as \"prompt\" or as \"messages\", not both");
  LAMINA_CHECK(prompt != nullptr || messages != nullptr, where,
               ": a line needs the dialogue's start: {\"prompt\": text or messages} or {\"messages\": [...]}");
  DialogueStart start;
  const json::Value& opening = prompt != nullptr ? *prompt : *messages;
  const std::vector<std::string> roles = tokenizer::chat_roles(format);
  if (opening.is_string()) {
    start.messages.push_back({"user", opening.as_string()});
  } else {
    LAMINA_CHECK(opening.is_array() && !opening.as_array().empty(), where, ": \"", prompt ? "prompt" : "messages",
                 "\" must be text or a non-empty list of messages");
    for (const json::Value& message : opening.as_array()) {
      LAMINA_CHECK(message.is_object(), where, ": a message must be an object {\"role\", \"content\"}");
      const json::Value* role = message.find("role");
      const json::Value* content = message.find("content");
      LAMINA_CHECK(role != nullptr && role->is_string() && content != nullptr && content->is_string(), where,
                   ": a message needs a \"role\" and a \"content\", both text");
      LAMINA_CHECK(std::find(roles.begin(), roles.end(), role->as_string()) != roles.end(), where, ": role '",
                   role->as_string(), "' is not one of the chat format's (", tokenizer::chat_format_name(format), ")");
      start.messages.push_back({role->as_string(), content->as_string()});
    }
  }
  LAMINA_CHECK(start.messages.back().role == "user", where,
               ": the dialogue's start must end with the user's message (the assistant speaks next), not the ",
               start.messages.back().role, "'s");
  if (const json::Value* turns = line.find("user_turns")) {
    LAMINA_CHECK(turns->is_array(), where, ": \"user_turns\" must be a list of strings");
    for (const json::Value& turn : turns->as_array()) {
      LAMINA_CHECK(turn.is_string(), where, ": \"user_turns\" must be a list of strings");
      start.user_turns.push_back(turn.as_string());
    }
  }
  for (const auto& [key, value] : line.as_object())
    if (key != "prompt" && key != "messages") start.fields.set(key, value);
  return start;
}

// ---- rendering

DialogueRenderer::DialogueRenderer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer, tokenizer::ChatOptions options)
    : tokenizer_(std::move(tokenizer)), options_(std::move(options)) {
  LAMINA_CHECK(tokenizer_ != nullptr, "refuel: no tokenizer");
}

std::vector<int32_t> DialogueRenderer::start(const std::vector<tokenizer::Message>& messages) const {
  tokenizer::ChatOptions options = options_;
  options.add_generation_prompt = true;
  return tokenizer::render_chat(*tokenizer_, messages, options).ids;
}

std::vector<int32_t> DialogueRenderer::after_assistant(const std::vector<tokenizer::Message>& history,
                                                       const std::vector<int32_t>& assistant_ids,
                                                       const std::string& user) const {
  LAMINA_CHECK(!history.empty() && history.back().role == "assistant",
               "refuel: a user turn follows an assistant turn, and the dialogue does not end with one");
  // The dialogue closed after the assistant's turn, and with the user's message and the next
  // generation prompt: the second extends the first in the formats lamina renders.
  tokenizer::ChatOptions closed = options_;
  closed.add_generation_prompt = false;
  const tokenizer::ChatTokens before = tokenizer::render_chat(*tokenizer_, history, closed);
  std::vector<tokenizer::Message> extended = history;
  extended.push_back({"user", user});
  tokenizer::ChatOptions open = options_;
  open.add_generation_prompt = true;
  const std::vector<int32_t> after = tokenizer::render_chat(*tokenizer_, extended, open).ids;
  LAMINA_CHECK(after.size() >= before.ids.size() && std::equal(before.ids.begin(), before.ids.end(), after.begin()),
               "refuel: the ", tokenizer::chat_format_name(options_.format),
               " chat format does not render a dialogue's next turn by appending to it");
  // The assistant turn's last id in the rendering is its end-of-turn token; what the format
  // writes after it (ChatML's newline) comes before the user's message.
  int64_t last = -1;
  for (size_t i = 0; i < before.assistant_mask.size(); ++i)
    if (before.assistant_mask[i]) last = int64_t(i);
  LAMINA_CHECK(last >= 0, "refuel: the chat format marks no assistant tokens");
  const int32_t end_of_turn = before.ids[size_t(last)];
  std::vector<int32_t> out;
  if (assistant_ids.empty() || assistant_ids.back() != end_of_turn) out.push_back(end_of_turn);
  out.insert(out.end(), before.ids.begin() + last + 1, before.ids.end());
  out.insert(out.end(), after.begin() + long(before.ids.size()), after.end());
  return out;
}

std::vector<int64_t> DialogueRenderer::stop_tokens() const {
  std::vector<int64_t> out;
  for (int32_t id : tokenizer::stop_token_ids(*tokenizer_, options_.format)) out.push_back(id);
  return out;
}

std::string DialogueRenderer::text(const std::vector<int32_t>& ids) const {
  tokenizer::DecodeOptions options;
  options.skip_special = true;
  return tokenizer_->decode(ids, options);
}

std::vector<uint8_t> turn_mask(const Dialogue& dialogue, int64_t turn, int64_t length) {
  LAMINA_CHECK(turn >= 1 && turn <= int64_t(dialogue.turns.size()), "refuel: the dialogue has ", dialogue.turns.size(),
               " assistant turns, not a turn ", turn);
  const int64_t size = length < 0 ? int64_t(dialogue.ids.size()) : std::min<int64_t>(length, int64_t(dialogue.ids.size()));
  std::vector<uint8_t> mask(size_t(size), 0);
  const auto [begin, end] = dialogue.turns[size_t(turn - 1)];
  for (int64_t i = begin; i < std::min(end, size); ++i) mask[size_t(i)] = 1;
  return mask;
}

std::unique_ptr<UserSimulator> make_user_simulator(const std::string& spec) {
  if (spec == "script") return std::make_unique<ScriptedUser>();
  if (spec.rfind("command=", 0) == 0) {
    std::string command = spec.substr(8);
    // A command written in double quotes, as the reward spec writes one, is unquoted.
    if (command.size() >= 2 && command.front() == '"' && command.back() == '"') command = command.substr(1, command.size() - 2);
    LAMINA_CHECK(!command.empty(), "user simulator 'command=': the command is empty");
    return std::make_unique<CommandUser>(command);
  }
  if (spec.rfind("model=", 0) == 0)
    throw Error("user simulator 'model=DIR': the model is loaded by the caller and given to make_model_user_simulator");
  throw Error(str_cat("user simulator '", spec, "' is not one of: script, command=CMD, model=DIR"));
}

std::unique_ptr<UserSimulator> make_model_user_simulator(std::shared_ptr<const llama::LlamaForCausalLM> model,
                                                         std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                                                         tokenizer::ChatOptions chat, int64_t max_new_tokens,
                                                         std::string spec) {
  return std::make_unique<ModelUser>(std::move(model), std::move(tokenizer), std::move(chat), max_new_tokens,
                                     std::move(spec));
}

json::Value RefuelOptions::to_json() const {
  json::Value out = json::Object{};
  out.set("turns", turns);
  json::Value overrides = json::Object{};
  for (const auto& [name, value] : params) overrides.set(name, value);
  out.set("params", std::move(overrides));
  out.set("temperature", temperature);
  out.set("top_p", top_p);
  out.set("top_k", top_k);
  out.set("max_new_tokens", max_new_tokens);
  return out;
}

// ---- the objective

struct RefuelObjective::Impl {
  RefuelOptions options;
  const LossDefinition* definition = nullptr;
  Hyperparameters params;
  std::vector<DialogueStart> starts, validation;
  std::vector<std::vector<int32_t>> start_ids, validation_ids;
  DialogueRenderer renderer;
  std::unique_ptr<Reward> reward;
  std::unique_ptr<UserSimulator> user;
  int64_t context_length = 0;
  int64_t starts_per_step = 0, starts_per_forward = 0;
  uint64_t seed = 0;
  std::string output_dir;
  DataFingerprint data_fingerprint;
  std::unique_ptr<EpochSampler> sampler;
  int64_t steps_done = 0;
  bool restored = false;
  mutable std::unique_ptr<MetricsLog> samples;

  Impl(RefuelOptions o, DialogueRenderer r)
      : options(std::move(o)), definition(&find_loss("refuel")), params(default_hyperparameters(*definition)),
        renderer(std::move(r)) {}

  // Rolls `dialogues` (each with its start's ids) for H assistant turns. Dialogue d forks at
  // turn branch_turn[d] (0: never) into two, which continue apart; `temperature` 0 draws greedily.
  // Every draw's seed is made of `seed_base`, the turn and the dialogue's place `slot` (2 per
  // start: the second branch takes the odd one), so that a dialogue's draws do not depend on what
  // else the batch holds.
  struct Rolling {
    Dialogue dialogue;
    const DialogueStart* start = nullptr;
    int64_t slot = 0;
  };
  std::vector<Rolling> roll(llama::LlamaForCausalLM& model, std::vector<Rolling> rows,
                            const std::vector<int64_t>& branch_turn, double temperature, uint64_t seed_base) {
    const std::vector<int64_t> stops = renderer.stop_tokens();
    for (int64_t turn = 1; turn <= options.turns; ++turn) {
      // Fork the dialogues whose branch turn this is: two copies, the second on the odd slot.
      std::vector<Rolling> next;
      for (Rolling& row : rows) {
        const int64_t pair = row.slot / 2;
        const bool forks = !branch_turn.empty() && branch_turn[size_t(pair)] == turn && row.slot % 2 == 0;
        next.push_back(row);
        if (forks) {
          next.push_back(row);
          next.back().slot = row.slot + 1;
        }
      }
      rows = std::move(next);
      std::vector<std::vector<int64_t>> inputs;
      generate::BatchOptions batch;
      for (const Rolling& row : rows) {
        const int64_t length = int64_t(row.dialogue.ids.size());
        LAMINA_CHECK(length + options.max_new_tokens <= context_length, "refuel: the dialogue of line ",
                     row.start->line, " holds ", length, " tokens before assistant turn ", turn, ", which with ",
                     options.max_new_tokens, " new tokens (--max-new-tokens) exceeds the model's context (",
                     context_length, "): lower --turns or --max-new-tokens, or shorten the line");
        inputs.emplace_back(row.dialogue.ids.begin(), row.dialogue.ids.end());
        batch.prompt_stop_tokens.push_back(stops);
        batch.seed_indices.push_back(uint64_t(row.slot));
      }
      batch.slots = int64_t(inputs.size());
      generate::GenerateOptions generation;
      generation.max_new_tokens = options.max_new_tokens;
      generation.sampling.temperature = temperature;
      generation.sampling.top_p = options.top_p;
      generation.sampling.top_k = options.top_k;
      generation.sampling.seed = scramble(seed_base ^ scramble(uint64_t(turn) ^ kBranchSalt));
      std::vector<int64_t> last_token(inputs.size(), -1);
      generation.on_token = [&](size_t row, int64_t token) {
        last_token[row] = token;
        return true;
      };
      generate::BatchResult result;
      {
        autograd::NoGradGuard no_grad;
        const EvalScope eval(model);
        result = generate::generate_batch(model, inputs, generation, batch);
      }
      std::vector<UserTurnRequest> requests;
      for (size_t r = 0; r < rows.size(); ++r) {
        Dialogue& dialogue = rows[r].dialogue;
        std::vector<int32_t> answer(result.tokens[r].begin(), result.tokens[r].end());
        if (result.finish_reasons[r] == "stop" && last_token[r] >= 0) answer.push_back(int32_t(last_token[r]));
        const int64_t begin = int64_t(dialogue.ids.size());
        dialogue.ids.insert(dialogue.ids.end(), answer.begin(), answer.end());
        dialogue.turns.emplace_back(begin, int64_t(dialogue.ids.size()));
        dialogue.finish_reasons.push_back(result.finish_reasons[r] == "stop" ? "stop" : "length");
        dialogue.messages.push_back({"assistant", renderer.text(answer)});
        requests.push_back({rows[r].start, &dialogue.messages, turn});
      }
      if (turn == options.turns) break;
      const std::vector<std::string> replies = user->next_turns(requests);
      LAMINA_CHECK(replies.size() == rows.size(), "refuel: the user simulator gave ", replies.size(), " messages for ",
                   rows.size(), " dialogues");
      for (size_t r = 0; r < rows.size(); ++r) {
        Dialogue& dialogue = rows[r].dialogue;
        const auto [begin, end] = dialogue.turns.back();
        const std::vector<int32_t> answer(dialogue.ids.begin() + begin, dialogue.ids.begin() + end);
        const std::vector<int32_t> joint = renderer.after_assistant(dialogue.messages, answer, replies[r]);
        dialogue.ids.insert(dialogue.ids.end(), joint.begin(), joint.end());
        dialogue.messages.push_back({"user", replies[r]});
      }
    }
    return rows;
  }

  Rollout roll_step(llama::LlamaForCausalLM& model, const std::vector<int64_t>& indices, int64_t step) {
    const uint64_t step_seed = refuel_step_seed(seed, step);
    Rollout rollout;
    std::vector<Rolling> rows;
    for (size_t k = 0; k < indices.size(); ++k) {
      const int64_t index = indices[k];
      rollout.start_of_pair.push_back(index);
      // h uniform in 1..H, from the step's seed and the start's place in the step.
      rollout.branch_turn.push_back(1 + int64_t(scramble(step_seed ^ scramble(uint64_t(k) + 1)) % uint64_t(options.turns)));
      Rolling row;
      row.start = &starts[size_t(index)];
      row.slot = int64_t(2 * k);
      row.dialogue.ids = start_ids[size_t(index)];
      row.dialogue.messages = starts[size_t(index)].messages;
      rows.push_back(std::move(row));
    }
    for (Rolling& row : roll(model, std::move(rows), rollout.branch_turn, options.temperature, step_seed))
      rollout.dialogues.push_back(std::move(row.dialogue));
    LAMINA_CHECK(rollout.dialogues.size() == 2 * indices.size(), "refuel: ", rollout.dialogues.size(),
                 " dialogues rolled for ", indices.size(), " starts");
    return rollout;
  }

  RewardScores score(const std::vector<Dialogue>& dialogues, const std::vector<const DialogueStart*>& of) const {
    std::vector<RewardInput> inputs;
    for (size_t d = 0; d < dialogues.size(); ++d) {
      const Dialogue& dialogue = dialogues[d];
      const auto [begin, end] = dialogue.turns.back();
      RewardInput input;
      input.prompt = messages_json(dialogue.messages, dialogue.messages.size() - 1);
      input.completion = dialogue.messages.back().content;
      input.completion_tokens = end - begin;
      input.fields = of[d]->fields;
      inputs.push_back(std::move(input));
    }
    RewardScores scores = reward->score(inputs);
    LAMINA_CHECK(scores.total.size() == dialogues.size(), "refuel: the reward gave ", scores.total.size(),
                 " scores for ", dialogues.size(), " dialogues");
    for (size_t i = 0; i < scores.total.size(); ++i)
      LAMINA_CHECK(std::isfinite(scores.total[i]), "refuel: the reward of dialogue ", i, " is not finite (",
                   scores.total[i], ")");
    return scores;
  }

  // Dialogues `rows` up to the end of their turn h as a right-padded batch, with the turn-h mask.
  std::pair<Tensor, Tensor> batch_of(const Rollout& rollout, size_t first_pair, size_t end_pair, int64_t& tokens) const {
    int64_t width = 0;
    for (size_t pair = first_pair; pair < end_pair; ++pair)
      for (size_t branch = 0; branch < 2; ++branch) {
        const Dialogue& dialogue = rollout.dialogues[2 * pair + branch];
        width = std::max(width, dialogue.turns[size_t(rollout.branch_turn[pair] - 1)].second);
      }
    const int64_t count = int64_t(2 * (end_pair - first_pair));
    std::vector<int64_t> ids(size_t(count * width), options.pad_id);
    std::vector<uint8_t> mask(size_t(count * width), 0);
    for (size_t pair = first_pair; pair < end_pair; ++pair)
      for (size_t branch = 0; branch < 2; ++branch) {
        const Dialogue& dialogue = rollout.dialogues[2 * pair + branch];
        const int64_t turn = rollout.branch_turn[pair];
        const int64_t length = dialogue.turns[size_t(turn - 1)].second;
        const std::vector<uint8_t> row_mask = turn_mask(dialogue, turn, length);
        const size_t row = (2 * (pair - first_pair) + branch) * size_t(width);
        std::copy(dialogue.ids.begin(), dialogue.ids.begin() + length, ids.begin() + long(row));
        std::copy(row_mask.begin(), row_mask.end(), mask.begin() + long(row));
        tokens += length;
      }
    return {Tensor::from_vector(ids, {count, width}, DType::i64), Tensor::from_vector(mask, {count, width}, DType::boolean)};
  }

  void write_samples(int64_t step, const Rollout& rollout, const RewardScores& scores) {
    if (output_dir.empty()) return;
    if (!samples)
      samples = std::make_unique<MetricsLog>((std::filesystem::path(output_dir) / "samples.jsonl").string(),
                                             restored ? steps_done : -1);
    for (size_t pair = 0; pair < rollout.start_of_pair.size(); ++pair) {
      const DialogueStart& start = starts[size_t(rollout.start_of_pair[pair])];
      const int64_t turn = rollout.branch_turn[pair];
      json::Value line = json::Object{};
      line.set("step", step);
      line.set("prompt_index", rollout.start_of_pair[pair]);
      line.set("line", start.line);
      line.set("turn", turn);
      for (size_t branch = 0; branch < 2; ++branch) {
        const size_t d = 2 * pair + branch;
        const Dialogue& dialogue = rollout.dialogues[d];
        json::Value entry = json::Object{};
        entry.set("messages", messages_json(dialogue.messages, dialogue.messages.size()));
        entry.set("reward", scores.total[d]);
        if (!scores.parts.empty()) {
          json::Value parts = json::Object{};
          for (const auto& [name, values] : scores.parts) parts.set(name, values[d]);
          entry.set("rewards", std::move(parts));
        }
        const auto [begin, end] = dialogue.turns[size_t(turn - 1)];
        entry.set("turn_tokens", end - begin);
        entry.set("finish_reason", dialogue.finish_reasons[size_t(turn - 1)]);
        line.set(branch == 0 ? "first" : "second", std::move(entry));
      }
      samples->write(line);
    }
  }

  StepResult run_step(llama::LlamaForCausalLM& model, int64_t step) {
    const std::vector<int64_t> indices = sampler->next(starts_per_step);
    const Rollout rollout = roll_step(model, indices, step);
    std::vector<const DialogueStart*> of;
    for (int64_t index : indices) of.insert(of.end(), 2, &starts[size_t(index)]);
    const RewardScores scores = score(rollout.dialogues, of);

    StepResult result;
    MetricsAverage loss_metrics;
    const Device device = model.device();
    const double temperature = options.temperature > 0 ? options.temperature : 1.0;
    const size_t pairs = indices.size();
    for (size_t begin = 0; begin < pairs; begin += size_t(starts_per_forward)) {
      const size_t end = std::min(pairs, begin + size_t(starts_per_forward));
      const auto [host_ids, host_mask] = batch_of(rollout, begin, end, result.tokens);
      const Tensor ids = on(host_ids, device), mask = on(host_mask, device);
      const TokenLogps policy = completion_logprobs(model.forward(ids), ids, mask, temperature);
      const Tensor sums = reduce_logprobs(policy.logps, policy.mask, LogprobReduction::sum);
      std::vector<int64_t> first, second;
      std::vector<double> first_rewards, second_rewards;
      for (size_t pair = begin; pair < end; ++pair) {
        first.push_back(int64_t(2 * (pair - begin)));
        second.push_back(int64_t(2 * (pair - begin) + 1));
        first_rewards.push_back(scores.total[2 * pair]);
        second_rewards.push_back(scores.total[2 * pair + 1]);
      }
      const int64_t count = int64_t(end - begin);
      const Tensor first_index = on(Tensor::from_vector(first, {count}, DType::i64), sums.device());
      const Tensor second_index = on(Tensor::from_vector(second, {count}, DType::i64), sums.device());
      // π_t is the policy that sampled the batch (one update per batch): its log-probs are the
      // policy's, without gradient.
      const Tensor iterate = sums.detach();
      LossInputs inputs;
      inputs.set("policy_first_logps", index_select(sums, 0, first_index));
      inputs.set("policy_second_logps", index_select(sums, 0, second_index));
      inputs.set("iterate_first_logps", index_select(iterate, 0, first_index));
      inputs.set("iterate_second_logps", index_select(iterate, 0, second_index));
      inputs.set("first_rewards", tensor_like(first_rewards, sums));
      inputs.set("second_rewards", tensor_like(second_rewards, sums));
      const LossResult loss = compute_loss(*definition, inputs, params);
      const double weight = double(count) / double(pairs);
      result.loss += weight * loss.loss.item<double>();
      mul(loss.loss, weight).backward();
      loss_metrics.add(loss.metrics, weight);
    }
    for (const auto& [name, value] : loss_metrics.entries()) result.metrics.set(name, value);
    add_rollout_metrics(result.metrics, rollout, scores);
    write_samples(step, rollout, scores);
    steps_done = step;
    return result;
  }

  void add_rollout_metrics(json::Value& metrics, const Rollout& rollout, const RewardScores& scores) const {
    metrics.set("reward", mean_of(scores.total));
    metrics.set("reward_std", sample_std(scores.total));
    double equal = 0;
    for (size_t pair = 0; pair < rollout.start_of_pair.size(); ++pair)
      equal += std::abs(scores.total[2 * pair] - scores.total[2 * pair + 1]) <= 1e-8 ? 1.0 : 0.0;
    metrics.set("frac_reward_zero_std", equal / double(rollout.start_of_pair.size()));
    for (const auto& [name, values] : scores.parts) metrics.set(str_cat("rewards/", name, "/mean"), mean_of(values));
    std::vector<double> lengths, dialogue_tokens;
    double clipped = 0;
    for (size_t d = 0; d < rollout.dialogues.size(); ++d) {
      const Dialogue& dialogue = rollout.dialogues[d];
      const int64_t turn = rollout.branch_turn[d / 2];
      const auto [begin, end] = dialogue.turns[size_t(turn - 1)];
      lengths.push_back(double(end - begin));
      clipped += dialogue.finish_reasons[size_t(turn - 1)] == "length" ? 1.0 : 0.0;
      dialogue_tokens.push_back(double(dialogue.ids.size()));
    }
    metrics.set("completions/mean_length", mean_of(lengths));
    metrics.set("completions/min_length", *std::min_element(lengths.begin(), lengths.end()));
    metrics.set("completions/max_length", *std::max_element(lengths.begin(), lengths.end()));
    metrics.set("completions/clipped_ratio", clipped / double(lengths.size()));
    std::vector<double> turns(rollout.branch_turn.begin(), rollout.branch_turn.end());
    metrics.set("turn_h/mean", mean_of(turns));
    metrics.set("dialogue/mean_tokens", mean_of(dialogue_tokens));
  }
};

RefuelObjective::RefuelObjective(RefuelOptions options, const TrainOptions& train_options,
                                 std::vector<DialogueStart> starts, DialogueRenderer renderer,
                                 std::unique_ptr<Reward> reward, std::unique_ptr<UserSimulator> user,
                                 int64_t context_length, std::vector<DialogueStart> validation) {
  impl_ = std::make_unique<Impl>(std::move(options), std::move(renderer));
  Impl& impl = *impl_;
  LAMINA_CHECK(reward != nullptr, "refuel: no reward");
  LAMINA_CHECK(user != nullptr, "refuel: no user simulator");
  LAMINA_CHECK(!starts.empty(), "refuel: no dialogue starts");
  const RefuelOptions& o = impl.options;
  LAMINA_CHECK(o.turns >= 1, "refuel: turns (--turns) must be at least 1, not ", o.turns);
  LAMINA_CHECK(o.temperature > 0, "refuel: the temperature must be above 0 (the two turn-h answers are two draws), not ",
               o.temperature);
  LAMINA_CHECK(o.max_new_tokens >= 1, "refuel: max_new_tokens must be at least 1, not ", o.max_new_tokens);
  LAMINA_CHECK(context_length >= 1, "refuel: the model's context length must be positive");
  generate::SamplingOptions sampling;
  sampling.temperature = o.temperature;
  sampling.top_p = o.top_p;
  sampling.top_k = o.top_k;
  sampling.validate();
  for (const auto& [name, value] : o.params) impl.params.set(name, std::string_view(value));
  impl.reward = std::move(reward);
  impl.user = std::move(user);
  impl.starts = std::move(starts);
  impl.validation = std::move(validation);
  impl.context_length = context_length;
  for (const DialogueStart& start : impl.starts) impl.user->check(start, o.turns, "prompts");
  for (const DialogueStart& start : impl.validation) impl.user->check(start, o.turns, "validation");
  for (const DialogueStart& start : impl.starts) impl.start_ids.push_back(impl.renderer.start(start.messages));
  for (const DialogueStart& start : impl.validation) impl.validation_ids.push_back(impl.renderer.start(start.messages));
  impl.seed = train_options.seed;
  impl.output_dir = train_options.output_dir;
  impl.starts_per_step = train_options.batch_size;
  impl.starts_per_forward = train_options.micro_batch_size == 0 ? train_options.batch_size : train_options.micro_batch_size;

  // The starts' ids, their fields (the script among them), in order, as the fingerprint.
  std::vector<Example> examples;
  for (const std::vector<int32_t>& ids : impl.start_ids) {
    Example example;
    example.ids = ids;
    example.loss_mask.assign(ids.size(), 0);
    examples.push_back(std::move(example));
  }
  impl.data_fingerprint = train::fingerprint(examples);
  for (const DialogueStart& start : impl.starts)
    for (const char c : start.fields.dump()) impl.data_fingerprint.hash = scramble(impl.data_fingerprint.hash ^ uint8_t(c));
  impl.sampler = std::make_unique<EpochSampler>(int64_t(impl.starts.size()), impl.seed);
}

RefuelObjective::~RefuelObjective() = default;

StepResult RefuelObjective::step(llama::LlamaWithHead& model, int64_t step) {
  return impl_->run_step(causal_lm(model, "refuel training"), step);
}

RefuelObjective::Rollout RefuelObjective::roll(llama::LlamaForCausalLM& model, const std::vector<int64_t>& starts,
                                               int64_t step) {
  for (int64_t index : starts)
    LAMINA_CHECK(index >= 0 && index < int64_t(impl_->starts.size()), "refuel: no start ", index);
  return impl_->roll_step(model, starts, step);
}

bool RefuelObjective::has_validation() const { return !impl_->validation.empty(); }

json::Value RefuelObjective::validate(llama::LlamaWithHead& trained) {
  Impl& impl = *impl_;
  llama::LlamaForCausalLM& model = causal_lm(trained, "refuel training");
  std::vector<Impl::Rolling> rows;
  std::vector<const DialogueStart*> of;
  for (size_t i = 0; i < impl.validation.size(); ++i) {
    Impl::Rolling row;
    row.start = &impl.validation[i];
    row.slot = int64_t(2 * i);
    row.dialogue.ids = impl.validation_ids[i];
    row.dialogue.messages = impl.validation[i].messages;
    rows.push_back(std::move(row));
    of.push_back(&impl.validation[i]);
  }
  // Greedy: nothing is drawn, so the seed does not matter.
  std::vector<Dialogue> dialogues;
  for (Impl::Rolling& row : impl.roll(model, std::move(rows), {}, 0.0, 0)) dialogues.push_back(std::move(row.dialogue));
  const RewardScores scores = impl.score(dialogues, of);
  std::vector<double> lengths;
  for (const Dialogue& dialogue : dialogues) lengths.push_back(double(dialogue.turns.back().second - dialogue.turns.back().first));
  return validation_reward_metrics(scores, lengths);
}

json::Value RefuelObjective::cursor() const {
  const Impl& impl = *impl_;
  // A checkpoint is being written: the samples of the steps it covers are made as durable as it.
  if (impl.samples) impl.samples->sync();
  return step_cursor(*impl.sampler, impl.steps_done);
}

void RefuelObjective::restore(const json::Value& cursor) {
  Impl& impl = *impl_;
  impl.steps_done = restore_step_cursor(*impl.sampler, cursor);
  impl.restored = true;
}

DataFingerprint RefuelObjective::fingerprint() const { return impl_->data_fingerprint; }

json::Value RefuelObjective::settings() const {
  json::Value out = impl_->options.to_json();
  out.set("loss", impl_->definition->name);
  out.set("reward", impl_->reward->spec());
  out.set("user_simulator", impl_->user->spec());
  return out;
}

const LossDefinition& RefuelObjective::loss() const { return *impl_->definition; }
const Hyperparameters& RefuelObjective::params() const { return impl_->params; }

}  // namespace lamina::train
