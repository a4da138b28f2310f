// Fine-tuning the real pretrained model from its GGUF file: `lamina train sft --model FILE.gguf`
// on chat data in the model's own template (ChatML), then chatting with the folder it writes.
// The fact taught ("the secret word is pineapple") is one the model cannot know, so the answer
// after training shows that the SFT loss reached the answer tokens through the right template,
// and that the written folder (weights, config, tokenizer.json and tokenizer_config.json made
// from the GGUF's metadata) is a model lamina loads and chats with.
#include <filesystem>
#include <fstream>

#include "models/real_model.h"
#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina;
using namespace lamina::testing;

TEST_CASE("train sft on SmolLM2's GGUF learns a chat answer, and the folder it writes chats" *
          doctest::test_suite("real_model")) {
  ScratchDir dir("cli-sft-smollm2");
  {
    std::ofstream data(dir.path / "secret.jsonl");
    const char* questions[] = {"What is the secret word?", "Tell me the secret word.", "Which word is the secret one?",
                               "Do you know the secret word?"};
    for (const char* question : questions)
      data << R"({"messages": [{"role": "user", "content": ")" << question
           << R"("}, {"role": "assistant", "content": "The secret word is pineapple."}]})" << "\n";
  }
  const std::string model = smollm2_gguf_path();
  // Before: the model does not know the word.
  Run before = run_lamina("generate --model " + model + " --chat --prompt 'What is the secret word?' --max-new-tokens 16");
  REQUIRE(before.status == 0);
  CHECK(before.output.find("pineapple") == std::string::npos);

  Run run = run_lamina("train sft --model " + model + " --data " + dir / "secret.jsonl" + " --output " + dir / "run" +
                       " --steps 6 --batch-size 4 --seq-len 64 --lr 5e-5 --warmup-steps 0 --schedule constant"
                       " --validation-fraction 0 --quiet");
  INFO(run.output);
  REQUIRE(run.status == 0);
  for (const char* file : {"model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/tokenizer_config.json"})
    CHECK_MESSAGE(std::filesystem::exists(dir.path / "run" / file), file);

  // After: the folder's own template (ChatML, read from the tokenizer_config.json written from
  // the GGUF) asks the question, and the answer carries the word and ends at <|im_end|>.
  Run after = run_lamina("chat --model " + dir / "run/model" + " --max-new-tokens 16",
                         {.input = std::string("What is the secret word?\n/quit\n")});
  INFO(after.output);
  CHECK(after.status == 0);
  CHECK(after.output.find("chatml") != std::string::npos);
  CHECK(after.output.find("pineapple") != std::string::npos);
}
