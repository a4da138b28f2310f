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

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "models/tokenizer/merge_table.h"
#include "models/tokenizer/short_word.h"
#include "models/tokenizer/vocab_index.h"

namespace lamina::tokenizer {

class BpeModel;

class BpeTables {
 public:
  explicit BpeTables(const BpeModel& model);

  // A valid token, with its row in the table of small pairs (below; -1 when it has none): all
  // that compatible() needs to answer from that table without reading the token's other data.
  struct TokenRef {
    int32_t id = -1;
    int32_t small_index = -1;
  };
  // A valid token that a text begins with, as the trie finds it.
  struct PrefixToken {
    TokenRef token;
    uint32_t length = 0;  // (TokenInfo::length is 32 bits too)
  };

  bool valid(int32_t token) const { return known(token) && info_[size_t(token)].valid; }
  TokenRef ref(int32_t token) const { return {token, info_[size_t(token)].small_index}; }
  // Whether M(bytes(left) bytes(right)) = [left, right], for valid tokens. (Inline: the search
  // asks for every candidate, and most answers are one load from small_pairs_.)
  bool compatible(TokenRef left, TokenRef right) const {
    if (left.small_index >= 0 && right.small_index >= 0) {
      const size_t pair = size_t(left.small_index) * small_count_ + size_t(right.small_index);
      const uint64_t bits = small_pairs_[pair / 32].load(std::memory_order_relaxed) >> (pair % 32 * 2);
      if ((bits & 1) != 0) return (bits & 2) != 0;
    } else {
      const uint64_t key = recent_pair_key(left.id, right.id);
      const uint64_t entry = recent_pairs_[recent_pair_slot(key)].load(std::memory_order_relaxed);
      if ((entry & ~kRecentPairCompatible) == key) return (entry & kRecentPairCompatible) != 0;
    }
    return decide_compatible(left, right);
  }
  bool compatible(int32_t left, int32_t right) const { return compatible(ref(left), ref(right)); }
  // The same, by the walk described above, never remembered.
  bool compatible_by_walking(int32_t left, int32_t right) const;
  // The same, by running the merge loop on the two tokens' bytes (the definition).
  bool compatible_by_merging(int32_t left, int32_t right) const;

  // The valid tokens that are prefixes of `text` (non-empty), shortest first, into `tokens`
  // (room for text.size()); returns their count. The first is the first byte's.
  size_t prefix_tokens(std::string_view text, PrefixToken* tokens) const {
    size_t count = 0;
    const auto add = [&](const Node& node, size_t length) {
      if (node.token >= 0) tokens[count++] = {{node.token, node.small_index}, uint32_t(length)};
    };
    add(nodes_[1 + size_t(uint8_t(text[0]))], 1);  // the root's children: every byte, in order
    if (text.size() < 2) return count;
    int32_t node = second_level(uint8_t(text[0]), uint8_t(text[1]));
    for (size_t length = 2; node >= 0; ++length) {
      add(nodes_[size_t(node)], length);
      if (length == text.size()) break;
      node = child(node, uint8_t(text[length]));
    }
    return count;
  }
  // The longest valid token that is a prefix of `text` (non-empty).
  int32_t longest_prefix_token(std::string_view text) const;
  // The length of the longest prefix of `text` with which some valid token begins.
  size_t shared_prefix_length(std::string_view text) const;
  size_t length(int32_t token) const { return info_[size_t(token)].length; }
  std::string_view bytes(int32_t token) const { return vocab_->bytes(token); }
  size_t max_token_length() const { return max_token_length_; }

 private:
  struct TokenInfo {
    uint32_t length = 0;  // 0: the id is not a vocabulary token
    int32_t left = -1, right = -1;  // the parts its final merge joins (valid tokens of 2+ bytes)
    int32_t rank = -1;              // that merge's rank; -1 for a single byte
    bool valid = false;
    bool in_rank_order = false;  // valid, and its merges come in non-decreasing rank order
    uint8_t byte = 0;            // the byte of a single-byte token
    int16_t small_index = -1;    // a valid token of one or two bytes: its row in small_pairs_
  };
  // A trie of the valid tokens: a node's children are consecutive in nodes_, sorted by byte,
  // and the bytes on their edges consecutive in edge_bytes_ (a short scan finds a child). The
  // first two levels, where nodes have the most children, are found by one table lookup.
  struct Node {
    int32_t first_child = 0;
    int32_t token = -1;  // the valid token spelled by the path to here, or -1
    uint16_t child_count = 0;
    int16_t small_index = -1;  // the token's (a copy: the search reads the trie, not info_)
  };

  bool known(int32_t token) const { return token >= 0 && size_t(token) < info_.size() && info_[size_t(token)].length > 0; }
  // The child of a node (not the root) on the edge `byte`, or -1. The edge bytes are compared 8
  // at a time ("SWAR"): in w = edges ^ (byte * 0x01..01) a match is a zero byte, and
  // (w - 0x01..01) & ~w & 0x80..80 has the top bit of the first zero byte set (bits of later
  // bytes may be spurious, the lowest is exact). edge_bytes_ ends with 8 bytes of padding.
  int32_t child(int32_t node, uint8_t byte) const {
    static_assert(std::endian::native == std::endian::little, "the lowest byte of a loaded word must come first");
    constexpr uint64_t kOnes = 0x0101010101010101ull, kHighBits = 0x8080808080808080ull;
    const Node& parent = nodes_[size_t(node)];
    const uint8_t* edges = edge_bytes_.data() + parent.first_child;
    if (parent.child_count == 1) return edges[0] == byte ? parent.first_child : -1;  // deep in long tokens
    for (uint32_t i = 0; i < parent.child_count; i += 8) {
      uint64_t word;
      std::memcpy(&word, edges + i, sizeof word);
      const uint64_t difference = word ^ (kOnes * byte);
      const uint64_t zeros = (difference - kOnes) & ~difference & kHighBits;
      if (zeros != 0) {
        const uint32_t index = i + uint32_t(std::countr_zero(zeros)) / 8;
        return index < parent.child_count ? parent.first_child + int32_t(index) : -1;
      }
    }
    return -1;
  }
  bool decide_compatible(TokenRef left, TokenRef right) const;
  // The node of a string of two bytes (> 0), or -1 where no valid token starts with them.
  int32_t second_level(uint8_t first, uint8_t second) const { return second_level_[size_t(first) << 8 | second]; }
  void build_trie();

  std::vector<TokenInfo> info_;  // by id
  std::shared_ptr<const VocabIndex> vocab_;
  std::shared_ptr<const MergeTable> merges_;
  int32_t byte_ids_[256];
  // For its flat table of the merges of two bytes, where compatible()'s walks end: that table
  // stays in cache, where the merge table would miss.
  std::shared_ptr<const ShortWordMerger> short_words_;
  // What compatible() decided for pairs of valid tokens of one or two bytes, which make up most
  // of the pairs in random text (three in four for random letters), two bits a pair: decided,
  // compatible. Filled as pairs come up, by any thread: a word's bits are only ever set, and
  // always to the same value. The tokens are the 256 bytes, then up to kMaxTwoByteSmallTokens
  // of two bytes in byte order (for Llama-3: 4543 of them, 5 MB).
  static constexpr size_t kMaxTwoByteSmallTokens = 4096 + 512;
  size_t small_count_ = 0;
  std::unique_ptr<std::atomic<uint64_t>[]> small_pairs_;
  // What compatible() decided for recent pairs with a longer token, in a direct-mapped table
  // (one word an entry: the pair's ids, a bit set so that an empty entry matches no pair, and
  // the answer). A long run of one character meets the same few pairs of long tokens at every
  // position, and each walk would cost a merge-table lookup per step.
  static constexpr size_t kRecentPairSlots = size_t(1) << 14;
  static constexpr uint64_t kRecentPairCompatible = uint64_t(1) << 63;
  static uint64_t recent_pair_key(int32_t left, int32_t right) {
    return uint64_t(uint32_t(left)) << 31 | uint64_t(uint32_t(right)) | uint64_t(1) << 62;  // ids < 2^31
  }
  static size_t recent_pair_slot(uint64_t key) { return size_t((key * 0x9E3779B97F4A7C15ull) >> 50); }
  std::unique_ptr<std::atomic<uint64_t>[]> recent_pairs_;
  std::vector<Node> nodes_;  // nodes_[0] is the root, whose 256 children are the bytes
  std::vector<uint8_t> edge_bytes_;  // by node: the byte on the edge from its parent
  std::vector<int32_t> second_level_;  // by first byte * 256 + second byte
  size_t max_token_length_ = 1;
};

}  // namespace lamina::tokenizer
