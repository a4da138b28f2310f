// libFuzzer target for the tokenizer: arbitrary bytes in, and for each input
//   - split_words covers the input exactly and equals the backtracking reference splitter;
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

#include "models/tokenizer/chat.h"
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
