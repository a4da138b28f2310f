#include "train/failpoint.h"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

#include "tensor/error.h"

namespace lamina::train {
namespace {

constexpr const char* kVariable = "LAMINA_FAILPOINT";
constexpr std::string_view kNames[] = {
    "train.after-step",         "metrics.write",          "checkpoint.after-model",    "checkpoint.after-optimizer",
    "checkpoint.after-state",   "checkpoint.before-rename", "checkpoint.after-rename", "checkpoint.prune-renamed",
    "checkpoint.prune-removing", "model.before-swap"};

bool known(std::string_view name) {
  for (std::string_view candidate : kNames)
    if (candidate == name) return true;
  return false;
}

[[noreturn]] void malformed(std::string_view entry, const std::string& why) {
  std::string names;
  for (std::string_view name : kNames) names += str_cat(names.empty() ? "" : ", ", name);
  throw Error(str_cat(kVariable, ": ", why, " in \"", entry, "\" (expected NAME[@STEP]:kill|enospc; names: ", names, ")"));
}

}  // namespace

void failpoint(std::string_view name, int64_t step, const std::string& next_write) {
  const char* setting = std::getenv(kVariable);
  if (setting == nullptr || *setting == '\0') return;
  std::string_view rest(setting);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    const std::string_view entry = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    const size_t colon = entry.rfind(':');
    if (colon == std::string_view::npos) malformed(entry, "no action");
    const std::string_view action = entry.substr(colon + 1), place = entry.substr(0, colon);
    const size_t at = place.find('@');
    const std::string_view entry_name = place.substr(0, at);
    if (!known(entry_name)) malformed(entry, str_cat("unknown failpoint '", entry_name, "'"));
    if (action != "kill" && action != "enospc") malformed(entry, str_cat("unknown action '", action, "'"));
    if (entry_name != name) continue;
    if (at != std::string_view::npos) {
      const std::string digits(place.substr(at + 1));
      char* end = nullptr;
      const long long wanted = std::strtoll(digits.c_str(), &end, 10);
      if (digits.empty() || *end != '\0') malformed(entry, str_cat("bad step '", digits, "'"));
      if (wanted != step) continue;
    }
    if (action == "kill") {
      std::raise(SIGKILL);
      std::_Exit(128 + SIGKILL);  // not reached: SIGKILL can be neither caught nor ignored
    }
    throw Error(str_cat("cannot write ", next_write, ": ", std::strerror(ENOSPC), " (", kVariable, " ", entry, ")"));
  }
}

}  // namespace lamina::train
