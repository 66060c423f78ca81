// Tests for the TensorBoard event-file writer (train/tb_writer.h): CRC32C vectors, TFRecord framing
// and Event encoding byte by byte against protobuf's own serializer, files parsed back by a small
// independent reader here, write-error behaviour, and interop with the tensorboard Python package
// (scripts/ref/read_tb_events.py, skipped when BONSAI_PYTHON/BONSAI_SOURCE_DIR are not set) and with
// protoc decoding through train/proto/tb_event.proto (skipped when protoc is not installed).
#include "train/tb_writer.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"

namespace {

using bonsai::test::error_of;

namespace fs = std::filesystem;
using bonsai::TbWriter;

// ---- helpers ----------------------------------------------------------------------------------

std::string hex(std::string_view s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out.push_back(digits[c >> 4]), out.push_back(digits[c & 0xF]);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

uint64_t le(std::string_view s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

// ---- an independent TFRecord reader -----------------------------------------------------------

struct Records {
  std::vector<std::string> payloads;  // every complete record, CRCs checked
  size_t truncated_tail = 0;          // bytes of an incomplete final record (0: none)
};

// Complete records must have correct CRCs (a mismatch fails the test); an incomplete record is only
// allowed at the end, as a crash mid-write leaves it.
Records read_records(const std::string& path) {
  std::string f = read_file(path);
  Records r;
  size_t at = 0;
  while (at < f.size()) {
    if (f.size() - at < 12) break;
    uint64_t len = le(f, at, 8);
    EXPECT_EQ(le(f, at + 8, 4), bonsai::tb::mask_crc(bonsai::tb::crc32c(f.data() + at, 8))) << "length CRC at " << at;
    if (f.size() - at - 12 < len + 4) break;
    std::string data = f.substr(at + 12, len);
    EXPECT_EQ(le(f, at + 12 + len, 4), bonsai::tb::mask_crc(bonsai::tb::crc32c(data))) << "data CRC at " << at;
    r.payloads.push_back(data);
    at += 12 + len + 4;
  }
  r.truncated_tail = f.size() - at;
  return r;
}

// ---- an independent decoder for the protobuf subset --------------------------------------------

struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t num = 0;        // varint, fixed32 and fixed64 payloads
  std::string bytes;       // length-delimited payloads
};

uint64_t get_varint(std::string_view s, size_t* at) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*at >= s.size()) throw std::runtime_error("truncated varint");
    auto b = static_cast<unsigned char>(s[(*at)++]);
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
  throw std::runtime_error("varint longer than 10 bytes");
}

std::vector<Field> parse_fields(std::string_view s) {
  std::vector<Field> out;
  size_t at = 0;
  while (at < s.size()) {
    uint64_t key = get_varint(s, &at);
    Field f;
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire_type = static_cast<uint32_t>(key & 7);
    auto need = [&](uint64_t n) {
      if (s.size() - at < n) throw std::runtime_error("truncated field " + std::to_string(f.number));
    };
    switch (f.wire_type) {
      case 0: f.num = get_varint(s, &at); break;
      case 1: need(8), f.num = le(s, at, 8), at += 8; break;
      case 5: need(4), f.num = le(s, at, 4), at += 4; break;
      case 2: {
        uint64_t n = get_varint(s, &at);
        need(n), f.bytes = std::string(s.substr(at, n)), at += n;
        break;
      }
      default: throw std::runtime_error("unexpected wire type " + std::to_string(f.wire_type));
    }
    out.push_back(f);
  }
  return out;
}

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::optional<std::string> file_version;
  std::vector<std::pair<std::string, std::optional<float>>> values;  // tag, simple_value
};

Event decode_event(std::string_view s) {
  Event e;
  for (const Field& f : parse_fields(s)) {
    if (f.number == 1 && f.wire_type == 1) {
      std::memcpy(&e.wall_time, &f.num, 8);
    } else if (f.number == 2 && f.wire_type == 0) {
      e.step = static_cast<int64_t>(f.num);
    } else if (f.number == 3 && f.wire_type == 2) {
      e.file_version = f.bytes;
    } else if (f.number == 5 && f.wire_type == 2) {
      for (const Field& v : parse_fields(f.bytes)) {
        if (v.number != 1 || v.wire_type != 2) throw std::runtime_error("unexpected Summary field");
        std::pair<std::string, std::optional<float>> tv;
        for (const Field& x : parse_fields(v.bytes)) {
          if (x.number == 1 && x.wire_type == 2) {
            tv.first = x.bytes;
          } else if (x.number == 2 && x.wire_type == 5) {
            float fv;
            uint32_t bits = static_cast<uint32_t>(x.num);
            std::memcpy(&fv, &bits, 4);
            tv.second = fv;
          } else {
            throw std::runtime_error("unexpected Summary.Value field " + std::to_string(x.number));
          }
        }
        e.values.push_back(tv);
      }
    } else {
      throw std::runtime_error("unexpected Event field " + std::to_string(f.number));
    }
  }
  return e;
}

std::vector<Event> read_events(const std::string& path, size_t* truncated_tail = nullptr) {
  Records r = read_records(path);
  if (truncated_tail) *truncated_tail = r.truncated_tail;
  else EXPECT_EQ(r.truncated_tail, 0u) << path;
  std::vector<Event> out;
  for (const auto& p : r.payloads) out.push_back(decode_event(p));
  return out;
}

bool same_float(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

// ---- running the reference readers ---------------------------------------------------------------

std::string run(const std::string& cmd, int* rc) {
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return *rc = -1, "popen failed";
  std::string out;
  char buf[4096];
  while (size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  *rc = ::pclose(pipe);
  return out;
}

// Why the tensorboard interop tests cannot run here, or "" when they can.
std::string python_skip_reason() {
  std::string py = bonsai::test::env_dir("BONSAI_PYTHON");
  std::string src = bonsai::test::env_dir("BONSAI_SOURCE_DIR");
  if (py.empty() || !fs::exists(py)) return "BONSAI_PYTHON is not set or missing ('" + py + "'): no tensorboard to compare with";
  if (src.empty() || !fs::exists(src + "/scripts/ref/read_tb_events.py"))
    return "BONSAI_SOURCE_DIR is not set or has no scripts/ref/read_tb_events.py ('" + src + "')";
  return "";
}

// What TensorBoard's EventAccumulator sees in `path`: {tag: [[step, value], ...]}.
nlohmann::json tensorboard_scalars(const std::string& path) {
  std::string cmd = "'" + bonsai::test::env_dir("BONSAI_PYTHON") + "' '" + bonsai::test::env_dir("BONSAI_SOURCE_DIR") +
                    "/scripts/ref/read_tb_events.py' '" + path + "' 2>&1";
  int rc = 0;
  std::string out = run(cmd, &rc);
  EXPECT_EQ(rc, 0) << out;
  if (rc != 0) return nlohmann::json::object();
  // TensorBoard may log warnings before the JSON line; the JSON is the last line.
  size_t start = out.rfind("\n{");
  return nlohmann::json::parse(start == std::string::npos ? out : out.substr(start + 1));
}

double json_number(const nlohmann::json& v) {
  if (v.is_string()) {
    if (v == "NaN") return std::numeric_limits<double>::quiet_NaN();
    return v == "Infinity" ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  }
  return v.get<double>();
}

// ---- CRC32C --------------------------------------------------------------------------------------

TEST(Crc32c, KnownVectors) {
  using bonsai::tb::crc32c;
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);  // the standard check value
  EXPECT_EQ(crc32c(""), 0x00000000u);
  // RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) up.push_back(static_cast<char>(i)), down.push_back(static_cast<char>(31 - i));
  EXPECT_EQ(crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down), 0x113FDB5Cu);
}

TEST(Crc32c, MaskMatchesTensorBoard) {
  using bonsai::tb::mask_crc;
  // masked_crc32c(b"123456789") from tensorboard's pure-Python TFRecord implementation.
  EXPECT_EQ(mask_crc(bonsai::tb::crc32c("123456789")), 0xC78AB0E5u);
  // The definition itself, including the wrap-around of the addition.
  for (uint32_t c : {0u, 1u, 0x8000u, 0xFFFFFFFFu, 0xE3069283u})
    EXPECT_EQ(mask_crc(c), static_cast<uint32_t>(((c >> 15) | (c << 17)) + 0xA282EAD8u)) << c;
}

// ---- framing and encoding ------------------------------------------------------------------------

// Expected bytes come from tensorboard.summary.writer.record_writer.RecordWriter.
TEST(TfRecord, FramingByteByByte) {
  std::string r = bonsai::tb::frame_record("hello");
  EXPECT_EQ(hex(r), "0500000000000000" "eab2043e" "68656c6c6f" "bb1f1c19");
  EXPECT_EQ(hex(bonsai::tb::frame_record("")), "0000000000000000" "29039807" "d8ea82a2");

  // The same from the definition, field by field, for a payload needing a multi-byte length.
  std::string payload(300, 'x');
  r = bonsai::tb::frame_record(payload);
  ASSERT_EQ(r.size(), 8 + 4 + 300 + 4u);
  const unsigned char len_bytes[8] = {0x2C, 0x01, 0, 0, 0, 0, 0, 0};
  EXPECT_EQ(std::memcmp(r.data(), len_bytes, 8), 0);
  EXPECT_EQ(le(r, 8, 4), bonsai::tb::mask_crc(bonsai::tb::crc32c(len_bytes, 8)));
  EXPECT_EQ(r.substr(12, 300), payload);
  EXPECT_EQ(le(r, 312, 4), bonsai::tb::mask_crc(bonsai::tb::crc32c(payload)));
}

// Expected bytes come from tensorboard.compat.proto.event_pb2.Event(...).SerializeToString().
TEST(EventEncoding, MatchesProtobufSerializer) {
  using bonsai::tb::encode_scalar_event;
  EXPECT_EQ(hex(encode_scalar_event(1700000000.25, 42, "loss/train", 0.5f)),
            "0900001040fc54d941" "102a" "2a13" "0a11" "0a0a6c6f73732f747261696e" "150000003f");
  EXPECT_EQ(hex(encode_scalar_event(1700000000.25, -3, "x", -1.5f)),
            "0900001040fc54d941" "10fdffffffffffffffff01" "2a0a" "0a08" "0a0178" "150000c0bf");
  EXPECT_EQ(hex(bonsai::tb::encode_file_version_event(1700000000.25, "brain.Event:2")),
            "0900001040fc54d941" "1a0d627261696e2e4576656e743a32");
}

TEST(EventEncoding, ZeroValueIsStillAScalar) {
  // simple_value sits in a oneof: a 0.0 must be written, or readers see no scalar at all.
  Event e = decode_event(bonsai::tb::encode_scalar_event(0.0, 0, "zero", 0.0f));
  EXPECT_EQ(e.wall_time, 0.0);
  EXPECT_EQ(e.step, 0);
  ASSERT_EQ(e.values.size(), 1u);
  EXPECT_EQ(e.values[0].first, "zero");
  ASSERT_TRUE(e.values[0].second.has_value());
  EXPECT_TRUE(same_float(*e.values[0].second, 0.0f));
}

TEST(EventEncoding, ExtremeStepsAndValuesRoundTrip) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t step : {int64_t{1}, int64_t{127}, int64_t{128}, std::numeric_limits<int64_t>::max(),
                       std::numeric_limits<int64_t>::min(), int64_t{-1}}) {
    for (float v : {-0.0f, 1e-45f, std::numeric_limits<float>::max(), -std::numeric_limits<float>::infinity(), nan}) {
      Event e = decode_event(bonsai::tb::encode_scalar_event(123.5, step, "t", v));
      EXPECT_EQ(e.wall_time, 123.5);
      EXPECT_EQ(e.step, step);
      ASSERT_EQ(e.values.size(), 1u);
      EXPECT_TRUE(same_float(*e.values[0].second, v)) << step << " " << v;
    }
  }
}

TEST(EventEncoding, Utf8Validation) {
  using bonsai::tb::is_valid_utf8;
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("loss/train"));
  EXPECT_TRUE(is_valid_utf8("\xC3\xBC\xE2\x82\xAC\xF0\x9F\x98\x80"));  // ü € 😀
  EXPECT_TRUE(is_valid_utf8("\xF4\x8F\xBF\xBF"));                    // U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xFF"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));              // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\xAF"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));          // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));      // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE2\x82"));              // truncated
  EXPECT_FALSE(is_valid_utf8("a\x80"));                 // lone continuation byte
}

// ---- the writer ----------------------------------------------------------------------------------

TEST(TbWriter, WritesHeaderAndScalars) {
  std::string dir = bonsai::test::scratch_dir("tb_write") + "/runs/a/b";  // nested, not yet existing
  double before = now_seconds();
  time_t t0 = std::time(nullptr);
  std::string path;
  {
    TbWriter w(dir);
    path = w.path();
    w.scalar("loss/train", 2.5, 0);
    w.scalar("lr", 3e-4, 0);
    w.scalar("loss/train", 1.25, 10);
    w.scalar("loss/train", -7.0, -1);
  }
  double after = now_seconds();
  time_t t1 = std::time(nullptr);

  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  std::smatch m;
  std::string name = fs::path(path).filename().string();
  ASSERT_TRUE(std::regex_match(name, m, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+)\.(\d+)\.0)"))) << name;
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir));
  EXPECT_GE(std::stoll(m[1]), static_cast<long long>(t0));
  EXPECT_LE(std::stoll(m[1]), static_cast<long long>(t1));
  EXPECT_EQ(m[2].str(), host);
  EXPECT_EQ(std::stoll(m[3]), static_cast<long long>(::getpid()));

  std::vector<Event> ev = read_events(path);
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[0].file_version, std::optional<std::string>("brain.Event:2"));
  EXPECT_TRUE(ev[0].values.empty());
  struct Want { const char* tag; float v; int64_t step; };
  const Want want[] = {{"loss/train", 2.5f, 0}, {"lr", 3e-4f, 0}, {"loss/train", 1.25f, 10}, {"loss/train", -7.0f, -1}};
  double last = 0;
  for (size_t i = 0; i < ev.size(); ++i) {
    EXPECT_GE(ev[i].wall_time, before - 1e-3) << i;
    EXPECT_LE(ev[i].wall_time, after + 1e-3) << i;
    EXPECT_GE(ev[i].wall_time, last) << i;
    last = ev[i].wall_time;
    if (i == 0) continue;
    EXPECT_FALSE(ev[i].file_version.has_value());
    EXPECT_EQ(ev[i].step, want[i - 1].step);
    ASSERT_EQ(ev[i].values.size(), 1u);
    EXPECT_EQ(ev[i].values[0].first, want[i - 1].tag);
    EXPECT_TRUE(same_float(*ev[i].values[0].second, want[i - 1].v)) << i;
  }
}

TEST(TbWriter, HeaderOnDiskAtOnceAndFlushPublishesRecords) {
  std::string dir = bonsai::test::scratch_dir("tb_flush");
  TbWriter w(dir);
  ASSERT_EQ(read_events(w.path()).size(), 1u);  // the constructor flushed the header
  for (int i = 0; i < 3; ++i) w.scalar("x", i, i);
  w.flush();
  std::vector<Event> ev = read_events(w.path());
  ASSERT_EQ(ev.size(), 4u);
  EXPECT_EQ(ev[3].step, 2);
  // Appending after a flush keeps every earlier record intact.
  w.scalar("x", 3, 3);
  w.flush();
  EXPECT_EQ(read_events(w.path()).size(), 5u);
}

TEST(TbWriter, NeverOverwritesAnExistingLog) {
  std::string dir = bonsai::test::scratch_dir("tb_clobber");
  char host[256] = {};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  // Occupy the ".0" names for the next few seconds, as a writer created moments earlier would.
  time_t t = std::time(nullptr);
  std::vector<std::string> taken;
  for (time_t s = t; s < t + 5; ++s) {
    taken.push_back(dir + "/events.out.tfevents." + std::to_string(static_cast<long long>(s)) + "." + host + "." +
                    std::to_string(static_cast<long long>(::getpid())) + ".0");
    std::ofstream(taken.back()) << "precious";
  }
  std::string p1, p2;
  {
    TbWriter a(dir), b(dir);
    p1 = a.path(), p2 = b.path();
    a.scalar("a", 1, 1);
    b.scalar("b", 2, 1);
  }
  EXPECT_NE(p1, p2);
  EXPECT_EQ(p1.substr(p1.size() - 2), ".1");
  EXPECT_EQ(p2.substr(p2.size() - 2), ".2");
  for (const auto& p : taken) EXPECT_EQ(read_file(p), "precious") << p;
  EXPECT_EQ(read_events(p1).at(1).values.at(0).first, "a");
  EXPECT_EQ(read_events(p2).at(1).values.at(0).first, "b");
}

TEST(TbWriter, RejectsBadTagButStaysUsable) {
  std::string dir = bonsai::test::scratch_dir("tb_utf8");
  TbWriter w(dir);
  std::string e = error_of([&] { w.scalar("loss\xFF", 1, 1); });
  EXPECT_NE(e.find("not valid UTF-8"), std::string::npos) << e;
  EXPECT_NE(e.find("loss\\xff"), std::string::npos) << e;
  EXPECT_NE(e.find(w.path()), std::string::npos) << e;
  w.scalar("loss", 1, 1);
  w.flush();
  std::vector<Event> ev = read_events(w.path());
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[1].values.at(0).first, "loss");
}

TEST(TbWriter, UncreatableDirectoryNamesIt) {
  std::string dir = bonsai::test::scratch_dir("tb_nodir");
  std::ofstream(dir + "/file") << "x";
  std::string e = error_of([&] { TbWriter w(dir + "/file/logs"); });
  EXPECT_NE(e.find("cannot create TensorBoard log directory"), std::string::npos) << e;
  EXPECT_NE(e.find(dir + "/file/logs"), std::string::npos) << e;
}

// Sets RLIMIT_FSIZE (with SIGXFSZ ignored, so writes fail with EFBIG instead of killing the test)
// and restores both when it goes out of scope.
struct FileSizeLimit {
  rlimit old{};
  struct sigaction old_action{};
  explicit FileSizeLimit(rlim_t bytes) {
    struct sigaction ign{};
    ign.sa_handler = SIG_IGN;
    ::sigaction(SIGXFSZ, &ign, &old_action);
    ::getrlimit(RLIMIT_FSIZE, &old);
    rlimit now = old;
    now.rlim_cur = std::min<rlim_t>(bytes, old.rlim_max);
    ::setrlimit(RLIMIT_FSIZE, &now);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::sigaction(SIGXFSZ, &old_action, nullptr);
  }
};

TEST(TbWriter, WriteErrorNamesFileAndKeepsEarlierRecords) {
  std::string dir = bonsai::test::scratch_dir("tb_full");
  TbWriter w(dir);
  const rlim_t limit = fs::file_size(w.path()) + 1000;  // room for about twenty records, not a whole one more
  std::string e;
  int written = 0;
  {
    FileSizeLimit guard(limit);
    for (int i = 0; i < 1000 && e.empty(); ++i) {
      e = error_of([&] {
        w.scalar("loss", i, i);
        w.flush();
      });
      if (e == "(no error)") e.clear(), ++written;
    }
  }
  ASSERT_FALSE(e.empty()) << "no write error within 1000 records under a " << limit << "-byte limit";
  EXPECT_NE(e.find(w.path()), std::string::npos) << e;
  EXPECT_NE(e.find(std::strerror(EFBIG)), std::string::npos) << e;
  // The writer refuses to append after a partial record.
  std::string again = error_of([&] { w.scalar("loss", 0, 0); });
  EXPECT_NE(again.find("had a write error"), std::string::npos) << again;
  EXPECT_NE(error_of([&] { w.flush(); }), "(no error)");

  EXPECT_EQ(fs::file_size(w.path()), limit);
  size_t tail = 0;
  std::vector<Event> ev = read_events(w.path(), &tail);
  EXPECT_GT(tail, 0u);  // the record that hit the limit, cut short
  ASSERT_EQ(ev.size(), static_cast<size_t>(written) + 1);
  for (int i = 0; i < written; ++i) EXPECT_EQ(ev[i + 1].step, i);
}

// ---- interop -------------------------------------------------------------------------------------

TEST(TbInterop, TensorBoardReadsEveryScalar) {
  std::string why = python_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  std::string dir = bonsai::test::scratch_dir("tb_interop");
  const double inf = std::numeric_limits<double>::infinity();
  std::map<std::string, std::vector<std::pair<int64_t, double>>> want;
  {
    TbWriter w(dir);
    auto put = [&](const std::string& tag, double v, int64_t step) {
      w.scalar(tag, v, step);
      want[tag].emplace_back(step, v);
    };
    for (int64_t step = 0; step < 300; ++step) {
      put("loss/train", 5.0 * std::exp(-0.01 * step) + 0.1 * std::sin(step), step);
      if (step % 10 == 0) put("lr", 3e-4 * std::min(1.0, (step + 1) / 100.0), step);
      if (step % 50 == 0) w.flush();
    }
    int64_t s = 300;
    for (double v : {0.0, -0.0, 1e-40, -2.5e-30, 3.0e38, 1e39, -inf, inf,
                     std::numeric_limits<double>::quiet_NaN(), 0.1})
      put("edge/values", v, s++);
    put("ünïcode/λ", 42.0, s);
    put("big_step", 1.0, int64_t{1} << 40);
  }
  nlohmann::json got = tensorboard_scalars(dir);
  ASSERT_EQ(got.size(), want.size()) << got.dump();
  for (const auto& [tag, points] : want) {
    ASSERT_TRUE(got.contains(tag)) << tag << " missing in " << got.dump();
    const auto& g = got[tag];
    ASSERT_EQ(g.size(), points.size()) << tag;
    for (size_t i = 0; i < points.size(); ++i) {
      EXPECT_EQ(g[i][0].get<int64_t>(), points[i].first) << tag << " #" << i;
      double v = json_number(g[i][1]);
      float expect = static_cast<float>(points[i].second);
      if (std::isnan(expect)) EXPECT_TRUE(std::isnan(v)) << tag << " #" << i;
      else EXPECT_EQ(v, static_cast<double>(expect)) << tag << " #" << i;  // float -> double is exact
    }
  }
}

TEST(TbInterop, TensorBoardSkipsATruncatedFinalRecord) {
  std::string why = python_skip_reason();
  if (!why.empty()) GTEST_SKIP() << why;
  std::string dir = bonsai::test::scratch_dir("tb_truncated");
  std::string path;
  {
    TbWriter w(dir);
    path = w.path();
    for (int i = 0; i < 10; ++i) w.scalar("loss", i * 0.5, i);
  }
  const uintmax_t full = fs::file_size(path);
  const size_t last = bonsai::tb::frame_record(bonsai::tb::encode_scalar_event(1.0, 9, "loss", 4.5f)).size();
  // Cut inside the last record's length, its data, and its trailing CRC, as a crash might.
  for (uintmax_t cut : {last - 3, last / 2, uintmax_t{2}}) {
    std::string copy = dir + "/cut/events.out.tfevents.1.cut." + std::to_string(cut);
    fs::create_directories(dir + "/cut");
    fs::copy_file(path, copy);
    fs::resize_file(copy, full - cut);
    size_t tail = 0;
    EXPECT_EQ(read_events(copy, &tail).size(), 10u) << cut;
    EXPECT_GT(tail, 0u);
    nlohmann::json got = tensorboard_scalars(copy);
    ASSERT_TRUE(got.contains("loss")) << got.dump();
    ASSERT_EQ(got["loss"].size(), 9u) << "cut " << cut << ": " << got.dump();
    for (int i = 0; i < 9; ++i) EXPECT_EQ(got["loss"][i][1].get<double>(), i * 0.5);
    fs::remove(copy);
  }
}

// train/proto/tb_event.proto documents the subset we encode; protoc decoding our bytes through it
// keeps the document and the encoder in step.
TEST(TbInterop, ProtocDecodesWithOurSchema) {
  std::string src = bonsai::test::env_dir("BONSAI_SOURCE_DIR");
  if (src.empty() || !fs::exists(src + "/train/proto/tb_event.proto")) GTEST_SKIP() << "BONSAI_SOURCE_DIR is not set";
  int rc = 0;
  run("command -v protoc >/dev/null 2>&1", &rc);
  if (rc != 0) GTEST_SKIP() << "protoc is not installed (Debian: protobuf-compiler)";
  std::string dir = bonsai::test::scratch_dir("tb_protoc");
  std::ofstream(dir + "/scalar.bin", std::ios::binary)
      << bonsai::tb::encode_scalar_event(1700000000.25, -3, "loss/train", 0.5f);
  std::ofstream(dir + "/header.bin", std::ios::binary) << bonsai::tb::encode_file_version_event(12.5, "brain.Event:2");
  auto decode = [&](const std::string& file) {
    std::string out = run("protoc -I'" + src + "/train/proto' --decode=bonsai.tb.Event tb_event.proto < '" + file +
                              "' 2>&1",
                          &rc);
    EXPECT_EQ(rc, 0) << out;
    return out;
  };
  std::string s = decode(dir + "/scalar.bin");
  for (const char* line : {"wall_time: 1700000000.25", "step: -3", "tag: \"loss/train\"", "simple_value: 0.5"})
    EXPECT_NE(s.find(line), std::string::npos) << line << " not in\n" << s;
  std::string h = decode(dir + "/header.bin");
  EXPECT_NE(h.find("file_version: \"brain.Event:2\""), std::string::npos) << h;
  EXPECT_NE(h.find("wall_time: 12.5"), std::string::npos) << h;
}

}  // namespace
