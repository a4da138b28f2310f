#include "train/losses/hyperparameters.h"

#include <charconv>
#include <cmath>
#include <limits>

#include "tensor/error.h"

namespace lamina::train {
namespace {

constexpr double kHuge = 1e308;

std::string join(const std::vector<std::string>& words, const char* separator) {
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) out += (i ? separator : "") + words[i];
  return out;
}

std::optional<double> parse_number(std::string_view text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (error != std::errc() || stop != end || !std::isfinite(value)) return std::nullopt;
  return value;
}

}  // namespace

bool Range::contains(double value) const {
  if (!std::isfinite(value)) return false;
  const bool above_low = low_open ? value > low : value >= low;
  const bool below_high = high_open ? value < high : value <= high;
  return above_low && below_high;
}

std::string Range::describe() const {
  std::string text = low <= -kHuge ? std::string("(-inf") : std::string(low_open ? "(" : "[").append(format_number(low));
  text.append(", ");
  text.append(high >= kHuge ? std::string("inf)") : format_number(high).append(high_open ? ")" : "]"));
  return text;
}

Range at_least(double low) { return Range{low, kHuge, false, true}; }
Range above(double low) { return Range{low, kHuge, true, true}; }
Range between(double low, double high, bool low_open, bool high_open) { return Range{low, high, low_open, high_open}; }
Range any_real() { return Range{-kHuge, kHuge, true, true}; }

std::string format_number(double value) {
  char buffer[32];
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return error == std::errc() ? std::string(buffer, end) : std::to_string(value);
}

std::string ParamSpec::type_name() const {
  switch (type) {
    case ParamType::real: return "real";
    case ParamType::integer: return "integer";
    case ParamType::flag: return "flag";
    case ParamType::choice: return "one of " + join(choices, "|");
    case ParamType::interval: return "interval low,high";
  }
  return "?";
}

std::string ParamSpec::default_text() const {
  if (optional()) return "unset (" + unset_means + ")";
  switch (type) {
    case ParamType::flag: return number != 0 ? "true" : "false";
    case ParamType::choice:
    case ParamType::interval: return text;
    default: return format_number(number);
  }
}

ParamSpec real_param(std::string name, double default_value, Range range, std::string help) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = ParamType::real;
  spec.help = std::move(help);
  spec.number = default_value;
  spec.range = range;
  return spec;
}

ParamSpec optional_real_param(std::string name, Range range, std::string unset_means, std::string help) {
  ParamSpec spec = real_param(std::move(name), 0, range, std::move(help));
  spec.unset_means = std::move(unset_means);
  return spec;
}

ParamSpec integer_param(std::string name, int64_t default_value, Range range, std::string help) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = ParamType::integer;
  spec.help = std::move(help);
  spec.number = double(default_value);
  spec.range = range;
  return spec;
}

ParamSpec optional_integer_param(std::string name, Range range, std::string unset_means, std::string help) {
  ParamSpec spec = integer_param(std::move(name), 0, range, std::move(help));
  spec.unset_means = std::move(unset_means);
  return spec;
}

ParamSpec flag_param(std::string name, bool default_value, std::string help) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = ParamType::flag;
  spec.help = std::move(help);
  spec.number = default_value ? 1 : 0;
  return spec;
}

ParamSpec choice_param(std::string name, std::string default_value, std::vector<std::string> choices,
                       std::string help) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = ParamType::choice;
  spec.help = std::move(help);
  spec.text = std::move(default_value);
  spec.choices = std::move(choices);
  return spec;
}

ParamSpec optional_interval_param(std::string name, std::string unset_means, std::string help) {
  ParamSpec spec;
  spec.name = std::move(name);
  spec.type = ParamType::interval;
  spec.help = std::move(help);
  spec.unset_means = std::move(unset_means);
  return spec;
}

ParamSpec sourced(ParamSpec spec, std::string source) {
  if (spec.source.empty()) spec.source = std::move(source);
  return spec;
}

std::vector<ParamSpec> all_sourced(std::vector<ParamSpec> specs, const std::string& source) {
  for (ParamSpec& spec : specs) spec = sourced(std::move(spec), source);
  return specs;
}

std::vector<ParamSpec> with_defaults(std::vector<ParamSpec> specs,
                                     const std::vector<std::pair<std::string, std::string>>& defaults,
                                     const std::string& source) {
  // Validate each new default through a Hyperparameters object, then copy it into the spec.
  Hyperparameters check("defaults", specs);
  for (const auto& [name, text] : defaults) {
    check.set(name, text);
    for (ParamSpec& spec : specs) {
      if (spec.name != name) continue;
      spec.unset_means.clear();
      spec.source = source;
      if (spec.type == ParamType::choice || spec.type == ParamType::interval) {
        spec.text = check.value_text(name);
      } else if (spec.type == ParamType::flag) {
        spec.number = check.flag(name) ? 1 : 0;
      } else {
        spec.number = spec.type == ParamType::integer ? double(check.integer(name)) : check.real(name);
      }
    }
  }
  return specs;
}

Hyperparameters::Hyperparameters(std::string owner, std::vector<ParamSpec> specs)
    : owner_(std::move(owner)), specs_(std::move(specs)), overridden_(specs_.size(), false) {
  for (const ParamSpec& spec : specs_) {
    if (spec.optional()) {
      values_.emplace_back(std::monostate{});
    } else if (spec.type == ParamType::choice || spec.type == ParamType::interval) {
      values_.emplace_back(spec.text);
    } else {
      values_.emplace_back(spec.number);
    }
  }
}

void Hyperparameters::fail(size_t index, const std::string& what) const {
  const ParamSpec& spec = specs_[index];
  throw Error(str_cat("loss '", owner_, "': hyperparameter ", spec.name, " ", what, " (", spec.help, ")"));
}

size_t Hyperparameters::index_of(std::string_view name) const {
  for (size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) return i;
  std::vector<std::string> names;
  for (const ParamSpec& spec : specs_) names.push_back(spec.name);
  throw Error(str_cat("loss '", owner_, "' has no hyperparameter '", name, "'; its hyperparameters are: ",
                      names.empty() ? std::string("(none)") : join(names, ", ")));
}

void Hyperparameters::check_type(size_t index, ParamType type, std::string_view getter) const {
  LAMINA_CHECK(specs_[index].type == type, "internal error: loss '", owner_, "' read hyperparameter ",
               specs_[index].name, " (", specs_[index].type_name(), ") with ", getter);
  LAMINA_CHECK(!std::holds_alternative<std::monostate>(values_[index]), "internal error: loss '", owner_,
               "' read the unset optional hyperparameter ", specs_[index].name, " without checking is_set");
}

void Hyperparameters::set(std::string_view name, double value) {
  const size_t index = index_of(name);
  const ParamSpec& spec = specs_[index];
  if (spec.type == ParamType::choice || spec.type == ParamType::interval)
    fail(index, str_cat("is ", spec.type_name(), ", not a single number"));
  if (spec.type == ParamType::flag) {
    if (value != 0 && value != 1) fail(index, str_cat("is a flag (true/false or 1/0), got ", format_number(value)));
  } else {
    if (spec.type == ParamType::integer && (value != std::floor(value) || std::abs(value) > 9007199254740992.0))
      fail(index, str_cat("must be an integer of magnitude at most 2^53, got ", format_number(value)));
    if (!spec.range.contains(value))
      fail(index, str_cat("must be in ", spec.range.describe(), ", got ", format_number(value)));
  }
  values_[index] = value;
  overridden_[index] = true;
}

void Hyperparameters::set(std::string_view name, std::string_view text) {
  const size_t index = index_of(name);
  const ParamSpec& spec = specs_[index];
  if (spec.type == ParamType::choice) {
    for (const std::string& choice : spec.choices) {
      if (choice != text) continue;
      values_[index] = choice;
      overridden_[index] = true;
      return;
    }
    fail(index, str_cat("must be ", spec.type_name(), ", got '", text, "'"));
  }
  if (spec.type == ParamType::interval) {
    // "low,high" (brackets and spaces allowed, as TRL prints its tuples: "(-1.0, 1.0)").
    std::string cleaned;
    for (char c : text)
      if (c != ' ' && c != '(' && c != ')' && c != '[' && c != ']') cleaned += c;
    const size_t comma = cleaned.find(',');
    const std::optional<double> low = comma == std::string::npos ? std::nullopt : parse_number(cleaned.substr(0, comma));
    const std::optional<double> high = comma == std::string::npos ? std::nullopt : parse_number(cleaned.substr(comma + 1));
    if (!low || !high) fail(index, str_cat("needs two finite numbers low,high, got '", text, "'"));
    if (*low > *high) fail(index, str_cat("needs low <= high, got '", text, "'"));
    values_[index] = format_number(*low) + "," + format_number(*high);
    overridden_[index] = true;
    return;
  }
  if (spec.type == ParamType::flag) {
    if (text == "true" || text == "1") return set_flag(name, true);
    if (text == "false" || text == "0") return set_flag(name, false);
    fail(index, str_cat("is a flag: true/false or 1/0, got '", text, "'"));
  }
  const std::optional<double> value = parse_number(text);
  if (!value) fail(index, str_cat("needs a finite number, got '", text, "'"));
  set(name, *value);
}

void Hyperparameters::set_flag(std::string_view name, bool value) {
  const size_t index = index_of(name);
  if (specs_[index].type != ParamType::flag) fail(index, str_cat("is ", specs_[index].type_name(), ", not a flag"));
  values_[index] = value ? 1.0 : 0.0;
  overridden_[index] = true;
}

double Hyperparameters::real(std::string_view name) const {
  const size_t index = index_of(name);
  check_type(index, ParamType::real, "real()");
  return std::get<double>(values_[index]);
}

int64_t Hyperparameters::integer(std::string_view name) const {
  const size_t index = index_of(name);
  check_type(index, ParamType::integer, "integer()");
  return int64_t(std::get<double>(values_[index]));
}

bool Hyperparameters::flag(std::string_view name) const {
  const size_t index = index_of(name);
  check_type(index, ParamType::flag, "flag()");
  return std::get<double>(values_[index]) != 0;
}

const std::string& Hyperparameters::choice(std::string_view name) const {
  const size_t index = index_of(name);
  check_type(index, ParamType::choice, "choice()");
  return std::get<std::string>(values_[index]);
}

std::pair<double, double> Hyperparameters::interval(std::string_view name) const {
  const size_t index = index_of(name);
  check_type(index, ParamType::interval, "interval()");
  const std::string& text = std::get<std::string>(values_[index]);  // normalised by set(): "low,high"
  const size_t comma = text.find(',');
  return {*parse_number(std::string_view(text).substr(0, comma)), *parse_number(std::string_view(text).substr(comma + 1))};
}

bool Hyperparameters::is_set(std::string_view name) const {
  return !std::holds_alternative<std::monostate>(values_[index_of(name)]);
}

bool Hyperparameters::has(std::string_view name) const {
  for (const ParamSpec& spec : specs_)
    if (spec.name == name) return true;
  return false;
}

bool Hyperparameters::is_default(std::string_view name) const { return !overridden_[index_of(name)]; }

std::string Hyperparameters::value_text(std::string_view name) const {
  const size_t index = index_of(name);
  const ParamSpec& spec = specs_[index];
  if (!is_set(name)) return "unset";
  switch (spec.type) {
    case ParamType::choice:
    case ParamType::interval: return std::get<std::string>(values_[index]);
    case ParamType::flag: return flag(name) ? "true" : "false";
    default: return format_number(std::get<double>(values_[index]));
  }
}

}  // namespace lamina::train
