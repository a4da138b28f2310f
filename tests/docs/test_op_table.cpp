// Keeps docs/ops.md, the table of every op's faces (forward, backward rule, CPU and CUDA kernels,
// f64 oracle, tests), in step with ops/ops.h and the op-case harness of tests/op_cases/: a new
// op without a row, a row for an op that no longer exists, a face left blank, an op case whose op
// is not in ops/ops.h, and an op with a case whose tests cell does not link that case first all
// fail here. The links inside the cells are checked by the docs suite's link test; this file
// checks which rows exist and that every cell says something.
//
// What counts as an op: a function declared (or defined inline) at namespace scope of
// namespace lamina or lamina::ops in ops/ops.h, overloads counting once. Members of the option
// and result structs are not ops; functions of a nested namespace (lamina::ops::detail, say)
// are not either. The few declarations that are helpers rather than ops are listed, each with
// its reason, in kNotOps below.
//
// What counts as an op case: a string literal "ops::name" or "ops::name(..." in the code of a
// tests/op_cases/*.cpp file (the case's name, as `c.name = "ops::rms_norm"`, or an entry of a
// table of names), comments left out.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

// Declared in ops/ops.h but no op of their own, so they have no row. The check below fails
// when one of them disappears from the header, so the list cannot outlive its entries.
const std::map<std::string, std::string> kNotOps = {
    {"unary_op_name", "names a UnaryOp for messages and tape nodes; no tensor in or out"},
    {"binary_op_name", "names a BinaryOp for messages and tape nodes; no tensor in or out"},
    {"add", "inline shorthand for binary(BinaryOp::add, a, b)"},
    {"sub", "inline shorthand for binary(BinaryOp::sub, a, b)"},
    {"mul", "inline shorthand for binary(BinaryOp::mul, a, b)"},
    {"div", "inline shorthand for binary(BinaryOp::div, a, b)"},
    {"neg", "inline shorthand for unary(UnaryOp::neg, x)"},
    {"exp", "inline shorthand for unary(UnaryOp::exp, x)"},
    {"log", "inline shorthand for unary(UnaryOp::log, x)"},
};

// The columns of every op table, in order.
const std::vector<std::string> kColumns = {"op",         "forward math", "backward rule", "CPU kernel",
                                           "CUDA kernel", "f64 oracle",   "tests"};
constexpr size_t kOpColumn = 0, kForwardColumn = 1, kBackwardColumn = 2, kTestsColumn = 6;

const std::string kEmDash = "\xE2\x80\x94";  // "—", UTF-8

struct DeclaredOp {
  std::string name;
  std::string scope;  // "lamina" or "lamina::ops"
  bool is_inline = false;
};

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string trimmed(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(s[begin])) != 0) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(s[end - 1])) != 0) --end;
  return s.substr(begin, end - begin);
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

bool is_identifier_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }

// The header without comments, string literals or preprocessor lines (newlines kept).
std::string code_only(const std::string& header) {
  std::string out;
  bool line_start = true;
  for (size_t at = 0; at < header.size(); ++at) {
    const char c = header[at];
    if (line_start && c == '#') {  // a directive: skip to the end of the line
      while (at < header.size() && header[at] != '\n') ++at;
      out += '\n';
      continue;
    }
    if (c == '/' && at + 1 < header.size() && header[at + 1] == '/') {
      while (at < header.size() && header[at] != '\n') ++at;
      out += '\n';
      line_start = true;
      continue;
    }
    if (c == '/' && at + 1 < header.size() && header[at + 1] == '*') {
      const size_t close = header.find("*/", at + 2);
      at = close == std::string::npos ? header.size() : close + 1;
      out += ' ';
      continue;
    }
    if (c == '"' || c == '\'') {  // a literal: its braces and semicolons are not code
      size_t end = at + 1;
      while (end < header.size() && header[end] != c) end += header[end] == '\\' ? 2 : 1;
      out += c;
      out += c;
      at = end;
      continue;
    }
    out += c;
    if (c == '\n') {
      line_start = true;
    } else if (std::isspace(static_cast<unsigned char>(c)) == 0) {
      line_start = false;
    }
  }
  return out;
}

// The name of the function a namespace-scope statement declares, or nothing when it declares
// none (a variable, a using, a struct or enum head). `statement` runs up to its ';' or '{'.
std::optional<std::string> declared_function(const std::string& statement) {
  const std::string text = trimmed(statement);
  for (const char* keyword : {"using ", "typedef ", "static_assert", "namespace ", "struct ", "class ", "enum ",
                              "union ", "template", "friend ", "extern \""})
    if (starts_with(text, keyword)) return std::nullopt;
  const size_t paren = text.find('(');
  if (paren == std::string::npos) return std::nullopt;
  if (text.substr(0, paren).find('=') != std::string::npos) return std::nullopt;  // `T x = f(...)`
  size_t end = paren;
  while (end > 0 && std::isspace(static_cast<unsigned char>(text[end - 1])) != 0) --end;
  size_t begin = end;
  while (begin > 0 && is_identifier_char(text[begin - 1])) --begin;
  if (begin == end || std::isdigit(static_cast<unsigned char>(text[begin])) != 0) return std::nullopt;
  const std::string name = text.substr(begin, end - begin);
  if (name == "operator" || name == "decltype" || name == "alignas") return std::nullopt;
  return name;
}

// Every function declared at namespace scope of lamina or lamina::ops, in order, one entry per
// declaration (overloads repeat the name). Bodies of structs, enums and inline functions are
// skipped; a declaration may span lines.
std::vector<DeclaredOp> parse_declarations(const std::string& header) {
  const std::string code = code_only(header);
  std::vector<DeclaredOp> declarations;
  std::vector<std::string> namespaces;  // names of the open namespaces, outermost first
  std::vector<size_t> names_per_brace;  // "namespace a::b {" opens two names with one brace
  int skipped_depth = 0;                // braces open inside a struct, enum or function body
  int paren_depth = 0;                  // inside a parameter list, `= {}` is a default argument
  std::string statement;
  const auto record = [&](bool is_inline) {
    std::string scope;
    for (const std::string& part : namespaces) scope += (scope.empty() ? "" : "::") + part;
    const std::optional<std::string> name = declared_function(statement);
    if (name && (scope == "lamina" || scope == "lamina::ops")) declarations.push_back({*name, scope, is_inline});
  };
  for (const char c : code) {
    if (skipped_depth > 0) {  // only count braces until the body closes
      if (c == '{') ++skipped_depth;
      if (c == '}') --skipped_depth;
      if (skipped_depth == 0) statement.clear();
      continue;
    }
    if (c == '(') ++paren_depth;
    if (c == ')' && paren_depth > 0) --paren_depth;
    if (paren_depth > 0) {
      statement += c;
    } else if (c == ';') {
      record(false);
      statement.clear();
    } else if (c == '{') {
      const std::string head = trimmed(statement);
      if (head == "namespace" || starts_with(head, "namespace ")) {
        const std::string names = trimmed(head.substr(std::string("namespace").size()));
        size_t count = 0;
        for (size_t start = 0;; ++count) {  // an anonymous namespace opens the name ""
          const size_t separator = names.find("::", start);
          namespaces.push_back(trimmed(names.substr(start, separator - start)));
          if (separator == std::string::npos) break;
          start = separator + 2;
        }
        names_per_brace.push_back(count + 1);
      } else {
        record(starts_with(head, "inline "));  // a function defined in place
        skipped_depth = 1;
      }
      statement.clear();
    } else if (c == '}') {
      if (!names_per_brace.empty()) {
        namespaces.resize(namespaces.size() - names_per_brace.back());
        names_per_brace.pop_back();
      }
      statement.clear();
    } else {
      statement += c;
    }
  }
  return declarations;
}

// The op cases: each op a case names, with the family files that name it, as paths from the
// repository root ("tests/op_cases/nn.cpp").
using CaseFiles = std::map<std::string, std::set<std::string>>;

// The ops that the string literals "ops::name" and "ops::name(..." of a family file's code name;
// literals inside comments count for nothing.
std::set<std::string> case_op_names(const std::string& source) {
  static const std::string kPrefix = "ops::";
  std::set<std::string> names;
  for (size_t at = 0; at < source.size(); ++at) {
    const char c = source[at];
    if (c == '/' && at + 1 < source.size() && source[at + 1] == '/') {
      at = source.find('\n', at);
      if (at == std::string::npos) break;
    } else if (c == '/' && at + 1 < source.size() && source[at + 1] == '*') {
      at = source.find("*/", at + 2);
      if (at == std::string::npos) break;
      ++at;
    } else if (c == '\'') {  // a character literal, perhaps '"'
      ++at;
      while (at < source.size() && source[at] != '\'') at += source[at] == '\\' ? 2 : 1;
    } else if (c == '"') {
      size_t end = at + 1;
      while (end < source.size() && source[end] != '"') end += source[end] == '\\' ? 2 : 1;
      const std::string literal = source.substr(at + 1, std::min(end, source.size()) - at - 1);
      if (starts_with(literal, kPrefix)) {
        size_t name_end = kPrefix.size();
        while (name_end < literal.size() && is_identifier_char(literal[name_end])) ++name_end;
        const bool whole_name = name_end == literal.size() || literal[name_end] == '(';
        if (name_end > kPrefix.size() && whole_name) names.insert(literal.substr(kPrefix.size(), name_end - kPrefix.size()));
      }
      at = end;
    }
  }
  return names;
}

// Every op case of the family files under `folder` (tests/op_cases/ of the repository at `root`).
CaseFiles read_case_files(const std::filesystem::path& root, const std::string& folder) {
  CaseFiles cases;
  for (const auto& entry : std::filesystem::directory_iterator(root / folder)) {
    if (entry.path().extension() != ".cpp") continue;
    const std::string file = folder + "/" + entry.path().filename().string();
    for (const std::string& op : case_op_names(read_text(entry.path()))) cases[op].insert(file);
  }
  return cases;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One row of an op table: its line in the markdown and its cells, trimmed.
struct TableRow {
  int line = 0;
  std::vector<std::string> cells;
};

// The cells of a table line: split at '|' outside code spans and backslash escapes, without
// the empty pieces before the first and after the last pipe.
std::vector<std::string> split_cells(const std::string& line) {
  std::vector<std::string> cells;
  std::string cell;
  bool in_code = false;
  for (size_t at = 0; at < line.size(); ++at) {
    const char c = line[at];
    if (c == '\\' && at + 1 < line.size()) {
      cell += line.substr(at, 2);
      ++at;
    } else if (c == '`') {
      in_code = !in_code;
      cell += c;
    } else if (c == '|' && !in_code) {
      cells.push_back(trimmed(cell));
      cell.clear();
    } else {
      cell += c;
    }
  }
  cells.push_back(trimmed(cell));
  if (!cells.empty() && cells.front().empty()) cells.erase(cells.begin());
  if (!cells.empty() && cells.back().empty()) cells.pop_back();
  return cells;
}

bool is_separator_row(const std::vector<std::string>& cells) {
  static const std::regex separator(R"(:?-{3,}:?)");
  if (cells.empty()) return false;
  for (const std::string& cell : cells)
    if (!std::regex_match(cell, separator)) return false;
  return true;
}

// A markdown link whose text is one code span: [`symbol`](target).
const std::regex& code_link() {
  static const std::regex link(R"(\[`([^`]+)`\]\(([^)\s]+)\))");
  return link;
}

// What is wrong with a face cell (every column but op and forward math), or nothing. A face
// is a code link, "missing" (a gap), "not differentiable (reason)" (backward rule only) or
// "— reason" (no such face, and why).
std::optional<std::string> face_problem(size_t column, const std::string& cell) {
  if (cell.empty()) return "is empty";
  if (std::regex_search(cell, code_link())) return std::nullopt;
  if (starts_with(cell, "missing") && (cell.size() == 7 || !is_identifier_char(cell[7]))) return std::nullopt;
  if (column == kBackwardColumn && starts_with(cell, "not differentiable (") && cell.back() == ')' &&
      !trimmed(cell.substr(20, cell.size() - 21)).empty())
    return std::nullopt;
  if (starts_with(cell, kEmDash)) {
    const std::string reason = trimmed(cell.substr(kEmDash.size()));
    if (reason.find(' ') != std::string::npos) return std::nullopt;  // at least two words
    return "says \xE2\x80\x94 without a reason";
  }
  return std::string("is neither a [`symbol`](file) link nor 'missing'") +
         (column == kBackwardColumn ? ", 'not differentiable (reason)'" : "") + " or '\xE2\x80\x94 reason'";
}

// The rows of every table whose header is kColumns; a table that starts with "op" but has
// other columns is a problem of its own.
std::vector<TableRow> op_table_rows(const std::string& markdown, std::vector<std::string>& problems) {
  std::vector<std::string> lines;
  std::istringstream in(markdown);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::vector<TableRow> rows;
  bool in_op_table = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string line = trimmed(lines[i]);
    if (!starts_with(line, "|")) {
      in_op_table = false;
      continue;
    }
    const std::vector<std::string> cells = split_cells(line);
    const bool is_header = i + 1 < lines.size() && starts_with(trimmed(lines[i + 1]), "|") &&
                           is_separator_row(split_cells(trimmed(lines[i + 1])));
    if (is_header) {
      in_op_table = !cells.empty() && cells[0] == kColumns[0];
      if (in_op_table && cells != kColumns) {
        std::string expected;
        for (const std::string& column : kColumns) expected += "| " + column + " ";
        problems.push_back("line " + std::to_string(i + 1) + ": an op table's header must be '" + expected + "|'");
        in_op_table = false;
      }
      ++i;  // the separator
      continue;
    }
    if (in_op_table) rows.push_back({int(i + 1), cells});
  }
  return rows;
}

// Everything wrong with `table` (the markdown of docs/ops.md) as the op table of `header`
// (the text of ops/ops.h) and of the op cases `cases`, one message each; empty when the table is
// complete and well formed and every op with a case links it first in its tests cell.
std::vector<std::string> check_op_table(const std::string& header, const std::string& table,
                                        const std::map<std::string, std::string>& not_ops,
                                        const CaseFiles& cases = {}) {
  std::vector<std::string> problems;
  std::map<std::string, std::string> scope_of;  // declared op -> its namespace
  std::set<std::string> declared_names;
  for (const DeclaredOp& op : parse_declarations(header)) {
    declared_names.insert(op.name);
    if (not_ops.count(op.name) == 0) scope_of[op.name] = op.scope;
  }
  for (const auto& [name, reason] : not_ops)
    if (declared_names.count(name) == 0)
      problems.push_back("'" + name + "' is listed as not an op (" + reason + ") but ops/ops.h no longer declares it");
  for (const auto& [name, files] : cases) {
    const std::string where = "an op case in " + *files.begin() + " names 'ops::" + name + "'";
    const auto declared = scope_of.find(name);
    if (declared == scope_of.end())
      problems.push_back(where + " but ops/ops.h declares no such op" +
                         (not_ops.count(name) != 0 ? " (it is listed as not an op)" : ""));
    else if (declared->second != "lamina::ops")
      problems.push_back(where + " but the op is declared in namespace " + declared->second);
  }

  std::map<std::string, int> row_of;  // op -> line of its row
  for (const TableRow& row : op_table_rows(table, problems)) {
    const std::string at = "line " + std::to_string(row.line) + ": ";
    if (row.cells.size() != kColumns.size()) {
      problems.push_back(at + "the row has " + std::to_string(row.cells.size()) + " cells, not " +
                         std::to_string(kColumns.size()));
      continue;
    }
    // The op cell starts with a link to the op: [`ops::name`] or [`lamina::name`] for a factory.
    static const std::regex op_link(R"(^\[`(lamina|ops)::([A-Za-z_][A-Za-z0-9_]*)`\]\([^)\s]+\))");
    std::smatch match;
    const std::string& op_cell = row.cells[kOpColumn];
    if (!std::regex_search(op_cell, match, op_link)) {
      problems.push_back(at + "the op cell '" + op_cell + "' does not start with [`ops::name`](file) or [`lamina::name`](file)");
      continue;
    }
    const std::string qualifier = match[1], name = match[2];
    const auto declared = scope_of.find(name);
    if (declared == scope_of.end()) {
      problems.push_back(at + "'" + name + "' has a row but ops/ops.h declares no such op" +
                         (not_ops.count(name) != 0 ? " (it is listed as not an op)" : ""));
      continue;
    }
    const std::string expected_qualifier = declared->second == "lamina::ops" ? "ops" : "lamina";
    if (qualifier != expected_qualifier)
      problems.push_back(at + "'" + name + "' is declared in namespace " + declared->second + ": write `" +
                         expected_qualifier + "::" + name + "`");
    if (!row_of.emplace(name, row.line).second)
      problems.push_back(at + "a second row for '" + name + "' (the first is on line " +
                         std::to_string(row_of[name]) + ")");
    if (row.cells[kForwardColumn].empty()) problems.push_back(at + "'" + name + "': the forward math cell is empty");
    for (size_t column = kBackwardColumn; column < kColumns.size(); ++column)
      if (const std::optional<std::string> problem = face_problem(column, row.cells[column]))
        problems.push_back(at + "'" + name + "': the " + kColumns[column] + " cell " + *problem);
    // An op with a case is tested by the three suites that run every case: its tests cell says
    // so by linking the case's family file before anything else.
    if (const auto with_case = cases.find(name); with_case != cases.end()) {
      std::smatch first_link;
      const std::string& tests = row.cells[kTestsColumn];
      bool links_case = false;
      if (std::regex_search(tests, first_link, code_link()))
        for (const std::string& file : with_case->second)
          links_case = links_case || first_link[2].str() == file || ends_with(first_link[2].str(), "/" + file);
      if (!links_case)
        problems.push_back(at + "'" + name + "' has an op case in " + *with_case->second.begin() +
                           " but its tests cell does not link that file first");
    }
  }
  for (const auto& [name, scope] : scope_of)
    if (row_of.count(name) == 0)
      problems.push_back("'" + scope + "::" + name + "' is declared in ops/ops.h but has no row in the op table");
  return problems;
}

bool mentions(const std::vector<std::string>& problems, const std::string& text) {
  for (const std::string& problem : problems)
    if (problem.find(text) != std::string::npos) return true;
  return false;
}

// A small header and a complete table for it, for the tests of the checker itself.
const char* const kSmallHeader = R"(// A header like ops/ops.h.
#pragma once
#include <vector>
namespace lamina {
Tensor zeros(const Shape& shape, DType dtype = DType::f32,
             Device device = Device::cpu());
struct Options {
  bool causal = true;
  Tensor pick(int64_t index) const;  // a member: not an op
};
}  // namespace lamina
namespace lamina::ops {
enum class Kind { a, b };
const char* kind_name(Kind kind);
Tensor scale(const Tensor& x,
             double factor);
Tensor total(const Tensor& x, const Shape& dims = {},
             bool keepdim = false);  // a brace default argument is no body
Tensor scale(double factor, const Tensor& x);  /* an overload */
inline Tensor twice(const Tensor& x) { return scale(x, 2.0); }
namespace detail {
Tensor hidden(const Tensor& x);
}
}  // namespace lamina::ops
)";

const std::map<std::string, std::string> kSmallNotOps = {{"kind_name", "names a Kind"},
                                                         {"twice", "inline shorthand"}};

const char* const kTableHead = "| op | forward math | backward rule | CPU kernel | CUDA kernel | f64 oracle | tests |\n"
                               "|---|---|---|---|---|---|---|\n";
const char* const kZerosRow =
    "| [`lamina::zeros`](../ops/creation.cpp) | 0 everywhere | not differentiable (a constant leaf) | "
    "[`cpu::fill`](../ops/cpu/elementwise.cpp) | [`cuda::fill`](../ops/cuda/elementwise.cu) | "
    "\xE2\x80\x94 exact constants | CPU: [`zeros`](../tests/ops/test_creation_copy.cpp) |\n";
const char* const kScaleRow =
    "| [`ops::scale`](../ops/elementwise.cpp) | factor x (2 overloads) | missing | "
    "[`cpu::binary_scalar`](../ops/cpu/elementwise.cpp) | missing (no kernel yet) | "
    "[`reference::binary`](../ops/reference.cpp) | CPU: [`ops::binary`](../tests/ops/test_elementwise.cpp) |\n";
const char* const kTotalRow =
    "| [`ops::total`](../ops/reduce.cpp) | sum over dims | [`lamina::sum`](../autograd/functions/reduce.cpp) | "
    "[`cpu::reduce`](../ops/cpu/reduce.cpp) | [`cuda::reduce`](../ops/cuda/reduce.cu) | "
    "[`reference::reduce_sum`](../ops/reference.cpp) | CPU: [`ops::sum`](../tests/ops/test_reduce.cpp) |\n";

}  // namespace

TEST_CASE("op table: every op of ops/ops.h has exactly one complete row in docs/ops.md") {
  const std::filesystem::path root = LAMINA_SOURCE_DIR;
  const std::string header = read_text(root / "ops" / "ops.h");
  const std::string table = read_text(root / "docs" / "ops.md");
  const CaseFiles cases = read_case_files(root, "tests/op_cases");
  const std::vector<std::string> problems = check_op_table(header, table, kNotOps, cases);
  for (const std::string& problem : problems) FAIL_CHECK("docs/ops.md: " << problem);
  // Guards against a case reader that finds nothing and so requires no link: names written
  // whole, with an argument in brackets, and in a table of names.
  CHECK(cases.size() > 25);
  for (const char* op : {"rms_norm", "unary", "logical_or", "var", "token_logprobs"})
    CHECK_MESSAGE(cases.count(op) == 1, op << " has no op case found in tests/op_cases/");
  // Guards against a parser that finds nothing and so has nothing to complain about.
  std::set<std::string> names;
  for (const DeclaredOp& op : parse_declarations(header)) names.insert(op.name);
  CHECK(names.size() > 50);
  for (const char* op : {"zeros", "cast", "binary", "matmul", "rms_norm", "attention", "adamw_step_", "log1mexp"})
    CHECK_MESSAGE(names.count(op) == 1, op << " not found in ops/ops.h by the parser");
}

TEST_CASE("op table: the header parser finds multi-line declarations and overloads, not members") {
  const std::vector<DeclaredOp> declarations = parse_declarations(kSmallHeader);
  std::vector<std::string> seen;
  for (const DeclaredOp& op : declarations) seen.push_back(op.scope + "::" + op.name + (op.is_inline ? " inline" : ""));
  const std::vector<std::string> expected = {"lamina::zeros",      "lamina::ops::kind_name", "lamina::ops::scale",
                                             "lamina::ops::total",  "lamina::ops::scale",     "lamina::ops::twice inline"};
  CHECK(seen == expected);
  // The real header: the creation factories sit in lamina, the rest in lamina::ops.
  const std::vector<DeclaredOp> real = parse_declarations(read_text(std::filesystem::path(LAMINA_SOURCE_DIR) / "ops" / "ops.h"));
  std::map<std::string, std::string> scope_of;
  for (const DeclaredOp& op : real) scope_of[op.name] = op.scope;
  CHECK(scope_of["zeros"] == "lamina");
  CHECK(scope_of["randint"] == "lamina");
  CHECK(scope_of["rope_backward"] == "lamina::ops");
  CHECK(scope_of.count("factor") == 0);  // Llama3RopeScaling's member
  int binary_overloads = 0;
  for (const DeclaredOp& op : real) binary_overloads += op.name == "binary" ? 1 : 0;
  CHECK(binary_overloads == 3);
}

TEST_CASE("op table: the checker passes a complete table and catches a missing row") {
  const std::string complete = std::string("# Ops\n\n") + kTableHead + kZerosRow + kScaleRow + kTotalRow;
  CHECK(check_op_table(kSmallHeader, complete, kSmallNotOps).empty());

  const std::vector<std::string> missing_row =
      check_op_table(kSmallHeader, std::string(kTableHead) + kZerosRow + kTotalRow, kSmallNotOps);
  REQUIRE(missing_row.size() == 1);
  CHECK(mentions(missing_row, "'lamina::ops::scale' is declared in ops/ops.h but has no row"));

  // A table under another header counts for nothing: scale's row there is not seen.
  const std::string other_table =
      std::string(kTableHead) + kZerosRow + kTotalRow + "\n| op | math |\n|---|---|\n" + kScaleRow;
  CHECK(mentions(check_op_table(kSmallHeader, other_table, kSmallNotOps), "an op table's header must be"));
}

TEST_CASE("op table: the checker catches unknown ops, duplicates and bad cells") {
  const std::string base = std::string(kTableHead) + kZerosRow + kScaleRow + kTotalRow;
  const auto problems_with = [&](const std::string& extra_rows) {
    return check_op_table(kSmallHeader, base + extra_rows, kSmallNotOps);
  };
  CHECK(mentions(problems_with("| [`ops::gone`](../ops/ops.h) | x | missing | missing | missing | missing | missing |\n"),
                 "'gone' has a row but ops/ops.h declares no such op"));
  CHECK(mentions(problems_with("| [`ops::hidden`](../ops/ops.h) | x | missing | missing | missing | missing | missing |\n"),
                 "'hidden' has a row"));  // in a nested namespace: not an op
  CHECK(mentions(problems_with("| [`ops::twice`](../ops/ops.h) | x | missing | missing | missing | missing | missing |\n"),
                 "listed as not an op"));
  CHECK(mentions(problems_with(kScaleRow), "a second row for 'scale'"));
  CHECK(mentions(check_op_table(kSmallHeader, std::string(kTableHead) + kScaleRow + kTotalRow +
                                                  "| [`ops::zeros`](../ops/creation.cpp) | 0 | missing | missing | missing | missing | missing |\n",
                                kSmallNotOps),
                 "write `lamina::zeros`"));

  // Each malformed cell of scale's row on its own.
  const auto with_scale_row = [&](const std::string& row) {
    return check_op_table(kSmallHeader, std::string(kTableHead) + kZerosRow + kTotalRow + row, kSmallNotOps);
  };
  const std::string good = "| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | missing | missing |\n";
  CHECK(with_scale_row(good).empty());
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) |  | missing | missing | missing | missing | missing |\n"),
                 "forward math cell is empty"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing |  | missing | missing | missing |\n"),
                 "the CPU kernel cell is empty"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | cpu::scale | missing | missing |\n"),
                 "the CUDA kernel cell is neither"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | \xE2\x80\x94 | missing |\n"),
                 "says \xE2\x80\x94 without a reason"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | not differentiable () | missing | missing | missing | missing |\n"),
                 "the backward rule cell is neither"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | not differentiable (why) | missing | missing | missing |\n"),
                 "the CPU kernel cell is neither"));  // only the backward rule may say so
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | missing |\n"),
                 "the row has 6 cells"));
  CHECK(mentions(with_scale_row("| scale | f | missing | missing | missing | missing | missing |\n"),
                 "does not start with"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | missing | missingness |\n"),
                 "the tests cell is neither"));
}

TEST_CASE("op table: the case reader finds the names of op cases, not of comments or messages") {
  const std::string family = R"family(// A family file like tests/op_cases/nn.cpp; "ops::commented" is not a case.
OpCase scale_case() {
  OpCase c;
  c.name = "ops::scale(" + std::string("twice") + ")";
  c.calls = [](char quote = '"') { return "ops::sum: not a name"; };  /* "ops::hidden" */
  return c;
}
const char* names[] = {"ops::total", "ops::"};
)family";
  CHECK(case_op_names(family) == std::set<std::string>{"scale", "total"});
}

TEST_CASE("op table: the checker catches an op with a case whose row does not link it, and a case of no op") {
  const CaseFiles cases = {{"scale", {"tests/op_cases/small.cpp"}}};
  const std::string linked_scale_row =
      "| [`ops::scale`](../ops/elementwise.cpp) | factor x | missing | missing | missing | missing | "
      "cases: [`scale_case`](../tests/op_cases/small.cpp) (CPU vs oracle); "
      "CPU: [`ops::scale`](../tests/ops/test_elementwise.cpp) |\n";
  const auto with_scale_row = [&](const std::string& row, const CaseFiles& case_files) {
    return check_op_table(kSmallHeader, std::string(kTableHead) + kZerosRow + row + kTotalRow, kSmallNotOps, case_files);
  };
  CHECK(with_scale_row(linked_scale_row, cases).empty());

  // kScaleRow links only a test of tests/ops/: with a case for scale, that is a problem.
  CHECK(with_scale_row(kScaleRow, {}).empty());
  const std::vector<std::string> unlinked = with_scale_row(kScaleRow, cases);
  REQUIRE(unlinked.size() == 1);
  CHECK(mentions(unlinked, "'scale' has an op case in tests/op_cases/small.cpp but its tests cell does not link "
                           "that file first"));
  // The case's link after another one, or to another family's file, does not count.
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | missing | "
                                "CPU: [`ops::scale`](../tests/ops/test_elementwise.cpp); "
                                "cases: [`scale_case`](../tests/op_cases/small.cpp) |\n",
                                cases),
                 "does not link that file first"));
  CHECK(mentions(with_scale_row("| [`ops::scale`](../ops/x.cpp) | f | missing | missing | missing | missing | "
                                "cases: [`scale_case`](../tests/op_cases/other.cpp) |\n",
                                cases),
                 "does not link that file first"));

  // A case must name an op of lamina::ops that the header declares.
  const auto case_problems = [&](const std::string& op) {
    return with_scale_row(linked_scale_row, {{"scale", {"tests/op_cases/small.cpp"}}, {op, {"tests/op_cases/small.cpp"}}});
  };
  CHECK(mentions(case_problems("gone"),
                 "an op case in tests/op_cases/small.cpp names 'ops::gone' but ops/ops.h declares no such op"));
  CHECK(mentions(case_problems("kind_name"), "(it is listed as not an op)"));
  CHECK(mentions(case_problems("zeros"), "declared in namespace lamina"));
}
