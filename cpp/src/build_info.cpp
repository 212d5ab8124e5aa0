// How this library was built; the values come from CMake as compile definitions of this file.
#include "cpu/kernels.hpp"
#include "fastbn/batchnorm.hpp"
#include "fastbn/cuda.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef FASTBN_VERSION
#error "FASTBN_VERSION must be defined by the build"
#endif
#ifndef FASTBN_CUDA_VERSION
#define FASTBN_CUDA_VERSION ""
#endif
#ifndef FASTBN_CUDA_ARCHITECTURES
#define FASTBN_CUDA_ARCHITECTURES ""
#endif

namespace fastbn {

BuildInfo build_info() {
  static const std::string simd_list = cpu::compiled_simd_list();
  BuildInfo b{};
  b.version = FASTBN_VERSION;
#if defined(__clang__)
  b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "gcc " __VERSION__;
#elif defined(_MSC_VER)
  b.compiler = "msvc";
#else
  b.compiler = "unknown";
#endif
#if defined(_OPENMP)
  b.openmp = true;
  b.openmp_version = _OPENMP;
  b.max_threads = omp_get_max_threads();
#else
  b.openmp = false;
  b.openmp_version = 0;
  b.max_threads = 1;
#endif
  b.cuda = cuda::compiled();
  b.cuda_version = FASTBN_CUDA_VERSION;
  b.cuda_architectures = FASTBN_CUDA_ARCHITECTURES;
  b.simd_compiled = simd_list.c_str();
  return b;
}

}  // namespace fastbn
