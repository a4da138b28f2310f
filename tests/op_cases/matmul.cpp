// Op case of matmul: 2-D and batched products, broadcast batches, every transpose flag, empty
// dims, and operands laid out as stored, strided, transposed in memory or at an offset.
#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace matmul_family {

struct MatmulArgs {
  bool transpose_a = false, transpose_b = false;
};

struct Product {
  Shape batch_a, batch_b;
  int64_t m, k, n;
};

std::vector<Product> products(Generator& gen) {
  std::vector<Product> list = {
      {{}, {}, 1, 1, 1},         {{}, {}, 3, 0, 4},          {{}, {}, 0, 3, 2},       {{}, {}, 2, 3, 0},
      {{4}, {4}, 3, 5, 2},       {{2, 3}, {2, 3}, 2, 4, 3},  {{3}, {}, 4, 5, 6},      {{1}, {3}, 2, 3, 4},
      {{2, 1}, {1, 3}, 3, 2, 2}, {{}, {2}, 3, 4, 5},         {{2, 3}, {3}, 2, 2, 2},  {{2}, {2}, 3, 0, 2},
      {{0}, {}, 2, 3, 4},        {{2}, {2}, 0, 3, 4},        {{1, 2}, {}, 3, 4, 1},
  };
  for (int i = 0; i < 4; ++i) {
    const std::vector<int64_t> mkn = random_ints(gen, 3, 1, 8);
    list.push_back({i < 2 ? Shape{} : random_shape(gen, i - 1, 3), {}, mkn[0], mkn[1], mkn[2]});
  }
  return list;
}

// The stored shape of an operand: [..., rows, cols], swapped when the op transposes it.
Shape stored_shape(Shape batch, int64_t rows, int64_t cols, bool transposed) {
  batch.push_back(transposed ? cols : rows);
  batch.push_back(transposed ? rows : cols);
  return batch;
}

// M, K, N and the number of batch products of a call.
struct Sizes {
  int64_t m, k, n, batches;
};
Sizes sizes_of(const OpCall& call) {
  const MatmulArgs& args = call.args<MatmulArgs>();
  const Shape& a = call.inputs[0].shape();
  const Shape& b = call.inputs[1].shape();
  Sizes s{};
  s.m = args.transpose_a ? a[a.size() - 1] : a[a.size() - 2];
  s.k = args.transpose_a ? a[a.size() - 2] : a[a.size() - 1];
  s.n = args.transpose_b ? b[b.size() - 2] : b[b.size() - 1];
  const Shape batch = broadcast_shapes(Shape(std::vector<int64_t>(a.begin(), a.end() - 2)),
                                       Shape(std::vector<int64_t>(b.begin(), b.end() - 2)), "test");
  s.batches = shape_numel(batch);
  return s;
}

// Operand layouts: as stored, stride-2 columns (Eigen cannot map: copied), stored transposed and
// viewed back (mapped column-major without a copy), or at a storage offset.
Tensor matmul_layout(const Tensor& t, Layout layout) {
  if (layout == Layout::transposed) return views::transpose(ops::contiguous(views::transpose(t, -1, -2)), -1, -2);
  return in_layout(t, layout);
}

// CUDA (cuBLASLt) against the CPU (Eigen) over K-term sums: f32 accumulates in another order
// (2e-6 per term); f64 likewise (1e-12 per term); bf16 and f16 round nearly equal f32
// accumulators to 16 bits, so they may differ by one unit in the last place of the result plus
// what the accumulators differ by.
Tolerance product_tolerance(DType dtype, int64_t terms) {
  const double k = double(std::max<int64_t>(terms, 1));
  switch (dtype) {
    case DType::f32: return {2e-6 * k + 1e-5, 1e-5};
    case DType::f64: return {1e-12 * k + 1e-13, 1e-12};
    case DType::bf16: return {1e-5 * k, 1.0 / 128};
    case DType::f16: return {1e-5 * k, 1.0 / 1024};
    default: return {0, 0};
  }
}

OpCase matmul_case() {
  OpCase c;
  c.name = "ops::matmul";
  c.dtypes = {DType::f32, DType::f64, DType::bf16, DType::f16};
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (const Product& p : products(gen)) {
      for (int flags = 0; flags < 4; ++flags) {
        const MatmulArgs args{(flags & 1) != 0, (flags & 2) != 0};
        const Tensors in{random_tensor(stored_shape(p.batch_a, p.m, p.k, args.transpose_a), dtype, gen),
                         random_tensor(stored_shape(p.batch_b, p.k, p.n, args.transpose_b), dtype, gen)};
        calls.push_back({shape_str(in[0].shape()) + (args.transpose_a ? "^T" : "") + " x " + shape_str(in[1].shape()) +
                             (args.transpose_b ? "^T" : ""),
                         in, args});
      }
    }
    // cuBLASLt's paths: misaligned rows, the batch folded into M, a projection-like shape.
    struct Large {
      Shape a, b;
      bool transpose_a, transpose_b;
    };
    if (!with_large) return calls;
    for (const Large& l : {Large{{13, 17}, {17, 11}, false, false}, Large{{2, 3, 6, 8}, {5, 8}, false, true},
                           Large{{8, 6}, {2, 3, 8, 5}, true, false}, Large{{64, 512}, {384, 512}, false, true}}) {
      calls.push_back({shape_str(l.a) + " x " + shape_str(l.b), {random_tensor(l.a, dtype, gen), random_tensor(l.b, dtype, gen)},
                       MatmulArgs{l.transpose_a, l.transpose_b}});
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const MatmulArgs& a = call.args<MatmulArgs>();
    return Tensors{ops::matmul(in[0], in[1], a.transpose_a, a.transpose_b)};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    const MatmulArgs& a = call.args<MatmulArgs>();
    return Tensors{ops::reference::matmul(in[0], in[1], a.transpose_a, a.transpose_b)};
  };
  c.tolerance = [](DType dtype, const OpCall&, size_t) { return tolerance_for(dtype); };
  c.relayout = matmul_layout;
  c.backward = [](const OpCall& call, const Tensors& in, const Tensors&, const Tensor& grad) {
    const MatmulArgs& a = call.args<MatmulArgs>();
    const auto [grad_a, grad_b] = ops::matmul_backward(grad, in[0], in[1], a.transpose_a, a.transpose_b);
    return Tensors{grad_a, grad_b};
  };
  // 16-bit: each batch's product is rounded before a broadcast batch is summed.
  c.backward_tolerance = [](DType dtype, const OpCall& call, size_t index) {
    Tolerance tol = tolerance_for(dtype);
    if (dtype == DType::bf16 || dtype == DType::f16) {
      const Sizes s = sizes_of(call);
      const int64_t unsummed = s.batches * (index == 0 ? s.m * s.k : s.k * s.n);
      tol.atol *= double(std::max<int64_t>(1, unsummed / std::max<int64_t>(1, call.inputs[index].numel())));
    }
    return tol;
  };
  c.differentiable = [](const OpCall& call, const Tensors& in) {
    const MatmulArgs& a = call.args<MatmulArgs>();
    return lamina::matmul(in[0], in[1], a.transpose_a, a.transpose_b);
  };
  c.cuda_tolerance = [](DType dtype, const OpCall& call, size_t) { return product_tolerance(dtype, sizes_of(call).k); };
  // dA sums N terms per batch and dB M terms, over every batch that broadcasts into the operand.
  c.cuda_backward_tolerance = [](DType dtype, const OpCall& call, size_t) {
    const Sizes s = sizes_of(call);
    return product_tolerance(dtype, std::max(s.m, s.n) * s.batches);
  };
  return c;
}

}  // namespace matmul_family

std::vector<OpCase> matmul_cases() { return {matmul_family::matmul_case()}; }

}  // namespace lamina::testing::op_cases
