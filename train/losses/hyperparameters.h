// Typed, validated hyperparameters of the preference losses.
//
// Every loss declares its hyperparameters as ParamSpecs (name, type, default, where that default
// comes from, valid range or choices, one line of help). Where a loss carries TRL's name its
// defaults are TRL's config defaults unless preference-losses.md fixes another; `source` says
// which, and `lamina preference-loss --list` prints it. A Hyperparameters object
// starts at those defaults and accepts overrides by name, from C++ values or from text (the
// CLI); an unknown name or a bad value throws a lamina::Error naming the loss, the
// hyperparameter and what it accepts.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace lamina::train {

// interval: a pair "low,high" with low <= high (TRL's tuple-valued options such as RLOO's
// reward_clip_range); always optional.
enum class ParamType { real, integer, flag, choice, interval };

// A closed or open interval of reals (also used for integers).
struct Range {
  double low = -1e308, high = 1e308;
  bool low_open = false, high_open = false;
  bool contains(double value) const;
  std::string describe() const;  // "[0, 0.5)", "(0, inf)"
};

Range at_least(double low);          // [low, inf)
Range above(double low);             // (low, inf)
Range between(double low, double high, bool low_open = false, bool high_open = false);
Range any_real();

struct ParamSpec {
  std::string name;
  ParamType type = ParamType::real;
  std::string help;
  // Defaults: `number` for real/integer/flag (flag: 0 or 1), `text` for choice. An optional
  // parameter (`unset_means` non-empty) has no default value; the text says what unset means.
  double number = 0;
  std::string text;
  std::string unset_means;
  Range range;
  std::vector<std::string> choices;
  // Where the default comes from: "TRL 1.16 GRPOConfig", "spec §2.2", "lamina: ..." (printed by --list).
  std::string source;

  bool optional() const { return !unset_means.empty(); }
  std::string type_name() const;      // "real", "integer", "flag", "one of a|b", "interval low,high"
  std::string default_text() const;   // "0.1", "true", "average", "unset (= epsilon)"
};

ParamSpec real_param(std::string name, double default_value, Range range, std::string help);
ParamSpec optional_real_param(std::string name, Range range, std::string unset_means, std::string help);
ParamSpec integer_param(std::string name, int64_t default_value, Range range, std::string help);
ParamSpec optional_integer_param(std::string name, Range range, std::string unset_means, std::string help);
ParamSpec flag_param(std::string name, bool default_value, std::string help);
ParamSpec choice_param(std::string name, std::string default_value, std::vector<std::string> choices,
                       std::string help);
ParamSpec optional_interval_param(std::string name, std::string unset_means, std::string help);

// The same spec(s) with `source` recorded as the origin of every default that has none yet.
ParamSpec sourced(ParamSpec spec, std::string source);
std::vector<ParamSpec> all_sourced(std::vector<ParamSpec> specs, const std::string& source);

// Copies of `specs` with some defaults replaced: how one loss function serves several
// registry entries (dapo is grpo with other defaults). Values are given as text; `source` is
// recorded as the origin of the replaced defaults.
std::vector<ParamSpec> with_defaults(std::vector<ParamSpec> specs,
                                     const std::vector<std::pair<std::string, std::string>>& defaults,
                                     const std::string& source);

class Hyperparameters {
 public:
  // `owner` names the loss in error messages.
  Hyperparameters(std::string owner, std::vector<ParamSpec> specs);

  // Overrides; throw on an unknown name, a wrong type or a value out of range.
  void set(std::string_view name, double value);
  void set(std::string_view name, std::string_view text);  // parsed according to the type ("low,high" for intervals)
  void set_flag(std::string_view name, bool value);

  double real(std::string_view name) const;
  int64_t integer(std::string_view name) const;
  bool flag(std::string_view name) const;
  const std::string& choice(std::string_view name) const;
  std::pair<double, double> interval(std::string_view name) const;  // {low, high}
  bool is_set(std::string_view name) const;  // false only for an optional parameter left unset
  bool has(std::string_view name) const;     // whether the loss declares this parameter
  bool is_default(std::string_view name) const;

  const std::string& owner() const { return owner_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  std::string value_text(std::string_view name) const;  // the current value as text

 private:
  using Value = std::variant<std::monostate, double, std::string>;  // monostate: unset optional
  size_t index_of(std::string_view name) const;                     // throws on unknown names
  void check_type(size_t index, ParamType type, std::string_view getter) const;
  [[noreturn]] void fail(size_t index, const std::string& what) const;

  std::string owner_;
  std::vector<ParamSpec> specs_;
  std::vector<Value> values_;
  std::vector<bool> overridden_;
};

// Shortest text that reads back as the same double ("0.1", "1e-05", "20480").
std::string format_number(double value);

}  // namespace lamina::train
