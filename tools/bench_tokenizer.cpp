// `lamina bench tokenizer`: Llama-3 tokenizer throughput on one thread. Prints one JSON line per
// case to stdout, progress to stderr.
//
// The English text is generated (deterministically: same bytes on every machine) from a list
// of common words with a skewed frequency, capitalised sentences, punctuation, numbers and
// paragraphs, so that it exercises the same paths as real prose: mostly whole-word vocabulary
// hits, some words that need BPE merges (cached after their first occurrence). --text FILE
// measures a file instead. MB/s counts 1e6 input bytes (encode) or output bytes (decode).
//
// The pathological cases are texts the pre-tokenizer makes into one huge word (a repeated
// letter, spaces, punctuation) or into short words that all need merging (random bytes); each
// reports its speed relative to the English text and the growth of peak RSS while encoding it
// with the ids streamed to a sink, which shows whether memory stays bounded.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "models/tokenizer/stream_decoder.h"
#include "models/tokenizer/tokenizer.h"
#include "tensor/error.h"
#include "tensor/io/regular_file.h"
#include "tools/args.h"
#include "tools/bench_support.h"
#include "tools/commands.h"

namespace lamina::cli {
namespace {

constexpr double kEncodeTargetMBps = 5.0;  // the bar for English text on one core

// A tiny deterministic generator (std::uniform_*_distribution differs between standard libraries).
class TextRng {
 public:
  explicit TextRng(uint64_t seed) : state_(seed) {}
  uint64_t next() {  // splitmix64
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return size_t(next() % n); }
  // Skewed towards small indices, like word frequencies.
  size_t skewed_below(size_t n) {
    const double u = double(next() >> 11) * 0x1.0p-53;
    return std::min(n - 1, size_t(double(n) * u * u * u));
  }

 private:
  uint64_t state_;
};

std::string english_like_text(size_t target_bytes) {
  static const std::vector<std::string> words = {
      "the", "of", "and", "to", "a", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "with", "as",
      "I", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "not", "word", "but", "what",
      "some", "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how", "said", "an",
      "each", "she", "which", "do", "their", "time", "if", "will", "way", "about", "many", "then", "them", "write",
      "would", "like", "so", "these", "her", "long", "make", "thing", "see", "him", "two", "has", "look", "more",
      "day", "could", "go", "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
      "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new", "work", "part",
      "take", "get", "place", "made", "live", "where", "after", "back", "little", "only", "round", "man", "year",
      "came", "show", "every", "good", "me", "give", "our", "under", "name", "very", "through", "just", "form",
      "sentence", "great", "think", "say", "help", "low", "line", "differ", "turn", "cause", "much", "mean",
      "before", "move", "right", "boy", "old", "too", "same", "tell", "does", "set", "three", "want", "air", "well",
      "also", "play", "small", "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even",
      "land", "here", "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went",
      "light", "kind", "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother",
      "world", "near", "build", "self", "earth", "father", "don't", "it's", "we've", "they'll", "government",
      "information", "development", "international", "responsibility", "characteristically", "photosynthesis",
      "unbelievably", "misunderstanding", "Kilimanjaro", "Tchaikovsky", "quixotic", "zephyr", "flibbertigibbet",
      "xylophonist", "bureaucratization", "antidisestablishmentarianism", "Llama", "tokenizer", "byte-level",
  };
  TextRng rng(20240726);
  std::string text;
  text.reserve(target_bytes + 256);
  while (text.size() < target_bytes) {
    const size_t sentence_words = 6 + rng.below(18);
    for (size_t i = 0; i < sentence_words; ++i) {
      std::string word = words[rng.skewed_below(words.size())];
      if (i == 0 && word[0] >= 'a' && word[0] <= 'z') word[0] = char(word[0] - 'a' + 'A');
      if (i > 0) text += ' ';
      if (rng.below(40) == 0) {
        text += std::to_string(rng.below(100000));
      } else {
        text += word;
      }
      if (i + 1 < sentence_words && rng.below(12) == 0) text += ',';
    }
    const char* endings[] = {".", ".", ".", "?", "!", ";"};
    text += endings[rng.below(6)];
    text += rng.below(8) == 0 ? "\n\n" : " ";
  }
  return text;
}

// The same kind of text in several scripts: Cyrillic, CJK, Devanagari, emoji, accented Latin.
std::string multilingual_text(size_t target_bytes) {
  static const std::vector<std::string> sentences = {
      "The quick brown fox jumps over the lazy dog. ",
      "\u0421\u044a\u0435\u0448\u044c \u0436\u0435 \u0435\u0449\u0451 \u044d\u0442\u0438\u0445 \u043c\u044f\u0433\u043a\u0438\u0445 "
      "\u0444\u0440\u0430\u043d\u0446\u0443\u0437\u0441\u043a\u0438\u0445 \u0431\u0443\u043b\u043e\u043a. ",
      "\u6211\u80fd\u541e\u4e0b\u73bb\u7483\u800c\u4e0d\u4f24\u8eab\u4f53\u3002",
      "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e, \u092f\u0939 \u090f\u0915 "
      "\u092a\u0930\u0940\u0915\u094d\u0937\u0923 \u0939\u0948\u0964 ",
      "Voix ambigu\u00eb d'un c\u0153ur qui, au z\u00e9phyr, pr\u00e9f\u00e8re les jattes de kiwis. ",
      "\U0001f600 \U0001f44d\U0001f3fd \u2764\ufe0f \U0001f468\u200d\U0001f469\u200d\U0001f467 ",
      "\ud0a4\uc2a4\uc758 \uace0\uc720\uc870\uac74\uc740 \uc785\uc220\ub07c\ub9ac \ub9cc\ub098\uc57c \ud558\uace0. ",
  };
  TextRng rng(7);
  std::string text;
  while (text.size() < target_bytes) text += sentences[rng.below(sentences.size())];
  return text;
}

// One of the pathological texts, `bytes` long.
std::string pathological_text(const std::string& kind, size_t bytes) {
  TextRng rng(99);
  std::string text(bytes, ' ');
  if (kind == "repeated_letter") std::fill(text.begin(), text.end(), 'a');
  // '-': Llama-3 has 26 tokens of dashes up to 96 long, the most of any character.
  if (kind == "repeated_punctuation") std::fill(text.begin(), text.end(), '-');
  if (kind == "punctuation") {
    static const char marks[] = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~";
    for (char& c : text) c = marks[rng.below(sizeof marks - 1)];
  }
  if (kind == "random_letters") {
    for (char& c : text) c = char('a' + rng.below(26));
  }
  if (kind == "random_bytes") {
    for (char& c : text) c = char(rng.below(256));
  }
  return text;
}

// A field of /proc/self/status in bytes ("VmRSS", "VmHWM"), or -1 where there is none.
int64_t status_bytes(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(status, line)) {
    if (line.compare(0, prefix.size(), prefix) == 0) return std::stoll(line.substr(prefix.size())) * 1024;
  }
  return -1;
}

// How much the peak RSS grows while `body` runs: the kernel's peak is reset first (writing 5
// to /proc/self/clear_refs) where it allows; elsewhere only growth beyond the earlier peak shows.
int64_t peak_rss_growth(const std::function<void()>& body) {
  std::ofstream("/proc/self/clear_refs") << "5";
  const int64_t before = status_bytes("VmRSS");
  body();
  const int64_t peak = status_bytes("VmHWM");
  return before < 0 || peak < 0 ? -1 : std::max<int64_t>(0, peak - before);
}

std::string read_file(const std::string& path) {
  io::check_regular_file(path, "bench tokenizer: --text");
  std::ifstream in(path, std::ios::binary);
  LAMINA_CHECK(in.good(), "bench tokenizer: cannot open --text file ", path);
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

void report(const std::string& name, const std::string& text_source, int64_t bytes, int64_t tokens, const Timing& timing,
            bool has_target) {
  JsonLine line;
  line.add("bench", "tokenizer")
      .add("case", name)
      .add("threads", 1)
      .add("text", text_source)
      .add("stat", "median")
      .add("runs", timing.runs)
      .add("seconds", timing.median_seconds)
      .add("bytes", bytes)
      .add("tokens", tokens)
      .add("mb_per_s", double(bytes) / timing.median_seconds / 1e6)
      .add("best_mb_per_s", double(bytes) / timing.best_seconds / 1e6)
      .add("tokens_per_s", double(tokens) / timing.median_seconds);
  if (has_target) {  // the target is for English text with a warm cache
    const double rate = double(bytes) / timing.median_seconds / 1e6;
    line.add("target_mb_per_s", kEncodeTargetMBps).add("meets_target", rate >= kEncodeTargetMBps);
  }
  line.print();
}

}  // namespace

int run_bench_tokenizer(const Arguments& args) {
  const std::string command = "lamina bench tokenizer";
  FlagParser parser(command,
                    "Llama-3 tokenizer speed on one thread: load, encode (word cache warm and cold) and decode of\n"
                    "generated English text, encode of multilingual text, and encode of pathological texts (a\n"
                    "repeated letter, spaces, a repeated dash, random punctuation, random letters, random\n"
                    "bytes) with their peak memory.\n"
                    "One JSON line per case.");
  parser.add_option("tokenizer", "PATH", "tokenizer.json, or a model directory that holds one (required)");
  parser.add_option("text", "FILE", "encode this file instead of the generated English text");
  parser.add_option("megabytes", "N", "size of the generated texts", "2");
  parser.add_option("pathological-megabytes", "N", "size of each pathological text (0: skip them)", "4");
  parser.add_switch("quick", "time each case for ~0.05 s instead of ~0.5 s");
  if (!parser.parse(args)) return 0;
  const std::optional<std::string> path = parser.value("tokenizer");
  if (!path) throw UsageError(command + ": --tokenizer is required", "run '" + command + " --help' for its flags");
  const double min_seconds = parser.is_set("quick") ? 0.05 : 0.5;
  const size_t generated_bytes = size_t(parser.int_value("megabytes", 2, 1, 1024)) << 20;
  const size_t pathological_bytes = size_t(parser.int_value("pathological-megabytes", 4, 0, 1024)) << 20;

  std::fprintf(stderr, "bench tokenizer: loading %s\n", path->c_str());
  const auto load_start = std::chrono::steady_clock::now();
  const tokenizer::Tokenizer tokenizer = tokenizer::Tokenizer::load(*path);
  const double load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  JsonLine().add("bench", "tokenizer").add("case", "load").add("seconds", load_seconds).add("vocab_size", int64_t(tokenizer.vocab_size())).print();

  const bool from_file = parser.is_set("text");
  const std::string english = from_file ? read_file(*parser.value("text")) : english_like_text(generated_bytes);
  const std::string source = from_file ? *parser.value("text") : "generated English";
  std::vector<int32_t> ids;

  std::fprintf(stderr, "bench tokenizer: encode (%zu bytes)\n", english.size());
  // measure() runs once to warm up, so the word cache is warm for every timed run.
  Timing timing = measure([&] { ids = tokenizer.encode(english); }, min_seconds);
  report("encode_english", source, int64_t(english.size()), int64_t(ids.size()), timing, true);
  const double english_mb_per_s = double(english.size()) / timing.median_seconds / 1e6;

  timing = measure([&] {
    tokenizer.clear_cache();
    ids = tokenizer.encode(english);
  }, min_seconds);
  report("encode_english_cold_cache", source, int64_t(english.size()), int64_t(ids.size()), timing, false);

  std::string decoded;
  timing = measure([&] { decoded = tokenizer.decode(ids); }, min_seconds);
  LAMINA_CHECK(decoded == english, "bench tokenizer: decode(encode(text)) differs from the text");
  report("decode_english", source, int64_t(decoded.size()), int64_t(ids.size()), timing, false);

  timing = measure([&] {
    tokenizer::StreamDecoder stream(tokenizer);
    decoded.clear();
    for (const int32_t id : ids) decoded += stream.push(id);
    decoded += stream.finish();
  }, min_seconds);
  report("stream_decode_english", source, int64_t(decoded.size()), int64_t(ids.size()), timing, false);

  const std::string multilingual = multilingual_text(generated_bytes);
  std::fprintf(stderr, "bench tokenizer: encode multilingual (%zu bytes)\n", multilingual.size());
  timing = measure([&] { ids = tokenizer.encode(multilingual); }, min_seconds);
  report("encode_multilingual", "generated multilingual", int64_t(multilingual.size()), int64_t(ids.size()), timing, false);
  if (pathological_bytes == 0) return 0;

  // Built on the first long word; timed here so that no case below pays for it.
  const auto tables_start = std::chrono::steady_clock::now();
  tokenizer.bpe().tables();
  const double tables_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - tables_start).count();
  JsonLine().add("bench", "tokenizer").add("case", "long_word_tables").add("seconds", tables_seconds).print();

  for (const std::string kind : {"repeated_letter", "spaces", "repeated_punctuation", "punctuation", "random_letters", "random_bytes"}) {
    const std::string text = pathological_text(kind, pathological_bytes);
    std::fprintf(stderr, "bench tokenizer: encode %s (%zu bytes)\n", kind.c_str(), text.size());
    int64_t tokens = 0;
    const auto encode_to_sink = [&] {
      tokens = 0;
      tokenizer.encode(text, {}, [&](std::span<const int32_t> batch) { tokens += int64_t(batch.size()); });
    };
    const int64_t rss_growth = peak_rss_growth(encode_to_sink);
    timing = measure(encode_to_sink, min_seconds);
    const double rate = double(text.size()) / timing.median_seconds / 1e6;
    JsonLine()
        .add("bench", "tokenizer")
        .add("case", "encode_" + kind)
        .add("threads", 1)
        .add("stat", "median")
        .add("runs", timing.runs)
        .add("seconds", timing.median_seconds)
        .add("bytes", int64_t(text.size()))
        .add("tokens", tokens)
        .add("mb_per_s", rate)
        .add("english_ratio", rate / english_mb_per_s)
        .add("peak_rss_growth_bytes", rss_growth)
        .print();
  }
  return 0;
}

}  // namespace lamina::cli
