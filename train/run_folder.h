// The output folder of a training run, and what lamina keeps there:
//
//   metrics.jsonl      one JSON line per step
//   checkpoints/       step-N/ folders (train/checkpoint.h)
//   model/             the final weights, config and tokenizer files
//   metrics.svg, loss.svg   loss curves drawn from metrics.jsonl (`lamina plot`, `lamina demo`)
//
// and, only while being written (a crash leaves them; the next run removes them):
// model.partial-PID/ and model.deleting-PID/ (the final model swapped into place), temporary
// files NAME.tmp-PID (io::AtomicFile). A folder holding anything else holds user files, which
// lamina never deletes.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "models/llama/model.h"
#include "nn/lora.h"

namespace lamina::train {

// What a run does in an output folder that is not empty.
enum class ExistingRun {
  refuse,     // an error naming what is there: two runs never mix in one folder
  resume,     // continue the run there (from its newest complete checkpoint, if any)
  overwrite,  // remove lamina's run files first; any other file is an error naming it
};

// Throws when a run cannot start in `directory` as `mode` says (see ExistingRun); changes
// nothing. A missing folder must be creatable (its nearest existing parent a writable folder),
// an existing one writable; an empty one is then always fine.
void check_output_folder(const std::string& directory, ExistingRun mode);

// Something a run reads, for check_inputs_outside_run: the flag that named it and its path.
struct RunInput {
  std::string flag;  // "--model"
  std::string path;
};
// Throws, naming the flag, the path and the part of `directory`, when an input lies inside a
// part of the output folder that a run removes or replaces there (metrics.jsonl, checkpoints/,
// model/ and the crash debris beside them): an --overwrite removes all of them, a resume
// prunes checkpoints/ and replaces model/ and metrics.jsonl, so either would delete or change
// its own input under it. Paths are compared canonically (symlinks resolved).
void check_inputs_outside_run(const std::string& directory, const std::vector<RunInput>& inputs, ExistingRun mode);

// The first entry (by name) of a checkpoint folder that is not a file lamina writes there
// (config.json, model.safetensors or its shards and index, optimizer.safetensors,
// trainer.json, COMPLETE, and their NAME.tmp-PID temporaries), as
// "checkpoints/<folder>/<entry>"; empty when there is none. lamina never removes such a folder.
std::string foreign_checkpoint_entry(const std::string& checkpoint_folder);

// Removes lamina's run files (the list above) from `directory`; returns their names ("checkpoints/").
// Callers check first with check_output_folder(directory, ExistingRun::overwrite).
std::vector<std::string> remove_run_files(const std::string& directory);

// Removes what writes interrupted by a kill leave in `directory` (model.partial-PID/,
// model.deleting-PID/, temporary files beside metrics.jsonl and in model/); returns the names.
// Such a model folder holding a file lamina did not write is an error naming it.
std::vector<std::string> remove_interrupted_writes(const std::string& directory);

// An exclusive lock on the output folder (flock on the folder itself), held while this lives:
// two processes never train into one folder at once, and the kernel drops the lock when its
// process dies (kill -9 included), so a stale lock never blocks the next run. Holding it also
// means no other lamina is writing there: every partial folder found is a dead run's. Where
// the file system has no locks (some network mounts) it warns on stderr and goes on unlocked.
class OutputFolderLock {
 public:
  explicit OutputFolderLock(const std::string& directory);
  ~OutputFolderLock();
  OutputFolderLock(const OutputFolderLock&) = delete;
  OutputFolderLock& operator=(const OutputFolderLock&) = delete;

 private:
  int descriptor_ = -1;
};

// Writes `model` (and whatever `add_files` puts beside it) to `directory`/model: into
// model.partial-PID, which replaces model/ only when complete, so model/ is always one whole
// model, the old or the new. `step` names the place for failpoints.
// With `adapter` (a LoRA run) model/ is the adapter as a PEFT folder (see save_model_files).
void save_final_model(const llama::LlamaWithHead& model, const std::string& directory, int64_t step,
                      const std::function<void(const std::string& folder)>& add_files = {},
                      const nn::LoraConfig* adapter = nullptr);

// fsync on a folder: makes the names created, renamed or removed in it durable.
void sync_directory(const std::string& directory);

}  // namespace lamina::train
