// matmul on cuBLASLt: row-major operands mapped onto cuBLASLt's column-major view (C^T = B^T A^T),
// transposes folded into each operand's layout, batch dims collapsed into one strided batch
// where the strides allow and looped over otherwise.
#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>

#include "ops/cuda/gemm.h"
#include "ops/cuda/kernels.h"
#include "tensor/cuda/runtime.h"
#include "tensor/view.h"

namespace lamina::ops::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // what cuBLAS suggests for Hopper
constexpr int kMaxDevices = 64;

cublasLtHandle_t handle_of(int device) {
  static std::mutex mutex;
  static auto* handles = new std::array<cublasLtHandle_t, kMaxDevices>();  // never destroyed
  ::lamina::cuda::check_device_index(device);
  std::lock_guard<std::mutex> lock(mutex);
  cublasLtHandle_t& handle = (*handles)[size_t(device)];
  if (handle == nullptr) {
    ::lamina::cuda::use_device(device);
    LAMINA_CUBLAS_CHECK(cublasLtCreate(&handle));
  }
  return handle;
}

cudaDataType_t data_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return CUDA_R_32F;
    case DType::f64: return CUDA_R_64F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    default: break;
  }
  throw Error(str_cat("matmul: no CUDA GEMM for dtype ", dtype_name(dtype)));
}

// How one operand is stored in column-major terms: rows x cols with leading dimension ld.
struct StoredLayout {
  uint64_t rows, cols;
  int64_t ld;
  cublasOperation_t op;
};

bool row_major(const GemmOperand& m) {
  return (m.cols == 1 || m.col_stride == 1) && (m.rows == 1 || m.row_stride >= m.cols);
}

bool col_major(const GemmOperand& m) {
  return (m.rows == 1 || m.row_stride == 1) && (m.cols == 1 || m.col_stride >= m.rows);
}

// The operand X [R, C] (row-major logical) as cuBLASLt should see op(X') = X^T [C, R]: a
// row-major buffer already holds X^T column-major (op N); a column-major one holds X (op T).
StoredLayout transposed_view(const GemmOperand& m) {
  if (row_major(m)) {
    return {uint64_t(m.cols), uint64_t(m.rows), m.rows == 1 ? std::max<int64_t>(m.cols, 1) : m.row_stride, CUBLAS_OP_N};
  }
  return {uint64_t(m.rows), uint64_t(m.cols), m.cols == 1 ? std::max<int64_t>(m.rows, 1) : m.col_stride, CUBLAS_OP_T};
}

// The largest power of two (up to 256) dividing the address and, for batches, the batch step.
uint32_t alignment_of(const void* data, int64_t batch_stride_bytes, int64_t batch) {
  uint64_t bits = reinterpret_cast<uintptr_t>(data) | 256u;
  if (batch > 1) bits |= uint64_t(batch_stride_bytes);
  return uint32_t(bits & (~bits + 1));
}

struct Layout {
  cublasLtMatrixLayout_t handle = nullptr;
  Layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld, int64_t batch, int64_t batch_stride) {
    LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&handle, type, rows, cols, ld));
    if (batch > 1) {
      const int32_t count = int32_t(batch);
      LAMINA_CUBLAS_CHECK(
          cublasLtMatrixLayoutSetAttribute(handle, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
      LAMINA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(handle, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                           &batch_stride, sizeof(batch_stride)));
    }
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(handle); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  MatmulDesc(cublasComputeType_t compute, cudaDataType_t scale, cublasOperation_t op_a, cublasOperation_t op_b) {
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&handle, compute, scale));
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(handle, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    LAMINA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(handle, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  }
  ~MatmulDesc() { cublasLtMatmulDescDestroy(handle); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
};

struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  Preference(uint64_t workspace, std::array<uint32_t, 3> alignments) {
    LAMINA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&handle));
    LAMINA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(handle, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &workspace, sizeof(workspace)));
    const cublasLtMatmulPreferenceAttributes_t keys[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    const uint32_t values[] = {alignments[0], alignments[1], alignments[2], alignments[2]};
    for (int i = 0; i < 4; ++i)
      LAMINA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(handle, keys[i], &values[i], sizeof(values[i])));
  }
  ~Preference() { cublasLtMatmulPreferenceDestroy(handle); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
};

// Heuristic results by everything they depend on, so that the heuristic runs once per shape.
using AlgoKey = std::array<int64_t, 20>;

std::mutex& algo_mutex() {
  static std::mutex mutex;
  return mutex;
}
std::map<AlgoKey, cublasLtMatmulAlgo_t>& algo_cache() {
  static auto* cache = new std::map<AlgoKey, cublasLtMatmulAlgo_t>();
  return *cache;
}

// The 2-D matrix at the start of t's last two dims, logically transposed when asked.
GemmOperand operand_of(const Tensor& t, bool transpose) {
  GemmOperand m;
  m.data = t.raw_data();
  m.rows = t.size(transpose ? -1 : -2);
  m.cols = t.size(transpose ? -2 : -1);
  m.row_stride = t.stride(transpose ? -1 : -2);
  m.col_stride = t.stride(transpose ? -2 : -1);
  return m;
}

// t itself when cuBLASLt can read its matrices in place, else a contiguous copy.
Tensor readable(const Tensor& t) { return gemm_readable(operand_of(t, false)) ? t : contiguous(t); }

Tensor broadcast_batch(const Tensor& t, const Shape& batch) {
  Shape shape = batch;
  shape.push_back(t.size(-2));
  shape.push_back(t.size(-1));
  return views::broadcast_to(t, shape, "matmul");
}

const char* byte_offset(const void* base, int64_t elements, size_t element_size) {
  return static_cast<const char*>(base) + elements * int64_t(element_size);
}

}  // namespace

bool gemm_readable(const GemmOperand& m) { return row_major(m) || col_major(m); }

void gemm(DType dtype, const GemmOperand& a, const GemmOperand& b, const GemmOperand& c, int64_t batch, double alpha,
          double beta, int device) {
  LAMINA_ASSERT(gemm_readable(a) && gemm_readable(b) && c.col_stride == 1);
  LAMINA_ASSERT(a.cols == b.rows && a.rows == c.rows && b.cols == c.cols);
  if (batch == 0 || c.rows == 0 || c.cols == 0) return;
  LAMINA_CHECK(batch < (int64_t(1) << 31), "matmul: batch of ", batch, " products exceeds cuBLASLt's limit");
  const cudaStream_t stream = ::lamina::cuda::use_device(device);
  const cudaDataType_t type = data_type(dtype);
  const bool wide = dtype == DType::f64;
  const size_t element = dtype_size(dtype);

  // Column-major: D^T [N, M] = op(A') [N, K] op(B') [K, M] with A' = b's buffer, B' = a's buffer.
  const StoredLayout first = transposed_view(b);   // op(A') = b^T
  const StoredLayout second = transposed_view(a);  // op(B') = a^T
  const int64_t ldc = c.rows == 1 ? std::max<int64_t>(c.cols, 1) : c.row_stride;
  const std::array<uint32_t, 3> alignments = {alignment_of(b.data, b.batch_stride * int64_t(element), batch),
                                              alignment_of(a.data, a.batch_stride * int64_t(element), batch),
                                              alignment_of(c.data, c.batch_stride * int64_t(element), batch)};

  const Layout a_layout(type, first.rows, first.cols, first.ld, batch, b.batch_stride);
  const Layout b_layout(type, second.rows, second.cols, second.ld, batch, a.batch_stride);
  const Layout c_layout(type, uint64_t(c.cols), uint64_t(c.rows), ldc, batch, c.batch_stride);
  const MatmulDesc desc(wide ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, wide ? CUDA_R_64F : CUDA_R_32F, first.op,
                        second.op);
  const cublasLtHandle_t handle = handle_of(device);

  const AlgoKey key = {device,
                       int64_t(dtype),
                       int64_t(first.op),
                       int64_t(second.op),
                       a.rows,
                       b.cols,
                       a.cols,
                       first.ld,
                       second.ld,
                       ldc,
                       batch,
                       a.batch_stride,
                       b.batch_stride,
                       c.batch_stride,
                       alignments[0],
                       alignments[1],
                       alignments[2],
                       beta != 0.0,
                       0,
                       0};
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(algo_mutex());
    auto found = algo_cache().find(key);
    if (found != algo_cache().end()) {
      algo = found->second;
    } else {
      const Preference preference(kWorkspaceBytes, alignments);
      cublasLtMatmulHeuristicResult_t result{};
      int count = 0;
      const cublasStatus_t status =
          cublasLtMatmulAlgoGetHeuristic(handle, desc.handle, a_layout.handle, b_layout.handle, c_layout.handle,
                                         c_layout.handle, preference.handle, 1, &result, &count);
      // "No algorithm for this problem" comes back as NOT_SUPPORTED rather than as a count of 0:
      // report it with the shape below instead of as a bare status.
      if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
        count = 0;
      } else {
        LAMINA_CUBLAS_CHECK(status);
      }
      LAMINA_CHECK(count > 0, "matmul: cuBLASLt found no algorithm for ", dtype_name(dtype), " [", a.rows, ", ", a.cols,
                   "] x [", b.rows, ", ", b.cols, "] (batch ", batch, ", alignments ", alignments[0], "/",
                   alignments[1], "/", alignments[2], " bytes)");
      algo = result.algo;
      algo_cache().emplace(key, algo);
    }
  }

  // The workspace is released when this returns; the allocator hands it out again only to work
  // queued after this product on the same stream.
  const auto workspace = Storage::allocate(kWorkspaceBytes, Device::cuda(device));
  const float alpha32 = float(alpha), beta32 = float(beta);
  const void* alpha_ptr = wide ? static_cast<const void*>(&alpha) : static_cast<const void*>(&alpha32);
  const void* beta_ptr = wide ? static_cast<const void*>(&beta) : static_cast<const void*>(&beta32);
  LAMINA_CUBLAS_CHECK(cublasLtMatmul(handle, desc.handle, alpha_ptr, b.data, a_layout.handle, a.data, b_layout.handle,
                                     beta_ptr, c.data, c_layout.handle, const_cast<void*>(c.data), c_layout.handle,
                                     &algo, workspace->data(), kWorkspaceBytes, stream));
}

void matmul(const Tensor& out, const Tensor& a_in, const Tensor& b_in, bool transpose_a, bool transpose_b) {
  const Device device = a_in.device();
  const DType dtype = a_in.dtype();
  const int64_t m = out.size(-2), n = out.size(-1), k = a_in.size(transpose_a ? -2 : -1);
  const Shape batch_a(a_in.shape().begin(), a_in.shape().end() - 2);
  const Shape batch_b(b_in.shape().begin(), b_in.shape().end() - 2);
  const Shape batch(out.shape().begin(), out.shape().end() - 2);
  if (out.numel() == 0) return;
  if (k == 0) {  // cuBLASLt takes no empty inner dimension
    fill(out, 0.0);
    return;
  }

  // [..., M, K] x [K, N]: fold the batch into M when a's rows line up as one matrix.
  if (batch_b.empty() && !batch_a.empty() && !transpose_a) {
    Shape rows_strides;
    if (views::view_strides(a_in, {shape_numel(batch_a) * m, k}, rows_strides)) {
      const Tensor a2 = readable(views::as_strided(a_in, {shape_numel(batch_a) * m, k}, rows_strides, a_in.offset()));
      const Tensor b2 = readable(b_in);
      GemmOperand out2{out.raw_data(), shape_numel(batch_a) * m, n, n, 1, 0};
      gemm(dtype, operand_of(a2, false), operand_of(b2, transpose_b), out2, 1, 1.0, 0.0, device.index);
      return;
    }
  }

  const Tensor a = readable(broadcast_batch(a_in, batch));
  const Tensor b = readable(broadcast_batch(b_in, batch));
  // The innermost batch dims whose strides line up (and are not broadcast) form one strided batch;
  // the dims outside that run are looped over here.
  const int64_t dims = int64_t(batch.size());
  int64_t run_start = dims, run_count = 1, stride_a = 0, stride_b = 0;
  while (run_start > 0) {
    const int64_t d = run_start - 1;
    if (batch[size_t(d)] == 1) {
      --run_start;
      continue;
    }
    const int64_t sa = a.stride(d), sb = b.stride(d);
    if (sa == 0 || sb == 0) break;
    if (run_count == 1) {
      stride_a = sa;
      stride_b = sb;
    } else if (sa != stride_a * run_count || sb != stride_b * run_count) {
      break;
    }
    run_count *= batch[size_t(d)];
    --run_start;
  }
  const Shape outer(batch.begin(), batch.begin() + run_start);
  const int64_t outer_count = shape_numel(outer);
  const size_t element = dtype_size(dtype);
  Shape index(outer.size(), 0);
  for (int64_t i = 0; i < outer_count; ++i) {
    int64_t offset_a = 0, offset_b = 0;
    for (size_t d = 0; d < outer.size(); ++d) {
      offset_a += index[d] * a.stride(int64_t(d));
      offset_b += index[d] * b.stride(int64_t(d));
    }
    GemmOperand a_op = operand_of(a, transpose_a), b_op = operand_of(b, transpose_b);
    a_op.data = byte_offset(a.raw_data(), offset_a, element);
    b_op.data = byte_offset(b.raw_data(), offset_b, element);
    a_op.batch_stride = stride_a;
    b_op.batch_stride = stride_b;
    GemmOperand c_op{byte_offset(out.raw_data(), i * run_count * m * n, element), m, n, n, 1, m * n};
    gemm(dtype, a_op, b_op, c_op, run_count, 1.0, 0.0, device.index);
    for (size_t d = outer.size(); d-- > 0;) {
      if (++index[d] < outer[d]) break;
      index[d] = 0;
    }
  }
}

}  // namespace lamina::ops::cuda
