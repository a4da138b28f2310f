// Fault injection: `lamina train` killed (SIGKILL) or out of disk space (ENOSPC) at every stage
// of a step and a checkpoint, resumed each time, ends with the very files of a run that was
// never interrupted, and leaves no debris. The faults come from the LAMINA_FAILPOINT places of
// train/failpoint.h, in the real binary run as a subprocess. A full disk is injected there
// rather than by mounting a small tmpfs, which needs root that CI does not have; the real
// write-error checks are tested on /dev/full (tests/train/test_checkpoint_faults.cpp).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "helpers.h"
#include "tools/train_workspace.h"
#include "train/checkpoint.h"
#include "train/metrics.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

constexpr int kKilled = 128 + 9;  // SIGKILL

std::string pretrain(const Workspace& w, const std::string& output) {
  return w.pretrain_command() + " --data " + (w / "text.jsonl") + " --output " + (w / output) +
         " --steps 10 --save-every 2 --keep-checkpoints 2 --warmup-steps 2 --batch-size 2 --seq-len 32 --quiet";
}

RunOptions failpoint(const std::string& setting) { return {.environment = "LAMINA_FAILPOINT=" + setting}; }

std::string bytes_of(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every file of the run's checkpoints/ and model/, by relative path: weights, optimizer state,
// trainer.json (options, data cursor, counters) and the tokenizer.
std::map<std::string, std::string> run_files(const fs::path& run) {
  std::map<std::string, std::string> files;
  for (const char* folder : {"checkpoints", "model"})
    for (const auto& entry : fs::recursive_directory_iterator(run / folder))
      if (entry.is_regular_file()) files[fs::relative(entry.path(), run).string()] = bytes_of(entry.path());
  return files;
}

// Each step's loss, learning rate and gradient norm as logged, exactly.
std::vector<std::string> logged_numbers(const fs::path& run) {
  std::vector<std::string> out;
  for (const json::Value& line : train::read_metrics((run / "metrics.jsonl").string()))
    out.push_back(line.at("step").dump() + " " + line.at("loss").dump() + " " + line.at("lr").dump() + " " +
                  line.at("grad_norm").dump());
  return out;
}

// Partial, deleting and temporary files anywhere in the run, and checkpoints without their marker.
std::vector<std::string> debris(const fs::path& run) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(run)) {
    const std::string name = entry.path().filename().string();
    if (name.find(".partial-") != std::string::npos || name.find(".deleting-") != std::string::npos ||
        name.find(".tmp-") != std::string::npos)
      found.push_back(entry.path().string());
  }
  for (const auto& entry : fs::directory_iterator(run / "checkpoints"))
    if (!fs::exists(entry.path() / "COMPLETE")) found.push_back(entry.path().string() + " (no COMPLETE)");
  return found;
}

bool has_entry_containing(const fs::path& folder, const std::string& part) {
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().filename().string().find(part) != std::string::npos) return true;
  return false;
}

std::string resumed_step(const Run& run) {
  const size_t at = run.output.find("(step ");
  return at == std::string::npos ? "none" : run.output.substr(at + 6, run.output.find(')', at) - at - 6);
}

void check_same_as_uninterrupted(const Workspace& w, const std::string& output) {
  const Run straight = run_lamina(pretrain(w, "straight"));
  INFO(straight.output);
  REQUIRE(straight.status == 0);
  CHECK(logged_numbers(w.path / output) == logged_numbers(w.path / "straight"));
  CHECK(logged_numbers(w.path / output).size() == 10);
  const std::map<std::string, std::string> expected = run_files(w.path / "straight"), got = run_files(w.path / output);
  for (const auto& [path, bytes] : got) CHECK_MESSAGE(expected.count(path) == 1, path);
  for (const auto& [path, bytes] : expected) {
    INFO(path);
    REQUIRE(got.count(path) == 1);
    CHECK(got.at(path) == bytes);  // bit for bit
  }
  CHECK(got.count("model/model.safetensors") == 1);
  CHECK(debris(w.path / output).empty());
}

}  // namespace

TEST_CASE("killed at every stage of a step and a checkpoint, resumed each time: bit-identical, no debris") {
  Workspace w("cli-faults-kill");
  const std::string command = pretrain(w, "run"), resume = command + " --resume";
  const fs::path checkpoints = w.path / "run" / "checkpoints";
  // Inside the first checkpoint's writing: nothing completes, a partial folder stays behind.
  Run run = run_lamina(command, failpoint("checkpoint.after-model@2:kill"));
  INFO(run.output);
  REQUIRE(run.status == kKilled);
  CHECK(has_entry_containing(checkpoints, ".partial-"));
  CHECK_FALSE(train::latest_checkpoint(w / "run").has_value());
  struct Kill {
    std::string place, resumed_from, leaves;  // where the run dies, the step it starts from, what it leaves
  };
  const std::vector<Kill> kills = {
      {"metrics.write@3", "none", ""},  // nothing complete yet: starts at 0, removing the partial folder
      {"checkpoint.after-optimizer@4", "2", "checkpoints/step-00000004.partial-"},
      {"checkpoint.after-state@4", "2", "checkpoints/step-00000004.partial-"},
      {"checkpoint.before-rename@4", "2", "checkpoints/step-00000004.partial-"},  // complete, not yet named
      {"checkpoint.after-rename@6", "2", ""},  // three checkpoints: 2 was not pruned
      {"train.after-step@7", "6", ""},
      {"checkpoint.prune-renamed@8", "6", "checkpoints/step-00000004.deleting-"},
      {"checkpoint.prune-removing@10", "8", "checkpoints/step-00000006.deleting-"},  // trainer.json, no weights
      {"model.before-swap@10", "10", "model.partial-"},
  };
  for (const Kill& kill : kills) {
    run = run_lamina(resume, failpoint(kill.place + ":kill"));
    INFO(kill.place, "\n", run.output);
    REQUIRE(run.status == kKilled);
    CHECK(resumed_step(run) == kill.resumed_from);
    if (!kill.leaves.empty()) {
      const fs::path left = w.path / "run" / kill.leaves;
      CHECK(has_entry_containing(left.parent_path(), left.filename().string()));
    }
  }
  CHECK(train::latest_checkpoint(w / "run").value().find("step-00000010") != std::string::npos);
  run = run_lamina(resume);
  INFO(run.output);
  REQUIRE(run.status == 0);
  CHECK(resumed_step(run) == "10");
  CHECK(run.output.find("left by a run that was killed") != std::string::npos);
  check_same_as_uninterrupted(w, "run");
}

TEST_CASE("a full disk at each write fails clearly, keeps the last checkpoint, and resumes bit-identical") {
  Workspace w("cli-faults-full");
  const std::string command = pretrain(w, "run"), resume = command + " --resume";
  struct Failure {
    std::string place, file, resumed_from;
  };
  // Each failure, the file its error names, and the step the failed run itself started from.
  const std::vector<Failure> failures = {
      {"checkpoint.after-model@4", "optimizer.safetensors", "none"},
      {"checkpoint.after-optimizer@4", "trainer.json", "2"},
      {"checkpoint.after-state@4", "COMPLETE", "2"},
      {"metrics.write@5", "metrics.jsonl", "2"},
      {"checkpoint.before-rename@8", "step-00000008", "4"},
      {"model.before-swap@10", "model", "6"},
  };
  const std::vector<int> latest_after = {2, 2, 2, 4, 6, 10};
  for (size_t i = 0; i < failures.size(); ++i) {
    const Failure& failure = failures[i];
    const Run run = run_lamina(i == 0 ? command : resume, failpoint(failure.place + ":enospc"));
    INFO(failure.place, "\n", run.output);
    CHECK(run.status == 1);
    CHECK(run.output.find(failure.file + ": No space left on device") != std::string::npos);
    CHECK(resumed_step(run) == failure.resumed_from);
    // The checkpoint before the failure is intact and the only thing left; nothing half-written.
    const std::optional<std::string> latest = train::latest_checkpoint(w / "run");
    REQUIRE(latest.has_value());
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08d", latest_after[i]);
    CHECK(*latest == (w.path / "run" / "checkpoints" / name).string());
    CHECK(debris(w.path / "run").empty());
  }
  const Run run = run_lamina(resume);  // the disk has room again
  INFO(run.output);
  REQUIRE(run.status == 0);
  check_same_as_uninterrupted(w, "run");
}
