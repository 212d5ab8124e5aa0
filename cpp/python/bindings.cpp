// fastbn._core: a thin pybind11 layer over the core library. No math here. The Python package (functional.py)
// turns any axis and strides into the (outer, channels, inner) view and passes C-contiguous arrays; this layer
// checks dtypes and sizes again so that calling it directly can never crash, releases the GIL while kernels
// run, and maps fastbn::Error to Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "detail.hpp"
#include "fastbn/batchnorm.hpp"
#include "fastbn/cuda.hpp"
#include "output_cache.hpp"

namespace py = pybind11;

namespace {

using fastbn::bfloat16;
using fastbn::float16;

// The element types a tensor may have, told apart by value (a dtype that went through pickle is another object,
// and may carry metadata). bf16 is ml_dtypes' bfloat16, recognised by name without importing ml_dtypes.
enum class Code { f32, f64, bf16, f16, other };

Code code_of(const py::dtype& d) {
  const char order = d.byteorder();
  if (order == '>') return Code::other;  // byte-swapped: the Python layer converts it once
  switch (d.num()) {
    case py::detail::npy_api::NPY_FLOAT_:
      return Code::f32;
    case py::detail::npy_api::NPY_DOUBLE_:
      return Code::f64;
    case 23:  // NPY_HALF
      return Code::f16;
    default:
      break;
  }
  if (d.itemsize() == 2 && d.kind() == 'V' && std::string(py::str(d.attr("name"))) == "bfloat16") return Code::bf16;
  return Code::other;
}

const char* code_name(Code c) {
  switch (c) {
    case Code::f32:
      return "float32";
    case Code::f64:
      return "float64";
    case Code::bf16:
      return "bfloat16";
    case Code::f16:
      return "float16";
    default:
      return "?";
  }
}

// The parameter/statistics type of a tensor type: float64 for float64, float32 otherwise.
Code param_code(Code c) { return c == Code::f64 ? Code::f64 : Code::f32; }

// Calls f(T{}) with the C++ type of code c.
template <class F>
void with_type(Code c, F&& f) {
  switch (c) {
    case Code::f32:
      f(float{});
      break;
    case Code::f64:
      f(double{});
      break;
    case Code::bf16:
      f(bfloat16{});
      break;
    case Code::f16:
      f(float16{});
      break;
    default:
      throw py::type_error("fastbn: unsupported dtype");
  }
}

// dtype of the main tensor.
Code main_code(const py::array& x, const char* name = "x") {
  const Code c = code_of(x.dtype());
  if (c == Code::other) {
    throw py::type_error(std::string("fastbn: expected ") + name +
                         " of dtype float32, float64, float16 or bfloat16, got dtype " + std::string(py::str(x.dtype())));
  }
  return c;
}

bool simple_flags(const py::array& a, bool writable) {
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  int need = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (writable) need |= py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return (flags & need) == need;
}

// One argument's data pointer, after checking it is a NumPy array of the expected type and element count,
// C-contiguous, aligned (and writable); null for an optional None. The Python layer passes only such arrays;
// these checks make a direct call of this private module safe too.
void* check(const py::handle& obj, const char* name, Code expected, int64_t size, bool writable, bool optional) {
  if (obj.is_none()) {
    if (!optional) throw py::value_error(std::string("fastbn: ") + name + " must not be None");
    return nullptr;
  }
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string("fastbn: ") + name + " must be a numpy array, got " +
                         std::string(py::str(obj.get_type().attr("__name__"))));
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (code_of(a.dtype()) != expected) {
    throw py::type_error(std::string("fastbn: ") + name + " has dtype " + std::string(py::str(a.dtype())) +
                         ", expected " + code_name(expected));
  }
  if (static_cast<int64_t>(a.size()) != size) {
    throw py::value_error(std::string("fastbn: ") + name + " has " + std::to_string(a.size()) +
                          " elements, expected " + std::to_string(size));
  }
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) || !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    throw py::value_error(std::string("fastbn: ") + name + " must be C-contiguous and aligned");
  }
  if (writable && !(flags & py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
    throw py::value_error(std::string("fastbn: ") + name + " must be writable");
  }
  return const_cast<void*>(a.data());
}

// The (outer, channels, inner) view and its element count, checked before anything is multiplied.
struct View {
  fastbn::Shape shape;
  int64_t n;
  int64_t channels() const { return shape.channels; }
};

View view_of(int64_t outer, int64_t channels, int64_t inner) {
  if (outer < 1 || channels < 1 || inner < 1) {
    throw py::value_error("fastbn: outer, channels and inner must be >= 1, got (" + std::to_string(outer) + ", " +
                          std::to_string(channels) + ", " + std::to_string(inner) + ")");
  }
  int64_t n = 0;
  if (__builtin_mul_overflow(outer, channels, &n) || __builtin_mul_overflow(n, inner, &n)) {
    throw py::value_error("fastbn: the shape (" + std::to_string(outer) + ", " + std::to_string(channels) + ", " +
                          std::to_string(inner) + ") has too many elements");
  }
  return {{outer, channels, inner}, n};
}

fastbn::Fusion fusion_of(int act, double slope) { return {static_cast<fastbn::Activation>(act), slope}; }

template <class T>
T* p(void* a) {
  return static_cast<T*>(a);
}

// ---------------------------------------------------------------------------------------------------------
// The passes on NumPy arrays

void train(const py::array& x, const py::object& residual, const py::array& y, const py::object& gamma,
           const py::object& beta, const py::array& mean, const py::array& var, int64_t outer, int64_t channels,
           int64_t inner, double eps, int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(x), pc = param_code(c);
  void* ax = check(x, "x", c, v.n, false, false);
  void* ar = check(residual, "residual", c, v.n, false, true);
  void* ay = check(y, "y", c, v.n, true, false);
  void* ag = check(gamma, "gamma", pc, channels, false, true);
  void* ab = check(beta, "beta", pc, channels, false, true);
  void* am = check(mean, "mean", pc, channels, true, false);
  void* av = check(var, "var", pc, channels, true, false);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::forward_train(p<const T>(ax), p<const T>(ar), p<T>(ay), p<const P>(ag), p<const P>(ab), p<P>(am),
                          p<P>(av), v.shape, eps, fusion_of(act, slope));
  });
}

// Inference (mean/var of the parameter type) or, with f64_stats, the normalization of a distributed forward
// (double statistics).
void infer(const py::array& x, const py::object& residual, const py::array& y, const py::array& mean,
           const py::array& var, const py::object& gamma, const py::object& beta, int64_t outer, int64_t channels,
           int64_t inner, double eps, int act, double slope, bool f64_stats) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(x), pc = param_code(c), sc = f64_stats ? Code::f64 : pc;
  void* ax = check(x, "x", c, v.n, false, false);
  void* ar = check(residual, "residual", c, v.n, false, true);
  void* ay = check(y, "y", c, v.n, true, false);
  void* am = check(mean, "mean", sc, channels, false, false);
  void* av = check(var, "var", sc, channels, false, false);
  void* ag = check(gamma, "gamma", pc, channels, false, true);
  void* ab = check(beta, "beta", pc, channels, false, true);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    if (f64_stats) {
      fastbn::normalize(p<const T>(ax), p<const T>(ar), p<T>(ay), p<const double>(am), p<const double>(av),
                        p<const P>(ag), p<const P>(ab), v.shape, eps, fusion_of(act, slope));
    } else {
      fastbn::forward_infer(p<const T>(ax), p<const T>(ar), p<T>(ay), p<const P>(am), p<const P>(av), p<const P>(ag),
                            p<const P>(ab), v.shape, eps, fusion_of(act, slope));
    }
  });
}

void backward(const py::array& dy, const py::object& x, const py::object& y, const py::array& mean,
              const py::array& var, const py::object& gamma, const py::object& beta, const py::array& dx,
              const py::object& dres, const py::object& dgamma, const py::object& dbeta, int64_t outer,
              int64_t channels, int64_t inner, double eps, bool batch_stats, int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(dy, "dy"), pc = param_code(c);
  void* ady = check(dy, "dy", c, v.n, false, false);
  void* ax = check(x, "x", c, v.n, false, true);
  void* ay = check(y, "y", c, v.n, false, true);
  void* am = check(mean, "mean", pc, channels, false, false);
  void* av = check(var, "var", pc, channels, false, false);
  void* ag = check(gamma, "gamma", pc, channels, false, true);
  void* ab = check(beta, "beta", pc, channels, false, true);
  void* adx = check(dx, "dx", c, v.n, true, false);
  void* adr = check(dres, "dresidual", c, v.n, true, true);
  void* adg = check(dgamma, "dgamma", pc, channels, true, true);
  void* adb = check(dbeta, "dbeta", pc, channels, true, true);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward(p<const T>(ady), p<const T>(ax), p<const T>(ay), p<const P>(am), p<const P>(av), p<const P>(ag),
                     p<const P>(ab), p<T>(adx), p<T>(adr), p<P>(adg), p<P>(adb), v.shape, eps, batch_stats,
                     fusion_of(act, slope));
  });
}

// ---------------------------------------------------------------------------------------------------------
// The phases of a distributed batch norm (statistics and sums in float64)

void local_stats(const py::array& x, const py::array& mean, const py::array& m2, int64_t outer, int64_t channels,
                 int64_t inner) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(x);
  void* ax = check(x, "x", c, v.n, false, false);
  void* am = check(mean, "mean", Code::f64, channels, true, false);
  void* aq = check(m2, "m2", Code::f64, channels, true, false);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    fastbn::local_stats(p<const T>(ax), p<double>(am), p<double>(aq), v.shape);
  });
}

// parts x channels partials in part order -> (count, mean, m2).
py::tuple merge_stats(const py::array& count, const py::array& mean, const py::array& m2, int64_t channels) {
  if (channels < 1) throw py::value_error("fastbn: channels must be >= 1");
  const int64_t parts = static_cast<int64_t>(count.size());
  int64_t total = 0;
  if (__builtin_mul_overflow(parts, channels, &total)) throw py::value_error("fastbn: too many partial statistics");
  void* an = check(count, "count", Code::f64, parts, false, false);
  void* am = check(mean, "mean", Code::f64, total, false, false);
  void* aq = check(m2, "m2", Code::f64, total, false, false);
  py::array_t<double> mo(channels), qo(channels);
  double n = 0;
  double* mop = mo.mutable_data();
  double* qop = qo.mutable_data();
  {
    py::gil_scoped_release nogil;
    fastbn::merge_stats(parts, p<const double>(an), p<const double>(am), p<const double>(aq), channels, &n, mop, qop);
  }
  return py::make_tuple(n, mo, qo);
}

void update_running_stats(const py::array& running_mean, const py::array& running_var, const py::array& mean,
                          const py::array& var, double count, double momentum) {
  const Code c = code_of(running_mean.dtype());
  if (c != Code::f32 && c != Code::f64) {
    throw py::type_error("fastbn: running statistics must be float32 or float64, got " +
                         std::string(py::str(running_mean.dtype())));
  }
  const int64_t channels = static_cast<int64_t>(running_mean.size());
  void* arm = check(running_mean, "running_mean", c, channels, true, false);
  void* arv = check(running_var, "running_var", c, channels, true, false);
  void* am = check(mean, "mean", Code::f64, channels, false, false);
  void* av = check(var, "var", Code::f64, channels, false, false);
  with_type(c, [&](auto t) {
    using T = decltype(t);
    if constexpr (std::is_same<T, float>::value || std::is_same<T, double>::value) {
      fastbn::update_running_stats(p<T>(arm), p<T>(arv), p<const double>(am), p<const double>(av), channels, count,
                                   momentum);
    }
  });
}

void backward_reduce(const py::array& dy, const py::object& x, const py::object& y, const py::array& mean,
                     const py::array& var, const py::object& gamma, const py::object& beta, const py::array& sum_dy,
                     const py::array& sum_dy_xhat, int64_t outer, int64_t channels, int64_t inner, double eps, int act,
                     double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(dy, "dy"), pc = param_code(c);
  void* ady = check(dy, "dy", c, v.n, false, false);
  void* ax = check(x, "x", c, v.n, false, true);
  void* ay = check(y, "y", c, v.n, false, true);
  void* am = check(mean, "mean", Code::f64, channels, false, false);
  void* av = check(var, "var", Code::f64, channels, false, false);
  void* ag = check(gamma, "gamma", pc, channels, false, true);
  void* ab = check(beta, "beta", pc, channels, false, true);
  void* as = check(sum_dy, "sum_dy", Code::f64, channels, true, false);
  void* ah = check(sum_dy_xhat, "sum_dy_xhat", Code::f64, channels, true, false);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward_reduce(p<const T>(ady), p<const T>(ax), p<const T>(ay), p<const double>(am), p<const double>(av),
                            p<const P>(ag), p<const P>(ab), p<double>(as), p<double>(ah), v.shape, eps,
                            fusion_of(act, slope));
  });
}

void backward_apply(const py::array& dy, const py::object& x, const py::object& y, const py::array& mean,
                    const py::array& var, const py::object& gamma, const py::object& beta, const py::array& sum_dy,
                    const py::array& sum_dy_xhat, double count, const py::array& dx, const py::object& dres,
                    int64_t outer, int64_t channels, int64_t inner, double eps, int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = main_code(dy, "dy"), pc = param_code(c);
  void* ady = check(dy, "dy", c, v.n, false, false);
  void* ax = check(x, "x", c, v.n, false, true);
  void* ay = check(y, "y", c, v.n, false, true);
  void* am = check(mean, "mean", Code::f64, channels, false, false);
  void* av = check(var, "var", Code::f64, channels, false, false);
  void* ag = check(gamma, "gamma", pc, channels, false, true);
  void* ab = check(beta, "beta", pc, channels, false, true);
  void* as = check(sum_dy, "sum_dy", Code::f64, channels, false, false);
  void* ah = check(sum_dy_xhat, "sum_dy_xhat", Code::f64, channels, false, false);
  void* adx = check(dx, "dx", c, v.n, true, false);
  void* adr = check(dres, "dresidual", c, v.n, true, true);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward_apply(p<const T>(ady), p<const T>(ax), p<const T>(ay), p<const double>(am), p<const double>(av),
                           p<const P>(ag), p<const P>(ab), p<const double>(as), p<const double>(ah), count, p<T>(adx),
                           p<T>(adr), v.shape, eps, fusion_of(act, slope));
  });
}

// ---------------------------------------------------------------------------------------------------------
// The same passes on raw host addresses, for fastbn.torch: it reads the tensors' own data pointers (no NumPy
// views, fine with requires_grad and bfloat16) after checking shapes, dtypes and layouts itself. code: 0 float32,
// 1 float64, 2 bfloat16, 3 float16; 0 stands for a null (optional) pointer.

Code code_arg(int code) {
  if (code < 0 || code > 3) throw py::value_error("fastbn: unknown dtype code " + std::to_string(code));
  return static_cast<Code>(code);
}

template <class T = void>
T* addr(uintptr_t a) {
  return reinterpret_cast<T*>(a);
}

// The running-statistics update on raw addresses (codes checked by the caller; no Python calls, so it runs
// without the GIL).
void check_running_codes(Code rc, Code sc) {
  if ((rc != Code::f32 && rc != Code::f64) || (sc != Code::f32 && sc != Code::f64)) {
    throw py::type_error("fastbn: running statistics must be float32 or float64");
  }
}

void update_running_raw(Code rc, uintptr_t running_mean, uintptr_t running_var, Code sc, uintptr_t mean,
                        uintptr_t var, int64_t channels, double count, double momentum) {
  std::vector<double> m(static_cast<size_t>(channels)), v(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) {
    m[c] = sc == Code::f32 ? addr<const float>(mean)[c] : addr<const double>(mean)[c];
    v[c] = sc == Code::f32 ? addr<const float>(var)[c] : addr<const double>(var)[c];
  }
  if (rc == Code::f32) {
    fastbn::update_running_stats(addr<float>(running_mean), addr<float>(running_var), m.data(), v.data(), channels,
                                 count, momentum);
  } else {
    fastbn::update_running_stats(addr<double>(running_mean), addr<double>(running_var), m.data(), v.data(), channels,
                                 count, momentum);
  }
}

// With running_mean != 0 it also updates the running statistics (code `running`) from the batch's, as
// ptr_update_running_stats does, in the same call, and then adds 1 to the int64 at `tracked` (a module's
// num_batches_tracked) unless that is 0: inside a model each call from Python costs 5-20 us with cold caches.
void ptr_train(int code, uintptr_t x, uintptr_t residual, uintptr_t y, uintptr_t gamma, uintptr_t beta, uintptr_t mean,
               uintptr_t var, int64_t outer, int64_t channels, int64_t inner, double eps, int act, double slope,
               uintptr_t running_mean, uintptr_t running_var, int running, double momentum, uintptr_t tracked) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  const Code sc = c == Code::f64 ? Code::f64 : Code::f32;  // the batch statistics' type (param_t)
  const Code rc = running_mean ? code_arg(running) : sc;
  check_running_codes(rc, sc);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::forward_train(addr<const T>(x), addr<const T>(residual), addr<T>(y), addr<const P>(gamma),
                          addr<const P>(beta), addr<P>(mean), addr<P>(var), v.shape, eps, fusion_of(act, slope));
  });
  if (running_mean) {
    update_running_raw(rc, running_mean, running_var, sc, mean, var, channels, static_cast<double>(outer * inner),
                       momentum);
    if (tracked) ++*addr<int64_t>(tracked);
  }
}

void ptr_infer(int code, uintptr_t x, uintptr_t residual, uintptr_t y, uintptr_t mean, uintptr_t var, uintptr_t gamma,
               uintptr_t beta, int64_t outer, int64_t channels, int64_t inner, double eps, int act, double slope,
               bool f64_stats) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    if (f64_stats) {
      fastbn::normalize(addr<const T>(x), addr<const T>(residual), addr<T>(y), addr<const double>(mean),
                        addr<const double>(var), addr<const P>(gamma), addr<const P>(beta), v.shape, eps,
                        fusion_of(act, slope));
    } else {
      fastbn::forward_infer(addr<const T>(x), addr<const T>(residual), addr<T>(y), addr<const P>(mean),
                            addr<const P>(var), addr<const P>(gamma), addr<const P>(beta), v.shape, eps,
                            fusion_of(act, slope));
    }
  });
}

void ptr_backward(int code, uintptr_t dy, uintptr_t x, uintptr_t y, uintptr_t mean, uintptr_t var, uintptr_t gamma,
                  uintptr_t beta, uintptr_t dx, uintptr_t dres, uintptr_t dgamma, uintptr_t dbeta, int64_t outer,
                  int64_t channels, int64_t inner, double eps, bool batch_stats, int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward(addr<const T>(dy), addr<const T>(x), addr<const T>(y), addr<const P>(mean), addr<const P>(var),
                     addr<const P>(gamma), addr<const P>(beta), addr<T>(dx), addr<T>(dres), addr<P>(dgamma),
                     addr<P>(dbeta), v.shape, eps, batch_stats, fusion_of(act, slope));
  });
}

// Distributed phases on raw addresses (statistics and sums float64).
void ptr_stats(int code, uintptr_t x, uintptr_t mean, uintptr_t m2, int64_t outer, int64_t channels, int64_t inner) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    fastbn::local_stats(addr<const T>(x), addr<double>(mean), addr<double>(m2), v.shape);
  });
}

void ptr_backward_reduce(int code, uintptr_t dy, uintptr_t x, uintptr_t y, uintptr_t mean, uintptr_t var,
                         uintptr_t gamma, uintptr_t beta, uintptr_t sum_dy, uintptr_t sum_dy_xhat, int64_t outer,
                         int64_t channels, int64_t inner, double eps, int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward_reduce(addr<const T>(dy), addr<const T>(x), addr<const T>(y), addr<const double>(mean),
                            addr<const double>(var), addr<const P>(gamma), addr<const P>(beta), addr<double>(sum_dy),
                            addr<double>(sum_dy_xhat), v.shape, eps, fusion_of(act, slope));
  });
}

void ptr_backward_apply(int code, uintptr_t dy, uintptr_t x, uintptr_t y, uintptr_t mean, uintptr_t var,
                        uintptr_t gamma, uintptr_t beta, uintptr_t sum_dy, uintptr_t sum_dy_xhat, double count,
                        uintptr_t dx, uintptr_t dres, int64_t outer, int64_t channels, int64_t inner, double eps,
                        int act, double slope) {
  const View v = view_of(outer, channels, inner);
  const Code c = code_arg(code);
  py::gil_scoped_release nogil;
  with_type(c, [&](auto t) {
    using T = decltype(t);
    using P = fastbn::param_t<T>;
    fastbn::backward_apply(addr<const T>(dy), addr<const T>(x), addr<const T>(y), addr<const double>(mean),
                           addr<const double>(var), addr<const P>(gamma), addr<const P>(beta),
                           addr<const double>(sum_dy), addr<const double>(sum_dy_xhat), count, addr<T>(dx),
                           addr<T>(dres), v.shape, eps, fusion_of(act, slope));
  });
}

// running = (1 - momentum) * running + momentum * batch (variance unbiased by count / (count - 1)), on raw
// addresses: running statistics of code `running` (float32 or float64), batch statistics of code `stats`.
void ptr_update_running_stats(int running, uintptr_t running_mean, uintptr_t running_var, int stats, uintptr_t mean,
                              uintptr_t var, int64_t channels, double count, double momentum) {
  const Code rc = code_arg(running), sc = code_arg(stats);
  check_running_codes(rc, sc);
  if (channels < 1) throw py::value_error("fastbn: channels must be >= 1");
  update_running_raw(rc, running_mean, running_var, sc, mean, var, channels, count, momentum);
}

void stream_copy(const py::array& src, const py::array& dst) {
  const int64_t n = static_cast<int64_t>(src.size());
  void* a = check(src, "src", Code::f32, n, false, false);
  void* b = check(dst, "dst", Code::f32, n, true, false);
  py::gil_scoped_release nogil;
  fastbn::detail::stream_copy(p<float>(a), p<float>(b), n);
}

void stream_add(const py::array& a, const py::array& b, const py::array& dst) {
  const int64_t n = static_cast<int64_t>(dst.size());
  void* pa = check(a, "a", Code::f32, n, false, false);
  void* pb = check(b, "b", Code::f32, n, false, false);
  void* pd = check(dst, "dst", Code::f32, n, true, false);
  py::gil_scoped_release nogil;
  fastbn::detail::stream_add(p<float>(pa), p<float>(pb), p<float>(pd), n);
}

double stream_read(const py::array& src) {
  const int64_t n = static_cast<int64_t>(src.size());
  void* a = check(src, "src", Code::f32, n, false, false);
  py::gil_scoped_release nogil;
  return fastbn::detail::stream_read(p<float>(a), n);
}

// ---------------------------------------------------------------------------------------------------------
// CUDA: device pointers arrive as integers from fastbn/cuda.py, which has already checked every shape and
// dtype against the arrays' __cuda_array_interface__.

template <class T>
T* dptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void cuda_train(uintptr_t x, uintptr_t y, uintptr_t gamma, uintptr_t beta, uintptr_t mean, uintptr_t var,
                int64_t outer, int64_t channels, int64_t inner, double eps, bool f64, uintptr_t stream) {
  const fastbn::Shape s = view_of(outer, channels, inner).shape;
  py::gil_scoped_release nogil;
  void* st = reinterpret_cast<void*>(stream);
  if (f64) {
    fastbn::cuda::forward_train(dptr<double>(x), dptr<double>(y), dptr<double>(gamma), dptr<double>(beta),
                                dptr<double>(mean), dptr<double>(var), s, eps, st);
  } else {
    fastbn::cuda::forward_train(dptr<float>(x), dptr<float>(y), dptr<float>(gamma), dptr<float>(beta),
                                dptr<float>(mean), dptr<float>(var), s, eps, st);
  }
}

void cuda_infer(uintptr_t x, uintptr_t y, uintptr_t mean, uintptr_t var, uintptr_t gamma, uintptr_t beta,
                int64_t outer, int64_t channels, int64_t inner, double eps, bool f64, uintptr_t stream) {
  const fastbn::Shape s = view_of(outer, channels, inner).shape;
  py::gil_scoped_release nogil;
  void* st = reinterpret_cast<void*>(stream);
  if (f64) {
    fastbn::cuda::forward_infer(dptr<double>(x), dptr<double>(y), dptr<double>(mean), dptr<double>(var),
                                dptr<double>(gamma), dptr<double>(beta), s, eps, st);
  } else {
    fastbn::cuda::forward_infer(dptr<float>(x), dptr<float>(y), dptr<float>(mean), dptr<float>(var),
                                dptr<float>(gamma), dptr<float>(beta), s, eps, st);
  }
}

void cuda_backward(uintptr_t dy, uintptr_t x, uintptr_t mean, uintptr_t var, uintptr_t gamma, uintptr_t dx,
                   uintptr_t dgamma, uintptr_t dbeta, int64_t outer, int64_t channels, int64_t inner, double eps,
                   bool batch_stats, bool f64, uintptr_t stream) {
  const fastbn::Shape s = view_of(outer, channels, inner).shape;
  py::gil_scoped_release nogil;
  void* st = reinterpret_cast<void*>(stream);
  if (f64) {
    fastbn::cuda::backward(dptr<double>(dy), dptr<double>(x), dptr<double>(mean), dptr<double>(var),
                           dptr<double>(gamma), dptr<double>(dx), dptr<double>(dgamma), dptr<double>(dbeta), s, eps,
                           batch_stats, st);
  } else {
    fastbn::cuda::backward(dptr<float>(dy), dptr<float>(x), dptr<float>(mean), dptr<float>(var),
                           dptr<float>(gamma), dptr<float>(dx), dptr<float>(dgamma), dptr<float>(dbeta), s, eps,
                           batch_stats, st);
  }
}

void cuda_update_running_stats(uintptr_t running_mean, uintptr_t running_var, uintptr_t mean, uintptr_t var,
                               int64_t channels, int64_t count, double factor, bool f64, uintptr_t stream) {
  py::gil_scoped_release nogil;
  void* st = reinterpret_cast<void*>(stream);
  if (f64) {
    fastbn::cuda::update_running_stats(dptr<double>(running_mean), dptr<double>(running_var), dptr<double>(mean),
                                       dptr<double>(var), channels, count, factor, st);
  } else {
    fastbn::cuda::update_running_stats(dptr<float>(running_mean), dptr<float>(running_var), dptr<float>(mean),
                                       dptr<float>(var), channels, count, factor, st);
  }
}

// Owns one cudaMalloc allocation; fastbn/cuda.py wraps it into DeviceArray.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t nbytes) : nbytes_(nbytes), ptr_(fastbn::cuda::device_alloc(nbytes ? nbytes : 1)) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { fastbn::cuda::device_free(ptr_); }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(ptr_); }
  size_t nbytes() const { return nbytes_; }

 private:
  size_t nbytes_;
  void* ptr_;
};

void check_host_bytes(const py::buffer_info& info, size_t nbytes) {
  if (static_cast<size_t>(info.size * info.itemsize) != nbytes) {
    throw py::value_error("fastbn: host array has " + std::to_string(info.size * info.itemsize) +
                          " bytes, the device buffer " + std::to_string(nbytes));
  }
}

// Outputs at least this large come from the output cache (functional.py uses the same threshold).
constexpr size_t kCachedMinBytes = size_t{1} << 20;

// A C-contiguous array whose buffer comes from, and returns to, the output cache.
py::array cached_empty(const std::vector<py::ssize_t>& shape, const py::dtype& dtype) {
  size_t count = 1;
  for (py::ssize_t e : shape) {
    if (e < 0) throw py::value_error("fastbn: negative dimension");
    count *= static_cast<size_t>(e);
  }
  struct Block {
    void* p;
    size_t bytes;
  };
  const size_t bytes = count * static_cast<size_t>(dtype.itemsize());
  auto* block = new Block{fastbn_py::cache_take(bytes), bytes};
  py::capsule owner(block, [](void* b) {
    auto* blk = static_cast<Block*>(b);
    fastbn_py::cache_give(blk->p, blk->bytes);
    delete blk;
  });
  return py::array(dtype, shape, std::vector<py::ssize_t>{}, block->p, owner);
}

// ---------------------------------------------------------------------------------------------------------
// The common case in one call. For small tensors the general Python argument handling costs more than the
// kernel, so fastbn/functional.py first offers the call here: x an aligned float32/float64/bfloat16/float16
// ndarray with ndim >= 2 whose memory is C-contiguous or a permutation of a C-contiguous layout (channels-last,
// an NCHW-shaped view of NHWC memory), axis a plain int in range, eps a positive finite float, every per-channel
// array None or a 1-D aligned contiguous array of the parameter type and length C. Anything else returns None,
// and the general path (with its error messages) takes over. Nothing is checked less: only the answer "not
// simple" is quicker. The (outer, C, inner) view is the one functional.py's _view gives, so both paths run the
// same kernel call on the same memory and give the same bits.

struct SimpleView {
  py::array x;
  Code code;
  fastbn::Shape shape;
  bool contiguous;  // C-contiguous; else a dense permutation, whose layout dy and `out` must share
};

// Axes of extent > 1 from the largest stride to the smallest, then the axes of extent 1 (functional.py's
// dense_order, where they go last too). Up to 64 axes (NumPy's limit).
int memory_order(const py::array& a, int* order) {
  const int nd = static_cast<int>(a.ndim());
  int n = 0;
  for (int i = 0; i < nd; ++i) {
    if (a.shape(i) > 1) order[n++] = i;
  }
  std::stable_sort(order, order + n, [&](int i, int j) { return a.strides(i) > a.strides(j); });
  const int big = n;
  for (int i = 0; i < nd; ++i) {
    if (a.shape(i) <= 1) order[n++] = i;
  }
  return big;
}

// Aligned (and writable), and C-contiguous or dense: each axis of extent > 1, from the smallest stride up, at
// the item size times the extents below it (no gaps, no overlap, no negative or zero strides).
bool simple_dense(const py::array& a, bool writable, bool& contiguous) {
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  int need = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if (writable) need |= py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  if ((flags & need) != need) return false;
  contiguous = (flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) != 0;
  if (contiguous) return true;
  if (a.ndim() > 64) return false;
  int order[64];
  const int big = memory_order(a, order);
  int64_t expected = a.itemsize();
  for (int k = big - 1; k >= 0; --k) {
    if (a.strides(order[k]) != expected) return false;
    expected *= a.shape(order[k]);
  }
  return true;
}

// Whether b (of x's shape) is laid out in memory as x is: the same strides on every axis of extent > 1.
bool same_layout(const py::array& x, const py::array& b) {
  for (py::ssize_t i = 0; i < x.ndim(); ++i) {
    if (x.shape(i) > 1 && x.strides(i) != b.strides(i)) return false;
  }
  return true;
}

bool simple_x(py::handle obj, py::handle axis_obj, py::handle eps_obj, SimpleView& v, double& eps) {
  if (!py::isinstance<py::array>(obj) || !PyLong_CheckExact(axis_obj.ptr()) || !PyFloat_CheckExact(eps_obj.ptr())) {
    return false;
  }
  eps = PyFloat_AS_DOUBLE(eps_obj.ptr());
  if (!(eps > 0) || !std::isfinite(eps)) return false;
  v.x = py::reinterpret_borrow<py::array>(obj);
  v.code = code_of(v.x.dtype());
  if (v.code == Code::other || !simple_dense(v.x, false, v.contiguous)) return false;
  const int64_t ndim = v.x.ndim();
  int overflow = 0;
  int64_t axis = PyLong_AsLongLongAndOverflow(axis_obj.ptr(), &overflow);
  if (overflow || ndim < 2 || axis < -ndim || axis >= ndim || v.x.size() == 0) return false;
  if (axis < 0) axis += ndim;
  const int64_t C = v.x.shape(axis);
  int64_t outer = 1, inner = 1;
  if (C == 1) {
    inner = v.x.size();  // as _layout.view_of: one channel is one run over all of memory
  } else if (v.contiguous) {
    for (int64_t i = 0; i < axis; ++i) outer *= v.x.shape(i);
    for (int64_t i = axis + 1; i < ndim; ++i) inner *= v.x.shape(i);
  } else {
    const auto sc = v.x.strides(axis);
    for (int64_t i = 0; i < ndim; ++i) {
      if (i != axis && v.x.shape(i) > 1) (v.x.strides(i) > sc ? outer : inner) *= v.x.shape(i);
    }
  }
  v.shape = {outer, C, inner};
  return true;
}

bool simple_channels(py::handle obj, Code code, int64_t channels, bool optional, void*& ptr) {
  ptr = nullptr;
  if (obj.is_none()) return optional;
  if (!py::isinstance<py::array>(obj)) return false;
  const auto a = py::reinterpret_borrow<py::array>(obj);
  if (code_of(a.dtype()) != code || a.ndim() != 1 || a.shape(0) != channels || !simple_flags(a, false)) return false;
  ptr = const_cast<void*>(a.data());
  return true;
}

// A new array shaped like x with x's memory order (functional.py's _empty_like_view): one buffer in that order,
// viewed with x's axes; from the output cache from kCachedMinBytes on.
py::array empty_like_x(const SimpleView& v) {
  const int nd = static_cast<int>(v.x.ndim());
  std::vector<py::ssize_t> shape(v.x.shape(), v.x.shape() + nd);
  const bool big = static_cast<size_t>(v.x.nbytes()) >= kCachedMinBytes;
  if (v.contiguous) return big ? cached_empty(shape, v.x.dtype()) : py::array(v.x.dtype(), shape);
  int order[64];
  memory_order(v.x, order);
  std::vector<py::ssize_t> mem_shape(nd), strides(nd);
  for (int k = 0; k < nd; ++k) mem_shape[k] = shape[order[k]];
  py::array buf = big ? cached_empty(mem_shape, v.x.dtype()) : py::array(v.x.dtype(), mem_shape);
  py::ssize_t step = v.x.itemsize();
  for (int k = nd - 1; k >= 0; --k) {
    strides[order[k]] = step;
    step *= mem_shape[k];
  }
  return py::array(v.x.dtype(), shape, strides, buf.mutable_data(), buf);
}

// An array of x's type, shape and memory layout, dense and aligned (an input: dy, y, a residual), and writable where
// asked (an output). False: not simple.
bool like_x(py::handle obj, const SimpleView& v, bool writable, py::array& a) {
  if (!py::isinstance<py::array>(obj)) return false;
  a = py::reinterpret_borrow<py::array>(obj);
  bool contiguous = false;
  return code_of(a.dtype()) == v.code && simple_dense(a, writable, contiguous) && a.ndim() == v.x.ndim() &&
         std::equal(v.x.shape(), v.x.shape() + v.x.ndim(), a.shape()) && same_layout(v.x, a);
}

// The output: a new array like x, or `out` when it is simple too (like_x, writable) and either is x itself (in
// place) or does not overlap it. False: not simple.
bool simple_out(py::handle out, const SimpleView& v, py::array& y) {
  if (out.is_none()) {
    y = empty_like_x(v);
    return true;
  }
  py::array o;
  if (!like_x(out, v, true, o)) return false;
  // Both are dense over [data, data + nbytes): they overlap exactly when those ranges do.
  const auto* xb = static_cast<const char*>(v.x.data());
  const auto* ob = static_cast<const char*>(o.data());
  if (xb != ob && ob < xb + v.x.nbytes() && xb < ob + o.nbytes()) return false;
  y = o;
  return true;
}

py::dtype dtype_of(Code c) { return c == Code::f64 ? py::dtype::of<double>() : py::dtype::of<float>(); }

// The fused epilogue of a one-call forward: act a valid code and slope finite (functional.py checks both first, with
// its messages), residual None or an array of x's type, shape and memory layout (another layout goes the general
// way, which copies it once), and the output either the residual itself (written over it) or apart from it.
struct SimpleFusion {
  fastbn::Fusion fusion;
  const void* residual = nullptr;
};

bool simple_fusion(int act, double slope, py::handle residual, const SimpleView& v, SimpleFusion& f) {
  if (act < FASTBN_ACT_NONE || act > FASTBN_ACT_SIGMOID || !std::isfinite(slope)) return false;
  f.fusion = fusion_of(act, slope);
  if (residual.is_none()) return true;
  py::array r;
  if (!like_x(residual, v, false, r)) return false;
  f.residual = r.data();
  return true;
}

bool apart_or_same(const py::array& y, const void* other) {
  if (other == nullptr) return true;
  const auto* yb = static_cast<const char*>(y.data());
  const auto* ob = static_cast<const char*>(other);
  const auto n = y.nbytes();  // both dense, of x's shape and type
  return yb == ob || !(ob < yb + n && yb < ob + n);
}

py::object infer_simple(py::handle x, py::handle mean, py::handle var, py::handle gamma, py::handle beta,
                        py::handle axis, py::handle eps_obj, py::handle out, int act, double slope,
                        py::handle residual) {
  SimpleView v;
  SimpleFusion f;
  double eps = 0;
  void *m, *s, *g, *b;
  if (!simple_x(x, axis, eps_obj, v, eps) || !simple_fusion(act, slope, residual, v, f)) return py::none();
  const Code pc = param_code(v.code);
  const int64_t C = v.shape.channels;
  if (!simple_channels(mean, pc, C, false, m) || !simple_channels(var, pc, C, false, s) ||
      !simple_channels(gamma, pc, C, true, g) || !simple_channels(beta, pc, C, true, b)) {
    return py::none();
  }
  py::array y;
  if (!simple_out(out, v, y) || !apart_or_same(y, f.residual)) return py::none();
  void* yp = y.mutable_data();
  const void* xp = v.x.data();
  {
    py::gil_scoped_release nogil;
    with_type(v.code, [&](auto t) {
      using T = decltype(t);
      using P = fastbn::param_t<T>;
      fastbn::forward_infer(static_cast<const T*>(xp), static_cast<const T*>(f.residual), static_cast<T*>(yp),
                            p<const P>(m), p<const P>(s), p<const P>(g), p<const P>(b), v.shape, eps, f.fusion);
    });
  }
  return std::move(y);
}

py::object train_simple(py::handle x, py::handle gamma, py::handle beta, py::handle axis, py::handle eps_obj,
                        py::handle out, int act, double slope, py::handle residual) {
  SimpleView v;
  SimpleFusion f;
  double eps = 0;
  void *g, *b;
  if (!simple_x(x, axis, eps_obj, v, eps) || !simple_fusion(act, slope, residual, v, f)) return py::none();
  const Code pc = param_code(v.code);
  const int64_t C = v.shape.channels;
  if (v.shape.outer * v.shape.inner < 2 || !simple_channels(gamma, pc, C, true, g) ||
      !simple_channels(beta, pc, C, true, b)) {
    return py::none();
  }
  py::array y;
  if (!simple_out(out, v, y) || !apart_or_same(y, f.residual)) return py::none();
  py::array mean(dtype_of(pc), std::vector<py::ssize_t>{C}), var(dtype_of(pc), std::vector<py::ssize_t>{C});
  void *yp = y.mutable_data(), *mp = mean.mutable_data(), *vp = var.mutable_data();
  const void* xp = v.x.data();
  {
    py::gil_scoped_release nogil;
    with_type(v.code, [&](auto t) {
      using T = decltype(t);
      using P = fastbn::param_t<T>;
      fastbn::forward_train(static_cast<const T*>(xp), static_cast<const T*>(f.residual), static_cast<T*>(yp),
                            p<const P>(g), p<const P>(b), p<P>(mp), p<P>(vp), v.shape, eps, f.fusion);
    });
  }
  return py::make_tuple(y, mean, var);
}

// The backward in one call: dy and x (and y, where given: the forward's output, which an activation's derivative
// is read from) simple arrays of one type, shape and layout, the statistics, gamma and beta of the parameter type,
// batch_stats a bool, act a valid code and slope finite (functional.py checks the rest of the fused backward's
// rules first: y given with an activation, leaky_relu's slope >= 0), out None or simple, equal to dy (or y) or
// apart from both, and not x. With want_dresidual, dresidual = dy * act'(.) comes back as a fourth array.
py::object backward_simple(py::handle dy, py::handle x, py::handle mean, py::handle var, py::handle gamma,
                           py::handle axis, py::handle eps_obj, py::handle batch_stats, py::handle out, int act,
                           double slope, py::handle y, py::handle beta, bool want_dresidual) {
  SimpleView v;
  double eps = 0;
  if (!PyBool_Check(batch_stats.ptr())) return py::none();
  if (act < FASTBN_ACT_NONE || act > FASTBN_ACT_SIGMOID || !std::isfinite(slope)) return py::none();
  if (!simple_x(x, axis, eps_obj, v, eps)) return py::none();
  py::array d, ya;
  if (!like_x(dy, v, false, d)) return py::none();
  if (!y.is_none() && !like_x(y, v, false, ya)) return py::none();
  if (act != FASTBN_ACT_NONE && y.is_none()) return py::none();
  const Code pc = param_code(v.code);
  const int64_t C = v.shape.channels;
  void *m, *s, *g, *b;
  if (!simple_channels(mean, pc, C, false, m) || !simple_channels(var, pc, C, false, s) ||
      !simple_channels(gamma, pc, C, true, g) || !simple_channels(beta, pc, C, true, b)) {
    return py::none();
  }
  py::array dx;
  if (!simple_out(out, v, dx) || !apart_or_same(dx, d.data())) return py::none();
  if (!y.is_none() && !apart_or_same(dx, ya.data())) return py::none();
  if (dx.data() == v.x.data()) return py::none();  // dx over x: the general path decides
  py::array dres;
  if (want_dresidual) dres = empty_like_x(v);
  py::array dgamma(dtype_of(pc), std::vector<py::ssize_t>{C}), dbeta(dtype_of(pc), std::vector<py::ssize_t>{C});
  void *dxp = dx.mutable_data(), *dgp = dgamma.mutable_data(), *dbp = dbeta.mutable_data();
  void* drp = want_dresidual ? dres.mutable_data() : nullptr;
  const void *xp = v.x.data(), *dyp = d.data(), *yp = y.is_none() ? nullptr : ya.data();
  const bool bs = batch_stats.ptr() == Py_True;
  const fastbn::Fusion f = fusion_of(act, slope);
  {
    py::gil_scoped_release nogil;
    with_type(v.code, [&](auto t) {
      using T = decltype(t);
      using P = fastbn::param_t<T>;
      fastbn::backward(static_cast<const T*>(dyp), static_cast<const T*>(xp), static_cast<const T*>(yp),
                       p<const P>(m), p<const P>(s), p<const P>(g), p<const P>(b), static_cast<T*>(dxp),
                       static_cast<T*>(drp), p<P>(dgp), p<P>(dbp), v.shape, eps, bs, f);
    });
  }
  if (want_dresidual) return py::make_tuple(dx, dgamma, dbeta, dres);
  return py::make_tuple(dx, dgamma, dbeta);
}

py::dict build_info() {
  const fastbn::BuildInfo b = fastbn::build_info();
  py::dict d;
  d["version"] = b.version;
  d["simd"] = fastbn::simd();
  d["simd_compiled"] = b.simd_compiled;
  d["openmp"] = b.openmp;
  d["openmp_version"] = b.openmp_version;
  d["max_threads"] = b.max_threads;
  d["num_threads"] = fastbn::get_num_threads();
  d["cuda"] = b.cuda;
  d["cuda_version"] = b.cuda_version;
  d["cuda_architectures"] = b.cuda_architectures;
  d["compiler"] = b.compiler;
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastbn core kernels (internal; use the fastbn package)";
  fastbn::detail::quiet_simd_warning();  // the package turns it into a RuntimeWarning
  m.attr("__version__") = FASTBN_VERSION;

  py::register_exception_translator([](std::exception_ptr ep) {
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const fastbn::Error& e) {
      switch (e.status()) {
        case fastbn::Status::out_of_memory:
          PyErr_SetString(PyExc_MemoryError, e.what());
          break;
        case fastbn::Status::no_cuda:
        case fastbn::Status::cuda:
        case fastbn::Status::internal:
          PyErr_SetString(PyExc_RuntimeError, e.what());
          break;
        default:
          PyErr_SetString(PyExc_ValueError, e.what());
      }
    }
  });

  m.def("train", &train, py::arg("x"), py::arg("residual"), py::arg("y"), py::arg("gamma"), py::arg("beta"),
        py::arg("mean"), py::arg("var"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"),
        py::arg("act"), py::arg("slope"));
  m.def("infer", &infer, py::arg("x"), py::arg("residual"), py::arg("y"), py::arg("mean"), py::arg("var"),
        py::arg("gamma"), py::arg("beta"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"),
        py::arg("act"), py::arg("slope"), py::arg("f64_stats"));
  m.def("backward", &backward, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("mean"), py::arg("var"),
        py::arg("gamma"), py::arg("beta"), py::arg("dx"), py::arg("dresidual"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"), py::arg("batch_stats"),
        py::arg("act"), py::arg("slope"));
  m.def("local_stats", &local_stats, py::arg("x"), py::arg("mean"), py::arg("m2"), py::arg("outer"),
        py::arg("channels"), py::arg("inner"));
  m.def("merge_stats", &merge_stats, py::arg("count"), py::arg("mean"), py::arg("m2"), py::arg("channels"));
  m.def("update_running_stats", &update_running_stats, py::arg("running_mean"), py::arg("running_var"),
        py::arg("mean"), py::arg("var"), py::arg("count"), py::arg("momentum"));
  m.def("backward_reduce", &backward_reduce, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("mean"),
        py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("sum_dy"), py::arg("sum_dy_xhat"),
        py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"), py::arg("act"), py::arg("slope"));
  m.def("backward_apply", &backward_apply, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("mean"),
        py::arg("var"), py::arg("gamma"), py::arg("beta"), py::arg("sum_dy"), py::arg("sum_dy_xhat"),
        py::arg("count"), py::arg("dx"), py::arg("dresidual"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("eps"), py::arg("act"), py::arg("slope"));
  m.def("set_min_bytes_per_thread", &fastbn::detail::set_min_bytes_per_thread, py::arg("bytes"));
  m.def("min_bytes_per_thread", &fastbn::detail::min_bytes_per_thread);
  m.def("reset_min_bytes_per_thread", &fastbn::detail::reset_min_bytes_per_thread);
  m.def("min_bytes_per_thread_now", &fastbn::detail::min_bytes_per_thread_now);
  m.def("_note_thread_start", &fastbn::detail::note_thread_start, py::arg("delay_ns"), py::arg("threads"),
        py::arg("idle_ns") = 0, py::arg("runnable") = -1);
  m.def("_runnable_threads", &fastbn::detail::runnable_threads);
  m.def("_forget_crowding", &fastbn::detail::forget_crowding);
  m.def("set_stream_min_bytes", &fastbn::detail::set_stream_min_bytes, py::arg("bytes"));
  m.def("stream_min_bytes", &fastbn::detail::stream_min_bytes);
  m.def("reset_stream_min_bytes", &fastbn::detail::reset_stream_min_bytes);
  m.def("cache_keeps_writes", &fastbn::detail::cache_keeps_writes);
  m.def("set_core_cache_bytes", &fastbn::detail::set_core_cache_bytes, py::arg("bytes"));
  m.def("core_cache_bytes", &fastbn::detail::core_cache_bytes);
  m.def("reset_core_cache_bytes", &fastbn::detail::reset_core_cache_bytes);
  m.def("ptr_train", &ptr_train, py::arg("code"), py::arg("x"), py::arg("residual"), py::arg("y"), py::arg("gamma"),
        py::arg("beta"), py::arg("mean"), py::arg("var"), py::arg("outer"), py::arg("channels"), py::arg("inner"),
        py::arg("eps"), py::arg("act"), py::arg("slope"), py::arg("running_mean") = 0, py::arg("running_var") = 0,
        py::arg("running") = 0, py::arg("momentum") = 0.0, py::arg("tracked") = 0);
  m.def("ptr_infer", &ptr_infer);
  m.def("ptr_backward", &ptr_backward);
  m.def("ptr_stats", &ptr_stats);
  m.def("ptr_update_running_stats", &ptr_update_running_stats);
  m.def("ptr_backward_reduce", &ptr_backward_reduce);
  m.def("ptr_backward_apply", &ptr_backward_apply);
  m.def("dtype_code", [](const py::dtype& d) { return static_cast<int>(code_of(d)); },
        "0 float32, 1 float64, 2 bfloat16, 3 float16, 4 anything else (compared by value).");
  m.def("set_num_threads", &fastbn::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &fastbn::get_num_threads);
  m.def("simd", [] { return std::string(fastbn::simd()); });
  m.def("simd_supported", [](const std::string& name) { return fastbn::simd_supported(name.c_str()); },
        py::arg("name"));
  m.def("set_simd", [](const std::string& name) { fastbn::set_simd(name.c_str()); }, py::arg("name"));
  m.def("simd_warning", [] { return std::string(fastbn::simd_warning()); });
  m.def("build_info", &build_info);
  m.def("infer_simple", &infer_simple, py::arg("x"), py::arg("mean"), py::arg("var"), py::arg("gamma"), py::arg("beta"),
        py::arg("axis"), py::arg("eps"), py::arg("out"), py::arg("act") = 0, py::arg("slope") = 0.0,
        py::arg("residual") = py::none());
  m.def("train_simple", &train_simple, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("axis"),
        py::arg("eps"), py::arg("out"), py::arg("act") = 0, py::arg("slope") = 0.0, py::arg("residual") = py::none());
  m.def("backward_simple", &backward_simple, py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("var"),
        py::arg("gamma"), py::arg("axis"), py::arg("eps"), py::arg("batch_stats"), py::arg("out"), py::arg("act") = 0,
        py::arg("slope") = 0.0, py::arg("y") = py::none(), py::arg("beta") = py::none(),
        py::arg("want_dresidual") = false);
  m.def("empty", &cached_empty, py::arg("shape"), py::arg("dtype"),
        "A new C-contiguous array from the output cache (uninitialized).");
  m.def("output_cache_info", [] {
    py::dict d;
    d["idle_bytes"] = fastbn_py::cache_idle_bytes();
    d["limit_bytes"] = fastbn_py::cache_limit();
    return d;
  });
  m.def("set_output_cache_limit", &fastbn_py::cache_set_limit, py::arg("bytes"));
  m.def("empty_output_cache", &fastbn_py::cache_clear);
  m.def("cuda_is_available", &fastbn::cuda::is_available);
  m.def("cuda_device_count", &fastbn::cuda::device_count);
  m.def("cuda_device_description", &fastbn::cuda::device_description, py::arg("device") = 0);
  m.def("cuda_synchronize", [](uintptr_t stream) {
    py::gil_scoped_release nogil;
    fastbn::cuda::synchronize(reinterpret_cast<void*>(stream));
  }, py::arg("stream") = 0);
  m.def("cuda_train", &cuda_train);
  m.def("cuda_infer", &cuda_infer);
  m.def("cuda_backward", &cuda_backward);
  m.def("cuda_update_running_stats", &cuda_update_running_stats);
  py::class_<DeviceBuffer>(m, "DeviceBuffer")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("ptr", &DeviceBuffer::ptr)
      .def_property_readonly("nbytes", &DeviceBuffer::nbytes)
      .def("copy_from_host", [](DeviceBuffer& b, const py::array& a) {
        py::array c = py::array::ensure(a, py::array::c_style);
        const py::buffer_info info = c.request();
        check_host_bytes(info, b.nbytes());
        py::gil_scoped_release nogil;
        fastbn::cuda::copy_to_device(reinterpret_cast<void*>(b.ptr()), info.ptr, b.nbytes());
      }, py::arg("host"))
      .def("copy_to_host", [](const DeviceBuffer& b, py::array& a) {
        const py::buffer_info info = a.request(true);
        if (!(py::detail::array_proxy(a.ptr())->flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_)) {
          throw py::value_error("fastbn: the host array must be C-contiguous");
        }
        check_host_bytes(info, b.nbytes());
        py::gil_scoped_release nogil;
        fastbn::cuda::copy_to_host(info.ptr, reinterpret_cast<const void*>(b.ptr()), b.nbytes());
      }, py::arg("host"))
      .def("copy_from_device", [](DeviceBuffer& b, uintptr_t src) {
        py::gil_scoped_release nogil;
        fastbn::cuda::copy_on_device(reinterpret_cast<void*>(b.ptr()), reinterpret_cast<const void*>(src),
                                     b.nbytes());
      }, py::arg("src"));
  m.def("stream_add", &stream_add, py::arg("a"), py::arg("b"), py::arg("dst"),
        "dst = a + b (float32) with streaming stores on all threads: the benchmark's 3S yardstick.");
  m.def("stream_read", &stream_read, py::arg("src"),
        "The sum of float32 src, read on all threads: the benchmark's read-only yardstick (S bytes, no writes).");
  m.def("stream_copy", &stream_copy, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst with streaming stores on all threads (the benchmark's bandwidth yardstick).");
}
