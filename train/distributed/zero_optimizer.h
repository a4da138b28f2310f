// AdamW sharded across the ranks (ZeRO stages 1 and 2, train/distributed/data_parallel.h): each
// rank keeps the moments, and an f32 copy of the weights, only for the elements of its shard of
// every bucket, so the optimizer's memory per rank is 1/world_size of AdamW's.
//
// A rank's shard of a bucket cuts across parameters; the pieces it holds are 1-D runs of
// elements of one parameter each, named "<parameter>[<begin>:<end>]" (flattened element
// indices), with their weight-decay rule taken from the whole parameter. A step: the summed
// gradients of the shard (DataParallel::finish) become the pieces' gradients; the global
// gradient norm is the square root of the ranks' summed squares; AdamW updates the pieces; the
// new weights go into the shard and DataParallel::all_gather_parameters() hands every rank
// every shard. With f32 parameters this is AdamW's arithmetic on the same numbers, element for
// element; with bf16 parameters the pieces are the f32 master weights.
//
// Checkpoints: every rank writes its pieces' state (exp_avg, exp_avg_sq and the pieces' f32
// weights) to its own file in the checkpoint, optimizer.rank-R-of-N.safetensors (shard_file_name);
// consolidate_optimizer_shards() rebuilds the whole AdamW state of an unsharded run from them.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "train/distributed/data_parallel.h"
#include "train/optimizer.h"

namespace lamina::dist {

class ZeroOptimizer {
 public:
  ZeroOptimizer(DataParallel& data_parallel, train::AdamWOptions options);

  // Takes the step's summed gradients of this rank's shard (after DataParallel::finish()).
  void take_gradients();
  // The global norm of the step's gradients; scales this rank's share so that it is at most
  // `max_norm` (when positive), as train::clip_grad_norm does for the whole. Returns the norm
  // before clipping.
  double clip_grad_norm(double max_norm);
  // AdamW on this rank's pieces, then every rank's new weights into every rank's parameters.
  void step(double lr);
  void zero_grad();

  int64_t steps() const { return optimizer_.steps(); }
  int64_t shard_elements() const;  // the elements this rank's pieces hold
  json::Value state_json() const { return optimizer_.state_json(); }
  // This rank's file in a checkpoint folder.
  static std::string shard_file_name(int rank, int world_size);
  void save_shard(const std::string& checkpoint_directory) const;
  // Loads this rank's file of a checkpoint written by a run of the same world size, stage and
  // parameters (an Error naming the mismatch otherwise); `state` is trainer.json's "optimizer".
  void load_shard(const std::string& checkpoint_directory, const json::Value& state);

 private:
  struct Piece {
    int64_t parameter = 0;     // index into DataParallel::parameters()
    int64_t begin = 0;         // first element within the flattened parameter
    int64_t bucket = 0;        // the bucket whose shard holds it
    int64_t shard_offset = 0;  // first element within that shard
    std::string name;
    Tensor value;  // f32 [length]: the weights this rank updates
  };
  DataParallel& data_parallel_;
  std::vector<Piece> pieces_;
  train::AdamW optimizer_;

  static std::vector<Piece> make_pieces(const DataParallel& data_parallel);
  static std::vector<nn::NamedTensor> named_values(const std::vector<Piece>& pieces);
};

// The AdamW state of the unsharded run that a ZeRO checkpoint stands for: every parameter's
// "<name>.exp_avg" and "<name>.exp_avg_sq" (and "<name>.master" when the model's weights are
// bf16 or f16), rebuilt from the `world_size` shard files in `checkpoint_directory`. `parameters`
// gives the names and shapes, in the model's order. An Error names a missing file or a
// parameter whose elements the shards do not cover exactly once.
std::vector<nn::NamedTensor> consolidate_optimizer_shards(const std::string& checkpoint_directory, int world_size,
                                                          const std::vector<nn::NamedTensor>& parameters,
                                                          bool with_master);

}  // namespace lamina::dist
