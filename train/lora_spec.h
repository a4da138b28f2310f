// The --lora flag of `lamina train`: a LoRA configuration written as comma-separated settings,
//
//   r=16,alpha=32,dropout=0.05,targets=all-linear            (PEFT's names for the knobs)
//   r=8,targets=q_proj+v_proj,rslora,dora,init=gaussian
//
// r (rank, default 8), alpha (default: r, so a scale of 1), dropout (default 0), targets (PEFT
// module names joined by '+', or all-linear; default q_proj+v_proj, PEFT's default for Llama),
// rslora and dora (switches), init (true = PEFT's Kaiming-uniform A and zero B, or gaussian).
// Unknown settings, repeated ones and out-of-range values are errors naming them.
#pragma once

#include <cstdint>
#include <string>

#include "models/llama/config.h"
#include "nn/lora.h"

namespace lamina::train {

nn::LoraConfig parse_lora_spec(const std::string& spec);

// The adapter parameters that `config` adds to a Llama model of `model` (A and B of every
// targeted projection, DoRA's magnitudes): what a LoRA run trains, computed from the configs alone.
int64_t lora_parameter_count(const llama::LlamaConfig& model, const nn::LoraConfig& config);

}  // namespace lamina::train
