// `lamina demo`: the whole pipeline on a small Llama-3-architecture model, on the CPU, with
// nothing but this binary: it writes its own corpus, tokenizer and model.
//
//   data      random "words" over the letters a-p; 85% are for training, the rest held out
//   tokenizer byte-level BPE with the Llama-3 chat special tokens (models/tokenizer/builder.h)
//   stage 1   pretrain from scratch on statements about the training words
//             ("copy of kfad is kfad.", "first letter of kfad is k.", ...)
//   stage 2   SFT in the Llama-3 chat format: user "copy: kfad", assistant "kfad" (with a
//             third of the statements replayed, so that stage 1 is not forgotten)
//   measured  before/after each stage, on held-out words never trained on: the validation
//             loss of held-out statements and held-out chats, and the exact-match accuracy of
//             greedy answers to held-out chat questions
//   output    model (HF layout, with tokenizer.json: `lamina chat --model DIR/model` works),
//             metrics.jsonl and loss.svg per stage, and a summary table
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "autograd/autograd.h"
#include "models/generate/generate.h"
#include "models/tokenizer/builder.h"
#include "tensor/io/atomic_file.h"
#include "tensor/parallel.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "train/loss_curve.h"
#include "train/trainer.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

struct Task {
  const char* instruction;  // the chat question: "<instruction> <word>"
  const char* statement;    // the pretraining sentence: "<statement> <word> is <answer>."
  std::string (*answer)(const std::string& word);
};

const Task kTasks[] = {
    {"copy:", "copy of", [](const std::string& w) { return w; }},
    {"first letter:", "first letter of", [](const std::string& w) { return w.substr(0, 1); }},
    {"last letter:", "last letter of", [](const std::string& w) { return w.substr(w.size() - 1); }},
};

std::vector<std::string> random_words(int64_t count, Generator& generator) {
  const std::vector<int64_t> lengths = randint(3, 7, {count}, generator).to_vector<int64_t>();
  const std::vector<int64_t> letters = randint(0, 16, {count * 6}, generator).to_vector<int64_t>();
  std::vector<std::string> words;
  for (int64_t i = 0; i < count; ++i) {
    std::string word;
    for (int64_t j = 0; j < lengths[size_t(i)]; ++j) word += char('a' + letters[size_t(i * 6 + j)]);
    words.push_back(word);
  }
  return words;
}

std::vector<train::Example> statements(const std::vector<std::string>& words, const tokenizer::Tokenizer& tokenizer) {
  std::vector<train::Example> out;
  for (const std::string& word : words) {
    for (const Task& task : kTasks) {
      json::Value record = json::Object{};
      record.set("text", std::string(task.statement) + " " + word + " is " + task.answer(word) + ".");
      out.push_back(train::example_from_json(record, tokenizer, {}));
    }
  }
  return out;
}

std::vector<tokenizer::Message> question(const Task& task, const std::string& word) {
  return {{"user", std::string(task.instruction) + " " + word}};
}

std::vector<train::Example> chats(const std::vector<std::string>& words, const tokenizer::Tokenizer& tokenizer) {
  std::vector<train::Example> out;
  for (const std::string& word : words) {
    for (const Task& task : kTasks) {
      std::vector<tokenizer::Message> messages = question(task, word);
      messages.push_back({"assistant", task.answer(word)});
      tokenizer::ChatOptions options;
      options.add_generation_prompt = false;
      const tokenizer::ChatTokens rendered = tokenizer::render_chat(tokenizer, messages, options);
      out.push_back({rendered.ids, rendered.assistant_mask});
    }
  }
  return out;
}

// Exact-match accuracy of greedy answers to the held-out chat questions.
double chat_accuracy(const llama::LlamaForCausalLM& model, const tokenizer::Tokenizer& tokenizer,
                     const std::vector<std::string>& words) {
  std::vector<std::vector<int64_t>> prompts;
  std::vector<std::string> expected;
  for (const std::string& word : words) {
    for (const Task& task : kTasks) {
      const std::vector<int32_t> ids = tokenizer::render_chat(tokenizer, question(task, word)).ids;
      prompts.emplace_back(ids.begin(), ids.end());
      expected.push_back(task.answer(word));
    }
  }
  generate::GenerateOptions options;
  options.max_new_tokens = 9;
  options.stop_tokens = {*tokenizer.added_token_id("<|eot_id|>")};
  int64_t correct = 0;
  constexpr size_t kChunk = 64;  // prompts per batched generate call
  for (size_t start = 0; start < prompts.size(); start += kChunk) {
    const std::vector<std::vector<int64_t>> chunk(prompts.begin() + long(start),
                                                  prompts.begin() + long(std::min(prompts.size(), start + kChunk)));
    const generate::GenerateResult result = generate::generate(model, chunk, options);
    for (size_t i = 0; i < chunk.size(); ++i) {
      const std::vector<int32_t> ids(result.tokens[i].begin(), result.tokens[i].end());
      correct += result.finish_reasons[i] == "stop" && tokenizer.decode(ids) == expected[start + i];
    }
  }
  return double(correct) / double(prompts.size());
}

std::string answer(const llama::LlamaForCausalLM& model, const tokenizer::Tokenizer& tokenizer, const std::string& text) {
  const std::vector<tokenizer::Message> messages = {{"user", text}};
  const std::vector<int32_t> ids = tokenizer::render_chat(tokenizer, messages).ids;
  generate::GenerateOptions options;
  options.max_new_tokens = 12;
  options.stop_tokens = {*tokenizer.added_token_id("<|eot_id|>")};
  const generate::GenerateResult result = generate::generate(model, {std::vector<int64_t>(ids.begin(), ids.end())}, options);
  return tokenizer.decode(std::vector<int32_t>(result.tokens[0].begin(), result.tokens[0].end()));
}

double loss_on(const std::shared_ptr<llama::LlamaForCausalLM>& model, const std::vector<train::Example>& examples,
               int64_t seq_len) {
  train::TrainOptions options;
  options.steps = 0;
  options.seq_len = seq_len;
  options.progress = false;
  return train::Trainer(model, options, examples, examples).validation_loss();
}

struct Measurement {
  std::string stage;
  double statement_loss, chat_loss, accuracy, seconds;
};

}  // namespace

int run_demo(const Arguments& args) {
  FlagParser parser("lamina demo",
                    "Builds a small Llama-3-architecture model, pretrains it on a corpus it generates, instruction-tunes it "
                    "in the Llama-3 chat format, and measures held-out loss and answer accuracy after each stage (CPU, a "
                    "few minutes).");
  parser.add_option("output", "DIR", "where the model, metrics and loss curves go", "lamina-demo");
  parser.add_option("seed", "S", "seed for the data and the weights", "0");
  parser.add_option("threads", "N", "CPU threads", "all");
  parser.add_switch("quick", "a few dozen steps of each stage on a smaller corpus (for tests: each stage must still improve)");
  if (!parser.parse(args)) return 0;
  const fs::path output = parser.value("output").value_or("lamina-demo");
  const uint64_t seed = uint64_t(parser.int_value("seed", 0, 0, INT64_MAX));
  set_num_threads(int(parser.int_value("threads", num_threads(), 1, 1024)));
  const bool quick = parser.is_set("quick");
  const auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };

  const tokenizer::Tokenizer tokenizer = tokenizer::byte_level_tokenizer();
  Generator generator(seed);
  const std::vector<std::string> words = random_words(quick ? 60 : 700, generator);
  const size_t held_out_count = words.size() * 15 / 100;
  const std::vector<std::string> held_out(words.begin(), words.begin() + long(held_out_count));
  const std::vector<std::string> training_words(words.begin() + long(held_out_count), words.end());
  const std::vector<train::Example> corpus = statements(training_words, tokenizer);
  const std::vector<train::Example> held_out_statements = statements(held_out, tokenizer);
  const std::vector<train::Example> chat_data = chats(training_words, tokenizer);
  const std::vector<train::Example> held_out_chats = chats(held_out, tokenizer);

  llama::LlamaConfig config;
  config.vocab_size = tokenizer.vocab_size();
  config.hidden_size = 128;
  config.intermediate_size = 384;
  config.num_hidden_layers = 4;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 32;
  config.max_position_embeddings = 128;
  config.rope_theta = 10000.0;
  config.bos_token_id = *tokenizer.bos_id();
  config.eos_token_ids = {*tokenizer.added_token_id("<|end_of_text|>"), *tokenizer.added_token_id("<|eot_id|>")};
  config.dtype = DType::f32;
  auto model = std::make_shared<llama::LlamaForCausalLM>(config);
  model->init_parameters(generator);
  std::printf("lamina demo: a %.2fM-parameter Llama-3-architecture model (%lld layers, %lld heads / %lld kv heads), "
              "vocabulary %lld; %zu training words, %zu held out\n",
              double(model->parameter_count()) / 1e6, (long long)config.num_hidden_layers,
              (long long)config.num_attention_heads, (long long)config.num_key_value_heads, (long long)config.vocab_size,
              training_words.size(), held_out.size());
  fs::create_directories(output);

  const int64_t seq_len = 64;
  std::vector<Measurement> table;
  auto measure = [&](const std::string& stage) {
    autograd::NoGradGuard no_grad;
    table.push_back({stage, loss_on(model, held_out_statements, seq_len), loss_on(model, held_out_chats, seq_len),
                     chat_accuracy(*model, tokenizer, held_out), elapsed()});
    const Measurement& m = table.back();
    std::printf("  %-22s held-out statement loss %.3f | held-out chat loss %.3f | held-out answers %.1f%% correct\n",
                m.stage.c_str(), m.statement_loss, m.chat_loss, 100 * m.accuracy);
    std::fflush(stdout);
  };
  measure("random init");

  auto stage_options = [&](const std::string& name, int64_t steps, int64_t quick_steps, double lr) {
    train::TrainOptions options;
    options.steps = quick ? quick_steps : steps;
    options.batch_size = 16;
    options.seq_len = seq_len;
    options.lr = lr;
    options.warmup_steps = quick ? 0 : 20;
    options.weight_decay = 0.01;
    options.beta2 = 0.98;
    options.eval_every = quick ? 0 : 50;
    options.seed = seed;
    options.output_dir = (output / name).string();
    return options;
  };
  // Each stage's model/ gets the tokenizer too, so that it is a model `lamina chat` can load.
  const std::string tokenizer_json = tokenizer::byte_level_tokenizer_json().dump() + "\n";
  const auto add_tokenizer = [&](const std::string& folder) {
    io::write_file_atomically((fs::path(folder) / "tokenizer.json").string(), tokenizer_json);
  };
  std::printf("stage 1: pretraining on %zu generated statements\n", corpus.size());
  train::Trainer pretrainer(model, stage_options("pretrain", 1000, 40, 2e-3), corpus, held_out_statements);
  pretrainer.add_model_files = add_tokenizer;
  pretrainer.run({train::ExistingRun::overwrite});
  measure("after pretraining");
  // Every third pretraining statement rides along, so that fine-tuning does not make the model
  // forget what it learned in stage 1.
  std::vector<train::Example> sft_data = chat_data;
  for (size_t i = 0; i < corpus.size(); i += 3) sft_data.push_back(corpus[i]);
  std::printf("stage 2: supervised fine-tuning on %zu chats (loss on the answers only) and %zu statements\n",
              chat_data.size(), sft_data.size() - chat_data.size());
  train::Trainer fine_tuner(model, stage_options("sft", 500, 30, 1e-3), sft_data, held_out_chats);
  fine_tuner.add_model_files = add_tokenizer;
  fine_tuner.run({train::ExistingRun::overwrite});
  measure("after fine-tuning");

  // The final model, loadable by `lamina chat --model <output>/model`.
  model->save((output / "model").string());
  add_tokenizer((output / "model").string());
  for (const char* stage : {"pretrain", "sft"}) {
    const fs::path metrics = output / stage / "metrics.jsonl";
    io::write_file_atomically((output / stage / "loss.svg").string(),
                              train::loss_curve_svg(train::read_metrics(metrics.string()), std::string("lamina demo: ") + stage));
  }

  std::printf("\nanswers to held-out questions:\n");
  for (size_t i = 0; i < std::min<size_t>(3, held_out.size()); ++i) {
    for (const Task& task : kTasks) {
      const std::string q = std::string(task.instruction) + " " + held_out[i];
      std::printf("  %-22s -> %-10s (expected %s)\n", q.c_str(), answer(*model, tokenizer, q).c_str(),
                  task.answer(held_out[i]).c_str());
    }
  }
  std::printf("\n| stage | held-out statement loss | held-out chat loss | held-out answer accuracy | time |\n");
  std::printf("|---|---|---|---|---|\n");
  for (const Measurement& m : table)
    std::printf("| %s | %.3f | %.3f | %.1f%% | %.0f s |\n", m.stage.c_str(), m.statement_loss, m.chat_loss, 100 * m.accuracy,
                m.seconds);
  std::printf("\nwrote %s/model (config.json, model.safetensors, tokenizer.json), %s/{pretrain,sft}/metrics.jsonl and loss.svg\n",
              output.string().c_str(), output.string().c_str());
  std::printf("try: lamina chat --model %s/model\n", output.string().c_str());
  // Each stage must have improved what it trains for, or the demo failed.
  const bool improved = table[1].statement_loss < table[0].statement_loss && table[2].chat_loss < table[1].chat_loss;
  if (!improved) std::fprintf(stderr, "lamina demo: a stage did not improve the loss it trains for\n");
  return improved ? 0 : 1;
}

}  // namespace lamina::cli
