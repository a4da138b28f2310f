// `lamina mutate`: CycleQD's SVD mutation of a model (models/surgery/mutate.h), written as a new
// Hugging Face folder:
//
//   lamina mutate --model M --sigma S --seed K --out DIR [--filter mlp] [--rank R]
//
// Each chosen Linear weight W = U diag(s) V^T becomes U diag(s * (1 + S * eps)) V^T, eps ~ N(0, 1)
// per singular value, seeded by K and the tensor's name. The model is streamed tensor by tensor;
// DIR is built under a temporary name and renamed into place when complete, and gets config.json,
// the weights (each in its input dtype) and the model's tokenizer files. A JSON line on stdout
// reports the tensors mutated, the time and the peak resident memory.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "models/surgery/mutate.h"
#include "tensor/error.h"
#include "tensor/io/json.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/model_files.h"
#include "tools/staged_folder.h"
#include "train/metrics.h"

namespace lamina::cli {
namespace {

namespace fs = std::filesystem;

const std::string kCommand = "lamina mutate";

double parse_sigma(const std::string& text) {
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || !(value >= 0))
    throw UsageError(kCommand + ": --sigma must be a number >= 0, got '" + text + "'", "run 'lamina mutate --help'");
  return value;
}

}  // namespace

int run_mutate(const Arguments& args) {
  FlagParser parser(kCommand + " --model M --sigma S --out DIR",
                    "Mutates a model along its singular vectors (CycleQD): each chosen Linear weight\n"
                    "W = U diag(s) V^T becomes U diag(s * (1 + S * eps)) V^T with eps ~ N(0, 1) drawn per singular\n"
                    "value from the seed and the tensor's name; the singular vectors are kept. The SVD is exact\n"
                    "(f64) unless --rank R limits the mutation to the top R directions (the rest of W is kept).\n"
                    "M is a full-precision Hugging Face folder; tensors are read, mutated and written one at a\n"
                    "time, each in its input dtype. DIR is built under a temporary name and renamed into place\n"
                    "when complete. Prints one JSON line: tensors mutated, seconds and peak resident memory.");
  parser.add_option("model", "M", "the model (a Hugging Face folder)");
  parser.add_option("sigma", "S", "the relative scale of the random factors (0 returns the model)");
  parser.add_option("seed", "K", "the seed of eps", "0");
  parser.add_option("filter", "TEXT,...", "mutate the Linear weights whose names contain one of these (e.g. mlp)",
                    "every Linear of the decoder layers");
  parser.add_option("rank", "R", "mutate only the top R singular directions (0: all)", "0");
  parser.add_option("out", "DIR", "where the mutated Hugging Face folder goes");
  parser.add_switch("overwrite", "replace DIR when it exists (otherwise an existing DIR is refused)");
  if (!parser.parse(args)) return 0;
  const std::string model = parser.required("model");
  const std::string out = parser.required("out");
  surgery::MutateOptions options;
  options.sigma = parse_sigma(parser.required("sigma"));
  options.seed = uint64_t(parser.int_value("seed", 0, 0, INT64_MAX));
  options.rank = parser.int_value("rank", 0, 0, INT64_MAX);
  if (parser.is_set("filter")) options.filters = parser.list_value("filter");

  std::error_code error;
  LAMINA_CHECK(fs::exists(model, error), kCommand, ": ", model, " not found");
  if (fs::exists(out, error)) {
    LAMINA_CHECK(parser.is_set("overwrite"), kCommand, ": ", out, " exists; pass --overwrite to replace it");
    LAMINA_CHECK(fs::is_directory(out, error), kCommand, ": ", out, " exists and is not a folder");
    LAMINA_CHECK(!fs::equivalent(out, model, error), kCommand, ": --out must differ from --model");
  }
  // The filters are checked before the output folder exists.
  const std::vector<std::string> targets = surgery::mutation_targets(model, options);

  const auto start = std::chrono::steady_clock::now();
  std::fprintf(stderr, "mutating %zu matrices of %s (sigma %g, seed %llu)\n", targets.size(), model.c_str(),
               options.sigma, static_cast<unsigned long long>(options.seed));
  StagedFolder folder(out);
  int64_t last_tenth = 0;
  options.on_tensor = [&](int64_t done, int64_t total, const std::string&) {
    const int64_t tenth = done * 10 / total;
    if (tenth != last_tenth)
      std::fprintf(stderr, "  %lld/%lld tensors\n", static_cast<long long>(done), static_cast<long long>(total));
    last_tenth = tenth;
  };
  const surgery::MutateSummary summary = surgery::mutate_model(model, folder.path().string(), options);
  for (const char* name : kCompanionFiles) {
    const fs::path source = fs::path(model) / name;
    if (fs::is_regular_file(source)) fs::copy_file(source, folder.path() / name);
  }
  folder.commit();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  json::Value report = json::Object{};
  report.set("out", out);
  report.set("sigma", options.sigma);
  report.set("seed", json::Value(int64_t(options.seed)));
  report.set("tensors", json::Value(summary.tensors));
  report.set("mutated", json::Value(int64_t(summary.mutated.size())));
  report.set("bytes", json::Value(int64_t(summary.bytes_written)));
  report.set("seconds", seconds);
  report.set("peak_rss_bytes", json::Value(train::peak_rss_bytes()));
  std::printf("%s\n", report.dump().c_str());
  std::fprintf(stderr, "wrote %s\n", out.c_str());
  return 0;
}

}  // namespace lamina::cli
