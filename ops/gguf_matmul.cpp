// gguf_matmul: checks, the choice of CPU path, activation quantization and the split over threads;
// the integer kernels are in ops/cpu/gguf_dot.cpp (Q8_0, Q4_0, Q4_1) and ops/cpu/gguf_kquant.cpp
// (Q4_K, Q6_K, when that file is part of the tree). Inputs on a CUDA device go to
// ops/cuda/gguf_matmul.cu after the same checks.
#include "ops/gguf_matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/cpu/cpu_features.h"
#include "ops/cpu/gguf_dot.h"
#include "ops/cpu/kernels.h"
#include "tensor/parallel.h"

#include "ops/cpu/gguf_kquant.h"
#include "ops/ops.h"
#if LAMINA_WITH_CUDA
#include "ops/cuda/gguf_matmul.h"
// A call to the CUDA kernel of the same name; without the backend nothing (require_cuda_kernels
// has refused a device matrix before any such call is reached).
#define LAMINA_GGUF_CUDA(call) ::lamina::ops::cuda::call
#else
#define LAMINA_GGUF_CUDA(call) static_cast<void>(0)
#endif

namespace lamina::ops {

using ggml::BlockType;

namespace {

// Weight bytes each thread's share should at least hold, so that small matrices are not split
// into pieces whose wake-up costs more than their work.
constexpr int64_t kMinBytesPerThread = 32 * 1024;

bool integer_kernel_type(BlockType type) {
  return type == BlockType::q8_0 || type == BlockType::q4_0 || type == BlockType::q4_1;
}

bool kquant_type(BlockType type) { return type == BlockType::q4_k || type == BlockType::q6_k; }

// What set_gguf_dot_path chose; `automatic` defers to $LAMINA_CPU_QDOT and then the CPU.
std::atomic<GgufDotPath> forced_path{GgufDotPath::automatic};

GgufDotPath best_available() {
  if (gguf_dot_path_available(GgufDotPath::vnni)) return GgufDotPath::vnni;
  if (gguf_dot_path_available(GgufDotPath::avx2)) return GgufDotPath::avx2;
  return GgufDotPath::reference;
}

std::string missing_instructions(GgufDotPath path) {
  return path == GgufDotPath::vnni ? "AVX-512 VNNI (with AVX-512 F, BW and VL)" : "AVX2 with FMA and F16C";
}

// $LAMINA_CPU_QDOT, read once: `automatic` when unset or "auto".
GgufDotPath environment_path() {
  static const GgufDotPath path = [] {
    const char* text = std::getenv("LAMINA_CPU_QDOT");
    if (text == nullptr || *text == '\0') return GgufDotPath::automatic;
    const std::string value = text;
    if (value == "auto") return GgufDotPath::automatic;
    if (value == "vnni") return GgufDotPath::vnni;
    if (value == "avx2") return GgufDotPath::avx2;
    if (value == "reference") return GgufDotPath::reference;
    throw Error(str_cat("LAMINA_CPU_QDOT='", value, "' is not one of vnni, avx2, reference, auto"));
  }();
  return path;
}

cpu::DotKernel kernel_of(GgufDotPath path) {
  switch (path) {
    case GgufDotPath::vnni:
      return cpu::DotKernel::vnni;
    case GgufDotPath::avx2:
      return cpu::DotKernel::avx2;
    default:
      return cpu::DotKernel::reference;
  }
}

void check_matrix(const GgufMatrix& w, const char* op) {
  LAMINA_CHECK(ggml::block_type_known(uint32_t(w.type)), op, ": unknown GGUF block type id ", uint32_t(w.type));
  LAMINA_CHECK(w.device.is_cpu() || w.device.is_cuda(), op, ": the matrix's device is not cpu or cuda");
  LAMINA_CHECK(w.rows >= 0 && w.cols >= 0, op, ": matrix shape [", w.rows, ", ", w.cols, "] is negative");
  const int64_t block = int64_t(ggml::block_elements(w.type));
  LAMINA_CHECK(w.cols % block == 0, op, ": ", w.cols, " columns are not whole ", ggml::block_type_name(w.type),
               " blocks of ", block);
  LAMINA_CHECK(w.data != nullptr || w.rows * w.cols == 0, op, ": ", ggml::block_type_name(w.type), " matrix [", w.rows,
               ", ", w.cols, "] has no data");
}

// The input `t` and the matrix must share a device: a CPU kernel handed device bytes (or a CUDA
// kernel handed host bytes) would read memory it cannot address.
void check_same_device(const Tensor& t, const char* name, const GgufMatrix& w, const char* op) {
  LAMINA_CHECK(t.device() == w.device, op, ": ", name, " is on ", t.device().str(), " but the ",
               ggml::block_type_name(w.type), " matrix [", w.rows, ", ", w.cols, "] is on ", w.device.str(),
               "; move one of them (GgufWeight::to, or the tensor's to_device)");
}

// A matrix on a CUDA device in a build without the CUDA kernels cannot arise through
// GgufWeight::to (it throws), only through a hand-made GgufMatrix: refuse it by name.
// Called before anything is allocated on the matrix's device.
void require_cuda_kernels(const GgufMatrix& w, const char* op) {
#if LAMINA_WITH_CUDA
  (void)w;
  (void)op;
#else
  LAMINA_CHECK(!w.device.is_cuda(), op, ": the ", ggml::block_type_name(w.type), " matrix is on ", w.device.str(),
               ", but this build has no CUDA backend");
#endif
}

// From this many rows of x on, gguf_matmul dequantizes W a panel at a time and runs an f32 GEMM
// against all rows at once: the dequantization is then paid once per weight for many products,
// and the GEMM's blocking beats the integer kernels' pass per 4 rows.
constexpr int64_t kPanelProductMinRows = kGgufPanelProductMinRows;
// Rows of W per panel: 64 rows of a 4096-wide matrix are 1 MiB of f32, within L2.
constexpr int64_t kPanelRows = 64;

// y [n, w.rows] (row stride w.rows) = x [n, w.cols] times dequantize(W)^T, a panel of W's rows
// per task.
void dequantized_panel_product(const float* x, int64_t n, const GgufMatrix& w, float* y) {
  const int64_t row_bytes = w.cols / int64_t(ggml::block_elements(w.type)) * int64_t(ggml::block_bytes(w.type));
  const int64_t panels = (w.rows + kPanelRows - 1) / kPanelRows;
  parallel_for(0, panels, 1, [&](int64_t first_panel, int64_t last_panel) {
    thread_local std::vector<float> panel;
    panel.resize(size_t(kPanelRows * w.cols));
    for (int64_t p = first_panel; p < last_panel; ++p) {
      const int64_t first = p * kPanelRows, rows = std::min(kPanelRows, w.rows - first);
      ggml::dequantize(w.type, w.data + first * row_bytes, uint64_t(rows * w.cols), panel.data());
      cpu::GemmTask task;
      task.a = {const_cast<float*>(x), n, w.cols, w.cols, 1};
      task.b = {panel.data(), w.cols, rows, 1, w.cols};  // the panel [rows, cols] read as its transpose
      task.c = {y + first, n, rows, w.rows, 1};
      cpu::gemm_batch(DType::f32, {task});  // inside a parallel chunk: runs on this thread
    }
  });
}

}  // namespace

const char* gguf_dot_path_name(GgufDotPath path) {
  switch (path) {
    case GgufDotPath::automatic:
      return "auto";
    case GgufDotPath::vnni:
      return "vnni";
    case GgufDotPath::avx2:
      return "avx2";
    case GgufDotPath::reference:
      return "reference";
  }
  return "unknown";
}

bool gguf_dot_path_available(GgufDotPath path) {
  const cpu::CpuFeatures& features = cpu::cpu_features();
#if defined(__x86_64__)
  if (path == GgufDotPath::vnni) return features.avx512vnni && features.avx2_fma;
  if (path == GgufDotPath::avx2) return features.avx2_fma;  // F16C came with every AVX2 CPU
#else
  (void)features;
  if (path == GgufDotPath::vnni || path == GgufDotPath::avx2) return false;
#endif
  return true;
}

void set_gguf_dot_path(GgufDotPath path) {
  LAMINA_CHECK(gguf_dot_path_available(path), "gguf_matmul: the ", gguf_dot_path_name(path), " path needs ",
               missing_instructions(path), ", which this CPU lacks");
  forced_path.store(path);
}

GgufDotPath gguf_dot_path() {
  GgufDotPath path = forced_path.load();
  if (path == GgufDotPath::automatic) path = environment_path();
  if (path == GgufDotPath::automatic) return best_available();
  LAMINA_CHECK(gguf_dot_path_available(path), "gguf_matmul: LAMINA_CPU_QDOT=", gguf_dot_path_name(path), " needs ",
               missing_instructions(path), ", which this CPU lacks");
  return path;
}

int64_t gguf_matrix_bytes(const GgufMatrix& w) {
  check_matrix(w, "gguf_matrix_bytes");
  return w.rows * (w.cols / int64_t(ggml::block_elements(w.type))) * int64_t(ggml::block_bytes(w.type));
}

GgufWeight GgufWeight::to(Device device) const {
  check_matrix(matrix, "GgufWeight::to");
  if (matrix.device == device) return *this;
  const int64_t bytes = gguf_matrix_bytes(matrix);
  // The bytes seen as a u8 tensor where they lie (borrowed, kept alive by the owner), then copied
  // by the ordinary device transfer into memory from the target device's allocator.
  // A matrix without an owner borrows memory its caller keeps alive; Storage::wrap needs some owner.
  std::shared_ptr<void> keep_alive = owner ? std::const_pointer_cast<void>(owner) : std::make_shared<char>();
  auto borrowed = Storage::wrap(const_cast<uint8_t*>(matrix.data), size_t(bytes), matrix.device, std::move(keep_alive));
  const Tensor source(borrowed, {bytes}, {1}, 0, DType::u8);
  const Tensor moved = to_device(source, device);
  GgufWeight out;
  out.matrix = matrix;
  out.matrix.data = static_cast<const uint8_t*>(moved.raw_data());
  out.matrix.device = device;
  out.owner = moved.storage();
  return out;
}

bool gguf_matmul_supports(BlockType type) {
  return integer_kernel_type(type) || kquant_type(type);
}

Tensor gguf_dequantize(const GgufMatrix& w) {
  check_matrix(w, "gguf_dequantize");
  require_cuda_kernels(w, "gguf_dequantize");
  Tensor out = Tensor::empty({w.rows, w.cols}, DType::f32, w.device);
  if (w.rows * w.cols == 0) return out;
  if (w.device.is_cuda()) {
    LAMINA_GGUF_CUDA(gguf_dequantize(out, w));
    return out;
  }
  ggml::dequantize(w.type, w.data, uint64_t(w.rows * w.cols), out.data<float>());
  return out;
}

Tensor gguf_matmul_input_grad(const Tensor& grad, const GgufMatrix& w) {
  check_matrix(w, "gguf_matmul_input_grad");
  LAMINA_CHECK(grad.dtype() == DType::f32, "gguf_matmul_input_grad: grad must be f32, got ", dtype_name(grad.dtype()));
  check_same_device(grad, "grad", w, "gguf_matmul_input_grad");
  LAMINA_CHECK(grad.dim() >= 1 && grad.shape().back() == w.rows, "gguf_matmul_input_grad: grad of shape ", grad.shape(),
               " for a matrix of ", w.rows, " rows");
  Shape out_shape = grad.shape();
  out_shape.back() = w.cols;
  const int64_t n = w.rows == 0 ? 0 : grad.numel() / w.rows;
  require_cuda_kernels(w, "gguf_matmul_input_grad");
  if (w.device.is_cuda()) {
    Tensor out = Tensor::empty({n, w.cols}, DType::f32, w.device);
    if (n * w.cols == 0) return out.reshape(out_shape);
    if (w.rows == 0) return zeros(out_shape, DType::f32, w.device);
    LAMINA_GGUF_CUDA(gguf_matmul_input_grad(out, grad.contiguous().reshape({n, w.rows}), w));
    return out.reshape(out_shape);
  }
  Tensor out = zeros({n, w.cols}, DType::f32);
  const Tensor g = grad.contiguous().reshape({n, w.rows});
  // Panels of rows small enough to stay in cache once dequantized (256 rows of a 4096-wide matrix
  // are 4 MiB of f32) and large enough for the GEMM to run at speed.
  const int64_t panel_rows = std::max<int64_t>(32, (int64_t(1) << 20) / std::max<int64_t>(1, w.cols));
  const int64_t row_bytes = w.cols / int64_t(ggml::block_elements(w.type)) * int64_t(ggml::block_bytes(w.type));
  for (int64_t first = 0; first < w.rows; first += panel_rows) {
    const int64_t last = std::min(w.rows, first + panel_rows);
    const GgufMatrix panel{w.type, last - first, w.cols, w.data + first * row_bytes, w.device};
    add_(out, matmul(g.slice(1, first, last), gguf_dequantize(panel)));
  }
  return out.reshape(out_shape);
}

Tensor gguf_rows(const Tensor& ids, const GgufMatrix& w) {
  check_matrix(w, "gguf_rows");
  LAMINA_CHECK(ids.dtype() == DType::i64 || ids.dtype() == DType::i32, "gguf_rows: ids must be i32 or i64, got ",
               dtype_name(ids.dtype()));
  check_same_device(ids, "ids", w, "gguf_rows");
  require_cuda_kernels(w, "gguf_rows");
  Shape out_shape = ids.shape();
  out_shape.push_back(w.cols);
  Tensor out = Tensor::empty(out_shape, DType::f32, w.device);
  if (w.device.is_cuda()) {
    // Range-checked on the host (as ops::embedding does): a kernel cannot throw.
    const Tensor index = ids.to(DType::i64).contiguous();
    const std::vector<int64_t> values = index.to_vector<int64_t>();
    for (size_t i = 0; i < values.size(); ++i)
      LAMINA_CHECK(values[i] >= 0 && values[i] < w.rows, "gguf_rows: id ", values[i], " out of range [0, ", w.rows,
                   ") (at flat position ", i, ")");
    if (out.numel() != 0) LAMINA_GGUF_CUDA(gguf_rows(out, index, w));
    return out;
  }
  const Tensor index = ids.to(DType::i64).contiguous();
  const int64_t* rows = index.data<int64_t>();
  float* y = out.data<float>();
  const int64_t row_bytes = w.cols / int64_t(ggml::block_elements(w.type)) * int64_t(ggml::block_bytes(w.type));
  for (int64_t i = 0; i < index.numel(); ++i) {
    LAMINA_CHECK(rows[i] >= 0 && rows[i] < w.rows, "gguf_rows: id ", rows[i], " out of range [0, ", w.rows, ")");
    ggml::dequantize(w.type, w.data + rows[i] * row_bytes, uint64_t(w.cols), y + i * w.cols);
  }
  return out;
}

std::vector<Tensor> gguf_matmul_many(const Tensor& x, const std::vector<const GgufMatrix*>& ws) {
  LAMINA_CHECK(!ws.empty(), "gguf_matmul_many: no matrices");
  const int64_t cols = ws.front()->cols;
  // The fused CPU product only; on a GPU each matrix is its own launch (which also checks x).
  bool fusable = x.device().is_cpu() && x.dtype() == DType::f32 && x.dim() >= 1 && x.shape().back() == cols && cols > 0;
  for (const GgufMatrix* w : ws) {
    check_matrix(*w, "gguf_matmul_many");
    fusable = fusable && w->cols == cols && integer_kernel_type(w->type) && w->device.is_cpu();
  }
  const int64_t n = fusable ? x.numel() / cols : 0;
  if (!fusable || n >= kPanelProductMinRows) {  // one product at a time (which also checks x)
    std::vector<Tensor> outs;
    for (const GgufMatrix* w : ws) outs.push_back(gguf_matmul(x, *w));
    return outs;
  }
  const Tensor input = x.contiguous();
  const cpu::DotKernel kernel = kernel_of(gguf_dot_path());
  cpu::QuantizedActivations activations;
  cpu::quantize_activations(input.data<float>(), n, cols, activations);
  std::vector<Tensor> outs;
  std::vector<int64_t> first_row;  // where each matrix's rows start in the joint row range
  int64_t total_rows = 0, total_bytes = 0;
  for (const GgufMatrix* w : ws) {
    Shape out_shape = x.shape();
    out_shape.back() = w->rows;
    outs.push_back(Tensor::empty(out_shape, DType::f32));
    first_row.push_back(total_rows);
    total_rows += w->rows;
    total_bytes += w->rows * (cols / 32) * int64_t(ggml::block_bytes(w->type));
  }
  // Each output is still one weight row against one x row, computed whole by one thread: the
  // results are gguf_matmul's, bit for bit, whatever the split.
  const int64_t bytes_per_row = std::max<int64_t>(1, total_bytes / std::max<int64_t>(1, total_rows));
  const int64_t grain = std::max<int64_t>(1, kMinBytesPerThread / (bytes_per_row * n));
  parallel_for(0, total_rows, grain, [&](int64_t first, int64_t last) {
    for (size_t m = 0; m < ws.size(); ++m) {
      const int64_t begin = std::max(first, first_row[m]) - first_row[m];
      const int64_t end = std::min(last, first_row[m] + ws[m]->rows) - first_row[m];
      if (begin < end)
        cpu::gguf_dot_rows(kernel, ws[m]->type, ws[m]->data, cols, activations, begin, end, outs[m].data<float>(),
                           ws[m]->rows);
    }
  });
  return outs;
}

Tensor gguf_matmul(const Tensor& x, const GgufMatrix& w) {
  check_matrix(w, "gguf_matmul");
  LAMINA_CHECK(gguf_matmul_supports(w.type), "gguf_matmul: no integer kernel for ", ggml::block_type_name(w.type),
               " weights (supported: Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)");
  LAMINA_CHECK(x.dtype() == DType::f32, "gguf_matmul: x must be f32 (got ", dtype_name(x.dtype()), "); cast it first");
  check_same_device(x, "x", w, "gguf_matmul");
  LAMINA_CHECK(x.dim() >= 1, "gguf_matmul: x must have at least one dimension");
  LAMINA_CHECK(x.shape().back() == w.cols, "gguf_matmul: x's last dimension is ", x.shape().back(), " but the ",
               ggml::block_type_name(w.type), " matrix [", w.rows, ", ", w.cols, "] has ", w.cols, " columns");
  require_cuda_kernels(w, "gguf_matmul");
  Shape out_shape = x.shape();
  out_shape.back() = w.rows;
  Tensor out = Tensor::empty(out_shape, DType::f32, w.device);
  const int64_t n = w.cols == 0 ? x.numel() : x.numel() / w.cols;
  if (out.numel() == 0) return out;
  if (w.device.is_cuda()) {
    if (w.cols == 0) return zeros(out_shape, DType::f32, w.device);
    LAMINA_GGUF_CUDA(gguf_matmul(out.reshape({n, w.rows}), x.contiguous().reshape({n, w.cols}), w));
    return out;
  }
  float* y = out.data<float>();
  if (w.cols == 0) {
    std::memset(y, 0, size_t(out.numel()) * sizeof(float));
    return out;
  }
  const Tensor input = x.contiguous();
  if (n >= kPanelProductMinRows) {
    dequantized_panel_product(input.data<float>(), n, w, y);
    return out;
  }
  if (kquant_type(w.type)) {
    cpu::gguf_kquant_matmul(input.data<float>(), n, w, y, gguf_dot_path());  // the same forced path
    return out;
  }
  const cpu::DotKernel kernel = kernel_of(gguf_dot_path());
  cpu::QuantizedActivations activations;
  cpu::quantize_activations(input.data<float>(), n, w.cols, activations);
  // Every output is one row of W against one row of x, computed whole by one thread, so the
  // split never changes a result. Rows of x share each weight row's pass (the kernels group them
  // by 4), so the split is over rows of W; a chunk holds at least kMinBytesPerThread of weights
  // counted once per x row.
  const int64_t row_bytes = w.cols / 32 * int64_t(ggml::block_bytes(w.type));
  const int64_t grain = std::max<int64_t>(1, kMinBytesPerThread / std::max<int64_t>(1, row_bytes * n));
  parallel_for(0, w.rows, grain, [&](int64_t first, int64_t last) {
    cpu::gguf_dot_rows(kernel, w.type, w.data, w.cols, activations, first, last, y, w.rows);
  });
  return out;
}

}  // namespace lamina::ops
