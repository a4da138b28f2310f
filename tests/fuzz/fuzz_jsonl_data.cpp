// libFuzzer target for the training-data readers: arbitrary bytes in, and for each input
//   - read as JSONL (options from the first byte: layout, BOS/EOS, chat format, skipping),
//     it fails with lamina::Error or gives examples that each learn something, with in-range
//     ids and a mask as long as its ids;
//   - those examples fitted to a small row all fit and still learn something, and the loader
//     batches them with at least one target per batch;
//   - read as a token shard (behind a valid header, and as they are), it fails with
//     lamina::Error or gives pieces of 2..max_tokens ids inside the vocabulary.
// A tiny byte-level tokenizer built in code keeps every input fast.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "models/tokenizer/builder.h"
#include "tensor/error.h"
#include "train/data.h"

namespace {

using namespace lamina;

#define FUZZ_CHECK(condition, what)                                                        \
  do {                                                                                     \
    if (!(condition)) {                                                                    \
      std::fprintf(stderr, "fuzz_jsonl_data: check failed: %s (%s)\n", what, #condition); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

const tokenizer::Tokenizer& fuzz_tokenizer() {
  static const tokenizer::Tokenizer tokenizer =
      tokenizer::byte_level_tokenizer({{"h", "i"}, {" ", "t"}, {"e", "r"}, {" t", "h"}, {"\n", "\n"}});
  return tokenizer;
}

void check_examples(const std::vector<train::Example>& examples, int64_t vocab_size, const char* where) {
  for (const train::Example& example : examples) {
    FUZZ_CHECK(example.ids.size() == example.loss_mask.size(), where);
    FUZZ_CHECK(train::target_count(example) > 0, where);
    for (const int32_t id : example.ids) FUZZ_CHECK(id >= 0 && id < vocab_size, where);
  }
}

void fuzz_jsonl(uint8_t choice, std::string_view text) {
  const tokenizer::Tokenizer& tokenizer = fuzz_tokenizer();
  constexpr train::DataFormat kFormats[] = {train::DataFormat::auto_detect, train::DataFormat::text,
                                            train::DataFormat::prompt_completion, train::DataFormat::chat,
                                            train::DataFormat::sharegpt};
  train::JsonlOptions options;
  options.format = kFormats[choice % 5];
  options.add_bos = (choice & 0x08) != 0;
  options.add_eos = (choice & 0x10) != 0;
  options.skip_malformed = (choice & 0x20) != 0;
  options.chat.format = (choice & 0x40) != 0 ? tokenizer::ChatFormat::llama3_1 : tokenizer::ChatFormat::llama3;
  int64_t progress_calls = 0, last_done = -1;
  options.on_progress = [&](int64_t done, int64_t total) {
    FUZZ_CHECK(done >= last_done && (total < 0 || done <= total), "progress went backwards or past the end");
    last_done = done;
    ++progress_calls;
  };
  std::vector<train::Example> examples;
  train::JsonlStats stats;
  try {
    std::istringstream in{std::string(text)};
    examples = train::read_jsonl(in, "fuzz.jsonl", tokenizer, options, &stats);
  } catch (const Error&) {
    return;
  }
  FUZZ_CHECK(progress_calls >= 1 && last_done == int64_t(text.size()), "progress did not end at the size");
  FUZZ_CHECK(stats.examples == int64_t(examples.size()) && stats.examples + stats.skipped == stats.lines, "counts");
  check_examples(examples, tokenizer.vocab_size(), "a JSONL example");
  if (examples.empty()) return;

  const int64_t max_tokens = 2 + choice % 13;
  train::FitStats fit;
  std::vector<train::Example> fitted = train::fit_examples(examples, max_tokens, &fit);
  check_examples(fitted, tokenizer.vocab_size(), "a fitted example");
  for (const train::Example& example : fitted) FUZZ_CHECK(int64_t(example.ids.size()) <= max_tokens, "a fitted example is too long");
  FUZZ_CHECK(fit.chunked + fit.truncated + fit.dropped == fit.too_long, "fit counts");
  if (fitted.empty()) return;
  train::LoaderOptions loader_options;
  loader_options.batch_size = 2;
  loader_options.seq_len = max_tokens - 1;
  loader_options.pack = (choice & 0x80) != 0;
  train::DataLoader loader(std::move(fitted), loader_options);
  for (int i = 0; i < 3; ++i) FUZZ_CHECK(loader.next().target_tokens > 0, "a batch without targets");
  for (const train::Batch& batch : loader.all_batches()) FUZZ_CHECK(batch.target_tokens > 0, "a validation batch without targets");
}

void fuzz_token_shard(uint8_t choice, std::string_view bytes) {
  const int64_t max_tokens = 2 + choice % 7;
  const int64_t vocab_size = (choice & 0x80) != 0 ? 0 : 300;
  try {
    const std::vector<train::Example> pieces = train::parse_token_shard(bytes, "fuzz.bin", max_tokens, vocab_size);
    for (const train::Example& piece : pieces) {
      FUZZ_CHECK(piece.ids.size() >= 2 && int64_t(piece.ids.size()) <= max_tokens, "a shard piece has a bad length");
      FUZZ_CHECK(piece.loss_mask.size() == piece.ids.size(), "a shard piece's mask");
      for (const int32_t id : piece.ids) FUZZ_CHECK(id >= 0 && (vocab_size == 0 || id < vocab_size), "a shard id");
    }
  } catch (const Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t choice = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz_jsonl(choice, rest);
  fuzz_token_shard(choice, rest);
  const char width = (choice & 0x01) != 0 ? '\x02' : '\x04';
  const std::string header = std::string("LMTOKENS", 8) + width + std::string(7, '\0');
  fuzz_token_shard(choice, header + std::string(rest));
  return 0;
}
