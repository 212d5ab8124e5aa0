// The front of the CPU path: argument checks, then dispatch to the active kernel table. Nothing is written
// before every check has passed.
#include "fastbn/batchnorm.hpp"

#include <cmath>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "checks.hpp"
#include "cpu/kernels.hpp"

namespace fastbn {

Error::Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}

namespace {

// The settings for a call on tensors of shape s that writes `outputs` of them (the streaming threshold may depend on
// their size). Outputs stream when the call writes at least the threshold in all: the kernels compare one tensor's
// bytes with it, so it is divided among the outputs. A fused backward that also writes dresidual writes twice a
// plain one's bytes, which do not stay in the caches for the next layer any more than one output of that size
// does; with ordinary stores its two store streams ran 2.1-2.3x slower than streamed on the 2-vCPU Xeon VM (64x256x7x7,
// 3.2 MB each, one thread: channels-last 2833 against 1306 us, NCHW 3886 against 1429 us; 2 threads 1557 against 896).
template <class T>
cpu::Exec exec(const Shape& s, int outputs = 1) {
  const int64_t bytes = s.outer * s.channels * s.inner * static_cast<int64_t>(sizeof(T));
  cpu::Exec ex = cpu::exec_here(bytes * outputs);
  ex.stream_min_bytes = (ex.stream_min_bytes + outputs - 1) / outputs;
  return ex;
}

template <class F>
void run(F&& f) {
  try {
    f();
  } catch (const std::bad_alloc&) {
    throw Error(Status::out_of_memory, "fastbn: out of memory allocating the kernel workspace");
  }
}

template <class T>
const cpu::Kernels<T>& kernels() {
  return cpu::kernels_of<T>(cpu::active());
}

cpu::Epilogue epilogue(const Fusion& f) {
  return {static_cast<cpu::Act>(f.activation), f.negative_slope};
}

// Statistics given as float (or double) arrays, widened to double for the kernels: two per-thread buffers
// reused across calls.
template <class P>
struct Widened {
  const double* mean;
  const double* var;
};

template <class P>
Widened<P> widen(const P* mean, const P* var, int64_t channels) {
  if constexpr (std::is_same<P, double>::value) {
    (void)channels;
    return {mean, var};
  } else {
    static thread_local std::vector<double> m, v;
    run([&] {
      m.assign(mean, mean + channels);
      v.assign(var, var + channels);
    });
    return {m.data(), v.data()};
  }
}

// The checks of a backward's pointers and activation (shared by backward, backward_reduce, backward_apply).
template <class T>
void backward_inputs(const T* x, const T* y, const param_t<T>* gamma, const param_t<T>* beta, const Shape& s,
                     const Fusion& f) {
  checks::fusion(static_cast<int>(f.activation), f.negative_slope);
  const bool act = f.activation != Activation::none;
  if (act && !y) {
    throw Error(Status::null_pointer,
                "fastbn: the backward of a fused activation takes act' from the forward's output: y must not be "
                "null");
  }
  if (f.activation == Activation::leaky_relu && f.negative_slope < 0) {
    throw Error(Status::bad_argument,
                "fastbn: the backward of leaky_relu needs negative_slope >= 0 (with a negative slope the sign of "
                "the input cannot be read from the output), got " +
                    std::to_string(f.negative_slope));
  }
  if (x) return;
  // xhat from y: y must be invertible.
  if (!y) throw Error(Status::null_pointer, "fastbn: backward needs x, or y to recover xhat from; both are null");
  if (f.activation == Activation::relu ||
      (f.activation == Activation::leaky_relu && !(f.negative_slope > 0))) {
    throw Error(Status::bad_argument,
                "fastbn: xhat cannot be recovered from the output of relu (or leaky_relu with negative_slope <= 0): "
                "it is not invertible; pass x");
  }
  if (!beta) {
    throw Error(Status::null_pointer, "fastbn: recovering xhat from y needs beta (pass zeros for none)");
  }
  if (gamma) {
    for (int64_t c = 0; c < s.channels; ++c) {
      if (!(gamma[c] != 0)) {
        throw Error(Status::bad_argument, "fastbn: recovering xhat from y needs gamma without zeros; gamma[" +
                                              std::to_string(c) + "] is " + std::to_string(gamma[c]));
      }
    }
  }
}

}  // namespace

template <class T>
void forward_train(const T* x, const same_t<T>* residual, same_t<T>* y, const param_t<T>* gamma, const param_t<T>* beta,
                   param_t<T>* mean, param_t<T>* var, const Shape& s, double eps, const Fusion& f) {
  checks::train_args(x, y, mean, var, s, eps);
  checks::fusion(static_cast<int>(f.activation), f.negative_slope);
  const cpu::TrainArgs<T> a{x, residual, y, gamma, beta, mean, var, s.outer, s.channels, s.inner, eps, epilogue(f)};
  run([&] { kernels<T>().train(a, exec<T>(s)); });
}

template <class T>
void forward_train(const T* x, same_t<T>* y, const param_t<T>* gamma, const param_t<T>* beta, param_t<T>* mean,
                   param_t<T>* var, const Shape& s, double eps) {
  forward_train(x, static_cast<const T*>(nullptr), y, gamma, beta, mean, var, s, eps, Fusion{});
}

template <class T>
void normalize(const T* x, const same_t<T>* residual, same_t<T>* y, const double* mean, const double* var, const param_t<T>* gamma,
               const param_t<T>* beta, const Shape& s, double eps, const Fusion& f) {
  checks::infer_args(x, y, mean, var, s, eps);
  checks::fusion(static_cast<int>(f.activation), f.negative_slope);
  const cpu::ApplyArgs<T> a{x, residual, y, mean, var, gamma, beta, s.outer, s.channels, s.inner, eps, epilogue(f)};
  run([&] { kernels<T>().apply(a, exec<T>(s)); });
}

template <class T>
void forward_infer(const T* x, const same_t<T>* residual, same_t<T>* y, const param_t<T>* mean, const param_t<T>* var,
                   const param_t<T>* gamma, const param_t<T>* beta, const Shape& s, double eps, const Fusion& f) {
  checks::infer_args(x, y, mean, var, s, eps);
  const Widened<param_t<T>> w = widen(mean, var, s.channels);
  normalize(x, residual, y, w.mean, w.var, gamma, beta, s, eps, f);
}

template <class T>
void forward_infer(const T* x, same_t<T>* y, const param_t<T>* mean, const param_t<T>* var, const param_t<T>* gamma,
                   const param_t<T>* beta, const Shape& s, double eps) {
  forward_infer(x, static_cast<const T*>(nullptr), y, mean, var, gamma, beta, s, eps, Fusion{});
}

template <class T>
void backward(const T* dy, const same_t<T>* x, const same_t<T>* y, const param_t<T>* mean, const param_t<T>* var,
              const param_t<T>* gamma, const param_t<T>* beta, same_t<T>* dx, same_t<T>* dresidual, param_t<T>* dgamma,
              param_t<T>* dbeta, const Shape& s, double eps, bool batch_stats, const Fusion& f) {
  checks::require(dy, "dy");
  checks::require(mean, "mean");
  checks::require(var, "var");
  checks::require(dx, "dx");
  checks::shape(s);
  checks::eps(eps);
  backward_inputs(x, y, gamma, beta, s, f);
  const Widened<param_t<T>> w = widen(mean, var, s.channels);
  const cpu::BackwardArgs<T> a{dy,        x,         y,     w.mean,    w.var,      gamma,      beta,
                               dx,        dresidual, dgamma, dbeta,    s.outer,    s.channels, s.inner,
                               eps,       batch_stats, epilogue(f), cpu::Phase::full, nullptr, nullptr, 0.0};
  run([&] { kernels<T>().backward(a, exec<T>(s, dresidual ? 2 : 1)); });
}

template <class T>
void backward(const T* dy, const same_t<T>* x, const param_t<T>* mean, const param_t<T>* var, const param_t<T>* gamma,
              same_t<T>* dx, param_t<T>* dgamma, param_t<T>* dbeta, const Shape& s, double eps, bool batch_stats) {
  checks::require(x, "x");
  backward(dy, x, static_cast<const T*>(nullptr), mean, var, gamma, static_cast<const param_t<T>*>(nullptr), dx,
           static_cast<T*>(nullptr), dgamma, dbeta, s, eps, batch_stats, Fusion{});
}

template <class T>
void local_stats(const T* x, double* mean, double* m2, const Shape& s) {
  checks::require(x, "x");
  checks::require(mean, "mean");
  checks::require(m2, "m2");
  checks::shape(s);
  const cpu::StatsArgs<T> a{x, mean, m2, s.outer, s.channels, s.inner};
  run([&] { kernels<T>().stats(a, exec<T>(s)); });
}

void merge_stats(int64_t parts, const double* count, const double* mean, const double* m2, int64_t channels,
                 double* total_count, double* mean_out, double* m2_out) {
  checks::require(total_count, "total_count");
  checks::require(mean_out, "mean_out");
  checks::require(m2_out, "m2_out");
  if (parts < 0 || channels < 1) {
    throw Error(Status::bad_argument, "fastbn: merge_stats needs parts >= 0 and channels >= 1, got parts=" +
                                          std::to_string(parts) + ", channels=" + std::to_string(channels));
  }
  if (parts > 0) {
    checks::require(count, "count");
    checks::require(mean, "mean");
    checks::require(m2, "m2");
  }
  for (int64_t p = 0; p < parts; ++p) {
    if (!(count[p] >= 0) || !std::isfinite(count[p])) {
      throw Error(Status::bad_argument, "fastbn: merge_stats: count[" + std::to_string(p) +
                                            "] must be a finite number >= 0, got " + std::to_string(count[p]));
    }
  }
  // Chan et al., in the order of the parts; the first non-empty part is copied, so a single part passes through
  // unchanged.
  double n = 0;
  for (int64_t p = 0; p < parts; ++p) {
    const double nb = count[p];
    if (nb == 0) continue;
    const double* mb = mean + p * channels;
    const double* qb = m2 + p * channels;
    if (n == 0) {
      for (int64_t c = 0; c < channels; ++c) {
        mean_out[c] = mb[c];
        m2_out[c] = qb[c];
      }
    } else {
      const double total = n + nb, f = nb / total;
      for (int64_t c = 0; c < channels; ++c) {
        const double delta = mb[c] - mean_out[c];
        mean_out[c] += delta * f;
        m2_out[c] += qb[c] + delta * delta * n * f;
      }
    }
    n += nb;
  }
  if (n == 0) {
    for (int64_t c = 0; c < channels; ++c) mean_out[c] = m2_out[c] = 0;
  }
  *total_count = n;
}

template <class T>
void update_running_stats(T* running_mean, same_t<T>* running_var, const double* mean, const double* var, int64_t channels,
                          double count, double momentum) {
  checks::require(running_mean, "running_mean");
  checks::require(running_var, "running_var");
  checks::require(mean, "mean");
  checks::require(var, "var");
  if (channels < 1) throw Error(Status::bad_shape, "fastbn: channels must be >= 1, got " + std::to_string(channels));
  if (!(count > 1)) {
    throw Error(Status::too_few_values,
                "fastbn: the unbiased variance needs more than 1 value per channel, got count " + std::to_string(count));
  }
  if (!(momentum >= 0 && momentum <= 1)) {
    throw Error(Status::bad_argument, "fastbn: momentum must be in [0, 1], got " + std::to_string(momentum));
  }
  const double unbias = count / (count - 1);
  for (int64_t c = 0; c < channels; ++c) {
    running_mean[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_mean[c]) + momentum * mean[c]);
    running_var[c] = static_cast<T>((1 - momentum) * static_cast<double>(running_var[c]) + momentum * var[c] * unbias);
  }
}

template <class T>
void backward_reduce(const T* dy, const same_t<T>* x, const same_t<T>* y, const double* mean, const double* var,
                     const param_t<T>* gamma, const param_t<T>* beta, double* sum_dy, double* sum_dy_xhat,
                     const Shape& s, double eps, const Fusion& f) {
  checks::require(dy, "dy");
  checks::require(mean, "mean");
  checks::require(var, "var");
  checks::require(sum_dy, "sum_dy");
  checks::require(sum_dy_xhat, "sum_dy_xhat");
  checks::shape(s);
  checks::eps(eps);
  backward_inputs(x, y, gamma, beta, s, f);
  const cpu::BackwardArgs<T> a{dy,     x,         y,       mean,   var,       gamma,      beta,
                               nullptr, nullptr,  nullptr, nullptr, s.outer,  s.channels, s.inner,
                               eps,    true,      epilogue(f), cpu::Phase::reduce, sum_dy, sum_dy_xhat, 0.0};
  run([&] { kernels<T>().backward(a, exec<T>(s)); });
}

template <class T>
void backward_apply(const T* dy, const same_t<T>* x, const same_t<T>* y, const double* mean, const double* var,
                    const param_t<T>* gamma, const param_t<T>* beta, const double* sum_dy, const double* sum_dy_xhat,
                    double count, same_t<T>* dx, same_t<T>* dresidual, const Shape& s, double eps, const Fusion& f) {
  checks::require(dy, "dy");
  checks::require(mean, "mean");
  checks::require(var, "var");
  checks::require(sum_dy, "sum_dy");
  checks::require(sum_dy_xhat, "sum_dy_xhat");
  checks::require(dx, "dx");
  checks::shape(s);
  checks::eps(eps);
  if (!(count >= 1) || !std::isfinite(count)) {
    throw Error(Status::bad_argument, "fastbn: backward_apply needs the global count of values per channel (>= 1), "
                                      "got " + std::to_string(count));
  }
  backward_inputs(x, y, gamma, beta, s, f);
  const cpu::BackwardArgs<T> a{dy,  x,         y,      mean,    var,     gamma,      beta,
                               dx,  dresidual, nullptr, nullptr, s.outer, s.channels, s.inner,
                               eps, true,      epilogue(f), cpu::Phase::apply,
                               const_cast<double*>(sum_dy), const_cast<double*>(sum_dy_xhat), count};
  run([&] { kernels<T>().backward(a, exec<T>(s, dresidual ? 2 : 1)); });
}

// ---------------------------------------------------------------------------------------------------------
// Explicit instantiations: the library's exported API

#define FASTBN_INSTANTIATE(T)                                                                                     \
  template FASTBN_API void forward_train<T>(const T*, T*, const param_t<T>*, const param_t<T>*, param_t<T>*,        \
                                            param_t<T>*, const Shape&, double);                                     \
  template FASTBN_API void forward_train<T>(const T*, const T*, T*, const param_t<T>*, const param_t<T>*,           \
                                            param_t<T>*, param_t<T>*, const Shape&, double, const Fusion&);         \
  template FASTBN_API void forward_infer<T>(const T*, T*, const param_t<T>*, const param_t<T>*, const param_t<T>*,  \
                                            const param_t<T>*, const Shape&, double);                               \
  template FASTBN_API void forward_infer<T>(const T*, const T*, T*, const param_t<T>*, const param_t<T>*,           \
                                            const param_t<T>*, const param_t<T>*, const Shape&, double,             \
                                            const Fusion&);                                                         \
  template FASTBN_API void backward<T>(const T*, const T*, const param_t<T>*, const param_t<T>*, const param_t<T>*, \
                                       T*, param_t<T>*, param_t<T>*, const Shape&, double, bool);                   \
  template FASTBN_API void backward<T>(const T*, const T*, const T*, const param_t<T>*, const param_t<T>*,          \
                                       const param_t<T>*, const param_t<T>*, T*, T*, param_t<T>*, param_t<T>*,      \
                                       const Shape&, double, bool, const Fusion&);                                  \
  template FASTBN_API void local_stats<T>(const T*, double*, double*, const Shape&);                                \
  template FASTBN_API void normalize<T>(const T*, const T*, T*, const double*, const double*, const param_t<T>*,    \
                                        const param_t<T>*, const Shape&, double, const Fusion&);                    \
  template FASTBN_API void backward_reduce<T>(const T*, const T*, const T*, const double*, const double*,           \
                                              const param_t<T>*, const param_t<T>*, double*, double*, const Shape&, \
                                              double, const Fusion&);                                               \
  template FASTBN_API void backward_apply<T>(const T*, const T*, const T*, const double*, const double*,            \
                                             const param_t<T>*, const param_t<T>*, const double*, const double*,    \
                                             double, T*, T*, const Shape&, double, const Fusion&);

FASTBN_INSTANTIATE(float)
FASTBN_INSTANTIATE(double)
FASTBN_INSTANTIATE(bfloat16)
FASTBN_INSTANTIATE(float16)
#undef FASTBN_INSTANTIATE

template FASTBN_API void update_running_stats<float>(float*, float*, const double*, const double*, int64_t, double,
                                                     double);
template FASTBN_API void update_running_stats<double>(double*, double*, const double*, const double*, int64_t,
                                                      double, double);

}  // namespace fastbn
