#include "core/process.h"

#include <malloc.h>

#include <unistd.h>

#include <cstddef>
#include <cstdint>

// jemalloc's control entry point: defined when the executable links jemalloc (bonsai_malloc in
// CMakeLists.txt), null otherwise.
extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen) __attribute__((weak));

namespace bonsai {

void configure_allocator() {
  if (mallctl != nullptr) return;  // jemalloc: core/malloc_conf.c sets it up at link time
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
}

size_t release_allocator_cache(size_t keep_bytes) {
  if (mallctl == nullptr) return 0;
  uint64_t epoch = 1;
  size_t len = sizeof(epoch);
  mallctl("epoch", &epoch, &len, &epoch, len);  // refresh the statistics
  size_t dirty_pages = 0;
  len = sizeof(dirty_pages);
  // 4096 = MALLCTL_ARENAS_ALL: every arena at once
  const bool have_stats = mallctl("stats.arenas.4096.pdirty", &dirty_pages, &len, nullptr, 0) == 0;
  const size_t dirty = dirty_pages * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (have_stats && dirty <= keep_bytes) return 0;
  mallctl("arena.4096.purge", nullptr, nullptr, nullptr, 0);
  return dirty;
}

}  // namespace bonsai
