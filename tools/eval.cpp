// `lamina eval ppl` and `lamina score`: numbers about how well a model predicts text, printed so
// that they can be checked against other implementations (transformers, llama.cpp).
//
// Perplexity follows the sliding-window method of Hugging Face's perplexity guide: windows of
// --seq-len tokens start every --stride tokens, and each window scores only the tokens that no
// earlier window scored, so every token is predicted once, from up to seq-len - stride tokens
// of context before its window's new part. Log-probabilities are taken in f64 from the model's
// logits, and the mean is over tokens (not over windows).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "autograd/autograd.h"
#include "models/llama/model.h"
#include "models/llama/sparse_kv_cache.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/attention_plan_option.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "train/data.h"

namespace lamina::cli {
namespace {

std::shared_ptr<llama::LlamaForCausalLM> load_eval_model(const FlagParser& parser, const std::string& path) {
  return load_model_on(path, Device::parse(parser.value("device").value_or("cpu")), gguf_weights_choice(parser));
}

// JSON has no NaN or infinity: such a value is written as null.
json::Value number_or_null(double value) { return std::isfinite(value) ? json::Value(value) : json::Value(nullptr); }

void check_ids_in_vocabulary(const std::vector<int32_t>& ids, const llama::LlamaConfig& config, const std::string& source) {
  for (int32_t id : ids)
    if (id < 0 || id >= config.vocab_size)
      throw Error(str_cat(source, " has token id ", id, ", outside the model's vocabulary of ", config.vocab_size,
                          " tokens (ids 0 to ", config.vocab_size - 1, ")"));
}

// log p(ids[t] | ids[0..t]) for t in [first_target, ids.size()), each the f32 logit of the
// target minus the row's logsumexp, in f64. The window goes through the model in chunks of
// `chunk` tokens over a KV cache (a dense one, or the per-head rings of the model's sparse plan),
// so that memory holds one chunk's activations and logits, not the window's: an 8K-32K window
// fits where its [T, vocabulary] logits would not. One chunk when the window fits in it.
std::vector<double> target_log_probs(const llama::LlamaForCausalLM& model, const std::vector<int32_t>& ids,
                                     int64_t first_target, int64_t chunk) {
  const int64_t length = int64_t(ids.size());
  LAMINA_CHECK(first_target >= 1 && first_target < length, "target_log_probs: no target in [", first_target, ", ", length, ")");
  autograd::NoGradGuard no_grad;
  Tensor input = Tensor::from_vector(std::vector<int64_t>(ids.begin(), ids.end()), {1, length});
  if (!model.device().is_cpu()) input = input.to(model.device());
  std::optional<llama::KvCache> cache;
  std::optional<llama::SparseKvCache> rings;
  llama::ForwardOptions options;
  if (length > chunk) {
    if (model.model->sparse_attention.dense()) {
      cache.emplace(model.config(), 1, length, model.dtype(), std::vector<int64_t>{}, model.device());
      options.cache = &*cache;
    } else {
      rings.emplace(model.config(), model.model->sparse_attention, 1, length, model.dtype(), model.device());
      options.sparse_cache = &*rings;
    }
  }
  std::vector<double> log_probs;
  log_probs.reserve(size_t(length - first_target));
  for (int64_t begin = 0; begin < length - 1; begin += chunk) {
    const int64_t end = std::min(length, begin + chunk);
    const Tensor logits = model.forward(input.slice(1, begin, end), options);  // [1, end - begin, V]
    // Position t - 1 predicts token t: only the rows of this chunk's targets come back to the host.
    const int64_t first_row = std::max(begin, first_target - 1), last_row = std::min(end, length - 1);
    if (first_row >= last_row) continue;
    const int64_t vocab = logits.shape()[2];
    const std::vector<float> rows = logits.select(0, 0).slice(0, first_row - begin, last_row - begin).to_vector<float>();
    for (int64_t t = first_row + 1; t <= last_row; ++t) {
      const float* row = rows.data() + (t - 1 - first_row) * vocab;
      double largest = -INFINITY;
      for (int64_t v = 0; v < vocab; ++v) largest = std::max(largest, double(row[v]));
      double sum = 0;
      for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double(row[v]) - largest);
      log_probs.push_back(double(row[ids[size_t(t)]]) - largest - std::log(sum));
    }
  }
  return log_probs;
}

// The documents of --data: a .jsonl/.ndjson file has one {"text": ...} record per line (read
// with the training data's reader, so a malformed line is an error naming file:line); any
// other file is one plain-text document. Each starts with BOS when the tokenizer adds one
// (Tokenizer::adds_bos), as `lamina generate` encodes a prompt; no EOS is added (it would be a token the text lacks).
std::vector<std::vector<int32_t>> read_documents(const std::string& path, const tokenizer::Tokenizer& tokenizer) {
  const std::string extension = std::filesystem::path(path).extension().string();
  const bool add_bos = tokenizer.adds_bos();
  std::vector<std::vector<int32_t>> documents;
  if (extension == ".jsonl" || extension == ".ndjson") {
    train::JsonlOptions options;
    options.format = train::DataFormat::text;
    options.add_bos = add_bos;
    options.add_eos = false;
    for (train::Example& example : train::read_jsonl(path, tokenizer, options)) documents.push_back(std::move(example.ids));
    return documents;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("lamina eval ppl: cannot open --data " + path);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw Error("lamina eval ppl: cannot read --data " + path);
  if (text.str().find_first_not_of(" \t\r\n") == std::string::npos)
    throw Error("lamina eval ppl: --data " + path + " holds no text to score (it is empty or only whitespace)");
  documents.push_back(tokenizer.encode(text.str(), {.add_bos = add_bos}));
  return documents;
}

// One window of a document: its tokens [begin, end) go through the model, and the targets
// [first_target, end) are scored.
struct Window {
  int64_t begin, end, first_target;
};

// The windows of a document of `length` tokens, as HF's guide makes them: starts 0, stride,
// 2 stride, ... until a window reaches the end; each scores the tokens after the previous
// window's end. A token at a window's first position has no context in it and is not scored
// (with stride = seq-len, the first token of every window after the first).
std::vector<Window> document_windows(int64_t length, int64_t seq_len, int64_t stride) {
  std::vector<Window> windows;
  int64_t previous_end = 0;
  for (int64_t begin = 0; begin < length; begin += stride) {
    const int64_t end = std::min(begin + seq_len, length);
    const int64_t first_target = std::max(previous_end, begin + 1);
    if (first_target < end) windows.push_back({begin, end, first_target});
    previous_end = end;
    if (end == length) break;
  }
  return windows;
}

int run_eval_ppl(const Arguments& args) {
  const std::string command = "lamina eval ppl";
  FlagParser parser(command,
                    "Perplexity of a model on text: exp of the mean negative log-likelihood per token, over "
                    "sliding windows of --seq-len tokens that start every --stride tokens (Hugging Face's "
                    "perplexity guide). Each window scores only the tokens no earlier window scored; a window's "
                    "first token has no context and is not scored. Every document starts with BOS when the "
                    "tokenizer adds one (Llama-3 does; SmolLM2's GGUF says not to). Prints perplexity, mean NLL, tokens scored and windows, then one JSON "
                    "line {\"eval\":\"ppl\",...}; progress goes to stderr.");
  parser.add_option("model", "PATH", "a model folder (config.json + safetensors) or a .gguf file");
  parser.add_option("data", "FILE",
                    "the text: a .jsonl/.ndjson file of {\"text\": ...} lines (each a document) or a plain-text file "
                    "(one document)");
  parser.add_option("tokenizer", "PATH",
                    "tokenizer.json (default: the model folder's, or the GGUF file's own)");
  parser.add_option("seq-len", "N", "tokens per window", "min(model context, 1024)");
  parser.add_option("stride", "S", "tokens between window starts, 1 to seq-len", "seq-len / 2");
  parser.add_option("max-tokens", "N", "read at most N tokens of the data (BOS included), in file order", "all");
  parser.add_option("chunk", "N",
                    "tokens per forward call: a longer window goes through a KV cache chunk by chunk, so memory "
                    "holds one chunk's logits (long contexts)",
                    "1024");
  add_attention_plan_option(parser, "the window length (--seq-len)");
  parser.add_option("device", "DEVICE", "where the model runs: cpu, cuda or cuda:N", "cpu");
  add_dequantize_option(parser);
  if (!parser.parse(args)) return 0;

  const std::string model_path = parser.required("model");
  if (!parser.is_set("data")) throw UsageError(command + ": --data is required", "run '" + command + " --help'");
  const std::string data_path = *parser.value("data");
  // Flags are checked before anything large is loaded.
  const int64_t requested_seq_len = parser.int_value("seq-len", 0, 2, int64_t(1) << 30);
  const int64_t requested_stride = parser.int_value("stride", 0, 1, int64_t(1) << 30);
  const int64_t max_tokens = parser.int_value("max-tokens", 0, 2, int64_t(1) << 50);
  const int64_t chunk = parser.int_value("chunk", 1024, 1, int64_t(1) << 30);
  if (parser.is_set("seq-len") && parser.is_set("stride") && requested_stride > requested_seq_len)
    throw UsageError(str_cat(command, ": --stride ", requested_stride, " is more than --seq-len ", requested_seq_len,
                             " (tokens between windows would never be scored)"),
                     "pass a stride from 1 to the window length");

  const tokenizer::Tokenizer tokenizer = load_model_tokenizer(model_path, parser.value("tokenizer"));
  std::vector<std::vector<int32_t>> documents = read_documents(data_path, tokenizer);
  if (max_tokens > 0) {
    int64_t left = max_tokens;
    for (auto& document : documents) {
      document.resize(size_t(std::min<int64_t>(left, int64_t(document.size()))));
      left -= int64_t(document.size());
    }
  }
  std::erase_if(documents, [](const std::vector<int32_t>& document) { return document.empty(); });
  int64_t tokens_read = 0;
  for (const auto& document : documents) tokens_read += int64_t(document.size());
  if (tokens_read == 0) throw Error(command + ": --data " + data_path + " holds no text to score");

  const auto model = load_eval_model(parser, model_path);
  const int64_t context_length = model->config().max_position_embeddings;
  const int64_t seq_len = parser.is_set("seq-len") ? requested_seq_len : std::min<int64_t>(context_length, 1024);
  if (seq_len > context_length)
    throw Error(str_cat(command, ": --seq-len ", seq_len, " is more than the model's context of ", context_length,
                        " tokens"));
  const int64_t stride = parser.is_set("stride") ? requested_stride : std::max<int64_t>(1, seq_len / 2);
  if (stride > seq_len)
    throw UsageError(str_cat(command, ": --stride ", stride, " is more than the window length ", seq_len),
                     "pass a stride from 1 to the window length");
  const std::optional<sparse::MoaPlan> plan = read_attention_plan(parser, model->config());
  std::optional<double> density;
  if (plan) density = apply_attention_plan(*model->model, model->config(), *plan, seq_len);
  for (size_t d = 0; d < documents.size(); ++d)
    check_ids_in_vocabulary(documents[d], model->config(),
                            str_cat(command, ": document ", d + 1, " of ", data_path, " (does the tokenizer fit the model?)"));

  std::vector<std::pair<size_t, Window>> windows;
  for (size_t d = 0; d < documents.size(); ++d)
    for (const Window& window : document_windows(int64_t(documents[d].size()), seq_len, stride)) windows.push_back({d, window});
  if (windows.empty())
    throw Error(str_cat(command, ": --data ", data_path, " has no token to score (", tokens_read,
                        " tokens read; a document needs at least 2)"));

  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  Clock::time_point last_report = start;
  double nll_sum = 0;
  int64_t scored = 0;
  for (size_t w = 0; w < windows.size(); ++w) {
    const auto& [document, window] = windows[w];
    const std::vector<int32_t> ids(documents[document].begin() + window.begin, documents[document].begin() + window.end);
    for (double log_prob : target_log_probs(*model, ids, window.first_target - window.begin, chunk)) nll_sum -= log_prob;
    scored += window.end - window.first_target;
    const Clock::time_point now = Clock::now();
    if (now - last_report >= std::chrono::seconds(2) && w + 1 < windows.size()) {
      last_report = now;
      std::fprintf(stderr, "eval ppl: window %zu of %zu, %lld tokens scored, perplexity so far %.4f\n", w + 1,
                   windows.size(), static_cast<long long>(scored), std::exp(nll_sum / double(scored)));
    }
  }
  const double mean_nll = nll_sum / double(scored);
  const double perplexity = std::exp(mean_nll);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("perplexity: %.6f\n", perplexity);
  std::printf("mean NLL: %.8f nats per token\n", mean_nll);
  std::printf("tokens scored: %lld (of %lld read, in %zu document%s)\n", static_cast<long long>(scored),
              static_cast<long long>(tokens_read), documents.size(), documents.size() == 1 ? "" : "s");
  std::printf("windows: %zu (seq-len %lld, stride %lld)\n", windows.size(), static_cast<long long>(seq_len),
              static_cast<long long>(stride));
  if (density) std::printf("attention plan: %s, density %.4f at %lld tokens\n", parser.value("attention-plan")->c_str(),
                           *density, static_cast<long long>(seq_len));
  json::Value line(json::Object{});
  line.set("eval", "ppl");
  line.set("model", model_path);
  line.set("data", data_path);
  line.set("perplexity", number_or_null(perplexity));
  line.set("mean_nll", number_or_null(mean_nll));
  line.set("tokens_scored", scored);
  line.set("tokens_read", tokens_read);
  line.set("documents", int64_t(documents.size()));
  line.set("windows", int64_t(windows.size()));
  line.set("seq_len", seq_len);
  line.set("stride", stride);
  if (density) {
    line.set("attention_plan", *parser.value("attention-plan"));
    line.set("attention_density", *density);
  }
  line.set("seconds", seconds);
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

std::vector<int32_t> parse_score_ids(const std::string& text) {
  const std::vector<int64_t> ids = parse_token_ids(text, "lamina score: --ids");
  if (ids.empty()) throw UsageError("lamina score: --ids is empty", "pass ids like \"1 450 4321\"");
  return std::vector<int32_t>(ids.begin(), ids.end());  // each fits: parse_token_ids checks
}

}  // namespace

int run_score(const Arguments& args) {
  const std::string command = "lamina score";
  FlagParser parser(command,
                    "Per-token log-probabilities of a text or of token ids under a model, as one JSON line: "
                    "{\"tokens\":[ids], \"logprobs\":[null, ...], \"sum\":..., \"mean\":...}. The first token has "
                    "no log-probability (null); sum and mean are over the others (mean is null for one token). "
                    "Text (--text, or standard input when neither --text nor --ids is given) is encoded with the "
                    "model's tokenizer, with BOS first when the tokenizer adds one. With --reward-model: the "
                    "reward of the text, {\"tokens\": N, \"reward\": r}, or with --data FILE.jsonl of "
                    "preference pairs one line per pair, {\"line\", \"chosen_reward\", \"rejected_reward\"}, "
                    "and the accuracy (chosen above rejected) on stderr.");
  parser.add_option("model", "PATH", "a model folder (config.json + safetensors) or a .gguf file");
  parser.add_option("reward-model", "DIR", "a reward model (HF LlamaForSequenceClassification folder) instead of --model");
  parser.add_option("adapter", "DIR",
                    "with --reward-model: a PEFT adapter trained by `train reward --lora` (its score head saved "
                    "whole); --reward-model may then be the causal LM it started from");
  parser.add_option("data", "FILE.jsonl",
                    "with --reward-model: preference pairs in TRL's format ({\"prompt\", \"chosen\", \"rejected\"}, "
                    "text or chats) to score");
  parser.add_option("text", "TEXT", "the text to score");
  parser.add_option("ids", "\"1 2 3\"", "the token ids to score, as they are (no BOS added)");
  parser.add_option("tokenizer", "PATH",
                    "tokenizer.json for text (default: the model folder's, or the GGUF file's own)");
  parser.add_option("device", "DEVICE", "where the model runs: cpu, cuda or cuda:N", "cpu");
  add_dequantize_option(parser);
  if (!parser.parse(args)) return 0;
  if (parser.is_set("reward-model")) {
    for (const char* flag : {"model", "ids"})
      if (parser.is_set(flag))
        throw UsageError(str_cat(command, ": --", flag, " does not go with --reward-model"), "run '" + command + " --help'");
    return run_reward_score(parser);
  }
  for (const char* flag : {"data", "adapter"})
    if (parser.is_set(flag))
      throw UsageError(str_cat(command, ": --", flag, " goes with --reward-model"), "run '" + command + " --help'");
  const std::string model_path = parser.required("model");
  if (parser.is_set("text") && parser.is_set("ids"))
    throw UsageError(command + ": give at most one of --text and --ids", "run '" + command + " --help'");

  std::vector<int32_t> ids;
  std::string source = "--ids";
  if (parser.is_set("ids")) {
    ids = parse_score_ids(*parser.value("ids"));
  } else {
    const tokenizer::Tokenizer tokenizer = load_model_tokenizer(model_path, parser.value("tokenizer"));
    const std::string text = parser.is_set("text") ? *parser.value("text") : read_standard_input();
    ids = tokenizer.encode(text, {.add_bos = tokenizer.adds_bos()});
    source = "the encoded text (does the tokenizer fit the model?)";
    if (ids.empty()) throw Error(command + ": the text encodes to no tokens");
  }
  const auto model = load_eval_model(parser, model_path);
  check_ids_in_vocabulary(ids, model->config(), command + ": " + source);
  const int64_t context_length = model->config().max_position_embeddings;
  if (int64_t(ids.size()) > context_length)
    throw Error(str_cat(command, ": ", ids.size(), " tokens are more than the model's context of ", context_length,
                        " tokens"));

  const std::vector<double> log_probs = ids.size() > 1 ? target_log_probs(*model, ids, 1, int64_t(ids.size())) : std::vector<double>{};
  json::Array tokens, values{json::Value(nullptr)};
  for (int32_t id : ids) tokens.push_back(int64_t(id));
  double sum = 0;
  for (double log_prob : log_probs) {
    values.push_back(number_or_null(log_prob));
    sum += log_prob;
  }
  json::Value line(json::Object{});
  line.set("tokens", std::move(tokens));
  line.set("logprobs", std::move(values));
  line.set("sum", number_or_null(sum));
  line.set("mean", log_probs.empty() ? json::Value(nullptr) : number_or_null(sum / double(log_probs.size())));
  std::printf("%s\n", line.dump().c_str());
  return 0;
}

// `lamina eval ACTION`: the evaluations, each its own action (more can follow ppl).
int run_eval(const Arguments& args) {
  return run_command_action(
      "lamina eval", "Evaluates a model.",
      {{"ppl", "perplexity of a model on a text or JSONL file (sliding windows with a stride)", run_eval_ppl}}, args);
}

}  // namespace lamina::cli
