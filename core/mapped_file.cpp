#include "core/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "core/error.h"

namespace bonsai {
namespace {

// Live mappings (start -> size), so that release_mapped_pages touches nothing else.
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::map<uintptr_t, size_t>& registry() {
  static std::map<uintptr_t, size_t> r;
  return r;
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    throw Error("cannot open '" + path + "': " + std::strerror(errno),
                "check that the path exists and is readable");
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("'" + path + "' is not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error("cannot mmap '" + path + "': " + std::strerror(err));
    }
    f->data_ = static_cast<uint8_t*>(p);
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry()[reinterpret_cast<uintptr_t>(p)] = f->size_;
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    registry().erase(reinterpret_cast<uintptr_t>(data_));
  }
  ::munmap(data_, size_);
}

size_t release_mapped_pages(const void* p, size_t n) {
  if (p == nullptr || n == 0) return 0;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p), end = begin + n;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  std::lock_guard<std::mutex> lock(registry_mutex());  // held: the mapping cannot go away meanwhile
  auto it = registry().upper_bound(begin);
  if (it == registry().begin()) return 0;
  --it;
  const uintptr_t map_begin = it->first, map_end = it->first + it->second;
  if (begin < map_begin || end > map_end) return 0;
  const uintptr_t lo = begin / page * page;  // the mapping starts on a page boundary
  const uintptr_t hi = std::min(map_end, (end + page - 1) / page * page);
  if (::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) != 0) return 0;
  return hi - lo;
}

}  // namespace bonsai
