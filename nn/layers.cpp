#include "nn/layers.h"

#include <cmath>

#include "autograd/autograd.h"
#include "autograd/gguf_linear.h"
#include "tensor/profiler.h"

namespace lamina::nn {
namespace {

Tensor new_parameter(const Shape& shape, DType dtype, ParameterInit init, double value) {
  return init == ParameterInit::uninitialized ? Tensor::empty(shape, dtype) : full(shape, value, dtype);
}

}  // namespace

Linear::Linear(int64_t in_features, int64_t out_features, LinearOptions options)
    : in_features_(in_features), out_features_(out_features) {
  LAMINA_CHECK(in_features > 0 && out_features > 0, "Linear: features must be positive, got in ", in_features,
               ", out ", out_features);
  if (!options.four_bit_base)
    weight_ = register_parameter("weight", new_parameter({out_features, in_features}, options.dtype, options.init, 0.0));
  if (options.bias) bias_ = register_parameter("bias", new_parameter({out_features}, options.dtype, options.init, 0.0));
}

void Linear::require_base(const char* what) const {
  LAMINA_CHECK(quantized_base() || weight_.defined(), "Linear (", what, "): the layer was built for a quantized base "
               "weight that was never given (set_base_4bit or set_base_gguf)");
}

Tensor Linear::base_product(const Tensor& x) const {
  require_base("forward");
  if (base_gguf_) return linear_gguf(x.dtype() == DType::f32 ? x : x.to(DType::f32), *base_gguf_);
  return base_4bit_ ? linear_4bit(x, *base_4bit_) : matmul(x, weight_, false, true);
}

DType Linear::base_dtype() const {
  require_base("base dtype");
  return quantized_base() ? DType::f32 : weight_.dtype();
}
Device Linear::base_device() const {
  require_base("base device");
  if (base_gguf_) return base_gguf_->matrix.device;
  return base_4bit_ ? base_4bit_->device() : weight_.device();
}

Tensor Linear::dense_base_weight() const {
  if (base_gguf_) return ops::gguf_dequantize(base_gguf_->matrix);
  return base_4bit_ ? ops::dequantize_4bit(*base_4bit_) : weight_.detach();
}

void Linear::set_base_gguf(ops::GgufWeight w) {
  LAMINA_CHECK(w.matrix.rows == out_features_ && w.matrix.cols == in_features_, "Linear: a ",
               ops::ggml::block_type_name(w.matrix.type), " weight of shape [", w.matrix.rows, ", ", w.matrix.cols,
               "] for a layer of ", out_features_, " outputs and ", in_features_, " inputs");
  LAMINA_CHECK(ops::gguf_matmul_supports(w.matrix.type), "Linear: no quantized product for ",
               ops::ggml::block_type_name(w.matrix.type), " weights");
  LAMINA_CHECK(merged_.empty(), "Linear: adapter '", merged_, "' is merged into the base; unmerge it first");
  if (weight_.defined()) {
    remove_parameter("weight");
    weight_ = Tensor();
  }
  base_4bit_.reset();
  base_gguf_ = std::make_shared<const ops::GgufWeight>(std::move(w));
}

void Linear::quantize_base(ops::Quant4Format format, int64_t blocksize, bool double_quant) {
  LAMINA_CHECK(!quantized_base(), "Linear: the base weight is quantized already");
  LAMINA_CHECK(weight_.defined(), "Linear: built for a 4-bit base weight, it has no full-precision one to quantize");
  LAMINA_CHECK(merged_.empty(), "Linear: adapter '", merged_, "' is merged into the base; unmerge it before quantizing");
  base_4bit_ = std::make_shared<const ops::Quantized4Bit>(ops::quantize_4bit(weight_.detach(), format, blocksize, double_quant));
  remove_parameter("weight");
  weight_ = Tensor();
}

void Linear::set_base_4bit(ops::Quantized4Bit q) {
  q.validate("Linear::set_base_4bit");
  LAMINA_CHECK(q.out_features() == out_features_ && q.in_features() == in_features_, "Linear: a 4-bit weight of shape ",
               q.shape, " for a layer of ", out_features_, " outputs and ", in_features_, " inputs");
  LAMINA_CHECK(merged_.empty(), "Linear: adapter '", merged_, "' is merged into the base; unmerge it first");
  if (weight_.defined()) {
    remove_parameter("weight");
    weight_ = Tensor();
  }
  base_4bit_ = std::make_shared<const ops::Quantized4Bit>(std::move(q));
}

int64_t quantize_base_weights(Module& model, ops::Quant4Format format, int64_t blocksize, bool double_quant) {
  int64_t count = 0, linears = 0;
  for (const auto& [path, linear] : named_linears(model)) {
    // The output heads (a causal LM's lm_head, a reward model's score) stay in full precision,
    // as transformers' 4-bit loading leaves the last module.
    if (path == "lm_head" || path.ends_with(".lm_head") || path == "score" || path.ends_with(".score")) continue;
    ++linears;
    if (linear->quantized_base()) continue;  // 4-bit already (a 4-bit checkpoint)
    linear->quantize_base(format, blocksize, double_quant);
    ++count;
  }
  LAMINA_CHECK(linears > 0, "quantize_base_weights: the model has no Linear to quantize");
  return count;
}

Tensor Linear::forward(const Tensor& x) const {
  LAMINA_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, "Linear: input ", x.shape(), " does not end in ",
               in_features_, " features");
  const Tensor product = base_product(x);
  const Tensor output = bias_.defined() ? add(product, bias_) : product;
  if (adapters_.empty() || !selection_) return output;
  const LoraSelection& selection = *selection_;
  if (!merged_.empty()) {
    LAMINA_CHECK(selection.row_adapters.empty() && selection.active == merged_, "Linear: adapter '", merged_,
                 "' is merged into the base weight; unmerge it before running another adapter, none, or one per row");
    return output;
  }
  if (selection.router) return selection.router->forward(*this, x, output);  // routed multi-LoRA
  if (selection.row_adapters.empty()) {
    const LoraAdapter* adapter = find_adapter(selection.active);
    return adapter ? add_adapter_branch(x, output, product, *adapter) : output;
  }
  // One adapter per batch row: each run of rows sharing an adapter gets its branch, the base
  // product is computed once for all rows.
  const auto& rows = selection.row_adapters;
  LAMINA_CHECK(x.dim() >= 2 && x.size(0) == int64_t(rows.size()), "Linear: ", rows.size(),
               " per-row adapter indices for an input of shape ", x.shape(), " (one index per batch row)");
  std::vector<Tensor> pieces;
  for (int64_t start = 0; start < int64_t(rows.size());) {
    int64_t end = start + 1;
    while (end < int64_t(rows.size()) && rows[size_t(end)] == rows[size_t(start)]) ++end;
    const int64_t index = rows[size_t(start)];
    LAMINA_CHECK(index >= -1 && index < int64_t(selection.adapters.size()), "Linear: per-row adapter index ", index,
                 " out of range (", selection.adapters.size(), " adapters; -1 = base)");
    const LoraAdapter* adapter = index < 0 ? nullptr : find_adapter(selection.adapters[size_t(index)]);
    const Tensor piece = output.narrow(0, start, end - start);
    pieces.push_back(adapter ? add_adapter_branch(x.narrow(0, start, end - start), piece,
                                                  product.narrow(0, start, end - start), *adapter)
                             : piece);
    start = end;
  }
  return pieces.size() == 1 ? pieces[0] : cat(pieces, 0);
}

// PEFT's forward (formats-and-quantization.md 3.1, 3.3), in the adapter's dtype:
//   LoRA:  y = base + s * drop(x) A^T B^T
//   DoRA:  g = m / N (N = ||W + s B A||_row, detached)
//          no dropout: y = base + (g - 1) * (x W^T) + g * (s * x A^T B^T)
//          dropout:    y = base + (g - 1) * (x_d W^T) + g * (s * x_d A^T B^T)
// The gradients are those of these expressions with N a constant: A and B receive
// g * s * ... through the lora term only, m receives (x W^T + s x A^T B^T) / N.
Tensor Linear::add_adapter_branch(const Tensor& x, const Tensor& base_output, const Tensor& product,
                                  const LoraAdapter& adapter) const {
  // The branch's ops are timed as forward:<op>; this scope's self time is what is left, mostly
  // the casts between the base's and the adapter's dtypes (Tensor::to).
  const profiler::Scope scope("forward:lora_branch");
  const LoraOptions& options = adapter.options;
  const DType adapter_dtype = adapter.lora_A.dtype();
  const bool dropping = is_training() && options.dropout > 0;
  const Tensor input = x.to(adapter_dtype);
  const Tensor dropped = dropping ? dropout(input, options.dropout, selection_->dropout_generator) : input;
  const Tensor lora = matmul(matmul(dropped, adapter.lora_A, false, true), adapter.lora_B, false, true);
  const double scale = options.scale();
  const Tensor base = base_output.to(adapter_dtype);
  if (!options.use_dora) return add(base, mul(lora, scale)).to(base_output.dtype());

  Tensor norm;
  {
    autograd::NoGradGuard no_grad;
    const Tensor delta = mul(matmul(adapter.lora_B.detach(), adapter.lora_A.detach()), scale);
    norm = sqrt(sum(square(add(dense_base_weight().to(adapter_dtype), delta)), {1}));
  }
  const Tensor factor = div(adapter.magnitude, norm);  // g: [out]
  const Tensor base_term = dropping ? base_product(dropped.to(base_dtype())).to(adapter_dtype) : product.to(adapter_dtype);
  const Tensor y = add(add(base, mul(sub(factor, 1.0), base_term)), mul(factor, mul(lora, scale)));
  return y.to(base_output.dtype());
}

const LoraAdapter* Linear::find_adapter(const std::string& name) const {
  for (const auto& adapter : adapters_)
    if (adapter->name == name) return adapter.get();
  return nullptr;
}

std::vector<std::string> Linear::adapter_names() const {
  std::vector<std::string> names;
  for (const auto& adapter : adapters_) names.push_back(adapter->name);
  return names;
}

LoraAdapter& Linear::adapter(const std::string& name) {
  return const_cast<LoraAdapter&>(static_cast<const Linear*>(this)->adapter(name));
}

const LoraAdapter& Linear::adapter(const std::string& name) const {
  const LoraAdapter* found = find_adapter(name);
  if (found) return *found;
  std::string known;
  for (const auto& existing : adapters_) known += (known.empty() ? "" : ", ") + existing->name;
  throw Error(str_cat("Linear: no adapter named '", name, "' (it has: ", known.empty() ? "none" : known, ")"));
}

void Linear::add_adapter(const std::string& name, const LoraOptions& options, Generator& generator) {
  LAMINA_CHECK(!name.empty() && name.find('.') == std::string::npos, "Linear: invalid adapter name '", name,
               "' (it must be non-empty without dots)");
  LAMINA_CHECK(!has_adapter(name), "Linear: adapter '", name, "' added twice");
  LAMINA_CHECK(merged_.empty(), "Linear: cannot add adapter '", name, "' while '", merged_, "' is merged");
  LAMINA_CHECK(options.rank > 0, "LoRA: rank must be positive, got ", options.rank);
  LAMINA_CHECK(std::isfinite(options.alpha), "LoRA: lora_alpha must be finite, got ", options.alpha);
  LAMINA_CHECK(options.dropout >= 0 && options.dropout < 1, "LoRA: lora_dropout must be in [0, 1), got ",
               options.dropout);
  autograd::NoGradGuard no_grad;
  const DType dtype = base_dtype() == DType::f64 ? DType::f64 : DType::f32;
  const int64_t rank = options.rank;
  const double a_bound = 1.0 / std::sqrt(double(in_features_));  // Kaiming-uniform, a = sqrt(5), fan_in = in
  auto adapter = std::make_unique<LoraAdapter>();
  adapter->name = name;
  adapter->options = options;
  switch (options.init) {
    case LoraInit::kaiming:
      adapter->lora_A = uniform({rank, in_features_}, -a_bound, a_bound, generator, dtype);
      adapter->lora_B = zeros({out_features_, rank}, dtype);
      break;
    case LoraInit::gaussian:
      adapter->lora_A = ops::binary(ops::BinaryOp::mul, randn({rank, in_features_}, generator, dtype), 1.0 / double(rank));
      adapter->lora_B = zeros({out_features_, rank}, dtype);
      break;
    case LoraInit::random: {
      const double b_bound = 1.0 / std::sqrt(double(rank));
      adapter->lora_A = uniform({rank, in_features_}, -a_bound, a_bound, generator, dtype);
      adapter->lora_B = uniform({out_features_, rank}, -b_bound, b_bound, generator, dtype);
      break;
    }
  }
  adapter->lora_A = ops::to_device(adapter->lora_A, base_device());
  adapter->lora_B = ops::to_device(adapter->lora_B, base_device());
  if (!lora_A_) {
    lora_A_ = register_module("lora_A", std::make_shared<ModuleDict>());
    lora_B_ = register_module("lora_B", std::make_shared<ModuleDict>());
  }
  lora_A_->add(name, std::make_shared<WeightHolder>(adapter->lora_A));
  lora_B_->add(name, std::make_shared<WeightHolder>(adapter->lora_B));
  if (options.use_dora) {
    // m starts at the row norms of W + s B A, so the adapter starts as the identity it would be without DoRA.
    const Tensor delta = mul(matmul(adapter->lora_B, adapter->lora_A), options.scale());
    adapter->magnitude = sqrt(sum(square(add(dense_base_weight().to(dtype), delta)), {1}));
    if (!lora_magnitude_) lora_magnitude_ = register_module("lora_magnitude_vector", std::make_shared<ModuleDict>());
    lora_magnitude_->add(name, std::make_shared<WeightHolder>(adapter->magnitude));
  }
  adapters_.push_back(std::move(adapter));
}

void Linear::merge_adapter(const std::string& name) {
  LAMINA_CHECK(merged_.empty(), "Linear: adapter '", merged_, "' is already merged; unmerge it first");
  LAMINA_CHECK(!quantized_base(), "Linear: the base weight is quantized (4-bit or GGUF); merge the adapter into the full-precision model instead");
  require_base("merge_adapter");
  const LoraAdapter& merging = adapter(name);
  autograd::NoGradGuard no_grad;
  const DType compute = weight_.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor delta = mul(matmul(merging.lora_B.to(compute), merging.lora_A.to(compute)), merging.options.scale());
  Tensor merged = add(dense_base_weight().to(compute), delta);
  if (merging.options.use_dora) {
    merged_row_factor_ = div(merging.magnitude.to(compute), sqrt(sum(square(merged), {1}))).unsqueeze(1);
    merged = mul(merged, merged_row_factor_);
  }
  weight_.set_data(ops::cast(merged, weight_.dtype()));
  merged_ = name;
}

void Linear::unmerge_adapter() {
  LAMINA_CHECK(!merged_.empty(), "Linear: no adapter is merged");
  const LoraAdapter& merging = adapter(merged_);
  autograd::NoGradGuard no_grad;
  const DType compute = weight_.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor delta = mul(matmul(merging.lora_B.to(compute), merging.lora_A.to(compute)), merging.options.scale());
  Tensor weight = dense_base_weight().to(compute);
  if (merging.options.use_dora) weight = div(weight, merged_row_factor_);
  weight_.set_data(ops::cast(sub(weight, delta), weight_.dtype()));
  merged_.clear();
  merged_row_factor_ = Tensor();
}

void Linear::remove_adapters() {
  for (const char* group : {"lora_A", "lora_B"})
    if (lora_A_) remove_module(group);
  if (lora_magnitude_) remove_module("lora_magnitude_vector");
  lora_A_.reset();
  lora_B_.reset();
  lora_magnitude_.reset();
  adapters_.clear();
  selection_.reset();
  merged_.clear();
  merged_row_factor_ = Tensor();
}

void Linear::reset_parameters(Generator& generator) {
  LAMINA_CHECK(weight_.defined(), "Linear::reset_parameters: the layer has no full-precision weight (a quantized base)");
  const double bound = 1.0 / std::sqrt(double(in_features_));
  weight_.set_data(uniform(weight_.shape(), -bound, bound, generator, weight_.dtype()));
  if (bias_.defined()) bias_.set_data(uniform(bias_.shape(), -bound, bound, generator, bias_.dtype()));
}

Embedding::Embedding(int64_t num_embeddings, int64_t dim, DType dtype, ParameterInit init) {
  LAMINA_CHECK(num_embeddings > 0 && dim > 0, "Embedding: sizes must be positive, got ", num_embeddings, " x ", dim);
  weight_ = register_parameter("weight", new_parameter({num_embeddings, dim}, dtype, init, 0.0));
}

Tensor Embedding::forward(const Tensor& ids) const {
  if (table_) return ops::gguf_rows(ids, table_->matrix);  // frozen: nothing to differentiate
  return embedding(weight_, ids);
}

std::vector<Tensor> forward_together(const std::vector<const Linear*>& layers, const Tensor& x) {
  bool shared = x.dtype() == DType::f32 && x.device().is_cpu() && !(autograd::grad_enabled() && x.requires_grad());
  std::vector<const ops::GgufMatrix*> matrices;
  for (const Linear* layer : layers) {
    shared = shared && layer->base_gguf() != nullptr && layer->adapter_names().empty() && !layer->bias().defined();
    if (layer->base_gguf() != nullptr) matrices.push_back(&layer->base_gguf()->matrix);
  }
  if (shared) {
    const profiler::Scope scope("forward:", "linear_gguf_many");
    return ops::gguf_matmul_many(x, matrices);
  }
  std::vector<Tensor> outs;
  for (const Linear* layer : layers) outs.push_back(layer->forward(x));
  return outs;
}

void Embedding::set_quantized_table(ops::GgufWeight table) {
  LAMINA_CHECK(!weight_.defined() || (table.matrix.rows == weight_.size(0) && table.matrix.cols == weight_.size(1)),
               "Embedding: a quantized table of shape [", table.matrix.rows, ", ", table.matrix.cols, "] for a table of ",
               weight_.shape());
  if (weight_.defined()) {
    remove_parameter("weight");
    weight_ = Tensor();
  }
  table_ = std::make_shared<const ops::GgufWeight>(std::move(table));
}

void Embedding::reset_parameters(Generator& generator, double std) {
  LAMINA_CHECK(weight_.defined(), "Embedding::reset_parameters: the table is quantized (frozen)");
  const Tensor standard = randn(weight_.shape(), generator, weight_.dtype());
  weight_.set_data(ops::binary(ops::BinaryOp::mul, standard, std));
}

RMSNorm::RMSNorm(int64_t dim, double eps, DType dtype, ParameterInit init) : eps_(eps) {
  LAMINA_CHECK(dim > 0, "RMSNorm: dim must be positive, got ", dim);
  weight_ = register_parameter("weight", new_parameter({dim}, dtype, init, 1.0));
}

Tensor RMSNorm::forward(const Tensor& x) const { return rms_norm(x, weight_, eps_); }

}  // namespace lamina::nn
