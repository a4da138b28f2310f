// A small flag parser for the lamina subcommands.
//
// Accepted forms: `--name value`, `--name=value`, and `--name` for boolean flags. Every
// subcommand answers `--help`. Unknown flags, missing values, a flag given twice and stray
// arguments are usage errors: main() prints them with a hint and exits with status 2.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tensor/error.h"

namespace lamina::cli {

// A mistake in how the command was invoked (exit status 2), as opposed to a failure while
// running it (exit status 1). `hint` says what to run to learn the right usage. Both are made
// printable as lamina::Error's message is (a flag's value may hold a NUL or invalid UTF-8).
class UsageError : public std::runtime_error {
 public:
  UsageError(const std::string& message, const std::string& hint)
      : std::runtime_error(printable_message(message)), hint_(printable_message(hint)) {}
  const std::string& hint() const { return hint_; }

 private:
  std::string hint_;
};

// Token ids written as integers separated by spaces, commas, newlines or brackets ("1 2 3",
// "1,2,3", "[1, 2, 3]"); a word that is not an integer of 32 bits (no vocabulary is larger) is
// a UsageError naming `what` ("lamina score: --ids"). An empty text gives no ids.
std::vector<int64_t> parse_token_ids(const std::string& text, const std::string& what);

// All of standard input, byte for byte; a read error is an Error.
std::string read_standard_input();

// The closest of `candidates` to `word` when it is a plausible typo of it, else "".
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// A command made of actions (`lamina eval ppl`, `lamina sparse plan`): each action's name, one
// line about it, and what runs it with the arguments after its name.
struct CommandAction {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>& args);
};
// Runs the action args[0] names. `--help` (or `help`) lists the actions; no action, or an unknown
// one (with the closest name suggested), is a UsageError. `command` is "lamina eval", `about`
// one line about the command.
int run_command_action(const std::string& command, const std::string& about, const std::vector<CommandAction>& actions,
                       const std::vector<std::string>& args);

class FlagParser {
 public:
  // `command` is the full invocation ("lamina bench ops"); `summary` one line about it.
  FlagParser(std::string command, std::string summary);

  void add_switch(const std::string& name, const std::string& help);  // boolean, no value
  void add_option(const std::string& name, const std::string& value_name, const std::string& help,
                  const std::string& default_text = "");
  // An option whose empty value means something (an empty text to encode); every other
  // option's empty value is a usage error, which catches a variable that expanded to nothing.
  void allow_empty_value(const std::string& name);

  // Parses `args` (everything after the subcommand). Returns false when --help was asked
  // for, after printing the help to stdout; throws UsageError on any malformed input.
  bool parse(const std::vector<std::string>& args);

  bool is_set(const std::string& name) const;  // switches: given; options: given a value
  std::optional<std::string> value(const std::string& name) const;
  // The value of an option the command cannot run without; a UsageError when it was not given.
  std::string required(const std::string& name) const;
  // The option's value as an integer in [min, max], or `fallback` when not given.
  int64_t int_value(const std::string& name, int64_t fallback, int64_t min, int64_t max) const;
  // The option's value as an unsigned 64-bit integer (all of its range), or `fallback`.
  uint64_t unsigned_value(const std::string& name, uint64_t fallback) const;
  // The option's value as a number in [min, max], or `fallback` when not given.
  double double_value(const std::string& name, double fallback, double min, double max) const;
  // The option's value as comma-separated items ("a,b,c"), or nothing when not given; an empty
  // item ("a,,b", a trailing comma) is a usage error naming the flag.
  std::vector<std::string> list_value(const std::string& name) const;
  // The option's value as any number the text spells ("nan" and "inf" included), or `fallback`:
  // for callers that check the range themselves, and name it in their error.
  double number_value(const std::string& name, double fallback) const;

  std::string help_text() const;

 private:
  struct Flag {
    std::string name;
    std::string value_name;  // empty for a switch
    std::string help;
    std::string default_text;
    bool empty_value_allowed = false;
  };
  const Flag* find(const std::string& name) const;
  [[noreturn]] void fail(const std::string& message) const;

  std::string command_;
  std::string summary_;
  std::vector<Flag> flags_;
  std::map<std::string, std::string> values_;  // switches hold "true"
};

}  // namespace lamina::cli
