// Data-parallel training end to end: real `lamina train` processes, one per rank, joined by the
// CPU process group (train/distributed/process_group.h) through the environment that `lamina
// launch` and torchrun set. The rule being checked: N ranks with --batch-size b compute what
// one process computes with --batch-size N*b in micro-batches of b (the same rows, the same
// token normalisation), up to the order in which f32 gradients are summed; rank 0 alone writes
// the output folder; a dead rank stops the others with a clear error; a resumed run continues
// exactly.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "models/io/safetensors.h"
#include "tensor/io/json.h"
#include "free_port.h"
#include "tools/cli_runner.h"
#include "tools/train_workspace.h"

using namespace lamina;
using namespace lamina::testing;
namespace fs = std::filesystem;

namespace {

struct RankRuns {
  std::vector<int> status;
  std::vector<std::string> output;
  double seconds = 0;
};

// Starts `lamina <arguments>` once per rank, as torchrun would (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), each with its own extra environment, and waits for all of them.
RankRuns run_ranks(const ScratchDir& dir, int ranks, const std::string& arguments,
                   const std::vector<std::string>& rank_environment = {}) {
  const int port = free_port();
  std::string script;
  for (int r = 0; r < ranks; ++r) {
    const std::string extra = r < int(rank_environment.size()) ? rank_environment[size_t(r)] : "";
    script += "RANK=" + std::to_string(r) + " WORLD_SIZE=" + std::to_string(ranks) + " LOCAL_RANK=" +
              std::to_string(r) + " LOCAL_WORLD_SIZE=" + std::to_string(ranks) +
              " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + extra + " " + LAMINA_CLI_PATH + " " +
              arguments + " > " + (dir / ("rank" + std::to_string(r) + ".log")) + " 2>&1 & pid" + std::to_string(r) +
              "=$!; ";
  }
  for (int r = 0; r < ranks; ++r)
    script += "wait $pid" + std::to_string(r) + "; echo \"status" + std::to_string(r) + "=$?\"; ";
  const auto start = std::chrono::steady_clock::now();
  std::FILE* pipe = popen(("sh -c '" + script + "'").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string printed;
  char buffer[1024];
  for (size_t n; (n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) printed.append(buffer, n);
  pclose(pipe);
  RankRuns runs;
  runs.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int r = 0; r < ranks; ++r) {
    const std::string key = "status" + std::to_string(r) + "=";
    const size_t at = printed.find(key);
    runs.status.push_back(at == std::string::npos ? -1 : std::stoi(printed.substr(at + key.size())));
    runs.output.push_back(file_bytes(dir / ("rank" + std::to_string(r) + ".log")));
  }
  return runs;
}

std::string both_outputs(const RankRuns& runs) {
  std::string text;
  for (size_t r = 0; r < runs.output.size(); ++r) text += "--- rank " + std::to_string(r) + ":\n" + runs.output[r];
  return text;
}

// The largest |a - b| over every tensor of two safetensors files with the same names.
double max_difference(const std::string& a_path, const std::string& b_path) {
  const safetensors::File a = safetensors::File::open(a_path);
  const safetensors::File b = safetensors::File::open(b_path);
  REQUIRE(a.tensors().size() == b.tensors().size());
  double largest = 0;
  for (const safetensors::TensorInfo& info : a.tensors()) {
    const Tensor x = a.read(info.name), y = b.read(info.name);
    REQUIRE(x.numel() == y.numel());
    REQUIRE(x.dtype() == DType::f32);
    for (int64_t i = 0; i < x.numel(); ++i)
      largest = std::max(largest, double(std::fabs(x.data<float>()[i] - y.data<float>()[i])));
  }
  return largest;
}

std::vector<json::Value> metrics_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<json::Value> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(json::parse(line));
  return lines;
}

// Chats whose answers differ in length (one or two digits, a word), so that the ranks' shares of
// a step hold different numbers of target tokens.
struct DataParallelWorkspace : Workspace {
  DataParallelWorkspace() : Workspace("cli-data-parallel") {
    save_byte_level_model(*this / "base", 5, 0.3);
    std::ofstream chats(path / "uneven.jsonl");
    for (int i = 0; i < 16; ++i)
      chats << R"({"messages": [{"role": "user", "content": "after )" << i << R"("}, {"role": "assistant", "content": ")"
            << (i % 3 == 0 ? std::string("the number ") + std::to_string(i * 7 + 1) : std::to_string(i + 1)) << R"("}]})"
            << "\n";
  }
  std::string sft(const std::string& output, const std::string& extra) const {
    return "train sft --model " + (*this / "base") + " --data " + (*this / "uneven.jsonl") + " --output " +
           (*this / output) + " --seq-len 48 --no-pack --lr 1e-2 --schedule constant --warmup-steps 0 "
           "--validation-fraction 0 --precision f32 --quiet " + extra;
  }
};

// Two ranks train 4 steps, checkpointing every 2; a second such run has rank `killed_rank`
// killed after step 3 (the other must then fail too) and is resumed: its final weights must be
// the uninterrupted run's, bit for bit.
void check_killed_run_resumes(const DataParallelWorkspace& w, const std::string& extra, int killed_rank) {
  const std::string flags = "--steps 4 --save-every 2 --batch-size 2 " + extra;
  const RankRuns whole = run_ranks(w, 2, w.sft("whole", flags));
  INFO(both_outputs(whole));
  REQUIRE(whole.status == std::vector<int>{0, 0});
  std::vector<std::string> environment(2);
  environment[size_t(killed_rank)] = "LAMINA_FAILPOINT=train.after-step@3:kill";
  const RankRuns killed = run_ranks(w, 2, w.sft("resumed", flags), environment);
  INFO(both_outputs(killed));
  CHECK(killed.status[size_t(killed_rank)] == 128 + 9);
  CHECK(killed.status[size_t(1 - killed_rank)] != 0);
  const RankRuns resumed = run_ranks(w, 2, w.sft("resumed", flags + " --resume"));
  INFO(both_outputs(resumed));
  REQUIRE(resumed.status == std::vector<int>{0, 0});
  CHECK(resumed.output[0].find("resuming from") != std::string::npos);
  CHECK(file_bytes(w / "whole/model/model.safetensors") == file_bytes(w / "resumed/model/model.safetensors"));
}

}  // namespace

TEST_CASE("two ranks with batch 2 train the model one process trains with batch 4 in micro-batches of 2") {
  const DataParallelWorkspace w;
  const Run one = run_lamina(w.sft("one", "--steps 3 --batch-size 4 --micro-batch-size 2"));
  REQUIRE_MESSAGE(one.status == 0, one.output);
  const RankRuns two = run_ranks(w, 2, w.sft("two", "--steps 3 --batch-size 2"));
  INFO(both_outputs(two));
  REQUIRE(two.status == std::vector<int>{0, 0});
  CHECK(two.output[0].find("data parallel: 2 ranks") != std::string::npos);

  // The same weights, up to the order of the f32 sums (across ranks, then within each).
  const double difference = max_difference(w / "one/model/model.safetensors", w / "two/model/model.safetensors");
  CHECK(difference < 2e-5);
  // ... while a different batch (one process, 2 rows: half the step) lands far from both, so
  // the bound above would catch a wrong split or normalisation.
  const Run half = run_lamina(w.sft("half", "--steps 3 --batch-size 2"));
  REQUIRE_MESSAGE(half.status == 0, half.output);
  CHECK(max_difference(w / "one/model/model.safetensors", w / "half/model/model.safetensors") > 100 * 2e-5);

  // Rank 0's metrics are the whole step's: the same losses and token counts as the one process.
  const std::vector<json::Value> single = metrics_of(w / "one/metrics.jsonl");
  const std::vector<json::Value> parallel = metrics_of(w / "two/metrics.jsonl");
  REQUIRE(single.size() == 3);
  REQUIRE(parallel.size() == 3);
  for (size_t i = 0; i < 3; ++i) {
    CHECK(parallel[i].at("loss").as_double() == doctest::Approx(single[i].at("loss").as_double()).epsilon(1e-5));
    CHECK(parallel[i].at("target_tokens").as_int64() == single[i].at("target_tokens").as_int64());
    CHECK(parallel[i].at("tokens").as_int64() == single[i].at("tokens").as_int64());
    CHECK(parallel[i].at("world_size").as_int64() == 2);
    CHECK(parallel[i].at("comm_bytes").as_int64() > 0);
  }
}

TEST_CASE("lamina launch --nproc 2 -- lamina train sft: the same run as two ranks started by hand") {
  const DataParallelWorkspace w;
  const Run launched = run_lamina("launch --nproc 2 -- lamina " + w.sft("launched", "--steps 2 --batch-size 2"));
  INFO(launched.output);
  REQUIRE(launched.status == 0);
  const RankRuns by_hand = run_ranks(w, 2, w.sft("by-hand", "--steps 2 --batch-size 2"));
  INFO(both_outputs(by_hand));
  REQUIRE(by_hand.status == std::vector<int>{0, 0});
  // Same ranks, same data, same order of sums: the same bits.
  CHECK(file_bytes(w / "launched/model/model.safetensors") == file_bytes(w / "by-hand/model/model.safetensors"));
  CHECK(launched.output.find("data parallel: 2 ranks") != std::string::npos);
  CHECK(launched.output.find("[rank 1] fine-tuned 2 steps") != std::string::npos);
}

TEST_CASE("data-parallel LoRA and DPO match one process with the doubled batch") {
  const DataParallelWorkspace w;
  const std::string lora = "--lora r=4,alpha=8,targets=all-linear ";
  const Run one = run_lamina(w.sft("one", lora + "--steps 2 --batch-size 4 --micro-batch-size 2"));
  REQUIRE_MESSAGE(one.status == 0, one.output);
  const RankRuns two = run_ranks(w, 2, w.sft("two", lora + "--steps 2 --batch-size 2"));
  INFO(both_outputs(two));
  REQUIRE(two.status == std::vector<int>{0, 0});
  CHECK(max_difference(w / "one/model/adapter_model.safetensors", w / "two/model/adapter_model.safetensors") < 2e-5);

  {
    std::ofstream pairs(w.path / "pairs.jsonl");
    for (int i = 0; i < 8; ++i)
      pairs << R"({"prompt": "after )" << i << R"( comes", "chosen": " )" << i + 1 << R"(", "rejected": " )"
            << (i + 5) % 10 << R"( or so"})" << "\n";
  }
  const std::string dpo = "train dpo --model " + (w / "base") + " --data " + (w / "pairs.jsonl") +
                          " --lr 2e-2 --schedule constant --weight-decay 0 --steps 2 --precision f32 --quiet --output ";
  const Run dpo_one = run_lamina(dpo + (w / "dpo-one") + " --batch-size 4 --micro-batch-size 2");
  REQUIRE_MESSAGE(dpo_one.status == 0, dpo_one.output);
  const RankRuns dpo_two = run_ranks(w, 2, dpo + (w / "dpo-two") + " --batch-size 2");
  INFO(both_outputs(dpo_two));
  REQUIRE(dpo_two.status == std::vector<int>{0, 0});
  CHECK(max_difference(w / "dpo-one/model/model.safetensors", w / "dpo-two/model/model.safetensors") < 2e-5);
  const std::vector<json::Value> single = metrics_of(w / "dpo-one/metrics.jsonl");
  const std::vector<json::Value> parallel = metrics_of(w / "dpo-two/metrics.jsonl");
  REQUIRE(single.size() == parallel.size());
  for (size_t i = 0; i < single.size(); ++i) {
    CHECK(parallel[i].at("loss").as_double() == doctest::Approx(single[i].at("loss").as_double()).epsilon(1e-5));
    CHECK(parallel[i].at("rewards/margins").as_double() ==
          doctest::Approx(single[i].at("rewards/margins").as_double()).epsilon(1e-4));
  }
}

TEST_CASE("a data-parallel run killed after a checkpoint resumes to the weights of one never stopped") {
  const DataParallelWorkspace w;
  // Rank 0 dies after step 3 (its checkpoint of step 2 written); rank 1 must notice.
  check_killed_run_resumes(w, "", 0);
  // A different world size is a change that breaks exactness: refused by default.
  const Run alone = run_lamina(w.sft("resumed", "--steps 4 --save-every 2 --batch-size 2 --resume"));
  INFO(alone.output);
  CHECK(alone.status != 0);
  CHECK(alone.output.find("world size (ranks): 2 -> 1") != std::string::npos);
}

TEST_CASE("a rank that dies mid-run makes the other exit with an error naming it, well within the timeout") {
  const DataParallelWorkspace w;
  const RankRuns runs = run_ranks(w, 2, w.sft("out", "--steps 6 --batch-size 2"),
                                  {"LAMINA_DIST_TIMEOUT_S=60", "LAMINA_DIST_TIMEOUT_S=60 LAMINA_FAILPOINT=train.after-step@2:kill"});
  INFO(both_outputs(runs));
  CHECK(runs.status[1] == 128 + 9);
  CHECK(runs.status[0] != 0);
  CHECK(runs.output[0].find("rank 1") != std::string::npos);
  CHECK(runs.seconds < 30);  // the closed connection is noticed at once, not at the 60 s timeout
  // Rank 0 owns the folder and leaves no final model behind.
  CHECK_FALSE(fs::exists(fs::path(w / "out") / "model"));
}

TEST_CASE("KTO's KL estimate and BCO's baseline are taken over every rank's rows, as one process with the whole batch") {
  const DataParallelWorkspace w;
  {
    std::ofstream labelled(w.path / "labelled.jsonl");
    for (int i = 0; i < 8; ++i)
      labelled << R"({"prompt": "after )" << i << R"( comes", "completion": " )" << (i % 2 == 0 ? i + 1 : i + 3)
               << R"(", "label": )" << (i % 2 == 0 ? "true" : "false") << "}\n";
  }
  for (const char* loss : {"kto", "bco"}) {
    CAPTURE(loss);
    const std::string command = std::string("train preference --loss ") + loss + " --model " + (w / "base") +
                                " --data " + (w / "labelled.jsonl") +
                                " --lr 2e-2 --schedule constant --weight-decay 0 --steps 2 --precision f32 --quiet";
    // One process: the whole batch of 4 in one micro-batch, so its statistics are over all 4.
    const Run one = run_lamina(command + " --batch-size 4 --output " + (w / (std::string(loss) + "-one")));
    REQUIRE_MESSAGE(one.status == 0, one.output);
    const RankRuns two = run_ranks(w, 2, command + " --batch-size 2 --output " + (w / (std::string(loss) + "-two")));
    INFO(both_outputs(two));
    REQUIRE(two.status == std::vector<int>{0, 0});
    CHECK(max_difference(w / (std::string(loss) + "-one/model/model.safetensors"),
                         w / (std::string(loss) + "-two/model/model.safetensors")) < 2e-5);
    const std::vector<json::Value> single = metrics_of(w / (std::string(loss) + "-one/metrics.jsonl"));
    const std::vector<json::Value> parallel = metrics_of(w / (std::string(loss) + "-two/metrics.jsonl"));
    REQUIRE(single.size() == parallel.size());
    const char* statistic = std::string(loss) == "kto" ? "kl" : "delta";
    for (size_t i = 0; i < single.size(); ++i)
      CHECK(parallel[i].at(statistic).as_double() ==
            doctest::Approx(single[i].at(statistic).as_double()).epsilon(1e-5));
  }
}

TEST_CASE("trainers that cannot split their steps refuse to run on several ranks, before connecting") {
  const DataParallelWorkspace w;
  {
    std::ofstream pairs(w.path / "pairs.jsonl");
    for (int i = 0; i < 4; ++i)
      pairs << R"({"prompt": "after )" << i << R"(", "chosen": " )" << i + 1 << R"(", "rejected": " 0"})" << "\n";
  }
  const RankRuns runs = run_ranks(w, 2, "train reward --model " + (w / "base") + " --data " + (w / "pairs.jsonl") +
                                            " --steps 1 --batch-size 2 --quiet --output " + (w / "reward"));
  INFO(both_outputs(runs));
  CHECK(runs.status[0] != 0);
  CHECK(runs.output[0].find("cannot train on 2 ranks") != std::string::npos);
  CHECK(runs.output[0].find("data parallel: 2 ranks") == std::string::npos);  // refused before the rendezvous
}

TEST_CASE("ZeRO-1 and ZeRO-2 train what plain data parallelism trains; a consolidated ZeRO checkpoint is its checkpoint") {
  const DataParallelWorkspace w;
  const std::string common = "--steps 3 --save-every 2 --batch-size 2 --weight-decay 0.1 ";
  const RankRuns plain = run_ranks(w, 2, w.sft("plain", common));
  INFO(both_outputs(plain));
  REQUIRE(plain.status == std::vector<int>{0, 0});
  for (const char* stage : {"1", "2"}) {
    CAPTURE(stage);
    const std::string name = std::string("zero") + stage;
    const RankRuns zero = run_ranks(w, 2, w.sft(name, common + "--zero-stage " + stage));
    INFO(both_outputs(zero));
    REQUIRE(zero.status == std::vector<int>{0, 0});
    CHECK(max_difference(w / "plain/model/model.safetensors", w / (name + "/model/model.safetensors")) < 2e-5);
    // Each rank wrote its own shard of the optimizer into rank 0's checkpoint.
    const fs::path checkpoint = fs::path(w / name) / "checkpoints/step-00000002";
    CHECK(fs::exists(checkpoint / "optimizer.rank-0-of-2.safetensors"));
    CHECK(fs::exists(checkpoint / "optimizer.rank-1-of-2.safetensors"));
    CHECK_FALSE(fs::exists(checkpoint / "optimizer.safetensors"));
    if (std::string(stage) == "2") {
      // Each rank's shard holds about half of the optimizer's elements.
      const auto bytes = [&](const char* file) { return double(fs::file_size(checkpoint / file)); };
      const double whole = double(fs::file_size(fs::path(w / "plain") / "checkpoints/step-00000002/optimizer.safetensors"));
      CHECK(bytes("optimizer.rank-0-of-2.safetensors") < 0.8 * whole);
      CHECK(bytes("optimizer.rank-1-of-2.safetensors") < 0.8 * whole);

      const Run consolidated = run_lamina("checkpoint consolidate --checkpoint " + checkpoint.string() + " --out " +
                                          (w / "whole"));
      INFO(consolidated.output);
      REQUIRE(consolidated.status == 0);
      const fs::path reference = fs::path(w / "plain") / "checkpoints/step-00000002";
      CHECK(max_difference((reference / "optimizer.safetensors").string(), w / "whole/optimizer.safetensors") < 2e-5);
      CHECK(max_difference((reference / "model.safetensors").string(), w / "whole/model.safetensors") < 2e-5);
      CHECK(fs::exists(fs::path(w / "whole") / "COMPLETE"));
      CHECK(json::parse_file(w / "whole/trainer.json").at("trainer").at("options").at("zero-stage").as_int64() == 0);
      // Not a ZeRO checkpoint: refused, nothing written.
      const Run refused = run_lamina("checkpoint consolidate --checkpoint " + reference.string() + " --out " + (w / "x"));
      CHECK(refused.status != 0);
      CHECK(refused.output.find("not a ZeRO checkpoint") != std::string::npos);
      CHECK_FALSE(fs::exists(fs::path(w / "x")));
    }
  }
}

TEST_CASE("a ZeRO-2 run killed after a checkpoint resumes to the weights of one never stopped") {
  const DataParallelWorkspace w;
  check_killed_run_resumes(w, "--zero-stage 2", 1);
}

TEST_CASE("lamina bench allreduce: a JSON line per size, from real rank processes, beside a memcpy bound") {
  const Run run = run_lamina("bench allreduce --ranks 3 --sizes 4K,256K --seconds 0.05");
  INFO(run.output);
  REQUIRE(run.status == 0);
  std::vector<json::Value> lines;
  std::istringstream in(run.output);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("{\"bench\":\"allreduce\"", 0) == 0) lines.push_back(json::parse(line));
  REQUIRE(lines.size() == 2);
  CHECK(lines[0].at("bytes").as_int64() == 4096);
  CHECK(lines[1].at("bytes").as_int64() == 256 * 1024);
  for (const json::Value& line : lines) {
    CHECK(line.at("ranks").as_int64() == 3);
    CHECK(line.at("busbw_gbps").as_double() > 0);
    // The bus bandwidth counts 2(n-1)/n of the bytes: 4/3 of the algorithm bandwidth on 3 ranks.
    CHECK(line.at("busbw_gbps").as_double() == doctest::Approx(line.at("algbw_gbps").as_double() * 4.0 / 3.0).epsilon(0.01));
    CHECK(line.at("memcpy_gbps").as_double() > 0);
  }
  const Run one = run_lamina("bench allreduce --ranks 1");
  CHECK(one.status == 2);
}
