// A merge recipe: which method, which models with which weights, and parameters that may differ
// from tensor to tensor, read from a JSON file shaped like mergekit's YAML configurations:
//
//   {"method": "ties", "base_model": "base/",
//    "models": [{"model": "math/", "weight": 0.5, "density": 0.7},
//               {"model": "code/", "parameters": {"weight": [{"filter": "self_attn", "value": 0.3},
//                                                            {"value": 0.6}]}}],
//    "parameters": {"normalize": true, "lambda": 1.0}, "dtype": "bf16", "seed": 0}
//
// A numeric parameter is one number, a list of numbers (a gradient over the layers: the first
// value at layer 0 and the embeddings, the last at the final layer, the final norm and the head,
// linear between), or a list of rules {"filter": TEXT, "value": NUMBER or LIST}: the first rule
// whose filter is a substring of the tensor's name applies, and a rule without a filter matches
// every tensor. A model's own weight or density overrides the recipe-wide one of
// "parameters". Model paths are taken as given (relative ones from the working folder). Anything
// malformed is an error naming the file and the key.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/io/json.h"

namespace lamina::merge {

enum class Method { linear, task_arithmetic, slerp, ties, dare_linear, dare_ties };
const char* method_name(Method method);
// The names a recipe uses (mergekit's): linear, task_arithmetic, slerp, ties, dare_linear, dare_ties.
const std::vector<std::string>& method_names();
bool method_uses_base(Method method);  // the task-vector methods and SLERP (its t = 0 end)

// One rule of a per-tensor parameter: `values` holds one number, or a gradient over the layers.
struct ParameterRule {
  std::string filter;  // empty: every tensor
  std::vector<double> values;
};

// A numeric parameter as the recipe gives it.
struct Parameter {
  std::vector<ParameterRule> rules;
  std::string where;  // "recipe.json: models[1].weight", for errors

  static Parameter constant(double value, std::string where = "");
  // Its value for `tensor` in a model of `num_layers` layers; a tensor that no rule matches is an
  // error naming `where` and the tensor.
  double value_for(const std::string& tensor, int64_t num_layers) const;
};

// Where `tensor` sits in the depth of a model of `num_layers` layers, in [0, 1]: what a gradient
// interpolates over (layer i of model.layers.i.*: i / (num_layers - 1); the embeddings 0; the
// final norm and the head 1).
double depth_position(const std::string& tensor, int64_t num_layers);

struct ModelEntry {
  std::string path;                              // a Hugging Face folder
  std::map<std::string, Parameter> parameters;  // its own weight / density
};

struct Recipe {
  Method method = Method::linear;
  std::optional<std::string> base_model;
  std::vector<ModelEntry> models;
  std::map<std::string, Parameter> parameters;  // recipe-wide numeric parameters
  bool normalize = true;                        // the method's default unless the recipe says
  std::optional<DType> dtype;                   // the output's; default: each tensor as the base stores it
  uint64_t seed = 0;                            // DARE's drops
  std::string source = "recipe";                // names the recipe in errors

  static Recipe from_json(const json::Value& recipe, const std::string& source = "recipe");
  static Recipe load(const std::string& path);

  // The models whose tensors the method reads, in the order the driver passes them: for SLERP
  // its two ends (base first), for the task-vector methods the base then the models, for linear
  // the models. The first is where config.json and the tokenizer come from.
  std::vector<std::string> input_paths() const;

  // A numeric parameter of model `model` (an index into `models`) for `tensor`: the model's own,
  // else the recipe-wide one, else the method's default (weight 1; density has none).
  double model_parameter(size_t model, const std::string& key, const std::string& tensor, int64_t num_layers) const;
  // A recipe-wide parameter (t, lambda) for `tensor`, or the method's default.
  double recipe_parameter(const std::string& key, const std::string& tensor, int64_t num_layers) const;
};

}  // namespace lamina::merge
