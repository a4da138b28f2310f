// Module: a tree of named parameters. Names are the Hugging Face tensor names
// ("model.layers.3.self_attn.q_proj.weight"), so loading, saving, LoRA targeting and
// freezing all work by name.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensor/rng.h"
#include "tensor/tensor.h"

namespace lamina::nn {

using NamedTensor = std::pair<std::string, Tensor>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Every parameter of this module and its descendants, in registration order, named by path.
  std::vector<NamedTensor> named_parameters() const;
  std::vector<Tensor> parameters() const;
  // Parameters that currently require grad.
  std::vector<Tensor> trainable_parameters() const;
  // Lookup by full dotted name; throws naming the closest existing names when absent.
  Tensor parameter(const std::string& name) const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& children() const { return children_; }
  int64_t parameter_count(bool trainable_only = false) const;

  // Training mode matters to modules that behave differently in training (dropout).
  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // (Un)freezes every parameter whose full name matches `pattern`, where '*' matches any run
  // of characters (dots included): "model.layers.*.mlp.*". Returns how many matched; throws
  // when none did, since a typo would otherwise freeze nothing silently.
  int64_t freeze(const std::string& pattern);
  int64_t unfreeze(const std::string& pattern);

  // Adds a child from outside the module's own class: a part that another feature attaches to
  // an existing module (a routed multi-LoRA gate on its Linear, nn/routed_lora.h), named,
  // frozen and saved like the module's own children.
  template <typename M>
  std::shared_ptr<M> attach_module(const std::string& name, std::shared_ptr<M> module) {
    return register_module(name, std::move(module));
  }

 protected:
  // Registers `value` under `name` and returns it (the handle is shared with the registry).
  Tensor register_parameter(const std::string& name, const Tensor& value, bool requires_grad = true);
  template <typename M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }
  // Removes a child registered with register_module (its parameters leave named_parameters()).
  void remove_module(const std::string& name);
  // Removes a parameter registered with register_parameter (a base weight replaced by its 4-bit
  // quantization is no parameter any more: no gradient, no optimizer state, not saved).
  void remove_parameter(const std::string& name);

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void collect(const std::string& prefix, std::vector<NamedTensor>& out) const;
  int64_t set_requires_grad_matching(const std::string& pattern, bool requires_grad);

  std::vector<NamedTensor> parameters_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
};

// Submodules named "0", "1", ... (HF's "layers.N").
class ModuleList : public Module {
 public:
  template <typename M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    items_.push_back(module);
    return register_module(std::to_string(items_.size() - 1), std::move(module));
  }
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_.at(i); }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

// Glob match where '*' matches any run of characters.
bool glob_match(const std::string& pattern, const std::string& text);

}  // namespace lamina::nn
