// Training checkpoints: everything needed to continue a run exactly.
//
//   <output>/checkpoints/step-00000120/
//       config.json, model.safetensors   the model, in Hugging Face layout (loadable on its own)
//       optimizer.safetensors            the optimizer's moments (and master weights)
//       trainer.json                     step, optimizer counters, data cursor, options
//
// A checkpoint is written into a temporary folder that is renamed into place only when every
// file is complete, so a crash or a failed write leaves the previous checkpoints intact and
// never a half checkpoint. The newest `keep` checkpoints are kept.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "models/llama/model.h"
#include "tensor/io/json.h"
#include "train/optimizer.h"

namespace lamina::train {

struct CheckpointContents {
  int64_t step = 0;
  json::Value trainer_state;  // free-form: data cursor, options, ...
};

// Writes the checkpoint of `step`; returns its folder. `fault` (tests) is called between the
// files and may throw to simulate a failure part-way through.
std::string save_training_checkpoint(const std::string& output_directory, int64_t step,
                                     const llama::LlamaForCausalLM& model, const AdamW& optimizer,
                                     const json::Value& trainer_state, int64_t keep,
                                     const std::function<void(const std::string& stage)>& fault = {});

// The newest complete checkpoint folder under output_directory/checkpoints, if any.
std::optional<std::string> latest_checkpoint(const std::string& output_directory);

// Loads a checkpoint's weights into `model` and its state into `optimizer`.
CheckpointContents load_training_checkpoint(const std::string& checkpoint_directory, llama::LlamaForCausalLM& model,
                                            AdamW& optimizer);

}  // namespace lamina::train
