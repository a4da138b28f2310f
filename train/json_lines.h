// The line loop of lamina's JSON-lines readers that keep no statistics of their own (SPIN's answer
// file, REFUEL's dialogue starts): a UTF-8 byte-order mark dropped, blank lines skipped, each
// other line parsed and handed on, every error named by file:line.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "tensor/io/json.h"

namespace lamina::train {

// Calls visit(record, line_number, where) for every non-blank line of `path` (where =
// "path:line"; line numbers are 1-based and count blank lines). A line that is not JSON, or whose
// visit throws lamina::Error, stops the read with that error prefixed by `where` (unless the
// message already starts with the path); with skip_malformed it is skipped instead, the first
// such message and the count reported on stderr. Returns the lines skipped. A file that cannot be
// opened or read is an error.
int64_t read_json_lines(const std::string& path, bool skip_malformed,
                        const std::function<void(const json::Value& record, int64_t line, const std::string& where)>& visit);

}  // namespace lamina::train
