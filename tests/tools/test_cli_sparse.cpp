// `lamina sparse profile|plan|uniform` on a tiny random model: the profile equals the influence
// recomputed in this process from the same items, the plan keeps its density at every length and
// runs in the model, the uniform plan is the widest window within the density, and bad input is
// refused with a clear error and no file left behind.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "model_presets.h"
#include "models/sparse/influence.h"
#include "models/sparse/moa_plan.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

// Two layers of 4 query heads on 2 KV heads over the byte-level tokenizer, context 256.
std::shared_ptr<llama::LlamaForCausalLM> save_model(const ScratchDir& dir) {
  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer();
  llama::LlamaConfig config = tiny_llama_config(tokenizer.vocab_size());
  config.bos_token_id = tokenizer.require_added_token("<|begin_of_text|>");
  config.eos_token_ids = {tokenizer.require_added_token("<|end_of_text|>")};
  config.max_position_embeddings = 256;
  config.initializer_range = 0.5;  // attention far from uniform, so influence differs by head
  auto model = random_llama(config, 31);
  model->save(dir.path.string());
  std::ofstream(dir / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  return model;
}

const std::string kTexts[] = {
    "Sparse attention keeps a few sink tokens and a sliding window for each head; MoA gives every head its own "
    "window, which grows with the input length by a rule found from the loss.",
    "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods, where nobody sees it "
    "again until the next morning comes around with the sun.",
    "Short.",
};

void write_data(const ScratchDir& dir) {
  std::ofstream out(dir / "data.jsonl");
  for (const std::string& text : kTexts) out << json::Value(json::Object{{"text", text}}).dump() << "\n";
}

json::Value json_line(const std::string& output, const std::string& prefix) {
  const size_t start = output.find(prefix);
  REQUIRE_MESSAGE(start != std::string::npos, output);
  return json::parse(output.substr(start, output.find('\n', start) - start));
}

// The influence of `length`'s level recomputed here: the first `items` texts, each cut to
// `length` tokens (BOS first), every next token a target.
sparse::InfluenceLevel expected_level(const llama::LlamaForCausalLM& model, int64_t length, int64_t items) {
  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer();
  const llama::LlamaConfig& config = model.config();
  sparse::InfluenceLevel level(length, config.num_hidden_layers, config.num_attention_heads, 64);
  sparse::InfluenceProbe probe(level);
  for (int64_t item = 0; item < items; ++item) {
    std::vector<int32_t> ids = tokenizer.encode(kTexts[item], {.add_bos = true});
    ids.push_back(config.eos_token_ids[0]);  // text examples learn their EOS
    ids.resize(std::min<size_t>(ids.size(), size_t(length)));
    const int64_t count = int64_t(ids.size());
    std::vector<int64_t> inputs(ids.begin(), ids.end()), targets(size_t(count), -100);
    for (int64_t t = 0; t + 1 < count; ++t) targets[size_t(t)] = ids[size_t(t + 1)];
    llama::ForwardOptions options;
    options.probe = &probe;
    const Tensor logits = model.forward(Tensor::from_vector(inputs, {1, count}), options);
    cross_entropy(logits.view({count, logits.size(2)}), Tensor::from_vector(targets, {count})).backward();
    level.finish_items(1);
  }
  return level;
}

}  // namespace

TEST_CASE("lamina sparse profile writes the influence of each head, averaged per length level") {
  ScratchDir dir("cli-sparse-profile");
  const auto model = save_model(dir);
  write_data(dir);
  const Run run = run_lamina(str_cat("sparse profile --model ", dir.path.string(), " --data ", dir / "data.jsonl",
                                     " --lengths 128,64 --items 2 --out ", dir / "profile.json"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(run.output.find("sparse profile: length 64, item 2 of 2") != std::string::npos);
  const json::Value line = json_line(run.output, "{\"sparse\":\"profile\"");
  CHECK(line.at("layers").as_int64() == 2);
  CHECK(line.at("heads").as_int64() == 4);

  const sparse::InfluenceProfile profile = sparse::InfluenceProfile::read(dir / "profile.json");
  REQUIRE(profile.levels.size() == 2);
  CHECK(profile.levels[0].length() == 64);  // sorted
  for (int64_t length : {64, 128}) {
    INFO("length " << length);
    const sparse::InfluenceLevel& level = profile.level(length);
    CHECK(level.items() == 2);
    // Make the model trainable again (the test's own process) and recompute.
    for (const Tensor& parameter : model->parameters()) parameter.set_requires_grad(true);
    const sparse::InfluenceLevel expected = expected_level(*model, length, 2);
    double largest = 0;
    for (int64_t layer = 0; layer < 2; ++layer)
      for (int64_t head = 0; head < 4; ++head)
        for (int64_t r = 0; r < level.blocks(); ++r)
          for (int64_t c = 0; c <= r; ++c) {
            const double want = expected.block_mean(layer, head, r, c);
            largest = std::max(largest, std::abs(want));
            CHECK(level.block_mean(layer, head, r, c) == doctest::Approx(want).epsilon(1e-4).scale(1e-9));
          }
    CHECK(largest > 0);
  }
}

TEST_CASE("lamina sparse plan keeps the density at every length, and the plan runs in the model") {
  ScratchDir dir("cli-sparse-plan");
  const auto model = save_model(dir);
  write_data(dir);
  REQUIRE(run_lamina(str_cat("sparse profile --model ", dir.path.string(), " --data ", dir / "data.jsonl",
                             " --lengths 128,192 --items 3 --out ", dir / "profile.json"))
              .status == 0);
  // Sinks of 16: at these short lengths MoA's 64 would take most of the budget by themselves.
  for (double density : {0.5, 0.8}) {
    INFO("density " << density);
    const Run run = run_lamina(str_cat("sparse plan --profile ", dir / "profile.json", " --density ", density,
                                       " --sink 16 --out ", dir / "plan.json"));
    INFO(run.output);
    REQUIRE(run.status == 0);
    CHECK(run.output.find("length 192: moa density") != std::string::npos);
    CHECK(run.output.find("uniform sink+window") != std::string::npos);
    const sparse::MoaPlan plan = sparse::MoaPlan::read(dir / "plan.json");
    CHECK(plan.layers() == 2);
    CHECK(plan.heads() == 4);
    CHECK(plan.rule(0, 0).sink == 16);
    for (int64_t length : {128, 192}) CHECK(plan.density(length) <= density);
    const json::Value line = json_line(run.output, "{\"sparse\":\"plan\"");
    CHECK(line.at("density").as_double() == density);
    CHECK(line.at("alpha_scale").as_double() == doctest::Approx(192.0 / 8192.0));

    // The resolved plan fits the model and changes what it computes only through the mask.
    autograd::NoGradGuard no_grad;
    std::vector<int64_t> ids(150);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = int64_t(40 + i % 50);
    const Tensor input = Tensor::from_vector(ids, {1, 150});
    model->model->sparse_attention = plan.resolve(150);
    const Tensor sparse_logits = model->forward(input);
    model->model->sparse_attention = llama::SparseAttention{};
    CHECK(sparse_logits.shape() == Shape{1, 150, model->config().vocab_size});
    CHECK(std::isfinite(sum(sparse_logits).item<double>()));
  }
  // --min-window leaves out the grid's rules that lose the local context at some length.
  const Run run = run_lamina(str_cat("sparse plan --profile ", dir / "profile.json",
                                     " --density 0.8 --sink 16 --min-window 40 --out ", dir / "wide.json"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const sparse::MoaPlan wide = sparse::MoaPlan::read(dir / "wide.json");
  for (int64_t layer = 0; layer < 2; ++layer)
    for (int64_t head = 0; head < 4; ++head)
      for (int64_t length : {128, 192}) CHECK(wide.rule(layer, head).window(length) >= 40);
  CHECK(wide.density(192) <= 0.8);
}

TEST_CASE("lamina sparse uniform writes the widest sink + window within the density") {
  ScratchDir dir("cli-sparse-uniform");
  save_model(dir);
  const Run run = run_lamina(str_cat("sparse uniform --model ", dir.path.string(),
                                     " --density 0.5 --length 200 --sink 4 --out ", dir / "uniform.json"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const sparse::MoaPlan plan = sparse::MoaPlan::read(dir / "uniform.json");
  CHECK(plan.layers() == 2);
  CHECK(plan.heads() == 4);
  const int64_t window = plan.rule(1, 3).window(200);
  CHECK(plan.rule(1, 3).sink == 4);
  CHECK(plan.density(200) <= 0.5);
  CHECK(sparse::head_allowed_count(4, window + 1, 200, sparse::DensityMeasure::attention_pairs) >
        int64_t(0.5 * double(sparse::dense_count(200, sparse::DensityMeasure::attention_pairs))));
  CHECK(json_line(run.output, "{\"sparse\":\"uniform\"").at("window").as_int64() == window);
}

TEST_CASE("lamina sparse answers --help and refuses bad input without writing anything") {
  ScratchDir dir("cli-sparse-errors");
  save_model(dir);
  write_data(dir);
  for (const char* action : {"profile", "plan", "uniform"}) {
    const Run run = run_lamina(str_cat("sparse ", action, " --help"));
    CHECK(run.status == 0);
    CHECK_MESSAGE(run.output.find("--out") != std::string::npos, run.output);
  }
  CHECK(run_lamina("sparse --help").status == 0);
  Run run = run_lamina("sparse");
  CHECK(run.status == 2);
  run = run_lamina("sparse profil");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("did you mean 'profile'") != std::string::npos, run.output);

  const std::string model = " --model " + dir.path.string();
  const std::string profile = str_cat("sparse profile", model, " --data ", dir / "data.jsonl", " --out ",
                                      dir / "out.json");
  run = run_lamina(profile + " --lengths 64,64");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("length 64 is given twice") != std::string::npos, run.output);
  run = run_lamina(profile + " --lengths 64,x");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("'x' is not a length") != std::string::npos, run.output);
  run = run_lamina(profile + " --lengths 512");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("more than the model's context of 256") != std::string::npos, run.output);
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"fine\"}\n{\"text\": 3}\n";
  run = run_lamina(
      str_cat("sparse profile", model, " --data ", dir / "bad.jsonl", " --lengths 64 --out ", dir / "out.json"));
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("bad.jsonl:2") != std::string::npos, run.output);
  run = run_lamina(str_cat("sparse profile", model, " --data ", dir / "data.jsonl", " --out ",
                           (dir.path / "missing" / "out.json").string()));
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("does not exist") != std::string::npos, run.output);

  REQUIRE(run_lamina(profile + " --lengths 128 --items 1").status == 0);
  const std::string plan = str_cat("sparse plan --profile ", dir / "out.json", " --out ", dir / "plan.json");
  run = run_lamina(plan);
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--density is required") != std::string::npos, run.output);
  run = run_lamina(plan + " --density 0");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("not in (0, 1]") != std::string::npos, run.output);
  run = run_lamina(plan + " --density 0.2");  // the 64 sink keys alone take 0.75 of 128
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("no plan fits density 0.2") != std::string::npos, run.output);
  run = run_lamina(plan + " --density 0.9 --lengths 256");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("no length level 256 (it has 128)") != std::string::npos, run.output);
  run = run_lamina(plan + " --density 0.9 --measure bytes");
  CHECK(run.status == 2);
  run = run_lamina(str_cat("sparse plan --profile ", dir / "data.jsonl", " --density 0.9 --out ", dir / "plan.json"));
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("data.jsonl") != std::string::npos, run.output);
  run = run_lamina(str_cat("sparse uniform", model, " --density 0.5 --out ", dir / "plan.json"));
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--length is required") != std::string::npos, run.output);
  CHECK_FALSE(std::filesystem::exists(dir / "plan.json"));
}
