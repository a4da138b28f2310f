#include "train/distributed/zero_optimizer.h"

#include <cmath>
#include <filesystem>
#include <map>

#include "autograd/autograd.h"
#include "models/io/safetensors.h"
#include "ops/ops.h"
#include "tensor/error.h"
#include "tensor/profiler.h"

namespace lamina::dist {
namespace fs = std::filesystem;

namespace {

std::string piece_name(const std::string& parameter, int64_t begin, int64_t end) {
  return str_cat(parameter, "[", begin, ":", end, "]");
}

// "<parameter>[<begin>:<end>]" split; false when `name` is not a piece's name.
bool parse_piece_name(const std::string& name, std::string& parameter, int64_t& begin, int64_t& end) {
  const size_t open = name.rfind('[');
  const size_t colon = name.rfind(':');
  if (open == std::string::npos || colon == std::string::npos || colon < open || name.back() != ']') return false;
  try {
    size_t used = 0;
    const std::string first = name.substr(open + 1, colon - open - 1);
    const std::string last = name.substr(colon + 1, name.size() - colon - 2);
    begin = std::stoll(first, &used);
    if (used != first.size()) return false;
    end = std::stoll(last, &used);
    if (used != last.size()) return false;
  } catch (const std::exception&) {
    return false;
  }
  parameter = name.substr(0, open);
  return begin >= 0 && end > begin;
}

}  // namespace

std::vector<ZeroOptimizer::Piece> ZeroOptimizer::make_pieces(const DataParallel& data_parallel) {
  autograd::NoGradGuard no_grad;
  const std::vector<nn::NamedTensor>& parameters = data_parallel.parameters();
  const std::vector<DataParallel::BucketLayout> layout = data_parallel.layout();
  const int64_t rank = data_parallel.rank();
  std::vector<Piece> pieces;
  for (size_t b = 0; b < layout.size(); ++b) {
    const DataParallel::BucketLayout& bucket = layout[b];
    const int64_t low = rank * bucket.shard_elements;
    const int64_t high = std::min(bucket.elements, low + bucket.shard_elements);
    for (size_t m = 0; m < bucket.members.size(); ++m) {
      const auto& [name, parameter] = parameters[size_t(bucket.members[m])];
      const int64_t first = std::max(low, bucket.offsets[m]);
      const int64_t last = std::min(high, bucket.offsets[m] + parameter.numel());
      if (first >= last) continue;
      Piece piece;
      piece.parameter = bucket.members[m];
      piece.begin = first - bucket.offsets[m];
      piece.bucket = int64_t(b);
      piece.shard_offset = first - low;
      piece.name = piece_name(name, piece.begin, piece.begin + (last - first));
      piece.value = ops::cast(parameter.reshape({parameter.numel()}).narrow(0, piece.begin, last - first), DType::f32);
      piece.value.set_requires_grad(true);
      pieces.push_back(std::move(piece));
    }
  }
  return pieces;
}

std::vector<nn::NamedTensor> ZeroOptimizer::named_values(const std::vector<Piece>& pieces) {
  std::vector<nn::NamedTensor> out;
  for (const Piece& piece : pieces) out.emplace_back(piece.name, piece.value);
  return out;
}

ZeroOptimizer::ZeroOptimizer(DataParallel& data_parallel, train::AdamWOptions options)
    : data_parallel_(data_parallel),
      pieces_(make_pieces(data_parallel)),
      optimizer_(named_values(pieces_), [&] {
        // A piece decays as its whole parameter does (matrices yes, norms and biases no).
        std::map<std::string, bool> decays;
        const auto rule = options.decays ? options.decays : train::decays_by_default;
        for (const Piece& piece : pieces_) {
          const auto& [name, parameter] = data_parallel.parameters()[size_t(piece.parameter)];
          decays[piece.name] = rule(name, parameter);
        }
        options.decays = [decays](const std::string& name, const Tensor&) { return decays.at(name); };
        return options;
      }()) {
  LAMINA_CHECK(data_parallel.zero_stage() >= 1, "ZeRO optimizer: the data parallelism is not sharded (stage 0)");
}

int64_t ZeroOptimizer::shard_elements() const {
  int64_t total = 0;
  for (const Piece& piece : pieces_) total += piece.value.numel();
  return total;
}

void ZeroOptimizer::take_gradients() {
  for (const Piece& piece : pieces_)
    piece.value.set_grad(data_parallel_.shard(piece.bucket).narrow(0, piece.shard_offset, piece.value.numel()));
}

double ZeroOptimizer::clip_grad_norm(double max_norm) {
  autograd::NoGradGuard no_grad;
  const profiler::Scope scope("optimizer:clip_grad_norm");
  double squares = 0;
  for (const Piece& piece : pieces_) {
    const Tensor grad = piece.value.grad();
    if (grad.defined()) squares += ops::sum(ops::unary(ops::UnaryOp::square, grad)).item<double>();
  }
  const double norm = std::sqrt(data_parallel_.communicator().all_reduce_sum(squares));
  if (max_norm > 0 && norm > max_norm && std::isfinite(norm)) {
    const double scale = max_norm / (norm + 1e-6);
    for (const Piece& piece : pieces_)
      if (piece.value.grad().defined()) ops::mul_(piece.value.grad(), scale);
  }
  return norm;
}

void ZeroOptimizer::step(double lr) {
  optimizer_.step(lr);
  {
    autograd::NoGradGuard no_grad;
    for (const Piece& piece : pieces_)
      ops::copy_(data_parallel_.shard(piece.bucket).narrow(0, piece.shard_offset, piece.value.numel()), piece.value);
  }
  data_parallel_.all_gather_parameters();
}

void ZeroOptimizer::zero_grad() { optimizer_.zero_grad(); }

std::string ZeroOptimizer::shard_file_name(int rank, int world_size) {
  return str_cat("optimizer.rank-", rank, "-of-", world_size, ".safetensors");
}

void ZeroOptimizer::save_shard(const std::string& checkpoint_directory) const {
  std::vector<nn::NamedTensor> tensors = optimizer_.state_tensors();
  for (const Piece& piece : pieces_) tensors.emplace_back(piece.name, piece.value);
  const std::string path =
      (fs::path(checkpoint_directory) / shard_file_name(data_parallel_.rank(), data_parallel_.world_size())).string();
  safetensors::save(path, tensors);  // written under a temporary name and renamed
}

void ZeroOptimizer::load_shard(const std::string& checkpoint_directory, const json::Value& state) {
  const std::string path =
      (fs::path(checkpoint_directory) / shard_file_name(data_parallel_.rank(), data_parallel_.world_size())).string();
  LAMINA_CHECK(fs::exists(path), "checkpoint ", checkpoint_directory, " has no ", fs::path(path).filename().string(),
               ": it was not written by a ZeRO run of ", data_parallel_.world_size(), " ranks");
  const safetensors::File file = safetensors::File::open(path);
  std::vector<nn::NamedTensor> tensors;
  for (const safetensors::TensorInfo& info : file.tensors()) tensors.emplace_back(info.name, file.read(info.name));
  optimizer_.load_state(state, tensors);
  autograd::NoGradGuard no_grad;
  for (const Piece& piece : pieces_) {
    const safetensors::TensorInfo* info = file.find(piece.name);
    LAMINA_CHECK(info != nullptr, path, ": no weights for ", piece.name, " (a different model, bucket size or world size)");
    ops::copy_(piece.value, ops::to_device(file.read(piece.name), piece.value.device()));
  }
}

std::vector<nn::NamedTensor> consolidate_optimizer_shards(const std::string& checkpoint_directory, int world_size,
                                                          const std::vector<nn::NamedTensor>& parameters,
                                                          bool with_master) {
  autograd::NoGradGuard no_grad;
  struct Whole {
    Tensor exp_avg, exp_avg_sq, master;
    int64_t covered = 0;
  };
  std::map<std::string, Whole> wholes;
  for (const auto& [name, parameter] : parameters) {
    Whole& whole = wholes[name];
    whole.exp_avg = zeros({parameter.numel()}, DType::f32);
    whole.exp_avg_sq = zeros({parameter.numel()}, DType::f32);
    if (with_master) whole.master = zeros({parameter.numel()}, DType::f32);
  }
  for (int rank = 0; rank < world_size; ++rank) {
    const std::string path = (fs::path(checkpoint_directory) / ZeroOptimizer::shard_file_name(rank, world_size)).string();
    LAMINA_CHECK(fs::exists(path), "consolidate: ", checkpoint_directory, " has no ", fs::path(path).filename().string(),
                 " (rank ", rank, " of ", world_size, ")");
    const safetensors::File file = safetensors::File::open(path);
    for (const safetensors::TensorInfo& info : file.tensors()) {
      std::string parameter;
      int64_t begin = 0, end = 0;
      if (!parse_piece_name(info.name, parameter, begin, end)) continue;  // a moment: handled with its piece
      const auto found = wholes.find(parameter);
      LAMINA_CHECK(found != wholes.end(), path, ": piece ", info.name, " belongs to no parameter of the model");
      Whole& whole = found->second;
      LAMINA_CHECK(end <= whole.exp_avg.numel(), path, ": piece ", info.name, " reaches past its parameter's ",
                   whole.exp_avg.numel(), " elements");
      const auto place = [&](const Tensor& into, const std::string& key) {
        const safetensors::TensorInfo* saved = file.find(key);
        LAMINA_CHECK(saved != nullptr, path, ": no ", key);
        const Tensor value = file.read(key);
        LAMINA_CHECK(value.numel() == end - begin, path, ": ", key, " has ", value.numel(), " elements, not ", end - begin);
        ops::copy_(into.narrow(0, begin, end - begin), value.reshape({end - begin}));
      };
      place(whole.exp_avg, info.name + ".exp_avg");
      place(whole.exp_avg_sq, info.name + ".exp_avg_sq");
      if (with_master) place(whole.master, info.name);
      whole.covered += end - begin;
    }
  }
  std::vector<nn::NamedTensor> out;
  for (const auto& [name, parameter] : parameters) {
    const Whole& whole = wholes.at(name);
    LAMINA_CHECK(whole.covered == parameter.numel(), "consolidate: the shards of ", checkpoint_directory, " hold ",
                 whole.covered, " of the ", parameter.numel(), " elements of ", name);
    out.emplace_back(name + ".exp_avg", whole.exp_avg.view(parameter.shape()));
    out.emplace_back(name + ".exp_avg_sq", whole.exp_avg_sq.view(parameter.shape()));
    if (with_master) out.emplace_back(name + ".master", whole.master.view(parameter.shape()));
  }
  return out;
}

}  // namespace lamina::dist
