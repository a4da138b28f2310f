// Op cases of the neural-network primitives: softmax and log_softmax, rms_norm, rope (with and
// without Llama 3.1 scaling), swiglu, embedding, cross-entropy (ignore_index) and dense
// attention (causal with a KV offset, GQA, additive masks).
#include <cmath>

#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace nn_family {

const Tolerance kExact{0, 0};

const std::vector<DType> kFloats = {DType::f32, DType::f64, DType::bf16, DType::f16};

bool is_16_bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

// f32 (f64 for f64): the dtype of the statistics these ops return beside their result.
DType stats_dtype(DType dtype) { return dtype == DType::f64 ? DType::f64 : DType::f32; }

// CUDA row ops (softmax, rms_norm, cross-entropy, attention) against the CPU: sums in another
// order over up to 128K terms.
Tolerance row_tolerance(DType dtype) {
  switch (dtype) {
    case DType::f32: return {1e-5, 1e-5};
    case DType::f64: return {1e-11, 1e-11};
    default: return scaled(elementwise_tolerance(dtype), 2);
  }
}

// ---- softmax and log_softmax

struct DimArgs {
  int64_t dim;
};

OpCase softmax_case(bool log_space) {
  OpCase c;
  c.name = log_space ? "ops::log_softmax" : "ops::softmax";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const Shape& shape : {Shape{7}, Shape{3, 5}, Shape{2, 3, 9}, Shape{4, 1, 6}, Shape{2, 0, 3}}) {
      const Tensor x = random_tensor(shape, dtype, gen, -4, 4);
      for (int64_t dim = -1; dim < int64_t(shape.size()); ++dim)
        calls.push_back({shape_str(shape) + " dim " + std::to_string(dim), {x}, DimArgs{dim}});
    }
    // Long rows: the CUDA kernels' multi-pass paths.
    if (with_large)
      for (const Shape& shape : {Shape{3, 4096}, Shape{2, 13000}, Shape{5, 6145}})
        calls.push_back({shape_str(shape) + " dim 1", {random_tensor(shape, dtype, gen, -4, 4)}, DimArgs{1}});
    return calls;
  };
  c.layout_independent = true;
  c.forward = [log_space](const OpCall& call, const Tensors& in) {
    const int64_t dim = call.args<DimArgs>().dim;
    return Tensors{log_space ? ops::log_softmax(in[0], dim) : ops::softmax(in[0], dim)};
  };
  c.oracle = [log_space](const OpCall& call, const Tensors& in) {
    const int64_t dim = call.args<DimArgs>().dim;
    return Tensors{log_space ? ops::reference::log_softmax(in[0], dim) : ops::reference::softmax(in[0], dim)};
  };
  // log_softmax subtracts a logsumexp rounded to the dtype from each element.
  c.tolerance = [log_space](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), log_space ? 4 : 1); };
  c.backward = [log_space](const OpCall& call, const Tensors&, const Tensors& out, const Tensor& grad) {
    const int64_t dim = call.args<DimArgs>().dim;
    return Tensors{log_space ? ops::log_softmax_backward(grad, out[0], dim) : ops::softmax_backward(grad, out[0], dim)};
  };
  // From the output rounded to the dtype.
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), is_16_bit(dtype) ? 4 : 1); };
  c.differentiable = [log_space](const OpCall& call, const Tensors& in) {
    const int64_t dim = call.args<DimArgs>().dim;
    return log_space ? lamina::log_softmax(in[0], dim) : lamina::softmax(in[0], dim);
  };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return row_tolerance(dtype); };
  return c;
}

// ---- rms_norm

struct NormArgs {
  double eps;
};

OpCase rms_norm_case() {
  OpCase c;
  c.name = "ops::rms_norm";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto inputs = [&](const Shape& shape) {
      return Tensors{random_tensor(shape, dtype, gen, -2, 2), random_tensor({shape.back()}, dtype, gen, 0.5, 1.5)};
    };
    for (const Shape& shape : {Shape{5}, Shape{3, 8}, Shape{2, 3, 33}, Shape{0, 4}, Shape{4, 1}}) {
      const Tensors in = inputs(shape);
      calls.push_back({shapes_label(in), in, NormArgs{1e-5}});
    }
    if (with_large) {
      for (const Shape& shape : {Shape{64, 4096}, Shape{7, 12000}, Shape{1000, 96}}) {
        const Tensors in = inputs(shape);
        calls.push_back({shapes_label(in), in, NormArgs{1e-5}});
      }
    }
    return calls;
  };
  c.layout_independent = true;
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ops::RmsNormResult result = ops::rms_norm(in[0], in[1], call.args<NormArgs>().eps);
    return Tensors{result.y, result.rstd};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::rms_norm(in[0], in[1], call.args<NormArgs>().eps)};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), 2); };
  c.output_dtypes = [](DType dtype) { return std::vector<DType>{dtype, stats_dtype(dtype)}; };
  c.backward = [](const OpCall&, const Tensors& in, const Tensors& out, const Tensor& grad) {
    const ops::RmsNormGrads grads = ops::rms_norm_backward(grad, in[0], in[1], out[1]);
    return Tensors{grads.dx, grads.dweight};
  };
  // The weight gradient sums a rounded product over every row.
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), is_16_bit(dtype) ? 4 : 2); };
  c.differentiable = [](const OpCall& call, const Tensors& in) { return lamina::rms_norm(in[0], in[1], call.args<NormArgs>().eps); };
  // y: a row op; rstd: f32 statistics.
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t index) {
    if (index == 0) return row_tolerance(dtype);
    return dtype == DType::f64 ? Tolerance{1e-12, 1e-12} : Tolerance{1e-6, 1e-5};
  };
  // dx: a row op; dweight sums over every row in f32 (f64 for f64) in blocks of another size.
  c.cuda_backward_tolerance = [](DType dtype, const OpCall&, size_t index) {
    if (index == 0) return scaled(row_tolerance(dtype), 2);
    switch (dtype) {
      case DType::f64: return Tolerance{1e-10, 1e-10};
      case DType::f32: return Tolerance{1e-4, 1e-4};
      default: return scaled(elementwise_tolerance(dtype), 4);
    }
  };
  return c;
}

// ---- rope

struct RopeArgs {
  RopeConfig config;
  double largest_position;
};

// The kernel's f32 frequency table and the oracle's (rounded once from f64) may differ by an f32
// ulp of a frequency (< 1.2e-7 of one below 1), so an angle may differ by p times that; |x| < 1.
Tolerance rope_tolerance(DType dtype, const OpCall& call) {
  Tolerance tol = tolerance_for(dtype);
  tol.atol += call.args<RopeArgs>().largest_position * 1.2e-7;
  return tol;
}

OpCase rope_case() {
  OpCase c;
  c.name = "ops::rope";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    const RopeConfig plain{16, 10000.0, std::nullopt};
    // original_max_position 64 puts the frequencies of a 16-wide head into all three bands of
    // the Llama 3.1 remapping (kept, blended, divided by the factor).
    const RopeConfig llama31_small{16, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 64}};
    const RopeConfig llama31{128, 500000.0, Llama3RopeScaling{8.0, 1.0, 4.0, 8192}};
    for (const RopeConfig& config : {plain, llama31_small}) {
      const std::string name = config.llama3_scaling ? "llama3.1 scaling" : "no scaling";
      const Tensor x = random_tensor({2, 5, 3, config.head_dim}, dtype, gen);
      // A [B, H, T, D] tensor viewed as [B, T, H, D] (the usual transposed activation layout).
      const Tensor bhtd_view = views::transpose(ops::contiguous(views::transpose(x, 1, 2)), 1, 2);
      const Tensor shared_positions = Tensor::from_vector(std::vector<int64_t>{0, 1, 2, 7, 100}, {5});
      const Tensor batch_positions = ops::cast(randint(0, 5000, {2, 5}, gen), DType::i32);
      for (const auto& [positions, largest] : {std::pair{shared_positions, 100.0}, std::pair{batch_positions, 5000.0}}) {
        calls.push_back({shapes_label({x, positions}) + " " + name, {x, positions}, RopeArgs{config, largest}});
        calls.push_back({shapes_label({x, positions}) + " " + name + ", x a [B, H, T, D] view", {bhtd_view, positions},
                         RopeArgs{config, largest}});
      }
    }
    const Tensor one_row = random_tensor({1, 3, 2, 128}, dtype, gen);
    const Tensor positions = Tensor::from_vector(std::vector<int64_t>{0, 900, 8000}, {3});
    calls.push_back({shapes_label({one_row, positions}) + " llama3.1 scaling", {one_row, positions}, RopeArgs{llama31, 8000}});
    if (!with_large) return calls;
    for (const RopeConfig& config : {plain, llama31}) {
      const Tensor x = random_tensor({2, 33, 8, config.head_dim}, dtype, gen);
      const Tensor shared = randint(0, 8192, {33}, gen), per_batch = ops::cast(randint(0, 8192, {2, 33}, gen), DType::i32);
      for (const Tensor& far : {shared, per_batch}) calls.push_back({shapes_label({x, far}), {x, far}, RopeArgs{config, 8192}});
    }
    return calls;
  };
  c.layout_independent = true;
  c.forward = [](const OpCall& call, const Tensors& in) { return Tensors{ops::rope(in[0], in[1], call.args<RopeArgs>().config)}; };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::rope(in[0], in[1], call.args<RopeArgs>().config)};
  };
  c.tolerance = [](DType dtype, const OpCall& call, size_t) { return rope_tolerance(dtype, call); };
  c.grad_inputs = {0};
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors&, const Tensor& grad) {
    return Tensors{ops::rope_backward(grad, in[1], call.args<RopeArgs>().config)};
  };
  c.differentiable = [](const OpCall& call, const Tensors& in) { return lamina::rope(in[0], in[1], call.args<RopeArgs>().config); };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  c.cuda_backward_tolerance = c.cuda_tolerance;
  return c;
}

// ---- swiglu

OpCase swiglu_case() {
  OpCase c;
  c.name = "ops::swiglu";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto inputs = [&](const Shape& shape) {
      return Tensors{random_tensor(shape, dtype, gen, -6, 6), random_tensor(shape, dtype, gen)};
    };
    for (const Shape& shape : {Shape{3, 17}, Shape{}, Shape{0, 4}, Shape{2, 3, 5}, Shape{1, 1}}) {
      const Tensors in = inputs(shape);
      calls.push_back({shapes_label(in), in});
    }
    if (with_large) {
      for (const Shape& shape : {Shape{64, 1000}, Shape{(1 << 16) | 5}}) {
        const Tensors in = inputs(shape);
        calls.push_back({shapes_label(in), in});
      }
    }
    return calls;
  };
  c.forward = [](const OpCall&, const Tensors& in) { return Tensors{ops::swiglu(in[0], in[1])}; };
  c.oracle = [](const OpCall&, const Tensors& in) { return Tensors{ops::reference::swiglu(in[0], in[1])}; };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.layout_independent = true;
  c.backward = [](const OpCall&, const Tensors& in, const Tensors&, const Tensor& grad) {
    const auto [grad_gate, grad_up] = ops::swiglu_backward(grad, in[0], in[1]);
    return Tensors{grad_gate, grad_up};
  };
  c.differentiable = [](const OpCall&, const Tensors& in) { return lamina::swiglu(in[0], in[1]); };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(elementwise_tolerance(dtype), 2); };
  c.cuda_backward_tolerance = c.cuda_tolerance;
  return c;
}

// ---- embedding

OpCase embedding_case() {
  OpCase c;
  c.name = "ops::embedding";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    const Tensor weight = random_tensor({11, 6}, dtype, gen);
    for (DType index_dtype : kIntDTypes) {
      // Repeated ids, the first and last rows, no ids, one id as a scalar.
      const Tensor ids = ops::cast(Tensor::from_vector(std::vector<int64_t>{3, 0, 10, 3, 7, 1}, {2, 3}), index_dtype);
      const Tensor none = ops::cast(zeros({0}, DType::i64), index_dtype);
      const Tensor one = ops::cast(Tensor::scalar(int64_t(4)), index_dtype);
      for (const Tensor& index : {ids, none, one, ops::cast(randint(0, 11, {4, 2, 3}, gen), index_dtype)})
        calls.push_back({shapes_label({weight, index}) + " " + name(index_dtype), {weight, index}});
    }
    if (with_large) calls.push_back({"[500, 4096] x [4, 37]", {random_tensor({500, 4096}, dtype, gen), randint(0, 7, {4, 37}, gen)}});
    return calls;
  };
  c.forward = [](const OpCall&, const Tensors& in) { return Tensors{ops::embedding(in[0], in[1])}; };
  c.oracle = [](const OpCall&, const Tensors& in) { return Tensors{ops::reference::embedding(in[0], in[1])}; };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.grad_inputs = {0};
  c.backward = [](const OpCall&, const Tensors& in, const Tensors&, const Tensor& grad) {
    return Tensors{ops::embedding_backward(grad, in[1], in[0].size(0))};
  };
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.differentiable = [](const OpCall&, const Tensors& in) { return lamina::embedding(in[0], in[1]); };
  // Gathers copy; the backward adds repeated ids in token order on both devices.
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.cuda_backward_tolerance = c.cuda_tolerance;
  return c;
}

// ---- cross-entropy

struct CrossEntropyArgs {
  int64_t ignore_index = -100;
  Reduction reduction = Reduction::none;  // of the differentiable function only
  bool long_row = false;
};

// Targets of `rows` in [0, vocab) with the ignore index at every third position.
Tensor targets_with_ignored(const Shape& rows, int64_t vocab, int64_t ignore_index, DType index_dtype, Generator& gen) {
  std::vector<int64_t> values = randint(0, vocab, rows, gen).to_vector<int64_t>();
  for (size_t i = 1; i < values.size(); i += 3) values[i] = ignore_index;
  return ops::cast(Tensor::from_vector(values, rows), index_dtype);
}

OpCase cross_entropy_case() {
  OpCase c;
  c.name = "ops::cross_entropy";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto add = [&](const Shape& shape, CrossEntropyArgs args, DType index_dtype) {
      const Shape rows(shape.begin(), shape.end() - 1);
      const Tensors in{random_tensor(shape, dtype, gen, -5, 5),
                       targets_with_ignored(rows, shape.back(), args.ignore_index, index_dtype, gen)};
      calls.push_back({shapes_label(in) + " " + name(index_dtype) + " ignore " + std::to_string(args.ignore_index), in, args});
    };
    for (DType index_dtype : kIntDTypes) {
      add({2, 3, 50}, {}, index_dtype);
      add({5, 10}, {}, index_dtype);
      add({0, 8}, {}, index_dtype);
      add({4, 7}, {3, Reduction::none}, index_dtype);  // a valid class as the ignore index
    }
    if (dtype == DType::f64)  // the reductions of the differentiable function
      for (Reduction reduction : {Reduction::sum, Reduction::mean}) add({2, 3, 6}, {-100, reduction}, DType::i64);
    if (dtype == DType::f32) add({2, 128256}, {-100, Reduction::none, true}, DType::i64);  // the Llama-3 vocabulary
    if (with_large)
      for (const Shape& shape : {Shape{3, 1001}, Shape{2, 3, 4000}, Shape{3, 128256}}) add(shape, {}, DType::i64);
    return calls;
  };
  c.layout_independent = true;
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ops::CrossEntropyResult result = ops::cross_entropy(in[0], in[1], call.args<CrossEntropyArgs>().ignore_index);
    return Tensors{result.losses, result.lse};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::cross_entropy(in[0], in[1], call.args<CrossEntropyArgs>().ignore_index)};
  };
  c.tolerance = [](DType dtype, const OpCall& call, size_t) {
    if (call.args<CrossEntropyArgs>().long_row) return Tolerance{1e-4, 1e-5};  // a logsumexp over 128K f32 terms
    return scaled(tolerance_for(dtype), 2);
  };
  c.output_dtypes = [](DType dtype) { return std::vector<DType>{stats_dtype(dtype), stats_dtype(dtype)}; };
  c.grad_inputs = {0};
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
    return Tensors{ops::cross_entropy_backward(grad, in[0], in[1], out[1], call.args<CrossEntropyArgs>().ignore_index)};
  };
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), 2); };
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    const CrossEntropyArgs& args = call.args<CrossEntropyArgs>();
    return lamina::cross_entropy(in[0], in[1], args.reduction, args.ignore_index);
  };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) {
    return dtype == DType::f64 ? Tolerance{1e-11, 1e-11} : Tolerance{2e-5, 1e-5};
  };
  c.cuda_backward_tolerance = [](DType dtype, const OpCall&, size_t) { return row_tolerance(dtype); };
  return c;
}

// ---- attention

struct AttentionArgs {
  bool causal = true;
  bool masked = false;  // inputs[3] is an additive mask
};

AttentionOptions attention_options(const OpCall& call, const Tensors& in) {
  const AttentionArgs& args = call.args<AttentionArgs>();
  AttentionOptions options;
  options.causal = args.causal;
  if (args.masked) options.mask = in[3];
  return options;
}

OpCase attention_case() {
  OpCase c;
  c.name = "ops::attention";
  c.dtypes = kFloats;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    struct Config {
      int64_t batch, heads, kv_heads, tokens, keys, head_dim;
      bool causal;
    };
    const Config configs[] = {
        {1, 2, 2, 5, 5, 8, true},   {2, 4, 2, 3, 7, 4, true},  {1, 6, 2, 4, 4, 16, false}, {2, 4, 1, 1, 9, 8, true},
        {1, 2, 1, 6, 6, 3, true},   {2, 4, 2, 5, 7, 8, true},  {1, 2, 1, 7, 4, 8, true},  // T > S: rows that see no key
        {2, 6, 3, 1, 40, 64, true},                                                       // one token against a cache
    };
    for (const Config& k : configs) {
      const std::string label = "B " + std::to_string(k.batch) + " H " + std::to_string(k.heads) + " Hkv " +
                                std::to_string(k.kv_heads) + " T " + std::to_string(k.tokens) + " S " +
                                std::to_string(k.keys) + " D " + std::to_string(k.head_dim) +
                                (k.causal ? " causal" : "");
      const Tensor q = random_tensor({k.batch, k.heads, k.tokens, k.head_dim}, dtype, gen, -2, 2);
      const Tensor keys = random_tensor({k.batch, k.kv_heads, k.keys, k.head_dim}, dtype, gen, -2, 2);
      const Tensor values = random_tensor({k.batch, k.kv_heads, k.keys, k.head_dim}, dtype, gen);
      calls.push_back({label, {q, keys, values}, AttentionArgs{k.causal, false}});
      // q in the [B, T, H, D] projection layout, viewed as [B, H, T, D].
      const Tensor q_view = views::transpose(ops::contiguous(views::transpose(q, 1, 2)), 1, 2);
      calls.push_back({label + ", q a [B, T, H, D] view", {q_view, keys, values}, AttentionArgs{k.causal, false}});
      // An additive mask broadcast over batch and heads: random, with key 0 and every fifth
      // entry hidden (-inf).
      std::vector<double> mask = random_tensor({k.tokens, k.keys}, DType::f64, gen, -1, 1).to_vector<double>();
      for (size_t i = 0; i < mask.size(); ++i)
        if (i % size_t(k.keys) == 0 || i % 5 == 3) mask[i] = -INFINITY;
      const Tensor mask_tensor = Tensor::from_vector(mask, {k.tokens, k.keys}, dtype);
      calls.push_back({label + ", masked", {q, keys, values, mask_tensor}, AttentionArgs{k.causal, true}});
    }
    return calls;
  };
  c.layout_independent = true;
  c.forward = [](const OpCall& call, const Tensors& in) {
    const ops::AttentionResult result = ops::attention(in[0], in[1], in[2], attention_options(call, in));
    return Tensors{result.out, result.lse};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::attention(in[0], in[1], in[2], attention_options(call, in))};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), 2); };
  c.output_dtypes = [](DType dtype) { return std::vector<DType>{dtype, stats_dtype(dtype)}; };
  c.grad_inputs = {0, 1, 2};
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors& out, const Tensor& grad) {
    const ops::AttentionGrads grads =
        ops::attention_backward(grad, in[0], in[1], in[2], out[0], out[1], attention_options(call, in));
    return Tensors{grads.dq, grads.dk, grads.dv};
  };
  c.backward_tolerance = [](DType dtype, const OpCall&, size_t) { return scaled(tolerance_for(dtype), is_16_bit(dtype) ? 4 : 2); };
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    return lamina::attention(in[0], in[1], in[2], attention_options(call, in));
  };
  c.cuda_tolerance = [](DType dtype, const OpCall&, size_t) {
    switch (dtype) {
      case DType::f64: return Tolerance{1e-11, 1e-11};
      case DType::f32: return Tolerance{2e-5, 1e-4};
      default: return scaled(elementwise_tolerance(dtype), 2);
    }
  };
  c.cuda_backward_tolerance = c.cuda_tolerance;
  return c;
}

}  // namespace nn_family

std::vector<OpCase> nn_cases() {
  using namespace nn_family;
  return {softmax_case(false), softmax_case(true), rms_norm_case(), rope_case(),
          swiglu_case(),       embedding_case(),   cross_entropy_case(), attention_case()};
}

}  // namespace lamina::testing::op_cases
