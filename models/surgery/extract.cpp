// LoRA extraction from a (base, fine-tuned) pair of checkpoints (extract.h).
// GCC 12's AVX-512 intrinsic headers trip -Wmaybe-uninitialized inside Eigen's GEMM and SVD (the
// known false positive that CMakeLists.txt silences for ops/cpu/matmul.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "models/surgery/extract.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "models/io/peft.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"

namespace lamina::surgery {
namespace {

namespace fs = std::filesystem;

const std::string kWeightSuffix = ".weight";

safetensors::Checkpoint open_checkpoint(const std::string& path, const char* role) {
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(path, error), "lora extract: the ", role, " model ", path,
               " is not a folder (extract reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  const fs::path config_path = fs::path(path) / "config.json";
  if (fs::is_regular_file(config_path, error)) {
    const json::Value config = json::parse_file(config_path.string());
    LAMINA_CHECK(config.find("quantization_config", config_path.string()) == nullptr, "lora extract: ",
                 config_path.string(), " describes a quantized checkpoint; extraction needs full-precision weights");
  }
  return safetensors::Checkpoint::open(path);
}

// PEFT reads rank_pattern keys as regular expressions: a module path with its dots escaped.
std::string escaped_path(const std::string& path) {
  std::string out;
  for (char c : path) {
    if (c == '.') out += '\\';
    out += c;
  }
  return out;
}

}  // namespace

std::vector<std::string> linear_module_paths(const safetensors::Checkpoint& checkpoint) {
  std::vector<std::string> paths;
  for (const std::string& name : checkpoint.names()) {
    if (!name.ends_with(kWeightSuffix) || checkpoint.info(name).shape.size() != 2) continue;
    const std::string path = name.substr(0, name.size() - kWeightSuffix.size());
    if (path == "embed_tokens" || path.ends_with(".embed_tokens")) continue;
    paths.push_back(path);
  }
  return paths;
}

LoraFactors lora_factors(const Matrix& delta, int64_t rank, double energy_fraction, const SvdOptions& options) {
  LAMINA_CHECK(rank > 0, "lora_factors: rank must be positive, got ", rank);
  const int64_t full = std::min<int64_t>(delta.rows(), delta.cols());
  const int64_t wanted = std::min(rank, full);
  const double total = delta.squaredNorm();
  LoraFactors factors;
  factors.randomized = options.method == SvdMethod::randomized ||
                       (options.method == SvdMethod::automatic && prefer_randomized(delta.rows(), delta.cols(), wanted, options));
  const Svd svd = truncated_svd(delta, wanted, options);
  factors.rank = energy_fraction > 0 ? std::min(wanted, rank_for_energy(svd.S, total, energy_fraction)) : wanted;
  const int64_t r = factors.rank;
  factors.captured_energy = captured_energy(svd.S, r, total);
  const Vector root = svd.S.head(r).cwiseSqrt();
  const Matrix b = svd.U.leftCols(r) * root.asDiagonal();                // [out, r]
  const Matrix a = root.asDiagonal() * svd.V.leftCols(r).transpose();  // [r, in]
  factors.lora_B = to_tensor(b);
  factors.lora_A = to_tensor(a);
  return factors;
}

ExtractSummary extract_lora(const std::string& base_path, const std::string& tuned_path, const std::string& directory,
                            const ExtractOptions& options) {
  LAMINA_CHECK(options.rank > 0, "lora extract: --rank must be positive, got ", options.rank);
  LAMINA_CHECK(options.energy_fraction >= 0 && options.energy_fraction <= 1,
               "lora extract: the energy fraction must be in (0, 1], got ", options.energy_fraction);
  const safetensors::Checkpoint base = open_checkpoint(base_path, "base");
  const safetensors::Checkpoint tuned = open_checkpoint(tuned_path, "tuned");

  nn::LoraConfig config;
  config.options.rank = options.rank;
  config.options.alpha = double(options.rank);
  config.options.init = nn::LoraInit::kaiming;
  config.target_modules = options.target_modules.empty() ? std::vector<std::string>{"all-linear"} : options.target_modules;
  config.base_model_name_or_path = base_path;

  // Every target name must name a Linear, and every targeted matrix must be in both, of one shape.
  const std::vector<std::string> linears = linear_module_paths(base);
  LAMINA_CHECK(!linears.empty(), "lora extract: ", base_path, " has no Linear weights (2-D \"*.weight\" tensors)");
  if (!options.target_modules.empty())
    for (const std::string& name : options.target_modules) {
      const bool found = std::any_of(linears.begin(), linears.end(), [&](const std::string& path) {
        return path == name || path.ends_with("." + name);
      });
      if (found) continue;
      std::vector<std::string> kinds;
      for (const std::string& path : linears) {
        const std::string last = path.substr(path.rfind('.') + 1);
        if (std::find(kinds.begin(), kinds.end(), last) == kinds.end()) kinds.push_back(last);
      }
      std::string listed;
      for (const std::string& kind : kinds) listed += (listed.empty() ? "" : ", ") + kind;
      throw Error(str_cat("lora extract: unknown module '", name, "': no Linear of ", base_path,
                          " is named so (its Linear modules: ", listed, ")"));
    }
  std::vector<std::string> targets;
  for (const std::string& path : linears)
    if (nn::lora_targets(config, path)) targets.push_back(path);
  LAMINA_CHECK(!targets.empty(), "lora extract: the target modules match no Linear of ", base_path);
  for (const std::string& path : targets) {
    const std::string name = path + kWeightSuffix;
    LAMINA_CHECK(tuned.contains(name), "lora extract: ", tuned_path, " has no tensor '", name, "' (", base_path, " has)");
    const safetensors::TensorInfo& expected = base.info(name);
    const safetensors::TensorInfo& got = tuned.info(name);
    LAMINA_CHECK(got.shape == expected.shape, "lora extract: tensor '", name, "' has shape ", shape_str(got.shape),
                 " in ", tuned_path, " but ", shape_str(expected.shape), " in ", base_path);
    LAMINA_CHECK(is_floating(expected.dtype) && is_floating(got.dtype), "lora extract: tensor '", name,
                 "' is not floating-point in both models (", expected.file_dtype, ", ", got.file_dtype, ")");
  }

  ExtractSummary summary;
  safetensors::NamedTensors tensors;
  for (const std::string& path : targets) {
    const auto start = std::chrono::steady_clock::now();
    const std::string name = path + kWeightSuffix;
    LoraFactors factors;
    {
      const Matrix delta = to_matrix(tuned.read(name)) - to_matrix(base.read(name));
      factors = lora_factors(delta, options.rank, options.energy_fraction, options.svd);
      if (options.on_module) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        options.on_module(path, delta.rows(), delta.cols(), factors, seconds);
      }
    }
    base.release(name);
    tuned.release(name);
    if (factors.rank != options.rank) {
      // Its own rank, and alpha equal to it, so that its scale stays 1.
      config.rank_pattern.emplace_back(escaped_path(path), factors.rank);
      config.alpha_pattern.emplace_back(escaped_path(path), double(factors.rank));
    }
    summary.modules.push_back({path, factors.rank, factors.captured_energy});
    summary.adapter_bytes += uint64_t(factors.lora_A.nbytes() + factors.lora_B.nbytes());
    tensors.emplace_back(peft::file_key(path, "lora_A"), factors.lora_A);
    tensors.emplace_back(peft::file_key(path, "lora_B"), factors.lora_B);
  }
  safetensors::save((fs::path(directory) / "adapter_model.safetensors").string(), tensors);
  io::write_file_atomically((fs::path(directory) / "adapter_config.json").string(),
                            peft::adapter_config_json(config).dump(2) + "\n");
  summary.config = config;
  return summary;
}

}  // namespace lamina::surgery
