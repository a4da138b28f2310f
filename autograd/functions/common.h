// Shared by the differentiable function files.
#pragma once

#include <utility>

#include "autograd/autograd.h"
#include "autograd/functions.h"

namespace lamina::autograd {

// Runs a raw op with the tape off, so that tensor methods used inside it record nothing.
template <typename F>
auto untaped(F&& f) {
  NoGradGuard guard;
  return f();
}

using Grads = std::vector<Tensor>;

}  // namespace lamina::autograd
