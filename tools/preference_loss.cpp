// `lamina preference-loss`: evaluate any registered preference loss on numbers from a JSON file
// and print the loss, its gradient with respect to every policy input, and its metrics: a way
// to inspect and teach the losses of preference-losses.md without a model.
//
//   lamina preference-loss --loss sigmoid --beta 0.1 --inputs pair.json
//   lamina preference-loss --loss sigmoid,bco_pair,sft --loss-weights 0.8,0.2,1 --inputs pair.json
//   lamina preference-loss --list [--loss NAME]
//
// Hyperparameter flags are generated from the registry (`--beta`, `--label_smoothing`, ...;
// hyphens and underscores are interchangeable); a flag the chosen loss does not have is a
// usage error that lists the ones it has.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "tensor/io/atomic_file.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "train/losses/json_io.h"
#include "train/losses/registry.h"

namespace lamina::cli {
namespace {

using train::LossDefinition;

const char* kCommand = "lamina preference-loss";
const char* kHint = "run 'lamina preference-loss --help' for its flags, '--list' for the losses";

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, ',');) parts.push_back(part);
  return parts;
}

std::string underscored(std::string name) {
  for (char& c : name) c = c == '-' ? '_' : c;
  return name;
}

// Every hyperparameter name of the registry, with the losses that have it.
std::map<std::string, std::vector<std::string>> hyperparameter_owners() {
  std::map<std::string, std::vector<std::string>> owners;
  for (const LossDefinition& definition : train::loss_registry())
    for (const train::ParamSpec& spec : definition.params) owners[spec.name].push_back(definition.name);
  return owners;
}

// Splits the hyperparameter flags (--name value, --name=value) off `args`; the rest goes to the
// FlagParser.
std::vector<std::pair<std::string, std::string>> take_hyperparameters(Arguments& args) {
  const auto owners = hyperparameter_owners();
  std::vector<std::pair<std::string, std::string>> taken;
  Arguments rest;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const size_t equals = arg.find('=');
    const bool is_flag = arg.rfind("--", 0) == 0;
    const std::string name = is_flag ? underscored(arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2)) : "";
    if (name.empty() || owners.count(name) == 0) {
      rest.push_back(arg);
      continue;
    }
    if (equals != std::string::npos) {
      taken.emplace_back(name, arg.substr(equals + 1));
    } else if (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) {  // "-1" is a value, "--x" a flag
      taken.emplace_back(name, args[++i]);
    } else {
      throw UsageError(str_cat(kCommand, ": flag --", name, " needs a value"), kHint);
    }
  }
  args = rest;
  return taken;
}

std::string hyperparameter_help() {
  std::string text = "\nhyperparameter flags (which ones apply depends on --loss; see --list):\n ";
  size_t column = 1;
  for (const auto& [name, owners] : hyperparameter_owners()) {
    const std::string flag = " --" + name;
    if (column + flag.size() > 100) {
      text += "\n ";
      column = 1;
    }
    text += flag;
    column += flag.size();
  }
  return text + "\n";
}

void print_listing(const LossDefinition& definition) {
  std::printf("%s", definition.name.c_str());
  for (const std::string& alias : definition.aliases) std::printf(" (alias %s)", alias.c_str());
  std::printf("  [preference-losses.md §%s]\n  %s\n", definition.section.c_str(), definition.summary.c_str());
  std::printf("  inputs:\n");
  std::set<std::string> masks;
  for (const train::InputSpec& spec : definition.inputs) {
    std::string aliases;
    for (const std::string& alias : spec.aliases) aliases += (aliases.empty() ? " (TRL 1.x name: " : ", ") + alias;
    if (!aliases.empty()) aliases += ")";
    std::printf("    %-34s %-6s %-6s %s%s%s\n", spec.name.c_str(), train::shape_name(spec.shape), train::role_name(spec.role),
                spec.required ? "" : "(optional) ", spec.help.c_str(), aliases.c_str());
    if (!spec.mask.empty()) masks.insert(spec.mask);
  }
  for (const std::string& mask : masks)
    std::printf("    %-34s %-6s %-6s %s\n", mask.c_str(), "[B, T]", "mask", "derived from the token arrays' lengths");
  std::printf("  hyperparameters:\n");
  if (definition.params.empty()) std::printf("    (none)\n");
  for (const train::ParamSpec& spec : definition.params) {
    std::string type = spec.type_name();
    if (spec.type == train::ParamType::real || spec.type == train::ParamType::integer) type += " in " + spec.range.describe();
    // Where the default comes from (TRL's config, the spec, or lamina), so that a TRL user sees
    // which defaults differ from TRL's and why.
    const std::string source = spec.source.empty() ? "" : " [from " + spec.source + "]";
    std::printf("    --%-32s %s, default %s%s: %s\n", spec.name.c_str(), type.c_str(), spec.default_text().c_str(),
                source.c_str(), spec.help.c_str());
  }
  std::printf("\n");
}

// One definition whose inputs are the union of the terms' (for parsing and printing a combination).
LossDefinition combined_definition(const std::vector<const LossDefinition*>& terms) {
  std::vector<train::InputSpec> inputs;
  std::string name;
  for (const LossDefinition* term : terms) {
    name += (name.empty() ? "" : "+") + term->name;
    for (const train::InputSpec& spec : term->inputs) {
      bool merged = false;
      for (train::InputSpec& known : inputs) {
        if (known.name != spec.name) continue;
        known.required = known.required || spec.required;
        merged = true;
      }
      if (!merged) inputs.push_back(spec);
    }
  }
  return LossDefinition(name, "", "", inputs, {}, nullptr);
}

// The JSON of a file named by `flag`; errors say which flag and file, and why (a missing file,
// a FIFO, malformed JSON).
json::Value read_json_file(const std::string& path, const char* flag) {
  try {
    return json::parse_file(path);
  } catch (const Error& error) {
    throw Error(str_cat(kCommand, ": ", flag, ": ", error.what()));
  }
}

// The --save-state file, opened before anything is computed or printed: a path that cannot be
// written is an error that leaves no output behind. The state is written beside it and renamed
// into place at the end (io::AtomicFile), so a failure never leaves half a file.
std::unique_ptr<io::AtomicFile> open_state_output(const std::string& path) {
  std::error_code error;
  LAMINA_CHECK(!std::filesystem::is_directory(path, error), kCommand, ": --save-state: ", path,
               " is a directory; give a file name");
  try {
    return std::make_unique<io::AtomicFile>(path);
  } catch (const Error& failure) {
    throw Error(str_cat(kCommand, ": --save-state: ", failure.what()));
  }
}

// Throws naming the loss, or the first policy input whose gradient is not finite.
void check_finite(const train::LossResult& result, const LossDefinition& definition, const train::LossInputs& inputs) {
  const double loss = result.loss.item<double>();
  if (!std::isfinite(loss))
    throw Error(str_cat(kCommand, ": the loss is ", loss, ", not a finite number, for these inputs and hyperparameters ",
                        "(log-probabilities or rewards too large in magnitude?); nothing was printed or saved"));
  for (const train::InputSpec& spec : definition.inputs) {
    const Tensor* value = inputs.find(spec.name);
    if (spec.role != train::InputRole::policy || value == nullptr || !value->grad().defined()) continue;
    const std::vector<double> gradient = value->grad().to_vector<double>();
    for (size_t i = 0; i < gradient.size(); ++i)
      if (!std::isfinite(gradient[i]))
        throw Error(str_cat(kCommand, ": the gradient of ", spec.name, " is ", gradient[i], " at element ", i,
                            " (the loss is ", loss, "); nothing was printed or saved"));
  }
}

}  // namespace

int run_preference_loss(const Arguments& raw_args) {
  FlagParser parser(kCommand,
                    "Evaluates a preference-optimisation loss (DPO, IPO, KTO, SimPO, GRPO, ... every loss of\n"
                    "preference-losses.md) on per-sequence or per-token numbers from a JSON file, and prints one\n"
                    "JSON object: {\"loss\", \"grad\" (one entry per policy input, shaped like it), \"metrics\"}.\n"
                    "Input keys follow TRL (policy_chosen_logps, reference_rejected_logps, chosen_lengths, labels,\n"
                    "rewards, ...); token inputs are ragged arrays, one per example. Computed in f64.");
  parser.add_option("loss", "NAME", "the loss, or NAME,NAME,... for a weighted sum (TRL's loss_type list)");
  parser.add_option("loss-weights", "W,W,...", "weights of a loss list", "1 each");
  parser.add_option("inputs", "FILE", "JSON object of inputs keyed by name");
  parser.add_option("state", "FILE", "restore the loss's state (bco, kto, bco_pair) from this JSON file first");
  parser.add_option("save-state", "FILE", "write the loss's state after this batch to this JSON file");
  parser.add_switch("eval", "evaluation: read the state without updating it");
  parser.add_switch("list", "list every loss (or just --loss) with its inputs and hyperparameters");
  Arguments args = raw_args;
  for (const std::string& arg : args) {
    if (arg != "--help") continue;
    std::fputs((parser.help_text() + hyperparameter_help()).c_str(), stdout);
    return 0;
  }
  const std::vector<std::pair<std::string, std::string>> hyperparameters = take_hyperparameters(args);
  parser.parse(args);

  std::vector<const LossDefinition*> terms;
  if (const auto names = parser.value("loss")) {
    for (const std::string& name : split_list(*names)) {
      try {
        terms.push_back(&train::find_loss(name));
      } catch (const Error& error) {
        throw UsageError(str_cat(kCommand, ": ", error.what()), kHint);
      }
    }
  }
  if (parser.is_set("list")) {
    if (terms.empty()) {
      for (const LossDefinition& definition : train::loss_registry()) print_listing(definition);
    } else {
      for (const LossDefinition* definition : terms) print_listing(*definition);
    }
    return 0;
  }
  if (terms.empty()) throw UsageError(str_cat(kCommand, ": --loss NAME is required"), kHint);
  const auto inputs_path = parser.value("inputs");
  if (!inputs_path) throw UsageError(str_cat(kCommand, ": --inputs FILE is required"), kHint);

  std::vector<double> weights(terms.size(), 1.0);
  if (const auto text = parser.value("loss-weights")) {
    const std::vector<std::string> parts = split_list(*text);
    if (parts.size() != terms.size())
      throw UsageError(str_cat(kCommand, ": --loss-weights has ", parts.size(), " values for ", terms.size(), " losses"), kHint);
    for (size_t i = 0; i < parts.size(); ++i) {
      char* end = nullptr;
      weights[i] = std::strtod(parts[i].c_str(), &end);
      if (parts[i].empty() || *end != '\0' || !std::isfinite(weights[i]))
        throw UsageError(str_cat(kCommand, ": --loss-weights value '", parts[i], "' is not a finite number"), kHint);
    }
  }

  // Hyperparameters: each flag goes to every term that has it, and must fit at least one.
  std::vector<train::Hyperparameters> params;
  for (const LossDefinition* term : terms) params.push_back(train::default_hyperparameters(*term));
  for (const auto& [name, value] : hyperparameters) {
    bool applied = false;
    for (train::Hyperparameters& term_params : params) {
      if (!term_params.has(name)) continue;
      try {
        term_params.set(name, value);
      } catch (const Error& error) {
        throw UsageError(str_cat(kCommand, ": ", error.what()), kHint);
      }
      applied = true;
    }
    if (!applied) {
      std::string accepted;
      for (const train::Hyperparameters& term_params : params)
        for (const train::ParamSpec& spec : term_params.specs()) accepted += (accepted.empty() ? "--" : ", --") + spec.name;
      throw UsageError(str_cat(kCommand, ": --", name, " is not a hyperparameter of loss '", parser.value("loss").value(),
                               "' (its hyperparameters: ", accepted.empty() ? "none" : accepted, ")"),
                       kHint);
    }
  }

  // State: only a single stateful loss has one.
  std::unique_ptr<train::LossState> state = terms.size() == 1 ? train::make_state(*terms[0]) : nullptr;
  if (!state && (parser.is_set("state") || parser.is_set("save-state") || parser.is_set("eval")))
    throw UsageError(str_cat(kCommand, ": --state, --save-state and --eval apply to a single stateful loss (bco, kto, bco_pair)"),
                     kHint);
  if (state && parser.is_set("state")) {
    const std::string path = *parser.value("state");
    const json::Value saved = read_json_file(path, "--state");
    try {
      state->restore(saved);
    } catch (const Error& error) {
      throw Error(str_cat(kCommand, ": --state ", path, ": ", error.what()));
    }
  }
  if (state) state->training = !parser.is_set("eval");
  const std::unique_ptr<io::AtomicFile> state_output =
      state && parser.is_set("save-state") ? open_state_output(*parser.value("save-state")) : nullptr;

  const LossDefinition definition = terms.size() == 1 ? *terms[0] : combined_definition(terms);
  train::JsonInputs parsed = train::inputs_from_json(read_json_file(*inputs_path, "--inputs"), definition, *inputs_path);
  for (const std::string& warning : parsed.warnings) std::fprintf(stderr, "warning: %s\n", warning.c_str());
  for (const train::InputSpec& spec : definition.inputs) {
    const Tensor* value = parsed.inputs.find(spec.name);
    if (spec.role == train::InputRole::policy && value != nullptr) value->set_requires_grad(true);
  }

  train::LossResult result;
  if (terms.size() == 1) {
    result = train::compute_loss(definition, parsed.inputs, params[0], state.get());
  } else {
    std::vector<train::WeightedLoss> weighted;
    for (size_t i = 0; i < terms.size(); ++i) weighted.push_back({terms[i], weights[i], params[i], nullptr});
    result = train::compute_weighted_losses(weighted, parsed.inputs);
  }
  result.loss.backward();
  for (const std::string& warning : result.warnings) std::fprintf(stderr, "warning: %s\n", warning.c_str());
  // A NaN or infinite loss or gradient is a failure, not a result: JSON would print it as null
  // and a script reading the output would take it for a number.
  check_finite(result, definition, parsed.inputs);
  // The state first: when it cannot be written, nothing is printed for a script to take as done.
  if (state_output) {
    state_output->write(state->save().dump(2) + "\n");
    state_output->commit();
  }
  std::printf("%s\n", train::result_to_json(result, definition, parsed.inputs).dump(2).c_str());
  return 0;
}

}  // namespace lamina::cli
