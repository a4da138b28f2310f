#include "models/tokenizer/bpe_tables.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "models/tokenizer/bpe.h"
#include "tensor/error.h"

namespace lamina::tokenizer {

BpeTables::BpeTables(const BpeModel& model) : vocab_(model.vocab_index()), merges_(model.merges()) {
  std::copy(std::begin(model.byte_ids()), std::end(model.byte_ids()), byte_ids_);
  info_.resize(size_t(vocab_->id_end()));
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < vocab_->id_end(); ++id) {
    const std::string_view spelling = vocab_->bytes(id);
    TokenInfo& info = info_[size_t(id)];
    info.length = uint32_t(spelling.size());
    if (spelling.size() <= 1) {
      info.valid = info.in_rank_order = spelling.size() == 1;
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

  for (size_t id = 0; id < info_.size(); ++id) {
    if (!info_[id].valid) continue;
    const std::string_view spelling = bytes(int32_t(id));
    int32_t node = 0;
    for (size_t i = 0; i + 1 < spelling.size(); ++i) {
      node = child(node, uint8_t(spelling[i]));
      if (nodes_[size_t(node)].token >= 0) info_[id].next_shorter = nodes_[size_t(node)].token;
    }
  }
}

int32_t BpeTables::child(int32_t node, uint8_t byte) const {
  const Node& parent = nodes_[size_t(node)];
  if (node == 0) return parent.first_child + byte;  // the root has every byte, in order
  const uint8_t* edges = edge_bytes_.data() + parent.first_child;
  const void* found = std::memchr(edges, byte, parent.child_count);
  return found == nullptr ? -1 : parent.first_child + int32_t(static_cast<const uint8_t*>(found) - edges);
}

int32_t BpeTables::longest_prefix_token(std::string_view text) const {
  int32_t node = child(0, uint8_t(text[0]));
  int32_t best = nodes_[size_t(node)].token;
  for (size_t i = 1; i < text.size(); ++i) {
    node = child(node, uint8_t(text[i]));
    if (node < 0) break;
    if (nodes_[size_t(node)].token >= 0) best = nodes_[size_t(node)].token;
  }
  return best;
}

size_t BpeTables::shared_prefix_length(std::string_view text) const {
  int32_t node = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    node = child(node, uint8_t(text[i]));
    if (node < 0) return i;
  }
  return text.size();
}

bool BpeTables::compatible(int32_t left, int32_t right) const {
  if (!info_[size_t(left)].in_rank_order || !info_[size_t(right)].in_rank_order) return compatible_by_merging(left, right);
  constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  int32_t x = left, y = right;          // the pieces meeting in the middle
  int64_t x_end = kNever, y_end = kNever;  // the ranks of the merges that consume them
  while (true) {
    const Merge* merge = merges_->find(x, y);
    if (merge != nullptr && merge->rank < x_end && merge->rank <= y_end) return false;
    const int32_t x_rank = info_[size_t(x)].rank, y_rank = info_[size_t(y)].rank;
    if (x_rank < 0 && y_rank < 0) return true;  // back to two bytes
    if (x_rank > y_rank) {  // x was made last: before that, its right part ended at the middle
      x_end = x_rank;
      x = info_[size_t(x)].right;
    } else {  // y was made last (on a tie, b's merge runs after a's)
      y_end = y_rank;
      y = info_[size_t(y)].left;
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
