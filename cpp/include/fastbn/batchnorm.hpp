#pragma once
// fastbn C++ API. The same kernels as the C ABI (fastbn/fastbn.h), with overloads for float and double and
// errors reported as fastbn::Error exceptions instead of status codes.
//
// Layout: every tensor is viewed as (outer, channels, inner), C-contiguous; element (o, c, i) is at
// (o * channels + c) * inner + i. (N, C) -> {N, C, 1}; NCHW -> {N, C, H*W}; NHWC -> {N*H*W, C, 1}.
// gamma / beta may be nullptr (1 and 0). var is the biased batch variance. Outputs may alias inputs of the
// same size (y == x, dx == dy). On error nothing is written.
//
// Determinism: for a given SIMD path (see simd()), results are bit-for-bit identical for any thread count.
#include <cstdint>
#include <stdexcept>
#include <string>

#include "fastbn/export.h"
#include "fastbn/fastbn.h"

namespace fastbn {

enum class Status : int {
  ok = FASTBN_OK,
  null_pointer = FASTBN_ERR_NULL_POINTER,
  bad_shape = FASTBN_ERR_BAD_SHAPE,
  bad_eps = FASTBN_ERR_BAD_EPS,
  too_few_values = FASTBN_ERR_TOO_FEW_VALUES,
  bad_argument = FASTBN_ERR_BAD_ARGUMENT,
  out_of_memory = FASTBN_ERR_OUT_OF_MEMORY,
  no_cuda = FASTBN_ERR_NO_CUDA,
  cuda = FASTBN_ERR_CUDA,
  internal = FASTBN_ERR_INTERNAL,
};

// Thrown by every C++ API function on bad input or failure; status() is the matching C ABI code.
class FASTBN_API Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& message);
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

// A tensor's (outer, channels, inner) view; every extent must be >= 1.
struct Shape {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

// Training forward: y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch statistics of x, which are
// also written to mean and var (channels values each; var biased). Needs more than one value per channel.
FASTBN_API void forward_train(const float* x, float* y, const float* gamma, const float* beta, float* mean,
                              float* var, const Shape& shape, double eps);
FASTBN_API void forward_train(const double* x, double* y, const double* gamma, const double* beta, double* mean,
                              double* var, const Shape& shape, double eps);

// Inference forward with given per-channel statistics (running averages).
FASTBN_API void forward_infer(const float* x, float* y, const float* mean, const float* var, const float* gamma,
                              const float* beta, const Shape& shape, double eps);
FASTBN_API void forward_infer(const double* x, double* y, const double* mean, const double* var,
                              const double* gamma, const double* beta, const Shape& shape, double eps);

// Backward of either forward. batch_stats = true: mean/var are the batch statistics of x and the gradient
// flows through them (training). false: they were constants (eval). dgamma / dbeta may be nullptr.
FASTBN_API void backward(const float* dy, const float* x, const float* mean, const float* var, const float* gamma,
                         float* dx, float* dgamma, float* dbeta, const Shape& shape, double eps, bool batch_stats);
FASTBN_API void backward(const double* dy, const double* x, const double* mean, const double* var,
                         const double* gamma, double* dx, double* dgamma, double* dbeta, const Shape& shape,
                         double eps, bool batch_stats);

// Threads for the CPU kernels; n >= 1 (throws Error(bad_argument) otherwise). Tiny tensors use fewer.
FASTBN_API void set_num_threads(int n);
FASTBN_API int get_num_threads();

// SIMD path. simd() is the active one ("avx512", "avx2" or "scalar"), chosen at load time as the best the CPU
// supports, or forced by the environment variable FASTBN_SIMD; set_simd() switches at run time and throws
// Error(bad_argument) for a name that is unknown or that this CPU or build cannot run.
FASTBN_API const char* simd();
FASTBN_API bool simd_supported(const char* name);
FASTBN_API void set_simd(const char* name);
// Non-empty when FASTBN_SIMD asked for a path that could not be used (the reason and the fallback taken).
FASTBN_API const char* simd_warning();

// How this library was built.
struct BuildInfo {
  const char* version;
  const char* compiler;
  bool openmp;
  int openmp_version;  // _OPENMP date, e.g. 201511; 0 without OpenMP
  int max_threads;     // OpenMP's default team size
  bool cuda;           // CUDA kernels compiled in
  const char* cuda_version;
  const char* cuda_architectures;
  const char* simd_compiled;  // comma-separated paths in this build, best first
};
FASTBN_API BuildInfo build_info();

}  // namespace fastbn
