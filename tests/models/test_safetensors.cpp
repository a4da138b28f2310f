#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "models/io/safetensors.h"
#include "ops/ops.h"
#include "scratch_dir.h"
#include "tensor/io/json.h"
#include <sys/stat.h>
#include <unistd.h>

using namespace lamina;
using testing::ScratchDir;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

// A file with the given header JSON and `data_bytes` bytes of zeros after it.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += char((header.size() >> (8 * i)) & 0xFF);
  return out + header + std::string(data_bytes, '\0');
}

}  // namespace

TEST_CASE("the writer reproduces the spec's worked example byte for byte") {
  ScratchDir dir("st-example");
  const Tensor w = Tensor::from_vector(std::vector<double>{1.0, -2.5}, {2}, DType::f32);
  const Tensor b = Tensor::from_vector(std::vector<double>{0.5, 3.0}, {2}, DType::bf16);
  safetensors::save(dir / "x.safetensors", {{"b", b}, {"w", w}});
  const std::string bytes = read_bytes(dir / "x.safetensors");
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}})";
  REQUIRE(bytes.size() == 164);
  CHECK(bytes.substr(0, 8) == std::string("\x90\0\0\0\0\0\0\0", 8));
  CHECK(bytes.substr(8, 144) == header + "    ");
  CHECK(bytes.substr(152) == std::string("\x00\x00\x80\x3f\x00\x00\x20\xc0\x00\x3f\x40\x40", 12));
  CHECK_FALSE(fs::exists(dir / ("x.safetensors.tmp-" + std::to_string(::getpid()))));
}

TEST_CASE("safetensors round trip: every dtype, views of the mapping, any input layout") {
  ScratchDir dir("st-roundtrip");
  Generator gen(1);
  safetensors::NamedTensors tensors;
  for (DType dtype : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u8, DType::boolean})
    tensors.emplace_back(std::string("t_") + dtype_name(dtype), testing::random_tensor({3, 5}, dtype, gen, 0, 2));
  tensors.emplace_back("transposed", uniform({4, 6}, -1, 1, gen).transpose(0, 1));
  tensors.emplace_back("scalar", Tensor::scalar(7.5));
  tensors.emplace_back("empty", zeros({0, 3}));
  safetensors::save(dir / "all.safetensors", tensors, {{"note", "hi"}});
  const safetensors::File file = safetensors::File::open(dir / "all.safetensors");
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.metadata().at("note") == "hi");
  CHECK(file.tensors().size() == tensors.size());
  for (const auto& [name, original] : tensors) {
    CAPTURE(name);
    const Tensor loaded = file.read(name);
    CHECK(loaded.dtype() == original.dtype());
    CHECK(loaded.shape() == original.shape());
    CHECK(loaded.to_vector<double>() == original.to_vector<double>());
  }
  // Aligned tensors are views of the file mapping (no copy) and writable without touching it.
  const Tensor view = file.read("t_f32");
  CHECK_FALSE(view.storage()->owns_memory());
  ops::fill_(view, 42.0);
  CHECK(safetensors::File::open(dir / "all.safetensors").read("t_f32").to_vector<double>() ==
        tensors[0].second.to_vector<double>());
}

TEST_CASE("int8 widens to i32 and unaligned data is copied") {
  ScratchDir dir("st-i8");
  // A BF16 tensor of 1 element then an I8 tensor, then an F32 tensor at an odd offset.
  std::string header = R"({"a":{"dtype":"I8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"F32","shape":[1],"data_offsets":[3,7]}})";
  std::string bytes = raw_file(header, 0);
  bytes += std::string("\xff\x02\x80", 3);
  const float one = 1.5f;
  bytes.append(reinterpret_cast<const char*>(&one), 4);
  write_bytes(dir / "odd.safetensors", bytes);
  const safetensors::File file = safetensors::File::open(dir / "odd.safetensors");
  CHECK(file.read("a").to_vector<int64_t>() == std::vector<int64_t>{-1, 2, -128});
  CHECK(file.read("a").dtype() == DType::i32);
  CHECK(file.read("b").item<float>() == 1.5f);
}

TEST_CASE("malformed files give clear errors naming the file and the problem") {
  ScratchDir dir("st-bad");
  const std::string good_header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  struct Case {
    const char* what;
    std::string bytes;
    const char* message;
  };
  std::string header_past_end = raw_file(good_header, 8);
  header_past_end[0] = char(200);
  const std::vector<Case> cases = {
      {"empty file", "", "is truncated: 0 bytes"},
      {"short file", std::string("\x08\0\0", 3), "is truncated: 3 bytes"},
      {"header length past EOF", header_past_end, "runs past the end of the file"},
      {"absurd header length", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8), "exceeds the limit"},
      {"truncated data", raw_file(good_header, 5), "cover 8 bytes of data but the file holds 5 (truncated file?)"},
      {"trailing bytes", raw_file(good_header, 9), "but the file holds 9"},
      {"malformed JSON", raw_file(R"({"w":{"dtype":"F32",})", 0), "(header):1:21: expected a string key"},
      {"not an object", raw_file("[1,2]", 0), "header is not a JSON object"},
      {"unknown dtype", raw_file(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2), "dtype F8_E4M3, which lamina does not read"},
      {"dtype/shape mismatch", raw_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "F32 [3] needs 12 bytes but data_offsets [0, 8] hold 8"},
      {"offsets out of range", raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "truncated file?"},
      {"inverted offsets", raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8), "invalid data_offsets [8, 0]"},
      {"overlapping tensors",
       raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "(overlapping data)"},
      {"hole", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "(a hole in the data)"},
      {"duplicate tensor", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
       "duplicate key \"a\""},
      {"metadata not strings", raw_file(R"({"__metadata__":{"format":1}})", 0), "__metadata__.format: expected a string"},
      {"negative size", raw_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,0]}})", 0), "negative size"},
      {"overflowing shape", raw_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0), "overflows 64 bits"},
      {"entry not an object", raw_file(R"({"w":"F32"})", 0), "bad.safetensors: tensor 'w': expected an object, got string"},
      {"entry without dtype", raw_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8),
       "bad.safetensors: tensor 'w': missing key \"dtype\""},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::string path = dir / "bad.safetensors";
    write_bytes(path, c.bytes);
    CHECK_THROWS_WITH_AS(safetensors::File::open(path), doctest::Contains(c.message), Error);
  }
  CHECK_THROWS_WITH_AS(safetensors::File::open(dir / "missing.safetensors"), doctest::Contains("cannot open"), Error);
}

TEST_CASE("BOOL tensors must hold 0 or 1: another byte is an error naming the tensor and its offset") {
  ScratchDir dir("st-bool");
  const std::string header = R"({"flags":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]}})";
  const std::string path = dir / "flags.safetensors";
  write_bytes(path, raw_file(header, 0) + std::string("\x01\x00\x01\x00", 4));
  CHECK(safetensors::File::open(path).read("flags").to_vector<int64_t>() == std::vector<int64_t>{1, 0, 1, 0});
  // Loading 0x05 as a bool is undefined behaviour (UBSan flags it): refused before any load.
  write_bytes(path, raw_file(header, 0) + std::string("\x01\x00\x05\x01", 4));
  const std::string expected = "tensor 'flags' (BOOL) holds the byte 5 at element 2 (file offset " +
                               std::to_string(8 + header.size() + 2) + "); a BOOL must be 0 or 1";
  CHECK_THROWS_WITH_AS(safetensors::File::open(path).read("flags"), doctest::Contains(expected.c_str()), Error);
}

TEST_CASE("a FIFO, a directory or a device in place of a safetensors file is refused, never waited on") {
  ScratchDir dir("st-fifo");
  const std::string fifo = dir / "model.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Opening a FIFO for reading blocks until a writer appears: without the check this hangs.
  CHECK_THROWS_WITH_AS(safetensors::File::open(fifo), doctest::Contains("model.safetensors is a FIFO (named pipe), not a regular file"),
                       Error);
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(dir.path.string()), doctest::Contains("is a FIFO (named pipe)"), Error);
  fs::remove(fifo);
  fs::create_directory(fifo);
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(dir.path.string()), doctest::Contains("model.safetensors is a directory, not a regular file"),
                       Error);
  CHECK_THROWS_WITH_AS(safetensors::File::open("/dev/zero"), doctest::Contains("/dev/zero is a character device"), Error);
  // The index of a sharded checkpoint goes through the JSON reader, which refuses it the same way.
  fs::remove(fifo);
  const std::string index = dir / "model.safetensors.index.json";
  REQUIRE(::mkfifo(index.c_str(), 0600) == 0);
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(dir.path.string()), doctest::Contains("index.json is a FIFO"), Error);
}

TEST_CASE("a failed save leaves the previous file intact and no temporary behind") {
  ScratchDir dir("st-atomic");
  const std::string path = dir / "m.safetensors";
  safetensors::save(path, {{"w", ones({4})}});
  const std::string before = read_bytes(path);
  CHECK_THROWS_WITH_AS(safetensors::save(path, {{"w", ones({4})}, {"bad", Tensor()}}), doctest::Contains("undefined"), Error);
  CHECK_THROWS_WITH_AS(safetensors::save(path, {{"w", ones({4})}, {"w", ones({2})}}), doctest::Contains("given twice"), Error);
  CHECK(read_bytes(path) == before);
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path)) files += entry.is_regular_file();
  CHECK(files == 1);
  CHECK_THROWS_WITH_AS(safetensors::save(dir / "no/such/dir/x.safetensors", {{"w", ones({1})}}), doctest::Contains("cannot write"), Error);
}

TEST_CASE("checkpoint folders: single file, shards with an index, and index errors") {
  ScratchDir dir("st-checkpoint");
  Generator gen(2);
  safetensors::NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("layer." + std::to_string(i), uniform({100}, -1, 1, gen));
  safetensors::save_checkpoint(dir.path.string(), tensors, 1000);  // 400 bytes each: two per shard
  CHECK(fs::exists(dir.path / "model-00001-of-00003.safetensors"));
  CHECK(fs::exists(dir.path / "model-00003-of-00003.safetensors"));
  const json::Value index = json::parse_file((dir.path / "model.safetensors.index.json").string());
  CHECK(index.at("metadata").at("total_size").as_int64() == 2000);
  CHECK(index.at("weight_map").at("layer.4").as_string() == "model-00003-of-00003.safetensors");
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(dir.path.string());
  CHECK(checkpoint.names().size() == 5);
  for (const auto& [name, tensor] : tensors) CHECK(checkpoint.read(name).to_vector<double>() == tensor.to_vector<double>());
  CHECK_THROWS_WITH_AS(checkpoint.read("layer.9"), doctest::Contains("has no tensor 'layer.9'"), Error);

  // The same weights in one file replace the shards' index.
  safetensors::save_checkpoint(dir.path.string(), tensors);
  CHECK_FALSE(fs::exists(dir.path / "model.safetensors.index.json"));
  CHECK(safetensors::Checkpoint::open(dir.path.string()).read("layer.2").to_vector<double>() ==
        tensors[2].second.to_vector<double>());

  ScratchDir broken("st-broken-index");
  safetensors::save((broken.path / "a.safetensors").string(), {{"x", ones({2})}});
  write_bytes((broken.path / "model.safetensors.index.json").string(),
              R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors"}})");
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(broken.path.string()),
                       doctest::Contains("lists tensor 'y' in a.safetensors but that file does not contain it"), Error);
  write_bytes((broken.path / "model.safetensors.index.json").string(),
              R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(broken.path.string()),
                       doctest::Contains("index.json lists the shard b.safetensors, which is not in the folder"), Error);
  write_bytes((broken.path / "model.safetensors.index.json").string(), R"({"metadata":{}})");
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(broken.path.string()),
                       doctest::Contains("model.safetensors.index.json: missing key \"weight_map\""), Error);
  ScratchDir empty("st-empty");
  CHECK_THROWS_WITH_AS(safetensors::Checkpoint::open(empty.path.string()), doctest::Contains("has neither model.safetensors"), Error);
}

TEST_CASE("the stories260k checkpoint reads and validates" * doctest::test_suite("assets")) {
  const fs::path dir = testing::assets_dir("stories260k");
  const safetensors::Checkpoint checkpoint = safetensors::Checkpoint::open(dir.string());
  CHECK(checkpoint.names().size() == 47);  // 5 layers x 9 + embedding + final norm (tied head)
  const Tensor embed = checkpoint.read("model.embed_tokens.weight");
  CHECK(embed.shape() == Shape{512, 64});
  CHECK(embed.dtype() == DType::f32);
  CHECK_FALSE(embed.storage()->owns_memory());  // mapped, not copied
}

TEST_CASE("release gives a consumed tensor's pages back; its values read again from the file") {
  const ScratchDir dir("safetensors-release");
  Generator generator(3);
  // Large enough to span many pages, between two small tensors that share pages with it.
  const Tensor big = randn({512, 1024}, generator);
  const Tensor before = randn({3}, generator), after = randn({5}, generator);
  safetensors::save(dir / "model.safetensors", {{"a", before}, {"big", big}, {"z", after}});
  const safetensors::File file = safetensors::File::open(dir / "model.safetensors");
  Tensor neighbour = file.read("a");
  CHECK(neighbour.to_vector<float>() == before.to_vector<float>());
  // A write to the neighbour's view (a private copy of its page) survives the release of "big".
  ops::fill_(neighbour, 7.0);
  CHECK(file.read("big").to_vector<float>() == big.to_vector<float>());
  file.release("big");
  CHECK(file.read("big").to_vector<float>() == big.to_vector<float>());
  CHECK(neighbour.to_vector<float>() == std::vector<float>(3, 7.0f));
  CHECK(file.read("z").to_vector<float>() == after.to_vector<float>());
  CHECK_THROWS_WITH_AS(file.release("missing"), doctest::Contains("has no tensor 'missing'"), Error);
}
