// Op cases of indexing and joining: index_select, index_add, gather, scatter_add and cat, along
// every dim, with i32 and i64 indices, repeated and empty indices, and empty pieces.
#include "autograd/functions.h"
#include "op_cases/op_case.h"

namespace lamina::testing::op_cases {
namespace index_family {

const Tolerance kExact{0, 0};
const std::vector<DType> kValueDTypes = {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64};

struct DimArgs {
  int64_t dim;
};

// Random values; integers for the integer dtypes. Sums of these (index_add, scatter_add) are exact
// only for integer values: `exact` asks for those in every dtype.
Tensor values_for(const Shape& shape, DType dtype, Generator& gen, bool exact = false) {
  if (exact || !is_floating(dtype)) return integer_values(shape, dtype, gen, -20, 21);
  return random_tensor(shape, dtype, gen);
}

// Index values of `shape` in [0, limit), stored as `dtype` (repeats are likely).
Tensor random_index(const Shape& shape, int64_t limit, DType dtype, Generator& gen) {
  return integer_values(shape, dtype, gen, 0, limit);
}

std::string dim_label(const Tensors& in, int64_t dim) { return shapes_label(in) + " dim " + std::to_string(dim); }

OpCase index_select_case() {
  OpCase c;
  c.name = "ops::index_select";
  c.dtypes = kValueDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank, 5);
      const Tensor x = values_for(shape, dtype, gen);
      for (int64_t dim = -rank; dim < rank; ++dim)
        for (int64_t count : {int64_t(0), int64_t(1), int64_t(7)})
          for (DType index_dtype : kIntDTypes) {
            const Tensors in{x, random_index({count}, x.size(dim), index_dtype, gen)};
            calls.push_back({dim_label(in, dim) + " " + name(index_dtype), in, DimArgs{dim}});
          }
    }
    if (!with_large) return calls;
    const Tensor x = values_for({6, 7, 8}, dtype, gen);
    for (int64_t dim = 0; dim < 3; ++dim) {
      const Tensors in{x, random_index({11}, x.size(dim), DType::i32, gen)};
      calls.push_back({dim_label(in, dim), in, DimArgs{dim}});
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::index_select(in[0], call.args<DimArgs>().dim, in[1])};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::index_select(in[0], call.args<DimArgs>().dim, in[1])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.grad_inputs = {0};
  c.differentiable = [](const OpCall& call, const Tensors& in) { return lamina::index_select(in[0], call.args<DimArgs>().dim, in[1]); };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

// index_add(shape, dim, index, src): inputs {index, src}, the output shape in the arguments.
struct IndexAddArgs {
  Shape shape;
  int64_t dim;
};

OpCase index_add_case() {
  OpCase c;
  c.name = "ops::index_add";
  c.dtypes = kValueDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto add = [&](const Shape& shape, int64_t dim, int64_t count) {
      const int64_t d = normalize_dim(dim, int64_t(shape.size()), "test");
      Shape src_shape = shape;
      src_shape[size_t(d)] = count;
      const DType index_dtype = calls.size() % 2 ? DType::i32 : DType::i64;
      // Integer values: exact sums in every dtype, so repeats must add up exactly.
      const Tensors in{random_index({count}, shape[size_t(d)], index_dtype, gen), values_for(src_shape, dtype, gen, true)};
      calls.push_back({shape_str(shape) + " dim " + std::to_string(dim) + " from " + shape_str(src_shape) + " " +
                           name(index_dtype),
                       in, IndexAddArgs{shape, dim}});
    };
    for (int64_t rank = 1; rank <= 3; ++rank) {
      const Shape shape = random_shape(gen, rank, 5);
      for (int64_t dim = -rank; dim < rank; ++dim) add(shape, dim, 6);
    }
    add({4, 3}, 0, 0);  // no rows: zeros
    if (with_large)
      for (int64_t dim = 0; dim < 3; ++dim) add({6, 7, 8}, dim, 11);
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    const IndexAddArgs& args = call.args<IndexAddArgs>();
    return Tensors{ops::index_add(args.shape, args.dim, in[0], in[1])};
  };
  // index_add is scatter_add into zeros with index[i] spread over every src position of row i.
  c.oracle = [](const OpCall& call, const Tensors& in) {
    const IndexAddArgs& args = call.args<IndexAddArgs>();
    const int64_t d = normalize_dim(args.dim, int64_t(args.shape.size()), "test");
    const std::vector<int64_t> rows = in[0].to_vector<int64_t>();
    const Shape src_shape = in[1].shape();
    std::vector<int64_t> spread(size_t(shape_numel(src_shape)));
    const Shape strides = contiguous_strides(src_shape);
    for (size_t p = 0; p < spread.size(); ++p)
      spread[p] = rows[size_t((int64_t(p) / strides[size_t(d)]) % src_shape[size_t(d)])];
    return Tensors{ops::reference::scatter_add(zeros(args.shape, DType::f64), d,
                                               Tensor::from_vector(spread, src_shape, DType::i64), in[1])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };  // adds in the CPU's order
  return c;
}

// An index shape for gather and scatter_add: no larger than x off `dim`, `along` along it.
Shape index_shape_for(const Shape& shape, int64_t d, int64_t along, Generator& gen) {
  Shape out;
  for (size_t k = 0; k < shape.size(); ++k)
    out.push_back(int64_t(k) == d ? along : random_ints(gen, 1, 1, shape[k] + 1)[0]);
  return out;
}

OpCase gather_case() {
  OpCase c;
  c.name = "ops::gather";
  c.dtypes = kValueDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank, 5);
      const Tensor x = values_for(shape, dtype, gen);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const int64_t d = normalize_dim(dim, rank, "test");
        const Shape index_shape = index_shape_for(shape, d, 4, gen);
        for (DType index_dtype : kIntDTypes) {
          const Tensors in{x, random_index(index_shape, shape[size_t(d)], index_dtype, gen)};
          calls.push_back({dim_label(in, dim) + " " + name(index_dtype), in, DimArgs{dim}});
        }
      }
    }
    if (!with_large) return calls;
    const Tensor x = values_for({6, 7, 8}, dtype, gen);
    for (int64_t dim = 0; dim < 3; ++dim) {
      Shape index_shape = x.shape();
      index_shape[size_t(dim)] = 9;
      const Tensors in{x, random_index(index_shape, x.size(dim), DType::i32, gen)};
      calls.push_back({dim_label(in, dim), in, DimArgs{dim}});
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) { return Tensors{ops::gather(in[0], call.args<DimArgs>().dim, in[1])}; };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::gather(in[0], call.args<DimArgs>().dim, in[1])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.grad_inputs = {0};
  c.differentiable = [](const OpCall& call, const Tensors& in) { return lamina::gather(in[0], call.args<DimArgs>().dim, in[1]); };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

OpCase scatter_add_case() {
  OpCase c;
  c.name = "ops::scatter_add";
  c.dtypes = kValueDTypes;
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    auto add = [&](const Shape& shape, int64_t dim, const Shape& index_shape, DType index_dtype) {
      const int64_t d = normalize_dim(dim, int64_t(shape.size()), "test");
      // Integer values: exact sums in every dtype, so repeats must add up exactly.
      const Tensors in{values_for(shape, dtype, gen, true), random_index(index_shape, shape[size_t(d)], index_dtype, gen),
                       values_for(index_shape, dtype, gen, true)};
      calls.push_back({dim_label(in, dim), in, DimArgs{dim}});
    };
    for (int64_t rank = 1; rank <= 3; ++rank) {
      const Shape shape = random_shape(gen, rank, 4);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const int64_t d = normalize_dim(dim, rank, "test");
        add(shape, dim, index_shape_for(shape, d, 6, gen), DType::i64);
      }
    }
    add({3, 4}, 1, {2, 0}, DType::i32);  // nothing to add
    if (with_large) {
      for (int64_t dim = 0; dim < 3; ++dim) {
        Shape index_shape{6, 7, 8};
        index_shape[size_t(dim)] = 9;
        add({6, 7, 8}, dim, index_shape, DType::i32);
      }
    }
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::scatter_add(in[0], call.args<DimArgs>().dim, in[1], in[2])};
  };
  c.oracle = [](const OpCall& call, const Tensors& in) {
    return Tensors{ops::reference::scatter_add(in[0], call.args<DimArgs>().dim, in[1], in[2])};
  };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };  // adds in the CPU's order
  return c;
}

// cat: every input is a piece.
OpCase cat_case() {
  OpCase c;
  c.name = "ops::cat";
  c.dtypes = kValueDTypes;
  c.dtypes.push_back(DType::boolean);
  c.calls = [](DType dtype, Generator& gen, bool with_large) {
    std::vector<OpCall> calls;
    for (int64_t rank = 1; rank <= 4; ++rank) {
      const Shape shape = random_shape(gen, rank, 4);
      for (int64_t dim = -rank; dim < rank; ++dim) {
        const size_t d = size_t(normalize_dim(dim, rank, "test"));
        Tensors pieces;
        for (int64_t size : {int64_t(2), int64_t(0), int64_t(3), int64_t(1)}) {
          Shape piece = shape;
          piece[d] = size;
          pieces.push_back(dtype == DType::boolean ? integer_values(piece, dtype, gen, 0, 2) : values_for(piece, dtype, gen));
        }
        calls.push_back({dim_label(pieces, dim), pieces, DimArgs{dim}});
      }
    }
    const Tensor only = values_for({2, 3}, dtype == DType::boolean ? DType::i64 : dtype, gen);
    calls.push_back({"[2, 3] alone dim 1", {ops::cast(only, dtype)}, DimArgs{1}});
    return calls;
  };
  c.forward = [](const OpCall& call, const Tensors& in) { return Tensors{ops::cat(in, call.args<DimArgs>().dim)}; };
  c.oracle = [](const OpCall& call, const Tensors& in) { return Tensors{ops::reference::cat(in, call.args<DimArgs>().dim)}; };
  c.tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  c.layout_independent = true;
  c.differentiable = [](const OpCall& call, const Tensors& in) { return lamina::cat(in, call.args<DimArgs>().dim); };
  c.cuda_tolerance = [](DType, const OpCall&, size_t) { return kExact; };
  return c;
}

}  // namespace index_family

std::vector<OpCase> index_cases() {
  using namespace index_family;
  return {index_select_case(), index_add_case(), gather_case(), scatter_add_case(), cat_case()};
}

}  // namespace lamina::testing::op_cases
