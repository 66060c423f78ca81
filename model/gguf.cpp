// GGUF reader and writer. Layout (all little-endian):
//   "GGUF" u32 version  u64 n_tensors  u64 n_kv
//   n_kv x  { string key, u32 value_type, value }
//   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
//   padding to `alignment`, then the data section; each tensor's offset is relative to its start.
// A string is u64 length + bytes (no terminator); an array is u32 elem_type + u64 count + elements.
// Every count read from the file is checked against the bytes that remain before anything is
// allocated, so a corrupt or hostile file costs at most a few times its own size in memory.
#include "model/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/mapped_file.h"

namespace bonsai::gguf {
namespace {

constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;         // nested arrays are legal; bound the recursion
constexpr size_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT
constexpr const char* kAlignmentKey = "general.alignment";

// Bytes of one element of a fixed-size value type; 0 for STRING and ARRAY.
size_t fixed_size(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::BOOL:
      return 1;
    case ValueType::U16:
    case ValueType::I16:
      return 2;
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::F32:
      return 4;
    case ValueType::U64:
    case ValueType::I64:
    case ValueType::F64:
      return 8;
    default:
      return 0;
  }
}

// The fewest bytes an element of type `t` can occupy in a file (string: its length; array: its
// element type and count). Used to reject absurd counts before allocating.
size_t min_encoded_size(ValueType t) {
  if (t == ValueType::STRING) return 8;
  if (t == ValueType::ARRAY) return 12;
  return fixed_size(t);
}

bool is_valid_value_type(uint32_t raw) { return raw <= static_cast<uint32_t>(ValueType::F64); }

bool is_integer(ValueType t) {
  switch (t) {
    case ValueType::U8:
    case ValueType::I8:
    case ValueType::U16:
    case ValueType::I16:
    case ValueType::U32:
    case ValueType::I32:
    case ValueType::U64:
    case ValueType::I64:
      return true;
    default:
      return false;
  }
}

bool is_signed(ValueType t) {
  return t == ValueType::I8 || t == ValueType::I16 || t == ValueType::I32 || t == ValueType::I64;
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::string quoted(const std::string& s) { return "'" + s + "'"; }

std::string shape_string(const std::vector<uint64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Elements and bytes of a tensor, or an error message (empty on success). Shared by the reader and
// the writer so that both enforce the same rules.
std::string check_geometry(const std::vector<uint64_t>& ne, GgmlType type, uint64_t* numel,
                           uint64_t* nbytes) {
  if (ne.empty() || ne.size() > kMaxDims) {
    return "has " + std::to_string(ne.size()) + " dimensions; expected 1 to " +
           std::to_string(kMaxDims);
  }
  const auto max_elems = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  uint64_t n = 1;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] == 0) {
      return "has dimension " + std::to_string(i) + " of size 0 in " + shape_string(ne);
    }
    if (ne[i] > max_elems / n) {
      return "has shape " + shape_string(ne) + " whose element count overflows 63 bits";
    }
    n *= ne[i];
  }
  const auto blk = static_cast<uint64_t>(block_elems(type));
  const auto bytes = static_cast<uint64_t>(block_bytes(type));
  if (ne[0] % blk != 0) {
    return "has row length ne[0] = " + std::to_string(ne[0]) + ", not a multiple of " +
           type_name(type) + "'s block size " + std::to_string(blk);
  }
  const uint64_t blocks = n / blk;
  if (blocks > std::numeric_limits<uint64_t>::max() / bytes) {
    return "has shape " + shape_string(ne) + " whose byte size overflows 64 bits";
  }
  *numel = n;
  *nbytes = blocks * bytes;
  return "";
}

std::string hex_bytes(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

std::string printable(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += (p[i] >= 0x20 && p[i] < 0x7f) ? static_cast<char>(p[i]) : '.';
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Value

const char* value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8:
      return "U8";
    case ValueType::I8:
      return "I8";
    case ValueType::U16:
      return "U16";
    case ValueType::I16:
      return "I16";
    case ValueType::U32:
      return "U32";
    case ValueType::I32:
      return "I32";
    case ValueType::F32:
      return "F32";
    case ValueType::BOOL:
      return "BOOL";
    case ValueType::STRING:
      return "STRING";
    case ValueType::ARRAY:
      return "ARRAY";
    case ValueType::U64:
      return "U64";
    case ValueType::I64:
      return "I64";
    case ValueType::F64:
      return "F64";
  }
  return "unknown";
}

std::string Value::origin() const { return origin_ ? *origin_ : "a GGUF value"; }

void Value::type_error(const char* expected) const {
  std::string found = value_type_name(type);
  if (type == ValueType::ARRAY) found += std::string(" of ") + value_type_name(elem_type);
  throw Error(origin() + " is " + found + ", expected " + expected,
              "the file does not follow the GGUF key conventions this code relies on");
}

uint64_t Value::as_u64() const {
  if (!is_integer(type)) type_error("an unsigned integer");
  if (is_signed(type) && static_cast<int64_t>(bits_) < 0) {
    throw Error(origin() + " is " + std::to_string(static_cast<int64_t>(bits_)) +
                ", expected a non-negative integer");
  }
  return bits_;
}

int64_t Value::as_i64() const {
  if (!is_integer(type)) type_error("an integer");
  if (!is_signed(type) && bits_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    throw Error(origin() + " is " + std::to_string(bits_) +
                ", expected a value that fits in int64");
  }
  return static_cast<int64_t>(bits_);
}

uint32_t Value::as_u32() const {
  const uint64_t v = as_u64();
  if (v > std::numeric_limits<uint32_t>::max()) {
    throw Error(origin() + " is " + std::to_string(v) + ", expected a value that fits in 32 bits");
  }
  return static_cast<uint32_t>(v);
}

double Value::as_f64() const {
  if (type == ValueType::F32 || type == ValueType::F64) return real_;
  if (is_integer(type)) {
    return is_signed(type) ? static_cast<double>(static_cast<int64_t>(bits_))
                           : static_cast<double>(bits_);
  }
  type_error("a number");
}

bool Value::as_bool() const {
  if (type != ValueType::BOOL) type_error("BOOL");
  return bits_ != 0;
}

const std::string& Value::as_string() const {
  if (type != ValueType::STRING) type_error("STRING");
  return str_;
}

const std::vector<Value>& Value::as_array() const {
  if (type != ValueType::ARRAY) type_error("ARRAY");
  return items_;
}

std::vector<std::string> Value::as_string_array() const {
  const auto& items = as_array();
  if (elem_type != ValueType::STRING) type_error("ARRAY of STRING");
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const auto& v : items) out.push_back(v.str_);
  return out;
}

std::vector<int64_t> Value::as_i64_array() const {
  const auto& items = as_array();
  if (!is_integer(elem_type)) type_error("ARRAY of integers");
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (const auto& v : items) out.push_back(v.as_i64());
  return out;
}

std::vector<double> Value::as_f64_array() const {
  const auto& items = as_array();
  if (!is_integer(elem_type) && elem_type != ValueType::F32 && elem_type != ValueType::F64) {
    type_error("ARRAY of numbers");
  }
  std::vector<double> out;
  out.reserve(items.size());
  for (const auto& v : items) out.push_back(v.as_f64());
  return out;
}

// Integers are kept in `bits_`, signed ones sign-extended, so every accessor can range-check.
Value Value::u8(uint8_t v) {
  Value r;
  r.type = ValueType::U8;
  r.bits_ = v;
  return r;
}

Value Value::i8(int8_t v) {
  Value r;
  r.type = ValueType::I8;
  r.bits_ = static_cast<uint64_t>(static_cast<int64_t>(v));
  return r;
}

Value Value::u16(uint16_t v) {
  Value r;
  r.type = ValueType::U16;
  r.bits_ = v;
  return r;
}

Value Value::i16(int16_t v) {
  Value r;
  r.type = ValueType::I16;
  r.bits_ = static_cast<uint64_t>(static_cast<int64_t>(v));
  return r;
}

Value Value::u32(uint32_t v) {
  Value r;
  r.type = ValueType::U32;
  r.bits_ = v;
  return r;
}

Value Value::i32(int32_t v) {
  Value r;
  r.type = ValueType::I32;
  r.bits_ = static_cast<uint64_t>(static_cast<int64_t>(v));
  return r;
}

Value Value::u64(uint64_t v) {
  Value r;
  r.type = ValueType::U64;
  r.bits_ = v;
  return r;
}

Value Value::i64(int64_t v) {
  Value r;
  r.type = ValueType::I64;
  r.bits_ = static_cast<uint64_t>(v);
  return r;
}

Value Value::f32(float v) {
  Value r;
  r.type = ValueType::F32;
  r.real_ = v;  // float -> double is exact, so writing it back as F32 restores the same bits
  return r;
}

Value Value::f64(double v) {
  Value r;
  r.type = ValueType::F64;
  r.real_ = v;
  return r;
}

Value Value::boolean(bool v) {
  Value r;
  r.type = ValueType::BOOL;
  r.bits_ = v ? 1 : 0;
  return r;
}

Value Value::string(std::string v) {
  Value r;
  r.type = ValueType::STRING;
  r.str_ = std::move(v);
  return r;
}

Value Value::array(ValueType elem, std::vector<Value> items) {
  if (!is_valid_value_type(static_cast<uint32_t>(elem))) {
    throw Error("GGUF array element type " + std::to_string(static_cast<uint32_t>(elem)) +
                " is not a GGUF value type");
  }
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].type != elem) {
      throw Error(std::string("GGUF array of ") + value_type_name(elem) + ": element " +
                  std::to_string(i) + " is " + value_type_name(items[i].type));
    }
  }
  Value r;
  r.type = ValueType::ARRAY;
  r.elem_type = elem;
  r.items_ = std::move(items);
  return r;
}

bool Value::operator==(const Value& o) const {
  if (type != o.type) return false;
  switch (type) {
    case ValueType::F32:
    case ValueType::F64:
      // Bitwise, so that NaN payloads and signed zeros count as round-tripped exactly.
      return std::memcmp(&real_, &o.real_, sizeof real_) == 0;
    case ValueType::STRING:
      return str_ == o.str_;
    case ValueType::ARRAY:
      return elem_type == o.elem_type && items_ == o.items_;
    default:
      return bits_ == o.bits_;
  }
}

// ---------------------------------------------------------------------------------------------
// TensorInfo

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;  // validated at parse time not to overflow
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reader

// Walks the buffer once, front to back. Error messages are built only on failure: the `describe`
// callbacks passed to the read helpers say what was being read ("the value of key 'x'").
class FileParser {
 public:
  FileParser(const uint8_t* data, size_t size, std::string name)
      : data_(data), size_(size), name_(std::move(name)) {}

  File run() {
    File f;
    f.path_ = name_;
    read_header(f);
    read_metadata(f);
    read_alignment(f);
    read_tensor_infos(f);
    place_tensor_data(f);
    return f;
  }

 private:
  static constexpr const char* kTruncatedHint =
      "the file is truncated; re-download or re-convert it";
  static constexpr const char* kCorruptHint =
      "the file is corrupt or not written by a GGUF writer; re-download or re-convert it";

  [[noreturn]] void fail(const std::string& msg, const std::string& hint) const {
    throw Error("GGUF " + quoted(name_) + ": " + msg, hint);
  }

  size_t remaining() const { return size_ - pos_; }

  template <typename Describe>
  void need(uint64_t n, const Describe& describe) const {
    if (n > remaining()) {
      fail("truncated while reading " + describe() + ": need " + std::to_string(n) +
               " bytes at offset " + std::to_string(pos_) + " but the file has " +
               std::to_string(size_) + " bytes",
           kTruncatedHint);
    }
  }

  template <typename T, typename Describe>
  T read(const Describe& describe) {
    need(sizeof(T), describe);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  template <typename Describe>
  std::string read_string(const Describe& describe) {
    const size_t at = pos_;
    const auto len = read<uint64_t>([&] { return "the length of " + describe(); });
    if (len > remaining()) {
      fail("string length " + std::to_string(len) + " of " + describe() + " (at offset " +
               std::to_string(at) + ") exceeds the " + std::to_string(remaining()) +
               " bytes left in the file",
           kTruncatedHint);
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  void read_header(File& f) {
    need(4, [] { return std::string("the magic"); });
    if (std::memcmp(data_, "GGUF", 4) != 0) {
      fail("bad magic: expected 'GGUF' (47 47 55 46), found " + hex_bytes(data_, 4) + " ('" +
               printable(data_, 4) + "')",
           "this is not a GGUF file (legacy GGML/GGJT, safetensors and PyTorch files are not "
           "GGUF); convert it with llama.cpp's convert_hf_to_gguf.py");
    }
    pos_ = 4;
    const auto version = read<uint32_t>([] { return std::string("the version"); });
    check_version(version);
    f.version_ = version;
    n_tensors_ = read<uint64_t>([] { return std::string("the tensor count"); });
    n_kv_ = read<uint64_t>([] { return std::string("the metadata count"); });
  }

  void check_version(uint32_t version) const {
    if (version == 2 || version == 3) return;
    const uint32_t swapped = (version >> 24) | ((version >> 8) & 0xff00u) |
                             ((version << 8) & 0xff0000u) | (version << 24);
    if (swapped == 2 || swapped == 3) {
      fail("version field reads " + std::to_string(version) + ", expected 2 or 3",
           "this looks like a big-endian GGUF; convert it to little-endian with "
           "gguf-convert-endian");
    }
    if (version == 1) {
      fail("unsupported version 1, expected 2 or 3",
           "GGUF v1 (before August 2023) is not supported; re-convert with a current llama.cpp");
    }
    fail("unsupported version " + std::to_string(version) + ", expected 2 or 3",
         "the file was written by a newer GGUF writer than this reader knows, or is corrupt");
  }

  void read_metadata(File& f) {
    // A pair takes at least 13 bytes (8 key length + 4 type + 1 value byte).
    if (n_kv_ > remaining() / 13) {
      fail("header claims " + std::to_string(n_kv_) + " metadata entries but only " +
               std::to_string(remaining()) + " bytes follow (each needs at least 13)",
           kCorruptHint);
    }
    f.metadata_.reserve(static_cast<size_t>(n_kv_));
    for (uint64_t i = 0; i < n_kv_; ++i) {
      auto key = read_string([&] { return "the key of metadata entry #" + std::to_string(i); });
      if (f.key_index_.count(key)) {
        fail("duplicate metadata key " + quoted(key) + " (entries #" +
                 std::to_string(f.key_index_[key]) + " and #" + std::to_string(i) + ")",
             kCorruptHint);
      }
      const auto raw = read<uint32_t>([&] { return "the value type of key " + quoted(key); });
      if (!is_valid_value_type(raw)) {
        fail("key " + quoted(key) + " has unknown value type " + std::to_string(raw) +
                 ", expected 0..12",
             kCorruptHint);
      }
      auto origin =
          std::make_shared<const std::string>("key " + quoted(key) + " in GGUF " + quoted(name_));
      Value v = read_value(static_cast<ValueType>(raw), key, origin, 0);
      f.key_index_.emplace(key, f.metadata_.size());
      f.metadata_.emplace_back(std::move(key), std::move(v));
    }
  }

  template <typename T, typename Make>
  Value read_scalar(const std::string& key, const Make& make) {
    return make(read<T>([&] { return "the value of key " + quoted(key); }));
  }

  Value read_value(ValueType t, const std::string& key,
                   const std::shared_ptr<const std::string>& origin, int depth) {
    Value v;
    switch (t) {
      case ValueType::U8:
        v = read_scalar<uint8_t>(key, Value::u8);
        break;
      case ValueType::I8:
        v = read_scalar<int8_t>(key, Value::i8);
        break;
      case ValueType::U16:
        v = read_scalar<uint16_t>(key, Value::u16);
        break;
      case ValueType::I16:
        v = read_scalar<int16_t>(key, Value::i16);
        break;
      case ValueType::U32:
        v = read_scalar<uint32_t>(key, Value::u32);
        break;
      case ValueType::I32:
        v = read_scalar<int32_t>(key, Value::i32);
        break;
      case ValueType::U64:
        v = read_scalar<uint64_t>(key, Value::u64);
        break;
      case ValueType::I64:
        v = read_scalar<int64_t>(key, Value::i64);
        break;
      case ValueType::F32:
        v = read_scalar<float>(key, Value::f32);
        break;
      case ValueType::F64:
        v = read_scalar<double>(key, Value::f64);
        break;
      case ValueType::BOOL:
        v = Value::boolean(read<uint8_t>([&] { return "the value of key " + quoted(key); }) != 0);
        break;
      case ValueType::STRING:
        v = Value::string(read_string([&] { return "the value of key " + quoted(key); }));
        break;
      case ValueType::ARRAY:
        v = read_array(key, depth);
        break;
    }
    v.set_origin(origin);
    return v;
  }

  Value read_array(const std::string& key, int depth) {
    if (depth >= kMaxArrayDepth) {
      fail("key " + quoted(key) + " nests arrays deeper than " + std::to_string(kMaxArrayDepth) +
               " levels",
           kCorruptHint);
    }
    const auto raw = read<uint32_t>([&] { return "the element type of array key " + quoted(key); });
    if (!is_valid_value_type(raw)) {
      fail("array key " + quoted(key) + " has unknown element type " + std::to_string(raw) +
               ", expected 0..12",
           kCorruptHint);
    }
    const auto elem = static_cast<ValueType>(raw);
    const auto count = read<uint64_t>([&] { return "the length of array key " + quoted(key); });
    const size_t min_size = min_encoded_size(elem);
    if (count > remaining() / min_size) {
      fail("array key " + quoted(key) + " claims " + std::to_string(count) + " elements of " +
               value_type_name(elem) + " (at least " + std::to_string(min_size) +
               " bytes each) but only " + std::to_string(remaining()) + " bytes remain",
           kTruncatedHint);
    }
    auto elem_origin = std::make_shared<const std::string>("an element of key " + quoted(key) +
                                                           " in GGUF " + quoted(name_));
    std::vector<Value> items;
    items.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i)
      items.push_back(read_value(elem, key, elem_origin, depth + 1));
    return Value::array(elem, std::move(items));
  }

  void read_alignment(File& f) {
    const Value* v = f.find(kAlignmentKey);
    if (v == nullptr) return;
    if (!is_integer(v->type)) {
      fail(std::string("key '") + kAlignmentKey + "' is " + value_type_name(v->type) +
               ", expected U32",
           kCorruptHint);
    }
    const uint64_t a = v->as_u64();
    if (!is_power_of_two(a) || a > (uint64_t{1} << 32)) {
      fail(std::string("key '") + kAlignmentKey + "' is " + std::to_string(a) +
               ", expected a power of two (at most 2^32)",
           kCorruptHint);
    }
    f.alignment_ = static_cast<size_t>(a);
  }

  void read_tensor_infos(File& f) {
    // An info takes at least 32 bytes (8 name length + 4 n_dims + 8 one dim + 4 type + 8 offset).
    if (n_tensors_ > remaining() / 32) {
      fail("header claims " + std::to_string(n_tensors_) + " tensors but only " +
               std::to_string(remaining()) + " bytes follow the metadata (each needs at least 32)",
           kCorruptHint);
    }
    f.tensors_.reserve(static_cast<size_t>(n_tensors_));
    for (uint64_t i = 0; i < n_tensors_; ++i) {
      TensorInfo t = read_tensor_info(f, i);
      f.tensor_index_.emplace(t.name, f.tensors_.size());
      f.tensors_.push_back(std::move(t));
    }
  }

  TensorInfo read_tensor_info(const File& f, uint64_t index) {
    TensorInfo t;
    t.name = read_string([&] { return "the name of tensor #" + std::to_string(index); });
    const std::string who = "tensor " + quoted(t.name);
    auto it = f.tensor_index_.find(t.name);
    if (it != f.tensor_index_.end()) {
      fail("duplicate " + who + " (tensors #" + std::to_string(it->second) + " and #" +
               std::to_string(index) + ")",
           kCorruptHint);
    }
    const auto n_dims = read<uint32_t>([&] { return "the dimension count of " + who; });
    if (n_dims == 0 || n_dims > kMaxDims) {
      fail(who + " has " + std::to_string(n_dims) + " dimensions, expected 1 to " +
               std::to_string(kMaxDims),
           kCorruptHint);
    }
    t.ne.resize(n_dims);
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.ne[d] = read<uint64_t>([&] { return "dimension " + std::to_string(d) + " of " + who; });
    }
    const auto raw_type = read<uint32_t>([&] { return "the type of " + who; });
    if (!is_known_type(raw_type)) {
      fail(who + " has unknown ggml type " + std::to_string(raw_type),
           "the file uses a tensor type this build does not know (newer ggml?) or is corrupt");
    }
    t.type = static_cast<GgmlType>(raw_type);
    uint64_t numel = 0;
    const std::string problem = check_geometry(t.ne, t.type, &numel, &t.nbytes);
    if (!problem.empty()) fail(who + " (" + type_name(t.type) + ") " + problem, kCorruptHint);
    t.offset = read<uint64_t>([&] { return "the data offset of " + who; });
    if (t.offset % f.alignment_ != 0) {
      fail(who + " has data offset " + std::to_string(t.offset) +
               ", not a multiple of the alignment " + std::to_string(f.alignment_),
           kCorruptHint);
    }
    return t;
  }

  void place_tensor_data(File& f) {
    const uint64_t a = f.alignment_;
    const uint64_t pad = (a - pos_ % a) % a;
    if (pad > std::numeric_limits<uint64_t>::max() - pos_) {
      fail("data section start overflows", kCorruptHint);  // only with absurd alignments
    }
    f.data_offset_ = pos_ + pad;
    const uint64_t ds = f.data_offset_;
    for (auto& t : f.tensors_) {
      const bool fits = ds <= size_ && t.offset <= size_ - ds && t.nbytes <= size_ - ds - t.offset;
      if (!fits) {
        const bool abs_ok = t.offset <= std::numeric_limits<uint64_t>::max() - ds;
        const std::string where = abs_ok ? "offset " + std::to_string(ds + t.offset)
                                         : "data-section offset " + std::to_string(t.offset);
        fail("tensor " + quoted(t.name) + " data [" + where + ", " + std::to_string(t.nbytes) +
                 " bytes] runs past the end of the file (size " + std::to_string(size_) + ")",
             kTruncatedHint);
      }
      t.data = data_ + ds + t.offset;
    }
    check_overlaps(f);
  }

  void check_overlaps(const File& f) const {
    std::vector<const TensorInfo*> order;
    order.reserve(f.tensors_.size());
    for (const auto& t : f.tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(),
              [](const TensorInfo* x, const TensorInfo* y) { return x->offset < y->offset; });
    for (size_t i = 1; i < order.size(); ++i) {
      const TensorInfo& prev = *order[i - 1];
      const TensorInfo& cur = *order[i];
      if (prev.offset + prev.nbytes > cur.offset) {  // no overflow: both lie inside the file
        fail("tensors " + quoted(prev.name) + " [" + std::to_string(prev.offset) + ", " +
                 std::to_string(prev.offset + prev.nbytes) + ") and " + quoted(cur.name) + " [" +
                 std::to_string(cur.offset) + ", " + std::to_string(cur.offset + cur.nbytes) +
                 ") overlap in the data section",
             kCorruptHint);
      }
    }
  }

  const uint8_t* data_;
  size_t size_;
  std::string name_;
  size_t pos_ = 0;
  uint64_t n_tensors_ = 0;
  uint64_t n_kv_ = 0;
};

File File::parse(const uint8_t* data, size_t size, const std::string& name_for_errors) {
  return FileParser(data, size, name_for_errors).run();
}

File File::open(const std::string& path) {
  auto mapping = MappedFile::open(path);
  File f = parse(mapping->data(), mapping->size(), path);
  f.mapping_ = std::move(mapping);
  return f;
}

const Value* File::find(const std::string& key) const {
  auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].second;
}

const Value& File::get(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) {
    throw Error("GGUF " + quoted(path_) + ": missing metadata key " + quoted(key),
                "the file lacks metadata this code needs; was it converted for another "
                "architecture or by an old converter?");
  }
  return *v;
}

const TensorInfo* File::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& File::get_tensor(const std::string& name) const {
  const TensorInfo* t = find_tensor(name);
  if (t == nullptr) {
    throw Error("GGUF " + quoted(path_) + ": missing tensor " + quoted(name),
                "the file does not hold the weights this architecture needs");
  }
  return *t;
}

std::vector<float> File::dequantize_tensor(const TensorInfo& t) const {
  if (!is_supported_for_dequant(t.type)) {
    throw Error("GGUF " + quoted(path_) + ": tensor " + quoted(t.name) + " has type " +
                    type_name(t.type) + ", which cannot be dequantized",
                "supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K");
  }
  std::vector<float> out(static_cast<size_t>(t.numel()));
  dequantize(t.type, t.data, out.data(), static_cast<int64_t>(t.numel()));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

void put_bytes(std::string& out, const void* p, size_t n) {
  out.append(static_cast<const char*>(p), n);
}

template <typename T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof v);
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

// The value's payload (no type tag for scalars; arrays carry their element type and count).
void put_value(std::string& out, const Value& v) {
  switch (v.type) {
    case ValueType::U8:
      put(out, static_cast<uint8_t>(v.as_u64()));
      break;
    case ValueType::I8:
      put(out, static_cast<int8_t>(v.as_i64()));
      break;
    case ValueType::U16:
      put(out, static_cast<uint16_t>(v.as_u64()));
      break;
    case ValueType::I16:
      put(out, static_cast<int16_t>(v.as_i64()));
      break;
    case ValueType::U32:
      put(out, static_cast<uint32_t>(v.as_u64()));
      break;
    case ValueType::I32:
      put(out, static_cast<int32_t>(v.as_i64()));
      break;
    case ValueType::U64:
      put(out, v.as_u64());
      break;
    case ValueType::I64:
      put(out, v.as_i64());
      break;
    case ValueType::F32:
      put(out, static_cast<float>(v.as_f64()));
      break;
    case ValueType::F64:
      put(out, v.as_f64());
      break;
    case ValueType::BOOL:
      put<uint8_t>(out, v.as_bool() ? 1 : 0);
      break;
    case ValueType::STRING:
      put_string(out, v.as_string());
      break;
    case ValueType::ARRAY:
      put(out, static_cast<uint32_t>(v.elem_type));
      put<uint64_t>(out, v.as_array().size());
      for (const auto& item : v.as_array()) put_value(out, item);
      break;
  }
}

uint64_t padding_for(uint64_t pos, uint64_t alignment) {
  return (alignment - pos % alignment) % alignment;
}

}  // namespace

Writer::Writer(std::string path) : path_(std::move(path)) {}

void Writer::add_kv(std::string key, Value v) {
  if (key_index_.count(key)) {
    throw Error("GGUF writer " + quoted(path_) + ": duplicate metadata key " + quoted(key),
                "each key may be added once");
  }
  if (key == kAlignmentKey) {
    if (v.type != ValueType::U32 || !is_power_of_two(v.as_u64())) {
      throw Error("GGUF writer " + quoted(path_) + ": key '" + kAlignmentKey +
                  "' must be a U32 power of two");
    }
    alignment_ = static_cast<size_t>(v.as_u64());
  }
  key_index_.emplace(key, kv_.size());
  kv_.emplace_back(std::move(key), std::move(v));
}

void Writer::set_alignment(size_t alignment) {
  if (!is_power_of_two(alignment) || alignment > std::numeric_limits<uint32_t>::max()) {
    throw Error("GGUF writer " + quoted(path_) + ": alignment " + std::to_string(alignment) +
                " is not a power of two that fits in 32 bits");
  }
  alignment_ = alignment;
  auto it = key_index_.find(kAlignmentKey);
  if (it != key_index_.end()) kv_[it->second].second = Value::u32(static_cast<uint32_t>(alignment));
}

void Writer::add_tensor(std::string name, std::vector<uint64_t> ne, GgmlType type, const void* data,
                        uint64_t nbytes) {
  if (data == nullptr && nbytes != 0) {
    throw Error("GGUF writer " + quoted(path_) + ": tensor " + quoted(name) + " has no data");
  }
  Producer produce = [data, nbytes](const Sink& sink) { sink(data, static_cast<size_t>(nbytes)); };
  add_tensor(std::move(name), std::move(ne), type, nbytes, std::move(produce));
}

void Writer::add_tensor(std::string name, std::vector<uint64_t> ne, GgmlType type, uint64_t nbytes,
                        Producer produce) {
  if (tensor_index_.count(name)) {
    throw Error("GGUF writer " + quoted(path_) + ": duplicate tensor " + quoted(name),
                "each tensor name may be added once");
  }
  tensor_index_.emplace(name, tensors_.size());
  tensors_.push_back({std::move(name), std::move(ne), type, nbytes, std::move(produce)});
}

void Writer::write() {
  const std::string who = "GGUF writer " + quoted(path_) + ": ";
  for (const auto& t : tensors_) {
    if (!is_known_type(static_cast<uint32_t>(t.type))) {
      throw Error(who + "tensor " + quoted(t.name) + " has unknown ggml type " +
                  std::to_string(static_cast<uint32_t>(t.type)));
    }
    uint64_t numel = 0, expected = 0;
    const std::string problem = check_geometry(t.ne, t.type, &numel, &expected);
    if (!problem.empty()) throw Error(who + "tensor " + quoted(t.name) + " " + problem);
    if (t.nbytes != expected) {
      throw Error(who + "tensor " + quoted(t.name) + " (" + type_name(t.type) + " " +
                      shape_string(t.ne) + ") was given " + std::to_string(t.nbytes) +
                      " bytes, expected " + std::to_string(expected),
                  "the data must already be encoded in the tensor's ggml type");
    }
  }
  const bool add_alignment_kv = alignment_ != kDefaultAlignment && !key_index_.count(kAlignmentKey);

  std::string header;
  header += "GGUF";
  put<uint32_t>(header, 3);
  put<uint64_t>(header, tensors_.size());
  put<uint64_t>(header, kv_.size() + (add_alignment_kv ? 1 : 0));
  auto put_kv = [&header](const std::string& key, const Value& v) {
    put_string(header, key);
    put(header, static_cast<uint32_t>(v.type));
    put_value(header, v);
  };
  for (const auto& kv : kv_) put_kv(kv.first, kv.second);
  if (add_alignment_kv) put_kv(kAlignmentKey, Value::u32(static_cast<uint32_t>(alignment_)));

  uint64_t offset = 0;  // within the data section; every tensor starts aligned
  for (const auto& t : tensors_) {
    put_string(header, t.name);
    put(header, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t d : t.ne) put(header, d);
    put(header, static_cast<uint32_t>(t.type));
    put(header, offset);
    offset += t.nbytes + padding_for(t.nbytes, alignment_);
  }
  header.append(static_cast<size_t>(padding_for(header.size(), alignment_)), '\0');

  AtomicFile out(path_);
  out.write(header);
  const std::string zeros(alignment_, '\0');
  for (const auto& t : tensors_) {
    uint64_t written = 0;
    const Sink sink = [&](const void* data, size_t n) {
      if (n > t.nbytes - written) {
        throw Error(who + "tensor " + quoted(t.name) + " produced more than its " +
                    std::to_string(t.nbytes) + " bytes");
      }
      out.write(data, n);
      written += n;
    };
    t.produce(sink);
    if (written != t.nbytes) {
      throw Error(who + "tensor " + quoted(t.name) + " produced " + std::to_string(written) +
                  " bytes, expected " + std::to_string(t.nbytes));
    }
    out.write(zeros.data(), static_cast<size_t>(padding_for(t.nbytes, alignment_)));
  }
  out.commit();
}

}  // namespace bonsai::gguf
