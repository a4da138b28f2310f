#include "train/loss_curve.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "tensor/error.h"

namespace lamina::train {
namespace {

struct Point {
  double step, loss;
};

// Beyond these the arithmetic of the axes would overflow (1e308 - -1e308 is inf) or lose the
// integer steps (a double holds every integer up to 2^53); a loss this large means the run
// diverged long before, and such points are left out and counted instead.
constexpr double kLargestStep = 9007199254740992.0;  // 2^53
constexpr double kLargestLoss = 1e100;

// The drawing area, in SVG units.
constexpr double kWidth = 720, kHeight = 420, kLeft = 70, kRight = 20, kTop = 46, kBottom = 50;

// A series longer than this is thinned to the lowest and the highest point of each of
// kBuckets equal slices of the step axis: a few points per pixel column, spikes kept.
constexpr size_t kBuckets = 1000;

std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : printable_message(text)) {  // valid UTF-8 without control characters: well-formed XML
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<Point> thinned(std::vector<Point> points, double min_step, double max_step) {
  std::stable_sort(points.begin(), points.end(), [](const Point& a, const Point& b) { return a.step < b.step; });
  if (points.size() <= 2 * kBuckets) return points;
  std::vector<Point> out;
  const double span = max_step - min_step;
  for (size_t first = 0; first < points.size();) {
    const auto bucket_of = [&](const Point& p) {
      return std::min(kBuckets - 1, size_t((p.step - min_step) / span * double(kBuckets)));
    };
    const size_t bucket = bucket_of(points[first]);
    size_t end = first, lowest = first, highest = first;
    for (; end < points.size() && bucket_of(points[end]) == bucket; ++end) {
      if (points[end].loss < points[lowest].loss) lowest = end;
      if (points[end].loss > points[highest].loss) highest = end;
    }
    out.push_back(points[std::min(lowest, highest)]);  // in step order
    if (lowest != highest) out.push_back(points[std::max(lowest, highest)]);
    first = end;
  }
  return out;
}

// An axis from `low` to `high` with "nice" ticks (1, 2 or 5 times a power of ten apart, whole
// numbers when `integers`), labelled with just enough digits to tell them apart.
struct Axis {
  double low, high;
  std::vector<double> ticks;
  std::vector<std::string> labels;
};

Axis make_axis(double low, double high, bool integers) {
  const double magnitude = std::max(std::fabs(low), std::fabs(high));
  if (high - low <= magnitude * 1e-9) {  // one value (or all but equal): give it room
    const double pad = integers ? 1.0 : (magnitude > 0 ? magnitude * 0.1 : 1.0);
    low -= pad;
    high += pad;
  }
  const double rough = (high - low) / 4;
  const double power = std::pow(10.0, std::floor(std::log10(rough)));
  double spacing = power * 10;
  for (const double factor : {1.0, 2.0, 5.0})
    if (power * factor >= rough) {
      spacing = power * factor;
      break;
    }
  if (integers) spacing = std::max(1.0, std::round(spacing));
  Axis axis{low, high, {}, {}};
  const double largest = std::max(std::fabs(low), std::fabs(high));
  const int digits = std::clamp(int(std::floor(std::log10(largest))) - int(std::floor(std::log10(spacing))) + 1, 1, 17);
  const double first = std::ceil(low / spacing) * spacing;
  for (int i = 0; i <= 10; ++i) {  // spacing >= a quarter of the range: at most five ticks
    const double tick = first + spacing * i;
    if (tick > high + spacing * 1e-9) break;
    axis.ticks.push_back(tick);
    char label[48];
    if (integers && std::fabs(tick) < 1e15)
      std::snprintf(label, sizeof label, "%lld", static_cast<long long>(std::llround(tick)));
    else
      std::snprintf(label, sizeof label, "%.*g", digits, std::fabs(tick) < spacing * 1e-9 ? 0.0 : tick);
    axis.labels.push_back(label);
  }
  return axis;
}

}  // namespace

std::string loss_curve_svg(const std::vector<json::Value>& lines, const std::string& title) {
  std::vector<Point> train, validation;
  int64_t skipped = 0;
  for (const json::Value& line : lines) {
    const json::Value* step_value = line.is_object() ? line.find("step") : nullptr;
    if (step_value == nullptr) continue;
    const double step = step_value->is_number() ? step_value->as_double() : NAN;
    for (const auto& [key, points] : {std::pair{"loss", &train}, std::pair{"val_loss", &validation}}) {
      const json::Value* loss_value = line.find(key);
      if (loss_value == nullptr) continue;
      const double loss = loss_value->is_number() ? loss_value->as_double() : NAN;
      if (std::isfinite(step) && std::fabs(step) <= kLargestStep && std::isfinite(loss) && std::fabs(loss) <= kLargestLoss)
        points->push_back({step, loss});
      else
        ++skipped;
    }
  }
  const std::string skipped_note =
      skipped == 0 ? "" : str_cat(skipped, skipped == 1 ? " value" : " values", " not drawn: not a number, not finite or out of range");
  LAMINA_CHECK(!train.empty() || !validation.empty(), "plot: no \"loss\" or \"val_loss\" values to draw",
               skipped == 0 ? "" : " (" + skipped_note + ")");

  double min_step = kLargestStep, max_step = -kLargestStep, min_loss = kLargestLoss, max_loss = -kLargestLoss;
  bool integer_steps = true;
  for (const auto* points : {&train, &validation})
    for (const Point& p : *points) {
      min_step = std::min(min_step, p.step);
      max_step = std::max(max_step, p.step);
      min_loss = std::min(min_loss, p.loss);
      max_loss = std::max(max_loss, p.loss);
      integer_steps = integer_steps && p.step == std::floor(p.step);
    }
  const Axis x_axis = make_axis(min_step, max_step, integer_steps);
  const Axis y_axis = make_axis(min_loss, max_loss, false);
  train = thinned(std::move(train), x_axis.low, x_axis.high);
  validation = thinned(std::move(validation), x_axis.low, x_axis.high);

  const auto x = [&](double step) {
    return kLeft + (step - x_axis.low) / (x_axis.high - x_axis.low) * (kWidth - kLeft - kRight);
  };
  const auto y = [&](double loss) {
    return kTop + (y_axis.high - loss) / (y_axis.high - y_axis.low) * (kHeight - kTop - kBottom);
  };
  std::ostringstream svg;
  svg.precision(6);
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << kWidth / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(title)
      << "</text>\n";
  if (!skipped_note.empty())
    svg << "<text x=\"" << kWidth / 2 << "\" y=\"36\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555\">"
        << xml_escape(skipped_note) << "</text>\n";
  svg << "<line x1=\"" << kLeft << "\" y1=\"" << kHeight - kBottom << "\" x2=\"" << kWidth - kRight << "\" y2=\""
      << kHeight - kBottom << "\" stroke=\"black\"/>\n<line x1=\"" << kLeft << "\" y1=\"" << kTop << "\" x2=\"" << kLeft
      << "\" y2=\"" << kHeight - kBottom << "\" stroke=\"black\"/>\n";
  for (size_t i = 0; i < x_axis.ticks.size(); ++i)
    svg << "<text x=\"" << x(x_axis.ticks[i]) << "\" y=\"" << kHeight - kBottom + 18 << "\" text-anchor=\"middle\">"
        << x_axis.labels[i] << "</text>\n";
  for (size_t i = 0; i < y_axis.ticks.size(); ++i)
    svg << "<text x=\"" << kLeft - 8 << "\" y=\"" << y(y_axis.ticks[i]) + 4 << "\" text-anchor=\"end\">" << y_axis.labels[i]
        << "</text>\n";
  svg << "<text x=\"" << kWidth / 2 << "\" y=\"" << kHeight - 10 << "\" text-anchor=\"middle\">step</text>\n";
  if (!train.empty()) {
    svg << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (const Point& p : train) svg << x(p.step) << "," << y(p.loss) << " ";
    svg << "\"/>\n";
    if (train.size() == 1)  // a line of one point is invisible
      svg << "<circle cx=\"" << x(train[0].step) << "\" cy=\"" << y(train[0].loss) << "\" r=\"2.5\" fill=\"#1f77b4\"/>\n";
  }
  for (const Point& p : validation)
    svg << "<circle cx=\"" << x(p.step) << "\" cy=\"" << y(p.loss) << "\" r=\"3.5\" fill=\"#d62728\"/>\n";
  svg << "<text x=\"" << kWidth - kRight - 150 << "\" y=\"" << kTop + 10 << "\" fill=\"#1f77b4\">&#8212; train loss</text>\n";
  if (!validation.empty())
    svg << "<text x=\"" << kWidth - kRight - 150 << "\" y=\"" << kTop + 28
        << "\" fill=\"#d62728\">&#9679; validation loss</text>\n";
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace lamina::train
