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
// 3 MiB); tests lower it to run small tensors on many threads. set_ throws fastbn::Error for bytes < 1.
FASTBN_API void set_min_bytes_per_thread(int64_t bytes);
FASTBN_API int64_t min_bytes_per_thread();

// Inside a PyTorch model the cores are kept busy by torch's own threads, so a second thread is awake and joins
// a kernel far sooner than after an idle spell: calls made on torch's behalf (fastbn.torch) let it join from
// kTorchMinBytesPerThread of x per thread, unless FASTBN_MIN_BYTES_PER_THREAD (or set_min_bytes_per_thread)
// says otherwise. The scope applies this to the calling thread's kernel calls while it lives.
constexpr int64_t kTorchMinBytesPerThread = 256 << 10;
class FASTBN_API TorchCallScope {
 public:
  TorchCallScope();
  ~TorchCallScope();
  TorchCallScope(const TorchCallScope&) = delete;
  TorchCallScope& operator=(const TorchCallScope&) = delete;

 private:
  int64_t previous_;
};

// dst = a + b, the same way: two streams in, one out (3S of traffic).
FASTBN_API void stream_add(const float* a, const float* b, float* dst, int64_t count);

}  // namespace detail
}  // namespace fastbn
