#include "train/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tensor/error.h"
#include "tensor/io/atomic_file.h"
#include "tensor/io/regular_file.h"

namespace lamina::train {

MetricsLog::MetricsLog(const std::string& path, int64_t keep_through_step)
    : path_(path), keep_through_step_(keep_through_step) {}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::fail(int error) const {
  throw Error(str_cat("cannot write metrics to ", path_, ": ", std::strerror(error)));
}

void MetricsLog::open() {
  std::string kept;
  if (keep_through_step_ >= 0) {
    std::ifstream in(path_);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      try {
        const json::Value value = json::parse(line);
        const json::Value* step = value.find("step");
        if (step != nullptr && step->as_int64() <= keep_through_step_) kept += line + "\n";
      } catch (const Error&) {
        break;  // a line cut short by a crash: drop it and everything after
      }
    }
    // The kept lines replace the file in one rename: a crash now loses nothing already logged.
    io::write_file_atomically(path_, kept);
  }
  file_ = std::fopen(path_.c_str(), keep_through_step_ >= 0 ? "a" : "w");
  if (file_ == nullptr) fail(errno);
}

void MetricsLog::write(const json::Value& line) {
  // Serialised first: a line that cannot be written (a non-finite number) must not leave an
  // empty file that makes the folder look like it holds a run.
  const std::string text = line.dump() + "\n";
  if (file_ == nullptr) open();
  errno = 0;
  if (std::fputs(text.c_str(), file_) == EOF || std::fflush(file_) != 0 || std::ferror(file_))
    fail(errno != 0 ? errno : EIO);
}

void MetricsLog::sync() {
  if (file_ == nullptr) return;
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) fail(errno);
}

void MetricsLog::close() {
  if (file_ == nullptr) return;
  std::FILE* file = file_;
  file_ = nullptr;
  if (std::fclose(file) != 0) fail(errno);
}

std::vector<json::Value> read_metrics(const std::string& path) {
  io::check_regular_file(path, "metrics");
  std::ifstream in(path);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  std::vector<json::Value> lines;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      lines.push_back(json::parse(line));
    } catch (const Error& error) {
      throw Error(str_cat(path, ":", number, ": ", error.what()));
    }
  }
  return lines;
}

namespace {
std::string format_duration(double seconds) {
  const int64_t s = int64_t(std::max(0.0, seconds));
  std::ostringstream out;
  if (s >= 3600) out << s / 3600 << "h";
  if (s >= 60) out << (s / 60) % 60 << "m";
  out << s % 60 << "s";
  return out.str();
}
}  // namespace

ProgressLine::ProgressLine(bool enabled)
    : enabled_(enabled), terminal_(::isatty(2) != 0), start_(std::chrono::steady_clock::now()) {}

void ProgressLine::update(int64_t step, int64_t total_steps, double loss, double lr, double tokens_per_second) {
  if (!enabled_) return;
  const int64_t every = std::max<int64_t>(1, total_steps / 10);
  if (!terminal_ && step % every != 0 && step != total_steps) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = step > 0 ? elapsed / double(step) * double(total_steps - step) : 0.0;
  std::fprintf(stderr, "%sstep %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s%s", terminal_ ? "\r" : "",
               (long long)step, (long long)total_steps, loss, lr, tokens_per_second, format_duration(eta).c_str(),
               terminal_ ? "   " : "\n");
  std::fflush(stderr);
  drawn_ = terminal_;
}

void ProgressLine::finish() {
  if (enabled_ && drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

TaskProgress::TaskProgress(bool enabled, std::string label, int64_t total, double delay_seconds)
    : enabled_(enabled),
      terminal_(::isatty(2) != 0),
      label_(std::move(label)),
      total_(total),
      delay_seconds_(delay_seconds),
      start_(std::chrono::steady_clock::now()) {}

void TaskProgress::update(int64_t done) {
  if (!enabled_ || total_ <= 0) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (elapsed < delay_seconds_) return;
  const int64_t tenth = done * 10 / total_;
  if (!terminal_ && tenth == last_tenth_) return;
  last_tenth_ = tenth;
  std::fprintf(stderr, "%s%s %lld/%lld (%.0fs)%s", terminal_ ? "\r" : "", label_.c_str(), (long long)done,
               (long long)total_, elapsed, terminal_ ? "   " : "\n");
  std::fflush(stderr);
  shown_ = true;
}

void TaskProgress::finish() {
  if (shown_ && terminal_) std::fprintf(stderr, "\n");
  shown_ = false;
}

int64_t peak_rss_bytes() {
  // VmHWM is the high-water mark of this process's own address space. getrusage's ru_maxrss is
  // not: Linux carries the spawning process's peak across fork and exec, so a small child of a
  // large parent would report the parent's peak.
  if (std::FILE* status = std::fopen("/proc/self/status", "r")) {
    char line[256];
    long long kib = -1;
    while (std::fgets(line, sizeof line, status) != nullptr)
      if (std::sscanf(line, "VmHWM: %lld kB", &kib) == 1) break;
    std::fclose(status);
    if (kib >= 0) return int64_t(kib) * 1024;
  }
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return int64_t(usage.ru_maxrss) * 1024;  // Linux reports KiB
}

std::optional<double> peak_flops_per_s(const std::string& device_name, DType dtype) {
  if (dtype != DType::bf16) return std::nullopt;
  const auto has = [&](const char* part) { return device_name.find(part) != std::string::npos; };
  // Checked most specific first: "H100 PCIe" and "H100 NVL" before the SXM part's plain "H100".
  if (has("H200")) return 989.4e12;
  if (has("H100") && has("PCIe")) return 756.0e12;
  if (has("H100") && has("NVL")) return 835.0e12;
  if (has("H100")) return 989.4e12;
  if (has("A100")) return 312.0e12;
  return std::nullopt;
}

}  // namespace lamina::train
