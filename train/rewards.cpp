// The built-in rewards and the external-command judge (the rules and the protocol are in
// train/rewards.h).
#include "train/rewards.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <functional>
#include <regex>

#include "tensor/error.h"
#include "train/line_command.h"
#include "train/losses/advantages.h"
#include "train/losses/common.h"
#include "train/model_reward.h"

namespace lamina::train {
namespace {

std::string_view trim(std::string_view text) {
  const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return text;
}

std::string lowercase(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return out;
}

// The contents of the last \boxed{...}, its braces balanced (nested ones kept), or nothing when
// there is none or it is never closed.
std::optional<std::string> last_boxed(std::string_view text) {
  static constexpr std::string_view kMarker = "\\boxed";
  size_t at = text.rfind(kMarker);
  while (at != std::string_view::npos) {
    size_t open = at + kMarker.size();
    while (open < text.size() && text[open] == ' ') ++open;
    if (open < text.size() && text[open] == '{') {
      int depth = 0;
      for (size_t i = open; i < text.size(); ++i) {
        if (text[i] == '{') ++depth;
        if (text[i] == '}' && --depth == 0) return std::string(text.substr(open + 1, i - open - 1));
      }
    }
    if (at == 0) break;
    at = text.rfind(kMarker, at - 1);
  }
  return std::nullopt;
}

// "true", "false" or a JSON number's shortest text, or the string itself.
std::string answer_text(const json::Value& value) {
  if (value.is_string()) return value.as_string();
  if (value.is_number()) return value.dump();
  throw Error(str_cat("the \"answer\" field is a ", json::type_name(value.type()), ", not text or a number"));
}

}  // namespace

std::optional<std::string> extract_final_answer(std::string_view text) {
  if (std::optional<std::string> boxed = last_boxed(text)) return std::string(trim(*boxed));
  if (const size_t marker = text.rfind("####"); marker != std::string_view::npos) {
    std::string_view rest = text.substr(marker + 4);
    rest = rest.substr(0, rest.find('\n'));
    if (!trim(rest).empty()) return std::string(trim(rest));
  }
  const std::string lowered = lowercase(text);
  static constexpr std::string_view kPhrase = "the answer is";
  if (const size_t phrase = lowered.rfind(kPhrase); phrase != std::string::npos) {
    std::string_view rest = text.substr(phrase + kPhrase.size());
    if (!rest.empty() && rest.front() == ':') rest.remove_prefix(1);
    rest = rest.substr(0, rest.find('\n'));
    // The sentence ends at a full stop followed by a space or the end ("7. Done"), not at a
    // decimal point ("3.5").
    for (size_t i = 0; i < rest.size(); ++i)
      if (rest[i] == '.' && (i + 1 == rest.size() || std::isspace(static_cast<unsigned char>(rest[i + 1])))) {
        rest = rest.substr(0, i);
        break;
      }
    // "The answer is 8, since ..." or "the answer is 12 apples": the number alone; "2 + 3" stays
    // whole (what follows the number is part of the answer).
    static const std::regex leading_number(
        R"(^\s*([-+]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?%?)(?=$|[,;:!?)]|\s+[A-Za-z]|\s*$))");
    std::match_results<std::string_view::const_iterator> match;
    if (std::regex_search(rest.begin(), rest.end(), match, leading_number)) return match[1].str();
    if (!trim(rest).empty()) return std::string(trim(rest));
  }
  return std::nullopt;
}

std::optional<double> parse_answer_number(std::string_view text) {
  std::string_view body = trim(text);
  if (!body.empty() && body.back() == '.') body.remove_suffix(1);
  if (!body.empty() && body.back() == '%') body.remove_suffix(1);
  std::string digits;
  bool negative = false;
  if (!body.empty() && (body.front() == '-' || body.front() == '+')) {
    negative = body.front() == '-';
    body.remove_prefix(1);
  }
  if (!body.empty() && body.front() == '$') body.remove_prefix(1);
  // Thousands separators: a comma between digits, followed by exactly three digits.
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (c == ',') {
      const auto digit = [&](size_t k) { return k < body.size() && std::isdigit(static_cast<unsigned char>(body[k])); };
      const bool grouped = i > 0 && digit(i - 1) && digit(i + 1) && digit(i + 2) && digit(i + 3) &&
                           (i + 4 == body.size() || body[i + 4] == ',' || body[i + 4] == '.');
      if (!grouped) return std::nullopt;
      continue;
    }
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.') return std::nullopt;
    digits += c;
  }
  if (digits.empty() || digits == ".") return std::nullopt;
  double value = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size() || !std::isfinite(value)) return std::nullopt;
  return negative ? -value : value;
}

bool answer_matches(std::string_view completion, const json::Value& expected) {
  const std::optional<std::string> given = extract_final_answer(completion);
  if (!given) return false;
  const std::string expected_text = answer_text(expected);
  const bool marked = expected_text.find("\\boxed") != std::string::npos ||
                      expected_text.find("####") != std::string::npos ||
                      lowercase(expected_text).find("the answer is") != std::string::npos;
  const std::string wanted = marked ? extract_final_answer(expected_text).value_or(expected_text)
                                    : std::string(trim(expected_text));
  const std::optional<double> a = parse_answer_number(*given), b = parse_answer_number(wanted);
  if (a && b) return std::fabs(*a - *b) <= 1e-9 * std::max({1.0, std::fabs(*a), std::fabs(*b)});
  return trim(*given) == trim(wanted);
}

std::string dot_matches_newline(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {  // an escape: copied as it is
      out += c;
      out += pattern[++i];
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      // A ']' first in the class (or after '^') is a literal, not its end.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    out += c == '.' ? std::string("[\\s\\S]") : std::string(1, c);
  }
  return out;
}

std::vector<RewardTerm> parse_reward_spec(const std::string& spec) {
  std::vector<RewardTerm> terms;
  size_t i = 0;
  const auto fail = [&](const std::string& why) -> void {
    throw Error(str_cat("reward spec '", spec, "': ", why));
  };
  while (i <= spec.size()) {
    RewardTerm term;
    const size_t name_end = spec.find_first_of("=:,", i);
    term.name = std::string(trim(std::string_view(spec).substr(i, (name_end == std::string::npos ? spec.size() : name_end) - i)));
    i = name_end == std::string::npos ? spec.size() : name_end;
    if (term.name.empty()) fail("a term has no name (terms are NAME[=VALUE][:WEIGHT], joined by commas)");
    std::string tail;  // what follows the value up to the term's end: ":WEIGHT" or nothing
    if (i < spec.size() && spec[i] == '=') {
      ++i;
      std::string value;
      if (i < spec.size() && spec[i] == '"') {
        ++i;
        bool closed = false;
        while (i < spec.size()) {
          const char c = spec[i++];
          if (c == '\\' && i < spec.size() && (spec[i] == '"' || spec[i] == '\\')) {
            value += spec[i++];
          } else if (c == '"') {
            closed = true;
            break;
          } else {
            value += c;
          }
        }
        if (!closed) fail(str_cat("the quoted value of '", term.name, "' has no closing quote"));
        const size_t end = std::min(spec.find(',', i), spec.size());
        tail = spec.substr(i, end - i);
        i = end;
      } else {
        const size_t end = std::min(spec.find(',', i), spec.size());
        value = spec.substr(i, end - i);
        i = end;
        // A trailing ":number" is the weight.
        if (const size_t colon = value.rfind(':'); colon != std::string::npos) {
          double weight = 0;
          const std::string_view number = trim(std::string_view(value).substr(colon + 1));
          const auto [ptr, error] = std::from_chars(number.data(), number.data() + number.size(), weight);
          if (error == std::errc() && ptr == number.data() + number.size() && !number.empty()) {
            tail = value.substr(colon);
            value.resize(colon);
          }
        }
      }
      term.value = value;
    } else {
      const size_t end = std::min(spec.find(',', i), spec.size());
      tail = spec.substr(i, end - i);
      i = end;
    }
    const std::string_view weight_text = trim(tail);
    if (!weight_text.empty()) {
      if (weight_text.front() != ':') fail(str_cat("unexpected '", weight_text, "' after term '", term.name, "'"));
      const std::string_view number = trim(weight_text.substr(1));
      const auto [ptr, error] = std::from_chars(number.data(), number.data() + number.size(), term.weight);
      if (number.empty() || error != std::errc() || ptr != number.data() + number.size() || !std::isfinite(term.weight))
        fail(str_cat("the weight of '", term.name, "' is not a number: '", number, "'"));
    }
    terms.push_back(std::move(term));
    if (i >= spec.size()) break;
    ++i;  // the comma
    if (i == spec.size()) fail("it ends with a comma");
  }
  return terms;
}

namespace {

// A rule that scores one completion at a time.
class RuleReward : public Reward {
 public:
  RuleReward(std::string spec, std::function<double(const RewardInput&)> rule) : spec_(std::move(spec)), rule_(std::move(rule)) {}
  RewardScores score(const std::vector<RewardInput>& batch) override {
    RewardScores scores;
    for (const RewardInput& input : batch) scores.total.push_back(rule_(input));
    return scores;
  }
  std::string spec() const override { return spec_; }

 private:
  std::string spec_;
  std::function<double(const RewardInput&)> rule_;
};

// ---- the external command (train/line_command.h runs it)

// A JSON answer line's reward: a number, or an object's "reward" (an Error says what is wrong;
// LineCommand adds which command and line).
double reward_of_line(const std::string& line) {
  json::Value value;
  try {
    value = json::parse(line, "reward command output");
  } catch (const Error& error) {
    throw Error(str_cat("is not JSON (", error.what(), ")"));
  }
  const json::Value* reward = &value;
  if (value.is_object()) {
    reward = value.find("reward");
    if (reward == nullptr) throw Error("has no \"reward\" key");
  }
  if (!reward->is_number()) throw Error("is not a number or {\"reward\": number}");
  if (!std::isfinite(reward->as_double())) throw Error("is not a finite number");
  return reward->as_double();
}

std::string judge_input(const std::vector<RewardInput>& batch) {
  std::string input;
  for (const RewardInput& item : batch) {
    json::Value line = json::Object{};
    line.set("prompt", item.prompt);
    line.set("completion", valid_utf8_text(item.completion));
    for (const auto& [key, value] : item.fields.as_object())
      if (key != "prompt" && key != "completion") line.set(key, value);
    input += line.dump() + "\n";
  }
  return input;
}

// command=CMD (started for each batch, which it reads to the end before it must exit) and
// server=CMD (started once, at the first batch, and kept for the run; answers each line as it
// reads it, its output flushed line by line).
class CommandReward : public Reward {
 public:
  CommandReward(std::string command, bool server) : process_(std::move(command), server) {}
  RewardScores score(const std::vector<RewardInput>& batch) override {
    RewardScores scores;
    process_.exchange(judge_input(batch), batch.size(),
                      [&](const std::string& line, int64_t) { scores.total.push_back(reward_of_line(line)); });
    return scores;
  }
  std::string spec() const override {
    return str_cat(process_.persistent() ? "server=" : "command=", json::quote(process_.command()));
  }

 private:
  LineCommand process_;
};

// ---- a weighted sum

class WeightedReward : public Reward {
 public:
  struct Term {
    std::string name;
    double weight;
    std::unique_ptr<Reward> reward;
  };
  WeightedReward(std::string spec, std::vector<Term> terms) : spec_(std::move(spec)), terms_(std::move(terms)) {}
  RewardScores score(const std::vector<RewardInput>& batch) override {
    RewardScores scores;
    scores.total.assign(batch.size(), 0.0);
    for (Term& term : terms_) {
      std::vector<double> values = term.reward->score(batch).total;
      for (size_t i = 0; i < batch.size(); ++i) scores.total[i] += term.weight * values[i];
      scores.parts.emplace_back(term.name, std::move(values));
    }
    return scores;
  }
  std::string spec() const override { return spec_; }

 private:
  std::string spec_;
  std::vector<Term> terms_;
};

int64_t positive_count(const RewardTerm& term) {
  LAMINA_CHECK(term.value.has_value(), "reward '", term.name, "' needs a token count: ", term.name, "=N");
  int64_t value = 0;
  const std::string& text = *term.value;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  LAMINA_CHECK(error == std::errc() && end == text.data() + text.size() && value > 0, "reward '", term.name,
               "': the token count must be a positive integer, not '", text, "'");
  return value;
}

std::unique_ptr<Reward> make_term(const RewardTerm& term) {
  const std::string spec = term.value ? str_cat(term.name, "=", *term.value) : term.name;
  if (term.name == "exact_match") {
    LAMINA_CHECK(!term.value, "reward 'exact_match' takes no value (it reads each line's \"answer\")");
    return std::make_unique<RuleReward>(spec, [](const RewardInput& input) {
      const json::Value* answer = input.fields.is_object() ? input.fields.find("answer") : nullptr;
      LAMINA_CHECK(answer != nullptr, "reward 'exact_match': the prompt line has no \"answer\" field to match");
      return answer_matches(input.completion, *answer) ? 1.0 : 0.0;
    });
  }
  if (term.name == "format") {
    const std::string pattern = term.value.value_or("<think>.*</think>");
    std::shared_ptr<const std::regex> regex;
    try {
      regex = std::make_shared<const std::regex>(dot_matches_newline(pattern), std::regex::ECMAScript);
    } catch (const std::regex_error& error) {
      throw Error(str_cat("reward 'format': the regex '", pattern, "' does not compile: ", error.what()));
    }
    return std::make_unique<RuleReward>(str_cat("format=", pattern), [regex](const RewardInput& input) {
      return std::regex_search(input.completion, *regex) ? 1.0 : 0.0;
    });
  }
  if (term.name == "length") {
    const double target = double(positive_count(term));
    return std::make_unique<RuleReward>(spec, [target](const RewardInput& input) {
      return 0.0 - std::fabs(double(input.completion_tokens) - target) / target;  // +0 at the target, not -0
    });
  }
  if (term.name == "max_length") {
    const double limit = double(positive_count(term));
    return std::make_unique<RuleReward>(spec, [limit](const RewardInput& input) {
      return input.completion_tokens <= limit ? 0.0 : -(double(input.completion_tokens) - limit) / limit;
    });
  }
  if (term.name == "command" || term.name == "server") {
    LAMINA_CHECK(term.value && !term.value->empty(), "reward '", term.name, "' needs the command: ", term.name,
                 "=\"CMD ARGS\"");
    return std::make_unique<CommandReward>(*term.value, term.name == "server");
  }
  if (term.name == "reward_model") {
    LAMINA_CHECK(term.value && !term.value->empty(), "reward 'reward_model' needs the reward model's folder: "
                 "reward_model=DIR or reward_model=\"DIR|adapter=ADAPTER_DIR\"");
    return make_model_reward(*term.value);
  }
  throw Error(str_cat("unknown reward '", term.name, "' (exact_match, format[=REGEX], length=N, max_length=N, "
                      "command=CMD, server=CMD, reward_model=DIR; weighted sums like exact_match:1,format:0.2)"));
}

}  // namespace

std::string valid_utf8_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const size_t length = error_text::utf8_sequence_length(text);
    if (length == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD, as a decoder with errors="replace" writes
      text.remove_prefix(1);
    } else {
      out.append(text.substr(0, length));
      text.remove_prefix(length);
    }
  }
  return out;
}

std::unique_ptr<Reward> make_reward(const std::string& spec) {
  std::vector<RewardTerm> terms = parse_reward_spec(spec);
  if (terms.size() == 1 && terms[0].weight == 1.0) return make_term(terms[0]);
  std::vector<WeightedReward::Term> parts;
  std::string canonical;
  for (const RewardTerm& term : terms) {
    std::unique_ptr<Reward> reward = make_term(term);
    std::string name = term.name;
    int same = 0;
    for (const WeightedReward::Term& part : parts)
      if (part.name == name || part.name.rfind(name + "_", 0) == 0) ++same;
    if (same > 0) name += str_cat("_", same + 1);
    canonical += str_cat(canonical.empty() ? "" : ",", reward->spec(), ":", term.weight);
    parts.push_back({name, term.weight, std::move(reward)});
  }
  return std::make_unique<WeightedReward>(canonical, std::move(parts));
}

json::Value validation_reward_metrics(const RewardScores& scores, const std::vector<double>& lengths) {
  json::Value out = json::Object{};
  out.set("val_reward", mean_of(scores.total));
  out.set("val_reward_std", sample_std(scores.total));
  for (const auto& [name, values] : scores.parts) out.set(str_cat("val_rewards/", name, "/mean"), mean_of(values));
  out.set("val_completions/mean_length", mean_of(lengths));
  return out;
}

}  // namespace lamina::train
