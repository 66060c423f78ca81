// bonsai token shards (format in data/shards.h), on HDF5's C API. All HDF5 calls go through small
// helpers that turn a negative return into a bonsai::Error with the file, the object, and the
// innermost message of HDF5's error stack.
#include "data/shards.h"

#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <utility>

#include "core/error.h"
#include "core/strings.h"

namespace bonsai {
namespace {

// HDF5 keeps its auto-print setting per thread in thread-safe builds, so every thread that touches a
// shard switches it off once.
void silence_hdf5() {
  thread_local bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

herr_t collect_error(unsigned, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (e->desc != nullptr && *e->desc != '\0') out->push_back(e->desc);
  return 0;
}

// The most specific message on HDF5's error stack (its innermost frame), then the stack is cleared.
std::string hdf5_detail() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &msgs);
  H5Eclear2(H5E_DEFAULT);
  if (msgs.empty()) return "no detail from HDF5";
  if (msgs.size() == 1 || msgs.back() == msgs.front()) return msgs.back();
  return msgs.back() + "; " + msgs.front();
}

// An HDF5 identifier closed by the right H5*close when it goes out of scope.
class Hid {
 public:
  using Closer = herr_t (*)(hid_t);
  Hid() = default;
  Hid(hid_t id, Closer close) : id_(id), close_(close) {}
  ~Hid() { reset(); }
  Hid(Hid&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      close_ = o.close_;
    }
    return *this;
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  herr_t close() {  // explicit close, for the file (errors matter there)
    herr_t r = 0;
    if (id_ >= 0 && close_ != nullptr) r = close_(id_);
    id_ = H5I_INVALID_HID;
    return r;
  }
  void reset() {
    if (id_ >= 0 && close_ != nullptr) close_(id_);
    id_ = H5I_INVALID_HID;
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer close_ = nullptr;
};

[[noreturn]] void fail(const std::string& file, const std::string& what, const std::string& hint = "") {
  throw Error("shard '" + file + "': " + what + " (HDF5: " + hdf5_detail() + ")", hint);
}

Hid checked(hid_t id, Hid::Closer close, const std::string& file, const std::string& what) {
  if (id < 0) fail(file, what);
  return Hid(id, close);
}

void check(herr_t r, const std::string& file, const std::string& what) {
  if (r < 0) fail(file, what);
}

// FNV-1a over the string attributes. HDF5 keeps variable-length strings in its global heap, which
// has no checksum of its own (everything else in the file has one), so the shard carries this.
constexpr const char* kStringAttrs[] = {"bonsai_format", "kind", "tokenizer_identity", "tokenizer_name",
                                        "tokenizer_spec", "sources", "created_by"};
uint64_t attrs_checksum(const std::vector<std::string>& values) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& v : values) {
    for (unsigned char c : v) h = (h ^ c) * 0x100000001b3ULL;
    h = (h ^ 0xFF) * 0x100000001b3ULL;  // separator, so ("ab", "c") != ("a", "bc")
  }
  return h;
}

const char* kCorruptHint = "the file is damaged or was not completely written; pack the data again";

// ---- attributes ---------------------------------------------------------------------------------

Hid string_type() {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return Hid(t, H5Tclose);
}

// Fixed-length, so the text lives in the (checksummed) object header rather than in HDF5's global
// heap, which has no checksum and which HDF5 itself crashes on when it is damaged.
void write_attr_string(hid_t loc, const char* name, const std::string& value, const std::string& file) {
  Hid type = Hid(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Hid space = checked(H5Screate(H5S_SCALAR), H5Sclose, file, "cannot create a dataspace");
  Hid attr = checked(H5Acreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, file,
                     std::string("cannot create attribute '") + name + "'");
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  check(H5Awrite(attr.get(), type.get(), padded.data()), file, std::string("cannot write attribute '") + name + "'");
}

void write_attr_int(hid_t loc, const char* name, hid_t file_type, hid_t mem_type, const void* v,
                    const std::string& file) {
  Hid space = checked(H5Screate(H5S_SCALAR), H5Sclose, file, "cannot create a dataspace");
  Hid attr = checked(H5Acreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose, file,
                     std::string("cannot create attribute '") + name + "'");
  check(H5Awrite(attr.get(), mem_type, v), file, std::string("cannot write attribute '") + name + "'");
}

Hid open_attr(hid_t loc, const char* name, const std::string& file) {
  htri_t exists = H5Aexists(loc, name);
  if (exists < 0) fail(file, std::string("cannot look up attribute '") + name + "'", kCorruptHint);
  if (exists == 0) {
    throw Error("shard '" + file + "': attribute '" + name + "' is missing",
                "bonsai shards are written by 'bonsai data pack'; is this one from another tool or an older version?");
  }
  return checked(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose, file, std::string("cannot open attribute '") + name + "'");
}

std::string read_attr_string(hid_t loc, const char* name, const std::string& file) {
  Hid attr = open_attr(loc, name, file);
  Hid type = checked(H5Aget_type(attr.get()), H5Tclose, file, std::string("attribute '") + name + "'");
  if (H5Tget_class(type.get()) != H5T_STRING) {
    throw Error("shard '" + file + "': attribute '" + name + "' should be a string but is not");
  }
  if (H5Tis_variable_str(type.get()) > 0) {
    Hid mem = string_type();
    char* p = nullptr;
    check(H5Aread(attr.get(), mem.get(), &p), file, std::string("cannot read attribute '") + name + "'");
    std::string s = p != nullptr ? p : "";
    H5free_memory(p);
    return s;
  }
  // Fixed-length (what the writer makes), read in the file's own string type: no conversion.
  size_t n = H5Tget_size(type.get());
  std::string s(n, '\0');
  check(H5Aread(attr.get(), type.get(), s.data()), file, std::string("cannot read attribute '") + name + "'");
  s.resize(std::find(s.begin(), s.end(), '\0') - s.begin());
  return s;
}

template <class T>
T read_attr_integer(hid_t loc, const char* name, hid_t mem_type, const std::string& file) {
  Hid attr = open_attr(loc, name, file);
  Hid type = checked(H5Aget_type(attr.get()), H5Tclose, file, std::string("attribute '") + name + "'");
  if (H5Tget_class(type.get()) != H5T_INTEGER) {
    throw Error("shard '" + file + "': attribute '" + name + "' should be an integer but is not");
  }
  T v = 0;
  check(H5Aread(attr.get(), mem_type, &v), file, std::string("cannot read attribute '") + name + "'");
  return v;
}
int64_t read_attr_int(hid_t loc, const char* name, const std::string& file) {
  return read_attr_integer<int64_t>(loc, name, H5T_NATIVE_INT64, file);
}
uint64_t read_attr_u64(hid_t loc, const char* name, const std::string& file) {
  return read_attr_integer<uint64_t>(loc, name, H5T_NATIVE_UINT64, file);
}

// ---- datasets -----------------------------------------------------------------------------------

// An empty 1-D dataset that grows: chunked, shuffle + deflate + Fletcher-32.
Hid create_growing(hid_t loc, const std::string& name, hid_t file_type, hsize_t chunk, int level,
                   const std::string& file) {
  hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED};
  Hid space = checked(H5Screate_simple(1, dims, maxdims), H5Sclose, file, "cannot create a dataspace");
  Hid dcpl = checked(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, file, "cannot create a property list");
  check(H5Pset_chunk(dcpl.get(), 1, &chunk), file, "cannot set the chunk size of '" + name + "'");
  check(H5Pset_shuffle(dcpl.get()), file, "the shuffle filter is unavailable");
  check(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(level)), file, "the deflate filter is unavailable");
  check(H5Pset_fletcher32(dcpl.get()), file, "the Fletcher-32 filter is unavailable");
  return checked(H5Dcreate2(loc, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
                 H5Dclose, file, "cannot create dataset '" + name + "'");
}

// Appends n elements at `old_size` (the dataset's current length).
void append_1d(hid_t ds, hid_t mem_type, const void* data, hsize_t old_size, hsize_t n, const std::string& file,
               const std::string& name) {
  if (n == 0) return;
  hsize_t new_size = old_size + n;
  check(H5Dset_extent(ds, &new_size), file, "cannot grow dataset '" + name + "'");
  Hid fspace = checked(H5Dget_space(ds), H5Sclose, file, "dataset '" + name + "'");
  hsize_t start = old_size;
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr), file,
        "cannot select in dataset '" + name + "'");
  Hid mspace = checked(H5Screate_simple(1, &n, nullptr), H5Sclose, file, "cannot create a dataspace");
  check(H5Dwrite(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data), file,
        "cannot write dataset '" + name + "' (disk full?)");
}

std::string dtype_name(hid_t type) {
  H5T_class_t cls = H5Tget_class(type);
  size_t bits = H5Tget_size(type) * 8;
  if (cls == H5T_INTEGER) return std::string(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
  if (cls == H5T_FLOAT) return "float" + std::to_string(bits);
  if (cls == H5T_STRING) return "string";
  return "a non-numeric type";
}

// Bytes of one chunk of a dataset (0 when it is not chunked).
size_t chunk_bytes(hid_t ds) {
  Hid dcpl(H5Dget_create_plist(ds), H5Pclose);
  hsize_t dims[1] = {0};
  if (!dcpl.valid() || H5Pget_layout(dcpl.get()) != H5D_CHUNKED || H5Pget_chunk(dcpl.get(), 1, dims) != 1) return 0;
  Hid type(H5Dget_type(ds), H5Tclose);
  return static_cast<size_t>(dims[0]) * (type.valid() ? H5Tget_size(type.get()) : 1);
}

// Opens a 1-D unsigned-integer dataset of `bytes`-wide elements; returns it and its length. Its
// chunk cache holds two chunks (at least 256 KiB): enough for sequential reads to decompress each
// chunk once, small enough that a loader with hundreds of shards open stays small.
Hid open_dataset(hid_t loc, const std::string& name, size_t bytes, const std::string& file, hsize_t* length) {
  htri_t exists = H5Lexists(loc, name.c_str(), H5P_DEFAULT);
  if (exists < 0) fail(file, "cannot look up dataset '" + name + "'", kCorruptHint);
  if (exists == 0) {
    throw Error("shard '" + file + "': dataset '" + name + "' is missing", kCorruptHint);
  }
  Hid probe = checked(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose, file, "cannot open dataset '" + name + "'");
  size_t cache = std::max<size_t>(256u << 10, 2 * chunk_bytes(probe.get()));
  probe.reset();
  Hid dapl = checked(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose, file, "cannot create a property list");
  H5Pset_chunk_cache(dapl.get(), H5D_CHUNK_CACHE_NSLOTS_DEFAULT, cache, H5D_CHUNK_CACHE_W0_DEFAULT);
  Hid ds = checked(H5Dopen2(loc, name.c_str(), dapl.get()), H5Dclose, file, "cannot open dataset '" + name + "'");
  Hid type = checked(H5Dget_type(ds.get()), H5Tclose, file, "dataset '" + name + "'");
  std::string expected = "uint" + std::to_string(bytes * 8);
  if (dtype_name(type.get()) != expected) {
    throw Error("shard '" + file + "': dataset '" + name + "' has dtype " + dtype_name(type.get()) + ", expected " +
                    expected, kCorruptHint);
  }
  Hid space = checked(H5Dget_space(ds.get()), H5Sclose, file, "dataset '" + name + "'");
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank != 1) {
    throw Error("shard '" + file + "': dataset '" + name + "' has " + std::to_string(rank) +
                " dimensions, expected 1", kCorruptHint);
  }
  H5Sget_simple_extent_dims(space.get(), length, nullptr);
  return ds;
}

void read_range(hid_t ds, hid_t mem_type, hsize_t start, hsize_t count, void* out, const std::string& file,
                const std::string& name) {
  if (count == 0) return;
  Hid fspace = checked(H5Dget_space(ds), H5Sclose, file, "dataset '" + name + "'");
  check(H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr), file,
        "cannot select in dataset '" + name + "'");
  Hid mspace = checked(H5Screate_simple(1, &count, nullptr), H5Sclose, file, "cannot create a dataspace");
  if (H5Dread(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out) < 0) {
    fail(file, "cannot read dataset '" + name + "' [" + std::to_string(start) + ", " +
                   std::to_string(start + count) + "): the data is corrupt or truncated", kCorruptHint);
  }
}

std::string part_prefix(ShardPart p) {
  switch (p) {
    case ShardPart::main: return "";
    case ShardPart::chosen: return "chosen/";
    case ShardPart::rejected: return "rejected/";
  }
  return "";
}

int part_slot(ShardPart p) { return p == ShardPart::rejected ? 1 : 0; }

}  // namespace

std::string shard_kind_name(ShardKind k) {
  switch (k) {
    case ShardKind::pretrain: return "pretrain";
    case ShardKind::sft: return "sft";
    case ShardKind::preference: return "preference";
  }
  return "?";
}

ShardKind parse_shard_kind(const std::string& s, const std::string& where) {
  if (s == "pretrain") return ShardKind::pretrain;
  if (s == "sft") return ShardKind::sft;
  if (s == "preference") return ShardKind::preference;
  std::vector<std::string> names = {"pretrain", "sft", "preference"};
  std::string near = nearest(s, names);
  throw Error(where + ": kind '" + s + "' is not one of: pretrain, sft, preference",
              near.empty() ? "" : "did you mean '" + near + "'?");
}

std::vector<ShardPart> shard_parts(ShardKind kind) {
  if (kind == ShardKind::preference) return {ShardPart::chosen, ShardPart::rejected};
  return {ShardPart::main};
}

std::string shard_part_name(ShardPart part) {
  std::string p = part_prefix(part);
  return p.empty() ? "/" : "/" + p.substr(0, p.size() - 1);
}

// ---- writer -------------------------------------------------------------------------------------

struct ShardWriter::Impl {
  // One token stream (the root, or /chosen, /rejected) with its write buffers.
  struct Part {
    std::string prefix;
    Hid group, tokens, offsets, mask;
    std::vector<uint32_t> tok_buf;
    std::vector<uint8_t> mask_buf;
    std::vector<uint64_t> off_buf;
    uint64_t tokens_flushed = 0, offsets_flushed = 0, n_tokens = 0, n_docs = 0;
    bool with_mask = false;
  };

  std::string path, tmp_path;
  ShardInfo info;
  ShardWriterOptions opt;
  Hid file;
  std::vector<Part> parts;
  bool created = false, committed = false;
  size_t flush_at = 0;  // buffered tokens per HDF5 write: whole chunks, about 1M tokens

  // Also runs when the constructor throws: an unfinished file never stays behind.
  ~Impl() {
    if (committed) return;
    parts.clear();
    file.reset();
    if (created) std::remove(tmp_path.c_str());
  }

  void open_part(Part& p, const std::string& prefix, bool with_mask) {
    p.prefix = prefix;
    p.with_mask = with_mask;
    hid_t loc = file.get();
    if (!prefix.empty()) {
      std::string g = prefix.substr(0, prefix.size() - 1);
      p.group = checked(H5Gcreate2(file.get(), g.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose,
                        tmp_path, "cannot create group '" + g + "'");
      loc = p.group.get();
    }
    auto chunk = static_cast<hsize_t>(opt.chunk_tokens);
    int level = opt.compression_level;
    p.tokens = create_growing(loc, "tokens", H5T_STD_U32LE, chunk, level, tmp_path);
    p.offsets = create_growing(loc, "doc_offsets", H5T_STD_U64LE, 1 << 14, level, tmp_path);
    if (with_mask) p.mask = create_growing(loc, "loss_mask", H5T_STD_U8LE, chunk, level, tmp_path);
    p.off_buf.push_back(0);
  }

  void flush_tokens(Part& p) {
    append_1d(p.tokens.get(), H5T_NATIVE_UINT32, p.tok_buf.data(), p.tokens_flushed, p.tok_buf.size(), tmp_path,
              p.prefix + "tokens");
    if (p.with_mask) {
      append_1d(p.mask.get(), H5T_NATIVE_UINT8, p.mask_buf.data(), p.tokens_flushed, p.mask_buf.size(), tmp_path,
                p.prefix + "loss_mask");
    }
    p.tokens_flushed += p.tok_buf.size();
    p.tok_buf.clear();
    p.mask_buf.clear();
  }

  void flush_offsets(Part& p) {
    append_1d(p.offsets.get(), H5T_NATIVE_UINT64, p.off_buf.data(), p.offsets_flushed, p.off_buf.size(), tmp_path,
              p.prefix + "doc_offsets");
    p.offsets_flushed += p.off_buf.size();
    p.off_buf.clear();
  }

  void add(Part& p, const int32_t* ids, size_t n, const uint8_t* mask) {
    for (size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || (info.vocab_size > 0 && ids[i] >= info.vocab_size)) {
        throw Error("shard '" + path + "': token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                    std::to_string(info.vocab_size) + ")");
      }
      p.tok_buf.push_back(static_cast<uint32_t>(ids[i]));
      if (p.with_mask) p.mask_buf.push_back(mask[i] != 0 ? 1 : 0);
      if (p.tok_buf.size() >= flush_at) flush_tokens(p);
    }
    p.n_tokens += n;
    p.n_docs += 1;
    p.off_buf.push_back(p.n_tokens);
    if (p.off_buf.size() >= (1 << 16)) flush_offsets(p);
  }

  void write_attributes() {
    hid_t root = file.get();
    const std::string& f = tmp_path;
    write_attr_string(root, "bonsai_format", kShardFormat, f);
    write_attr_int(root, "version", H5T_STD_I64LE, H5T_NATIVE_INT64, &kShardVersion, f);
    write_attr_string(root, "kind", shard_kind_name(info.kind), f);
    write_attr_string(root, "tokenizer_identity", info.tokenizer_identity, f);
    write_attr_string(root, "tokenizer_name", info.tokenizer_name, f);
    write_attr_string(root, "tokenizer_spec", info.tokenizer_spec, f);
    write_attr_int(root, "vocab_size", H5T_STD_I64LE, H5T_NATIVE_INT64, &info.vocab_size, f);
    write_attr_int(root, "bos_id", H5T_STD_I64LE, H5T_NATIVE_INT64, &info.bos_id, f);
    write_attr_int(root, "eos_id", H5T_STD_I64LE, H5T_NATIVE_INT64, &info.eos_id, f);
    write_attr_string(root, "sources", info.sources_json, f);
    write_attr_string(root, "created_by", info.created_by, f);
    write_attr_int(root, "shard_index", H5T_STD_I64LE, H5T_NATIVE_INT64, &info.shard_index, f);
    uint64_t docs = parts[0].n_docs, tokens = 0;
    for (const auto& p : parts) tokens += p.n_tokens;
    write_attr_int(root, "n_docs", H5T_STD_U64LE, H5T_NATIVE_UINT64, &docs, f);
    write_attr_int(root, "n_tokens", H5T_STD_U64LE, H5T_NATIVE_UINT64, &tokens, f);
    uint8_t cont = info.first_doc_continues ? 1 : 0;
    write_attr_int(root, "first_doc_continues", H5T_STD_U8LE, H5T_NATIVE_UINT8, &cont, f);
    uint64_t sum = attrs_checksum({kShardFormat, shard_kind_name(info.kind), info.tokenizer_identity,
                                   info.tokenizer_name, info.tokenizer_spec, info.sources_json, info.created_by});
    write_attr_int(root, "attrs_checksum", H5T_STD_U64LE, H5T_NATIVE_UINT64, &sum, f);
  }
};

ShardWriter::ShardWriter(const std::string& path, ShardInfo info, ShardWriterOptions opt)
    : impl_(std::make_unique<Impl>()) {
  silence_hdf5();
  Impl& m = *impl_;
  m.path = path;
  m.tmp_path = path + ".tmp." + std::to_string(::getpid());
  m.info = std::move(info);
  m.opt = opt;
  auto chunk = static_cast<size_t>(std::max<int64_t>(opt.chunk_tokens, 1));
  m.flush_at = chunk * std::max<size_t>(1, (size_t{1} << 20) / chunk);
  if (opt.chunk_tokens <= 0) throw Error("shard writer: chunk_tokens must be positive, got " + std::to_string(opt.chunk_tokens));
  if (opt.compression_level < 0 || opt.compression_level > 9) {
    throw Error("shard writer: compression_level must be 0..9, got " + std::to_string(opt.compression_level));
  }
  // The 1.10 file format: every metadata structure, the chunk index (an extensible array) included,
  // carries a checksum, so damage is detected instead of misread. (With 1.8 structures a flipped
  // filter mask in the v1 B-tree silently returns a chunk undecoded.) Readable by HDF5 >= 1.10.
  Hid fapl = checked(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, m.tmp_path, "cannot create a property list");
  H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V110, H5F_LIBVER_V110);
  m.file = checked(H5Fcreate(m.tmp_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()), H5Fclose, m.tmp_path,
                   "cannot create the file (does the directory exist and is it writable?)");
  m.created = true;
  if (m.info.kind == ShardKind::preference) {
    m.parts.resize(2);
    m.open_part(m.parts[0], "chosen/", true);
    m.open_part(m.parts[1], "rejected/", true);
  } else {
    m.parts.resize(1);
    m.open_part(m.parts[0], "", m.info.kind == ShardKind::sft);
  }
}

ShardWriter::~ShardWriter() = default;

void ShardWriter::add_doc(const int32_t* ids, size_t n, const uint8_t* mask) {
  silence_hdf5();  // writers may be fed from a different thread than the one that opened them
  Impl& m = *impl_;
  if (m.committed) throw Error("shard '" + m.path + "': add_doc after commit");
  if (m.info.kind == ShardKind::preference) throw Error("shard '" + m.path + "': a preference shard takes add_pair, not add_doc");
  if (m.info.kind == ShardKind::sft && mask == nullptr) throw Error("shard '" + m.path + "': an sft document needs a loss mask");
  if (m.info.kind == ShardKind::pretrain && mask != nullptr) {
    throw Error("shard '" + m.path + "': a pretrain shard has no loss mask");
  }
  m.add(m.parts[0], ids, n, mask);
}

void ShardWriter::add_pair(const std::vector<int32_t>& chosen, const std::vector<uint8_t>& chosen_mask,
                           const std::vector<int32_t>& rejected, const std::vector<uint8_t>& rejected_mask) {
  silence_hdf5();
  Impl& m = *impl_;
  if (m.committed) throw Error("shard '" + m.path + "': add_pair after commit");
  if (m.info.kind != ShardKind::preference) throw Error("shard '" + m.path + "': add_pair needs a preference shard");
  if (chosen.size() != chosen_mask.size() || rejected.size() != rejected_mask.size()) {
    throw Error("shard '" + m.path + "': a preference pair's loss mask differs in length from its tokens");
  }
  m.add(m.parts[0], chosen.data(), chosen.size(), chosen_mask.data());
  m.add(m.parts[1], rejected.data(), rejected.size(), rejected_mask.data());
}

uint64_t ShardWriter::n_docs() const { return impl_->parts[0].n_docs; }
uint64_t ShardWriter::n_tokens() const {
  uint64_t n = 0;
  for (const auto& p : impl_->parts) n += p.n_tokens;
  return n;
}
const std::string& ShardWriter::path() const { return impl_->path; }

void ShardWriter::commit() {
  silence_hdf5();
  Impl& m = *impl_;
  if (m.committed) return;
  for (auto& p : m.parts) {
    m.flush_tokens(p);
    m.flush_offsets(p);
  }
  m.write_attributes();
  for (auto& p : m.parts) p.group.reset(), p.tokens.reset(), p.offsets.reset(), p.mask.reset();
  check(m.file.close(), m.tmp_path, "cannot close the file (disk full?)");
  int fd = ::open(m.tmp_path.c_str(), O_RDONLY);
  bool synced = fd >= 0 && ::fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!synced) throw Error("shard '" + m.tmp_path + "': cannot fsync the finished file");
  std::error_code ec;
  std::filesystem::rename(m.tmp_path, m.path, ec);
  if (ec) throw Error("shard '" + m.path + "': cannot rename '" + m.tmp_path + "' into place: " + ec.message());
  m.committed = true;
}

// ---- reader -------------------------------------------------------------------------------------

struct ShardReader::Impl {
  struct Part {
    Hid tokens, mask;
    std::vector<uint64_t> offsets;
    uint64_t n_tokens = 0;
    bool present = false;
  };
  std::string path;
  ShardInfo info;
  Hid file;
  Part parts[2];  // main or chosen; rejected
  uint64_t n_docs = 0;

  void open_part(ShardPart which, bool mask_required);
  void read_header();
  const Part& part(ShardPart p) const;
};

const ShardReader::Impl::Part& ShardReader::Impl::part(ShardPart p) const {
  const Part& pt = parts[part_slot(p)];
  bool pref = info.kind == ShardKind::preference;
  if (!pt.present || pref == (p == ShardPart::main)) {
    throw Error("shard '" + path + "' (kind " + shard_kind_name(info.kind) + ") has no token stream '" +
                shard_part_name(p) + "'");
  }
  return pt;
}

void ShardReader::Impl::read_header() {
  hid_t root = file.get();
  std::string format = read_attr_string(root, "bonsai_format", path);
  if (format != kShardFormat) {
    throw Error("shard '" + path + "': attribute bonsai_format is '" + format + "', expected '" + kShardFormat + "'",
                "this file is not a bonsai token shard of a format this build reads");
  }
  int64_t version = read_attr_int(root, "version", path);
  if (version != kShardVersion) {
    throw Error("shard '" + path + "' has format version " + std::to_string(version) + "; this build reads version " +
                    std::to_string(kShardVersion),
                "pack the data again with this build of bonsai");
  }
  std::vector<std::string> values;
  for (const char* name : kStringAttrs) values.push_back(read_attr_string(root, name, path));
  if (read_attr_u64(root, "attrs_checksum", path) != attrs_checksum(values)) {
    throw Error("shard '" + path + "': its string attributes do not match their checksum: the file is corrupt "
                "(or was edited outside bonsai)", kCorruptHint);
  }
  info.kind = parse_shard_kind(values[1], "shard '" + path + "'");
  info.tokenizer_identity = values[2];
  info.tokenizer_name = values[3];
  info.tokenizer_spec = values[4];
  info.sources_json = values[5];
  info.created_by = values[6];
  info.vocab_size = read_attr_int(root, "vocab_size", path);
  info.bos_id = read_attr_int(root, "bos_id", path);
  info.eos_id = read_attr_int(root, "eos_id", path);
  info.shard_index = read_attr_int(root, "shard_index", path);
  info.first_doc_continues = read_attr_int(root, "first_doc_continues", path) != 0;
}

void ShardReader::Impl::open_part(ShardPart which, bool mask_required) {
  Part& p = parts[part_slot(which)];
  std::string prefix = part_prefix(which);
  hid_t loc = file.get();
  Hid group;
  if (!prefix.empty()) {
    std::string g = prefix.substr(0, prefix.size() - 1);
    htri_t exists = H5Lexists(loc, g.c_str(), H5P_DEFAULT);
    if (exists <= 0) throw Error("shard '" + path + "': group '/" + g + "' is missing", kCorruptHint);
    group = checked(H5Gopen2(loc, g.c_str(), H5P_DEFAULT), H5Gclose, path, "cannot open group '/" + g + "'");
    loc = group.get();
  }
  hsize_t n_tok = 0, n_off = 0, n_mask = 0;
  p.tokens = open_dataset(loc, "tokens", 4, path, &n_tok);
  Hid offsets = open_dataset(loc, "doc_offsets", 8, path, &n_off);
  htri_t has_mask = H5Lexists(loc, "loss_mask", H5P_DEFAULT);
  if (has_mask > 0) {
    p.mask = open_dataset(loc, "loss_mask", 1, path, &n_mask);
    if (n_mask != n_tok) {
      throw Error("shard '" + path + "': dataset '" + prefix + "loss_mask' has " + std::to_string(n_mask) +
                  " elements but '" + prefix + "tokens' has " + std::to_string(n_tok), kCorruptHint);
    }
  } else if (mask_required) {
    throw Error("shard '" + path + "': dataset '" + prefix + "loss_mask' is missing (kind " +
                shard_kind_name(info.kind) + " needs it)", kCorruptHint);
  }
  if (n_off != n_docs + 1) {
    throw Error("shard '" + path + "': dataset '" + prefix + "doc_offsets' has " + std::to_string(n_off) +
                " elements, expected n_docs + 1 = " + std::to_string(n_docs + 1), kCorruptHint);
  }
  p.offsets.resize(n_off);
  read_range(offsets.get(), H5T_NATIVE_UINT64, 0, n_off, p.offsets.data(), path, prefix + "doc_offsets");
  bool sorted = p.offsets.front() == 0 && std::is_sorted(p.offsets.begin(), p.offsets.end());
  if (!sorted || p.offsets.back() != n_tok) {
    throw Error("shard '" + path + "': dataset '" + prefix + "doc_offsets' is not an increasing list from 0 to the " +
                "token count " + std::to_string(n_tok), kCorruptHint);
  }
  p.n_tokens = n_tok;
  p.present = true;
}

ShardReader::ShardReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  silence_hdf5();
  Impl& m = *impl_;
  m.path = path;
  if (!std::filesystem::is_regular_file(path)) {
    throw Error("shard '" + path + "' does not exist", "check the data path; 'bonsai data pack' writes shard-NNNNN.h5");
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    throw Error("shard '" + path + "' is not a readable HDF5 file (HDF5: " + hdf5_detail() + ")", kCorruptHint);
  }
  m.file = checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, path,
                   "cannot open the file: it is truncated or corrupt");
  m.read_header();
  m.n_docs = read_attr_u64(m.file.get(), "n_docs", path);
  uint64_t n_tokens = read_attr_u64(m.file.get(), "n_tokens", path);
  uint64_t total = 0;
  for (ShardPart p : shard_parts(m.info.kind)) {
    m.open_part(p, m.info.kind != ShardKind::pretrain);
    total += m.parts[part_slot(p)].n_tokens;
  }
  if (total != n_tokens) {
    throw Error("shard '" + path + "': attribute n_tokens is " + std::to_string(n_tokens) + " but the datasets hold " +
                std::to_string(total) + " tokens", kCorruptHint);
  }
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

const std::string& ShardReader::path() const { return impl_->path; }
const ShardInfo& ShardReader::info() const { return impl_->info; }
uint64_t ShardReader::n_docs() const { return impl_->n_docs; }
uint64_t ShardReader::n_tokens(ShardPart part) const { return impl_->part(part).n_tokens; }
bool ShardReader::has_loss_mask(ShardPart part) const { return impl_->part(part).mask.valid(); }
const std::vector<uint64_t>& ShardReader::doc_offsets(ShardPart part) const { return impl_->part(part).offsets; }

void ShardReader::read_tokens(uint64_t start, uint64_t count, int32_t* out, ShardPart part) const {
  silence_hdf5();
  const Impl::Part& p = impl_->part(part);
  if (start > p.n_tokens || count > p.n_tokens - start) {
    throw Error("shard '" + impl_->path + "': token range [" + std::to_string(start) + ", " +
                std::to_string(start + count) + ") is outside [0, " + std::to_string(p.n_tokens) + ")");
  }
  read_range(p.tokens.get(), H5T_NATIVE_INT32, start, count, out, impl_->path, part_prefix(part) + "tokens");
}

void ShardReader::read_loss_mask(uint64_t start, uint64_t count, uint8_t* out, ShardPart part) const {
  silence_hdf5();
  const Impl::Part& p = impl_->part(part);
  if (start > p.n_tokens || count > p.n_tokens - start) {
    throw Error("shard '" + impl_->path + "': loss-mask range [" + std::to_string(start) + ", " +
                std::to_string(start + count) + ") is outside [0, " + std::to_string(p.n_tokens) + ")");
  }
  if (!p.mask.valid()) {
    std::fill(out, out + count, uint8_t{1});
    return;
  }
  read_range(p.mask.get(), H5T_NATIVE_UINT8, start, count, out, impl_->path, part_prefix(part) + "loss_mask");
}

std::vector<int32_t> ShardReader::read_doc(uint64_t i, ShardPart part) const {
  const auto& off = doc_offsets(part);
  if (i + 1 >= off.size()) {
    throw Error("shard '" + impl_->path + "': document " + std::to_string(i) + " does not exist (it has " +
                std::to_string(off.size() - 1) + ")");
  }
  std::vector<int32_t> ids(off[i + 1] - off[i]);
  read_tokens(off[i], ids.size(), ids.data(), part);
  return ids;
}

std::vector<uint8_t> ShardReader::read_doc_mask(uint64_t i, ShardPart part) const {
  const auto& off = doc_offsets(part);
  if (i + 1 >= off.size()) {
    throw Error("shard '" + impl_->path + "': document " + std::to_string(i) + " does not exist (it has " +
                std::to_string(off.size() - 1) + ")");
  }
  std::vector<uint8_t> mask(off[i + 1] - off[i]);
  read_loss_mask(off[i], mask.size(), mask.data(), part);
  return mask;
}

}  // namespace bonsai
