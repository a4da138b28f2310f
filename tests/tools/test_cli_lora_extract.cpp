// `lamina lora extract` and `lamina mutate` end to end on tiny random models: the extracted
// adapter at full rank, loaded with peft::load_adapter or merged by `lamina lora merge`, gives the
// tuned weights back; at a lower rank it has that rank and reports its captured energy; a shape
// mismatch and an unknown module are refused by name with nothing left behind. `lamina mutate`
// with sigma 0 copies the model, with sigma > 0 changes only the filtered matrices and keeps
// their singular vectors.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC 12's false positive inside Eigen's AVX-512 GEMM
#endif
#include <cmath>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "models/surgery/mutate.h"
#include "models/surgery/svd.h"
#include "models/tokenizer/builder.h"
#include "nn/layers.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

bool is_adapted(const std::string& name) {
  return name.find("layers.") != std::string::npos && name.find("_proj.weight") != std::string::npos;
}

// Every parameter of `actual` equals `expected`'s within `tolerance`.
void check_same_weights(const llama::LlamaForCausalLM& actual, const llama::LlamaForCausalLM& expected,
                        Tolerance tolerance) {
  const auto x = actual.named_parameters(), y = expected.named_parameters();
  REQUIRE(x.size() == y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i].first);
    CHECK_CLOSE(x[i].second, y[i].second, tolerance);
  }
}

}  // namespace

TEST_CASE("lamina lora extract at full rank reproduces the tuned model through load_adapter and lora merge") {
  const ScratchDir scratch("cli-lora-extract");
  const auto base = save_byte_level_model(scratch / "base", 1);
  const auto tuned = save_byte_level_model(scratch / "tuned", 2);
  // Rank 8 is full for the [8, 8], [16, 8] and [8, 16] matrices; k_proj and v_proj ([4, 8]) get rank 4.
  const Run run = run_lamina("lora extract --base " + (scratch / "base") + " --tuned " + (scratch / "tuned") +
                             " --rank 8 --out " + (scratch / "adapter"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  CHECK(report.at("modules").as_int64() == 7);
  CHECK(report.at("min_captured_energy").as_double() == doctest::Approx(1.0));
  CHECK(report.at("peak_rss_bytes").as_int64() > 0);
  CHECK(folder_entries(scratch.path / "adapter") ==
        std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"});
  const json::Value config = json::parse_file(scratch / "adapter/adapter_config.json");
  CHECK(config.at("r").as_int64() == 8);
  CHECK(config.at("lora_alpha").as_int64() == 8);
  CHECK(config.at("target_modules").as_string() == "all-linear");
  CHECK(config.at("rank_pattern").at("model\\.layers\\.0\\.self_attn\\.k_proj").as_int64() == 4);
  CHECK(config.at("alpha_pattern").at("model\\.layers\\.0\\.self_attn\\.v_proj").as_int64() == 4);
  const safetensors::File file = safetensors::File::open(scratch / "adapter/adapter_model.safetensors");
  CHECK(file.find("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight")->shape == Shape{4, 8});
  CHECK(file.find("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight")->shape == Shape{8, 8});

  // Loaded onto the base and folded in: the tuned weights, within f32 round-off.
  const auto loaded = llama::LlamaForCausalLM::load(scratch / "base");
  peft::load_adapter(scratch / "adapter", *loaded);
  int64_t adapted = 0;
  for (const auto& [path, linear] : nn::named_linears(*loaded)) adapted += linear->has_adapter("default") ? 1 : 0;
  CHECK(adapted == 7);
  nn::merge_and_unload(*loaded, "default");
  {
    const auto x = loaded->named_parameters(), y = tuned->named_parameters(), b = base->named_parameters();
    REQUIRE(x.size() == y.size());
    for (size_t i = 0; i < x.size(); ++i) {
      CAPTURE(x[i].first);
      // Adapted matrices become the tuned ones; the rest (embedding, norms, head) stay the base's.
      CHECK_CLOSE(x[i].second, is_adapted(x[i].first) ? y[i].second : b[i].second, (Tolerance{1e-6, 1e-5}));
    }
  }

  // `lamina lora merge` reads it too.
  const Run merged = run_lamina("lora merge --model " + (scratch / "base") + " --adapter " + (scratch / "adapter") +
                                " --out " + (scratch / "merged"));
  INFO(merged.output);
  REQUIRE(merged.status == 0);
  const auto merged_model = llama::LlamaForCausalLM::load(scratch / "merged");
  const auto m = merged_model->named_parameters(), t = tuned->named_parameters();
  for (size_t i = 0; i < m.size(); ++i)
    if (is_adapted(m[i].first)) CHECK_CLOSE(m[i].second, t[i].second, (Tolerance{1e-6, 1e-5}));
}

TEST_CASE("lamina lora extract at a low rank: the adapter's rank and energy, and the target modules") {
  const ScratchDir scratch("cli-lora-extract-rank");
  save_byte_level_model(scratch / "base", 3);
  save_byte_level_model(scratch / "tuned", 4);
  const Run run = run_lamina("lora extract --base " + (scratch / "base") + " --tuned " + (scratch / "tuned") +
                             " --rank 2 --target-modules q_proj,down_proj --svd exact --out " + (scratch / "adapter"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value report = report_of(run.output);
  REQUIRE(report.at("modules").as_int64() == 2);
  for (const json::Value& module : report.at("captured_energy").as_array()) {
    CHECK(module.at("rank").as_int64() == 2);
    CHECK(module.at("captured_energy").as_double() > 0.1);
    CHECK(module.at("captured_energy").as_double() < 0.99);
  }
  // The captured energy is the tuned difference's: the error of the merged q_proj is sqrt of the tail.
  const auto base = llama::LlamaForCausalLM::load(scratch / "base");
  const auto tuned = llama::LlamaForCausalLM::load(scratch / "tuned");
  const auto loaded = llama::LlamaForCausalLM::load(scratch / "base");
  const nn::LoraConfig config = peft::load_adapter(scratch / "adapter", *loaded);
  CHECK(config.target_modules == std::vector<std::string>{"q_proj", "down_proj"});
  nn::merge_and_unload(*loaded, "default");
  const auto find = [](const llama::LlamaForCausalLM& model, const std::string& name) {
    for (const auto& [parameter_name, value] : model.named_parameters())
      if (parameter_name == name) return value;
    FAIL("no parameter " << name);
    return Tensor();
  };
  const std::string q = "model.layers.0.self_attn.q_proj.weight";
  const surgery::Matrix delta = surgery::to_matrix(find(*tuned, q)) - surgery::to_matrix(find(*base, q));
  const surgery::Svd svd = surgery::exact_svd(delta);
  const double tail = std::sqrt(svd.S.tail(svd.S.size() - 2).squaredNorm());
  const surgery::Matrix error = surgery::to_matrix(find(*tuned, q)) - surgery::to_matrix(find(*loaded, q));
  CHECK(error.norm() == doctest::Approx(tail).epsilon(1e-4));
  // Untargeted matrices are the base's.
  const std::string k = "model.layers.0.self_attn.k_proj.weight";
  CHECK(find(*loaded, k).to_vector<float>() == find(*base, k).to_vector<float>());
}

TEST_CASE("lamina lora extract refuses a shape mismatch and an unknown module by name, leaving nothing") {
  const ScratchDir scratch("cli-lora-extract-errors");
  save_byte_level_model(scratch / "base", 5);
  llama::LlamaConfig wider = byte_level_llama_config();
  wider.intermediate_size = 24;
  save_byte_level_model(scratch / "wider", 6, wider);
  const Run mismatch = run_lamina("lora extract --base " + (scratch / "base") + " --tuned " + (scratch / "wider") +
                                  " --rank 4 --out " + (scratch / "adapter"));
  CHECK(mismatch.status != 0);
  CHECK(mismatch.output.find("tensor 'model.layers.0.mlp.down_proj.weight' has shape [8, 24]") != std::string::npos);
  INFO(mismatch.output);

  save_byte_level_model(scratch / "tuned", 7);
  const Run unknown = run_lamina("lora extract --base " + (scratch / "base") + " --tuned " + (scratch / "tuned") +
                                 " --rank 4 --target-modules q_proj,qkv_proj --out " + (scratch / "adapter"));
  CHECK(unknown.status != 0);
  CHECK(unknown.output.find("unknown module 'qkv_proj'") != std::string::npos);
  INFO(unknown.output);
  const Run bad_rank = run_lamina("lora extract --base " + (scratch / "base") + " --tuned " + (scratch / "tuned") +
                                  " --rank 0 --out " + (scratch / "adapter"));
  CHECK(bad_rank.status != 0);
  CHECK(bad_rank.output.find("--rank") != std::string::npos);
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"base", "tuned", "wider"});
}

TEST_CASE("lamina mutate: sigma 0 copies the model, sigma > 0 scales the filtered matrices' singular values") {
  const ScratchDir scratch("cli-mutate");
  const auto model = save_byte_level_model(scratch / "model", 8);
  const Run same = run_lamina("mutate --model " + (scratch / "model") + " --sigma 0 --out " + (scratch / "same"));
  INFO(same.output);
  REQUIRE(same.status == 0);
  CHECK(report_of(same.output).at("mutated").as_int64() == 7);
  check_same_weights(*llama::LlamaForCausalLM::load(scratch / "same"), *model, Tolerance{0, 0});
  CHECK(file_bytes(scratch / "same/tokenizer.json") == file_bytes(scratch / "model/tokenizer.json"));

  const Run run = run_lamina("mutate --model " + (scratch / "model") + " --sigma 0.3 --seed 9 --filter mlp --out " +
                             (scratch / "mutated"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(report_of(run.output).at("mutated").as_int64() == 3);
  const auto mutated = llama::LlamaForCausalLM::load(scratch / "mutated");
  const auto x = mutated->named_parameters(), y = model->named_parameters();
  REQUIRE(x.size() == y.size());
  for (size_t i = 0; i < x.size(); ++i) {
    CAPTURE(x[i].first);
    if (x[i].first.find(".mlp.") == std::string::npos) {
      CHECK(x[i].second.to_vector<float>() == y[i].second.to_vector<float>());
      continue;
    }
    const surgery::Svd svd = surgery::exact_svd(surgery::to_matrix(y[i].second));
    const surgery::Matrix core = svd.U.transpose() * surgery::to_matrix(x[i].second) * svd.V;
    const uint64_t stream = surgery::mutation_stream(x[i].first);
    for (int64_t j = 0; j < svd.S.size(); ++j) {
      const double expected = svd.S[j] * (1 + 0.3 * surgery::standard_normal(9, stream, uint64_t(j)));
      CHECK(core(j, j) == doctest::Approx(expected).epsilon(1e-5));
    }
    surgery::Matrix off_diagonal = core;
    off_diagonal.diagonal().setZero();
    CHECK(off_diagonal.norm() < 1e-5 * core.norm());  // f32 storage of W'
  }

  const Run bad_filter = run_lamina("mutate --model " + (scratch / "model") + " --sigma 0.1 --filter attn_qkv --out " +
                                    (scratch / "bad"));
  CHECK(bad_filter.status != 0);
  CHECK(bad_filter.output.find("the filter 'attn_qkv' matches no Linear weight") != std::string::npos);
  CHECK(folder_entries(scratch.path) == std::vector<std::string>{"model", "mutated", "same"});
}
