// The real pretrained model that tools/fetch-models.sh fetches (SmolLM2-135M-Instruct, Q4_1
// GGUF), for the cases of the "real_model" doctest suite. ctest runs that suite as its own entry,
// reported as skipped when the model is absent (test_main.cpp), so here a missing file fails.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

namespace lamina::testing {

inline std::string smollm2_gguf_path() {
  const char* models = std::getenv("LAMINA_MODELS");
  const std::filesystem::path folder = models != nullptr && *models != '\0' ? models : LAMINA_MODELS_DIR;
  const std::filesystem::path path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf";
  REQUIRE_MESSAGE(std::filesystem::exists(path), "the real model is not at " << path.string()
                                                  << " (run tools/fetch-models.sh)");
  return path.string();
}

}  // namespace lamina::testing
