// Define-by-run reverse-mode autodiff.
//
// A differentiable function runs its forward op and, when grad mode is on and an input
// requires grad, records a Node: the edges to its inputs' nodes and a backward rule (a
// closure holding the saved tensors). backward() walks the nodes from the loss in reverse
// creation order, sums the gradients arriving at each node, calls its rule, and frees the
// saved tensors as it goes. Leaves that require grad end at an AccumulateGrad node, which
// adds into tensor.grad(). Backward rules run with grad mode off (no double backward).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace lamina::autograd {

class Node;
using GradHook = std::function<Tensor(const Tensor&)>;

// An input slot of a node: gradients flowing along this edge go to `node`'s output `input_nr`.
struct Edge {
  std::shared_ptr<Node> node;
  int input_nr = 0;
  bool valid() const { return node != nullptr; }
};

struct AutogradMeta {
  bool requires_grad = false;            // set on leaves by set_requires_grad
  Tensor grad;                           // accumulated gradient (leaves, or retain_grad)
  std::shared_ptr<Node> grad_fn;         // the node that produced this tensor (non-leaves)
  int output_nr = 0;                     // which output of grad_fn
  std::weak_ptr<Node> grad_accumulator;  // leaves: the AccumulateGrad node, while a graph holds it
  std::vector<GradHook> hooks;           // leaves: run before accumulation
  bool retains_grad = false;             // non-leaves: keep .grad() (retain_grad)
  std::vector<std::function<void(const Tensor& grad)>> post_accumulate_hooks;  // leaves: after
};

// The shape and dtype a node's output had, to create zero gradients and check shapes.
struct OutputInfo {
  Shape shape;
  DType dtype = DType::f32;
  Device device;
};

class Node {
 public:
  explicit Node(std::string name);
  // Unlinks the chain of nodes behind this one iteratively (see engine.cpp).
  virtual ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  const std::string& name() const { return name_; }
  uint64_t sequence_nr() const { return sequence_nr_; }

  // Gradients w.r.t. the forward inputs (one per next_edges entry; undefined = no gradient),
  // given one defined gradient per forward output.
  virtual std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) = 0;
  // Drops saved tensors after the node has run (unless the graph is retained).
  virtual void release() { released_ = true; }
  bool released() const { return released_; }

  std::vector<Edge> next_edges;
  std::vector<OutputInfo> outputs;
  std::vector<std::vector<GradHook>> output_hooks;  // per output, run on the incoming gradient

 protected:
  bool released_ = false;

 private:
  std::string name_;
  uint64_t sequence_nr_;
};

using BackwardFn = std::function<std::vector<Tensor>(const std::vector<Tensor>& grad_outputs)>;

// A node whose rule is a closure. The closure must capture detached tensors (see saved()).
class FunctionNode final : public Node {
 public:
  FunctionNode(std::string name, BackwardFn backward) : Node(std::move(name)), backward_(std::move(backward)) {}
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override;
  void release() override;

 private:
  BackwardFn backward_;
};

// The end of the graph for a leaf that requires grad.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(const std::shared_ptr<AutogradMeta>& leaf);
  std::vector<Tensor> apply(const std::vector<Tensor>& grad_outputs) override;
  void release() override {}  // holds nothing to free; stays usable across backward passes

 private:
  std::weak_ptr<AutogradMeta> leaf_;
};

// ---- grad mode (per thread)
bool grad_enabled();
void set_grad_enabled(bool enabled);

class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

class EnableGradGuard {
 public:
  EnableGradGuard() : previous_(grad_enabled()) { set_grad_enabled(true); }
  ~EnableGradGuard() { set_grad_enabled(previous_); }
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// ---- recording (used by the differentiable functions)
// True when grad mode is on and any of the tensors requires grad.
bool needs_grad(std::initializer_list<const Tensor*> inputs);
bool needs_grad(const std::vector<Tensor>& inputs);
// A handle to t's data with no autograd state, for closures to keep (avoids reference cycles).
inline Tensor saved(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }
// The edge a gradient for `t` should follow (invalid when t does not require grad).
Edge gradient_edge(const Tensor& t);
// Makes `outputs` the results of a new node with the given rule; a no-op unless needs_grad.
// An output that is an input handle is replaced by a fresh alias of the same data first.
void record(const char* name, const std::vector<Tensor*>& outputs, const std::vector<Tensor>& inputs,
            BackwardFn backward);

// ---- running backward
// Accumulates d(sum_i <roots_i, grads_i>)/d(leaf) into every leaf's grad. An undefined grad
// for a one-element root means 1.
void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads = {}, bool retain_graph = false);

}  // namespace lamina::autograd
