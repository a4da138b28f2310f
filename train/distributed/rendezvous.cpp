// Reading a rank's place in the run from torchrun's or SLURM's variables (see rendezvous.h).
#include "train/distributed/rendezvous.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "tensor/error.h"

namespace lamina::dist {
namespace {

bool is_set(const EnvironmentLookup& lookup, const char* name) {
  const char* value = lookup(name);
  return value != nullptr && *value != '\0';
}

// The variable as an integer in [min, max]; anything else names the variable and its value.
int parse_int_variable(const char* name, const std::string& text, long min, long max) {
  errno = 0;
  char* end = nullptr;
  const long value = std::strtol(text.c_str(), &end, 10);
  LAMINA_CHECK(!text.empty() && end == text.c_str() + text.size() && errno == 0,
               "distributed environment: ", name, "='", text, "' is not an integer");
  LAMINA_CHECK(value >= min && value <= max, "distributed environment: ", name, "=", value,
               " is out of range (expected ", min, " to ", max, ")");
  return int(value);
}

int int_variable(const EnvironmentLookup& lookup, const char* name, long min, long max) {
  return parse_int_variable(name, lookup(name), min, max);
}

int int_variable_or(const EnvironmentLookup& lookup, const char* name, int fallback, long min, long max) {
  return is_set(lookup, name) ? int_variable(lookup, name, min, max) : fallback;
}

constexpr long kMaxWorldSize = 1 << 20;

void check_placement(const DistributedEnv& env, const char* rank_name, const char* world_name,
                     const char* local_rank_name, const char* local_world_name) {
  LAMINA_CHECK(env.rank < env.world_size, "distributed environment: ", rank_name, "=", env.rank, " but ", world_name,
               "=", env.world_size, " (a rank must be below the world size)");
  LAMINA_CHECK(env.local_rank < env.local_world_size, "distributed environment: ", local_rank_name, "=",
               env.local_rank, " but ", local_world_name, "=", env.local_world_size,
               " (a local rank must be below the local world size)");
  LAMINA_CHECK(env.local_world_size <= env.world_size, "distributed environment: ", local_world_name, "=",
               env.local_world_size, " exceeds ", world_name, "=", env.world_size);
}

DistributedEnv from_torchrun(const EnvironmentLookup& lookup) {
  LAMINA_CHECK(is_set(lookup, "RANK") && is_set(lookup, "WORLD_SIZE"),
               "distributed environment: ", is_set(lookup, "RANK") ? "RANK is set but WORLD_SIZE is not"
                                                                   : "WORLD_SIZE is set but RANK is not",
               " (a launcher such as torchrun or lamina launch sets both)");
  DistributedEnv env;
  env.source = "torchrun";
  env.world_size = int_variable(lookup, "WORLD_SIZE", 1, kMaxWorldSize);
  env.rank = int_variable(lookup, "RANK", 0, kMaxWorldSize);
  // Without the local variables, all ranks are taken to share this machine.
  env.local_world_size = int_variable_or(lookup, "LOCAL_WORLD_SIZE", env.world_size, 1, kMaxWorldSize);
  env.local_rank = int_variable_or(lookup, "LOCAL_RANK", env.rank % env.local_world_size, 0, kMaxWorldSize);
  check_placement(env, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE");
  if (is_set(lookup, "MASTER_ADDR")) env.master_addr = lookup("MASTER_ADDR");
  env.master_port = int_variable_or(lookup, "MASTER_PORT", kDefaultMasterPort, 1, 65535);
  return env;
}

DistributedEnv from_slurm(const EnvironmentLookup& lookup) {
  DistributedEnv env;
  env.source = "slurm";
  env.world_size = int_variable(lookup, "SLURM_NTASKS", 1, kMaxWorldSize);
  env.rank = int_variable(lookup, "SLURM_PROCID", 0, kMaxWorldSize);
  const int node = int_variable_or(lookup, "SLURM_NODEID", 0, 0, kMaxWorldSize);
  const char* per_node_name = is_set(lookup, "SLURM_STEP_TASKS_PER_NODE") ? "SLURM_STEP_TASKS_PER_NODE"
                              : is_set(lookup, "SLURM_NTASKS_PER_NODE")   ? "SLURM_NTASKS_PER_NODE"
                                                                          : nullptr;
  if (per_node_name != nullptr) {
    std::vector<int> per_node;
    try {
      per_node = expand_slurm_tasks_per_node(lookup(per_node_name));
    } catch (const Error& error) {
      throw Error(str_cat("distributed environment: ", per_node_name, ": ", error.what()));
    }
    // SLURM_NTASKS_PER_NODE may be one number for every node; the step's list has one per node.
    env.local_world_size = per_node[std::min<size_t>(size_t(node), per_node.size() - 1)];
  } else {
    env.local_world_size = env.world_size;
  }
  env.local_rank = int_variable_or(lookup, "SLURM_LOCALID", env.rank % env.local_world_size, 0, kMaxWorldSize);
  check_placement(env, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", per_node_name ? per_node_name : "SLURM_NTASKS");
  if (is_set(lookup, "MASTER_ADDR")) {
    env.master_addr = lookup("MASTER_ADDR");
  } else {
    const char* list_name = is_set(lookup, "SLURM_STEP_NODELIST") ? "SLURM_STEP_NODELIST"
                            : is_set(lookup, "SLURM_NODELIST")    ? "SLURM_NODELIST"
                                                                  : nullptr;
    if (list_name != nullptr) {
      std::vector<std::string> hosts;
      try {
        hosts = expand_slurm_hostlist(lookup(list_name));
      } catch (const Error& error) {
        throw Error(str_cat("distributed environment: ", list_name, ": ", error.what()));
      }
      env.master_addr = hosts.front();
    } else {
      LAMINA_CHECK(env.world_size == 1 || env.local_world_size == env.world_size,
                   "distributed environment: SLURM runs ", env.world_size,
                   " tasks on several nodes but neither MASTER_ADDR nor SLURM_STEP_NODELIST/SLURM_NODELIST is set, "
                   "so the ranks cannot find rank 0");
    }
  }
  env.master_port = int_variable_or(lookup, "MASTER_PORT", kDefaultMasterPort, 1, 65535);
  return env;
}

// Splits at commas that are outside brackets.
std::vector<std::string> split_top_level(const std::string& text, const std::string& whole) {
  std::vector<std::string> parts;
  std::string current;
  int depth = 0;
  for (char c : text) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    LAMINA_CHECK(depth >= 0 && depth <= 1, "host list '", whole, "': unbalanced or nested brackets");
    if (c == ',' && depth == 0) {
      parts.push_back(current);
      current.clear();
    } else {
      current += c;
    }
  }
  LAMINA_CHECK(depth == 0, "host list '", whole, "': a '[' is never closed");
  parts.push_back(current);
  return parts;
}

// One name with zero or more bracket groups, each "a-b,c,...": the names it stands for.
void expand_one_host(const std::string& pattern, const std::string& whole, std::vector<std::string>& out) {
  const size_t open = pattern.find('[');
  if (open == std::string::npos) {
    LAMINA_CHECK(pattern.find(']') == std::string::npos, "host list '", whole, "': a ']' without '['");
    out.push_back(pattern);
    return;
  }
  const size_t close = pattern.find(']', open);
  const std::string prefix = pattern.substr(0, open);
  const std::string ranges = pattern.substr(open + 1, close - open - 1);
  const std::string rest = pattern.substr(close + 1);
  LAMINA_CHECK(!ranges.empty(), "host list '", whole, "': empty brackets");
  size_t start = 0;
  while (start <= ranges.size()) {
    size_t comma = ranges.find(',', start);
    if (comma == std::string::npos) comma = ranges.size();
    const std::string range = ranges.substr(start, comma - start);
    const size_t dash = range.find('-');
    const std::string first = range.substr(0, dash);
    const std::string last = dash == std::string::npos ? first : range.substr(dash + 1);
    const auto is_digits = [](const std::string& s) {
      return !s.empty() && s.size() <= 9 && s.find_first_not_of("0123456789") == std::string::npos;
    };
    LAMINA_CHECK(is_digits(first) && is_digits(last), "host list '", whole, "': '", range,
                 "' is not a number or a range of numbers");
    const long low = std::stol(first), high = std::stol(last);
    LAMINA_CHECK(low <= high, "host list '", whole, "': range '", range, "' runs backwards");
    LAMINA_CHECK(high - low < 100000, "host list '", whole, "': range '", range, "' is implausibly long");
    for (long number = low; number <= high; ++number) {
      std::string digits = std::to_string(number);
      if (digits.size() < first.size()) digits.insert(0, first.size() - digits.size(), '0');  // keep "01"
      expand_one_host(prefix + digits + rest, whole, out);
    }
    start = comma + 1;
  }
}

}  // namespace

std::vector<std::string> expand_slurm_hostlist(const std::string& hostlist) {
  LAMINA_CHECK(!hostlist.empty(), "host list is empty");
  std::vector<std::string> hosts;
  for (const std::string& part : split_top_level(hostlist, hostlist)) {
    LAMINA_CHECK(!part.empty(), "host list '", hostlist, "': an empty name");
    expand_one_host(part, hostlist, hosts);
  }
  return hosts;
}

std::vector<int> expand_slurm_tasks_per_node(const std::string& text) {
  std::vector<int> counts;
  size_t start = 0;
  LAMINA_CHECK(!text.empty(), "tasks per node: empty");
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    const std::string item = text.substr(start, comma - start);
    const size_t repeat_at = item.find("(x");
    const std::string count_text = item.substr(0, repeat_at);
    int repeat = 1;
    if (repeat_at != std::string::npos) {
      LAMINA_CHECK(item.back() == ')', "tasks per node '", text, "': '", item, "' lacks its ')'");
      repeat = parse_int_variable("tasks per node repeat", item.substr(repeat_at + 2, item.size() - repeat_at - 3), 1,
                                  kMaxWorldSize);
    }
    const int count = parse_int_variable("tasks per node", count_text, 1, kMaxWorldSize);
    counts.insert(counts.end(), size_t(repeat), count);
    start = comma + 1;
  }
  return counts;
}

DistributedEnv distributed_env_from(const EnvironmentLookup& lookup) {
  if (is_set(lookup, "RANK") || is_set(lookup, "WORLD_SIZE")) return from_torchrun(lookup);
  if (is_set(lookup, "SLURM_PROCID") && is_set(lookup, "SLURM_NTASKS")) return from_slurm(lookup);
  DistributedEnv env;
  if (is_set(lookup, "MASTER_ADDR")) env.master_addr = lookup("MASTER_ADDR");
  env.master_port = int_variable_or(lookup, "MASTER_PORT", kDefaultMasterPort, 1, 65535);
  return env;
}

DistributedEnv distributed_env_from_environment() {
  return distributed_env_from([](const char* name) { return std::getenv(name); });
}

std::chrono::milliseconds distributed_timeout_from(const EnvironmentLookup& lookup) {
  const char* text = lookup("LAMINA_DIST_TIMEOUT_S");
  if (text == nullptr || *text == '\0') return std::chrono::milliseconds(300'000);
  char* end = nullptr;
  const double seconds = std::strtod(text, &end);
  LAMINA_CHECK(end != text && *end == '\0' && std::isfinite(seconds) && seconds > 0 && seconds <= 7 * 86400,
               "distributed environment: LAMINA_DIST_TIMEOUT_S='", text,
               "' is not a number of seconds in (0, 604800]");
  return std::chrono::milliseconds(std::max<int64_t>(1, int64_t(std::llround(seconds * 1000))));
}

std::chrono::milliseconds distributed_timeout() {
  return distributed_timeout_from([](const char* name) { return std::getenv(name); });
}

}  // namespace lamina::dist
