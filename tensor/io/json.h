// A strict JSON reader and writer (RFC 8259): config.json, safetensors headers, tokenizer.json,
// JSONL datasets and the CLI's JSON output.
//
// Parsing is strict: no comments, no trailing commas, no NaN/Infinity literals, no duplicate
// object keys, valid UTF-8 strings only; nesting deeper than 512 levels is rejected. Every
// error names the source, line and column. Objects keep their member order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace lamina::json {

class Value;
using Array = std::vector<Value>;
using Member = std::pair<std::string, Value>;
using Object = std::vector<Member>;

// A number keeps the exact integer when the text was one (safetensors offsets need all 64
// bits); otherwise only the double.
struct Number {
  double value = 0;
  bool is_integer = false;
  int64_t integer = 0;
};

enum class Type { null, boolean, number, string, array, object };
const char* type_name(Type type);

class Value {
 public:
  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : data_(b) {}
  Value(int value) : Value(int64_t(value)) {}
  Value(int64_t value) : data_(Number{double(value), true, value}) {}
  Value(double value) : data_(Number{value, false, 0}) {}
  Value(const char* s) : data_(std::string(s)) {}
  Value(std::string s) : data_(std::move(s)) {}
  Value(Array a) : data_(std::move(a)) {}
  Value(Object o) : data_(std::move(o)) {}

  Type type() const { return Type(data_.index()); }
  bool is_null() const { return type() == Type::null; }
  bool is_bool() const { return type() == Type::boolean; }
  bool is_number() const { return type() == Type::number; }
  bool is_string() const { return type() == Type::string; }
  bool is_array() const { return type() == Type::array; }
  bool is_object() const { return type() == Type::object; }

  // Typed access; a wrong type throws lamina::Error naming `what` (e.g. "config.json: hidden_size").
  bool as_bool(std::string_view what = "value") const;
  double as_double(std::string_view what = "value") const;
  const Number& as_number(std::string_view what = "value") const;
  int64_t as_int64(std::string_view what = "value") const;  // must be an integer
  const std::string& as_string(std::string_view what = "value") const;
  const Array& as_array(std::string_view what = "value") const;
  const Object& as_object(std::string_view what = "value") const;
  Array& as_array(std::string_view what = "value");
  Object& as_object(std::string_view what = "value");

  // Object members: find returns nullptr when absent; at throws naming the key. `what` names
  // this value in errors, as a path into the user's file (e.g. "config.json: rope_scaling"):
  // "config.json: rope_scaling: missing key \"factor\"", or "...: expected an object, got string"
  // when the value is no object.
  const Value* find(std::string_view key, std::string_view what = "value") const;
  const Value& at(std::string_view key, std::string_view what = "json") const;
  // Appends (or replaces) a member of an object.
  Value& set(std::string key, Value value);

  // Compact (indent < 0) or pretty-printed JSON; non-finite numbers are an error.
  std::string dump(int indent = -1) const;

 private:
  std::variant<std::monostate, bool, Number, std::string, Array, Object> data_;
};

// Parses one JSON value (surrounding whitespace allowed). `source` names the text in errors.
Value parse(std::string_view text, std::string_view source = "<json>");
// Reads and parses a whole file; errors name the file (and line:column). Anything but a
// regular file (a FIFO, a directory, a device) is refused before it is read. A leading UTF-8
// byte order mark is skipped.
Value parse_file(const std::string& path);
// JSON string literal for `text` (quotes included); text must be valid UTF-8.
std::string quote(std::string_view text);
// Whether `text` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool valid_utf8(std::string_view text);

}  // namespace lamina::json
