// The NCCL communicator (train/distributed/cuda/nccl_communicator.h) at world size 1, the one
// this suite's machines have: every collective on device tensors of every dtype against the
// values expected, asynchronous operations in issue order, and the errors for tensors on the
// wrong device and for average of integers. Larger world sizes need a multi-GPU machine.
#include <chrono>

#include "cuda_cases.h"
#include "train/distributed/communicator.h"
#include "train/distributed/rendezvous.h"
#if LAMINA_WITH_NCCL
#include "train/distributed/cuda/nccl_communicator.h"
#endif

using namespace lamina;
using namespace lamina::testing::gpu;

#if LAMINA_WITH_NCCL

namespace {

Tensor values_on_gpu(DType dtype, int64_t count, int seed) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i)
    values[size_t(i)] = dtype == DType::boolean ? double((i + seed) % 3 == 0)
                                                : double((i * 7 + seed) % 19) - (dtype == DType::u8 ? 0 : 9);
  return Tensor::from_vector<double>(values, {count}, dtype).to(kCuda);
}

void check_same(const Tensor& actual, const Tensor& expected, const std::string& what) {
  CHECK_MESSAGE(to_cpu(actual).to_vector<double>() == to_cpu(expected).to_vector<double>(), what);
}

}  // namespace

TEST_CASE("nccl communicator, world size 1: every collective and dtype, async order, errors") {
  dist::DistributedEnv env;  // rank 0 of 1; no socket is opened at world size 1
  std::unique_ptr<dist::Communicator> nccl = dist::connect_nccl_communicator(env, std::chrono::seconds(60));
  CHECK(nccl->backend() == "nccl");
  CHECK(nccl->device() == kCuda);
  for (DType dtype : kAllDTypes) {
    const std::string name = dtype_name(dtype);
    for (int64_t count : {int64_t(1), int64_t(7), int64_t(1000003)}) {
      const Tensor original = values_on_gpu(dtype, count, 3);
      Tensor tensor = original.clone();
      nccl->all_reduce(tensor, dist::ReduceOp::sum);
      check_same(tensor, original, "all_reduce(sum) " + name);
      nccl->all_reduce(tensor, dist::ReduceOp::max);
      check_same(tensor, original, "all_reduce(max) " + name);
      if (is_floating(dtype)) {
        nccl->all_reduce(tensor, dist::ReduceOp::average);
        check_same(tensor, original, "all_reduce(average) " + name);
      }
      // Out of place into outputs that start as something else: an unwritten element shows.
      Tensor scattered = values_on_gpu(dtype, count, 5);
      nccl->reduce_scatter(original, scattered);
      check_same(scattered, original, "reduce_scatter " + name);
      Tensor gathered = values_on_gpu(dtype, count, 6);
      nccl->all_gather(original, gathered);
      check_same(gathered, original, "all_gather " + name);
      nccl->broadcast(tensor, 0);
      check_same(tensor, original, "broadcast " + name);
    }
  }
  // Issued back to back, waited in reverse: each completes, in order, with the values above.
  Tensor a = values_on_gpu(DType::f32, 4096, 1), b = values_on_gpu(DType::bf16, 4096, 2);
  auto first = nccl->all_reduce_async(a, dist::ReduceOp::sum);
  auto second = nccl->broadcast_async(b, 0);
  second->wait();
  first->wait();
  CHECK(first->completed());
  check_same(a, values_on_gpu(DType::f32, 4096, 1), "async all_reduce");
  check_same(b, values_on_gpu(DType::bf16, 4096, 2), "async broadcast");
  nccl->barrier();
  CHECK(nccl->all_reduce_sum(2.5) == 2.5);
  CHECK(nccl->all_reduce_sum(int64_t(1) << 40) == int64_t(1) << 40);
  CHECK(nccl->broadcast_text("from rank 0", 0) == "from rank 0");
  CHECK(nccl->stats().operations > 0);

  CHECK_THROWS_WITH_AS(nccl->all_reduce(Tensor::from_vector<float>({1}, {1})), doctest::Contains("is on cpu"), Error);
  CHECK_THROWS_WITH_AS(nccl->all_reduce(values_on_gpu(DType::i32, 3, 0), dist::ReduceOp::average),
                       doctest::Contains("average of i32 is refused"), Error);
  CHECK_THROWS_WITH_AS(nccl->broadcast(a, 1), doctest::Contains("root 1 is not a rank"), Error);
}

TEST_CASE("make_communicator: nccl and auto pick NCCL on a GPU machine") {
  dist::DistributedEnv env;
  CHECK(dist::make_communicator(env, "nccl")->backend() == "nccl");
  CHECK(dist::make_communicator(env, "auto")->backend() == "nccl");
}

#else

TEST_CASE("nccl communicator: this CUDA build found no NCCL") {
  MESSAGE("SKIPPED: the CUDA build has no NCCL (CMake found no nccl.h/libnccl): nothing to test");
  CHECK_THROWS_WITH_AS(dist::make_communicator(dist::DistributedEnv{}, "nccl"), doctest::Contains("without NCCL"), Error);
}

#endif
