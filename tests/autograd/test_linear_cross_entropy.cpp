// lamina::linear_cross_entropy_sum, the fused LM head + loss, through autograd: gradcheck in f64,
// the same loss and leaf gradients as cross_entropy_sum(matmul(hidden, weight^T)) (f32 within
// tolerance_for(f32)), frozen inputs, a tiny Llama's hidden_states + fused loss against its
// forward + unfused loss, and the trainer's first steps (which take the fused path on a plain
// head) against the same steps taken through the unfused loss.
#include "autograd/autograd.h"
#include "autograd/gradcheck.h"
#include "helpers.h"
#include "train/tiny_training.h"
#include "train/trainer.h"

using namespace lamina;
using testing::random_tensor;
using testing::tolerance_for;

namespace {

// Targets in [0, vocab) with flat positions 1, 5, 9, ... ignored.
Tensor some_ignored(const Shape& shape, int64_t vocab, Generator& gen) {
  std::vector<int64_t> values = randint(0, vocab, shape, gen).to_vector<int64_t>();
  for (size_t i = 1; i < values.size(); i += 4) values[i] = -100;
  return Tensor::from_vector(values, shape);
}

Tensor leaf(const Tensor& values) {
  Tensor out = ops::clone(values);
  out.set_requires_grad(true);
  return out;
}

}  // namespace

TEST_CASE("linear_cross_entropy_sum passes gradcheck in f64 for hidden and weight") {
  Generator gen(11);
  const Tensor hidden = random_tensor({2, 3, 4}, DType::f64, gen);
  const Tensor weight = random_tensor({7, 4}, DType::f64, gen);
  const Tensor targets = some_ignored({2, 3}, 7, gen);
  for (int64_t chunk : {int64_t(1), int64_t(3), int64_t(0)}) {
    INFO("chunk " << chunk);
    const autograd::GradcheckResult result = autograd::gradcheck(
        [&](const std::vector<Tensor>& in) {
          return linear_cross_entropy_sum(in[0], in[1], targets, -100, chunk).loss_sum;
        },
        {hidden, weight});
    INFO(result.worst);
    CHECK(result.passed);
  }
}

TEST_CASE("linear_cross_entropy_sum: loss and gradients equal the unfused composition; frozen inputs") {
  Generator gen(12);
  const Tensor hidden_values = random_tensor({3, 5, 8}, DType::f32, gen);
  const Tensor weight_values = random_tensor({29, 8}, DType::f32, gen);
  const Tensor targets = some_ignored({3, 5}, 29, gen);

  const Tensor hidden = leaf(hidden_values), weight = leaf(weight_values);
  const CrossEntropySum unfused = cross_entropy_sum(matmul(hidden, weight, false, true), targets);
  unfused.loss_sum.backward();
  const Tensor fused_hidden = leaf(hidden_values), fused_weight = leaf(weight_values);
  const CrossEntropySum fused = linear_cross_entropy_sum(fused_hidden, fused_weight, targets, -100, 6);
  fused.loss_sum.backward();
  CHECK(fused.target_count == unfused.target_count);
  CHECK_CLOSE(fused.loss_sum, unfused.loss_sum, tolerance_for(DType::f32));
  CHECK_CLOSE(fused_hidden.grad(), hidden.grad(), tolerance_for(DType::f32));
  CHECK_CLOSE(fused_weight.grad(), weight.grad(), tolerance_for(DType::f32));

  // A frozen head (LoRA elsewhere): only the hidden states get a gradient, the same one.
  const Tensor only_hidden = leaf(hidden_values);
  linear_cross_entropy_sum(only_hidden, weight_values, targets).loss_sum.backward();
  CHECK_CLOSE(only_hidden.grad(), hidden.grad(), tolerance_for(DType::f32));
  // Nothing requires grad: no node, a plain value.
  const CrossEntropySum constant = linear_cross_entropy_sum(hidden_values, weight_values, targets);
  CHECK(constant.loss_sum.is_leaf());
  CHECK(constant.loss_sum.item<double>() == doctest::Approx(unfused.loss_sum.item<double>()).epsilon(1e-5));
}

TEST_CASE("a tiny Llama: hidden_states + the fused loss equal forward + cross_entropy_sum, tied or not") {
  for (bool tied : {false, true}) {
    INFO("tie_word_embeddings " << tied);
    llama::LlamaConfig config = testing::tiny_config();
    config.tie_word_embeddings = tied;
    auto model = testing::random_llama(config, 5);
    Generator gen(13);
    const Tensor ids = randint(0, config.vocab_size, {2, 9}, gen);
    const Tensor targets = some_ignored({2, 9}, config.vocab_size, gen);

    const CrossEntropySum unfused = cross_entropy_sum(model->forward(ids), targets);
    unfused.loss_sum.backward();
    std::vector<Tensor> expected;
    for (const Tensor& p : model->parameters()) {
      expected.push_back(ops::clone(p.grad()));
      p.set_grad(Tensor());
    }
    const CrossEntropySum fused = linear_cross_entropy_sum(model->hidden_states(ids), model->output_weight(), targets);
    fused.loss_sum.backward();
    CHECK_CLOSE(fused.loss_sum, unfused.loss_sum, tolerance_for(DType::f32));
    const std::vector<Tensor> parameters = model->parameters();
    for (size_t i = 0; i < parameters.size(); ++i)
      CHECK_CLOSE(parameters[i].grad(), expected[i], tolerance_for(DType::f32));
  }
}

namespace {

// The causal-LM objective as the trainer computes it, but through the unfused loss
// (model.forward, then cross_entropy_sum): the baseline the fused path must reproduce.
class UnfusedLanguageModelObjective : public train::Objective {
 public:
  UnfusedLanguageModelObjective(std::vector<train::Example> examples, const train::TrainOptions& options)
      : fingerprint_(train::fingerprint(examples)),
        loader_(std::move(examples), loader_options(options)) {}

  train::StepResult step(llama::LlamaWithHead& trained, int64_t /*step*/) override {
    llama::LlamaForCausalLM& model = train::causal_lm(trained, "test");
    const train::Batch batch = loader_.next();
    llama::ForwardOptions forward;
    forward.positions = batch.positions;
    forward.document_ids = batch.document_ids;
    const CrossEntropySum loss = cross_entropy_sum(model.forward(batch.ids, forward), batch.targets);
    div(loss.loss_sum, double(batch.target_tokens)).backward();
    train::StepResult result;
    result.loss = loss.loss_sum.item<double>() / double(batch.target_tokens);
    result.tokens = batch.ids.numel();
    return result;
  }
  json::Value cursor() const override { return loader_.cursor(); }
  void restore(const json::Value& cursor) override { loader_.restore(cursor); }
  train::DataFingerprint fingerprint() const override { return fingerprint_; }

 private:
  static train::LoaderOptions loader_options(const train::TrainOptions& options) {
    train::LoaderOptions out;
    out.batch_size = options.batch_size;
    out.seq_len = options.seq_len;
    out.pack = options.pack;
    out.shuffle = true;
    out.seed = options.seed;
    return out;
  }

  train::DataFingerprint fingerprint_;
  train::DataLoader loader_;
};

struct TrainedRun {
  std::vector<double> losses;
  std::vector<std::vector<double>> weights;
};

// Four steps of the trainer from one seed: its own objective (the fused loss on a plain head)
// or the unfused baseline.
TrainedRun train_four_steps(const llama::LlamaConfig& config, const std::string& precision, bool fused) {
  train::TrainOptions options;
  options.progress = false;
  options.steps = 4;
  options.batch_size = 3;
  options.seq_len = 16;
  options.lr = 3e-3;
  options.warmup_steps = 0;
  options.precision = precision;
  const std::vector<train::Example> data = testing::examples(9, 21);
  auto model = testing::random_llama(config, 7);
  std::unique_ptr<train::Trainer> trainer;
  if (fused)
    trainer = std::make_unique<train::Trainer>(model, options, data);
  else
    trainer = std::make_unique<train::Trainer>(model, options,
                                               std::make_unique<UnfusedLanguageModelObjective>(data, options));
  TrainedRun run;
  trainer->on_metrics = [&](const json::Value& line) { run.losses.push_back(line.at("loss").as_double()); };
  trainer->run();
  for (const Tensor& p : model->parameters()) run.weights.push_back(p.to_vector<double>());
  return run;
}

}  // namespace

TEST_CASE("the trainer's first steps on the fused loss give the unfused path's losses and weights") {
  for (bool tied : {false, true}) {
    INFO("tie_word_embeddings " << tied);
    llama::LlamaConfig config = testing::tiny_config();
    config.tie_word_embeddings = tied;
    const TrainedRun unfused = train_four_steps(config, "f32", false), fused = train_four_steps(config, "f32", true);
    REQUIRE(unfused.losses.size() == 4);
    REQUIRE(fused.losses.size() == 4);
    for (size_t step = 0; step < 4; ++step) {
      INFO("step " << step + 1 << ": unfused " << unfused.losses[step] << ", fused " << fused.losses[step]);
      CHECK(fused.losses[step] == doctest::Approx(unfused.losses[step]).epsilon(1e-5));
    }
    // The steps moved the weights (so equal weights are not trivial) and moved them alike.
    const std::vector<Tensor> start = testing::random_llama(config, 7)->parameters();
    double moved = 0, worst = 0;
    for (size_t i = 0; i < unfused.weights.size(); ++i) {
      const std::vector<double> before = start[i].to_vector<double>();
      for (size_t j = 0; j < unfused.weights[i].size(); ++j) {
        moved = std::max(moved, std::abs(unfused.weights[i][j] - before[j]));
        worst = std::max(worst, std::abs(fused.weights[i][j] - unfused.weights[i][j]));
      }
    }
    INFO("largest update " << moved << ", largest fused/unfused weight difference " << worst);
    CHECK(moved > 1e-3);
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("bf16 training: the fused loss's first steps stay within bf16 rounding of the unfused path's") {
  // Both round the same bf16 logits; they differ only in where f32 sums are rounded to bf16
  // (the loss gradient, dH), so the losses of the first steps agree to well under 1%.
  const TrainedRun unfused = train_four_steps(testing::tiny_config(), "bf16", false);
  const TrainedRun fused = train_four_steps(testing::tiny_config(), "bf16", true);
  REQUIRE(fused.losses.size() == 4);
  REQUIRE(unfused.losses.size() == 4);
  for (size_t step = 0; step < 4; ++step) {
    INFO("step " << step + 1 << ": unfused " << unfused.losses[step] << ", fused " << fused.losses[step]);
    CHECK(fused.losses[step] == doctest::Approx(unfused.losses[step]).epsilon(2e-3));
  }
}

TEST_CASE("linear_cross_entropy_sum: a second backward through the graph (retain_graph) adds the first one's gradients again") {
  // The node keeps these small logits for its backward, which overwrites them: the second
  // backward must recompute them rather than read the first one's gradients.
  Generator gen(32);
  const Tensor hidden = leaf(random_tensor({5, 6}, DType::f32, gen)), weight = leaf(random_tensor({11, 6}, DType::f32, gen));
  const Tensor targets = Tensor::from_vector(std::vector<int64_t>{1, 4, -100, 10, 0}, {5});
  const CrossEntropySum sum = linear_cross_entropy_sum(hidden, weight, targets);
  sum.loss_sum.backward(Tensor(), true);
  const Tensor first_hidden = ops::clone(hidden.grad()), first_weight = ops::clone(weight.grad());
  sum.loss_sum.backward();
  CHECK_CLOSE(hidden.grad(), ops::add(first_hidden, first_hidden), tolerance_for(DType::f32));
  CHECK_CLOSE(weight.grad(), ops::add(first_weight, first_weight), tolerance_for(DType::f32));
}
