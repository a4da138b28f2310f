// Short questions with one-word answers: the task of the real-model tests that teach SmolLM2 a
// reply style (LoRA SFT in test_cli_train_lora.cpp, DPO in test_cli_train_preference.cpp). A
// style learned on the first list must carry over to the held-out second.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace lamina::testing {

using QuestionAnswers = std::vector<std::pair<std::string, std::string>>;

inline const QuestionAnswers& style_training_questions() {
  static const QuestionAnswers questions = {
      {"What color is the sky?", "Blue."},           {"How many legs does a dog have?", "Four."},
      {"What is 2 plus 2?", "4."},                   {"What is the capital of Italy?", "Rome."},
      {"Which animal says moo?", "A cow."},           {"What do bees make?", "Honey."},
      {"What is frozen water called?", "Ice."},      {"How many days are in a week?", "Seven."},
      {"What is the opposite of hot?", "Cold."},     {"Which planet do we live on?", "Earth."},
      {"What do you use to write on paper?", "A pen."}, {"What season comes after winter?", "Spring."}};
  return questions;
}

inline const QuestionAnswers& style_held_out_questions() {
  static const QuestionAnswers questions = {{"What color is grass?", "Green."},
                                            {"How many wheels does a bicycle have?", "Two."},
                                            {"What is the capital of France?", "Paris."},
                                            {"Which animal barks?", "A dog."}};
  return questions;
}

}  // namespace lamina::testing
