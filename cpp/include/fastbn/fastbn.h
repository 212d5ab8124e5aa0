#pragma once
/* fastbn C ABI: a stable, plain-C contract for callers in C, C++, Rust, Go or any FFI.
 *
 * Every tensor is viewed as (outer, channels, inner), C-contiguous: element (o, c, i) lives at
 * x[(o * channels + c) * inner + i]. (N, C) is (N, C, 1); NCHW is (N, C, H*W); channels-last NHWC is
 * (N*H*W, C, 1). Per channel c the statistics run over all outer * inner values of that channel.
 *
 * gamma / beta may be NULL (meaning 1 and 0). var is always the BIASED batch variance (divide by n).
 * Functions return 0 (FASTBN_OK) on success or a fastbn_status code; they never abort the process, and on
 * error they write nothing. Outputs may alias inputs of the same shape (y == x, dx == dy) for in-place use.
 *
 * Each f32 function has an _f64 twin taking double, and _bf16 and _f16 twins whose tensors (x, y, dy, dx,
 * residual) are bfloat16 or IEEE float16 bit patterns (uint16_t) while gamma, beta, the statistics and the
 * parameter gradients stay float; half-precision results are rounded once, to nearest even. The
 * fastbn_cuda_* functions take DEVICE pointers and a cudaStream_t passed as void* (NULL = the default
 * stream); they return FASTBN_ERR_NO_CUDA when the library was built without CUDA or no device is usable.
 */
#include <stdint.h>

#include "fastbn/export.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fastbn_status {
  FASTBN_OK = 0,
  FASTBN_ERR_NULL_POINTER = 1,   /* a required pointer was NULL */
  FASTBN_ERR_BAD_SHAPE = 2,      /* outer, channels or inner < 1, or their product overflows */
  FASTBN_ERR_BAD_EPS = 3,        /* eps <= 0 or not finite */
  FASTBN_ERR_TOO_FEW_VALUES = 4, /* training needs more than one value per channel */
  FASTBN_ERR_BAD_ARGUMENT = 5,   /* any other invalid argument (e.g. a thread count outside 1..1024) */
  FASTBN_ERR_OUT_OF_MEMORY = 6,  /* a workspace allocation failed */
  FASTBN_ERR_NO_CUDA = 7,        /* CUDA not compiled in, or no usable device */
  FASTBN_ERR_CUDA = 8,           /* a CUDA runtime call failed */
  FASTBN_ERR_INTERNAL = 9        /* a bug: please report it */
} fastbn_status;

/* Activations fused after the normalization (the _fused functions): y = act(gamma * xhat + beta + residual).
 * leaky_relu(z) = z > 0 ? z : negative_slope * z. */
typedef enum fastbn_activation {
  FASTBN_ACT_NONE = 0,
  FASTBN_ACT_RELU = 1,
  FASTBN_ACT_LEAKY_RELU = 2,
  FASTBN_ACT_SIGMOID = 3
} fastbn_activation;

/* Training forward: writes y (outer*channels*inner values) and the batch mean / biased var (channels). */
FASTBN_API int fastbn_forward_train_f32(const float* x, float* y, const float* gamma, const float* beta,
                                        float* mean, float* var, int64_t outer, int64_t channels,
                                        int64_t inner, double eps);
FASTBN_API int fastbn_forward_train_f64(const double* x, double* y, const double* gamma, const double* beta,
                                        double* mean, double* var, int64_t outer, int64_t channels,
                                        int64_t inner, double eps);

/* Inference forward with given statistics (e.g. running averages): y = gamma * (x - mean) / sqrt(var + eps) + beta. */
FASTBN_API int fastbn_forward_infer_f32(const float* x, float* y, const float* mean, const float* var,
                                        const float* gamma, const float* beta, int64_t outer, int64_t channels,
                                        int64_t inner, double eps);
FASTBN_API int fastbn_forward_infer_f64(const double* x, double* y, const double* mean, const double* var,
                                        const double* gamma, const double* beta, int64_t outer,
                                        int64_t channels, int64_t inner, double eps);

/* Backward: dx (outer*channels*inner), dgamma and dbeta (channels; each may be NULL when not wanted).
 * batch_stats != 0: mean/var were the batch statistics of x (training); the gradient flows through them.
 * batch_stats == 0: mean/var were constants (eval mode): dx = gamma * dy / sqrt(var + eps). */
FASTBN_API int fastbn_backward_f32(const float* dy, const float* x, const float* mean, const float* var,
                                   const float* gamma, float* dx, float* dgamma, float* dbeta, int64_t outer,
                                   int64_t channels, int64_t inner, double eps, int batch_stats);
FASTBN_API int fastbn_backward_f64(const double* dy, const double* x, const double* mean, const double* var,
                                   const double* gamma, double* dx, double* dgamma, double* dbeta,
                                   int64_t outer, int64_t channels, int64_t inner, double eps, int batch_stats);

/* Half precision: bfloat16 (_bf16) and IEEE float16 (_f16) tensors as uint16_t, float parameters. */
FASTBN_API int fastbn_forward_train_bf16(const uint16_t* x, uint16_t* y, const float* gamma, const float* beta,
                                         float* mean, float* var, int64_t outer, int64_t channels, int64_t inner,
                                         double eps);
FASTBN_API int fastbn_forward_infer_bf16(const uint16_t* x, uint16_t* y, const float* mean, const float* var,
                                         const float* gamma, const float* beta, int64_t outer, int64_t channels,
                                         int64_t inner, double eps);
FASTBN_API int fastbn_backward_bf16(const uint16_t* dy, const uint16_t* x, const float* mean, const float* var,
                                    const float* gamma, uint16_t* dx, float* dgamma, float* dbeta, int64_t outer,
                                    int64_t channels, int64_t inner, double eps, int batch_stats);
FASTBN_API int fastbn_forward_train_f16(const uint16_t* x, uint16_t* y, const float* gamma, const float* beta,
                                         float* mean, float* var, int64_t outer, int64_t channels, int64_t inner,
                                         double eps);
FASTBN_API int fastbn_forward_infer_f16(const uint16_t* x, uint16_t* y, const float* mean, const float* var,
                                         const float* gamma, const float* beta, int64_t outer, int64_t channels,
                                         int64_t inner, double eps);
FASTBN_API int fastbn_backward_f16(const uint16_t* dy, const uint16_t* x, const float* mean, const float* var,
                                    const float* gamma, uint16_t* dx, float* dgamma, float* dbeta, int64_t outer,
                                    int64_t channels, int64_t inner, double eps, int batch_stats);

/* Fused epilogues (activation is a fastbn_activation; residual may be NULL):
 *   forward_train_fused / forward_infer_fused: y = act(gamma * xhat + beta + residual).
 *   backward_fused: y is the forward's output, needed with an activation (act' is taken from it) or when x is
 *   NULL; dresidual (may be NULL) receives dy * act'(.), the gradient of the residual. x == NULL recovers xhat
 *   from y ("in-place activated batch norm"): needs beta, gamma without zeros, an invertible activation (none,
 *   leaky_relu with negative_slope > 0, sigmoid) and a forward without residual. */
FASTBN_API int fastbn_forward_train_fused_f32(const float* x, const float* residual, float* y, const float* gamma,
                                               const float* beta, float* mean, float* var, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_forward_infer_fused_f32(const float* x, const float* residual, float* y, const float* mean,
                                               const float* var, const float* gamma, const float* beta, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_backward_fused_f32(const float* dy, const float* x, const float* y, const float* mean,
                                          const float* var, const float* gamma, const float* beta, float* dx,
                                          float* dresidual, float* dgamma, float* dbeta, int64_t outer, int64_t channels,
                                          int64_t inner, double eps, int batch_stats, int activation,
                                          double negative_slope);
FASTBN_API int fastbn_forward_train_fused_f64(const double* x, const double* residual, double* y, const double* gamma,
                                               const double* beta, double* mean, double* var, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_forward_infer_fused_f64(const double* x, const double* residual, double* y, const double* mean,
                                               const double* var, const double* gamma, const double* beta, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_backward_fused_f64(const double* dy, const double* x, const double* y, const double* mean,
                                          const double* var, const double* gamma, const double* beta, double* dx,
                                          double* dresidual, double* dgamma, double* dbeta, int64_t outer, int64_t channels,
                                          int64_t inner, double eps, int batch_stats, int activation,
                                          double negative_slope);
FASTBN_API int fastbn_forward_train_fused_bf16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* gamma,
                                               const float* beta, float* mean, float* var, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_forward_infer_fused_bf16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* mean,
                                               const float* var, const float* gamma, const float* beta, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_backward_fused_bf16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const float* mean,
                                          const float* var, const float* gamma, const float* beta, uint16_t* dx,
                                          uint16_t* dresidual, float* dgamma, float* dbeta, int64_t outer, int64_t channels,
                                          int64_t inner, double eps, int batch_stats, int activation,
                                          double negative_slope);
FASTBN_API int fastbn_forward_train_fused_f16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* gamma,
                                               const float* beta, float* mean, float* var, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_forward_infer_fused_f16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const float* mean,
                                               const float* var, const float* gamma, const float* beta, int64_t outer,
                                               int64_t channels, int64_t inner, double eps, int activation,
                                               double negative_slope);
FASTBN_API int fastbn_backward_fused_f16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const float* mean,
                                          const float* var, const float* gamma, const float* beta, uint16_t* dx,
                                          uint16_t* dresidual, float* dgamma, float* dbeta, int64_t outer, int64_t channels,
                                          int64_t inner, double eps, int batch_stats, int activation,
                                          double negative_slope);

/* The phases of a batch norm whose batch is split over processes (SyncBatchNorm); every process makes the same
 * calls and only the small per-channel double vectors travel between them:
 *   forward:  local_stats -> (gather over processes) -> merge_stats -> normalize (+ update_running_stats)
 *   backward: backward_reduce -> (sum over processes) -> backward_apply
 * local_stats: per-channel mean and M2 (sum of squared deviations) over outer * inner values.
 * merge_stats: `parts` partials (part p: count[p] values per channel, mean[p * channels + c], m2[...]) merged
 *   in the order given (Chan's formula), so every process gets the same bits; count-0 parts are skipped.
 * normalize: y = act(gamma * (x - mean) / sqrt(var + eps) + beta + residual) with given double statistics.
 * update_running_stats: running = (1 - momentum) * running + momentum * batch, unbiased var * count/(count-1).
 * backward_reduce: local sum_dy = sum(dz), sum_dy_xhat = sum(dz * xhat), dz = dy * act'(.); x, y as in
 *   backward_fused. backward_apply: dx (and dresidual) from the sums over all processes, `count` values. */
FASTBN_API int fastbn_merge_stats(int64_t parts, const double* count, const double* mean, const double* m2,
                                  int64_t channels, double* total_count, double* mean_out, double* m2_out);
FASTBN_API int fastbn_update_running_stats_f32(float* running_mean, float* running_var, const double* mean,
                                               const double* var, int64_t channels, double count, double momentum);
FASTBN_API int fastbn_update_running_stats_f64(double* running_mean, double* running_var, const double* mean,
                                               const double* var, int64_t channels, double count, double momentum);
FASTBN_API int fastbn_local_stats_f32(const float* x, double* mean, double* m2, int64_t outer, int64_t channels,
                                       int64_t inner);
FASTBN_API int fastbn_normalize_f32(const float* x, const float* residual, float* y, const double* mean, const double* var,
                                     const float* gamma, const float* beta, int64_t outer, int64_t channels, int64_t inner,
                                     double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_reduce_f32(const float* dy, const float* x, const float* y, const double* mean,
                                           const double* var, const float* gamma, const float* beta, double* sum_dy,
                                           double* sum_dy_xhat, int64_t outer, int64_t channels, int64_t inner,
                                           double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_apply_f32(const float* dy, const float* x, const float* y, const double* mean,
                                          const double* var, const float* gamma, const float* beta,
                                          const double* sum_dy, const double* sum_dy_xhat, double count, float* dx,
                                          float* dresidual, int64_t outer, int64_t channels, int64_t inner,
                                          double eps, int activation, double negative_slope);
FASTBN_API int fastbn_local_stats_f64(const double* x, double* mean, double* m2, int64_t outer, int64_t channels,
                                       int64_t inner);
FASTBN_API int fastbn_normalize_f64(const double* x, const double* residual, double* y, const double* mean, const double* var,
                                     const double* gamma, const double* beta, int64_t outer, int64_t channels, int64_t inner,
                                     double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_reduce_f64(const double* dy, const double* x, const double* y, const double* mean,
                                           const double* var, const double* gamma, const double* beta, double* sum_dy,
                                           double* sum_dy_xhat, int64_t outer, int64_t channels, int64_t inner,
                                           double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_apply_f64(const double* dy, const double* x, const double* y, const double* mean,
                                          const double* var, const double* gamma, const double* beta,
                                          const double* sum_dy, const double* sum_dy_xhat, double count, double* dx,
                                          double* dresidual, int64_t outer, int64_t channels, int64_t inner,
                                          double eps, int activation, double negative_slope);
FASTBN_API int fastbn_local_stats_bf16(const uint16_t* x, double* mean, double* m2, int64_t outer, int64_t channels,
                                       int64_t inner);
FASTBN_API int fastbn_normalize_bf16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const double* mean, const double* var,
                                     const float* gamma, const float* beta, int64_t outer, int64_t channels, int64_t inner,
                                     double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_reduce_bf16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const double* mean,
                                           const double* var, const float* gamma, const float* beta, double* sum_dy,
                                           double* sum_dy_xhat, int64_t outer, int64_t channels, int64_t inner,
                                           double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_apply_bf16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const double* mean,
                                          const double* var, const float* gamma, const float* beta,
                                          const double* sum_dy, const double* sum_dy_xhat, double count, uint16_t* dx,
                                          uint16_t* dresidual, int64_t outer, int64_t channels, int64_t inner,
                                          double eps, int activation, double negative_slope);
FASTBN_API int fastbn_local_stats_f16(const uint16_t* x, double* mean, double* m2, int64_t outer, int64_t channels,
                                       int64_t inner);
FASTBN_API int fastbn_normalize_f16(const uint16_t* x, const uint16_t* residual, uint16_t* y, const double* mean, const double* var,
                                     const float* gamma, const float* beta, int64_t outer, int64_t channels, int64_t inner,
                                     double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_reduce_f16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const double* mean,
                                           const double* var, const float* gamma, const float* beta, double* sum_dy,
                                           double* sum_dy_xhat, int64_t outer, int64_t channels, int64_t inner,
                                           double eps, int activation, double negative_slope);
FASTBN_API int fastbn_backward_apply_f16(const uint16_t* dy, const uint16_t* x, const uint16_t* y, const double* mean,
                                          const double* var, const float* gamma, const float* beta,
                                          const double* sum_dy, const double* sum_dy_xhat, double count, uint16_t* dx,
                                          uint16_t* dresidual, int64_t outer, int64_t channels, int64_t inner,
                                          double eps, int activation, double negative_slope);

/* A short English description of a status code; never NULL (unknown codes get "unknown fastbn status"). */
FASTBN_API const char* fastbn_status_string(int status);
/* The full message of the last failed call made by this thread ("" if none failed yet); never NULL. */
FASTBN_API const char* fastbn_last_error_message(void);

/* The most threads the CPU kernels accept. A memory-bound pass gains nothing from more, and far more (a typo
 * such as 4000) mostly meets an address-space or process limit, where OpenMP ends the process while creating
 * threads instead of returning an error. */
#define FASTBN_MAX_NUM_THREADS 1024

/* Threads used by the CPU kernels, 1..FASTBN_MAX_NUM_THREADS (default: OpenMP's maximum, i.e. OMP_NUM_THREADS
 * or the core count, capped at FASTBN_MAX_NUM_THREADS). fastbn_set_num_threads returns FASTBN_ERR_BAD_ARGUMENT
 * outside that range and changes nothing then.
 * After fork() the child runs the kernels on the calling thread only, because OpenMP's threads do not survive
 * fork (libgomp would wait for them forever): there fastbn_set_num_threads still checks and accepts n, and
 * fastbn_get_num_threads returns 1. A process that execs starts afresh and gets every thread again.
 * Run with GOMP_SPINCOUNT=2000 (the Python package sets it while OpenMP loads): libgomp's default lets idle
 * threads spin for milliseconds, and a spinning thread that shares a CPU with the one doing the work stalls
 * every call by a scheduler tick, while never spinning (OMP_WAIT_POLICY=passive) makes every multi-threaded
 * call pay a wake-up. A second thread joins from 256 KiB of x per thread (FASTBN_MIN_BYTES_PER_THREAD), or
 * from 3 MiB for 10 ms after a second thread took 0.1 ms or more to start (a crowded machine). */
FASTBN_API int fastbn_set_num_threads(int n);
FASTBN_API int fastbn_get_num_threads(void);

/* The library version ("0.2.0") and the instruction set the CPU kernels run with ("avx512_bf16", "avx512", "avx2",
   "scalar"). */
FASTBN_API const char* fastbn_version(void);
FASTBN_API const char* fastbn_simd(void);

/* CUDA: 1 when the library has CUDA compiled in and a device is usable, else 0. Never fails. */
FASTBN_API int fastbn_cuda_is_available(void);

FASTBN_API int fastbn_cuda_forward_train_f32(const float* x, float* y, const float* gamma, const float* beta,
                                             float* mean, float* var, int64_t outer, int64_t channels,
                                             int64_t inner, double eps, void* stream);
FASTBN_API int fastbn_cuda_forward_train_f64(const double* x, double* y, const double* gamma,
                                             const double* beta, double* mean, double* var, int64_t outer,
                                             int64_t channels, int64_t inner, double eps, void* stream);
FASTBN_API int fastbn_cuda_forward_infer_f32(const float* x, float* y, const float* mean, const float* var,
                                             const float* gamma, const float* beta, int64_t outer,
                                             int64_t channels, int64_t inner, double eps, void* stream);
FASTBN_API int fastbn_cuda_forward_infer_f64(const double* x, double* y, const double* mean, const double* var,
                                             const double* gamma, const double* beta, int64_t outer,
                                             int64_t channels, int64_t inner, double eps, void* stream);
FASTBN_API int fastbn_cuda_backward_f32(const float* dy, const float* x, const float* mean, const float* var,
                                        const float* gamma, float* dx, float* dgamma, float* dbeta,
                                        int64_t outer, int64_t channels, int64_t inner, double eps,
                                        int batch_stats, void* stream);
FASTBN_API int fastbn_cuda_backward_f64(const double* dy, const double* x, const double* mean,
                                        const double* var, const double* gamma, double* dx, double* dgamma,
                                        double* dbeta, int64_t outer, int64_t channels, int64_t inner,
                                        double eps, int batch_stats, void* stream);

#ifdef __cplusplus
} /* extern "C" */
#endif
