#include "train/json_lines.h"

#include <cstdio>
#include <fstream>

#include "tensor/error.h"

namespace lamina::train {

int64_t read_json_lines(const std::string& path, bool skip_malformed,
                        const std::function<void(const json::Value& record, int64_t line, const std::string& where)>& visit) {
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  int64_t number = 0, skipped = 0;
  std::string line;
  while (std::getline(in, line)) {
    ++number;
    if (number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // a byte-order mark
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = str_cat(path, ":", number);
    try {
      visit(json::parse(line, where), number, where);
    } catch (const Error& error) {
      const std::string message = error.what();
      if (!skip_malformed) throw Error(message.rfind(path, 0) == 0 ? message : str_cat(where, ": ", message));
      if (skipped++ == 0) std::fprintf(stderr, "%s: skipping malformed lines, the first: %s\n", path.c_str(), error.what());
    }
  }
  LAMINA_CHECK(!in.bad(), "error reading ", path);
  if (skipped > 0) std::fprintf(stderr, "%s: %lld malformed lines skipped\n", path.c_str(), (long long)skipped);
  return skipped;
}

}  // namespace lamina::train
