// train::read_json_lines, the line loop of SPIN's answer file and REFUEL's dialogue starts: a
// byte-order mark dropped, blank lines skipped but counted, errors named by file:line, malformed
// lines skipped and counted on request.
#include <fstream>
#include <utility>
#include <vector>

#include "helpers.h"
#include "scratch_dir.h"
#include "train/json_lines.h"

using namespace lamina;

TEST_CASE("read_json_lines: byte-order mark, blank lines, line numbers, errors and skipping") {
  testing::ScratchDir dir("json-lines");
  const std::string path = (dir.path / "data.jsonl").string();
  std::ofstream(path, std::ios::binary) << "\xEF\xBB\xBF{\"a\": 1}\n\n  \r\n{\"a\": 2}\nnot json\n{\"a\": \"three\"}\n";
  std::vector<std::pair<int64_t, int64_t>> seen;  // (line, a)
  const auto collect = [&](const json::Value& record, int64_t line, const std::string& where) {
    CHECK(where == path + ":" + std::to_string(line));
    seen.emplace_back(line, record.at("a").as_int64("a"));
  };
  // Line 5 is not JSON: the error names the file and the line, and nothing after it is read.
  CHECK_THROWS_WITH_AS(train::read_json_lines(path, false, collect), doctest::Contains((path + ":5").c_str()), Error);
  CHECK(seen == std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {4, 2}});
  // Skipping: line 5 (not JSON) and line 6 (the visitor's own error) are counted; the rest is read.
  seen.clear();
  CHECK(train::read_json_lines(path, true, collect) == 2);
  CHECK(seen == std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {4, 2}});
  // A visitor's error gets the place in front, once.
  const auto refuse = [&](const json::Value&, int64_t line, const std::string& where) {
    if (line == 4) throw Error(where + ": refused here");
    if (line == 1) throw Error("no place in this message");
  };
  const std::string expected = path + ":1: no place in this message";
  CHECK_THROWS_WITH_AS(train::read_json_lines(path, false, refuse), expected.c_str(), Error);
  CHECK(train::read_json_lines(path, true, refuse) == 3);  // lines 1 and 4 refused, line 5 not JSON
  CHECK_THROWS_WITH_AS(train::read_json_lines((dir.path / "missing.jsonl").string(), false, collect),
                       doctest::Contains("cannot open"), Error);
}
