// libFuzzer target for the tokenizer: arbitrary bytes in, and for each input
//   - split_words covers the input exactly and equals the backtracking reference splitter;
//   - the short-word merge equals the merge loop on every short word and on windows of the input;
//   - the trie's prefix tokens are the valid tokens that begin the input at a few places;
//   - the long-word encoder equals the merge loop (its oracle) on every word and on the whole
//     input taken as one word, fed in pieces with certification forced often, and the
//     compatibility it remembers for neighbouring tokens equals merging them;
//   - encoding the input in pieces (EncodeStream) gives the ids of encoding it whole;
//   - decode(encode(bytes)) == bytes, with special tokens parsed and not;
//   - the stream decoder emits valid UTF-8 that adds up to the lossy decode;
//   - a chat rendered around the bytes decodes to its text rendering;
//   - the same bytes read as token ids decode or fail with lamina::Error, never crash.
// Uses the real Llama-3 tokenizer when the shared assets are there (or LAMINA_FUZZ_TOKENIZER
// names a tokenizer.json), else a tiny synthetic one.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "models/tokenizer/bpe_tables.h"
#include "models/tokenizer/chat.h"
#include "models/tokenizer/encode_stream.h"
#include "models/tokenizer/long_word.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/stream_decoder.h"
#include "models/tokenizer/tokenizer.h"
#include "models/tokenizer/unicode.h"
#include "models/test_tokenizer_reference.h"
#include "models/test_tokenizer_tiny.h"
#include "tensor/error.h"
#include "tensor/io/json.h"

namespace {

using lamina::tokenizer::Tokenizer;

#define FUZZ_CHECK(condition, what)                                           \
  do {                                                                        \
    if (!(condition)) {                                                       \
      std::fprintf(stderr, "fuzz_tokenizer: check failed: %s (%s)\n", what, #condition); \
      std::abort();                                                           \
    }                                                                         \
  } while (0)

const Tokenizer& fuzz_tokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = [] {
    std::string path;
    if (const char* from_env = std::getenv("LAMINA_FUZZ_TOKENIZER")) path = from_env;
    const std::filesystem::path asset = std::filesystem::path(LAMINA_ASSETS_DIR) / "llama3-tokenizer" / "tokenizer.json";
    if (path.empty() && std::filesystem::exists(asset)) path = asset.string();
    if (path.empty()) {
      std::fprintf(stderr, "fuzz_tokenizer: no tokenizer.json found; fuzzing a tiny synthetic tokenizer\n");
      return std::make_unique<Tokenizer>(lamina::testing::tiny_tokenizer());
    }
    std::fprintf(stderr, "fuzz_tokenizer: fuzzing %s\n", path.c_str());
    return std::make_unique<Tokenizer>(Tokenizer::load(path));
  }();
  return *tokenizer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lamina::tokenizer;
  const Tokenizer& tokenizer = fuzz_tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  // The pre-tokenizer against its oracle (quadratic at worst, hence the size bound).
  const std::vector<std::string_view> words = split_words(text);
  std::string joined;
  for (const std::string_view word : words) {
    FUZZ_CHECK(!word.empty(), "split_words made an empty word");
    joined += word;
  }
  FUZZ_CHECK(joined == text, "split_words lost or invented bytes");
  if (size <= 4096) FUZZ_CHECK(words == lamina::testing::reference_split_words(text), "split_words differs from the reference");

  // The short-word merge against the merge loop: every short word, and windows of the input.
  const lamina::tokenizer::BpeModel& bpe = tokenizer.bpe();
  const auto check_short_word = [&](std::string_view word) {
    if (word.size() < 2 || word.size() > kShortWordBytes) return;
    std::vector<int32_t> expected;
    bpe.merge_word(word, expected);
    ShortWordMerger::Result result;
    bpe.short_words()->merge(word, result);
    FUZZ_CHECK(std::vector<int32_t>(result.ids, result.ids + result.count) == expected, "the short-word merge differs from the merge loop");
    size_t offset = 0;
    for (int i = 0; i < result.count; ++i) {
      FUZZ_CHECK(bpe.vocab().bytes(result.ids[i]) == word.substr(offset, result.lengths[i]), "a short-word merge length is wrong");
      offset += result.lengths[i];
    }
  };
  for (const std::string_view word : words) check_short_word(word);
  for (size_t offset = 0; offset + 2 <= size; offset += 5) check_short_word(text.substr(offset, 2 + offset % (kShortWordBytes - 1)));

  // The trie against vocabulary lookups, at a few places.
  const BpeTables& tables = bpe.tables();
  for (size_t offset = 0; offset < size; offset += 1 + size / 8) {
    const std::string_view rest = text.substr(offset, tables.max_token_length());
    std::vector<BpeTables::PrefixToken> found(rest.size());
    found.resize(tables.prefix_tokens(rest, found.data()));
    size_t next = 0;
    for (size_t length = 1; length <= rest.size(); ++length) {
      const int32_t id = bpe.find(rest.substr(0, length));
      if (id < 0 || !tables.valid(id)) continue;
      FUZZ_CHECK(next < found.size() && found[next].token.id == id && found[next].length == length, "the trie misses a prefix token");
      ++next;
    }
    FUZZ_CHECK(next == found.size(), "the trie finds a prefix token the vocabulary does not");
  }

  // The long-word encoder against the merge loop. Pieces and certification intervals come from
  // the input's first bytes, so the fuzzer explores them too.
  const auto byte_at = [&](size_t i) { return i < size ? size_t(data[i]) : 0; };
  const size_t piece = 1 + byte_at(0) % 97;
  const LongWordOptions options{.certify_bytes = 1 + byte_at(1) % 300, .margin = 1 + byte_at(2) % 40};
  const auto check_long_word = [&](std::string_view word) {
    std::vector<int32_t> expected, whole, pieces;
    bpe.merge_word(word, expected);
    encode_long_word(tables, word, whole);
    FUZZ_CHECK(whole == expected, "the long-word encoder differs from the merge loop");
    LongWordEncoder encoder(tables, options);
    for (size_t offset = 0; offset < word.size(); offset += piece) encoder.append(word.substr(offset, piece), pieces);
    encoder.finish(pieces);
    FUZZ_CHECK(pieces == expected, "the long-word encoder fed in pieces differs from the merge loop");
    for (size_t i = 0; i + 1 < expected.size(); ++i) {  // asked twice: decided (or remembered), then remembered
      FUZZ_CHECK(tables.compatible(expected[i], expected[i + 1]) && tables.compatible(expected[i], expected[i + 1]),
                 "neighbouring tokens of the merge loop's result are not compatible");
    }
  };
  for (const std::string_view word : words) check_long_word(word);
  if (size > 0) check_long_word(text);

  // Encoding in pieces against encoding whole.
  for (const bool parse_special : {false, true}) {
    const EncodeOptions encode_options{.add_bos = parse_special, .parse_special = parse_special};
    std::vector<int32_t> streamed;
    EncodeStream stream(tokenizer, encode_options, [&](std::span<const int32_t> ids) { streamed.insert(streamed.end(), ids.begin(), ids.end()); },
                        {.chunk_bytes = piece, .long_word_bytes = 1 + options.certify_bytes});
    for (size_t offset = 0; offset < size; offset += piece) stream.push(text.substr(offset, piece));
    stream.finish();
    FUZZ_CHECK(streamed == tokenizer.encode(text, encode_options), "encoding in pieces differs from encoding whole");
  }

  // Round trips, then streaming.
  const std::vector<int32_t> ids = tokenizer.encode(text);
  FUZZ_CHECK(tokenizer.decode(ids) == text, "decode(encode(text)) != text");
  const std::vector<int32_t> parsed = tokenizer.encode(text, {.add_bos = true, .parse_special = true});
  FUZZ_CHECK(tokenizer.decode(std::span(parsed).subspan(1)) == text, "decode(encode(text, parse_special)) != text");
  StreamDecoder stream(tokenizer, {.skip_special = false});
  std::string streamed;
  for (const int32_t id : parsed) {
    const std::string piece = stream.push(id);
    FUZZ_CHECK(lamina::json::valid_utf8(piece), "the stream decoder emitted invalid UTF-8");
    streamed += piece;
  }
  streamed += stream.finish();
  FUZZ_CHECK(streamed == replace_invalid_utf8(tokenizer.decode(parsed)), "streamed text != lossy decode");

  // A chat around the bytes: the ids decode to the text rendering (content is never parsed).
  const std::vector<Message> dialog = {{"system", std::string(text.substr(0, size / 2))},
                                       {"user", std::string(text.substr(size / 2))},
                                       {"assistant", std::string(text)}};
  for (const ChatFormat format : {ChatFormat::llama3, ChatFormat::llama3_1}) {
    const ChatTokens chat = render_chat(tokenizer, dialog, {.format = format});
    FUZZ_CHECK(chat.assistant_mask.size() == chat.ids.size(), "the assistant mask has the wrong length");
    FUZZ_CHECK(tokenizer.decode(chat.ids) == render_chat_text(dialog, {.format = format}), "chat ids != chat text");
  }

  // The bytes as token ids: valid ones decode, others throw lamina::Error.
  std::vector<int32_t> raw_ids;
  for (size_t i = 0; i + 3 < size; i += 4) {
    int32_t id;
    std::memcpy(&id, data + i, 4);
    raw_ids.push_back(id % (tokenizer.vocab_size() + 16));  // mostly in range, some past the end or negative
  }
  try {
    const std::string decoded = tokenizer.decode(raw_ids, {.skip_special = true});
    StreamDecoder id_stream(tokenizer);
    std::string id_streamed;
    for (const int32_t id : raw_ids) id_streamed += id_stream.push(id);
    id_streamed += id_stream.finish();
    FUZZ_CHECK(id_streamed == replace_invalid_utf8(decoded), "streamed ids != lossy decode");
  } catch (const lamina::Error&) {
    bool any_invalid = false;
    for (const int32_t id : raw_ids) any_invalid = any_invalid || !tokenizer.contains(id);
    FUZZ_CHECK(any_invalid, "decode threw on valid ids");
  }
  return 0;
}
