#include "ops/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "tensor/view.h"

namespace lamina::ops::reference {
namespace {

// A dense row-major f64 array with its shape: the only data structure the references use.
struct Array {
  Shape shape;
  std::vector<double> values;

  explicit Array(const Tensor& t) : shape(t.shape()), values(t.to_vector<double>()) {}
  Array(Shape s, double fill) : shape(std::move(s)), values(size_t(shape_numel(shape)), fill) {}

  int64_t flat(const Shape& index) const {
    int64_t at = 0;
    for (size_t d = 0; d < shape.size(); ++d) at = at * shape[d] + index[d];
    return at;
  }
  double& at(const Shape& index) { return values[size_t(flat(index))]; }
  double at(const Shape& index) const { return values[size_t(flat(index))]; }
  Tensor tensor(DType dtype = DType::f64) const { return Tensor::from_vector(values, shape, dtype); }
};

Shape unravel(int64_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % std::max<int64_t>(shape[d], 1);
    flat /= std::max<int64_t>(shape[d], 1);
  }
  return index;
}

std::vector<bool> reduced_mask(const Shape& shape, const Shape& dims) {
  std::vector<bool> mask(shape.size(), dims.empty());
  for (int64_t d : dims) mask[size_t(normalize_dim(d, int64_t(shape.size()), "reference"))] = true;
  return mask;
}

// Groups the elements of x by their kept coordinates; calls visit(out_index, values).
template <typename Visit>
Tensor reduce_with(const Tensor& x, const Shape& dims, bool keepdim, Visit visit, DType out_dtype = DType::f64) {
  const Array in(x);
  const std::vector<bool> mask = reduced_mask(in.shape, dims);
  Shape kept_shape, out_shape;
  for (size_t d = 0; d < in.shape.size(); ++d) {
    if (!mask[d]) kept_shape.push_back(in.shape[d]);
    if (!mask[d]) {
      out_shape.push_back(in.shape[d]);
    } else if (keepdim) {
      out_shape.push_back(1);
    }
  }
  std::vector<std::vector<double>> groups(size_t(shape_numel(kept_shape)));
  for (int64_t i = 0; i < shape_numel(in.shape); ++i) {
    const Shape index = unravel(i, in.shape);
    Shape kept;
    for (size_t d = 0; d < index.size(); ++d)
      if (!mask[d]) kept.push_back(index[d]);
    int64_t group = 0;
    for (size_t d = 0; d < kept.size(); ++d) group = group * kept_shape[d] + kept[d];
    groups[size_t(group)].push_back(in.values[size_t(i)]);
  }
  Array out(out_shape, 0.0);
  for (size_t g = 0; g < groups.size(); ++g) out.values[g] = visit(groups[g]);
  return out.tensor(out_dtype);
}

}  // namespace

Tensor unary(UnaryOp op, const Tensor& x) {
  Array a(x);
  for (double& v : a.values) {
    switch (op) {
      case UnaryOp::neg: v = -v; break;
      case UnaryOp::exp: v = std::exp(v); break;
      case UnaryOp::log: v = std::log(v); break;
      case UnaryOp::sqrt: v = std::sqrt(v); break;
      case UnaryOp::rsqrt: v = 1.0 / std::sqrt(v); break;
      case UnaryOp::abs: v = std::fabs(v); break;
      case UnaryOp::square: v = v * v; break;
      case UnaryOp::reciprocal: v = 1.0 / v; break;
      case UnaryOp::sigmoid: v = 1.0 / (1.0 + std::exp(-v)); break;
      case UnaryOp::silu: v = v / (1.0 + std::exp(-v)); break;
      case UnaryOp::tanh: v = std::tanh(v); break;
      case UnaryOp::relu: v = v > 0 ? v : 0.0; break;
      case UnaryOp::gelu: v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); break;
      // log(1 + e^v) = v + log(1 + e^-v): the exponent stays <= 0, so large |v| cannot overflow.
      case UnaryOp::softplus: v = v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); break;
      case UnaryOp::log_sigmoid: v = v < 0 ? v - std::log1p(std::exp(v)) : -std::log1p(std::exp(-v)); break;
    }
  }
  return a.tensor();
}

Tensor binary(BinaryOp op, const Tensor& a_in, const Tensor& b_in) {
  const Array a(a_in), b(b_in);
  const Shape shape = broadcast_shapes(a.shape, b.shape, "reference::binary");
  Array out(shape, 0.0);
  auto source_index = [&](const Shape& index, const Shape& source) {
    Shape s(source.size());
    for (size_t d = 0; d < source.size(); ++d) {
      const int64_t i = index[d + shape.size() - source.size()];
      s[d] = source[d] == 1 ? 0 : i;
    }
    return s;
  };
  for (int64_t i = 0; i < shape_numel(shape); ++i) {
    const Shape index = unravel(i, shape);
    const double x = a.at(source_index(index, a.shape)), y = b.at(source_index(index, b.shape));
    double r = 0;
    switch (op) {
      case BinaryOp::add: r = x + y; break;
      case BinaryOp::sub: r = x - y; break;
      case BinaryOp::mul: r = x * y; break;
      case BinaryOp::div: r = x / y; break;
      case BinaryOp::pow: r = std::pow(x, y); break;
      case BinaryOp::maximum: r = std::max(x, y); break;
      case BinaryOp::minimum: r = std::min(x, y); break;
    }
    out.values[size_t(i)] = r;
  }
  return out.tensor();
}

Tensor reduce_sum(const Tensor& x, const Shape& dims, bool keepdim) {
  return reduce_with(x, dims, keepdim, [](const std::vector<double>& v) {
    double s = 0;
    for (double e : v) s += e;
    return s;
  });
}

Tensor reduce_mean(const Tensor& x, const Shape& dims, bool keepdim) {
  return reduce_with(x, dims, keepdim, [](const std::vector<double>& v) {
    double s = 0;
    for (double e : v) s += e;
    return s / double(v.size());
  });
}

Tensor reduce_max(const Tensor& x, const Shape& dims, bool keepdim) {
  return reduce_with(x, dims, keepdim, [](const std::vector<double>& v) {
    double m = -std::numeric_limits<double>::infinity();
    for (double e : v) m = std::max(m, e);
    return m;
  });
}

Tensor reduce_min(const Tensor& x, const Shape& dims, bool keepdim) {
  return reduce_with(x, dims, keepdim, [](const std::vector<double>& v) {
    double m = std::numeric_limits<double>::infinity();
    for (double e : v) m = std::min(m, e);
    return m;
  });
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  return reduce_with(
      x, {dim}, keepdim,
      [](const std::vector<double>& v) {
        size_t best = 0;
        for (size_t i = 1; i < v.size(); ++i)
          if (v[i] > v[best]) best = i;
        return double(best);
      },
      DType::i64);
}

Tensor logsumexp(const Tensor& x, const Shape& dims, bool keepdim) {
  return reduce_with(x, dims, keepdim, [](const std::vector<double>& v) {
    double m = -std::numeric_limits<double>::infinity();
    for (double e : v) m = std::max(m, e);
    double s = 0;
    for (double e : v) s += std::exp(e - m);
    return m + std::log(s);
  });
}

Tensor var(const Tensor& x, const Shape& dims, int64_t correction, bool keepdim) {
  return reduce_with(x, dims, keepdim, [correction](const std::vector<double>& v) {
    double mean = 0;
    for (double e : v) mean += e;
    mean /= double(v.size());
    double s = 0;
    for (double e : v) s += (e - mean) * (e - mean);
    // No degrees of freedom left (e.g. zero elements): 0/0 = NaN, as torch.var gives.
    return s / std::max(0.0, double(v.size()) - double(correction));
  });
}

Tensor matmul(const Tensor& a_in, const Tensor& b_in, bool transpose_a, bool transpose_b) {
  const Array a(transpose_a ? ops::contiguous(views::transpose(a_in, -1, -2)) : a_in);
  const Array b(transpose_b ? ops::contiguous(views::transpose(b_in, -1, -2)) : b_in);
  const int64_t m = a.shape[a.shape.size() - 2], k = a.shape.back(), n = b.shape.back();
  const Shape batch_a(a.shape.begin(), a.shape.end() - 2), batch_b(b.shape.begin(), b.shape.end() - 2);
  const Shape batch = broadcast_shapes(batch_a, batch_b, "reference::matmul");
  Shape out_shape = batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  Array out(out_shape, 0.0);
  for (int64_t i = 0; i < shape_numel(out_shape); ++i) {
    const Shape index = unravel(i, out_shape);
    Shape ia(a.shape.size()), ib(b.shape.size());
    for (size_t d = 0; d < batch_a.size(); ++d)
      ia[d] = batch_a[d] == 1 ? 0 : index[d + batch.size() - batch_a.size()];
    for (size_t d = 0; d < batch_b.size(); ++d)
      ib[d] = batch_b[d] == 1 ? 0 : index[d + batch.size() - batch_b.size()];
    double s = 0;
    for (int64_t kk = 0; kk < k; ++kk) {
      ia[ia.size() - 2] = index[index.size() - 2];
      ia.back() = kk;
      ib[ib.size() - 2] = kk;
      ib.back() = index.back();
      s += a.at(ia) * b.at(ib);
    }
    out.values[size_t(i)] = s;
  }
  return out.tensor();
}

namespace {
// Applies f(row) -> row along `dim` of x.
template <typename F>
Tensor along_dim(const Tensor& x, int64_t dim, F f) {
  Array a(x);
  const int64_t d = normalize_dim(dim, int64_t(a.shape.size()), "reference");
  const int64_t size = a.shape[size_t(d)];
  Array out(a.shape, 0.0);
  for (int64_t i = 0; i < shape_numel(a.shape); ++i) {
    Shape index = unravel(i, a.shape);
    if (index[size_t(d)] != 0) continue;
    std::vector<double> row(static_cast<size_t>(size));
    for (int64_t j = 0; j < size; ++j) {
      index[size_t(d)] = j;
      row[size_t(j)] = a.at(index);
    }
    const std::vector<double> result = f(row);
    for (int64_t j = 0; j < size; ++j) {
      index[size_t(d)] = j;
      out.at(index) = result[size_t(j)];
    }
  }
  return out.tensor();
}
}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, [](std::vector<double> row) {
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (double v : row) m = std::max(m, v);
    for (double& v : row) s += (v = std::exp(v - m));
    for (double& v : row) v /= s;
    return row;
  });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  return along_dim(x, dim, [](std::vector<double> row) {
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (double v : row) m = std::max(m, v);
    for (double v : row) s += std::exp(v - m);
    for (double& v : row) v = v - m - std::log(s);
    return row;
  });
}

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const Array w(weight);
  const std::vector<int64_t> id = ids.to_vector<int64_t>();
  Shape shape = ids.shape();
  shape.push_back(w.shape[1]);
  Array out(shape, 0.0);
  for (size_t n = 0; n < id.size(); ++n)
    for (int64_t j = 0; j < w.shape[1]; ++j) out.values[n * size_t(w.shape[1]) + size_t(j)] = w.at({id[n], j});
  return out.tensor();
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  const std::vector<double> w = weight.to_vector<double>();
  return along_dim(x, -1, [&](std::vector<double> row) {
    double ms = 0;
    for (double v : row) ms += v * v;
    const double r = 1.0 / std::sqrt(ms / double(row.size()) + eps);
    for (size_t i = 0; i < row.size(); ++i) row[i] = row[i] * r * w[i];
    return row;
  });
}

// inv_freq[i] = theta^(-2i/D), remapped for Llama 3.1 by wavelength (llama3.md section 1.5):
// computed here in f64 from the spec, sharing nothing with ops::rope_frequencies, then rounded
// to f32 once, since the references (Meta's and HF's) hold the table in f32.
std::vector<float> rope_frequencies_from_spec(const RopeConfig& config) {
  const int64_t half = config.head_dim / 2;
  std::vector<float> frequencies(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    double f = std::pow(config.theta, -double(2 * i) / double(config.head_dim));
    if (config.llama3_scaling) {
      const Llama3RopeScaling& s = *config.llama3_scaling;
      const double wavelength = 2.0 * M_PI / f;
      const double low_wavelength = double(s.original_max_position) / s.low_freq_factor;
      const double high_wavelength = double(s.original_max_position) / s.high_freq_factor;
      if (wavelength > low_wavelength) {
        f /= s.factor;
      } else if (wavelength >= high_wavelength) {
        const double blend = (double(s.original_max_position) / wavelength - s.low_freq_factor) /
                             (s.high_freq_factor - s.low_freq_factor);
        f = (1 - blend) * f / s.factor + blend * f;
      }
    }
    frequencies[size_t(i)] = float(f);
  }
  return frequencies;
}

Tensor rope(const Tensor& x, const Tensor& positions, const RopeConfig& config) {
  Array a(x);
  const std::vector<float> frequencies = rope_frequencies_from_spec(config);
  const std::vector<int64_t> pos = positions.to_vector<int64_t>();
  const int64_t B = a.shape[0], T = a.shape[1], H = a.shape[2], D = a.shape[3], half = D / 2;
  Array out(a.shape, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = positions.dim() == 2 ? pos[size_t(b * T + t)] : pos[size_t(t)];
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double angle = double(float(p) * frequencies[size_t(i)]);
          const double x1 = a.at({b, t, h, i}), x2 = a.at({b, t, h, i + half});
          out.at({b, t, h, i}) = x1 * std::cos(angle) - x2 * std::sin(angle);
          out.at({b, t, h, i + half}) = x2 * std::cos(angle) + x1 * std::sin(angle);
        }
    }
  return out.tensor();
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  Array g(gate);
  const Array u(up);
  for (size_t i = 0; i < g.values.size(); ++i) g.values[i] = g.values[i] / (1 + std::exp(-g.values[i])) * u.values[i];
  return g.tensor();
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index) {
  const Array x(logits);
  const std::vector<int64_t> t = targets.to_vector<int64_t>();
  const int64_t V = x.shape.back();
  Array out(targets.shape(), 0.0);
  for (size_t n = 0; n < t.size(); ++n) {
    if (t[n] == ignore_index) continue;
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (int64_t j = 0; j < V; ++j) m = std::max(m, x.values[n * size_t(V) + size_t(j)]);
    for (int64_t j = 0; j < V; ++j) s += std::exp(x.values[n * size_t(V) + size_t(j)] - m);
    out.values[n] = m + std::log(s) - x.values[n * size_t(V) + size_t(t[n])];
  }
  return out.tensor();
}

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const AttentionOptions& options) {
  const Array q(q_in), k(k_in), v(v_in);
  const int64_t B = q.shape[0], H = q.shape[1], T = q.shape[2], D = q.shape[3];
  const int64_t Hkv = k.shape[1], S = k.shape[2];
  const double scale = options.scale.value_or(1.0 / std::sqrt(double(D)));
  std::optional<Array> mask;
  if (options.mask.defined()) mask.emplace(ops::contiguous(views::expand(options.mask, {B, H, T, S})));
  Array out(q.shape, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      for (int64_t t = 0; t < T; ++t) {
        std::vector<double> scores(static_cast<size_t>(S));
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < S; ++s) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q.at({b, h, t, d}) * k.at({b, g, s, d});
          double score = dot * scale + (mask ? mask->at({b, h, t, s}) : 0.0);
          if (options.causal && s > S - T + t) score = -std::numeric_limits<double>::infinity();
          scores[size_t(s)] = score;
          m = std::max(m, score);
        }
        if (m == -std::numeric_limits<double>::infinity()) continue;  // every key hidden: zeros
        double total = 0;
        for (double& score : scores) total += (score = std::exp(score - m));
        for (int64_t d = 0; d < D; ++d) {
          double acc = 0;
          for (int64_t s = 0; s < S; ++s) acc += scores[size_t(s)] / total * v.at({b, g, s, d});
          out.at({b, h, t, d}) = acc;
        }
      }
    }
  return out.tensor();
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  const Array a(x);
  const std::vector<int64_t> idx = index.to_vector<int64_t>();
  const int64_t d = normalize_dim(dim, int64_t(a.shape.size()), "reference");
  Shape shape = a.shape;
  shape[size_t(d)] = int64_t(idx.size());
  Array out(shape, 0.0);
  for (int64_t i = 0; i < shape_numel(shape); ++i) {
    Shape at = unravel(i, shape);
    at[size_t(d)] = idx[size_t(at[size_t(d)])];
    out.values[size_t(i)] = a.at(at);
  }
  return out.tensor();
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  const Array a(x);
  const std::vector<int64_t> idx = index.to_vector<int64_t>();
  const int64_t d = normalize_dim(dim, int64_t(a.shape.size()), "reference");
  Array out(index.shape(), 0.0);
  for (int64_t i = 0; i < shape_numel(index.shape()); ++i) {
    Shape at = unravel(i, index.shape());
    at[size_t(d)] = idx[size_t(i)];
    out.values[size_t(i)] = a.at(at);
  }
  return out.tensor();
}

Tensor scatter_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src) {
  Array out(base);
  const Array s(src);
  const std::vector<int64_t> idx = index.to_vector<int64_t>();
  const int64_t d = normalize_dim(dim, int64_t(out.shape.size()), "reference");
  for (int64_t i = 0; i < shape_numel(index.shape()); ++i) {
    Shape at = unravel(i, index.shape());
    const double value = s.at(at);
    at[size_t(d)] = idx[size_t(i)];
    out.at(at) += value;
  }
  return out.tensor();
}

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  const int64_t d = normalize_dim(dim, tensors[0].dim(), "reference");
  Shape shape = tensors[0].shape();
  shape[size_t(d)] = 0;
  for (const Tensor& t : tensors) shape[size_t(d)] += t.size(d);
  Array out(shape, 0.0);
  int64_t offset = 0;
  for (const Tensor& t : tensors) {
    const Array a(t);
    for (int64_t i = 0; i < shape_numel(a.shape); ++i) {
      Shape at = unravel(i, a.shape);
      const double value = a.values[size_t(i)];
      at[size_t(d)] += offset;
      out.at(at) = value;
    }
    offset += t.size(d);
  }
  return out.tensor();
}

std::vector<Tensor> adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                               const Tensor& exp_avg_sq, const AdamWStep& h) {
  Array p(param), m(exp_avg), v(exp_avg_sq);
  const Array g(grad);
  for (size_t i = 0; i < p.values.size(); ++i) {
    m.values[i] = h.beta1 * m.values[i] + (1 - h.beta1) * g.values[i];
    v.values[i] = h.beta2 * v.values[i] + (1 - h.beta2) * g.values[i] * g.values[i];
    const double m_hat = m.values[i] / (1 - std::pow(h.beta1, double(h.step)));
    const double v_hat = v.values[i] / (1 - std::pow(h.beta2, double(h.step)));
    p.values[i] = p.values[i] * (1 - h.lr * h.weight_decay) - h.lr * m_hat / (std::sqrt(v_hat) + h.eps);
  }
  return {p.tensor(), m.tensor(), v.tensor()};
}

}  // namespace lamina::ops::reference

namespace lamina::ops::reference {

namespace {

// The log-softmax of one row of z = x / temperature, written out plainly.
std::vector<double> row_log_softmax(const std::vector<double>& x, size_t begin, size_t vocab, double temperature) {
  double m = -std::numeric_limits<double>::infinity(), s = 0;
  for (size_t j = 0; j < vocab; ++j) m = std::max(m, x[begin + j] / temperature);
  for (size_t j = 0; j < vocab; ++j) s += std::exp(x[begin + j] / temperature - m);
  std::vector<double> out(vocab);
  for (size_t j = 0; j < vocab; ++j) out[j] = x[begin + j] / temperature - m - std::log(s);
  return out;
}

}  // namespace

Tensor token_logprobs(const Tensor& logits, const Tensor& labels, const Tensor& mask, double temperature) {
  const std::vector<double> x = logits.to_vector<double>();
  const std::vector<int64_t> label = labels.to_vector<int64_t>();
  const std::vector<bool> keep = mask.to_vector<bool>();
  const size_t vocab = size_t(logits.size(-1));
  std::vector<double> out(label.size(), 0.0);
  for (size_t n = 0; n < label.size(); ++n)
    if (keep[n]) out[n] = row_log_softmax(x, n * vocab, vocab, temperature)[size_t(label[n])];
  return Tensor::from_vector(out, labels.shape(), DType::f64);
}

std::vector<Tensor> token_distribution_stats(const Tensor& logits, const Tensor& labels, const Tensor& mask,
                                             double temperature) {
  const std::vector<double> x = logits.to_vector<double>();
  const std::vector<int64_t> label = labels.to_vector<int64_t>();
  const std::vector<bool> keep = mask.to_vector<bool>();
  const size_t vocab = size_t(logits.size(-1));
  std::vector<double> entropy(label.size(), 0.0), mean(label.size(), 0.0), sum_sq(label.size(), 0.0),
      matches(label.size(), 0.0);
  for (size_t n = 0; n < label.size(); ++n) {
    if (!keep[n]) continue;
    const std::vector<double> log_p = row_log_softmax(x, n * vocab, vocab, temperature);
    double squares = 0;
    size_t best = 0;
    for (size_t j = 0; j < vocab; ++j) {
      if (std::isfinite(log_p[j])) entropy[n] -= std::exp(log_p[j]) * log_p[j];  // p log p -> 0 as p -> 0
      squares += std::exp(2 * log_p[j]);
      mean[n] += x[n * vocab + j] / double(vocab);
      if (x[n * vocab + j] > x[n * vocab + best]) best = j;
    }
    sum_sq[n] = std::log(squares);
    matches[n] = best == size_t(label[n]) ? 1.0 : 0.0;
  }
  const Shape& shape = labels.shape();
  return {Tensor::from_vector(entropy, shape, DType::f64), Tensor::from_vector(mean, shape, DType::f64),
          Tensor::from_vector(sum_sq, shape, DType::f64), Tensor::from_vector(matches, shape, DType::f64)};
}

Tensor log1mexp(const Tensor& x) {
  std::vector<double> values = x.to_vector<double>();
  // Each form where it has no cancellation, in long double.
  for (double& v : values) {
    const long double w = v;
    v = double(w < -0.5L ? std::log1p(-std::exp(w)) : std::log(-std::expm1(w)));
  }
  return Tensor::from_vector(values, x.shape(), DType::f64);
}

}  // namespace lamina::ops::reference
