#include <cmath>

#include "helpers.h"
#include "nn/layers.h"
#include "ops/reference.h"

using namespace lamina;
using testing::random_tensor;

namespace {

// A two-level tree named like a Llama checkpoint: model.embed_tokens, model.layers.N.*, model.norm.
class TinyLayer : public nn::Module {
 public:
  TinyLayer() {
    q_proj = register_module("q_proj", std::make_shared<nn::Linear>(4, 4));
    norm = register_module("input_layernorm", std::make_shared<nn::RMSNorm>(4));
  }
  std::shared_ptr<nn::Linear> q_proj;
  std::shared_ptr<nn::RMSNorm> norm;
};

class TinyModel : public nn::Module {
 public:
  TinyModel() {
    embed = register_module("embed_tokens", std::make_shared<nn::Embedding>(10, 4));
    layers = register_module("layers", std::make_shared<nn::ModuleList>());
    for (int i = 0; i < 2; ++i) layers->push_back(std::make_shared<TinyLayer>());
    norm = register_module("norm", std::make_shared<nn::RMSNorm>(4));
  }
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::ModuleList> layers;
  std::shared_ptr<nn::RMSNorm> norm;
};

class Wrapper : public nn::Module {
 public:
  Wrapper() { model = register_module("model", std::make_shared<TinyModel>()); }
  std::shared_ptr<TinyModel> model;
};

}  // namespace

TEST_CASE("parameters are named by their Hugging Face paths") {
  const Wrapper net;
  std::vector<std::string> names;
  for (const auto& [name, tensor] : net.named_parameters()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"model.embed_tokens.weight", "model.layers.0.q_proj.weight",
                                          "model.layers.0.input_layernorm.weight", "model.layers.1.q_proj.weight",
                                          "model.layers.1.input_layernorm.weight", "model.norm.weight"});
  CHECK(net.parameter_count() == 40 + 2 * (16 + 4) + 4);
  // A parameter looked up by name is the module's own tensor (shared handle).
  CHECK(net.parameter("model.layers.1.q_proj.weight").is_same(net.model->layers->operator[](1)->parameter("q_proj.weight")));
  CHECK_THROWS_WITH_AS(net.parameter("model.layers.2.q_proj.weight"),
                       doctest::Contains("no parameter named 'model.layers.2.q_proj.weight'"), Error);
}

TEST_CASE("freeze and unfreeze by name pattern") {
  Wrapper net;
  CHECK(net.freeze("model.layers.*") == 4);
  CHECK(net.parameter_count(true) == 40 + 4);
  CHECK_FALSE(net.parameter("model.layers.0.q_proj.weight").requires_grad());
  CHECK(net.unfreeze("*.q_proj.weight") == 2);
  CHECK(net.parameter("model.layers.1.q_proj.weight").requires_grad());
  CHECK_FALSE(net.parameter("model.layers.1.input_layernorm.weight").requires_grad());
  CHECK(net.trainable_parameters().size() == 4);
  CHECK_THROWS_WITH_AS(net.freeze("model.layer.*"), doctest::Contains("no parameter name matches 'model.layer.*'"), Error);
  net.eval();
  CHECK_FALSE(net.model->layers->operator[](0)->is_training());
  net.train();
  CHECK(net.model->norm->is_training());
}

TEST_CASE("glob patterns") {
  CHECK(nn::glob_match("*", "anything.at.all"));
  CHECK(nn::glob_match("model.*.weight", "model.layers.3.mlp.weight"));
  CHECK_FALSE(nn::glob_match("model.*.weight", "model.layers.3.mlp.bias"));
  CHECK(nn::glob_match("*q_proj*", "model.layers.0.self_attn.q_proj.weight"));
  CHECK(nn::glob_match("a*b*c", "aXbYbZc"));
  CHECK_FALSE(nn::glob_match("a*b*c", "aXbYbZ"));
  CHECK(nn::glob_match("", ""));
  CHECK_FALSE(nn::glob_match("", "x"));
}

TEST_CASE("Linear, Embedding and RMSNorm compute their definitions and train") {
  Generator gen(1);
  nn::Linear linear(5, 3, {true, DType::f32});
  linear.reset_parameters(gen);
  for (double w : linear.weight().to_vector<double>()) CHECK(std::abs(w) <= 1.0 / std::sqrt(5.0));
  const Tensor x = random_tensor({2, 4, 5}, DType::f32, gen);
  const Tensor expected = ops::reference::binary(
      ops::BinaryOp::add, ops::reference::matmul(x, linear.weight(), false, true), linear.bias());
  CHECK_CLOSE(linear.forward(x), expected, testing::tolerance_for(DType::f32));
  sum(linear.forward(x)).backward();
  CHECK(linear.weight().grad().shape() == Shape{3, 5});
  CHECK_CLOSE(linear.bias().grad(), full({3}, 8.0), testing::tolerance_for(DType::f32));
  CHECK_THROWS_WITH_AS(linear.forward(random_tensor({2, 4}, DType::f32, gen)), doctest::Contains("does not end in 5"), Error);

  nn::Embedding embedding(7, 3);
  embedding.reset_parameters(gen, 0.02);
  const std::vector<double> table = embedding.weight().to_vector<double>();
  double sq = 0;
  for (double v : table) sq += v * v;
  CHECK(std::sqrt(sq / double(table.size())) < 0.05);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{6, 0}, {2});
  CHECK_CLOSE(embedding.forward(ids), ops::reference::embedding(embedding.weight(), ids), (testing::Tolerance{0, 0}));

  nn::RMSNorm norm(5, 1e-6);
  CHECK(norm.weight().to_vector<double>() == std::vector<double>(5, 1.0));
  CHECK_CLOSE(norm.forward(x), ops::reference::rms_norm(x, norm.weight(), 1e-6), testing::tolerance_for(DType::f32));
}
