// Vocabulary extension (see vocab.h): the tokenizer.json edit, the grown matrices, and the folder
// written from them.
#include "models/surgery/vocab.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "models/io/safetensors.h"
#include "models/llama/config.h"
#include "tensor/error.h"
#include "tensor/io/atomic_file.h"

namespace lamina::surgery {
namespace {

namespace fs = std::filesystem;

const char* const kResizedTensors[] = {"model.embed_tokens.weight", "lm_head.weight"};

// An added-token entry as transformers writes it: special tokens match raw text, the others
// after normalization (AddedToken's default, normalized = not special).
json::Value added_token_entry(const std::string& content, bool special, std::optional<int32_t> id) {
  json::Value entry = json::Object{};
  if (id) entry.set("id", json::Value(int64_t(*id)));
  entry.set("content", content);
  entry.set("single_word", false);
  entry.set("lstrip", false);
  entry.set("rstrip", false);
  entry.set("normalized", !special);
  entry.set("special", special);
  return entry;
}

}  // namespace

RowInit row_init_from_name(const std::string& name) {
  if (name == "mean") return RowInit::mean;
  if (name == "zeros") return RowInit::zeros;
  throw Error(str_cat("extend-vocab: --init is mean or zeros, got '", name, "'"));
}

json::Value add_tokens_to_tokenizer_json(const json::Value& tokenizer, const std::vector<std::string>& tokens,
                                         bool special, std::vector<int32_t>& ids, std::vector<std::string>& skipped,
                                         const std::string& source) {
  ids.clear();
  skipped.clear();
  json::Value out = tokenizer;
  const json::Value& model = tokenizer.at("model", source);
  const json::Value& vocab = model.at("vocab", source + ": model");
  // The model's own ids: a BPE or WordPiece vocabulary maps token -> id; a Unigram one is a list.
  std::set<std::string> existing;
  int64_t next_id = 0;
  if (vocab.is_object()) {
    for (const auto& [token, id] : vocab.as_object()) {
      existing.insert(token);
      next_id = std::max(next_id, id.as_int64(source + ": model.vocab[\"" + token + "\"]") + 1);
    }
  } else {
    const json::Array& pieces = vocab.as_array(source + ": model.vocab");
    for (const json::Value& piece : pieces)
      if (piece.is_array() && !piece.as_array().empty() && piece.as_array()[0].is_string())
        existing.insert(piece.as_array()[0].as_string());
    next_id = int64_t(pieces.size());
  }
  std::set<int64_t> used_by_added;
  const json::Value* present = tokenizer.find("added_tokens", source);
  json::Array added = present == nullptr || present->is_null() ? json::Array{} : present->as_array(source + ": added_tokens");
  for (size_t i = 0; i < added.size(); ++i) {
    const std::string what = str_cat(source, ": added_tokens[", i, "]");
    existing.insert(added[i].at("content", what).as_string(what + ".content"));
    used_by_added.insert(added[i].at("id", what).as_int64(what + ".id"));
  }
  std::set<std::string> given;
  for (const std::string& token : tokens) {
    LAMINA_CHECK(!token.empty(), "extend-vocab: an empty token cannot be added");
    LAMINA_CHECK(given.insert(token).second, "extend-vocab: token '", token, "' is given twice");
    if (existing.count(token)) {
      skipped.push_back(token);
      continue;
    }
    while (used_by_added.count(next_id)) ++next_id;
    LAMINA_CHECK(next_id <= INT32_MAX, "extend-vocab: token ids would pass 2^31 - 1");
    added.push_back(added_token_entry(token, special, int32_t(next_id)));
    ids.push_back(int32_t(next_id));
    used_by_added.insert(next_id);
    existing.insert(token);
  }
  out.set("added_tokens", std::move(added));
  return out;
}

Tensor grow_rows(const Tensor& matrix, int64_t rows, RowInit init, const std::vector<int64_t>& reinitialised) {
  LAMINA_CHECK(matrix.dim() == 2, "extend-vocab: expected a [vocab, hidden] matrix, got shape ", shape_str(matrix.shape()));
  const int64_t old_rows = matrix.size(0), width = matrix.size(1);
  LAMINA_CHECK(rows >= old_rows, "extend-vocab: cannot shrink ", old_rows, " rows to ", rows);
  const std::set<int64_t> replaced(reinitialised.begin(), reinitialised.end());
  for (const int64_t row : replaced) LAMINA_CHECK(row >= 0 && row < old_rows, "extend-vocab: row ", row, " is not an old row");
  const Tensor source = matrix.contiguous();
  const size_t row_bytes = size_t(width) * dtype_size(source.dtype());

  // The new rows' value, in f64 then rounded once to the matrix's dtype.
  std::vector<float> init_row(size_t(width), 0.0f);
  if (init == RowInit::mean) {
    // Widened a block of rows at a time, so that a large embedding is not copied whole to f64.
    constexpr int64_t kBlockRows = 1024;
    std::vector<double> sum(size_t(width), 0.0);
    int64_t counted = 0;
    for (int64_t first = 0; first < old_rows; first += kBlockRows) {
      const int64_t count = std::min(kBlockRows, old_rows - first);
      const Tensor block = source.narrow(0, first, count).to(DType::f64).contiguous();
      const double* data = block.data<double>();
      for (int64_t row = 0; row < count; ++row) {
        if (replaced.count(first + row)) continue;
        for (int64_t j = 0; j < width; ++j) sum[size_t(j)] += data[row * width + j];
        ++counted;
      }
    }
    LAMINA_CHECK(counted > 0, "extend-vocab: no old row to take the mean of");
    for (int64_t j = 0; j < width; ++j) init_row[size_t(j)] = float(sum[size_t(j)] / double(counted));
  }
  const Tensor init_value = Tensor::from_vector<float>(init_row, {1, width}).to(source.dtype()).contiguous();

  Tensor out = Tensor::empty({rows, width}, source.dtype());
  auto* destination = static_cast<unsigned char*>(out.raw_data());
  const auto* from = static_cast<const unsigned char*>(source.raw_data());
  if (old_rows > 0) std::memcpy(destination, from, size_t(old_rows) * row_bytes);
  for (int64_t row = 0; row < rows; ++row)
    if (row >= old_rows || replaced.count(row))
      std::memcpy(destination + size_t(row) * row_bytes, init_value.raw_data(), row_bytes);
  return out;
}

VocabularySummary extend_vocabulary(const std::string& model_directory, const std::string& out_directory,
                                    const std::vector<std::string>& tokens, const VocabularyOptions& options) {
  std::error_code error;
  LAMINA_CHECK(fs::is_directory(model_directory, error), "extend-vocab: model ", model_directory,
               " is not a folder (extend-vocab reads Hugging Face folders; `lamina convert` turns a GGUF file into one)");
  LAMINA_CHECK(options.pad_to_multiple >= 1, "extend-vocab: --pad-to-multiple must be at least 1, got ",
               options.pad_to_multiple);
  LAMINA_CHECK(!tokens.empty(), "extend-vocab: no token to add");
  const std::string config_path = (fs::path(model_directory) / "config.json").string();
  json::Value raw_config = json::parse_file(config_path);
  LAMINA_CHECK(raw_config.find("quantization_config", config_path) == nullptr, "extend-vocab: ", config_path,
               " describes a quantized checkpoint; extending the vocabulary needs full-precision weights");
  llama::LlamaConfig config = llama::LlamaConfig::from_json(raw_config, config_path);
  config.validate();
  const std::string tokenizer_path = (fs::path(model_directory) / "tokenizer.json").string();
  LAMINA_CHECK(fs::is_regular_file(tokenizer_path, error), "extend-vocab: ", model_directory, " has no tokenizer.json");

  VocabularySummary summary;
  summary.old_vocab_size = config.vocab_size;
  const json::Value tokenizer = add_tokens_to_tokenizer_json(json::parse_file(tokenizer_path), tokens, options.special,
                                                             summary.added_ids, summary.skipped, tokenizer_path);
  LAMINA_CHECK(!summary.added_ids.empty(), "extend-vocab: every token given is in ", tokenizer_path,
               " already: nothing to add");
  for (const std::string& token : tokens)
    if (std::find(summary.skipped.begin(), summary.skipped.end(), token) == summary.skipped.end())
      summary.added.push_back(token);
  int64_t end = config.vocab_size;
  std::vector<int64_t> reinitialised;  // padding rows past the tokenizer that new tokens take
  for (const int32_t id : summary.added_ids) {
    end = std::max(end, int64_t(id) + 1);
    if (id < config.vocab_size) reinitialised.push_back(id);
  }
  summary.new_vocab_size = (end + options.pad_to_multiple - 1) / options.pad_to_multiple * options.pad_to_multiple;

  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(model_directory);
  LAMINA_CHECK(checkpoint.contains(kResizedTensors[0]), "extend-vocab: ", model_directory, " has no ", kResizedTensors[0]);
  safetensors::NamedTensors tensors;
  for (const std::string& name : checkpoint.names()) {
    const Tensor value = checkpoint.read(name);
    LAMINA_CHECK(is_floating(value.dtype()), "extend-vocab: tensor '", name, "' is ", dtype_name(value.dtype()),
                 ", not a floating-point dtype (a quantized checkpoint?)");
    const bool resized = name == kResizedTensors[0] || name == kResizedTensors[1];
    if (resized) {
      LAMINA_CHECK(value.dim() == 2 && value.size(0) == config.vocab_size, "extend-vocab: ", name, " has shape ",
                   shape_str(value.shape()), " but config.json's vocab_size is ", config.vocab_size);
      summary.resized.push_back(name);
    }
    tensors.emplace_back(name, resized ? grow_rows(value, summary.new_vocab_size, options.init, reinitialised) : value);
  }
  safetensors::save_checkpoint(out_directory, tensors, options.max_shard_bytes);

  io::write_file_atomically((fs::path(out_directory) / "tokenizer.json").string(), tokenizer.dump(2) + "\n");
  // transformers reads added tokens from tokenizer_config.json too: list the new ones there.
  const std::string tokenizer_config_path = (fs::path(model_directory) / "tokenizer_config.json").string();
  if (fs::is_regular_file(tokenizer_config_path, error)) {
    json::Value tokenizer_config = json::parse_file(tokenizer_config_path);
    if (const json::Value* decoder = tokenizer_config.find("added_tokens_decoder", tokenizer_config_path)) {
      json::Value entries = *decoder;
      for (size_t i = 0; i < summary.added.size(); ++i)
        entries.set(std::to_string(summary.added_ids[i]), added_token_entry(summary.added[i], options.special, std::nullopt));
      tokenizer_config.set("added_tokens_decoder", std::move(entries));
    }
    io::write_file_atomically((fs::path(out_directory) / "tokenizer_config.json").string(),
                              tokenizer_config.dump(2) + "\n");
  }
  raw_config.set("vocab_size", json::Value(summary.new_vocab_size));
  io::write_file_atomically((fs::path(out_directory) / "config.json").string(), raw_config.dump(2) + "\n");
  return summary;
}

}  // namespace lamina::surgery
