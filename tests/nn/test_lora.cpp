// LoRA on nn::Linear against formats-and-quantization.md section 3: the forward computed by hand
// in f64, gradients against finite differences, rsLoRA's scale, DoRA (its detached norm
// included), dropout in training only, merge and unmerge, freezing, and several adapters on one
// Llama with one adapter per batch row.
#include <cmath>

#include "autograd/autograd.h"
#include "autograd/checkpoint.h"
#include "autograd/gradcheck.h"
#include "helpers.h"
#include "model_presets.h"
#include "nn/layers.h"
#include "nn/lora.h"

using namespace lamina;
using testing::random_tensor;

namespace {

// y[b][o] = sum_i x[b][i] * M[o][i], all in f64 from plain vectors.
std::vector<double> times_transposed(const std::vector<double>& x, const std::vector<double>& m, int64_t rows,
                                     int64_t inner, int64_t cols) {
  std::vector<double> y(size_t(rows * cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      for (int64_t i = 0; i < inner; ++i) y[size_t(r * cols + c)] += x[size_t(r * inner + i)] * m[size_t(c * inner + i)];
  return y;
}

std::shared_ptr<nn::Linear> random_linear(int64_t in, int64_t out, DType dtype, uint64_t seed, bool bias = false) {
  auto layer = std::make_shared<nn::Linear>(in, out, nn::LinearOptions{bias, dtype});
  Generator generator(seed);
  layer->reset_parameters(generator);
  return layer;
}

// One adapter on a lone Linear, active (a Linear outside a model gets its own selection).
void add_active_adapter(nn::Linear& layer, const std::string& name, const nn::LoraOptions& options, uint64_t seed) {
  Generator generator(seed);
  layer.add_adapter(name, options, generator);
  auto selection = layer.lora_selection();
  if (!selection) {
    selection = std::make_shared<nn::LoraSelection>();
    selection->dropout_generator = Generator(seed + 1);
  }
  selection->adapters.push_back(name);
  selection->active = name;
  layer.set_lora_selection(selection);
}

nn::LoraOptions random_options(int64_t rank, double alpha) {
  nn::LoraOptions options;
  options.rank = rank;
  options.alpha = alpha;
  options.init = nn::LoraInit::random;  // B non-zero, so the adapter changes the output
  return options;
}

double max_abs_difference(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

}  // namespace

TEST_CASE("LoRA forward equals W x + b + (alpha / r) B A x computed by hand in f64") {
  const int64_t in = 5, out = 3, rows = 4, rank = 2;
  const double alpha = 3.0;
  auto layer = random_linear(in, out, DType::f64, 1, /*bias=*/true);
  add_active_adapter(*layer, "default", random_options(rank, alpha), 7);
  layer->eval();
  Generator generator(2);
  const Tensor x = random_tensor({rows, in}, DType::f64, generator);
  const nn::LoraAdapter& adapter = layer->adapter("default");
  CHECK(adapter.lora_A.shape() == Shape{rank, in});
  CHECK(adapter.lora_B.shape() == Shape{out, rank});

  const std::vector<double> xs = x.to_vector<double>(), w = layer->weight().to_vector<double>(),
                            b = layer->bias().to_vector<double>(), a = adapter.lora_A.to_vector<double>(),
                            bb = adapter.lora_B.to_vector<double>();
  const std::vector<double> base = times_transposed(xs, w, rows, in, out);
  const std::vector<double> ax = times_transposed(xs, a, rows, in, rank);
  const std::vector<double> bax = times_transposed(ax, bb, rows, rank, out);
  std::vector<double> expected(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const size_t k = size_t(r * out + o);
      expected[k] = base[k] + b[size_t(o)] + alpha / double(rank) * bax[k];
    }
  CHECK_CLOSE(layer->forward(x), Tensor::from_vector(expected, {rows, out}), testing::tolerance_for(DType::f64));
  // The adapter really changed the output (B is not zero here).
  nn::LoraSelection& selection = *layer->lora_selection();
  selection.active.clear();
  const Tensor plain = layer->forward(x);
  CHECK(max_abs_difference(plain, layer->forward(x)) == 0);
  CHECK(max_abs_difference(plain, Tensor::from_vector(expected, {rows, out})) > 1e-3);
}

TEST_CASE("PEFT's default init: A uniform in +-1/sqrt(in), B zero; gaussian: A with std 1/r") {
  const int64_t in = 64, out = 8, rank = 16;
  auto layer = random_linear(in, out, DType::f32, 1);
  nn::LoraOptions options;
  options.rank = rank;
  add_active_adapter(*layer, "default", options, 3);
  const std::vector<float> a = layer->adapter("default").lora_A.to_vector<float>();
  float largest = 0;
  for (float v : a) largest = std::max(largest, std::abs(v));
  CHECK(largest <= 1.0f / 8.0f);
  CHECK(largest > 0.9f / 8.0f);  // fills the range, not a narrower one
  for (float v : layer->adapter("default").lora_B.to_vector<float>()) CHECK(v == 0.0f);

  options.init = nn::LoraInit::gaussian;
  add_active_adapter(*layer, "gauss", options, 4);
  double sum_squares = 0;
  const std::vector<float> g = layer->adapter("gauss").lora_A.to_vector<float>();
  for (float v : g) sum_squares += double(v) * v;
  const double std_dev = std::sqrt(sum_squares / double(g.size()));
  CHECK(std_dev == doctest::Approx(1.0 / rank).epsilon(0.1));
}

TEST_CASE("rsLoRA scales by alpha / sqrt(r) instead of alpha / r") {
  nn::LoraOptions options;
  options.rank = 16;
  options.alpha = 32;
  CHECK(options.scale() == 2.0);
  options.use_rslora = true;
  CHECK(options.scale() == 8.0);

  // In a forward: the same A and B, rank 4 -> the rsLoRA branch is twice the plain one.
  auto layer = random_linear(6, 5, DType::f64, 3);
  nn::LoraOptions plain = random_options(4, 2.0), rs = plain;
  rs.use_rslora = true;
  add_active_adapter(*layer, "plain", plain, 9);
  add_active_adapter(*layer, "rs", rs, 9);  // same seed: same A and B
  Generator generator(5);
  const Tensor x = random_tensor({3, 6}, DType::f64, generator);
  auto& selection = *layer->lora_selection();
  selection.active.clear();
  const Tensor base = layer->forward(x);
  selection.active = "plain";
  const Tensor plain_delta = ops::sub(layer->forward(x), base);
  selection.active = "rs";
  const Tensor rs_delta = ops::sub(layer->forward(x), base);
  CHECK(max_abs_difference(plain_delta, ops::binary(ops::BinaryOp::mul, rs_delta, 0.5)) < 1e-14);
  CHECK(max_abs_difference(plain_delta, rs_delta) > 1e-3);
}

TEST_CASE("gradcheck: A, B and the input through a LoRA Linear (f64)") {
  auto layer = random_linear(4, 3, DType::f64, 11, /*bias=*/true);
  add_active_adapter(*layer, "default", random_options(2, 5.0), 12);
  layer->eval();
  nn::LoraAdapter& adapter = layer->adapter("default");
  Generator generator(13);
  const Tensor x = random_tensor({2, 3, 4}, DType::f64, generator);
  const auto result = autograd::gradcheck(
      [&](const std::vector<Tensor>& inputs) {
        adapter.lora_A = inputs[0];
        adapter.lora_B = inputs[1];
        return layer->forward(inputs[2]);
      },
      {adapter.lora_A, adapter.lora_B, x});
  INFO(result.worst);
  CHECK(result.passed);
}

TEST_CASE("DoRA: magnitude starts at the row norms of W; forward is b + (m / N) (x W^T + s x A^T B^T)") {
  const int64_t in = 5, out = 4, rows = 3, rank = 2;
  auto layer = random_linear(in, out, DType::f64, 21, /*bias=*/true);
  nn::LoraOptions options;  // B = 0 at first: the adapter is the identity
  options.rank = rank;
  options.alpha = 4;
  options.use_dora = true;
  add_active_adapter(*layer, "default", options, 22);
  layer->eval();
  nn::LoraAdapter& adapter = layer->adapter("default");
  const std::vector<double> w = layer->weight().to_vector<double>();
  const std::vector<double> m0 = adapter.magnitude.to_vector<double>();
  for (int64_t o = 0; o < out; ++o) {
    double norm = 0;
    for (int64_t i = 0; i < in; ++i) norm += w[size_t(o * in + i)] * w[size_t(o * in + i)];
    CHECK(m0[size_t(o)] == doctest::Approx(std::sqrt(norm)).epsilon(1e-14));
  }
  Generator generator(23);
  const Tensor x = random_tensor({rows, in}, DType::f64, generator);
  layer->lora_selection()->active.clear();
  const Tensor base = layer->forward(x);
  layer->lora_selection()->active = "default";
  CHECK(max_abs_difference(layer->forward(x), base) < 1e-14);

  // Now a non-trivial adapter and magnitude, against the formula by hand.
  adapter.lora_B.set_data(random_tensor({out, rank}, DType::f64, generator));
  adapter.magnitude.set_data(random_tensor({out}, DType::f64, generator, 0.5, 2.0));
  const double s = options.scale();
  const std::vector<double> xs = x.to_vector<double>(), a = adapter.lora_A.to_vector<double>(),
                            bb = adapter.lora_B.to_vector<double>(), m = adapter.magnitude.to_vector<double>(),
                            bias = layer->bias().to_vector<double>();
  std::vector<double> merged = w;  // W + s B A
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i)
      for (int64_t k = 0; k < rank; ++k) merged[size_t(o * in + i)] += s * bb[size_t(o * rank + k)] * a[size_t(k * in + i)];
  const std::vector<double> product = times_transposed(xs, merged, rows, in, out);
  std::vector<double> expected(size_t(rows * out));
  for (int64_t o = 0; o < out; ++o) {
    double norm = 0;
    for (int64_t i = 0; i < in; ++i) norm += merged[size_t(o * in + i)] * merged[size_t(o * in + i)];
    for (int64_t r = 0; r < rows; ++r)
      expected[size_t(r * out + o)] = bias[size_t(o)] + m[size_t(o)] / std::sqrt(norm) * product[size_t(r * out + o)];
  }
  CHECK_CLOSE(layer->forward(x), Tensor::from_vector(expected, {rows, out}), testing::tolerance_for(DType::f64));
}

TEST_CASE("DoRA: gradcheck of the magnitude, and no gradient through the norm (PEFT detaches it)") {
  const int64_t in = 4, out = 3, rank = 2;
  auto layer = random_linear(in, out, DType::f64, 31);
  nn::LoraOptions options = random_options(rank, 2.0);
  options.use_dora = true;
  add_active_adapter(*layer, "default", options, 32);
  layer->eval();
  nn::LoraAdapter& adapter = layer->adapter("default");
  Generator generator(33);
  adapter.magnitude.set_data(random_tensor({out}, DType::f64, generator, 0.5, 2.0));
  const Tensor x = random_tensor({5, in}, DType::f64, generator);
  const Tensor magnitude = adapter.magnitude, lora_a = adapter.lora_A, lora_b = adapter.lora_B;

  // A's gradient from the layer is the one with N held constant, not the one through N
  // (checked first: the gradient check's backward passes also reach A).
  const Tensor projection = random_tensor({5, out}, DType::f64, generator);
  sum(mul(layer->forward(x), projection)).backward();
  const Tensor layer_grad = lora_a.grad();
  REQUIRE(layer_grad.defined());
  const double s = options.scale();
  const auto formula_grad = [&](bool norm_detached) {
    const Tensor a = ops::clone(lora_a.detach());
    a.set_requires_grad(true);
    const Tensor weight = add(layer->weight().detach(), mul(matmul(lora_b.detach(), a), s));
    Tensor norm = sqrt(sum(square(weight), {1}));
    if (norm_detached) norm = norm.detach();
    const Tensor y = mul(div(magnitude.detach(), norm), matmul(x, weight, false, true));
    sum(mul(y, projection)).backward();
    return a.grad();
  };
  CHECK(max_abs_difference(layer_grad, formula_grad(true)) < 1e-12);
  CHECK(max_abs_difference(layer_grad, formula_grad(false)) > 1e-6);

  const auto result = autograd::gradcheck(
      [&](const std::vector<Tensor>& inputs) {
        adapter.magnitude = inputs[0];
        return layer->forward(x);
      },
      {magnitude});
  INFO(result.worst);
  CHECK(result.passed);
  adapter.magnitude = magnitude;
}

TEST_CASE("dropout acts on the adapter branch only, in training only, reproducibly") {
  const int64_t in = 16, out = 8;
  const auto make = [&](bool zero_b) {
    auto layer = random_linear(in, out, DType::f32, 41);
    nn::LoraOptions options = random_options(4, 8.0);
    options.dropout = 0.5;
    if (zero_b) options.init = nn::LoraInit::kaiming;
    add_active_adapter(*layer, "default", options, 42);
    return layer;
  };
  Generator generator(43);
  const Tensor x = random_tensor({6, in}, DType::f32, generator);
  auto layer = make(false);
  layer->eval();
  const Tensor eval_a = layer->forward(x), eval_b = layer->forward(x);
  CHECK(max_abs_difference(eval_a, eval_b) == 0);
  layer->train();
  const Tensor train_a = layer->forward(x), train_b = layer->forward(x);
  CHECK(max_abs_difference(train_a, eval_a) > 1e-3);   // masks applied in training
  CHECK(max_abs_difference(train_a, train_b) > 1e-3);  // a fresh mask per call
  // The same seeds give the same masks.
  auto twin = make(false);
  twin->train();
  CHECK(max_abs_difference(twin->forward(x), train_a) == 0);
  // With B = 0 the branch adds nothing, so the base path must be exactly undropped.
  auto zero = make(true);
  zero->train();
  zero->lora_selection()->active.clear();
  const Tensor base = zero->forward(x);
  zero->lora_selection()->active = "default";
  CHECK(max_abs_difference(zero->forward(x), base) == 0);
}

TEST_CASE("LoRA dropout under activation checkpointing: the model's one stream is rewound for the re-run") {
  auto layer = random_linear(8, 4, DType::f64, 44);
  nn::LoraOptions options = random_options(2, 2.0);
  options.dropout = 0.5;
  add_active_adapter(*layer, "default", options, 45);
  layer->train();
  Generator generator(46);
  const Tensor x = random_tensor({5, 8}, DType::f64, generator);
  nn::LoraSelection& selection = *layer->lora_selection();
  const Generator start = selection.dropout_generator;
  const Tensor lora_a = layer->adapter("default").lora_A;
  sum(square(layer->forward(x))).backward();
  const Tensor direct = ops::clone(lora_a.grad());
  lora_a.set_grad(Tensor());
  selection.dropout_generator = start;
  const auto run = [&](const std::vector<Tensor>& in) { return std::vector<Tensor>{layer->forward(in[0])}; };
  const Tensor out = autograd::checkpoint(run, {x}, layer->parameters(), &selection.dropout_generator)[0];
  sum(square(out)).backward();
  CHECK(max_abs_difference(lora_a.grad(), direct) < 1e-12);
}

TEST_CASE("merge gives the adapter's forward; unmerge restores W (bit-exact on a binary grid)") {
  SUBCASE("random f32 values: merged == adapter forward, unmerge within f32 rounding") {
    for (const bool dora : {false, true}) {
      auto layer = random_linear(12, 7, DType::f32, 51, /*bias=*/true);
      nn::LoraOptions options = random_options(3, 6.0);
      options.use_dora = dora;
      add_active_adapter(*layer, "default", options, 52);
      if (dora) {
        Generator magnitudes(50);
        layer->adapter("default").magnitude.set_data(random_tensor({7}, DType::f32, magnitudes, 0.5, 2.0));
      }
      layer->eval();
      const Tensor original = ops::clone(layer->weight());
      Generator generator(53);
      const Tensor x = random_tensor({4, 12}, DType::f32, generator);
      const Tensor adapted = layer->forward(x);
      layer->merge_adapter("default");
      CHECK(layer->merged_adapter() == "default");
      CHECK(max_abs_difference(layer->weight(), original) > 1e-3);
      CHECK_CLOSE(layer->forward(x), adapted, (testing::Tolerance{2e-5, 2e-5}));
      // Another choice while merged would double-count or miss the delta.
      layer->lora_selection()->active.clear();
      CHECK_THROWS_WITH_AS(layer->forward(x), doctest::Contains("merged"), Error);
      layer->lora_selection()->active = "default";
      layer->unmerge_adapter();
      // Bound: a few ulp of |W| + |delta| (one rounding in the merge, one in the unmerge, DoRA's
      // division by m / N one more).
      const std::vector<float> restored = layer->weight().to_vector<float>(), before = original.to_vector<float>();
      for (size_t i = 0; i < before.size(); ++i) CHECK(std::abs(restored[i] - before[i]) <= 4 * 6e-8f * (std::abs(before[i]) + 10.0f));
      CHECK_CLOSE(layer->forward(x), adapted, (testing::Tolerance{1e-5, 1e-5}));
    }
  }
  SUBCASE("values on a binary grid: W + s B A is exact, so unmerge is bit-exact") {
    auto layer = std::make_shared<nn::Linear>(4, 3);
    nn::LoraOptions options = random_options(2, 4.0);  // s = 2
    add_active_adapter(*layer, "default", options, 61);
    std::vector<float> w(12), a(8), b(6);
    for (size_t i = 0; i < w.size(); ++i) w[i] = float(int(i) - 5) / 8.0f;
    for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 5) - 2) / 4.0f;
    for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 3) - 1) / 2.0f;
    layer->weight().set_data(Tensor::from_vector(w, {3, 4}));
    layer->adapter("default").lora_A.set_data(Tensor::from_vector(a, {2, 4}));
    layer->adapter("default").lora_B.set_data(Tensor::from_vector(b, {3, 2}));
    layer->merge_adapter("default");
    const std::vector<float> merged = layer->weight().to_vector<float>();
    // merged[o][i] = w + 2 * sum_k b[o][k] a[k][i], checked for one element by hand: o = 2, i = 3.
    CHECK(merged[11] == w[11] + 2.0f * (b[4] * a[3] + b[5] * a[7]));
    layer->unmerge_adapter();
    CHECK(layer->weight().to_vector<float>() == w);
  }
}

TEST_CASE("apply_lora targets PEFT's module names; only adapter parameters train") {
  const auto model = testing::random_llama(testing::tiny_llama_config(32), 71);
  SUBCASE("a list of names") {
    nn::LoraConfig config;
    config.target_modules = {"q_proj", "v_proj"};
    const auto paths = nn::apply_lora(*model, config);
    CHECK(paths == std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"});
    CHECK_NOTHROW(model->parameter("model.layers.1.self_attn.v_proj.lora_A.default.weight"));
    CHECK_NOTHROW(model->parameter("model.layers.1.self_attn.v_proj.lora_B.default.weight"));
  }
  SUBCASE("all-linear: every Linear but lm_head; lm_head only when named") {
    nn::LoraConfig config;
    config.target_modules = {"all-linear"};
    const auto paths = nn::apply_lora(*model, config);
    CHECK(paths.size() == 14);
    for (const std::string& path : paths) CHECK(path.find("lm_head") == std::string::npos);
    config.target_modules = {"lm_head"};
    CHECK(nn::apply_lora(*model, config, "head") == std::vector<std::string>{"lm_head"});
  }
  SUBCASE("a regex string must match the whole path; exclusions by name and by regex") {
    nn::LoraConfig config;
    config.target_regex = "model\\.layers\\.1\\..*_proj";
    CHECK(nn::apply_lora(*model, config).size() == 7);
    config.target_regex.clear();
    config.target_modules = {"all-linear"};
    config.exclude_modules = {"k_proj"};
    config.exclude_regex = ".*\\.mlp\\..*";
    CHECK(nn::apply_lora(*model, config, "second") ==
          std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                   "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.q_proj",
                                   "model.layers.1.self_attn.v_proj", "model.layers.1.self_attn.o_proj"});
  }
  SUBCASE("rank_pattern and alpha_pattern override per module") {
    nn::LoraConfig config;
    config.options.rank = 4;
    config.rank_pattern = {{"layers\\.0\\.self_attn\\.q_proj", 2}};
    config.alpha_pattern = {{"v_proj", 3.0}};
    nn::apply_lora(*model, config);
    CHECK(model->parameter("model.layers.0.self_attn.q_proj.lora_A.default.weight").size(0) == 2);
    CHECK(model->parameter("model.layers.1.self_attn.q_proj.lora_A.default.weight").size(0) == 4);
    const auto& v = std::dynamic_pointer_cast<llama::LlamaDecoderLayer>((*model->model->layers)[0])->self_attn->v_proj;
    CHECK(v->adapter("default").options.alpha == 3.0);
  }
  SUBCASE("a name matching nothing is an error naming the model's modules") {
    nn::LoraConfig config;
    config.target_modules = {"qkv_proj"};
    CHECK_THROWS_WITH_AS(nn::apply_lora(*model, config), doctest::Contains("model.layers.0.self_attn.q_proj"), Error);
  }
  SUBCASE("the base is frozen: no gradient reaches it") {
    nn::LoraConfig config;
    config.target_modules = {"all-linear"};
    config.options.init = nn::LoraInit::random;
    nn::apply_lora(*model, config);
    int64_t trainable = 0;
    for (const auto& [name, parameter] : model->named_parameters()) {
      const bool is_adapter = name.find(".lora_") != std::string::npos;
      CHECK_MESSAGE(parameter.requires_grad() == is_adapter, name);
      trainable += is_adapter ? 1 : 0;
    }
    CHECK(int64_t(model->trainable_parameters().size()) == trainable);
    CHECK(trainable == 28);
    const Tensor ids = Tensor::from_vector<int64_t>({3, 5, 7, 9}, {1, 4});
    sum(model->forward(ids)).backward();
    for (const auto& [name, parameter] : model->named_parameters()) {
      const bool is_adapter = name.find(".lora_") != std::string::npos;
      CHECK_MESSAGE(parameter.grad().defined() == is_adapter, name);
    }
  }
}

TEST_CASE("several adapters on one Llama: active, disabled, and one per batch row") {
  const auto model = testing::random_llama(testing::tiny_llama_config(32), 81, DType::f64);
  model->eval();
  nn::LoraConfig first;
  first.target_modules = {"q_proj", "v_proj", "down_proj"};
  first.options = random_options(4, 8.0);
  first.seed = 1;
  nn::LoraConfig second = first;
  second.target_modules = {"all-linear"};
  second.options.use_dora = true;
  second.seed = 2;
  const Tensor ids = Tensor::from_vector<int64_t>({3, 5, 7, 9, 11, 4, 2, 8, 30, 1, 6, 12}, {3, 4});
  const Tensor base = model->forward(ids);
  nn::apply_lora(*model, first, "first");
  nn::apply_lora(*model, second, "second");
  // DoRA with a non-trivial magnitude.
  for (const auto& [path, linear] : nn::named_linears(*model))
    if (linear->has_adapter("second")) {
      Generator generator(linear->out_features());
      linear->adapter("second").magnitude.set_data(random_tensor({linear->out_features()}, DType::f64, generator, 0.5, 2.0));
    }
  nn::set_active_adapter(*model, "first");
  const Tensor with_first = model->forward(ids);
  nn::set_active_adapter(*model, "second");
  const Tensor with_second = model->forward(ids);
  nn::disable_adapters(*model);
  CHECK(max_abs_difference(model->forward(ids), base) == 0);
  CHECK(max_abs_difference(with_first, base) > 1e-3);
  CHECK(max_abs_difference(with_second, base) > 1e-3);
  CHECK(max_abs_difference(with_first, with_second) > 1e-3);

  // Rows 0, 1, 2 use second, base, first; each must equal its row run alone.
  nn::set_row_adapters(*model, {nn::adapter_index(*model, "second"), -1, nn::adapter_index(*model, "first")});
  const Tensor mixed = model->forward(ids);
  const testing::Tolerance tight = testing::tolerance_for(DType::f64);
  CHECK_CLOSE(mixed.narrow(0, 0, 1), with_second.narrow(0, 0, 1), tight);
  CHECK_CLOSE(mixed.narrow(0, 1, 1), base.narrow(0, 1, 1), tight);
  CHECK_CLOSE(mixed.narrow(0, 2, 1), with_first.narrow(0, 2, 1), tight);
  CHECK_THROWS_WITH_AS(nn::set_row_adapters(*model, {0, 2, -1}), doctest::Contains("out of range"), Error);
  CHECK_THROWS_WITH_AS(nn::set_active_adapter(*model, "third"), doctest::Contains("first, second"), Error);

  // Merging one adapter reproduces its forward; unmerging returns to the base.
  nn::merge_adapter(*model, "second");
  CHECK_CLOSE(model->forward(ids), with_second, (testing::Tolerance{1e-10, 1e-10}));
  nn::unmerge_adapter(*model);
  nn::disable_adapters(*model);
  CHECK_CLOSE(model->forward(ids), base, (testing::Tolerance{1e-10, 1e-10}));
  // merge_and_unload leaves a plain model with the adapter folded in.
  nn::merge_and_unload(*model, "first");
  for (const auto& [name, parameter] : model->named_parameters()) CHECK(name.find("lora") == std::string::npos);
  CHECK_CLOSE(model->forward(ids), with_first, (testing::Tolerance{1e-10, 1e-10}));
}

TEST_CASE("lora: an adapter on lm_head changes the logits, and the adapters-off model is the base") {
  // forward() once multiplied by lm_head's weight directly, so a head adapter was never applied
  // (nor trained). The logits must be the head module's own forward: base plus adapter.
  const auto model = testing::random_llama(testing::tiny_llama_config(32), 73);
  REQUIRE(model->lm_head != nullptr);
  const Tensor ids = Tensor::from_vector(std::vector<int64_t>{1, 5, 9, 2}, {1, 4}, DType::i64);
  const std::vector<double> base = model->forward(ids).to_vector<double>();
  nn::LoraConfig config;
  config.target_modules = {"lm_head"};
  config.options.init = nn::LoraInit::random;  // a non-zero adapter from the start
  REQUIRE(nn::apply_lora(*model, config) == std::vector<std::string>{"lm_head"});
  const std::vector<double> adapted = model->forward(ids).to_vector<double>();
  CHECK(adapted != base);
  CHECK(adapted == model->lm_head->forward(model->hidden_states(ids)).to_vector<double>());
  nn::disable_adapters(*model);
  CHECK(model->forward(ids).to_vector<double>() == base);
}
