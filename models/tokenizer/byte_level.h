// GPT-2's bytes-to-unicode map, the alphabet in which tokenizer.json writes byte-level BPE
// vocabularies and merges: each byte value is one printable code point. lamina converts the
// file to raw bytes once, at load time, and runs BPE on bytes.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace lamina::tokenizer {

// The 188 printable bytes (21..7E, A1..AC, AE..FF) map to themselves; the other 68, in
// increasing order, to U+0100, U+0101, ... U+0143. So space is U+0120 'Ġ', LF U+010A 'Ċ'.
std::array<char32_t, 256> bytes_to_unicode();

// The code point's byte, or nothing when it is not in the alphabet.
std::optional<uint8_t> unicode_to_byte(char32_t code_point);

// Byte-level text (as in tokenizer.json) to raw bytes; nothing when a character is outside
// the alphabet or the text is not valid UTF-8.
std::optional<std::string> byte_level_decode(std::string_view text);

// Raw bytes to byte-level text (for showing tokens as tokenizer.json writes them).
std::string byte_level_encode(std::string_view bytes);

}  // namespace lamina::tokenizer
