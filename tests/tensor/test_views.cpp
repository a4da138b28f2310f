#include <numeric>

#include "helpers.h"
#include "tensor/host_memory.h"

using namespace lamina;
using lamina::testing::noncontiguous;

namespace {
Tensor iota(const Shape& shape, DType dtype = DType::f32) {
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  std::iota(values.begin(), values.end(), 0.0);
  return Tensor::from_vector(values, shape, dtype);
}
std::vector<double> values_of(const Tensor& t) { return t.to_vector<double>(); }
}  // namespace

TEST_CASE("a contiguous tensor's layout") {
  const Tensor t = Tensor::empty({2, 3, 4});
  CHECK(t.strides() == Shape{12, 4, 1});
  CHECK(t.is_contiguous());
  CHECK(t.numel() == 24);
  CHECK(t.nbytes() == 96);
  CHECK(t.size(-1) == 4);
  CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % kHostAlignment == 0);
  CHECK_THROWS_WITH_AS(t.size(3), doctest::Contains("dim 3 out of range"), Error);
  const Tensor empty = Tensor::empty({0, 5});
  CHECK(empty.numel() == 0);
}

TEST_CASE("transpose, permute and contiguous share storage until copied") {
  const Tensor t = iota({2, 3});
  const Tensor tt = t.transpose(0, 1);
  CHECK(tt.shape() == Shape{3, 2});
  CHECK(tt.storage() == t.storage());
  CHECK_FALSE(tt.is_contiguous());
  CHECK(values_of(tt) == std::vector<double>{0, 3, 1, 4, 2, 5});
  const Tensor c = tt.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.storage() != t.storage());
  CHECK(values_of(c) == values_of(tt));
  const Tensor p = iota({2, 3, 4}).permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.strides() == Shape{1, 12, 4});
  CHECK(values_of(p)[1] == 4);  // element [0, 0, 1] -> original [0, 1, 0]
  CHECK_THROWS_WITH_AS(iota({2, 3}).permute({0, 0}), doctest::Contains("repeated"), Error);
}

TEST_CASE("slice, narrow and select") {
  const Tensor t = iota({4, 5});
  const Tensor s = t.slice(1, 1, 5, 2);  // columns 1 and 3
  CHECK(s.shape() == Shape{4, 2});
  CHECK(values_of(s) == std::vector<double>{1, 3, 6, 8, 11, 13, 16, 18});
  CHECK(values_of(t.slice(0, -2, 4)) == std::vector<double>{10, 11, 12, 13, 14, 15, 16, 17, 18, 19});
  CHECK(values_of(t.narrow(1, 2, 2).select(0, 1)) == std::vector<double>{7, 8});
  CHECK(values_of(t.select(1, -1)) == std::vector<double>{4, 9, 14, 19});
  CHECK_THROWS_WITH_AS(t.select(0, 4), doctest::Contains("out of range"), Error);
  CHECK_THROWS_AS(t.narrow(1, 3, 3), Error);
}

TEST_CASE("view and reshape: views when strides allow, copies or errors otherwise") {
  const Tensor t = iota({2, 3, 4});
  const Tensor v = t.view({6, -1});
  CHECK(v.shape() == Shape{6, 4});
  CHECK(v.storage() == t.storage());
  CHECK(t.view({2, 12}).storage() == t.storage());
  // A slice along the last dim still views as [.., merged] when the merged dims line up.
  const Tensor column_pairs = t.slice(2, 0, 2);  // [2, 3, 2], strides [12, 4, 1]
  CHECK(column_pairs.view({2, 3, 2, 1}).storage() == t.storage());
  CHECK_THROWS_WITH_AS(column_pairs.view({12}), doctest::Contains("without a copy"), Error);
  const Tensor copied = column_pairs.reshape({12});
  CHECK(copied.storage() != t.storage());
  CHECK(values_of(copied) == values_of(column_pairs));
  // The transpose of a matrix can be viewed with an extra unit dim but not flattened.
  const Tensor tt = iota({3, 4}).transpose(0, 1);
  CHECK(tt.view({4, 1, 3}).storage() == tt.storage());
  CHECK(values_of(tt.reshape({12})) == values_of(tt.contiguous()));
  CHECK_THROWS_WITH_AS(t.view({5, -1}), doctest::Contains("cannot infer"), Error);
  CHECK_THROWS_WITH_AS(t.view({-1, -1}), doctest::Contains("more than one -1"), Error);
  CHECK_THROWS_AS(t.view({7}), Error);
}

TEST_CASE("expand, squeeze, unsqueeze and flatten") {
  const Tensor t = iota({3, 1});
  const Tensor e = t.expand({2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  CHECK(values_of(e.select(0, 1).select(0, 2)) == std::vector<double>{2, 2, 2, 2});
  CHECK(t.expand({-1, 5}).shape() == Shape{3, 5});
  CHECK_THROWS_WITH_AS(t.expand({4, 4}), doctest::Contains("cannot expand"), Error);
  CHECK(t.squeeze(1).shape() == Shape{3});
  CHECK_THROWS_WITH_AS(t.squeeze(0), doctest::Contains("not 1"), Error);
  CHECK(t.unsqueeze(0).shape() == Shape{1, 3, 1});
  CHECK(t.unsqueeze(-1).shape() == Shape{3, 1, 1});
  CHECK(iota({2, 3, 4}).flatten(1).shape() == Shape{2, 12});
  CHECK(iota({2, 3, 4}).flatten().shape() == Shape{24});
  CHECK(values_of(iota({2, 3}).transpose(0, 1).flatten()) == std::vector<double>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("views outside their storage are rejected") {
  const Tensor t = iota({4});
  CHECK_THROWS_WITH_AS(views::as_strided(t, {5}, {1}, 0), doctest::Contains("outside its storage"), Error);
  CHECK_THROWS_AS(views::as_strided(t, {2}, {1}, 3), Error);
  CHECK(values_of(views::as_strided(t, {2, 2}, {1, 1}, 1)) == std::vector<double>{1, 2, 2, 3});
}

TEST_CASE("printing shows shape, dtype and leading values") {
  const std::string text = iota({2, 3}, DType::f32).to_string(4);
  CHECK(text == "Tensor(shape=[2, 3], dtype=f32, device=cpu, values=[0, 1, 2, 3, ...])");
  CHECK(Tensor().to_string() == "Tensor(undefined)");
  CHECK(iota({2}, DType::boolean).to_string() == "Tensor(shape=[2], dtype=bool, device=cpu, values=[0, 1])");
}

TEST_CASE("handles are shared; set_data repoints every copy") {
  const Tensor a = iota({2});
  const Tensor b = a;
  b.set_data(iota({3}, DType::f64));
  CHECK(a.shape() == Shape{3});
  CHECK(a.dtype() == DType::f64);
  CHECK(a.is_same(b));
  CHECK_FALSE(a.detach().is_same(a));
  CHECK(a.detach().is_alias_of(a));
}

TEST_CASE("host memory counters track live and peak bytes") {
  reset_peak_memory(Device::cpu());
  const MemoryStats before = memory_stats(Device::cpu());
  {
    const Tensor big = Tensor::empty({1 << 20}, DType::f32);
    const MemoryStats during = memory_stats(Device::cpu());
    CHECK(during.live_bytes - before.live_bytes == (4 << 20));
    CHECK(during.peak_bytes >= before.live_bytes + (4 << 20));
  }
  const MemoryStats after = memory_stats(Device::cpu());
  CHECK(after.live_bytes == before.live_bytes);
  CHECK(after.peak_bytes >= before.live_bytes + (4 << 20));
  CHECK_THROWS_WITH_AS(Tensor::empty({2}, DType::f32, Device::cuda(0)), doctest::Contains("not available"), Error);
}

TEST_CASE("large freed blocks are reused instead of returned to the system") {
  empty_cache(Device::cpu());
  const void* first_address = nullptr;
  {
    const Tensor big = Tensor::empty({3014656}, DType::f32);  // 11.5 MiB: the 12 MiB size class
    first_address = big.storage()->data();
  }
  if (system_allocator_build()) {
    CHECK(memory_stats(Device::cpu()).cached_bytes == 0);  // sanitizer builds keep nothing back
  } else {
    CHECK(memory_stats(Device::cpu()).cached_bytes == (12 << 20));
    // Another size in the same class gets the same block back.
    const Tensor again = Tensor::empty({3100000}, DType::f32);  // 11.8 MiB
    CHECK(again.storage()->data() == first_address);
    CHECK(memory_stats(Device::cpu()).cached_bytes == 0);
  }
  CHECK(empty_cache(Device::cpu()) >= 0);
  CHECK(memory_stats(Device::cpu()).cached_bytes == 0);
}

TEST_CASE("noncontiguous test helper keeps values") {
  const Tensor t = iota({3, 4});
  const Tensor n = noncontiguous(t);
  CHECK_FALSE(n.is_contiguous());
  CHECK(values_of(n) == values_of(t));
}
