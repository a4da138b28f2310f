#include "train/data.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include "tensor/io/atomic_file.h"
#include "tensor/io/regular_file.h"
#include "tensor/rng.h"

namespace lamina::train {
namespace {

constexpr int64_t kIgnore = -100;
constexpr char kShardMagic[8] = {'L', 'M', 'T', 'O', 'K', 'E', 'N', 'S'};

// A permutation of [0, n) from Philox words (Fisher-Yates), the same on every platform.
std::vector<size_t> permutation(size_t n, uint64_t seed, uint64_t stream) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  for (size_t i = n; i > 1; --i) {
    const uint64_t word = (uint64_t(philox_word(seed, stream << 32, 2 * i)) << 32) | philox_word(seed, stream << 32, 2 * i + 1);
    std::swap(order[i - 1], order[word % i]);
  }
  return order;
}

}  // namespace

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, int bytes_per_token) {
  LAMINA_CHECK(bytes_per_token == 2 || bytes_per_token == 4, "token shard: bytes per token must be 2 or 4");
  std::string bytes(kShardMagic, 8);
  for (uint32_t field : {uint32_t(bytes_per_token), 0u})
    for (int i = 0; i < 4; ++i) bytes += char((field >> (8 * i)) & 0xFF);
  for (int32_t token : tokens) {
    LAMINA_CHECK(token >= 0 && (bytes_per_token == 4 || token < 65536), "token shard: id ", token,
                 " does not fit in ", bytes_per_token, " bytes");
    for (int i = 0; i < bytes_per_token; ++i) bytes += char((uint32_t(token) >> (8 * i)) & 0xFF);
  }
  io::write_file_atomically(path, bytes);
}

bool starts_with_shard_header(const std::string& path) {
  const int descriptor = io::open_regular_file(path, "training data");
  char header[sizeof kShardMagic] = {};
  size_t got = 0;
  while (got < sizeof header) {
    const ssize_t read = ::read(descriptor, header + got, sizeof header - got);
    if (read < 0 && errno == EINTR) continue;
    if (read <= 0) break;
    got += size_t(read);
  }
  ::close(descriptor);
  return got == sizeof header && std::memcmp(header, kShardMagic, sizeof header) == 0;
}

std::vector<Example> parse_token_shard(std::string_view bytes, const std::string& name, int64_t max_tokens,
                                       int64_t vocab_size) {
  LAMINA_CHECK(max_tokens >= 2, "token shard: max_tokens must be >= 2, got ", max_tokens);
  LAMINA_CHECK(bytes.size() >= 16 && std::memcmp(bytes.data(), kShardMagic, 8) == 0, name,
               ": not a lamina token shard (no LMTOKENS header)");
  const auto u32_at = [&](size_t at, uint32_t width) {
    uint32_t value = 0;
    for (uint32_t i = 0; i < width; ++i) value |= uint32_t(uint8_t(bytes[at + i])) << (8 * i);
    return value;
  };
  const uint32_t width = u32_at(8, 4);
  LAMINA_CHECK(width == 2 || width == 4, name, ": unsupported token width ", width, " (expected 2 or 4 bytes)");
  LAMINA_CHECK((bytes.size() - 16) % width == 0, name, ": truncated (", bytes.size() - 16,
               " bytes of tokens is not a multiple of ", width, ")");
  const int64_t limit = vocab_size > 0 ? vocab_size : int64_t(std::numeric_limits<int32_t>::max()) + 1;
  // Pieces of max_tokens straight from the bytes (as chunk_examples would cut one example of
  // them all), so that the ids are held once.
  std::vector<Example> pieces;
  for (size_t at = 16; at < bytes.size(); at += width) {
    const uint32_t token = u32_at(at, width);
    LAMINA_CHECK(int64_t(token) < limit, name, ": token ", (at - 16) / width, " (byte ", at, ") is id ", token,
                 vocab_size > 0 ? str_cat(", outside the model's vocabulary of ", vocab_size) : std::string(" (too large)"));
    if (pieces.empty() || int64_t(pieces.back().ids.size()) == max_tokens) pieces.emplace_back();
    pieces.back().ids.push_back(int32_t(token));
  }
  if (!pieces.empty() && pieces.back().ids.size() < 2) pieces.pop_back();  // a lone token predicts nothing
  for (Example& piece : pieces) piece.loss_mask.assign(piece.ids.size(), 1);
  return pieces;
}

std::vector<Example> read_token_shard(const std::string& path, int64_t max_tokens, int64_t vocab_size) {
  io::check_regular_file(path, "token shard");  // a FIFO would block the read forever
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  LAMINA_CHECK(!in.bad(), "error reading ", path);
  return parse_token_shard(bytes, path, max_tokens, vocab_size);
}

std::vector<Example> chunk_examples(std::vector<Example> examples, int64_t max_tokens) {
  LAMINA_CHECK(max_tokens >= 2, "chunk_examples: max_tokens must be >= 2, got ", max_tokens);
  std::vector<Example> out;
  for (Example& example : examples) {
    if (int64_t(example.ids.size()) <= max_tokens) {
      out.push_back(std::move(example));
      continue;
    }
    for (size_t start = 0; start < example.ids.size(); start += size_t(max_tokens)) {
      const size_t end = std::min(example.ids.size(), start + size_t(max_tokens));
      if (end - start < 2) break;  // a lone token predicts nothing
      Example piece;
      piece.ids.assign(example.ids.begin() + long(start), example.ids.begin() + long(end));
      piece.loss_mask.assign(example.loss_mask.begin() + long(start), example.loss_mask.begin() + long(end));
      out.push_back(std::move(piece));
    }
  }
  return out;
}

std::string FitStats::summary() const {
  if (too_long == 0) return "";
  std::vector<std::string> parts;
  if (chunked > 0) parts.push_back(str_cat(chunked, " plain-text cut into ", pieces, " pieces"));
  if (truncated > 0)
    parts.push_back(str_cat(truncated, " truncated keeping the prompt (", targets_truncated, " target tokens cut off)"));
  if (dropped > 0) parts.push_back(str_cat(dropped, " dropped (the prompt alone exceeds the limit)"));
  std::string text = str_cat(too_long, too_long == 1 ? " example" : " examples", " longer than ", max_tokens, " tokens: ");
  for (size_t i = 0; i < parts.size(); ++i) text += (i == 0 ? "" : ", ") + parts[i];
  return text;
}

std::vector<Example> fit_examples(std::vector<Example> examples, int64_t max_tokens, FitStats* stats) {
  LAMINA_CHECK(max_tokens >= 2, "fit_examples: max_tokens must be >= 2, got ", max_tokens);
  FitStats local;
  FitStats& counts = stats != nullptr ? *stats : local;
  counts.max_tokens = max_tokens;
  std::vector<Example> out;
  out.reserve(examples.size());
  for (Example& example : examples) {
    LAMINA_CHECK(example.ids.size() == example.loss_mask.size(), "fit_examples: an example's mask does not match its ids");
    if (int64_t(example.ids.size()) <= max_tokens) {
      out.push_back(std::move(example));
      continue;
    }
    ++counts.too_long;
    const bool plain_text = std::all_of(example.loss_mask.begin() + 1, example.loss_mask.end(), [](uint8_t m) { return m != 0; });
    if (plain_text) {
      std::vector<Example> pieces = chunk_examples({std::move(example)}, max_tokens);
      ++counts.chunked;
      counts.pieces += int64_t(pieces.size());
      for (Example& piece : pieces) out.push_back(std::move(piece));
      continue;
    }
    const int64_t targets = target_count(example);
    example.ids.resize(size_t(max_tokens));
    example.loss_mask.resize(size_t(max_tokens));
    const int64_t kept = target_count(example);
    if (kept == 0) {
      ++counts.dropped;
      continue;
    }
    ++counts.truncated;
    counts.targets_truncated += targets - kept;
    out.push_back(std::move(example));
  }
  return out;
}

std::vector<Example> split_validation(std::vector<Example>& examples, double fraction, uint64_t seed) {
  LAMINA_CHECK(fraction >= 0 && fraction < 1, "validation fraction must be in [0, 1), got ", fraction);
  std::vector<Example> validation;
  if (fraction == 0 || examples.size() < 2) return validation;
  const size_t count = std::max<size_t>(1, size_t(double(examples.size()) * fraction));
  const std::vector<size_t> order = permutation(examples.size(), seed, 0xFFFF);
  std::vector<bool> chosen(examples.size(), false);
  for (size_t i = 0; i < count; ++i) chosen[order[i]] = true;
  std::vector<Example> kept;
  for (size_t i = 0; i < examples.size(); ++i) (chosen[i] ? validation : kept).push_back(std::move(examples[i]));
  examples = std::move(kept);
  return validation;
}

Batch make_batch(const std::vector<std::vector<const Example*>>& rows, int64_t seq_len, int32_t pad_id) {
  const int64_t batch = int64_t(rows.size());
  std::vector<int64_t> ids(size_t(batch * seq_len), pad_id), targets(size_t(batch * seq_len), kIgnore),
      positions(size_t(batch * seq_len), 0);
  std::vector<int64_t> document(size_t(batch * seq_len), -1);
  bool packed = false;
  Batch out;
  for (int64_t r = 0; r < batch; ++r) {
    int64_t slot = 0;
    packed |= rows[size_t(r)].size() > 1;
    for (size_t e = 0; e < rows[size_t(r)].size(); ++e) {
      const Example& example = *rows[size_t(r)][e];
      // An example of n ids fills n - 1 slots: inputs ids[0..n-2], targets ids[1..n-1].
      const int64_t slots = int64_t(example.ids.size()) - 1;
      LAMINA_CHECK(slot + slots <= seq_len, "make_batch: row ", r, " overflows ", seq_len, " tokens");
      for (int64_t t = 0; t < slots; ++t) {
        const size_t at = size_t(r * seq_len + slot + t);
        ids[at] = example.ids[size_t(t)];
        if (example.loss_mask[size_t(t + 1)]) {
          targets[at] = example.ids[size_t(t + 1)];
          ++out.target_tokens;
        }
        positions[at] = t;
        document[at] = int64_t(e);
      }
      slot += slots;
    }
  }
  out.ids = Tensor::from_vector(ids, {batch, seq_len});
  out.targets = Tensor::from_vector(targets, {batch, seq_len});
  out.positions = Tensor::from_vector(positions, {batch, seq_len});
  // Each token sees only the tokens of its own example (and padding only padding).
  if (packed) out.document_ids = Tensor::from_vector(document, {batch, seq_len});
  return out;
}

DataLoader::DataLoader(std::vector<Example> examples, LoaderOptions options) : options_(options) {
  LAMINA_CHECK(options_.batch_size > 0 && options_.seq_len > 0, "DataLoader: batch_size and seq_len must be positive");
  // Cutting an example here would drop its targets without a word: the readers and
  // fit_examples decide that, and report it. An example of fewer than two ids predicts nothing.
  for (size_t i = 0; i < examples.size(); ++i) {
    Example& example = examples[i];
    LAMINA_CHECK(example.ids.size() == example.loss_mask.size(), "DataLoader: example ", i, " of ", examples.size(),
                 ": its mask does not match its ids");
    LAMINA_CHECK(int64_t(example.ids.size()) <= options_.seq_len + 1, "DataLoader: example ", i, " of ",
                 examples.size(), " has ", example.ids.size(), " tokens, more than a row holds (seq_len + 1 = ",
                 options_.seq_len + 1, "); fit_examples fits examples to rows first");
    if (example.ids.size() >= 2) examples_.push_back(std::move(example));
  }
  LAMINA_CHECK(!examples_.empty(), "DataLoader: no example has two or more tokens");
  start_epoch();
}

void DataLoader::start_epoch() {
  if (options_.shuffle) {
    order_ = permutation(examples_.size(), options_.seed, uint64_t(epoch_));
  } else {
    order_.resize(examples_.size());
    for (size_t i = 0; i < order_.size(); ++i) order_[i] = i;
  }
}

Batch DataLoader::next() {
  std::vector<std::vector<const Example*>> rows(size_t(options_.batch_size));
  for (auto& row : rows) {
    int64_t free_slots = options_.seq_len;
    while (true) {
      if (position_ == order_.size()) {
        ++epoch_;
        position_ = 0;
        start_epoch();
      }
      const Example* example = &examples_[order_[position_]];
      const int64_t slots = int64_t(example->ids.size()) - 1;
      if (!row.empty() && (!options_.pack || slots > free_slots)) break;
      row.push_back(example);
      free_slots -= slots;
      ++position_;
      if (!options_.pack) break;
    }
  }
  return make_batch(rows, options_.seq_len, options_.pad_id);
}

json::Value DataLoader::cursor() const {
  json::Value out = json::Object{};
  out.set("epoch", epoch_);
  out.set("position", int64_t(position_));
  return out;
}

void DataLoader::restore(const json::Value& cursor) {
  epoch_ = cursor.at("epoch").as_int64("data cursor: epoch");
  const int64_t position = cursor.at("position").as_int64("data cursor: position");
  LAMINA_CHECK(position >= 0 && size_t(position) <= examples_.size(), "data cursor: position ", position,
               " is outside the ", examples_.size(), " examples (is this the same data?)");
  start_epoch();
  position_ = size_t(position);
}

std::vector<Batch> DataLoader::all_batches() const {
  std::vector<Batch> batches;
  std::vector<std::vector<const Example*>> rows;
  std::vector<const Example*> row;
  int64_t free_slots = options_.seq_len;
  auto flush_row = [&] {
    if (!row.empty()) rows.push_back(row);
    row.clear();
    free_slots = options_.seq_len;
    if (int64_t(rows.size()) == options_.batch_size) {
      batches.push_back(make_batch(rows, options_.seq_len, options_.pad_id));
      rows.clear();
    }
  };
  for (const Example& example : examples_) {
    const int64_t slots = int64_t(example.ids.size()) - 1;
    if (!row.empty() && (!options_.pack || slots > free_slots)) flush_row();
    row.push_back(&example);
    free_slots -= slots;
  }
  flush_row();
  if (!rows.empty()) batches.push_back(make_batch(rows, options_.seq_len, options_.pad_id));
  return batches;
}

}  // namespace lamina::train
