// The docs' links: every relative link of README.md and docs/*.md leads to a file or folder of
// the repository, and every link named by a code symbol leads to a file that has it
// (tests/docs/markdown_links.h states the convention). The checker itself is tested first on
// small texts, so that a checker that accepted everything could not pass for a working one.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>

#include "docs/markdown_links.h"
#include "scratch_dir.h"

namespace fs = std::filesystem;
using namespace lamina::testing;
using namespace lamina::testing::markdown;

namespace {

const fs::path kRepository = LAMINA_SOURCE_DIR;

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The markdown files the suite checks: README.md and every .md file in docs/ (files that other
// work adds to docs/ are covered without a change here).
std::vector<fs::path> documentation_files() {
  std::vector<fs::path> files{kRepository / "README.md"};
  for (const auto& entry : fs::directory_iterator(kRepository / "docs"))
    if (entry.is_regular_file() && entry.path().extension() == ".md") files.push_back(entry.path());
  std::sort(files.begin() + 1, files.end());
  return files;
}

// A small tree to check texts against: docs/ holds the texts' folder, src/ the code they name.
struct Tree {
  ScratchDir scratch{"doc-links"};
  fs::path docs = scratch.path / "docs";
  Tree() {
    write_text(scratch.path / "src/norm.cpp", "// x: [B, T, C]\nRmsNormResult rms_norm(const Tensor& x);\n");
    write_text(scratch.path / "src/model.h", "class LlamaForCausalLM {\n  Tensor forward(const Tensor& ids) const;\n};\n");
    write_text(docs / "other.md", "# Other\n");
    fs::create_directories(scratch.path / "src/cpu");
  }
  std::vector<std::string> problems(const std::string& markdown) const {
    return check_links(markdown, docs, "page.md", scratch.path);
  }
};

bool mentions(const std::vector<std::string>& problems, const std::string& line_prefix, const std::string& text) {
  return std::any_of(problems.begin(), problems.end(), [&](const std::string& problem) {
    return problem.rfind(line_prefix, 0) == 0 && problem.find(text) != std::string::npos;
  });
}

std::string joined(const std::vector<std::string>& problems) {
  std::string out;
  for (const std::string& problem : problems) out += problem + "\n";
  return out;
}

}  // namespace

TEST_CASE("symbol_of names the last identifier of a code-span link text") {
  CHECK(symbol_of("`rms_norm`") == "rms_norm");
  CHECK(symbol_of("`LlamaForCausalLM::forward`") == "forward");
  CHECK(symbol_of(" `ops::rms_norm_backward(grad_out, x, weight, rstd)` ") == "rms_norm_backward");
  CHECK(symbol_of("`Tokenizer::encode()`") == "encode");
  CHECK(symbol_of("``Node::~Node``") == "Node");
  CHECK(symbol_of("`Tokenizer::encode(std::string_view, f(x))`") == "encode");
  // Not symbols: prose, paths, file names, numbers, templates, two spans, an empty span.
  CHECK_FALSE(symbol_of("rms_norm").has_value());
  CHECK_FALSE(symbol_of("the `rms_norm` op").has_value());
  CHECK_FALSE(symbol_of("`ops/ops.h`").has_value());
  CHECK_FALSE(symbol_of("`config.json`").has_value());
  CHECK_FALSE(symbol_of("`-100`").has_value());
  CHECK_FALSE(symbol_of("`std::vector<int>`").has_value());
  CHECK_FALSE(symbol_of("`a` and `b`").has_value());
  CHECK_FALSE(symbol_of("``").has_value());
  CHECK_FALSE(symbol_of("`(x)`").has_value());
  CHECK_FALSE(symbol_of("`2x`").has_value());
}

TEST_CASE("contains_word matches whole identifiers only") {
  CHECK(contains_word("void rms_norm(x);", "rms_norm"));
  CHECK(contains_word("rms_norm", "rms_norm"));
  CHECK_FALSE(contains_word("void rms_norm_backward(x);", "rms_norm"));
  CHECK_FALSE(contains_word("void my_rms_norm(x);", "rms_norm"));
  CHECK(contains_word("my_rms_norm; rms_norm;", "rms_norm"));  // a later occurrence counts
  CHECK_FALSE(contains_word("anything", ""));
}

TEST_CASE("the checker reports a broken path and a missing symbol, and passes good links") {
  const Tree tree;
  const std::string markdown =
      "# A page\n"
      "\n"
      "Good: [`rms_norm`](../src/norm.cpp), [`LlamaForCausalLM::forward`](../src/model.h), [code](../src/).\n"
      "A broken path: [`rms_norm`](../src/nrom.cpp).\n"
      "A missing symbol: [`layer_norm`](../src/norm.cpp).\n"
      "Part of a word is not the word: [`rms`](../src/norm.cpp).\n";
  const std::vector<std::string> problems = tree.problems(markdown);
  INFO(joined(problems));
  CHECK(problems.size() == 3);
  CHECK(mentions(problems, "page.md:4: [`rms_norm`](../src/nrom.cpp): ", "../src/nrom.cpp does not exist"));
  CHECK(mentions(problems, "page.md:5: [`layer_norm`](../src/norm.cpp): ", "'layer_norm' does not occur in ../src/norm.cpp"));
  CHECK(mentions(problems, "page.md:6: ", "'rms' does not occur"));
}

TEST_CASE("what the checker counts as a link, and what it requires of one") {
  const Tree tree;
  SUBCASE("code blocks, code spans, escapes and external links are not checked") {
    const std::string markdown =
        "```cpp\n"
        "auto a = x[i](missing.cpp);  // [not](a-link.cpp)\n"
        "```\n"
        "~~~~\n"
        "[still code](missing.cpp)\n"
        "```\n"
        "~~~~\n"
        "Inline code `[x](missing.cpp)` and ``[y](missing.cpp) with ` inside``.\n"
        "Escaped \\[not a link](missing.cpp); shape [B, T] (not a link either).\n"
        "[web](https://example.com/x.cpp) [mail](mailto:someone@example.com) [top](#a-page) <https://example.com>\n"
        "[titled](../src/norm.cpp \"the norm\") [angled](<../src/norm.cpp>) ![image](other.md)\n";
    const std::vector<std::string> problems = tree.problems(markdown);
    INFO(joined(problems));
    CHECK(problems.empty());
    const std::vector<Link> links = find_links(markdown);
    REQUIRE(links.size() == 6);
    CHECK(links[3].line == 11);
    CHECK(links[4].target == "../src/norm.cpp");
    CHECK(links[5].written == "![image](other.md)");
  }
  SUBCASE("folders, anchors and paths that leave the tree") {
    const std::string markdown =
        "[folder](../src/cpu/) [no slash](../src/cpu) [file with slash](../src/norm.cpp/)\n"
        "[code anchor](../src/norm.cpp#L2) [page anchor](other.md#other) [folder symbol `x`](../src/)\n"
        "[`rms_norm`](../src/) [absolute](/etc/passwd) [outside](../../outside.md) [ftp](ftp://host/file)\n"
        "[space](../src/no%20such.cpp) [empty]()\n";
    const std::vector<std::string> problems = tree.problems(markdown);
    INFO(joined(problems));
    CHECK(problems.size() == 8);
    CHECK(mentions(problems, "page.md:1: [no slash]", "is a folder: end the link in /"));
    CHECK(mentions(problems, "page.md:1: [file with slash]", "is a file, but the link ends in /"));
    CHECK(mentions(problems, "page.md:2: [code anchor]", "an #anchor into ../src/norm.cpp"));
    CHECK(mentions(problems, "page.md:3: [absolute]", "an absolute path"));
    CHECK(mentions(problems, "page.md:3: [outside]", "leads outside the repository"));
    CHECK(mentions(problems, "page.md:3: [ftp]", "a ftp: URL"));
    CHECK(mentions(problems, "page.md:4: [space]", "../src/no such.cpp does not exist"));
    CHECK(mentions(problems, "page.md:4: [empty](): ", "the link has no target"));
  }
  SUBCASE("reference links: the target at the definition, the symbol at each use") {
    const std::string markdown =
        "Uses: [`rms_norm`][norm], [`layer_norm`][norm], [norm][], [Norm], [`x`][missing].\n"
        "A link text over\n"
        "two lines: [`layer_norm`\n"
        "](../src/norm.cpp).\n"
        "\n"
        "[norm]: ../src/norm.cpp\n"
        "  [broken]: ../src/gone.cpp \"a title\"\n"
        "[`rms_norm`][broken] is reported once, at its definition.\n";
    const std::vector<std::string> problems = tree.problems(markdown);
    INFO(joined(problems));
    CHECK(problems.size() == 4);
    CHECK(mentions(problems, "page.md:1: [`layer_norm`][norm]", "'layer_norm' does not occur"));
    CHECK(mentions(problems, "page.md:1: [`x`][missing]", "no \"[label]: target\" definition"));
    CHECK(mentions(problems, "page.md:3: [`layer_norm`\n](../src/norm.cpp)", "'layer_norm' does not occur"));
    CHECK(mentions(problems, "page.md:7: [broken]: ../src/gone.cpp", "../src/gone.cpp does not exist"));
  }
}

TEST_CASE("every link of README.md and docs/*.md leads to what it names") {
  int links = 0;
  for (const fs::path& file : documentation_files()) {
    const std::string markdown = read_text(file);
    links += int(find_links(markdown).size());
    const std::string name = fs::relative(file, kRepository).string();
    for (const std::string& problem : check_links(markdown, file.parent_path(), name, kRepository)) FAIL_CHECK(problem);
  }
  MESSAGE(links, " links checked in ", documentation_files().size(), " files");
}

TEST_CASE("the walkthrough links its path through the code by symbol") {
  const fs::path file = kRepository / "docs/walkthrough.md";
  REQUIRE(fs::is_regular_file(file));
  const std::vector<Link> links = find_links(read_text(file));
  std::set<std::string> folders;
  int symbol_links = 0;
  for (const Link& link : links) {
    if (!symbol_of(link.text)) continue;
    ++symbol_links;
    folders.insert(link.target.substr(0, link.target.find('/', 3)));  // "../models", "../train", ...
  }
  // A walk from tokenizer to generation crosses every layer of the library.
  CHECK(symbol_links >= 40);
  for (const char* folder : {"../models", "../train", "../autograd", "../ops", "../nn"}) {
    INFO("no symbol link into ", folder);
    CHECK(folders.count(folder) == 1);
  }
}
