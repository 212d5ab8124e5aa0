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

// Validated view of one argument: its data pointer, or null for an optional None.
struct Arg {
  void* ptr = nullptr;
};

bool is_float32(const py::dtype& d) { return d.is(py::dtype::of<float>()); }

// dtype of the main tensor: float32 or float64, else TypeError.
py::dtype main_dtype(const py::array& x) {
  const py::dtype d = x.dtype();
  if (!is_float32(d) && !d.is(py::dtype::of<double>())) {
    throw py::type_error("fastbn: expected a float32 or float64 array, got dtype " + std::string(py::str(d)));
  }
  return d;
}

Arg check(const py::handle& obj, const char* name, const py::dtype& dtype, int64_t size, bool writable,
          bool optional) {
  if (obj.is_none()) {
    if (!optional) throw py::value_error(std::string("fastbn: ") + name + " must not be None");
    return {};
  }
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string("fastbn: ") + name + " must be a numpy array");
  }
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(dtype)) {
    throw py::type_error(std::string("fastbn: ") + name + " has dtype " + std::string(py::str(a.dtype())) +
                         ", expected " + std::string(py::str(dtype)) + " like x");
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
  return {const_cast<void*>(a.data())};
}

fastbn::Shape shape_of(int64_t outer, int64_t channels, int64_t inner) {
  if (outer < 1 || channels < 1 || inner < 1) {
    throw py::value_error("fastbn: outer, channels and inner must be >= 1");
  }
  return {outer, channels, inner};
}

template <class T>
T* p(const Arg& a) {
  return static_cast<T*>(a.ptr);
}

void train(const py::array& x, const py::array& y, const py::object& gamma, const py::object& beta,
           const py::array& mean, const py::array& var, int64_t outer, int64_t channels, int64_t inner,
           double eps) {
  const fastbn::Shape s = shape_of(outer, channels, inner);
  const py::dtype dt = main_dtype(x);
  const int64_t n = outer * channels * inner;
  const Arg ax = check(x, "x", dt, n, false, false), ay = check(y, "y", dt, n, true, false);
  const Arg ag = check(gamma, "gamma", dt, channels, false, true), ab = check(beta, "beta", dt, channels, false, true);
  const Arg am = check(mean, "mean", dt, channels, true, false), av = check(var, "var", dt, channels, true, false);
  py::gil_scoped_release nogil;
  if (is_float32(dt)) {
    fastbn::forward_train(p<float>(ax), p<float>(ay), p<float>(ag), p<float>(ab), p<float>(am), p<float>(av), s, eps);
  } else {
    fastbn::forward_train(p<double>(ax), p<double>(ay), p<double>(ag), p<double>(ab), p<double>(am),
                          p<double>(av), s, eps);
  }
}

void infer(const py::array& x, const py::array& y, const py::array& mean, const py::array& var,
           const py::object& gamma, const py::object& beta, int64_t outer, int64_t channels, int64_t inner,
           double eps) {
  const fastbn::Shape s = shape_of(outer, channels, inner);
  const py::dtype dt = main_dtype(x);
  const int64_t n = outer * channels * inner;
  const Arg ax = check(x, "x", dt, n, false, false), ay = check(y, "y", dt, n, true, false);
  const Arg am = check(mean, "mean", dt, channels, false, false), av = check(var, "var", dt, channels, false, false);
  const Arg ag = check(gamma, "gamma", dt, channels, false, true), ab = check(beta, "beta", dt, channels, false, true);
  py::gil_scoped_release nogil;
  if (is_float32(dt)) {
    fastbn::forward_infer(p<float>(ax), p<float>(ay), p<float>(am), p<float>(av), p<float>(ag), p<float>(ab), s, eps);
  } else {
    fastbn::forward_infer(p<double>(ax), p<double>(ay), p<double>(am), p<double>(av), p<double>(ag),
                          p<double>(ab), s, eps);
  }
}

void backward(const py::array& dy, const py::array& x, const py::array& mean, const py::array& var,
              const py::object& gamma, const py::array& dx, const py::object& dgamma, const py::object& dbeta,
              int64_t outer, int64_t channels, int64_t inner, double eps, bool batch_stats) {
  const fastbn::Shape s = shape_of(outer, channels, inner);
  const py::dtype dt = main_dtype(x);
  const int64_t n = outer * channels * inner;
  const Arg ady = check(dy, "dy", dt, n, false, false), ax = check(x, "x", dt, n, false, false);
  const Arg am = check(mean, "mean", dt, channels, false, false), av = check(var, "var", dt, channels, false, false);
  const Arg ag = check(gamma, "gamma", dt, channels, false, true);
  const Arg adx = check(dx, "dx", dt, n, true, false);
  const Arg adg = check(dgamma, "dgamma", dt, channels, true, true);
  const Arg adb = check(dbeta, "dbeta", dt, channels, true, true);
  py::gil_scoped_release nogil;
  if (is_float32(dt)) {
    fastbn::backward(p<float>(ady), p<float>(ax), p<float>(am), p<float>(av), p<float>(ag), p<float>(adx),
                     p<float>(adg), p<float>(adb), s, eps, batch_stats);
  } else {
    fastbn::backward(p<double>(ady), p<double>(ax), p<double>(am), p<double>(av), p<double>(ag), p<double>(adx),
                     p<double>(adg), p<double>(adb), s, eps, batch_stats);
  }
}

void stream_copy(const py::array& src, const py::array& dst) {
  const py::dtype f32 = py::dtype::of<float>();
  const int64_t n = static_cast<int64_t>(src.size());
  const Arg a = check(src, "src", f32, n, false, false), b = check(dst, "dst", f32, n, true, false);
  py::gil_scoped_release nogil;
  fastbn::detail::stream_copy(p<float>(a), p<float>(b), n);
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
  const fastbn::Shape s = shape_of(outer, channels, inner);
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
  const fastbn::Shape s = shape_of(outer, channels, inner);
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
  const fastbn::Shape s = shape_of(outer, channels, inner);
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
// kernel, so fastbn/functional.py first offers the call here: x an aligned, C-contiguous float32/float64
// ndarray with ndim >= 2, axis a plain int in range, eps a positive finite float, every per-channel array None
// or a 1-D aligned contiguous array of x's dtype and length C. Anything else returns None, and the general
// path (with its error messages) takes over. Nothing is checked less: only the answer "not simple" is quicker.

struct SimpleView {
  py::array x;
  fastbn::Shape shape;
};

bool simple_x(py::handle obj, py::handle axis_obj, py::handle eps_obj, SimpleView& v, double& eps) {
  if (!py::isinstance<py::array>(obj) || !PyLong_CheckExact(axis_obj.ptr()) || !PyFloat_CheckExact(eps_obj.ptr())) {
    return false;
  }
  eps = PyFloat_AS_DOUBLE(eps_obj.ptr());
  if (!(eps > 0) || !std::isfinite(eps)) return false;
  v.x = py::reinterpret_borrow<py::array>(obj);
  const py::dtype dt = v.x.dtype();
  if (!is_float32(dt) && !dt.is(py::dtype::of<double>())) return false;
  const int flags = py::detail::array_proxy(v.x.ptr())->flags;
  if (!(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) || !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    return false;
  }
  const int64_t ndim = v.x.ndim();
  int64_t axis = PyLong_AsLongLong(axis_obj.ptr());
  if (ndim < 2 || axis < -ndim || axis >= ndim || v.x.size() == 0) return false;
  if (axis < 0) axis += ndim;
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= v.x.shape(i);
  for (int64_t i = axis + 1; i < ndim; ++i) inner *= v.x.shape(i);
  v.shape = {outer, v.x.shape(axis), inner};
  return true;
}

bool simple_channels(py::handle obj, const py::dtype& dt, int64_t channels, bool optional, void*& ptr) {
  ptr = nullptr;
  if (obj.is_none()) return optional;
  if (!py::isinstance<py::array>(obj)) return false;
  const auto a = py::reinterpret_borrow<py::array>(obj);
  const int flags = py::detail::array_proxy(a.ptr())->flags;
  if (!a.dtype().is(dt) || a.ndim() != 1 || a.shape(0) != channels ||
      !(flags & py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_) || !(flags & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
    return false;
  }
  ptr = const_cast<void*>(a.data());
  return true;
}

// The output: a new array like x, or `out` when it is simple too (same shape and dtype, C-contiguous, aligned,
// writable) and either is x itself (in place) or does not overlap it. False: not simple.
bool simple_out(py::handle out, const py::array& x, py::array& y) {
  if (out.is_none()) {
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    const bool big = static_cast<size_t>(x.nbytes()) >= kCachedMinBytes;
    y = big ? cached_empty(shape, x.dtype()) : py::array(x.dtype(), shape);
    return true;
  }
  if (!py::isinstance<py::array>(out)) return false;
  auto o = py::reinterpret_borrow<py::array>(out);
  const int flags = py::detail::array_proxy(o.ptr())->flags;
  constexpr int kNeed = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ALIGNED_ |
                        py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  if ((flags & kNeed) != kNeed || !o.dtype().is(x.dtype()) || o.ndim() != x.ndim() ||
      !std::equal(x.shape(), x.shape() + x.ndim(), o.shape())) {
    return false;
  }
  const auto* xb = static_cast<const char*>(x.data());
  const auto* ob = static_cast<const char*>(o.data());
  if (xb != ob && ob < xb + x.nbytes() && xb < ob + o.nbytes()) return false;
  y = o;
  return true;
}

py::object infer_simple(py::handle x, py::handle mean, py::handle var, py::handle gamma, py::handle beta,
                        py::handle axis, py::handle eps_obj, py::handle out) {
  SimpleView v;
  double eps = 0;
  void *m, *s, *g, *b;
  if (!simple_x(x, axis, eps_obj, v, eps)) return py::none();
  const py::dtype dt = v.x.dtype();
  const int64_t C = v.shape.channels;
  if (!simple_channels(mean, dt, C, false, m) || !simple_channels(var, dt, C, false, s) ||
      !simple_channels(gamma, dt, C, true, g) || !simple_channels(beta, dt, C, true, b)) {
    return py::none();
  }
  py::array y;
  if (!simple_out(out, v.x, y)) return py::none();
  void* yp = y.mutable_data();
  const void* xp = v.x.data();
  {
    py::gil_scoped_release nogil;
    if (is_float32(dt)) {
      fastbn::forward_infer(static_cast<const float*>(xp), static_cast<float*>(yp), static_cast<float*>(m),
                            static_cast<float*>(s), static_cast<float*>(g), static_cast<float*>(b), v.shape, eps);
    } else {
      fastbn::forward_infer(static_cast<const double*>(xp), static_cast<double*>(yp), static_cast<double*>(m),
                            static_cast<double*>(s), static_cast<double*>(g), static_cast<double*>(b), v.shape, eps);
    }
  }
  return std::move(y);
}

py::object train_simple(py::handle x, py::handle gamma, py::handle beta, py::handle axis, py::handle eps_obj,
                        py::handle out) {
  SimpleView v;
  double eps = 0;
  void *g, *b;
  if (!simple_x(x, axis, eps_obj, v, eps)) return py::none();
  const py::dtype dt = v.x.dtype();
  const int64_t C = v.shape.channels;
  if (v.shape.outer * v.shape.inner < 2 || !simple_channels(gamma, dt, C, true, g) ||
      !simple_channels(beta, dt, C, true, b)) {
    return py::none();
  }
  py::array y;
  if (!simple_out(out, v.x, y)) return py::none();
  py::array mean(dt, std::vector<py::ssize_t>{C}), var(dt, std::vector<py::ssize_t>{C});
  void *yp = y.mutable_data(), *mp = mean.mutable_data(), *vp = var.mutable_data();
  const void* xp = v.x.data();
  {
    py::gil_scoped_release nogil;
    if (is_float32(dt)) {
      fastbn::forward_train(static_cast<const float*>(xp), static_cast<float*>(yp), static_cast<float*>(g),
                            static_cast<float*>(b), static_cast<float*>(mp), static_cast<float*>(vp), v.shape, eps);
    } else {
      fastbn::forward_train(static_cast<const double*>(xp), static_cast<double*>(yp), static_cast<double*>(g),
                            static_cast<double*>(b), static_cast<double*>(mp), static_cast<double*>(vp), v.shape,
                            eps);
    }
  }
  return py::make_tuple(y, mean, var);
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

  m.def("train", &train, py::arg("x"), py::arg("y"), py::arg("gamma"), py::arg("beta"), py::arg("mean"),
        py::arg("var"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"));
  m.def("infer", &infer, py::arg("x"), py::arg("y"), py::arg("mean"), py::arg("var"), py::arg("gamma"),
        py::arg("beta"), py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("eps"));
  m.def("backward", &backward, py::arg("dy"), py::arg("x"), py::arg("mean"), py::arg("var"), py::arg("gamma"),
        py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"), py::arg("outer"), py::arg("channels"),
        py::arg("inner"), py::arg("eps"), py::arg("batch_stats"));

  m.def("set_num_threads", &fastbn::set_num_threads, py::arg("n"));
  m.def("get_num_threads", &fastbn::get_num_threads);
  m.def("simd", [] { return std::string(fastbn::simd()); });
  m.def("simd_supported", [](const std::string& name) { return fastbn::simd_supported(name.c_str()); },
        py::arg("name"));
  m.def("set_simd", [](const std::string& name) { fastbn::set_simd(name.c_str()); }, py::arg("name"));
  m.def("simd_warning", [] { return std::string(fastbn::simd_warning()); });
  m.def("build_info", &build_info);
  m.def("infer_simple", &infer_simple);
  m.def("train_simple", &train_simple);
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
  m.def("stream_copy", &stream_copy, py::arg("src"), py::arg("dst"),
        "Copy float32 src into dst with streaming stores on all threads (the benchmark's bandwidth yardstick).");
}
