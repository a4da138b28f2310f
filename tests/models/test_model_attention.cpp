// The Llama model on the fused attention kernel: the same logits and gradients as the
// materialising reference path (ForwardOptions::reference_attention), packed documents, KV-cache
// decoding, and a sparse plan equal to the reference path under the plan's mask.
#include <cmath>
#include <random>

#include "autograd/autograd.h"
#include "helpers.h"
#include "model_presets.h"
#include "models/llama/model.h"
#include "ops/attention_pattern.h"

using namespace lamina;

namespace {

// The tiny preset (2 layers, 4 query heads on 2 KV heads) in f64, with weights large enough that
// attention is far from uniform, so that a wrong mask or a wrong head moves the logits.
std::shared_ptr<llama::LlamaForCausalLM> f64_model(uint64_t seed) {
  llama::LlamaConfig config = testing::tiny_llama_config(32);
  config.initializer_range = 0.5;
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f64);
  Generator generator(seed);
  model->init_parameters(generator);
  return model;
}

Tensor random_ids(int64_t batch, int64_t tokens, uint32_t seed) {
  std::mt19937 generator(seed);
  std::vector<int64_t> ids(size_t(batch * tokens));
  for (int64_t& id : ids) id = int64_t(generator() % 32);
  return Tensor::from_vector(ids, {batch, tokens});
}

// Logits, and the gradient of every parameter, of sum(logits * weights).
struct Outcome {
  std::vector<double> logits;
  std::vector<std::vector<double>> grads;
};

Outcome run(const llama::LlamaForCausalLM& model, const Tensor& ids, const llama::ForwardOptions& options) {
  for (const Tensor& p : model.parameters()) p.set_grad(Tensor());
  const Tensor logits = model.forward(ids, options);
  Generator generator(11);
  const Tensor weights = uniform(logits.shape(), -1.0, 1.0, generator, DType::f64);
  sum(logits * weights).backward();
  Outcome out{logits.detach().to_vector<double>(), {}};
  for (const Tensor& p : model.parameters()) out.grads.push_back(p.grad().to_vector<double>());
  return out;
}

double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double most = 0;
  for (size_t i = 0; i < a.size(); ++i) most = std::max(most, std::abs(a[i] - b[i]));
  return most;
}

void check_same(const Outcome& fused, const Outcome& reference, double tolerance = 1e-11) {
  CHECK(max_difference(fused.logits, reference.logits) < tolerance);
  REQUIRE(fused.grads.size() == reference.grads.size());
  for (size_t i = 0; i < fused.grads.size(); ++i) CHECK(max_difference(fused.grads[i], reference.grads[i]) < tolerance);
}

}  // namespace

TEST_CASE("the fused attention path gives the reference path's logits and gradients") {
  const auto model = f64_model(3);
  const Tensor ids = random_ids(2, 37, 5);  // not a multiple of the kernel's 64-row tiles' divisors
  llama::ForwardOptions reference;
  reference.reference_attention = true;
  const Outcome fused = run(*model, ids, {}), plain = run(*model, ids, reference);
  check_same(fused, plain);
  // The two paths are different code: a sign or scale slip in either would show here.
  CHECK(max_difference(fused.logits, std::vector<double>(fused.logits.size(), 0.0)) > 0.1);
}

TEST_CASE("packed documents: the fused path's document ids equal the reference's block mask") {
  const auto model = f64_model(4);
  const Tensor ids = random_ids(2, 20, 6);
  std::vector<int64_t> documents(40);
  for (int64_t t = 0; t < 20; ++t) {
    documents[size_t(t)] = t < 7 ? 0 : (t < 8 ? 1 : 2);  // a document of length 1 in the middle
    documents[size_t(20 + t)] = t < 15 ? 0 : -1;         // padding at the end of row 2
  }
  llama::ForwardOptions packed;
  packed.document_ids = Tensor::from_vector(documents, {2, 20});
  llama::ForwardOptions reference = packed;
  reference.reference_attention = true;
  const Outcome fused = run(*model, ids, packed);
  check_same(fused, run(*model, ids, reference));
  // The documents matter: without them the later documents see the earlier ones.
  CHECK(max_difference(fused.logits, run(*model, ids, {}).logits) > 1e-3);
}

TEST_CASE("packed documents over several 64-key tiles: the fused path equals the reference") {
  llama::LlamaConfig config = testing::tiny_llama_config(32);
  config.initializer_range = 0.5;
  config.max_position_embeddings = 256;
  auto model = std::make_shared<llama::LlamaForCausalLM>(config, DType::f64);
  Generator generator(9);
  model->init_parameters(generator);
  const int64_t tokens = 200;
  const Tensor ids = random_ids(2, tokens, 10);
  std::vector<int64_t> documents(size_t(2 * tokens)), positions(size_t(2 * tokens));
  // Row 1: documents of 37, 1, 90 and 72 tokens; row 2: 150 tokens then padding (-1).
  const std::vector<int64_t> lengths{37, 1, 90, 72};
  for (int64_t t = 0, document = 0, start = 0; t < tokens; ++t) {
    if (t - start == lengths[size_t(document)]) start = t, ++document;
    documents[size_t(t)] = document;
    positions[size_t(t)] = t - start;
  }
  for (int64_t t = 0; t < tokens; ++t) {
    documents[size_t(tokens + t)] = t < 150 ? 0 : -1;
    positions[size_t(tokens + t)] = t < 150 ? t : 0;
  }
  llama::ForwardOptions packed;
  packed.document_ids = Tensor::from_vector(documents, {2, tokens});
  packed.positions = Tensor::from_vector(positions, {2, tokens});
  llama::ForwardOptions reference = packed;
  reference.reference_attention = true;
  check_same(run(*model, ids, packed), run(*model, ids, reference));
}

TEST_CASE("KV-cache decoding on the fused path equals the full forward") {
  const auto model = f64_model(5);
  const Tensor ids = random_ids(1, 12, 7);
  autograd::NoGradGuard no_grad;
  const std::vector<double> full = model->forward(ids).to_vector<double>();
  llama::KvCache cache(model->config(), 1, 12, DType::f64);
  llama::ForwardOptions cached;
  cached.cache = &cache;
  std::vector<double> stepped = model->forward(ids.slice(1, 0, 5), cached).to_vector<double>();
  for (int64_t t = 5; t < 12; ++t) {
    const std::vector<double> row = model->forward(ids.slice(1, t, t + 1), cached).to_vector<double>();
    stepped.insert(stepped.end(), row.begin(), row.end());
  }
  CHECK(max_difference(stepped, full) < 1e-11);
}

TEST_CASE("a sparse plan: the fused path equals the reference path under the plan's mask") {
  auto model = f64_model(6);
  const llama::LlamaConfig& config = model->config();
  const int64_t tokens = 29;
  const Tensor ids = random_ids(1, tokens, 8);
  const Outcome dense = run(*model, ids, {});

  // A uniform sink + window plan, the same for every layer, so that one additive mask
  // describes it for the reference path.
  model->model->sparse_attention = llama::SparseAttention::uniform(config, 2, 5);
  const Outcome sparse = run(*model, ids, {});
  const Tensor allowed = attention_pattern_mask(AttentionPattern::sink_window(2, 5), 1, config.num_attention_heads,
                                                tokens, tokens);
  llama::ForwardOptions reference;
  reference.reference_attention = true;
  reference.mask = ops::where(allowed, zeros({1}, DType::f64), full({1}, -INFINITY, DType::f64));
  llama::SparseAttention plan = model->model->sparse_attention;
  model->model->sparse_attention = {};
  check_same(sparse, run(*model, ids, reference));
  CHECK(max_difference(sparse.logits, dense.logits) > 1e-3);  // the plan hides keys that matter

  // A window covering every key is dense attention, whatever the sink.
  model->model->sparse_attention = llama::SparseAttention::uniform(config, 3, tokens);
  check_same(run(*model, ids, {}), dense);

  // Heads of one layer with their own windows (query heads 0 and 1 share KV head 0).
  plan.windows[0] = {1, kAllKeys, 3, 9};
  plan.sinks[0] = {0, 0, 4, 1};
  model->model->sparse_attention = plan;
  const Outcome mixed = run(*model, ids, {});
  CHECK(max_difference(mixed.logits, sparse.logits) > 1e-6);
  // The reference refuses a plan: it is dense-only, and saying so beats a silently dense result.
  CHECK_THROWS_WITH_AS(model->forward(ids, reference), doctest::Contains("no sparse plan"), Error);
}

TEST_CASE("sparse attention plans are checked against the model") {
  const llama::LlamaConfig config = testing::tiny_llama_config(32);
  llama::SparseAttention plan = llama::SparseAttention::uniform(config, 4, 16);
  CHECK(plan.sinks.size() == 2);
  plan.windows[1].pop_back();
  CHECK_THROWS_WITH_AS(plan.check(config), doctest::Contains("layer 1 has 3 windows for 4 query heads"), Error);
  plan = llama::SparseAttention::uniform(config, 4, 16);
  plan.sinks[0][2] = -1;
  CHECK_THROWS_WITH_AS(plan.check(config), doctest::Contains("layer 0 head 2 has sinks -1"), Error);
  CHECK_NOTHROW(llama::SparseAttention{}.check(config));  // empty: dense
}
