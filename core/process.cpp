#include "core/process.h"

#include <malloc.h>

#include <cstddef>

// jemalloc's control entry point: defined when the executable links jemalloc (bonsai_malloc in
// CMakeLists.txt), null otherwise.
extern "C" int mallctl(const char* name, void* oldp, size_t* oldlenp, void* newp, size_t newlen) __attribute__((weak));

namespace bonsai {

const char* allocator_name() { return mallctl != nullptr ? "jemalloc" : "glibc"; }

void configure_allocator() {
  if (mallctl != nullptr) return;  // jemalloc: core/malloc_conf.c sets it up at link time
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  mallopt(M_TOP_PAD, 64 << 20);
}

}  // namespace bonsai
