// The online objective (train/online_trainer.h) on a tiny model: the advantages a hand-made
// group gets and the direction they move the policy; the seeded sampler; a GRPO run that learns
// a toy task (repeat the prompt's digit) measurably; an interrupted run that resumes to the same
// metrics and the same samples.jsonl; Online DPO's ranked pairs; iterations of several steps on
// one pool (sampled once, log-probs fixed at the iteration's start, K = 1 the one-step path bit
// for bit, resumed mid-iteration exactly); SPIN raising the data answers' margin; a pairwise
// judge making the pairs; the settings it refuses.
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "ops/ops.h"
#include "scratch_dir.h"
#include "train/losses/advantages.h"
#include "train/losses/logprobs.h"
#include "train/metrics.h"
#include "train/online_trainer.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// Completions as text: their ids, space-separated ("7 2"), so that a test can read them back.
std::string ids_text(const std::vector<int32_t>& ids) {
  std::string text;
  for (int32_t id : ids) text += (text.empty() ? "" : " ") + std::to_string(id);
  return text;
}

std::vector<int32_t> text_ids(const std::string& text) {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  for (int32_t id; in >> id;) ids.push_back(id);
  return ids;
}

// Prompts [BOS, d] asking for the digit d (ids 3 .. 3 + count - 1); the field "digit" holds it.
std::vector<train::OnlinePrompt> digit_prompts(int count) {
  std::vector<train::OnlinePrompt> prompts;
  for (int i = 0; i < count; ++i) {
    train::OnlinePrompt prompt;
    prompt.ids = {1, int32_t(3 + i)};
    prompt.prompt = str_cat("repeat ", 3 + i);
    prompt.fields.set("digit", int64_t(3 + i));
    prompt.line = i + 1;
    prompts.push_back(prompt);
  }
  return prompts;
}

// 1 when a completion starts with the prompt's digit.
class RepeatReward : public train::Reward {
 public:
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (const train::RewardInput& input : batch) {
      const std::vector<int32_t> ids = text_ids(input.completion);
      scores.total.push_back(!ids.empty() && ids[0] == input.fields.at("digit").as_int64() ? 1.0 : 0.0);
    }
    return scores;
  }
  std::string spec() const override { return "repeat"; }
};

// The given rewards, in order, for every batch.
class FixedReward : public train::Reward {
 public:
  explicit FixedReward(std::vector<double> values) : values_(std::move(values)) {}
  train::RewardScores score(const std::vector<train::RewardInput>& batch) override {
    train::RewardScores scores;
    for (size_t i = 0; i < batch.size(); ++i) scores.total.push_back(values_[i % values_.size()]);
    return scores;
  }
  std::string spec() const override { return "fixed"; }

 private:
  std::vector<double> values_;
};

train::TrainOptions run_options(int steps, int prompts_per_step, const std::string& output = "") {
  train::TrainOptions options;
  options.precision = "f32";  // the tiny models' thresholds and exact checks are f32's, on every CPU
  options.steps = steps;
  options.batch_size = prompts_per_step;
  options.lr = 1e-2;
  options.schedule = "constant";
  options.weight_decay = 0;
  options.seq_len = 16;
  options.progress = false;
  options.seed = 11;
  options.keep_checkpoints = 10;
  options.output_dir = output;
  return options;
}

std::unique_ptr<train::OnlineObjective> objective(const train::OnlineOptions& online, const train::TrainOptions& options,
                                                  std::unique_ptr<train::Reward> reward, int prompts = 4) {
  return std::make_unique<train::OnlineObjective>(online, options, digit_prompts(prompts), std::move(reward), ids_text);
}

std::vector<json::Value> read_lines(const std::string& path) { return train::read_metrics(path); }

std::string file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

// Digit prompts whose answer (SPIN's real response) repeats the digit twice.
std::vector<train::OnlinePrompt> answered_prompts(int count) {
  std::vector<train::OnlinePrompt> prompts = digit_prompts(count);
  for (train::OnlinePrompt& prompt : prompts) prompt.answer = {prompt.ids[1], prompt.ids[1]};
  return prompts;
}

// A model with `model`'s weights now (the policy at some step, to look at later).
std::shared_ptr<llama::LlamaForCausalLM> snapshot(llama::LlamaForCausalLM& model) {
  auto copy = tiny_model(0);
  const auto source = model.named_parameters();
  const auto target = copy->named_parameters();
  REQUIRE(source.size() == target.size());
  for (size_t i = 0; i < source.size(); ++i) target[i].second.set_data(ops::clone(source[i].second));
  return copy;
}

// Every parameter of a model, in order, for comparing two runs' weights bit for bit.
std::vector<double> weights_of(llama::LlamaForCausalLM& model) {
  std::vector<double> out;
  for (const auto& [name, parameter] : model.named_parameters())
    for (double value : parameter.to_vector<double>()) out.push_back(value);
  return out;
}

// Summed log-prob of `completion` after `prompt` under `model`.
double completion_logp(llama::LlamaForCausalLM& model, const std::vector<int32_t>& prompt,
                       const std::vector<int32_t>& completion) {
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), completion.begin(), completion.end());
  std::vector<uint8_t> mask(prompt.size(), 0);
  mask.resize(ids.size(), 1);
  const Tensor input = Tensor::from_vector(ids, {1, int64_t(ids.size())}, DType::i64);
  const Tensor completion_mask = Tensor::from_vector(mask, {1, int64_t(ids.size())}, DType::boolean);
  const train::TokenLogps logps = train::completion_logprobs(model.forward(input), input, completion_mask);
  return train::reduce_logprobs(logps.logps, logps.mask, train::LogprobReduction::sum).to_vector<double>()[0];
}

// Metrics lines without the timing and memory fields, which differ between runs.
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

TEST_CASE("online: a hand-made group gets GRPO's, Dr. GRPO's and RLOO's advantages, and they move the policy") {
  const std::vector<double> rewards = {1, 0, 0, 1};
  const double mean = 0.5, std = std::sqrt(1.0 / 3.0);  // Bessel-corrected
  struct Case {
    const char* loss;
    std::vector<double> expected;
  };
  const std::vector<Case> cases = {
      {"grpo", {0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4)}},
      {"dr_grpo", {1 - mean, 0 - mean, 0 - mean, 1 - mean}},
      {"rloo", {1 - 1.0 / 3, 0 - 2.0 / 3, 0 - 2.0 / 3, 1 - 1.0 / 3}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.loss);
    ScratchDir dir(str_cat("online-advantages-", c.loss));
    auto model = tiny_model(5);
    train::OnlineOptions online;
    online.loss = c.loss;
    online.num_generations = 4;
    online.max_new_tokens = 3;
    if (std::string(c.loss) == "rloo") online.params.emplace_back("beta", "0");
    const train::TrainOptions options = run_options(1, 1, (dir.path / "run").string());
    train::Trainer trainer(model, options, objective(online, options, std::make_unique<FixedReward>(rewards)));
    // The policy before the step, to see where the step moves it.
    auto before = tiny_model(5);
    json::Value metrics;
    trainer.on_metrics = [&](const json::Value& line) { metrics = line; };
    trainer.run();
    const std::vector<json::Value> samples = read_lines(dir / "run/samples.jsonl");
    REQUIRE(samples.size() == 4);
    std::vector<double> gains;
    for (size_t i = 0; i < 4; ++i) {
      CHECK(samples[i].at("step").as_int64() == 1);
      CHECK(samples[i].at("reward").as_double() == rewards[i]);
      CHECK(samples[i].at("advantage").as_double() == doctest::Approx(c.expected[i]).epsilon(1e-12));
      CHECK(samples[i].at("prompt_index").as_int64() == samples[0].at("prompt_index").as_int64());  // one group
      const std::vector<int32_t> prompt = {1, int32_t(3 + samples[i].at("prompt_index").as_int64())};
      const std::vector<int32_t> completion = text_ids(samples[i].at("completion").as_string());
      gains.push_back(completion_logp(*model, prompt, completion) - completion_logp(*before, prompt, completion));
    }
    // The rewarded completions became more likely than the others.
    CHECK(std::min(gains[0], gains[3]) > std::max(gains[1], gains[2]));
    CHECK(metrics.at("reward").as_double() == 0.5);
    CHECK(metrics.at("reward_std").as_double() == doctest::Approx(std));
    CHECK(metrics.at("frac_reward_zero_std").as_double() == 0.0);
    CHECK(metrics.at("completions/mean_length").as_double() > 0);
  }
}

TEST_CASE("online: the sampler is seeded by the run's seed and the step") {
  const auto samples_of = [](uint64_t seed, int steps) {
    ScratchDir dir(str_cat("online-seeded-", seed, "-", steps));
    train::OnlineOptions online;
    online.num_generations = 3;
    online.max_new_tokens = 4;
    train::TrainOptions options = run_options(steps, 2, (dir.path / "run").string());
    options.seed = seed;
    options.lr = 1e-12;  // the same policy at every step: only the seeds make steps differ
    train::Trainer trainer(tiny_model(5), options, objective(online, options, std::make_unique<RepeatReward>()));
    trainer.run();
    std::vector<std::string> out;
    for (const json::Value& line : read_lines(dir / "run/samples.jsonl"))
      out.push_back(str_cat(line.at("step").as_int64(), ":", line.at("prompt_index").as_int64(), ":",
                            line.at("completion").as_string()));
    return out;
  };
  const std::vector<std::string> first = samples_of(7, 2);
  CHECK(first == samples_of(7, 2));
  CHECK(first != samples_of(8, 2));
  REQUIRE(first.size() == 12);
  // Two steps draw different completions from the same policy, and a group's G differ.
  const std::vector<std::string> step1(first.begin(), first.begin() + 6), step2(first.begin() + 6, first.end());
  CHECK(step1 != step2);
  CHECK((first[0] != first[1] || first[1] != first[2]));
}

TEST_CASE("online: GRPO learns to repeat the prompt's digit (the reward rises)") {
  auto model = tiny_model(3);
  const std::vector<train::OnlinePrompt> prompts = digit_prompts(4);
  // The probability of the right first token, averaged over the prompts.
  const auto right_probability = [&](llama::LlamaForCausalLM& m) {
    double total = 0;
    for (const train::OnlinePrompt& prompt : prompts)
      total += std::exp(completion_logp(m, prompt.ids, {prompt.ids[1]}));
    return total / double(prompts.size());
  };
  const double before = right_probability(*model);
  train::OnlineOptions online;
  online.loss = "grpo";
  online.num_generations = 8;
  online.max_new_tokens = 1;
  train::TrainOptions options = run_options(60, 4);
  options.lr = 1e-2;
  // Held out: a greedy completion of each prompt, scored the same way (val_reward).
  train::Trainer trainer(model, options,
                         std::make_unique<train::OnlineObjective>(online, options, prompts,
                                                                  std::make_unique<RepeatReward>(), ids_text, prompts));
  const double greedy_before = trainer.validate().at("val_reward").as_double();
  std::vector<double> rewards;
  json::Value last;
  trainer.on_metrics = [&](const json::Value& line) {
    rewards.push_back(line.at("reward").as_double());
    last = line;
  };
  trainer.run();
  MESSAGE("greedy reward on the prompts ", greedy_before, " -> ", last.at("val_reward").as_double());
  CHECK(greedy_before <= 0.25);
  CHECK(last.at("val_reward").as_double() >= 0.75);
  CHECK(last.find("val_completions/mean_length") != nullptr);
  const double after = right_probability(*model);
  MESSAGE("p(right digit) ", before, " -> ", after);
  CHECK(before < 0.1);
  CHECK(after > 0.5);
  REQUIRE(rewards.size() == 60);
  const double early = std::accumulate(rewards.begin(), rewards.begin() + 10, 0.0) / 10;
  const double late = std::accumulate(rewards.end() - 10, rewards.end(), 0.0) / 10;
  MESSAGE("mean reward of the first and last 10 steps: ", early, ", ", late);
  CHECK(late > early + 0.3);
}

TEST_CASE("online: an interrupted run resumes to the same metrics and samples.jsonl, each step once") {
  ScratchDir dir("online-resume");
  train::OnlineOptions online;
  online.loss = "grpo";
  online.num_generations = 3;
  online.max_new_tokens = 3;
  online.params.emplace_back("beta", "0.04");  // with the reference copy
  const auto make_trainer = [&](const std::string& output) {
    train::TrainOptions options = run_options(4, 2, output);
    options.save_every = 2;
    return std::make_unique<train::Trainer>(tiny_model(5), options,
                                            objective(online, options, std::make_unique<RepeatReward>()));
  };
  make_trainer(dir / "whole")->run();
  {
    // Stopped after step 3's lines are written: its checkpoint is step 2's.
    std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
    trainer->on_metrics = [](const json::Value& line) {
      if (line.at("step").as_int64() == 3) throw Error("interrupted");
    };
    CHECK_THROWS_WITH(trainer->run(), "interrupted");
  }
  CHECK(read_lines(dir / "cut/samples.jsonl").size() == 18);  // steps 1-3
  {
    std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
    train::RunStart start;
    start.existing = train::ExistingRun::resume;
    trainer->run(start);
  }
  const std::vector<json::Value> whole = read_lines(dir / "whole/samples.jsonl");
  CHECK(whole.size() == 24);
  CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
  CHECK(comparable(read_lines(dir / "cut/metrics.jsonl")) == comparable(read_lines(dir / "whole/metrics.jsonl")));
  CHECK(read_lines(dir / "whole/metrics.jsonl").back().find("kl") != nullptr);
}

TEST_CASE("online: Online DPO trains on each group's best and worst completion") {
  ScratchDir dir("online-dpo");
  train::OnlineOptions online;
  online.loss = "online_dpo";
  online.num_generations = 3;
  online.max_new_tokens = 2;
  const train::TrainOptions options = run_options(2, 2, (dir.path / "run").string());
  train::Trainer trainer(tiny_model(5), options,
                         objective(online, options, std::make_unique<FixedReward>(std::vector<double>{0.5, 1, 0})));
  json::Value metrics;
  trainer.on_metrics = [&](const json::Value& line) { metrics = line; };
  trainer.run();
  const std::vector<json::Value> samples = read_lines(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 12);
  for (size_t i = 0; i < samples.size(); i += 3) {
    CHECK(samples[i].at("chosen").is_null());
    CHECK(samples[i + 1].at("chosen").as_bool() == true);
    CHECK(samples[i + 2].at("chosen").as_bool() == false);
  }
  CHECK(metrics.at("objective/scores_margin").as_double() == 1.0);
  CHECK(metrics.find("rewards/accuracies") != nullptr);
}

TEST_CASE("online: INPO and REBEL train on the ranked pairs against the sampling iterate") {
  for (const char* loss : {"inpo", "rebel"}) {
    CAPTURE(loss);
    train::OnlineOptions online;
    online.loss = loss;
    online.num_generations = 2;
    online.max_new_tokens = 3;
    train::TrainOptions options = run_options(1, 2);
    auto model = tiny_model(5);
    auto before = tiny_model(5);
    ScratchDir dir(str_cat("online-", loss));
    options.output_dir = (dir.path / "run").string();
    std::unique_ptr<train::OnlineObjective> o =
        objective(online, options, std::make_unique<FixedReward>(std::vector<double>{0, 1}));
    CHECK(o->reference() == (std::string(loss) == "inpo" ? train::ReferenceKind::copy : train::ReferenceKind::none));
    train::Trainer trainer(model, options, std::move(o));
    json::Value metrics;
    trainer.on_metrics = [&](const json::Value& line) { metrics = line; };
    trainer.run();
    // INPO's h starts at 0 (policy = reference = iterate), REBEL's log-ratio gap too.
    if (std::string(loss) == "inpo") CHECK(std::fabs(metrics.at("inpo/h").as_double()) < 1e-6);
    else CHECK(metrics.at("reward_gap").as_double() == 1.0);
    // The preferred (second) completion of each pair gained on the other.
    const std::vector<json::Value> samples = read_lines(dir / "run/samples.jsonl");
    REQUIRE(samples.size() == 4);
    for (size_t i = 0; i < 4; i += 2) {
      CHECK(samples[i + 1].at("chosen").as_bool());
      const auto gain = [&](const json::Value& sample) {
        const std::vector<int32_t> prompt = {1, int32_t(3 + sample.at("prompt_index").as_int64())};
        const std::vector<int32_t> completion = text_ids(sample.at("completion").as_string());
        return completion_logp(*model, prompt, completion) - completion_logp(*before, prompt, completion);
      };
      CHECK(gain(samples[i + 1]) > gain(samples[i]));
    }
  }
}

TEST_CASE("online: settings that cannot run are refused with the reason") {
  const train::TrainOptions options = run_options(1, 2);
  const auto error_of = [&](train::OnlineOptions online, train::TrainOptions o) {
    try {
      objective(online, o, std::make_unique<RepeatReward>());
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  train::OnlineOptions online;
  online.loss = "ppo_clip";
  CHECK(error_of(online, options).find("does not run loss 'ppo_clip'") != std::string::npos);
  online.loss = "grpo";
  online.num_generations = 1;
  CHECK(error_of(online, options).find("at least 2 completions") != std::string::npos);
  online.num_generations = 2;
  online.params = {{"beta", "0.1"}};
  online.reference = train::ReferenceKind::none;
  CHECK(error_of(online, options).find("has a KL term to the reference") != std::string::npos);
  online.params = {};
  online.reference = train::ReferenceKind::copy;
  CHECK(error_of(online, options).find("reads no reference") != std::string::npos);
  online.reference = train::ReferenceKind::automatic;
  online.loss = "reinforce_pp";
  online.params = {{"kl_coef", "0"}};
  train::TrainOptions micro = options;
  micro.micro_batch_size = 1;
  CHECK(error_of(online, micro).find("cannot run in micro-batches") != std::string::npos);
  online.loss = "grpo";
  online.params = {{"num_generations", "4"}};
  CHECK(error_of(online, options).find("--num-generations") != std::string::npos);
}

TEST_CASE("online: micro-batches of whole groups add up to the whole batch") {
  const auto gradient_after_step = [](int64_t micro, const std::string& loss) {
    auto model = tiny_model(5);
    train::OnlineOptions online;
    online.loss = loss;
    online.num_generations = 2;
    online.max_new_tokens = 3;
    train::TrainOptions options = run_options(1, 4);
    options.micro_batch_size = micro;
    std::unique_ptr<train::OnlineObjective> o =
        objective(online, options, std::make_unique<FixedReward>(std::vector<double>{1, 0, 0, 1, 1, 1, 0, 1}));
    o->prepare(*model, options);
    const train::StepResult result = o->step(*model, 1);
    std::vector<double> grads;
    for (const auto& [name, parameter] : model->named_parameters())
      for (double g : parameter.grad().to_vector<double>()) grads.push_back(g);
    grads.push_back(result.loss);
    return grads;
  };
  for (const char* loss : {"grpo", "dapo", "rloo"}) {
    CAPTURE(loss);
    const std::vector<double> whole = gradient_after_step(0, loss), split = gradient_after_step(1, loss);
    REQUIRE(whole.size() == split.size());
    double worst = 0, largest = 0;
    for (size_t i = 0; i < whole.size(); ++i) {
      worst = std::max(worst, std::fabs(whole[i] - split[i]));
      largest = std::max(largest, std::fabs(whole[i]));
    }
    CHECK(largest > 0);
    CHECK(worst <= 1e-5 * largest);
  }
}

TEST_CASE("online: the KL reference is the starting policy, as a copy or as the base under LoRA adapters") {
  for (const bool lora : {false, true}) {
    CAPTURE(lora);
    train::OnlineOptions online;
    online.num_generations = 2;
    online.max_new_tokens = 3;
    online.params.emplace_back("beta", "0.1");
    train::TrainOptions options = run_options(3, 2);
    options.lr = 5e-2;
    if (lora) options.lora = "r=4,alpha=8";
    std::unique_ptr<train::OnlineObjective> o =
        objective(online, options, std::make_unique<FixedReward>(std::vector<double>{1, 0}));
    CHECK(o->reference() == (lora ? train::ReferenceKind::adapters_off : train::ReferenceKind::copy));
    train::Trainer trainer(tiny_model(5), options, std::move(o));
    std::vector<double> kl;
    trainer.on_metrics = [&](const json::Value& line) { kl.push_back(line.at("kl").as_double()); };
    trainer.run();
    REQUIRE(kl.size() == 3);
    CHECK(std::fabs(kl[0]) < 1e-7);  // the policy is the reference before its first update
    CHECK(kl[2] > 1e-6);
  }
}

TEST_CASE("online: REINFORCE++ and SimpleRL-Zoo's settings run, the entropy bonus with its gradient") {
  for (const char* loss : {"reinforce_pp", "reinforce_pp_baseline", "simplerl_zoo", "dapo", "dr_grpo"}) {
    CAPTURE(loss);
    train::OnlineOptions online;
    online.loss = loss;
    online.num_generations = 2;
    online.max_new_tokens = 3;
    const train::TrainOptions options = run_options(2, 2);
    train::Trainer trainer(tiny_model(5), options,
                           objective(online, options, std::make_unique<FixedReward>(std::vector<double>{1, 0, 0.5})));
    std::vector<json::Value> lines;
    trainer.on_metrics = [&](const json::Value& line) { lines.push_back(line); };
    trainer.run();
    REQUIRE(lines.size() == 2);
    CHECK(std::isfinite(lines[1].at("loss").as_double()));
    CHECK(lines[1].at("grad_norm").as_double() > 0);
  }
  // Equal rewards: no advantage, and no KL gradient at the first step (the policy is the
  // reference); what is left is the entropy bonus, whose gradient must reach the model.
  for (const double entropy_coef : {0.0, 0.01}) {
    CAPTURE(entropy_coef);
    train::OnlineOptions online;
    online.loss = "simplerl_zoo";
    online.num_generations = 2;
    online.max_new_tokens = 3;
    online.params.emplace_back("entropy_coef", str_cat(entropy_coef));
    const train::TrainOptions options = run_options(1, 2);
    train::Trainer trainer(tiny_model(5), options,
                           objective(online, options, std::make_unique<FixedReward>(std::vector<double>{1})));
    json::Value line;
    trainer.on_metrics = [&](const json::Value& metrics) { line = metrics; };
    trainer.run();
    CHECK(line.at("entropy").as_double() > 0);
    if (entropy_coef > 0) CHECK(line.at("grad_norm").as_double() > 1e-6);
    else CHECK(line.at("grad_norm").as_double() == 0.0);
  }
}

TEST_CASE("online: an INPO iteration samples its pool once and trains K steps against the policy's log-probs at its start") {
  ScratchDir dir("online-inpo-iterations");
  train::OnlineOptions online;
  online.loss = "inpo";
  online.num_generations = 2;
  online.max_new_tokens = 3;
  online.iteration_steps = 3;
  online.params = {{"eta", "0.5"}, {"tau", "0.1"}};
  const train::TrainOptions options = run_options(6, 2, (dir.path / "run").string());
  auto model = tiny_model(5);
  std::unique_ptr<train::OnlineObjective> o =
      objective(online, options, std::make_unique<FixedReward>(std::vector<double>{0, 1, 1, 0}));
  const train::OnlineObjective* view = o.get();
  CHECK(view->state().is_null());  // no pool before the first step
  train::Trainer trainer(model, options, std::move(o));
  std::vector<json::Value> pools;
  std::vector<std::shared_ptr<llama::LlamaForCausalLM>> after;  // the policy after each step
  std::vector<json::Value> lines;
  trainer.on_metrics = [&](const json::Value& line) {
    pools.push_back(view->state().at("pool"));
    after.push_back(snapshot(*model));
    lines.push_back(line);
  };
  trainer.run();
  REQUIRE(pools.size() == 6);

  // Sampled at steps 1 and 4 only: M = P x K = 6 prompts of G = 2 completions each time.
  const std::vector<json::Value> samples = read_lines(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 2 * 6 * 2);
  for (size_t i = 0; i < samples.size(); ++i) CHECK(samples[i].at("step").as_int64() == (i < 12 ? 1 : 4));

  // One pool per iteration, the same (log-probs included) on each of its steps.
  CHECK(pools[0].at("start_step").as_int64() == 1);
  CHECK(pools[3].at("start_step").as_int64() == 4);
  CHECK(pools[1].dump() == pools[0].dump());
  CHECK(pools[2].dump() == pools[0].dump());
  CHECK(pools[4].dump() == pools[3].dump());
  CHECK(pools[5].dump() == pools[3].dump());
  CHECK(pools[3].dump() != pools[0].dump());
  for (const json::Value& pool : {pools[0], pools[3]}) {
    REQUIRE(pool.at("pairs").as_array().size() == 6);
    std::vector<int64_t> order;
    for (const json::Value& index : pool.at("order").as_array()) order.push_back(index.as_int64());
    std::sort(order.begin(), order.end());
    CHECK(order == std::vector<int64_t>{0, 1, 2, 3, 4, 5});
  }
  // The reward statistics of a step are its pool's.
  CHECK(lines[1].at("reward").as_double() == lines[0].at("reward").as_double());

  // The fixed log-probs are the policy's at the iteration's start (iteration 1: the starting
  // model, also the reference; iteration 2: the policy after step 3), while the policy moved on.
  const auto check_pool = [&](const json::Value& pool, llama::LlamaForCausalLM& start, llama::LlamaForCausalLM& end,
                              bool reference_is_start) {
    double moved = 0;
    for (const json::Value& pair : pool.at("pairs").as_array()) {
      const std::vector<int32_t> prompt = {1, int32_t(3 + pair.at("prompt_index").as_int64())};
      for (const char* side : {"chosen", "rejected"}) {
        CAPTURE(side);
        std::vector<int32_t> completion;
        for (const json::Value& id : pair.at(side).as_array()) completion.push_back(int32_t(id.as_int64()));
        const double fixed = pair.at(str_cat("iterate_", side, "_logp")).as_double();
        CHECK(fixed == doctest::Approx(completion_logp(start, prompt, completion)).epsilon(1e-5));
        if (reference_is_start)
          CHECK(pair.at(str_cat("reference_", side, "_logp")).as_double() == doctest::Approx(fixed).epsilon(1e-5));
        moved += std::fabs(completion_logp(end, prompt, completion) - fixed);
      }
    }
    CHECK(moved > 1e-2);
  };
  auto start = tiny_model(5);
  check_pool(pools[0], *start, *after[2], true);
  check_pool(pools[3], *after[2], *after[5], false);

  // What each step trained on: the next P = 2 pairs of its pool's order, with INPO's
  // h = Δ_θ - (τ/η) Δ_ref - ((η-τ)/η) Δ_t computed from the fixed Δ_t of the iteration's start
  // (a live iterate would give (τ/η) (Δ_θ - Δ_ref) instead).
  for (int64_t step = 1; step <= 6; ++step) {
    CAPTURE(step);
    const int64_t offset = (step - 1) % 3, first = step - offset;
    const json::Value& pool = pools[size_t(step - 1)];
    llama::LlamaForCausalLM& policy = step == 1 ? *start : *after[size_t(step - 2)];
    llama::LlamaForCausalLM& iterate = first == 1 ? *start : *after[size_t(first - 2)];
    double expected = 0;
    for (int64_t i = 0; i < 2; ++i) {
      const json::Value& pair = pool.at("pairs").as_array()[size_t(pool.at("order").as_array()[size_t(offset * 2 + i)].as_int64())];
      const std::vector<int32_t> prompt = {1, int32_t(3 + pair.at("prompt_index").as_int64())};
      std::vector<int32_t> chosen, rejected;
      for (const json::Value& id : pair.at("chosen").as_array()) chosen.push_back(int32_t(id.as_int64()));
      for (const json::Value& id : pair.at("rejected").as_array()) rejected.push_back(int32_t(id.as_int64()));
      const auto delta = [&](llama::LlamaForCausalLM& m) {
        return completion_logp(m, prompt, chosen) - completion_logp(m, prompt, rejected);
      };
      expected += (delta(policy) - 0.2 * delta(*start) - 0.8 * delta(iterate)) / 2;
    }
    CHECK(lines[size_t(step - 1)].at("inpo/h").as_double() == doctest::Approx(expected).epsilon(1e-4));
  }
  CHECK(std::fabs(lines[0].at("inpo/h").as_double()) < 1e-6);
  CHECK(std::fabs(lines[1].at("inpo/h").as_double()) > 1e-3);
}

TEST_CASE("online: iterations of one step on a pool of one step's prompts are the one-step path, bit for bit") {
  for (const char* loss : {"online_dpo", "inpo", "rebel"})
    for (const int64_t micro : {0, 1}) {
      CAPTURE(loss);
      CAPTURE(micro);
      const auto run = [&](bool pool, const std::string& output) {
        train::OnlineOptions online;
        online.loss = loss;
        online.num_generations = 2;
        online.max_new_tokens = 3;
        if (pool) online.iteration_prompts = 2;  // forces the pool with K = 1, M = P
        train::TrainOptions options = run_options(3, 2, output);
        options.micro_batch_size = micro;
        auto model = tiny_model(5);
        train::Trainer trainer(model, options,
                               objective(online, options, std::make_unique<FixedReward>(std::vector<double>{0, 1, 1, 0})));
        trainer.run();
        return std::make_pair(comparable(read_lines(output + "/metrics.jsonl")), weights_of(*model));
      };
      ScratchDir dir(str_cat("online-one-step-", loss, "-", micro));
      const auto [one_step_metrics, one_step_weights] = run(false, dir / "one-step");
      const auto [pool_metrics, pool_weights] = run(true, dir / "pool");
      CHECK(pool_metrics == one_step_metrics);
      CHECK(pool_weights == one_step_weights);
      CHECK(file_bytes(dir.path / "pool/samples.jsonl") == file_bytes(dir.path / "one-step/samples.jsonl"));
      CHECK(read_lines(dir / "pool/samples.jsonl").size() == 3 * 2 * 2);
    }
}

TEST_CASE("online: a run resumed in the middle of an iteration continues on the same pool, exactly") {
  for (const char* loss : {"inpo", "spin"}) {
    CAPTURE(loss);
    ScratchDir dir(str_cat("online-iteration-resume-", loss));
    const bool spin = std::string(loss) == "spin";
    train::OnlineOptions online;
    online.loss = loss;
    online.num_generations = spin ? 1 : 2;
    online.max_new_tokens = 3;
    online.iteration_steps = 3;
    if (spin) online.temperature = 0.7;
    std::vector<std::shared_ptr<llama::LlamaForCausalLM>> models;
    const auto make_trainer = [&](const std::string& output) {
      train::TrainOptions options = run_options(6, 2, output);
      options.save_every = 2;
      models.push_back(tiny_model(5));
      std::unique_ptr<train::Reward> reward;
      if (!spin) reward = std::make_unique<FixedReward>(std::vector<double>{0, 1, 1, 0});
      return std::make_unique<train::Trainer>(
          models.back(), options,
          std::make_unique<train::OnlineObjective>(online, options, spin ? answered_prompts(4) : digit_prompts(4),
                                                   std::move(reward), ids_text));
    };
    make_trainer(dir / "whole")->run();
    const std::vector<double> whole_weights = weights_of(*models.back());
    {
      // Stopped after step 3's update: the checkpoint is step 2's, in the middle of iteration 1.
      std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
      trainer->on_metrics = [](const json::Value& line) {
        if (line.at("step").as_int64() == 3) throw Error("interrupted");
      };
      CHECK_THROWS_WITH(trainer->run(), "interrupted");
    }
    {
      std::unique_ptr<train::Trainer> trainer = make_trainer(dir / "cut");
      train::RunStart start;
      start.existing = train::ExistingRun::resume;
      trainer->run(start);
    }
    CHECK(weights_of(*models.back()) == whole_weights);
    CHECK(comparable(read_lines(dir / "cut/metrics.jsonl")) == comparable(read_lines(dir / "whole/metrics.jsonl")));
    CHECK(file_bytes(dir.path / "cut/samples.jsonl") == file_bytes(dir.path / "whole/samples.jsonl"));
    CHECK(read_lines(dir / "whole/samples.jsonl").size() == 2 * 6 * (spin ? 1 : 2));
  }
}

TEST_CASE("online: SPIN raises the data answers' log-prob margin over the policy's own responses") {
  ScratchDir dir("online-spin");
  const std::vector<train::OnlinePrompt> prompts = answered_prompts(4);
  auto model = tiny_model(3);
  train::OnlineOptions online;
  online.loss = "spin";
  online.num_generations = 1;
  online.max_new_tokens = 2;
  online.temperature = 0;  // greedy responses
  online.iteration_steps = 2;
  online.iteration_prompts = 4;
  train::TrainOptions options = run_options(8, 2, (dir.path / "run").string());
  std::unique_ptr<train::OnlineObjective> o =
      std::make_unique<train::OnlineObjective>(online, options, prompts, nullptr, ids_text);
  CHECK(o->reference() == train::ReferenceKind::none);
  CHECK_FALSE(o->has_validation());
  train::Trainer trainer(model, options, std::move(o));
  std::vector<json::Value> lines;
  trainer.on_metrics = [&](const json::Value& line) { lines.push_back(line); };
  // The starting model's greedy responses: what SPIN's first iteration rejects.
  std::vector<std::vector<int32_t>> generated;
  const auto margin = [&](llama::LlamaForCausalLM& m) {
    double total = 0;
    for (size_t i = 0; i < prompts.size(); ++i)
      total += completion_logp(m, prompts[i].ids, prompts[i].answer) - completion_logp(m, prompts[i].ids, generated[i]);
    return total / double(prompts.size());
  };
  auto start = tiny_model(3);
  trainer.run();
  const std::vector<json::Value> samples = read_lines(dir / "run/samples.jsonl");
  REQUIRE(samples.size() == 4 * 4);  // iterations at steps 1, 3, 5, 7; one response per prompt
  generated.resize(prompts.size());
  for (size_t i = 0; i < 4; ++i) {
    CHECK(samples[i].at("step").as_int64() == 1);
    CHECK(samples[i + 4].at("step").as_int64() == 3);
    CHECK(samples[i].at("chosen").as_bool() == false);
    CHECK(samples[i].find("reward") == nullptr);
    generated[size_t(samples[i].at("prompt_index").as_int64())] = text_ids(samples[i].at("completion").as_string());
  }
  for (const std::vector<int32_t>& response : generated) REQUIRE_FALSE(response.empty());
  const double before = margin(*start), after = margin(*model);
  MESSAGE("log p(answer) - log p(first generated response): ", before, " -> ", after);
  CHECK(after > before + 1.0);
  REQUIRE(lines.size() == 8);
  for (const char* key : {"rewards/real", "rewards/generated", "rewards/margins", "rewards/accuracies", "logps/real",
                          "completions/mean_length"})
    CHECK_MESSAGE(lines.back().find(key) != nullptr, key);
  CHECK(lines.back().find("reward") == nullptr);
  // An iteration's first step sees the policy equal to its opponent (margin 0); its second step
  // has moved toward the answers. By the last iteration the greedy responses are the answers.
  CHECK(lines[0].at("rewards/margins").as_double() == 0.0);
  CHECK(lines[1].at("rewards/margins").as_double() > 0.0);
  int answered = 0;
  for (size_t i = 12; i < 16; ++i)
    answered += text_ids(samples[i].at("completion").as_string()) ==
                        prompts[size_t(samples[i].at("prompt_index").as_int64())].answer
                    ? 1
                    : 0;
  MESSAGE("greedy responses equal to the answer in the last iteration: ", answered, " of 4");
  CHECK(answered >= 2);
}

TEST_CASE("online: iteration and SPIN settings that cannot run are refused with the reason") {
  const train::TrainOptions options = run_options(1, 2);
  const auto error_of = [&](const train::OnlineOptions& online, std::vector<train::OnlinePrompt> prompts,
                            bool with_reward = true) {
    try {
      const train::OnlineObjective refused(online, options, std::move(prompts),
                                           with_reward ? std::make_unique<RepeatReward>() : nullptr, ids_text);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  train::OnlineOptions online;
  online.loss = "inpo";
  online.num_generations = 2;
  online.iteration_steps = 0;
  CHECK(error_of(online, digit_prompts(4)).find("iteration_steps (--iteration-steps) must be at least 1") !=
        std::string::npos);
  online.iteration_steps = 2;
  online.iteration_prompts = 1;
  CHECK(error_of(online, digit_prompts(4)).find("is smaller than a step's 2") != std::string::npos);
  online.iteration_prompts = 0;
  CHECK(error_of(online, digit_prompts(4)).empty());
  online.loss = "grpo";
  CHECK(error_of(online, digit_prompts(4)).find("iterations of several steps") != std::string::npos);
  online = {};
  online.loss = "spin";
  online.num_generations = 1;
  CHECK(error_of(online, digit_prompts(4), false).find("spin trains on the data's own answers, and prompt line 1 has none") !=
        std::string::npos);
  CHECK(error_of(online, answered_prompts(4), false).empty());
  online.num_generations = 2;
  CHECK(error_of(online, answered_prompts(4), false).find("one response per prompt") != std::string::npos);
  online.loss = "inpo";
  CHECK(error_of(online, digit_prompts(4), false).find("no reward") != std::string::npos);
}

namespace {

// A judge that always answers `choice` and keeps what it was asked.
class FixedJudge : public train::PairwiseJudge {
 public:
  FixedJudge(int choice, std::vector<train::JudgeInput>* seen) : choice_(choice), seen_(seen) {}
  std::vector<int> judge(const std::vector<train::JudgeInput>& pairs) override {
    if (seen_ != nullptr) seen_->insert(seen_->end(), pairs.begin(), pairs.end());
    return std::vector<int>(pairs.size(), choice_);
  }
  std::string spec() const override { return str_cat("fixed=", choice_); }

 private:
  int choice_;
  std::vector<train::JudgeInput>* seen_;
};

}  // namespace

TEST_CASE("online: with a pairwise judge, its choice makes each pair, whatever the reward says") {
  for (const int64_t iteration_steps : {1, 2}) {
    for (const char* loss : {"online_dpo", "inpo"}) {
      CAPTURE(loss);
      CAPTURE(iteration_steps);
      ScratchDir dir(str_cat("online-judge-", loss, "-", iteration_steps));
      // judge: picks 1, against a reward that prefers the first; ranked: no judge, a reward that
      // prefers the second; other: picks 0.
      const auto run = [&](const std::string& name, std::unique_ptr<train::PairwiseJudge> judge,
                           std::vector<double> rewards) {
        train::OnlineOptions online;
        online.loss = loss;
        online.num_generations = 2;
        online.max_new_tokens = 3;
        online.iteration_steps = iteration_steps;
        const train::TrainOptions options = run_options(2, 2, dir / name);
        auto model = tiny_model(5);
        train::Trainer trainer(model, options,
                               std::make_unique<train::OnlineObjective>(
                                   online, options, digit_prompts(4),
                                   rewards.empty() ? nullptr : std::make_unique<FixedReward>(std::move(rewards)),
                                   ids_text, std::vector<train::OnlinePrompt>{}, std::move(judge)));
        trainer.run();
        return weights_of(*model);
      };
      std::vector<train::JudgeInput> seen;
      const std::vector<double> judged = run("judge", std::make_unique<FixedJudge>(1, &seen), {1, 0});
      const std::vector<double> ranked = run("ranked", nullptr, {0, 1});
      const std::vector<double> other = run("other", std::make_unique<FixedJudge>(0, nullptr), {1, 0});
      const std::vector<double> alone = run("alone", std::make_unique<FixedJudge>(1, nullptr), {});
      // Trained on exactly the pairs the judge made: the weights of the ranked run, bit for bit.
      CHECK(judged == ranked);
      CHECK(alone == ranked);
      CHECK(other != judged);
      const std::vector<json::Value> samples = read_lines(dir / "judge/samples.jsonl");
      REQUIRE(samples.size() == 8);  // 2 steps of 2 prompts, or one pool of 4 prompts, x 2
      REQUIRE(seen.size() == samples.size() / 2);
      for (size_t i = 0; i < samples.size(); i += 2) {
        CHECK(samples[i].at("chosen").as_bool() == false);
        CHECK(samples[i + 1].at("chosen").as_bool() == true);
        CHECK(samples[i].at("reward").as_double() == 1.0);  // scored as well: the reward is kept
        // The judge saw the pair's prompt, fields and both completions, in order.
        const train::JudgeInput& pair = seen[i / 2];
        CHECK(pair.first == samples[i].at("completion").as_string());
        CHECK(pair.second == samples[i + 1].at("completion").as_string());
        CHECK(pair.prompt.as_string() == str_cat("repeat ", 3 + samples[i].at("prompt_index").as_int64()));
        CHECK(pair.fields.at("digit").as_int64() == 3 + samples[i].at("prompt_index").as_int64());
      }
      // Without a reward: no reward in the samples or the metrics, the completions' statistics kept.
      const std::vector<json::Value> unrewarded = read_lines(dir / "alone/samples.jsonl");
      REQUIRE(!unrewarded.empty());
      CHECK(unrewarded[0].find("reward") == nullptr);
      CHECK(unrewarded[1].at("chosen").as_bool() == true);
      const std::vector<json::Value> metrics = read_lines(dir / "alone/metrics.jsonl");
      CHECK(metrics.back().find("reward") == nullptr);
      CHECK(metrics.back().find("completions/mean_length") != nullptr);
    }
  }
}

TEST_CASE("online: a judge needs online_dpo or inpo and two completions a prompt") {
  const train::TrainOptions options = run_options(1, 2);
  const auto error_of = [&](const std::string& loss, int64_t generations) {
    train::OnlineOptions online;
    online.loss = loss;
    online.num_generations = generations;
    try {
      train::OnlineObjective(online, options, digit_prompts(4), nullptr, ids_text, {},
                             std::make_unique<FixedJudge>(1, nullptr));
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  CHECK(error_of("online_dpo", 2).empty());
  // The judge is part of the settings a resumed run must share.
  train::OnlineOptions online;
  online.loss = "inpo";
  online.num_generations = 2;
  const train::OnlineObjective judged(online, options, digit_prompts(4), nullptr, ids_text, {},
                                      std::make_unique<FixedJudge>(1, nullptr));
  CHECK(judged.settings().at("judge").as_string() == "fixed=1");
  CHECK(judged.settings().at("reward").as_string() == "none");
  CHECK(error_of("online_dpo", 3).find("num_generations (--num-generations) must be 2 with a judge, not 3") !=
        std::string::npos);
  CHECK(error_of("rebel", 2).find("a pairwise judge is for online_dpo and inpo") != std::string::npos);
  CHECK(error_of("grpo", 2).find("a pairwise judge is for online_dpo and inpo") != std::string::npos);
}
