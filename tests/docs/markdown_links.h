// The link checker of the docs suite: finds the links of a markdown text and checks each
// against the files beside it. The docs guide readers through the code by links such as
// [`rms_norm`](../ops/norm.cpp), so a file that moves or a function that is renamed must fail
// a test instead of leaving a reader at a dead end.
//
// The convention it enforces:
//   - a relative target must exist, relative to the markdown file's folder, and stay inside
//     the repository; a target ending in `/` must be a folder, and a folder's link must end
//     in `/`;
//   - a link whose text is one code span holding a symbol (`Tokenizer::encode`,
//     `rms_norm(x, w, eps)`) points at a file where the symbol's last identifier (after the
//     last `::`, without the argument list) occurs as a whole word;
//   - no `#anchor` into a file that is not markdown (line anchors into code rot silently);
//   - http:, https: and mailto: links and links to an anchor of the same page are not checked.
//
// What counts as a link is the part of CommonMark that the docs use: inline links
// [text](target "title"), images ![alt](target), and reference links [text][label],
// [label][] and [label] with their definitions "[label]: target". Fenced code blocks and
// code spans hold no links. (Indented code blocks are not recognised: the docs fence theirs.)
#pragma once

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace lamina::testing::markdown {

struct Link {
  int line = 0;         // 1-based line of the link's first character
  std::string text;     // between the brackets, as written
  std::string target;   // the destination, without <> and title; empty for an undefined label
  std::string written;  // the link as written in the text, for messages
  bool from_reference = false;   // a use of a "[label]: target" definition (checked there)
  bool undefined_label = false;  // [text][label] whose label has no definition
};

namespace detail {

inline bool is_identifier_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; }

inline std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front())) != 0) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back())) != 0) s.remove_suffix(1);
  return s;
}

inline std::string lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Reference labels match case-insensitively, with runs of whitespace as one space.
inline std::string normalized_label(std::string_view label) {
  std::string out;
  for (const char c : trim(label)) {
    if (std::isspace(static_cast<unsigned char>(c)) != 0) {
      if (!out.empty() && out.back() != ' ') out += ' ';
    } else {
      out += char(std::tolower(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

// The text with every fenced code block blanked (newlines kept, so offsets and line numbers
// stay those of the original). An unclosed fence runs to the end, as in CommonMark.
inline std::string without_fenced_code(std::string_view markdown) {
  std::string out(markdown);
  char fence = 0;
  size_t fence_length = 0;
  for (size_t start = 0; start < out.size();) {
    size_t end = out.find('\n', start);
    if (end == std::string::npos) end = out.size();
    const std::string_view line(out.data() + start, end - start);
    size_t indent = 0;
    while (indent < line.size() && indent < 4 && line[indent] == ' ') ++indent;
    size_t run = 0;
    const char marker = indent <= 3 && indent < line.size() ? line[indent] : 0;
    if (marker == '`' || marker == '~')
      while (indent + run < line.size() && line[indent + run] == marker) ++run;
    bool blank_line = fence != 0;
    if (fence == 0 && run >= 3) {
      // A backtick fence's info string may not hold a backtick (that line is a code span).
      const std::string_view info = line.substr(indent + run);
      if (marker == '~' || info.find('`') == std::string_view::npos) {
        fence = marker;
        fence_length = run;
        blank_line = true;
      }
    } else if (fence != 0 && marker == fence && run >= fence_length && trim(line.substr(indent + run)).empty()) {
      fence = 0;
    }
    if (blank_line) std::fill(out.begin() + std::ptrdiff_t(start), out.begin() + std::ptrdiff_t(end), ' ');
    start = end + 1;
  }
  return out;
}

// Where the code span opening at `pos` (a run of backticks) ends, or npos when no run of the
// same length closes it (then the backticks are literal).
inline size_t code_span_end(std::string_view text, size_t pos) {
  size_t run = 0;
  while (pos + run < text.size() && text[pos + run] == '`') ++run;
  for (size_t at = pos + run; at < text.size();) {
    if (text[at] != '`') {
      ++at;
      continue;
    }
    size_t closing = 0;
    while (at + closing < text.size() && text[at + closing] == '`') ++closing;
    if (closing == run) return at + closing;
    at += closing;
  }
  return std::string_view::npos;
}

// The position of the ']' that closes the '[' at `open`, or npos. Brackets nest; code spans
// and backslash escapes inside are skipped; a blank line ends the search (no link spans one).
inline size_t closing_bracket(std::string_view text, size_t open) {
  int depth = 0;
  for (size_t at = open; at < text.size(); ++at) {
    const char c = text[at];
    if (c == '\\') {
      ++at;
    } else if (c == '`') {
      const size_t end = code_span_end(text, at);
      if (end == std::string_view::npos) {
        while (at + 1 < text.size() && text[at + 1] == '`') ++at;
      } else {
        at = end - 1;
      }
    } else if (c == '[') {
      ++depth;
    } else if (c == ']') {
      if (--depth == 0) return at;
    } else if (c == '\n') {
      size_t next = at + 1;
      while (next < text.size() && (text[next] == ' ' || text[next] == '\t')) ++next;
      if (next >= text.size() || text[next] == '\n') return std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

// Parses "(destination "title")" starting at the '(' at `open`. On success sets `target` and
// returns the position after the ')'; otherwise npos (the brackets are then not a link).
inline size_t inline_destination(std::string_view text, size_t open, std::string& target) {
  size_t at = open + 1;
  const auto skip_space = [&] {
    while (at < text.size() && (text[at] == ' ' || text[at] == '\t' || text[at] == '\n')) ++at;
  };
  skip_space();
  if (at < text.size() && text[at] == '<') {
    const size_t close = text.find('>', at);
    if (close == std::string_view::npos || text.substr(at, close - at).find('\n') != std::string_view::npos)
      return std::string_view::npos;
    target = std::string(text.substr(at + 1, close - at - 1));
    at = close + 1;
  } else {
    const size_t begin = at;
    int depth = 0;
    while (at < text.size()) {
      const char c = text[at];
      if (c == '\\' && at + 1 < text.size()) {
        at += 2;
        continue;
      }
      if (std::isspace(static_cast<unsigned char>(c)) != 0) break;
      if (c == '(') ++depth;
      if (c == ')' && depth-- == 0) break;
      ++at;
    }
    target = std::string(text.substr(begin, at - begin));
  }
  skip_space();
  if (at < text.size() && (text[at] == '"' || text[at] == '\'' || text[at] == '(')) {
    const char closing = text[at] == '(' ? ')' : text[at];
    const size_t close = text.find(closing, at + 1);
    if (close == std::string_view::npos) return std::string_view::npos;
    at = close + 1;
    skip_space();
  }
  if (at >= text.size() || text[at] != ')') return std::string_view::npos;
  return at + 1;
}

struct Definition {
  int line = 0;
  std::string label, target;
};

// "[label]: target" definitions (up to three spaces of indent), collected and then blanked in
// `text` so that the inline scan does not take them for shortcut links.
inline std::vector<Definition> take_definitions(std::string& text, const std::vector<size_t>& line_starts) {
  std::vector<Definition> definitions;
  for (size_t line = 0; line < line_starts.size(); ++line) {
    const size_t start = line_starts[line];
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    size_t at = start;
    while (at < end && at - start < 3 && text[at] == ' ') ++at;
    if (at >= end || text[at] != '[') continue;
    const size_t close = closing_bracket(std::string_view(text).substr(0, end), at);
    if (close == std::string_view::npos || close + 1 >= end || text[close + 1] != ':') continue;
    const std::string label(text.substr(at + 1, close - at - 1));
    if (trim(label).empty()) continue;
    std::string_view rest = trim(std::string_view(text).substr(close + 2, end - close - 2));
    std::string target;
    if (!rest.empty() && rest.front() == '<') {
      const size_t greater = rest.find('>');
      if (greater == std::string_view::npos) continue;
      target = std::string(rest.substr(1, greater - 1));
    } else {
      target = std::string(rest.substr(0, std::min(rest.size(), rest.find_first_of(" \t"))));
    }
    if (target.empty()) continue;
    definitions.push_back({int(line) + 1, label, target});
    std::fill(text.begin() + std::ptrdiff_t(start), text.begin() + std::ptrdiff_t(end), ' ');
  }
  return definitions;
}

inline std::vector<size_t> line_starts_of(std::string_view text) {
  std::vector<size_t> starts{0};
  for (size_t at = 0; at < text.size(); ++at)
    if (text[at] == '\n') starts.push_back(at + 1);
  return starts;
}

inline int line_of(const std::vector<size_t>& line_starts, size_t offset) {
  return int(std::upper_bound(line_starts.begin(), line_starts.end(), offset) - line_starts.begin());
}

// "%20" and the like, as a browser decodes them before asking for the file.
inline std::string percent_decoded(std::string_view s) {
  std::string out;
  for (size_t at = 0; at < s.size(); ++at) {
    if (s[at] == '%' && at + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[at + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(s[at + 2])) != 0) {
      out += char(std::stoi(std::string(s.substr(at + 1, 2)), nullptr, 16));
      at += 2;
    } else {
      out += s[at];
    }
  }
  return out;
}

// The URL scheme ("https", "mailto") of a target, lowercased, or empty for a path.
inline std::string scheme_of(std::string_view target) {
  if (target.empty() || std::isalpha(static_cast<unsigned char>(target[0])) == 0) return {};
  size_t at = 1;
  while (at < target.size() && (std::isalnum(static_cast<unsigned char>(target[at])) != 0 || target[at] == '+' ||
                                target[at] == '-' || target[at] == '.'))
    ++at;
  if (at >= target.size() || target[at] != ':') return {};
  return lowercase(target.substr(0, at));
}

inline bool is_markdown_file(const std::filesystem::path& path) {
  const std::string extension = lowercase(path.extension().string());
  return extension == ".md" || extension == ".markdown";
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

}  // namespace detail

// Whether `word` occurs in `text` with no identifier character (letter, digit, _) on either side.
inline bool contains_word(std::string_view text, std::string_view word) {
  if (word.empty()) return false;
  for (size_t at = text.find(word); at != std::string_view::npos; at = text.find(word, at + 1)) {
    const bool starts = at == 0 || !detail::is_identifier_char(text[at - 1]);
    const bool ends = at + word.size() == text.size() || !detail::is_identifier_char(text[at + word.size()]);
    if (starts && ends) return true;
  }
  return false;
}

// The identifier a link text names when it is one code span holding a symbol: `a::b::c`,
// `c(args)`, `~c` give "c". Anything else (prose, a path such as `ops/ops.h`, `-100`,
// `config.json`, two code spans) names no symbol.
inline std::optional<std::string> symbol_of(std::string_view link_text) {
  std::string_view text = detail::trim(link_text);
  size_t ticks = 0;
  while (ticks < text.size() && text[ticks] == '`') ++ticks;
  if (ticks == 0 || text.size() < 2 * ticks + 1) return std::nullopt;
  for (size_t i = 0; i < ticks; ++i)
    if (text[text.size() - 1 - i] != '`') return std::nullopt;
  std::string_view symbol = detail::trim(text.substr(ticks, text.size() - 2 * ticks));
  if (symbol.find('`') != std::string_view::npos) return std::nullopt;
  if (!symbol.empty() && symbol.back() == ')') {  // drop the argument list
    int depth = 0;
    size_t open = std::string_view::npos;
    for (size_t at = symbol.size(); at-- > 0;) {
      if (symbol[at] == ')') ++depth;
      if (symbol[at] == '(' && --depth == 0) {
        open = at;
        break;
      }
    }
    if (open == std::string_view::npos || open == 0) return std::nullopt;
    symbol = detail::trim(symbol.substr(0, open));
  }
  std::string last;
  for (size_t begin = 0;;) {
    const size_t separator = symbol.find("::", begin);
    std::string_view part = symbol.substr(begin, separator == std::string_view::npos ? std::string_view::npos
                                                                                      : separator - begin);
    if (!part.empty() && part.front() == '~') part.remove_prefix(1);
    if (part.empty() || std::isdigit(static_cast<unsigned char>(part.front())) != 0 ||
        !std::all_of(part.begin(), part.end(), detail::is_identifier_char))
      return std::nullopt;
    last = std::string(part);
    if (separator == std::string_view::npos) break;
    begin = separator + 2;
  }
  return last;
}

// The links of a markdown text, in order.
inline std::vector<Link> find_links(std::string_view markdown) {
  using detail::closing_bracket;
  std::string text = detail::without_fenced_code(markdown);
  const std::vector<size_t> line_starts = detail::line_starts_of(text);
  std::vector<Link> links;
  std::map<std::string, std::string> targets_by_label;
  for (const detail::Definition& definition : detail::take_definitions(text, line_starts)) {
    // The definition is where its target is checked; its uses add the symbol checks.
    links.push_back({definition.line, "", definition.target, "[" + definition.label + "]: " + definition.target});
    targets_by_label.emplace(detail::normalized_label(definition.label), definition.target);
  }
  const std::string_view view(text);
  for (size_t at = 0; at < view.size();) {
    const char c = view[at];
    if (c == '\\') {
      at += 2;
      continue;
    }
    if (c == '`') {
      const size_t end = detail::code_span_end(view, at);
      if (end != std::string_view::npos) {
        at = end;
      } else {
        while (at < view.size() && view[at] == '`') ++at;
      }
      continue;
    }
    if (c == '<' && !detail::scheme_of(view.substr(at + 1)).empty()) {  // an autolink: never checked
      const size_t close = view.find_first_of(">\n", at);
      at = close == std::string_view::npos ? view.size() : close + 1;
      continue;
    }
    const bool image = c == '!' && at + 1 < view.size() && view[at + 1] == '[';
    if (c != '[' && !image) {
      ++at;
      continue;
    }
    const size_t start = at, open = image ? at + 1 : at;
    const size_t close = closing_bracket(view, open);
    if (close == std::string_view::npos) {
      at = open + 1;
      continue;
    }
    Link link;
    link.line = detail::line_of(line_starts, start);
    link.text = std::string(view.substr(open + 1, close - open - 1));
    size_t end = std::string_view::npos;
    if (close + 1 < view.size() && view[close + 1] == '(') {
      end = detail::inline_destination(view, close + 1, link.target);
    } else if (close + 1 < view.size() && view[close + 1] == '[') {
      const size_t label_close = closing_bracket(view, close + 1);
      if (label_close != std::string_view::npos) {
        const std::string_view label = view.substr(close + 2, label_close - close - 2);
        const auto found = targets_by_label.find(detail::normalized_label(label.empty() ? link.text : label));
        link.from_reference = true;
        if (found != targets_by_label.end()) {
          link.target = found->second;
        } else {
          link.undefined_label = true;
        }
        end = label_close + 1;
      }
    } else {
      const auto found = targets_by_label.find(detail::normalized_label(link.text));
      if (found != targets_by_label.end()) {
        link.from_reference = true;
        link.target = found->second;
        end = close + 1;
      }
    }
    if (end == std::string_view::npos) {  // plain brackets: links may still be inside
      at = open + 1;
      continue;
    }
    link.written = std::string(view.substr(start, end - start));
    links.push_back(std::move(link));
    at = end;
  }
  std::stable_sort(links.begin(), links.end(), [](const Link& a, const Link& b) { return a.line < b.line; });
  return links;
}

// What is wrong with one link, or nothing. `base_folder`: the markdown file's folder; `root`
// (when not empty): the folder that targets must stay inside.
inline std::optional<std::string> link_problem(const Link& link, const std::filesystem::path& base_folder,
                                               const std::filesystem::path& root = {}) {
  namespace fs = std::filesystem;
  if (link.undefined_label) return "no \"[label]: target\" definition for this reference";
  if (link.target.empty()) return "the link has no target";
  const std::string target = detail::percent_decoded(link.target);
  if (target.front() == '#') return std::nullopt;  // an anchor of the same page
  const std::string scheme = detail::scheme_of(target);
  if (scheme == "http" || scheme == "https" || scheme == "mailto") return std::nullopt;
  if (!scheme.empty()) return "a " + scheme + ": URL, which cannot be checked; link a file or an http(s) page";
  const size_t hash = target.find('#');
  const std::string path = target.substr(0, hash);
  if (path.empty()) return std::nullopt;
  if (path.front() == '/') return "an absolute path; write it relative to the markdown file's folder";
  const fs::path resolved = (base_folder / path).lexically_normal();
  if (!root.empty()) {
    fs::path top = root.lexically_normal();
    if (!top.has_filename()) top = top.parent_path();  // "/repo/" names the same folder as "/repo"
    const fs::path inside = resolved.lexically_relative(top);
    if (inside.empty() || *inside.begin() == "..") return "leads outside the repository (to " + resolved.string() + ")";
  }
  // "folder/" is looked up as "folder": stat() of "file/" fails, which would hide that it is a file.
  const fs::path on_disk = resolved.has_filename() ? resolved : resolved.parent_path();
  std::error_code error;
  const fs::file_status status = fs::status(on_disk, error);
  if (!fs::exists(status)) return path + " does not exist (looked for " + resolved.string() + ")";
  const bool folder_link = path.back() == '/';
  if (folder_link && !fs::is_directory(status)) return path + " is a file, but the link ends in /";
  if (!folder_link && fs::is_directory(status)) return path + " is a folder: end the link in /";
  if (hash != std::string::npos && !detail::is_markdown_file(resolved))
    return "an #anchor into " + path + ", which is not markdown: link the file and name the symbol instead";
  const std::optional<std::string> symbol = symbol_of(link.text);
  if (!symbol || fs::is_directory(status)) return std::nullopt;
  if (!contains_word(detail::read_file(on_disk), *symbol))
    return "'" + *symbol + "' does not occur in " + path + " as a whole word";
  return std::nullopt;
}

// Every problem of a markdown text, one message each: "<name>:<line>: <link>: <what is wrong>".
// A reference's target is checked at its definition, its symbol at each use.
inline std::vector<std::string> check_links(std::string_view markdown, const std::filesystem::path& base_folder,
                                            std::string_view name, const std::filesystem::path& root = {}) {
  std::vector<std::string> problems;
  for (const Link& link : find_links(markdown)) {
    if (link.from_reference && !link.undefined_label) {
      // A use of a definition whose target is broken: the definition's line says so already.
      Link target_only = link;
      target_only.text.clear();
      if (link_problem(target_only, base_folder, root)) continue;
    }
    const std::optional<std::string> problem = link_problem(link, base_folder, root);
    if (problem)
      problems.push_back(std::string(name) + ":" + std::to_string(link.line) + ": " + link.written + ": " + *problem);
  }
  return problems;
}

}  // namespace lamina::testing::markdown
