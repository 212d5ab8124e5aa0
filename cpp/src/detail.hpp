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

// dst = a + b, the same way: two streams in, one out (3S of traffic).
FASTBN_API void stream_add(const float* a, const float* b, float* dst, int64_t count);

}  // namespace detail
}  // namespace fastbn
