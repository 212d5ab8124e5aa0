// CUDA backend tests: every pass on device memory against the CPU kernels (which test_core checks against a
// float64 reference), over both layouts, both dtypes, optional arguments left out, in place and at unaligned
// addresses; the same bits on every run; large-mean accuracy, constant channels, the running-statistics update,
// and argument errors that throw before anything is written. Uses only fastbn's own device-memory helpers, so
// it builds with the host compiler. Exits 77 (skipped) without a usable device.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "fastbn/batchnorm.hpp"
#include "fastbn/cuda.hpp"

namespace {

// Reports which case a failed CHECK belongs to.
struct Context {
  std::string what;
  int failures_before;
  explicit Context(std::string w) : what(std::move(w)), failures_before(g_failures) {}
  ~Context() {
    if (g_failures != failures_before) std::fprintf(stderr, "  ... in %s\n", what.c_str());
  }
};

std::string describe(const fastbn::Shape& s) {
  return "(" + std::to_string(s.outer) + ", " + std::to_string(s.channels) + ", " + std::to_string(s.inner) + ")";
}

// Device buffer of n values of T, at `offset` elements past a 256-byte aligned allocation (offset 1 makes every
// 16-byte access unaligned).
template <class T>
class Buffer {
 public:
  explicit Buffer(size_t n, size_t offset = 0)
      : n_(n), base_(fastbn::cuda::device_alloc((n + offset) * sizeof(T))), p_(static_cast<T*>(base_) + offset) {}
  Buffer(const std::vector<T>& v, size_t offset = 0) : Buffer(v.size(), offset) { put(v); }
  ~Buffer() { fastbn::cuda::device_free(base_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  T* get() const { return p_; }
  void put(const std::vector<T>& v) { fastbn::cuda::copy_to_device(p_, v.data(), v.size() * sizeof(T)); }
  std::vector<T> read() const {
    std::vector<T> v(n_);
    fastbn::cuda::synchronize();
    fastbn::cuda::copy_to_host(v.data(), p_, n_ * sizeof(T));
    return v;
  }

 private:
  size_t n_;
  void* base_;
  T* p_;
};

template <class T>
std::vector<T> random_vector(size_t n, double scale, double offset, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(dist(gen) * scale + offset);
  return v;
}

// Largest |got - want| / (1 + |want|); NaN anywhere counts as infinitely wrong.
template <class T, class U>
double max_err(const std::vector<T>& got, const std::vector<U>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double w = static_cast<double>(want[i]);
    const double d = std::fabs(static_cast<double>(got[i]) - w) / (1.0 + std::fabs(w));
    if (!(d <= e)) e = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return e;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// The outputs of every pass for one input, from either backend.
template <class T>
struct Results {
  std::vector<T> y, mean, var;  // forward_train with gamma and beta
  std::vector<T> y0;            // forward_train without gamma and beta
  std::vector<T> yi;            // forward_infer with the training statistics
  std::vector<T> dx, dg, db;    // backward, batch statistics
  std::vector<T> dx0;           // backward, batch statistics, no gamma / dgamma / dbeta
  std::vector<T> fx, fg, fb;    // backward, frozen statistics
  std::vector<T> fx0;           // backward, frozen statistics, no dgamma / dbeta
};

template <class T>
struct Inputs {
  fastbn::Shape s;
  std::vector<T> x, dy, gamma, beta;
  double eps = 1e-2;  // large enough that an eps dropped anywhere shows in float
  size_t n() const { return x.size(); }
  size_t c() const { return static_cast<size_t>(s.channels); }
};

template <class T>
Inputs<T> make_inputs(const fastbn::Shape& s) {
  const size_t n = static_cast<size_t>(s.outer * s.channels * s.inner);
  Inputs<T> in;
  in.s = s;
  in.x = random_vector<T>(n, 2.0, 0.5, 1);
  in.dy = random_vector<T>(n, 1.0, 0.1, 2);
  in.gamma = random_vector<T>(s.channels, 0.5, 1.0, 3);
  in.beta = random_vector<T>(s.channels, 1.0, 0.0, 4);
  return in;
}

template <class T>
Results<T> run_cpu(const Inputs<T>& in) {
  const size_t n = in.n(), C = in.c();
  Results<T> r;
  r.y.resize(n), r.y0.resize(n), r.yi.resize(n), r.dx.resize(n), r.dx0.resize(n), r.fx.resize(n), r.fx0.resize(n);
  r.mean.resize(C), r.var.resize(C), r.dg.resize(C), r.db.resize(C), r.fg.resize(C), r.fb.resize(C);
  std::vector<T> m0(C), v0(C);
  fastbn::forward_train(in.x.data(), r.y.data(), in.gamma.data(), in.beta.data(), r.mean.data(), r.var.data(), in.s,
                        in.eps);
  fastbn::forward_train(in.x.data(), r.y0.data(), nullptr, nullptr, m0.data(), v0.data(), in.s, in.eps);
  fastbn::forward_infer(in.x.data(), r.yi.data(), r.mean.data(), r.var.data(), in.gamma.data(), in.beta.data(),
                        in.s, in.eps);
  fastbn::backward(in.dy.data(), in.x.data(), r.mean.data(), r.var.data(), in.gamma.data(), r.dx.data(),
                   r.dg.data(), r.db.data(), in.s, in.eps, true);
  fastbn::backward(in.dy.data(), in.x.data(), r.mean.data(), r.var.data(), nullptr, r.dx0.data(), nullptr, nullptr,
                   in.s, in.eps, true);
  fastbn::backward(in.dy.data(), in.x.data(), r.mean.data(), r.var.data(), in.gamma.data(), r.fx.data(),
                   r.fg.data(), r.fb.data(), in.s, in.eps, false);
  fastbn::backward(in.dy.data(), in.x.data(), r.mean.data(), r.var.data(), in.gamma.data(), r.fx0.data(), nullptr,
                   nullptr, in.s, in.eps, false);
  return r;
}

// The same calls on the device. The backward passes take the CPU's statistics, so that they are compared on
// the same input.
template <class T>
Results<T> run_cuda(const Inputs<T>& in, const Results<T>& cpu, size_t offset) {
  const size_t n = in.n(), C = in.c();
  Buffer<T> x(in.x, offset), dy(in.dy, offset), gamma(in.gamma, offset), beta(in.beta, offset);
  Buffer<T> cmean(cpu.mean, offset), cvar(cpu.var, offset);
  Buffer<T> y(n, offset), mean(C, offset), var(C, offset), dx(n, offset), dg(C, offset), db(C, offset);
  const fastbn::Shape& s = in.s;
  Results<T> r;
  fastbn::cuda::forward_train(x.get(), y.get(), gamma.get(), beta.get(), mean.get(), var.get(), s, in.eps);
  r.y = y.read(), r.mean = mean.read(), r.var = var.read();
  fastbn::cuda::forward_train(x.get(), y.get(), nullptr, nullptr, mean.get(), var.get(), s, in.eps);
  r.y0 = y.read();
  fastbn::cuda::forward_infer(x.get(), y.get(), cmean.get(), cvar.get(), gamma.get(), beta.get(), s, in.eps);
  r.yi = y.read();
  fastbn::cuda::backward(dy.get(), x.get(), cmean.get(), cvar.get(), gamma.get(), dx.get(), dg.get(), db.get(), s,
                         in.eps, true);
  r.dx = dx.read(), r.dg = dg.read(), r.db = db.read();
  fastbn::cuda::backward(dy.get(), x.get(), cmean.get(), cvar.get(), nullptr, dx.get(), nullptr, nullptr, s, in.eps,
                         true);
  r.dx0 = dx.read();
  fastbn::cuda::backward(dy.get(), x.get(), cmean.get(), cvar.get(), gamma.get(), dx.get(), dg.get(), db.get(), s,
                         in.eps, false);
  r.fx = dx.read(), r.fg = dg.read(), r.fb = db.read();
  fastbn::cuda::backward(dy.get(), x.get(), cmean.get(), cvar.get(), gamma.get(), dx.get(), nullptr, nullptr, s,
                         in.eps, false);
  r.fx0 = dx.read();
  return r;
}

template <class T>
bool same_results(const Results<T>& a, const Results<T>& b) {
  return same_bits(a.y, b.y) && same_bits(a.mean, b.mean) && same_bits(a.var, b.var) && same_bits(a.y0, b.y0) &&
         same_bits(a.yi, b.yi) && same_bits(a.dx, b.dx) && same_bits(a.dg, b.dg) && same_bits(a.db, b.db) &&
         same_bits(a.dx0, b.dx0) && same_bits(a.fx, b.fx) && same_bits(a.fg, b.fg) && same_bits(a.fb, b.fb) &&
         same_bits(a.fx0, b.fx0);
}

template <class T>
void check_shape(const fastbn::Shape& s, double tol) {
  const Context ctx(std::string(sizeof(T) == 4 ? "float" : "double") + " shape " + describe(s));
  const Inputs<T> in = make_inputs<T>(s);
  const Results<T> c = run_cpu(in);
  const Results<T> g = run_cuda(in, c, 0);
  const double sums_tol = 10 * tol * std::sqrt(static_cast<double>(s.outer * s.inner));
  CHECK(max_err(g.y, c.y) < tol);
  CHECK(max_err(g.mean, c.mean) < tol);
  CHECK(max_err(g.var, c.var) < tol);
  CHECK(max_err(g.y0, c.y0) < tol);
  CHECK(max_err(g.yi, c.yi) < tol);
  CHECK(max_err(g.dx, c.dx) < 10 * tol);
  CHECK(max_err(g.dg, c.dg) < sums_tol);
  CHECK(max_err(g.db, c.db) < sums_tol);
  CHECK(max_err(g.dx0, c.dx0) < 10 * tol);
  CHECK(max_err(g.fx, c.fx) < 10 * tol);
  CHECK(max_err(g.fg, c.fg) < sums_tol);
  CHECK(max_err(g.fb, c.fb) < sums_tol);
  CHECK(max_err(g.fx0, c.fx0) < 10 * tol);

  // The same bits on a second run, and at unaligned addresses (other load instructions, the same sums).
  CHECK(same_results(g, run_cuda(in, c, 0)));
  CHECK(same_results(g, run_cuda(in, c, 1)));
}

void test_passes() {
  const std::vector<fastbn::Shape> shapes = {
      {7, 5, 9},        // odd inner: one value per access
      {40, 3, 1},       // channels-last, C not a multiple of the vector width
      {64, 3, 256},     // NCHW-like, 16-byte accesses
      {16, 48, 49},     // 7x7 planes
      {3000, 37, 1},    // many rows, odd C
      {2, 1, 5},        // tiny
      {128, 96, 1},     // channels-last, whole vectors
      {33, 300, 1},     // channels-last, several channel tiles, the last one partial
      {5, 1000, 2},     // many channels, very short runs
      {3, 7, 4096},     // long runs, several chunks per channel
      {1, 2, 70001},    // one long odd run per channel
      {4, 1, 1 << 20},  // one channel, many chunks
      {1100003, 4, 1},  // channels-last with more than 256 chunks per channel
      // The resident path (compute capability 9.0+) with clusters of several blocks: 800 KB channels (8 blocks
      // in float, 16 in double and in the float backward), channels-last tiles over 16 and 11 blocks.
      {16, 4, 12544},
      {12544, 64, 1},
      {8192, 96, 1},
      {9, 6, 20001},    // odd runs, one value per access, 3-6 blocks per channel
  };
  for (const auto& s : shapes) {
    check_shape<float>(s, 2e-5);
    check_shape<double>(s, 1e-11);
  }
}

// Outputs may alias inputs: y == x, dx == dy.
template <class T>
void test_in_place() {
  const Context ctx("in place");
  for (const fastbn::Shape& s : {fastbn::Shape{16, 24, 49}, fastbn::Shape{500, 24, 1}}) {
    const Inputs<T> in = make_inputs<T>(s);
    const size_t C = in.c();
    Buffer<T> x(in.x), y(in.n()), mean(C), var(C), gamma(in.gamma), beta(in.beta), dy(in.dy), dx(in.n());
    fastbn::cuda::forward_train(x.get(), y.get(), gamma.get(), beta.get(), mean.get(), var.get(), s, in.eps);
    fastbn::cuda::backward(dy.get(), x.get(), mean.get(), var.get(), gamma.get(), dx.get(), nullptr, nullptr, s,
                           in.eps, true);
    const std::vector<T> want_y = y.read(), want_dx = dx.read();
    Buffer<T> xy(in.x), dydx(in.dy);
    fastbn::cuda::backward(dydx.get(), x.get(), mean.get(), var.get(), gamma.get(), dydx.get(), nullptr, nullptr, s,
                           in.eps, true);
    fastbn::cuda::forward_train(xy.get(), xy.get(), gamma.get(), beta.get(), mean.get(), var.get(), s, in.eps);
    CHECK(same_bits(xy.read(), want_y));
    CHECK(same_bits(dydx.read(), want_dx));
  }
}

// float32 data with mean 1e4 and std 1: the variance must still be right to 1e-3 of a float64 computation.
void test_large_mean() {
  for (const fastbn::Shape& s : {fastbn::Shape{256, 4, 100}, fastbn::Shape{25600, 4, 1}, fastbn::Shape{8, 3, 3136}}) {
    const Context ctx("large mean " + describe(s));
    const size_t n = static_cast<size_t>(s.outer * s.channels * s.inner), C = static_cast<size_t>(s.channels);
    const auto x = random_vector<float>(n, 1.0, 1e4, 7);
    std::vector<double> m(C, 0), v(C, 0), yref(n);
    const double cnt = static_cast<double>(s.outer * s.inner);
    auto at = [&](int64_t o, int64_t c, int64_t i) { return static_cast<size_t>((o * s.channels + c) * s.inner + i); };
    for (int64_t c = 0; c < s.channels; ++c) {
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t i = 0; i < s.inner; ++i) m[c] += x[at(o, c, i)];
      m[c] /= cnt;
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t i = 0; i < s.inner; ++i) v[c] += (x[at(o, c, i)] - m[c]) * (x[at(o, c, i)] - m[c]);
      v[c] /= cnt;
      for (int64_t o = 0; o < s.outer; ++o)
        for (int64_t i = 0; i < s.inner; ++i) yref[at(o, c, i)] = (x[at(o, c, i)] - m[c]) / std::sqrt(v[c] + 1e-5);
    }
    Buffer<float> dx(x), dy(n), dmean(C), dvar(C);
    fastbn::cuda::forward_train(dx.get(), dy.get(), nullptr, nullptr, dmean.get(), dvar.get(), s, 1e-5);
    const std::vector<float> y = dy.read(), mean = dmean.read(), var = dvar.read();
    for (size_t c = 0; c < C; ++c) {
      CHECK(std::fabs(var[c] - v[c]) / v[c] < 1e-3);
      CHECK(std::fabs(mean[c] - m[c]) < 1e-2);
    }
    CHECK(max_err(y, yref) < 1e-3);
  }
}

// A constant channel has var 0 and must give y == beta exactly, for any layout.
template <class T>
void test_constant_channel() {
  const Context ctx("constant channel");
  for (const fastbn::Shape& s : {fastbn::Shape{64, 3, 50}, fastbn::Shape{1000, 8, 1}, fastbn::Shape{9, 5, 7}}) {
    Inputs<T> in = make_inputs<T>(s);
    const T value = static_cast<T>(0.1);  // not a sum of powers of two, so a naive mean would be off
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) in.x[static_cast<size_t>((o * s.channels + 1) * s.inner + i)] = value;
    const size_t C = in.c();
    Buffer<T> x(in.x), y(in.n()), mean(C), var(C), gamma(in.gamma), beta(in.beta);
    fastbn::cuda::forward_train(x.get(), y.get(), gamma.get(), beta.get(), mean.get(), var.get(), s, in.eps);
    const std::vector<T> yv = y.read(), mv = mean.read(), vv = var.read();
    CHECK(mv[1] == value);
    CHECK(vv[1] == 0);
    bool exact = true;
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        exact = exact && yv[static_cast<size_t>((o * s.channels + 1) * s.inner + i)] == in.beta[1];
      }
    CHECK(exact);
  }
}

template <class T>
void test_running_stats() {
  const Context ctx("update_running_stats");
  const int64_t C = 37, count = 50;
  const double factor = 0.1;
  const auto rm = random_vector<T>(C, 1.0, 0.0, 11), rv = random_vector<T>(C, 0.1, 1.0, 12);
  const auto m = random_vector<T>(C, 1.0, 0.5, 13), v = random_vector<T>(C, 0.1, 2.0, 14);
  Buffer<T> drm(rm), drv(rv), dm(m), dv(v);
  fastbn::cuda::update_running_stats(drm.get(), drv.get(), dm.get(), dv.get(), C, count, factor);
  const std::vector<T> gm = drm.read(), gv = drv.read();
  std::vector<double> wm(C), wv(C);
  for (int64_t c = 0; c < C; ++c) {
    wm[c] = (1 - factor) * rm[c] + factor * static_cast<double>(m[c]);
    wv[c] = (1 - factor) * rv[c] + factor * static_cast<double>(v[c]) * count / (count - 1.0);
  }
  const double tol = sizeof(T) == 4 ? 1e-6 : 1e-14;
  CHECK(max_err(gm, wm) < tol);
  CHECK(max_err(gv, wv) < tol);
}

void test_errors() {
  const Context ctx("argument errors");
  using fastbn::Status;
  namespace fc = fastbn::cuda;
  const fastbn::Shape s{4, 3, 1};
  Buffer<float> x(std::vector<float>(12, 1.0f)), y(std::vector<float>(12, 7.0f));
  Buffer<float> m(std::vector<float>(3, 7.0f)), v(std::vector<float>(3, 7.0f));
  const float* none = nullptr;
  expect_error(Status::null_pointer,
               [&] { fc::forward_train(none, y.get(), nullptr, nullptr, m.get(), v.get(), s, 1e-5); });
  expect_error(Status::null_pointer,
               [&] { fc::forward_train(x.get(), y.get(), nullptr, nullptr, nullptr, v.get(), s, 1e-5); });
  expect_error(Status::bad_shape, [&] {
    fc::forward_train(x.get(), y.get(), nullptr, nullptr, m.get(), v.get(), fastbn::Shape{0, 3, 1}, 1e-5);
  });
  expect_error(Status::bad_shape, [&] {
    fc::forward_infer(x.get(), y.get(), m.get(), v.get(), nullptr, nullptr, fastbn::Shape{INT64_MAX / 2, 3, 4}, 1e-5);
  });
  expect_error(Status::bad_eps,
               [&] { fc::forward_train(x.get(), y.get(), nullptr, nullptr, m.get(), v.get(), s, -1.0); });
  expect_error(Status::bad_eps,
               [&] { fc::forward_infer(x.get(), y.get(), m.get(), v.get(), nullptr, nullptr, s, NAN); });
  expect_error(Status::too_few_values, [&] {
    fc::forward_train(x.get(), y.get(), nullptr, nullptr, m.get(), v.get(), fastbn::Shape{1, 3, 1}, 1e-5);
  });
  expect_error(Status::null_pointer, [&] {
    fc::backward(x.get(), x.get(), m.get(), v.get(), nullptr, nullptr, nullptr, nullptr, s, 1e-5, true);
  });
  expect_error(Status::null_pointer, [&] { fc::update_running_stats(nullptr, v.get(), m.get(), v.get(), 3, 4, 0.1); });
  expect_error(Status::bad_argument, [&] { fc::update_running_stats(m.get(), v.get(), m.get(), v.get(), 0, 4, 0.1); });
  expect_error(Status::bad_argument, [&] { fc::update_running_stats(m.get(), v.get(), m.get(), v.get(), 3, 1, 0.1); });
  expect_error(Status::bad_argument, [&] { fc::update_running_stats(m.get(), v.get(), m.get(), v.get(), 3, 4, -0.1); });
  expect_error(Status::bad_argument, [&] { fc::update_running_stats(m.get(), v.get(), m.get(), v.get(), 3, 4, 1.5); });
  expect_error(Status::bad_argument, [&] { fc::update_running_stats(m.get(), v.get(), m.get(), v.get(), 3, 4, NAN); });
  for (float e : y.read()) CHECK(e == 7.0f);  // nothing written by the failed calls
  for (float e : m.read()) CHECK(e == 7.0f);
  for (float e : v.read()) CHECK(e == 7.0f);
}

void test_info() {
  CHECK(fastbn::cuda::compiled());
  CHECK(fastbn::cuda::device_count() >= 1);
  CHECK(fastbn::cuda::device_description(0).find("compute capability") != std::string::npos);
  expect_error(fastbn::Status::bad_argument, [] { fastbn::cuda::device_description(-1); });
  CHECK(fastbn::build_info().cuda);
}

}  // namespace

int main() {
  if (!fastbn::cuda::is_available()) {
    std::printf("SKIP: no usable CUDA device\n");
    return 77;
  }
  try {
    test_info();
    test_passes();
    test_in_place<float>();
    test_in_place<double>();
    test_large_mean();
    test_constant_channel<float>();
    test_constant_channel<double>();
    test_running_stats<float>();
    test_running_stats<double>();
    test_errors();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    return 1;
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all CUDA checks passed on %s\n", fastbn::cuda::device_description(0).c_str());
  return 0;
}
