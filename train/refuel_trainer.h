// REFUEL (arXiv 2410.04612, spec §6.6): multi-turn online preference optimisation. The
// objective (train/objective.h) rolls dialogues with the policy and a simulated user, branches
// each one at a turn h into two assistant answers, finishes both dialogues, scores them with a
// reward (train/rewards.h), and regresses the log-ratio gap of the two turn-h answers on their
// reward gap with the registry's "refuel" loss (REBEL's regression, §6.5).
//
// A step (TrainOptions::batch_size dialogue starts P):
//   1. takes the next P starts of a seeded permutation of the file (a new one each epoch; the
//      position is the checkpointed cursor);
//   2. picks, for each, a turn h in 1..H (uniformly, from the run's seed, the step and the
//      start's place in the step), rolls the shared dialogue up to turn h - 1 with the policy
//      (in eval mode, without gradients) and the user simulator, samples two assistant answers
//      y_h, y'_h from that shared history (two independent draws: they may coincide), and
//      continues both dialogues to H assistant turns. Every turn's draw is seeded by the run's
//      seed, the step, the turn and the dialogue's place, so a resumed run draws what the
//      uninterrupted one drew; an answer that ended on a stop token keeps it;
//   3. scores each finished dialogue: RewardInput.prompt is the dialogue's messages before its
//      last assistant turn (a message list), completion the last assistant turn's text, fields
//      the start line's other fields, so that every built-in rule (exact_match, length, ...) and
//      the reward command judge the final answer in its context;
//   4. forwards each dialogue up to the end of its turn h through the policy (in micro-batches of
//      TrainOptions::micro_batch_size starts) and sums the log-probs of the tokens of turn h only
//      (the turn-h mask: earlier turns are context, later ones are not scored; logits divided by
//      the sampling temperature, as REBEL does); π_t's log-probs are the same numbers without
//      gradient (one update per batch: the iterate is the policy that sampled, as REBEL's
//      one-step path has it); the loss is "refuel" over the P pairs (first, second).
//
// Dialogues are built as token ids, never re-encoded from text: the ids the policy continues at
// turn k are exactly the ids its log-probs are later computed on (DialogueRenderer below).
//
// The user simulator (make_user_simulator) says the user's next message after every assistant
// turn but the last:
//   script       the start line's "user_turns" (strings): the k-th follows assistant turn k;
//                every line needs at least H - 1 of them
//   command=CMD  an external program, run under /bin/sh -c once per batch of dialogues, in the
//                directory lamina runs in, stderr lamina's; its stdin holds one JSON object a
//                line, one per dialogue, in order: {"messages": [{"role", "content"}, ...] (the
//                dialogue so far, ending with the assistant's turn), "turn": k (assistant turns so
//                far), <the start line's other fields>}; it must write exactly one line per input
//                line, in order, each a JSON string or an object {"content": "<text>"}, and exit
//                with status 0. Anything else is an error naming the command and the line.
//   model=DIR    a lamina model plays the user (make_model_user_simulator; the CLI loads DIR):
//                the dialogue with the user and assistant roles swapped, rendered in its own
//                chat format with the generation prompt, continued greedily (so that a resumed
//                run hears the same users) for at most max_new_tokens tokens, is the user's message
//
// Metrics: the loss's own (sign_align, logratios/first, logratios/second, reward_gap, as REBEL),
// reward, reward_std (over the 2P dialogues), frac_reward_zero_std (pairs of equal rewards),
// rewards/<term>/mean, completions/mean_length, /min_length, /max_length, /clipped_ratio (of the
// turn-h answers), turn_h/mean, dialogue/mean_tokens.
//
// With an output folder, each step appends one line per start to <output>/samples.jsonl:
//   {"step", "prompt_index" (0-based), "line" (1-based), "turn": h, "first": D, "second": D}
//   D = {"messages": [...], "reward", "rewards" (a weighted reward's terms), "turn_tokens" (turn
//        h's answer's tokens), "finish_reason" (turn h's: "stop" or "length")}
// A resumed run first drops the lines of steps after its checkpoint, so each step is there once.
//
// Validation: each validation start rolled greedily (temperature 0) for H turns with the user
// simulator and scored: val_reward, val_reward_std, val_rewards/<term>/mean,
// val_completions/mean_length (of the last turn).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "models/tokenizer/chat.h"
#include "train/losses/registry.h"
#include "train/objective.h"
#include "train/rewards.h"

namespace lamina::train {

// A dialogue's start: a line of the prompt file.
struct DialogueStart {
  std::vector<tokenizer::Message> messages;  // the dialogue so far, ending with a user message
  json::Value fields = json::Object{};       // the line's other fields ("answer", "user_turns", ...)
  std::vector<std::string> user_turns;       // the scripted user's later messages
  int64_t line = 0;                          // 1-based line of the file
};

// A start line as JSON: {"prompt": text or messages} or {"messages": [...]} (a text prompt is
// one user message), "user_turns" (strings, optional), other fields kept. `where` ("file:line")
// names the line in errors; the roles must be the format's and the last message the user's.
DialogueStart parse_dialogue_start(const json::Value& line, tokenizer::ChatFormat format, const std::string& where);

// Token ids of dialogues turn by turn in a chat format: the start with the generation prompt,
// then after each sampled assistant turn what the format writes between it and the next
// generation prompt (the end of the turn, the user's message, the assistant header).
class DialogueRenderer {
 public:
  DialogueRenderer(std::shared_ptr<const tokenizer::Tokenizer> tokenizer, tokenizer::ChatOptions options);

  std::vector<int32_t> start(const std::vector<tokenizer::Message>& messages) const;
  // What follows the assistant turn `assistant_ids` (as sampled, its stop token included when it
  // stopped) to the generation prompt of the next turn, after the user says `user`. `history` is
  // the dialogue as messages, ending with that assistant turn as text. A turn that did not end
  // with the format's end-of-turn id (clipped, or ended by another stop id) gets it here, as
  // context. Throws when the format does not render the next turn by appending.
  std::vector<int32_t> after_assistant(const std::vector<tokenizer::Message>& history,
                                       const std::vector<int32_t>& assistant_ids, const std::string& user) const;
  // The ids that end an assistant turn in this format (generation stops on them).
  std::vector<int64_t> stop_tokens() const;
  // A turn's text (special tokens left out).
  std::string text(const std::vector<int32_t>& ids) const;
  const tokenizer::ChatOptions& options() const { return options_; }

 private:
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  tokenizer::ChatOptions options_;
};

// A dialogue as token ids, with where each assistant turn's sampled ids lie.
struct Dialogue {
  std::vector<int32_t> ids;
  std::vector<tokenizer::Message> messages;
  std::vector<std::pair<int64_t, int64_t>> turns;  // [begin, end) in ids of assistant turn k (0-based)
  std::vector<std::string> finish_reasons;         // per assistant turn: "stop" or "length"
};

// 1 on the ids of assistant turn `turn` (1-based) and nowhere else, over the dialogue's first
// `length` ids (all of them when negative).
std::vector<uint8_t> turn_mask(const Dialogue& dialogue, int64_t turn, int64_t length = -1);

// One dialogue the simulator answers.
struct UserTurnRequest {
  const DialogueStart* start = nullptr;
  const std::vector<tokenizer::Message>* messages = nullptr;  // ending with the assistant's turn
  int64_t turn = 0;                                           // assistant turns so far
};

class UserSimulator {
 public:
  virtual ~UserSimulator() = default;
  // The user's next message in each dialogue, in order.
  virtual std::vector<std::string> next_turns(const std::vector<UserTurnRequest>& requests) = 0;
  // Throws naming the line when a start cannot be played for `turns` assistant turns.
  virtual void check(const DialogueStart& /*start*/, int64_t /*turns*/, const std::string& /*source*/) const {}
  virtual std::string spec() const = 0;
};

// "script" or "command=CMD" (above); an error names what is wrong ("model=DIR" is made by
// make_model_user_simulator, from the model its caller loaded).
std::unique_ptr<UserSimulator> make_user_simulator(const std::string& spec);

// `model` (with `tokenizer` and its chat format `chat`) playing the user; `spec` ("model=DIR")
// is what settings() records.
std::unique_ptr<UserSimulator> make_model_user_simulator(std::shared_ptr<const llama::LlamaForCausalLM> model,
                                                         std::shared_ptr<const tokenizer::Tokenizer> tokenizer,
                                                         tokenizer::ChatOptions chat, int64_t max_new_tokens,
                                                         std::string spec);

struct RefuelOptions {
  int64_t turns = 2;  // H: assistant turns per dialogue
  std::vector<std::pair<std::string, std::string>> params;  // the loss's hyperparameters (eta, form), as text
  double temperature = 0.8;  // the authors' code; must be above 0 (two draws to compare)
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t max_new_tokens = 64;  // per assistant turn
  int32_t pad_id = 0;

  // What a resumed run must share.
  json::Value to_json() const;
};

class RefuelObjective : public Objective {
 public:
  // Throws when a setting cannot run (turns < 1, temperature 0, a loss parameter the loss lacks)
  // or the simulator cannot play a start (naming its line).
  RefuelObjective(RefuelOptions options, const TrainOptions& train_options, std::vector<DialogueStart> starts,
                  DialogueRenderer renderer, std::unique_ptr<Reward> reward, std::unique_ptr<UserSimulator> user,
                  int64_t context_length, std::vector<DialogueStart> validation = {});
  ~RefuelObjective() override;

  StepResult step(llama::LlamaWithHead& model, int64_t step) override;
  bool has_validation() const override;
  json::Value validate(llama::LlamaWithHead& model) override;
  json::Value cursor() const override;
  void restore(const json::Value& cursor) override;
  DataFingerprint fingerprint() const override;
  json::Value settings() const override;

  const LossDefinition& loss() const;
  const Hyperparameters& params() const;

  // The dialogues a step rolls (for tests): 2 per start, first and second of a pair adjacent,
  // with each start's turn h; the same seeds as step() draws with.
  struct Rollout {
    std::vector<int64_t> start_of_pair;  // index into the starts
    std::vector<int64_t> branch_turn;    // h of each pair (1-based)
    std::vector<Dialogue> dialogues;     // 2 per pair
  };
  Rollout roll(llama::LlamaForCausalLM& model, const std::vector<int64_t>& starts, int64_t step);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lamina::train
