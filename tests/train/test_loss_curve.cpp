// The loss-curve SVG on hostile metrics: values the axes cannot hold are left out and counted,
// a long run is thinned with its spikes kept, and tick labels are distinct whole steps.
#include <set>
#include <string>
#include <vector>

#include "helpers.h"
#include "train/loss_curve.h"

using namespace lamina;

namespace {

json::Value metrics_line(json::Value step, json::Value loss, const char* key = "loss") {
  json::Value line = json::Object{};
  line.set("step", std::move(step));
  line.set(key, std::move(loss));
  return line;
}

// The text of every <text> element whose y attribute is `y` (the x-axis labels sit at y=388).
std::vector<std::string> labels_at(const std::string& svg, const std::string& y) {
  std::vector<std::string> labels;
  const std::string marker = "y=\"" + y + "\"";
  for (size_t at = svg.find("<text "); at != std::string::npos; at = svg.find("<text ", at + 1)) {
    const size_t open_end = svg.find('>', at);
    if (svg.substr(at, open_end - at).find(marker) == std::string::npos) continue;
    labels.push_back(svg.substr(open_end + 1, svg.find("</text>", open_end) - open_end - 1));
  }
  return labels;
}

// The points of the training loss polyline, as "x,y" texts.
std::vector<std::string> polyline_points(const std::string& svg) {
  const size_t start = svg.find("points=\"");
  REQUIRE(start != std::string::npos);
  std::vector<std::string> points;
  std::string point;
  for (size_t at = start + 8; svg[at] != '"'; ++at) {
    if (svg[at] != ' ') {
      point += svg[at];
    } else if (!point.empty()) {
      points.push_back(point);
      point.clear();
    }
  }
  return points;
}

}  // namespace

TEST_CASE("loss curve: values too large for the axes are left out and counted, never drawn as nan or inf") {
  const std::vector<json::Value> lines = {metrics_line(1, 1e308), metrics_line(2, -1e308), metrics_line(3, 2.5),
                                          metrics_line(4, 2.0), metrics_line(5, json::Value()),
                                          metrics_line(6, 1.0, "val_loss")};
  const std::string svg = train::loss_curve_svg(lines, "run");
  CHECK(svg.find("nan") == std::string::npos);
  CHECK(svg.find("inf") == std::string::npos);
  CHECK(svg.find("3 values not drawn") != std::string::npos);
  CHECK(polyline_points(svg).size() == 2);

  CHECK_THROWS_WITH_AS(train::loss_curve_svg({metrics_line(1, 1e308), metrics_line(2, -1e308)}, "run"),
                       doctest::Contains("no \"loss\" or \"val_loss\" values to draw (2 values not drawn"), Error);
}

TEST_CASE("loss curve: a step beyond what a double holds exactly is left out, not cast to a wrapped integer") {
  CHECK_THROWS_WITH_AS(train::loss_curve_svg({metrics_line(1e300, 1.0)}, "run"),
                       doctest::Contains("1 value not drawn"), Error);
  const std::string svg = train::loss_curve_svg({metrics_line(1e300, 1.0), metrics_line(7, 1.0), metrics_line(8, 0.5)}, "run");
  CHECK(svg.find("-9223372036854775808") == std::string::npos);
  CHECK(svg.find("1 value not drawn") != std::string::npos);
}

TEST_CASE("loss curve: the step axis of a short run has distinct whole-number ticks") {
  for (const int steps : {2, 3, 5, 7}) {
    CAPTURE(steps);
    std::vector<json::Value> lines;
    for (int step = 1; step <= steps; ++step) lines.push_back(metrics_line(step, 3.0 / step));
    const std::vector<std::string> labels = labels_at(train::loss_curve_svg(lines, "run"), "388");
    REQUIRE(labels.size() >= 2);
    CHECK(std::set<std::string>(labels.begin(), labels.end()).size() == labels.size());
    for (const std::string& label : labels) CHECK(label.find_first_not_of("0123456789") == std::string::npos);
  }
}

TEST_CASE("loss curve: a long run is thinned to a few points per pixel, its spike kept") {
  std::vector<json::Value> lines;
  const int steps = 20000;
  for (int step = 1; step <= steps; ++step) lines.push_back(metrics_line(step, step == 12345 ? 50.0 : 2.0 + (step % 7) * 0.01));
  const std::string svg = train::loss_curve_svg(lines, "run");
  const std::vector<std::string> points = polyline_points(svg);
  CHECK(points.size() <= 2000);
  CHECK(points.size() >= 1000);
  // The spike is the highest loss: drawn at the top of the plot area (y = 46).
  bool spike_drawn = false;
  for (const std::string& point : points) spike_drawn = spike_drawn || point.substr(point.find(',') + 1) == "46";
  CHECK(spike_drawn);
  CHECK(svg.size() < 100000);
}

TEST_CASE("loss curve: a title with control characters or invalid UTF-8 still gives well-formed XML") {
  const std::string svg = train::loss_curve_svg({metrics_line(1, 1.0)}, std::string("bad\x01 \xEF title\0end", 16));
  CHECK(svg.find("bad\\x01 \\xef title\\x00end") != std::string::npos);
}
