#include "train/data.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include "tensor/io/atomic_file.h"
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

void append_text(const tokenizer::Tokenizer& tokenizer, std::string_view text, uint8_t mask, Example& example) {
  const size_t before = example.ids.size();
  tokenizer.encode_ordinary(text, example.ids);
  example.loss_mask.resize(example.ids.size(), mask);
  (void)before;
}

void append_token(int32_t id, uint8_t mask, Example& example) {
  example.ids.push_back(id);
  example.loss_mask.push_back(mask);
}

}  // namespace

DataFormat data_format_from_name(const std::string& name) {
  if (name == "auto") return DataFormat::auto_detect;
  if (name == "text") return DataFormat::text;
  if (name == "prompt-completion") return DataFormat::prompt_completion;
  if (name == "chat") return DataFormat::chat;
  throw Error(str_cat("unknown data format '", name, "' (expected auto, text, prompt-completion or chat)"));
}

Example example_from_json(const json::Value& record, const tokenizer::Tokenizer& tokenizer, const JsonlOptions& options) {
  LAMINA_CHECK(record.is_object(), "expected a JSON object, got ", json::type_name(record.type()));
  DataFormat format = options.format;
  if (format == DataFormat::auto_detect) {
    if (record.find("messages") != nullptr) {
      format = DataFormat::chat;
    } else if (record.find("prompt") != nullptr || record.find("completion") != nullptr) {
      format = DataFormat::prompt_completion;
    } else if (record.find("text") != nullptr) {
      format = DataFormat::text;
    } else {
      throw Error("expected a \"text\", \"prompt\"/\"completion\" or \"messages\" field");
    }
  }
  Example example;
  const std::optional<int32_t> bos = tokenizer.bos_id();
  const std::optional<int32_t> eos = tokenizer.added_token_id("<|end_of_text|>");
  switch (format) {
    case DataFormat::text:
      if (options.add_bos && bos) append_token(*bos, 0, example);
      append_text(tokenizer, record.at("text").as_string("\"text\""), 1, example);
      if (options.add_eos && eos) append_token(*eos, 1, example);
      break;
    case DataFormat::prompt_completion:
      if (options.add_bos && bos) append_token(*bos, 0, example);
      append_text(tokenizer, record.at("prompt").as_string("\"prompt\""), 0, example);
      append_text(tokenizer, record.at("completion").as_string("\"completion\""), 1, example);
      if (options.add_eos && eos) append_token(*eos, 1, example);
      break;
    case DataFormat::chat: {
      std::vector<tokenizer::Message> messages;
      for (const json::Value& message : record.at("messages").as_array("\"messages\""))
        messages.push_back({message.at("role").as_string("message role"), message.at("content").as_string("message content")});
      LAMINA_CHECK(!messages.empty(), "\"messages\" is empty");
      tokenizer::ChatOptions chat = options.chat;
      chat.add_generation_prompt = false;
      tokenizer::ChatTokens rendered = tokenizer::render_chat(tokenizer, messages, chat);
      example.ids = std::move(rendered.ids);
      example.loss_mask = std::move(rendered.assistant_mask);
      break;
    }
    case DataFormat::auto_detect: break;
  }
  return example;
}

std::vector<Example> read_jsonl(const std::string& path, const tokenizer::Tokenizer& tokenizer,
                                const JsonlOptions& options, JsonlStats* stats) {
  std::ifstream in(path);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  JsonlStats local;
  JsonlStats& counts = stats != nullptr ? *stats : local;
  std::vector<Example> examples;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    ++counts.lines;
    try {
      examples.push_back(example_from_json(json::parse(line, "line"), tokenizer, options));
      ++counts.examples;
    } catch (const Error& error) {
      const std::string message = str_cat(path, ":", line_number, ": ", error.what());
      if (!options.skip_malformed) throw Error(message);
      if (counts.skipped++ == 0) counts.first_skipped = message;
    }
  }
  LAMINA_CHECK(!in.bad(), "error reading ", path);
  return examples;
}

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

std::vector<Example> read_token_shard(const std::string& path, int64_t max_tokens) {
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "cannot open ", path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  LAMINA_CHECK(bytes.size() >= 16 && std::memcmp(bytes.data(), kShardMagic, 8) == 0, path,
               ": not a lamina token shard (no LMTOKENS header)");
  const uint32_t width = uint8_t(bytes[8]) | uint32_t(uint8_t(bytes[9])) << 8;
  LAMINA_CHECK(width == 2 || width == 4, path, ": unsupported token width ", width);
  LAMINA_CHECK((bytes.size() - 16) % width == 0, path, ": truncated (", bytes.size() - 16,
               " bytes of tokens is not a multiple of ", width, ")");
  Example all;
  for (size_t at = 16; at < bytes.size(); at += width) {
    uint32_t token = 0;
    for (uint32_t i = 0; i < width; ++i) token |= uint32_t(uint8_t(bytes[at + i])) << (8 * i);
    LAMINA_CHECK(token <= uint32_t(std::numeric_limits<int32_t>::max()), path, ": token id ", token, " too large");
    all.ids.push_back(int32_t(token));
  }
  all.loss_mask.assign(all.ids.size(), 1);
  return chunk_examples({std::move(all)}, max_tokens);
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
  if (packed) {
    // Each token sees only the tokens of its own example (and padding only padding).
    std::vector<float> mask(size_t(batch * seq_len * seq_len), 0.0f);
    for (int64_t r = 0; r < batch; ++r)
      for (int64_t q = 0; q < seq_len; ++q)
        for (int64_t k = 0; k <= q; ++k)
          if (document[size_t(r * seq_len + q)] != document[size_t(r * seq_len + k)])
            mask[size_t((r * seq_len + q) * seq_len + k)] = -std::numeric_limits<float>::infinity();
    out.mask = Tensor::from_vector(mask, {batch, 1, seq_len, seq_len});
  }
  return out;
}

DataLoader::DataLoader(std::vector<Example> examples, LoaderOptions options) : options_(options) {
  LAMINA_CHECK(options_.batch_size > 0 && options_.seq_len > 0, "DataLoader: batch_size and seq_len must be positive");
  for (Example& example : examples) {
    LAMINA_CHECK(example.ids.size() == example.loss_mask.size(), "DataLoader: an example's mask does not match its ids");
    if (example.ids.size() < 2) continue;  // nothing to predict
    if (int64_t(example.ids.size()) > options_.seq_len + 1) {  // keep the head; rows hold seq_len + 1 ids
      example.ids.resize(size_t(options_.seq_len + 1));
      example.loss_mask.resize(size_t(options_.seq_len + 1));
    }
    examples_.push_back(std::move(example));
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
