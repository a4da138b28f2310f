// Shared by the differentiable function files. Each function calls its raw forward op with grad
// mode as it is (raw ops never record: tests/autograd/test_ops_record_nothing.cpp) and then
// records one node whose rule calls the raw backward. Each opens a profiler scope named
// forward:<op> first (free while the profiler is off), so that `bench train --profile` can
// rank the forward ops; the engine times the rules as backward:<node name>.
#pragma once

#include "autograd/autograd.h"
#include "autograd/functions.h"
#include "tensor/profiler.h"

namespace lamina::autograd {

using Grads = std::vector<Tensor>;

}  // namespace lamina::autograd
