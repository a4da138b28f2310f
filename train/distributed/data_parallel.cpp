#include "train/distributed/data_parallel.h"

#include <chrono>

#include "autograd/autograd.h"
#include "ops/ops.h"
#include "tensor/error.h"
#include "tensor/profiler.h"

namespace lamina::dist {

DataParallel::DataParallel(std::shared_ptr<Communicator> communicator, std::vector<nn::NamedTensor> parameters,
                           int zero_stage, int64_t bucket_bytes)
    : communicator_(std::move(communicator)),
      zero_stage_(zero_stage),
      parameters_(std::move(parameters)),
      alive_(std::make_shared<bool>(true)) {
  LAMINA_CHECK(communicator_ != nullptr, "data parallel: no communicator");
  LAMINA_CHECK(zero_stage_ >= 0 && zero_stage_ <= 2, "data parallel: ZeRO stage ", zero_stage_, " is not 0, 1 or 2");
  LAMINA_CHECK(bucket_bytes > 0, "data parallel: the bucket size must be positive, not ", bucket_bytes);
  for (const auto& [name, parameter] : parameters_) {
    LAMINA_CHECK(parameter.is_contiguous(), "data parallel: parameter ", name, " is not contiguous");
    LAMINA_CHECK(parameter.autograd_meta() != nullptr, "data parallel: parameter ", name, " does not require grad");
  }
  slots_.resize(parameters_.size());
  // Reverse order: backward reaches the last layers first, so their buckets fill first.
  const int64_t bucket_elements = std::max<int64_t>(1, bucket_bytes / int64_t(sizeof(float)));
  for (int64_t i = int64_t(parameters_.size()) - 1; i >= 0; --i) {
    const int64_t count = parameters_[size_t(i)].second.numel();
    if (buckets_.empty() || (buckets_.back().layout.elements > 0 && buckets_.back().layout.elements + count > bucket_elements))
      buckets_.emplace_back();
    BucketLayout& layout = buckets_.back().layout;
    slots_[size_t(i)].bucket = int64_t(buckets_.size()) - 1;
    slots_[size_t(i)].member = int64_t(layout.members.size());
    layout.members.push_back(i);
    layout.offsets.push_back(layout.elements);
    layout.elements += count;
  }
  const int64_t ranks = communicator_->world_size();
  const Device device = parameters_.empty() ? Device::cpu() : parameters_.front().second.device();
  for (Bucket& bucket : buckets_) {
    bucket.layout.shard_elements = (bucket.layout.elements + ranks - 1) / ranks;
    if (zero_stage_ >= 1) bucket.shard = zeros({bucket.layout.shard_elements}, DType::f32, device);
    if (zero_stage_ < 2) bucket.flat = zeros({ranks * bucket.layout.shard_elements}, DType::f32, device);
  }
  for (size_t i = 0; i < parameters_.size(); ++i) {
    parameters_[i].second.autograd_meta()->post_accumulate_hooks.push_back(
        [this, alive = alive_, index = int64_t(i)](const Tensor& grad) {
          if (*alive) on_gradient(index, grad);
        });
  }
}

DataParallel::~DataParallel() {
  *alive_ = false;
  // Operations still in flight write into our buckets: let them end first.
  for (Bucket& bucket : buckets_) {
    if (bucket.work == nullptr) continue;
    try {
      bucket.work->wait();
    } catch (const Error&) {
      // The step is abandoned anyway (this runs while an error unwinds the trainer).
    }
  }
}

std::vector<DataParallel::BucketLayout> DataParallel::layout() const {
  std::vector<BucketLayout> out;
  for (const Bucket& bucket : buckets_) out.push_back(bucket.layout);
  return out;
}

Tensor DataParallel::shard(int64_t index) const {
  LAMINA_CHECK(zero_stage_ >= 1, "data parallel: shards exist with ZeRO only");
  return buckets_.at(size_t(index)).shard;
}

Tensor& DataParallel::flat_of(Bucket& bucket) {
  if (!bucket.flat.defined()) {
    const Device device = parameters_[size_t(bucket.layout.members.front())].second.device();
    bucket.flat = zeros({communicator_->world_size() * bucket.layout.shard_elements}, DType::f32, device);
  }
  return bucket.flat;
}

void DataParallel::broadcast_parameters(int root) {
  autograd::NoGradGuard no_grad;
  for (const auto& [name, parameter] : parameters_) communicator_->broadcast(parameter, root);
}

void DataParallel::expect_final_backward() {
  LAMINA_CHECK(!armed_, "data parallel: expect_final_backward called twice in one step");
  armed_ = true;
}

void DataParallel::on_gradient(int64_t index, const Tensor& grad) {
  if (!armed_) return;  // an earlier micro-batch: the gradient is not final yet
  Slot& slot = slots_[size_t(index)];
  if (slot.ready) return;  // accumulated twice in the final backward (cannot happen for a leaf)
  Bucket& bucket = buckets_[size_t(slot.bucket)];
  const Tensor& parameter = parameters_[size_t(index)].second;
  const int64_t count = parameter.numel();
  autograd::NoGradGuard no_grad;
  ops::copy_(flat_of(bucket).narrow(0, bucket.layout.offsets[size_t(slot.member)], count), grad.reshape({count}));
  // Stage 2: the bucket has it; the full-size gradient goes now rather than at zero_grad.
  if (zero_stage_ == 2) parameter.set_grad(Tensor());
  slot.ready = true;
  ++bucket.ready;
  launch_ready_buckets();
}

void DataParallel::launch(Bucket& bucket) {
  const profiler::Scope scope("data_parallel:launch");
  if (zero_stage_ == 2) {
    bucket.work = communicator_->reduce_scatter_async(bucket.flat, bucket.shard, ReduceOp::sum);
  } else {
    bucket.work = communicator_->all_reduce_async(bucket.flat, ReduceOp::sum);
  }
}

void DataParallel::launch_ready_buckets() {
  while (next_to_launch_ < int64_t(buckets_.size())) {
    Bucket& bucket = buckets_[size_t(next_to_launch_)];
    if (bucket.ready < int64_t(bucket.layout.members.size())) return;
    launch(bucket);
    ++next_to_launch_;
  }
}

void DataParallel::finish() {
  LAMINA_CHECK(armed_, "data parallel: finish without expect_final_backward (the step's last backward was not marked)");
  autograd::NoGradGuard no_grad;
  const auto start = std::chrono::steady_clock::now();
  // Parameters the final backward did not reach: their gradient on this rank so far (an earlier
  // micro-batch's) or zero.
  for (size_t i = 0; i < slots_.size(); ++i) {
    Slot& slot = slots_[i];
    if (slot.ready) continue;
    Bucket& bucket = buckets_[size_t(slot.bucket)];
    const Tensor& parameter = parameters_[i].second;
    const int64_t count = parameter.numel();
    const Tensor part = flat_of(bucket).narrow(0, bucket.layout.offsets[size_t(slot.member)], count);
    const Tensor grad = parameter.grad();
    if (grad.defined()) {
      ops::copy_(part, grad.reshape({count}));
    } else {
      ops::copy_(part, zeros({1}, DType::f32, part.device()));  // broadcast
    }
    if (zero_stage_ == 2) parameter.set_grad(Tensor());
    slot.ready = true;
    ++bucket.ready;
  }
  launch_ready_buckets();
  {
    const profiler::Scope scope("data_parallel:wait");
    for (Bucket& bucket : buckets_) bucket.work->wait();
  }
  last_exposed_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (Bucket& bucket : buckets_) {
    if (zero_stage_ == 2) {
      bucket.flat = Tensor();  // the shard holds what this rank needs
    } else {
      // Every rank's whole gradients (stage 1: its shard of them too, for the optimizer).
      for (size_t m = 0; m < bucket.layout.members.size(); ++m) {
        const Tensor& parameter = parameters_[size_t(bucket.layout.members[m])].second;
        const Tensor sum = bucket.flat.narrow(0, bucket.layout.offsets[m], parameter.numel()).view(parameter.shape());
        Tensor grad = parameter.grad();
        if (!grad.defined()) {
          grad = Tensor::empty(parameter.shape(), parameter.dtype(), parameter.device());
          parameter.set_grad(grad);
        }
        ops::copy_(grad, sum);
      }
      if (zero_stage_ == 1) {
        const int64_t size = bucket.layout.shard_elements;
        ops::copy_(bucket.shard, bucket.flat.narrow(0, communicator_->rank() * size, size));
      }
    }
    for (const int64_t member : bucket.layout.members) slots_[size_t(member)].ready = false;
    bucket.ready = 0;
    bucket.work.reset();
  }
  next_to_launch_ = 0;
  armed_ = false;
  ++exchanges_;
}

void DataParallel::all_gather_parameters() {
  LAMINA_CHECK(zero_stage_ >= 1, "data parallel: all_gather_parameters is for ZeRO");
  autograd::NoGradGuard no_grad;
  const profiler::Scope scope("data_parallel:all_gather_parameters");
  // One bucket at a time: with stage 2 its full-size buffer exists only while it is gathered.
  for (Bucket& bucket : buckets_) {
    Tensor& flat = flat_of(bucket);
    communicator_->all_gather(bucket.shard, flat);
    for (size_t m = 0; m < bucket.layout.members.size(); ++m) {
      const Tensor& parameter = parameters_[size_t(bucket.layout.members[m])].second;
      ops::copy_(parameter, flat.narrow(0, bucket.layout.offsets[m], parameter.numel()).view(parameter.shape()));
    }
    if (zero_stage_ == 2) bucket.flat = Tensor();
  }
}

}  // namespace lamina::dist
