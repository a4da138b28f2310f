// The doctest main shared by every suite (compiled once). Test cases that need the shared test
// assets (the real Llama-3 tokenizer, the stories260k model) are in the doctest test suite
// "assets", and tests/CMakeLists.txt gives each executable that has some two ctest entries: one
// with --test-suite-exclude=assets, one with --test-suite=assets. When the second runs on a
// checkout without the assets, this main exits with 77, which ctest shows as "Skipped": a fresh
// clone goes green without them, but says so, instead of counting cases that checked nothing as
// passed. Inside the suite a missing asset is a failure (testing::assets_dir REQUIREs it).
// Cases that need the real model fetched by tools/fetch-models.sh work the same way, in the
// suite "real_model".
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace {

// A doctest test suite whose cases need files that a fresh clone may lack, and where they live.
struct OptionalFiles {
  const char* suite;
  std::filesystem::path folder;
  std::vector<const char*> required;  // relative to folder
  const char* what;
};

// The shared test assets, and the real model that tools/fetch-models.sh puts in the models cache
// ($LAMINA_MODELS when set, as the script uses it).
std::vector<OptionalFiles> optional_file_suites() {
  const char* models = std::getenv("LAMINA_MODELS");
  return {{"assets", LAMINA_ASSETS_DIR, {"llama3-tokenizer/tokenizer.json", "stories260k"}, "test assets"},
          {"real_model", models != nullptr && *models != '\0' ? models : LAMINA_MODELS_DIR,
           {"SmolLM2-135M-Instruct.Q4_1.gguf"}, "the real model (run tools/fetch-models.sh)"}};
}

// The suite the command line asks for alone ("--test-suite=<name>", as its ctest entry does).
const OptionalFiles* suite_run_alone(int argc, char** argv, const std::vector<OptionalFiles>& suites) {
  for (int i = 1; i < argc; ++i) {
    for (const OptionalFiles& suite : suites) {
      if (argv[i] == std::string("--test-suite=") + suite.suite) return &suite;
    }
  }
  return nullptr;
}

// The folder when it is absent, else the first required file that is; an empty path when all
// are there.
std::filesystem::path first_missing(const OptionalFiles& suite) {
  if (!std::filesystem::exists(suite.folder)) return suite.folder;
  for (const char* file : suite.required) {
    if (!std::filesystem::exists(suite.folder / file)) return suite.folder / file;
  }
  return {};
}

// The registered test cases of a suite (doctest's own registry, which this file may read
// because it holds doctest's implementation).
int case_count(const char* suite) {
  int count = 0;
  for (const doctest::detail::TestCase& test_case : doctest::detail::getRegisteredTests()) {
    count += std::strcmp(test_case.m_test_suite, suite) == 0;
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<OptionalFiles> suites = optional_file_suites();
  if (const OptionalFiles* suite = suite_run_alone(argc, argv, suites)) {
    const int cases = case_count(suite->suite);
    // An entry for a suite that has no such case would pass having run nothing: the lists of
    // suites with such cases in tests/CMakeLists.txt are out of date.
    if (cases == 0) {
      std::printf("error: no test case of this executable is in the \"%s\" test suite; drop it from "
                  "its list in tests/CMakeLists.txt\n", suite->suite);
      return 1;
    }
    if (const std::filesystem::path missing = first_missing(*suite); !missing.empty()) {
      std::printf("SKIPPED: %s not found at %s (cases that need them: %d)\n", suite->what, missing.c_str(), cases);
      return 77;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}
