// safetensors reader and writer without LibTorch: single files (mmap'ed, zero-copy views) and
// sharded checkpoints (model.safetensors.index.json + model-0000i-of-0000n.safetensors, as written
// by Hugging Face transformers). Layers that need torch::Tensor wrap these views themselves, so
// this file stays usable from tools and fuzzers that do not link torch.
//
// File layout: 8-byte little-endian header length N, N bytes of JSON header, then the data section.
// Reading is strict (see safetensors.cpp for the exact rules); every problem is a bonsai::Error
// that names the file, the tensor, what was expected and what was found.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/mapped_file.h"

namespace bonsai::safetensors {

// Same limit as the reference (Rust) implementation: a header larger than this is rejected before
// any of it is parsed, so a hostile length field cannot make us allocate or scan gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Largest tensor rank accepted on read and write (torch itself stops at 64 dimensions).
constexpr size_t kMaxRank = 64;

enum class DType {
  F64,
  F32,
  F16,
  BF16,
  I64,
  I32,
  I16,
  I8,
  U8,
  BOOL,
  F8_E4M3,
  F8_E5M2,
  U16,
  U32,
  U64
};

const char* dtype_name(DType d);  // the header spelling: "F32", "BF16", "BOOL", ...
size_t dtype_size(DType d);       // bytes per element
// Parses a header dtype string; throws bonsai::Error "<context>: unknown dtype 'X' (known: ...)".
DType dtype_from_name(const std::string& s, const std::string& context_for_errors);
// "[1536, 576]"; "[]" for a scalar.
std::string format_shape(const std::vector<int64_t>& shape);

// One tensor's bytes, in its dtype, little-endian, row-major. A view never owns memory: for a read
// tensor `data` points into the File's mapping; for a write it points to the caller's buffer. The
// data is NOT necessarily aligned to the element size (safetensors does not pad between tensors).
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel() const;  // product of shape; 1 for a scalar
};

// One .safetensors file. Copies are cheap and share the mapping; views stay valid as long as any
// copy of the File (or a copy of mapping()) is alive.
class File {
 public:
  static File open(const std::string& path);
  // Parses bytes already in memory (fuzzer, tests). Does not copy or own `data`, which must outlive
  // the returned File; mapping() is null.
  static File parse(const uint8_t* data, size_t size, const std::string& name_for_errors);

  const std::vector<TensorView>& tensors() const { return tensors_; }  // in data-offset order
  const TensorView* find(const std::string& name) const;               // nullptr if absent
  // Throws bonsai::Error naming the tensor and the file, with the closest names present.
  const TensorView& get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  std::shared_ptr<MappedFile> mapping() const { return mapping_; }
  const std::string& path() const { return path_; }  // name_for_errors for parse()

 private:
  std::string path_;
  std::shared_ptr<MappedFile> mapping_;
  std::vector<TensorView> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint: one model.safetensors, or model.safetensors.index.json plus its shards
// ({"metadata": {"total_size": N}, "weight_map": {tensor name: shard file name}}).
class Checkpoint {
 public:
  // `path` is a .safetensors file, an index .json, or a directory holding model.safetensors and/or
  // model.safetensors.index.json (the index wins when both exist: a sharded save writes the index
  // last, so a stale single file next to it is the older of the two). A directory without those
  // names is accepted when it holds exactly one *.safetensors.index.json or one *.safetensors.
  // Checks: every shard the index names exists; every weight_map entry is in the shard it names;
  // no tensor is in two shards.
  static Checkpoint open(const std::string& path);

  std::vector<std::string> names() const;  // all tensor names, sorted
  const TensorView* find(const std::string& name) const;
  const TensorView& get(const std::string& name) const;  // throws naming tensor and checkpoint
  const File& file_of(const std::string& name) const;    // throws like get()
  const std::vector<File>& files() const { return files_; }
  const std::string& path() const { return path_; }

 private:
  void add_file(File f);
  const std::pair<size_t, size_t>& locate(const std::string& name) const;

  std::string path_;
  std::vector<File> files_;
  std::map<std::string, std::pair<size_t, size_t>> where_;  // name -> (file, tensor) indices
};

// Writes one file atomically (temp file + fsync + rename), streaming each tensor's bytes in the
// given order. The header's "__metadata__" is {"format": "pt"} plus `metadata` (a caller's "format"
// wins). The header is padded with spaces to a multiple of 8 bytes, so the data section starts
// 8-aligned. Every view is checked first (nbytes == numel * dtype_size, unique names, ...): a bad
// view throws before any file is created.
void write_file(const std::string& path, const std::vector<TensorView>& tensors,
                const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into `dir` (created if missing), transformers-style: tensors are packed in
// order into shards of at most max_shard_bytes (a tensor is never split; one larger than the limit
// gets a shard of its own), named model-00001-of-0000n.safetensors, then
// model.safetensors.index.json is written last. If everything fits in one shard, writes a plain
// model.safetensors and no index. Files of an earlier save in `dir` (model.safetensors,
// model-*-of-*.safetensors, model.safetensors.index.json) that this save did not rewrite are
// removed only after the new files are complete. Returns the file names written (index last).
std::vector<std::string> write_checkpoint(const std::string& dir,
                                          const std::vector<TensorView>& tensors,
                                          uint64_t max_shard_bytes,
                                          const std::map<std::string, std::string>& metadata = {});

}  // namespace bonsai::safetensors
