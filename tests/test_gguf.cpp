// Tests for the torch-free GGUF reader/writer (model/gguf.*) and the ggml block codecs
// (model/ggml_quants.*): writer -> reader round trips, one hand-crafted file per validation rule,
// the real GGUFs under $BONSAI_SHARED_DATA, and bit-exact dequantization against gguf-py's vectors
// written by scripts/ref/gguf_dequant_ref.py into $BONSAI_GGUF_REF_DIR.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/ggml_quants.h"
#include "model/gguf.h"

namespace bonsai::gguf {
namespace {

using bonsai::test::read_all;

using ::testing::HasSubstr;

// ---- byte helpers -----------------------------------------------------------------------------

template <typename T>
std::string le(T v) {
  std::string s(sizeof v, '\0');
  std::memcpy(&s[0], &v, sizeof v);
  return s;
}

std::string gstr(const std::string& s) { return le<uint64_t>(s.size()) + s; }

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Builds GGUF bytes piece by piece so each test can break exactly one rule.
class Crafter {
 public:
  Crafter& magic(std::string m) {
    magic_ = std::move(m);
    return *this;
  }
  Crafter& version(uint32_t v) {
    version_ = v;
    return *this;
  }
  Crafter& claim_counts(uint64_t n_tensors, uint64_t n_kv) {
    forced_tensors_ = n_tensors;
    forced_kv_ = n_kv;
    return *this;
  }
  Crafter& kv_raw(const std::string& key, uint32_t type, const std::string& payload) {
    kvs_ += gstr(key) + le(type) + payload;
    ++n_kv_;
    return *this;
  }
  Crafter& kv_u32(const std::string& key, uint32_t v) { return kv_raw(key, 4, le(v)); }
  Crafter& kv_str(const std::string& key, const std::string& s) { return kv_raw(key, 8, gstr(s)); }
  Crafter& alignment(uint32_t a) {
    alignment_ = a;
    return kv_u32("general.alignment", a);
  }
  Crafter& tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type,
                  uint64_t offset) {
    infos_ += gstr(name) + le<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) infos_ += le(d);
    infos_ += le(type) + le(offset);
    ++n_tensors_;
    return *this;
  }
  Crafter& data(const std::string& bytes) {
    data_ += bytes;
    return *this;
  }

  std::string bytes() const {
    std::string out = magic_ + le(version_);
    out += le<uint64_t>(forced_tensors_ ? forced_tensors_ : n_tensors_);
    out += le<uint64_t>(forced_kv_ ? forced_kv_ : n_kv_);
    out += kvs_ + infos_;
    while (out.size() % alignment_ != 0) out += '\0';
    return out + data_;
  }

 private:
  std::string magic_ = "GGUF";
  uint32_t version_ = 3;
  uint64_t forced_tensors_ = 0, forced_kv_ = 0;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
  size_t alignment_ = 32;
  std::string kvs_, infos_, data_;
};

File parse_bytes(const std::string& bytes, const std::string& name = "crafted.gguf") {
  return File::parse(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), name);
}

// The bonsai::Error message of parsing `bytes`; a test failure if parsing succeeds or something
// else is thrown. Every message must name the file.
std::string parse_error(const std::string& bytes) {
  try {
    parse_bytes(bytes);
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr("crafted.gguf"));
    return msg;
  }
  ADD_FAILURE() << "parsing succeeded but an error was expected";
  return "";
}

std::string temp_path(const std::string& stem) {
  return ::testing::TempDir() + "bonsai_gguf_" + std::to_string(::getpid()) + "_" + stem;
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// A valid one-tensor file (F32 [4] at offset 0), the base the data-range tests start from.
std::string one_f32_tensor(uint64_t offset, size_t data_bytes) {
  return Crafter().tensor("w", {4}, 0, offset).data(std::string(data_bytes, '\x01')).bytes();
}

// ---- header and metadata validation -----------------------------------------------------------

TEST(GgufParse, MinimalFileParses) {
  File f = parse_bytes(Crafter().kv_str("general.architecture", "llama").bytes());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.get("general.architecture").as_string(), "llama");
  EXPECT_TRUE(f.tensors().empty());
}

TEST(GgufParse, Version2Parses) {
  File f = parse_bytes(Crafter().version(2).kv_u32("a", 1).bytes());
  EXPECT_EQ(f.version(), 2u);
}

TEST(GgufParse, BadMagicShowsTheBytesFound) {
  const std::string msg = parse_error(Crafter().magic("GGML").bytes());
  EXPECT_THAT(msg, HasSubstr("bad magic"));
  EXPECT_THAT(msg, HasSubstr("47 47 4d 4c"));
  EXPECT_THAT(msg, HasSubstr("'GGML'"));
}

TEST(GgufParse, UnsupportedVersions) {
  EXPECT_THAT(parse_error(Crafter().version(1).bytes()), HasSubstr("unsupported version 1"));
  EXPECT_THAT(parse_error(Crafter().version(4).bytes()), HasSubstr("unsupported version 4"));
  EXPECT_THAT(parse_error(Crafter().version(0x03000000).bytes()), HasSubstr("expected 2 or 3"));
}

TEST(GgufParse, TruncatedHeader) {
  const std::string full = Crafter().bytes();
  EXPECT_THAT(parse_error(full.substr(0, 2)), HasSubstr("truncated while reading the magic"));
  EXPECT_THAT(parse_error(full.substr(0, 10)),
              HasSubstr("truncated while reading the tensor count"));
  EXPECT_THAT(parse_error(full.substr(0, 20)), HasSubstr("metadata count"));
}

TEST(GgufParse, TruncatedValueNamesTheKey) {
  const std::string full = Crafter().kv_raw("llama.block_count", 4, le<uint32_t>(7)).bytes();
  // header 24 + key length 8 + key 17 + type 4, then only half of the u32 value
  const std::string msg = parse_error(full.substr(0, 24 + 8 + 17 + 4 + 2));
  EXPECT_THAT(msg, HasSubstr("truncated while reading the value of key 'llama.block_count'"));
}

TEST(GgufParse, EveryPrefixOfAValidFileIsRejected) {
  const std::string full =
      Crafter()
          .kv_str("general.name", "tiny")
          .kv_raw("ids", 9, le<uint32_t>(5) + le<uint64_t>(2) + le<int32_t>(1) + le<int32_t>(-1))
          .tensor("a", {8}, 0, 0)
          .data(std::string(32, '\x02'))
          .bytes();
  ASSERT_NO_THROW(parse_bytes(full));
  for (size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE("prefix of " + std::to_string(n) + " bytes");
    parse_error(full.substr(0, n));
  }
}

TEST(GgufParse, StringLengthPastTheEnd) {
  const std::string bytes = Crafter().kv_raw("general.name", 8, le<uint64_t>(1000) + "abc").bytes();
  const std::string msg = parse_error(bytes);
  EXPECT_THAT(msg, HasSubstr("string length 1000"));
  EXPECT_THAT(msg, HasSubstr("key 'general.name'"));
}

TEST(GgufParse, KeyLengthPastTheEnd) {
  std::string bytes = Crafter().claim_counts(0, 1).bytes().substr(0, 24);
  bytes += le<uint64_t>(~uint64_t{0}) + std::string(8, 'k');  // enough bytes for one entry
  EXPECT_THAT(parse_error(bytes), HasSubstr("the key of metadata entry #0"));
}

TEST(GgufParse, AbsurdArrayCountIsRejectedBeforeAllocating) {
  const std::string payload = le<uint32_t>(8) + le<uint64_t>(uint64_t{1} << 60);
  const std::string msg =
      parse_error(Crafter().kv_raw("tokenizer.ggml.tokens", 9, payload).bytes());
  EXPECT_THAT(msg, HasSubstr("array key 'tokenizer.ggml.tokens' claims 1152921504606846976"));
}

TEST(GgufParse, AbsurdCountsInTheHeader) {
  EXPECT_THAT(parse_error(Crafter().claim_counts(0, uint64_t{1} << 50).bytes()),
              HasSubstr("metadata entries"));
  EXPECT_THAT(parse_error(Crafter().claim_counts(uint64_t{1} << 50, 0).bytes()),
              HasSubstr("tensors but only"));
}

TEST(GgufParse, UnknownValueType) {
  const std::string msg = parse_error(Crafter().kv_raw("weird", 13, le<uint32_t>(0)).bytes());
  EXPECT_THAT(msg, HasSubstr("key 'weird' has unknown value type 13"));
}

TEST(GgufParse, UnknownArrayElementType) {
  const std::string payload = le<uint32_t>(99) + le<uint64_t>(0);
  EXPECT_THAT(parse_error(Crafter().kv_raw("arr", 9, payload).bytes()),
              HasSubstr("array key 'arr' has unknown element type 99"));
}

TEST(GgufParse, NestedArraysAreBounded) {
  std::string payload;
  for (int i = 0; i < 20; ++i) payload += le<uint32_t>(9) + le<uint64_t>(1);
  payload += le<uint32_t>(4) + le<uint64_t>(0);
  EXPECT_THAT(parse_error(Crafter().kv_raw("deep", 9, payload).bytes()), HasSubstr("deeper than"));
}

TEST(GgufParse, NestedArraysWithinTheLimitParse) {
  const std::string inner = le<uint32_t>(4) + le<uint64_t>(2) + le<uint32_t>(7) + le<uint32_t>(9);
  const std::string payload = le<uint32_t>(9) + le<uint64_t>(1) + inner;
  File f = parse_bytes(Crafter().kv_raw("nested", 9, payload).bytes());
  const auto& outer = f.get("nested").as_array();
  ASSERT_EQ(outer.size(), 1u);
  EXPECT_EQ(outer[0].as_array().at(1).as_u64(), 9u);
}

TEST(GgufParse, DuplicateKeys) {
  const std::string msg = parse_error(Crafter().kv_u32("a.b", 1).kv_u32("a.b", 2).bytes());
  EXPECT_THAT(msg, HasSubstr("duplicate metadata key 'a.b'"));
}

TEST(GgufParse, AlignmentMustBeAPowerOfTwo) {
  const std::string msg = parse_error(Crafter().kv_u32("general.alignment", 24).bytes());
  EXPECT_THAT(msg, HasSubstr("'general.alignment' is 24, expected a power of two"));
  EXPECT_THAT(parse_error(Crafter().kv_u32("general.alignment", 0).bytes()),
              HasSubstr("power of two"));
  EXPECT_THAT(parse_error(Crafter().kv_str("general.alignment", "32").bytes()),
              HasSubstr("expected U32"));
}

TEST(GgufParse, ValueAccessorsNameTheKeyOnTypeMismatch) {
  File f = parse_bytes(
      Crafter().kv_u32("llama.block_count", 2).kv_raw("neg", 5, le<int32_t>(-3)).bytes());
  try {
    f.get("llama.block_count").as_string();
    FAIL() << "expected a type error";
  } catch (const Error& e) {
    EXPECT_THAT(
        e.what(),
        HasSubstr("key 'llama.block_count' in GGUF 'crafted.gguf' is U32, expected STRING"));
  }
  EXPECT_EQ(f.get("llama.block_count").as_i64(), 2);
  EXPECT_DOUBLE_EQ(f.get("llama.block_count").as_f64(), 2.0);
  EXPECT_EQ(f.get("neg").as_i64(), -3);
  EXPECT_THROW(f.get("neg").as_u64(), Error);
  EXPECT_THROW(f.get("neg").as_bool(), Error);
  EXPECT_THROW(f.get("neg").as_array(), Error);
}

TEST(GgufParse, MissingKeyNamesKeyAndFile) {
  File f = parse_bytes(Crafter().bytes());
  EXPECT_EQ(f.find("nope"), nullptr);
  try {
    f.get("llama.context_length");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("'llama.context_length'"));
    EXPECT_THAT(e.what(), HasSubstr("'crafted.gguf'"));
  }
  EXPECT_THAT([&] { f.get_tensor("output.weight"); },
              ::testing::ThrowsMessage<Error>(HasSubstr("missing tensor 'output.weight'")));
}

// ---- tensor info validation -------------------------------------------------------------------

TEST(GgufParse, UnknownTensorType) {
  const std::string msg = parse_error(Crafter().tensor("blk.0.attn_q.weight", {32}, 4, 0).bytes());
  EXPECT_THAT(msg, HasSubstr("tensor 'blk.0.attn_q.weight' has unknown ggml type 4"));
}

TEST(GgufParse, DimensionCountOutOfRange) {
  EXPECT_THAT(parse_error(Crafter().tensor("t0", {}, 0, 0).bytes()),
              HasSubstr("tensor 't0' has 0 dimensions, expected 1 to 4"));
  EXPECT_THAT(parse_error(Crafter().tensor("t5", {1, 1, 1, 1, 1}, 0, 0).bytes()),
              HasSubstr("tensor 't5' has 5 dimensions"));
}

TEST(GgufParse, ZeroDimensionAndOverflow) {
  EXPECT_THAT(parse_error(Crafter().tensor("z", {4, 0}, 0, 0).bytes()),
              HasSubstr("tensor 'z' (F32) has dimension 1 of size 0"));
  const uint64_t big = uint64_t{1} << 32;
  EXPECT_THAT(
      parse_error(Crafter().tensor("huge", {big, big}, 0, 0).bytes()),
      HasSubstr("tensor 'huge' (F32) has shape [4294967296, 4294967296] whose element count "
                "overflows"));
  // Fits in elements, overflows in bytes (F64: 8 bytes each).
  EXPECT_THAT(parse_error(Crafter().tensor("wide", {uint64_t{1} << 62}, 28, 0).bytes()),
              HasSubstr("byte size overflows"));
}

TEST(GgufParse, RowLengthMustBeAMultipleOfTheBlock) {
  const std::string msg = parse_error(Crafter().tensor("q", {30, 2}, 8, 0).bytes());
  EXPECT_THAT(msg,
              HasSubstr("tensor 'q' (Q8_0) has row length ne[0] = 30, not a multiple of Q8_0's "
                        "block size 32"));
}

TEST(GgufParse, DuplicateTensorNames) {
  const std::string bytes =
      Crafter().tensor("w", {8}, 0, 0).tensor("w", {8}, 0, 32).data(std::string(64, '\0')).bytes();
  EXPECT_THAT(parse_error(bytes), HasSubstr("duplicate tensor 'w'"));
}

TEST(GgufParse, TensorDataPastTheEnd) {
  ASSERT_NO_THROW(parse_bytes(one_f32_tensor(0, 16)));
  const std::string msg = parse_error(one_f32_tensor(0, 15));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' data [offset 64, 16 bytes] runs past the end of the file "
                             "(size 79)"));
  EXPECT_THAT(parse_error(one_f32_tensor(~uint64_t{0} << 5, 16)), HasSubstr("runs past the end"));
}

TEST(GgufParse, TensorOffsetMustBeAligned) {
  EXPECT_THAT(parse_error(one_f32_tensor(8, 64)),
              HasSubstr("tensor 'w' has data offset 8, not a multiple of the alignment 32"));
}

TEST(GgufParse, OverlappingTensors) {
  const std::string bytes = Crafter()
                                .tensor("first", {16}, 0, 32)
                                .tensor("second", {16}, 0, 64)  // 'first' spans [32, 96)
                                .data(std::string(160, '\0'))
                                .bytes();
  EXPECT_THAT(parse_error(bytes),
              HasSubstr("tensors 'first' [32, 96) and 'second' [64, 128) overlap"));
}

TEST(GgufParse, CustomAlignmentMovesTheDataSection) {
  const std::string bytes = Crafter()
                                .alignment(128)
                                .tensor("w", {4}, 0, 0)
                                .tensor("v", {4}, 0, 128)
                                .data(std::string(144, '\x03'))
                                .bytes();
  File f = parse_bytes(bytes);
  EXPECT_EQ(f.alignment(), 128u);
  EXPECT_EQ(f.data_offset() % 128, 0u);
  EXPECT_EQ(f.get_tensor("v").data - f.get_tensor("w").data, 128);
  EXPECT_THAT(
      parse_error(
          Crafter().alignment(128).tensor("w", {4}, 0, 32).data(std::string(64, 0)).bytes()),
      HasSubstr("not a multiple of the alignment 128"));
}

// ---- writer round trip ------------------------------------------------------------------------

struct RoundTripData {
  std::vector<float> f32 = {1.5f, -2.25f, 0.0f, 3e-8f, -0.0f, 65504.0f, 1e30f, -7.0f};
  std::vector<uint16_t> f16, bf16;
  std::vector<uint8_t> q8;
  RoundTripData() {
    for (float x : f32) {
      f16.push_back(fp32_to_fp16(x));
      bf16.push_back(fp32_to_bf16(x));
    }
    std::vector<float> src(64);
    for (size_t i = 0; i < src.size(); ++i) src[i] = std::sin(static_cast<float>(i)) * 3.0f;
    q8.resize(2 * 34);
    quantize_q8_0(src.data(), q8.data(), 64);
  }
};

std::vector<std::pair<std::string, Value>> every_value_type() {
  std::vector<Value> words = {Value::string("hello"), Value::string(""), Value::string("wörld")};
  std::vector<Value> ints = {Value::i32(-1), Value::i32(0), Value::i32(2147483647)};
  std::vector<Value> floats = {Value::f32(0.5f), Value::f32(-1e-3f)};
  std::vector<Value> inner = {Value::u8(1), Value::u8(2)};
  std::vector<Value> nested = {Value::array(ValueType::U8, inner), Value::array(ValueType::U8, {})};
  return {
      {"general.architecture", Value::string("llama")},
      {"t.u8", Value::u8(250)},
      {"t.i8", Value::i8(-100)},
      {"t.u16", Value::u16(65000)},
      {"t.i16", Value::i16(-32000)},
      {"t.u32", Value::u32(4000000000u)},
      {"t.i32", Value::i32(-2000000000)},
      {"t.f32", Value::f32(9.999999747378752e-06f)},
      {"t.bool", Value::boolean(true)},
      {"t.string", Value::string(std::string("with\0nul", 8))},
      {"t.u64", Value::u64(18000000000000000000ull)},
      {"t.i64", Value::i64(-9000000000000000000ll)},
      {"t.f64", Value::f64(-1.0 / 3.0)},
      {"t.strings", Value::array(ValueType::STRING, words)},
      {"t.i32s", Value::array(ValueType::I32, ints)},
      {"t.f32s", Value::array(ValueType::F32, floats)},
      {"t.nested", Value::array(ValueType::ARRAY, nested)},
      {"t.empty", Value::array(ValueType::U64, {})},
  };
}

void write_round_trip_file(const std::string& path, const RoundTripData& d, size_t alignment) {
  Writer w(path);
  for (const auto& kv : every_value_type()) w.add_kv(kv.first, kv.second);
  if (alignment != 32) w.set_alignment(alignment);
  w.add_tensor("f32", {4, 2}, GgmlType::F32, d.f32.data(), d.f32.size() * 4);
  w.add_tensor("f16", {8}, GgmlType::F16, d.f16.data(), d.f16.size() * 2);
  w.add_tensor("bf16", {2, 2, 2}, GgmlType::BF16, d.bf16.data(), d.bf16.size() * 2);
  w.add_tensor("q8", {64}, GgmlType::Q8_0, d.q8.data(), d.q8.size());
  // Streamed in odd-sized pieces through the producer form.
  w.add_tensor("streamed", {3, 1, 1, 2}, GgmlType::F32, 24, [&](const Writer::Sink& sink) {
    const auto* p = reinterpret_cast<const uint8_t*>(d.f32.data());
    sink(p, 5);
    sink(p + 5, 19);
  });
  w.write();
}

void expect_round_trip(size_t alignment) {
  const RoundTripData d;
  const std::string path = temp_path("rt" + std::to_string(alignment) + ".gguf");
  write_round_trip_file(path, d, alignment);
  File f = File::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), alignment);
  EXPECT_EQ(f.path(), path);

  const auto expected = every_value_type();
  size_t extra = alignment != 32 ? 1 : 0;  // general.alignment is written only when not 32
  ASSERT_EQ(f.metadata().size(), expected.size() + extra);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(f.metadata()[i].first, expected[i].first);
    EXPECT_TRUE(f.metadata()[i].second == expected[i].second) << expected[i].first;
  }
  if (extra) {
    EXPECT_EQ(f.get("general.alignment").type, ValueType::U32);
    EXPECT_EQ(f.get("general.alignment").as_u64(), alignment);
  } else {
    EXPECT_EQ(f.find("general.alignment"), nullptr);
  }
  EXPECT_EQ(f.get("t.strings").as_string_array(), (std::vector<std::string>{"hello", "", "wörld"}));
  EXPECT_EQ(f.get("t.i32s").as_i64_array(), (std::vector<int64_t>{-1, 0, 2147483647}));
  EXPECT_EQ(f.get("t.string").as_string().size(), 8u);
  EXPECT_EQ(bits_of(static_cast<float>(f.get("t.f32").as_f64())), bits_of(9.999999747378752e-06f));

  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.data_offset() % alignment, 0u);
  const uint8_t* base = f.mapping()->data();
  for (const auto& t : f.tensors()) {
    EXPECT_EQ(static_cast<uint64_t>(t.data - base) % alignment, 0u) << t.name;
    EXPECT_EQ(t.offset % alignment, 0u) << t.name;
  }
  const TensorInfo& f32 = f.get_tensor("f32");
  EXPECT_EQ(f32.ne, (std::vector<uint64_t>{4, 2}));
  EXPECT_EQ(f32.numel(), 8u);
  EXPECT_EQ(std::memcmp(f32.data, d.f32.data(), 32), 0);
  EXPECT_EQ(std::memcmp(f.get_tensor("f16").data, d.f16.data(), 16), 0);
  EXPECT_EQ(f.get_tensor("bf16").type, GgmlType::BF16);
  EXPECT_EQ(std::memcmp(f.get_tensor("bf16").data, d.bf16.data(), 16), 0);
  EXPECT_EQ(f.get_tensor("q8").nbytes, 68u);
  EXPECT_EQ(std::memcmp(f.get_tensor("q8").data, d.q8.data(), 68), 0);
  EXPECT_EQ(std::memcmp(f.get_tensor("streamed").data, d.f32.data(), 24), 0);

  const std::vector<float> back = f.dequantize_tensor(f.get_tensor("f16"));
  for (size_t i = 0; i < back.size(); ++i) EXPECT_EQ(back[i], fp16_to_fp32(d.f16[i]));
  std::remove(path.c_str());
}

TEST(GgufWriter, RoundTripDefaultAlignment) { expect_round_trip(32); }
TEST(GgufWriter, RoundTripAlignment64) { expect_round_trip(64); }

TEST(GgufWriter, OutputIsByteStable) {
  const RoundTripData d;
  const std::string a = temp_path("stable_a.gguf"), b = temp_path("stable_b.gguf");
  write_round_trip_file(a, d, 32);
  write_round_trip_file(b, d, 32);
  EXPECT_EQ(read_all(a), read_all(b));
  EXPECT_EQ(read_all(a).size() % 32, 0u);  // the last tensor is padded too
  std::remove(a.c_str());
  std::remove(b.c_str());
}

void expect_write_fails(Writer& w, const std::string& path, const std::string& needle) {
  try {
    w.write();
    ADD_FAILURE() << "write succeeded";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(needle));
    EXPECT_THAT(e.what(), HasSubstr(path));
  }
  EXPECT_FALSE(file_exists(path)) << "a failed write must leave no file";
}

TEST(GgufWriter, RejectsWrongByteCount) {
  const std::string path = temp_path("bad_nbytes.gguf");
  std::vector<uint8_t> q(33);
  Writer w(path);
  w.add_tensor("blk.0.ffn_up.weight", {32}, GgmlType::Q8_0, q.data(), q.size());
  expect_write_fails(w, path,
                     "tensor 'blk.0.ffn_up.weight' (Q8_0 [32]) was given 33 bytes, expected 34");
}

TEST(GgufWriter, RejectsBadGeometry) {
  const std::string path = temp_path("bad_geom.gguf");
  std::vector<uint8_t> q(34);
  Writer w(path);
  w.add_tensor("odd", {16, 2}, GgmlType::Q8_0, q.data(), q.size());
  expect_write_fails(w, path, "tensor 'odd' has row length ne[0] = 16");
  Writer w2(path);
  w2.add_tensor("flat", {}, GgmlType::F32, q.data(), 4);
  expect_write_fails(w2, path, "tensor 'flat' has 0 dimensions");
}

TEST(GgufWriter, RejectsAShortProducer) {
  const std::string path = temp_path("short.gguf");
  Writer w(path);
  w.add_tensor("s", {4}, GgmlType::F32, 16, [](const Writer::Sink& sink) { sink("abcd", 4); });
  expect_write_fails(w, path, "tensor 's' produced 4 bytes, expected 16");
  Writer w2(path);
  w2.add_tensor("l", {1}, GgmlType::F32, 4, [](const Writer::Sink& sink) { sink("abcdefgh", 8); });
  expect_write_fails(w2, path, "tensor 'l' produced more than its 4 bytes");
}

TEST(GgufWriter, RejectsDuplicatesAndBadAlignment) {
  Writer w(temp_path("dups.gguf"));
  w.add_kv("a", Value::u32(1));
  EXPECT_THAT([&] { w.add_kv("a", Value::u32(2)); },
              ::testing::ThrowsMessage<Error>(HasSubstr("duplicate metadata key 'a'")));
  float x = 0;
  w.add_tensor("t", {1}, GgmlType::F32, &x, 4);
  EXPECT_THAT([&] { w.add_tensor("t", {1}, GgmlType::F32, &x, 4); },
              ::testing::ThrowsMessage<Error>(HasSubstr("duplicate tensor 't'")));
  EXPECT_THROW(w.set_alignment(48), Error);
  EXPECT_THROW(w.add_kv("general.alignment", Value::u32(3)), Error);
  EXPECT_THROW(Value::array(ValueType::U32, {Value::u32(1), Value::i32(2)}), Error);
}

TEST(GgufWriter, ExplicitAlignmentKeyIsHonoured) {
  const std::string path = temp_path("explicit_align.gguf");
  Writer w(path);
  w.add_kv("general.alignment", Value::u32(16));
  float x[4] = {1, 2, 3, 4};
  w.add_tensor("a", {1}, GgmlType::F32, x, 4);
  w.add_tensor("b", {3}, GgmlType::F32, x + 1, 12);
  w.write();
  File f = File::open(path);
  EXPECT_EQ(f.alignment(), 16u);
  EXPECT_EQ(f.metadata().size(), 1u);
  EXPECT_EQ(f.get_tensor("b").offset, 16u);
  std::remove(path.c_str());
}

TEST(GgufOpen, MissingFileThrows) {
  EXPECT_THROW(File::open(temp_path("does_not_exist.gguf")), Error);
}

// ---- type table and conversions ---------------------------------------------------------------

TEST(GgmlTypes, Geometry) {
  EXPECT_EQ(block_elems(GgmlType::Q4_K), 256);
  EXPECT_EQ(block_bytes(GgmlType::Q4_K), 144);
  EXPECT_EQ(block_bytes(GgmlType::Q6_K), 210);
  EXPECT_EQ(block_bytes(GgmlType::Q8_0), 34);
  EXPECT_EQ(block_bytes(GgmlType::Q4_1), 20);
  EXPECT_STREQ(type_name(GgmlType::Q5_K), "Q5_K");
  EXPECT_STREQ(type_name(static_cast<GgmlType>(4)), "unknown");
  EXPECT_EQ(row_bytes(GgmlType::Q4_0, 4096), 4096u / 32 * 18);
  EXPECT_EQ(row_bytes(GgmlType::F16, 7), 14u);
  EXPECT_THROW(row_bytes(GgmlType::Q4_K, 100), Error);
  EXPECT_THROW(block_bytes(static_cast<GgmlType>(31)), Error);
  EXPECT_TRUE(is_supported_for_dequant(GgmlType::Q6_K));
  EXPECT_FALSE(is_supported_for_dequant(GgmlType::IQ2_XXS));
  std::vector<uint8_t> blk(66);
  float out[256];
  EXPECT_THROW(dequantize(GgmlType::IQ2_XXS, blk.data(), out, 256), Error);
  EXPECT_THROW(dequantize(GgmlType::Q8_0, blk.data(), out, 31), Error);
}

TEST(Fp16, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = fp16_to_fp32(static_cast<uint16_t>(h));
    const bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    if (nan) {
      ASSERT_TRUE(std::isnan(f)) << h;
      ASSERT_EQ(fp32_to_fp16(f) & 0x7e00, 0x7e00) << "NaN must stay a quiet NaN: " << h;
    } else {
      ASSERT_EQ(fp32_to_fp16(f), h) << h;
    }
  }
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.0f);
}

TEST(Fp16, TiesRoundToEven) {
  // Between every pair of adjacent positive halves (subnormal, normal, and 65504 -> infinity),
  // the exact midpoint goes to the even one and anything off the midpoint to the nearer one.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const float lo = fp16_to_fp32(static_cast<uint16_t>(h));
    const double hi = h == 0x7bff ? 65536.0 : fp16_to_fp32(static_cast<uint16_t>(h + 1));
    const auto mid = static_cast<float>((lo + hi) / 2);  // 12 significant bits: exact in float
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
    ASSERT_EQ(fp32_to_fp16(mid), even) << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, 0.0f)), h) << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, 1e30f)), h + 1) << h;
    ASSERT_EQ(fp32_to_fp16(-mid), 0x8000 | even) << h;
  }
  EXPECT_EQ(fp32_to_fp16(1e-30f), 0);
  EXPECT_EQ(fp32_to_fp16(-1e-30f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-std::numeric_limits<float>::infinity()), 0xfc00);
}

TEST(Bf16, RoundToNearestEvenAndNaN) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f808001)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(float_of(0x7f7fffff)), 0x7f80);  // max float rounds to infinity
  EXPECT_EQ(fp32_to_bf16(float_of(0x7f800001)), 0x7fc0);  // signalling NaN becomes quiet
  EXPECT_EQ(bf16_to_fp32(0xc000), -2.0f);
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), h) << h;
  }
}

// ---- dequantization: hand-built blocks --------------------------------------------------------

TEST(Dequant, Q4_0HandBuiltBlock) {
  std::vector<uint8_t> blk(18);
  const uint16_t d = fp32_to_fp16(0.5f);
  std::memcpy(blk.data(), &d, 2);
  for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float y[32];
  dequantize(GgmlType::Q4_0, blk.data(), y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(y[j + 16], (7 - j) * 0.5f) << j;
  }
}

TEST(Dequant, Q4_1AndQ5_0HandBuiltBlocks) {
  std::vector<uint8_t> q41(20, 0);
  const uint16_t d = fp32_to_fp16(2.0f), m = fp32_to_fp16(-1.0f);
  std::memcpy(q41.data(), &d, 2);
  std::memcpy(q41.data() + 2, &m, 2);
  q41[4] = 0x53;  // element 0 = 3, element 16 = 5
  float y[32];
  dequantize(GgmlType::Q4_1, q41.data(), y, 32);
  EXPECT_EQ(y[0], 5.0f);
  EXPECT_EQ(y[16], 9.0f);
  EXPECT_EQ(y[1], -1.0f);

  std::vector<uint8_t> q50(22, 0);
  std::memcpy(q50.data(), &d, 2);
  const uint32_t qh = (1u << 0) | (1u << 17);  // fifth bit of elements 0 and 17
  std::memcpy(q50.data() + 2, &qh, 4);
  q50[6] = 0x21;  // element 0 low nibble 1, element 16 high nibble 2
  dequantize(GgmlType::Q5_0, q50.data(), y, 32);
  EXPECT_EQ(y[0], (17 - 16) * 2.0f);
  EXPECT_EQ(y[16], (2 - 16) * 2.0f);
  EXPECT_EQ(y[17], (16 - 16) * 2.0f);
  EXPECT_EQ(y[1], -16 * 2.0f);
}

TEST(Dequant, Q4_KScalesAndMins) {
  // d = 1, dmin = 0.5; sub-block j has scale j+1 and min 2j (6-bit packed), every quant = 3.
  std::vector<uint8_t> blk(144, 0);
  const uint16_t d = fp32_to_fp16(1.0f), dmin = fp32_to_fp16(0.5f);
  std::memcpy(blk.data(), &d, 2);
  std::memcpy(blk.data() + 2, &dmin, 2);
  uint8_t* s = blk.data() + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>(j + 1);
    s[j + 4] = static_cast<uint8_t>(2 * j);
  }
  for (int j = 4; j < 8; ++j) {  // low 4 bits in bytes 8..11, top bits (zero here) elsewhere
    s[j + 4] = static_cast<uint8_t>((j + 1) | ((2 * j) << 4));
  }
  for (int i = 0; i < 128; ++i) blk[16 + i] = 0x33;
  float y[256];
  dequantize(GgmlType::Q4_K, blk.data(), y, 256);
  for (int e = 0; e < 256; ++e) {
    const int j = e / 32;
    ASSERT_EQ(y[e], static_cast<float>(j + 1) * 3.0f - 0.5f * static_cast<float>(2 * j)) << e;
  }
}

TEST(Dequant, Q8_0QuantizeIsWithinHalfAStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> x(32 * 64);
  for (auto& v : x) v = dist(rng);
  for (int j = 0; j < 32; ++j) x[32 * 5 + j] = 0.0f;  // an all-zero block: d = 0
  x[7] = 1000.0f;                                     // an outlier block
  std::vector<uint8_t> q(64 * 34);
  quantize_q8_0(x.data(), q.data(), static_cast<int64_t>(x.size()));
  std::vector<float> y(x.size());
  dequantize(GgmlType::Q8_0, q.data(), y.data(), static_cast<int64_t>(y.size()));
  for (size_t b = 0; b < 64; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[32 * b + j]));
    const float d = amax / 127.0f;  // the step the values were rounded to
    uint16_t dh_bits;
    std::memcpy(&dh_bits, &q[34 * b], 2);
    const float dh = fp16_to_fp32(dh_bits);  // the step stored (d rounded to f16)
    // Rounding to the grid of d costs at most d/2; storing d as f16 moves each of the up to 127
    // steps by |dh - d| more.
    const float bound = d / 2 + 127 * std::fabs(dh - d) + 1e-6f * amax;
    for (int j = 0; j < 32; ++j) {
      ASSERT_LE(std::fabs(y[32 * b + j] - x[32 * b + j]), bound) << "block " << b << " elem " << j;
    }
  }
  EXPECT_EQ(y[32 * 5], 0.0f);
}

TEST(Dequant, F16AndBf16Tensors) {
  const std::vector<float> x = {1.0f, -0.5f, 3.140625f, 0.0f};
  std::vector<uint16_t> h, b;
  for (float v : x) {
    h.push_back(fp32_to_fp16(v));
    b.push_back(fp32_to_bf16(v));
  }
  float y[4];
  dequantize(GgmlType::F16, h.data(), y, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], x[i]);
  dequantize(GgmlType::BF16, b.data(), y, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], x[i]);
  dequantize(GgmlType::F32, x.data(), y, 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y[i], x[i]);
}

// ---- dequantization against gguf-py (scripts/ref/gguf_dequant_ref.py) -------------------------

struct RefVectors {
  GgmlType type;
  std::vector<float> source;  // empty when the blocks were random bytes
  std::vector<uint8_t> raw;
  std::vector<float> deq;
};

RefVectors load_ref(const std::string& path) {
  const std::string s = read_all(path);
  if (s.size() < 32 || s.compare(0, 4, "BGQR") != 0) throw Error("bad reference file " + path);
  uint32_t version, type, flags;
  uint64_t n, nbytes;
  std::memcpy(&version, &s[4], 4);
  std::memcpy(&type, &s[8], 4);
  std::memcpy(&flags, &s[12], 4);
  std::memcpy(&n, &s[16], 8);
  std::memcpy(&nbytes, &s[24], 8);
  const uint64_t src_bytes = (flags & 1) ? n * 4 : 0;
  if (version != 1 || s.size() != 32 + src_bytes + nbytes + n * 4) {
    throw Error("reference file " + path + " has an unexpected layout");
  }
  RefVectors r{static_cast<GgmlType>(type), {}, {}, {}};
  size_t at = 32;
  r.source.resize(src_bytes / 4);
  if (src_bytes) std::memcpy(r.source.data(), &s[at], src_bytes);
  at += src_bytes;
  r.raw.assign(s.begin() + static_cast<long>(at), s.begin() + static_cast<long>(at + nbytes));
  at += nbytes;
  r.deq.resize(n);
  std::memcpy(r.deq.data(), &s[at], n * 4);
  return r;
}

class DequantReference : public ::testing::TestWithParam<const char*> {};

// Bit-exact, no tolerance: every format decodes as (f16 scale) x (small integers), which is exact
// in float32, plus at most one add/subtract, i.e. one rounding per element in both implementations
// (FMA contraction cannot change that either). A difference is a real decoding bug.
TEST_P(DequantReference, MatchesGgufPyBitExactly) {
  const char* dir = bonsai::test::env_cstr("BONSAI_GGUF_REF_DIR");
  if (dir == nullptr || *dir == '\0') {
    GTEST_SKIP() << "BONSAI_GGUF_REF_DIR is not set; generate the vectors with "
                    "scripts/ref/gguf_dequant_ref.py DIR and point the variable at DIR";
  }
  const std::string path = std::string(dir) + "/" + GetParam() + ".bin";
  ASSERT_TRUE(file_exists(path)) << path << " is missing; rerun scripts/ref/gguf_dequant_ref.py";
  const RefVectors r = load_ref(path);
  EXPECT_STREQ(type_name(r.type), GetParam());
  const auto n = static_cast<int64_t>(r.deq.size());
  ASSERT_EQ(r.raw.size(), row_bytes(r.type, n));

  std::vector<float> y(r.deq.size());
  dequantize(r.type, r.raw.data(), y.data(), n);
  for (size_t i = 0; i < y.size(); ++i) {
    ASSERT_EQ(bits_of(y[i]), bits_of(r.deq[i]))
        << GetParam() << " element " << i << ": got " << y[i] << ", gguf-py " << r.deq[i];
  }

  // The encoders bonsai has must produce gguf-py's bytes too.
  if (r.type == GgmlType::Q8_0) {
    ASSERT_EQ(r.source.size(), y.size());
    std::vector<uint8_t> q(r.raw.size());
    quantize_q8_0(r.source.data(), q.data(), n);
    EXPECT_EQ(q, r.raw);
  }
  if (r.type == GgmlType::F16 || r.type == GgmlType::BF16) {
    ASSERT_EQ(r.source.size(), y.size());
    for (size_t i = 0; i < r.source.size(); ++i) {
      uint16_t want;
      std::memcpy(&want, &r.raw[2 * i], 2);
      const uint16_t got =
          r.type == GgmlType::F16 ? fp32_to_fp16(r.source[i]) : fp32_to_bf16(r.source[i]);
      ASSERT_EQ(got, want) << type_name(r.type) << " of " << r.source[i] << " (element " << i
                           << ")";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, DequantReference,
                         ::testing::Values("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                                           "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"),
                         [](const ::testing::TestParamInfo<const char*>& p) {
                           return std::string(p.param);
                         });

// ---- real files from shared/data --------------------------------------------------------------

std::string shared_data_file(const std::string& rel) {
  const char* dir = bonsai::test::env_cstr("BONSAI_SHARED_DATA");
  if (dir == nullptr || *dir == '\0') return "";
  const std::string path = std::string(dir) + "/" + rel;
  return file_exists(path) ? path : "";
}

TEST(GgufRealFiles, TinyLlamaOpensAndDequantizes) {
  const std::string path = shared_data_file("models/llama-2-tiny-random.gguf");
  if (path.empty()) {
    GTEST_SKIP() << "BONSAI_SHARED_DATA is unset or lacks models/llama-2-tiny-random.gguf";
  }
  File f = File::open(path);
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get("general.architecture").as_string(), "llama");
  EXPECT_EQ(f.get("llama.embedding_length").as_u64(), 8u);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").as_array().size(), 32000u);
  EXPECT_EQ(f.get("tokenizer.ggml.scores").elem_type, ValueType::F32);
  ASSERT_EQ(f.tensors().size(), 12u);
  const TensorInfo& emb = f.get_tensor("token_embd.weight");
  EXPECT_EQ(emb.type, GgmlType::F16);
  EXPECT_EQ(emb.ne, (std::vector<uint64_t>{8, 32000}));
  for (const auto& t : f.tensors()) {
    ASSERT_TRUE(t.type == GgmlType::F16 || t.type == GgmlType::F32) << t.name;
    const std::vector<float> v = f.dequantize_tensor(t);
    ASSERT_EQ(v.size(), t.numel());
    for (float x : v) ASSERT_TRUE(std::isfinite(x)) << t.name;
  }
  const std::vector<float> norm = f.dequantize_tensor(f.get_tensor("output_norm.weight"));
  EXPECT_EQ(std::memcmp(norm.data(), f.get_tensor("output_norm.weight").data, 32), 0);
}

TEST(GgufRealFiles, VocabOnlyGpt2Parses) {
  const std::string path = shared_data_file("tokenizer/gpt2/ggml-vocab-gpt-2.gguf");
  if (path.empty()) {
    GTEST_SKIP() << "BONSAI_SHARED_DATA is unset or lacks tokenizer/gpt2/ggml-vocab-gpt-2.gguf";
  }
  File f = File::open(path);
  EXPECT_TRUE(f.tensors().empty());
  const std::vector<std::string> tokens = f.get("tokenizer.ggml.tokens").as_string_array();
  ASSERT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[0], "!");
  EXPECT_EQ(tokens[50256], "<|endoftext|>");
}

TEST(GgufRealFiles, VocabOnlyStarcoderParses) {
  const std::string path = shared_data_file("tokenizer/starcoder/ggml-vocab-starcoder.gguf");
  if (path.empty()) GTEST_SKIP() << "BONSAI_SHARED_DATA is unset or lacks the starcoder vocab GGUF";
  File f = File::open(path);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").as_array().size(), 49152u);
}

}  // namespace
}  // namespace bonsai::gguf
