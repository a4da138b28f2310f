#include "models/tokenizer/bpe_tables.h"

#include <algorithm>
#include <limits>

#include "models/tokenizer/bpe.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

BpeTables::BpeTables(const BpeModel& model)
    : vocab_(model.vocab_index()), merges_(model.merges()), short_words_(model.short_words()) {
  std::copy(std::begin(model.byte_ids()), std::end(model.byte_ids()), byte_ids_);
  info_.resize(size_t(vocab_->id_end()));
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < vocab_->id_end(); ++id) {
    const std::string_view spelling = vocab_->bytes(id);
    TokenInfo& info = info_[size_t(id)];
    info.length = uint32_t(spelling.size());
    if (spelling.size() <= 1) {
      info.valid = info.in_rank_order = spelling.size() == 1;
      info.byte = spelling.empty() ? 0 : uint8_t(spelling[0]);
      continue;
    }
    MergeTrace trace;
    ids.clear();
    model.merge_word(spelling, ids, &trace);
    info.valid = ids.size() == 1 && ids[0] == id;
    if (!info.valid) continue;
    info.in_rank_order = trace.ranks_non_decreasing;
    info.left = trace.last_left, info.right = trace.last_right, info.rank = trace.last.rank;
    max_token_length_ = std::max(max_token_length_, spelling.size());
  }
  build_trie();

  small_count_ = 256;
  for (int first = 0; first < 256; ++first) info_[size_t(byte_ids_[first])].small_index = int16_t(first);
  for (size_t pair = 0; pair < (size_t(1) << 16) && small_count_ < 256 + kMaxTwoByteSmallTokens; ++pair) {
    const int32_t token = vocab_->find(std::string{char(pair >> 8), char(pair & 0xFF)});
    if (valid(token)) info_[size_t(token)].small_index = int16_t(small_count_++);
  }
  const size_t words = (small_count_ * small_count_ * 2 + 63) / 64;
  small_pairs_ = std::make_unique<std::atomic<uint64_t>[]>(words);  // zero: nothing decided
  recent_pairs_ = std::make_unique<std::atomic<uint64_t>[]>(kRecentPairSlots);  // zero: no pair
  for (Node& node : nodes_) {
    if (node.token >= 0) node.small_index = info_[size_t(node.token)].small_index;
  }
}

// Breadth-first over the sorted valid tokens, so that each node's children are allocated
// together; no recursion, whatever the tokens' lengths.
void BpeTables::build_trie() {
  std::vector<std::pair<std::string_view, int32_t>> tokens;
  for (size_t id = 0; id < info_.size(); ++id) {
    if (info_[id].valid) tokens.emplace_back(bytes(int32_t(id)), int32_t(id));
  }
  std::sort(tokens.begin(), tokens.end());

  struct Pending {
    int32_t node;
    size_t begin, end, depth;  // the tokens [begin, end) share the node's `depth` bytes
  };
  nodes_.assign(1, Node{});
  edge_bytes_.assign(1, 0);
  std::vector<Pending> queue = {{0, 0, tokens.size(), 0}};
  for (size_t next = 0; next < queue.size(); ++next) {
    const Pending pending = queue[next];
    size_t begin = pending.begin;
    if (begin < pending.end && tokens[begin].first.size() == pending.depth) {  // sorts first
      nodes_[size_t(pending.node)].token = tokens[begin].second;
      ++begin;
    }
    nodes_[size_t(pending.node)].first_child = int32_t(nodes_.size());
    while (begin < pending.end) {
      const uint8_t byte = uint8_t(tokens[begin].first[pending.depth]);
      size_t end = begin;
      while (end < pending.end && uint8_t(tokens[end].first[pending.depth]) == byte) ++end;
      queue.push_back({int32_t(nodes_.size()), begin, end, pending.depth + 1});
      nodes_.emplace_back();
      edge_bytes_.push_back(byte);
      ++nodes_[size_t(pending.node)].child_count;
      begin = end;
    }
  }
  LAMINA_CHECK(nodes_[0].child_count == 256, "tokenizer: the long-word tables lack a single-byte token");
  edge_bytes_.resize(edge_bytes_.size() + 8, 0);  // child() reads 8 bytes at a time
  second_level_.assign(size_t(1) << 16, -1);
  for (int first = 0; first < 256; ++first) {
    const int32_t node = 1 + first;  // the root's children: every byte, in order
    for (uint32_t i = 0; i < nodes_[size_t(node)].child_count; ++i) {
      const int32_t second = nodes_[size_t(node)].first_child + int32_t(i);
      second_level_[size_t(first) << 8 | edge_bytes_[size_t(second)]] = second;
    }
  }
}

int32_t BpeTables::longest_prefix_token(std::string_view text) const {
  const int32_t best = byte_ids_[uint8_t(text[0])];  // every byte is a valid token
  if (text.size() < 2) return best;
  int32_t node = second_level(uint8_t(text[0]), uint8_t(text[1]));
  if (node < 0) return best;
  int32_t longer = nodes_[size_t(node)].token;
  for (size_t i = 2; i < text.size(); ++i) {
    node = child(node, uint8_t(text[i]));
    if (node < 0) break;
    if (nodes_[size_t(node)].token >= 0) longer = nodes_[size_t(node)].token;
  }
  return longer >= 0 ? longer : best;
}

size_t BpeTables::shared_prefix_length(std::string_view text) const {
  if (text.size() < 2) return text.size();
  int32_t node = second_level(uint8_t(text[0]), uint8_t(text[1]));
  if (node < 0) return 1;
  for (size_t i = 2; i < text.size(); ++i) {
    node = child(node, uint8_t(text[i]));
    if (node < 0) return i;
  }
  return text.size();
}

bool BpeTables::decide_compatible(TokenRef left, TokenRef right) const {
  const bool result = compatible_by_walking(left.id, right.id);
  if (left.small_index >= 0 && right.small_index >= 0) {
    const size_t pair = size_t(left.small_index) * small_count_ + size_t(right.small_index);
    small_pairs_[pair / 32].fetch_or(uint64_t(result ? 3 : 1) << (pair % 32 * 2), std::memory_order_relaxed);
  } else {
    const uint64_t key = recent_pair_key(left.id, right.id);
    recent_pairs_[recent_pair_slot(key)].store(key | (result ? kRecentPairCompatible : 0), std::memory_order_relaxed);
  }
  return result;
}

bool BpeTables::compatible_by_walking(int32_t left, int32_t right) const {
  if (!info_[size_t(left)].in_rank_order || !info_[size_t(right)].in_rank_order) return compatible_by_merging(left, right);
  constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  int32_t x = left, y = right;          // the pieces meeting in the middle
  int64_t x_end = kNever, y_end = kNever;  // the ranks of the merges that consume them
  while (true) {
    const TokenInfo& x_info = info_[size_t(x)];
    const TokenInfo& y_info = info_[size_t(y)];
    const int32_t x_rank = x_info.rank, y_rank = y_info.rank;
    if (x_rank < 0 && y_rank < 0) {  // back to two bytes: the last pair
      const int32_t rank = short_words_->byte_pair(x_info.byte, y_info.byte).rank;
      return !(rank != kNoMergeRank && rank < x_end && rank <= y_end);
    }
    const Merge* merge = merges_->find(x, y);
    if (merge != nullptr && merge->rank < x_end && merge->rank <= y_end) return false;
    if (x_rank > y_rank) {  // x was made last: before that, its right part ended at the middle
      x_end = x_rank;
      x = x_info.right;
    } else {  // y was made last (on a tie, b's merge runs after a's)
      y_end = y_rank;
      y = y_info.left;
    }
  }
}

bool BpeTables::compatible_by_merging(int32_t left, int32_t right) const {
  std::string joined(bytes(left));
  joined += bytes(right);
  std::vector<int32_t> ids;
  merge_bytes(joined, byte_ids_, *merges_, ids);
  return ids.size() == 2 && ids[0] == left && ids[1] == right;
}

}  // namespace lamina::tokenizer
