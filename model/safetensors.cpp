// safetensors reader and writer (see safetensors.h). Reading rules, stricter than "whatever
// parses":
//  - the 8-byte length must fit the file and be at most kMaxHeaderBytes;
//  - the header must start with '{' and be one JSON object (trailing whitespace allowed: writers
//    pad with spaces), valid UTF-8, with no duplicate keys at any level. nlohmann keeps the last of
//    duplicate keys silently, which would let two readers of one file disagree about a tensor, so a
//    SAX pass rejects them before the DOM is built;
//  - each entry has exactly dtype (known name), shape (at most kMaxRank non-negative integers) and
//    data_offsets ([begin, end] integers, begin <= end <= data section size), and
//    end - begin == numel * dtype_size, computed without overflow;
//  - "__metadata__" is an object of string values (null is taken as empty, as the reference does);
//  - the byte ranges tile the data section exactly: no overlap, no gap, nothing after the last
//    tensor. This is the reference implementation's rule (it rejects such files as invalid), and
//    following it means a file we accept is one every other reader accepts.
#include "model/safetensors.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <system_error>

#include "core/atomic_file.h"
#include "core/error.h"

namespace bonsai::safetensors {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* const kCorruptHint = "the file is corrupt or was written by a buggy tool";
const char* const kIndexName = "model.safetensors.index.json";
const char* const kSingleName = "model.safetensors";

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::F64, "F64", 8},
    {DType::F32, "F32", 4},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8},
    {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},
    {DType::BOOL, "BOOL", 1},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::U16, "U16", 2},
    {DType::U32, "U32", 4},
    {DType::U64, "U64", 8},
}};

const DTypeInfo& info_of(DType d) {
  for (const auto& i : kDTypes) {
    if (i.dtype == d) return i;
  }
  throw Error("safetensors: invalid DType value " + std::to_string(static_cast<int>(d)));
}

// Quotes a name for an error message. Names come from untrusted files, so control bytes are
// escaped and very long names cut, keeping messages printable and short.
std::string quote(const std::string& s, size_t max_len = 120) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      static const char* hex = "0123456789abcdef";
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > max_len) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out + "'";
}

// File paths are the caller's, not the file's, and their tail is the useful part: never cut.
std::string quote_path(const std::string& p) { return quote(p, std::string::npos); }

[[noreturn]] void fail(const std::string& file, const std::string& msg,
                       const std::string& hint = kCorruptHint) {
  throw Error("safetensors " + quote_path(file) + ": " + msg, hint);
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

// numel * dtype_size of a shape, or false when either product overflows (int64 for numel, since
// numel() returns int64_t; size_t for the bytes).
bool byte_size(const std::vector<int64_t>& shape, DType d, uint64_t* numel, uint64_t* bytes) {
  uint64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || !checked_mul(n, static_cast<uint64_t>(dim), &n)) return false;
  }
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  if (!checked_mul(n, dtype_size(d), bytes)) return false;
  if (*bytes > std::numeric_limits<size_t>::max()) return false;
  *numel = n;
  return true;
}

// Edit distance on at most the first 200 bytes of each name: enough to rank suggestions, and
// bounded so that a huge hostile name cannot make an error message slow.
size_t edit_distance(const std::string& a_full, const std::string& b_full) {
  const std::string a = a_full.substr(0, 200), b = b_full.substr(0, 200);
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// "; closest names: 'a', 'b', 'c'" (empty when there are no names at all).
std::string near_names(const std::string& want, const std::vector<std::string>& have) {
  std::vector<std::pair<size_t, const std::string*>> scored;
  scored.reserve(have.size());
  for (const auto& h : have) scored.emplace_back(edit_distance(want, h), &h);
  size_t k = std::min<size_t>(3, scored.size());
  std::partial_sort(scored.begin(), scored.begin() + static_cast<std::ptrdiff_t>(k), scored.end(),
                    [](const auto& x, const auto& y) {
                      return x.first != y.first ? x.first < y.first : *x.second < *y.second;
                    });
  if (k == 0) return "";
  std::string out = "; closest names: ";
  for (size_t i = 0; i < k; ++i) out += (i ? ", " : "") + quote(*scored[i].second);
  return out;
}

// SAX pass over a JSON text that only checks it: well-formed, no duplicate key in any object,
// nesting no deeper than max_depth. Aborts at the first problem and keeps its description.
class StrictJsonCheck : public json::json_sax_t {
 public:
  // `top_key` names what a top-level key stands for, for messages ("tensor name").
  StrictJsonCheck(size_t max_depth, std::string top_key)
      : max_depth_(max_depth), top_key_(std::move(top_key)) {}
  const std::string& error() const { return error_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    objects_.emplace_back();
    return enter();
  }
  bool key(string_t& k) override {
    if (objects_.back().insert(k).second) return true;
    error_ = objects_.size() == 1 ? "duplicate " + top_key_ + " " + quote(k)
                                  : "duplicate key " + quote(k) + " in a nested object";
    return false;
  }
  bool end_object() override {
    objects_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return enter(); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const json::exception& e) override {
    // nlohmann's text starts with "[json.exception.parse_error.101] ", noise to a user.
    std::string what = e.what();
    const size_t bracket = what.find("] ");
    if (what.rfind("[json.exception", 0) == 0 && bracket != std::string::npos) {
      what = what.substr(bracket + 2);
    }
    error_ = "invalid JSON at byte " + std::to_string(position) + " (" + what + ")";
    return false;
  }

 private:
  bool enter() {
    if (++depth_ <= max_depth_) return true;
    error_ = "JSON nested deeper than " + std::to_string(max_depth_) + " levels";
    return false;
  }
  size_t max_depth_;
  std::string top_key_;
  size_t depth_ = 0;
  std::vector<std::set<std::string>> objects_;
  std::string error_;
};

// Parses JSON text strictly (see StrictJsonCheck); returns "" and sets *out, or the problem.
std::string parse_json_strict(const char* begin, size_t n, size_t max_depth,
                              const std::string& top_key, json* out) {
  StrictJsonCheck check(max_depth, top_key);
  if (!json::sax_parse(begin, begin + n, &check) || !check.error().empty()) {
    return check.error().empty() ? "invalid JSON" : check.error();
  }
  *out = json::parse(begin, begin + n);
  return "";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// A parsed header entry before the tiling check.
struct Entry {
  TensorView view;
  uint64_t begin = 0, end = 0;
};

std::vector<int64_t> parse_shape(const json& j, const std::string& file, const std::string& ctx) {
  if (!j.is_array()) fail(file, ctx + ": \"shape\" must be an array, found " + j.dump());
  if (j.size() > kMaxRank) {
    fail(file, ctx + ": shape has " + std::to_string(j.size()) + " dimensions, more than the " +
                   std::to_string(kMaxRank) + " allowed");
  }
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    bool ok = d.is_number_unsigned() &&
              d.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    if (!ok) {
      fail(file, ctx + ": shape " + j.dump().substr(0, 200) +
                     " must hold non-negative integers that fit in int64, found " +
                     d.dump().substr(0, 60));
    }
    shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  return shape;
}

std::pair<uint64_t, uint64_t> parse_offsets(const json& j, const std::string& file,
                                            const std::string& ctx) {
  bool ok = j.is_array() && j.size() == 2 && j[0].is_number_unsigned() && j[1].is_number_unsigned();
  if (!ok) {
    fail(file, ctx + ": \"data_offsets\" must be [begin, end] with non-negative integers, found " +
                   j.dump().substr(0, 200));
  }
  return {j[0].get<uint64_t>(), j[1].get<uint64_t>()};
}

Entry parse_entry(const std::string& file, const std::string& name, const json& j,
                  uint64_t data_size) {
  const std::string ctx = "tensor " + quote(name);
  if (!j.is_object()) fail(file, ctx + ": entry must be a JSON object, found " + j.type_name());
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) fail(file, ctx + ": entry has no \"" + key + "\"");
  }
  for (const auto& kv : j.items()) {
    if (kv.key() != "dtype" && kv.key() != "shape" && kv.key() != "data_offsets") {
      fail(file, ctx + ": unexpected key " + quote(kv.key()) +
                     " (an entry holds only dtype, shape and data_offsets)");
    }
  }
  if (!j["dtype"].is_string()) fail(file, ctx + ": \"dtype\" must be a string");
  Entry e;
  e.view.name = name;
  e.view.dtype = dtype_from_name(j["dtype"].get<std::string>(),
                                 "safetensors " + quote_path(file) + ": " + ctx);
  e.view.shape = parse_shape(j["shape"], file, ctx);
  std::tie(e.begin, e.end) = parse_offsets(j["data_offsets"], file, ctx);
  const std::string offsets = "[" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  uint64_t numel = 0, bytes = 0;
  const std::string desc =
      ctx + " has dtype " + dtype_name(e.view.dtype) + " and shape " + format_shape(e.view.shape);
  if (!byte_size(e.view.shape, e.view.dtype, &numel, &bytes)) {
    fail(file, desc + ", whose element count or byte size overflows 64 bits");
  }
  if (e.begin > e.end) fail(file, ctx + ": data_offsets " + offsets + " begin after they end");
  if (e.end - e.begin != bytes) {
    fail(file, desc + " = " + std::to_string(bytes) + " bytes, but its data_offsets " + offsets +
                   " span " + std::to_string(e.end - e.begin) + " bytes");
  }
  if (e.end > data_size) {
    fail(file,
         ctx + ": data_offsets " + offsets + " run past the end of the data section (" +
             std::to_string(data_size) + " bytes)",
         "the file is truncated (incomplete download or copy) or corrupt");
  }
  e.view.nbytes = static_cast<size_t>(bytes);
  return e;
}

std::map<std::string, std::string> parse_metadata(const json& j, const std::string& file) {
  std::map<std::string, std::string> out;
  if (j.is_null()) return out;
  if (!j.is_object())
    fail(file, std::string("\"__metadata__\" must be an object, found ") + j.type_name());
  for (const auto& kv : j.items()) {
    if (!kv.value().is_string()) {
      fail(file, "\"__metadata__\" value for key " + quote(kv.key()) + " must be a string, found " +
                     kv.value().type_name());
    }
    out[kv.key()] = kv.value().get<std::string>();
  }
  return out;
}

// Sorts entries by offset and enforces the exact-tiling rule described at the top of this file.
void check_tiling(std::vector<Entry>* entries, uint64_t data_size, const std::string& file) {
  std::stable_sort(entries->begin(), entries->end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : *entries) {
    const std::string here = "tensor " + quote(e.view.name) + " data_offsets [" +
                             std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
    if (e.begin < cursor) {
      fail(file, here + " overlap tensor " + quote(prev->view.name) + " which ends at byte " +
                     std::to_string(cursor));
    }
    if (e.begin > cursor) {
      fail(file, here + " leave a gap: data bytes [" + std::to_string(cursor) + ", " +
                     std::to_string(e.begin) +
                     ") belong to no tensor (safetensors requires the "
                     "tensors to cover the data section exactly)");
    }
    cursor = e.end;
    prev = &e;
  }
  if (cursor != data_size) {
    fail(file, "the data section has " + std::to_string(data_size) +
                   " bytes but the tensors cover "
                   "only the first " +
                   std::to_string(cursor) +
                   " (safetensors requires the tensors "
                   "to cover the data section exactly)");
  }
}

// Validates the length prefix and returns the header length.
uint64_t header_length(const uint8_t* data, size_t size, const std::string& file) {
  if (size < 8) {
    fail(file, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length",
         "the file is empty or truncated");
  }
  const uint64_t n = read_u64_le(data);
  if (n > size - 8) {
    fail(file,
         "header length " + std::to_string(n) + " is larger than the " + std::to_string(size - 8) +
             " bytes after the length field (the file is " + std::to_string(size) + " bytes)",
         "the file is truncated or is not a safetensors file");
  }
  if (n > kMaxHeaderBytes) {
    fail(file, "header length " + std::to_string(n) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  }
  return n;
}

json parse_header_json(const uint8_t* p, uint64_t n, const std::string& file) {
  if (n == 0 || p[0] != '{') {
    fail(file, "header does not start with '{' (a safetensors header is a JSON object)",
         "this is probably not a safetensors file");
  }
  json header;
  // Depth 3 is enough for a valid header (object > entry > shape); one more level lets a nested
  // metadata value reach the clearer "must be a string" message.
  std::string err =
      parse_json_strict(reinterpret_cast<const char*>(p), n, 4, "tensor name", &header);
  if (!err.empty()) fail(file, "header is not valid: " + err);
  if (!header.is_object()) fail(file, "header is not a JSON object");
  return header;
}

}  // namespace

const char* dtype_name(DType d) { return info_of(d).name; }
size_t dtype_size(DType d) { return info_of(d).size; }

DType dtype_from_name(const std::string& s, const std::string& context_for_errors) {
  std::string known;
  for (const auto& i : kDTypes) {
    if (s == i.name) return i.dtype;
    known += (known.empty() ? "" : ", ") + std::string(i.name);
  }
  throw Error(
      context_for_errors + ": unknown dtype " + quote(s) + " (known: " + known + ")",
      "bonsai reads only the dtypes listed; convert the checkpoint (e.g. to BF16 or F32) first");
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- File -------------------------------------------------------------------------------------

File File::parse(const uint8_t* data, size_t size, const std::string& name_for_errors) {
  const std::string& file = name_for_errors;
  const uint64_t n = header_length(data, size, file);
  const json header = parse_header_json(data + 8, n, file);
  const uint8_t* data_section = data + 8 + n;
  const uint64_t data_size = size - 8 - n;

  File f;
  f.path_ = file;
  std::vector<Entry> entries;
  for (const auto& kv : header.items()) {
    if (kv.key() == "__metadata__") {
      f.metadata_ = parse_metadata(kv.value(), file);
    } else {
      entries.push_back(parse_entry(file, kv.key(), kv.value(), data_size));
    }
  }
  check_tiling(&entries, data_size, file);
  f.tensors_.reserve(entries.size());
  for (auto& e : entries) {
    e.view.data = data_section + e.begin;
    f.index_.emplace(e.view.name, f.tensors_.size());
    f.tensors_.push_back(std::move(e.view));
  }
  return f;
}

File File::open(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  File f = parse(m->data(), m->size(), path);
  f.mapping_ = std::move(m);
  return f;
}

const TensorView* File::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& File::get(const std::string& name) const {
  if (const TensorView* t = find(name)) return *t;
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& t : tensors_) names.push_back(t.name);
  throw Error("safetensors " + quote_path(path_) + ": no tensor " + quote(name) + " among its " +
                  std::to_string(tensors_.size()) + " tensors" + near_names(name, names),
              "the checkpoint does not match the model architecture, or the name is misspelt");
}

// ---- Checkpoint -------------------------------------------------------------------------------

namespace {

[[noreturn]] void fail_ckpt(const std::string& ckpt, const std::string& msg,
                            const std::string& hint = "") {
  throw Error("checkpoint " + quote_path(ckpt) + ": " + msg, hint);
}

std::string read_text_file(const std::string& path) {
  std::shared_ptr<MappedFile> m = MappedFile::open(path);
  return std::string(reinterpret_cast<const char*>(m->data()), m->size());
}

// Shard names come from a downloaded file; only plain relative paths inside the index's directory
// are accepted, so an index cannot make us open "/etc/x" or "../../x".
void check_shard_name(const std::string& index_path, const std::string& shard) {
  fs::path p(shard);
  bool ok = !shard.empty() && p.is_relative();
  for (const auto& part : p) ok = ok && part != "..";
  if (!ok) {
    fail_ckpt(index_path,
              "weight_map names shard " + quote(shard) +
                  ", which is not a relative path inside the checkpoint directory",
              kCorruptHint);
  }
}

// weight_map as (tensor -> shard) after checking the index's shape.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  const std::string text = read_text_file(index_path);
  json index;
  std::string err = parse_json_strict(text.data(), text.size(), 64, "top-level key", &index);
  if (!err.empty()) fail_ckpt(index_path, "index is not valid: " + err, kCorruptHint);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail_ckpt(index_path, "index must be a JSON object with a \"weight_map\" object", kCorruptHint);
  }
  std::map<std::string, std::string> out;
  for (const auto& kv : index["weight_map"].items()) {
    if (!kv.value().is_string()) {
      fail_ckpt(index_path,
                "weight_map entry for tensor " + quote(kv.key()) +
                    " must be a shard file name (string), found " + kv.value().type_name(),
                kCorruptHint);
    }
    check_shard_name(index_path, kv.value().get<std::string>());
    out[kv.key()] = kv.value().get<std::string>();
  }
  if (out.empty()) fail_ckpt(index_path, "weight_map is empty", kCorruptHint);
  return out;
}

// Which file a checkpoint directory stands for (see Checkpoint::open).
std::string resolve_directory(const std::string& dir) {
  const fs::path d(dir);
  std::error_code ec;
  if (fs::is_regular_file(d / kIndexName, ec)) return (d / kIndexName).string();
  if (fs::is_regular_file(d / kSingleName, ec)) return (d / kSingleName).string();
  std::vector<std::string> indexes, singles;
  for (const auto& e : fs::directory_iterator(d, ec)) {
    const std::string n = e.path().filename().string();
    auto ends_with = [&](const std::string& suffix) {
      return n.size() >= suffix.size() &&
             n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    std::error_code entry_ec;  // an unreadable entry is skipped, not a listing failure
    if (!e.is_regular_file(entry_ec)) continue;
    if (ends_with(".safetensors.index.json")) indexes.push_back(e.path().string());
    if (ends_with(".safetensors")) singles.push_back(e.path().string());
  }
  if (ec) fail_ckpt(dir, "cannot list the directory: " + ec.message());
  if (indexes.size() == 1) return indexes[0];
  if (indexes.empty() && singles.size() == 1) return singles[0];
  fail_ckpt(dir,
            "directory holds neither " + std::string(kSingleName) + " nor " + kIndexName +
                ", and " + std::to_string(indexes.size()) + " other *.safetensors.index.json and " +
                std::to_string(singles.size()) +
                " other *.safetensors files (exactly one of either would be used)",
            "pass the .safetensors file or the index .json itself");
}

}  // namespace

void Checkpoint::add_file(File f) {
  const size_t fi = files_.size();
  for (size_t ti = 0; ti < f.tensors().size(); ++ti) {
    const std::string& name = f.tensors()[ti].name;
    auto [it, inserted] = where_.emplace(name, std::make_pair(fi, ti));
    if (!inserted) {
      fail_ckpt(path_,
                "tensor " + quote(name) + " is in two shards, " +
                    quote_path(files_[it->second.first].path()) + " and " + quote_path(f.path()),
                kCorruptHint);
    }
  }
  files_.push_back(std::move(f));
}

Checkpoint Checkpoint::open(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) {
    fail_ckpt(path, "no such file or directory",
              "check the path (a directory, a .safetensors file "
              "or a .safetensors.index.json)");
  }
  const std::string file = fs::is_directory(st) ? resolve_directory(path) : path;
  Checkpoint c;
  c.path_ = file;
  const bool is_index = file.size() >= 5 && file.compare(file.size() - 5, 5, ".json") == 0;
  if (!is_index) {
    c.add_file(File::open(file));
    return c;
  }
  const std::map<std::string, std::string> weight_map = read_weight_map(file);
  std::map<std::string, std::string> shard_example;  // shard -> one tensor it should hold
  for (const auto& [tensor, shard] : weight_map) shard_example.emplace(shard, tensor);
  const fs::path dir = fs::path(file).parent_path();
  std::map<std::string, size_t> shard_file;  // shard -> index in files_
  for (const auto& [shard, example] : shard_example) {
    const std::string shard_path = (dir / shard).string();
    if (!fs::is_regular_file(shard_path, ec)) {
      fail_ckpt(file,
                "shard " + quote(shard) + " (holding tensor " + quote(example) +
                    " and maybe others) does not exist at " + quote_path(shard_path),
                "the download or copy is incomplete; fetch the missing shard");
    }
    shard_file[shard] = c.files_.size();
    c.add_file(File::open(shard_path));
  }
  for (const auto& [tensor, shard] : weight_map) {
    const File& want = c.files_[shard_file.at(shard)];
    if (want.find(tensor) != nullptr) continue;
    auto it = c.where_.find(tensor);
    fail_ckpt(file,
              "the index maps tensor " + quote(tensor) + " to shard " + quote(shard) +
                  ", but that shard does not contain it" +
                  (it == c.where_.end()
                       ? std::string(" (no shard does)")
                       : " (it is in " + quote_path(c.files_[it->second.first].path()) + ")"),
              "the index and the shards come from different saves; re-download the checkpoint");
  }
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const std::pair<size_t, size_t>& Checkpoint::locate(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) return it->second;
  throw Error("checkpoint " + quote_path(path_) + ": no tensor " + quote(name) + " among its " +
                  std::to_string(where_.size()) + " tensors in " + std::to_string(files_.size()) +
                  " file(s)" + near_names(name, names()),
              "the checkpoint does not match the model architecture, or the name is misspelt");
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return nullptr;
  return &files_[it->second.first].tensors()[it->second.second];
}

const TensorView& Checkpoint::get(const std::string& name) const {
  const auto& [fi, ti] = locate(name);
  return files_[fi].tensors()[ti];
}

const File& Checkpoint::file_of(const std::string& name) const {
  return files_[locate(name).first];
}

// ---- Writer -----------------------------------------------------------------------------------

namespace {

// Checks every view before anything is written, so a bad call creates no file at all.
void check_views(const std::string& dest, const std::vector<TensorView>& tensors) {
  std::set<std::string> seen;
  for (const TensorView& t : tensors) {
    const std::string ctx = "writing " + quote_path(dest) + ": tensor " + quote(t.name);
    if (t.name.empty() || t.name == "__metadata__") {
      throw Error("writing " + quote_path(dest) + ": invalid tensor name " + quote(t.name),
                  "tensor names must be non-empty and not \"__metadata__\"");
    }
    if (!seen.insert(t.name).second) throw Error(ctx + " is given twice");
    if (t.shape.size() > kMaxRank) {
      throw Error(ctx + " has " + std::to_string(t.shape.size()) + " dimensions, more than " +
                  std::to_string(kMaxRank));
    }
    uint64_t numel = 0, bytes = 0;
    if (!byte_size(t.shape, t.dtype, &numel, &bytes)) {
      throw Error(ctx + " has shape " + format_shape(t.shape) +
                  ", which has a negative dimension or overflows 64 bits");
    }
    if (bytes != t.nbytes) {
      throw Error(ctx + " has dtype " + dtype_name(t.dtype) + " and shape " +
                  format_shape(t.shape) + " = " + std::to_string(bytes) +
                  " bytes, but its view holds " + std::to_string(t.nbytes) + " bytes");
    }
    if (t.nbytes > 0 && t.data == nullptr) throw Error(ctx + " has no data pointer");
  }
}

// The header text, padded with spaces to a multiple of 8 so the data section is 8-aligned.
std::string build_header(const std::string& dest, const std::vector<TensorView>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;  // metadata first, then tensors in file order: easy to read by eye
  h["__metadata__"]["format"] = "pt";
  for (const auto& kv : metadata) h["__metadata__"][kv.first] = kv.second;
  uint64_t offset = 0;
  for (const TensorView& t : tensors) {
    h[t.name] = {{"dtype", dtype_name(t.dtype)},
                 {"shape", t.shape},
                 {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string text;
  try {
    text = h.dump();
  } catch (const nlohmann::json::exception& e) {
    throw Error("writing " + quote_path(dest) +
                ": a tensor name or metadata string is not valid UTF-8 (" + e.what() + ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxHeaderBytes) {
    throw Error("writing " + quote_path(dest) + ": header would be " + std::to_string(text.size()) +
                " bytes, over the " + std::to_string(kMaxHeaderBytes) +
                "-byte limit readers enforce");
  }
  return text;
}

bool is_checkpoint_file_name(const std::string& n) {
  static const std::regex shard_re("model-[0-9]+-of-[0-9]+\\.safetensors");
  return n == kSingleName || n == kIndexName || std::regex_match(n, shard_re);
}

// Removes files of an earlier save that the new save did not overwrite. The index goes first: a
// reader that looks at the directory mid-way then sees the new files, never an index naming
// shards that are about to vanish.
void remove_stale(const fs::path& dir, const std::vector<std::string>& written) {
  std::vector<std::string> stale;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string n = e.path().filename().string();
    if (is_checkpoint_file_name(n) &&
        std::find(written.begin(), written.end(), n) == written.end()) {
      stale.push_back(n);
    }
  }
  if (ec)
    throw Error("cannot list " + quote_path(dir.string()) +
                " to remove stale files: " + ec.message());
  std::stable_partition(stale.begin(), stale.end(),
                        [](const std::string& n) { return n == kIndexName; });
  for (const auto& n : stale) {
    fs::remove(dir / n, ec);
    if (ec)
      throw Error("cannot remove stale checkpoint file " + quote_path((dir / n).string()) + ": " +
                  ec.message());
  }
}

// Greedy packing in the given order; a new shard starts when the next tensor would overflow a
// non-empty one.
std::vector<std::vector<size_t>> plan_shards(const std::vector<TensorView>& tensors, uint64_t max) {
  std::vector<std::vector<size_t>> shards(1);
  uint64_t used = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!shards.back().empty() && used + tensors[i].nbytes > max) {
      shards.emplace_back();
      used = 0;
    }
    shards.back().push_back(i);
    used += tensors[i].nbytes;
  }
  return shards;
}

std::string shard_name(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

std::string index_text(const std::vector<TensorView>& tensors,
                       const std::vector<std::vector<size_t>>& shards) {
  json weight_map = json::object();
  uint64_t total = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    for (size_t i : shards[s]) {
      weight_map[tensors[i].name] = shard_name(s, shards.size());
      total += tensors[i].nbytes;
    }
  }
  json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return index.dump(2) + "\n";
}

}  // namespace

void write_file(const std::string& path, const std::vector<TensorView>& tensors,
                const std::map<std::string, std::string>& metadata) {
  check_views(path, tensors);
  const std::string header = build_header(path, tensors, metadata);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i)
    len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  AtomicFile out(path);
  out.write(len, sizeof len);
  out.write(header);
  for (const TensorView& t : tensors) out.write(t.data, t.nbytes);
  out.commit();
}

std::vector<std::string> write_checkpoint(const std::string& dir,
                                          const std::vector<TensorView>& tensors,
                                          uint64_t max_shard_bytes,
                                          const std::map<std::string, std::string>& metadata) {
  if (max_shard_bytes == 0)
    throw Error("writing checkpoint " + quote_path(dir) + ": max_shard_bytes is 0");
  check_views(dir, tensors);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw Error("writing checkpoint " + quote_path(dir) +
                ": cannot create the directory: " + ec.message());
  }
  const auto shards = plan_shards(tensors, max_shard_bytes);
  std::vector<std::string> written;
  if (shards.size() == 1) {
    write_file((fs::path(dir) / kSingleName).string(), tensors, metadata);
    written.push_back(kSingleName);
  } else {
    try {
      for (size_t s = 0; s < shards.size(); ++s) {
        std::vector<TensorView> part;
        for (size_t i : shards[s]) part.push_back(tensors[i]);
        const std::string name = shard_name(s, shards.size());
        write_file((fs::path(dir) / name).string(), part, metadata);
        written.push_back(name);
      }
      write_file_atomic((fs::path(dir) / kIndexName).string(), index_text(tensors, shards));
      written.push_back(kIndexName);
    } catch (const Error&) {
      // Without its index a partial set of new shards is only clutter; drop what this call wrote.
      for (const auto& n : written) fs::remove(fs::path(dir) / n, ec);
      throw;
    }
  }
  remove_stale(dir, written);
  return written;
}

}  // namespace bonsai::safetensors
