#include "tools/args.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace lamina::cli {

std::vector<int64_t> parse_token_ids(const std::string& text, const std::string& what) {
  const auto is_separator = [](char c) {
    return c == ' ' || c == ',' || c == '\n' || c == '\r' || c == '\t' || c == '[' || c == ']';
  };
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    if (is_separator(text[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < text.size() && !is_separator(text[end])) ++end;
    int32_t id = 0;
    const auto [stop, error] = std::from_chars(text.data() + pos, text.data() + end, id);
    if (error != std::errc() || stop != text.data() + end) {
      throw UsageError(what + ": '" + text.substr(pos, end - pos) + "' is not a token id",
                       "give the ids as integers separated by spaces or commas, like \"1 450 4321\"");
    }
    ids.push_back(id);
    pos = end;
  }
  return ids;
}

std::string read_standard_input() {
  std::string text;
  char buffer[1 << 16];
  size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, stdin)) > 0) text.append(buffer, count);
  LAMINA_CHECK(!std::ferror(stdin), "cannot read standard input");
  return text;
}
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> previous(b.size() + 1), current(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) previous[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    current[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitution});
    }
    std::swap(previous, current);
  }
  return previous[b.size()];
}

}  // namespace

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;  // beyond this it is not a typo
  for (const std::string& candidate : candidates) {
    const size_t distance = edit_distance(word, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

FlagParser::FlagParser(std::string command, std::string summary)
    : command_(std::move(command)), summary_(std::move(summary)) {}

void FlagParser::add_switch(const std::string& name, const std::string& help) {
  flags_.push_back({name, "", help, ""});
}

void FlagParser::add_option(const std::string& name, const std::string& value_name, const std::string& help,
                            const std::string& default_text) {
  flags_.push_back({name, value_name, help, default_text});
}

void FlagParser::allow_empty_value(const std::string& name) {
  for (Flag& flag : flags_)
    if (flag.name == name) flag.empty_value_allowed = true;
}

const FlagParser::Flag* FlagParser::find(const std::string& name) const {
  for (const Flag& flag : flags_)
    if (flag.name == name) return &flag;
  return nullptr;
}

void FlagParser::fail(const std::string& message) const {
  throw UsageError(command_ + ": " + message, "run '" + command_ + " --help' for its flags");
}

bool FlagParser::parse(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help") {
      std::fputs(help_text().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) fail("unexpected argument '" + arg + "'");

    const size_t equals = arg.find('=');
    const std::string name = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
    const Flag* flag = find(name);
    if (flag == nullptr) {
      std::vector<std::string> names;
      for (const Flag& known : flags_) names.push_back(known.name);
      const std::string suggestion = closest_match(name, names);
      fail("unknown flag '--" + name + "'" + (suggestion.empty() ? "" : " (did you mean --" + suggestion + "?)"));
    }
    // The last of two values winning silently would hide a mistake (two --lr in a long command line).
    if (values_.count(name) != 0) fail("flag --" + name + " is given more than once");
    if (flag->value_name.empty()) {
      if (equals != std::string::npos) fail("flag --" + name + " is a switch and takes no value");
      values_[name] = "true";
      continue;
    }
    if (equals != std::string::npos) {
      values_[name] = arg.substr(equals + 1);
    } else if (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {
      values_[name] = args[++i];
    } else {
      fail("flag --" + name + " needs a value: --" + name + " " + flag->value_name);
    }
    if (values_[name].empty() && !flag->empty_value_allowed) fail("flag --" + name + " was given an empty value");
  }
  return true;
}

bool FlagParser::is_set(const std::string& name) const { return values_.count(name) != 0; }

std::string FlagParser::required(const std::string& name) const {
  const std::optional<std::string> given = value(name);
  if (!given) fail("--" + name + " is required");
  return *given;
}

std::optional<std::string> FlagParser::value(const std::string& name) const {
  const auto found = values_.find(name);
  if (found == values_.end()) return std::nullopt;
  return found->second;
}

int64_t FlagParser::int_value(const std::string& name, int64_t fallback, int64_t min, int64_t max) const {
  const std::optional<std::string> text = value(name);
  if (!text) return fallback;
  int64_t parsed = 0;
  const char* end = text->data() + text->size();
  const auto [stop, error] = std::from_chars(text->data(), end, parsed);
  if (error != std::errc() || stop != end) fail("flag --" + name + " needs an integer, got '" + *text + "'");
  if (parsed < min || parsed > max) {
    fail("flag --" + name + " must be in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " +
         *text);
  }
  return parsed;
}

uint64_t FlagParser::unsigned_value(const std::string& name, uint64_t fallback) const {
  const std::optional<std::string> text = value(name);
  if (!text) return fallback;
  uint64_t parsed = 0;
  const char* end = text->data() + text->size();
  const auto [stop, error] = std::from_chars(text->data(), end, parsed);
  if (error != std::errc() || stop != end)
    fail("flag --" + name + " needs an integer in [0, 18446744073709551615], got '" + *text + "'");
  return parsed;
}

double FlagParser::number_value(const std::string& name, double fallback) const {
  const std::optional<std::string> text = value(name);
  if (!text) return fallback;
  double parsed = 0;
  const char* end = text->data() + text->size();
  const auto [stop, error] = std::from_chars(text->data(), end, parsed);
  if (error != std::errc() || stop != end) fail("flag --" + name + " needs a number, got '" + *text + "'");
  return parsed;
}

std::vector<std::string> FlagParser::list_value(const std::string& name) const {
  const std::optional<std::string> text = value(name);
  std::vector<std::string> items;
  if (!text) return items;
  for (size_t start = 0;;) {
    const size_t end = text->find(',', start);
    items.push_back(text->substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (items.back().empty()) fail("flag --" + name + " has an empty item in '" + *text + "'");
    if (end == std::string::npos) return items;
    start = end + 1;
  }
}

double FlagParser::double_value(const std::string& name, double fallback, double min, double max) const {
  const std::optional<std::string> text = value(name);
  if (!text) return fallback;
  const double parsed = number_value(name, fallback);
  if (std::isnan(parsed)) fail("flag --" + name + " needs a number, got '" + *text + "'");
  if (!(parsed >= min && parsed <= max)) {
    std::ostringstream range;
    range << "[" << min << ", " << max << "]";
    fail("flag --" + name + " must be in " + range.str() + ", got " + *text);
  }
  return parsed;
}

std::string FlagParser::help_text() const {
  std::ostringstream out;
  out << "usage: " << command_ << (flags_.empty() ? "" : " [flags]") << "\n\n" << summary_ << "\n\nflags:\n";
  for (const Flag& flag : flags_) {
    std::string left = "--" + flag.name + (flag.value_name.empty() ? "" : " " + flag.value_name);
    out << "  " << left << std::string(left.size() < 22 ? 22 - left.size() : 1, ' ') << flag.help;
    if (!flag.default_text.empty()) out << " (default: " << flag.default_text << ")";
    out << "\n";
  }
  out << "  --help                " << "show this help\n";
  return out.str();
}

int run_command_action(const std::string& command, const std::string& about, const std::vector<CommandAction>& actions,
                       const std::vector<std::string>& args) {
  size_t width = 0;
  for (const CommandAction& action : actions) width = std::max(width, std::strlen(action.name));
  const auto print_help = [&](std::FILE* out) {
    std::fprintf(out, "usage: %s <action> [flags]\n\n%s\n\nactions:\n", command.c_str(), about.c_str());
    for (const CommandAction& action : actions) std::fprintf(out, "  %-*s %s\n", int(width + 2), action.name, action.summary);
    std::fprintf(out, "\nRun '%s <action> --help' for its flags.\n", command.c_str());
  };
  if (args.empty()) {
    print_help(stderr);
    throw UsageError(command + ": no action given", str_cat("try '", command, " ", actions.front().name, " --help'"));
  }
  if (args[0] == "--help" || args[0] == "help") {
    print_help(stdout);
    return 0;
  }
  std::vector<std::string> names;
  for (const CommandAction& action : actions) {
    if (args[0] == action.name) return action.run(std::vector<std::string>(args.begin() + 1, args.end()));
    names.push_back(action.name);
  }
  const std::string suggestion = closest_match(args[0], names);
  throw UsageError(command + ": unknown action '" + args[0] + "'" +
                       (suggestion.empty() ? "" : " (did you mean '" + suggestion + "'?)"),
                   "run '" + command + " --help' to list the actions");
}

}  // namespace lamina::cli
