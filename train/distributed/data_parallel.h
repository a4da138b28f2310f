// Data parallelism: every rank holds the whole model, trains on its own share of each step's
// rows, and the ranks sum their gradients before the update, so that every rank applies the same
// update to the same weights.
//
// The sum is taken in buckets of parameters (about `bucket_bytes` of f32 each, in reverse order
// of registration: the order in which backward produces them), and a bucket is sent as soon as
// the step's last backward on this rank has produced every gradient in it: a hook on each
// parameter (autograd's post-accumulate hook) copies the gradient into its bucket, so the
// communication of the late layers overlaps the backward of the early ones. Buckets are issued
// strictly in index order on every rank, so the ranks' collectives always pair up; a parameter
// that received no gradient on this rank counts as zero (finish() sends what is left).
//
// The objective divides its loss by the step's total over all ranks (target tokens, pairs), so
// the summed gradient is the gradient of the whole step's loss: N ranks with b rows each compute
// what one rank computes with N*b rows in micro-batches of b (train/trainer.h). Gradients travel
// in f32 whatever the parameters' dtype (bf16 training keeps its f32 accumulation).
//
// ZeRO (Rajbhandari et al. 2020) shards the optimizer across the ranks: each bucket (padded to a
// multiple of world_size elements) is cut into world_size equal shards and rank r owns shard r
// of every bucket (train/distributed/zero_optimizer.h keeps AdamW's state for those elements
// only and updates them; all_gather_parameters() then gives every rank every shard's new
// weights). Stage 1 still all-reduces whole gradients into the parameters; stage 2
// reduce-scatters them instead, so each rank receives only its shard's sums (half the bytes of
// an all-reduce), frees each parameter's gradient as soon as it is in its bucket, and holds a
// bucket's full-size buffer only while that bucket is in flight.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nn/module.h"
#include "train/distributed/communicator.h"

namespace lamina::dist {

class DataParallel {
 public:
  static constexpr int64_t default_bucket_bytes = int64_t(25) << 20;

  // zero_stage: 0 (plain data parallelism), 1 or 2 (see above).
  DataParallel(std::shared_ptr<Communicator> communicator, std::vector<nn::NamedTensor> parameters,
               int zero_stage = 0, int64_t bucket_bytes = default_bucket_bytes);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  Communicator& communicator() const { return *communicator_; }
  int rank() const { return communicator_->rank(); }
  int world_size() const { return communicator_->world_size(); }

  // Makes every rank's parameters rank `root`'s (before the first step: ranks that built or
  // loaded the model differently start from the same weights).
  void broadcast_parameters(int root = 0);

  // The next backward is this rank's last of the step: as it produces each parameter's final
  // gradient, the buckets go out.
  void expect_final_backward();
  // Right after that backward: waits for every bucket (sending those that are not out yet, in
  // order) and writes the sums into the parameters' gradients. After it, every rank holds the
  // same gradients. It comes before any other collective of the step (a loss sum), so that
  // every rank issues its collectives in the same order.
  void finish();
  // How many exchanges finish() has completed (one per step).
  int64_t exchanges() const { return exchanges_; }

  int zero_stage() const { return zero_stage_; }
  int64_t bucket_count() const { return int64_t(buckets_.size()); }

  // ZeRO: where rank `rank`'s shard of each bucket lies. A bucket's members are laid out one
  // after another (flattened) from element 0; shard r is [r * shard_elements, (r + 1) *
  // shard_elements) of it, the tail past `elements` being padding.
  struct BucketLayout {
    std::vector<int64_t> members;  // indices into parameters()
    std::vector<int64_t> offsets;  // each member's first element
    int64_t elements = 0;          // the members' elements (without padding)
    int64_t shard_elements = 0;    // ceil(elements / world_size)
  };
  std::vector<BucketLayout> layout() const;
  const std::vector<nn::NamedTensor>& parameters() const { return parameters_; }
  // After finish(), with ZeRO: this rank's shard of bucket `index`'s summed gradients (shard_elements
  // f32 values). Between the optimizer's update and all_gather_parameters(), the place for this
  // rank's new weights of that shard.
  Tensor shard(int64_t index) const;
  // Every rank's shards of new weights, gathered into every rank's parameters (cast to their dtype).
  void all_gather_parameters();
  // What the last finish() waited for after backward had ended: the part of the communication
  // that did not overlap (seconds).
  double last_exposed_seconds() const { return last_exposed_seconds_; }

 private:
  struct Bucket {
    BucketLayout layout;
    Tensor flat;                 // f32, world_size * shard_elements, on the parameters' device (stage 2: while in use)
    Tensor shard;                // ZeRO: shard_elements f32
    int64_t ready = 0;           // members whose gradient is in `flat`
    std::shared_ptr<Work> work;  // in flight
  };
  struct Slot {
    int64_t bucket = 0;
    int64_t member = 0;
    bool ready = false;
  };

  Tensor& flat_of(Bucket& bucket);

  void on_gradient(int64_t index, const Tensor& grad);
  void launch_ready_buckets();
  void launch(Bucket& bucket);

  std::shared_ptr<Communicator> communicator_;
  int zero_stage_ = 0;
  std::vector<nn::NamedTensor> parameters_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  int64_t next_to_launch_ = 0;
  bool armed_ = false;
  // Hooks stay on the parameters after this object is gone (autograd has no removal); they hold
  // this flag and do nothing once it is false.
  std::shared_ptr<bool> alive_;
  double last_exposed_seconds_ = 0;
  int64_t exchanges_ = 0;
};

}  // namespace lamina::dist
