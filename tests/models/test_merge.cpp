// Model merging (models/merge): the per-tensor methods on hand-made tensors with hand-computed
// results, SLERP's endpoints and its known midpoint, the recipe reader's errors and per-tensor
// rules, and the streaming driver on tiny saved models (copies of one model merge back into it;
// mismatched models are refused naming the field or tensor).
#include <cmath>
#include <cstring>
#include <filesystem>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/merge/merge.h"
#include "models/merge/methods.h"
#include "models/merge/recipe.h"
#include "scratch_dir.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

Tensor vector_of(const std::vector<float>& values) { return Tensor::from_vector<float>(values, {int64_t(values.size())}); }

merge::Recipe recipe_of(const std::string& text) { return merge::Recipe::from_json(json::parse(text), "r.json"); }

// The hand-made task vectors of the TIES cases (dyadic values, so every sum is exact in f32).
const std::vector<float> kBase = {1, 2, -1, 0.5, 3};
const std::vector<std::vector<float>> kDeltas = {{0.5, -0.25, 0, 1.0, -0.125},
                                                 {-0.375, -0.5, 0.75, -0.125, 0.25},
                                                 {0.125, 0.375, -1.0, 0.5, 0.0625}};

std::vector<Tensor> ties_models() {
  std::vector<Tensor> models;
  for (const auto& delta : kDeltas) {
    std::vector<float> values(kBase.size());
    for (size_t j = 0; j < values.size(); ++j) values[j] = kBase[j] + delta[j];
    models.push_back(vector_of(values));
  }
  return models;
}

}  // namespace

TEST_CASE("merge::linear and task_arithmetic compute their weighted sums") {
  const Tensor a = vector_of({1, 2, 3}), b = vector_of({3, -2, 5});
  CHECK(merge::linear({a, b}, {1, 3}, true).to_vector<float>() == std::vector<float>{2.5, -1, 4.5});
  CHECK(merge::linear({a, b}, {1, 3}, false).to_vector<float>() == std::vector<float>{10, -4, 18});
  CHECK(error_of([&] { merge::linear({a, b}, {1, -1}, true); }).find("sum to zero") != std::string::npos);
  const Tensor base = vector_of({1, 1, 1});
  // base + 0.5 * (1 * (a - base) + 3 * (b - base)) = 1 + 0.5 * {6, -8, 14}
  CHECK(merge::task_arithmetic(base, {a, b}, {1, 3}, false, 0.5).to_vector<float>() == std::vector<float>{4, -3, 8});
  // normalised: base + (a - base + 3 (b - base)) / 4
  CHECK(merge::task_arithmetic(base, {a, b}, {1, 3}, true).to_vector<float>() == std::vector<float>{2.5, -1, 4.5});
}

TEST_CASE("merge::slerp returns its endpoints at t = 0 and 1 and follows the arc between") {
  Generator generator(11);
  const Tensor from = random_tensor({4, 6}, DType::f32, generator);
  const Tensor to = random_tensor({4, 6}, DType::f32, generator);
  CHECK(same_bytes(merge::slerp(from, to, 0), from));
  CHECK(same_bytes(merge::slerp(from, to, 1), to));

  // Two orthogonal unit vectors: the midpoint of the quarter circle, and a third of the way.
  const Tensor x = vector_of({1, 0}), y = vector_of({0, 1});
  const float half = float(std::sqrt(0.5));
  CHECK_CLOSE(merge::slerp(x, y, 0.5), vector_of({half, half}), (Tolerance{1e-7, 0}));
  CHECK_CLOSE(merge::slerp(x, y, 1.0 / 3), vector_of({float(std::sqrt(3.0) / 2), 0.5f}), (Tolerance{1e-7, 0}));
  // Lengths scale the arc's weights, not its angle: 2x and 2y meet at 2 * midpoint.
  CHECK_CLOSE(merge::slerp(vector_of({2, 0}), vector_of({0, 2}), 0.5), vector_of({2 * half, 2 * half}),
              (Tolerance{1e-6, 0}));
  // Nearly parallel (cos > 0.9995): the linear interpolation exactly.
  const Tensor near = vector_of({1, 0.01f});
  CHECK(merge::slerp(x, near, 0.5).to_vector<float>() == std::vector<float>{1, 0.005f});
  // A zero tensor has no direction: linear too.
  CHECK(merge::slerp(vector_of({0, 0}), y, 0.25).to_vector<float>() == std::vector<float>{0, 0.25f});
}

TEST_CASE("merge::keep_top_magnitude keeps the largest entries, ties at the cut broken by position") {
  const Tensor delta = vector_of({0.1f, -0.9f, 0.4f, -0.4f, 0.2f});
  CHECK(merge::keep_top_magnitude(delta, 0.4).to_vector<float>() == std::vector<float>{0, -0.9f, 0.4f, 0, 0});
  CHECK(merge::keep_top_magnitude(delta, 0.6).to_vector<float>() == std::vector<float>{0, -0.9f, 0.4f, -0.4f, 0});
  CHECK(merge::keep_top_magnitude(delta, 0.19).to_vector<float>() == std::vector<float>{0, 0, 0, 0, 0});
  CHECK(same_bytes(merge::keep_top_magnitude(delta, 1), delta));
}

TEST_CASE("TIES trims, elects a sign per entry and averages the agreeing entries") {
  const Tensor base = vector_of(kBase);
  std::vector<Tensor> trimmed;
  for (const Tensor& model : ties_models()) trimmed.push_back(merge::keep_top_magnitude(merge::subtract(model, base), 0.6));
  // Trimmed to 3 of 5: {0.5, -0.25, 0, 1, 0}, {-0.375, -0.5, 0.75, 0, 0}, {0, 0.375, -1, 0.5, 0}.
  // Sums 0.125, -0.375, -0.25, 1.5, 0 elect +, -, -, +, none; agreeing means 0.5, -0.375, -1, 0.75, 0.
  CHECK(merge::sign_consensus_sum(trimmed, {1, 1, 1}, true).to_vector<float>() ==
        std::vector<float>{0.5, -0.375, -1, 0.75, 0});
  CHECK(merge::sign_consensus_sum(trimmed, {1, 1, 1}, false).to_vector<float>() ==
        std::vector<float>{0.5, -0.75, -1, 1.5, 0});
  // Weights 1, 2, 1 turn entry 0's vote to minus (0.5 - 0.75) and entry 2's to plus (1.5 - 1):
  // weighted means -0.75/2, -1.25/3, 1.5/2, 1.5/2, 0.
  CHECK_CLOSE(merge::sign_consensus_sum(trimmed, {1, 2, 1}, true), vector_of({-0.375f, -1.25f / 3, 0.75f, 0.75f, 0}),
              (Tolerance{1e-7, 0}));

  // The same through a recipe, with the density per model and lambda 2.
  const merge::Recipe recipe = recipe_of(R"({"method": "ties", "base_model": "b",
      "models": [{"model": "m1", "density": 0.6}, {"model": "m2", "parameters": {"density": 0.6}}, {"model": "m3"}],
      "parameters": {"density": 0.6, "lambda": 2}})");
  std::vector<Tensor> inputs = {base};
  for (const Tensor& model : ties_models()) inputs.push_back(model);
  CHECK(merge::merge_tensor(recipe, "x", inputs, 1, 0).to_vector<float>() == std::vector<float>{2, 1.25, -3, 2, 3});
}

TEST_CASE("DARE drops entries with probability 1 - density and rescales the rest, seeded") {
  const int64_t count = 100000;
  const Tensor ones = Tensor::from_vector<float>(std::vector<float>(size_t(count), 1.0f), {count});
  const Tensor dropped = merge::drop_and_rescale(ones, 0.25, 7, 3);
  int64_t kept = 0;
  for (float value : dropped.to_vector<float>()) {
    REQUIRE((value == 0.0f || value == 4.0f));
    kept += value != 0 ? 1 : 0;
  }
  // Binomial(100000, 0.25): the standard deviation is 137 entries.
  CHECK(std::abs(double(kept) - 25000) < 700);
  CHECK(same_bytes(merge::drop_and_rescale(ones, 0.25, 7, 3), dropped));  // the same seed and stream
  CHECK(!same_bytes(merge::drop_and_rescale(ones, 0.25, 8, 3), dropped));
  CHECK(!same_bytes(merge::drop_and_rescale(ones, 0.25, 7, 4), dropped));
  const Tensor delta = vector_of({0.5f, -3, 0, 2.25f});
  CHECK(same_bytes(merge::drop_and_rescale(delta, 1, 7, 3), delta));  // p = 0 drops nothing

  // dare_linear at density 1 is task arithmetic: base + 0.5 d1 + 0.25 d2 (not normalised).
  const Tensor base = vector_of(kBase);
  std::vector<Tensor> inputs = {base};
  for (const Tensor& model : ties_models()) inputs.push_back(model);
  inputs.pop_back();
  const merge::Recipe dare = recipe_of(R"({"method": "dare_linear", "base_model": "b", "models":
      [{"model": "m1", "weight": 0.5}, {"model": "m2", "weight": 0.25}], "parameters": {"density": 1}})");
  CHECK(merge::merge_tensor(dare, "x", inputs, 1, 0).to_vector<float>() ==
        std::vector<float>{1.15625, 1.75, -0.8125, 0.96875, 3});
  // With drops, each model's delta is dropped on its own stream and the survivors summed: the
  // result is base + sum w_i D_i where D_i is what drop_and_rescale gives for model i's stream.
  const merge::Recipe half = recipe_of(R"({"method": "dare_linear", "base_model": "b", "seed": 5, "models":
      [{"model": "m1", "weight": 0.5}, {"model": "m2", "weight": 0.25}], "parameters": {"density": 0.5}})");
  const uint64_t stream = merge::tensor_stream("x");
  const std::vector<float> d1 =
      merge::drop_and_rescale(merge::subtract(inputs[1], base), 0.5, 5, stream + 0x9E3779B97F4A7C15ull).to_vector<float>();
  const std::vector<float> d2 = merge::drop_and_rescale(merge::subtract(inputs[2], base), 0.5, 5,
                                                        stream + 2 * 0x9E3779B97F4A7C15ull)
                                    .to_vector<float>();
  std::vector<float> expected(kBase.size());
  for (size_t j = 0; j < expected.size(); ++j) {
    CHECK((d1[j] == 0 || d1[j] == 2 * kDeltas[0][j]));
    expected[j] = kBase[j] + 0.5f * d1[j] + 0.25f * d2[j];
  }
  CHECK(merge::merge_tensor(half, "x", inputs, 1, stream).to_vector<float>() == expected);
}

TEST_CASE("every method merges copies of one tensor into that tensor") {
  Generator generator(3);
  const Tensor x = random_tensor({8, 5}, DType::f32, generator);
  const char* recipes[] = {
      R"({"method": "linear", "models": [{"model": "a", "weight": 0.2}, {"model": "b", "weight": 0.3}, {"model": "c", "weight": 0.5}]})",
      R"({"method": "task_arithmetic", "base_model": "a", "models": [{"model": "b", "weight": 0.7}, {"model": "c", "weight": 0.4}]})",
      R"({"method": "slerp", "base_model": "a", "models": [{"model": "b"}], "parameters": {"t": 0.3}})",
      R"({"method": "ties", "base_model": "a", "models": [{"model": "b", "density": 0.5}, {"model": "c", "density": 0.9}]})",
      R"({"method": "dare_linear", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}], "parameters": {"density": 1}})",
      R"({"method": "dare_ties", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}], "parameters": {"density": 1}})",
  };
  for (const char* text : recipes) {
    CAPTURE(text);
    const merge::Recipe recipe = recipe_of(text);
    const std::vector<Tensor> inputs(recipe.input_paths().size(), x);
    CHECK(same_bytes(merge::merge_tensor(recipe, "model.layers.0.mlp.up_proj.weight", inputs, 2, 1), x));
  }
}

TEST_CASE("merging in chunks gives what merging whole tensors gives, for every method") {
  // Values on a grid of 1/4, so that TIES' cut falls among equal magnitudes that straddle chunks.
  Generator generator(9);
  std::vector<Tensor> inputs;
  for (int i = 0; i < 3; ++i) {
    std::vector<float> values = random_tensor({7, 9}, DType::f32, generator, -2, 2).to_vector<float>();
    for (float& value : values) value = std::round(value * 4) / 4;
    inputs.push_back(Tensor::from_vector<float>(values, {7, 9}));
  }
  const char* recipes[] = {
      R"({"method": "linear", "models": [{"model": "a", "weight": 0.2}, {"model": "b"}, {"model": "c", "weight": 0.5}]})",
      R"({"method": "task_arithmetic", "base_model": "a", "models": [{"model": "b", "weight": 0.7}, {"model": "c", "weight": 0.4}]})",
      R"({"method": "slerp", "base_model": "a", "models": [{"model": "b"}], "parameters": {"t": 0.3}})",
      R"({"method": "ties", "base_model": "a", "models": [{"model": "b", "density": 0.5}, {"model": "c", "density": 0.3}]})",
      R"({"method": "dare_linear", "base_model": "a", "models": [{"model": "b"}, {"model": "c"}], "parameters": {"density": 0.6}})",
      R"({"method": "dare_ties", "base_model": "a", "seed": 3, "models": [{"model": "b"}, {"model": "c"}], "parameters": {"density": 0.4}})",
  };
  for (const char* text : recipes) {
    CAPTURE(text);
    const merge::Recipe recipe = recipe_of(text);
    const std::vector<Tensor> used(inputs.begin(), inputs.begin() + int64_t(recipe.input_paths().size()));
    const Tensor whole = merge::merge_tensor(recipe, "w", used, 2, 17);
    for (const int64_t chunk : {1, 8, 13, 62}) {
      CAPTURE(chunk);
      CHECK(same_bytes(merge::merge_tensor(recipe, "w", used, 2, 17, chunk), whole));
    }
  }
  // And what the whole-tensor functions give, composed by hand.
  const merge::Recipe ties = recipe_of(recipes[3]);
  const Tensor trimmed_b = merge::keep_top_magnitude(merge::subtract(inputs[1], inputs[0]), 0.5);
  const Tensor trimmed_c = merge::keep_top_magnitude(merge::subtract(inputs[2], inputs[0]), 0.3);
  const Tensor expected = merge::add_scaled(inputs[0], merge::sign_consensus_sum({trimmed_b, trimmed_c}, {1, 1}, true), 1);
  CHECK(same_bytes(merge::merge_tensor(ties, "w", inputs, 2, 17, 8), expected));
}

TEST_CASE("recipe parameters: per-tensor filters, layer gradients and per-model overrides") {
  const merge::Recipe recipe = recipe_of(R"({"method": "slerp", "base_model": "a", "models": [{"model": "b"}],
      "parameters": {"t": [{"filter": "self_attn", "value": 0.25}, {"filter": "mlp", "value": [0, 1]}, {"value": 0.5}]}})");
  CHECK(recipe.recipe_parameter("t", "model.layers.0.self_attn.q_proj.weight", 3) == 0.25);
  CHECK(recipe.recipe_parameter("t", "model.layers.0.mlp.up_proj.weight", 3) == 0);
  CHECK(recipe.recipe_parameter("t", "model.layers.1.mlp.up_proj.weight", 3) == 0.5);
  CHECK(recipe.recipe_parameter("t", "model.layers.2.mlp.up_proj.weight", 3) == 1);
  CHECK(recipe.recipe_parameter("t", "model.norm.weight", 3) == 0.5);
  CHECK(merge::depth_position("model.embed_tokens.weight", 3) == 0);
  CHECK(merge::depth_position("lm_head.weight", 3) == 1);
  CHECK(recipe.input_paths() == std::vector<std::string>{"a", "b"});

  const merge::Recipe weights = recipe_of(R"({"method": "linear", "parameters": {"weight": 2, "normalize": false},
      "models": [{"model": "a"}, {"model": "b", "weight": [{"filter": "embed", "value": 3}, {"value": [1, 5]}]}]})");
  CHECK(!weights.normalize);
  CHECK(weights.model_parameter(0, "weight", "model.embed_tokens.weight", 5) == 2);
  CHECK(weights.model_parameter(1, "weight", "model.embed_tokens.weight", 5) == 3);
  CHECK(weights.model_parameter(1, "weight", "model.layers.2.self_attn.o_proj.weight", 5) == 3);
  CHECK(weights.model_parameter(1, "weight", "model.layers.3.self_attn.o_proj.weight", 5) == 4);

  const merge::Recipe uncovered = recipe_of(R"({"method": "linear",
      "models": [{"model": "a", "weight": [{"filter": "mlp", "value": 1}]}]})");
  CHECK(error_of([&] { uncovered.model_parameter(0, "weight", "model.norm.weight", 2); }) ==
        "r.json: models[0].weight: no rule matches tensor 'model.norm.weight' (add a rule without a filter as the default)");
}

TEST_CASE("recipe errors name the key") {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"models": [{"model": "a"}]})", "r.json: missing key \"method\""},
      {R"({"method": "tie", "models": [{"model": "a"}]})", "r.json: method: unknown method \"tie\""},
      {R"({"method": 3, "models": [{"model": "a"}]})", "r.json: method"},
      {R"({"method": "linear", "models": [{"model": "a"}], "weights": [1]})", "r.json: weights: unknown key"},
      {R"({"method": "linear", "models": []})", "r.json: models: missing or empty"},
      {R"({"method": "linear"})", "r.json: models: missing or empty"},
      {R"({"method": "linear", "models": [{"model": "a"}, {"weight": 1}]})", "r.json: models[1]: missing key \"model\""},
      {R"({"method": "linear", "models": [{"model": "a", "weight": "x"}]})", "r.json: models[0].weight"},
      {R"({"method": "linear", "models": [{"model": "a", "density": 0.5}]})", "r.json: models[0].density: linear has no parameter \"density\""},
      {R"({"method": "linear", "models": [{"model": "a", "wieght": 0.5}]})", "r.json: models[0].wieght: unknown key \"wieght\""},
      {R"({"method": "linear", "models": [{"model": "a"}], "parameters": {"t": 0.5}})", "r.json: parameters.t: linear has no parameter \"t\""},
      {R"({"method": "linear", "models": [{"model": "a"}], "dtype": "int8"})", "r.json: dtype: unknown dtype \"int8\""},
      {R"({"method": "linear", "models": [{"model": "a"}], "seed": -1})", "r.json: seed: must not be negative"},
      {R"({"method": "linear", "models": [{"model": "a", "weight": [{"filtr": "mlp", "value": 1}]}]})", "r.json: models[0].weight[0]: unknown key \"filtr\""},
      {R"({"method": "linear", "models": [{"model": "a", "weight": [{"filter": "mlp"}]}]})", "r.json: models[0].weight[0]: missing key \"value\""},
      {R"({"method": "linear", "models": [{"model": "a", "weight": []}]})", "r.json: models[0].weight: an empty list"},
      {R"({"method": "ties", "models": [{"model": "a", "density": 0.5}]})", "r.json: base_model: missing"},
      {R"({"method": "linear", "base_model": "b", "models": [{"model": "a"}]})", "r.json: base_model: linear has no base"},
      {R"({"method": "ties", "base_model": "b", "models": [{"model": "a"}]})", "r.json: models[0]: no density"},
      {R"({"method": "ties", "base_model": "b", "models": [{"model": "a", "density": 1.5}]})", "r.json: models[0].density: 1.5 is outside [0, 1]"},
      {R"({"method": "dare_ties", "base_model": "b", "models": [{"model": "a", "density": 0}]})", "r.json: models[0].density: 0 is outside (0, 1]"},
      {R"({"method": "slerp", "base_model": "b", "models": [{"model": "a"}]})", "r.json: parameters.t: missing"},
      {R"({"method": "slerp", "models": [{"model": "a"}, {"model": "b"}, {"model": "c"}], "parameters": {"t": 0.5}})", "slerp merges exactly two models"},
      {R"({"method": "slerp", "base_model": "b", "models": [{"model": "a"}], "parameters": {"t": [{"value": [0, 2]}]}})", "r.json: parameters.t[0].value: 2 is outside [0, 1]"},
      {R"({"method": "linear", "models": [{"model": "a"}], "parameters": {"normalize": 1}})", "r.json: parameters.normalize"},
  };
  for (const auto& [text, expected] : cases) {
    CAPTURE(text);
    const std::string message = error_of([&] { recipe_of(text); });
    CAPTURE(message);
    CHECK(message.find(expected) != std::string::npos);
  }
}

TEST_CASE("merging saved copies of one model writes that model back, for every method") {
  const ScratchDir scratch("merge-copies");
  const auto model = random_llama(tiny_llama_config(40), 5);
  model->save(scratch / "a", DType::bf16);
  fs::copy(scratch / "a", scratch / "b");
  const std::string a = scratch / "a", b = scratch / "b";
  const safetensors::Checkpoint original = safetensors::Checkpoint::open(a);
  const std::string recipes[] = {
      R"({"method": "linear", "models": [{"model": ")" + a + R"(", "weight": 0.3}, {"model": ")" + b + R"(", "weight": 0.7}]})",
      R"({"method": "task_arithmetic", "base_model": ")" + a + R"(", "models": [{"model": ")" + b + R"(", "weight": 0.6}, {"model": ")" + b + R"("}]})",
      R"({"method": "slerp", "base_model": ")" + a + R"(", "models": [{"model": ")" + b + R"("}], "parameters": {"t": 0.4}})",
      R"({"method": "ties", "base_model": ")" + a + R"(", "models": [{"model": ")" + b + R"(", "density": 0.5}, {"model": ")" + b + R"(", "density": 0.8}]})",
      R"({"method": "dare_ties", "base_model": ")" + a + R"(", "models": [{"model": ")" + b + R"("}], "parameters": {"density": 1}})",
      R"({"method": "dare_linear", "base_model": ")" + a + R"(", "models": [{"model": ")" + b + R"("}], "parameters": {"density": 1}})",
  };
  for (const std::string& text : recipes) {
    CAPTURE(text);
    const std::string out = scratch / "out";
    fs::remove_all(out);
    fs::create_directories(out);
    merge::MergeOptions options;
    options.chunk_elements = 100;  // most tensors take several chunks
    const merge::MergeSummary summary = merge::merge_models(recipe_of(text), out, options);
    CHECK(summary.tensors == int64_t(original.names().size()));
    const safetensors::Checkpoint merged = safetensors::Checkpoint::open(out);
    REQUIRE(merged.names() == original.names());
    for (const std::string& name : original.names()) {
      CAPTURE(name);
      CHECK(same_bytes(merged.read(name), original.read(name)));
    }
    CHECK(llama::LlamaConfig::load(out + "/config.json").dtype == DType::bf16);
  }
}

TEST_CASE("merge_models averages two models, shards its output, and the result loads back") {
  const ScratchDir scratch("merge-average");
  const auto first = random_llama(tiny_llama_config(40), 1);
  const auto second = random_llama(tiny_llama_config(40), 2);
  first->save(scratch / "a");
  second->save(scratch / "b");
  const merge::Recipe recipe = recipe_of(R"({"method": "linear", "dtype": "f32", "models": [{"model": ")" +
                                         (scratch / "a") + R"("}, {"model": ")" + (scratch / "b") + R"("}]})");
  merge::MergeOptions options;
  options.max_shard_bytes = 4096;  // the tiny model's 40 x 16 embedding alone is 2560 bytes
  options.chunk_elements = 24;
  int64_t reported = 0;
  options.on_tensor = [&](int64_t done, int64_t, const std::string&) { reported = done; };
  fs::create_directories(scratch / "out");
  const merge::MergeSummary summary = merge::merge_models(recipe, scratch / "out", options);
  CHECK(summary.weight_files.size() > 1);
  CHECK(reported == summary.tensors);
  CHECK(fs::exists(scratch / "out/model.safetensors.index.json"));
  const auto merged = llama::LlamaForCausalLM::load(scratch / "out");
  const auto first_parameters = first->named_parameters(), second_parameters = second->named_parameters();
  const auto merged_parameters = merged->named_parameters();
  REQUIRE(merged_parameters.size() == first_parameters.size());
  for (size_t i = 0; i < merged_parameters.size(); ++i) {
    CAPTURE(merged_parameters[i].first);
    const std::vector<float> x = first_parameters[i].second.to_vector<float>();
    const std::vector<float> y = second_parameters[i].second.to_vector<float>();
    std::vector<float> mean(x.size());
    for (size_t j = 0; j < x.size(); ++j) mean[j] = 0.5f * x[j] + 0.5f * y[j];
    CHECK(merged_parameters[i].second.to_vector<float>() == mean);
  }
}

TEST_CASE("merge_models refuses models that differ, naming the field or the tensor") {
  const ScratchDir scratch("merge-mismatch");
  random_llama(tiny_llama_config(40), 1)->save(scratch / "a");
  random_llama(tiny_llama_config(48), 2)->save(scratch / "wide");
  const auto recipe_for = [&](const std::string& other) {
    return recipe_of(R"({"method": "linear", "models": [{"model": ")" + (scratch / "a") + R"("}, {"model": ")" + other + R"("}]})");
  };
  fs::create_directories(scratch / "out");
  std::string message = error_of([&] { merge::merge_models(recipe_for(scratch / "wide"), scratch / "out"); });
  CHECK(message.find("config.json: vocab_size is 48 but") != std::string::npos);

  // Same config, one tensor of another shape, then one tensor missing.
  fs::copy(scratch / "a", scratch / "reshaped");
  const std::string weights = scratch / "reshaped/model.safetensors";
  {
    const safetensors::File file = safetensors::File::open(weights);
    safetensors::NamedTensors tensors;
    for (const auto& info : file.tensors()) {
      const Tensor value = ops::clone(file.read(info.name));
      tensors.emplace_back(info.name, info.name == "model.norm.weight" ? value.narrow(0, 0, 8).contiguous() : value);
    }
    safetensors::save(weights + ".new", tensors);
  }
  fs::rename(weights + ".new", weights);
  message = error_of([&] { merge::merge_models(recipe_for(scratch / "reshaped"), scratch / "out"); });
  CHECK(message.find("tensor 'model.norm.weight' has shape [8] in") != std::string::npos);

  fs::remove_all(scratch / "reshaped");
  fs::copy(scratch / "a", scratch / "missing");
  const std::string missing = scratch / "missing/model.safetensors";
  {
    const safetensors::File file = safetensors::File::open(missing);
    safetensors::NamedTensors tensors;
    for (const auto& info : file.tensors())
      if (info.name != "model.layers.1.mlp.down_proj.weight") tensors.emplace_back(info.name, ops::clone(file.read(info.name)));
    safetensors::save(missing + ".new", tensors);
  }
  fs::rename(missing + ".new", missing);
  message = error_of([&] { merge::merge_models(recipe_for(scratch / "missing"), scratch / "out"); });
  CHECK(message.find("has no tensor 'model.layers.1.mlp.down_proj.weight'") != std::string::npos);
  CHECK(fs::is_empty(scratch / "out"));  // checked before anything was written

  message = error_of([&] { merge::merge_models(recipe_for(scratch / "nowhere"), scratch / "out"); });
  CHECK(message.find("nowhere not found") != std::string::npos);
}
