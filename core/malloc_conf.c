/* jemalloc's options, read at its start-up (compiled into the executables that link bonsai_malloc).
 * Freed pages are kept for reuse instead of being purged after a delay (decay -1): a training step
 * or a forward pass allocates the same sizes again moments later, and purged pages come back as
 * page faults (measured, core/process.h). MALLOC_CONF in the environment still overrides these. */
const char* malloc_conf = "dirty_decay_ms:-1,muzzy_decay_ms:-1";
