// The front of the CPU path: argument checks, then dispatch to the active kernel table. Nothing is written
// before every check has passed.
#include "fastbn/batchnorm.hpp"

#include <new>

#include "checks.hpp"
#include "cpu/kernels.hpp"

namespace fastbn {

Error::Error(Status status, const std::string& message) : std::runtime_error(message), status_(status) {}

namespace {

cpu::Exec exec() {
  static thread_local cpu::Workspace workspace;
  return {get_num_threads(), &workspace, cpu::core_cache_bytes()};
}

const cpu::Kernels<float>& kernels(const cpu::KernelTable& t, float) { return t.f32; }
const cpu::Kernels<double>& kernels(const cpu::KernelTable& t, double) { return t.f64; }

template <class F>
void run(F&& f) {
  try {
    f();
  } catch (const std::bad_alloc&) {
    throw Error(Status::out_of_memory, "fastbn: out of memory allocating the kernel workspace");
  }
}

template <class T>
void train_impl(const T* x, T* y, const T* gamma, const T* beta, T* mean, T* var, const Shape& s, double eps) {
  checks::train_args(x, y, mean, var, s, eps);
  const cpu::TrainArgs<T> a{x, y, gamma, beta, mean, var, s.outer, s.channels, s.inner, eps};
  run([&] { kernels(cpu::active(), T()).train(a, exec()); });
}

template <class T>
void infer_impl(const T* x, T* y, const T* mean, const T* var, const T* gamma, const T* beta, const Shape& s,
                double eps) {
  checks::infer_args(x, y, mean, var, s, eps);
  const cpu::InferArgs<T> a{x, y, mean, var, gamma, beta, s.outer, s.channels, s.inner, eps};
  run([&] { kernels(cpu::active(), T()).infer(a, exec()); });
}

template <class T>
void backward_impl(const T* dy, const T* x, const T* mean, const T* var, const T* gamma, T* dx, T* dgamma,
                   T* dbeta, const Shape& s, double eps, bool batch_stats) {
  checks::backward_args(dy, x, mean, var, dx, s, eps);
  const cpu::BackwardArgs<T> a{dy,     x,       mean,    var,   gamma, dx, dgamma, dbeta, s.outer, s.channels,
                               s.inner, eps, batch_stats};
  run([&] { kernels(cpu::active(), T()).backward(a, exec()); });
}

}  // namespace

void forward_train(const float* x, float* y, const float* gamma, const float* beta, float* mean, float* var,
                   const Shape& shape, double eps) {
  train_impl(x, y, gamma, beta, mean, var, shape, eps);
}
void forward_train(const double* x, double* y, const double* gamma, const double* beta, double* mean,
                   double* var, const Shape& shape, double eps) {
  train_impl(x, y, gamma, beta, mean, var, shape, eps);
}

void forward_infer(const float* x, float* y, const float* mean, const float* var, const float* gamma,
                   const float* beta, const Shape& shape, double eps) {
  infer_impl(x, y, mean, var, gamma, beta, shape, eps);
}
void forward_infer(const double* x, double* y, const double* mean, const double* var, const double* gamma,
                   const double* beta, const Shape& shape, double eps) {
  infer_impl(x, y, mean, var, gamma, beta, shape, eps);
}

void backward(const float* dy, const float* x, const float* mean, const float* var, const float* gamma, float* dx,
              float* dgamma, float* dbeta, const Shape& shape, double eps, bool batch_stats) {
  backward_impl(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape, eps, batch_stats);
}
void backward(const double* dy, const double* x, const double* mean, const double* var, const double* gamma,
              double* dx, double* dgamma, double* dbeta, const Shape& shape, double eps, bool batch_stats) {
  backward_impl(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape, eps, batch_stats);
}

}  // namespace fastbn
