// `lamina merge`: two tiny saved models in, a Hugging Face folder out that loads back with the
// merged weights and the first model's tokenizer; by flags and by a recipe file; bad recipes,
// bad flags and an existing OUT refused with the key or flag named and nothing left behind.
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

}  // namespace

TEST_CASE("lamina merge averages two models into a folder that loads back") {
  const ScratchDir scratch("cli-merge");
  const auto first = save_byte_level_model(scratch / "a", 1);
  const auto second = save_byte_level_model(scratch / "b", 2);
  const Run run = run_lamina("merge --method linear --models " + (scratch / "a") + "," + (scratch / "b") +
                             " --weights 1,3 --out " + (scratch / "merged"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  CHECK(report.at("method").as_string() == "linear");
  CHECK(report.at("tensors").as_int64() == int64_t(first->named_parameters().size()));
  CHECK(report.at("peak_rss_bytes").as_int64() > 0);
  CHECK(folder_entries(scratch.path / "merged") ==
        std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json"});
  CHECK(file_bytes(scratch / "merged/tokenizer.json") == file_bytes(scratch / "a/tokenizer.json"));
  const auto merged = llama::LlamaForCausalLM::load(scratch / "merged");
  const auto x = first->named_parameters(), y = second->named_parameters(), m = merged->named_parameters();
  REQUIRE(m.size() == x.size());
  for (size_t i = 0; i < m.size(); ++i) {
    CAPTURE(m[i].first);
    const std::vector<float> left = x[i].second.to_vector<float>(), right = y[i].second.to_vector<float>();
    std::vector<float> expected(left.size());
    for (size_t j = 0; j < left.size(); ++j) expected[j] = 0.25f * left[j] + 0.75f * right[j];
    CHECK_CLOSE(m[i].second, Tensor::from_vector<float>(expected, m[i].second.shape()), (Tolerance{1e-7, 1e-6}));
  }

  // SLERP at t = 1 is its second end, bit for bit.
  const Run slerp = run_lamina("merge --method slerp --base " + (scratch / "a") + " --models " + (scratch / "b") +
                               " --interpolation 1 --out " + (scratch / "slerp"));
  INFO(slerp.output);
  REQUIRE(slerp.status == 0);
  const auto end = llama::LlamaForCausalLM::load(scratch / "slerp")->named_parameters();
  REQUIRE(end.size() == y.size());
  for (size_t i = 0; i < end.size(); ++i) CHECK(end[i].second.to_vector<float>() == y[i].second.to_vector<float>());
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"a", "b", "merged", "slerp"});
}

TEST_CASE("lamina merge --recipe: TIES of copies gives the base back, in the recipe's dtype") {
  const ScratchDir scratch("cli-merge-recipe");
  save_byte_level_model(scratch / "base", 4);
  fs::copy(scratch / "base", scratch / "copy");
  std::ofstream(scratch / "recipe.json") << R"({"method": "ties", "base_model": ")" << (scratch / "base")
                                         << R"(", "models": [{"model": ")" << (scratch / "copy")
                                         << R"(", "weight": 0.5, "density": 0.7}, {"model": ")" << (scratch / "copy")
                                         << R"(", "parameters": {"density": [{"filter": "mlp", "value": 0.2}, {"value": 0.9}]}}],
      "dtype": "bf16"})";
  const Run run = run_lamina("merge --recipe " + (scratch / "recipe.json") + " --out " + (scratch / "merged"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const auto base = llama::LlamaForCausalLM::load(scratch / "base");
  const auto merged = llama::LlamaForCausalLM::load(scratch / "merged");
  CHECK(llama::LlamaConfig::load(scratch / "merged/config.json").dtype == DType::bf16);
  const auto b = base->named_parameters(), m = merged->named_parameters();
  REQUIRE(m.size() == b.size());
  for (size_t i = 0; i < m.size(); ++i) {
    CAPTURE(m[i].first);
    CHECK(m[i].second.to_vector<float>() == b[i].second.to(DType::bf16).to(DType::f32).to_vector<float>());
  }
}

TEST_CASE("lamina merge refuses bad recipes, bad flags and an existing OUT, leaving nothing behind") {
  const ScratchDir scratch("cli-merge-errors");
  save_byte_level_model(scratch / "a", 1);
  save_byte_level_model(scratch / "b", 2);
  const std::string models = " --models " + (scratch / "a") + "," + (scratch / "b");

  SUBCASE("a recipe's mistake names the file and key") {
    std::ofstream(scratch / "recipe.json") << R"({"method": "ties", "base_model": ")" << (scratch / "a")
                                           << R"(", "models": [{"model": ")" << (scratch / "b") << R"(", "density": 2}]})";
    const Run run = run_lamina("merge --recipe " + (scratch / "recipe.json") + " --out " + (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find((scratch / "recipe.json") + ": models[0].density: 2 is outside [0, 1]") != std::string::npos);
  }
  SUBCASE("flags that disagree") {
    Run run = run_lamina("merge --method linear" + models + " --weights 1 --out " + (scratch / "merged"));
    CHECK(run.status == 2);
    CHECK(run.output.find("--weights has 1 values for 2 --models") != std::string::npos);
    run = run_lamina("merge --method ties" + models + " --density 0.5 --out " + (scratch / "merged"));
    CHECK(run.status == 1);
    CHECK(run.output.find("lamina merge flags: base_model: missing") != std::string::npos);
    run = run_lamina("merge --recipe r.json --method linear --out " + (scratch / "merged"));
    CHECK(run.status == 2);
    CHECK(run.output.find("--method cannot be combined with --recipe") != std::string::npos);
  }
  SUBCASE("models of different shapes") {
    random_llama(one_layer_llama_config(300), 3)->save(scratch / "c");
    const Run run = run_lamina("merge --method linear --models " + (scratch / "a") + "," + (scratch / "c") + " --out " +
                               (scratch / "merged"));
    INFO(run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find("vocab_size is 300") != std::string::npos);
  }
  SUBCASE("an existing OUT") {
    fs::create_directories(scratch / "merged");
    Run run = run_lamina("merge --method linear" + models + " --out " + (scratch / "merged"));
    CHECK(run.status == 1);
    CHECK(run.output.find("exists; pass --overwrite") != std::string::npos);
    run = run_lamina("merge --method linear" + models + " --out " + (scratch / "a") + " --overwrite");
    CHECK(run.status == 1);
    CHECK(run.output.find("--out must differ from every input") != std::string::npos);
    run = run_lamina("merge --method linear" + models + " --out " + (scratch / "merged") + " --overwrite");
    INFO(run.output);
    CHECK(run.status == 0);
    CHECK(fs::exists(scratch / "merged/model.safetensors"));
    fs::remove_all(scratch / "merged");
  }
  CHECK(folder_entries(scratch.path).size() == size_t(fs::exists(scratch / "recipe.json") ? 3 : 2) +
                                                   size_t(fs::exists(scratch / "c") ? 1 : 0));
  const Run help = run_lamina("merge --help");
  CHECK(help.status == 0);
  CHECK(help.output.find("--recipe R.json") != std::string::npos);
}
