// Training checkpoints: everything needed to continue a run exactly.
//
//   <output>/checkpoints/step-00000120/
//       config.json, model.safetensors   the model, in Hugging Face layout (loadable on its own)
//       optimizer.safetensors            the optimizer's moments (and master weights)
//       trainer.json                     step, optimizer counters, data cursor, options, data fingerprint
//       COMPLETE                         written last: the checkpoint is whole
//
// A checkpoint is written into step-N.partial-PID/, every file synced, COMPLETE written and
// synced last, and only then renamed into place (and the rename synced). A folder without
// COMPLETE is never a checkpoint, whatever else it holds. Pruning renames a checkpoint to
// step-N.deleting-PID/ (atomically) before removing it, so a crash mid-removal never leaves
// a half checkpoint under a checkpoint's name. Checkpoints are ordered by their step number,
// parsed from the name, never by the name's text.
//
// A killed run leaves partial and deleting folders; remove_incomplete_checkpoints() removes
// them when the next run starts. That run holds the output folder's lock (run_folder.h), so no
// live lamina can be writing them: a partial folder whose PID is alive belongs to a dead run
// whose PID was reused, not to a concurrent run (which the lock refuses).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "models/llama/model.h"
#include "nn/lora.h"
#include "tensor/io/json.h"
#include "train/optimizer.h"

namespace lamina::train {

struct CheckpointContents {
  int64_t step = 0;
  json::Value trainer_state;  // free-form: data cursor, options, ...
};

// Writes the checkpoint of `step` and prunes the others down to `keep`: the newest older ones
// stay; any newer ones (left by a run that this one resumed from before them, because they did
// not load) go. Returns its folder. `fault` (tests) is called between the files ("model",
// "optimizer", "trainer") and may throw to simulate a failure part-way through; the
// LAMINA_FAILPOINT places (train/failpoint.h) are between the same files.
//
// With `adapter` (a LoRA run) the model part is the adapter alone, as a PEFT folder
// (adapter_config.json, adapter_model.safetensors) beside the base's config.json: the frozen
// base is the run's --model, read again on resume.
std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaWithHead& model, const AdamW& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string& stage)>& fault = {},
                                     const nn::LoraConfig* adapter = nullptr);

// The optimizer's part of a checkpoint, for optimizers whose state is not one AdamW's: trainer.json's
// "optimizer" object, and what writes the optimizer's files into the checkpoint folder (for
// ZeRO, every rank's shard: train/distributed/zero_optimizer.h).
struct OptimizerCheckpoint {
  json::Value state;
  std::function<void(const std::string& checkpoint_folder)> write_files;
};
std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaWithHead& model, const OptimizerCheckpoint& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string& stage)>& fault = {},
                                     const nn::LoraConfig* adapter = nullptr);

// The complete checkpoint folders under output_directory/checkpoints, newest (highest step) first.
std::vector<std::string> complete_checkpoints(const std::string& output_directory);
// The newest complete checkpoint folder, if any.
std::optional<std::string> latest_checkpoint(const std::string& output_directory);

// Removes what killed runs leave under output_directory/checkpoints: partial and deleting
// folders, folders without the COMPLETE marker, temporary files. Returns the names removed.
// Only folders that hold nothing but files lamina writes there are removed: one holding
// anything else (foreign_checkpoint_entry, run_folder.h) is an error naming that file, and
// nothing is removed.
std::vector<std::string> remove_incomplete_checkpoints(const std::string& output_directory);

// Removes all but the newest `keep` complete checkpoints (what a run killed while pruning
// left); returns the names removed. A checkpoint to remove that holds a file lamina did not
// write is an error naming it, and nothing is removed. (Pruning after a save keeps such a
// checkpoint instead, with a warning: a run that has trained does not stop for it.)
std::vector<std::string> prune_checkpoints(const std::string& output_directory, int64_t keep);

// Whether `name` is one that lamina gives to folders under checkpoints/ (step-N, and the
// step-N.partial-PID / step-N.deleting-PID it passes through).
bool is_checkpoint_folder_name(const std::string& name);

// What a checkpoint says about itself, read without loading its weights: its trainer.json
// and its model's config.json (for checking a resume before loading anything).
struct CheckpointHeader {
  int64_t step = 0;
  json::Value trainer_state;  // trainer.json's "trainer"
  llama::LlamaConfig config;
};
CheckpointHeader read_checkpoint_header(const std::string& checkpoint_directory);

// Loads a checkpoint's weights into `model` and its state into `optimizer`. Across a change of
// precision (allowed by the caller) it stays as exact as the files allow: an f32 run's weights
// are the f32 master weights a bf16 optimizer needs, and a bf16 run's master weights are the
// values an f32 model continues from.
// With `adapter`, the checkpoint's adapter is loaded into the model's adapter "default" (made
// by the run's --lora), and the base is left as it is.
CheckpointContents load_training_checkpoint(const std::string& checkpoint_directory, llama::LlamaWithHead& model,
                                            AdamW& optimizer, const nn::LoraConfig* adapter = nullptr);
// The same without an AdamW: the model (or adapter) alone, for an optimizer that reads its own
// files (ZeRO's shards). The state trainer.json holds for the optimizer is in `optimizer_state`.
CheckpointContents load_training_checkpoint_model(const std::string& checkpoint_directory, llama::LlamaWithHead& model,
                                                  json::Value& optimizer_state, const nn::LoraConfig* adapter = nullptr);

// The model's files in `directory`: config.json and the weights (HF layout), or with `adapter`
// config.json and the adapter as a PEFT folder.
void save_model_files(const llama::LlamaWithHead& model, const std::string& directory,
                      const nn::LoraConfig* adapter = nullptr);

}  // namespace lamina::train
