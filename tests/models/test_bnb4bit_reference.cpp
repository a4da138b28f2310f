// lamina's 4-bit NF4/FP4 against bitsandbytes itself. tests/data/bnb4bit/ (made by
// tools/dev/make-bnb4bit-fixture.py; its README says how) holds a tiny random Llama in f32, the
// 4-bit folders transformers + bitsandbytes saved from it (NF4 with double quantization; FP4
// without), and what bitsandbytes computed from them: each projection's dequantized weight and
// block scales, and transformers' logits for a fixed token sequence.
//
// Reading and dequantizing bitsandbytes' bytes must agree exactly, the forward pass within an f32
// tolerance. Quantizing agrees byte for byte except in the places below, which the checks allow
// (and count) and nothing else, all of them bitsandbytes' CPU backend departing from the rule
// its CUDA kernels follow (tests/data/bnb4bit/README.md has the evidence):
//   - FP4 codes of values that round to zero: bitsandbytes' CPU backend buckets the signed value
//     over the sorted table, where +0 (code 0) sorts before the other zero (code 8), so tiny
//     negatives get code 0 and tiny positives code 8. lamina (like the CUDA kernel) takes the
//     sign bit from the value. Both decode to a zero.
//   - A value exactly on the f32 midpoint of two neighbouring codes: bitsandbytes' CPU quantizer
//     compares with f32 midpoints and sends it to the lower code. lamina compares with the exact
//     midpoint and sends it to the upper one where the f32 midpoint rounded up, and (FP4, which
//     lamina rounds by magnitude) where a negative value ties. Measure zero in practice;
//     edge/weight in the fixture holds every such midpoint.
//   - An all-zero partial last block: bitsandbytes' CPU quantizer stores its absmax clamped to
//     1e-38, lamina 0 (as bitsandbytes does for full blocks). Both decode to zeros.
//   - Double quantization: the offset is torch's f32 mean of the scales (its own summation
//     order), lamina's the correctly rounded mean (summed in f64), so the two may differ in the
//     last bit, and the nested absmax with them; and bitsandbytes' CPU 8-bit quantizer picks
//     codes through a 65536-bin lookup table over [-1, 1], not the nearest code, so a scale near
//     the middle of two fine codes of the dynamic map may get the farther one. lamina's is the
//     nearest.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "helpers.h"
#include "models/io/bnb4bit.h"
#include "models/io/safetensors.h"
#include "models/llama/model.h"
#include "nn/layers.h"
#include "ops/ops.h"
#include "ops/quant4.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"

using namespace lamina;
using namespace lamina::testing;
using ops::Quant4Format;

namespace {

namespace fs = std::filesystem;

struct Variant {
  const char* folder;
  Quant4Format format;
  bool double_quant;
};
const Variant kVariants[] = {{"nf4-double-quant", Quant4Format::nf4, true}, {"fp4", Quant4Format::fp4, false}};
constexpr int64_t kBlocksize = 64;  // transformers' default, what the fixture used
constexpr size_t kProjections = 14;  // 2 layers x q/k/v/o/gate/up/down

fs::path fixture_dir() { return fs::path(LAMINA_SOURCE_DIR) / "tests" / "data" / "bnb4bit"; }

const safetensors::File& reference() {
  static const safetensors::File file = safetensors::File::open((fixture_dir() / "reference.safetensors").string());
  return file;
}

// The 4-bit projections of the f32 model, in name order ("model.layers.0.mlp.down_proj.weight", ...).
std::vector<std::string> projection_names(const safetensors::Checkpoint& original) {
  std::vector<std::string> names;
  for (const std::string& name : original.names())
    if (bnb4bit::is_default_quantized_weight(name)) names.push_back(name);
  REQUIRE(names.size() == kProjections);
  return names;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor dense = ops::contiguous(t);
  std::vector<uint8_t> bytes(dense.nbytes());
  if (!bytes.empty()) std::memcpy(bytes.data(), dense.raw_data(), bytes.size());
  return bytes;
}

std::string text_of(const Tensor& t) {
  const std::vector<uint8_t> bytes = bytes_of(t);
  return std::string(bytes.begin(), bytes.end());
}

// A float with the 9 significant digits that identify it (messages about last-bit differences).
std::string exact(float value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.9g", double(value));
  return text;
}

// Exact equality of two f32 tensors, reporting how many elements differ and the first one.
void check_equal_f32(const Tensor& actual, const Tensor& expected, const std::string& what) {
  REQUIRE_MESSAGE(actual.shape() == expected.shape(), what, ": shape ", actual.shape(), " vs ", expected.shape());
  const std::vector<float> a = actual.to_vector<float>(), e = expected.to_vector<float>();
  int64_t differing = 0, first = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &e[i], sizeof(float)) != 0) {
      if (first < 0) first = int64_t(i);
      ++differing;
    }
  }
  INFO(what << ": " << differing << " of " << a.size() << " elements differ; first at " << first << ": lamina "
            << exact(first >= 0 ? a[size_t(first)] : 0.0f) << ", bitsandbytes "
            << exact(first >= 0 ? e[size_t(first)] : 0.0f));
  CHECK(differing == 0);
}

// The linear layer at `weight_name` ("model.layers.1.mlp.up_proj.weight") of a loaded model.
const nn::Linear& linear_named(const nn::Module& root, const std::string& weight_name) {
  const nn::Module* module = &root;
  std::string path = weight_name.substr(0, weight_name.size() - std::string(".weight").size());
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = std::min(path.find('.', start), path.size());
    const std::string part = path.substr(start, dot - start);
    const nn::Module* next = nullptr;
    for (const auto& [name, child] : module->children())
      if (name == part) next = child.get();
    REQUIRE_MESSAGE(next != nullptr, "no module ", part, " on the way to ", weight_name);
    module = next;
    start = dot + 1;
  }
  const auto* linear = dynamic_cast<const nn::Linear*>(module);
  REQUIRE_MESSAGE(linear != nullptr, weight_name, " is not a Linear");
  return *linear;
}

// JSON with every object's members sorted by key: equal texts mean equal parsed values.
std::string canonical(const json::Value& value) {
  if (value.is_array()) {
    std::string out = "[";
    for (const json::Value& item : value.as_array()) out += (out.size() > 1 ? "," : "") + canonical(item);
    return out + "]";
  }
  if (!value.is_object()) return value.dump();
  json::Object members = value.as_object();
  std::sort(members.begin(), members.end(),
            [](const json::Member& a, const json::Member& b) { return a.first < b.first; });
  std::string out = "{";
  for (const auto& [key, member] : members)
    out += (out.size() > 1 ? "," : "") + json::quote(key) + ":" + canonical(member);
  return out + "}";
}

// The same JSON object without one member.
json::Value without(const json::Value& object, const std::string& key) {
  json::Object members;
  for (const auto& member : object.as_object())
    if (member.first != key) members.push_back(member);
  return json::Value(std::move(members));
}

// a is b or one of b's two neighbouring floats.
bool within_one_ulp(float a, float b) { return a == b || std::nextafter(b, a) == a; }

// What a comparison of one weight found, beyond exact agreement.
struct Departures {
  int64_t fp4_zero_signs = 0;     // FP4 codes that differ only in the sign of a zero
  int64_t midpoint_ties = 0;      // codes of values on an f32 midpoint, lamina one code above
  int64_t zero_tail_absmax = 0;   // all-zero partial last blocks (bitsandbytes stores 1e-38)
  int64_t offset_ulps_apart = 0;  // weights whose offsets differ in the last bit
  int64_t scale_codes = 0;        // double-quantized scale codes bitsandbytes' table put one code off
};

// The 16-entry code table (quant_map): the same bytes (FP4's code 8 is +0 in both).
void check_code_table(const Tensor& lamina, const Tensor& bnb, const Variant& variant) {
  const std::vector<float> lamina_values = lamina.to_vector<float>(), bnb_values = bnb.to_vector<float>();
  REQUIRE(lamina_values.size() == 16);
  REQUIRE(bnb_values.size() == 16);
  CHECK(lamina_values == bnb_values);  // as numbers (-0 == +0)
  for (size_t code = 0; code < 16; ++code) {
    INFO(quant4_format_name(variant.format) << " quant_map[" << code << "]: lamina " << lamina_values[code]
                                            << ", bitsandbytes " << bnb_values[code]);
    CHECK(std::signbit(lamina_values[code]) == std::signbit(bnb_values[code]));
  }
}

// Each block's largest magnitude: the fp32 scale both libraries start from.
std::vector<float> block_maxima(const std::vector<float>& values) {
  std::vector<float> maxima((values.size() + size_t(kBlocksize) - 1) / size_t(kBlocksize), 0.0f);
  for (size_t i = 0; i < values.size(); ++i)
    maxima[i / size_t(kBlocksize)] = std::max(maxima[i / size_t(kBlocksize)], std::fabs(values[i]));
  return maxima;
}

// Whether element i lies in a partial last block.
bool in_partial_block(size_t i, size_t count) {
  const size_t block_start = i / size_t(kBlocksize) * size_t(kBlocksize);
  return block_start + size_t(kBlocksize) > count;
}

// Element i scaled into [-1, 1] as bitsandbytes' CPU quantizer does: full blocks multiply by the
// f32 reciprocal of the (clamped) absmax, the partial last block divides by it.
float scaled_as_bitsandbytes(const std::vector<float>& values, const std::vector<float>& maxima, size_t i) {
  const float absmax = std::max(maxima[i / size_t(kBlocksize)], 1e-38f);
  const float scaled = in_partial_block(i, values.size()) ? values[i] / absmax : values[i] * (1.0f / absmax);
  return std::clamp(scaled, -1.0f, 1.0f);
}

// The 16 codes in ascending order of value, zeros in code order, as bitsandbytes sorts its table.
std::vector<int> codes_ascending(Quant4Format format) {
  const auto& table = ops::quant4_code_values(format);
  std::vector<int> order(16);
  for (int code = 0; code < 16; ++code) order[size_t(code)] = code;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return table[size_t(a)] < table[size_t(b)]; });
  return order;
}

// Whether `scaled` sits exactly on the f32 midpoint (a + b) / 2 of two neighbouring code values,
// with bitsandbytes on the lower code and lamina on the upper. bitsandbytes' CPU quantizer
// compares with f32 midpoints and sends a value equal to one down. lamina compares with the exact
// midpoint: above it when the f32 one rounded up, so up; and on it for FP4 negatives, whose
// magnitude lamina rounds, a tie going to the smaller magnitude, so again up.
bool is_midpoint_tie(Quant4Format format, float scaled, int lamina_code, int bnb_code) {
  const auto& table = ops::quant4_code_values(format);
  const std::vector<int> order = codes_ascending(format);
  for (size_t i = 0; i + 1 < order.size(); ++i) {
    const float lower = table[size_t(order[i])], upper = table[size_t(order[i + 1])];
    const float midpoint = (lower + upper) / 2.0f;
    const double exact_midpoint = (double(lower) + double(upper)) / 2;
    const bool lamina_goes_up =
        double(midpoint) > exact_midpoint ||
        (format == Quant4Format::fp4 && scaled < 0 && double(midpoint) == exact_midpoint);
    // (Compared by value on lamina's side: its zero there may be either of FP4's two.)
    if (scaled == midpoint && lamina_goes_up && table[size_t(lamina_code)] == upper && bnb_code == order[i])
      return true;
  }
  return false;
}

// The packed codes of `values`: equal, or one of the departures at the top of the file.
void check_codes(const std::vector<uint8_t>& lamina_codes, const std::vector<uint8_t>& bnb_codes,
                 const std::vector<float>& values, Quant4Format format, Departures& departures) {
  REQUIRE(lamina_codes.size() == bnb_codes.size());
  REQUIRE(lamina_codes.size() == (values.size() + 1) / 2);
  const std::vector<float> maxima = block_maxima(values);
  // FP4's smallest magnitude is 0.0625 / 12; values up to half of it round to a zero.
  const float fp4_zero_bound = 0.0625f / 12 / 2;
  for (size_t i = 0; i < values.size(); ++i) {
    const int lamina_code = (i % 2 == 0) ? lamina_codes[i / 2] >> 4 : lamina_codes[i / 2] & 15;
    const int bnb_code = (i % 2 == 0) ? bnb_codes[i / 2] >> 4 : bnb_codes[i / 2] & 15;
    if (lamina_code == bnb_code) continue;
    const float scaled = scaled_as_bitsandbytes(values, maxima, i);
    INFO("element " << i << " (" << exact(values[i]) << ", scaled " << exact(scaled) << "): lamina code "
                    << lamina_code << ", bitsandbytes " << bnb_code);
    if (is_midpoint_tie(format, scaled, lamina_code, bnb_code)) {
      ++departures.midpoint_ties;
      continue;
    }
    CHECK(format == Quant4Format::fp4);
    CHECK(std::fabs(scaled) <= fp4_zero_bound);
    CHECK(lamina_code == (values[i] < 0 ? 8 : 0));
    CHECK(bnb_code == (values[i] > 0 ? 8 : 0));
    ++departures.fp4_zero_signs;
  }
}

// Plain f32 block scales: equal, but for an all-zero partial last block, whose absmax
// bitsandbytes' CPU quantizer stores clamped to 1e-38 (full blocks and lamina store 0).
void check_plain_absmax(const Tensor& lamina, const Tensor& bnb, int64_t count, Departures& departures) {
  const std::vector<float> lamina_values = lamina.to_vector<float>(), bnb_values = bnb.to_vector<float>();
  REQUIRE(lamina_values.size() == bnb_values.size());
  for (size_t block = 0; block < bnb_values.size(); ++block) {
    if (std::memcmp(&lamina_values[block], &bnb_values[block], sizeof(float)) == 0) continue;
    INFO("absmax[" << block << "]: lamina " << exact(lamina_values[block]) << ", bitsandbytes "
                   << exact(bnb_values[block]));
    CHECK(in_partial_block(block * size_t(kBlocksize), size_t(count)));
    CHECK(lamina_values[block] == 0.0f);
    CHECK(bnb_values[block] == 1e-38f);
    ++departures.zero_tail_absmax;
  }
}

// Compares lamina's tensors for one 4-bit weight (named as transformers names them, as
// bnb4bit::append_quantized_weight produces them or a saved checkpoint holds them) with the ones
// bitsandbytes saved, byte for byte except the departures the header describes. `original` is
// the f32 weight both quantized.
void check_against_bitsandbytes(const std::map<std::string, Tensor>& lamina, const safetensors::Checkpoint& bnb,
                                const std::string& name, const Variant& variant, const Tensor& original,
                                Departures& departures) {
  CAPTURE(name);
  const std::string state_key = bnb4bit::quant_state_key(name, variant.format);
  std::vector<std::string> keys = {name, name + ".absmax", name + ".quant_map", state_key};
  if (variant.double_quant) {
    keys.push_back(name + ".nested_absmax");
    keys.push_back(name + ".nested_quant_map");
  }
  for (const std::string& key : keys) {
    CAPTURE(key);
    REQUIRE(lamina.count(key) == 1);
    REQUIRE(bnb.contains(key));
    CHECK(lamina.at(key).dtype() == bnb.info(key).dtype);
    // (The quant_state's length follows the offset's repr: compared parsed below.)
    if (key != state_key || !variant.double_quant) CHECK(lamina.at(key).shape() == bnb.info(key).shape);
  }
  check_code_table(lamina.at(name + ".quant_map"), bnb.read(name + ".quant_map"), variant);

  // quant_state: the same JSON, except (double quantization) the offset, within one ulp.
  const json::Value lamina_state = json::parse(text_of(lamina.at(state_key)));
  const json::Value bnb_state = json::parse(text_of(bnb.read(state_key)));
  CHECK(canonical(without(lamina_state, "nested_offset")) == canonical(without(bnb_state, "nested_offset")));
  float lamina_offset = 0, bnb_offset = 0;
  if (variant.double_quant) {
    lamina_offset = float(lamina_state.at("nested_offset").as_double());
    bnb_offset = float(bnb_state.at("nested_offset").as_double());
    INFO("offset: lamina " << exact(lamina_offset) << ", bitsandbytes " << exact(bnb_offset));
    CHECK(within_one_ulp(lamina_offset, bnb_offset));
    if (lamina_offset != bnb_offset) ++departures.offset_ulps_apart;
  }

  const std::vector<float> values = original.to_vector<float>();
  check_codes(bytes_of(lamina.at(name)), bytes_of(bnb.read(name)), values, variant.format, departures);

  // The block scales.
  const Tensor lamina_absmax = lamina.at(name + ".absmax"), bnb_absmax = bnb.read(name + ".absmax");
  if (!variant.double_quant) {
    check_plain_absmax(lamina_absmax, bnb_absmax, int64_t(values.size()), departures);
    return;
  }
  CHECK(bytes_of(lamina.at(name + ".nested_quant_map")) == bytes_of(bnb.read(name + ".nested_quant_map")));
  const std::vector<float> lamina_nested = lamina.at(name + ".nested_absmax").to_vector<float>();
  const std::vector<float> bnb_nested = bnb.read(name + ".nested_absmax").to_vector<float>();
  REQUIRE(lamina_nested.size() == bnb_nested.size());
  for (size_t j = 0; j < bnb_nested.size(); ++j) {
    INFO("nested_absmax[" << j << "]: lamina " << exact(lamina_nested[j]) << ", bitsandbytes "
                            << exact(bnb_nested[j]));
    // Equal offsets leave the same centred scales, so the same largest one; otherwise it moves
    // by the offsets' difference, plus one rounding of the subtraction.
    const float ulp = std::nextafter(bnb_nested[j], 2 * bnb_nested[j]) - bnb_nested[j];
    if (lamina_offset == bnb_offset) CHECK(lamina_nested[j] == bnb_nested[j]);
    else CHECK(std::fabs(lamina_nested[j] - bnb_nested[j]) <= std::fabs(lamina_offset - bnb_offset) + ulp);
  }
  const std::vector<float> block_max = block_maxima(values);
  const int64_t blocks = int64_t(block_max.size());
  const std::vector<uint8_t> lamina_scale_codes = bytes_of(lamina_absmax), bnb_scale_codes = bytes_of(bnb_absmax);
  REQUIRE(int64_t(lamina_scale_codes.size()) == blocks);
  const auto& dynamic = ops::dynamic_map_8bit();
  for (int64_t j = 0; j < blocks; ++j) {
    const int lamina_code = lamina_scale_codes[size_t(j)], bnb_code = bnb_scale_codes[size_t(j)];
    if (lamina_code == bnb_code) continue;
    // The centred, normalised scale lamina rounded (its f32 steps), the two codes' distances to
    // it, and the lookup table's worst case: the value moves to the nearest of 65536 bin centres
    // (at most 1/65535 away), which then takes its nearest code.
    const float nested = lamina_nested[size_t(j / 256)];
    const float scaled = std::clamp((block_max[size_t(j)] - lamina_offset) / nested, -1.0f, 1.0f);
    const double lamina_distance = std::fabs(double(dynamic[size_t(lamina_code)]) - double(scaled));
    const double bnb_distance = std::fabs(double(dynamic[size_t(bnb_code)]) - double(scaled));
    INFO("scale code of block " << j << " (" << exact(scaled) << "): lamina " << lamina_code << " ("
                                << exact(dynamic[size_t(lamina_code)]) << "), bitsandbytes " << bnb_code << " ("
                                << exact(dynamic[size_t(bnb_code)]) << ")");
    CHECK(std::abs(lamina_code - bnb_code) == 1);
    CHECK(lamina_distance <= bnb_distance);
    CHECK(bnb_distance <= lamina_distance + 2.0 / 65535 + 1e-7);
    ++departures.scale_codes;
  }
}

void report(const std::string& what, const Departures& departures) {
  MESSAGE(what, ": ", departures.fp4_zero_signs,
          " FP4 codes with the other zero, ", departures.midpoint_ties, " midpoint ties, ",
          departures.zero_tail_absmax, " zero last blocks, ", departures.offset_ulps_apart,
          " offsets one ulp apart, ", departures.scale_codes, " scale codes one step apart");
}

std::map<std::string, Tensor> as_map(const safetensors::NamedTensors& tensors) {
  std::map<std::string, Tensor> map;
  for (const auto& [name, tensor] : tensors) map.emplace(name, tensor);
  return map;
}

}  // namespace

TEST_CASE("bnb4bit reference: bitsandbytes' 4-bit folders load and dequantize to bitsandbytes' values exactly") {
  const safetensors::Checkpoint original = safetensors::Checkpoint::open((fixture_dir() / "f32").string());
  const std::vector<std::string> names = projection_names(original);
  for (const Variant& variant : kVariants) {
    const std::string folder = variant.folder;
    CAPTURE(folder);
    const auto model = llama::LlamaForCausalLM::load((fixture_dir() / variant.folder).string());
    for (const std::string& name : names) {
      CAPTURE(name);
      const ops::Quantized4Bit* q = linear_named(*model, name).base_4bit();
      REQUIRE(q != nullptr);
      CHECK(q->format == variant.format);
      CHECK(q->double_quant == variant.double_quant);
      CHECK(q->blocksize == kBlocksize);
      CHECK(q->shape == original.info(name).shape);
      const std::string key = std::string(variant.folder) + "/" + name.substr(0, name.size() - 7);
      // The decoded scales (for double quantization: the dynamic-map code times the nested
      // absmax, plus the offset, in two f32 roundings), then the weight itself.
      check_equal_f32(ops::dequantize_4bit_absmax(*q), reference().read(key + ".weight.absmax"), key + " absmax");
      check_equal_f32(ops::dequantize_4bit(*q), reference().read(key + ".weight"), key + " weight");
    }
  }
}

TEST_CASE("bnb4bit reference: logits of bitsandbytes' 4-bit folders match transformers'") {
  // transformers multiplies the dequantized weights in f32: so does the f32 product, which this
  // compares (the integer decode product that few rows take by default rounds the activations to
  // 8 bits, ops/quant4.h, and is tested against its own bound in tests/ops/test_quant4_int8.cpp).
  struct F32DecodeProduct {
    F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::f32); }
    ~F32DecodeProduct() { ops::set_quant4_decode_product(ops::Quant4DecodeProduct::automatic); }
  } f32_decode_product;
  const Tensor ids_1d = reference().read("input_ids");
  const int64_t length = ids_1d.numel();
  const Tensor ids = ids_1d.reshape({1, length});
  for (const Variant& variant : kVariants) {
    const std::string folder = variant.folder;
    CAPTURE(folder);
    const auto model = llama::LlamaForCausalLM::load((fixture_dir() / variant.folder).string());
    const Tensor expected = reference().read(std::string(variant.folder) + "/logits");
    const Tensor logits = model->forward(ids).reshape(expected.shape());
    // The same dequantized weights in f32, multiplied and summed in other orders: the logits
    // (up to 3.5 in size) differ by float rounding only, 3.4e-6 at most when this was written.
    // Mistakes are far larger (measured in transformers): scales rounded to bf16 move them by
    // 2.5e-2, one pair of neighbouring block scales swapped by 0.1 to 0.9.
    CHECK_CLOSE(logits, expected, (Tolerance{1e-5, 1e-5}));
  }
}

TEST_CASE("bnb4bit reference: ops::quantize_4bit of the f32 weights gives bitsandbytes' bytes") {
  const safetensors::Checkpoint original = safetensors::Checkpoint::open((fixture_dir() / "f32").string());
  for (const Variant& variant : kVariants) {
    const std::string folder = variant.folder;
    CAPTURE(folder);
    const safetensors::Checkpoint bnb = safetensors::Checkpoint::open((fixture_dir() / variant.folder).string());
    Departures departures;
    for (const std::string& name : projection_names(original)) {
      const Tensor weight = original.read(name);
      const ops::Quantized4Bit q = ops::quantize_4bit(weight, variant.format, kBlocksize, variant.double_quant);
      safetensors::NamedTensors tensors;
      bnb4bit::append_quantized_weight(tensors, name, q);
      check_against_bitsandbytes(as_map(tensors), bnb, name, variant, weight, departures);
    }
    report(folder, departures);
  }
}

TEST_CASE("bnb4bit reference: boundary values quantize as bitsandbytes does, but for the known departures") {
  // edge/weight [3, 72]: a block of absmax 1 holding every f32 midpoint bitsandbytes compares
  // with (NF4's and FP4's), zeros of both signs and +-1e-4; an all-zero block; a random one; and
  // an all-zero partial last block.
  const Tensor weight = reference().read("edge/weight");
  const std::vector<float> values = weight.to_vector<float>();
  for (const Quant4Format format : {Quant4Format::nf4, Quant4Format::fp4}) {
    const std::string prefix = std::string("edge/") + ops::quant4_format_name(format);
    CAPTURE(prefix);
    const ops::Quantized4Bit q = ops::quantize_4bit(weight, format, kBlocksize, false);
    Departures departures;
    check_codes(bytes_of(q.codes), bytes_of(reference().read(prefix + "/codes")), values, format, departures);
    check_plain_absmax(q.absmax, reference().read(prefix + "/absmax"), q.numel(), departures);
    report(prefix, departures);
  }
}

TEST_CASE("bnb4bit reference: lamina quantize's tensors are the ones bitsandbytes saved") {
  // What `lamina quantize` does (tools/quantize.cpp), with the same library calls: every default
  // 4-bit weight quantized, everything else kept, one checkpoint written.
  const fs::path original_dir = fixture_dir() / "f32";
  const safetensors::Checkpoint original = safetensors::Checkpoint::open(original_dir.string());
  const json::Value original_config = json::parse_file((original_dir / "config.json").string());
  for (const Variant& variant : kVariants) {
    const std::string folder = variant.folder;
    CAPTURE(folder);
    const fs::path bnb_dir = fixture_dir() / variant.folder;
    safetensors::NamedTensors tensors;
    for (const std::string& name : original.names()) {
      const Tensor tensor = original.read(name);
      if (bnb4bit::is_default_quantized_weight(name))
        bnb4bit::append_quantized_weight(tensors, name,
                                         ops::quantize_4bit(tensor, variant.format, kBlocksize, variant.double_quant));
      else
        tensors.emplace_back(name, tensor);
    }
    ScratchDir dir(std::string("bnb4bit-reference-") + variant.folder);
    safetensors::save_checkpoint(dir.path.string(), tensors);
    const safetensors::Checkpoint written = safetensors::Checkpoint::open(dir.path.string());
    const safetensors::Checkpoint bnb = safetensors::Checkpoint::open(bnb_dir.string());

    REQUIRE(written.names() == bnb.names());
    for (const std::string& name : bnb.names()) {
      CAPTURE(name);
      CHECK(written.info(name).file_dtype == bnb.info(name).file_dtype);
      // (A quant_state's length follows the offset's repr: compared parsed below.)
      if (name.find(".quant_state.") == std::string::npos) CHECK(written.info(name).shape == bnb.info(name).shape);
    }
    std::map<std::string, Tensor> read_back;
    for (const std::string& name : written.names()) read_back.emplace(name, written.read(name));
    Departures departures;
    const std::vector<std::string> projections = projection_names(original);
    for (const std::string& name : projections)
      check_against_bitsandbytes(read_back, bnb, name, variant, original.read(name), departures);
    // Everything transformers leaves alone (embeddings, norms, lm_head): the same bytes.
    int64_t kept = 0;
    for (const std::string& name : original.names()) {
      if (bnb4bit::is_default_quantized_weight(name)) continue;
      CAPTURE(name);
      CHECK(bytes_of(read_back.at(name)) == bytes_of(bnb.read(name)));
      ++kept;
    }
    CHECK(kept == int64_t(original.names().size() - projections.size()));

    // config.json: transformers' quantization_config is lamina's for the same settings (the
    // compute dtype is a load-time choice: the fixture asked for float32, lamina's default is
    // bfloat16), and the rest of the config is the original's.
    const json::Value bnb_config = json::parse_file((bnb_dir / "config.json").string());
    bnb4bit::QuantizationConfig settings;
    settings.format = variant.format;
    settings.double_quant = variant.double_quant;
    settings.compute_dtype = "float32";
    CHECK(canonical(bnb4bit::quantization_config_json(settings)) == canonical(bnb_config.at("quantization_config")));
    const auto read_settings = bnb4bit::read_quantization_config(bnb_config);
    REQUIRE(read_settings.has_value());
    CHECK(read_settings->format == variant.format);
    CHECK(read_settings->double_quant == variant.double_quant);
    CHECK(read_settings->compute_dtype == "float32");
    CHECK(canonical(without(bnb_config, "quantization_config")) == canonical(original_config));
  }
}
