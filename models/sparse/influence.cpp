// Attention influence for MoA profiling: the materialising attention node, the per-level block
// aggregation and the probe (influence.h).
#include "models/sparse/influence.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "autograd/autograd.h"
#include "ops/ops.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"

namespace lamina::sparse {
namespace {

// What the forward and the backward share: detached contiguous copies of q, k, v in the compute
// dtype (views of them never touch the tape) and the resolved mask.
struct AttentionInputs {
  Tensor q, k, v;  // [B, Hq, T, D], [B, Hkv, S, D]
  ResolvedAttentionPattern pattern;
  Tensor additive_mask;  // the pattern's, or undefined
  int64_t batch, heads, kv_heads, queries, keys, head_dim;
  double scale;
  DType compute;

  AttentionInputs(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionPattern& attention_pattern,
                  std::optional<double> scale_in)
      : pattern(attention_pattern, q_in.size(0), q_in.size(1), q_in.size(2), k_in.size(2), "influence_attention") {
    compute = q_in.dtype() == DType::f64 ? DType::f64 : DType::f32;
    q = ops::contiguous(ops::cast(autograd::saved(q_in), compute));
    k = ops::contiguous(ops::cast(autograd::saved(k_in), compute));
    v = ops::contiguous(ops::cast(autograd::saved(v_in), compute));
    batch = q.size(0);
    heads = q.size(1);
    queries = q.size(2);
    head_dim = q.size(3);
    kv_heads = k.size(1);
    keys = k.size(2);
    scale = scale_in.value_or(1.0 / std::sqrt(double(head_dim)));
    if (attention_pattern.additive_mask.defined())
      additive_mask = autograd::saved(attention_pattern.additive_mask);
  }

  Tensor query(int64_t b, int64_t h) const { return q.select(0, b).select(0, h); }  // [T, D]
  Tensor key(int64_t b, int64_t h) const { return k.select(0, b).select(0, h / (heads / kv_heads)); }
  Tensor value(int64_t b, int64_t h) const { return v.select(0, b).select(0, h / (heads / kv_heads)); }

  // The additive mask of (b, h) as a contiguous [T, S] tensor in the compute dtype, or undefined.
  Tensor mask_slice(int64_t b, int64_t h) const {
    if (!additive_mask.defined()) return Tensor();
    return ops::contiguous(
        ops::cast(additive_mask.expand({batch, heads, queries, keys}).select(0, b).select(0, h), compute));
  }

  // A of (b, h): [T, S], rows softmax(scale q k^T + mask) over the allowed keys, 0 elsewhere (a
  // row with no allowed key is all 0).
  template <typename T>
  Tensor probabilities(int64_t b, int64_t h) const {
    Tensor scores = ops::matmul(query(b, h), key(b, h), false, true);
    T* data = scores.data<T>();
    const Tensor mask = mask_slice(b, h);
    const T* mask_data = mask.defined() ? mask.data<T>() : nullptr;
    std::vector<double> row(static_cast<size_t>(keys));
    for (int64_t t = 0; t < queries; ++t) {
      const int64_t position = pattern.query_offset() + t;
      double largest = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < keys; ++j) {
        double score = -std::numeric_limits<double>::infinity();
        if (pattern.allowed(b, h, position, j)) {
          score = scale * double(data[t * keys + j]);
          if (mask_data) score += double(mask_data[t * keys + j]);
        }
        row[size_t(j)] = score;
        largest = std::max(largest, score);
      }
      double total = 0;
      for (int64_t j = 0; j < keys; ++j) {
        const double weight = std::isinf(largest) ? 0.0 : std::exp(row[size_t(j)] - largest);
        row[size_t(j)] = weight;
        total += weight;
      }
      for (int64_t j = 0; j < keys; ++j) data[t * keys + j] = T(total > 0 ? row[size_t(j)] / total : 0.0);
    }
    return scores;
  }
};

// out[b, h] rows written into the contiguous `destination` [B, H, R, C] from a [R, C] tensor.
template <typename T>
void store(const Tensor& destination, int64_t b, int64_t h, const Tensor& source, double factor, bool accumulate) {
  const int64_t rows = destination.size(2), columns = destination.size(3);
  T* out = destination.data<T>() + ((b * destination.size(1) + h) * rows) * columns;
  const T* in = source.data<T>();
  for (int64_t index = 0; index < rows * columns; ++index) {
    const T value = T(factor * double(in[index]));
    out[index] = accumulate ? out[index] + value : value;
  }
}

template <typename T>
Tensor forward(const AttentionInputs& inputs) {
  Tensor out = zeros({inputs.batch, inputs.heads, inputs.queries, inputs.head_dim}, inputs.compute);
  for (int64_t b = 0; b < inputs.batch; ++b)
    for (int64_t h = 0; h < inputs.heads; ++h) {
      const Tensor probabilities = inputs.probabilities<T>(b, h);
      store<T>(out, b, h, ops::matmul(probabilities, inputs.value(b, h)), 1.0, false);
    }
  return out;
}

// dS = A ⊙ (dA - rowsum(dA ⊙ A)), E = -dS / (1 - A) per row, then
// dq = scale dS k, dk = scale dS^T q, dv = A^T dO (dk, dv summed over each kv head's query heads).
template <typename T>
ops::AttentionGrads backward(const AttentionInputs& inputs, const Tensor& grad_out,
                             const InfluenceCallback& on_influence) {
  const Tensor grad = ops::contiguous(ops::cast(grad_out, inputs.compute));
  ops::AttentionGrads grads;
  grads.dq = zeros(inputs.q.shape(), inputs.compute);
  grads.dk = zeros(inputs.k.shape(), inputs.compute);
  grads.dv = zeros(inputs.v.shape(), inputs.compute);
  std::vector<double> influence(static_cast<size_t>(inputs.keys));
  for (int64_t b = 0; b < inputs.batch; ++b)
    for (int64_t h = 0; h < inputs.heads; ++h) {
      const Tensor probabilities = inputs.probabilities<T>(b, h);
      const Tensor grad_bh = grad.select(0, b).select(0, h);
      Tensor score_grad = ops::matmul(grad_bh, inputs.value(b, h), false, true);  // dA, becomes dS
      const T* a = probabilities.data<T>();
      T* ds = score_grad.data<T>();
      const int64_t keys = inputs.keys;
      for (int64_t t = 0; t < inputs.queries; ++t) {
        double dot = 0;
        for (int64_t j = 0; j < keys; ++j) dot += double(ds[t * keys + j]) * double(a[t * keys + j]);
        for (int64_t j = 0; j < keys; ++j) {
          const double weight = double(a[t * keys + j]);
          const double score_gradient = weight * (double(ds[t * keys + j]) - dot);
          ds[t * keys + j] = T(score_gradient);
          influence[size_t(j)] = weight < 1.0 ? -score_gradient / (1.0 - weight) : 0.0;
        }
        if (on_influence)
          on_influence(InfluenceRow{b, h, inputs.pattern.query_offset() + t, keys, influence.data()});
      }
      const int64_t kv_head = h / (inputs.heads / inputs.kv_heads);
      store<T>(grads.dq, b, h, ops::matmul(score_grad, inputs.key(b, h)), inputs.scale, false);
      store<T>(grads.dk, b, kv_head, ops::matmul(score_grad, inputs.query(b, h), true, false), inputs.scale, true);
      store<T>(grads.dv, b, kv_head, ops::matmul(probabilities, grad_bh, true, false), 1.0, true);
    }
  return grads;
}

}  // namespace

Tensor influence_attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionPattern& pattern,
                           std::optional<double> scale, InfluenceCallback on_influence) {
  LAMINA_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.shape() == v.shape() && q.size(0) == k.size(0) &&
                   q.size(3) == k.size(3) && k.size(1) > 0 && q.size(1) % k.size(1) == 0,
               "influence_attention: q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
               shape_str(v.shape()), " (want q [B, Hq, T, D], k and v [B, Hkv, S, D], Hq a multiple of Hkv)");
  LAMINA_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
               "influence_attention: CPU tensors only (profiling runs on the CPU)");
  auto inputs = std::make_shared<AttentionInputs>(q, k, v, pattern, scale);
  Tensor out = inputs->compute == DType::f64 ? forward<double>(*inputs) : forward<float>(*inputs);
  out = ops::cast(out, q.dtype());
  const DType q_dtype = q.dtype(), k_dtype = k.dtype(), v_dtype = v.dtype();
  autograd::record("influence_attention", {&out}, {q, k, v},
                   [inputs, on_influence = std::move(on_influence), q_dtype, k_dtype, v_dtype](const std::vector<Tensor>& g) {
                     ops::AttentionGrads grads = inputs->compute == DType::f64
                                                     ? backward<double>(*inputs, g[0], on_influence)
                                                     : backward<float>(*inputs, g[0], on_influence);
                     return std::vector<Tensor>{ops::cast(grads.dq, q_dtype), ops::cast(grads.dk, k_dtype),
                                            ops::cast(grads.dv, v_dtype)};
                   });
  return out;
}

// ---- InfluenceLevel

InfluenceLevel::InfluenceLevel(int64_t length, int64_t layers, int64_t heads, int64_t block)
    : length_(length), layers_(layers), heads_(heads), block_(block) {
  LAMINA_CHECK(length >= 1 && layers >= 1 && heads >= 1 && block >= 1, "InfluenceLevel: length ", length, ", ",
               layers, " layers, ", heads, " heads, block ", block);
  blocks_ = (length + block - 1) / block;
  values_.assign(size_t(layers * heads * (blocks_ * (blocks_ + 1) / 2)), 0.0);
}

void InfluenceLevel::add_row(int64_t layer, const InfluenceRow& row) {
  LAMINA_CHECK(!means_, "InfluenceLevel::add_row: this level holds means already (read from a file)");
  LAMINA_CHECK(layer >= 0 && layer < layers_ && row.head >= 0 && row.head < heads_, "InfluenceLevel::add_row: layer ",
               layer, " head ", row.head, " of a profile of ", layers_, " layers x ", heads_, " heads");
  const int64_t i = row.query_position;
  if (i < 0 || i >= length_) return;
  const int64_t block_row = i / block_;
  double* sums = values_.data() + (layer * heads_ + row.head) * (blocks_ * (blocks_ + 1) / 2) +
                 triangle_index(block_row, 0);
  const int64_t last_key = std::min(i, row.keys - 1);  // causal: later keys carry no influence
  for (int64_t j = 0; j <= last_key; ++j) sums[j / block_] += row.values[j];
}

int64_t InfluenceLevel::causal_pairs(int64_t block_row, int64_t block_column) const {
  const int64_t row_begin = block_row * block_, row_end = std::min(length_, row_begin + block_);
  const int64_t column_begin = block_column * block_, column_end = std::min(length_, column_begin + block_);
  int64_t pairs = 0;
  for (int64_t i = row_begin; i < row_end; ++i) pairs += std::max<int64_t>(0, std::min(i + 1, column_end) - column_begin);
  return pairs;
}

double InfluenceLevel::block_mean(int64_t layer, int64_t head, int64_t block_row, int64_t block_column) const {
  LAMINA_CHECK(layer >= 0 && layer < layers_ && head >= 0 && head < heads_ && block_column >= 0 &&
                   block_column <= block_row && block_row < blocks_,
               "InfluenceLevel::block_mean: layer ", layer, " head ", head, " block (", block_row, ", ", block_column,
               ")");
  const double value =
      values_[size_t((layer * heads_ + head) * (blocks_ * (blocks_ + 1) / 2) + triangle_index(block_row, block_column))];
  if (means_) return value;
  const int64_t pairs = causal_pairs(block_row, block_column);
  return items_ == 0 || pairs == 0 ? 0.0 : value / (double(items_) * double(pairs));
}

void InfluenceLevel::set_block_mean(int64_t layer, int64_t head, int64_t block_row, int64_t block_column, double mean) {
  if (!means_) {
    // Turn every sum into its mean first, so that the level holds one kind of value.
    std::vector<double> means(values_.size());
    for (int64_t l = 0; l < layers_; ++l)
      for (int64_t h = 0; h < heads_; ++h)
        for (int64_t r = 0; r < blocks_; ++r)
          for (int64_t c = 0; c <= r; ++c)
            means[size_t((l * heads_ + h) * (blocks_ * (blocks_ + 1) / 2) + triangle_index(r, c))] =
                block_mean(l, h, r, c);
    values_ = std::move(means);
    means_ = true;
  }
  LAMINA_CHECK(layer >= 0 && layer < layers_ && head >= 0 && head < heads_ && block_column >= 0 &&
                   block_column <= block_row && block_row < blocks_,
               "InfluenceLevel::set_block_mean: layer ", layer, " head ", head, " block (", block_row, ", ",
               block_column, ")");
  values_[size_t((layer * heads_ + head) * (blocks_ * (blocks_ + 1) / 2) + triangle_index(block_row, block_column))] =
      mean;
}

std::vector<int64_t> InfluenceLevel::masked_pairs(int64_t sink, int64_t window) const {
  std::vector<int64_t> counts(size_t(blocks_ * (blocks_ + 1) / 2), 0);
  if (window == kAllKeys) return counts;
  // Query i hides the keys j in [sink, i - window] (window 0: up to i itself).
  for (int64_t i = 0; i < length_; ++i) {
    const int64_t first = sink, last = i - window;
    if (last < first) continue;
    const int64_t block_row = i / block_;
    for (int64_t c = first / block_; c <= last / block_; ++c) {
      const int64_t begin = std::max(first, c * block_), end = std::min(last, c * block_ + block_ - 1);
      counts[size_t(triangle_index(block_row, c))] += end - begin + 1;
    }
  }
  return counts;
}

double InfluenceLevel::rule_loss(int64_t layer, int64_t head, const ElasticRule& rule) const {
  const std::vector<int64_t> counts = masked_pairs(rule.sink, rule.window(length_));
  double loss = 0;
  for (int64_t r = 0; r < blocks_; ++r)
    for (int64_t c = 0; c <= r; ++c)
      if (const int64_t count = counts[size_t(triangle_index(r, c))]) loss += double(count) * block_mean(layer, head, r, c);
  return loss;
}

std::vector<double> InfluenceLevel::rule_losses(const std::vector<ElasticRule>& rules) const {
  const size_t rule_count = rules.size();
  std::vector<double> losses(size_t(layers_ * heads_) * rule_count, 0.0);
  const int64_t triangle = blocks_ * (blocks_ + 1) / 2;
  std::vector<double> means(static_cast<size_t>(triangle));
  std::vector<std::vector<int64_t>> counts;
  for (const ElasticRule& rule : rules) counts.push_back(masked_pairs(rule.sink, rule.window(length_)));
  for (int64_t layer = 0; layer < layers_; ++layer)
    for (int64_t head = 0; head < heads_; ++head) {
      for (int64_t r = 0; r < blocks_; ++r)
        for (int64_t c = 0; c <= r; ++c) means[size_t(triangle_index(r, c))] = block_mean(layer, head, r, c);
      for (size_t index = 0; index < rule_count; ++index) {
        double loss = 0;
        for (int64_t block = 0; block < triangle; ++block)
          if (counts[index][size_t(block)]) loss += double(counts[index][size_t(block)]) * means[size_t(block)];
        losses[size_t(layer * heads_ + head) * rule_count + index] = loss;
      }
    }
  return losses;
}

json::Value InfluenceLevel::to_json() const {
  json::Value level(json::Object{});
  level.set("length", length_);
  level.set("items", items_);
  json::Array layers_json;
  for (int64_t layer = 0; layer < layers_; ++layer) {
    json::Array heads_json;
    for (int64_t head = 0; head < heads_; ++head) {
      json::Array means;
      for (int64_t r = 0; r < blocks_; ++r)
        for (int64_t c = 0; c <= r; ++c) means.push_back(block_mean(layer, head, r, c));
      heads_json.push_back(std::move(means));
    }
    layers_json.push_back(std::move(heads_json));
  }
  level.set("influence", std::move(layers_json));
  return level;
}

InfluenceLevel InfluenceLevel::from_json(const json::Value& value, int64_t layers, int64_t heads, int64_t block,
                                         const std::string& what) {
  const int64_t length = value.at("length", what).as_int64(what + ": length");
  if (length < 1) throw Error(str_cat(what, ": length ", length, " is not positive"));
  InfluenceLevel level(length, layers, heads, block);
  level.items_ = value.at("items", what).as_int64(what + ": items");
  level.means_ = true;
  const json::Array& layers_json = value.at("influence", what).as_array(what + ": influence");
  if (int64_t(layers_json.size()) != layers)
    throw Error(str_cat(what, ": influence has ", layers_json.size(), " layers, the profile ", layers));
  const int64_t triangle = level.blocks_ * (level.blocks_ + 1) / 2;
  for (int64_t layer = 0; layer < layers; ++layer) {
    const std::string layer_what = str_cat(what, ": influence[", layer, "]");
    const json::Array& heads_json = layers_json[size_t(layer)].as_array(layer_what);
    if (int64_t(heads_json.size()) != heads)
      throw Error(str_cat(layer_what, " has ", heads_json.size(), " heads, the profile ", heads));
    for (int64_t head = 0; head < heads; ++head) {
      const std::string head_what = str_cat(layer_what, "[", head, "]");
      const json::Array& means = heads_json[size_t(head)].as_array(head_what);
      if (int64_t(means.size()) != triangle)
        throw Error(str_cat(head_what, " has ", means.size(), " block means; length ", length, " in blocks of ", block,
                            " needs ", triangle));
      for (int64_t index = 0; index < triangle; ++index)
        level.values_[size_t((layer * heads + head) * triangle + index)] =
            means[size_t(index)].as_double(str_cat(head_what, "[", index, "]"));
    }
  }
  return level;
}

// ---- InfluenceProfile

const InfluenceLevel& InfluenceProfile::level(int64_t length) const {
  std::string have;
  for (const InfluenceLevel& level : levels) {
    if (level.length() == length) return level;
    have += (have.empty() ? "" : ", ") + std::to_string(level.length());
  }
  throw Error(str_cat("the profile has no length level ", length, " (it has ", have.empty() ? "none" : have, ")"));
}

json::Value InfluenceProfile::to_json() const {
  json::Value root(json::Object{});
  root.set("format", "lamina-moa-profile");
  root.set("version", int64_t(1));
  root.set("layers", layers);
  root.set("heads", heads);
  root.set("block", block);
  for (const auto& [key, value] : extra) root.set(key, value);
  json::Array levels_json;
  for (const InfluenceLevel& level : levels) levels_json.push_back(level.to_json());
  root.set("levels", std::move(levels_json));
  return root;
}

InfluenceProfile InfluenceProfile::from_json(const json::Value& value, const std::string& what) {
  const json::Value* format = value.find("format", what);
  if (!format || !format->is_string() || format->as_string() != "lamina-moa-profile")
    throw Error(what + ": not a MoA profile (\"format\" must be \"lamina-moa-profile\")");
  const int64_t version = value.at("version", what).as_int64(what + ": version");
  if (version != 1) throw Error(str_cat(what, ": profile version ", version, " is not supported (only 1)"));
  InfluenceProfile profile;
  profile.layers = value.at("layers", what).as_int64(what + ": layers");
  profile.heads = value.at("heads", what).as_int64(what + ": heads");
  profile.block = value.at("block", what).as_int64(what + ": block");
  if (profile.layers < 1 || profile.heads < 1 || profile.block < 1)
    throw Error(str_cat(what, ": layers ", profile.layers, ", heads ", profile.heads, " and block ", profile.block,
                        " must be positive"));
  const json::Array& levels_json = value.at("levels", what).as_array(what + ": levels");
  if (levels_json.empty()) throw Error(what + ": the profile has no length level");
  for (size_t index = 0; index < levels_json.size(); ++index) {
    InfluenceLevel level = InfluenceLevel::from_json(levels_json[index], profile.layers, profile.heads, profile.block,
                                                     str_cat(what, ": levels[", index, "]"));
    for (const InfluenceLevel& other : profile.levels)
      if (other.length() == level.length())
        throw Error(str_cat(what, ": length level ", level.length(), " appears twice"));
    profile.levels.push_back(std::move(level));
  }
  for (const auto& [key, member] : value.as_object(what))
    if (key != "format" && key != "version" && key != "layers" && key != "heads" && key != "block" && key != "levels")
      profile.extra.push_back({key, member});
  return profile;
}

InfluenceProfile InfluenceProfile::read(const std::string& path) { return from_json(json::parse_file(path), path); }

void InfluenceProfile::write(const std::string& path) const {
  io::write_file_atomically(path, to_json().dump() + "\n");
}

// ---- InfluenceProbe

Tensor InfluenceProbe::attend(int64_t layer, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionPattern& pattern) {
  InfluenceLevel* level = &level_;
  if (!absolute_)
    return influence_attention(q, k, v, pattern, std::nullopt,
                               [level, layer](const InfluenceRow& row) { level->add_row(layer, row); });
  auto magnitudes = std::make_shared<std::vector<double>>();
  return influence_attention(q, k, v, pattern, std::nullopt, [level, layer, magnitudes](const InfluenceRow& row) {
    magnitudes->assign(row.values, row.values + row.keys);
    for (double& value : *magnitudes) value = std::abs(value);
    InfluenceRow absolute = row;
    absolute.values = magnitudes->data();
    level->add_row(layer, absolute);
  });
}

}  // namespace lamina::sparse
