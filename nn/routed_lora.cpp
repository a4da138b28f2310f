// Routed multi-LoRA (nn/routed_lora.h): the gates, the per-token top-k softmax, the weighted
// sum of the adapters, and putting a model in the routed mode.
#include "nn/routed_lora.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "autograd/functions.h"
#include "nn/layers.h"
#include "ops/ops.h"
#include "tensor/profiler.h"

namespace lamina::nn {
namespace {

constexpr const char* kGateModule = "lora_router";

bool has_child(const Module& module, const std::string& name) {
  for (const auto& [existing, child] : module.children())
    if (existing == name) return true;
  return false;
}

std::shared_ptr<LoraSelection> existing_selection(const Module& model, const char* what) {
  for (const auto& [path, linear] : named_linears(model))
    if (linear->lora_selection()) return linear->lora_selection();
  throw Error(str_cat(what, ": the model has no LoRA adapters"));
}

}  // namespace

std::vector<double> RoutingStats::mean_weights() const {
  std::vector<double> out(weight_sums.size(), 0.0);
  for (size_t i = 0; i < out.size() && tokens > 0; ++i) out[i] = weight_sums[i] / double(tokens);
  return out;
}

RoutedLora::RoutedLora(std::vector<std::string> adapters, int64_t top_k) : adapters_(std::move(adapters)), top_k_(top_k) {
  LAMINA_CHECK(!adapters_.empty(), "routed LoRA: no adapters");
  LAMINA_CHECK(top_k_ >= 1 && top_k_ <= int64_t(adapters_.size()), "routed LoRA: top_k ", top_k_, " is outside [1, ",
               adapters_.size(), "] (the number of adapters)");
  stats_.weight_sums.assign(adapters_.size(), 0.0);
  stats_.chosen.assign(adapters_.size(), 0);
}

const Tensor& RoutedLora::gate(const Linear& layer) const {
  const auto found = gates_.find(&layer);
  LAMINA_CHECK(found != gates_.end(), "routed LoRA: a Linear [", layer.out_features(), ", ", layer.in_features(),
               "] carries adapters but has no gate (was an adapter added after the router?)");
  return found->second;
}

// logits = x G^T; the top_k per token keep their logits, the others become -inf, so that the
// softmax gives them an exact 0 and its gradient reaches only the chosen logits (a softmax over
// the k of them). The choice itself is made on the host from the detached logits.
Tensor RoutedLora::routing_weights(const Linear& layer, const Tensor& x) const {
  const Tensor& gate_weight = gate(layer);
  Tensor logits = matmul(x.to(gate_weight.dtype()), gate_weight, false, true);  // [..., N]
  const int64_t count = int64_t(adapters_.size());
  if (top_k_ < count) {
    const std::vector<double> values = logits.detach().to_vector<double>();
    std::vector<uint8_t> unchosen(values.size(), 1);
    std::vector<int64_t> order(static_cast<size_t>(count));
    for (size_t row = 0; row < values.size(); row += size_t(count)) {
      std::iota(order.begin(), order.end(), 0);
      const double* row_values = values.data() + row;
      std::partial_sort(order.begin(), order.begin() + top_k_, order.end(), [&](int64_t a, int64_t b) {
        return row_values[a] > row_values[b] || (row_values[a] == row_values[b] && a < b);
      });
      for (int64_t i = 0; i < top_k_; ++i) unchosen[row + size_t(order[size_t(i)])] = 0;
    }
    const Tensor mask = Tensor::from_vector(unchosen, logits.shape(), DType::boolean).to(logits.device());
    logits = masked_fill(logits, mask, -std::numeric_limits<double>::infinity());
  }
  return softmax(logits, -1);
}

// y = base + sum_j (w_j s_j) (x A_j^T B_j^T), in the adapters' dtype like a plain LoRA branch;
// with one adapter (w = 1 exactly) the same operations as Linear's own branch. The gradient
// reaches the gate through w only: dL/dw_j = s_j <dL/dy, x A_j^T B_j^T> per token.
Tensor RoutedLora::forward(const Linear& layer, const Tensor& x, const Tensor& base_output) const {
  const profiler::Scope scope("forward:routed_lora");
  const Tensor& gate_weight = gate(layer);
  const DType dtype = gate_weight.dtype();
  const Tensor input = x.to(dtype);
  const Tensor weights = routing_weights(layer, input);
  const int64_t count = int64_t(adapters_.size());
  // Which adapters some token chose: the others contribute exact zeros and are skipped.
  std::vector<bool> used(size_t(count), true);
  if (top_k_ < count || recording_) {
    const std::vector<double> values = weights.detach().to_vector<double>();
    if (top_k_ < count) {
      std::fill(used.begin(), used.end(), false);
      for (size_t i = 0; i < values.size(); ++i) used[i % size_t(count)] = used[i % size_t(count)] || values[i] > 0;
    }
    if (recording_) {
      const std::lock_guard<std::mutex> lock(stats_mutex_);
      stats_.tokens += int64_t(values.size()) / count;
      for (size_t i = 0; i < values.size(); ++i) {
        stats_.weight_sums[i % size_t(count)] += values[i];
        stats_.chosen[i % size_t(count)] += values[i] > 0 ? 1 : 0;
      }
    }
  }
  Tensor sum = base_output.to(dtype);
  for (int64_t j = 0; j < count; ++j) {
    if (!used[size_t(j)]) continue;
    const LoraAdapter& adapter = layer.adapter(adapters_[size_t(j)]);
    const Tensor lora = matmul(matmul(input, adapter.lora_A, false, true), adapter.lora_B, false, true);
    const Tensor coefficient = mul(weights.narrow(weights.dim() - 1, j, 1), adapter.options.scale());  // [..., 1]
    sum = add(sum, mul(lora, coefficient));
  }
  return sum.to(base_output.dtype());
}

void RoutedLora::set_recording(bool on) {
  const std::lock_guard<std::mutex> lock(stats_mutex_);
  recording_ = on;
  stats_ = RoutingStats{};
  stats_.weight_sums.assign(adapters_.size(), 0.0);
  stats_.chosen.assign(adapters_.size(), 0);
}

RoutingStats RoutedLora::stats() const {
  const std::lock_guard<std::mutex> lock(stats_mutex_);
  return stats_;
}

std::shared_ptr<RoutedLora> add_lora_router(Module& model, const std::vector<std::string>& adapter_names, int64_t top_k,
                                            uint64_t seed) {
  const std::shared_ptr<LoraSelection> selection = existing_selection(model, "routed LoRA");
  const int64_t count = int64_t(adapter_names.size());
  LAMINA_CHECK(count >= 1, "routed LoRA: no adapters given");
  for (size_t i = 0; i < adapter_names.size(); ++i) {
    adapter_index(model, adapter_names[i]);  // throws naming the model's adapters
    for (size_t j = 0; j < i; ++j)
      LAMINA_CHECK(adapter_names[i] != adapter_names[j], "routed LoRA: adapter '", adapter_names[i], "' given twice");
  }
  LAMINA_CHECK(top_k >= 1 && top_k <= count, "routed LoRA: top_k ", top_k, " is outside [1, ", count,
               "] (the number of adapters)");
  // Every check before anything changes.
  std::vector<std::pair<std::string, std::shared_ptr<Linear>>> targets;
  for (const auto& [path, linear] : named_linears(model)) {
    const std::vector<std::string> present = linear->adapter_names();
    if (present.empty()) continue;
    std::string known;
    for (const std::string& name : present) known += (known.empty() ? "" : ", ") + name;
    for (const std::string& name : adapter_names) {
      LAMINA_CHECK(linear->has_adapter(name), "routed LoRA: ", path, " has adapter(s) ", known, " but not '", name,
                   "': the routed adapters must target the same modules");
      const LoraAdapter& adapter = linear->adapter(name);
      LAMINA_CHECK(!adapter.options.use_dora, "routed LoRA: adapter '", name, "' uses DoRA at ", path,
                   "; only plain LoRA adapters are routed");
      LAMINA_CHECK(adapter.lora_A.dtype() == linear->adapter(adapter_names[0]).lora_A.dtype(), "routed LoRA: ", path,
                   ": adapters '", adapter_names[0], "' and '", name, "' differ in dtype");
    }
    LAMINA_CHECK(linear->merged_adapter().empty(), "routed LoRA: ", path, " has adapter '", linear->merged_adapter(),
                 "' merged into its weight; unmerge it first");
    LAMINA_CHECK(!has_child(*linear, kGateModule), "routed LoRA: ", path, " has a gate already");
    targets.emplace_back(path, linear);
  }
  auto router = std::make_shared<RoutedLora>(adapter_names, top_k);
  Generator generator(seed);
  for (const auto& [path, linear] : targets) {
    const Tensor& like = linear->adapter(adapter_names[0]).lora_A;
    const double bound = 1.0 / std::sqrt(double(linear->in_features()));
    const Tensor gate = uniform({count, linear->in_features()}, -bound, bound, generator, like.dtype(), like.device());
    linear->attach_module(kGateModule, std::make_shared<WeightHolder>(gate));
    router->add_gate(*linear, gate);
  }
  // Only the gates train.
  for (const auto& [name, parameter] : model.named_parameters()) parameter.set_requires_grad(false);
  for (const auto& [name, parameter] : router_parameters(model)) parameter.set_requires_grad(true);
  selection->router = router;
  return router;
}

std::shared_ptr<const RoutedLora> lora_router(const Module& model) {
  for (const auto& [path, linear] : named_linears(model))
    if (linear->lora_selection()) return std::dynamic_pointer_cast<const RoutedLora>(linear->lora_selection()->router);
  return nullptr;
}

void set_lora_router(const Module& model, std::shared_ptr<const RoutedLora> router) {
  existing_selection(model, "set_lora_router")->router = std::move(router);
}

std::vector<NamedTensor> router_parameters(const Module& model) {
  const std::string suffix = std::string(".") + kGateModule + ".weight";
  std::vector<NamedTensor> out;
  for (const auto& [name, parameter] : model.named_parameters())
    if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.emplace_back(name, parameter);
  return out;
}

}  // namespace lamina::nn
