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

fastbn::Fusion fusion(int activation, double negative_slope) {
  return {static_cast<fastbn::Activation>(activation), negative_slope};
}

// The C ABI's half-precision tensors are uint16_t bit patterns; the C++ API's are these one-member structs.
template <class T>
struct Tensor {
  using type = T;
};
template <>
struct Tensor<fastbn::bfloat16> {
  using type = uint16_t;
};
template <>
struct Tensor<fastbn::float16> {
  using type = uint16_t;
};

template <class T>
const T* as(const typename Tensor<T>::type* p) {
  return reinterpret_cast<const T*>(p);
}
template <class T>
T* as(typename Tensor<T>::type* p) {
  return reinterpret_cast<T*>(p);
}

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

// Every typed entry point of the C ABI for one tensor type T (uint16_t bit patterns in C for the halves).
#define FASTBN_C_TYPED(sfx, T)                                                                                     \
  int fastbn_forward_train_fused_##sfx(const Tensor<T>::type* x, const Tensor<T>::type* residual,                 \
                                       Tensor<T>::type* y, const fastbn::param_t<T>* gamma,                       \
                                       const fastbn::param_t<T>* beta, fastbn::param_t<T>* mean,                  \
                                       fastbn::param_t<T>* var, int64_t outer, int64_t channels, int64_t inner,   \
                                       double eps, int activation, double negative_slope) {                       \
    return guard([&] {                                                                                            \
      fastbn::forward_train(as<T>(x), as<T>(residual), as<T>(y), gamma, beta, mean, var,                          \
                            shape(outer, channels, inner), eps, fusion(activation, negative_slope));              \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_forward_infer_fused_##sfx(const Tensor<T>::type* x, const Tensor<T>::type* residual,                 \
                                       Tensor<T>::type* y, const fastbn::param_t<T>* mean,                        \
                                       const fastbn::param_t<T>* var, const fastbn::param_t<T>* gamma,            \
                                       const fastbn::param_t<T>* beta, int64_t outer, int64_t channels,           \
                                       int64_t inner, double eps, int activation, double negative_slope) {        \
    return guard([&] {                                                                                            \
      fastbn::forward_infer(as<T>(x), as<T>(residual), as<T>(y), mean, var, gamma, beta,                          \
                            shape(outer, channels, inner), eps, fusion(activation, negative_slope));              \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_backward_fused_##sfx(const Tensor<T>::type* dy, const Tensor<T>::type* x, const Tensor<T>::type* y,  \
                                  const fastbn::param_t<T>* mean, const fastbn::param_t<T>* var,                  \
                                  const fastbn::param_t<T>* gamma, const fastbn::param_t<T>* beta,                \
                                  Tensor<T>::type* dx, Tensor<T>::type* dresidual, fastbn::param_t<T>* dgamma,    \
                                  fastbn::param_t<T>* dbeta, int64_t outer, int64_t channels, int64_t inner,      \
                                  double eps, int batch_stats, int activation, double negative_slope) {           \
    return guard([&] {                                                                                            \
      fastbn::backward(as<T>(dy), as<T>(x), as<T>(y), mean, var, gamma, beta, as<T>(dx), as<T>(dresidual),        \
                       dgamma, dbeta, shape(outer, channels, inner), eps, batch_stats != 0,                       \
                       fusion(activation, negative_slope));                                                       \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_local_stats_##sfx(const Tensor<T>::type* x, double* mean, double* m2, int64_t outer,                 \
                               int64_t channels, int64_t inner) {                                                 \
    return guard([&] { fastbn::local_stats(as<T>(x), mean, m2, shape(outer, channels, inner)); });                \
  }                                                                                                               \
  int fastbn_normalize_##sfx(const Tensor<T>::type* x, const Tensor<T>::type* residual, Tensor<T>::type* y,       \
                             const double* mean, const double* var, const fastbn::param_t<T>* gamma,              \
                             const fastbn::param_t<T>* beta, int64_t outer, int64_t channels, int64_t inner,      \
                             double eps, int activation, double negative_slope) {                                 \
    return guard([&] {                                                                                            \
      fastbn::normalize(as<T>(x), as<T>(residual), as<T>(y), mean, var, gamma, beta,                              \
                        shape(outer, channels, inner), eps, fusion(activation, negative_slope));                  \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_backward_reduce_##sfx(const Tensor<T>::type* dy, const Tensor<T>::type* x,                           \
                                   const Tensor<T>::type* y, const double* mean, const double* var,               \
                                   const fastbn::param_t<T>* gamma, const fastbn::param_t<T>* beta,               \
                                   double* sum_dy, double* sum_dy_xhat, int64_t outer, int64_t channels,          \
                                   int64_t inner, double eps, int activation, double negative_slope) {            \
    return guard([&] {                                                                                            \
      fastbn::backward_reduce(as<T>(dy), as<T>(x), as<T>(y), mean, var, gamma, beta, sum_dy, sum_dy_xhat,         \
                              shape(outer, channels, inner), eps, fusion(activation, negative_slope));            \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_backward_apply_##sfx(const Tensor<T>::type* dy, const Tensor<T>::type* x, const Tensor<T>::type* y,  \
                                  const double* mean, const double* var, const fastbn::param_t<T>* gamma,         \
                                  const fastbn::param_t<T>* beta, const double* sum_dy,                           \
                                  const double* sum_dy_xhat, double count, Tensor<T>::type* dx,                   \
                                  Tensor<T>::type* dresidual, int64_t outer, int64_t channels, int64_t inner,     \
                                  double eps, int activation, double negative_slope) {                            \
    return guard([&] {                                                                                            \
      fastbn::backward_apply(as<T>(dy), as<T>(x), as<T>(y), mean, var, gamma, beta, sum_dy, sum_dy_xhat, count,   \
                             as<T>(dx), as<T>(dresidual), shape(outer, channels, inner), eps,                     \
                             fusion(activation, negative_slope));                                                 \
    });                                                                                                           \
  }

// The plain passes of the half types (float and double have theirs written out above).
#define FASTBN_C_HALF(sfx, T)                                                                                      \
  int fastbn_forward_train_##sfx(const uint16_t* x, uint16_t* y, const float* gamma, const float* beta,           \
                                 float* mean, float* var, int64_t outer, int64_t channels, int64_t inner,         \
                                 double eps) {                                                                    \
    return guard([&] {                                                                                            \
      fastbn::forward_train(as<T>(x), as<T>(y), gamma, beta, mean, var, shape(outer, channels, inner), eps);      \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_forward_infer_##sfx(const uint16_t* x, uint16_t* y, const float* mean, const float* var,             \
                                 const float* gamma, const float* beta, int64_t outer, int64_t channels,          \
                                 int64_t inner, double eps) {                                                     \
    return guard([&] {                                                                                            \
      fastbn::forward_infer(as<T>(x), as<T>(y), mean, var, gamma, beta, shape(outer, channels, inner), eps);      \
    });                                                                                                           \
  }                                                                                                               \
  int fastbn_backward_##sfx(const uint16_t* dy, const uint16_t* x, const float* mean, const float* var,           \
                            const float* gamma, uint16_t* dx, float* dgamma, float* dbeta, int64_t outer,         \
                            int64_t channels, int64_t inner, double eps, int batch_stats) {                       \
    return guard([&] {                                                                                            \
      fastbn::backward(as<T>(dy), as<T>(x), mean, var, gamma, as<T>(dx), dgamma, dbeta,                           \
                       shape(outer, channels, inner), eps, batch_stats != 0);                                     \
    });                                                                                                           \
  }

FASTBN_C_TYPED(f32, float)
FASTBN_C_TYPED(f64, double)
FASTBN_C_TYPED(bf16, fastbn::bfloat16)
FASTBN_C_TYPED(f16, fastbn::float16)
FASTBN_C_HALF(bf16, fastbn::bfloat16)
FASTBN_C_HALF(f16, fastbn::float16)
#undef FASTBN_C_TYPED
#undef FASTBN_C_HALF

int fastbn_merge_stats(int64_t parts, const double* count, const double* mean, const double* m2, int64_t channels,
                       double* total_count, double* mean_out, double* m2_out) {
  return guard([&] { fastbn::merge_stats(parts, count, mean, m2, channels, total_count, mean_out, m2_out); });
}
int fastbn_update_running_stats_f32(float* running_mean, float* running_var, const double* mean, const double* var,
                                    int64_t channels, double count, double momentum) {
  return guard([&] {
    fastbn::update_running_stats(running_mean, running_var, mean, var, channels, count, momentum);
  });
}
int fastbn_update_running_stats_f64(double* running_mean, double* running_var, const double* mean,
                                    const double* var, int64_t channels, double count, double momentum) {
  return guard([&] {
    fastbn::update_running_stats(running_mean, running_var, mean, var, channels, count, momentum);
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
