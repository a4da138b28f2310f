// Routed multi-LoRA, after MeteoRA (Xu, Lai and Huang 2024): N frozen LoRA adapters of one base
// in one model, and on every adapted projection a gate that picks, per token, which adapters
// that projection adds:
//
//   logits = x G^T                        x: [..., in], G: [N, in] (the gate: no bias)
//   K      = the top_k logits per token   (ties: the lower adapter index)
//   w_j    = softmax over K of logits_j   for j in K, 0 otherwise
//   y      = x W^T (+b) + sum_j w_j s_j x A_j^T B_j^T
//
// One gate per projection (q, k, v, o, gate, up, down of every layer), as MeteoRA puts one in
// each of its modules: each projection chooses from what it sees, and the gates are tiny
// (N x in each). Only the gates train; the base and the adapters stay frozen. The top-k choice
// is not differentiable (and has no gradient); the softmax weights are, so a top-1 router's
// weight is 1 whatever the logits and its gate learns nothing: training wants top_k >= 2.
//
// Every adapter is computed for every token and the unchosen ones weigh 0 (an exact 0: their
// terms add nothing), except that an adapter no token of a call chose is skipped: decoding one
// token runs only its top_k adapters. MeteoRA's fused kernels for many adapters are not here.
// The adapters' own dropout is not applied (they are frozen). MeteoRA draws its gates from
// N(0, 1) and adds to the LM loss a cross-entropy of every gate's logits against each token's
// task label (weight 50); here the gates start as nn.Linear does and train on the LM loss alone.
//
// The gates are parameters of their Linear, "<module>.lora_router.weight" ([N, in]), so they
// train, freeze and save by name like the adapters beside them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "nn/lora.h"

namespace lamina::nn {

// How much each adapter was used by the forwards recorded (RoutedLora::set_recording): summed
// over every token of every routed projection.
struct RoutingStats {
  int64_t tokens = 0;                // token-projection pairs
  std::vector<double> weight_sums;   // per adapter: the sum of its weights
  std::vector<int64_t> chosen;       // per adapter: how often it was in a token's top k
  // Per adapter: weight_sums / tokens (each token's weights sum to 1).
  std::vector<double> mean_weights() const;
};

class RoutedLora : public LoraRouter {
 public:
  RoutedLora(std::vector<std::string> adapters, int64_t top_k);
  Tensor forward(const Linear& layer, const Tensor& x, const Tensor& base_output) const override;

  // The per-token adapter weights of `layer`'s gate for input x: [..., N], zeros outside each
  // token's top k, differentiable with respect to the gate.
  Tensor routing_weights(const Linear& layer, const Tensor& x) const;

  const std::vector<std::string>& adapters() const { return adapters_; }
  int64_t top_k() const { return top_k_; }
  // The gate of the Linear (its registered parameter "lora_router.weight"); throws when the
  // layer has none.
  const Tensor& gate(const Linear& layer) const;
  void add_gate(const Linear& layer, const Tensor& gate) { gates_[&layer] = gate; }

  // Statistics of the weights, gathered while recording (off by default; it reads the weights
  // back to the host once per projection).
  void set_recording(bool on);
  RoutingStats stats() const;

 private:
  void record(const Tensor& weights) const;

  std::vector<std::string> adapters_;
  int64_t top_k_;
  std::map<const Linear*, Tensor> gates_;
  mutable std::mutex stats_mutex_;
  bool recording_ = false;
  mutable RoutingStats stats_;
};

// Puts `model` in the routed mode over the adapters `adapter_names` (already added to it, e.g. by
// peft::load_adapter, in the order of the gates' rows): every Linear that carries an adapter must
// carry all of them, plain LoRA (no DoRA), unmerged. Adds a gate to each, drawn uniform in
// +-1/sqrt(in) from `seed` (nn.Linear's default), in the adapters' dtype; freezes every other
// parameter. Errors (before anything changes) name the layer and adapter: a layer missing one of
// the adapters (adapters of different target modules), top_k outside [1, N], a name twice.
std::shared_ptr<RoutedLora> add_lora_router(Module& model, const std::vector<std::string>& adapter_names, int64_t top_k,
                                            uint64_t seed = 0);
// The model's router, or null when it is not in the routed mode.
std::shared_ptr<const RoutedLora> lora_router(const Module& model);
// Leaves the routed mode (the gates stay parameters of their layers) or enters it again.
void set_lora_router(const Module& model, std::shared_ptr<const RoutedLora> router);
// Every gate, by its parameter name ("model.layers.3.self_attn.q_proj.lora_router.weight").
std::vector<NamedTensor> router_parameters(const Module& model);

}  // namespace lamina::nn
