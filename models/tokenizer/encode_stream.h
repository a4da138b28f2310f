// Encoding a text that arrives in pieces (standard input, a file larger than memory) with
// exactly the ids Tokenizer::encode gives the whole text, while holding only part of it.
//
// Bytes are held until what they become is certain. An added token needs its longest match
// decided. A word is certain once its scan (scan_word, pretokenize.h) read nothing within a
// character of the end of the bytes held; certain words are encoded and dropped. A word that
// stays uncertain while it grows long (a run of one letter, of spaces or of punctuation is one
// word however long) is handed to a LongWordEncoder as far as it is certain, and only its first
// few characters are kept: a later scan needs them to recognise the same run again, and the
// rest of the run's bytes cannot change the scan. (For whitespace the kept characters are
// two spaces, or a space and a newline once the run has had one: all that the scan of a long
// whitespace run depends on.)
//
// Memory stays bounded except for one shape of text: whitespace that goes on without a newline
// after one of its newlines. Whether those characters belong to the word before (if another
// newline follows) or make words of their own is decided only where the run ends, so they are
// held until then.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/tokenizer.h"

namespace lamina::tokenizer {

class LongWordEncoder;
struct WordScan;

struct EncodeStreamOptions {
  size_t chunk_bytes = size_t(1) << 16;      // bytes gathered before encoding what is certain
  size_t long_word_bytes = size_t(1) << 16;  // an uncertain word this long is handed to a LongWordEncoder
};

class EncodeStream {
 public:
  EncodeStream(const Tokenizer& tokenizer, const EncodeOptions& options, Tokenizer::IdSink sink,
               EncodeStreamOptions stream_options = {});
  ~EncodeStream();

  // The next bytes of the text; ids that are certain may reach the sink.
  void push(std::string_view bytes);
  // The text is complete: the remaining ids go to the sink.
  void finish();

  // The bytes held now (for tests of the bound).
  size_t held_bytes() const { return pending_.size(); }

 private:
  void process(bool final);
  size_t encode_words(size_t pos, size_t end, bool complete);
  void start_long_word(std::string_view text, size_t begin, const WordScan& scan);
  size_t certain_end(std::string_view text, size_t begin, const WordScan& scan) const;
  void drain(bool all);

  const Tokenizer& tokenizer_;
  EncodeOptions options_;
  Tokenizer::IdSink sink_;
  EncodeStreamOptions stream_options_;
  std::string pending_;  // bytes not yet encoded; while a long word runs, its kept head first
  size_t process_at_ = 0;
  std::unique_ptr<LongWordEncoder> long_word_;  // set while a long word runs
  size_t head_length_ = 0;                      // the kept head of that word, at the start of pending_
  std::vector<int32_t> ids_;                    // ids not yet given to the sink
  bool finished_ = false;
};

}  // namespace lamina::tokenizer
