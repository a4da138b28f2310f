#include "train/run_folder.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "models/io/peft.h"
#include "tensor/error.h"
#include "train/checkpoint.h"
#include "train/failpoint.h"

namespace lamina::train {
namespace fs = std::filesystem;
namespace {

bool all_digits(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "<base><tag><digits>", as the PID-suffixed names lamina writes (e.g. "model.partial-123").
bool has_pid_suffix(std::string_view name, std::string_view base, std::string_view tag) {
  return name.size() > base.size() + tag.size() && name.substr(0, base.size()) == base &&
         name.substr(base.size(), tag.size()) == tag && all_digits(name.substr(base.size() + tag.size()));
}

// An io::AtomicFile temporary of one of `names`: "<name>.tmp-<pid>".
bool is_temporary_of(std::string_view name, std::initializer_list<std::string_view> names) {
  for (std::string_view base : names)
    if (has_pid_suffix(name, base, ".tmp-")) return true;
  return false;
}

bool is_sharded_weights(std::string_view name) {
  // model-00001-of-00003.safetensors
  return name.size() == 32 && name.substr(0, 6) == "model-" && all_digits(name.substr(6, 5)) &&
         name.substr(11, 4) == "-of-" && all_digits(name.substr(15, 5)) && name.substr(20) == ".safetensors";
}

// A file that lamina writes into a checkpoint folder, or its io::AtomicFile temporary.
// ZeRO's optimizer shards: optimizer.rank-R-of-N.safetensors (train/distributed/zero_optimizer.h).
bool is_optimizer_shard(std::string_view name) {
  constexpr std::string_view prefix = "optimizer.rank-", suffix = ".safetensors";
  if (name.size() <= prefix.size() + suffix.size() || name.substr(0, prefix.size()) != prefix) return false;
  const size_t end = name.find(suffix, prefix.size());
  if (end == std::string_view::npos) return false;
  const std::string_view ranks = name.substr(prefix.size(), end - prefix.size());  // "R-of-N"
  const size_t of = ranks.find("-of-");
  if (of == std::string_view::npos || !all_digits(ranks.substr(0, of)) || !all_digits(ranks.substr(of + 4))) return false;
  const std::string_view file = name.substr(0, end + suffix.size());
  return name == file || has_pid_suffix(name, file, ".tmp-");
}

bool is_checkpoint_file(std::string_view name) {
  for (std::string_view file : {"optimizer.safetensors", "trainer.json", "COMPLETE"})
    if (name == file || has_pid_suffix(name, file, ".tmp-")) return true;
  return is_optimizer_shard(name);
}

bool is_model_file(std::string_view name) {
  constexpr std::string_view files[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                        "tokenizer.json", "tokenizer_config.json"};
  for (std::string_view file : files)
    if (name == file || has_pid_suffix(name, file, ".tmp-")) return true;
  return is_sharded_weights(name) || (name.size() > 32 && is_sharded_weights(name.substr(0, 32)) &&
                                      has_pid_suffix(name, name.substr(0, 32), ".tmp-"));
}

// The first entry of `folder` that `belongs` rejects, as "folder/entry"; empty when all belong.
template <typename Predicate>
std::string first_foreign_entry(const fs::path& folder, Predicate belongs) {
  std::vector<std::string> foreign;
  for (const auto& entry : fs::directory_iterator(folder))
    if (!belongs(entry)) foreign.push_back((folder.filename() / entry.path().filename()).string());
  std::sort(foreign.begin(), foreign.end());
  return foreign.empty() ? "" : foreign.front();
}

std::vector<fs::directory_entry> sorted_entries(const fs::path& folder);

// For an entry of the output folder: empty when lamina wrote it (the whole of it, for
// folders), else the path of a file in it that lamina did not write.
std::string foreign_part(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  const std::string relative = name + (entry.is_directory() ? "/" : "");
  if (entry.is_regular_file() &&
      (name == "metrics.jsonl" || name == "metrics.svg" || name == "loss.svg" || name == "samples.jsonl" ||
       is_temporary_of(name, {"metrics.jsonl", "metrics.svg", "loss.svg", "samples.jsonl"})))
    return "";
  if (!entry.is_directory() || entry.is_symlink()) return relative;
  if (name == "checkpoints") {
    const std::string folder = first_foreign_entry(entry.path(), [](const fs::directory_entry& inside) {
      return inside.is_directory() && !inside.is_symlink() && is_checkpoint_folder_name(inside.path().filename().string());
    });
    if (!folder.empty()) return folder;
    for (const auto& checkpoint : sorted_entries(entry.path()))
      if (std::string inside = foreign_checkpoint_entry(checkpoint.path().string()); !inside.empty()) return inside;
    return "";
  }
  if (name == "model" || has_pid_suffix(name, "model", ".partial-") || has_pid_suffix(name, "model", ".deleting-"))
    return first_foreign_entry(entry.path(), [](const fs::directory_entry& inside) {
      return inside.is_regular_file() && is_model_file(inside.path().filename().string());
    });
  return relative;
}

std::vector<fs::directory_entry> sorted_entries(const fs::path& folder) {
  std::vector<fs::directory_entry> entries;
  if (!fs::is_directory(folder)) return entries;
  for (const auto& entry : fs::directory_iterator(folder)) entries.push_back(entry);
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  return entries;
}

std::string listed(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& name : names) out += (out.empty() ? "" : ", ") + name;
  return out;
}

// Throws unless `folder` is a writable folder, or can be created: the nearest part of its path
// that exists is a writable folder. Checked before the data and the model are read, which may
// take minutes, rather than found when the first file is written.
void check_creatable(const fs::path& folder, const std::string& directory) {
  std::error_code error;
  if (fs::is_directory(folder, error)) {
    LAMINA_CHECK(::access(folder.c_str(), W_OK | X_OK) == 0, "output folder ", directory, " is not writable: ",
                 std::strerror(errno));
    return;
  }
  fs::path existing = folder.parent_path();
  while (!existing.empty() && !fs::exists(fs::symlink_status(existing, error))) existing = existing.parent_path();
  if (existing.empty()) existing = folder.is_absolute() ? "/" : ".";
  LAMINA_CHECK(fs::is_directory(existing, error), "cannot create output folder ", directory, ": ", existing.string(),
               " is not a folder");
  LAMINA_CHECK(::access(existing.c_str(), W_OK | X_OK) == 0, "cannot create output folder ", directory, " in ",
               existing.string(), ": ", std::strerror(errno));
}

// Whether `inner` is `outer` or lies inside it (both canonical).
bool lies_inside(const fs::path& inner, const fs::path& outer) {
  auto a = inner.begin(), b = outer.begin();
  for (; b != outer.end(); ++a, ++b)
    if (a == inner.end() || *a != *b) return false;
  return true;
}

}  // namespace

std::string foreign_checkpoint_entry(const std::string& checkpoint_folder) {
  const fs::path folder(checkpoint_folder);
  if (!fs::is_directory(fs::symlink_status(folder))) return "";
  const std::string foreign = first_foreign_entry(folder, [](const fs::directory_entry& inside) {
    const std::string name = inside.path().filename().string();
    return inside.is_regular_file() && !inside.is_symlink() && (is_model_file(name) || is_checkpoint_file(name)) &&
           name.rfind("tokenizer", 0) != 0;
  });
  return foreign.empty() ? "" : "checkpoints/" + foreign;
}

void check_inputs_outside_run(const std::string& directory, const std::vector<RunInput>& inputs, ExistingRun mode) {
  std::error_code error;
  for (const auto& entry : sorted_entries(directory)) {
    if (!foreign_part(entry).empty()) continue;  // never removed or replaced
    const fs::path part = fs::weakly_canonical(entry.path(), error);
    if (error) continue;
    for (const RunInput& input : inputs) {
      const fs::path path = fs::weakly_canonical(input.path, error);
      if (error || !lies_inside(path, part)) continue;
      const std::string name =
          (fs::path(directory) / entry.path().filename()).string() + (entry.is_directory() ? "/" : "");
      const bool linked = path != fs::absolute(input.path, error).lexically_normal();
      throw Error(str_cat(input.flag, " ", input.path, linked ? str_cat(" (", path.string(), ")") : std::string(),
                          " is inside ", name, ", which ",
                          mode == ExistingRun::overwrite ? "--overwrite removes"
                                                         : "a resumed run prunes or rewrites (checkpoints/, model/, "
                                                           "metrics.jsonl)",
                          ": the run would delete its own input. Copy it out of ", directory,
                          " first, or choose another --output"));
    }
  }
}

void check_output_folder(const std::string& directory, ExistingRun mode) {
  const fs::path folder(directory);
  if (fs::exists(folder) && !fs::is_directory(folder))
    throw Error(str_cat("output folder ", directory, " is a file, not a folder"));
  check_creatable(folder, directory);
  const std::vector<fs::directory_entry> entries = sorted_entries(folder);
  if (entries.empty() || mode == ExistingRun::resume) return;
  std::vector<std::string> run_files, foreign;
  for (const auto& entry : entries) {
    const std::string part = foreign_part(entry);
    if (part.empty()) run_files.push_back(entry.path().filename().string() + (entry.is_directory() ? "/" : ""));
    else foreign.push_back(part);
  }
  if (mode == ExistingRun::overwrite) {
    if (foreign.empty()) return;
    throw Error(str_cat("output folder ", directory, " holds ", foreign.front(),
                        ", which lamina did not write: overwriting removes only lamina's run files (metrics.jsonl, "
                        "checkpoints/, model/, ...); move it away or choose another folder"));
  }
  if (!run_files.empty())
    throw Error(str_cat("output folder ", directory, " already holds a training run (", listed(run_files),
                        "): resume it (--resume) or replace it (--overwrite), or choose another folder"));
  throw Error(str_cat("output folder ", directory, " is not empty (it holds ", foreign.front(),
                      "): choose a new or empty folder"));
}

std::vector<std::string> remove_run_files(const std::string& directory) {
  std::vector<std::string> removed;
  for (const auto& entry : sorted_entries(directory)) {
    if (!foreign_part(entry).empty()) continue;
    fs::remove_all(entry.path());
    removed.push_back(entry.path().filename().string() + (entry.is_directory() ? "/" : ""));
  }
  if (!removed.empty()) sync_directory(directory);
  return removed;
}

std::vector<std::string> remove_interrupted_writes(const std::string& directory) {
  std::vector<std::string> removed;
  for (const auto& entry : sorted_entries(directory)) {
    const std::string name = entry.path().filename().string();
    if (!(has_pid_suffix(name, "model", ".partial-") || has_pid_suffix(name, "model", ".deleting-") ||
          is_temporary_of(name, {"metrics.jsonl", "metrics.svg", "loss.svg", "samples.jsonl"})))
      continue;
    const std::string foreign = foreign_part(entry);
    LAMINA_CHECK(foreign.empty(), (fs::path(directory) / name).string(),
                 " is a model a killed run was writing, but it holds ", (fs::path(directory) / foreign).string(),
                 ", which lamina did not write, and lamina never deletes such files: move it away");
    fs::remove_all(entry.path());
    removed.push_back(name);
  }
  for (const auto& entry : sorted_entries(fs::path(directory) / "model")) {
    const std::string name = entry.path().filename().string();
    if (name.find(".tmp-") == std::string::npos || !is_model_file(name)) continue;
    fs::remove(entry.path());
    removed.push_back("model/" + name);
  }
  return removed;
}

OutputFolderLock::OutputFolderLock(const std::string& directory) {
  descriptor_ = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  LAMINA_CHECK(descriptor_ >= 0, "cannot open output folder ", directory, ": ", std::strerror(errno));
  if (::flock(descriptor_, LOCK_EX | LOCK_NB) != 0) {
    const int error = errno;
    ::close(descriptor_);
    descriptor_ = -1;
    LAMINA_CHECK(error != EWOULDBLOCK, "output folder ", directory,
                 " is in use: another lamina run is training into it (it holds the folder's lock)");
    // A file system without locks (some network mounts) should not stop training.
    std::fprintf(stderr, "warning: cannot lock output folder %s (%s): a second run started there would not be noticed\n",
                 directory.c_str(), std::strerror(error));
  }
}

OutputFolderLock::~OutputFolderLock() {
  if (descriptor_ >= 0) ::close(descriptor_);  // closing drops the lock
}

void save_final_model(const llama::LlamaWithHead& model, const std::string& directory, int64_t step,
                      const std::function<void(const std::string& folder)>& add_files, const nn::LoraConfig* adapter) {
  const fs::path root(directory), target = root / "model";
  const std::string pid = std::to_string(::getpid());
  const fs::path partial = root / ("model.partial-" + pid), deleting = root / ("model.deleting-" + pid);
  fs::remove_all(partial);
  try {
    // A LoRA run's model/ is a PEFT adapter folder as PEFT writes it: no config.json, which
    // would make it look like a whole model to transformers.
    if (adapter != nullptr) peft::save_adapter(partial.string(), model, *adapter, "default");
    else model.save(partial.string());
    if (add_files) add_files(partial.string());
    sync_directory(partial.string());
    failpoint("model.before-swap", step, target.string());
    // rename() cannot replace a non-empty folder: the old one steps aside first. A crash in
    // between leaves no model/, and both folders for the next run to remove; the resumed run
    // (its last checkpoint is this step) then writes model/ again.
    if (fs::exists(target)) fs::rename(target, deleting);
    fs::rename(partial, target);
    sync_directory(directory);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(partial, ignored);
    throw;
  }
  fs::remove_all(deleting);
}

void sync_directory(const std::string& directory) {
  const int descriptor = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  LAMINA_CHECK(descriptor >= 0, "cannot open ", directory, ": ", std::strerror(errno));
  const int synced = ::fsync(descriptor);
  const int error = errno;
  ::close(descriptor);
  LAMINA_CHECK(synced == 0, "cannot sync ", directory, ": ", std::strerror(error));
}

}  // namespace lamina::train
