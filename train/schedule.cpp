#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"

namespace lamina::train {

ScheduleKind schedule_from_name(const std::string& name) {
  if (name == "constant") return ScheduleKind::constant;
  if (name == "linear") return ScheduleKind::linear;
  if (name == "cosine") return ScheduleKind::cosine;
  throw Error(str_cat("unknown schedule '", name, "' (expected constant, linear or cosine)"));
}

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::constant: return "constant";
    case ScheduleKind::linear: return "linear";
    case ScheduleKind::cosine: return "cosine";
  }
  return "unknown";
}

double Schedule::lr(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return peak_lr * double(step + 1) / double(warmup_steps);
  if (kind == ScheduleKind::constant) return peak_lr;
  const int64_t decay_steps = std::max<int64_t>(1, total_steps - warmup_steps - 1);
  const double progress = std::clamp(double(step - warmup_steps) / double(decay_steps), 0.0, 1.0);
  const double floor = peak_lr * min_lr_ratio;
  if (kind == ScheduleKind::linear) return peak_lr - (peak_lr - floor) * progress;
  return floor + 0.5 * (peak_lr - floor) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace lamina::train
