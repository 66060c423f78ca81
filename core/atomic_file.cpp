#include "core/atomic_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace bonsai {

AtomicFile::AtomicFile(std::string final_path) : final_path_(std::move(final_path)) {
  tmp_path_ = final_path_ + ".tmp." + std::to_string(::getpid());
  f_ = std::fopen(tmp_path_.c_str(), "wb");
  if (f_ == nullptr) {
    throw Error("cannot create '" + tmp_path_ + "': " + std::strerror(errno),
                "check that the output directory exists and is writable");
  }
}

AtomicFile::~AtomicFile() {
  if (f_ != nullptr) std::fclose(f_);
  if (!committed_) std::remove(tmp_path_.c_str());
}

void AtomicFile::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) {
    throw Error("write to '" + tmp_path_ + "' failed after " + std::to_string(written_) +
                    " bytes: " + std::strerror(errno),
                "is the disk full?");
  }
  written_ += n;
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0) {
    throw Error("cannot flush '" + tmp_path_ + "': " + std::strerror(errno), "is the disk full?");
  }
  std::fclose(f_);
  f_ = nullptr;
  if (std::rename(tmp_path_.c_str(), final_path_.c_str()) != 0) {
    throw Error("cannot rename '" + tmp_path_ + "' to '" + final_path_ + "': " + std::strerror(errno));
  }
  committed_ = true;
}

void write_file_atomic(const std::string& path, const std::string& content) {
  AtomicFile f(path);
  f.write(content);
  f.commit();
}

}  // namespace bonsai
