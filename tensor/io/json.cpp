#include "tensor/io/json.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_set>

#include "tensor/error.h"
#include "tensor/io/regular_file.h"

namespace lamina::json {
namespace {

constexpr int kMaxDepth = 512;

class Parser {
 public:
  Parser(std::string_view text, std::string_view source) : text_(text), source_(source) {}

  Value parse_document() {
    skip_whitespace();
    Value value = parse_value(0);
    skip_whitespace();
    if (at_ < text_.size()) fail("unexpected text after the JSON value");
    return value;
  }

 private:
  [[noreturn]] void fail(const std::string& message) const {
    // Line and column (1-based, in bytes) of the current position.
    size_t line = 1, column = 1;
    for (size_t i = 0; i < at_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw Error(str_cat("json: ", source_, ":", line, ":", column, ": ", message));
  }

  bool done() const { return at_ >= text_.size(); }
  char peek() const { return done() ? '\0' : text_[at_]; }

  void skip_whitespace() {
    while (!done()) {
      const char c = text_[at_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++at_;
    }
  }

  void expect(char c, const char* context) {
    if (peek() != c) fail(str_cat("expected '", c, "' ", context));
    ++at_;
  }

  void expect_word(std::string_view word) {
    if (text_.substr(at_, word.size()) != word) fail(str_cat("invalid literal (expected '", word, "')"));
    at_ += word.size();
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 512 levels");
    switch (peek()) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': return Value(parse_string());
      case 't': expect_word("true"); return Value(true);
      case 'f': expect_word("false"); return Value(false);
      case 'n': expect_word("null"); return Value();
      case '\0':
        if (done()) fail("unexpected end of input, expected a value");
        [[fallthrough]];
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        fail(str_cat("unexpected character '", peek(), "', expected a value"));
    }
  }

  Value parse_object(int depth) {
    ++at_;  // '{'
    Object members;
    std::unordered_set<std::string> seen_keys;  // duplicate detection in O(1) per key
    skip_whitespace();
    if (peek() == '}') {
      ++at_;
      return Value(std::move(members));
    }
    while (true) {
      skip_whitespace();
      if (peek() != '"') fail("expected a string key in object");
      const size_t key_at = at_;
      std::string key = parse_string();
      if (!seen_keys.insert(key).second) {
        at_ = key_at;
        fail(str_cat("duplicate key \"", key, "\""));
      }
      skip_whitespace();
      expect(':', "after object key");
      skip_whitespace();
      Value value = parse_value(depth + 1);
      members.emplace_back(std::move(key), std::move(value));
      skip_whitespace();
      if (peek() == ',') {
        ++at_;
        continue;
      }
      if (peek() == '}') {
        ++at_;
        return Value(std::move(members));
      }
      fail("expected ',' or '}' after object member");
    }
  }

  Value parse_array(int depth) {
    ++at_;  // '['
    Array items;
    skip_whitespace();
    if (peek() == ']') {
      ++at_;
      return Value(std::move(items));
    }
    while (true) {
      skip_whitespace();
      items.push_back(parse_value(depth + 1));
      skip_whitespace();
      if (peek() == ',') {
        ++at_;
        continue;
      }
      if (peek() == ']') {
        ++at_;
        return Value(std::move(items));
      }
      fail("expected ',' or ']' after array element");
    }
  }

  Value parse_number() {
    const size_t start = at_;
    bool integral = true;
    if (peek() == '-') ++at_;
    if (peek() == '0') {
      ++at_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++at_;
    } else {
      fail("invalid number: expected a digit");
    }
    if (peek() == '.') {
      integral = false;
      ++at_;
      if (!(peek() >= '0' && peek() <= '9')) fail("invalid number: expected a digit after '.'");
      while (peek() >= '0' && peek() <= '9') ++at_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++at_;
      if (peek() == '+' || peek() == '-') ++at_;
      if (!(peek() >= '0' && peek() <= '9')) fail("invalid number: expected a digit in the exponent");
      while (peek() >= '0' && peek() <= '9') ++at_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + at_;
    Number number;
    if (integral) {
      int64_t integer = 0;
      const auto [end, error] = std::from_chars(first, last, integer);
      if (error == std::errc() && end == last) {
        number.is_integer = true;
        number.integer = integer;
      }
    }
    const auto [end, error] = std::from_chars(first, last, number.value);
    if (end != last || error == std::errc::invalid_argument) {
      at_ = start;
      fail("invalid number");
    }
    if (error == std::errc::result_out_of_range) {
      // Underflow reads as (almost) zero; overflow is an error.
      const double rounded = std::strtod(std::string(first, last).c_str(), nullptr);
      if (std::isinf(rounded)) {
        at_ = start;
        fail("number out of the range of a double");
      }
      number.value = rounded;
    }
    Value value;
    if (number.is_integer) {
      value = Value(number.integer);
    } else {
      value = Value(number.value);
    }
    return value;
  }

  uint32_t parse_hex4() {
    uint32_t code = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = peek();
      uint32_t digit;
      if (c >= '0' && c <= '9') {
        digit = uint32_t(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        digit = uint32_t(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        digit = uint32_t(c - 'A' + 10);
      } else {
        fail("invalid \\u escape: expected 4 hex digits");
      }
      code = code * 16 + digit;
      ++at_;
    }
    return code;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += char(code);
    } else if (code < 0x800) {
      out += char(0xC0 | (code >> 6));
      out += char(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += char(0xE0 | (code >> 12));
      out += char(0x80 | ((code >> 6) & 0x3F));
      out += char(0x80 | (code & 0x3F));
    } else {
      out += char(0xF0 | (code >> 18));
      out += char(0x80 | ((code >> 12) & 0x3F));
      out += char(0x80 | ((code >> 6) & 0x3F));
      out += char(0x80 | (code & 0x3F));
    }
  }

  std::string parse_string() {
    ++at_;  // opening quote
    std::string out;
    while (true) {
      // Copy the plain run up to the next quote, backslash or control character at once.
      const size_t run_start = at_;
      while (!done()) {
        const unsigned char c = static_cast<unsigned char>(text_[at_]);
        if (c == '"' || c == '\\' || c < 0x20) break;
        ++at_;
      }
      const std::string_view run = text_.substr(run_start, at_ - run_start);
      if (!valid_utf8(run)) {
        at_ = run_start;
        fail("invalid UTF-8 in string");
      }
      out.append(run);
      if (done()) fail("unterminated string");
      const char c = text_[at_];
      if (c == '"') {
        ++at_;
        return out;
      }
      if (c != '\\') fail("control character in string (must be escaped)");
      ++at_;
      const char escape = peek();
      ++at_;
      switch (escape) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t code = parse_hex4();
          if (code >= 0xD800 && code <= 0xDBFF) {  // a high surrogate needs its low half
            if (text_.substr(at_, 2) != "\\u") fail("unpaired surrogate in \\u escape");
            at_ += 2;
            const uint32_t low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("invalid low surrogate in \\u escape");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code <= 0xDFFF) {
            fail("unpaired low surrogate in \\u escape");
          }
          append_utf8(out, code);
          break;
        }
        default:
          --at_;
          fail("invalid escape in string");
      }
    }
  }

  std::string_view text_;
  std::string_view source_;
  size_t at_ = 0;
};

void dump_to(const Value& value, std::string& out, int indent, int level);

void newline(std::string& out, int indent, int level) {
  if (indent < 0) return;
  out += '\n';
  out.append(size_t(indent * level), ' ');
}

void dump_number(const Number& number, std::string& out) {
  if (number.is_integer) {
    out += std::to_string(number.integer);
    return;
  }
  LAMINA_CHECK(std::isfinite(number.value), "json: cannot write a non-finite number (", number.value, ")");
  char buffer[32];
  // Shortest representation that reads back to the same double.
  const auto [end, error] = std::to_chars(buffer, buffer + sizeof(buffer), number.value);
  std::string text(buffer, end);
  if (text.find_first_of(".eE") == std::string::npos) text += ".0";  // stays a float when read back
  out += text;
}

}  // namespace

const char* type_name(Type type) {
  switch (type) {
    case Type::null: return "null";
    case Type::boolean: return "boolean";
    case Type::number: return "number";
    case Type::string: return "string";
    case Type::array: return "array";
    case Type::object: return "object";
  }
  return "unknown";
}

namespace {
[[noreturn]] void wrong_type(std::string_view what, const char* wanted, Type got) {
  throw Error(str_cat(what, ": expected ", wanted, ", got ", type_name(got)));
}
}  // namespace

bool Value::as_bool(std::string_view what) const {
  if (!is_bool()) wrong_type(what, "a boolean", type());
  return std::get<bool>(data_);
}

const Number& Value::as_number(std::string_view what) const {
  if (!is_number()) wrong_type(what, "a number", type());
  return std::get<Number>(data_);
}

double Value::as_double(std::string_view what) const {
  if (!is_number()) wrong_type(what, "a number", type());
  return std::get<Number>(data_).value;
}

int64_t Value::as_int64(std::string_view what) const {
  if (!is_number()) wrong_type(what, "an integer", type());
  const Number& number = std::get<Number>(data_);
  if (number.is_integer) return number.integer;
  // 4.0 written as a float is still an integer value.
  LAMINA_CHECK(number.value == std::floor(number.value) && std::abs(number.value) < 9.2e18, what,
               ": expected an integer, got ", number.value);
  return int64_t(number.value);
}

const std::string& Value::as_string(std::string_view what) const {
  if (!is_string()) wrong_type(what, "a string", type());
  return std::get<std::string>(data_);
}

const Array& Value::as_array(std::string_view what) const {
  if (!is_array()) wrong_type(what, "an array", type());
  return std::get<Array>(data_);
}

const Object& Value::as_object(std::string_view what) const {
  if (!is_object()) wrong_type(what, "an object", type());
  return std::get<Object>(data_);
}

Array& Value::as_array(std::string_view what) {
  if (!is_array()) wrong_type(what, "an array", type());
  return std::get<Array>(data_);
}

Object& Value::as_object(std::string_view what) {
  if (!is_object()) wrong_type(what, "an object", type());
  return std::get<Object>(data_);
}

const Value* Value::find(std::string_view key, std::string_view what) const {
  for (const Member& member : as_object(what))
    if (member.first == key) return &member.second;
  return nullptr;
}

const Value& Value::at(std::string_view key, std::string_view what) const {
  const Value* value = find(key, what);
  LAMINA_CHECK(value != nullptr, what, ": missing key \"", key, "\"");
  return *value;
}

Value& Value::set(std::string key, Value value) {
  Object& members = as_object("json set");
  for (Member& member : members) {
    if (member.first == key) {
      member.second = std::move(value);
      return member.second;
    }
  }
  members.emplace_back(std::move(key), std::move(value));
  return members.back().second;
}

namespace {
void dump_to(const Value& value, std::string& out, int indent, int level) {
  switch (value.type()) {
    case Type::null: out += "null"; return;
    case Type::boolean: out += value.as_bool() ? "true" : "false"; return;
    case Type::number: dump_number(value.as_number(), out); return;
    case Type::string: out += quote(value.as_string()); return;
    case Type::array: {
      const Array& items = value.as_array();
      out += '[';
      for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ',';
        newline(out, indent, level + 1);
        dump_to(items[i], out, indent, level + 1);
      }
      if (!items.empty()) newline(out, indent, level);
      out += ']';
      return;
    }
    case Type::object: {
      const Object& members = value.as_object();
      out += '{';
      for (size_t i = 0; i < members.size(); ++i) {
        if (i) out += ',';
        newline(out, indent, level + 1);
        out += quote(members[i].first);
        out += indent < 0 ? ":" : ": ";
        dump_to(members[i].second, out, indent, level + 1);
      }
      if (!members.empty()) newline(out, indent, level);
      out += '}';
      return;
    }
  }
}
}  // namespace

std::string Value::dump(int indent) const {
  std::string out;
  dump_to(*this, out, indent, 0);
  return out;
}

Value parse(std::string_view text, std::string_view source) { return Parser(text, source).parse_document(); }

Value parse_file(const std::string& path) {
  const std::string text = io::read_regular_file(path, "json");
  // Some editors save UTF-8 with a byte order mark; Hugging Face's readers accept it, so do we.
  constexpr std::string_view kByteOrderMark = "\xEF\xBB\xBF";
  std::string_view body = text;
  if (body.substr(0, kByteOrderMark.size()) == kByteOrderMark) body.remove_prefix(kByteOrderMark.size());
  return parse(body, path);
}

std::string quote(std::string_view text) {
  LAMINA_CHECK(valid_utf8(text), "json: cannot write a string that is not valid UTF-8");
  std::string out;
  out.reserve(text.size() + 2);
  out += '"';
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char* hex = "0123456789abcdef";
          out += "\\u00";
          out += hex[(c >> 4) & 0xF];
          out += hex[c & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

bool valid_utf8(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length;
    uint32_t code;
    if ((c & 0xE0) == 0xC0) {
      length = 2;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      length = 3;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      length = 4;
      code = c & 0x07;
    } else {
      return false;
    }
    if (i + length > n) return false;
    for (size_t k = 1; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    const uint32_t minimum = length == 2 ? 0x80 : length == 3 ? 0x800 : 0x10000;
    if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

}  // namespace lamina::json
