#pragma once
// The interface between the argument-checking front (batchnorm.cpp) and the CPU kernels, which are compiled
// once per instruction set (kernels_<isa>.cpp) into their own namespace and reached through a KernelTable.
// Arguments arrive validated: pointers non-null where required, extents >= 1, eps > 0.
#include <cstddef>
#include <cstdint>
#include <string>

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
  int64_t cache_bytes;  // a core's own cache (L2) size: what a thread may plan to keep in cache
};

// The per-core L2 size as the OS reports it (1 MiB when it does not).
int64_t core_cache_bytes();

template <class T>
struct TrainArgs {
  const T* x;
  T* y;
  const T* gamma;  // may be null
  const T* beta;   // may be null
  T* mean;
  T* var;
  int64_t outer, channels, inner;
  double eps;
};

template <class T>
struct InferArgs {
  const T* x;
  T* y;
  const T* mean;
  const T* var;
  const T* gamma;  // may be null
  const T* beta;   // may be null
  int64_t outer, channels, inner;
  double eps;
};

template <class T>
struct BackwardArgs {
  const T* dy;
  const T* x;
  const T* mean;
  const T* var;
  const T* gamma;  // may be null
  T* dx;
  T* dgamma;  // may be null
  T* dbeta;   // may be null
  int64_t outer, channels, inner;
  double eps;
  bool batch_stats;
};

template <class T>
struct Kernels {
  void (*train)(const TrainArgs<T>&, const Exec&);
  void (*infer)(const InferArgs<T>&, const Exec&);
  void (*backward)(const BackwardArgs<T>&, const Exec&);
};

struct KernelTable {
  const char* name;
  Kernels<float> f32;
  Kernels<double> f64;
  // The fastest plain copy this path can do (streaming stores, all threads): the benchmark's yardstick.
  void (*copy)(const float* src, float* dst, int64_t count, const Exec&);
};

namespace scalar {
const KernelTable& table();
}
namespace avx2 {
const KernelTable& table();
}
namespace avx512 {
const KernelTable& table();
}

// The table in use, and the names of the paths this build has, best first (see dispatch.cpp).
const KernelTable& active();
std::string compiled_simd_list();

}  // namespace cpu
}  // namespace fastbn
