// What the model-using subcommands (generate, chat, eval, score, bench generate) share: a model
// path is a Hugging Face folder or a Llama GGUF file, and its tokenizer comes with it.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "models/llama/model.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/device.h"
#include "tools/args.h"

namespace lamina::cli {

// The files of a Hugging Face folder besides config.json and the weights that travel with a
// model folder made from it (`quantize`, `lora merge`): tokenizer, chat template, generation settings.
inline constexpr const char* kCompanionFiles[] = {"tokenizer.json",          "tokenizer_config.json",
                                                  "special_tokens_map.json", "tokenizer.model",
                                                  "generation_config.json",  "chat_template.jinja"};

// A regular file ending in .gguf; anything else is taken for a Hugging Face folder (whose loader
// says what is missing from it).
bool is_gguf_file(const std::string& path);

// How a GGUF file's weights are held: as stored (quantized matrices computed with in their block
// formats, gguf::load_llama_gguf_quantized) or dequantized to f32 (what merging, saving and the
// MoA profile's gradients need).
enum class GgufWeights { as_stored, dequantized };

// The model at `path` as f32 on `device`. A GGUF file is kept as stored when every matrix it
// multiplies by has a quantized kernel (on a GPU its blocks are copied to device memory as they
// are); otherwise (other formats, or `gguf` = dequantized) it is dequantized, with a line on
// stderr saying why when it was not asked.
std::shared_ptr<llama::LlamaForCausalLM> load_model_on(const std::string& path, Device device,
                                                       GgufWeights gguf = GgufWeights::as_stored);

// The --dequantize switch of the commands that run a model (generate, chat, eval, score, bench
// generate), and what it asks for.
void add_dequantize_option(FlagParser& parser);
GgufWeights gguf_weights_choice(const FlagParser& parser);

// `tokenizer_path` when given (a tokenizer.json or a folder holding one), else the model's own:
// the tokenizer inside a GGUF file, or the folder's tokenizer.json (an error naming the folder
// when it has none).
tokenizer::Tokenizer load_model_tokenizer(const std::string& model_path, const std::optional<std::string>& tokenizer_path);

}  // namespace lamina::cli
