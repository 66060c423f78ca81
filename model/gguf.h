// GGUF (llama.cpp's model container) without torch: a validating reader over an mmap or an
// in-memory buffer (versions 2 and 3), and a streaming writer (version 3). The reader checks the
// whole header, every tensor's geometry and data range up front, so later code can index tensor
// bytes blindly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "model/ggml_quants.h"

namespace bonsai::gguf {

enum class ValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

// "U32", "STRING", ... ; "unknown" outside the enum.
const char* value_type_name(ValueType t);

// One metadata value. Parsed values remember where they came from ("key 'x' in GGUF 'f.gguf'") so a
// type mismatch names the key. Build values with the factories below; `type` and `elem_type` are
// public for reading.
struct Value {
  ValueType type = ValueType::U8;
  ValueType elem_type = ValueType::U8;  // meaningful only for ARRAY

  // Integer accessors accept every integer type whose value fits the result; as_f64 also accepts
  // integers. Each throws bonsai::Error naming the key and both types when the value does not fit.
  uint64_t as_u64() const;
  int64_t as_i64() const;
  uint32_t as_u32() const;
  double as_f64() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;

  // Convenience for the common arrays; they check the element type and name the key on mismatch.
  std::vector<std::string> as_string_array() const;
  std::vector<int64_t> as_i64_array() const;
  std::vector<double> as_f64_array() const;

  static Value u8(uint8_t v);
  static Value i8(int8_t v);
  static Value u16(uint16_t v);
  static Value i16(int16_t v);
  static Value u32(uint32_t v);
  static Value i32(int32_t v);
  static Value u64(uint64_t v);
  static Value i64(int64_t v);
  static Value f32(float v);
  static Value f64(double v);
  static Value boolean(bool v);
  static Value string(std::string v);
  // Every element must have type `elem`; throws otherwise.
  static Value array(ValueType elem, std::vector<Value> items);

  bool operator==(const Value& o) const;
  bool operator!=(const Value& o) const { return !(*this == o); }

  // Parser hook: records what to call this value in error messages.
  void set_origin(std::shared_ptr<const std::string> origin) { origin_ = std::move(origin); }

 private:
  [[noreturn]] void type_error(const char* expected) const;
  std::string origin() const;

  // Integers and BOOL live in `bits` (signed ones sign-extended), F32/F64 in `real`.
  uint64_t bits_ = 0;
  double real_ = 0.0;
  std::string str_;
  std::vector<Value> items_;
  std::shared_ptr<const std::string> origin_;
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the fastest-varying (row) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  // relative to the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;  // into the mapping / parsed buffer
  uint64_t numel() const;
};

class FileParser;

class File {
 public:
  // Maps `path` and validates everything up front; throws bonsai::Error naming the file.
  static File open(const std::string& path);
  // Parses a caller-owned buffer that must outlive the File (fuzzer, tests).
  static File parse(const uint8_t* data, size_t size, const std::string& name_for_errors);

  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute start of the data section

  const std::vector<std::pair<std::string, Value>>& metadata() const { return metadata_; }
  const Value* find(const std::string& key) const;  // nullptr when absent
  const Value& get(const std::string& key) const;   // throws naming the key and the file

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const TensorInfo* find_tensor(const std::string& name) const;
  const TensorInfo& get_tensor(const std::string& name) const;  // throws naming tensor and file

  // Decodes a whole tensor to float32 (throws for types dequantize() does not support).
  std::vector<float> dequantize_tensor(const TensorInfo& t) const;

  const std::string& path() const { return path_; }
  // The mapping behind open()'s File (null for parse()); hold it to keep tensor bytes alive.
  const std::shared_ptr<MappedFile>& mapping() const { return mapping_; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> metadata_;
  std::unordered_map<std::string, size_t> key_index_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;

  friend class FileParser;  // gguf.cpp: fills the fields while validating
};

// Writes a GGUF v3: metadata in insertion order, tensor infos, then each tensor's bytes (already in
// its ggml type) padded to the alignment. Tensor bytes are streamed: the writer keeps only pointers
// or producer callbacks, never a copy of the data. The file appears atomically on write().
class Writer {
 public:
  // Receives the tensor's bytes in any number of pieces; their total must be the tensor's nbytes.
  using Sink = std::function<void(const void* data, size_t n)>;
  using Producer = std::function<void(const Sink& sink)>;

  explicit Writer(std::string path);

  // Throws on a duplicate key. "general.alignment" (U32, a power of two) also sets the alignment.
  void add_kv(std::string key, Value v);
  // Default 32; general.alignment is written only when it differs from 32.
  void set_alignment(size_t alignment);

  // `data` must stay valid until write() returns.
  void add_tensor(std::string name, std::vector<uint64_t> ne, GgmlType type, const void* data,
                  uint64_t nbytes);
  // `produce` is called once, during write(), and must emit exactly `nbytes` bytes.
  void add_tensor(std::string name, std::vector<uint64_t> ne, GgmlType type, uint64_t nbytes,
                  Producer produce);

  // Validates every tensor (dims, block multiple, nbytes == expected), then writes; throws
  // bonsai::Error naming the file and the tensor on any problem, leaving no partial file.
  void write();

 private:
  struct PendingTensor {
    std::string name;
    std::vector<uint64_t> ne;
    GgmlType type;
    uint64_t nbytes;
    Producer produce;
  };
  std::string path_;
  size_t alignment_ = 32;
  std::vector<std::pair<std::string, Value>> kv_;
  std::unordered_map<std::string, size_t> key_index_;
  std::vector<PendingTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace bonsai::gguf
