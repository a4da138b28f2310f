// `lamina lora route`: trains the gates of a routed multi-LoRA model (nn/routed_lora.h, after
// MeteoRA): N PEFT adapters of one base are loaded into it, a gate is added on every adapted
// projection, and the gates alone train (train::Trainer, the causal-LM loss of `train sft`) on a
// mix of the adapters' tasks. The base and the adapters stay frozen.
//
//   lamina lora route --model M --adapters DIR1,DIR2 --data mix.jsonl --top-k 2 --out OUT
//
// OUT (built under a temporary name and renamed into place when complete):
//   adapters/<name>/       each adapter's PEFT folder, copied
//   router.safetensors     the gates, "model.layers.3.self_attn.q_proj.lora_router.weight": [N, in]
//   router_config.json     the adapters' names in gate-row order, top_k, the base model
//   metrics.jsonl          one line per step, as `lamina train` writes them
// `lamina generate --routed-lora OUT` and `lamina chat --routed-lora OUT` run with it.
#include "tools/lora_route.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "autograd/autograd.h"
#include "models/io/peft.h"
#include "models/io/safetensors.h"
#include "models/tokenizer/chat.h"
#include "nn/layers.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/json.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"
#include "tools/train_support.h"
#include "train/data.h"
#include "train/metrics.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

const std::string kCommand = "lamina lora route";

// A name that is safe as a folder name and readable in messages.
bool valid_adapter_name(const std::string& name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.'; });
}

// The adapter's default name: its folder's, or for a `train --lora` run's model/ folder the run's.
std::string default_adapter_name(const std::string& directory) {
  fs::path path = fs::path(directory).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  std::string name = path.filename().string();
  if (name == "model" && path.has_parent_path() && !path.parent_path().filename().empty())
    name = path.parent_path().filename().string();
  return name;
}

// The examples of --data (JSONL as `train sft` reads it), each cut to a row of seq_len + 1 ids.
std::vector<train::Example> read_examples(const FlagParser& parser, const std::string& model_path,
                                          const train::TrainOptions& options) {
  const std::string data = parser.required("data");
  const std::string tokenizer_path = parser.value("tokenizer").value_or(model_path);
  const tokenizer::Tokenizer tok = load_model_tokenizer(model_path, parser.value("tokenizer"));
  train::JsonlOptions jsonl;
  jsonl.format = train::data_format_from_name(parser.value("format").value_or("auto"));
  jsonl.chat = tokenizer::detect_chat_options(tokenizer_path, tok);
  std::vector<train::Example> examples = train::read_jsonl(data, tok, jsonl);
  train::FitStats fit;
  examples = train::fit_examples(std::move(examples), options.seq_len + 1, &fit);
  if (fit.too_long > 0) std::fprintf(stderr, "%s: %s\n", data.c_str(), fit.summary().c_str());
  LAMINA_CHECK(!examples.empty(), kCommand, ": ", data, " holds no training examples");
  return examples;
}

// The mean routing weight of each adapter over the first examples, in eval mode.
std::vector<double> measure_routing(llama::LlamaWithHead& model, nn::RoutedLora& router,
                                    const std::vector<train::Example>& examples) {
  auto* causal = dynamic_cast<llama::LlamaForCausalLM*>(&model);
  if (causal == nullptr) return {};
  autograd::NoGradGuard no_grad;
  model.eval();
  router.set_recording(true);
  const size_t count = std::min<size_t>(examples.size(), 32);
  for (size_t i = 0; i < count; ++i) {
    const std::vector<int32_t>& ids = examples[i].ids;
    causal->forward(Tensor::from_vector(ids, {1, int64_t(ids.size())}, DType::i32));
  }
  const std::vector<double> weights = router.stats().mean_weights();
  router.set_recording(false);
  model.train();
  return weights;
}

}  // namespace

std::shared_ptr<nn::RoutedLora> load_routed_lora(const std::string& folder, llama::LlamaWithHead& model) {
  const std::string what = "--routed-lora " + folder;
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(folder, error), what, ": not a folder (the output of `lamina lora route`)");
  const fs::path config_path = fs::path(folder) / "router_config.json";
  const fs::path gates_path = fs::path(folder) / "router.safetensors";
  LAMINA_CHECK(fs::is_regular_file(config_path, error), what, ": ", config_path.string(), " is missing");
  LAMINA_CHECK(fs::is_regular_file(gates_path, error), what, ": ", gates_path.string(), " is missing");
  const json::Value config = json::parse_file(config_path.string());
  const std::string source = config_path.string();
  std::vector<std::string> names;
  for (const json::Value& name : config.at("adapters", source).as_array(source + ": adapters")) {
    names.push_back(name.as_string(source + ": adapters[]"));
    LAMINA_CHECK(valid_adapter_name(names.back()), source, ": adapter name '", names.back(),
                 "' is not a plain folder name");
  }
  const int64_t top_k = config.at("top_k", source).as_int64(source + ": top_k");
  for (const std::string& name : names) peft::load_adapter((fs::path(folder) / "adapters" / name).string(), model, name);
  const std::shared_ptr<nn::RoutedLora> router = nn::add_lora_router(model, names, top_k);
  // The gates from the file: every one the model has, nothing else, each of its shape.
  const safetensors::File file = safetensors::File::open(gates_path.string());
  const std::vector<nn::NamedTensor> gates = nn::router_parameters(model);
  std::set<std::string> expected;
  for (const auto& [name, gate] : gates) {
    expected.insert(name);
    const safetensors::TensorInfo* info = file.find(name);
    LAMINA_CHECK(info != nullptr, gates_path.string(), ": no gate '", name, "' (the adapters target that module)");
    LAMINA_CHECK(info->shape == gate.shape(), gates_path.string(), ": '", name, "' has shape ", info->shape,
                 ", the model's gate is ", gate.shape());
  }
  for (const safetensors::TensorInfo& info : file.tensors())
    LAMINA_CHECK(expected.count(info.name) == 1, gates_path.string(), ": '", info.name,
                 "' is no gate of this model (different target modules or base?)");
  autograd::NoGradGuard no_grad;
  for (const auto& [name, gate] : gates) gate.set_data(file.read(name).to(gate.dtype()).to(gate.device()).contiguous().clone());
  return router;
}

int run_lora_route(const Arguments& args) {
  FlagParser parser(kCommand + " --model M --adapters DIR1,DIR2[,...] --data FILE.jsonl --out OUT",
                    "Trains a router over N PEFT LoRA adapters of one base (MeteoRA): a gate on every adapted\n"
                    "projection maps its input to N logits; per token the top-k adapters are added, weighted by\n"
                    "the softmax of their logits. Only the gates train, on the causal-LM loss of the data (as\n"
                    "`lamina train sft` reads it: prompt/completion, messages, ShareGPT or text); the base and\n"
                    "the adapters stay frozen. OUT gets adapters/<name>/ (the PEFT folders), router.safetensors,\n"
                    "router_config.json and metrics.jsonl; it is built under a temporary name and renamed into\n"
                    "place when complete. `lamina generate --routed-lora OUT` runs with it.");
  parser.add_option("model", "M", "the base model: a Hugging Face folder or a Llama GGUF file (dequantized to f32)");
  parser.add_option("adapters", "DIRS", "comma-separated PEFT adapter folders, all of that base and the same targets");
  parser.add_option("names", "NAMES", "comma-separated adapter names, one per folder",
                    "each folder's name (a run's name for a run's model/ folder)");
  parser.add_option("data", "FILE.jsonl", "the training data: a mix of the adapters' tasks");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model's own)");
  parser.add_option("format", "FORMAT", "auto, text, prompt-completion, chat or sharegpt", "auto");
  parser.add_option("top-k", "K", "adapters per token (at least 2 to train: softmax over one logit is 1)", "2");
  parser.add_option("out", "OUT", "the routed-LoRA folder to write");
  parser.add_option("steps", "N", "optimizer steps", "100");
  parser.add_option("batch-size", "B", "rows per optimizer step", "8");
  parser.add_option("micro-batch-size", "B", "rows per forward/backward (0 = batch-size)", "0");
  parser.add_option("seq-len", "T", "tokens per row", "256");
  parser.add_option("lr", "LR", "peak learning rate of the gates", "1e-3");
  parser.add_option("warmup-steps", "N", "linear warmup steps", "0");
  parser.add_option("schedule", "NAME", "cosine, linear or constant", "cosine");
  parser.add_option("weight-decay", "W", "AdamW weight decay of the gates", "0");
  parser.add_option("seed", "S", "the gates' initial values and the data order", "0");
  parser.add_switch("no-pack", "one example per row instead of packing several");
  parser.add_switch("overwrite", "replace OUT when it exists (otherwise an existing OUT is refused)");
  parser.add_switch("quiet", "no progress line");
  if (!parser.parse(args)) return 0;
  const std::string model_path = parser.required("model");
  const std::vector<std::string> folders = [&] {
    if (!parser.is_set("adapters")) throw UsageError(kCommand + ": --adapters is required", "run '" + kCommand + " --help'");
    return parser.list_value("adapters");
  }();
  const std::string out = parser.required("out");
  parser.required("data");
  const int64_t count = int64_t(folders.size());
  if (count < 2)
    throw UsageError(kCommand + ": --adapters gives one folder; a router chooses between two or more",
                     "--adapters DIR1,DIR2[,...]");
  const int64_t top_k = parser.int_value("top-k", 2, 1, INT64_MAX);
  if (top_k > count)
    throw UsageError(str_cat(kCommand, ": --top-k ", top_k, " is more than the ", count, " adapters given"),
                     "--top-k is at most the number of --adapters");
  if (top_k == 1)
    throw UsageError(kCommand + ": --top-k 1 gives every token's adapter the weight 1 whatever the gate says (a softmax "
                                "over one logit), so the gates would learn nothing",
                     "use --top-k 2 or more");
  std::vector<std::string> names;
  if (parser.is_set("names")) {
    names = parser.list_value("names");
    if (int64_t(names.size()) != count)
      throw UsageError(str_cat(kCommand, ": --names gives ", names.size(), " names for ", count, " adapters"),
                       "give one name per --adapters folder, in the same order");
  } else {
    for (const std::string& folder : folders) names.push_back(default_adapter_name(folder));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    if (!valid_adapter_name(names[i]))
      throw UsageError(str_cat(kCommand, ": adapter name '", names[i], "' (of ", folders[i],
                               ") is not a plain folder name (letters, digits, '_', '-', '.')"),
                       "name the adapters with --names a,b,...");
    for (size_t j = 0; j < i; ++j)
      if (names[i] == names[j])
        throw UsageError(str_cat(kCommand, ": two adapters are named '", names[i], "' (", folders[j], " and ", folders[i], ")"),
                         "name them with --names a,b,...");
  }

  std::error_code error;
  LAMINA_CHECK(fs::exists(model_path, error), kCommand, ": --model ", model_path, " not found");
  // Each adapter folder and its config, before the model is loaded: all of one base.
  std::string base_seen, base_seen_folder;
  for (const std::string& folder : folders) {
    LAMINA_CHECK(fs::is_directory(folder, error), kCommand, ": --adapters ", folder,
                 " is not a folder (a PEFT adapter is a folder holding adapter_config.json and adapter_model.safetensors)");
    const nn::LoraConfig config = peft::read_adapter_config(folder);
    LAMINA_CHECK(!config.options.use_dora, kCommand, ": ", folder, " is a DoRA adapter; only plain LoRA adapters are routed");
    if (config.base_model_name_or_path.empty()) continue;
    if (base_seen.empty()) {
      base_seen = config.base_model_name_or_path;
      base_seen_folder = folder;
    }
    LAMINA_CHECK(config.base_model_name_or_path == base_seen, kCommand, ": the adapters were trained on different bases: ",
                 base_seen_folder, " on ", base_seen, ", ", folder, " on ", config.base_model_name_or_path);
  }
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), kCommand, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), kCommand, ": ", out, " exists and is not a folder");
    LAMINA_CHECK(!fs::equivalent(out, model_path, error), kCommand, ": --out must differ from --model");
    for (const std::string& folder : folders)
      LAMINA_CHECK(!fs::equivalent(out, folder, error) && fs::relative(folder, out, error).string().rfind("..", 0) == 0,
                   kCommand, ": --adapters ", folder, " lies inside --out ", out, ", which is replaced");
  }

  train::TrainOptions options;
  options.steps = parser.int_value("steps", 100, 0, INT64_MAX);
  options.batch_size = parser.int_value("batch-size", 8, 1, INT64_MAX);
  options.micro_batch_size = parser.int_value("micro-batch-size", 0, 0, INT64_MAX);
  options.seq_len = parser.int_value("seq-len", 256, 2, INT64_MAX);
  options.lr = parser.double_value("lr", 1e-3, 0, 1e3);
  options.warmup_steps = parser.int_value("warmup-steps", 0, 0, INT64_MAX);
  options.schedule = parser.value("schedule").value_or("cosine");
  options.weight_decay = parser.double_value("weight-decay", 0, 0, 1e3);
  options.seed = parser.unsigned_value("seed", 0);
  options.pack = !parser.is_set("no-pack");
  options.progress = !parser.is_set("quiet");
  options.precision = "f32";       // the gates and adapters as loaded; the base in f32
  options.trainable = "lora_router";  // the gates alone
  options.validate();

  const std::vector<train::Example> examples = read_examples(parser, model_path, options);
  std::fprintf(stderr, "loading %s\n", model_path.c_str());
  const std::shared_ptr<llama::LlamaForCausalLM> model = load_start_model(model_path, options);
  for (size_t i = 0; i < folders.size(); ++i) {
    const nn::LoraConfig config = peft::load_adapter(folders[i], *model, names[i]);
    std::fprintf(stderr, "adapter %s = %s: rank %lld\n", names[i].c_str(), folders[i].c_str(),
                 (long long)config.options.rank);
  }
  const std::shared_ptr<nn::RoutedLora> router = nn::add_lora_router(*model, names, top_k, options.seed);
  const std::vector<nn::NamedTensor> gates = nn::router_parameters(*model);
  int64_t gate_parameters = 0;
  for (const auto& [name, gate] : gates) gate_parameters += gate.numel();
  std::fprintf(stderr, "router: %zu gates (one per adapted projection), %lld parameters, top-%lld of %lld adapters\n",
               gates.size(), (long long)gate_parameters, (long long)top_k, (long long)count);

  StagedFolder folder(out);
  std::ofstream metrics(folder.path() / "metrics.jsonl");
  LAMINA_CHECK(metrics.good(), kCommand, ": cannot write ", (folder.path() / "metrics.jsonl").string());
  std::vector<train::Example> training = examples;
  train::Trainer trainer(model, options, std::move(training));
  trainer.on_metrics = [&](const json::Value& line) {
    metrics << line.dump() << "\n";
    metrics.flush();
  };
  trainer.run();
  metrics.close();
  LAMINA_CHECK(metrics.good(), kCommand, ": writing ", (folder.path() / "metrics.jsonl").string(), " failed");

  const std::vector<double> routing = measure_routing(*model, *router, examples);
  for (size_t i = 0; i < folders.size(); ++i) {
    const fs::path destination = folder.path() / "adapters" / names[i];
    fs::create_directories(destination);
    for (const char* file : {"adapter_config.json", "adapter_model.safetensors"})
      fs::copy_file(fs::path(folders[i]) / file, destination / file);
  }
  safetensors::save((folder.path() / "router.safetensors").string(), gates);
  json::Value config = json::Object{};
  json::Array adapter_names;
  for (const std::string& name : names) adapter_names.push_back(name);
  config.set("router", "meteora");
  config.set("adapters", json::Value(std::move(adapter_names)));
  config.set("top_k", top_k);
  config.set("gates", "per adapted projection: <module>.lora_router.weight [num_adapters, in_features], no bias");
  config.set("base_model_name_or_path", fs::absolute(model_path).lexically_normal().string());
  config.set("steps", trainer.step());
  if (!routing.empty()) {
    json::Value mean = json::Object{};
    for (size_t i = 0; i < names.size(); ++i) mean.set(names[i], routing[i]);
    config.set("mean_routing_weight", std::move(mean));
  }
  io::write_file_atomically((folder.path() / "router_config.json").string(), config.dump(2) + "\n");
  folder.commit();

  std::string summary;
  for (size_t i = 0; i < routing.size(); ++i) summary += str_cat(i ? ", " : "", names[i], " ", routing[i]);
  std::fprintf(stderr, "routing on the data (mean weight per token and projection): %s\n", summary.c_str());
  std::printf("trained the router %lld steps; wrote %s (peak RSS %.1f MiB)\n", (long long)trainer.step(), out.c_str(),
              double(train::peak_rss_bytes()) / (1024.0 * 1024.0));
  return 0;
}

}  // namespace lamina::cli
