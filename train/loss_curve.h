// The loss curve of a training run as an SVG document, drawn from its metrics lines.
#pragma once

#include <string>
#include <vector>

#include "tensor/io/json.h"

namespace lamina::train {

// The loss curve of metrics lines as an SVG document: training loss ("loss" by "step") as a
// line, validation loss ("val_loss") as points, axes with round-numbered ticks (whole steps
// when the steps are). Values that are not numbers, not finite, or beyond what the axes can
// hold (|loss| > 1e100, |step| > 2^53) are left out and counted under the title; none left is
// an error. A series of more than 2000 points is thinned to the lowest and highest point of
// each of 1000 slices of the step axis, so the file stays small and spikes stay visible.
std::string loss_curve_svg(const std::vector<json::Value>& lines, const std::string& title);

}  // namespace lamina::train
