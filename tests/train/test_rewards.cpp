// The rewards of the online loops (train/rewards.h): final answers (\boxed{}, GSM8K's ####, "the
// answer is"), numbers written several ways, the format regex, length terms, weighted sums and
// their spec syntax, and the external command judge: what it is sent, what it must answer, and
// the errors for a judge that fails, answers badly or answers the wrong number of lines.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <string>

#include "scratch_dir.h"
#include "tensor/error.h"
#include "train/rewards.h"

using namespace lamina;
using namespace lamina::train;

namespace {

RewardInput input(std::string completion, json::Value answer = json::Value(), int64_t tokens = 0) {
  RewardInput in;
  in.prompt = "What is 6 x 7?";
  in.completion = std::move(completion);
  in.completion_tokens = tokens;
  if (!answer.is_null()) in.fields.set("answer", std::move(answer));
  return in;
}

std::vector<double> scores(const std::string& spec, const std::vector<RewardInput>& batch) {
  return make_reward(spec)->score(batch).total;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

}  // namespace

TEST_CASE("rewards: the final answer is the last \\boxed{}, else GSM8K's ####, else 'the answer is'") {
  CHECK(extract_final_answer("first \\boxed{1} then \\boxed{\\frac{3}{4}} done") == "\\frac{3}{4}");
  CHECK(extract_final_answer("\\boxed{2} and an unclosed \\boxed{3") == "2");
  CHECK(extract_final_answer("work...\n#### 1,234\nextra") == "1,234");
  CHECK(extract_final_answer("So The Answer Is: 3.5. Done") == "3.5");
  CHECK(extract_final_answer("the answer is 12\nmore") == "12");
  CHECK(extract_final_answer("The answer is 8, and the next one is 19.") == "8");
  CHECK(extract_final_answer("the answer is $1,200 dollars") == "$1,200");
  CHECK(extract_final_answer("The answer is 2 + 3, or N.") == "2 + 3, or N");
  CHECK(extract_final_answer("#### 5 but \\boxed{6}") == "6");  // boxed wins
  CHECK_FALSE(extract_final_answer("no answer here").has_value());
  CHECK_FALSE(extract_final_answer("####   \n").has_value());
}

TEST_CASE("rewards: numbers compare as numbers however they are written") {
  CHECK(parse_answer_number("1,000") == 1000.0);
  CHECK(parse_answer_number("1000.0") == 1000.0);
  CHECK(parse_answer_number("$1,234,567") == 1234567.0);
  CHECK(parse_answer_number("-3.5") == -3.5);
  CHECK(parse_answer_number("50%") == 50.0);
  CHECK(parse_answer_number("7.") == 7.0);
  CHECK_FALSE(parse_answer_number("1,00").has_value());
  CHECK_FALSE(parse_answer_number("12a").has_value());
  CHECK_FALSE(parse_answer_number("1.2.3").has_value());
  CHECK_FALSE(parse_answer_number("").has_value());

  CHECK(answer_matches("so \\boxed{1,000}", json::Value("1000")));
  CHECK(answer_matches("#### 1000.0", json::Value(int64_t(1000))));
  CHECK(answer_matches("the answer is 72.", json::Value("She sold 48 + 24 = 72 clips.\n#### 72")));
  CHECK_FALSE(answer_matches("#### 71", json::Value("72")));
  CHECK_FALSE(answer_matches("72", json::Value("72")));  // no final answer marked
  CHECK(answer_matches("\\boxed{x^2}", json::Value(" x^2 ")));
  CHECK_FALSE(answer_matches("\\boxed{x^3}", json::Value("x^2")));
}

TEST_CASE("rewards: exact_match, format, length and max_length score each completion") {
  const std::vector<RewardInput> batch = {input("\\boxed{42}", "42", 4), input("#### 41", "42", 0),
                                          input("<think>a\nb</think> #### 42", "42", 8), input("", "42", 6)};
  CHECK(scores("exact_match", batch) == std::vector<double>{1, 0, 1, 0});
  CHECK(scores("format", batch) == std::vector<double>{0, 0, 1, 0});  // '.' spans the newline
  CHECK(scores("format=^#### \\d+$", batch) == std::vector<double>{0, 1, 0, 0});
  CHECK(scores("length=4", batch) == std::vector<double>{0, -1, -1, -0.5});
  CHECK_FALSE(std::signbit(scores("length=4", batch)[0]));  // written as 0, not -0
  CHECK(scores("max_length=4", batch) == std::vector<double>{0, 0, -1, -0.5});
  // A line without "answer" cannot be judged by exact_match.
  CHECK(error_of([&] { scores("exact_match", {input("\\boxed{1}")}); }).find("no \"answer\"") != std::string::npos);
}

TEST_CASE("rewards: a weighted sum adds its terms and reports each one") {
  const std::unique_ptr<Reward> reward = make_reward("exact_match:1,format:0.25");
  const RewardScores result = reward->score({input("<think>x</think>\\boxed{42}", "42"), input("<think></think>", "42"),
                                             input("\\boxed{42}", "42")});
  CHECK(result.total == std::vector<double>{1.25, 0.25, 1.0});
  REQUIRE(result.parts.size() == 2);
  CHECK(result.parts[0].first == "exact_match");
  CHECK(result.parts[0].second == std::vector<double>{1, 0, 1});
  CHECK(result.parts[1].first == "format");
  CHECK(result.parts[1].second == std::vector<double>{1, 1, 0});
  // The same term twice gets a numbered name.
  const RewardScores twice = make_reward("format,format=b")->score({input("ab")});
  CHECK(twice.parts[1].first == "format_2");
}

TEST_CASE("rewards: spec syntax (quoted values, weights) and its errors") {
  std::vector<RewardTerm> terms = parse_reward_spec("format=\"a{1,3}:x\":0.5, length=10:2,exact_match");
  REQUIRE(terms.size() == 3);
  CHECK(terms[0].name == "format");
  CHECK(terms[0].value == "a{1,3}:x");
  CHECK(terms[0].weight == 0.5);
  CHECK(terms[1].value == "10");
  CHECK(terms[1].weight == 2.0);
  CHECK(terms[2].name == "exact_match");
  CHECK_FALSE(terms[2].value.has_value());
  terms = parse_reward_spec("command=\"echo \\\"hi\\\"\"");
  CHECK(terms[0].value == "echo \"hi\"");
  CHECK(dot_matches_newline("a.b[.]\\.[^].]") == "a[\\s\\S]b[.]\\.[^].]");

  CHECK(error_of([] { make_reward("bogus"); }).find("unknown reward 'bogus'") != std::string::npos);
  CHECK(error_of([] { make_reward("exact_match:heavy"); }).find("weight of 'exact_match'") != std::string::npos);
  CHECK(error_of([] { make_reward("format=\"abc"); }).find("no closing quote") != std::string::npos);
  CHECK(error_of([] { make_reward("length=0"); }).find("positive integer") != std::string::npos);
  CHECK(error_of([] { make_reward("format=(unclosed"); }).find("does not compile") != std::string::npos);
  CHECK(error_of([] { make_reward("exact_match,"); }).find("ends with a comma") != std::string::npos);
}

TEST_CASE("rewards: the external command gets one JSON line per completion and answers one line each") {
  testing::ScratchDir dir("rewards-command");
  const std::string seen = dir / "seen.jsonl";
  // Rewards 1, 2, 3 by position (an object, a bare number, an object), and a copy of its input.
  const std::string judge = dir / "judge.sh";
  std::ofstream(judge) << "i=0\nwhile IFS= read -r line; do\n  i=$((i+1))\n  printf '%s\\n' \"$line\" >> '" << seen
                       << "'\n  if [ $i = 2 ]; then echo \"$i\"; else echo \"{\\\"reward\\\": $i, \\\"why\\\": \\\"x\\\"}\"; fi\ndone\n";
  const std::unique_ptr<Reward> reward = make_reward("command=\"sh " + judge + "\"");
  std::vector<RewardInput> batch = {input("\\boxed{42}", "42"), input("two", "7"), input("bad \xff byte", "8")};
  batch[1].prompt = json::Array{json::Value(json::Object{{"role", "user"}, {"content", "hi"}})};
  CHECK(reward->score(batch).total == std::vector<double>{1, 2, 3});
  std::ifstream in(seen);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].dump() == R"({"prompt":"What is 6 x 7?","completion":"\\boxed{42}","answer":"42"})");
  CHECK(lines[1].at("prompt").dump() == R"([{"role":"user","content":"hi"}])");
  CHECK(lines[2].at("completion").as_string() == "bad \xEF\xBF\xBD byte");  // invalid UTF-8 replaced
  // Run once per batch: a second batch starts it again.
  CHECK(reward->score({input("again", "1")}).total == std::vector<double>{1});
}

TEST_CASE("rewards: a failing, silent, chatty or garbled judge is an error naming the command and the line") {
  const std::vector<RewardInput> batch = {input("a", "1"), input("b", "2"), input("c", "3")};
  const auto failure = [&](const std::string& command) {
    return error_of([&] { make_reward("command=\"" + command + "\"")->score(batch); });
  };
  std::string error = failure("cat > /dev/null; exit 3");
  CHECK(error.find("reward command 'cat > /dev/null; exit 3' exited with status 3") != std::string::npos);
  error = failure("lamina-no-such-judge");
  CHECK(error.find("status 127 (the shell could not run it)") != std::string::npos);
  error = failure("read -r first; echo 1");
  CHECK(error.find("wrote 1 lines for the 3 completions") != std::string::npos);
  error = failure("while read -r l; do echo 1; echo 2; done");
  CHECK(error.find("line 4 is beyond the 3 completions") != std::string::npos);
  error = failure("while read -r l; do echo nope; done");
  CHECK(error.find("output line 1 is not JSON") != std::string::npos);
  error = failure("while read -r l; do echo '{\\\"score\\\": 1}'; done");
  CHECK(error.find("output line 1 has no \"reward\" key") != std::string::npos);
  error = failure("while read -r l; do echo '\\\"high\\\"'; done");
  CHECK(error.find("output line 1 is not a number") != std::string::npos);
  error = failure("while read -r l; do echo 1e999; done");
  CHECK(error.find("output line 1 is not JSON") != std::string::npos);  // beyond a double's range
  CHECK(error.find("out of the range") != std::string::npos);
  error = failure("kill -9 $$");
  CHECK(error.find("was killed by signal 9") != std::string::npos);
}

TEST_CASE("rewards: a server judge is started once and answers each batch's lines as it reads them") {
  testing::ScratchDir dir("rewards-server");
  // Rewards count the lines it has read since it started: a second batch continues the count.
  const std::string judge = dir / "judge.sh";
  std::ofstream(judge) << "i=0\nwhile IFS= read -r line; do\n  i=$((i+1))\n  echo \"{\\\"reward\\\": $i}\"\ndone\n";
  const std::unique_ptr<Reward> reward = make_reward("server=\"sh " + judge + "\"");
  CHECK(reward->spec() == "server=\"sh " + judge + "\"");
  CHECK(reward->score({input("a", "1"), input("b", "1")}).total == std::vector<double>{1, 2});
  CHECK(reward->score({input("c", "1"), input("d", "1"), input("e", "1")}).total == std::vector<double>{3, 4, 5});

  const std::vector<RewardInput> batch = {input("a", "1"), input("b", "2")};
  // One that exits after its first answer.
  std::string error = error_of([&] { make_reward("server=\"read -r l; echo 1\"")->score(batch); });
  CHECK(error.find("reward command 'read -r l; echo 1' exited after answering 1 lines (1 of the 2") !=
        std::string::npos);
  error = error_of([&] { make_reward("server=\"read -r l; exit 5\"")->score(batch); });
  CHECK(error.find("exited with status 5 after answering 0 lines") != std::string::npos);
  // One that writes three lines (in one write) for one: noticed at the next batch.
  const std::unique_ptr<Reward> chatty = make_reward("server=\"while read -r l; do printf '1\\n2\\n3\\n'; done\"");
  CHECK(chatty->score({input("a", "1")}).total == std::vector<double>{1});
  error = error_of([&] { chatty->score({input("b", "1")}); });
  CHECK(error.find("wrote more than one line per completion: line 2 came after the 1 completions") != std::string::npos);
}
