#include <atomic>
#include <queue>
#include <unordered_map>

#include "autograd/autograd.h"
#include "ops/ops.h"
#include "tensor/profiler.h"
#include "tensor/view.h"

namespace lamina::autograd {
namespace {

thread_local bool t_grad_enabled = true;

uint64_t next_sequence_nr() {
  static std::atomic<uint64_t> counter{0};
  return counter.fetch_add(1);
}

bool tensor_requires_grad(const Tensor& t) {
  if (!t.defined()) return false;
  const auto& meta = t.autograd_meta();
  return meta != nullptr && (meta->requires_grad || meta->grad_fn != nullptr);
}

}  // namespace

Node::Node(std::string name) : name_(std::move(name)), sequence_nr_(next_sequence_nr()) {}

// Dropping the last handle to a graph would otherwise destroy it recursively, one stack frame
// per node along its longest path: a forward pass of a few hundred thousand ops (a model of
// 20000 small layers) overflowed the stack. Nodes that only this one keeps alive hand their
// own edges over before they die, so each is destroyed with no successors left to recurse into.
Node::~Node() {
  std::vector<std::shared_ptr<Node>> orphans;
  const auto take_edges = [&orphans](Node& node) {
    for (Edge& edge : node.next_edges)
      if (edge.node != nullptr) orphans.push_back(std::move(edge.node));
  };
  take_edges(*this);
  while (!orphans.empty()) {
    std::shared_ptr<Node> node = std::move(orphans.back());
    orphans.pop_back();
    if (node.use_count() == 1) take_edges(*node);
  }
}

std::vector<Tensor> FunctionNode::apply(const std::vector<Tensor>& grad_outputs) {
  LAMINA_CHECK(backward_ != nullptr, "autograd: '", name(), "' was already run and its saved tensors freed; "
               "pass retain_graph=true to the first backward to run it again");
  return backward_(grad_outputs);
}

void FunctionNode::release() {
  backward_ = nullptr;
  released_ = true;
}

AccumulateGrad::AccumulateGrad(const std::shared_ptr<AutogradMeta>& leaf) : Node("AccumulateGrad"), leaf_(leaf) {}

std::vector<Tensor> AccumulateGrad::apply(const std::vector<Tensor>& grad_outputs) {
  const std::shared_ptr<AutogradMeta> meta = leaf_.lock();
  if (meta == nullptr) return {};  // the leaf is gone; nobody can read its gradient
  Tensor grad = grad_outputs[0];
  bool from_hook = false;
  for (const GradHook& hook : meta->hooks) {
    Tensor replaced = hook(grad);
    if (replaced.defined()) grad = replaced, from_hook = true;
  }
  if (!meta->grad.defined()) {
    // The leaf must own its gradient (the next accumulation adds into it in place). A tensor
    // nobody else can reach is taken as it is: the engine's buffer and this copy its only handles,
    // its storage its alone and exactly filled (no view of something larger), not a hook's
    // (which may keep it). Anything else is copied. Taking saves copying every trained
    // parameter's gradient once a step.
    const Storage& storage = *grad.storage();
    const bool unshared = !from_hook && grad.handle_count() <= 2 && grad.storage().use_count() == 1 &&
                          storage.owns_memory() && grad.is_contiguous() && grad.offset() == 0 &&
                          storage.bytes() == size_t(grad.numel()) * dtype_size(grad.dtype());
    meta->grad = unshared ? grad : ops::clone(grad);
  } else {
    ops::add_(meta->grad, grad);
  }
  for (const auto& hook : meta->post_accumulate_hooks) hook(meta->grad);
  return {};
}

bool grad_enabled() { return t_grad_enabled; }

void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

bool needs_grad(std::initializer_list<const Tensor*> inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor* t : inputs)
    if (tensor_requires_grad(*t)) return true;
  return false;
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (tensor_requires_grad(t)) return true;
  return false;
}

Edge gradient_edge(const Tensor& t) {
  if (!tensor_requires_grad(t)) return {};
  const std::shared_ptr<AutogradMeta>& meta = t.autograd_meta();
  if (meta->grad_fn != nullptr) return {meta->grad_fn, meta->output_nr};
  std::shared_ptr<Node> accumulator = meta->grad_accumulator.lock();
  if (accumulator == nullptr) {
    accumulator = std::make_shared<AccumulateGrad>(meta);
    accumulator->outputs.push_back({t.shape(), t.dtype(), t.device()});
    accumulator->output_hooks.emplace_back();
    meta->grad_accumulator = accumulator;
  }
  return {accumulator, 0};
}

void record(const char* name, const std::vector<Tensor*>& outputs, const std::vector<Tensor>& inputs,
            BackwardFn backward) {
  if (!needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, std::move(backward));
  for (const Tensor& input : inputs) node->next_edges.push_back(gradient_edge(input));
  for (size_t i = 0; i < outputs.size(); ++i) {
    Tensor& out = *outputs[i];
    for (const Tensor& input : inputs)
      if (out.is_same(input)) out = views::as_strided(out, out.shape(), out.strides(), out.offset());
    node->outputs.push_back({out.shape(), out.dtype(), out.device()});
    node->output_hooks.emplace_back();
    auto meta = std::make_shared<AutogradMeta>();
    meta->grad_fn = node;
    meta->output_nr = int(i);
    out.set_autograd_meta(std::move(meta));
  }
}

void backward(const std::vector<Tensor>& roots, const std::vector<Tensor>& grads, bool retain_graph) {
  LAMINA_CHECK(grads.empty() || grads.size() == roots.size(), "backward: ", roots.size(), " roots but ", grads.size(),
               " gradients");
  NoGradGuard no_grad;
  // Its self time is the engine's own work (the graph walk, the queues, zero gradients); each
  // node's rule is timed as backward:<node name>.
  profiler::Scope engine_scope("backward:engine");

  // Gradients waiting at each node, one slot per node output.
  std::unordered_map<Node*, std::vector<Tensor>> pending;
  std::unordered_map<Node*, std::shared_ptr<Node>> keep_alive;
  auto deliver = [&](const Edge& edge, const Tensor& grad, const char* from) {
    const OutputInfo& info = edge.node->outputs[size_t(edge.input_nr)];
    LAMINA_CHECK(grad.shape() == info.shape, "backward: '", from, "' produced a gradient of shape ", grad.shape(),
                 " for an input of shape ", info.shape);
    std::vector<Tensor>& slots = pending[edge.node.get()];
    if (slots.empty()) slots.resize(edge.node->outputs.size());
    Tensor& slot = slots[size_t(edge.input_nr)];
    Tensor incoming = grad;
    if (grad.dtype() != info.dtype) {
      profiler::Scope scope("backward:cast_gradient");
      incoming = ops::cast(grad, info.dtype);
    }
    if (slot.defined()) {
      // A tensor used more than once (a residual stream, a shared weight) sums its gradients here.
      profiler::Scope scope("backward:sum_gradients");
      slot = ops::add(slot, incoming);
    } else {
      slot = incoming;
    }
  };

  std::vector<Edge> root_edges;
  for (size_t i = 0; i < roots.size(); ++i) {
    const Tensor& root = roots[i];
    check_defined(root, "backward", "root");
    LAMINA_CHECK(tensor_requires_grad(root), "backward: the tensor ", root.shape(),
                 " does not require grad (no input of the computation requires grad, or it ran under NoGradGuard)");
    Tensor grad = grads.empty() ? Tensor() : grads[i];
    if (!grad.defined()) {
      LAMINA_CHECK(root.numel() == 1, "backward: a gradient is needed for a non-scalar root of shape ", root.shape());
      grad = ones(root.shape(), root.dtype(), root.device());
    }
    root_edges.push_back(gradient_edge(root));
    deliver(root_edges.back(), grad, "backward root");
  }

  // Count, for each reachable node, how many edges lead into it.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack;
  for (const Edge& edge : root_edges) {
    if (keep_alive.emplace(edge.node.get(), edge.node).second) stack.push_back(edge.node.get());
  }
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const Edge& edge : node->next_edges) {
      if (!edge.valid()) continue;
      ++dependencies[edge.node.get()];
      if (keep_alive.emplace(edge.node.get(), edge.node).second) stack.push_back(edge.node.get());
    }
  }

  // Most recently created first: a node runs only after everything created from it.
  auto later_first = [](Node* a, Node* b) { return a->sequence_nr() < b->sequence_nr(); };
  std::priority_queue<Node*, std::vector<Node*>, decltype(later_first)> ready(later_first);
  for (const Edge& edge : root_edges)
    if (dependencies[edge.node.get()] == 0) ready.push(edge.node.get());
  std::unordered_map<Node*, bool> queued;
  while (!ready.empty()) {
    Node* node = ready.top();
    ready.pop();
    if (queued[node]) continue;
    queued[node] = true;
    const auto arrived = pending.find(node);
    if (arrived == pending.end()) {
      // No gradient reached this node (every path to it carried none): skip it, but let the
      // nodes after it know that one of their inputs is settled.
      for (const Edge& edge : node->next_edges)
        if (edge.valid() && --dependencies[edge.node.get()] == 0) ready.push(edge.node.get());
      continue;
    }
    std::vector<Tensor> grad_outputs = std::move(arrived->second);
    pending.erase(arrived);
    std::vector<Tensor> grad_inputs;
    {
      // Timed: the node's hooks, its rule, and freeing what it saved (not the delivery below,
      // which is the engine's).
      profiler::Scope node_scope("backward:", node->name());
      grad_outputs.resize(node->outputs.size());
      for (size_t i = 0; i < grad_outputs.size(); ++i) {
        const OutputInfo& info = node->outputs[i];
        if (!grad_outputs[i].defined()) grad_outputs[i] = zeros(info.shape, info.dtype, info.device);
        for (const GradHook& hook : node->output_hooks[i]) {
          Tensor replaced = hook(grad_outputs[i]);
          if (replaced.defined()) grad_outputs[i] = replaced;
        }
      }
      LAMINA_CHECK(!node->released(), "backward: '", node->name(), "' was already run and its saved tensors freed; "
                   "pass retain_graph=true to the first backward to run it again");
      grad_inputs = node->apply(grad_outputs);
      grad_outputs.clear();
      if (!retain_graph) node->release();
    }
    LAMINA_CHECK(grad_inputs.empty() || grad_inputs.size() == node->next_edges.size(), "backward: '", node->name(),
                 "' returned ", grad_inputs.size(), " gradients for ", node->next_edges.size(), " inputs");
    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& edge = node->next_edges[i];
      if (!edge.valid()) continue;
      if (i < grad_inputs.size() && grad_inputs[i].defined()) deliver(edge, grad_inputs[i], node->name().c_str());
      if (--dependencies[edge.node.get()] == 0) ready.push(edge.node.get());
    }
  }
}

}  // namespace lamina::autograd
