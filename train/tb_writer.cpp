// TensorBoard event-file writer: CRC32C, TFRecord framing, hand-encoded Event/Summary protobuf
// messages and the buffered, append-only file they go into. See tb_writer.h for the wire format.
#include "train/tb_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "core/error.h"

namespace bonsai {

namespace tb {

namespace {

// ---- CRC32C -----------------------------------------------------------------------------------

// Byte-at-a-time table for the reflected Castagnoli polynomial; built at compile time so there is no
// initialisation-order question for writers created during static initialisation.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// ---- little-endian and protobuf wire primitives ------------------------------------------------

// Explicit shifts rather than memcpy of the integer, so the output is little-endian on any host.
void put_le(std::string& out, uint64_t v, int n_bytes) {
  for (int i = 0; i < n_bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (field << 3) | type); }

void put_bytes_field(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes.data(), bytes.size());
}

void put_double_field(std::string& out, uint32_t field, double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float_field(std::string& out, uint32_t field, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

// ---- the Event subset (field numbers from upstream event.proto / summary.proto) ---------------

namespace field {
constexpr uint32_t kEventWallTime = 1;     // double
constexpr uint32_t kEventStep = 2;         // int64
constexpr uint32_t kEventFileVersion = 3;  // string, oneof `what`
constexpr uint32_t kEventSummary = 5;      // Summary, oneof `what`
constexpr uint32_t kSummaryValue = 1;      // repeated Summary.Value
constexpr uint32_t kValueTag = 1;          // string
constexpr uint32_t kValueSimpleValue = 2;  // float, oneof `value`
}  // namespace field

// wall_time and step are plain proto3 scalars: like protobuf, leave them out when they are zero
// (a reader sees the same default), so our bytes equal the reference serializer's.
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits;
  std::memcpy(&bits, &wall_time, sizeof bits);
  if (bits != 0) put_double_field(e, field::kEventWallTime, wall_time);
  if (step != 0) {
    put_key(e, field::kEventStep, kVarint);
    put_varint(e, static_cast<uint64_t>(step));  // int64: negatives are ten-byte two's complement
  }
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t mask_crc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }

std::string frame_record(std::string_view payload) {
  std::string r;
  r.reserve(payload.size() + 16);
  put_le(r, payload.size(), 8);
  put_le(r, mask_crc(crc32c(r.data(), 8)), 4);
  r.append(payload.data(), payload.size());
  put_le(r, mask_crc(crc32c(payload)), 4);
  return r;
}

std::string encode_file_version_event(double wall_time, std::string_view file_version) {
  std::string e = event_header(wall_time, 0);
  put_bytes_field(e, field::kEventFileVersion, file_version);  // oneof member: always present
  return e;
}

std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value) {
  std::string v;
  if (!tag.empty()) put_bytes_field(v, field::kValueTag, tag);
  put_float_field(v, field::kValueSimpleValue, value);  // oneof member: present even when 0.0
  std::string summary;
  put_bytes_field(summary, field::kSummaryValue, v);
  std::string e = event_header(wall_time, step);
  put_bytes_field(e, field::kEventSummary, summary);
  return e;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    // Sequence length and the allowed range of the second byte (RFC 3629's table), which rules out
    // overlong forms, UTF-16 surrogates and code points beyond U+10FFFF.
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      if (b == 0xE0) lo = 0xA0;
      if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    auto b1 = static_cast<unsigned char>(s[i + 1]);
    if (b1 < lo || b1 > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if (c < 0x80 || c > 0xBF) return false;
    }
    i += len;
  }
  return true;
}

}  // namespace tb

namespace {

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

// Tags in error messages: printable ASCII as is, everything else as \xNN, so a bad byte is visible.
std::string escaped(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    }
  }
  return out;
}

// Creates the file exclusively (O_EXCL): two writers started in the same second by the same process
// get ".0" and ".1" instead of one truncating the other's log.
std::FILE* create_event_file(const std::string& dir, std::string* path) {
  std::string stem = dir + "/events.out.tfevents." + std::to_string(static_cast<long long>(std::time(nullptr))) +
                     "." + host_name() + "." + std::to_string(static_cast<long long>(::getpid())) + ".";
  for (int n = 0; n < 1000; ++n) {
    *path = stem + std::to_string(n);
    int fd = ::open(path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) continue;
    if (fd < 0) break;
    if (std::FILE* f = ::fdopen(fd, "wb")) return f;
    int e = errno;
    ::close(fd);
    errno = e;
    break;
  }
  throw Error("cannot create TensorBoard event file '" + *path + "': " + std::strerror(errno));
}

}  // namespace

TbWriter::TbWriter(const std::string& log_dir) {
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec || !std::filesystem::is_directory(log_dir))
    throw Error("cannot create TensorBoard log directory '" + log_dir + "': " +
                (ec ? ec.message() : std::string("not a directory")));
  file_ = create_event_file(log_dir, &path_);
  try {
    write_record(tb::encode_file_version_event(now_seconds(), "brain.Event:2"));
    // The header on disk at once: a TensorBoard already watching the directory sees a valid file.
    flush();
  } catch (...) {
    std::fclose(file_);  // no destructor runs for a throwing constructor
    throw;
  }
}

TbWriter::~TbWriter() {
  if (file_ == nullptr) return;
  int rc = std::fclose(file_);
  if (rc != 0 && !failed_)
    std::fprintf(stderr, "bonsai: warning: closing TensorBoard event file '%s' failed: %s\n", path_.c_str(),
                 std::strerror(errno));
}

void TbWriter::scalar(const std::string& tag, double value, int64_t step) {
  check_usable();
  if (!tb::is_valid_utf8(tag))
    throw Error("TensorBoard tag '" + escaped(tag) + "' for '" + path_ + "' is not valid UTF-8",
                "TensorBoard stores tags as protobuf strings, which must be UTF-8");
  write_record(tb::encode_scalar_event(now_seconds(), step, tag, static_cast<float>(value)));
}

void TbWriter::flush() {
  check_usable();
  if (std::fflush(file_) != 0) fail("flush");
}

void TbWriter::write_record(const std::string& payload) {
  check_usable();
  // One fwrite per whole record: stdio may still split it across write(2) calls, but records are
  // only appended, so an interruption can damage nothing but this last record.
  std::string record = tb::frame_record(payload);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) fail("write to");
}

void TbWriter::fail(const char* what) {
  int e = errno;
  failed_ = true;
  throw Error(std::string("cannot ") + what + " TensorBoard event file '" + path_ + "': " + std::strerror(e));
}

void TbWriter::check_usable() const {
  if (failed_)
    throw Error("TensorBoard event file '" + path_ + "' had a write error; no further records are written to it");
}

}  // namespace bonsai
