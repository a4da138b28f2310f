#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "autograd/autograd.h"
#include "models/io/safetensors.h"
#include "tensor/io/atomic_file.h"

namespace lamina::train {
namespace fs = std::filesystem;
namespace {

constexpr const char* kPrefix = "step-";

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "%s%08lld", kPrefix, (long long)step);
  return name;
}

// Complete checkpoint folders, oldest first.
std::vector<fs::path> complete_checkpoints(const fs::path& root) {
  std::vector<fs::path> found;
  if (!fs::exists(root)) return found;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind(kPrefix, 0) != 0 || name.find('.') != std::string::npos) continue;
    if (!fs::exists(entry.path() / "trainer.json")) continue;
    found.push_back(entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaForCausalLM& model, const AdamW& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string&)>& fault) {
  const fs::path root = fs::path(output_directory) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_path = root / step_name(step);
  const fs::path partial = root / (step_name(step) + ".partial-" + std::to_string(::getpid()));
  fs::remove_all(partial);
  try {
    fs::create_directories(partial);
    model.save(partial.string());
    if (fault) fault("model");
    safetensors::save((partial / "optimizer.safetensors").string(), optimizer.state_tensors());
    if (fault) fault("optimizer");
    json::Value state = json::Object{};
    state.set("step", step);
    state.set("optimizer", optimizer.state_json());
    state.set("trainer", trainer_state);
    io::write_file_atomically((partial / "trainer.json").string(), state.dump(2) + "\n");
    if (fault) fault("trainer");
    fs::remove_all(final_path);  // a checkpoint of the same step from an earlier, abandoned run
    fs::rename(partial, final_path);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(partial, ignored);
    throw;
  }
  // Keep the newest `keep`.
  std::vector<fs::path> all = complete_checkpoints(root);
  for (size_t i = 0; keep > 0 && all.size() > size_t(keep) && i < all.size() - size_t(keep); ++i) fs::remove_all(all[i]);
  return final_path.string();
}

std::optional<std::string> latest_checkpoint(const std::string& output_directory) {
  const std::vector<fs::path> all = complete_checkpoints(fs::path(output_directory) / "checkpoints");
  if (all.empty()) return std::nullopt;
  return all.back().string();
}

CheckpointContents load_training_checkpoint(const std::string& checkpoint_directory, llama::LlamaForCausalLM& model,
                                            AdamW& optimizer) {
  const fs::path dir(checkpoint_directory);
  const json::Value state = json::parse_file((dir / "trainer.json").string());
  const auto saved_model = llama::LlamaForCausalLM::load(dir.string(), model.dtype());
  {
    autograd::NoGradGuard no_grad;
    const std::vector<nn::NamedTensor> saved = saved_model->named_parameters();
    const std::vector<nn::NamedTensor> current = model.named_parameters();
    LAMINA_CHECK(saved.size() == current.size(), "checkpoint ", checkpoint_directory, " has ", saved.size(),
                 " parameters, the model ", current.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      LAMINA_CHECK(saved[i].first == current[i].first && saved[i].second.shape() == current[i].second.shape(),
                   "checkpoint ", checkpoint_directory, ": parameter '", saved[i].first, "' does not match the model");
      ops::copy_(current[i].second, ops::to_device(saved[i].second, current[i].second.device()));
    }
  }
  const safetensors::File optimizer_file = safetensors::File::open((dir / "optimizer.safetensors").string());
  std::vector<nn::NamedTensor> optimizer_tensors;
  for (const safetensors::TensorInfo& info : optimizer_file.tensors())
    optimizer_tensors.emplace_back(info.name, optimizer_file.read(info.name));
  optimizer.load_state(state.at("optimizer"), optimizer_tensors);
  return {state.at("step").as_int64("trainer.json: step"), state.at("trainer")};
}

}  // namespace lamina::train
