#include "models/tokenizer/long_word.h"

#include <algorithm>
#include <cstring>

#include "models/tokenizer/bpe_tables.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

bool LongWordEncoder::Search::run(const BpeTables& tables, std::string_view text, bool final) {
  const size_t longest = tables.max_token_length();
  dead.resize(text.size() + 1, 0);
  candidates.resize(longest);
  // The candidates depend only on the next `longest` bytes. In a run of one character (or any
  // text that repeats with a short period) those bytes are the same at most positions, and
  // comparing them is cheaper than walking the trie as deep as the run's longest token.
  std::string_view last_window;
  size_t count = 0;
  while (final ? pos < text.size() : pos + longest <= text.size()) {
    const std::string_view window(text.data() + pos, std::min(longest, text.size() - pos));
    if (window.size() != last_window.size() || std::memcmp(window.data(), last_window.data(), window.size()) != 0) {
      count = tables.prefix_tokens(window, candidates.data());
      last_window = window;
    }
    const BpeTables::TokenRef before = stack.empty() ? previous : stack.back().token;
    // Any order of trying candidates finds the same chain (it is unique); the order only decides
    // how much is explored before. Repeating the token before comes first: in a run of one
    // character that is the chain's own period, where longest-first would wander into chains
    // that die and explore nearly every position.
    const BpeTables::PrefixToken* chosen = nullptr;
    const BpeTables::PrefixToken* repeat = nullptr;
    if (before.id >= 0) {
      for (size_t i = 0; i < count; ++i) {
        if (candidates[i].token.id == before.id) repeat = &candidates[i];
      }
    }
    if (repeat != nullptr && shorter_than == kAnyLength && !dead[pos + repeat->length] &&
        tables.compatible(before, repeat->token)) {
      chosen = repeat;
    }
    for (size_t i = count; chosen == nullptr && i-- > 0;) {  // then longest first
      const BpeTables::PrefixToken& candidate = candidates[i];
      if (&candidate == repeat || candidate.length >= shorter_than || dead[pos + candidate.length]) continue;
      if (before.id >= 0 && !tables.compatible(before, candidate.token)) continue;
      chosen = &candidate;
    }
    if (chosen != nullptr) {
      pos += chosen->length;
      stack.push_back({chosen->token, pos});
      shorter_than = kAnyLength;
      continue;
    }
    dead[pos] = 1;  // no token here continues the chain
    if (stack.empty()) return false;
    const Step last = stack.back();
    stack.pop_back();
    pos = stack.empty() ? 0 : stack.back().end;  // the chain always starts at 0
    const int32_t before_last = stack.empty() ? previous.id : stack.back().token.id;
    // Resume after the candidate just abandoned: all of them if it was the repeat (tried first).
    shorter_than = last.token.id == before_last ? kAfterRepeat : last.end - pos;
  }
  return true;
}

size_t LongWordEncoder::longest_token() const { return tables_.max_token_length(); }

LongWordEncoder::LongWordEncoder(const BpeTables& tables, LongWordOptions options)
    : tables_(tables), options_(options) {
  options_.certify_bytes = std::max<size_t>(options_.certify_bytes, 1);
  margin_ = initial_margin();
  certify_at_ = options_.certify_bytes;
}

void LongWordEncoder::search(bool final) {
  // The chain from the word's start (or from a certified boundary) always exists: it is the
  // merge loop's result.
  LAMINA_CHECK(search_.run(tables_, text_, final), "tokenizer: internal error: the long-word search found no chain (",
               text_.size(), " bytes held)");
}

void LongWordEncoder::append(std::string_view bytes, std::vector<int32_t>& ids) {
  while (!bytes.empty()) {  // in pieces, so that the state stays bounded whatever the caller passes
    const size_t piece = std::min(bytes.size(), options_.certify_bytes);
    text_.append(bytes.substr(0, piece));
    bytes.remove_prefix(piece);
    search(false);
    if (text_.size() >= certify_at_) {
      // When the chains had not yet met, look further back next time, within a bound that keeps
      // an attempt's cost (about longest * (margin + longest) bytes searched) a fraction of the
      // bytes between attempts.
      if (!certify(ids)) margin_ = std::min(2 * margin_, max_margin());
      certify_at_ = text_.size() + options_.certify_bytes;
    }
  }
}

void LongWordEncoder::finish(std::vector<int32_t>& ids) {
  search(true);
  for (const Step& step : search_.stack) ids.push_back(step.token.id);
  text_.clear();
  search_ = Search{};
  margin_ = initial_margin();
  certify_at_ = options_.certify_bytes;
}

bool LongWordEncoder::certify(std::vector<int32_t>& ids) {
  const size_t longest = tables_.max_token_length();
  const size_t window_end = search_.pos;
  if (window_end < longest + margin_) return false;
  // q: the last boundary of the chain at least a margin before the window (p - L, p].
  const std::vector<Step>& stack = search_.stack;
  const auto after_q = std::upper_bound(stack.begin(), stack.end(), window_end - longest - margin_,
                                        [](size_t limit, const Step& step) { return limit < step.end; });
  if (after_q == stack.begin()) return false;
  const size_t q_index = size_t(after_q - stack.begin()) - 1;
  const size_t q = stack[q_index].end;

  std::vector<uint8_t> on_chain(longest, 0);  // window position window_end - i, for i < longest
  for (auto step = stack.rbegin(); step != stack.rend() && step->end + longest > window_end; ++step) {
    on_chain[window_end - step->end] = 1;
  }
  for (size_t i = 0; i < longest; ++i) {
    const size_t j = window_end - i;
    if (on_chain[i] || search_.dead[j]) continue;
    // A result can only pass through j on its way past window_end if a token from j crosses it.
    // (A token from j may also run past the bytes held so far.)
    const std::string_view from_j = std::string_view(text_).substr(j, longest);
    const size_t reach = tables_.shared_prefix_length(from_j);
    if (reach <= i && !(reach == from_j.size() && from_j.size() < longest)) continue;
    probe_.stack.clear();
    probe_.dead.assign(j - q + 1, 0);
    probe_.pos = 0;
    probe_.shorter_than = kAnyLength;
    probe_.previous = stack[q_index].token;
    if (!probe_.run(tables_, std::string_view(text_).substr(q, j - q), true)) return false;
  }

  for (size_t i = 0; i <= q_index; ++i) ids.push_back(stack[i].token.id);
  search_.previous = stack[q_index].token;
  search_.stack.erase(search_.stack.begin(), search_.stack.begin() + std::ptrdiff_t(q_index + 1));
  for (Step& step : search_.stack) step.end -= q;
  search_.dead.erase(search_.dead.begin(), search_.dead.begin() + std::ptrdiff_t(q));
  search_.pos -= q;
  text_.erase(0, q);
  return true;
}

void encode_long_word(const BpeTables& tables, std::string_view word, std::vector<int32_t>& ids) {
  LongWordEncoder encoder(tables);
  encoder.append(word, ids);
  encoder.finish(ids);
}

}  // namespace lamina::tokenizer
