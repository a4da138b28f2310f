// Added tokens (tokenizer.json's added_tokens) are split out of a text before anything else, by
// exact, leftmost-longest matching with a byte trie (HF uses an Aho-Corasick automaton with the
// same semantics; a few hundred short strings need nothing more).
#pragma once

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace lamina::tokenizer {

class AddedTokenMatcher {
 public:
  // `index`: what a match reports (the token's index in the tokenizer's list).
  void add(std::string_view content, int32_t index, bool special) {
    int32_t node = 0;
    for (const char c : content) {
      const uint8_t byte = uint8_t(c);
      auto& children = nodes_[size_t(node)].children;
      auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
      if (it == children.end()) {
        children.emplace_back(byte, int32_t(nodes_.size()));
        node = int32_t(nodes_.size());
        nodes_.emplace_back();
      } else {
        node = it->second;
      }
    }
    nodes_[size_t(node)].token = index;
    nodes_[size_t(node)].special = special;
    first_bytes_.set(uint8_t(content[0]));
  }

  // Whether some added token starts with this byte (most bytes of a text: no).
  bool may_start(uint8_t byte) const { return first_bytes_[byte]; }

  struct Match {
    int32_t index = -1;  // -1: none
    size_t length = 0;
    bool decided = true;  // false: the text ended inside the trie, so more bytes could match (longer)
  };
  // The longest token starting at text[pos] (special ones only when allowed).
  Match longest_at(std::string_view text, size_t pos, bool allow_special) const {
    Match best;
    int32_t node = 0;
    size_t i = pos;
    for (; i < text.size(); ++i) {
      const auto& children = nodes_[size_t(node)].children;
      const uint8_t byte = uint8_t(text[i]);
      auto it = std::find_if(children.begin(), children.end(), [&](const auto& child) { return child.first == byte; });
      if (it == children.end()) break;
      node = it->second;
      const Node& reached = nodes_[size_t(node)];
      if (reached.token >= 0 && (allow_special || !reached.special)) best.index = reached.token, best.length = i + 1 - pos;
    }
    best.decided = i < text.size() || nodes_[size_t(node)].children.empty();
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // byte -> node index
    int32_t token = -1;                                 // the index of the token that ends here
    bool special = false;
  };
  std::vector<Node> nodes_{Node{}};
  std::bitset<256> first_bytes_;
};

}  // namespace lamina::tokenizer
