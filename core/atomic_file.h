// Writing files so that a crash never leaves a half-written one: write to "<path>.tmp.<pid>", fsync,
// then rename over the final name (atomic on POSIX within one file system).
#pragma once

#include <cstdio>
#include <string>

namespace bonsai {

class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path);
  ~AtomicFile();  // removes the temp file if commit() was never called
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  size_t bytes_written() const { return written_; }
  void commit();  // flush, fsync, rename; throws bonsai::Error on any failure

 private:
  std::string final_path_, tmp_path_;
  std::FILE* f_ = nullptr;
  size_t written_ = 0;
  bool committed_ = false;
};

// Convenience: the whole content at once.
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace bonsai
