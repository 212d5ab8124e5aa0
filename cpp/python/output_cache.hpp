#pragma once
// Output buffers of the Python API, reused instead of handed back to the OS. A fresh multi-megabyte NumPy array
// costs page faults (the kernel zeroes every page on first touch; on a VM each new page can also cost the
// hypervisor a fault): measured on the project machine, 2-7x the time of the batch norm that fills it. Idle
// buffers are kept up to a byte limit (FASTBN_OUTPUT_CACHE_MB, default 1024; 0 disables the cache) and
// matched by size, which is what a training loop asks for again and again.
#include <cstddef>

namespace fastbn_py {

void* cache_take(size_t bytes);              // throws std::bad_alloc
void cache_give(void* p, size_t bytes) noexcept;
size_t cache_idle_bytes();
size_t cache_limit();
void cache_set_limit(size_t bytes);  // frees idle buffers beyond the new limit
void cache_clear();                  // frees every idle buffer

}  // namespace fastbn_py
