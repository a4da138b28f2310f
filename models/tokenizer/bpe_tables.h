// Tables for encoding long words exactly as the merge loop does (merge_bytes, bpe.h), in time
// linear in the word and with bounded state (long_word.h), and the facts that make it exact.
//
// Write M(s) for the merge loop's result on bytes s. Call a token t *valid* when
// M(bytes(t)) = [t], and tokens a, b *compatible* when M(bytes(a) bytes(b)) = [a, b].
//
// Fact 1. If M(s) = t1 .. tn, then M(bytes of ti .. tj) = ti .. tj for every run i <= j; in
//   particular each ti is valid and each neighbouring pair compatible. (The loop on s, restricted
//   to the run's bytes, makes the choices the loop on those bytes alone makes: each merge it does
//   inside the run was the lowest-ranked and leftmost pair of all of s, so also of the run, and it
//   never takes a pair across the run's edges.)
// Fact 2. Conversely, if valid tokens t1 .. tn spell s and every neighbouring pair is compatible,
//   then M(s) = t1 .. tn. (Suppose the loop on s first merged across the boundary of ti and ti+1.
//   Up to that moment the loop on bytes(ti) bytes(ti+1) alone makes the same choices, so it
//   would merge across too; but that loop ends in [ti, ti+1].)
// So M(s) is the one tokenization of s into valid tokens with compatible neighbours, and the
// same holds for every prefix of s. No assumption on the vocabulary is needed: tokens that are
// not valid (588 of Llama-3's, reachable only as whole words) simply never appear.
//
// compatible() decides compatibility without merging when both tokens are built by merges of
// non-decreasing rank (all but 107 of Llama-3's valid tokens; the others are merged, exactly).
// Then the loop on bytes(a) bytes(b) runs a's merges and b's in one rank order (a's first on a
// tie: its pair is further left) until it would take a pair (x, y) across the middle, x being
// the piece of a then ending at the middle (a, its right part, that part's right part, ...,
// down to a byte) and y the piece of b then starting there. Walking back in time from (a, b)
// and undoing the later of the two pieces' final merges visits every such pair, each of which
// lives until the earlier of x's and y's consuming merges; (x, y) is taken if it merges with a
// rank below that of x's consumer (a's merge comes first on a tie) and at most that of y's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/merge_table.h"
#include "models/tokenizer/vocab_index.h"

namespace lamina::tokenizer {

class BpeModel;

class BpeTables {
 public:
  explicit BpeTables(const BpeModel& model);

  bool valid(int32_t token) const { return known(token) && info_[size_t(token)].valid; }
  // Whether M(bytes(left) bytes(right)) = [left, right], for valid tokens.
  bool compatible(int32_t left, int32_t right) const;
  // The same, by running the merge loop on the two tokens' bytes (the definition).
  bool compatible_by_merging(int32_t left, int32_t right) const;

  // The longest valid token that is a prefix of `text` (non-empty); every byte is one.
  int32_t longest_prefix_token(std::string_view text) const;
  // The length of the longest prefix of `text` with which some valid token begins.
  size_t shared_prefix_length(std::string_view text) const;
  // The longest valid token that is a proper prefix of `token`, or -1.
  int32_t next_shorter(int32_t token) const { return info_[size_t(token)].next_shorter; }
  size_t length(int32_t token) const { return info_[size_t(token)].length; }
  std::string_view bytes(int32_t token) const { return vocab_->bytes(token); }
  size_t max_token_length() const { return max_token_length_; }

 private:
  struct TokenInfo {
    uint32_t length = 0;  // 0: the id is not a vocabulary token
    int32_t left = -1, right = -1;  // the parts its final merge joins (valid tokens of 2+ bytes)
    int32_t rank = -1;              // that merge's rank; -1 for a single byte
    int32_t next_shorter = -1;
    bool valid = false;
    bool in_rank_order = false;  // valid, and its merges come in non-decreasing rank order
  };
  // A trie of the valid tokens: a node's children are consecutive in nodes_, sorted by byte,
  // and the bytes on their edges consecutive in edge_bytes_ (a short scan finds a child).
  struct Node {
    int32_t first_child = 0;
    int32_t token = -1;  // the valid token spelled by the path to here, or -1
    uint32_t child_count = 0;
  };

  bool known(int32_t token) const { return token >= 0 && size_t(token) < info_.size() && info_[size_t(token)].length > 0; }
  int32_t child(int32_t node, uint8_t byte) const;
  void build_trie();

  std::vector<TokenInfo> info_;  // by id
  std::shared_ptr<const VocabIndex> vocab_;
  std::shared_ptr<const MergeTable> merges_;
  int32_t byte_ids_[256];
  std::vector<Node> nodes_;  // nodes_[0] is the root, whose 256 children are the bytes
  std::vector<uint8_t> edge_bytes_;  // by node: the byte on the edge from its parent
  size_t max_token_length_ = 1;
};

}  // namespace lamina::tokenizer
