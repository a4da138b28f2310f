#include "train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>

#include "autograd/autograd.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "nn/layers.h"
#include "tensor/io/atomic_file.h"
#include "train/failpoint.h"
#include "train/run_folder.h"

namespace lamina::train {
namespace fs = std::filesystem;
namespace {

constexpr std::string_view kPrefix = "step-";
constexpr std::string_view kPartial = ".partial-";
constexpr std::string_view kDeleting = ".deleting-";
constexpr const char* kMarker = "COMPLETE";

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", (long long)step);
  return name;
}

// The step of a folder named "step-<digits>"; nullopt for any other name.
std::optional<int64_t> parse_step(std::string_view name) {
  if (name.substr(0, kPrefix.size()) != kPrefix || name.size() == kPrefix.size()) return std::nullopt;
  const std::string_view digits = name.substr(kPrefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  int64_t step = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

// "step-<digits><tag><digits>": a checkpoint on its way in or out.
bool is_transient_name(std::string_view name, std::string_view tag) {
  const size_t at = name.find(tag);
  if (at == std::string_view::npos || !parse_step(name.substr(0, at))) return false;
  const std::string_view pid = name.substr(at + tag.size());
  return !pid.empty() && std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; });
}

struct Found {
  int64_t step;
  fs::path path;
};

// Complete checkpoints, highest step first (ties: by name, for a stable order).
std::vector<Found> find_complete(const fs::path& root) {
  std::vector<Found> found;
  if (!fs::is_directory(root)) return found;
  for (const auto& entry : fs::directory_iterator(root)) {
    const std::optional<int64_t> step = parse_step(entry.path().filename().string());
    if (step && entry.is_directory() && fs::is_regular_file(entry.path() / kMarker)) found.push_back({*step, entry.path()});
  }
  std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
    return a.step != b.step ? a.step > b.step : a.path.filename() < b.path.filename();
  });
  return found;
}

// Refuses to remove a checkpoint folder that holds a file lamina did not write there.
void check_removable(const fs::path& folder, std::string_view why) {
  const std::string foreign = foreign_checkpoint_entry(folder.string());
  const fs::path output = folder.parent_path().parent_path();
  LAMINA_CHECK(foreign.empty(), folder.string(), " ", why, ", but it holds ", (output / foreign).string(),
               ", which lamina did not write, and lamina never deletes such files: move it out of the folder (or the "
               "folder out of checkpoints/)");
}

// Renames the checkpoint out of the way first (atomic), so that a crash during the removal
// leaves a deleting folder, never a checkpoint with some of its files gone.
void remove_checkpoint(const fs::path& root, const fs::path& checkpoint, int64_t step) {
  const fs::path deleting =
      root / str_cat(checkpoint.filename().string(), kDeleting, std::to_string(::getpid()));
  fs::remove_all(deleting);
  fs::rename(checkpoint, deleting);
  sync_directory(root.string());
  failpoint("checkpoint.prune-renamed", step, deleting.string());
  fs::remove(deleting / "model.safetensors");
  failpoint("checkpoint.prune-removing", step, deleting.string());
  fs::remove_all(deleting);
}

}  // namespace

bool is_checkpoint_folder_name(const std::string& name) {
  return parse_step(name) || is_transient_name(name, kPartial) || is_transient_name(name, kDeleting);
}

std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaWithHead& model, const AdamW& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string&)>& fault,
                                     const nn::LoraConfig* adapter) {
  const OptimizerCheckpoint whole{optimizer.state_json(), [&](const std::string& folder) {
                                    safetensors::save((fs::path(folder) / "optimizer.safetensors").string(),
                                                      optimizer.state_tensors());
                                  }};
  return save_training_checkpoint(output_directory, step, model, whole, trainer_state, keep, fault, adapter);
}

std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaWithHead& model, const OptimizerCheckpoint& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string&)>& fault,
                                     const nn::LoraConfig* adapter) {
  const fs::path root = fs::path(output_directory) / "checkpoints";
  fs::create_directories(root);
  const fs::path final_path = root / step_name(step);
  const fs::path partial = root / str_cat(step_name(step), kPartial, std::to_string(::getpid()));
  const auto between_files = [&](const char* stage, std::string_view place, const fs::path& next) {
    if (fault) fault(stage);
    failpoint(place, step, next.string());
  };
  fs::remove_all(partial);
  try {
    fs::create_directories(partial);
    save_model_files(model, partial.string(), adapter);
    between_files("model", "checkpoint.after-model", partial / "optimizer.safetensors");
    optimizer.write_files(partial.string());
    between_files("optimizer", "checkpoint.after-optimizer", partial / "trainer.json");
    json::Value state = json::Object{};
    state.set("step", step);
    state.set("optimizer", optimizer.state);
    state.set("trainer", trainer_state);
    io::write_file_atomically((partial / "trainer.json").string(), state.dump(2) + "\n");
    between_files("trainer", "checkpoint.after-state", partial / kMarker);
    io::write_file_atomically((partial / kMarker).string(), str_cat("step ", step, "\n"));
    sync_directory(partial.string());  // every file's name durable before the folder is published
    failpoint("checkpoint.before-rename", step, final_path.string());
    // A complete checkpoint of this step already there did not load when this run resumed.
    if (fs::exists(final_path)) remove_checkpoint(root, final_path, step);
    fs::rename(partial, final_path);
    sync_directory(root.string());
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(partial, ignored);
    throw;
  }
  failpoint("checkpoint.after-rename", step, final_path.string());
  int64_t kept = 0;
  for (const Found& found : find_complete(root)) {
    const bool keep_it = found.path == final_path || (found.step < step && kept < keep);
    if (keep_it) {
      ++kept;
    } else if (const std::string foreign = foreign_checkpoint_entry(found.path.string()); !foreign.empty()) {
      std::fprintf(stderr, "warning: kept checkpoints/%s beyond --keep-checkpoints %lld: it holds %s, which lamina did "
                   "not write\n", found.path.filename().string().c_str(), (long long)keep, foreign.c_str());
    } else {
      remove_checkpoint(root, found.path, step);
    }
  }
  return final_path.string();
}

std::vector<std::string> prune_checkpoints(const std::string& output_directory, int64_t keep) {
  const fs::path root = fs::path(output_directory) / "checkpoints";
  const std::vector<Found> all = find_complete(root);
  std::vector<std::string> removed;
  for (size_t i = size_t(std::max<int64_t>(keep, 0)); i < all.size(); ++i)
    check_removable(all[i].path, str_cat("is beyond the ", keep, " checkpoints to keep"));
  for (size_t i = size_t(std::max<int64_t>(keep, 0)); i < all.size(); ++i) {
    remove_checkpoint(root, all[i].path, all.front().step);
    removed.push_back("checkpoints/" + all[i].path.filename().string());
  }
  return removed;
}

std::vector<std::string> complete_checkpoints(const std::string& output_directory) {
  std::vector<std::string> out;
  for (const Found& found : find_complete(fs::path(output_directory) / "checkpoints")) out.push_back(found.path.string());
  return out;
}

std::optional<std::string> latest_checkpoint(const std::string& output_directory) {
  const std::vector<std::string> all = complete_checkpoints(output_directory);
  if (all.empty()) return std::nullopt;
  return all.front();
}

std::vector<std::string> remove_incomplete_checkpoints(const std::string& output_directory) {
  const fs::path root = fs::path(output_directory) / "checkpoints";
  std::vector<std::string> removed;
  if (!fs::is_directory(root)) return removed;
  std::vector<fs::directory_entry> entries(fs::directory_iterator(root), fs::directory_iterator{});
  std::sort(entries.begin(), entries.end());
  const auto is_debris = [](const fs::directory_entry& entry) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || entry.is_symlink() || !is_checkpoint_folder_name(name)) return false;
    return !(parse_step(name) && fs::is_regular_file(entry.path() / kMarker));
  };
  // All checked before any is removed: a refusal leaves the folder as it was.
  for (const auto& entry : entries)
    if (is_debris(entry))
      check_removable(entry.path(), parse_step(entry.path().filename().string())
                                        ? "has no COMPLETE marker, so it looks left by a killed run"
                                        : "is a checkpoint being written or removed by a killed run");
  for (const auto& entry : entries) {
    const std::string name = entry.path().filename().string();
    if (!is_debris(entry)) continue;
    fs::remove_all(entry.path());
    removed.push_back(str_cat("checkpoints/", name, parse_step(name) ? " (no COMPLETE marker)" : ""));
  }
  if (!removed.empty()) sync_directory(root.string());
  return removed;
}

CheckpointHeader read_checkpoint_header(const std::string& checkpoint_directory) {
  const fs::path dir(checkpoint_directory);
  LAMINA_CHECK(fs::is_regular_file(dir / kMarker), "checkpoint ", checkpoint_directory, " is incomplete (no ",
               kMarker, " marker)");
  const std::string trainer_path = (dir / "trainer.json").string();
  const json::Value state = json::parse_file(trainer_path);
  CheckpointHeader header;
  header.step = state.at("step").as_int64(trainer_path + ": step");
  header.trainer_state = state.at("trainer");
  header.config = llama::LlamaConfig::load((dir / "config.json").string());
  return header;
}

void save_model_files(const llama::LlamaWithHead& model, const std::string& directory, const nn::LoraConfig* adapter) {
  if (adapter == nullptr) return model.save(directory);
  fs::create_directories(directory);
  llama::LlamaConfig config = model.config();
  config.dtype = model.dtype();
  io::write_file_atomically((fs::path(directory) / "config.json").string(), config.to_json().dump(2) + "\n");
  peft::save_adapter(directory, model, *adapter, "default");
}

namespace {

// The adapter "default" of every Linear that has one, and the modules `config` saves whole, from
// a PEFT adapter file, with the keys peft::save_adapter wrote (the adapter the run made with its
// --lora; the base stays as it is).
void load_adapter_values(const std::string& path, const nn::Module& model, const nn::LoraConfig& config) {
  const safetensors::File file = safetensors::File::open(path);
  autograd::NoGradGuard no_grad;
  for (const auto& [module, linear] : nn::named_linears(model)) {
    if (!linear->has_adapter("default")) continue;
    const nn::LoraAdapter& adapter = linear->adapter("default");
    for (const auto& [part, parameter] : {std::pair<const char*, Tensor>{"lora_A", adapter.lora_A},
                                          {"lora_B", adapter.lora_B}, {"lora_magnitude_vector", adapter.magnitude}}) {
      if (!parameter.defined()) continue;  // no DoRA magnitude
      const std::string key = peft::file_key(module, part);
      LAMINA_CHECK(file.find(key) != nullptr, path, ": no tensor '", key, "' for the model's adapter");
      const Tensor value = file.read(key);
      LAMINA_CHECK(value.shape() == parameter.shape(), path, ": tensor '", key, "' has shape ", value.shape(),
                   ", the model's adapter ", parameter.shape());
      ops::copy_(parameter, ops::to_device(ops::cast(value, parameter.dtype()), parameter.device()));
    }
  }
  for (const auto& [name, parameter] : nn::modules_to_save_parameters(model, config)) {
    const std::string key = peft::saved_module_key(name);
    LAMINA_CHECK(file.find(key) != nullptr, path, ": no tensor '", key, "' for the module trained whole");
    const Tensor value = file.read(key);
    LAMINA_CHECK(value.shape() == parameter.shape(), path, ": tensor '", key, "' has shape ", value.shape(),
                 ", the model's ", parameter.shape());
    ops::copy_(parameter, ops::to_device(ops::cast(value, parameter.dtype()), parameter.device()));
  }
}

}  // namespace

namespace {

CheckpointContents load_checkpoint(const std::string& checkpoint_directory, llama::LlamaWithHead& model,
                                   AdamW* optimizer, json::Value& optimizer_state, const nn::LoraConfig* adapter) {
  const fs::path dir(checkpoint_directory);
  const CheckpointHeader header = read_checkpoint_header(checkpoint_directory);
  const json::Value state = json::parse_file((dir / "trainer.json").string());
  optimizer_state = state.at("optimizer");
  std::vector<nn::NamedTensor> optimizer_tensors;
  if (optimizer != nullptr) {
    const safetensors::File optimizer_file = safetensors::File::open((dir / "optimizer.safetensors").string());
    for (const safetensors::TensorInfo& info : optimizer_file.tensors())
      optimizer_tensors.emplace_back(info.name, optimizer_file.read(info.name));
  }
  if (adapter != nullptr) {
    load_adapter_values((dir / "adapter_model.safetensors").string(), model, *adapter);
    if (optimizer != nullptr) optimizer->load_state(state.at("optimizer"), optimizer_tensors);
    return {header.step, header.trainer_state};
  }
  // f32 weights are read as they are, so that none of their bits is lost to a lower precision.
  const DType read_dtype = header.config.dtype == DType::f32 ? DType::f32 : model.dtype();
  const auto saved_model = model.load_like(dir.string(), read_dtype);
  const auto saved_tensor = [&](const std::string& name) {
    for (const auto& [key, tensor] : optimizer_tensors)
      if (key == name) return tensor;
    return Tensor();
  };
  {
    autograd::NoGradGuard no_grad;
    const std::vector<nn::NamedTensor> saved = saved_model->named_parameters();
    const std::vector<nn::NamedTensor> current = model.named_parameters();
    LAMINA_CHECK(saved.size() == current.size(), "checkpoint ", checkpoint_directory, " has ", saved.size(),
                 " parameters, the model ", current.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      const auto& [name, weight] = saved[i];
      LAMINA_CHECK(name == current[i].first && weight.shape() == current[i].second.shape(), "checkpoint ",
                   checkpoint_directory, ": parameter '", name, "' does not match the model");
      Tensor value = weight;
      const Tensor master = saved_tensor(name + ".master");
      // A bf16 run resumed in f32: its master weights are the values it trained, not their rounding.
      if (master.defined() && dtype_size(current[i].second.dtype()) > dtype_size(weight.dtype())) value = master;
      // An f32 run resumed in bf16: its weights are exactly the master weights the optimizer keeps.
      if (!master.defined() && weight.dtype() == DType::f32) optimizer_tensors.emplace_back(name + ".master", weight);
      ops::copy_(current[i].second, ops::to_device(value, current[i].second.device()));
    }
  }
  if (optimizer != nullptr) optimizer->load_state(state.at("optimizer"), optimizer_tensors);
  return {header.step, header.trainer_state};
}

}  // namespace

CheckpointContents load_training_checkpoint_model(const std::string& checkpoint_directory, llama::LlamaWithHead& model,
                                                  json::Value& optimizer_state, const nn::LoraConfig* adapter) {
  return load_checkpoint(checkpoint_directory, model, nullptr, optimizer_state, adapter);
}

CheckpointContents load_training_checkpoint(const std::string& checkpoint_directory, llama::LlamaWithHead& model,
                                            AdamW& optimizer, const nn::LoraConfig* adapter) {
  json::Value optimizer_state;
  return load_checkpoint(checkpoint_directory, model, &optimizer, optimizer_state, adapter);
}

}  // namespace lamina::train
