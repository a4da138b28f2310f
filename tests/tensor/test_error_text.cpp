// Error messages quote user input (file names, JSON strings, data lines): whatever bytes that
// input holds, what() is the whole message as valid UTF-8, with control characters and
// stray bytes shown as \xNN. And a JSON file saved with a UTF-8 byte order mark is read.
#include <filesystem>
#include <fstream>
#include <string>

#include "helpers.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"

using namespace lamina;
using namespace std::string_literals;

TEST_CASE("error text: a NUL in quoted input does not cut the message short") {
  const std::string name = "model\0x.safetensors"s;
  const Error error(str_cat("the index lists the shard ", name, ", which is missing"));
  CHECK(std::string(error.what()) == "the index lists the shard model\\x00x.safetensors, which is missing");
  CHECK_THROWS_WITH_AS(LAMINA_CHECK(false, "line ", "a\0b"s, " is bad"), "line a\\x00b is bad", Error);
}

TEST_CASE("error text: control characters and invalid UTF-8 become \\xNN, valid text stays as it is") {
  CHECK(printable_message("plain, with\nnewline and\ttab") == "plain, with\nnewline and\ttab");
  CHECK(printable_message("caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80") == "caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80");
  CHECK(printable_message("\xEF{") == "\\xef{");                    // a byte order mark cut short
  CHECK(printable_message("\xEF\xBB\xBF{") == "\xEF\xBB\xBF{");    // a whole one is valid UTF-8
  CHECK(printable_message("esc\x1B[2Jbell\x07\r") == "esc\\x1b[2Jbell\\x07\\x0d");
  CHECK(printable_message("del\x7F c1\xC2\x9B") == "del\\x7f c1\\xc2\\x9b");
  CHECK(printable_message("\xC0\x80") == "\\xc0\\x80");              // overlong NUL
  CHECK(printable_message("\xED\xA0\x80") == "\\xed\\xa0\\x80");     // a surrogate
  CHECK(printable_message("\xF4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  CHECK(printable_message("cut \xE6\x97") == "cut \\xe6\\x97");
  CHECK(printable_message("\x80\xBF") == "\\x80\\xbf");              // stray continuation bytes
  CHECK(json::valid_utf8(Error("\xFF\xFE bytes \xC3").what()));
}

TEST_CASE("json files: a leading UTF-8 byte order mark is skipped") {
  testing::ScratchDir dir("json-bom");
  const std::string path = dir / "config.json";
  std::ofstream(path, std::ios::binary) << "\xEF\xBB\xBF{\"hidden_size\": 16}";
  CHECK(json::parse_file(path).at("hidden_size").as_int64() == 16);
  // Only at the start: elsewhere it is still an error.
  std::ofstream(path, std::ios::binary) << "{\"hidden_size\": 16}\xEF\xBB\xBF";
  CHECK_THROWS_AS(json::parse_file(path), Error);
}
