// The reward model (LlamaForSequenceClassification): the Bradley–Terry loss and its gradient
// against an f64 hand computation, pooling at each row's last real token, gradients through the
// whole model, save/load as transformers expects, starting from a causal LM, the load errors, and
// rewards that transformers computed for a fixed tiny model.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/llama/reward_model.h"
#include "scratch_dir.h"

using namespace lamina;
using llama::LlamaForSequenceClassification;
using testing::ScratchDir;
namespace fs = std::filesystem;

namespace {

// The tiny preset with a pad token (0) and weights large enough that rewards depend visibly on
// every token.
llama::LlamaConfig reward_config() {
  llama::LlamaConfig config = testing::tiny_llama_config(40);
  config.pad_token_id = 0;
  config.initializer_range = 0.2;
  return config;
}

std::shared_ptr<LlamaForSequenceClassification> random_reward_model(uint64_t seed, DType dtype = DType::f32,
                                                                    int64_t num_labels = 1) {
  auto model = std::make_shared<LlamaForSequenceClassification>(reward_config(), num_labels, dtype);
  Generator generator(seed);
  model->init_parameters(generator);
  return model;
}

Tensor id_rows(const std::vector<int64_t>& ids, int64_t rows) {
  return Tensor::from_vector(ids, {rows, int64_t(ids.size()) / rows});
}
Tensor lengths_of(const std::vector<int64_t>& lengths) { return Tensor::from_vector(lengths, {int64_t(lengths.size())}); }

void write_json(const fs::path& path, const json::Value& value) { std::ofstream(path) << value.dump(2); }

}  // namespace

TEST_CASE("Bradley–Terry loss and gradient equal an f64 hand computation, with margin and centring") {
  const std::vector<double> chosen{0.7, -0.2, 1.5, 0.3, -1.1}, rejected{0.1, 0.4, -0.5, 0.3, -2.0};
  const std::vector<double> margins{0.5, 0.0, 1.0, -0.25, 2.0};
  for (const DType dtype : {DType::f64, DType::f32}) {
    for (const bool with_margin : {false, true}) {
      for (const double coefficient : {0.0, 0.05}) {
        CAPTURE(dtype_name(dtype));
        CAPTURE(with_margin);
        CAPTURE(coefficient);
        const Tensor c = Tensor::from_vector(chosen, {5, 1}, dtype).set_requires_grad();  // a reward model's [N, 1]
        const Tensor r = Tensor::from_vector(rejected, {5}, dtype).set_requires_grad();
        const Tensor m = with_margin ? Tensor::from_vector(margins, {5}) : Tensor();
        const llama::BradleyTerryLoss result = llama::bradley_terry_loss(c, r, m, coefficient);
        result.loss.backward();
        // By hand: loss = mean softplus(-d) + coef mean (c + r)^2, d = c - r - m;
        // dloss/dc = (-sigmoid(-d) + 2 coef (c + r)) / N and dloss/dr = (sigmoid(-d) + 2 coef (c + r)) / N.
        const double n = 5;
        double loss = 0;
        std::vector<double> grad_chosen, grad_rejected;
        for (size_t i = 0; i < 5; ++i) {
          const double d = chosen[i] - rejected[i] - (with_margin ? margins[i] : 0.0), sum = chosen[i] + rejected[i];
          loss += std::log1p(std::exp(-d)) / n + coefficient * sum * sum / n;
          const double pull = 1 / (1 + std::exp(d));
          grad_chosen.push_back((-pull + 2 * coefficient * sum) / n);
          grad_rejected.push_back((pull + 2 * coefficient * sum) / n);
        }
        const testing::Tolerance tolerance = dtype == DType::f64 ? testing::Tolerance{1e-15, 1e-14}
                                                                 : testing::Tolerance{1e-7, 1e-6};
        CHECK_CLOSE(result.loss, Tensor::scalar(loss, DType::f64), tolerance);
        CHECK_CLOSE(c.grad(), Tensor::from_vector(grad_chosen, {5, 1}), tolerance);
        CHECK_CLOSE(r.grad(), Tensor::from_vector(grad_rejected, {5}), tolerance);
        // TRL's metrics, from the rewards alone: the tie (pair 4) is no win.
        CHECK(result.accuracy == doctest::Approx(3.0 / 5));
        CHECK(result.margin == doctest::Approx((0.6 - 0.6 + 2.0 + 0.0 + 0.9) / 5));
        CHECK(result.min_reward == doctest::Approx(-2.0));
        CHECK(result.max_reward == doctest::Approx(1.5));
        CHECK(result.mean_reward == doctest::Approx((1.2 - 1.7) / 10));
      }
    }
  }
  const Tensor three = zeros({3});
  CHECK_THROWS_WITH_AS(llama::bradley_terry_loss(three, zeros({4})), doctest::Contains("same non-empty shape"), Error);
  CHECK_THROWS_WITH_AS(llama::bradley_terry_loss(zeros({3, 2}), zeros({3, 2})), doctest::Contains("[pairs] or [pairs, 1]"), Error);
  CHECK_THROWS_WITH_AS(llama::bradley_terry_loss(three, three, zeros({2})), doctest::Contains("margin must be [3]"), Error);
}

TEST_CASE("the reward is read at each row's last real token, as transformers pools") {
  // The pooling rule alone: the rightmost non-pad id inside [start, end).
  const Tensor ids = id_rows({5, 6, 7, 0, 0, 5, 6, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 9, 4, 0}, 4);
  const std::vector<int64_t> starts{0, 0, 0, 2}, ends{5, 5, 5, 4};
  CHECK(llama::reward_positions(ids, starts, ends, int64_t(0)) == std::vector<int64_t>{2, 4, 0, 3});
  // pad = EOS (TRL's fallback): a row ending in EOS is read before its trailing EOS run, as in HF.
  CHECK(llama::reward_positions(ids, starts, ends, int64_t(2)) == std::vector<int64_t>{4, 1, 4, 3});
  CHECK(llama::reward_positions(ids, starts, ends, std::nullopt) == std::vector<int64_t>{4, 4, 4, 3});
  CHECK_THROWS_WITH_AS(llama::reward_positions(ids, {0, 0, 0, 0}, {5, 5, 6, 4}, int64_t(0)), doctest::Contains("outside"), Error);

  const auto model = random_reward_model(11);
  autograd::NoGradGuard no_grad;
  const std::vector<int64_t> base{1, 5, 9, 33, 7, 1, 17, 8, 0, 0, 1, 4, 0, 0, 0};
  const Tensor lengths = lengths_of({5, 3, 2});
  const std::vector<float> rewards = model->forward(id_rows(base, 3), lengths).to_vector<float>();
  REQUIRE(rewards.size() == 3);
  // Whatever follows a row's length, pad or not, changes nothing, bit for bit.
  std::vector<int64_t> after = base;
  after[8] = 12, after[9] = 3, after[12] = 0, after[13] = 25, after[14] = 39;
  CHECK(model->forward(id_rows(after, 3), lengths).to_vector<float>() == rewards);
  // Its last real token does (and only its own row's reward).
  std::vector<int64_t> last = base;
  last[7] = 9;
  const std::vector<float> changed = model->forward(id_rows(last, 3), lengths).to_vector<float>();
  CHECK(changed[0] == rewards[0]);
  CHECK(changed[1] != rewards[1]);
  CHECK(changed[2] == rewards[2]);
  // Each row alone, unpadded, gives its reward (to rounding: the batch changes the matmul shapes).
  const std::vector<std::vector<int64_t>> rows{{1, 5, 9, 33, 7}, {1, 17, 8}, {1, 4}};
  for (size_t b = 0; b < rows.size(); ++b) {
    const float alone = model->forward(id_rows(rows[b], 1)).item<float>();
    CHECK(alone == doctest::Approx(rewards[b]).epsilon(1e-6));
  }
  // transformers' call without lengths finds the same ends from the pad id; an attention mask of
  // the same right padding is the lengths path exactly.
  CHECK(model->forward(id_rows(base, 3)).to_vector<float>() == rewards);
  const Tensor right_mask = id_rows({1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0}, 3);
  CHECK(model->forward_with_attention_mask(id_rows(base, 3), right_mask).to_vector<float>() == rewards);
  // Left padding: pads hidden, positions counted from the first real token, so each row again
  // gives its reward alone, whatever its pad ids.
  for (const int64_t pad : {int64_t(0), int64_t(23)}) {
    const Tensor left = id_rows({1, 5, 9, 33, 7, pad, pad, 1, 17, 8, pad, pad, pad, 1, 4}, 3);
    const Tensor left_mask = id_rows({1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1}, 3);
    const std::vector<float> left_rewards = model->forward_with_attention_mask(left, left_mask).to_vector<float>();
    for (size_t b = 0; b < 3; ++b) CHECK(left_rewards[b] == doctest::Approx(rewards[b]).epsilon(1e-6));
  }
  // Without a pad id a batch needs lengths (transformers refuses it too); one row does not.
  llama::LlamaConfig no_pad = reward_config();
  no_pad.pad_token_id.reset();
  LlamaForSequenceClassification unpadded(no_pad);
  CHECK_THROWS_WITH_AS(unpadded.forward(id_rows(base, 3)), doctest::Contains("needs config.pad_token_id"), Error);
  CHECK(unpadded.forward(id_rows(base, 3), lengths).shape() == Shape{3, 1});
  CHECK_THROWS_WITH_AS(model->forward(id_rows(base, 3), lengths_of({5, 0, 2})), doctest::Contains("lengths[1] is 0"), Error);
  CHECK_THROWS_WITH_AS(model->forward_with_attention_mask(id_rows(base, 3), id_rows({1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0}, 3)),
                       doctest::Contains("has a gap"), Error);
}

TEST_CASE("the Bradley–Terry loss through the reward model gradchecks, and training separates the pairs") {
  const auto model = random_reward_model(12, DType::f64);
  // Pairs (chosen, rejected) batched through one forward as TRL does: rows 0-1 chosen, 2-3 rejected.
  const Tensor ids = id_rows({1, 5, 9, 33, 1, 17, 0, 0, 1, 5, 9, 30, 1, 18, 8, 0}, 4);
  const Tensor lengths = lengths_of({4, 2, 4, 3});
  auto loss_of = [&] {
    const Tensor rewards = model->forward(ids, lengths);
    return llama::bradley_terry_loss(rewards.slice(0, 0, 2), rewards.slice(0, 2, 4), Tensor(), 0.1).loss;
  };
  loss_of().backward();
  const double h = 1e-6;
  int checked = 0;
  for (const auto& [name, parameter] : model->named_parameters()) {
    const std::vector<double> analytic = parameter.grad().to_vector<double>();
    double* values = parameter.data<double>();
    const int64_t step = std::max<int64_t>(1, parameter.numel() / 5);
    for (int64_t j = 0; j < parameter.numel(); j += step) {
      const double original = values[j];
      autograd::NoGradGuard no_grad;
      values[j] = original + h;
      const double plus = loss_of().item<double>();
      values[j] = original - h;
      const double minus = loss_of().item<double>();
      values[j] = original;
      CAPTURE(name);
      CAPTURE(j);
      CHECK(analytic[size_t(j)] == doctest::Approx((plus - minus) / (2 * h)).epsilon(1e-6).scale(1e-3));
      ++checked;
    }
  }
  CHECK(checked > 100);
  CHECK(model->parameter("score.weight").grad().to_vector<double>() != std::vector<double>(16, 0.0));
  // Plain gradient descent on the same pairs: the loss falls and every pair ends up ordered.
  const double first = loss_of().item<double>();
  for (int step = 0; step < 30; ++step) {
    for (const Tensor& parameter : model->parameters()) parameter.set_grad(Tensor());
    loss_of().backward();
    autograd::NoGradGuard no_grad;
    for (const Tensor& parameter : model->parameters())
      ops::copy_(parameter, ops::binary(ops::BinaryOp::sub, parameter, ops::binary(ops::BinaryOp::mul, parameter.grad(), 0.1)));
  }
  const Tensor rewards = model->forward(ids, lengths);
  const llama::BradleyTerryLoss last = llama::bradley_terry_loss(rewards.slice(0, 0, 2), rewards.slice(0, 2, 4));
  CHECK(first > 0.9);  // 0.94 from the random weights, 0.0055 after the 30 steps
  CHECK(loss_of().item<double>() < 0.05);
  CHECK(last.accuracy == 1.0);
  CHECK(last.margin > 1.0);
}

TEST_CASE("save then load round-trips bit-exactly, in transformers' LlamaForSequenceClassification layout") {
  for (const int64_t labels : {int64_t(1), int64_t(3)}) {
    CAPTURE(labels);
    ScratchDir dir("reward-roundtrip");
    const auto model = random_reward_model(13, DType::f32, labels);
    model->save(dir.path.string());
    const json::Value config = json::parse_file((dir.path / "config.json").string());
    CHECK(config.at("architectures").dump() == R"(["LlamaForSequenceClassification"])");
    CHECK(config.at("pad_token_id").as_int64() == 0);
    CHECK(config.at("id2label").as_object().size() == size_t(labels));
    CHECK(config.at("id2label").at("0").as_string() == "LABEL_0");
    CHECK(config.at("label2id").at("LABEL_0").as_int64() == 0);
    CHECK(config.find("num_labels") == nullptr);  // transformers derives it from id2label
    const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(dir.path.string());
    CHECK(checkpoint.info("score.weight").shape == Shape{labels, 16});
    CHECK(checkpoint.contains("model.embed_tokens.weight"));
    CHECK(checkpoint.contains("model.layers.1.mlp.down_proj.weight"));
    CHECK_FALSE(checkpoint.contains("lm_head.weight"));
    CHECK(checkpoint.names().size() == 2 + 2 * 9 + 1);  // embedding, norm, 9 per layer, score

    const auto loaded = LlamaForSequenceClassification::load(dir.path.string());
    CHECK(loaded->num_labels() == labels);
    CHECK(loaded->config().pad_token_id == int64_t(0));
    const auto original = model->named_parameters(), restored = loaded->named_parameters();
    REQUIRE(original.size() == restored.size());
    for (size_t i = 0; i < original.size(); ++i) {
      CHECK(original[i].first == restored[i].first);
      CHECK(original[i].second.to_vector<float>() == restored[i].second.to_vector<float>());
    }
    autograd::NoGradGuard no_grad;
    const Tensor ids = id_rows({1, 7, 30, 2, 1, 4, 0, 0}, 2);
    const Tensor rewards = model->forward(ids);
    CHECK(rewards.shape() == Shape{2, labels});
    CHECK(rewards.to_vector<float>() == loaded->forward(ids).to_vector<float>());
  }
  // A bf16 save converts on load, as the causal LM does; a bf16 model's rewards come out in f32.
  ScratchDir dir("reward-bf16");
  random_reward_model(14)->save(dir.path.string(), DType::bf16);
  const auto bf16 = LlamaForSequenceClassification::load(dir.path.string(), DType::bf16);
  CHECK(bf16->parameter("score.weight").dtype() == DType::bf16);
  autograd::NoGradGuard no_grad;
  CHECK(bf16->forward(id_rows({1, 7, 30}, 1)).dtype() == DType::f32);
  // Left padding's additive mask suits every parameter dtype.
  const Tensor left = id_rows({0, 1, 7, 30, 1, 7, 30, 2}, 2), left_mask = id_rows({0, 1, 1, 1, 1, 1, 1, 1}, 2);
  const auto f64 = random_reward_model(14, DType::f64);
  const std::vector<double> exact = f64->forward_with_attention_mask(left, left_mask).to_vector<double>();
  const std::vector<double> rounded = bf16->forward_with_attention_mask(left, left_mask).to_vector<double>();
  CHECK(exact[0] == doctest::Approx(f64->forward(id_rows({1, 7, 30}, 1)).item<double>()).epsilon(1e-12));
  CHECK(rounded[0] == doctest::Approx(exact[0]).epsilon(0.05));
}

TEST_CASE("a reward model starts from a causal LM's trunk with a fresh normal(0, initializer_range) head") {
  for (const bool tied : {false, true}) {
    CAPTURE(tied);
    ScratchDir dir("reward-from-causal");
    llama::LlamaConfig config = reward_config();
    config.pad_token_id.reset();
    config.tie_word_embeddings = tied;
    const auto causal = testing::random_llama(config, 15);
    causal->save((dir.path / "causal").string());
    Generator generator(99);
    const auto reward = LlamaForSequenceClassification::from_causal_lm((dir.path / "causal").string(),
                                                                       {1, int64_t(2)}, generator);
    CHECK(reward->config().pad_token_id == int64_t(2));
    // The trunk is the causal LM's, the head the generator's next normal draws times 0.2.
    for (const auto& [name, parameter] : reward->named_parameters()) {
      if (name == "score.weight") continue;
      CAPTURE(name);
      CHECK(parameter.to_vector<float>() == causal->parameter(name).to_vector<float>());
    }
    Generator same(99);
    const Tensor expected = ops::binary(ops::BinaryOp::mul, randn({1, 16}, same, DType::f32), 0.2);
    CHECK(reward->parameter("score.weight").to_vector<float>() == expected.to_vector<float>());
    CHECK_FALSE(reward->parameter("score.weight").to_vector<float>() == std::vector<float>(16, 0.0f));
    // In memory it shares the causal LM's trunk object rather than copying it.
    const auto shared = LlamaForSequenceClassification::from_causal_lm(*causal, {}, generator);
    CHECK(shared->model == causal->model);
    CHECK(shared->num_labels() == 1);
    // Saved, it is a reward-model folder; load() then refuses the causal one, from_causal_lm the saved one.
    reward->save((dir.path / "reward").string());
    CHECK(LlamaForSequenceClassification::load((dir.path / "reward").string())->parameter("score.weight").to_vector<float>() ==
          expected.to_vector<float>());
    CHECK_THROWS_WITH_AS(LlamaForSequenceClassification::load((dir.path / "causal").string()),
                         doctest::Contains("describes a causal LM (architectures: LlamaForCausalLM)"), Error);
    CHECK_THROWS_WITH_AS(LlamaForSequenceClassification::from_causal_lm((dir.path / "reward").string(), {}, generator),
                         doctest::Contains("is already a LlamaForSequenceClassification"), Error);
  }
}

TEST_CASE("bad reward-model folders: causal LM tensors, a missing or misshapen head, label counts") {
  ScratchDir dir("reward-bad");
  const auto model = random_reward_model(16);
  model->save(dir.path.string());
  const std::string weights = (dir.path / "model.safetensors").string();
  const fs::path config_path = dir.path / "config.json";
  const json::Value config = json::parse_file(config_path.string());
  const safetensors::NamedTensors tensors = model->named_parameters();
  auto load = [&] { return LlamaForSequenceClassification::load(dir.path.string()); };

  // A causal LM's folder without "architectures": told apart by its tensors.
  json::Value anonymous = config;
  anonymous.set("architectures", json::Value());
  write_json(config_path, anonymous);
  auto causal_tensors = tensors;
  causal_tensors.back() = {"lm_head.weight", zeros({40, 16})};
  safetensors::save(weights, causal_tensors);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("holds a causal LM's output layer 'lm_head.weight'"), Error);
  causal_tensors.pop_back();
  safetensors::save(weights, causal_tensors);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("has no tensor 'score.weight'"), Error);

  write_json(config_path, config);
  auto misshapen = tensors;
  misshapen.back().second = zeros({2, 16});
  safetensors::save(weights, misshapen);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("'score.weight' in"), Error);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("has shape [2, 16] but the config needs [1, 16] (1 labels"), Error);
  // The same file with two labels declared loads; by a disagreeing num_labels it does not.
  json::Value two_labels = config;
  two_labels.set("id2label", json::parse(R"({"0": "bad", "1": "good"})"));
  write_json(config_path, two_labels);
  CHECK(load()->num_labels() == 2);
  two_labels.set("num_labels", 3);
  write_json(config_path, two_labels);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("num_labels 3 disagrees with the 2 entries of id2label"), Error);

  write_json(config_path, config);
  auto extra = tensors;
  extra.emplace_back("score.bias", zeros({1}));
  safetensors::save(weights, extra);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("'score.bias' that a LlamaForSequenceClassification"), Error);
  json::Value other = config;
  other.set("architectures", json::Array{"LlamaForTokenClassification"});
  write_json(config_path, other);
  CHECK_THROWS_WITH_AS(load(), doctest::Contains("not a LlamaForSequenceClassification"), Error);
}

TEST_CASE("rewards equal transformers' LlamaForSequenceClassification on a fixed tiny model") {
  // The oracle: this model saved by lamina (run the case with LAMINA_REWARD_ORACLE_DIR set to a
  // folder to write it there) and loaded with transformers 5.25.0 (torch 2.15, f32, CPU) as
  // LlamaForSequenceClassification.from_pretrained(folder), called as model(input_ids) with no
  // attention mask, so transformers pools at the last non-pad id (pad 0) by itself. The numbers
  // are its .logits, printed with repr().
  llama::LlamaConfig config = reward_config();
  config.rope_scaling = Llama3RopeScaling{8.0, 1.0, 4.0, 16};
  LlamaForSequenceClassification model(config);
  Generator generator(2024);
  model.init_parameters(generator);
  if (const char* folder = std::getenv("LAMINA_REWARD_ORACLE_DIR")) model.save(folder);
  const Tensor ids = id_rows({1, 5, 9, 33, 7, 21, 1, 17, 8, 0, 0, 0, 1, 4, 38, 2, 2, 0}, 3);
  const std::vector<double> transformers_rewards{-0.2617477774620056, -0.26705074310302734, 0.38223350048065186};
  autograd::NoGradGuard no_grad;
  const Tensor expected = Tensor::from_vector(transformers_rewards, {3, 1});
  CHECK_CLOSE(model.forward(ids), expected, (testing::Tolerance{2e-6, 1e-5}));
  // The same rows left-padded with their attention mask: transformers gave these rewards again
  // (given position_ids from each row's first real token; without them, within 6e-8).
  const Tensor left = id_rows({1, 5, 9, 33, 7, 21, 0, 0, 0, 1, 17, 8, 0, 1, 4, 38, 2, 2}, 3);
  const Tensor left_mask = id_rows({1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1}, 3);
  CHECK_CLOSE(model.forward_with_attention_mask(left, left_mask), expected, (testing::Tolerance{2e-6, 1e-5}));
}
