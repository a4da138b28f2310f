// The Llama-3 tokenizer: BPE, added tokens, loading and its errors on tiny tokenizers built
// in code; exact ids against the reference and round trips on the real tokenizer.json (those
// cases are in the "assets" test suite, which ctest reports as skipped without ../shared/assets).
#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <thread>
#include <unordered_map>

#include "helpers.h"
#include "models/tokenizer/stream_decoder.h"
#include "models/tokenizer/tokenizer.h"
#include "models/tokenizer/unicode.h"
#include "test_tokenizer_fixtures.h"
#include "test_tokenizer_reference.h"

using namespace lamina;
using namespace lamina::tokenizer;
using Ids = std::vector<int32_t>;

namespace {

std::string random_bytes(std::mt19937& rng, size_t max_length) {
  std::uniform_int_distribution<size_t> length_dist(0, max_length);
  std::uniform_int_distribution<int> byte_dist(0, 255);
  std::string bytes(length_dist(rng), '\0');
  for (char& b : bytes) b = char(byte_dist(rng));
  return bytes;
}

// Text for round trips: every script and trap the issue lists, plus invalid UTF-8.
const std::vector<std::string>& round_trip_corpus() {
  static const std::vector<std::string> corpus = {
      "",
      "Hello world",
      "   leading, trailing and    inner    runs of spaces   ",
      "\t\ttabs\tand\nnewlines\n\n\nand\r\nCRLF\r\n\r\n",
      "\n",
      " \n \n\t \u3000\u00a0 ",
      "0 12 345 6789 1234567890123 3.14159 -42 1e10 0x1F",
      "it's, IT'S, they'll, THEY'LL, we've, I'd, you're, 's 'T 'LL 'sT 'Ll'RE",
      "\u4e2d\u6587\u5206\u8bcd\u6d4b\u8bd5\u3002\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\ud55c\uad6d\uc5b4",
      "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0436\u0438\u043a.",
      "\u1781\u17d2\u1798\u17c2\u179a \u1797\u17b6\u179f\u17b6 \u179f\u17bd\u179f\u17d2\u178f\u17b8",
      "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \u2764\ufe0f \U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd",
      "e\u0301 a\u0300\u0301\u0302 \u0928\u093f \u05e9\u05c1\u05b8 Z\u0351\u036b\u0343\u036a\u0302",
      "<|begin_of_text|><|eot_id|> not special unless parsed <|eot_id",
      "\xff\xfe\xfd invalid \x80\x81 bytes \xc3 \xe2\x82 \xed\xa0\x80 \xf0\x9f\x98 \xc0\xaf end\xf4",
      std::string("nul\0inside", 10),
      std::string(300, '!') + std::string(5000, ' ') + std::string(2000, 'x'),
  };
  return corpus;
}

}  // namespace

// ---- tiny tokenizers built in code: run everywhere

TEST_CASE("tokenizer: BPE applies merges by rank, leftmost first, after whole-word lookup") {
  const Tokenizer tokenizer = testing::tiny_tokenizer();
  const auto encode = [&](std::string_view text) { return tokenizer.encode(text); };
  CHECK(encode("abc") == Ids{258});  // whole word
  // "abcd": (b,c) has rank 0, (a,b) rank 1: a|bc|d, then (a,bc) rank 2: abc|d.
  CHECK(encode("abcd") == Ids{258, 'd'});
  CHECK(encode("aaa") == Ids{259, 'a'});       // equal ranks: the leftmost pair merges first
  CHECK(encode("aaaaa") == Ids{261, 'a'});     // a a a a a -> aa aa a -> aaaa a
  CHECK(encode("xyz") == Ids{260});            // a token no merge can build: found whole
  CHECK(encode(" wow") == Ids{263, 'w'});
  CHECK(encode("") == Ids{});

  testing::TinyTokenizerSpec swapped;
  std::swap(swapped.merges[0], swapped.merges[1]);  // now (a,b) outranks (b,c)
  CHECK(testing::tiny_tokenizer(swapped).encode("abcd") == Ids{256, 'c', 'd'});

  testing::TinyTokenizerSpec merges_only;
  merges_only.ignore_merges = false;
  const Tokenizer without_lookup = testing::tiny_tokenizer(merges_only);
  CHECK(without_lookup.encode("xyz") == Ids{'x', 'y', 'z'});
  CHECK(without_lookup.encode("abc") == Ids{258});
}

TEST_CASE("tokenizer: merges in the \"a b\" and [\"a\", \"b\"] forms load the same") {
  testing::TinyTokenizerSpec pairs;
  pairs.pair_merges = true;
  const Tokenizer from_strings = testing::tiny_tokenizer(), from_pairs = testing::tiny_tokenizer(pairs);
  for (const char* text : {"abcd", "aaaaa", " wow abc bc", "xyzabc"}) CHECK(from_strings.encode(text) == from_pairs.encode(text));
  // A token containing a space can only be written in the pair form; its byte-level text has
  // no space either way ("\u0120"), so both forms round-trip.
  CHECK(from_pairs.encode(" w") == Ids{262});
}

TEST_CASE("tokenizer: added tokens split out first, special ones only when asked") {
  const Tokenizer tokenizer = testing::tiny_tokenizer();
  CHECK(tokenizer.vocab_size() == 307);
  CHECK(tokenizer.bos_id() == 300);
  CHECK(tokenizer.added_token_id("<|eot_id|>") == 304);
  CHECK_FALSE(tokenizer.added_token_id("<|nope|>").has_value());
  CHECK(tokenizer.is_special(304));
  CHECK_FALSE(tokenizer.is_special(306));
  CHECK_FALSE(tokenizer.is_special('a'));

  const Ids literal = tokenizer.encode("ab<|eot_id|>ab");
  CHECK(std::find(literal.begin(), literal.end(), 304) == literal.end());  // text, not a control token
  CHECK(tokenizer.decode(literal) == "ab<|eot_id|>ab");
  CHECK(tokenizer.encode("ab<|eot_id|>ab", {.parse_special = true}) == Ids{256, 304, 256});
  CHECK(tokenizer.encode("<|eot_id|><|eot_id|>", {.parse_special = true}) == Ids{304, 304});
  // Non-special added tokens always match.
  CHECK(tokenizer.encode("ab<tool>ab") == Ids{256, 306, 256});
  // BOS on request.
  CHECK(tokenizer.encode("ab", {.add_bos = true}) == Ids{300, 256});
  // No merge crosses an added token: "a" + "<tool>" + "bc" never forms "abc".
  CHECK(tokenizer.encode("a<tool>bc") == Ids{'a', 306, 257});

  // Leftmost-longest: with "<|" also an added (non-special) token, "<|eot_id|>" still wins
  // where special tokens are parsed, and "<|" matches where they are not.
  testing::TinyTokenizerSpec overlapping;
  overlapping.added.emplace_back("<|", 307, false);
  const Tokenizer with_prefix = testing::tiny_tokenizer(overlapping);
  CHECK(with_prefix.encode("x<|eot_id|>", {.parse_special = true}) == Ids{'x', 304});
  const Ids unparsed = with_prefix.encode("x<|eot_id|>");
  REQUIRE(unparsed.size() >= 2);
  CHECK(unparsed[1] == 307);
  CHECK(with_prefix.decode(unparsed) == "x<|eot_id|>");
}

TEST_CASE("tokenizer: decoding, special tokens shown or skipped") {
  const Tokenizer tokenizer = testing::tiny_tokenizer();
  const Ids ids = {300, 256, 306, 262, 304};
  CHECK(tokenizer.decode(ids) == "<|begin_of_text|>ab<tool> w<|eot_id|>");
  CHECK(tokenizer.decode(ids, {.skip_special = true}) == "ab<tool> w");  // non-special added tokens stay
  CHECK(tokenizer.token_bytes(262) == " w");
  CHECK_THROWS_WITH_AS(tokenizer.decode(Ids{1, 307}), doctest::Contains("token id 307 is not in the vocabulary"), Error);
  CHECK_THROWS_WITH_AS(tokenizer.decode(Ids{-1}), doctest::Contains("token id -1"), Error);
}

TEST_CASE("tokenizer: decode(encode(s)) == s for arbitrary bytes (tiny tokenizer)") {
  const Tokenizer tokenizer = testing::tiny_tokenizer();
  std::mt19937 rng(5);
  for (int i = 0; i < 2000; ++i) {
    const std::string bytes = random_bytes(rng, 64);
    CHECK(tokenizer.decode(tokenizer.encode(bytes)) == bytes);
  }
  for (const std::string& text : round_trip_corpus()) {
    CHECK(tokenizer.decode(tokenizer.encode(text)) == text);
    CHECK(tokenizer.decode(tokenizer.encode(text, {.parse_special = true})) == text);
  }
}

TEST_CASE("tokenizer: malformed tokenizer.json files are refused with the reason") {
  using testing::TinyTokenizerSpec;
  const auto load = [](const json::Value& root) { return Tokenizer::from_json(root, "bad.json"); };
  {
    json::Value root = testing::tiny_tokenizer_json();
    json::Value& split = root.as_object()[3].second.as_object()[1].second.as_array()[0];  // pre_tokenizer.pretokenizers[0]
    split.set("pattern", json::Value(json::Object{{"Regex", "'s|\\p{L}+"}}));
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("only Llama-3's split pattern is implemented"), Error);
  }
  {
    json::Value root = testing::tiny_tokenizer_json();
    root.set("normalizer", json::Value(json::Object{{"type", "NFC"}}));
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("normalizers are not supported"), Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.merges.push_back({"x", "q"});
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec), doctest::Contains("model.merges[7] (\"x q\") makes a token not in the vocabulary"),
                         Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.merges.push_back({"xyzw", "q"});
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec), doctest::Contains("uses a token not in the vocabulary"), Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.tokens.push_back({"dup", 256});
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec), doctest::Contains("id 256 is given to two vocabulary tokens"), Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.added.emplace_back("<x>", 256, true);
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec), doctest::Contains("has id 256, which is already \"ab\""), Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.added.emplace_back("<tool>", 400, true);
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec), doctest::Contains("\"<tool>\" appears twice"), Error);
  }
  {
    json::Value root = testing::tiny_tokenizer_json();
    root.as_object()[1].second.as_array()[0].set("lstrip", true);  // added_tokens[0]
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("lstrip is not supported"), Error);
  }
  {
    json::Value root = testing::tiny_tokenizer_json();
    json::Object& model = root.as_object()[5].second.as_object();
    model[5].second.as_object().erase(model[5].second.as_object().begin() + ' ');  // drop byte 0x20's token
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("lacks the single-byte token \u0120"), Error);
  }
  {
    json::Value root = testing::tiny_tokenizer_json();
    json::Object& model = root.as_object()[5].second.as_object();
    model[5].second.set("not byte-level", int64_t(999));
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("bad.json: model.vocab[\"not byte-level\"]: \"not byte-level\" is not written in the byte-level alphabet"),
                         Error);
  }
  {
    json::Value root = testing::tiny_tokenizer_json();
    json::Object& model = root.as_object()[5].second.as_object();
    model[6].second.as_array().push_back("a b c");
    CHECK_THROWS_WITH_AS(load(root), doctest::Contains("expected \"left right\", got \"a b c\""), Error);
  }
  {
    TinyTokenizerSpec spec;
    spec.added.erase(spec.added.begin());  // no <|begin_of_text|>
    CHECK_THROWS_WITH_AS(testing::tiny_tokenizer(spec).encode("x", {.add_bos = true}), doctest::Contains("no <|begin_of_text|>"), Error);
  }
  CHECK_THROWS_WITH_AS(Tokenizer::load("/nonexistent/dir/tokenizer.json"), doctest::Contains("not found"), Error);
  CHECK_THROWS_WITH_AS(Tokenizer::load("/"), doctest::Contains("the model directory has no tokenizer.json"), Error);
}

TEST_CASE("tokenizer: every loading error names the file and the field") {
  const auto message = [](const json::Value& root) -> std::string {
    try {
      Tokenizer::from_json(root, "tokenizer.json");
    } catch (const Error& error) {
      return error.what();
    }
    return "(loaded)";
  };
  // Edits of a good file, each with the start of the error it must give.
  struct Case {
    std::function<void(json::Value&)> edit;
    std::string expected;
  };
  const auto model = [](json::Value& root) -> json::Object& { return root.as_object()[5].second.as_object(); };
  const auto drop = [](json::Object& object, const std::string& key) {
    object.erase(std::find_if(object.begin(), object.end(), [&](const json::Member& m) { return m.first == key; }));
  };
  const std::vector<Case> cases = {
      {[&](json::Value& root) { drop(model(root), "merges"); }, "tokenizer.json: model.merges: missing"},
      {[&](json::Value& root) { drop(model(root), "vocab"); }, "tokenizer.json: model.vocab: missing"},
      {[&](json::Value& root) { drop(root.as_object(), "model"); }, "tokenizer.json: model: missing"},
      {[&](json::Value& root) { root.set("model", "BPE"); }, "tokenizer.json: model: expected an object, got \"BPE\""},
      {[&](json::Value& root) { model(root)[6].second = json::Object{}; }, "tokenizer.json: model.merges: expected an array, got object"},
      {[&](json::Value& root) { model(root)[6].second.as_array()[2] = int64_t(3); },
       "tokenizer.json: model.merges[2] (a merge: \"left right\" or [left, right]): expected an array, got number"},
      {[&](json::Value& root) { model(root)[6].second.as_array()[2] = json::Array{"a", int64_t(3)}; },
       "tokenizer.json: model.merges[2][1]: expected a string, got number"},
      {[&](json::Value& root) { model(root)[5].second.set("q", "x"); }, "tokenizer.json: model.vocab[\"q\"]: expected an integer, got string"},
      {[&](json::Value& root) { model(root)[5].second.set("q", int64_t(-4)); }, "tokenizer.json: model.vocab[\"q\"]: -4 is out of range"},
      {[&](json::Value& root) { model(root)[4].second = "yes"; }, "tokenizer.json: model.ignore_merges: expected a boolean, got string"},
      {[&](json::Value& root) { model(root)[3].second = true; }, "tokenizer.json: model.byte_fallback: must be false"},
      {[&](json::Value& root) { model(root)[0].second = "WordPiece"; }, "tokenizer.json: model.type: expected BPE, got \"WordPiece\""},
      {[&](json::Value& root) { drop(root.as_object()[1].second.as_array()[1].as_object(), "id"); },
       "tokenizer.json: added_tokens[1].id: missing"},
      {[&](json::Value& root) { root.as_object()[1].second.as_array()[2].set("content", int64_t(7)); },
       "tokenizer.json: added_tokens[2].content: expected a string, got number"},
      {[&](json::Value& root) { root.as_object()[1].second.as_array()[3].set("special", "no"); },
       "tokenizer.json: added_tokens[3].special: expected a boolean, got string"},
      {[&](json::Value& root) { root.as_object()[1].second.as_array()[0] = "<x>"; },
       "tokenizer.json: added_tokens[0]: expected an object, got \"<x>\""},
      {[&](json::Value& root) { root.set("added_tokens", int64_t(1)); }, "tokenizer.json: added_tokens: expected an array, got number"},
      {[&](json::Value& root) { root.set("decoder", json::Object{}); }, "tokenizer.json: decoder.type: missing"},
      {[&](json::Value& root) { drop(root.as_object()[3].second.as_object(), "pretokenizers"); },
       "tokenizer.json: pre_tokenizer.pretokenizers: missing"},
      {[&](json::Value& root) { root.as_object()[3].second.as_object()[1].second.as_array()[0].set("behavior", "Removed"); },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].behavior: expected Isolated, got \"Removed\""},
      {[&](json::Value& root) { root.as_object()[3].second.as_object()[1].second.as_array()[1].set("use_regex", true); },
       "tokenizer.json: pre_tokenizer.pretokenizers[1].use_regex: must be false"},
  };
  for (const Case& c : cases) {
    json::Value root = testing::tiny_tokenizer_json();
    c.edit(root);
    const std::string got = message(root);
    INFO("expected: " << c.expected << "\ngot:      " << got);
    CHECK(got.rfind(c.expected, 0) == 0);
  }
}

TEST_CASE("stream decoder: never emits half a character; the pieces add up to the lossy decode") {
  // Tokens that split "\u00e9" (C3 A9) and an emoji (F0 9F 98 80) across several ids.
  const Tokenizer tokenizer = testing::tiny_tokenizer();
  StreamDecoder stream(tokenizer);
  CHECK(stream.push('a') == "a");
  CHECK(stream.push(0xC3) == "");
  CHECK(stream.pending_bytes() == 1);
  CHECK(stream.push(0xA9) == "\u00e9");
  CHECK(stream.push(0xF0) == "");
  CHECK(stream.push(0x9F) == "");
  CHECK(stream.push(0x98) == "");
  CHECK(stream.push(0x80) == "\U0001f600");
  CHECK(stream.push(304) == "");  // <|eot_id|> skipped by default
  CHECK(stream.push(0xE2) == "");
  CHECK(stream.push('x') == "\uFFFDx");  // E2 then 'x' can never complete
  CHECK(stream.push(0xF0) == "");
  CHECK(stream.finish() == "\uFFFD");  // ended inside a character
  CHECK(stream.pending_bytes() == 0);

  StreamDecoder showing(tokenizer, {.skip_special = false});
  CHECK(showing.push(0xC3) == "");
  CHECK(showing.push(304) == "\uFFFD<|eot_id|>");

  // Random id sequences: the streamed pieces are valid UTF-8 and concatenate to the lossy
  // decode of the whole sequence.
  std::mt19937 rng(11);
  std::uniform_int_distribution<int32_t> id_dist(0, tokenizer.vocab_size() - 1);
  for (int trial = 0; trial < 500; ++trial) {
    StreamDecoder decoder(tokenizer);
    Ids ids;
    std::string streamed;
    while (ids.size() < 40) {
      const int32_t id = id_dist(rng);
      if (!tokenizer.contains(id)) continue;  // the tiny vocabulary has gaps
      ids.push_back(id);
      const std::string piece = decoder.push(ids.back());
      CHECK(json::valid_utf8(piece));
      streamed += piece;
    }
    streamed += decoder.finish();
    CHECK(streamed == replace_invalid_utf8(tokenizer.decode(ids, {.skip_special = true})));
  }
}

// ---- the real Llama-3 tokenizer (the "assets" suite)

TEST_CASE("llama3 tokenizer: known encodings" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  CHECK(tokenizer.vocab_size() == 128256);
  CHECK(tokenizer.added_tokens().size() == 256);
  CHECK(tokenizer.encode("Hello world") == Ids{9906, 1917});
  CHECK(tokenizer.encode(" Hello world") == Ids{22691, 1917});
  CHECK(tokenizer.encode("This is a test sentence.") == Ids{2028, 374, 264, 1296, 11914, 13});
  Ids with_bos_eos = tokenizer.encode("This is a test sentence.", {.add_bos = true});
  with_bos_eos.push_back(tokenizer.require_added_token("<|end_of_text|>"));
  CHECK(with_bos_eos == Ids{128000, 2028, 374, 264, 1296, 11914, 13, 128001});
  CHECK(tokenizer.encode("user") == Ids{882});
  CHECK(tokenizer.encode("system") == Ids{9125});
  CHECK(tokenizer.encode("assistant") == Ids{78191});
  CHECK(tokenizer.encode("\n\n") == Ids{271});
  CHECK(tokenizer.encode(" Vi\u1ec7t") == Ids{101798});  // whole-word lookup; merges alone give 3 tokens
  // Single bytes sit at ids 0..255 in the bytes-to-unicode order.
  CHECK(tokenizer.encode("!") == Ids{0});
  CHECK(tokenizer.encode("\n") == Ids{198});
  CHECK(tokenizer.encode(" ") == Ids{220});
  CHECK(tokenizer.bos_id() == 128000);
  CHECK(tokenizer.added_token_id("<|eot_id|>") == 128009);
  CHECK(tokenizer.added_token_id("<|start_header_id|>") == 128006);
}

TEST_CASE("llama3 tokenizer: the ids of HF tokenizers on a varied corpus" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  struct Golden {
    std::string text;
    Ids ids;
  };
  // Produced once by Hugging Face `tokenizers` 0.23.3 from the same tokenizer.json, with
  // Tokenizer.encode(text, add_special_tokens=False).ids, which parses special-token text.
  const std::vector<Golden> goldens = {
    {"Hello world", {9906, 1917}},
    {" Hello world", {22691, 1917}},
    {"This is a test sentence.", {2028, 374, 264, 1296, 11914, 13}},
    {"The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!", {791, 4062, 14198, 39935, 35308, 927, 279, 16053, 5679, 13, 3247, 94112, 426, 75615, 45288, 0}},
    {"  leading spaces", {220, 6522, 12908}},
    {"trailing spaces   ", {376, 14612, 12908, 262}},
    {"a  b   c    d", {64, 220, 293, 256, 272, 262, 294}},
    {"tabs\tand\t\ttabs", {32093, 53577, 197, 3324, 3518}},
    {"line one\nline two\n\nline four\r\nwindows\r\n", {1074, 832, 198, 1074, 1403, 271, 1074, 3116, 319, 28176, 319}},
    {"x \n\n\t y", {87, 4815, 197, 379}},
    {"\n\n\n", {1432}},
    {"   \n   ", {5996, 262}},
    {"end\n", {408, 198}},
    {"1 12 123 1234 12345 1234567890", {16, 220, 717, 220, 4513, 220, 4513, 19, 220, 4513, 1774, 220, 4513, 10961, 16474, 15}},
    {" 12345678", {220, 4513, 10961, 2495}},
    {"3.14159, 2.71828; 1e-10", {18, 13, 9335, 2946, 11, 220, 17, 13, 21982, 1591, 26, 220, 16, 68, 12, 605}},
    {"٣٤٥٦ ४५ ²½⑦ Ⅻ", {117413, 124079, 124043, 149, 99, 220, 121808, 115337, 220, 30556, 27154, 49412, 99, 220, 71567, 104}},
    {"I'm here, you're there, we've gone, he'll see, she'd know, it's done, don't", {40, 2846, 1618, 11, 499, 2351, 1070, 11, 584, 3077, 8208, 11, 568, 3358, 1518, 11, 1364, 4265, 1440, 11, 433, 596, 2884, 11, 1541, 956}},
    {"I'M HERE, YOU'RE, WE'VE, HE'LL, SHE'D, IT'S, DON'T", {40, 28703, 19804, 11, 15334, 95253, 11, 20255, 6, 4592, 11, 11947, 6, 4178, 11, 54695, 28805, 11, 8871, 13575, 11, 45373, 17773}},
    {"'s 'T 'LL 'Re 'vE 'M 'd", {596, 364, 51, 364, 4178, 364, 697, 364, 85, 36, 364, 44, 364, 67}},
    {"x'ſtuff", {87, 6, 129, 123, 83, 1386}},
    {"x’s curly", {87, 753, 69203}},
    {"中文分词测试。你好，世界！", {108891, 17620, 106015, 82805, 123035, 53901, 3922, 102616, 6447}},
    {"日本語のテキスト", {102433, 102158, 16144, 57933, 62903, 71634}},
    {"한국어 텍스트", {112699, 32179, 10997, 45204, 54289}},
    {"Привет, мир! Это тест.", {54745, 28089, 8341, 11, 115388, 0, 103874, 117092, 13}},
    {"ខ\u17d2មែរ ភាសា", {21549, 223, 73673, 246, 45358, 224, 21549, 248, 220, 21549, 245, 98629, 253, 86675}},
    {"مرحبا بالعالم", {101244, 30925, 103645, 100700, 24102, 101952}},
    {"नमस\u094dत\u0947 द\u0941निया", {61196, 88344, 79468, 100365, 35470, 100291, 101391, 100322, 24810}},
    {"emoji 😀👍🏽 👨\u200d👩\u200d👧\u200d👦 ❤\ufe0f 🏳\ufe0f\u200d🌈", {38623, 91416, 9468, 239, 235, 9468, 237, 121, 62904, 101, 102470, 9468, 239, 102, 102470, 9468, 239, 100, 102470, 9468, 239, 99, 71570, 31643, 11410, 237, 111, 31643, 102470, 9468, 234, 230}},
    {"e\u0301 a\u0300\u0301 n\u0303o", {68, 54939, 264, 97649, 54939, 308, 119074, 78}},
    {"café naïve résumé Ångström", {936, 59958, 95980, 588, 9517, 1264, 978, 80352, 983, 496, 86684}},
    {" Việt", {101798}},
    {"\u00a0nbsp\u3000ideographic\u2028sep", {4194, 5792, 23249, 95107, 378, 101, 29136}},
    {"zero\u200bwidth", {14486, 16067, 3175}},
    {"<|eot_id|> is text", {128009, 374, 1495}},
    {"Hello<|eot_id|>x", {9906, 128009, 87}},
    {"def f(x):\n    return x ** 2  # square\n", {755, 282, 2120, 997, 262, 471, 865, 3146, 220, 17, 220, 674, 9518, 198}},
    {"{\"key\": [1, 2, 3], \"v\": null}", {5018, 798, 794, 510, 16, 11, 220, 17, 11, 220, 18, 1145, 330, 85, 794, 854, 92}},
    {"https://example.com/path?q=1&r=two#frag", {2485, 1129, 8858, 916, 52076, 44882, 28, 16, 61717, 28, 20375, 2, 34298}},
    {"!!!???...---***", {12340, 34115, 1131, 4521, 12488}},
    {"a\x1c""\x1d""b", {64, 216, 217, 65}},
    {std::string("\x00\x01\x7f", 3), {188, 189, 221}},
  };
  for (const Golden& golden : goldens) {
    INFO("text: " << golden.text);
    CHECK(tokenizer.encode(golden.text, {.parse_special = true}) == golden.ids);
    CHECK(tokenizer.decode(golden.ids) == golden.text);
  }
  // Without parse_special, special-token text is ordinary text.
  CHECK(tokenizer.encode("Hello<|eot_id|>x") == Ids{9906, 27, 91, 68, 354, 851, 91, 29, 87});
}

TEST_CASE("llama3 tokenizer: decode(encode(s)) == s on the corpus, random strings and random bytes" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  for (const std::string& text : round_trip_corpus()) {
    INFO("text bytes: " << byte_level_encode(text.substr(0, 200)));
    CHECK(tokenizer.decode(tokenizer.encode(text)) == text);
    CHECK(tokenizer.decode(tokenizer.encode(text, {.add_bos = false, .parse_special = true})) == text);
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 3000; ++i) {
    const std::string bytes = random_bytes(rng, 80);
    const Ids ids = tokenizer.encode(bytes, {.parse_special = true});
    INFO("bytes: " << byte_level_encode(bytes));
    CHECK(tokenizer.decode(ids) == bytes);
  }
}

TEST_CASE("llama3 tokenizer: the heap-based merge equals BPE by definition" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  // The ranks, read from the file independently of the tokenizer's loader.
  const json::Value root = json::parse_file((testing::assets_dir("llama3-tokenizer") / "tokenizer.json").string());
  std::map<std::pair<int32_t, int32_t>, std::pair<int32_t, int32_t>> ranks;  // pair -> (rank, merged id)
  std::unordered_map<std::string, int32_t> vocab;  // json::Value::find is a linear search
  for (const auto& [text, id] : root.at("model").at("vocab").as_object()) vocab.emplace(text, int32_t(id.as_int64()));
  const auto id_of = [&](const std::string& text) { return vocab.at(text); };
  const json::Array& merges = root.at("model").at("merges").as_array();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    std::string left, right;
    if (merges[rank].is_string()) {
      const std::string& text = merges[rank].as_string();
      left = text.substr(0, text.find(' ')), right = text.substr(text.find(' ') + 1);
    } else {
      left = merges[rank].as_array()[0].as_string(), right = merges[rank].as_array()[1].as_string();
    }
    ranks.insert_or_assign(std::pair{id_of(left), id_of(right)}, std::pair{int32_t(rank), id_of(left + right)});
  }
  const auto rank_of = [&](int32_t left, int32_t right) -> std::optional<std::pair<int32_t, int32_t>> {
    const auto it = ranks.find({left, right});
    if (it == ranks.end()) return std::nullopt;
    return it->second;
  };

  std::mt19937 rng(17);
  int compared = 0;
  const auto check_word = [&](const std::string& word) {
    Ids symbols;
    for (const char b : word) symbols.push_back(tokenizer.encode(std::string(1, b))[0]);
    const Ids expected = vocab.count(byte_level_encode(word)) ? Ids{id_of(byte_level_encode(word))}
                                                              : testing::reference_merge(symbols, rank_of);
    INFO("word: " << byte_level_encode(word));
    CHECK(tokenizer.encode(word) == expected);
    ++compared;
  };
  // Words as the pre-tokenizer makes them, from random mixed text and random bytes.
  for (int i = 0; i < 300; ++i) {
    std::string text = random_bytes(rng, 40);
    for (const std::string_view word : split_words(text)) check_word(std::string(word));
  }
  for (const std::string& text : round_trip_corpus()) {
    for (const std::string_view word : split_words(text)) {
      if (word.size() <= 400) check_word(std::string(word));
    }
  }
  for (const char* word : {"antidisestablishmentarianism", " Supercalifragilisticexpialidocious", "aaaaaaaaaaaaaaaaaaaaaaa",
                           " \u0437\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435", "!!!!!!!!!!!!!!!!!!!!!!"}) {
    check_word(word);
  }
  CHECK(compared > 1000);
}

TEST_CASE("llama3 tokenizer: the word cache never changes results" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  const std::string text = "Rare wordz like xqzv and flibbertigibbet, repeated: xqzv flibbertigibbet xqzv.";
  tokenizer.clear_cache();
  const Ids cold = tokenizer.encode(text);
  CHECK(tokenizer.cache_size() > 0);
  const Ids warm = tokenizer.encode(text);
  CHECK(cold == warm);
  CHECK(tokenizer.decode(warm) == text);
}

TEST_CASE("llama3 tokenizer: streaming decode of real tokens" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  const std::string text = "Emoji \U0001f468\u200d\U0001f469\u200d\U0001f467 and \u4e2d\u6587 and \u1781\u17d2\u1798\u17c2\u179a.";
  Ids ids = tokenizer.encode(text);
  ids.push_back(128009);
  StreamDecoder stream(tokenizer);
  std::string streamed;
  bool held_back = false;
  for (const int32_t id : ids) {
    const std::string piece = stream.push(id);
    CHECK(json::valid_utf8(piece));
    held_back = held_back || stream.pending_bytes() > 0;
    streamed += piece;
  }
  streamed += stream.finish();
  CHECK(held_back);  // some token did end inside a character
  CHECK(streamed == text);
}

TEST_CASE("llama3 tokenizer: concurrent encoders share the word cache safely" * doctest::test_suite("assets")) {
  const Tokenizer& tokenizer = testing::llama3_tokenizer();
  std::vector<Ids> expected;
  for (const std::string& text : round_trip_corpus()) expected.push_back(tokenizer.encode(text));
  tokenizer.clear_cache();
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < expected.size(); ++i) {
          if (tokenizer.encode(round_trip_corpus()[i]) != expected[i]) ++mismatches[size_t(t)];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK(mismatches == std::vector<int>(4, 0));
}
