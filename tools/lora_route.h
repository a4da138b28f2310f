// `lamina lora route` (tools/lora_route.cpp) and the folder it writes, which `lamina generate` and
// `lamina chat` load with --routed-lora.
#pragma once

#include <memory>
#include <string>

#include "models/llama/model.h"
#include "nn/routed_lora.h"
#include "tools/args.h"
#include "tools/commands.h"

namespace lamina::cli {

// lamina lora route --model M --adapters DIR,DIR,... --data FILE --out OUT [flags]
int run_lora_route(const Arguments& args);

// Loads a routed-LoRA folder (OUT of `lamina lora route`: adapters/<name>/, router.safetensors,
// router_config.json) into `model` and puts it in the routed mode. Every problem (a missing file,
// a gate that is missing, unexpected or of the wrong shape) is an error naming the file and key.
std::shared_ptr<nn::RoutedLora> load_routed_lora(const std::string& folder, llama::LlamaWithHead& model);

}  // namespace lamina::cli
