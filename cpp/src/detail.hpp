#pragma once
// Library-internal hooks that the Python binding (part of this project) also uses; not a public API.
#include <cstdint>

#include "fastbn/export.h"

namespace fastbn {
namespace detail {

// By default a FASTBN_SIMD request that cannot be honoured is reported on stderr once. A host that reports
// it its own way (the Python module raises a RuntimeWarning) calls this before the first kernel call.
FASTBN_API void quiet_simd_warning();

// Copies `count` floats with the active SIMD path's streaming stores on all threads: the yardstick the
// benchmark measures memory bandwidth with. Values pass through (x - 0) * 1 + 0, so -0.0 arrives as +0.0.
FASTBN_API void stream_copy(const float* src, float* dst, int64_t count);
// The bytes of x per thread below which kernels use fewer threads (FASTBN_MIN_BYTES_PER_THREAD at load, else
// 256 KiB); tests lower it to run small tensors on many threads. set_ throws fastbn::Error for bytes < 1.
FASTBN_API void set_min_bytes_per_thread(int64_t bytes);
FASTBN_API int64_t min_bytes_per_thread();
// Back to the default (FASTBN_MIN_BYTES_PER_THREAD at load, else 256 KiB), which gives way while crowded.
FASTBN_API void reset_min_bytes_per_thread();
// What the next kernel call on this thread uses: min_bytes_per_thread(), or 3 MiB while a second thread was
// recently slow to start after sleeping, or while more threads were runnable than there are CPUs (see
// cpu/dispatch.cpp). note_thread_start reports such a start delay (tests) after the team sat idle idle_ns, with the
// runnable count or -1 to read it from the system; runnable_threads is that reading (-1 where the system does not
// tell); forget_crowding forgets the last delay.
FASTBN_API int64_t min_bytes_per_thread_now();
FASTBN_API void note_thread_start(int64_t delay_ns, int threads, int64_t idle_ns, int64_t runnable = -1);
FASTBN_API int64_t runnable_threads();
FASTBN_API void forget_crowding();
// The output size from which kernels write with streaming stores (FASTBN_STREAM_MIN_BYTES at load, else half the
// last-level cache, 4 to 64 MiB, or 4 MiB where that cache does not keep writes); tests lower it to take the
// streaming paths on small tensors on any machine. set_ throws fastbn::Error for bytes < 1; reset_ goes back to the
// default. stream_min_bytes() gives the answer for large tensors (running the probe if no call has yet).
FASTBN_API void set_stream_min_bytes(int64_t bytes);
FASTBN_API int64_t stream_min_bytes();
FASTBN_API void reset_stream_min_bytes();
// Whether the last-level cache keeps what a core writes (timed once per process, see cpu/dispatch.cpp); where it
// does not, outputs stream from 4 MiB.
FASTBN_API bool cache_keeps_writes();
// The cache a core has to itself (L2), which the kernels plan what to keep in cache by; tests lower it to take the
// paths of big channels (threads sharing each channel) on small tensors. set_ throws fastbn::Error for bytes < 1;
// reset_ goes back to the size the system reports.
FASTBN_API void set_core_cache_bytes(int64_t bytes);
FASTBN_API int64_t core_cache_bytes();
FASTBN_API void reset_core_cache_bytes();

// dst = a + b, the same way: two streams in, one out (3S of traffic).
FASTBN_API void stream_add(const float* a, const float* b, float* dst, int64_t count);
// The sum of `count` floats on all threads (float lanes, double per 64 KiB): a read of S bytes that writes
// nothing, the benchmark's yardstick of a machine's read rate.
FASTBN_API double stream_read(const float* src, int64_t count);

}  // namespace detail
}  // namespace fastbn
