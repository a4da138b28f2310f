// Learning-rate schedules: linear warmup from 0, then constant, linear decay or cosine decay
// down to min_lr_ratio x the peak at the last step.
#pragma once

#include <cstdint>
#include <string>

namespace lamina::train {

enum class ScheduleKind { constant, linear, cosine };
ScheduleKind schedule_from_name(const std::string& name);  // "constant", "linear", "cosine"
const char* schedule_name(ScheduleKind kind);

struct Schedule {
  ScheduleKind kind = ScheduleKind::cosine;
  double peak_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.1;

  // The rate for 0-based step `step` (the step about to be taken).
  double lr(int64_t step) const;
};

}  // namespace lamina::train
