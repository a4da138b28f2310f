// `lamina eval ppl` and `lamina score` against numbers the test computes itself: a tiny random
// model is saved, the CLI evaluates it, and the test recomputes every log-probability from the
// model's logits in f64, choosing each token's window by its own rule (the first window that
// reaches past the token) rather than by the CLI's loop.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "autograd/autograd.h"
#include "model_presets.h"
#include "models/real_model.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "tools/attention_plan_file.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;

namespace {

constexpr int64_t kContext = 48;

// A random model over the byte-level tokenizer (saved beside it), weights spread wide enough
// that the log-probabilities differ clearly from token to token.
std::shared_ptr<llama::LlamaForCausalLM> save_model(const ScratchDir& dir) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.max_position_embeddings = kContext;
  config.initializer_range = 1.0;
  return save_byte_level_model(dir.path.string(), 11, config);
}

// log p(ids[t] | ids[begin..t]) from one forward pass over ids[begin, end), in f64.
double log_prob(const llama::LlamaForCausalLM& model, const std::vector<int32_t>& ids, int64_t begin, int64_t end, int64_t t) {
  autograd::NoGradGuard no_grad;
  const std::vector<int64_t> window(ids.begin() + begin, ids.begin() + end);
  const std::vector<double> logits =
      model.forward(Tensor::from_vector(window, {1, end - begin})).select(0, 0).select(0, t - begin - 1).to_vector<double>();
  double largest = logits[0];
  for (double value : logits) largest = std::max(largest, value);
  double sum = 0;
  for (double value : logits) sum += std::exp(value - largest);
  return logits[size_t(ids[size_t(t)])] - largest - std::log(sum);
}

struct Expected {
  double mean_nll = 0;
  int64_t scored = 0;
  int64_t windows = 0;
};

// Every token t >= 1 of each document belongs to the first window [k*stride, k*stride + seq_len)
// that reaches past it, and is scored there when it is not that window's first token.
Expected expected_perplexity(const llama::LlamaForCausalLM& model, const std::vector<std::vector<int32_t>>& documents,
                             int64_t seq_len, int64_t stride) {
  Expected expected;
  double sum = 0;
  for (const auto& ids : documents) {
    const int64_t length = int64_t(ids.size());
    std::set<int64_t> windows;
    for (int64_t t = 1; t < length; ++t) {
      int64_t k = 0;
      while (k * stride + seq_len <= t) ++k;
      const int64_t begin = k * stride;
      if (t == begin) continue;
      sum -= log_prob(model, ids, begin, std::min(begin + seq_len, length), t);
      ++expected.scored;
      windows.insert(k);
    }
    expected.windows += int64_t(windows.size());
  }
  expected.mean_nll = sum / double(expected.scored);
  return expected;
}

// The JSON line of the output that starts with `prefix`.
json::Value json_line(const std::string& output, const std::string& prefix) {
  const size_t start = output.find(prefix);
  REQUIRE_MESSAGE(start != std::string::npos, output);
  return json::parse(output.substr(start, output.find('\n', start) - start));
}

std::vector<int32_t> encode_with_bos(const std::string& text) {
  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer();
  REQUIRE(tokenizer.bos_id().has_value());
  return tokenizer.encode(text, {.add_bos = true});
}

const std::string kFirst = "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods.";
const std::string kSecond = "Perplexity is the exponential of the mean negative log-likelihood per token.";

}  // namespace

TEST_CASE("lamina eval ppl equals exp(mean NLL) computed from the model's logits, overlapping windows or not") {
  ScratchDir dir("cli-eval-ppl");
  const auto model = save_model(dir);
  std::ofstream(dir / "text.txt") << kFirst;
  const std::vector<std::vector<int32_t>> one_document = {encode_with_bos(kFirst)};
  REQUIRE(one_document[0].size() > 70);

  for (const auto& [seq_len, stride] : std::vector<std::pair<int64_t, int64_t>>{{16, 5}, {16, 16}, {20, 7}}) {
    CAPTURE(seq_len);
    CAPTURE(stride);
    const Run run = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "text.txt",
                                       " --seq-len ", seq_len, " --stride ", stride));
    INFO(run.output);
    REQUIRE(run.status == 0);
    const Expected expected = expected_perplexity(*model, one_document, seq_len, stride);
    const json::Value line = json_line(run.output, "{\"eval\":\"ppl\"");
    CHECK(line.at("mean_nll").as_double() == doctest::Approx(expected.mean_nll).epsilon(1e-6));
    CHECK(line.at("perplexity").as_double() == doctest::Approx(std::exp(expected.mean_nll)).epsilon(1e-6));
    CHECK(line.at("tokens_scored").as_int64() == expected.scored);
    CHECK(line.at("windows").as_int64() == expected.windows);
    CHECK(line.at("tokens_read").as_int64() == int64_t(one_document[0].size()));
    CHECK(line.at("seq_len").as_int64() == seq_len);
    CHECK(line.at("stride").as_int64() == stride);
    CHECK(run.output.find(str_cat("tokens scored: ", expected.scored)) != std::string::npos);
    CHECK(run.output.find("perplexity: ") != std::string::npos);
  }
  // Windows that do not overlap lose each window's first token (no context); overlapping ones
  // score all but the document's first.
  CHECK(expected_perplexity(*model, one_document, 16, 16).scored < int64_t(one_document[0].size()) - 1);
  CHECK(expected_perplexity(*model, one_document, 16, 5).scored == int64_t(one_document[0].size()) - 1);
}

TEST_CASE("lamina eval ppl: JSONL documents are windowed apart, and the defaults and --max-tokens apply") {
  ScratchDir dir("cli-eval-jsonl");
  const auto model = save_model(dir);
  std::ofstream(dir / "data.jsonl") << json::Value(json::Object{{"text", kFirst}}).dump() << "\n\n"
                                    << json::Value(json::Object{{"text", kSecond}}).dump() << "\n";
  const std::vector<std::vector<int32_t>> documents = {encode_with_bos(kFirst), encode_with_bos(kSecond)};
  // Defaults: seq-len = the context (48, under 1024), stride 24.
  Run run = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "data.jsonl"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  Expected expected = expected_perplexity(*model, documents, kContext, kContext / 2);
  json::Value line = json_line(run.output, "{\"eval\":\"ppl\"");
  CHECK(line.at("mean_nll").as_double() == doctest::Approx(expected.mean_nll).epsilon(1e-6));
  CHECK(line.at("tokens_scored").as_int64() == expected.scored);
  CHECK(line.at("documents").as_int64() == 2);
  CHECK(line.at("windows").as_int64() == expected.windows);
  CHECK(line.at("seq_len").as_int64() == kContext);
  CHECK(line.at("stride").as_int64() == kContext / 2);

  // --max-tokens keeps the first N tokens in file order: here all of the first document and 10
  // of the second.
  const int64_t keep = int64_t(documents[0].size()) + 10;
  run = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "data.jsonl",
                           " --seq-len 16 --stride 8 --max-tokens ", keep));
  REQUIRE(run.status == 0);
  const std::vector<std::vector<int32_t>> kept = {documents[0],
                                                  std::vector<int32_t>(documents[1].begin(), documents[1].begin() + 10)};
  expected = expected_perplexity(*model, kept, 16, 8);
  line = json_line(run.output, "{\"eval\":\"ppl\"");
  CHECK(line.at("tokens_read").as_int64() == keep);
  CHECK(line.at("tokens_scored").as_int64() == expected.scored);
  CHECK(line.at("mean_nll").as_double() == doctest::Approx(expected.mean_nll).epsilon(1e-6));
}

TEST_CASE("lamina eval ppl refuses malformed JSONL, empty data, a zero or too long stride and unknown flags") {
  ScratchDir dir("cli-eval-errors");
  save_model(dir);
  const std::string model = "eval ppl --model " + dir.path.string();
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"fine\"}\n{\"text\": \"broken\"\n";
  Run run = run_lamina(model + " --data " + dir / "bad.jsonl");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("bad.jsonl:2") != std::string::npos, run.output);

  std::ofstream(dir / "empty.txt") << "";
  run = run_lamina(model + " --data " + dir / "empty.txt");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("holds no text to score") != std::string::npos, run.output);
  std::ofstream(dir / "empty.jsonl") << "";
  run = run_lamina(model + " --data " + dir / "empty.jsonl");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("error:") != std::string::npos, run.output);
  CHECK(run.output.find("perplexity:") == std::string::npos);

  std::ofstream(dir / "text.txt") << kFirst;
  run = run_lamina(model + " --data " + dir / "text.txt" + " --stride 0");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--stride") != std::string::npos, run.output);
  run = run_lamina(model + " --data " + dir / "text.txt" + " --seq-len 8 --stride 9");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--stride 9 is more than --seq-len 8") != std::string::npos, run.output);
  run = run_lamina(model + " --data " + dir / "text.txt" + " --seq-len 49");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("more than the model's context of 48") != std::string::npos, run.output);
  run = run_lamina(model + " --data " + dir / "text.txt" + " --strid 4");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--strid") != std::string::npos, run.output);
  run = run_lamina(model);
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("--data is required") != std::string::npos, run.output);
  run = run_lamina("eval perplexity");
  CHECK(run.status == 2);
  CHECK_MESSAGE(run.output.find("unknown action 'perplexity'") != std::string::npos, run.output);
  // A GGUF model's tokenizer is read from the file: a missing file is an error naming it.
  run = run_lamina("eval ppl --model " + dir / "model.gguf" + " --data " + dir / "text.txt");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("model.gguf") != std::string::npos, run.output);
}

TEST_CASE("lamina score: log-probs equal log_softmax of the logits at each position, for ids, text and stdin") {
  ScratchDir dir("cli-score");
  const auto model = save_model(dir);
  const std::vector<int32_t> ids = {1, 72, 101, 108, 108, 111, 33};
  Run run = run_lamina("score --model " + dir.path.string() + " --ids \"1 72 101 108 108 111 33\"");
  INFO(run.output);
  REQUIRE(run.status == 0);
  json::Value line = json_line(run.output, "{\"tokens\"");
  const json::Array& tokens = line.at("tokens").as_array();
  const json::Array& log_probs = line.at("logprobs").as_array();
  REQUIRE(tokens.size() == ids.size());
  REQUIRE(log_probs.size() == ids.size());
  CHECK(log_probs[0].is_null());
  double sum = 0;
  for (size_t t = 1; t < ids.size(); ++t) {
    CHECK(tokens[t].as_int64() == ids[t]);
    const double expected = log_prob(*model, ids, 0, int64_t(ids.size()), int64_t(t));
    CHECK(log_probs[t].as_double() == doctest::Approx(expected).epsilon(1e-6));
    sum += expected;
  }
  CHECK(line.at("sum").as_double() == doctest::Approx(sum).epsilon(1e-6));
  CHECK(line.at("mean").as_double() == doctest::Approx(sum / double(ids.size() - 1)).epsilon(1e-6));

  // Text goes through the model's tokenizer with BOS first; standard input is the same text.
  const std::vector<int32_t> text_ids = encode_with_bos("Hello!");
  for (const bool from_stdin : {false, true}) {
    run = from_stdin ? run_lamina("score --model " + dir.path.string(), {.input = "Hello!"})
                     : run_lamina("score --model " + dir.path.string() + " --text \"Hello!\"");
    REQUIRE(run.status == 0);
    line = json_line(run.output, "{\"tokens\"");
    REQUIRE(line.at("tokens").as_array().size() == text_ids.size());
    for (size_t t = 0; t < text_ids.size(); ++t) CHECK(line.at("tokens").as_array()[t].as_int64() == text_ids[t]);
    const json::Array& text_log_probs = line.at("logprobs").as_array();
    for (size_t t = 1; t < text_ids.size(); ++t)
      CHECK(text_log_probs[t].as_double() ==
            doctest::Approx(log_prob(*model, text_ids, 0, int64_t(text_ids.size()), int64_t(t))).epsilon(1e-6));
  }

  // One token has nothing to predict; bad ids and conflicting inputs are refused.
  run = run_lamina("score --model " + dir.path.string() + " --ids 5");
  REQUIRE(run.status == 0);
  line = json_line(run.output, "{\"tokens\"");
  CHECK(line.at("logprobs").as_array().size() == 1);
  CHECK(line.at("mean").is_null());
  run = run_lamina("score --model " + dir.path.string() + " --ids \"1 99999\"");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("outside the model's vocabulary") != std::string::npos, run.output);
  run = run_lamina("score --model " + dir.path.string() + " --ids \"1 x\"");
  CHECK(run.status == 2);
  run = run_lamina("score --model " + dir.path.string() + " --ids 1 --text a");
  CHECK(run.status == 2);
  run = run_lamina("score --model " + dir.path.string() + " --bogus");
  CHECK(run.status == 2);
  run = run_lamina("score --model " + dir / "model.gguf" + " --text hi");
  CHECK(run.status == 1);
  CHECK_MESSAGE(run.output.find("model.gguf") != std::string::npos, run.output);
}

TEST_CASE("lamina eval ppl on SmolLM2's GGUF: its own tokenizer, transformers' perplexity" *
          doctest::test_suite("real_model")) {
  // 89 tokens of plain English. transformers 5.25 (f32, the same GGUF, ids from HF `tokenizers`
  // over the file's vocabulary and merges, no BOS as the file says) gives perplexity 10.94001.
  // A model with a broken layer or tokenizer lands in the hundreds or thousands (uniform over
  // the vocabulary: 49152), so agreeing to 1e-4 checks the whole path: GGUF tokenizer,
  // dequantization, forward, windowing.
  ScratchDir dir("cli-eval-smollm2");
  std::ofstream(dir.path / "paragraph.txt")
      << "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg developed a "
         "system of movable metal type in Mainz. Before his invention, books were copied by hand, which made them "
         "rare and expensive. Within a few decades, printing shops had spread across Europe, and the number of "
         "books in circulation grew from thousands to millions. Cheaper books helped more people learn to read, "
         "and new ideas could travel faster than ever before.\n";
  const Run run = run_lamina("eval ppl --model " + testing::smollm2_gguf_path() + " --data " + dir / "paragraph.txt");
  INFO(run.output);
  REQUIRE(run.status == 0);
  const json::Value result = json_line(run.output, "{\"eval\"");
  CHECK(result.at("tokens_read").as_int64() == 89);
  CHECK(result.at("perplexity").as_double() == doctest::Approx(10.94001).epsilon(1e-4));
  // And text in, text out: the prompt encoded by the file's tokenizer, the answer decoded by it.
  const Run answer = run_lamina("generate --model " + testing::smollm2_gguf_path() +
                                " --prompt 'The capital of France is' --max-new-tokens 2");
  CHECK(answer.output.rfind(" Paris.", 0) == 0);
}

TEST_CASE("lamina eval ppl: windows in chunks through a KV cache, and under an attention plan") {
  ScratchDir dir("cli-eval-ppl-chunks");
  const auto model = save_model(dir);
  std::ofstream(dir / "text.txt") << kFirst;
  const std::vector<std::vector<int32_t>> one_document = {encode_with_bos(kFirst)};
  const Expected dense = expected_perplexity(*model, one_document, 16, 5);
  // Chunks of 3 tokens (and 7: not a divisor of the window) score what one forward scores.
  for (const int64_t chunk : {3, 7}) {
    const Run run = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "text.txt",
                                       " --seq-len 16 --stride 5 --chunk ", chunk));
    INFO(run.output);
    REQUIRE(run.status == 0);
    const json::Value line = json_line(run.output, "{\"eval\":\"ppl\"");
    CHECK(line.at("mean_nll").as_double() == doctest::Approx(dense.mean_nll).epsilon(1e-6));
    CHECK(line.at("tokens_scored").as_int64() == dense.scored);
  }

  // A plan of sink 2 + span 6 (window 4): the CLI's perplexity is the model's under that mask.
  write_fixed_span_plan(dir / "plan.json", model->config(), 2, 6);
  const Run run = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "text.txt",
                                     " --seq-len 16 --stride 5 --attention-plan ", dir / "plan.json"));
  INFO(run.output);
  REQUIRE(run.status == 0);
  model->model->sparse_attention = llama::SparseAttention::uniform(model->config(), 2, 4);
  const Expected sparse = expected_perplexity(*model, one_document, 16, 5);
  const json::Value line = json_line(run.output, "{\"eval\":\"ppl\"");
  CHECK(line.at("mean_nll").as_double() == doctest::Approx(sparse.mean_nll).epsilon(1e-6));
  CHECK(std::abs(sparse.mean_nll - dense.mean_nll) > 1e-3);  // the plan hides keys that matter
  // Density at 16 tokens: query i sees min(i + 1, 6) keys: (1+2+...+6 + 10 x 6) / (16 x 17 / 2).
  CHECK(line.at("attention_density").as_double() == doctest::Approx((21.0 + 60.0) / 136.0).epsilon(1e-12));

  // A plan for another model shape is refused, naming the file.
  llama::LlamaConfig other = model->config();
  other.num_hidden_layers += 1;
  write_fixed_span_plan(dir / "wrong.json", other, 2, 6);
  const Run wrong = run_lamina(str_cat("eval ppl --model ", dir.path.string(), " --data ", dir / "text.txt",
                                       " --attention-plan ", dir / "wrong.json"));
  CHECK(wrong.status == 1);
  CHECK(wrong.output.find("wrong.json") != std::string::npos);
}
