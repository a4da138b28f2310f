// The prefill chunk `lamina generate` picks for a model computing with a GGUF file's blocks
// (generate::memory_lean_prefill_chunk_tokens): what it picks for the shapes and file sizes it is
// meant for, and, on the real SmolLM2 file, that its chunk continues a prompt with the same
// greedy tokens as the 512-token chunk.
#include <doctest/doctest.h>

#include <filesystem>
#include <vector>

#include "models/generate/generate.h"
#include "models/io/gguf_llama.h"
#include "real_model.h"

namespace lamina {
namespace {

llama::LlamaConfig shaped_config(int64_t hidden, int64_t intermediate, int64_t heads, int64_t kv_heads) {
  llama::LlamaConfig config;
  config.hidden_size = hidden;
  config.intermediate_size = intermediate;
  config.num_attention_heads = heads;
  config.num_key_value_heads = kv_heads;
  config.head_dim = 64;
  return config;
}

}  // namespace

TEST_CASE("the memory-lean prefill chunk follows the activations against the weights' size") {
  // SmolLM2-135M: per token 4 x 576 + (9 + 2 x 3) x 64 + 3 x 1536 = 7872 floats.
  const llama::LlamaConfig smol = shaped_config(576, 1536, 9, 3);
  CHECK(generate::prefill_activation_bytes_per_token(smol) == 7872 * 4);
  // Its Q4_1 file (98.4 MB): 1/24 is 4.1 MB, 130 tokens' worth, so 128; its Q8_0 file (144.8 MB): 191, so 128.
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, 98362432) == 128);
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, 144810848) == 128);
  // At the boundary: exactly 256 tokens' activations in 1/24 of the weights allows 256, a little less does not.
  const int64_t for_256 = 24 * 256 * generate::prefill_activation_bytes_per_token(smol);
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, for_256) == 256);
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, for_256 - 24) == 128);
  // Large weights keep the full chunk; it never grows past 512 or shrinks below 64.
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, int64_t(1) << 40) == 512);
  CHECK(generate::memory_lean_prefill_chunk_tokens(smol, 1000) == 64);
  // Llama 3.2 1B's shape: 143 KB a token. In Q4_0 (695 MB) 202 tokens fit 1/24, so 128; in 2 GB, 512.
  const llama::LlamaConfig one_b = shaped_config(2048, 8192, 32, 8);
  CHECK(generate::prefill_activation_bytes_per_token(one_b) == 35840 * 4);
  CHECK(generate::memory_lean_prefill_chunk_tokens(one_b, 695387296) == 128);
  CHECK(generate::memory_lean_prefill_chunk_tokens(one_b, 2000000000) == 512);
}

TEST_CASE("SmolLM2 GGUF as stored: the memory-lean prefill chunk gives the 512 chunk's greedy tokens" *
          doctest::test_suite("real_model")) {
  const std::string path = testing::smollm2_gguf_path();
  const auto model = gguf::load_llama_gguf_quantized(path);
  const int64_t chunk =
      generate::memory_lean_prefill_chunk_tokens(model->config(), int64_t(std::filesystem::file_size(path)));
  REQUIRE(chunk == 128);
  // A 600-token prompt: four chunks of 128 and one of 88 (all but the last without the head
  // product) against 512 and 88. Ids cycled through a stretch of ordinary tokens, so the text repeats and
  // the continuation is confident.
  std::vector<int64_t> prompt = {1};
  for (int64_t i = 1; i < 600; ++i) prompt.push_back(4093 + (i * 37) % 211);
  generate::GenerateOptions options;
  options.max_new_tokens = 24;
  options.use_config_stop_tokens = false;
  options.prefill_chunk_tokens = 512;
  const generate::GenerateResult whole = generate::generate(*model, {prompt}, options);
  options.prefill_chunk_tokens = chunk;
  const generate::GenerateResult chunked = generate::generate(*model, {prompt}, options);
  REQUIRE(whole.tokens.size() == 1);
  CHECK(whole.tokens[0].size() == 24);
  CHECK(chunked.tokens[0] == whole.tokens[0]);
}

}  // namespace lamina
