#pragma once
// fastbn C++ API. The same kernels as the C ABI (fastbn/fastbn.h), as templates over the tensor type (float,
// double, bfloat16, float16) and with errors reported as fastbn::Error exceptions instead of status codes.
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

// Half-precision storage: the bits of an IEEE binary16 (float16) or of a bfloat16 value. Tensors of these
// types compute in float32 with float32 parameters and statistics; results are rounded once, to nearest even.
struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

// The type of gamma, beta, the statistics and the parameter gradients for tensors of type T: double for
// double, float for float, bfloat16 and float16.
template <class T>
struct Param {
  using type = float;
};
template <>
struct Param<double> {
  using type = double;
};
template <class T>
using param_t = typename Param<T>::type;
// T, in a parameter that does not take part in deducing T (so that nullptr can be passed there).
template <class T>
struct Same {
  using type = T;
};
template <class T>
using same_t = typename Same<T>::type;

// What follows the normalization, fused into the same pass: y = act(gamma * xhat + beta + residual).
// leaky_relu(z) = z > 0 ? z : negative_slope * z. The backward of an activation takes act' from the forward's
// output y (so y must be passed), and needs negative_slope >= 0 for leaky_relu.
enum class Activation : int {
  none = FASTBN_ACT_NONE,
  relu = FASTBN_ACT_RELU,
  leaky_relu = FASTBN_ACT_LEAKY_RELU,
  sigmoid = FASTBN_ACT_SIGMOID,
};
struct Fusion {
  Activation activation = Activation::none;
  double negative_slope = 0.01;
};

// Every function below is a template over the tensor type T = float, double, bfloat16 or float16 (explicitly
// instantiated in the library; T is deduced from x). P = param_t<T>.

// Training forward: y = gamma * (x - mean) / sqrt(var + eps) + beta with the batch statistics of x, which are
// also written to mean and var (channels values each; var biased). Needs more than one value per channel.
template <class T>
FASTBN_API void forward_train(const T* x, same_t<T>* y, const param_t<T>* gamma, const param_t<T>* beta, param_t<T>* mean,
                              param_t<T>* var, const Shape& shape, double eps);
// The same with a fused epilogue: y = act(gamma * xhat + beta + residual); residual may be nullptr.
template <class T>
FASTBN_API void forward_train(const T* x, const same_t<T>* residual, same_t<T>* y, const param_t<T>* gamma, const param_t<T>* beta,
                              param_t<T>* mean, param_t<T>* var, const Shape& shape, double eps,
                              const Fusion& fusion);

// Inference forward with given per-channel statistics (running averages).
template <class T>
FASTBN_API void forward_infer(const T* x, same_t<T>* y, const param_t<T>* mean, const param_t<T>* var,
                              const param_t<T>* gamma, const param_t<T>* beta, const Shape& shape, double eps);
template <class T>
FASTBN_API void forward_infer(const T* x, const same_t<T>* residual, same_t<T>* y, const param_t<T>* mean, const param_t<T>* var,
                              const param_t<T>* gamma, const param_t<T>* beta, const Shape& shape, double eps,
                              const Fusion& fusion);

// Backward of either forward. batch_stats = true: mean/var are the batch statistics of x and the gradient
// flows through them (training). false: they were constants (eval). dgamma / dbeta may be nullptr.
template <class T>
FASTBN_API void backward(const T* dy, const same_t<T>* x, const param_t<T>* mean, const param_t<T>* var,
                         const param_t<T>* gamma, same_t<T>* dx, param_t<T>* dgamma, param_t<T>* dbeta, const Shape& shape,
                         double eps, bool batch_stats);
// Backward of a fused forward. y is the forward's output (needed with an activation, or when x is nullptr);
// dresidual (may be nullptr) receives dy * act'(.), the gradient of the residual input. x == nullptr: xhat is
// recovered from y ("in-place activated batch norm"): needs beta, a gamma without zeros, an invertible
// activation (none, leaky_relu with negative_slope > 0, sigmoid) and a forward without residual.
template <class T>
FASTBN_API void backward(const T* dy, const same_t<T>* x, const same_t<T>* y, const param_t<T>* mean, const param_t<T>* var,
                         const param_t<T>* gamma, const param_t<T>* beta, same_t<T>* dx, same_t<T>* dresidual, param_t<T>* dgamma,
                         param_t<T>* dbeta, const Shape& shape, double eps, bool batch_stats, const Fusion& fusion);

// ---------------------------------------------------------------------------------------------------------
// The phases of a batch norm whose batch is split over processes (SyncBatchNorm). Every process runs the same
// calls; only the small per-channel vectors travel between them:
//   forward:  local_stats -> (gather) -> merge_stats -> normalize (+ update_running_stats)
//   backward: backward_reduce -> (sum over processes) -> backward_apply
// Statistics and sums are double; var is biased (M2 / count).

// Per-channel mean and M2 (sum of squared deviations) of x over its outer * inner values per channel.
template <class T>
FASTBN_API void local_stats(const T* x, double* mean, double* m2, const Shape& shape);

// Merges `parts` partial statistics (part p: count[p] values per channel, means and M2s at mean[p * channels],
// m2[p * channels]) in the order given, with Chan's formula, so every process that merges the same parts in
// the same order gets the same bits. Parts with count 0 are skipped. Writes the total count and per-channel
// mean and M2 (mean 0 and M2 0 when the total count is 0).
FASTBN_API void merge_stats(int64_t parts, const double* count, const double* mean, const double* m2,
                            int64_t channels, double* total_count, double* mean_out, double* m2_out);

// Normalization with given (e.g. global) statistics: y = act(gamma * (x - mean) / sqrt(var + eps) + beta
// + residual); residual may be nullptr.
template <class T>
FASTBN_API void normalize(const T* x, const same_t<T>* residual, same_t<T>* y, const double* mean, const double* var,
                          const param_t<T>* gamma, const param_t<T>* beta, const Shape& shape, double eps,
                          const Fusion& fusion);

// running = (1 - momentum) * running + momentum * batch, with the unbiased batch variance
// var * count / (count - 1). Needs count > 1 and momentum in [0, 1].
template <class T>
FASTBN_API void update_running_stats(T* running_mean, same_t<T>* running_var, const double* mean, const double* var,
                                     int64_t channels, double count, double momentum);

// Local backward sums: sum_dy = sum(dz) and sum_dy_xhat = sum(dz * xhat) per channel, dz = dy * act'(.).
// x, y as in backward(). Summed over all processes they are the global dbeta and dgamma.
template <class T>
FASTBN_API void backward_reduce(const T* dy, const same_t<T>* x, const same_t<T>* y, const double* mean, const double* var,
                                const param_t<T>* gamma, const param_t<T>* beta, double* sum_dy,
                                double* sum_dy_xhat, const Shape& shape, double eps, const Fusion& fusion);

// dx (and dresidual, may be nullptr) from the global sums over `count` values per channel (all processes).
template <class T>
FASTBN_API void backward_apply(const T* dy, const same_t<T>* x, const same_t<T>* y, const double* mean, const double* var,
                               const param_t<T>* gamma, const param_t<T>* beta, const double* sum_dy,
                               const double* sum_dy_xhat, double count, same_t<T>* dx, same_t<T>* dresidual, const Shape& shape,
                               double eps, const Fusion& fusion);

// Threads for the CPU kernels, 1..FASTBN_MAX_NUM_THREADS (throws Error(bad_argument) otherwise, changing
// nothing). Tiny tensors use fewer. In a child created by fork() the kernels run on the calling thread only and
// get_num_threads() returns 1, whatever set_num_threads was given (see fastbn.h).
FASTBN_API void set_num_threads(int n);
FASTBN_API int get_num_threads();

// SIMD path. simd() is the active one ("avx512_bf16", "avx512", "avx2" or "scalar"), chosen at load time as the
// best the CPU supports, or forced by the environment variable FASTBN_SIMD; set_simd() switches at run time and
// throws Error(bad_argument) for a name that is unknown or that this CPU or build cannot run.
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
