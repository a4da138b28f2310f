// What a training run reports: one JSON line per step in metrics.jsonl and a live progress line
// on the console (train/loss_curve.h draws the lines as an SVG).
#pragma once

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/io/json.h"

namespace lamina::train {

// Appends JSON lines to a file, flushed line by line so a crash loses at most one. Every write
// is checked: a failure (a full disk) is an Error naming the file and the reason. The file is
// created by the first write(), so a run that fails before its first step leaves none.
class MetricsLog {
 public:
  // Keeps the lines whose "step" is <= keep_through_step (a resumed run rewrites the rest);
  // a negative value starts the file afresh.
  MetricsLog(const std::string& path, int64_t keep_through_step);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const json::Value& line);
  // Makes what was written durable (fsync), as a checkpoint of the same step is.
  void sync();
  // Closes the file, checked (the destructor closes too, unchecked: it runs on error paths).
  void close();
  const std::string& path() const { return path_; }

 private:
  void open();
  [[noreturn]] void fail(int error) const;

  std::string path_;
  int64_t keep_through_step_;
  std::FILE* file_ = nullptr;
};

// Reads every JSON line of a metrics file (blank lines skipped; a bad line is an error naming it).
std::vector<json::Value> read_metrics(const std::string& path);

// "step 12/100 | loss 2.3456 | lr 3.0e-04 | 1234 tok/s | ETA 1m23s", redrawn in place on stderr.
class ProgressLine {
 public:
  // On a terminal the line is redrawn in place; otherwise (a log file, a pipe) a line is
  // printed for every tenth of the run.
  explicit ProgressLine(bool enabled);
  void update(int64_t step, int64_t total_steps, double loss, double lr, double tokens_per_second);
  void finish();  // ends the line

 private:
  bool enabled_;
  bool terminal_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
};

// "validation 12/40 batches", on stderr, for work that may take long (evaluating a large
// validation set): nothing is shown unless it is still running after `delay_seconds`, then it
// is redrawn in place on a terminal, or printed every tenth of the work otherwise.
class TaskProgress {
 public:
  TaskProgress(bool enabled, std::string label, int64_t total, double delay_seconds = 2.0);
  void update(int64_t done);
  void finish();  // ends the line, if one was shown

 private:
  bool enabled_;
  bool terminal_;
  bool shown_ = false;
  std::string label_;
  int64_t total_;
  int64_t last_tenth_ = -1;
  double delay_seconds_;
  std::chrono::steady_clock::time_point start_;
};

// Peak resident memory of this process so far, in bytes.
int64_t peak_rss_bytes();

// The dense peak FLOP/s of a GPU (by the name the driver reports) for bf16 matrix math, from
// the vendor's data sheets; nullopt for other dtypes, the CPU and GPUs not in the table. Model
// FLOPs utilisation (MFU) is achieved model FLOP/s over this.
std::optional<double> peak_flops_per_s(const std::string& device_name, DType dtype);

}  // namespace lamina::train
