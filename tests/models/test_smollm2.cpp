// SmolLM2-135M-Instruct, the real pretrained model, read from its Q4_1 GGUF by lamina's reader
// and run by lamina's Llama. The expected ids and logits come from an independent implementation,
// not from lamina: transformers 5.25 (torch 2.15, f32) loading the same GGUF file (it
// dequantizes it itself) and generating greedily, with prompt ids from Hugging Face `tokenizers`
// built from the file's own vocabulary and merges (GPT-2 byte-level split, individual digits).
#include <algorithm>
#include <vector>

#include "helpers.h"
#include "models/generate/generate.h"
#include "autograd/autograd.h"
#include "models/io/gguf_llama.h"
#include "models/tokenizer/chat.h"
#include "real_model.h"

using namespace lamina;

namespace {

const std::shared_ptr<llama::LlamaForCausalLM>& smollm2() {
  static const std::shared_ptr<llama::LlamaForCausalLM> model = gguf::load_llama_gguf(testing::smollm2_gguf_path());
  return model;
}

const tokenizer::Tokenizer& smollm2_tokenizer() {
  static const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::from_gguf(gguf::File::open(testing::smollm2_gguf_path()));
  return tokenizer;
}

std::vector<int64_t> widen(const std::vector<int32_t>& ids) { return std::vector<int64_t>(ids.begin(), ids.end()); }

std::vector<int64_t> greedy(const std::vector<int64_t>& prompt, int64_t new_tokens) {
  generate::GenerateOptions options;
  options.max_new_tokens = new_tokens;
  return generate::generate(*smollm2(), {prompt}, options).tokens[0];
}

// "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
const std::vector<int64_t> kCapitalPrompt = {1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198};
// "<|im_start|>user\nExplain in two sentences why the sky is blue.<|im_end|>\n<|im_start|>assistant\n"
const std::vector<int64_t> kSkyPrompt = {1,  4093, 198, 36971, 281, 827, 8545, 1701, 260, 6376,
                                         314, 4461, 30,  2,     198, 1,   520,  9531, 198};

}  // namespace

TEST_CASE("SmolLM2 GGUF: the config the file describes" * doctest::test_suite("real_model")) {
  // The architecture as published for SmolLM2-135M: 30 layers of width 576, 9 query heads on
  // 3 KV heads, FFN 1536, vocabulary 49152, tied embeddings, RoPE base 100000, ChatML ids.
  const llama::LlamaConfig& config = smollm2()->config();
  CHECK(config.num_hidden_layers == 30);
  CHECK(config.hidden_size == 576);
  CHECK(config.num_attention_heads == 9);
  CHECK(config.num_key_value_heads == 3);
  CHECK(config.head_dim == 64);
  CHECK(config.intermediate_size == 1536);
  CHECK(config.vocab_size == 49152);
  CHECK(config.tie_word_embeddings);
  CHECK(config.rope_theta == 100000.0);
  CHECK(config.rms_norm_eps == doctest::Approx(1e-5));
  CHECK(config.bos_token_id == 1);  // <|im_start|>
  CHECK(std::find(config.eos_token_ids.begin(), config.eos_token_ids.end(), 2) != config.eos_token_ids.end());  // <|im_end|>
}

TEST_CASE("SmolLM2 GGUF: greedy answers equal transformers' on the same file" * doctest::test_suite("real_model")) {
  // "The capital of France is Paris." and <|im_end|> (2), which ends the sequence.
  CHECK(greedy(kCapitalPrompt, 40) == std::vector<int64_t>{504, 3575, 282, 4649, 314, 7042, 30});
  // "The sky is blue because of a process called Rayleigh scattering, which occurs when light
  // encounters molecules of air. When sunlight reaches our atmosphere, it encounters molecules of"
  CHECK(greedy(kSkyPrompt, 32) == std::vector<int64_t>{504,  6376,  314,   4461, 975,  282,  253,  980,
                                                        1217, 13739, 43464, 24484, 28,   527,  4149, 645,
                                                        1420, 13242, 6756,  282,  1512, 30,   1550, 8118,
                                                        9732, 653,   5264,  28,   357,  13242, 6756, 282});
}

TEST_CASE("SmolLM2 GGUF: next-token logits equal transformers' to f32 rounding" * doctest::test_suite("real_model")) {
  autograd::NoGradGuard no_grad;
  const auto logits_after = [](const std::vector<int64_t>& prompt) {
    const Tensor ids = Tensor::from_vector(prompt, {1, int64_t(prompt.size())});
    return smollm2()->forward(ids, {.last_position_only = true}).to_vector<double>();
  };
  // The three largest logits after each prompt, from transformers (printed to 4-5 decimals;
  // lamina agrees to about 1e-4 absolute).
  const std::vector<double> capital = logits_after(kCapitalPrompt);
  CHECK(capital[504] == doctest::Approx(27.8588).epsilon(1e-5));
  CHECK(capital[60] == doctest::Approx(26.1295).epsilon(1e-5));
  CHECK(capital[38634] == doctest::Approx(26.1015).epsilon(1e-5));
  const std::vector<double> sky = logits_after(kSkyPrompt);
  CHECK(sky[504] == doctest::Approx(31.93347).epsilon(1e-5));
  CHECK(sky[1348] == doctest::Approx(28.59594).epsilon(1e-5));
  CHECK(sky[788] == doctest::Approx(28.37971).epsilon(1e-5));
}

// The chat cases' expected text is the file's own template (tokenizer.chat_template) read by
// hand; the expected ids are transformers 5.25's apply_chat_template with the tokenizer it
// builds from the same GGUF.
TEST_CASE("SmolLM2 GGUF: its ChatML template, rendered exactly" * doctest::test_suite("real_model")) {
  const tokenizer::ChatOptions options = tokenizer::detect_chat_options(testing::smollm2_gguf_path(), smollm2_tokenizer());
  CHECK(options.format == tokenizer::ChatFormat::chatml);
  CHECK(options.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  const std::vector<tokenizer::Message> two_turns = {
      {"user", "Hi! Name a colour."}, {"assistant", "Blue."}, {"user", "And a number, please?"}};
  CHECK(tokenizer::render_chat_text(two_turns, options) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi! Name a colour.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
        "<|im_start|>user\nAnd a number, please?<|im_end|>\n<|im_start|>assistant\n");
  CHECK(tokenizer::render_chat(smollm2_tokenizer(), two_turns, options).ids ==
        std::vector<int32_t>{1,    9690, 198,  2683, 359,  253,  5356, 5646, 11173, 3365, 3511, 308,  34519, 28,
                             7018, 411,  407,  19712, 8182, 2,   198,  1,    4093,  198,  26843, 17,  10181, 253,
                             7302, 30,   2,    198,  1,    520,  9531, 198,  23390, 30,   2,    198,  1,     4093,
                             198,  3528, 253,  1230, 28,   5361, 47,   2,    198,  1,    520,  9531, 198});

  // An SFT example: its own system message, an answer that starts with a space and ends with a
  // newline; the loss covers exactly the answer's tokens and <|im_end|> (2).
  tokenizer::ChatOptions closed = options;
  closed.add_generation_prompt = false;
  const std::vector<tokenizer::Message> example = {
      {"system", "Answer briefly."}, {"user", "What is 12+30?"}, {"assistant", " It is 42.\n"}};
  const tokenizer::ChatTokens rendered = tokenizer::render_chat(smollm2_tokenizer(), example, closed);
  CHECK(rendered.ids == std::vector<int32_t>{1,   9690, 198, 21350, 13099, 30,  2,   198, 1,   4093, 198, 1780,
                                             314, 216,  33,  34,    27,    35,  32,  47,  2,   198,  1,   520,
                                             9531, 198, 657, 314,   216,   36,  34,  30,  198, 2,    198});
  std::vector<int32_t> learned;
  for (size_t i = 0; i < rendered.ids.size(); ++i)
    if (rendered.assistant_mask[i]) learned.push_back(rendered.ids[i]);
  CHECK(learned == std::vector<int32_t>{657, 314, 216, 36, 34, 30, 198, 2});
}

TEST_CASE("SmolLM2 GGUF: a chat reply in its template is coherent English and ends at <|im_end|>" *
          doctest::test_suite("real_model")) {
  const tokenizer::ChatOptions options = tokenizer::detect_chat_options(testing::smollm2_gguf_path(), smollm2_tokenizer());
  const std::vector<tokenizer::Message> question = {{"user", "What is the capital of France?"}};
  generate::GenerateOptions generation;
  generation.max_new_tokens = 48;
  generation.stop_tokens = widen(tokenizer::stop_token_ids(smollm2_tokenizer(), options.format));
  const generate::GenerateResult result =
      generate::generate(*smollm2(), {widen(tokenizer::render_chat(smollm2_tokenizer(), question, options).ids)}, generation);
  CHECK(result.finish_reasons[0] == "stop");
  const std::vector<int32_t> reply(result.tokens[0].begin(), result.tokens[0].end());
  const std::string text = smollm2_tokenizer().decode(reply);
  INFO("reply: " << text);
  CHECK(text.find("Paris") != std::string::npos);
  CHECK(text.find("<|im") == std::string::npos);  // no control token inside the reply
}
