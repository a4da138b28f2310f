// REFUEL's objective (train/refuel_trainer.h) on a tiny byte-level model: the turn-h mask over
// hand-made dialogues (exact ids, Llama-3 and ChatML), seeded rollouts that fork at turn h from a
// shared history, the scripted and the command user simulators (the JSONL they get, the errors
// of a failing one), a short run that moves the policy toward the rewarded answers, and a run
// interrupted mid-way that resumes to the same samples and metrics.
#include <cmath>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/generate/generate.h"
#include "models/tokenizer/builder.h"
#include "ops/ops.h"
#include "scratch_dir.h"
#include "train/losses/logprobs.h"
#include "train/metrics.h"
#include "train/refuel_trainer.h"
#include "train/sampler.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;
using tokenizer::Message;

namespace {

std::shared_ptr<const tokenizer::Tokenizer> llama3_tokenizer() {
  static const auto tok = std::make_shared<const tokenizer::Tokenizer>(tokenizer::byte_level_tokenizer());
  return tok;
}

std::shared_ptr<const tokenizer::Tokenizer> chatml_tokenizer() {
  static const auto tok = std::make_shared<const tokenizer::Tokenizer>(
      tokenizer::byte_level_tokenizer({}, {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}));
  return tok;
}

tokenizer::ChatOptions options_of(tokenizer::ChatFormat format) {
  tokenizer::ChatOptions options;
  options.format = format;
  return options;
}

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const std::vector<int32_t>& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

// The byte-level model the CLI tests use, with weights large enough that its samples vary.
std::shared_ptr<llama::LlamaForCausalLM> byte_model(uint64_t seed) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.initializer_range = 0.3;
  return random_llama(config, seed);
}

std::vector<train::DialogueStart> starts(int count, int user_turns) {
  std::vector<train::DialogueStart> out;
  for (int i = 0; i < count; ++i) {
    train::DialogueStart start;
    start.messages = {{"user", str_cat("q", i)}};
    for (int k = 0; k < user_turns; ++k) start.user_turns.push_back(str_cat("more ", i, ".", k));
    start.fields.set("id", int64_t(i));
    start.line = i + 1;
    out.push_back(start);
  }
  return out;
}

// The share of the completion's bytes below 128: a dense rule the policy can learn.
class LowBytesReward : public train::Reward {
 public:
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (const train::RewardInput& input : batch) {
      double low = 0;
      for (const char c : input.completion) low += uint8_t(c) < 128 ? 1.0 : 0.0;
      scores.total.push_back(input.completion.empty() ? 0.0 : low / double(input.completion.size()));
    }
    return scores;
  }
  std::string spec() const override { return "low_bytes"; }
};

// Every input it saw, and the completion's length in bytes as the reward.
class RecordingReward : public train::Reward {
 public:
  std::vector<train::RewardInput> seen;
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (const train::RewardInput& input : batch) {
      seen.push_back(input);
      scores.total.push_back(double(input.completion.size()));
    }
    return scores;
  }
  std::string spec() const override { return "recording"; }
};

// The last answer's bytes summed, over 100: two different answers almost never tie.
class ByteSumReward : public train::Reward {
 public:
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (const train::RewardInput& input : batch) scores.total.push_back(byte_sum(input.completion));
    return scores;
  }
  static double byte_sum(const std::string& text) {
    double total = 0;
    for (const char c : text) total += double(uint8_t(c));
    return total / 100;
  }
  std::string spec() const override { return "byte_sum"; }
};

train::TrainOptions run_options(int steps, int starts_per_step, const std::string& output = "") {
  train::TrainOptions options;
  options.steps = steps;
  options.batch_size = starts_per_step;
  options.lr = 1e-2;
  options.schedule = "constant";
  options.weight_decay = 0;
  options.seq_len = 64;
  options.progress = false;
  options.seed = 11;
  options.keep_checkpoints = 10;
  options.output_dir = output;
  return options;
}

train::RefuelOptions refuel_options(int turns, int new_tokens) {
  train::RefuelOptions options;
  options.turns = turns;
  options.max_new_tokens = new_tokens;
  options.temperature = 1.0;
  return options;
}

std::unique_ptr<train::RefuelObjective> objective(const train::RefuelOptions& refuel, const train::TrainOptions& options,
                                                  std::unique_ptr<train::Reward> reward, int count = 4,
                                                  const std::string& user = "script") {
  return std::make_unique<train::RefuelObjective>(
      refuel, options, starts(count, refuel.turns), train::DialogueRenderer(llama3_tokenizer(), options_of(tokenizer::ChatFormat::llama3)),
      std::move(reward), train::make_user_simulator(user), 256);
}

std::string dialogue_key(const train::Dialogue& dialogue) {
  std::string out;
  for (int32_t id : dialogue.ids) out += std::to_string(id) + " ";
  return out;
}

std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

std::string comparable(const std::vector<json::Value>& lines) {
  std::string out;
  for (const json::Value& line : lines) {
    json::Value kept = json::Object{};
    for (const auto& [key, value] : line.as_object())
      if (key != "tokens_per_s" && key != "flops_per_s" && key != "peak_rss_bytes" && key != "peak_tensor_bytes")
        kept.set(key, value);
    out += kept.dump() + "\n";
  }
  return out;
}

}  // namespace

TEST_CASE("refuel: a dialogue built turn by turn is the chat rendering, and the turn-h mask is exactly turn h's answer") {
  for (const tokenizer::ChatFormat format : {tokenizer::ChatFormat::llama3, tokenizer::ChatFormat::chatml}) {
    CAPTURE(tokenizer::chat_format_name(format));
    const auto tok = format == tokenizer::ChatFormat::chatml ? chatml_tokenizer() : llama3_tokenizer();
    const train::DialogueRenderer renderer(tok, options_of(format));
    const int32_t end_of_turn =
        tok->require_added_token(format == tokenizer::ChatFormat::chatml ? "<|im_end|>" : "<|eot_id|>");
    const std::vector<Message> all = {{"system", "be brief"}, {"user", "hi there"}, {"assistant", "yo"},
                                      {"user", "more?"},      {"assistant", "ok then"}, {"user", "bye"},
                                      {"assistant", "ciao"}};
    // The answers as a policy samples them: their text's ids and the end-of-turn id it stops on.
    train::Dialogue dialogue;
    dialogue.messages = {all[0], all[1]};
    dialogue.ids = renderer.start(dialogue.messages);
    for (size_t k = 2; k < all.size(); k += 2) {
      const std::vector<int32_t> answer = cat({tok->encode(all[k].content), {end_of_turn}});
      const int64_t begin = int64_t(dialogue.ids.size());
      dialogue.ids.insert(dialogue.ids.end(), answer.begin(), answer.end());
      dialogue.turns.emplace_back(begin, int64_t(dialogue.ids.size()));
      dialogue.messages.push_back(all[k]);
      if (k + 1 < all.size()) {
        const std::vector<int32_t> joint = renderer.after_assistant(dialogue.messages, answer, all[k + 1].content);
        dialogue.ids.insert(dialogue.ids.end(), joint.begin(), joint.end());
        dialogue.messages.push_back(all[k + 1]);
      }
    }
    tokenizer::ChatOptions closed = options_of(format);
    closed.add_generation_prompt = false;
    const tokenizer::ChatTokens rendered = tokenizer::render_chat(*tok, all, closed);
    // ChatML writes a newline after the last <|im_end|>; the sampled dialogue ends on the end of turn.
    std::vector<int32_t> expected = rendered.ids;
    std::vector<uint8_t> answer_mask = rendered.assistant_mask;
    if (format == tokenizer::ChatFormat::chatml) {
      REQUIRE(expected.back() == int32_t('\n'));
      expected.pop_back();
      answer_mask.pop_back();
    }
    CHECK(dialogue.ids == expected);
    // The rendering's answer tokens, split into its three answers.
    std::vector<std::vector<uint8_t>> per_turn;
    for (size_t i = 0; i < answer_mask.size(); ++i) {
      if (answer_mask[i] && (i == 0 || !answer_mask[i - 1])) per_turn.emplace_back(answer_mask.size(), 0);
      if (answer_mask[i]) per_turn.back()[i] = 1;
    }
    REQUIRE(per_turn.size() == 3);
    for (int64_t turn = 1; turn <= 3; ++turn) {
      CAPTURE(turn);
      const std::vector<uint8_t> mask = train::turn_mask(dialogue, turn);
      CHECK(mask == per_turn[size_t(turn - 1)]);
      // Exactly the answer's text and its end of turn.
      std::vector<int32_t> masked;
      for (size_t i = 0; i < mask.size(); ++i)
        if (mask[i]) masked.push_back(dialogue.ids[i]);
      CHECK(masked == cat({tok->encode(all[size_t(2 * turn)].content), {end_of_turn}}));
    }
    // Cut at the end of turn 2 (what the loss forwards when h = 2): the same mask, shorter.
    const std::vector<uint8_t> cut = train::turn_mask(dialogue, 2, dialogue.turns[1].second);
    CHECK(cut == std::vector<uint8_t>(per_turn[1].begin(), per_turn[1].begin() + dialogue.turns[1].second));
    CHECK_THROWS_WITH(train::turn_mask(dialogue, 4), doctest::Contains("3 assistant turns, not a turn 4"));
    // A clipped answer (no end of turn) is closed by the joint, as context.
    const std::vector<int32_t> clipped = tok->encode("yo");
    const std::vector<int32_t> joint = renderer.after_assistant({all[0], all[1], all[2]}, clipped, "more?");
    const std::vector<int32_t> stopped =
        renderer.after_assistant({all[0], all[1], all[2]}, cat({clipped, {end_of_turn}}), "more?");
    CHECK(joint == cat({{end_of_turn}, stopped}));
  }
}

TEST_CASE("refuel: rollouts are seeded, fork at turn h from a shared history and follow the script") {
  const train::RefuelOptions refuel = refuel_options(3, 4);
  const train::TrainOptions options = run_options(1, 4);
  auto model = byte_model(3);
  auto first = objective(refuel, options, std::make_unique<RecordingReward>());
  auto second = objective(refuel, options, std::make_unique<RecordingReward>());
  const std::vector<int64_t> picked = {0, 1, 2, 3};
  const train::RefuelObjective::Rollout a = first->roll(*model, picked, 5);
  const train::RefuelObjective::Rollout b = second->roll(*model, picked, 5);
  const train::RefuelObjective::Rollout c = first->roll(*model, picked, 6);
  REQUIRE(a.dialogues.size() == 8);
  REQUIRE(a.branch_turn.size() == 4);
  std::vector<std::string> keys_a, keys_b, keys_c;
  for (size_t d = 0; d < 8; ++d) {
    keys_a.push_back(dialogue_key(a.dialogues[d]));
    keys_b.push_back(dialogue_key(b.dialogues[d]));
    keys_c.push_back(dialogue_key(c.dialogues[d]));
  }
  CHECK(keys_a == keys_b);
  CHECK(a.branch_turn == b.branch_turn);
  CHECK(keys_a != keys_c);
  // Across the steps, h takes more than one value (uniform over 1..3).
  std::set<int64_t> seen_turns;
  for (int64_t step = 1; step <= 8; ++step)
    for (int64_t h : first->roll(*model, {0}, step).branch_turn) seen_turns.insert(h);
  CHECK(seen_turns.size() >= 2);
  for (size_t pair = 0; pair < 4; ++pair) {
    const int64_t h = a.branch_turn[pair];
    CAPTURE(h);
    REQUIRE((h >= 1 && h <= 3));
    const train::Dialogue& x = a.dialogues[2 * pair];
    const train::Dialogue& y = a.dialogues[2 * pair + 1];
    REQUIRE(x.turns.size() == 3);
    REQUIRE(y.turns.size() == 3);
    // The shared history up to turn h is the same ids; turn h starts at the same place.
    const int64_t fork = x.turns[size_t(h - 1)].first;
    CHECK(y.turns[size_t(h - 1)].first == fork);
    CHECK(std::vector<int32_t>(x.ids.begin(), x.ids.begin() + fork) == std::vector<int32_t>(y.ids.begin(), y.ids.begin() + fork));
    // Two draws: with 4 tokens over ~260 ids they differ.
    CHECK(std::vector<int32_t>(x.ids.begin() + fork, x.ids.begin() + x.turns[size_t(h - 1)].second) !=
          std::vector<int32_t>(y.ids.begin() + fork, y.ids.begin() + y.turns[size_t(h - 1)].second));
    // The user's later messages are the script's, in both branches.
    for (const train::Dialogue* dialogue : {&x, &y}) {
      REQUIRE(dialogue->messages.size() == 6);
      CHECK(dialogue->messages[0].content == str_cat("q", pair));
      CHECK(dialogue->messages[2].content == str_cat("more ", pair, ".0"));
      CHECK(dialogue->messages[4].content == str_cat("more ", pair, ".1"));
      CHECK(dialogue->messages[5].role == "assistant");
    }
  }
}

TEST_CASE("refuel: the command simulator gets the documented JSONL, and a failing one is a clear error") {
  ScratchDir dir("refuel-command-user");
  const std::string log = dir / "seen.jsonl";
  // Answers "u<turn>", keeping what it was sent.
  std::ofstream(dir.path / "user.sh") << "while IFS= read -r line; do\n  printf '%s\\n' \"$line\" >> '" << log
                                      << "'\n  turn=$(printf '%s' \"$line\" | sed 's/.*\"turn\":\\([0-9]*\\).*/\\1/')\n"
                                      << "  echo \"{\\\"content\\\": \\\"u$turn\\\"}\"\ndone\n";
  const train::RefuelOptions refuel = refuel_options(3, 3);
  const train::TrainOptions options = run_options(1, 2);
  auto model = byte_model(3);
  auto scripted = objective(refuel, options, std::make_unique<RecordingReward>(), 2,
                            "command=sh " + (dir / "user.sh"));
  const train::RefuelObjective::Rollout rollout = scripted->roll(*model, {0, 1}, 1);
  for (const train::Dialogue& dialogue : rollout.dialogues) {
    REQUIRE(dialogue.messages.size() == 6);
    CHECK(dialogue.messages[2].content == "u1");
    CHECK(dialogue.messages[4].content == "u2");
  }
  const std::vector<json::Value> seen = train::read_metrics(log);
  // After turn k a start has one dialogue, or two once it forked (h <= k); asked after turns 1 and 2.
  size_t expected = 0;
  for (int64_t h : rollout.branch_turn) expected += (h <= 1 ? 2 : 1) + (h <= 2 ? 2 : 1);
  REQUIRE(seen.size() == expected);
  for (const json::Value& line : seen) {
    const json::Array& messages = line.at("messages").as_array();
    const int64_t turn = line.at("turn").as_int64();
    CHECK(int64_t(messages.size()) == 2 * turn);  // the start's question, then turn pairs, ending with the assistant's
    CHECK(messages.back().at("role").as_string() == "assistant");
    CHECK(messages[0].at("content").as_string().rfind("q", 0) == 0);
    CHECK(line.find("id") != nullptr);  // the start line's other fields
  }

  const auto fails_with = [&](const std::string& command, const std::string& message) {
    CAPTURE(command);
    auto failing = objective(refuel, options, std::make_unique<RecordingReward>(), 2, "command=" + command);
    CHECK_THROWS_WITH(failing->roll(*model, {0, 1}, 1), doctest::Contains(message.c_str()));
  };
  fails_with("exit 3", "user simulator command 'exit 3' exited with status 3");
  fails_with("cat >/dev/null; echo oops", "user simulator command 'cat >/dev/null; echo oops': output line 1 is not JSON");
  fails_with("cat >/dev/null; echo '{\"text\": 1}'", "output line 1 is neither a string nor {\"content\": string}");
  fails_with("head -n 1 >/dev/null; echo '\"a\"'", "wrote 1 lines for the");
  CHECK_THROWS_WITH(train::make_user_simulator("robot"), doctest::Contains("'robot' is not one of: script, command=CMD, model=DIR"));
  CHECK_THROWS_WITH(train::make_user_simulator("model=/x"), doctest::Contains("make_model_user_simulator"));
}

TEST_CASE("refuel: settings and starts that cannot run are refused with the reason") {
  const train::TrainOptions options = run_options(1, 2);
  train::RefuelOptions refuel = refuel_options(3, 3);
  const auto make = [&](const train::RefuelOptions& o, std::vector<train::DialogueStart> list) {
    return train::RefuelObjective(o, options, std::move(list),
                                  train::DialogueRenderer(llama3_tokenizer(), options_of(tokenizer::ChatFormat::llama3)),
                                  std::make_unique<RecordingReward>(), train::make_user_simulator("script"), 256);
  };
  CHECK_THROWS_WITH(make(refuel, starts(2, 1)), doctest::Contains("prompts:1: has 1 \"user_turns\", and --turns 3 needs 2"));
  train::RefuelOptions greedy = refuel;
  greedy.temperature = 0;
  CHECK_THROWS_WITH(make(greedy, starts(2, 2)), doctest::Contains("temperature must be above 0"));
  train::RefuelOptions bad_eta = refuel;
  bad_eta.params.emplace_back("eta", "-1");
  CHECK_THROWS(make(bad_eta, starts(2, 2)));
  // Start lines.
  const auto parse = [](const std::string& text) {
    return train::parse_dialogue_start(json::parse(text), tokenizer::ChatFormat::llama3, "p.jsonl:7");
  };
  const train::DialogueStart text = parse(R"({"prompt": "hi", "user_turns": ["a", "b"], "answer": "4"})");
  REQUIRE(text.messages.size() == 1);
  CHECK(text.messages[0].role == "user");
  CHECK(text.user_turns == std::vector<std::string>{"a", "b"});
  CHECK(text.fields.at("answer").as_string() == "4");
  CHECK(parse(R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})").messages.size() == 2);
  CHECK_THROWS_WITH(parse(R"({"answer": 1})"), doctest::Contains("p.jsonl:7: a line needs the dialogue's start"));
  CHECK_THROWS_WITH(parse(R"({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]})"),
                    doctest::Contains("p.jsonl:7: the dialogue's start must end with the user's message"));
  CHECK_THROWS_WITH(parse(R"({"prompt": "x", "user_turns": [1]})"), doctest::Contains("\"user_turns\" must be a list of strings"));
  CHECK_THROWS_WITH(parse(R"({"messages": [{"role": "robot", "content": "u"}]})"), doctest::Contains("role 'robot'"));
}

namespace {

// A 60-step run on four starts (2 turns, 3 tokens each) whose reward favours the answer bytes
// `rewarded` picks: the policy's probability of such a byte as an answer's first token, before
// and after; the mean sampled reward of the first and last 10 steps; the greedy validation
// reward before and after; the last metrics line.
struct LearningRun {
  double before = 0, after = 0, early = 0, late = 0, greedy_before = 0, greedy_after = 0;
  json::Value last;
};

LearningRun learning_run(std::unique_ptr<train::Reward> reward, const std::function<bool(int64_t)>& rewarded) {
  auto model = byte_model(7);
  const std::vector<train::DialogueStart> list = starts(4, 1);
  const train::DialogueRenderer renderer(llama3_tokenizer(), options_of(tokenizer::ChatFormat::llama3));
  const auto rewarded_probability = [&](llama::LlamaForCausalLM& m) {
    autograd::NoGradGuard no_grad;
    double total = 0;
    for (const train::DialogueStart& start : list) {
      const std::vector<int32_t> ids = renderer.start(start.messages);
      const Tensor input = Tensor::from_vector(std::vector<int64_t>(ids.begin(), ids.end()), {1, int64_t(ids.size())}, DType::i64);
      const std::vector<double> logits = m.forward(input).to_vector<double>();
      const int64_t vocab = int64_t(logits.size()) / int64_t(ids.size());
      const double* last = logits.data() + (int64_t(ids.size()) - 1) * vocab;
      const double peak = *std::max_element(last, last + vocab);
      double good = 0, all = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const double p = std::exp(last[v] - peak);
        all += p;
        good += rewarded(v) ? p : 0.0;
      }
      total += good / all;
    }
    return total / double(list.size());
  };
  LearningRun out;
  out.before = rewarded_probability(*model);
  const train::RefuelOptions refuel = refuel_options(2, 3);
  train::TrainOptions options = run_options(60, 4);
  options.lr = 3e-2;
  train::Trainer trainer(model, options,
                         std::make_unique<train::RefuelObjective>(refuel, options, list, renderer, std::move(reward),
                                                                  train::make_user_simulator("script"), 256, list));
  out.greedy_before = trainer.validate().at("val_reward").as_double();
  std::vector<double> rewards;
  trainer.on_metrics = [&](const json::Value& line) {
    rewards.push_back(line.at("reward").as_double());
    out.last = line;
  };
  trainer.run();
  out.after = rewarded_probability(*model);
  REQUIRE(rewards.size() == 60);
  out.early = std::accumulate(rewards.begin(), rewards.begin() + 10, 0.0) / 10;
  out.late = std::accumulate(rewards.end() - 10, rewards.end(), 0.0) / 10;
  out.greedy_after = out.last.at("val_reward").as_double();
  MESSAGE("p(rewarded first byte) ", out.before, " -> ", out.after, "; mean reward of the first and last 10 steps ",
          out.early, " -> ", out.late, "; greedy val_reward ", out.greedy_before, " -> ", out.greedy_after);
  return out;
}

}  // namespace

TEST_CASE("refuel: a short run moves the policy toward the rewarded answers, the reward read at the last turn") {
  SUBCASE("a dense rule: the share of the last answer's bytes below 128") {
    const LearningRun run = learning_run(std::make_unique<LowBytesReward>(), [](int64_t id) { return id < 128; });
    CHECK(run.after > run.before + 0.2);
    CHECK(run.late > run.early + 0.1);
    CHECK(run.greedy_before <= 0.25);
    CHECK(run.greedy_after >= 0.75);
    for (const char* key : {"sign_align", "logratios/first", "reward_gap", "reward", "reward_std", "frac_reward_zero_std",
                            "completions/mean_length", "completions/clipped_ratio", "turn_h/mean", "dialogue/mean_tokens",
                            "val_reward"})
      CHECK_MESSAGE(run.last.find(key) != nullptr, key);
  }
  SUBCASE("a built-in rule: format=[a-z] (a lower-case letter in the last answer)") {
    const LearningRun run =
        learning_run(train::make_reward("format=[a-z]"), [](int64_t id) { return id >= 'a' && id <= 'z'; });
    CHECK(run.after > run.before + 0.3);
    CHECK(run.late > run.early + 0.3);
  }
}

TEST_CASE("refuel: the reward reads the last assistant turn with the dialogue before it as the prompt") {
  ScratchDir dir("refuel-reward-input");
  auto model = byte_model(3);
  auto reward = std::make_unique<RecordingReward>();
  RecordingReward& recording = *reward;
  const train::RefuelOptions refuel = refuel_options(2, 3);
  const train::TrainOptions options = run_options(1, 2, (dir.path / "run").string());
  train::Trainer trainer(model, options, objective(refuel, options, std::move(reward), 2));
  trainer.run();
  REQUIRE(recording.seen.size() == 4);
  const std::vector<json::Value> samples = train::read_metrics(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 2);
  for (size_t pair = 0; pair < 2; ++pair) {
    const json::Value& line = samples[pair];
    CHECK(line.at("step").as_int64() == 1);
    const int64_t h = line.at("turn").as_int64();
    CHECK((h == 1 || h == 2));
    for (size_t branch = 0; branch < 2; ++branch) {
      const json::Value& dialogue = line.at(branch == 0 ? "first" : "second");
      const train::RewardInput& input = recording.seen[2 * pair + branch];
      const json::Array& messages = dialogue.at("messages").as_array();
      REQUIRE(messages.size() == 4);
      CHECK(input.prompt.as_array().size() == 3);  // user, assistant, user
      CHECK(input.prompt.as_array()[2].at("content").as_string() == messages[2].at("content").as_string());
      CHECK(train::valid_utf8_text(input.completion) == messages[3].at("content").as_string());
      CHECK(dialogue.at("reward").as_double() == double(input.completion.size()));
      CHECK(input.fields.at("id").as_int64() == line.at("prompt_index").as_int64());
      CHECK(dialogue.at("turn_tokens").as_int64() >= 1);
    }
  }
}

TEST_CASE("refuel: an interrupted run resumes to the same samples.jsonl and metrics") {
  ScratchDir dir("refuel-resume");
  const train::RefuelOptions refuel = refuel_options(2, 3);
  const auto make_trainer = [&](const std::string& output) {
    train::TrainOptions options = run_options(4, 2, output);
    options.save_every = 2;
    return std::make_unique<train::Trainer>(byte_model(5), options,
                                            objective(refuel, options, std::make_unique<LowBytesReward>(), 3));
  };
  make_trainer(dir / "whole")->run();
  {
    std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
    trainer->on_metrics = [](const json::Value& line) {
      if (line.at("step").as_int64() == 3) throw Error("interrupted");
    };
    CHECK_THROWS_WITH(trainer->run(), "interrupted");
  }
  CHECK(train::read_metrics(dir / "cut/samples.jsonl").size() == 3 * 2);
  {
    std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
    train::RunStart start;
    start.existing = train::ExistingRun::resume;
    trainer->run(start);
  }
  CHECK(train::read_metrics(dir / "whole/samples.jsonl").size() == 4 * 2);
  CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
  CHECK(comparable(train::read_metrics(dir / "cut/metrics.jsonl")) ==
        comparable(train::read_metrics(dir / "whole/metrics.jsonl")));
}

TEST_CASE("refuel: a step's gradient is the regression's on the turn-h tokens only, against the reward gap") {
  // Two starts of three turns; the step's draws are replayed with roll(), the loss rebuilt by hand.
  const train::RefuelOptions refuel = refuel_options(3, 3);
  train::TrainOptions options = run_options(1, 2);
  auto model = byte_model(9);
  auto replay = byte_model(9);
  for (const auto& [name, parameter] : model->named_parameters()) parameter.set_requires_grad(true);
  for (const auto& [name, parameter] : replay->named_parameters()) parameter.set_requires_grad(true);
  auto stepping = objective(refuel, options, std::make_unique<ByteSumReward>(), 4);
  auto rolling = objective(refuel, options, std::make_unique<ByteSumReward>(), 4);
  const train::StepResult result = stepping->step(*model, 1);
  // The starts the step drew: the first two of the run's epoch order.
  const std::vector<int64_t> drawn = train::EpochSampler(4, options.seed).next(2);
  const train::RefuelObjective::Rollout rollout = rolling->roll(*replay, drawn, 1);
  std::set<int64_t> turns(rollout.branch_turn.begin(), rollout.branch_turn.end());
  Tensor total;
  double expected_loss = 0;
  for (size_t pair = 0; pair < 2; ++pair) {
    const int64_t h = rollout.branch_turn[pair];
    std::vector<Tensor> sums;
    std::vector<double> rewards;
    for (size_t branch = 0; branch < 2; ++branch) {
      const train::Dialogue& dialogue = rollout.dialogues[2 * pair + branch];
      // The whole dialogue (later turns included): their tokens must not count.
      const std::vector<uint8_t> mask = train::turn_mask(dialogue, h);
      const int64_t length = int64_t(dialogue.ids.size());
      const Tensor ids = Tensor::from_vector(std::vector<int64_t>(dialogue.ids.begin(), dialogue.ids.end()), {1, length}, DType::i64);
      const Tensor row_mask = Tensor::from_vector(mask, {1, length}, DType::boolean);
      const train::TokenLogps logps = train::completion_logprobs(replay->forward(ids), ids, row_mask, 1.0);
      sums.push_back(train::reduce_logprobs(logps.logps, logps.mask, train::LogprobReduction::sum));
      rewards.push_back(ByteSumReward::byte_sum(dialogue.messages.back().content));
    }
    // (Δ - η ΔR)² with Δ = (S(y) - sg S(y)) - (S(y') - sg S(y')), η = 1, averaged over the pairs.
    const Tensor delta = (sums[0] - sums[0].detach()) - (sums[1] - sums[1].detach());
    const Tensor loss = mul(square(delta - (rewards[0] - rewards[1])), 0.5);
    expected_loss += 0.5 * (rewards[0] - rewards[1]) * (rewards[0] - rewards[1]);
    // Each pair pulls: its turn-h answers differ in reward (the pair forked after turn 1 too).
    CHECK(std::abs(rewards[0] - rewards[1]) > 0.01);
    total = total.defined() ? total + loss : loss;
  }
  CHECK(result.loss == doctest::Approx(expected_loss).epsilon(1e-6));  // f32
  sum(total).backward();
  const auto stepped = model->named_parameters();
  const auto replayed = replay->named_parameters();
  REQUIRE(stepped.size() == replayed.size());
  double largest = 0;
  for (size_t i = 0; i < stepped.size(); ++i) {
    CAPTURE(stepped[i].first);
    REQUIRE(stepped[i].second.grad().defined());
    const std::vector<double> got = stepped[i].second.grad().to_vector<double>();
    const std::vector<double> want = replayed[i].second.grad().to_vector<double>();
    for (size_t k = 0; k < got.size(); ++k) {
      largest = std::max(largest, std::abs(want[k]));
      CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-4).scale(1e-3));
    }
  }
  CHECK(largest > 1e-3);  // a real gradient was compared
  // One of the pairs forked after turn 1: its shared first turn must not count.
  CHECK(*turns.rbegin() > 1);
}

TEST_CASE("refuel: a model plays the user greedily, on the dialogue with the roles swapped") {
  auto policy = byte_model(3);
  std::shared_ptr<const llama::LlamaForCausalLM> user_model = byte_model(4);
  const auto tok = llama3_tokenizer();
  auto user = train::make_model_user_simulator(user_model, tok, options_of(tokenizer::ChatFormat::llama3), 5, "model=u");
  CHECK(user->spec() == "model=u");
  // What the user's model says to a hand-made dialogue: its greedy continuation of the swapped one.
  const std::vector<Message> dialogue = {{"system", "s"}, {"user", "hello"}, {"assistant", "hi, how can I help?"}};
  const std::vector<Message> swapped = {{"system", "s"}, {"assistant", "hello"}, {"user", "hi, how can I help?"}};
  const std::vector<int32_t> prompt = tokenizer::render_chat(*tok, swapped, options_of(tokenizer::ChatFormat::llama3)).ids;
  generate::GenerateOptions greedy;
  greedy.max_new_tokens = 5;
  for (int32_t id : tokenizer::stop_token_ids(*tok, tokenizer::ChatFormat::llama3)) greedy.stop_tokens.push_back(id);
  const generate::GenerateResult expected =
      generate::generate(*user_model, {std::vector<int64_t>(prompt.begin(), prompt.end())}, greedy);
  tokenizer::DecodeOptions skip;
  skip.skip_special = true;
  const std::string expected_text =
      tok->decode(std::vector<int32_t>(expected.tokens[0].begin(), expected.tokens[0].end()), skip);
  train::DialogueStart start;
  start.messages = {dialogue[0], dialogue[1]};
  start.line = 1;
  const std::vector<std::string> said = user->next_turns({{&start, &dialogue, 1}, {&start, &dialogue, 1}});
  REQUIRE(said.size() == 2);
  CHECK(said[0] == expected_text);
  CHECK(said[1] == expected_text);
  CHECK(!expected_text.empty());
  // In a rollout: both branches of a start hear what the model says to each of them.
  train::RefuelOptions refuel = refuel_options(2, 3);
  const train::TrainOptions options = run_options(1, 2);
  train::RefuelObjective objective(refuel, options, starts(2, 0),
                                   train::DialogueRenderer(tok, options_of(tokenizer::ChatFormat::llama3)),
                                   std::make_unique<RecordingReward>(),
                                   train::make_model_user_simulator(user_model, tok, options_of(tokenizer::ChatFormat::llama3), 5, "model=u"),
                                   256);
  const train::RefuelObjective::Rollout rollout = objective.roll(*policy, {0, 1}, 1);
  for (const train::Dialogue& rolled : rollout.dialogues) {
    REQUIRE(rolled.messages.size() == 4);
    const std::vector<Message> before(rolled.messages.begin(), rolled.messages.begin() + 2);
    train::DialogueStart alone;
    alone.messages = {rolled.messages[0]};
    CHECK(user->next_turns({{&alone, &before, 1}})[0] == rolled.messages[2].content);
  }
}
