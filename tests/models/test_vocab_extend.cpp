// Vocabulary extension (models/surgery/vocab.h): new ids after the vocabulary skipping those added
// tokens hold, existing tokens skipped, bad tokens refused; grown matrices (old rows byte for byte,
// new rows the mean or zeros); and whole folders, untied and tied, whose hidden states and old
// logits are bit-identical (the logits to the GEMM's edge rounding when a width changes partial
// panels), whose new logits (a mean head row) equal the mean of the old ones, and whose
// tokenizer encodes the new tokens to their ids.
#include <cstring>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "model_presets.h"
#include "models/io/safetensors.h"
#include "models/surgery/vocab.h"
#include "models/tokenizer/builder.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

// A byte-level model folder (ids 0..255 bytes, 256..260 the chat's special tokens).
std::shared_ptr<llama::LlamaForCausalLM> save_model(const std::string& folder, bool tied, uint64_t seed) {
  llama::LlamaConfig config = byte_level_llama_config();
  config.tie_word_embeddings = tied;
  const auto model = random_llama(config, seed);
  model->save(folder);
  std::ofstream(fs::path(folder) / "tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  return model;
}

Tensor some_ids() { return Tensor::from_vector<int64_t>({256, 72, 105, 33, 10, 200, 7, 258}, {2, 4}); }

// logits [B, T, V] -> the first `columns` logits of each position, flattened.
std::vector<float> first_columns(const Tensor& logits, int64_t columns) {
  const std::vector<float> all = logits.contiguous().to_vector<float>();
  const int64_t vocab = logits.size(2), positions = logits.size(0) * logits.size(1);
  std::vector<float> out;
  for (int64_t p = 0; p < positions; ++p) out.insert(out.end(), all.begin() + p * vocab, all.begin() + p * vocab + columns);
  return out;
}

bool bit_identical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace

TEST_CASE("add_tokens_to_tokenizer_json numbers new tokens after the vocabulary, around added tokens' ids") {
  const json::Value tokenizer = json::parse(R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2}, "merges": []},
      "added_tokens": [{"id": 3, "content": "<s>", "special": true}, {"id": 5, "content": "<x>", "special": false}]})");
  std::vector<int32_t> ids;
  std::vector<std::string> skipped;
  const json::Value out = surgery::add_tokens_to_tokenizer_json(tokenizer, {"<new>", "b", "<s>", "<two>", "<three>"},
                                                                true, ids, skipped);
  CHECK(ids == std::vector<int32_t>{4, 6, 7});
  CHECK(skipped == std::vector<std::string>{"b", "<s>"});
  const json::Array& added = out.at("added_tokens").as_array();
  REQUIRE(added.size() == 5);
  CHECK(added[0].dump() == tokenizer.at("added_tokens").as_array()[0].dump());  // old entries untouched
  CHECK(added[2].at("content").as_string() == "<new>");
  CHECK(added[2].at("id").as_int64() == 4);
  CHECK(added[2].at("special").as_bool());
  CHECK_FALSE(added[2].at("normalized").as_bool());
  CHECK(out.at("model").dump() == tokenizer.at("model").dump());

  surgery::add_tokens_to_tokenizer_json(tokenizer, {"<plain>"}, false, ids, skipped);
  CHECK(ids == std::vector<int32_t>{4});
  CHECK(error_of([&] { surgery::add_tokens_to_tokenizer_json(tokenizer, {"<q>", "<q>"}, false, ids, skipped); })
            .find("given twice") != std::string::npos);
  CHECK(error_of([&] { surgery::add_tokens_to_tokenizer_json(tokenizer, {""}, false, ids, skipped); })
            .find("empty token") != std::string::npos);
  CHECK(error_of([] { surgery::row_init_from_name("random"); }).find("mean or zeros") != std::string::npos);
}

TEST_CASE("grow_rows copies the old rows byte for byte and fills the new ones with their mean or zeros") {
  const Tensor matrix = Tensor::from_vector<float>({1, 2, 3, 6, 5, 1}, {3, 2});
  CHECK(surgery::grow_rows(matrix, 5, surgery::RowInit::mean).to_vector<float>() ==
        std::vector<float>{1, 2, 3, 6, 5, 1, 3, 3, 3, 3});
  CHECK(surgery::grow_rows(matrix, 4, surgery::RowInit::zeros).to_vector<float>() ==
        std::vector<float>{1, 2, 3, 6, 5, 1, 0, 0});
  // A padding row that a new token takes: re-initialised and left out of the mean.
  CHECK(surgery::grow_rows(matrix, 4, surgery::RowInit::mean, {2}).to_vector<float>() ==
        std::vector<float>{1, 2, 3, 6, 2, 4, 2, 4});
  const Tensor bf16 = matrix.to(DType::bf16);
  const Tensor grown = surgery::grow_rows(bf16, 4, surgery::RowInit::mean);
  CHECK(grown.dtype() == DType::bf16);
  CHECK(grown.to(DType::f32).to_vector<float>() == std::vector<float>{1, 2, 3, 6, 5, 1, 3, 3});
  CHECK(error_of([&] { surgery::grow_rows(matrix, 2, surgery::RowInit::mean); }).find("cannot shrink") != std::string::npos);
}

TEST_CASE("extend_vocabulary keeps every old logit bit-identical; mean head rows give the mean logit") {
  for (const bool tied : {false, true}) {
    CAPTURE(tied);
    const ScratchDir scratch(tied ? "vocab-tied" : "vocab-untied");
    const auto original = save_model(scratch / "original", tied, 4);
    const int64_t old_vocab = original->config().vocab_size;
    REQUIRE(old_vocab == 261);
    fs::create_directories(scratch / "out");
    const surgery::VocabularySummary summary =
        surgery::extend_vocabulary(scratch / "original", scratch / "out", {"<|tool|>", "Hi", "<|eot_id|>", "xyz"});
    CHECK(summary.added == std::vector<std::string>{"<|tool|>", "Hi", "xyz"});
    CHECK(summary.added_ids == std::vector<int32_t>{261, 262, 263});
    CHECK(summary.skipped == std::vector<std::string>{"<|eot_id|>"});
    CHECK(summary.new_vocab_size == 264);
    CHECK(summary.resized.size() == (tied ? 1u : 2u));

    const auto extended = llama::LlamaForCausalLM::load(scratch / "out");
    CHECK(extended->config().vocab_size == 264);
    // The trunk is untouched and the old rows of the embedding (and head) are copied byte for
    // byte: the hidden states are bit-identical. The head's product over 264 columns instead of
    // 261 may round a column of the old partial panel differently (the GEMM's edge path), so the
    // logits are compared to a few ulps here and bit for bit in the next case, where neither
    // width leaves a partial panel.
    CHECK(same_bytes(original->hidden_states(some_ids()), extended->hidden_states(some_ids())));
    const Tensor before = original->forward(some_ids());
    const Tensor after = extended->forward(some_ids());
    const std::vector<float> old_part = first_columns(after, old_vocab);
    CHECK_CLOSE(Tensor::from_vector<float>(old_part, {int64_t(old_part.size())}),
                Tensor::from_vector<float>(first_columns(before, old_vocab), {int64_t(old_part.size())}),
                (Tolerance{1e-7, 1e-6}));
    if (!tied) {
      // h . mean(rows) = mean(h . rows): each new logit is the mean of the position's old logits.
      const std::vector<float> old_logits = before.contiguous().to_vector<float>();
      const std::vector<float> new_logits = after.contiguous().to_vector<float>();
      for (int64_t p = 0; p < 8; ++p) {
        double mean = 0;
        for (int64_t j = 0; j < old_vocab; ++j) mean += old_logits[size_t(p * old_vocab + j)];
        mean /= double(old_vocab);
        for (int64_t j = old_vocab; j < 264; ++j) CHECK(new_logits[size_t(p * 264 + j)] == doctest::Approx(mean).epsilon(1e-4));
      }
    }
    // The new embedding rows are the mean of the old ones.
    const Tensor embedding = safetensors::Checkpoint::open(scratch / "out").read("model.embed_tokens.weight");
    const std::vector<float> rows = embedding.to_vector<float>();
    const int64_t width = embedding.size(1);
    for (int64_t j = 0; j < width; ++j) {
      double mean = 0;
      for (int64_t row = 0; row < old_vocab; ++row) mean += rows[size_t(row * width + j)];
      CHECK(rows[size_t(263 * width + j)] == doctest::Approx(mean / double(old_vocab)).epsilon(1e-5));
    }

    const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(scratch / "out");
    CHECK(tokenizer.vocab_size() == 264);
    CHECK(tokenizer.encode("say Hi<|tool|>") == std::vector<int32_t>{'s', 'a', 'y', ' ', 262, 261});
    CHECK_FALSE(tokenizer.is_special(261));
    CHECK(tokenizer.require_added_token("<|eot_id|>") == 260);
  }
}

TEST_CASE("extend_vocabulary leaves the old tokens' logits bit-identical (widths of whole GEMM panels)") {
  const ScratchDir scratch("vocab-exact");
  // vocab_size 320: the tokenizer's 261 ids and 59 padding rows. The new token takes padding id
  // 261 and --pad-to-multiple 128 makes the head 384 wide.
  llama::LlamaConfig config = byte_level_llama_config();
  config.vocab_size = 320;
  config.tie_word_embeddings = false;
  const auto original = random_llama(config, 8);
  original->save(scratch / "original");
  std::ofstream(scratch / "original/tokenizer.json") << tokenizer::byte_level_tokenizer_json().dump();
  fs::create_directories(scratch / "out");
  surgery::VocabularyOptions options;
  options.pad_to_multiple = 128;
  const surgery::VocabularySummary summary = surgery::extend_vocabulary(scratch / "original", scratch / "out", {"<|new|>"}, options);
  CHECK(summary.added_ids == std::vector<int32_t>{261});
  CHECK(summary.new_vocab_size == 384);
  const auto extended = llama::LlamaForCausalLM::load(scratch / "out");
  const Tensor before = original->forward(some_ids()), after = extended->forward(some_ids());
  CHECK(bit_identical(first_columns(after, 261), first_columns(before, 261)));
  // The padding row the token took was re-initialised to the mean; the padding rows it did not
  // take are kept.
  const safetensors::Checkpoint source = safetensors::Checkpoint::open(scratch / "original");
  const safetensors::Checkpoint result = safetensors::Checkpoint::open(scratch / "out");
  const Tensor old_head = source.read("lm_head.weight"), new_head = result.read("lm_head.weight");
  CHECK(same_bytes(new_head.narrow(0, 262, 58).contiguous(), old_head.narrow(0, 262, 58).contiguous()));
  CHECK_FALSE(same_bytes(new_head.narrow(0, 261, 1).contiguous(), old_head.narrow(0, 261, 1).contiguous()));
}

TEST_CASE("extend_vocabulary pads vocab_size, marks special tokens, updates tokenizer_config.json, refuses no-ops") {
  const ScratchDir scratch("vocab-pad");
  save_model(scratch / "original", false, 5);
  std::ofstream(scratch / "original/tokenizer_config.json")
      << R"({"added_tokens_decoder": {"256": {"content": "<|begin_of_text|>", "special": true}}, "model_max_length": 8192})";
  fs::create_directories(scratch / "out");
  surgery::VocabularyOptions options;
  options.special = true;
  options.init = surgery::RowInit::zeros;
  options.pad_to_multiple = 64;
  const surgery::VocabularySummary summary = surgery::extend_vocabulary(scratch / "original", scratch / "out", {"<|a|>"}, options);
  CHECK(summary.added_ids == std::vector<int32_t>{261});
  CHECK(summary.new_vocab_size == 320);
  const auto extended = llama::LlamaForCausalLM::load(scratch / "out");
  CHECK(extended->config().vocab_size == 320);
  const safetensors::Checkpoint result = safetensors::Checkpoint::open(scratch / "out");
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    const Tensor grown = result.read(name);
    CHECK(grown.shape() == Shape{320, 8});
    const std::vector<float> values = grown.narrow(0, 261, 59).contiguous().to_vector<float>();
    CHECK(values == std::vector<float>(values.size(), 0.0f));
  }
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(scratch / "out");
  CHECK(tokenizer.is_special(261));
  const json::Value tokenizer_config = json::parse_file(scratch / "out/tokenizer_config.json");
  CHECK(tokenizer_config.at("model_max_length").as_int64() == 8192);
  const json::Value& decoder = tokenizer_config.at("added_tokens_decoder");
  CHECK(decoder.at("256").at("content").as_string() == "<|begin_of_text|>");
  CHECK(decoder.at("261").at("content").as_string() == "<|a|>");
  CHECK(decoder.at("261").at("special").as_bool());

  fs::create_directories(scratch / "out2");
  CHECK(error_of([&] { surgery::extend_vocabulary(scratch / "original", scratch / "out2", {"<|eot_id|>"}); })
            .find("nothing to add") != std::string::npos);
  CHECK(fs::is_empty(scratch / "out2"));
  fs::remove(scratch / "original/tokenizer.json");
  CHECK(error_of([&] { surgery::extend_vocabulary(scratch / "original", scratch / "out2", {"<|b|>"}); })
            .find("has no tokenizer.json") != std::string::npos);
}
