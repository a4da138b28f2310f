// `lamina checkpoint consolidate`: a ZeRO checkpoint (train/distributed/zero_optimizer.h: one
// optimizer shard per rank) made whole again:
//
//   lamina checkpoint consolidate --checkpoint OUT/checkpoints/step-00000100 --out DIR
//
// DIR is an ordinary checkpoint folder, the one a run without ZeRO (same world size) would have
// written at that step: the model's files as they are (config.json and model.safetensors, so
// it is also a Hugging Face folder; or a LoRA run's adapter), optimizer.safetensors with every
// parameter's AdamW moments (and f32 master weights for a bf16 model), trainer.json with
// zero-stage 0, and COMPLETE. `lamina train --resume` continues from it when it is put in a
// run's checkpoints/ folder, as can any tool that reads a whole optimizer state. Built under a
// temporary name and renamed into place when complete.
#include <cstdio>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "models/io/safetensors.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/staged_folder.h"
#include "train/distributed/zero_optimizer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

const std::string kCommand = "lamina checkpoint consolidate";

// The name an in-memory LoRA parameter ("...q_proj.lora_A.default.weight") has in a PEFT
// adapter file ("base_model.model....q_proj.lora_A.weight"); other names are unchanged.
std::string adapter_file_name(const std::string& name) {
  for (const char* part : {".lora_A.", ".lora_B.", ".lora_magnitude_vector."}) {
    const size_t at = name.find(part);
    if (at == std::string::npos) continue;
    const size_t adapter_end = name.find('.', at + std::string(part).size());
    if (adapter_end == std::string::npos) continue;
    return "base_model.model." + name.substr(0, at + std::string(part).size() - 1) + name.substr(adapter_end);
  }
  return name;
}

// The trained parameters, named as the optimizer named them, with the shapes the checkpoint's
// weights give: every parameter some shard file holds a piece of.
std::vector<nn::NamedTensor> trained_parameters(const fs::path& checkpoint, int world_size, bool& low_precision) {
  std::set<std::string> names;
  for (int rank = 0; rank < world_size; ++rank) {
    const fs::path path = checkpoint / dist::ZeroOptimizer::shard_file_name(rank, world_size);
    LAMINA_CHECK(fs::exists(path), kCommand, ": ", checkpoint.string(), " has no ", path.filename().string(), " (rank ",
                 rank, " of ", world_size, ")");
    const safetensors::File shard = safetensors::File::open(path.string());
    for (const safetensors::TensorInfo& info : shard.tensors()) {
      const size_t open = info.name.rfind('[');
      if (open != std::string::npos && info.name.back() == ']') names.insert(info.name.substr(0, open));
    }
  }
  const bool adapter = fs::exists(checkpoint / "adapter_model.safetensors");
  const safetensors::File weights =
      safetensors::File::open((checkpoint / (adapter ? "adapter_model.safetensors" : "model.safetensors")).string());
  std::vector<nn::NamedTensor> parameters;
  low_precision = false;
  for (const std::string& name : names) {
    const safetensors::TensorInfo* info = weights.find(adapter ? adapter_file_name(name) : name);
    LAMINA_CHECK(info != nullptr, kCommand, ": the optimizer shards train '", name, "', which ",
                 weights.path(), " does not hold");
    parameters.emplace_back(name, Tensor::empty(info->shape, DType::f32));
    if (info->dtype == DType::bf16 || info->dtype == DType::f16) low_precision = true;
  }
  return parameters;
}

}  // namespace

int run_checkpoint(const Arguments& args) {
  if (args.empty() || (args[0] != "consolidate" && args[0] != "--help" && args[0] != "-h"))
    throw UsageError("lamina checkpoint: the action is 'consolidate'", "run 'lamina checkpoint consolidate --help'");
  if (args[0] != "consolidate") {
    std::printf("usage: lamina checkpoint consolidate --checkpoint DIR --out DIR\n\n"
                "  consolidate  make a ZeRO checkpoint (one optimizer shard per rank) an ordinary one\n");
    return 0;
  }
  FlagParser parser(kCommand + " --checkpoint CKPT --out DIR",
                    "Rebuilds a ZeRO checkpoint's whole optimizer state from its ranks' shards: DIR is the checkpoint a "
                    "run without ZeRO would have written (the model's files, optimizer.safetensors, trainer.json with "
                    "zero-stage 0, COMPLETE); its config.json and model.safetensors make it a Hugging Face folder too.");
  parser.add_option("checkpoint", "CKPT", "a complete checkpoint folder of a ZeRO run (OUT/checkpoints/step-N)");
  parser.add_option("out", "DIR", "where the consolidated checkpoint goes");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(Arguments(args.begin() + 1, args.end()))) return 0;
  const fs::path checkpoint = parser.required("checkpoint");
  const fs::path out = parser.required("out");
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(checkpoint, error), kCommand, ": ", checkpoint.string(), " is not a folder");
  LAMINA_CHECK(fs::exists(checkpoint / "COMPLETE", error), kCommand, ": ", checkpoint.string(),
               " is not a complete checkpoint (no COMPLETE marker)");
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), kCommand, ": ", out.string(), " exists; pass --overwrite to replace it");
    LAMINA_CHECK(!fs::equivalent(out, checkpoint, error), kCommand, ": --out must differ from --checkpoint");
  }
  json::Value state = json::parse_file((checkpoint / "trainer.json").string());
  json::Value trainer = state.at("trainer");
  json::Value options = trainer.at("options");
  const int64_t stage = options.find("zero-stage") != nullptr ? options.at("zero-stage").as_int64() : 0;
  LAMINA_CHECK(stage > 0, kCommand, ": ", checkpoint.string(), " is not a ZeRO checkpoint (zero-stage ", stage,
               "): its optimizer.safetensors is whole already");
  const json::Value* world = trainer.find("world_size");
  LAMINA_CHECK(world != nullptr, kCommand, ": ", checkpoint.string(), "/trainer.json does not say its world size");
  const int world_size = int(world->as_int64("trainer.json: world_size"));

  bool low_precision = false;
  const std::vector<nn::NamedTensor> parameters = trained_parameters(checkpoint, world_size, low_precision);
  const std::vector<nn::NamedTensor> whole =
      dist::consolidate_optimizer_shards(checkpoint.string(), world_size, parameters, low_precision);

  StagedFolder folder(out);
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoint)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file() || name == "trainer.json" || name == "COMPLETE" || name.rfind("optimizer.", 0) == 0)
      continue;
    fs::copy_file(entry.path(), folder.path() / name);
  }
  safetensors::save((folder.path() / "optimizer.safetensors").string(), whole);
  options.set("zero-stage", int64_t(0));
  trainer.set("options", options);
  state.set("trainer", trainer);
  io::write_file_atomically((folder.path() / "trainer.json").string(), state.dump(2) + "\n");
  io::write_file_atomically((folder.path() / "COMPLETE").string(),
                            str_cat("step ", state.at("step").as_int64("trainer.json: step"), "\n"));
  folder.commit();
  std::printf("consolidated %zu parameters' optimizer state from %d shards into %s\n", parameters.size(), world_size,
              out.string().c_str());
  return 0;
}

}  // namespace lamina::cli
