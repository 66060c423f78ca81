// TensorBoard event-file writer for training logs: scalars as TFRecord-framed `Event` protos, with
// the few protobuf messages encoded by hand so bonsai needs neither torch nor libprotobuf for it.
//
// Wire format (field numbers and types match upstream tensorflow/core/util/event.proto and
// tensorflow/core/framework/summary.proto; train/proto/tb_event.proto spells out the subset):
//   Event          1 wall_time double (fixed64)   2 step int64 (varint)
//                  3 file_version string          5 summary Summary (length-delimited)
//   Summary        1 value repeated Summary.Value
//   Summary.Value  1 tag string                   2 simple_value float (fixed32)
// Each Event is one TFRecord: u64 length, u32 masked CRC32C(length), data, u32 masked CRC32C(data),
// all little-endian. Records are only ever appended, so a crash leaves at most one truncated final
// record, which TensorBoard's reader skips.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace bonsai {

namespace tb {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
uint32_t crc32c(const void* data, size_t n);
inline uint32_t crc32c(std::string_view s) { return crc32c(s.data(), s.size()); }

// TFRecord's masked CRC: rotate right by 15 and add a constant, so that CRCs of data that itself
// contains CRCs stay well distributed.
uint32_t mask_crc(uint32_t crc);

// One TFRecord around `payload`: length, masked CRC of the length bytes, payload, masked CRC of it.
std::string frame_record(std::string_view payload);

// Serialized Event messages, byte-identical to what protobuf's own proto3 serializer produces
// (zero wall_time/step omitted; the oneof members file_version and simple_value always present).
std::string encode_file_version_event(double wall_time, std::string_view file_version);
std::string encode_scalar_event(double wall_time, int64_t step, std::string_view tag, float value);

// Whether `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF):
// proto3 string fields must be, or TensorBoard's parser rejects the record.
bool is_valid_utf8(std::string_view s);

}  // namespace tb

// Appends scalar summaries to a fresh event file
// "<log_dir>/events.out.tfevents.<unix_seconds>.<hostname>.<pid>.<n>" (n is 0 unless another file of
// that name exists already; existing files are never overwritten). Not thread-safe.
class TbWriter {
 public:
  // Creates log_dir (and parents) and the event file, and writes the "brain.Event:2" header record.
  // Throws bonsai::Error naming the directory or file when either cannot be created.
  explicit TbWriter(const std::string& log_dir);
  // Flushes and closes. Destructors must not throw, so a failure here is only reported on stderr:
  // call flush() first where a lost tail must be an error.
  ~TbWriter();
  TbWriter(const TbWriter&) = delete;
  TbWriter& operator=(const TbWriter&) = delete;

  // One scalar (stored as float, TensorBoard's simple_value) at `step`, stamped with the current
  // wall time. Throws bonsai::Error for a tag that is not valid UTF-8, or on a write error; after a
  // write error the writer refuses further records so nothing is appended after a partial one.
  void scalar(const std::string& tag, double value, int64_t step);
  // Pushes buffered records to the OS so a running TensorBoard sees them. Throws on a write error.
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& payload);
  [[noreturn]] void fail(const char* what);
  void check_usable() const;

  std::string path_;
  std::FILE* file_ = nullptr;
  bool failed_ = false;
};

}  // namespace bonsai
