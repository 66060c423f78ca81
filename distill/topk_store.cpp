#include "distill/topk_store.h"

#include <hdf5.h>
#include <unistd.h>

#include <cstdio>

#include "core/error.h"

namespace bonsai {
namespace {

constexpr const char* kFormat = "topk-v1";

struct H5 {  // owns one HDF5 handle
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  H5() = default;
  H5(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  H5(H5&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  H5& operator=(H5&& o) noexcept { std::swap(id, o.id); std::swap(close, o.close); return *this; }
  ~H5() { if (id >= 0 && close) close(id); }
};

hid_t must(hid_t v, const std::string& file, const std::string& what) {
  if (v < 0) throw Error("top-k file '" + file + "': " + what, "the file is missing, corrupt or not a bonsai top-k file");
  return v;
}

void put_str(hid_t loc, const char* name, const std::string& v, const std::string& file) {
  H5 type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.id, std::max<size_t>(1, v.size()));
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 a(must(H5Acreate2(loc, name, type.id, space.id, H5P_DEFAULT, H5P_DEFAULT), file, std::string("cannot write attribute ") + name), H5Aclose);
  H5Awrite(a.id, type.id, v.empty() ? " " : v.data());
}

std::string get_str(hid_t loc, const char* name, const std::string& file) {
  H5 a(must(H5Aopen(loc, name, H5P_DEFAULT), file, std::string("missing attribute '") + name + "'"), H5Aclose);
  H5 type(H5Aget_type(a.id), H5Tclose);
  std::string s(H5Tget_size(type.id), '\0');
  H5Aread(a.id, type.id, s.data());
  return s == " " ? std::string() : s;
}

template <class T>
void put_num(hid_t loc, const char* name, T v, hid_t type) {
  H5 space(H5Screate(H5S_SCALAR), H5Sclose);
  H5 a(H5Acreate2(loc, name, type, space.id, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  H5Awrite(a.id, type, &v);
}

template <class T>
T get_num(hid_t loc, const char* name, hid_t type, const std::string& file) {
  H5 a(must(H5Aopen(loc, name, H5P_DEFAULT), file, std::string("missing attribute '") + name + "'"), H5Aclose);
  T v{};
  H5Aread(a.id, type, &v);
  return v;
}

H5 make_dataset(hid_t file, const char* name, hid_t type, std::vector<hsize_t> dims, const std::string& path) {
  H5 space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose);
  H5 dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  std::vector<hsize_t> chunk = dims;
  chunk[0] = 1;  // one sample per chunk: random access by sample id reads one chunk
  H5Pset_chunk(dcpl.id, static_cast<int>(chunk.size()), chunk.data());
  H5Pset_fletcher32(dcpl.id);
  return H5(must(H5Dcreate2(file, name, type, space.id, H5P_DEFAULT, dcpl.id, H5P_DEFAULT), path,
                 std::string("cannot create dataset ") + name), H5Dclose);
}

// Writes or reads row `s` of a dataset whose rows are `row` elements.
void row_io(hid_t ds, uint64_t s, hid_t mem_type, void* buf, bool write, const std::string& path, const char* name) {
  H5 fspace(H5Dget_space(ds), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(fspace.id);
  std::vector<hsize_t> dims(rank), start(rank, 0), count;
  H5Sget_simple_extent_dims(fspace.id, dims.data(), nullptr);
  if (s >= dims[0]) throw Error("top-k file '" + path + "': sample " + std::to_string(s) + " is beyond its " + std::to_string(dims[0]) + " samples");
  start[0] = s;
  count = dims;
  count[0] = 1;
  H5Sselect_hyperslab(fspace.id, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  H5 mspace(H5Screate_simple(rank, count.data(), nullptr), H5Sclose);
  herr_t rc = write ? H5Dwrite(ds, mem_type, mspace.id, fspace.id, H5P_DEFAULT, buf)
                    : H5Dread(ds, mem_type, mspace.id, fspace.id, H5P_DEFAULT, buf);
  if (rc < 0) throw Error("top-k file '" + path + "': cannot " + (write ? "write" : "read") + " sample " + std::to_string(s) + " of '" + name + "'",
                          "the file is corrupt or truncated");
}

}  // namespace

struct TopKWriter::Impl {
  std::string path, tmp;
  TopKMeta meta;
  H5 file, values, indices, lse, written;
  bool committed = false;
};

TopKWriter::TopKWriter(const std::string& path, const TopKMeta& m) : impl_(std::make_unique<Impl>()) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto& s = *impl_;
  s.path = path;
  s.tmp = path + ".tmp." + std::to_string(::getpid());
  s.meta = m;
  H5 fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  H5Pset_libver_bounds(fapl.id, H5F_LIBVER_V110, H5F_LIBVER_LATEST);
  s.file = H5(must(H5Fcreate(s.tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.id), s.tmp, "cannot create"), H5Fclose);
  const hsize_t n = m.n_samples, T = m.seq_len, k = m.k;
  s.values = make_dataset(s.file.id, "values", H5T_NATIVE_UINT16, {n, T, k}, s.tmp);  // raw IEEE f16 bits
  s.indices = make_dataset(s.file.id, "indices", H5T_NATIVE_UINT32, {n, T, k}, s.tmp);
  s.lse = make_dataset(s.file.id, "lse", H5T_NATIVE_FLOAT, {n, T}, s.tmp);
  s.written = make_dataset(s.file.id, "written", H5T_NATIVE_UINT8, {n}, s.tmp);
}

TopKWriter::~TopKWriter() {
  if (!impl_->committed) {
    impl_->values = H5(), impl_->indices = H5(), impl_->lse = H5(), impl_->written = H5(), impl_->file = H5();
    std::remove(impl_->tmp.c_str());
  }
}

void TopKWriter::write(uint64_t sample, const uint16_t* v, const uint32_t* idx, const float* lse) {
  auto& s = *impl_;
  row_io(s.values.id, sample, H5T_NATIVE_UINT16, const_cast<uint16_t*>(v), true, s.tmp, "values");
  row_io(s.indices.id, sample, H5T_NATIVE_UINT32, const_cast<uint32_t*>(idx), true, s.tmp, "indices");
  row_io(s.lse.id, sample, H5T_NATIVE_FLOAT, const_cast<float*>(lse), true, s.tmp, "lse");
  uint8_t one = 1;
  row_io(s.written.id, sample, H5T_NATIVE_UINT8, &one, true, s.tmp, "written");
}

void TopKWriter::commit() {
  auto& s = *impl_;
  hid_t root = s.file.id;
  put_str(root, "bonsai_format", kFormat, s.tmp);
  put_str(root, "teacher", s.meta.teacher, s.tmp);
  put_str(root, "tokenizer_identity", s.meta.tokenizer_identity, s.tmp);
  put_str(root, "data", s.meta.data_json, s.tmp);
  put_num(root, "temperature", s.meta.temperature, H5T_NATIVE_DOUBLE);
  put_num(root, "k", s.meta.k, H5T_NATIVE_INT64);
  put_num(root, "seq_len", s.meta.seq_len, H5T_NATIVE_INT64);
  put_num(root, "n_samples", s.meta.n_samples, H5T_NATIVE_INT64);
  s.values = H5(), s.indices = H5(), s.lse = H5(), s.written = H5();
  if (H5Fflush(root, H5F_SCOPE_GLOBAL) < 0) throw Error("top-k file '" + s.tmp + "': flush failed", "is the disk full?");
  s.file = H5();
  if (std::rename(s.tmp.c_str(), s.path.c_str()) != 0) throw Error("cannot rename '" + s.tmp + "' to '" + s.path + "'");
  s.committed = true;
}

struct TopKReader::Impl {
  std::string path;
  TopKMeta meta;
  H5 file, values, indices, lse, written;
};

TopKReader::TopKReader(const std::string& path) : impl_(std::make_unique<Impl>()) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  auto& s = *impl_;
  s.path = path;
  s.file = H5(must(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), path, "cannot open as HDF5"), H5Fclose);
  hid_t root = s.file.id;
  if (get_str(root, "bonsai_format", path) != kFormat)
    throw Error("top-k file '" + path + "' is not format " + kFormat, "write it with `bonsai distill precompute`");
  s.meta.teacher = get_str(root, "teacher", path);
  s.meta.tokenizer_identity = get_str(root, "tokenizer_identity", path);
  s.meta.data_json = get_str(root, "data", path);
  s.meta.temperature = get_num<double>(root, "temperature", H5T_NATIVE_DOUBLE, path);
  s.meta.k = get_num<int64_t>(root, "k", H5T_NATIVE_INT64, path);
  s.meta.seq_len = get_num<int64_t>(root, "seq_len", H5T_NATIVE_INT64, path);
  s.meta.n_samples = get_num<int64_t>(root, "n_samples", H5T_NATIVE_INT64, path);
  for (auto [h, name] : {std::pair<H5*, const char*>{&s.values, "values"}, {&s.indices, "indices"}, {&s.lse, "lse"}, {&s.written, "written"}})
    *h = H5(must(H5Dopen2(root, name, H5P_DEFAULT), path, std::string("missing dataset '") + name + "'"), H5Dclose);
}

TopKReader::~TopKReader() = default;
const TopKMeta& TopKReader::meta() const { return impl_->meta; }

void TopKReader::read(uint64_t sample, uint16_t* v, uint32_t* idx, float* lse) const {
  auto& s = *impl_;
  uint8_t ok = 0;
  row_io(s.written.id, sample, H5T_NATIVE_UINT8, &ok, false, s.path, "written");
  if (ok != 1) throw Error("top-k file '" + s.path + "': sample " + std::to_string(sample) + " was never written",
                           "the precompute run did not finish; run it again");
  row_io(s.values.id, sample, H5T_NATIVE_UINT16, v, false, s.path, "values");
  row_io(s.indices.id, sample, H5T_NATIVE_UINT32, idx, false, s.path, "indices");
  row_io(s.lse.id, sample, H5T_NATIVE_FLOAT, lse, false, s.path, "lse");
}

}  // namespace bonsai
