// `lamina sparse profile|plan|uniform`: MoA (sparse-attention.md §1). `profile` measures every
// head's attention influence on calibration data (models/sparse/influence.h), `plan` searches the
// per-head elastic rules under a density budget (models/sparse/plan_search.h) and writes a plan
// file, `uniform` writes StreamingLLM's sink + window plan of a density for comparison. The plan
// files are what `--attention-plan` of generate, chat, eval and train reads (moa_plan.h).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>
#include <sstream>

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "models/io/gguf_llama.h"
#include "models/llama/model.h"
#include "models/sparse/influence.h"
#include "models/sparse/moa_plan.h"
#include "models/sparse/plan_search.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "train/data.h"

namespace lamina::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// "1024,2048" -> {1024, 2048}: positive, distinct, at most 2^20 each.
std::vector<int64_t> parse_lengths(const std::string& text, const std::string& what) {
  std::vector<int64_t> lengths;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || value < 1 || value > (int64_t(1) << 20))
      throw UsageError(what + ": '" + item + "' is not a length from 1 to 1048576",
                       "pass lengths separated by commas, like 1024,2048");
    if (std::find(lengths.begin(), lengths.end(), value) != lengths.end())
      throw UsageError(str_cat(what, ": length ", value, " is given twice"), "pass each length once");
    lengths.push_back(value);
  }
  if (lengths.empty()) throw UsageError(what + " is empty", "pass lengths separated by commas, like 1024,2048");
  return lengths;
}

json::Value lengths_json(const std::vector<int64_t>& lengths) {
  json::Array array;
  for (int64_t length : lengths) array.push_back(length);
  return array;
}

// The config of a model folder or GGUF file, without reading its weights.
llama::LlamaConfig model_config(const std::string& path) {
  if (is_gguf_file(path)) return gguf::llama_config_from_gguf(gguf::File::open(path));
  return llama::LlamaConfig::load((std::filesystem::path(path) / "config.json").string());
}

void check_output_path(const std::string& command, const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent))
    throw Error(str_cat(command, ": --out ", path, ": the folder ", parent.string(), " does not exist"));
  if (std::filesystem::is_directory(path)) throw Error(str_cat(command, ": --out ", path, " is a folder"));
}

sparse::DensityMeasure measure_flag(const FlagParser& parser, const std::string& command) {
  const std::string name = parser.value("measure").value_or("pairs");
  if (name != "pairs" && name != "kv-cache")
    throw UsageError(command + ": --measure '" + name + "' is not pairs or kv-cache", "run '" + command + " --help'");
  return sparse::density_measure_from_name(name, command);
}

double density_flag(const FlagParser& parser, const std::string& command) {
  const double density = parser.number_value("density", NAN);
  if (!parser.is_set("density")) throw UsageError(command + ": --density is required", "run '" + command + " --help'");
  if (!(density > 0 && density <= 1))
    throw UsageError(str_cat(command, ": --density ", *parser.value("density"), " is not in (0, 1]"),
                     "pass the fraction of attention to keep, like 0.5");
  return density;
}

// ---- profile

int run_sparse_profile(const Arguments& args) {
  const std::string command = "lamina sparse profile";
  FlagParser parser(command,
                    "MoA profiling: runs forward and backward over calibration items through a materialising "
                    "attention and records each head's attention influence E = -dS / (1 - A) (the first-order "
                    "loss change of masking an entry), the loss being the cross-entropy on the tokens the data "
                    "learns (completions, assistant replies; every token of plain text). Influence is averaged "
                    "over items and over 64 x 64 blocks, per length level: each item is cut to the level's first "
                    "N tokens (an item shorter than N counts as padded). Writes a profile JSON for "
                    "'lamina sparse plan'; progress goes to stderr. CPU only; memory grows with N^2 per head.");
  parser.add_option("model", "PATH", "a model folder (config.json + safetensors) or a .gguf file");
  parser.add_option("data", "FILE.jsonl",
                    "calibration data, JSONL as `lamina train` reads it: {\"text\"}, {\"prompt\", \"completion\"} "
                    "or chats {\"messages\"}; MoA uses long inputs with answers the dense model wrote itself");
  parser.add_option("lengths", "N,N,...", "the length levels to profile, in tokens", "1024");
  parser.add_option("items", "N", "items per length level: the first N of --data that have a target token there",
                    "50");
  parser.add_option("format", "NAME", "the data layout: auto, text, prompt-completion, chat or sharegpt", "auto");
  parser.add_option("tokenizer", "PATH", "tokenizer.json (default: the model folder's, or the GGUF file's own)");
  parser.add_switch("signed",
                    "sum the signed influence E instead of its magnitude |E| (MoA's released profiler takes |E|)");
  parser.add_option("out", "FILE", "where to write the profile (JSON)", "profile.json");
  if (!parser.parse(args)) return 0;

  const std::string model_path = parser.required("model");
  const std::string data_path = parser.required("data");
  const std::vector<int64_t> lengths = parse_lengths(parser.value("lengths").value_or("1024"), command + ": --lengths");
  const int64_t items = parser.int_value("items", 50, 1, int64_t(1) << 30);
  const std::string out_path = parser.value("out").value_or("profile.json");
  check_output_path(command, out_path);
  const train::DataFormat format = train::data_format_from_name(parser.value("format").value_or("auto"));

  const llama::LlamaConfig config = model_config(model_path);
  for (int64_t length : lengths)
    if (length > config.max_position_embeddings)
      throw Error(str_cat(command, ": --lengths ", length, " is more than the model's context of ",
                          config.max_position_embeddings, " tokens"));

  const tokenizer::Tokenizer tokenizer = load_model_tokenizer(model_path, parser.value("tokenizer"));
  train::JsonlOptions jsonl;
  jsonl.format = format;
  jsonl.add_bos = tokenizer.adds_bos();
  try {
    jsonl.chat = tokenizer::detect_chat_options(parser.value("tokenizer").value_or(model_path), tokenizer);
  } catch (const Error&) {
    // No chat format known for this tokenizer: fine for text and prompt-completion data; a chat
    // line then fails to render and names itself.
  }
  const std::vector<train::Example> examples = train::read_jsonl(data_path, tokenizer, jsonl);
  for (size_t index = 0; index < examples.size(); ++index)
    for (int32_t id : examples[index].ids)
      if (id < 0 || id >= config.vocab_size)
        throw Error(str_cat(command, ": item ", index + 1, " of ", data_path, " has token id ", id,
                            ", outside the model's vocabulary of ", config.vocab_size, " (does the tokenizer fit?)"));

  const bool absolute = !parser.is_set("signed");
  const auto model = load_model_on(model_path, Device::cpu(), GgufWeights::dequantized);
  // Gradients must reach every layer's attention, but no weight needs its own: only the
  // embedding (upstream of every layer) asks for one, so the graph exists and the projections'
  // weight gradients are never computed.
  for (const auto& [name, parameter] : model->named_parameters())
    parameter.set_requires_grad(name == "model.embed_tokens.weight");

  sparse::InfluenceProfile profile;
  profile.layers = config.num_hidden_layers;
  profile.heads = config.num_attention_heads;
  profile.block = 64;
  profile.extra = {{"model", json::Value(model_path)},
                   {"data", json::Value(data_path)},
                   {"loss", json::Value("mean cross-entropy of an item's target tokens")},
                   {"influence", json::Value(absolute ? "absolute" : "signed")}};
  std::vector<int64_t> sorted = lengths;
  std::sort(sorted.begin(), sorted.end());
  const Clock::time_point start = Clock::now();
  for (int64_t length : sorted) {
    sparse::InfluenceLevel level(length, profile.layers, profile.heads, profile.block);
    sparse::InfluenceProbe probe(level, absolute);
    int64_t used = 0, tokens = 0;
    for (size_t index = 0; index < examples.size() && used < items; ++index) {
      const train::Example& example = examples[index];
      const int64_t count = std::min<int64_t>(length, int64_t(example.ids.size()));
      // Position t predicts ids[t + 1] where the data learns it.
      std::vector<int64_t> ids(example.ids.begin(), example.ids.begin() + count), targets(size_t(count), -100);
      int64_t target_count = 0;
      for (int64_t t = 0; t + 1 < count; ++t)
        if (example.loss_mask[size_t(t + 1)]) {
          targets[size_t(t)] = example.ids[size_t(t + 1)];
          ++target_count;
        }
      if (target_count == 0) continue;  // nothing learned within the first `length` tokens
      const Clock::time_point item_start = Clock::now();
      llama::ForwardOptions options;
      options.probe = &probe;
      const Tensor logits = model->forward(Tensor::from_vector(ids, {1, count}), options);
      const Tensor loss = cross_entropy(logits.view({count, logits.size(2)}), Tensor::from_vector(targets, {count}));
      loss.backward();
      for (const Tensor& parameter : model->parameters()) parameter.set_grad(Tensor());
      level.finish_items(1);
      ++used;
      tokens += count;
      std::fprintf(stderr, "sparse profile: length %lld, item %lld of %lld (line %zu, %lld tokens, loss %.4f), %.1f s\n",
                   static_cast<long long>(length), static_cast<long long>(used), static_cast<long long>(items),
                   index + 1, static_cast<long long>(count), loss.item<double>(), seconds_since(item_start));
    }
    if (used == 0)
      throw Error(str_cat(command, ": no item of ", data_path, " has a target token within its first ", length,
                          " tokens"));
    if (used < items)
      std::fprintf(stderr, "sparse profile: length %lld: only %lld of the %lld items asked for have a target token\n",
                   static_cast<long long>(length), static_cast<long long>(used), static_cast<long long>(items));
    profile.levels.push_back(std::move(level));
  }
  profile.write(out_path);
  json::Value line(json::Object{});
  line.set("sparse", "profile");
  line.set("out", out_path);
  line.set("layers", profile.layers);
  line.set("heads", profile.heads);
  line.set("lengths", lengths_json(sorted));
  json::Array item_counts;
  for (const sparse::InfluenceLevel& level : profile.levels) item_counts.push_back(level.items());
  line.set("items", std::move(item_counts));
  line.set("seconds", seconds_since(start));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

// ---- plan

// The density measure and charge of `sparse plan`, each defaulting from the other: the kv-group
// charge is a budget on the KV cache, so it goes with the kv-cache measure, and a kv-cache budget
// is charged per KV group unless asked otherwise (a GQA ring holds its widest query head's keys:
// charging each query head its own keys would promise memory the cache does not save).
struct PlanBudget {
  sparse::DensityMeasure measure = sparse::DensityMeasure::attention_pairs;
  sparse::DensityCharge charge = sparse::DensityCharge::query_head;
  std::string reason;  // why this charge, for the plan file's reader
};

PlanBudget plan_budget(const FlagParser& parser, const std::string& command) {
  PlanBudget budget;
  const std::optional<std::string> charge = parser.value("charge");
  if (charge && *charge != "query-head" && *charge != "kv-group")
    throw UsageError(command + ": --charge '" + *charge + "' is not query-head or kv-group",
                     "run '" + command + " --help'");
  if (parser.is_set("measure")) budget.measure = measure_flag(parser, command);
  else if (charge == "kv-group") budget.measure = sparse::DensityMeasure::kv_cache;
  if (charge) budget.charge = sparse::density_charge_from_name(*charge, command);
  else if (budget.measure == sparse::DensityMeasure::kv_cache) budget.charge = sparse::DensityCharge::kv_group;
  if (budget.charge == sparse::DensityCharge::kv_group && budget.measure != sparse::DensityMeasure::kv_cache)
    throw UsageError(command + ": --charge kv-group budgets the KV cache; it does not go with --measure pairs",
                     "drop --measure or pass --measure kv-cache");
  budget.reason = budget.charge == sparse::DensityCharge::kv_group
                      ? "kv-group: each KV head's ring is as wide as the widest of its query heads, so the budget "
                        "is the KV cache the plan really allocates (the default with the kv-cache measure)"
                      : "query-head: each query head pays its own density, the attention work it computes (the "
                        "default with the pairs measure; under GQA the KV cache can be larger, see "
                        "kv_cache_fraction)";
  return budget;
}

// KV heads per layer of the profiled model: --kv-heads, else the config of the model the profile
// was made from (its "model" member), else 0: unknown.
int64_t planned_kv_heads(const FlagParser& parser, const sparse::InfluenceProfile& profile,
                         const std::string& command) {
  if (parser.is_set("kv-heads")) {
    const int64_t kv_heads = parser.int_value("kv-heads", 0, 1, profile.heads);
    if (profile.heads % kv_heads != 0)
      throw UsageError(str_cat(command, ": --kv-heads ", kv_heads, " does not divide the profile's ", profile.heads,
                               " query heads"),
                       "pass the model's num_key_value_heads");
    return kv_heads;
  }
  for (const auto& [key, value] : profile.extra) {
    if (key != "model" || !value.is_string()) continue;
    const std::string& model_path = value.as_string();
    llama::LlamaConfig config;
    try {
      config = model_config(model_path);
    } catch (const Error&) {
      return 0;  // moved or gone: the caller says what to pass
    }
    if (config.num_hidden_layers != profile.layers || config.num_attention_heads != profile.heads)
      throw Error(str_cat(command, ": the profile's model ", model_path, " now has ", config.num_hidden_layers,
                          " layers of ", config.num_attention_heads, " query heads, the profile ", profile.layers,
                          " of ", profile.heads, " (pass --kv-heads)"));
    return config.num_key_value_heads;
  }
  return 0;
}

int run_sparse_plan(const Arguments& args) {
  const std::string command = "lamina sparse plan";
  FlagParser parser(command,
                    "MoA plan search: gives every head an elastic rule S(N) = alpha + beta N (--sink keys and a "
                    "window of S - sink) from a grid of 6 alphas x 9 betas, minimising the loss increase the profile "
                    "predicts, with the average density at most --density at every length and at most two "
                    "distinct rules per layer (an exact knapsack over layers at the longest length; the other "
                    "lengths' budgets are enforced by a multiplier). Writes the plan JSON; prints per length the "
                    "density (averaged over query heads), the KV-cache fraction (the ring-buffer cache's size "
                    "over a dense cache's: under GQA a KV head's ring holds its widest query head) and predicted "
                    "loss increase of the plan and of the uniform sink + window plan of the same density, then "
                    "one JSON line.");
  parser.add_option("profile", "FILE", "a profile written by 'lamina sparse profile'");
  parser.add_option("density", "D", "the budget: average density over every head, in (0, 1]");
  parser.add_option("lengths", "N,N,...", "the profiled lengths to plan for", "every level of the profile");
  parser.add_option("measure", "NAME",
                    "density as attention pairs (allowed / causal query-key pairs: prefill work) or kv-cache "
                    "(keys kept at the end / N: decode memory, MoA's definition)",
                    "pairs, or kv-cache with --charge kv-group");
  parser.add_option("charge", "NAME",
                    "what a head's rule costs against the budget: query-head (its own density: attention work is "
                    "done per query head) or kv-group (for the kv-cache measure: each KV head pays its ring, as "
                    "wide as its widest query head, for each of its query heads, so the budget is the memory "
                    "the cache allocates)",
                    "kv-group with --measure kv-cache (the budget then means real memory), else query-head");
  parser.add_option("kv-heads", "N", "KV heads per layer of the model (GQA groups)",
                    "the config of the model the profile names");
  parser.add_option("alpha-scale", "X",
                    "scales the alpha grid {-2048, 0, ..., 8192}, made for 2k-8k inputs, for other lengths",
                    "longest length / 8192");
  parser.add_option("sink", "N", "sink keys of every head", "64");
  parser.add_option("min-window", "N",
                    "leave out the grid's rules whose window is below N keys at some planned length (the first-order "
                    "influence underestimates what losing all local context costs)",
                    "0: the whole grid");
  parser.add_option("out", "FILE", "where to write the plan (JSON)");
  if (!parser.parse(args)) return 0;

  const std::string profile_path = parser.required("profile");
  const double density = density_flag(parser, command);
  const std::string out_path = parser.required("out");
  const PlanBudget budget = plan_budget(parser, command);
  const sparse::DensityMeasure measure = budget.measure;
  const int64_t sink = parser.int_value("sink", sparse::kMoaSink, 0, int64_t(1) << 20);
  check_output_path(command, out_path);
  const sparse::InfluenceProfile profile = sparse::InfluenceProfile::read(profile_path);
  const int64_t kv_heads = planned_kv_heads(parser, profile, command);
  if (kv_heads == 0 && budget.charge == sparse::DensityCharge::kv_group)
    throw UsageError(command + ": the kv-group charge" +
                         (parser.is_set("charge") ? "" : " (the default with --measure kv-cache)") +
                         " needs the model's KV heads, and the profile's model is not at hand",
                     "pass --kv-heads (the model's num_key_value_heads), or --charge query-head");
  if (kv_heads == 0)
    std::fprintf(stderr, "%s: the model's KV heads are unknown (the profile's model is not at hand): no KV-cache "
                         "fraction is reported; pass --kv-heads\n", command.c_str());
  std::vector<int64_t> lengths;
  if (parser.is_set("lengths")) {
    lengths = parse_lengths(*parser.value("lengths"), command + ": --lengths");
    for (int64_t length : lengths) profile.level(length);  // each must be profiled: throws naming those that are
  } else {
    for (const sparse::InfluenceLevel& level : profile.levels) lengths.push_back(level.length());
  }
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  const double alpha_scale = parser.double_value("alpha-scale", double(longest) / 8192.0, 1e-6, 1e6);

  sparse::SearchOptions options;
  options.density = density;
  options.measure = measure;
  options.charge = budget.charge;
  options.kv_heads = kv_heads;
  const Clock::time_point start = Clock::now();
  const int64_t min_window = parser.int_value("min-window", 0, 0, int64_t(1) << 20);
  std::vector<sparse::ElasticRule> candidates;
  for (const sparse::ElasticRule& rule : sparse::candidate_rules(alpha_scale, sink)) {
    bool wide_enough = true;
    for (int64_t length : lengths) wide_enough = wide_enough && rule.window(length) >= min_window;
    if (wide_enough) candidates.push_back(rule);
  }
  if (candidates.empty())
    throw Error(str_cat(command, ": --min-window ", min_window, " leaves no rule of the grid (the widest are dense)"));
  const sparse::SearchProblem problem = sparse::problem_from_profile(profile, lengths, candidates);
  const sparse::SearchResult result = sparse::search_plan(problem, options);

  json::Array uniform_losses, plan_losses, plan_densities, kv_fractions;
  std::printf("plan: %lld layers x %lld heads (%s KV heads), density budget %g (%s, charged per %s), alpha scale %g\n",
              static_cast<long long>(profile.layers), static_cast<long long>(profile.heads),
              kv_heads > 0 ? std::to_string(kv_heads).c_str() : "unknown", density,
              sparse::density_measure_name(measure), sparse::density_charge_name(budget.charge), alpha_scale);
  // "0.5123", or "unknown" without the KV heads.
  const auto kv_text = [&](const sparse::MoaPlan& plan, int64_t length) {
    if (kv_heads == 0) return std::string("unknown");
    char text[32];
    std::snprintf(text, sizeof text, "%.4f", plan.kv_cache_fraction(length, kv_heads));
    return std::string(text);
  };
  for (size_t n = 0; n < lengths.size(); ++n) {
    const sparse::MoaPlan uniform =
        sparse::uniform_plan(profile.layers, profile.heads, density, lengths[n], sink, measure);
    const double uniform_loss = sparse::plan_loss(profile, {lengths[n]}, uniform)[0];
    std::printf("length %lld: moa density %.4f, kv-cache fraction %s, predicted loss increase %.6g; uniform "
                "sink+window (window %lld) density %.4f, kv-cache fraction %s, predicted loss increase %.6g\n",
                static_cast<long long>(lengths[n]), result.density[n], kv_text(result.plan, lengths[n]).c_str(),
                result.loss[n], static_cast<long long>(uniform.rule(0, 0).window(lengths[n])),
                uniform.density(lengths[n], measure), kv_text(uniform, lengths[n]).c_str(), uniform_loss);
    uniform_losses.push_back(uniform_loss);
    plan_losses.push_back(result.loss[n]);
    plan_densities.push_back(result.density[n]);
    if (kv_heads > 0) kv_fractions.push_back(result.kv_fraction[n]);
  }
  json::Object extra{{"method", json::Value("moa")},
                     {"profile", json::Value(profile_path)},
                     {"min_window", json::Value(min_window)},
                     {"density", json::Value(density)},
                     {"measure", json::Value(sparse::density_measure_name(measure))},
                     {"charge", json::Value(sparse::density_charge_name(budget.charge))},
                     {"charge_reason", json::Value(budget.reason)},
                     {"kv_heads", kv_heads > 0 ? json::Value(kv_heads) : json::Value(nullptr)},
                     {"lengths", lengths_json(lengths)},
                     {"alpha_scale", json::Value(alpha_scale)},
                     {"plan_density", json::Value(plan_densities)},
                     {"kv_cache_fraction", kv_heads > 0 ? json::Value(kv_fractions) : json::Value(nullptr)},
                     {"predicted_loss_increase", json::Value(plan_losses)},
                     {"uniform_predicted_loss_increase", json::Value(uniform_losses)}};
  result.plan.write(out_path, extra);

  json::Value line(json::Object{});
  line.set("sparse", "plan");
  line.set("out", out_path);
  for (const auto& [key, value] : extra)
    if (key != "profile" && key != "charge_reason") line.set(key, value);
  line.set("seconds", seconds_since(start));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

// ---- uniform

int run_sparse_uniform(const Arguments& args) {
  const std::string command = "lamina sparse uniform";
  FlagParser parser(command,
                    "StreamingLLM's uniform plan: every head keeps the --sink first keys and the widest sliding "
                    "window whose density at --length is at most --density (the baseline a MoA plan is compared "
                    "with at the same density). Writes a plan JSON of the model's layers and heads; its windows "
                    "stay fixed at other lengths.");
  parser.add_option("model", "PATH", "a model folder or .gguf file (only its config is read)");
  parser.add_option("density", "D", "the budget, in (0, 1]");
  parser.add_option("length", "N", "the input length the density is measured at");
  parser.add_option("measure", "NAME", "pairs (allowed / causal query-key pairs) or kv-cache (keys kept / N)",
                    "pairs");
  parser.add_option("sink", "N", "sink keys of every head", "64");
  parser.add_option("out", "FILE", "where to write the plan (JSON)");
  if (!parser.parse(args)) return 0;

  const std::string model_path = parser.required("model");
  const double density = density_flag(parser, command);
  if (!parser.is_set("length")) throw UsageError(command + ": --length is required", "run '" + command + " --help'");
  const int64_t length = parser.int_value("length", 0, 1, int64_t(1) << 20);
  const std::string out_path = parser.required("out");
  const sparse::DensityMeasure measure = measure_flag(parser, command);
  const int64_t sink = parser.int_value("sink", sparse::kMoaSink, 0, int64_t(1) << 20);
  check_output_path(command, out_path);
  const llama::LlamaConfig config = model_config(model_path);
  const sparse::MoaPlan plan =
      sparse::uniform_plan(config.num_hidden_layers, config.num_attention_heads, density, length, sink, measure);
  const int64_t window = plan.rule(0, 0).window(length);
  json::Object extra{{"method", json::Value("uniform")},
                     {"density", json::Value(density)},
                     {"measure", json::Value(sparse::density_measure_name(measure))},
                     {"lengths", lengths_json({length})},
                     {"plan_density", json::Value(json::Array{json::Value(plan.density(length, measure))})},
                     {"kv_heads", json::Value(config.num_key_value_heads)},
                     {"kv_cache_fraction", json::Value(json::Array{json::Value(
                                               plan.kv_cache_fraction(length, config.num_key_value_heads))})}};
  plan.write(out_path, extra);
  json::Value line(json::Object{});
  line.set("sparse", "uniform");
  line.set("out", out_path);
  line.set("sink", sink);
  line.set("window", window == kAllKeys ? json::Value(nullptr) : json::Value(window));
  line.set("length", length);
  line.set("density", plan.density(length, measure));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

}  // namespace

int run_sparse(const Arguments& args) {
  return run_command_action(
      "lamina sparse", "MoA sparse attention plans.",
      {{"profile", "measure each attention head's influence on the loss (MoA profiling) into a profile JSON",
        run_sparse_profile},
       {"plan", "search per-head elastic sink + window rules under a density budget into a plan JSON", run_sparse_plan},
       {"uniform", "write the uniform StreamingLLM sink + window plan of a density (the baseline)", run_sparse_uniform}},
      args);
}

}  // namespace lamina::cli
