// A read-only view of a whole file through mmap. Tensors created over it keep a shared_ptr to the
// mapping, so the file stays mapped while any of them lives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace bonsai {

class MappedFile {
 public:
  // Maps `path` privately (copy-on-write): readers see the file, accidental writes never reach it.
  // Throws bonsai::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint8_t* mutable_data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Drops this process's mapping of the pages that hold [p, p + n) (rounded out to whole pages,
// clipped to the mapping) when that range lies inside a live MappedFile: madvise(MADV_DONTNEED).
// Resident memory (RssFile) falls while the page cache keeps the data, and the next read faults the
// pages back in from it (or from disk), so the bytes read stay the same. Private writes to those
// pages would be lost: only for mappings that are read. Anything else (heap memory, another
// mapping) is left alone. Returns the bytes released (0: not inside a MappedFile).
size_t release_mapped_pages(const void* p, size_t n);

}  // namespace bonsai
