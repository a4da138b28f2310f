// The GGUF reader: metadata of every value type, every tensor type dequantized against values
// worked out here from the block layouts of the spec (formats-and-quantization.md §5.4), and
// damaged files refused with errors that name the field. Files are built byte by byte by a
// small writer below, independent of the reader.
#include <cstring>
#include <fstream>

#include "helpers.h"
#include "models/io/gguf.h"
#include "models/io/gguf_llama.h"
#include "scratch_dir.h"

using namespace lamina;
using testing::ScratchDir;

namespace {

// ---- a minimal GGUF writer ----

void put(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char((value >> (8 * i)) & 0xFF);
}
std::string u32(uint32_t value) { std::string out; put(out, value, 4); return out; }
std::string u64(uint64_t value) { std::string out; put(out, value, 8); return out; }
std::string text(const std::string& value) { return u64(value.size()) + value; }
std::string f32_bits(float value) { uint32_t bits; std::memcpy(&bits, &value, 4); return u32(bits); }

// A key and its typed value (the value bytes already encoded).
std::string kv(const std::string& key, uint32_t type, const std::string& value) { return text(key) + u32(type) + value; }

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  std::string data;
  int64_t offset = -1;  // -1: the next aligned offset after the previous tensor
};

// A whole file: header, `metadata` (already encoded, `metadata_count` pairs), tensor infos and
// the data section, each tensor padded to `alignment`.
std::string gguf_file(const std::string& metadata, uint64_t metadata_count, const std::vector<TensorSpec>& tensors,
                      uint64_t alignment = 32, uint32_t version = 3) {
  std::string out = "GGUF" + u32(version) + u64(tensors.size()) + u64(metadata_count) + metadata;
  std::string data;
  for (const TensorSpec& tensor : tensors) {
    while (data.size() % alignment != 0) data += '\0';
    const uint64_t offset = tensor.offset >= 0 ? uint64_t(tensor.offset) : data.size();
    if (tensor.offset < 0) data += tensor.data;
    out += text(tensor.name) + u32(uint32_t(tensor.dims.size()));
    for (uint64_t dim : tensor.dims) out += u64(dim);
    out += u32(tensor.type) + u64(offset);
  }
  while (out.size() % alignment != 0) out += '\0';
  return out + data;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string bytes_of(std::initializer_list<int> values) {
  std::string out;
  for (int value : values) out += char(value);
  return out;
}

// Writes `bytes` and opens them.
gguf::File open_bytes(const ScratchDir& dir, const std::string& bytes) {
  write_bytes(dir / "model.gguf", bytes);
  return gguf::File::open(dir / "model.gguf");
}

// Reads the single tensor "t" of a file holding `data` as `type` with `dims`.
std::vector<float> decode(const ScratchDir& dir, uint32_t type, const std::vector<uint64_t>& dims, const std::string& data) {
  const gguf::File file = open_bytes(dir, gguf_file("", 0, {{"t", dims, type, data}}));
  const Tensor tensor = file.read("t");
  CHECK(tensor.dtype() == DType::f32);
  return tensor.to_vector<float>();
}

// The spec's Q4_K scale example: these 12 bytes hold the (scale, min) pairs below.
const std::string kScaleBytes = bytes_of({0xbf, 0x01, 0xd1, 0xa0, 0xc0, 0x3f, 0x45, 0x10, 0x0d, 0x27, 0xfc, 0x91});
constexpr int kScales[8] = {63, 1, 17, 32, 45, 7, 60, 33};
constexpr int kMins[8] = {0, 63, 5, 16, 48, 2, 31, 9};

}  // namespace

TEST_CASE("gguf: metadata of every value type round-trips") {
  ScratchDir dir("gguf-metadata");
  std::string metadata;
  metadata += kv("a.u8", 0, bytes_of({200}));
  metadata += kv("a.i8", 1, bytes_of({0xfe}));  // -2
  metadata += kv("a.u16", 2, bytes_of({0x34, 0x12}));
  metadata += kv("a.i16", 3, bytes_of({0x00, 0x80}));  // -32768
  metadata += kv("a.u32", 4, u32(4000000000u));
  metadata += kv("a.i32", 5, u32(uint32_t(-123456)));
  metadata += kv("a.f32", 6, f32_bits(1.5e-5f));
  metadata += kv("a.bool", 7, bytes_of({1}));
  metadata += kv("a.string", 8, text("Llama \xc3\xa9t\xc3\xa9"));
  metadata += kv("a.u64", 10, u64(0xfedcba9876543210ull));
  metadata += kv("a.i64", 11, u64(uint64_t(-5)));
  double pi = 3.141592653589793;
  uint64_t pi_bits;
  std::memcpy(&pi_bits, &pi, 8);
  metadata += kv("a.f64", 12, u64(pi_bits));
  metadata += kv("a.strings", 9, u32(8) + u64(3) + text("a") + text("") + text("b c"));
  metadata += kv("a.i32s", 9, u32(5) + u64(2) + u32(uint32_t(-1)) + u32(7));
  // An array of two arrays of u8: [[1, 2], []].
  metadata += kv("a.nested", 9, u32(9) + u64(2) + u32(0) + u64(2) + bytes_of({1, 2}) + u32(0) + u64(0));
  metadata += kv("general.alignment", 4, u32(64));
  const gguf::File file = open_bytes(dir, gguf_file(metadata, 16, {{"w", {2}, 0, f32_bits(1) + f32_bits(2)}}, 64));

  CHECK(file.version() == 3);
  CHECK(file.alignment() == 64);
  CHECK(file.data_start() % 64 == 0);
  REQUIRE(file.metadata().size() == 16);
  CHECK(file.metadata()[0].first == "a.u8");  // file order kept
  CHECK(file.metadata("a.u8").type == gguf::ValueType::u8);
  CHECK(file.metadata("a.u8").as_u64("k") == 200);
  CHECK(file.metadata("a.i8").as_i64("k") == -2);
  CHECK(file.metadata("a.u16").as_u64("k") == 0x1234);
  CHECK(file.metadata("a.i16").as_i64("k") == -32768);
  CHECK(file.metadata("a.u32").as_u64("k") == 4000000000u);
  CHECK(file.metadata("a.i32").as_i64("k") == -123456);
  CHECK(float(file.metadata("a.f32").as_f64("k")) == 1.5e-5f);
  CHECK(file.metadata("a.bool").as_bool("k"));
  CHECK(file.metadata("a.string").as_string("k") == "Llama \xc3\xa9t\xc3\xa9");
  CHECK(file.metadata("a.u64").as_u64("k") == 0xfedcba9876543210ull);
  CHECK(file.metadata("a.i64").as_i64("k") == -5);
  CHECK(file.metadata("a.f64").as_f64("k") == pi);
  const auto& strings = file.metadata("a.strings").as_array("k");
  REQUIRE(strings.size() == 3);
  CHECK(file.metadata("a.strings").element_type == gguf::ValueType::string);
  CHECK(strings[0].as_string("k") == "a");
  CHECK(strings[1].as_string("k") == "");
  CHECK(strings[2].as_string("k") == "b c");
  const auto& ints = file.metadata("a.i32s").as_array("k");
  REQUIRE(ints.size() == 2);
  CHECK(ints[0].as_i64("k") == -1);
  CHECK(ints[1].as_i64("k") == 7);
  const auto& nested = file.metadata("a.nested").as_array("k");
  REQUIRE(nested.size() == 2);
  REQUIRE(nested[0].as_array("k").size() == 2);
  CHECK(nested[0].as_array("k")[1].as_u64("k") == 2);
  CHECK(nested[1].as_array("k").empty());
  // Accessors refuse the wrong kind, naming what was asked for.
  CHECK_THROWS_WITH_AS(file.metadata("a.string").as_u64("llama.block_count"),
                       doctest::Contains("llama.block_count: expected an integer, got string"), Error);
  CHECK_THROWS_WITH_AS(file.metadata("a.i8").as_u64("k"), doctest::Contains("non-negative"), Error);
  CHECK_THROWS_WITH_AS(file.metadata("missing.key"), doctest::Contains("no metadata 'missing.key'"), Error);
  CHECK(file.find_metadata("missing.key") == nullptr);
  CHECK(file.read("w").to_vector<float>() == std::vector<float>{1, 2});
}

TEST_CASE("gguf: F32, F16 and BF16 tensors, and ggml's dim order mapped to lamina's shape") {
  ScratchDir dir("gguf-plain");
  std::string f32_data;
  for (float value : {1.5f, -2.25f, 3.0f, 0.0f, 7.0f, -0.5f}) f32_data += f32_bits(value);
  const std::string f16_data = bytes_of({0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38, 0xff, 0x7b});  // 1, -2, 0.5, 65504
  const std::string bf16_data = bytes_of({0x80, 0x3f, 0x40, 0xc0, 0x49, 0x40, 0x00, 0x00});  // 1, -3, 3.140625, 0
  const gguf::File file = open_bytes(
      dir, gguf_file("", 0, {{"plain", {3, 2}, 0, f32_data}, {"half", {4}, 1, f16_data}, {"brain", {2, 1, 2}, 30, bf16_data}}));
  REQUIRE(file.tensors().size() == 3);
  CHECK(file.tensors()[0].dims == std::vector<uint64_t>{3, 2});
  const Tensor plain = file.read("plain");
  CHECK(plain.shape() == Shape{2, 3});  // dims[0] = 3 is the fastest axis: the rows are 3 long
  CHECK(plain.to_vector<float>() == std::vector<float>{1.5f, -2.25f, 3.0f, 0.0f, 7.0f, -0.5f});
  CHECK(file.read("half").to_vector<float>() == std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f});
  const Tensor brain = file.read("brain");
  CHECK(brain.shape() == Shape{2, 1, 2});
  CHECK(brain.to_vector<float>() == std::vector<float>{1.0f, -3.0f, 3.140625f, 0.0f});
  // Kept at 16 bits when asked, bit for bit.
  const Tensor half = file.read("half", true);
  CHECK(half.dtype() == DType::f16);
  CHECK(half.data<f16>()[3].bits == 0x7bff);
  const Tensor brain16 = file.read("brain", true);
  CHECK(brain16.dtype() == DType::bf16);
  CHECK(brain16.data<bf16>()[2].bits == 0x4049);
  CHECK(file.read("plain", true).dtype() == DType::f32);
  CHECK_THROWS_WITH_AS(file.read("nope"), doctest::Contains("no tensor 'nope'"), Error);
}

TEST_CASE("gguf: Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 blocks dequantize to hand-computed values") {
  ScratchDir dir("gguf-q32");
  SUBCASE("Q8_0: d = 0.5, qs[j] = j - 16") {
    std::string block = bytes_of({0x00, 0x38});
    for (int j = 0; j < 32; ++j) block += char(int8_t(j - 16));
    const std::vector<float> values = decode(dir, 8, {32}, block);
    REQUIRE(values.size() == 32);
    CHECK(values[0] == -8.0f);
    CHECK(values[15] == -0.5f);
    CHECK(values[16] == 0.0f);
    CHECK(values[31] == 7.5f);
    for (int j = 0; j < 32; ++j) CHECK(values[size_t(j)] == float(j - 16) * 0.5f);
  }
  SUBCASE("Q4_0: the spec's worked example") {
    const std::string block = bytes_of({0x00, 0x34, 0x80, 0x91, 0x91, 0xa2, 0xa2, 0xb3, 0xb3, 0xc4, 0xc4, 0xd5, 0xd5,
                                        0xe6, 0xe6, 0xf7, 0xf7, 0xf8});
    // q = 0,1,1,2,2,...,14,14,15,15,15 and x = (q - 8) * 0.25.
    const std::vector<float> expected = {-2.0f,  -1.75f, -1.75f, -1.5f,  -1.5f,  -1.25f, -1.25f, -1.0f,
                                         -1.0f,  -0.75f, -0.75f, -0.5f,  -0.5f,  -0.25f, -0.25f, 0.0f,
                                         0.0f,   0.25f,  0.25f,  0.5f,   0.5f,   0.75f,  0.75f,  1.0f,
                                         1.0f,   1.25f,  1.25f,  1.5f,   1.5f,   1.75f,  1.75f,  1.75f};
    CHECK(decode(dir, 2, {32}, block) == expected);
  }
  SUBCASE("Q4_1: d = 0.5, m = -1, low nibble j, high nibble 15 - j") {
    std::string block = bytes_of({0x00, 0x38, 0x00, 0xbc});
    for (int j = 0; j < 16; ++j) block += char(j | ((15 - j) << 4));
    const std::vector<float> values = decode(dir, 3, {32}, block);
    CHECK(values[0] == -1.0f);
    CHECK(values[15] == 6.5f);   // 15 * 0.5 - 1
    CHECK(values[16] == 6.5f);   // element 16 is the high nibble of byte 0: 15
    CHECK(values[31] == -1.0f);
    for (int j = 0; j < 16; ++j) {
      CHECK(values[size_t(j)] == float(j) * 0.5f - 1.0f);
      CHECK(values[size_t(j + 16)] == float(15 - j) * 0.5f - 1.0f);
    }
  }
  SUBCASE("Q5_0: d = 1, fifth bits for elements 0, 1 and 16") {
    std::string block = bytes_of({0x00, 0x3c}) + u32(0x00010003u);
    for (int j = 0; j < 16; ++j) block += char(j | ((15 - j) << 4));
    const std::vector<float> values = decode(dir, 6, {32}, block);
    CHECK(values[0] == 0.0f);     // 0 + 16 - 16
    CHECK(values[1] == 1.0f);     // 1 + 16 - 16
    CHECK(values[2] == -14.0f);   // 2 - 16
    CHECK(values[15] == -1.0f);   // 15 - 16
    CHECK(values[16] == 15.0f);   // 15 + 16 - 16
    CHECK(values[17] == -2.0f);   // 14 - 16
    CHECK(values[31] == -16.0f);  // 0 - 16
  }
  SUBCASE("Q5_1: d = 0.25, m = 1, fifth bits for elements 0 and 31") {
    std::string block = bytes_of({0x00, 0x34, 0x00, 0x3c}) + u32(0x80000001u);
    for (int j = 0; j < 16; ++j) block += char(j | ((15 - j) << 4));
    const std::vector<float> values = decode(dir, 7, {32}, block);
    CHECK(values[0] == 5.0f);    // (0 + 16) * 0.25 + 1
    CHECK(values[1] == 1.25f);   // 1 * 0.25 + 1
    CHECK(values[16] == 4.75f);  // 15 * 0.25 + 1
    CHECK(values[30] == 1.25f);  // high nibble of byte 14: 1
    CHECK(values[31] == 5.0f);   // (0 + 16) * 0.25 + 1
  }
  SUBCASE("several blocks in a row with the row length as dims[0]") {
    std::string data;
    for (int b = 0; b < 4; ++b) {
      data += bytes_of({0x00, 0x3c});  // d = 1
      for (int j = 0; j < 32; ++j) data += char(int8_t(b));
    }
    const gguf::File file = open_bytes(dir, gguf_file("", 0, {{"rows", {64, 2}, 8, data}}));
    const Tensor rows = file.read("rows");
    CHECK(rows.shape() == Shape{2, 64});
    const std::vector<float> values = rows.to_vector<float>();
    CHECK(values[31] == 0.0f);
    CHECK(values[32] == 1.0f);
    CHECK(values[64] == 2.0f);
    CHECK(values[127] == 3.0f);
  }
}

TEST_CASE("gguf: Q4_K, Q5_K and Q6_K blocks dequantize to hand-computed values") {
  ScratchDir dir("gguf-kquants");
  // Quant bytes with every nibble value present and low and high nibbles different.
  std::string quants;
  for (int i = 0; i < 128; ++i) quants += char((i % 16) | (((i * 7 + 3) % 16) << 4));

  SUBCASE("Q4_K: d = 0.5, dmin = 0.25, the spec's packed scales") {
    const std::string block = bytes_of({0x00, 0x38, 0x00, 0x34}) + kScaleBytes + quants;
    REQUIRE(block.size() == 144);
    const std::vector<float> values = decode(dir, 12, {256}, block);
    REQUIRE(values.size() == 256);
    // Element e: sub-block j = e / 32, byte 32 * (e / 64) + e % 32, low nibble when e % 64 < 32.
    for (int e = 0; e < 256; ++e) {
      const uint8_t byte = uint8_t(quants[size_t(32 * (e / 64) + e % 32)]);
      const int q = e % 64 < 32 ? byte & 0xF : byte >> 4;
      const int j = e / 32;
      CHECK(values[size_t(e)] == 0.5f * float(kScales[j] * q) - 0.25f * float(kMins[j]));
    }
    // A few written out: e = 1: q = 1, (63, 0) -> 31.5; e = 32: byte 0 high nibble 3, (1, 63) -> 1.5 - 15.75;
    // e = 255: byte 127 high nibble (127*7+3)%16 = 12, (33, 9) -> 198 - 2.25.
    CHECK(values[1] == 31.5f);
    CHECK(values[32] == -14.25f);
    CHECK(values[255] == 195.75f);
  }
  SUBCASE("Q5_K: as Q4_K plus a fifth bit per element from qh") {
    std::string qh;
    for (int l = 0; l < 32; ++l) qh += char(uint8_t(l * 37 + 11));
    const std::string block = bytes_of({0x00, 0x38, 0x00, 0x34}) + kScaleBytes + qh + quants;
    REQUIRE(block.size() == 176);
    const std::vector<float> values = decode(dir, 13, {256}, block);
    for (int e = 0; e < 256; ++e) {
      const uint8_t byte = uint8_t(quants[size_t(32 * (e / 64) + e % 32)]);
      const int j = e / 32;
      const int fifth = (uint8_t(qh[size_t(e % 32)]) >> j) & 1;
      const int q = (e % 64 < 32 ? byte & 0xF : byte >> 4) + 16 * fifth;
      CHECK(values[size_t(e)] == 0.5f * float(kScales[j] * q) - 0.25f * float(kMins[j]));
    }
    // e = 0: q = 0, qh[0] = 11 has bit 0 set -> q = 16, (63, 0) -> 504.
    CHECK(values[0] == 504.0f);
    // e = 32: sub-block 1, byte 0 high nibble 3, bit 1 of 11 set -> q = 19, (1, 63) -> 9.5 - 15.75.
    CHECK(values[32] == -6.25f);
  }
  SUBCASE("Q6_K: d = 0.125 at the end, signed scales") {
    std::string ql, qh, scales;
    for (int i = 0; i < 128; ++i) ql += char(uint8_t(i * 29 + 3));
    for (int i = 0; i < 64; ++i) qh += char(uint8_t(i * 53 + 7));
    for (int g = 0; g < 16; ++g) scales += char(int8_t(g - 8));
    const std::string block = ql + qh + scales + bytes_of({0x00, 0x30});
    REQUIRE(block.size() == 210);
    const std::vector<float> values = decode(dir, 14, {256}, block);
    for (int e = 0; e < 256; ++e) {
      const int n = e / 128, r = e % 128, g = r / 32, l = r % 32;
      const uint8_t low_byte = uint8_t(ql[size_t(64 * n + l + 32 * (g & 1))]);
      const int low = g < 2 ? low_byte & 0xF : low_byte >> 4;
      const int high = (uint8_t(qh[size_t(32 * n + l)]) >> (2 * g)) & 3;
      const int q = (low | (high << 4)) - 32;
      CHECK(values[size_t(e)] == 0.125f * float((e / 16 - 8) * q));
    }
    // e = 0: ql[0] = 3 (low 3), qh[0] = 7 (bits 0-1: 3) -> q = 51 - 32 = 19, scale -8 -> -19.
    CHECK(values[0] == -19.0f);
    // e = 64: g = 2: high nibble of ql[0] = 0, (7 >> 4) & 3 = 0 -> q = -32, scale[4] = -4 -> 16.
    CHECK(values[64] == 16.0f);
  }
}

TEST_CASE("gguf: damaged and hostile files are refused with errors naming the field") {
  ScratchDir dir("gguf-bad");
  const std::string path = dir / "model.gguf";
  const std::string metadata = kv("general.name", 8, text("tiny")) + kv("general.alignment", 4, u32(32));
  std::string weights;
  for (int i = 0; i < 8; ++i) weights += f32_bits(float(i));
  const std::string valid = gguf_file(metadata, 2, {{"blk.0.attn_q.weight", {4, 2}, 0, weights}});
  REQUIRE_NOTHROW(open_bytes(dir, valid));

  const auto refused = [&](const std::string& bytes, const std::string& message) {
    write_bytes(path, bytes);
    CHECK_THROWS_WITH_AS(gguf::File::open(path), doctest::Contains(message.c_str()), Error);
  };
  // The header: 4 magic, 4 version, 8 + 8 counts.
  const std::string header = "GGUF" + u32(3);

  SUBCASE("truncated at every byte") {
    for (size_t length = 0; length < valid.size(); ++length) {
      write_bytes(path, valid.substr(0, length));
      CHECK_THROWS_AS(gguf::File::open(path), Error);
    }
    refused(valid.substr(0, 2), "magic");
    refused(valid.substr(0, 6), "version");
    refused(valid.substr(0, 12), "tensor count");
    refused(valid.substr(0, 20), "metadata count");
    refused(valid.substr(0, 30), "metadata count 2 cannot fit in the 6 bytes left");
    refused(valid.substr(0, 24 + 36 + 4), "metadata key 1 length");
    refused(valid.substr(0, 24 + 20 + 4 + 6), "metadata 'general.name'");
    const size_t tensor_info = 24 + (20 + 4 + 12) + (25 + 4 + 4);  // header, general.name, general.alignment
    refused(valid.substr(0, tensor_info + 3), "tensor 0 name");
    refused(valid.substr(0, tensor_info + 8 + 19 + 2), "tensor 'blk.0.attn_q.weight' n_dims");
    refused(valid.substr(0, valid.size() - 1), "tensor 'blk.0.attn_q.weight': data [0, 0+32) of the data section runs past the end of the file");
  }
  SUBCASE("bad magic and versions") {
    refused("GGUG" + valid.substr(4), "bad magic 0x47554747");
    refused("GGUF" + u32(1) + valid.substr(8), "unsupported version 1");
    refused("GGUF" + u32(4) + valid.substr(8), "unsupported version 4");
    refused("GGUF" + u32(0x03000000) + valid.substr(8), "byte-swapped");
    REQUIRE_NOTHROW(open_bytes(dir, "GGUF" + u32(2) + valid.substr(8)));
  }
  SUBCASE("counts that cannot fit in the file") {
    refused(header + u64(uint64_t(1) << 60) + u64(0), "tensor count 1152921504606846976 cannot fit");
    refused(header + u64(0) + u64(uint64_t(1) << 60), "metadata count 1152921504606846976 cannot fit");
    refused(header + u64(0) + u64(1) + kv("k", 9, u32(0) + u64(uint64_t(1) << 60)), "metadata 'k': array count");
    // Within the file's size, but past the cap on array elements (each would become a Value).
    refused(header + u64(0) + u64(2) + kv("k", 9, u32(0) + u64(uint64_t(1) << 22) + std::string(size_t(1) << 22, 'x')) +
                kv("k2", 9, u32(0) + u64(1) + "y"),
            "metadata 'k2': array count 1 takes the metadata past lamina's limit of 4194304 array elements");
    refused(header + u64(0) + u64(1) + kv("k", 9, u32(8) + u64(3) + text("a") + u64(100) + "1234567"),
            "metadata 'k'[1] has length 100");
    refused(header + u64(0) + u64(1) + kv("k", 8, u64(uint64_t(1) << 60) + "abc"), "metadata 'k' has length 1152921504606846976");
    refused(header + u64(0) + u64(1) + text("k") + u32(8) + u64(5) + "ab", "metadata 'k' has length 5");
    refused(header + u64(0) + u64(1) + u64(99) + "key" + std::string(8, 'x'), "metadata key 0 has length 99");
  }
  SUBCASE("bad metadata values") {
    refused(header + u64(0) + u64(1) + kv("k", 13, ""), "metadata 'k' has unknown value type id 13");
    refused(header + u64(0) + u64(1) + kv("k", 9, u32(77) + u64(0)), "metadata 'k' has unknown element type id 77");
    refused(header + u64(0) + u64(1) + kv("k", 7, bytes_of({2})), "metadata 'k' is a bool holding 2");
    refused(header + u64(0) + u64(2) + kv("k", 0, bytes_of({1})) + kv("k", 0, bytes_of({1})), "metadata 'k' appears more than once");
    std::string deep = u32(0) + u64(0);
    for (int level = 0; level < 20; ++level) deep = u32(9) + u64(1) + deep;
    refused(header + u64(0) + u64(1) + kv("k", 9, deep), "nests arrays deeper than 16");
    refused(gguf_file(kv("general.alignment", 4, u32(48)), 1, {}), "'general.alignment' is 48, not a power of two");
    refused(gguf_file(kv("general.alignment", 4, u32(0)), 1, {}), "'general.alignment' is 0");
    refused(gguf_file(kv("general.alignment", 10, u64(32)), 1, {}), "'general.alignment' must be a u32");
  }
  SUBCASE("bad tensor infos") {
    const auto one = [&](TensorSpec spec) { return gguf_file(metadata, 2, {std::move(spec)}); };
    refused(one({"blk.0.attn_q.weight", {4, 2}, 0, weights, 16}), "tensor 'blk.0.attn_q.weight': offset 16 is not a multiple of the alignment 32");
    refused(one({"blk.0.attn_q.weight", {4, 2}, 0, weights, 64}), "tensor 'blk.0.attn_q.weight': data [64, 64+32) of the data section runs past the end of the file (size");
    refused(one({"blk.0.attn_q.weight", {4, 2}, 0, weights, int64_t(uint64_t(1) << 62)}), "runs past the end of the file");
    refused(one({"t", {8}, 31, weights}), "tensor 't': unknown type id 31");
    refused(one({"t", {8}, 5000, weights}), "tensor 't': unknown type id 5000");
    refused(one({"t", {256}, 10, weights}), "tensor 't': type Q2_K (id 10) is not one lamina reads");
    refused(one({"t", {1, 1, 1, 1, 8}, 0, weights}), "tensor 't': n_dims 5 exceeds the maximum of 4");
    refused(one({"t", {uint64_t(1) << 32, uint64_t(1) << 32}, 0, weights}), "tensor 't': dims[1] = 4294967296 makes the element count overflow");
    refused(one({"t", {0, uint64_t(1) << 62, 4}, 0, ""}), "tensor 't': dims[2] = 4 makes the element count overflow");
    refused(one({"t", {16}, 2, weights}), "tensor 't': dims[0] = 16 is not a multiple of the Q4_0 block size 32");
    refused(one({std::string(64, 'x'), {8}, 0, weights}), "name is 64 bytes long");
    refused(gguf_file(metadata, 2, {{"t", {8}, 0, weights}, {"t", {8}, 0, weights}}), "tensor 't': duplicate tensor name");
    refused(gguf_file(metadata, 2, {{"a", {8}, 0, weights}, {"b", {4}, 0, "", 0}}), "tensor 'b' (data at 0) overlaps tensor 'a' (data [0, 32))");
    // n_dims = 5 in a file that ends right after it: the count is refused before any dim is read.
    refused(header + u64(1) + u64(0) + text("t") + u32(5) + std::string(16, '\0'), "n_dims 5");
  }
  SUBCASE("not a regular file, or missing") {
    CHECK_THROWS_WITH_AS(gguf::File::open(dir.path.string()), doctest::Contains("is a directory, not a regular file"), Error);
    CHECK_THROWS_WITH_AS(gguf::File::open(dir / "missing.gguf"), doctest::Contains("cannot open"), Error);
  }
}

TEST_CASE("gguf: empty tensors, zero tensors and tensors sharing no bytes") {
  ScratchDir dir("gguf-edge");
  const gguf::File none = open_bytes(dir, "GGUF" + u32(3) + u64(0) + u64(0));  // no padding needed without tensors
  CHECK(none.tensors().empty());
  CHECK(none.metadata().empty());
  const gguf::File empty = open_bytes(dir, gguf_file("", 0, {{"e", {0, 3}, 0, ""}, {"s", {}, 0, f32_bits(4.5f)}}));
  CHECK(empty.read("e").shape() == Shape{3, 0});
  const Tensor scalar = empty.read("s");
  CHECK(scalar.shape() == Shape{});
  CHECK(scalar.to_vector<float>() == std::vector<float>{4.5f});
}

namespace {

// A tiny Llama GGUF: vocab 6, hidden 8, 2 heads of 4, 1 kv head, ffn 4, one layer, tied
// embeddings. Every F32 tensor element is 100 * row + column (row: lamina's first axis), so
// each row can be recognised after the q/k permutation is undone.
std::string tiny_llama(const std::string& extra_metadata = "", uint64_t extra_count = 0, bool drop_block_count = false) {
  std::string metadata = kv("general.architecture", 8, text("llama"));
  uint64_t count = 1;
  const auto add_u32 = [&](const std::string& key, uint32_t value) { metadata += kv(key, 4, u32(value)); ++count; };
  if (!drop_block_count) add_u32("llama.block_count", 1);
  add_u32("llama.context_length", 32);
  add_u32("llama.embedding_length", 8);
  add_u32("llama.feed_forward_length", 4);
  add_u32("llama.attention.head_count", 2);
  add_u32("llama.attention.head_count_kv", 1);
  add_u32("llama.rope.dimension_count", 4);
  add_u32("llama.vocab_size", 6);
  add_u32("tokenizer.ggml.bos_token_id", 1);
  add_u32("tokenizer.ggml.eos_token_id", 2);
  metadata += kv("llama.attention.layer_norm_rms_epsilon", 6, f32_bits(1e-5f));
  metadata += kv("llama.rope.freq_base", 6, f32_bits(100000.0f));
  count += 2;
  metadata += extra_metadata;
  count += extra_count;
  const auto matrix = [](uint64_t rows, uint64_t columns) {
    std::string data;
    for (uint64_t r = 0; r < rows; ++r)
      for (uint64_t c = 0; c < columns; ++c) data += f32_bits(float(100 * r + c));
    return data;
  };
  const auto tensor = [&](const std::string& name, uint64_t rows, uint64_t columns) {
    return rows == 0 ? TensorSpec{name, {columns}, 0, matrix(1, columns)}
                     : TensorSpec{name, {columns, rows}, 0, matrix(rows, columns)};
  };
  return gguf_file(metadata, count,
                   {tensor("token_embd.weight", 6, 8), tensor("output_norm.weight", 0, 8),
                    tensor("blk.0.attn_norm.weight", 0, 8), tensor("blk.0.attn_q.weight", 8, 8),
                    tensor("blk.0.attn_k.weight", 4, 8), tensor("blk.0.attn_v.weight", 4, 8),
                    tensor("blk.0.attn_output.weight", 8, 8), tensor("blk.0.ffn_norm.weight", 0, 8),
                    tensor("blk.0.ffn_gate.weight", 4, 8), tensor("blk.0.ffn_up.weight", 4, 8),
                    tensor("blk.0.ffn_down.weight", 8, 4)});
}

}  // namespace

TEST_CASE("gguf llama: metadata to LlamaConfig, tensor names, q/k rows back in Hugging Face order") {
  ScratchDir dir("gguf-llama");
  const gguf::File file = open_bytes(dir, tiny_llama());
  const llama::LlamaConfig config = gguf::llama_config_from_gguf(file);
  CHECK(config.vocab_size == 6);
  CHECK(config.hidden_size == 8);
  CHECK(config.intermediate_size == 4);
  CHECK(config.num_hidden_layers == 1);
  CHECK(config.num_attention_heads == 2);
  CHECK(config.num_key_value_heads == 1);
  CHECK(config.head_dim == 4);
  CHECK(config.max_position_embeddings == 32);
  CHECK(config.rms_norm_eps == double(1e-5f));
  CHECK(config.rope_theta == 100000.0);
  CHECK(config.tie_word_embeddings);
  CHECK(config.bos_token_id == 1);
  CHECK(config.eos_token_ids == std::vector<int64_t>{2});

  CHECK(gguf::llama_hf_tensor_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight");
  CHECK(gguf::llama_hf_tensor_name("blk.0.attn_k.weight") == "model.layers.0.self_attn.k_proj.weight");
  CHECK(gguf::llama_hf_tensor_name("output.weight") == "lm_head.weight");
  CHECK(!gguf::llama_hf_tensor_name("blk.x.attn_q.weight").has_value());
  CHECK(!gguf::llama_hf_tensor_name("blk.0.attn_qkv.weight").has_value());

  // The spec's example, head_dim 8: HF row k holds Meta row [0,2,4,6,1,3,5,7][k].
  std::vector<float> meta(16);
  for (int r = 0; r < 16; ++r) meta[size_t(r)] = float(r);
  const std::vector<float> hf = gguf::unpermute_meta_rows(Tensor::from_vector(meta, {16, 1}), 2).to_vector<float>();
  CHECK(hf == std::vector<float>{0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15});

  const auto model = gguf::load_llama_gguf(dir / "model.gguf");
  std::map<std::string, std::vector<float>> weights;
  for (const auto& [name, parameter] : model->named_parameters()) weights[name] = parameter.to_vector<float>();
  CHECK(weights.count("lm_head.weight") == 0);
  const auto row_of = [&](const std::string& name, size_t row, size_t columns) { return weights.at(name)[row * columns] / 100; };
  // head_dim 4: HF row k of each head holds Meta row [0, 2, 1, 3][k].
  const std::vector<float> q_rows = {0, 2, 1, 3, 4, 6, 5, 7};
  for (size_t row = 0; row < 8; ++row) CHECK(row_of("model.layers.0.self_attn.q_proj.weight", row, 8) == q_rows[row]);
  const std::vector<float> k_rows = {0, 2, 1, 3};
  for (size_t row = 0; row < 4; ++row) CHECK(row_of("model.layers.0.self_attn.k_proj.weight", row, 8) == k_rows[row]);
  for (size_t row = 0; row < 4; ++row) CHECK(row_of("model.layers.0.self_attn.v_proj.weight", row, 8) == float(row));
  CHECK(weights.at("model.layers.0.self_attn.q_proj.weight")[2 * 8 + 5] == 105.0f);  // Meta row 1, column 5
  CHECK(weights.at("model.layers.0.mlp.down_proj.weight")[7 * 4 + 3] == 703.0f);
  CHECK(weights.at("model.embed_tokens.weight")[5 * 8 + 7] == 507.0f);
}

TEST_CASE("gguf llama: missing keys, unsupported scaling and stray tensors are errors") {
  ScratchDir dir("gguf-llama-bad");
  const std::string path = dir / "model.gguf";
  write_bytes(path, tiny_llama("", 0, true));
  CHECK_THROWS_WITH_AS(gguf::llama_config_from_gguf(gguf::File::open(path)),
                       doctest::Contains("metadata 'llama.block_count' is missing"), Error);
  write_bytes(path, tiny_llama(kv("llama.rope.scaling.type", 8, text("yarn")), 1));
  CHECK_THROWS_WITH_AS(gguf::load_llama_gguf(path), doctest::Contains("'llama.rope.scaling.type' is 'yarn'"), Error);
  write_bytes(path, tiny_llama(kv("llama.attention.head_count_kv", 8, text("one")), 1));
  CHECK_THROWS_WITH_AS(gguf::load_llama_gguf(path), doctest::Contains("appears more than once"), Error);
  // A second layer's worth of blocks announced but not present.
  std::string two_layers = tiny_llama();
  const std::string needle = kv("llama.block_count", 4, u32(1));
  two_layers.replace(two_layers.find(needle), needle.size(), kv("llama.block_count", 4, u32(2)));
  write_bytes(path, two_layers);
  CHECK_THROWS_WITH_AS(gguf::load_llama_gguf(path), doctest::Contains("has no tensor for 'model.layers.1."), Error);
}
