// The C ABI: every entry point turns the C++ API's exceptions into status codes, so nothing ever unwinds into
// C or aborts the process.
#include <new>
#include <string>

#include "fastbn/batchnorm.hpp"
#include "fastbn/cuda.hpp"
#include "fastbn/fastbn.h"

namespace {

thread_local std::string g_last_error;

template <class F>
int guard(F&& f) noexcept {
  try {
    f();
    return FASTBN_OK;
  } catch (const fastbn::Error& e) {
    g_last_error = e.what();
    return static_cast<int>(e.status());
  } catch (const std::bad_alloc&) {
    g_last_error = "fastbn: out of memory";
    return FASTBN_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return FASTBN_ERR_INTERNAL;
  } catch (...) {
    g_last_error = "fastbn: unknown internal error";
    return FASTBN_ERR_INTERNAL;
  }
}

fastbn::Shape shape(int64_t outer, int64_t channels, int64_t inner) { return {outer, channels, inner}; }

}  // namespace

extern "C" {

int fastbn_forward_train_f32(const float* x, float* y, const float* gamma, const float* beta, float* mean,
                             float* var, int64_t outer, int64_t channels, int64_t inner, double eps) {
  return guard([&] { fastbn::forward_train(x, y, gamma, beta, mean, var, shape(outer, channels, inner), eps); });
}
int fastbn_forward_train_f64(const double* x, double* y, const double* gamma, const double* beta, double* mean,
                             double* var, int64_t outer, int64_t channels, int64_t inner, double eps) {
  return guard([&] { fastbn::forward_train(x, y, gamma, beta, mean, var, shape(outer, channels, inner), eps); });
}

int fastbn_forward_infer_f32(const float* x, float* y, const float* mean, const float* var, const float* gamma,
                             const float* beta, int64_t outer, int64_t channels, int64_t inner, double eps) {
  return guard([&] { fastbn::forward_infer(x, y, mean, var, gamma, beta, shape(outer, channels, inner), eps); });
}
int fastbn_forward_infer_f64(const double* x, double* y, const double* mean, const double* var,
                             const double* gamma, const double* beta, int64_t outer, int64_t channels,
                             int64_t inner, double eps) {
  return guard([&] { fastbn::forward_infer(x, y, mean, var, gamma, beta, shape(outer, channels, inner), eps); });
}

int fastbn_backward_f32(const float* dy, const float* x, const float* mean, const float* var, const float* gamma,
                        float* dx, float* dgamma, float* dbeta, int64_t outer, int64_t channels, int64_t inner,
                        double eps, int batch_stats) {
  return guard([&] {
    fastbn::backward(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape(outer, channels, inner), eps,
                     batch_stats != 0);
  });
}
int fastbn_backward_f64(const double* dy, const double* x, const double* mean, const double* var,
                        const double* gamma, double* dx, double* dgamma, double* dbeta, int64_t outer,
                        int64_t channels, int64_t inner, double eps, int batch_stats) {
  return guard([&] {
    fastbn::backward(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape(outer, channels, inner), eps,
                     batch_stats != 0);
  });
}

const char* fastbn_status_string(int status) {
  switch (status) {
    case FASTBN_OK:
      return "success";
    case FASTBN_ERR_NULL_POINTER:
      return "a required pointer was NULL";
    case FASTBN_ERR_BAD_SHAPE:
      return "bad shape: outer, channels and inner must be >= 1 and their product must fit in int64";
    case FASTBN_ERR_BAD_EPS:
      return "eps must be a finite number > 0";
    case FASTBN_ERR_TOO_FEW_VALUES:
      return "training needs more than 1 value per channel";
    case FASTBN_ERR_BAD_ARGUMENT:
      return "invalid argument";
    case FASTBN_ERR_OUT_OF_MEMORY:
      return "out of memory";
    case FASTBN_ERR_NO_CUDA:
      return "CUDA is not available (not compiled in, or no usable device)";
    case FASTBN_ERR_CUDA:
      return "a CUDA runtime call failed";
    case FASTBN_ERR_INTERNAL:
      return "internal error in fastbn";
    default:
      return "unknown fastbn status";
  }
}

const char* fastbn_last_error_message(void) { return g_last_error.c_str(); }

int fastbn_set_num_threads(int n) { return guard([&] { fastbn::set_num_threads(n); }); }
int fastbn_get_num_threads(void) { return fastbn::get_num_threads(); }

const char* fastbn_version(void) { return fastbn::build_info().version; }
const char* fastbn_simd(void) { return fastbn::simd(); }

int fastbn_cuda_is_available(void) { return fastbn::cuda::is_available() ? 1 : 0; }

int fastbn_cuda_forward_train_f32(const float* x, float* y, const float* gamma, const float* beta, float* mean,
                                  float* var, int64_t outer, int64_t channels, int64_t inner, double eps,
                                  void* stream) {
  return guard([&] {
    fastbn::cuda::forward_train(x, y, gamma, beta, mean, var, shape(outer, channels, inner), eps, stream);
  });
}
int fastbn_cuda_forward_train_f64(const double* x, double* y, const double* gamma, const double* beta,
                                  double* mean, double* var, int64_t outer, int64_t channels, int64_t inner,
                                  double eps, void* stream) {
  return guard([&] {
    fastbn::cuda::forward_train(x, y, gamma, beta, mean, var, shape(outer, channels, inner), eps, stream);
  });
}
int fastbn_cuda_forward_infer_f32(const float* x, float* y, const float* mean, const float* var,
                                  const float* gamma, const float* beta, int64_t outer, int64_t channels,
                                  int64_t inner, double eps, void* stream) {
  return guard([&] {
    fastbn::cuda::forward_infer(x, y, mean, var, gamma, beta, shape(outer, channels, inner), eps, stream);
  });
}
int fastbn_cuda_forward_infer_f64(const double* x, double* y, const double* mean, const double* var,
                                  const double* gamma, const double* beta, int64_t outer, int64_t channels,
                                  int64_t inner, double eps, void* stream) {
  return guard([&] {
    fastbn::cuda::forward_infer(x, y, mean, var, gamma, beta, shape(outer, channels, inner), eps, stream);
  });
}
int fastbn_cuda_backward_f32(const float* dy, const float* x, const float* mean, const float* var,
                             const float* gamma, float* dx, float* dgamma, float* dbeta, int64_t outer,
                             int64_t channels, int64_t inner, double eps, int batch_stats, void* stream) {
  return guard([&] {
    fastbn::cuda::backward(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape(outer, channels, inner), eps,
                           batch_stats != 0, stream);
  });
}
int fastbn_cuda_backward_f64(const double* dy, const double* x, const double* mean, const double* var,
                             const double* gamma, double* dx, double* dgamma, double* dbeta, int64_t outer,
                             int64_t channels, int64_t inner, double eps, int batch_stats, void* stream) {
  return guard([&] {
    fastbn::cuda::backward(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape(outer, channels, inner), eps,
                           batch_stats != 0, stream);
  });
}

}  // extern "C"
