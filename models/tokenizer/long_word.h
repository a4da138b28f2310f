// BPE of a word of any length — 200 MB of one letter is one word — with the merge loop's exact
// result (bpe_tables.h says why), in time linear in the word, and with state bounded however
// long the word: ids are handed out as soon as they are certainly final.
//
// The search. The result is the one chain of valid tokens with compatible neighbours; its
// prefixes are the results for the word's prefixes. A depth-first search builds it left to
// right — a repeat of the token before first, then the longest valid token — trying shorter ones
// (and backtracking) when a token is not compatible with the one before or leads to a dead end.
// Whatever chain reaches a position is the result for the prefix before it, hence unique, so a
// position found to be a dead end is marked and never explored again: each position is explored
// once, and the order of trying only decides how many are.
//
// Certainty. Whatever the word's end n, the result for it passes through one of the positions
// j in (p - L, p] for any p <= n, L being the longest token: tokens are at most L long. So a
// boundary q of the chain found so far is final once, for each such j, the result for the
// prefix up to j also passes through q, which holds exactly when a search from q that starts
// after q's token reaches j (Fact 2 of bpe_tables.h: that chain and the one before q are
// compatible at q). Positions on the current chain pass trivially and dead ends cannot be on
// the result, so only the others are searched, every `certify_bytes`, from a q a margin behind.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/bpe_tables.h"

namespace lamina::tokenizer {

struct LongWordOptions {
  size_t certify_bytes = size_t(1) << 18;  // bytes searched between attempts to hand out ids
  size_t margin = 0;  // how far behind the window q starts at first (0: the longest token's length)
};

class LongWordEncoder {
 public:
  explicit LongWordEncoder(const BpeTables& tables, LongWordOptions options = {});

  // The next bytes of the word; appends to `ids` those ids that are now final.
  void append(std::string_view bytes, std::vector<int32_t>& ids);
  // The word is complete: appends the remaining ids, and starts over for a new word.
  void finish(std::vector<int32_t>& ids);

  // The bytes and tokens held, for tests and benchmarks of the bound.
  size_t held_bytes() const { return text_.size(); }
  size_t held_tokens() const { return search_.stack.size(); }

 private:
  static constexpr size_t kAnyLength = SIZE_MAX;       // nothing tried at pos yet
  static constexpr size_t kAfterRepeat = SIZE_MAX - 1;  // only the repeat of the token before

  struct Step {
    BpeTables::TokenRef token;
    size_t end;  // position after it, in the held text
  };
  // The depth-first search over a text, from its start, after the token `previous` (or none).
  struct Search {
    std::vector<Step> stack;
    std::vector<uint8_t> dead;  // by position
    std::vector<BpeTables::PrefixToken> candidates;  // the tokens at pos (scratch)
    size_t pos = 0;
    size_t shorter_than = kAnyLength;  // what to try next at pos: the tokens shorter than this
                                       // (and not the repeat, tried first when nothing was)
    BpeTables::TokenRef previous;
    // Extends the chain as far as the text allows (to its end when `final`; otherwise while
    // every token at pos is inside it). False when the start itself is a dead end.
    bool run(const BpeTables& tables, std::string_view text, bool final);
  };

  size_t initial_margin() const { return options_.margin > 0 ? options_.margin : longest_token(); }
  size_t max_margin() const { return 8 * initial_margin(); }
  size_t longest_token() const;
  void search(bool final);
  bool certify(std::vector<int32_t>& ids);

  const BpeTables& tables_;
  LongWordOptions options_;
  size_t margin_ = 0;
  std::string text_;  // the word from the first id not yet handed out
  Search search_;
  Search probe_;  // certify's searches (kept for its arrays)
  size_t certify_at_ = 0;
};

// The whole word at once (the same ids as merge_bytes).
void encode_long_word(const BpeTables& tables, std::string_view word, std::vector<int32_t>& ids);

}  // namespace lamina::tokenizer
