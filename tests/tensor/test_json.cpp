#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "tensor/io/json.h"

using namespace lamina;

TEST_CASE("json parses every value type and keeps member order") {
  const json::Value v = json::parse(R"( {"b": [1, -2.5e3, true, false, null], "a": {"x": "y"}, "n": 9007199254740993} )");
  const json::Object& members = v.as_object();
  REQUIRE(members.size() == 3);
  CHECK(members[0].first == "b");
  CHECK(members[1].first == "a");
  const json::Array& items = v.at("b").as_array();
  CHECK(items[0].as_int64() == 1);
  CHECK(items[1].as_double() == -2500.0);
  CHECK(items[2].as_bool());
  CHECK_FALSE(items[3].as_bool());
  CHECK(items[4].is_null());
  CHECK(v.at("a").at("x").as_string() == "y");
  CHECK(v.at("n").as_int64() == 9007199254740993LL);  // beyond 2^53: kept exactly
  CHECK(json::parse("4.0").as_int64() == 4);
  CHECK(v.find("missing") == nullptr);
  CHECK_THROWS_WITH_AS(v.at("missing"), doctest::Contains("missing key \"missing\""), Error);
  CHECK_THROWS_WITH_AS(v.at("a").as_int64("config: a"), doctest::Contains("config: a: expected an integer, got object"), Error);
  CHECK_THROWS_WITH_AS(json::parse("2.5").as_int64(), doctest::Contains("expected an integer"), Error);
}

TEST_CASE("json strings: escapes, surrogate pairs, UTF-8") {
  CHECK(json::parse(R"("a\"b\\c\/d\n\t\u00e9\u4e2d")").as_string() == "a\"b\\c/d\n\t\xc3\xa9\xe4\xb8\xad");
  CHECK(json::parse(R"("\ud83d\ude00")").as_string() == "\xf0\x9f\x98\x80");  // U+1F600
  CHECK(json::parse("\"\xe2\x82\xac\"").as_string() == "\xe2\x82\xac");
  CHECK_THROWS_WITH_AS(json::parse(R"("\ud83d")"), doctest::Contains("unpaired surrogate"), Error);
  CHECK_THROWS_WITH_AS(json::parse(R"("\ude00")"), doctest::Contains("unpaired low surrogate"), Error);
  CHECK_THROWS_WITH_AS(json::parse("\"\xc3\x28\""), doctest::Contains("invalid UTF-8"), Error);
  CHECK_THROWS_WITH_AS(json::parse("\"\xc0\xaf\""), doctest::Contains("invalid UTF-8"), Error);  // overlong '/'
  CHECK_THROWS_WITH_AS(json::parse("\"a\nb\""), doctest::Contains("control character"), Error);
  CHECK_THROWS_WITH_AS(json::parse(R"("\x")"), doctest::Contains("invalid escape"), Error);
  CHECK(json::valid_utf8("plain \xf0\x9f\x98\x80"));
  CHECK_FALSE(json::valid_utf8("\xed\xa0\x80"));  // an encoded surrogate
  CHECK_FALSE(json::valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
}

TEST_CASE("json errors name the source, line and column") {
  CHECK_THROWS_WITH_AS(json::parse("{\n  \"a\": 1,\n  \"b\" 2\n}", "config.json"),
                       doctest::Contains("json: config.json:3:7: expected ':' after object key"), Error);
  CHECK_THROWS_WITH_AS(json::parse("[1, 2,]"), doctest::Contains("1:7: unexpected character ']'"), Error);
  CHECK_THROWS_WITH_AS(json::parse("{\"a\": 1, \"a\": 2}"), doctest::Contains("duplicate key \"a\""), Error);
  CHECK_THROWS_WITH_AS(json::parse("[1] x"), doctest::Contains("unexpected text after"), Error);
  CHECK_THROWS_WITH_AS(json::parse("[1"), doctest::Contains("expected ',' or ']'"), Error);
  CHECK_THROWS_WITH_AS(json::parse(""), doctest::Contains("unexpected end of input"), Error);
  CHECK_THROWS_WITH_AS(json::parse("01"), doctest::Contains("unexpected text"), Error);
  CHECK_THROWS_WITH_AS(json::parse("1."), doctest::Contains("digit after '.'"), Error);
  CHECK_THROWS_WITH_AS(json::parse("NaN"), doctest::Contains("unexpected character 'N'"), Error);
  CHECK_THROWS_WITH_AS(json::parse("tru"), doctest::Contains("invalid literal"), Error);
  CHECK_THROWS_WITH_AS(json::parse("1e999"), doctest::Contains("out of the range"), Error);
  CHECK(json::parse("1e-999").as_double() == 0.0);
  CHECK_THROWS_WITH_AS(json::parse(std::string(600, '[') + std::string(600, ']')), doctest::Contains("deeper than 512"), Error);
  CHECK(json::parse(std::string(500, '[') + std::string(500, ']')).is_array());
}

TEST_CASE("json member access names the place in the user's file") {
  const json::Value config = json::parse(R"({"rope_scaling": "llama3", "block": {"factor": 8}})");
  CHECK_THROWS_WITH_AS(config.at("rope_scaling").at("factor", "config.json: rope_scaling"),
                       doctest::Contains("config.json: rope_scaling: expected an object, got string"), Error);
  CHECK_THROWS_WITH_AS(config.at("rope_scaling").find("factor", "config.json: rope_scaling"),
                       doctest::Contains("config.json: rope_scaling: expected an object, got string"), Error);
  CHECK_THROWS_WITH_AS(config.at("block").at("low_freq_factor", "config.json: block"),
                       doctest::Contains("config.json: block: missing key \"low_freq_factor\""), Error);
  CHECK(config.at("block", "config.json").at("factor", "config.json: block").as_int64() == 8);
  CHECK(config.find("absent", "config.json") == nullptr);
}

TEST_CASE("json files: errors name the file; a FIFO, a directory or a device is refused, never waited on") {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("lamina-test-json-files-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "config.json").string();
  std::ofstream(file) << "{\n  \"a\": 1,\n  \"b\" 2\n}";
  const std::string syntax = "json: " + file + ":3:7: expected ':' after object key";
  CHECK_THROWS_WITH_AS(json::parse_file(file), doctest::Contains(syntax.c_str()), Error);
  CHECK_THROWS_WITH_AS(json::parse_file((dir / "absent.json").string()),
                       doctest::Contains("absent.json: No such file or directory"), Error);
  std::filesystem::remove(file);
  REQUIRE(::mkfifo(file.c_str(), 0600) == 0);  // opening it for reading would wait for a writer forever
  const std::string fifo = "json: " + file + " is a FIFO (named pipe), not a regular file";
  CHECK_THROWS_WITH_AS(json::parse_file(file), doctest::Contains(fifo.c_str()), Error);
  CHECK_THROWS_WITH_AS(json::parse_file(dir.string()), doctest::Contains(" is a directory, not a regular file"), Error);
  CHECK_THROWS_WITH_AS(json::parse_file("/dev/zero"), doctest::Contains("/dev/zero is a character device"), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("json writes what it reads") {
  const std::string text = R"({"name":"q\"\u0001","values":[1,-2,0.5,1e+100,true,null],"nested":{"empty":[],"obj":{}}})";
  const json::Value v = json::parse(text);
  const std::string compact = v.dump();
  CHECK(compact == R"({"name":"q\"\u0001","values":[1,-2,0.5,1e+100,true,null],"nested":{"empty":[],"obj":{}}})");
  CHECK(json::parse(v.dump(2)).dump() == compact);
  CHECK(json::Value(3.0).dump() == "3.0");  // a float stays a float
  CHECK(json::Value(int64_t(-7)).dump() == "-7");
  CHECK(json::Value(0.1).dump() == "0.1");
  CHECK_THROWS_WITH_AS(json::Value(std::nan("")).dump(), doctest::Contains("non-finite"), Error);
  json::Value object = json::Object{};
  object.set("a", 1);
  object.set("b", "two");
  object.set("a", json::Array{true});
  CHECK(object.dump() == R"({"a":[true],"b":"two"})");
}

TEST_CASE("json reads the Llama-3 tokenizer.json quickly" * doctest::test_suite("assets")) {
  const std::filesystem::path dir = testing::assets_dir("llama3-tokenizer");
  const auto start = std::chrono::steady_clock::now();
  const json::Value tokenizer = json::parse_file((dir / "tokenizer.json").string());
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  MESSAGE("tokenizer.json parsed in " << seconds << " s");
  const json::Value& model = tokenizer.at("model");
  CHECK(model.at("type").as_string() == "BPE");
  CHECK(model.at("vocab").as_object().size() == 128000);
  CHECK(model.at("merges").as_array().size() > 200000);
  CHECK(tokenizer.at("added_tokens").as_array().size() == 256);
}
