// Errors carry their context (op, shapes, dtypes, file, offset) in the message; nothing in
// lamina aborts the process on bad input.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lamina {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Concatenates anything that has an operator<< into one string.
template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

}  // namespace lamina

// LAMINA_CHECK(cond, "op: ", detail, ...) throws lamina::Error with the message when cond fails.
#define LAMINA_CHECK(cond, ...)                                  \
  do {                                                           \
    if (!(cond)) throw ::lamina::Error(::lamina::str_cat(__VA_ARGS__)); \
  } while (0)

// Internal invariants: a failure here is a lamina bug, not a user error.
#define LAMINA_ASSERT(cond)                                                                   \
  do {                                                                                        \
    if (!(cond))                                                                              \
      throw ::lamina::Error(::lamina::str_cat("internal error: ", #cond, " at ", __FILE__, ":", \
                                              __LINE__));                                     \
  } while (0)
