// The doctest main shared by every suite (compiled once). Test cases that need the shared test
// assets (the real Llama-3 tokenizer, the stories260k model) are in the doctest test suite
// "assets", and tests/CMakeLists.txt gives each executable that has some two ctest entries: one
// with --test-suite-exclude=assets, one with --test-suite=assets. When the second runs on a
// checkout without the assets, this main exits with 77, which ctest shows as "Skipped": a fresh
// clone goes green without them, but says so, instead of counting cases that checked nothing as
// passed. Inside the suite a missing asset is a failure (testing::assets_dir REQUIREs it).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

constexpr const char* kAssetsSuite = "assets";

// What the "assets" cases read, relative to LAMINA_ASSETS_DIR.
constexpr const char* kRequiredAssets[] = {"llama3-tokenizer/tokenizer.json", "stories260k"};

// True when the command line asks for exactly the "assets" suite, as its ctest entry does.
bool runs_only_assets_suite(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (argv[i] == std::string("--test-suite=") + kAssetsSuite) return true;
  }
  return false;
}

// The assets folder when it is absent, else the first required asset that is; an empty path
// when all are there.
std::filesystem::path missing_asset() {
  const std::filesystem::path folder = LAMINA_ASSETS_DIR;
  if (!std::filesystem::exists(folder)) return folder;
  for (const char* asset : kRequiredAssets) {
    if (!std::filesystem::exists(folder / asset)) return folder / asset;
  }
  return {};
}

// The registered test cases of the "assets" suite (doctest's own registry, which this file may
// read because it holds doctest's implementation).
int assets_case_count() {
  int count = 0;
  for (const doctest::detail::TestCase& test_case : doctest::detail::getRegisteredTests()) {
    count += std::strcmp(test_case.m_test_suite, kAssetsSuite) == 0;
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  if (runs_only_assets_suite(argc, argv)) {
    const int cases = assets_case_count();
    // An entry for a suite that has no such case would pass having run nothing: the list of
    // suites with asset cases in tests/CMakeLists.txt is out of date.
    if (cases == 0) {
      std::printf("error: no test case of this executable is in the \"%s\" test suite; drop it from "
                  "LAMINA_ASSET_SUITES in tests/CMakeLists.txt\n", kAssetsSuite);
      return 1;
    }
    if (const std::filesystem::path missing = missing_asset(); !missing.empty()) {
      std::printf("SKIPPED: test assets not found at %s (cases that need them: %d)\n", missing.c_str(), cases);
      return 77;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}
