#include "nn/module.h"

#include <algorithm>

namespace lamina::nn {

std::vector<NamedTensor> Module::named_parameters() const {
  std::vector<NamedTensor> out;
  collect("", out);
  return out;
}

void Module::collect(const std::string& prefix, std::vector<NamedTensor>& out) const {
  for (const auto& [name, tensor] : parameters_) out.emplace_back(prefix + name, tensor);
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", out);
}

std::vector<Tensor> Module::parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, tensor] : named_parameters()) out.push_back(tensor);
  return out;
}

std::vector<Tensor> Module::trainable_parameters() const {
  std::vector<Tensor> out;
  for (auto& [name, tensor] : named_parameters())
    if (tensor.requires_grad()) out.push_back(tensor);
  return out;
}

Tensor Module::parameter(const std::string& name) const {
  const std::vector<NamedTensor> all = named_parameters();
  for (const auto& [full_name, tensor] : all)
    if (full_name == name) return tensor;
  std::string known;
  for (size_t i = 0; i < all.size() && i < 8; ++i) known += (i ? ", " : "") + all[i].first;
  if (all.size() > 8) known += ", ...";
  throw Error(str_cat("no parameter named '", name, "' (the module has ", all.size(), ": ", known, ")"));
}

int64_t Module::parameter_count(bool trainable_only) const {
  int64_t total = 0;
  for (const auto& [name, tensor] : named_parameters())
    if (!trainable_only || tensor.requires_grad()) total += tensor.numel();
  return total;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

int64_t Module::freeze(const std::string& pattern) { return set_requires_grad_matching(pattern, false); }

int64_t Module::unfreeze(const std::string& pattern) { return set_requires_grad_matching(pattern, true); }

int64_t Module::set_requires_grad_matching(const std::string& pattern, bool requires_grad) {
  int64_t matched = 0;
  for (auto& [name, tensor] : named_parameters()) {
    if (!glob_match(pattern, name)) continue;
    tensor.set_requires_grad(requires_grad);
    ++matched;
  }
  LAMINA_CHECK(matched > 0, (requires_grad ? "unfreeze" : "freeze"), ": no parameter name matches '", pattern, "'");
  return matched;
}

void Module::remove_parameter(const std::string& name) {
  const auto found = std::find_if(parameters_.begin(), parameters_.end(),
                                  [&](const NamedTensor& parameter) { return parameter.first == name; });
  LAMINA_CHECK(found != parameters_.end(), "remove_parameter: no parameter '", name, "'");
  parameters_.erase(found);
}

Tensor Module::register_parameter(const std::string& name, const Tensor& value, bool requires_grad) {
  LAMINA_CHECK(!name.empty() && name.find('.') == std::string::npos, "register_parameter: invalid name '", name, "'");
  for (const auto& [existing, tensor] : parameters_)
    LAMINA_CHECK(existing != name, "register_parameter: '", name, "' registered twice");
  check_defined(value, "register_parameter", name.c_str());
  value.set_requires_grad(requires_grad && is_floating(value.dtype()));
  parameters_.emplace_back(name, value);
  return value;
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  LAMINA_CHECK(module != nullptr, "register_module: '", name, "' is null");
  for (const auto& [existing, child] : children_)
    LAMINA_CHECK(existing != name, "register_module: '", name, "' registered twice");
  children_.emplace_back(name, std::move(module));
}

void Module::remove_module(const std::string& name) {
  for (auto it = children_.begin(); it != children_.end(); ++it) {
    if (it->first != name) continue;
    children_.erase(it);
    return;
  }
  throw Error(str_cat("remove_module: no child named '", name, "'"));
}

bool glob_match(const std::string& pattern, const std::string& text) {
  // Iterative wildcard match with backtracking to the last '*'.
  size_t p = 0, t = 0, star = std::string::npos, resume = 0;
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = t;
    } else if (p < pattern.size() && pattern[p] == text[t]) {
      ++p;
      ++t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace lamina::nn
