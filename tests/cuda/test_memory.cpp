// Device memory: the caching allocator (reuse, statistics, empty_cache, out-of-memory text),
// host <-> device copies (small, staged, strided, between devices), host reads of device
// tensors, error checks, and ops without a CUDA kernel refusing CUDA tensors.
#include "cuda_cases.h"

using namespace lamina;
using namespace lamina::testing;
using namespace lamina::testing::gpu;

TEST_CASE("the caching allocator reuses freed blocks of a size class without cudaMalloc") {
  empty_cache(kCuda);
  const MemoryStats before = memory_stats(kCuda);
  const void* first_address = nullptr;
  {
    const Tensor t = Tensor::empty({1000, 1000}, DType::f32, kCuda);  // 4 MB: a large size class
    first_address = t.raw_data();
    const MemoryStats live = memory_stats(kCuda);
    CHECK(live.live_bytes == before.live_bytes + 4000000);
    CHECK(live.reserved_bytes >= before.reserved_bytes + 4000000);
    CHECK(live.allocations == before.allocations + 1);
    CHECK(live.fresh_blocks == before.fresh_blocks + 1);
  }
  const MemoryStats freed = memory_stats(kCuda);
  CHECK(freed.live_bytes == before.live_bytes);
  CHECK(freed.cached_bytes >= int64_t(cuda::device_size_class(4000000)));
  // The same size class again, many times: the same block, no new cudaMalloc.
  for (int i = 0; i < 100; ++i) {
    const Tensor t = Tensor::empty({999, 1001}, DType::f32, kCuda);  // 3999996 bytes: same class
    CHECK(t.raw_data() == first_address);
  }
  const MemoryStats reused = memory_stats(kCuda);
  CHECK(reused.fresh_blocks == freed.fresh_blocks);
  CHECK(reused.allocations == freed.allocations + 100);
  CHECK(reused.peak_bytes >= before.live_bytes + 4000000);

  // empty_cache gives the cached blocks back.
  const int64_t released = empty_cache(kCuda);
  CHECK(released >= int64_t(cuda::device_size_class(4000000)));
  const MemoryStats emptied = memory_stats(kCuda);
  CHECK(emptied.cached_bytes == 0);
  CHECK(emptied.reserved_bytes == reused.reserved_bytes - released);

  // peak resets to the live bytes.
  reset_peak_memory(kCuda);
  CHECK(memory_stats(kCuda).peak_bytes == memory_stats(kCuda).live_bytes);
}

TEST_CASE("size classes: 512-byte steps below 1 MiB, 8 per power of two above") {
  CHECK(cuda::device_size_class(1) == 512);
  CHECK(cuda::device_size_class(512) == 512);
  CHECK(cuda::device_size_class(513) == 1024);
  CHECK(cuda::device_size_class((size_t(1) << 20) - 1) == size_t(1) << 20);
  CHECK(cuda::device_size_class((size_t(1) << 20) + 1) == (size_t(1) << 20) + (size_t(1) << 17));
  for (size_t bytes : {size_t(3) << 20, size_t(100) << 20, (size_t(1) << 30) + 7}) {
    const size_t size_class = cuda::device_size_class(bytes);
    CHECK(size_class >= bytes);
    CHECK(double(size_class) <= double(bytes) * 1.125 + 1);
  }
}

TEST_CASE("out of device memory: the error names the request and what lamina holds") {
  const Tensor held = Tensor::empty({1 << 20}, DType::f32, kCuda);  // something live to report
  try {
    Tensor::empty({int64_t(1) << 48}, DType::u8, kCuda);  // 256 TiB
    FAIL("allocating 256 TiB succeeded");
  } catch (const Error& error) {
    const std::string message = error.what();
    INFO(message);
    CHECK(message.find("CUDA out of memory on cuda:0") != std::string::npos);
    CHECK(message.find("requested 256.00 TiB") != std::string::npos);
    CHECK(message.find("281474976710656 bytes") != std::string::npos);
    CHECK(message.find("lamina holds") != std::string::npos);
    CHECK(message.find("live in") != std::string::npos);
    CHECK(message.find("free of") != std::string::npos);
  }
  // The failure leaves the device usable.
  const Tensor after = ones({16}, DType::f32, kCuda);
  CHECK(ops::sum(after).item<double>() == 16.0);
}

TEST_CASE("to_device round trips every dtype, small and staged, contiguous or not") {
  Generator gen(11);
  for (DType dtype : kAllDTypes) {
    CAPTURE(name(dtype));
    // 3 x 5 (direct copy) and 1200 x 1100 (above the staging threshold for 4-byte and wider types)
    for (const Shape& shape : {Shape{3, 5}, Shape{1200, 1100}}) {
      CAPTURE(shape);
      const Tensor x = dtype == DType::boolean
                           ? ops::compare(ops::CompareOp::gt, random_tensor(shape, DType::f32, gen), 0.0)
                           : random_tensor(shape, dtype, gen, -100, 100);
      for (Layout layout : kLayouts) {
        CAPTURE(name(layout));
        const Tensor input = in_layout(x, layout);
        const Tensor on_gpu = ops::to_device(input, kCuda);
        CHECK(on_gpu.device() == kCuda);
        CHECK(on_gpu.is_contiguous());
        const Tensor back = ops::to_device(on_gpu, Device::cpu());
        CHECK(back.device().is_cpu());
        CHECK_CLOSE(back, x, kExact);
        // A strided view on the device goes back through a device-side contiguous copy.
        CHECK_CLOSE(to_cpu(mirror(input)), x, kExact);
      }
    }
  }
}

TEST_CASE("host reads of device tensors: to_vector, item, to_string, host_mirror") {
  const Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor g = mirror(x);
  CHECK(g.to_vector<double>() == std::vector<double>{1, 2, 3, 4, 5, 6});
  CHECK(views::transpose(g, 0, 1).to_vector<int>() == std::vector<int>{1, 4, 2, 5, 3, 6});
  CHECK(views::select(views::select(g, 0, 1), 0, 2).item<float>() == 6.0f);
  CHECK(g.to_string().find("device=cuda:0, values=[1, 2, 3, 4, 5, 6]") != std::string::npos);
  const Tensor host = host_mirror(views::slice(g, 1, 1, 3));
  CHECK(host.device().is_cpu());
  CHECK(host.to_vector<float>() == std::vector<float>{2, 3, 5, 6});
}

TEST_CASE("copy_ and fill_ write device views in place") {
  for_each_poison([] {
    Tensor target = zeros({4, 6}, DType::f32, kCuda);
    Tensor expected = zeros({4, 6}, DType::f32);
    const Tensor source = Tensor::from_vector(std::vector<double>{1, 2, 3}, {3, 1});
    ops::copy_(views::slice(target, 0, 1, 4), mirror(ops::cast(source, DType::bf16)));  // cast + broadcast
    ops::copy_(views::slice(expected, 0, 1, 4), ops::cast(source, DType::bf16));
    ops::fill_(views::slice(target, 1, 0, 6, 5), -2.5);  // columns 0 and 5, strided
    ops::fill_(views::slice(expected, 1, 0, 6, 5), -2.5);
    CHECK_CLOSE(target, expected, kExact);
  });
}

TEST_CASE("devices and errors: mixing devices, ops without a CUDA kernel, synchronize") {
  const Tensor on_gpu = ones({3}, DType::f32, kCuda);
  const Tensor on_cpu = ones({3}, DType::f32);
  CHECK_THROWS_WITH_AS(ops::add(on_gpu, on_cpu), doctest::Contains("'b' is on cpu but 'a' is on cuda:0"), Error);
  CHECK_THROWS_WITH_AS(Tensor::empty({1}, DType::f32, Device::cuda(cuda::device_count())),
                       doctest::Contains("does not exist"), Error);
  synchronize(kCuda);
  synchronize(Device::cpu());
  const cuda::DeviceInfo& info = cuda::device_info(0);
  MESSAGE("device 0: " << info.name << ", compute capability " << info.compute_major << "." << info.compute_minor
                       << ", " << info.multiprocessors << " multiprocessors, " << (info.total_memory >> 20) << " MiB");
  CHECK(info.multiprocessors > 0);
}

TEST_CASE("copies between two devices (when there are two)") {
  if (cuda::device_count() < 2) {
    MESSAGE("SKIPPED: one CUDA device only");
    return;
  }
  Generator gen(5);
  const Tensor x = random_tensor({300, 700}, DType::f32, gen);
  const Tensor on_first = ops::to_device(x, Device::cuda(0));
  const Tensor on_second = ops::to_device(on_first, Device::cuda(1));
  CHECK(on_second.device() == Device::cuda(1));
  CHECK_CLOSE(to_cpu(on_second), x, kExact);
  CHECK_CLOSE(to_cpu(ops::mul(on_second, on_second)), ops::mul(x, x), elementwise_tolerance(DType::f32));
}
