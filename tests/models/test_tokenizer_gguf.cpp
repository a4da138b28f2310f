// The tokenizer of a GGUF file, with the pre-tokenizer the file names: GPT-2's split pattern
// and SmolLM's (every digit a word, then GPT-2's pattern) checked on words written by hand
// from the pattern; a tiny GGUF vocabulary built byte by byte here (its own small writer,
// independent of the reader) for loading, roles, special tokens and errors; and, in the
// "real_model" suite, SmolLM2's own tokenizer against ids from Hugging Face `tokenizers`.
#include <fstream>
#include <functional>

#include "helpers.h"
#include "models/io/gguf.h"
#include "models/tokenizer/encode_stream.h"
#include "models/tokenizer/byte_level.h"
#include "models/tokenizer/pretokenize.h"
#include "models/tokenizer/tokenizer.h"
#include "real_model.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include "test_tokenizer_tiny.h"

using namespace lamina;
using tokenizer::PreTokenizer;
using tokenizer::split_words;
using testing::ScratchDir;

namespace {

using Words = std::vector<std::string_view>;

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The ids of `text` pushed to an EncodeStream `piece` bytes at a time, with small buffers so
// that long words take the stream's long-word path.
std::vector<int32_t> stream_ids(const tokenizer::Tokenizer& tok, std::string_view text, size_t piece,
                                const tokenizer::EncodeOptions& options = {}) {
  std::vector<int32_t> ids;
  tokenizer::EncodeStream stream(tok, options, [&](std::span<const int32_t> batch) { ids.insert(ids.end(), batch.begin(), batch.end()); },
                                 {.chunk_bytes = 16, .long_word_bytes = 64});
  for (size_t pos = 0; pos < text.size(); pos += piece) stream.push(text.substr(pos, piece));
  stream.finish();
  return ids;
}

}  // namespace

// ---- the splitters, against words worked out by hand from the patterns

TEST_CASE("GPT-2 split: contractions are case-sensitive and only at a word's start") {
  CHECK(split_words("they're we've I'll he'd it's I'm don't", PreTokenizer::gpt2) ==
        Words{"they", "'re", " we", "'ve", " I", "'ll", " he", "'d", " it", "'s", " I", "'m", " don", "'t"});
  // Upper case is no contraction: the apostrophe is a run of "other" and the letters a word.
  CHECK(split_words("IT'S 'Ll", PreTokenizer::gpt2) == Words{"IT", "'", "S", " '", "Ll"});
  // A space before an apostrophe takes it into an "other" run, so no contraction follows a space.
  CHECK(split_words(" 're", PreTokenizer::gpt2) == Words{" '", "re"});
  CHECK(split_words("'x 'r", PreTokenizer::gpt2) == Words{"'", "x", " '", "r"});
  // Llama-3's contractions ignore case: the same text splits differently there.
  CHECK(split_words("IT'S", PreTokenizer::llama3) == Words{"IT", "'S"});
}

TEST_CASE("GPT-2 split: spaces, trailing whitespace and punctuation runs") {
  CHECK(split_words("Hello world", PreTokenizer::gpt2) == Words{"Hello", " world"});
  // \s+(?!\S) leaves the last space for the word after it.
  CHECK(split_words("a   b", PreTokenizer::gpt2) == Words{"a", "  ", " b"});
  // At the end of the text nothing follows, so the whole run is one word.
  CHECK(split_words("a  ", PreTokenizer::gpt2) == Words{"a", "  "});
  CHECK(split_words("x  \n", PreTokenizer::gpt2) == Words{"x", "  \n"});
  // No newline rule (Llama-3 keeps "\n\n" whole): the run gives its last newline away, and a
  // newline is no prefix of a word, so it stands alone.
  CHECK(split_words("a\n\nb", PreTokenizer::gpt2) == Words{"a", "\n", "\n", "b"});
  CHECK(split_words("a\n\nb", PreTokenizer::llama3) == Words{"a", "\n\n", "b"});
  CHECK(split_words("a \nb", PreTokenizer::gpt2) == Words{"a", " ", "\n", "b"});
  // Only an ASCII space leads a word; a tab or NO-BREAK SPACE is whitespace of its own.
  CHECK(split_words("x \t!", PreTokenizer::gpt2) == Words{"x", " ", "\t", "!"});
  CHECK(split_words("a\u00A0b", PreTokenizer::gpt2) == Words{"a", "\u00A0", "b"});
  CHECK(split_words("Hi!!! ...? a+=b", PreTokenizer::gpt2) == Words{"Hi", "!!!", " ...?", " a", "+=", "b"});
  // Llama-3 would take the tab as a letter's prefix; GPT-2 does not.
  CHECK(split_words("\tif", PreTokenizer::gpt2) == Words{"\t", "if"});
  CHECK(split_words("\tif", PreTokenizer::llama3) == Words{"\tif"});
}

TEST_CASE("GPT-2 split: numbers in one run, letters and numbers of any script") {
  CHECK(split_words("abc 12345 x7", PreTokenizer::gpt2) == Words{"abc", " 12345", " x", "7"});
  CHECK(split_words("3.14", PreTokenizer::gpt2) == Words{"3", ".", "14"});
  CHECK(split_words("naïve Ünï 日本語", PreTokenizer::gpt2) == Words{"naïve", " Ünï", " 日本語"});
  // ٣٤ (Nd), ½ (No), Ⅻ (Nl) are all \p{N}; emoji are "other".
  CHECK(split_words("٣٤ ½Ⅻ 😀🎉!", PreTokenizer::gpt2) == Words{"٣٤", " ½Ⅻ", " 😀🎉!"});
}

TEST_CASE("SmolLM split: every number is a word, and the pieces between are split alone") {
  CHECK(split_words("12345", PreTokenizer::smollm) == Words{"1", "2", "3", "4", "5"});
  // The space before a number ends its piece, so it is a word of its own (not " 1").
  CHECK(split_words("abc 12345 x7", PreTokenizer::smollm) ==
        Words{"abc", " ", "1", "2", "3", "4", "5", " x", "7"});
  CHECK(split_words("3.14", PreTokenizer::smollm) == Words{"3", ".", "1", "4"});
  // Whitespace before a number is at the end of its piece: \s+(?!\S) takes the whole run.
  CHECK(split_words("a  1", PreTokenizer::smollm) == Words{"a", "  ", "1"});
  CHECK(split_words("a  1", PreTokenizer::gpt2) == Words{"a", " ", " 1"});
  CHECK(split_words("٣٤ ½Ⅻ", PreTokenizer::smollm) == Words{"٣", "٤", " ", "½", "Ⅻ"});
  // Without numbers it is GPT-2's split.
  CHECK(split_words("I'm here,  you're there\n\n", PreTokenizer::smollm) ==
        split_words("I'm here,  you're there\n\n", PreTokenizer::gpt2));
  CHECK(split_words("x1'm", PreTokenizer::smollm) == Words{"x", "1", "'m"});
}

TEST_CASE("every splitter covers its text exactly, invalid UTF-8 included") {
  const std::string text = "a\xFF\xC3 12\xE2\x82  \n'S 'll \xF0\x9F\x98\x80x";
  for (const PreTokenizer pre : {PreTokenizer::llama3, PreTokenizer::gpt2, PreTokenizer::smollm}) {
    std::string joined;
    for (const std::string_view word : split_words(text, pre)) {
      CHECK(!word.empty());
      joined += word;
    }
    CHECK(joined == text);
  }
}

TEST_CASE("tokenizer.ggml.pre names the splitter; an unknown name is an error listing the supported") {
  CHECK(tokenizer::pre_tokenizer_from_gguf_name("smollm", "f") == PreTokenizer::smollm);
  CHECK(tokenizer::pre_tokenizer_from_gguf_name("gpt2", "f") == PreTokenizer::gpt2);
  CHECK(tokenizer::pre_tokenizer_from_gguf_name("llama-bpe", "f") == PreTokenizer::llama3);
  const std::string message = error_of([] { tokenizer::pre_tokenizer_from_gguf_name("qwen2", "file: tokenizer.ggml.pre"); });
  CHECK(contains(message, "file: tokenizer.ggml.pre"));
  CHECK(contains(message, "\"qwen2\""));
  CHECK(contains(message, "\"smollm\""));
  CHECK(contains(message, "\"llama-bpe\""));
}

// ---- a tiny GGUF tokenizer

namespace {

// A minimal GGUF writer (little-endian, version 3, no tensors): metadata only.
class GgufMetadata {
 public:
  void string(const std::string& key, const std::string& value) { add(key, 8, text(value)); }
  void u32(const std::string& key, uint32_t value) { add(key, 4, bytes(value, 4)); }
  void boolean(const std::string& key, bool value) { add(key, 7, bytes(value ? 1 : 0, 1)); }
  void strings(const std::string& key, const std::vector<std::string>& values) {
    std::string body = bytes(8, 4) + bytes(values.size(), 8);
    for (const std::string& value : values) body += text(value);
    add(key, 9, body);
  }
  void i32s(const std::string& key, const std::vector<int32_t>& values) {
    std::string body = bytes(5, 4) + bytes(values.size(), 8);
    for (const int32_t value : values) body += bytes(uint32_t(value), 4);
    add(key, 9, body);
  }
  std::string file() const { return "GGUF" + bytes(3, 4) + bytes(0, 8) + bytes(count_, 8) + pairs_; }

 private:
  static std::string bytes(uint64_t value, int count) {
    std::string out;
    for (int i = 0; i < count; ++i) out += char((value >> (8 * i)) & 0xFF);
    return out;
  }
  static std::string text(const std::string& value) { return bytes(value.size(), 8) + value; }
  void add(const std::string& key, uint32_t type, const std::string& value) {
    pairs_ += text(key) + bytes(type, 4) + value;
    ++count_;
  }
  std::string pairs_;
  uint64_t count_ = 0;
};

// Ids: 0 "<|endoftext|>" (control), 1..256 the bytes 0..255, then the merged tokens below,
// then "<tool>" (user-defined), then "<|im_end|>" (control).
struct TinyGguf {
  std::string model = "gpt2";
  std::string pre = "smollm";
  std::vector<std::string> merges = {"Ġ t", "h e", "Ġt he", "1 2", "' S", "! !"};  // byte-level text
  bool with_types = true;
  bool add_bos = true;
  uint32_t bos = 0, eos = 260;
  bool drop_byte_4 = false;  // no token for the byte 0x04: an unused token in its place
};

constexpr int32_t kGtId = 257, kHeId = 258, kGtheId = 259, k12Id = 260, kQuoteSId = 261, kBangsId = 262, kToolId = 263,
                  kImEndId = 264;
int32_t byte_id(char byte) { return 1 + int32_t(uint8_t(byte)); }

std::string tiny_gguf_file(const TinyGguf& spec) {
  std::vector<std::string> tokens = {"<|endoftext|>"};
  std::vector<int32_t> types = {3};
  for (int b = 0; b < 256; ++b) {
    const bool dropped = spec.drop_byte_4 && b == 4;
    tokens.push_back(dropped ? "<unused>" : tokenizer::byte_level_encode(std::string(1, char(b))));
    types.push_back(dropped ? 5 : 1);
  }
  for (const char* merged : {"Ġt", "he", "Ġthe", "12", "'S", "!!"}) tokens.push_back(merged), types.push_back(1);
  tokens.push_back("<tool>"), types.push_back(4);
  tokens.push_back("<|im_end|>"), types.push_back(3);

  GgufMetadata metadata;
  metadata.string("general.architecture", "llama");
  metadata.string("tokenizer.ggml.model", spec.model);
  if (!spec.pre.empty()) metadata.string("tokenizer.ggml.pre", spec.pre);
  metadata.strings("tokenizer.ggml.tokens", tokens);
  if (spec.with_types) metadata.i32s("tokenizer.ggml.token_type", types);
  metadata.strings("tokenizer.ggml.merges", spec.merges);
  metadata.u32("tokenizer.ggml.bos_token_id", spec.bos);
  metadata.u32("tokenizer.ggml.eos_token_id", spec.eos);
  metadata.u32("tokenizer.ggml.padding_token_id", uint32_t(kImEndId));
  metadata.boolean("tokenizer.ggml.add_bos_token", spec.add_bos);
  return metadata.file();
}

tokenizer::Tokenizer load_tiny(const TinyGguf& spec, const ScratchDir& dir) {
  const std::string path = dir / "tiny.gguf";
  std::ofstream(path, std::ios::binary) << tiny_gguf_file(spec);
  return tokenizer::Tokenizer::from_gguf(gguf::File::open(path));
}

}  // namespace

TEST_CASE("gguf tokenizer: vocabulary, merges, roles and the named pre-tokenizer") {
  ScratchDir dir("tokenizer-gguf");
  const tokenizer::Tokenizer tok = load_tiny({}, dir);
  CHECK(tok.pre_tokenizer() == PreTokenizer::smollm);
  CHECK(tok.vocab_size() == 265);
  CHECK(tok.roles().bos == 0);
  CHECK(tok.roles().eos == k12Id);
  CHECK(tok.roles().pad == kImEndId);
  CHECK(!tok.roles().unk.has_value());
  CHECK(tok.roles().add_bos);
  CHECK(tok.bos_id() == 0);

  // BPE by the merges: " the" is one token, "the" is "t" + "he".
  CHECK(tok.encode(" the") == std::vector<int32_t>{kGtheId});
  CHECK(tok.encode("the") == std::vector<int32_t>{byte_id('t'), kHeId});
  // SmolLM: the digits of " 12" are words of their own, so the merge "1 2" never applies.
  CHECK(tok.encode(" 12") == std::vector<int32_t>{byte_id(' '), byte_id('1'), byte_id('2')});
  // Case-sensitive contractions: "'S" is two words, so the merge "' S" never applies either.
  CHECK(tok.encode("'S") == std::vector<int32_t>{byte_id('\''), byte_id('S')});
  CHECK(tok.encode("x", {.add_bos = true}) == std::vector<int32_t>{0, byte_id('x')});

  // Control tokens are special: matched only when asked, skipped on request. User-defined
  // tokens always match.
  CHECK(tok.is_special(0));
  CHECK(tok.is_special(kImEndId));
  CHECK(!tok.is_special(kToolId));
  CHECK(tok.encode("a<|im_end|>", {.parse_special = true}) == std::vector<int32_t>{byte_id('a'), kImEndId});
  CHECK(tok.encode("a<|im_end|>").size() > 2);
  CHECK(tok.encode("<tool>x") == std::vector<int32_t>{kToolId, byte_id('x')});
  const std::vector<int32_t> ids = {0, kGtheId, kImEndId, byte_id('\xFF')};
  CHECK(tok.decode(ids) == "<|endoftext|> the<|im_end|>\xFF");
  CHECK(tok.decode(ids, {.skip_special = true}) == " the\xFF");
}

TEST_CASE("gguf tokenizer: the file's tokenizer.ggml.pre changes the ids") {
  ScratchDir dir("tokenizer-gguf-pre");
  TinyGguf spec;
  spec.pre = "gpt2";
  const tokenizer::Tokenizer gpt2 = load_tiny(spec, dir);
  CHECK(gpt2.pre_tokenizer() == PreTokenizer::gpt2);
  CHECK(gpt2.encode(" 12") == std::vector<int32_t>{byte_id(' '), k12Id});  // " 12" is one word
  CHECK(gpt2.encode("'S") == std::vector<int32_t>{byte_id('\''), byte_id('S')});
  spec.pre = "llama-bpe";
  const tokenizer::Tokenizer llama = load_tiny(spec, dir);
  CHECK(llama.encode("'S") == std::vector<int32_t>{kQuoteSId});  // a contraction in any case
}

TEST_CASE("gguf tokenizer: a byte that is no token is left out of its word, as HF's BPE does") {
  // SmolLM2 has no token for 21 bytes (0x04, 0xFF, ...). HF drops them inside the word before
  // merging, so "!\x04!" is the token "!!"; the word boundary they make stays.
  ScratchDir dir("tokenizer-gguf-dropped");
  TinyGguf spec;
  spec.drop_byte_4 = true;
  const tokenizer::Tokenizer tok = load_tiny(spec, dir);
  CHECK(tok.vocab_size() == 265);
  CHECK(!tok.contains(265));
  CHECK(tok.encode("!\x04!") == std::vector<int32_t>{kBangsId});
  CHECK(tok.encode("\x04") == std::vector<int32_t>{});
  CHECK(tok.encode("a\x04" "b") == std::vector<int32_t>{byte_id('a'), byte_id('b')});
  CHECK(tok.encode("!!") == std::vector<int32_t>{kBangsId});
  // Long words take the linear-time path; the byte is dropped there too.
  const std::string long_word = std::string(300, '!') + "\x04" + std::string(300, '!');
  CHECK(tok.encode(long_word) == std::vector<int32_t>(300, kBangsId));
  // Streamed text gives the same ids, long words and dropped bytes included.
  for (const std::string& text : {long_word, std::string(500, '1') + " 12 x", std::string(400, ' ') + "1" + std::string(400, ' '),
                                  std::string(300, 'h') + "\x04" + std::string(300, 'e'), std::string(" the\x04!!\n\n12 'S"),
                                  std::string(400, '\n') + "x", std::string(300, ' ') + "\n" + std::string(300, ' ') + "x"}) {
    CAPTURE(text.size());
    const std::vector<int32_t> expected = tok.encode(text);
    CHECK(stream_ids(tok, text, 1) == expected);
    CHECK(stream_ids(tok, text, 7) == expected);
  }
  // Where every byte is a token nothing is dropped.
  CHECK(load_tiny({}, dir).encode("!\x04!") == std::vector<int32_t>{byte_id('!'), byte_id('\x04'), byte_id('!')});
}

TEST_CASE("gguf tokenizer: files it cannot read are clear errors") {
  ScratchDir dir("tokenizer-gguf-errors");
  const auto error = [&](const TinyGguf& spec) { return error_of([&] { load_tiny(spec, dir); }); };
  TinyGguf spec;
  spec.model = "llama";
  std::string message = error(spec);
  CHECK(contains(message, "tokenizer.ggml.model"));
  CHECK(contains(message, "\"llama\""));

  spec = {};
  spec.pre = "qwen2";
  message = error(spec);
  CHECK(contains(message, "tokenizer.ggml.pre"));
  CHECK(contains(message, "\"qwen2\""));
  CHECK(contains(message, "\"smollm\""));

  spec = {};
  spec.pre = "";
  CHECK(contains(error(spec), "tokenizer.ggml.pre: missing"));

  spec = {};
  spec.merges = {"Ġ t", "he"};
  CHECK(contains(error(spec), "tokenizer.ggml.merges[1]: expected \"left right\""));

  spec = {};
  spec.bos = 5000;
  CHECK(contains(error(spec), "tokenizer.ggml.bos_token_id: 5000 is not a token id"));

  // Without token types, the control tokens' text must be byte-level text like the rest;
  // "<|endoftext|>" is, so this loads, with no special tokens at all.
  spec = {};
  spec.with_types = false;
  const tokenizer::Tokenizer untyped = load_tiny(spec, dir);
  CHECK(!untyped.is_special(0));
}

TEST_CASE("tokenizer.json: GPT-2's ByteLevel and SmolLM's Digits + ByteLevel choose the same splitters") {
  json::Value root = testing::tiny_tokenizer_json();
  json::Value byte_level = json::Object{};
  byte_level.set("type", "ByteLevel");
  byte_level.set("add_prefix_space", false);
  byte_level.set("trim_offsets", true);
  byte_level.set("use_regex", true);
  json::Value digits = json::Object{};
  digits.set("type", "Digits");
  digits.set("individual_digits", true);
  json::Value sequence = json::Object{};
  sequence.set("type", "Sequence");
  sequence.set("pretokenizers", json::Array{digits, byte_level});

  root.set("pre_tokenizer", sequence);
  CHECK(tokenizer::Tokenizer::from_json(root).pre_tokenizer() == PreTokenizer::smollm);
  root.set("pre_tokenizer", byte_level);
  CHECK(tokenizer::Tokenizer::from_json(root).pre_tokenizer() == PreTokenizer::gpt2);
  CHECK(tokenizer::Tokenizer::from_json(testing::tiny_tokenizer_json()).pre_tokenizer() == PreTokenizer::llama3);

  // A GPT-2 style vocabulary may lack single bytes, which are then dropped from words as in a
  // GGUF file (Llama-3's must have all 256: test_tokenizer.cpp).
  {
    json::Value smollm = root;
    smollm.set("pre_tokenizer", sequence);
    json::Object& vocab = smollm.as_object()[5].second.as_object()[5].second.as_object();
    REQUIRE(vocab[size_t('!')].second.as_int64() == int64_t('!'));
    vocab.erase(vocab.begin() + '!');
    const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_json(smollm);
    CHECK(tok.encode("a!b") == std::vector<int32_t>{'a', 'b'});
    CHECK(tok.vocab_size() == 307);  // the last added token is 306; the placeholder (307) is no token
    CHECK(!tok.contains(307));
    CHECK(tok.encode("<|eot_id|>", {.parse_special = true}) == std::vector<int32_t>{304});
  }

  digits.set("individual_digits", false);
  sequence.set("pretokenizers", json::Array{digits, byte_level});
  root.set("pre_tokenizer", sequence);
  CHECK(contains(error_of([&] { tokenizer::Tokenizer::from_json(root); }), "only individual digits"));
  byte_level.set("add_prefix_space", true);
  root.set("pre_tokenizer", byte_level);
  CHECK(contains(error_of([&] { tokenizer::Tokenizer::from_json(root); }), "add_prefix_space: must be false"));
}

// ---- the real SmolLM2 tokenizer

// The fixture's ids come from Hugging Face `tokenizers` 0.23.3 (not part of the build), run on
// a tokenizer.json made from this GGUF file's own tokens and merges, with the pre-tokenizer
// Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]
// (SmolLM2's, as its HF tokenizer.json has it) and the 17 control tokens (ids 0..16) as special
// added tokens:
//
//   from tokenizers import Tokenizer
//   tok = Tokenizer.from_file("smol_tokenizer.json")
//   for text in texts: print(tok.encode(text, add_special_tokens=False).ids)
//
// HF matches special tokens in text by default, so lamina encodes with parse_special.
TEST_CASE("SmolLM2 GGUF tokenizer: ids equal those of HF tokenizers" * doctest::test_suite("real_model")) {
  const gguf::File file = gguf::File::open(testing::smollm2_gguf_path());
  const tokenizer::Tokenizer tok = tokenizer::Tokenizer::from_gguf(file);
  CHECK(tok.pre_tokenizer() == PreTokenizer::smollm);
  CHECK(tok.vocab_size() == 49152);
  CHECK(tok.roles().bos == 1);
  CHECK(tok.roles().eos == 2);
  CHECK(tok.roles().pad == 2);
  CHECK(tok.roles().unk == 0);
  CHECK(!tok.roles().add_bos);
  CHECK(tok.added_token_id("<|im_start|>") == 1);
  CHECK(tok.added_token_id("<|im_end|>") == 2);
  CHECK(tok.is_special(16));
  CHECK(!tok.is_special(17));

  const std::vector<std::pair<std::string, std::vector<int32_t>>> fixture = {
      {"Hello, world!", {19556, 28, 905, 17}},
      {"The quick brown fox jumps over the lazy dog.", {504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30}},
      {"def add(a, b):\n    return a + b\n", {1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198}},
      {"12345", {33, 34, 35, 36, 37}},
      {"pi is 3.14, e is 2.718", {9020, 314, 216, 35, 30, 33, 36, 28, 297, 314, 216, 34, 30, 39, 33, 40}},
      {"I'm sure they'll say it's fine; we've done what we'd promised. DON'T SHOUT",
       {57, 5248, 2090, 502, 3060, 1643, 357, 506, 4979, 43, 392, 3543, 2294, 732, 392, 6737, 13145, 30, 422, 2154, 23, 68,
        334, 21953}},
      {"multiple   spaces\n\n\nand newlines  \n\t tab", {30404, 256, 5600, 1116, 198, 397, 725, 5110, 256, 3354, 10147}},
      {"Café naïve résumé über", {51, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756, 5549, 137, 593}},
      {"日本語のテキストと中文",
       {23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 7365, 118, 28589, 29184}},
      {"emoji 😀🎉 done", {391, 33777, 40303, 218, 10813, 232, 227, 2294}},
      {"<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", {1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198}},
      {"  leading and trailing  ", {216, 2899, 284, 35079, 256}},
      {"x = [1, 22, 333]; // comment", {104, 446, 933, 33, 28, 216, 34, 34, 28, 216, 35, 35, 35, 26695, 13241, 5189}},
      {"Ünïcödé numbers: ٣٤٥ and ½ Ⅻ",
       {142, 246, 94, 25972, 83, 7466, 84, 2756, 2966, 42, 216, 164, 113, 164, 114, 164, 115, 284, 216, 16738, 216, 173, 223,
        121}},
      {"'s 'S 'll 'LL", {506, 637, 67, 637, 764, 637, 16421}},
      {"price: $1,000.50!!!", {17517, 42, 1885, 33, 28, 32, 32, 32, 30, 37, 32, 29646}},
  };
  for (const auto& [text, expected] : fixture) {
    CAPTURE(text);
    const std::vector<int32_t> ids = tok.encode(text, {.parse_special = true});
    CHECK(ids == expected);
    CHECK(tok.decode(ids) == text);
    CHECK(stream_ids(tok, text, 1, {.parse_special = true}) == expected);
  }
}
