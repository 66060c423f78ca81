// Tests for model/safetensors: round trips of every dtype, every read-side validation error (from
// hand-made bytes), sharded checkpoints, write atomicity, and interop with the Python `safetensors`
// package through scripts/ref/safetensors_ref.py (skipped when BONSAI_PYTHON/BONSAI_SOURCE_DIR are
// not set).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/safetensors.h"

namespace st = bonsai::safetensors;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---- helpers ----------------------------------------------------------------------------------

// Minimal SHA-256 (FIPS 180-4), so tensor bytes can be compared with the Python side's digests
// without linking a crypto library into the tests.
class Sha256 {
 public:
  static std::string hex(const uint8_t* data, size_t n) {
    Sha256 s;
    s.update(data, n);
    return s.finish();
  }

 private:
  void update(const uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      block_[used_++] = p[i];
      if (used_ == 64) compress();
    }
    length_ += n;
  }
  std::string finish() {
    const uint64_t bits = length_ * 8;
    block_[used_++] = 0x80;
    if (used_ > 56) {
      while (used_ < 64) block_[used_++] = 0;
      compress();
    }
    while (used_ < 56) block_[used_++] = 0;
    for (int i = 7; i >= 0; --i) block_[used_++] = static_cast<uint8_t>(bits >> (8 * i));
    compress();
    std::string out;
    char buf[9];
    for (uint32_t v : h_) {
      std::snprintf(buf, sizeof buf, "%08x", v);
      out += buf;
    }
    return out;
  }
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t{block_[4 * i]} << 24) | (uint32_t{block_[4 * i + 1]} << 16) |
             (uint32_t{block_[4 * i + 2]} << 8) | uint32_t{block_[4 * i + 3]};
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 =
          h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) h_[i] += add[i];
    used_ = 0;
  }
  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block_[64] = {};
  size_t used_ = 0;
  uint64_t length_ = 0;
};

std::string sha256(const st::TensorView& t) { return Sha256::hex(t.data, t.nbytes); }

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "bonsai_st_XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : throw std::runtime_error("mkdtemp failed");
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }
  const std::string& path() const { return path_; }
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  std::string path_;
};

// Bytes of a safetensors file with the given header text and `data_bytes` bytes of data.
std::vector<uint8_t> make_file(const std::string& header, size_t data_bytes = 0) {
  std::vector<uint8_t> out(8);
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  for (size_t i = 0; i < data_bytes; ++i) out.push_back(static_cast<uint8_t>(i * 7 + 1));
  return out;
}

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Parses `bytes` as "bad.safetensors" and returns the bonsai::Error message ("" if none).
std::string parse_error(const std::vector<uint8_t>& bytes) {
  try {
    st::File::parse(bytes.data(), bytes.size(), "bad.safetensors");
  } catch (const bonsai::Error& e) {
    EXPECT_FALSE(e.hint().empty()) << e.what();
    return e.what();
  }
  return "";
}

// Expects parsing to fail with a message naming the file and containing every one of `parts`.
void expect_parse_error(const std::vector<uint8_t>& bytes, const std::vector<std::string>& parts) {
  const std::string msg = parse_error(bytes);
  ASSERT_FALSE(msg.empty()) << "parse succeeded, expected an error containing " << parts[0];
  EXPECT_NE(msg.find("'bad.safetensors'"), std::string::npos) << msg;
  for (const auto& p : parts)
    EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

// Owns the bytes behind a set of views for writing.
struct Tensors {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<st::TensorView> views;
  void add(const std::string& name, st::DType d, std::vector<int64_t> shape, uint32_t seed = 1) {
    st::TensorView v;
    v.name = name;
    v.dtype = d;
    v.shape = std::move(shape);
    v.nbytes = static_cast<size_t>(v.numel()) * st::dtype_size(d);
    std::vector<uint8_t> bytes(v.nbytes);
    uint32_t x = seed * 2654435761u + 12345u;
    for (auto& b : bytes) {
      x = x * 1664525u + 1013904223u;
      b = static_cast<uint8_t>(x >> 24);
    }
    // Keep BOOL bytes 0/1: other readers may reject or normalize other values.
    if (d == st::DType::BOOL)
      for (auto& b : bytes) b &= 1;
    storage.push_back(std::move(bytes));
    views.push_back(v);
    // Re-point every view: push_back may have moved the storage vectors' buffers around.
    for (size_t i = 0; i < views.size(); ++i) views[i].data = storage[i].data();
  }
};

const std::vector<st::DType> kAllDTypes = {
    st::DType::F64,     st::DType::F32,     st::DType::F16, st::DType::BF16, st::DType::I64,
    st::DType::I32,     st::DType::I16,     st::DType::I8,  st::DType::U8,   st::DType::BOOL,
    st::DType::F8_E4M3, st::DType::F8_E5M2, st::DType::U16, st::DType::U32,  st::DType::U64};

const std::vector<std::vector<int64_t>> kOddShapes = {{}, {0}, {1}, {19, 3}, {111, 989}};

Tensors all_dtypes_odd_shapes() {
  Tensors t;
  uint32_t seed = 1;
  for (st::DType d : kAllDTypes) {
    for (const auto& shape : kOddShapes) {
      t.add(std::string(st::dtype_name(d)) + ".shape" + st::format_shape(shape), d, shape, seed++);
    }
  }
  return t;
}

void expect_same(const st::TensorView& got, const st::TensorView& want) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.dtype, want.dtype) << want.name;
  EXPECT_EQ(got.shape, want.shape) << want.name;
  ASSERT_EQ(got.nbytes, want.nbytes) << want.name;
  if (want.nbytes == 0) return;  // an empty tensor's data pointer may be null
  EXPECT_EQ(std::memcmp(got.data, want.data, want.nbytes), 0) << want.name;
}

// ---- dtypes -----------------------------------------------------------------------------------

TEST(SafetensorsDType, NamesSizesAndUnknown) {
  for (st::DType d : kAllDTypes) EXPECT_EQ(st::dtype_from_name(st::dtype_name(d), "ctx"), d);
  EXPECT_EQ(st::dtype_size(st::DType::BF16), 2u);
  EXPECT_EQ(st::dtype_size(st::DType::U64), 8u);
  EXPECT_EQ(st::dtype_size(st::DType::F8_E5M2), 1u);
  try {
    st::dtype_from_name("Q4_K", "my context");
    FAIL() << "expected an error";
  } catch (const bonsai::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("my context"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'Q4_K'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("F64, F32, F16, BF16"), std::string::npos) << msg;
  }
  EXPECT_EQ(st::format_shape({}), "[]");
  EXPECT_EQ(st::format_shape({19, 3}), "[19, 3]");
}

// ---- round trip -------------------------------------------------------------------------------

TEST(SafetensorsRoundTrip, AllDTypesOddShapesAndMetadata) {
  TempDir dir;
  Tensors t = all_dtypes_odd_shapes();
  const std::string path = dir.file("all.safetensors");
  st::write_file(path, t.views, {{"step", "42"}, {"note", "h\xc3\xa9llo"}});
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"all.safetensors"});

  st::File f = st::File::open(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_NE(f.mapping(), nullptr);
  ASSERT_EQ(f.tensors().size(), t.views.size());
  for (size_t i = 0; i < t.views.size(); ++i)
    expect_same(f.tensors()[i], t.views[i]);  // file order
  for (const auto& v : t.views) expect_same(f.get(v.name), v);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{
                              {"format", "pt"}, {"step", "42"}, {"note", "h\xc3\xa9llo"}}));
  EXPECT_EQ(f.find("nope"), nullptr);
  EXPECT_EQ(f.get("BF16.shape[]").numel(), 1);
  EXPECT_EQ(f.get("U8.shape[0]").numel(), 0);

  // Header: 8-aligned length, data starts right after it, and {"format":"pt"} is in it.
  const std::vector<uint8_t> bytes = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  EXPECT_EQ(n % 8, 0u);
  size_t total = 0;
  for (const auto& v : t.views) total += v.nbytes;
  EXPECT_EQ(bytes.size(), 8 + n + total);
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(n));
  EXPECT_NE(header.find("\"__metadata__\":{\"format\":\"pt\""), std::string::npos)
      << header.substr(0, 200);
  EXPECT_EQ(f.tensors().front().data, f.mapping()->data() + 8 + n);

  // The in-memory entry point sees the same file.
  st::File g = st::File::parse(bytes.data(), bytes.size(), "mem");
  EXPECT_EQ(g.mapping(), nullptr);
  EXPECT_EQ(g.path(), "mem");
  ASSERT_EQ(g.tensors().size(), t.views.size());
  for (size_t i = 0; i < t.views.size(); ++i) expect_same(g.tensors()[i], t.views[i]);
}

TEST(SafetensorsRoundTrip, ViewsOutliveTheFileObjectThroughTheMapping) {
  TempDir dir;
  Tensors t;
  t.add("w", st::DType::F32, {4, 4});
  st::write_file(dir.file("w.safetensors"), t.views);
  std::shared_ptr<bonsai::MappedFile> keep;
  const uint8_t* data = nullptr;
  {
    st::File f = st::File::open(dir.file("w.safetensors"));
    keep = f.mapping();
    data = f.get("w").data;
  }
  EXPECT_EQ(std::memcmp(data, t.storage[0].data(), 64), 0);
}

TEST(SafetensorsRoundTrip, EmptyFileAndCallerFormatWins) {
  TempDir dir;
  st::write_file(dir.file("empty.safetensors"), {}, {{"format", "mlx"}});
  st::File f = st::File::open(dir.file("empty.safetensors"));
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_EQ(f.metadata().at("format"), "mlx");
}

TEST(SafetensorsRead, AcceptsValidEdgeCases) {
  // No metadata, space padding, null metadata, several empty tensors at one offset.
  const auto empty = make_file("{}");
  st::File a = st::File::parse(empty.data(), empty.size(), "a");
  EXPECT_TRUE(a.tensors().empty());
  auto bytes =
      make_file(R"({"__metadata__":null,"z":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},)"
                R"("y":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},)"
                R"("x":{"dtype":"I32","shape":[],"data_offsets":[0,4]}}     )",
                4);
  st::File b = st::File::parse(bytes.data(), bytes.size(), "b");
  ASSERT_EQ(b.tensors().size(), 3u);
  EXPECT_EQ(b.tensors()[0].name, "x");
  EXPECT_EQ(b.tensors()[0].data, bytes.data() + bytes.size() - 4);
  EXPECT_TRUE(b.metadata().empty());
  EXPECT_EQ(b.get("z").nbytes, 0u);
}

TEST(SafetensorsRead, GetMissingNamesFileTensorAndNearNames) {
  auto bytes = make_file(
      R"({"model.layers.0.mlp.up_proj.weight":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("model.layers.0.mlp.down_proj.weight":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      2);
  st::File f = st::File::parse(bytes.data(), bytes.size(), "model.safetensors");
  try {
    f.get("model.layers.0.mlp.up_proj.weigth");
    FAIL() << "expected an error";
  } catch (const bonsai::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'model.safetensors'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("no tensor 'model.layers.0.mlp.up_proj.weigth'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("closest names: 'model.layers.0.mlp.up_proj.weight'"), std::string::npos)
        << msg;
  }
}

// ---- read-side validation ---------------------------------------------------------------------

TEST(SafetensorsErrors, ShorterThanEightBytes) {
  expect_parse_error({1, 2, 3, 4, 5}, {"5 bytes", "shorter than the 8-byte"});
  expect_parse_error({}, {"0 bytes"});
}

TEST(SafetensorsErrors, HeaderLengthLargerThanFile) {
  auto bytes = make_file("{}", 10);  // 20 bytes in all
  bytes[0] = 0xe8, bytes[1] = 0x03;  // claims 1000
  expect_parse_error(bytes, {"header length 1000", "12 bytes after the length field", "20 bytes"});
  std::vector<uint8_t> huge(16, 0xff);
  expect_parse_error(huge, {"header length 18446744073709551615"});
}

TEST(SafetensorsErrors, HeaderLengthOverLimit) {
  std::vector<uint8_t> bytes(8 + st::kMaxHeaderBytes + 8, ' ');
  const uint64_t n = st::kMaxHeaderBytes + 8;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(n >> (8 * i));
  bytes[8] = '{';
  expect_parse_error(bytes, {"header length 100000008", "limit of 100000000"});
}

TEST(SafetensorsErrors, HeaderNotJsonOrNotObject) {
  expect_parse_error(make_file("{not json"), {"not valid", "invalid JSON"});
  expect_parse_error(make_file("[1, 2]"), {"does not start with '{'"});
  expect_parse_error(make_file(""), {"does not start with '{'"});
  expect_parse_error(make_file("{} trailing"), {"invalid JSON"});
  expect_parse_error(make_file("{\"a\xff\":1}"), {"invalid JSON"});  // not UTF-8
  expect_parse_error(make_file(R"({"t":{"dtype":"U8","shape":[[[[1]]]],"data_offsets":[0,1]}})", 1),
                     {"nested deeper"});
}

TEST(SafetensorsErrors, EntryMissingFieldsOrMalformed) {
  expect_parse_error(make_file(R"({"w":{"shape":[1],"data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "no \"dtype\""});
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "no \"shape\""});
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":[1]}})", 1),
                     {"tensor 'w'", "no \"data_offsets\""});
  expect_parse_error(make_file(R"({"w":5})"), {"tensor 'w'", "must be a JSON object"});
  expect_parse_error(make_file(R"({"w":{"dtype":8,"shape":[1],"data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "\"dtype\" must be a string"});
  expect_parse_error(
      make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}})", 1),
      {"tensor 'w'", "unexpected key 'extra'"});
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[1]}})", 1),
                     {"tensor 'w'", "[begin, end]"});
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":{},"data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "must be an array"});
}

TEST(SafetensorsErrors, UnknownDType) {
  expect_parse_error(make_file(R"({"w":{"dtype":"Q4_0","shape":[1],"data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "unknown dtype 'Q4_0'", "known: F64, F32"});
}

TEST(SafetensorsErrors, NegativeFractionalOrAbsurdShape) {
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":[-1,2],"data_offsets":[0,2]}})", 2),
                     {"tensor 'w'", "non-negative integers", "-1"});
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}})", 1),
                     {"tensor 'w'", "non-negative integers"});
  expect_parse_error(
      make_file(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,1]}})", 1),
      {"tensor 'w'", "fit in int64"});
  std::string rank65 = "[1";
  for (int i = 0; i < 64; ++i) rank65 += ",1";
  expect_parse_error(
      make_file(R"({"w":{"dtype":"U8","shape":)" + rank65 + R"(],"data_offsets":[0,1]}})", 1),
      {"tensor 'w'", "65 dimensions"});
}

TEST(SafetensorsErrors, NumelOverflow) {
  expect_parse_error(
      make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})", 4),
      {"tensor 'w'", "overflows"});
  // numel fits but numel * 8 bytes does not.
  expect_parse_error(
      make_file(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
      {"tensor 'w'", "overflows"});
}

TEST(SafetensorsErrors, BeginAfterEnd) {
  expect_parse_error(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", 8),
                     {"tensor 'w'", "[8, 4]", "begin after they end"});
}

TEST(SafetensorsErrors, ByteSizeDoesNotMatchShape) {
  expect_parse_error(
      make_file(
          R"({"model.layers.0.mlp.up_proj.weight":{"dtype":"F16","shape":[1536,576],"data_offsets":[0,1000]}})",
          1000),
      {"tensor 'model.layers.0.mlp.up_proj.weight' has dtype F16 and shape [1536, 576] = 1769472 "
       "bytes, "
       "but its data_offsets [0, 1000] span 1000 bytes"});
}

TEST(SafetensorsErrors, OffsetsPastEndOfData) {
  expect_parse_error(make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                     {"tensor 'w'", "past the end of the data section (4 bytes)"});
}

TEST(SafetensorsErrors, OverlapGapAndTrailingBytes) {
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               12),
                     {"tensor 'b'", "overlap tensor 'a'"});
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                               12),
                     {"tensor 'b'", "gap", "[4, 8)"});
  expect_parse_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8),
                     {"data section has 8 bytes", "only the first 4"});
  // The same bytes used twice by identical offsets is an overlap too.
  expect_parse_error(make_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                               R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
                               4),
                     {"overlap"});
}

TEST(SafetensorsErrors, DuplicateNamesAndMetadataKeys) {
  // nlohmann would silently keep the last duplicate; we reject the file instead.
  expect_parse_error(make_file(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                               2),
                     {"duplicate tensor name 'w'"});
  expect_parse_error(make_file(R"({"__metadata__":{"a":"1","a":"2"}})"), {"duplicate key 'a'"});
}

TEST(SafetensorsErrors, MetadataNotStrings) {
  expect_parse_error(make_file(R"({"__metadata__":{"step":42}})"),
                     {"\"__metadata__\"", "'step'", "must be a string"});
  expect_parse_error(make_file(R"({"__metadata__":{"x":{"y":"z"}}})"), {"'x'", "must be a string"});
  expect_parse_error(make_file(R"({"__metadata__":["a"]})"),
                     {"\"__metadata__\" must be an object"});
}

TEST(SafetensorsErrors, OpenNamesThePath) {
  TempDir dir;
  const std::string path = dir.file("trunc.safetensors");
  auto bytes = make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 16);
  bytes.resize(bytes.size() - 3);
  write_bytes(path, bytes);
  try {
    st::File::open(path);
    FAIL() << "expected an error";
  } catch (const bonsai::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'" + path + "'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("tensor 'w'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(st::File::open(dir.file("absent.safetensors")), bonsai::Error);
}

// ---- write-side validation and atomicity ------------------------------------------------------

TEST(SafetensorsWrite, BadViewThrowsAndLeavesNoFile) {
  TempDir dir;
  Tensors t;
  t.add("ok", st::DType::F32, {3});
  t.add("short", st::DType::F32, {2, 2});
  t.views[1].nbytes = 12;  // shape says 16
  try {
    st::write_file(dir.file("x.safetensors"), t.views);
    FAIL() << "expected an error";
  } catch (const bonsai::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("tensor 'short' has dtype F32 and shape [2, 2] = 16 bytes"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("12 bytes"), std::string::npos) << msg;
  }
  EXPECT_TRUE(dir.listing().empty());

  t.views[1].nbytes = 16;
  t.views[1].name = "ok";
  EXPECT_THROW(st::write_file(dir.file("x.safetensors"), t.views), bonsai::Error);  // duplicate
  t.views[1].name = "__metadata__";
  EXPECT_THROW(st::write_file(dir.file("x.safetensors"), t.views), bonsai::Error);
  t.views[1].name = "neg";
  t.views[1].shape = {-2, -8};
  EXPECT_THROW(st::write_file(dir.file("x.safetensors"), t.views), bonsai::Error);
  EXPECT_THROW(st::write_checkpoint(dir.file("ckpt"), t.views, 8), bonsai::Error);
  EXPECT_TRUE(dir.listing().empty());
}

TEST(SafetensorsWrite, NonexistentDirectoryLeavesNothing) {
  TempDir dir;
  Tensors t;
  t.add("w", st::DType::U8, {5});
  EXPECT_THROW(st::write_file(dir.file("no/such/dir/x.safetensors"), t.views), bonsai::Error);
  EXPECT_TRUE(dir.listing().empty());
}

TEST(SafetensorsWrite, InvalidUtf8NameThrowsAndLeavesNothing) {
  TempDir dir;
  Tensors t;
  t.add("bad\xff", st::DType::U8, {1});
  EXPECT_THROW(st::write_file(dir.file("x.safetensors"), t.views), bonsai::Error);
  EXPECT_TRUE(dir.listing().empty());
}

TEST(SafetensorsWrite, OverwriteReplacesWholeFile) {
  TempDir dir;
  Tensors a, b;
  a.add("big", st::DType::F64, {1000});
  b.add("small", st::DType::U8, {3});
  st::write_file(dir.file("m.safetensors"), a.views);
  st::write_file(dir.file("m.safetensors"), b.views);
  st::File f = st::File::open(dir.file("m.safetensors"));
  ASSERT_EQ(f.tensors().size(), 1u);
  expect_same(f.tensors()[0], b.views[0]);
  EXPECT_EQ(dir.listing(), std::vector<std::string>{"m.safetensors"});
}

// ---- sharded checkpoints ----------------------------------------------------------------------

// 3 x 100 B, one 1000 B (over the limit), 2 x 100 B: with 250 B shards that is
// [a b] [c] [big] [d e].
Tensors shard_tensors() {
  Tensors t;
  t.add("a", st::DType::U8, {100}, 1);
  t.add("b", st::DType::I32, {25}, 2);
  t.add("c", st::DType::U8, {10, 10}, 3);
  t.add("big", st::DType::F32, {250}, 4);
  t.add("d", st::DType::BF16, {50}, 5);
  t.add("e", st::DType::U8, {100}, 6);
  return t;
}

TEST(SafetensorsCheckpoint, ShardedWriteIndexAndReadBack) {
  TempDir dir;
  Tensors t = shard_tensors();
  auto written = st::write_checkpoint(dir.path(), t.views, 250, {{"k", "v"}});
  const std::vector<std::string> want = {
      "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
      "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
      "model.safetensors.index.json"};
  EXPECT_EQ(written, want);
  EXPECT_EQ(dir.listing(), want);

  const json index = json::parse(read_bytes(dir.file("model.safetensors.index.json")));
  EXPECT_EQ(index["metadata"]["total_size"], 1500);
  EXPECT_EQ(index["weight_map"], json({{"a", want[0]},
                                       {"b", want[0]},
                                       {"c", want[1]},
                                       {"big", want[2]},
                                       {"d", want[3]},
                                       {"e", want[3]}}));

  for (const std::string& p : {dir.path(), dir.file("model.safetensors.index.json")}) {
    st::Checkpoint c = st::Checkpoint::open(p);
    EXPECT_EQ(c.names(), (std::vector<std::string>{"a", "b", "big", "c", "d", "e"}));
    for (const auto& v : t.views) expect_same(c.get(v.name), v);
    EXPECT_EQ(c.file_of("big").path(), dir.file(want[2]));
    EXPECT_EQ(c.file_of("big").metadata().at("k"), "v");
    EXPECT_EQ(c.find("zzz"), nullptr);
    EXPECT_EQ(c.files().size(), 4u);
  }
  // A single shard is itself a valid checkpoint.
  EXPECT_EQ(st::Checkpoint::open(dir.file(want[3])).names(), (std::vector<std::string>{"d", "e"}));
}

TEST(SafetensorsCheckpoint, SingleFileWhenEverythingFitsAndStaleFilesRemoved) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.path(), t.views, 250);
  write_bytes(dir.file("model_ema.safetensors"),
              read_bytes(dir.file("model-00001-of-00004.safetensors")));
  write_bytes(dir.file("config.json"), {'{', '}'});

  // Everything fits: one plain file, the old index and shards are gone, other files untouched.
  EXPECT_EQ(st::write_checkpoint(dir.path(), t.views, 1 << 20),
            std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(dir.listing(), (std::vector<std::string>{"config.json", "model.safetensors",
                                                     "model_ema.safetensors"}));
  st::Checkpoint c = st::Checkpoint::open(dir.path());
  EXPECT_EQ(c.names().size(), 6u);
  expect_same(c.get("big"), t.views[3]);

  // And back to shards: model.safetensors is removed.
  EXPECT_EQ(st::write_checkpoint(dir.path(), t.views, 1300).size(), 3u);
  EXPECT_EQ(dir.listing(),
            (std::vector<std::string>{"config.json", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors",
                                      "model.safetensors.index.json", "model_ema.safetensors"}));
}

TEST(SafetensorsCheckpoint, WriteCreatesDirectory) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.file("out/step-1"), t.views, 250);
  EXPECT_EQ(st::Checkpoint::open(dir.file("out/step-1")).names().size(), 6u);
  EXPECT_THROW(st::write_checkpoint(dir.file("x"), t.views, 0), bonsai::Error);
}

TEST(SafetensorsCheckpoint, PrefersIndexOverSingleFile) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.path(), t.views, 250);
  Tensors other;
  other.add("only", st::DType::U8, {1});
  st::write_file(dir.file("model.safetensors"), other.views);
  EXPECT_EQ(st::Checkpoint::open(dir.path()).names().size(), 6u);
  EXPECT_EQ(st::Checkpoint::open(dir.file("model.safetensors")).names(),
            std::vector<std::string>{"only"});
}

std::string checkpoint_error(const std::string& path) {
  try {
    st::Checkpoint::open(path);
  } catch (const bonsai::Error& e) {
    return e.what();
  }
  return "";
}

TEST(SafetensorsCheckpoint, MissingShard) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.path(), t.views, 250);
  fs::remove(dir.file("model-00003-of-00004.safetensors"));
  const std::string msg = checkpoint_error(dir.path());
  EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shard 'model-00003-of-00004.safetensors'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'big'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

TEST(SafetensorsCheckpoint, IndexNamesTensorAbsentFromShard) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.path(), t.views, 250);
  const std::string index_path = dir.file("model.safetensors.index.json");
  json index = json::parse(read_bytes(index_path));
  index["weight_map"]["ghost.weight"] = "model-00002-of-00004.safetensors";
  std::ofstream(index_path) << index.dump();
  std::string msg = checkpoint_error(dir.path());
  EXPECT_NE(msg.find("tensor 'ghost.weight'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shard 'model-00002-of-00004.safetensors'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no shard does"), std::string::npos) << msg;

  // Mapped to the wrong shard: the message says where it really is.
  index["weight_map"].erase("ghost.weight");
  index["weight_map"]["a"] = "model-00004-of-00004.safetensors";
  std::ofstream(index_path) << index.dump();
  msg = checkpoint_error(dir.path());
  EXPECT_NE(msg.find("tensor 'a'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model-00001-of-00004.safetensors"), std::string::npos) << msg;
}

TEST(SafetensorsCheckpoint, TensorInTwoShardsAndBadIndexes) {
  TempDir dir;
  Tensors t = shard_tensors();
  st::write_checkpoint(dir.path(), t.views, 250);
  // Shard 2 rewritten to also hold "a", which shard 1 has.
  Tensors dup;
  dup.add("c", st::DType::U8, {10, 10}, 3);
  dup.add("a", st::DType::U8, {100}, 1);
  st::write_file(dir.file("model-00002-of-00004.safetensors"), dup.views);
  std::string msg = checkpoint_error(dir.path());
  EXPECT_NE(msg.find("tensor 'a' is in two shards"), std::string::npos) << msg;

  const std::string index_path = dir.file("model.safetensors.index.json");
  std::ofstream(index_path) << R"({"weight_map":{"a":"../evil.safetensors"}})";
  EXPECT_NE(checkpoint_error(dir.path()).find("not a relative path"), std::string::npos);
  std::ofstream(index_path) << R"({"weight_map":{"a":"x","a":"y"}})";
  EXPECT_NE(checkpoint_error(dir.path()).find("duplicate key 'a'"), std::string::npos);
  std::ofstream(index_path) << R"({"metadata":{}})";
  EXPECT_NE(checkpoint_error(dir.path()).find("\"weight_map\""), std::string::npos);
  std::ofstream(index_path) << R"({"weight_map":{"a":3}})";
  EXPECT_NE(checkpoint_error(dir.path()).find("tensor 'a'"), std::string::npos);
  std::ofstream(index_path) << "not json";
  EXPECT_NE(checkpoint_error(dir.path()).find("index is not valid"), std::string::npos);
}

TEST(SafetensorsCheckpoint, MissingPathsAndUnknownNames) {
  TempDir dir;
  std::string msg = checkpoint_error(dir.file("nope"));
  EXPECT_NE(msg.find("no such file or directory"), std::string::npos) << msg;
  msg = checkpoint_error(dir.path());  // empty directory
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;

  Tensors t = shard_tensors();
  st::write_file(dir.file("weights.safetensors"), t.views);  // the only .safetensors: accepted
  st::Checkpoint c = st::Checkpoint::open(dir.path());
  EXPECT_EQ(c.path(), dir.file("weights.safetensors"));
  try {
    c.get("bigg");
    FAIL() << "expected an error";
  } catch (const bonsai::Error& e) {
    msg = e.what();
    EXPECT_NE(msg.find("checkpoint '" + dir.file("weights.safetensors") + "'"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("no tensor 'bigg'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("closest names: 'big'"), std::string::npos) << msg;
  }
  EXPECT_THROW(c.file_of("bigg"), bonsai::Error);
}

// ---- interop with the Python safetensors package ----------------------------------------------

// Runs a command and returns its stdout; fails the test if it exits non-zero.
std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return out;
  }
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int rc = ::pclose(p);
  EXPECT_EQ(rc, 0) << "command failed: " << cmd;
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// The command prefix "python script", or "" (and a reason) when the environment does not say.
std::string reference_command(std::string* why) {
  const char* py = bonsai::test::env_cstr("BONSAI_PYTHON");
  const char* src = bonsai::test::env_cstr("BONSAI_SOURCE_DIR");
  if (py == nullptr || *py == '\0') return *why = "BONSAI_PYTHON is not set", "";
  if (src == nullptr || *src == '\0') return *why = "BONSAI_SOURCE_DIR is not set", "";
  return shell_quote(py) + " " + shell_quote(std::string(src) + "/scripts/ref/safetensors_ref.py");
}

void expect_matches_summary(const st::File& f, const json& summary) {
  std::map<std::string, std::string> meta =
      summary["metadata"].get<std::map<std::string, std::string>>();
  EXPECT_EQ(f.metadata(), meta) << f.path();
  ASSERT_EQ(f.tensors().size(), summary["tensors"].size()) << f.path();
  for (const auto& [name, want] : summary["tensors"].items()) {
    const st::TensorView& t = f.get(name);
    EXPECT_EQ(st::dtype_name(t.dtype), want["dtype"].get<std::string>()) << name;
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(sha256(t), want["sha256"].get<std::string>()) << name;
  }
}

TEST(SafetensorsInterop, Sha256SelfCheck) {
  const std::string abc = "abc";
  EXPECT_EQ(Sha256::hex(reinterpret_cast<const uint8_t*>(abc.data()), 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks(64 * 2 - 3, 'x');
  EXPECT_EQ(Sha256::hex(nullptr, 0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(
      Sha256::hex(reinterpret_cast<const uint8_t*>(two_blocks.data()), two_blocks.size()).size(),
      64u);
}

TEST(SafetensorsInterop, ReadsFilesWrittenByPython) {
  std::string why;
  const std::string cmd = reference_command(&why);
  if (cmd.empty()) GTEST_SKIP() << why;
  TempDir dir;
  const json out = json::parse(run(cmd + " write " + shell_quote(dir.path())));
  ASSERT_EQ(out["files"].size(), 2u);
  for (const auto& [name, summary] : out["files"].items()) {
    SCOPED_TRACE(name);
    expect_matches_summary(st::File::open(dir.file(name)), summary);
  }
}

TEST(SafetensorsInterop, PythonReadsFilesWeWrote) {
  std::string why;
  const std::string cmd = reference_command(&why);
  if (cmd.empty()) GTEST_SKIP() << why;
  TempDir dir;
  Tensors t = all_dtypes_odd_shapes();
  const std::map<std::string, std::string> meta = {{"step", "7"}, {"note", "\xe2\x9c\x93"}};
  st::write_file(dir.file("ours.safetensors"), t.views, meta);
  const json summary =
      json::parse(run(cmd + " check " + shell_quote(dir.file("ours.safetensors"))));
  ASSERT_EQ(summary["tensors"].size(), t.views.size());
  EXPECT_EQ(summary["metadata"], json({{"format", "pt"}, {"step", "7"}, {"note", "\xe2\x9c\x93"}}));
  for (const auto& v : t.views) {
    SCOPED_TRACE(v.name);
    const json& got = summary["tensors"][v.name];
    EXPECT_EQ(got["dtype"], st::dtype_name(v.dtype));
    EXPECT_EQ(got["shape"].get<std::vector<int64_t>>(), v.shape);
    EXPECT_EQ(got["sha256"], sha256(v));
  }
}

}  // namespace
