// Shared by the differentiable function files. Each function calls its raw forward op with grad
// mode as it is (raw ops never record: tests/autograd/test_ops_record_nothing.cpp) and then
// records one node whose rule calls the raw backward.
#pragma once

#include "autograd/autograd.h"
#include "autograd/functions.h"

namespace lamina::autograd {

using Grads = std::vector<Tensor>;

}  // namespace lamina::autograd
