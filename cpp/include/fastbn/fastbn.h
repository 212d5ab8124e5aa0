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
 * Each f32 function has an _f64 twin taking double. The fastbn_cuda_* functions take DEVICE pointers and a
 * cudaStream_t passed as void* (NULL = the default stream); they return FASTBN_ERR_NO_CUDA when the library
 * was built without CUDA or no device is usable.
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
  FASTBN_ERR_BAD_ARGUMENT = 5,   /* any other invalid argument (e.g. thread count < 1) */
  FASTBN_ERR_OUT_OF_MEMORY = 6,  /* a workspace allocation failed */
  FASTBN_ERR_NO_CUDA = 7,        /* CUDA not compiled in, or no usable device */
  FASTBN_ERR_CUDA = 8,           /* a CUDA runtime call failed */
  FASTBN_ERR_INTERNAL = 9        /* a bug: please report it */
} fastbn_status;

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

/* A short English description of a status code; never NULL (unknown codes get "unknown fastbn status"). */
FASTBN_API const char* fastbn_status_string(int status);
/* The full message of the last failed call made by this thread ("" if none failed yet); never NULL. */
FASTBN_API const char* fastbn_last_error_message(void);

/* Threads used by the CPU kernels (default: OpenMP's maximum, i.e. OMP_NUM_THREADS or the core count).
 * fastbn_set_num_threads returns FASTBN_ERR_BAD_ARGUMENT for n < 1. */
FASTBN_API int fastbn_set_num_threads(int n);
FASTBN_API int fastbn_get_num_threads(void);

/* The library version ("0.1.0") and the instruction set the CPU kernels run with ("avx512", "avx2", "scalar"). */
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
