#pragma once
// The interface between the argument-checking front (batchnorm.cpp) and the CPU kernels, which are compiled
// once per instruction set (kernels_<isa>.cpp) into their own namespace and reached through a KernelTable.
// Arguments arrive validated: pointers non-null where required, extents >= 1, eps > 0, a known activation.
//
// S is the storage type of the tensors (float, double, bfloat16, float16); P = param_t<S> that of gamma, beta,
// the statistics and the parameter gradients (double for double, float otherwise). Statistics handed to a
// kernel as inputs are double: the front widens them once per call.
#include <cstddef>
#include <cstdint>
#include <string>

#include "cpu/half.hpp"

namespace fastbn {
namespace cpu {

// Scratch memory of the calling thread, grown on demand and kept, so steady-state calls allocate nothing.
// reserve() may throw std::bad_alloc and invalidates earlier pointers; kernels call it before any parallel
// region and carve their buffers from the one block.
class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace();
  void* reserve(size_t bytes);  // 64-byte aligned

 private:
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

struct Exec {
  int max_threads;  // upper bound; kernels use fewer for small tensors
  Workspace* workspace;
  int64_t cache_bytes;           // a core's own cache (L2) size: what a thread may plan to keep in cache
  int64_t min_bytes_per_thread;  // bytes of x below which another thread costs more than it saves
  int64_t stream_min_bytes;      // outputs at least this large are written with streaming stores
};

// Whether the backward of nc runs of a few vectors beyond the last-level cache takes its sums by rows first even
// where the runs stream: on AMD CPUs, where that was measured faster (see pipelines_streamed_runs), and in builds
// without the x86 kernels, where nothing was measured.
bool short_runs_by_rows();
// Whether the backward's channel pipelines take the dx of a block and the next channel's sums of the same block in
// one loop (bwd_block_with_sums): on CPUs other than AMD's, where that was measured faster (see backward_nc).
bool backward_one_loop();
// The per-core L2 size as the OS reports it (1 MiB when it does not); set_ (tests) overrides, reset_ restores.
int64_t core_cache_bytes();
void set_core_cache_bytes(int64_t bytes);
void reset_core_cache_bytes();
// The tuning of min_bytes_per_thread: FASTBN_MIN_BYTES_PER_THREAD at load, else 256 KiB (see dispatch.cpp).
int64_t min_bytes_per_thread();
void set_min_bytes_per_thread(int64_t bytes);
void reset_min_bytes_per_thread();
// A monotonic clock in nanoseconds, and the report of a parallel region's second-thread start delay (see
// dispatch.cpp: a delay of kCrowdedDelayNs or more raises min_bytes_per_thread to kCrowdedMinBytes for
// kCrowdedHoldNs, unless the value was chosen; the first region of a team size does not count).
int64_t now_ns();
// A delay counts where the team had sat idle idle_ns >= kSpinIdleNs before the region (its threads slept), else only
// while more threads are runnable than this process has CPUs: `runnable` that count, or -1 to read it from the
// system (runnable_threads(): /proc/loadavg, -1 where it cannot be read). note_region reports a region that started
// at start_ns (now_ns()), its idle time taken from the end of the previous multi-threaded region.
void note_thread_start(int64_t delay_ns, int threads, int64_t idle_ns, int64_t runnable = -1);
void note_region(int64_t start_ns, int64_t delay_ns, int threads);
int64_t runnable_threads();
// Whether such a delay was seen within the last kCrowdedHoldNs; forget_crowding() forgets it (tests).
bool crowded();
void forget_crowding();
// The least output that streams anywhere: the yardsticks' threshold, and the kernels' where the last-level cache
// does not keep writes.
constexpr int64_t kStreamMinBytes = int64_t{4} << 20;
// Whether the last-level cache keeps what a core writes, up to half its reported size (16 MiB at most): timed once,
// by the first caller (dispatch.cpp); true where that cache is reported under 8 MiB (nothing to time).
bool cache_keeps_writes();
// Outputs from this size on bypass the caches: FASTBN_STREAM_MIN_BYTES at load, else half the last-level cache
// that the first core shares (kStreamMinBytes to 64 MiB), or kStreamMinBytes where that cache does not keep what a
// core writes (asked by the first call of `bytes` >= kStreamMinBytes); set_ (tests) overrides, reset_ restores.
int64_t stream_min_bytes(int64_t bytes);
void set_stream_min_bytes(int64_t bytes);
void reset_stream_min_bytes();
// An Exec for the calling thread (its own workspace), with the current settings, for a call on tensors of `bytes`
// (0: none of the kernels' tensors, e.g. the yardsticks).
Exec exec_here(int64_t bytes = 0);

// What follows the normalization: y = act(gamma * xhat + beta + residual). Leaky ReLU's slope is `slope`.
enum class Act : int { none = 0, relu = 1, leaky_relu = 2, sigmoid = 3 };

struct Epilogue {
  Act act = Act::none;
  double slope = 0.01;
};

template <class S>
struct TrainArgs {
  const S* x;
  const S* residual;  // may be null
  S* y;
  const param_t<S>* gamma;  // may be null
  const param_t<S>* beta;   // may be null
  param_t<S>* mean;
  param_t<S>* var;  // biased
  int64_t outer, channels, inner;
  double eps;
  Epilogue epi;
};

// Normalization with given statistics: inference, and the apply step of a distributed forward.
template <class S>
struct ApplyArgs {
  const S* x;
  const S* residual;  // may be null
  S* y;
  const double* mean;
  const double* var;
  const param_t<S>* gamma;  // may be null
  const param_t<S>* beta;   // may be null
  int64_t outer, channels, inner;
  double eps;
  Epilogue epi;
};

// Per-channel statistics of x alone: mean and M2 (sum of squared deviations) over outer * inner values.
template <class S>
struct StatsArgs {
  const S* x;
  double* mean;
  double* m2;
  int64_t outer, channels, inner;
};

// full: sums, then dx (one process). reduce: only the sums, into sum_dy / sum_dy_xhat. apply: dx from given
// (global) sums over `count` values per channel.
enum class Phase : int { full = 0, reduce = 1, apply = 2 };

template <class S>
struct BackwardArgs {
  const S* dy;
  const S* x;  // null: xhat is recovered from y (in-place activated batch norm)
  const S* y;  // the forward's output: needed with an activation or without x
  const double* mean;
  const double* var;
  const param_t<S>* gamma;  // may be null
  const param_t<S>* beta;   // may be null; used when x is null
  S* dx;                    // may be null in the reduce phase
  S* dresidual;             // may be null: dy * act'(.)
  param_t<S>* dgamma;       // may be null
  param_t<S>* dbeta;        // may be null
  int64_t outer, channels, inner;
  double eps;
  bool batch_stats;
  Epilogue epi;
  Phase phase;
  double* sum_dy;       // reduce: written; apply: read
  double* sum_dy_xhat;  // reduce: written; apply: read
  double count;         // apply: values per channel over all processes
};

template <class S>
struct Kernels {
  void (*train)(const TrainArgs<S>&, const Exec&);
  void (*apply)(const ApplyArgs<S>&, const Exec&);
  void (*stats)(const StatsArgs<S>&, const Exec&);
  void (*backward)(const BackwardArgs<S>&, const Exec&);
};

struct KernelTable {
  const char* name;
  Kernels<float> f32;
  Kernels<double> f64;
  Kernels<bfloat16> bf16;
  Kernels<float16> f16;
  // The yardsticks of the benchmark, with this path's streaming stores on all threads: a copy (2S of traffic)
  // and dst = a + b (3S); and a read of S bytes (their sum).
  void (*copy)(const float* src, float* dst, int64_t count, const Exec&);
  void (*add)(const float* a, const float* b, float* dst, int64_t count, const Exec&);
  double (*read)(const float* src, int64_t count, const Exec&);
};

template <class S>
const Kernels<S>& kernels_of(const KernelTable& t);
template <>
inline const Kernels<float>& kernels_of<float>(const KernelTable& t) {
  return t.f32;
}
template <>
inline const Kernels<double>& kernels_of<double>(const KernelTable& t) {
  return t.f64;
}
template <>
inline const Kernels<bfloat16>& kernels_of<bfloat16>(const KernelTable& t) {
  return t.bf16;
}
template <>
inline const Kernels<float16>& kernels_of<float16>(const KernelTable& t) {
  return t.f16;
}

namespace scalar {
const KernelTable& table();
}
namespace avx2 {
const KernelTable& table();
}
namespace avx512 {
const KernelTable& table();
}
namespace avx512_bf16 {
const KernelTable& table();
}

// The table in use, and the names of the paths this build has, best first (see dispatch.cpp).
const KernelTable& active();
std::string compiled_simd_list();

}  // namespace cpu
}  // namespace fastbn
