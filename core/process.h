// Process-wide settings every bonsai binary applies at start-up.
#pragma once

#include <cstddef>

namespace bonsai {

// The executables link jemalloc (CMake option BONSAI_JEMALLOC, on by default), with freed pages kept
// for reuse (core/malloc_conf.c). Measured on the 2-core CI machine, one distillation step
// (scripts/bench/distill_step.sh shapes: SmolLM2-135M teacher, 15-layer student, 4 x 512 tokens),
// the same binary under each allocator in one session:
//   glibc, tuned as below       peak RSS 4921 MB, 85-93 tokens/s (machine shared), 13.7 s system time
//   glibc, 1 MiB mmap threshold peak RSS 3698 MB, 68-74 tokens/s, 35.5 s system time (page faults)
//   jemalloc, decay -1          peak RSS 4061 MB, 88-97 tokens/s,  6.1 s system time
// glibc's heap fragments under a training step's mix of long-lived activations and short-lived
// temporaries (up to 2.4 GB free inside the heap after backward); returning memory to the system
// instead costs page faults on every reuse.
//
// Without jemalloc (glibc): allocations above 128 KiB (dynamically up to 32 MiB) get fresh mmap()s,
// so every activation tensor of a forward pass costs page faults on first touch; raising the mmap and
// trim thresholds keeps freed tensor memory in the heap for reuse. Measured on the 2-core CI machine,
// SmolLM2-135M forward on 512 tokens: bf16 0.466 s -> 0.368 s, fp32 1.135 s -> 0.934 s (BENCHMARKS.md).
void configure_allocator();

// jemalloc keeps freed pages for reuse (no decay), which is what a step wants; across steps the kept
// pages can still grow (measured: +300 MB per step, to an OOM kill at 22 GB after 63 steps of a
// random-init student). Training calls this after every optimizer step: when more than keep_bytes
// are kept, they are returned to the system. Returns the bytes released (0 under glibc).
size_t release_allocator_cache(size_t keep_bytes);

}  // namespace bonsai
