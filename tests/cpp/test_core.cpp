// C++ API unit tests: every pass against a double-precision reference on every SIMD path this CPU has, the
// same bits for any thread count, large-mean accuracy, and errors that throw without writing anything.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "fastbn/batchnorm.hpp"

namespace {

struct Ref {
  std::vector<double> y, mean, var, dx, dgamma, dbeta;
};

// Straight from the definitions, in double, element (o, c, i) at (o * C + c) * L + i.
template <class T>
Ref reference(const std::vector<T>& x, const std::vector<T>& dy, const std::vector<T>& gamma,
              const std::vector<T>& beta, const fastbn::Shape& s, double eps) {
  const int64_t N = s.outer, C = s.channels, L = s.inner;
  const double n = static_cast<double>(N * L);
  Ref r;
  r.y.resize(x.size());
  r.dx.resize(x.size());
  r.mean.assign(C, 0);
  r.var.assign(C, 0);
  r.dgamma.assign(C, 0);
  r.dbeta.assign(C, 0);
  auto at = [&](int64_t o, int64_t c, int64_t i) { return (o * C + c) * L + i; };
  for (int64_t c = 0; c < C; ++c) {
    double m = 0;
    for (int64_t o = 0; o < N; ++o)
      for (int64_t i = 0; i < L; ++i) m += x[at(o, c, i)];
    m /= n;
    double v = 0;
    for (int64_t o = 0; o < N; ++o)
      for (int64_t i = 0; i < L; ++i) v += (x[at(o, c, i)] - m) * (x[at(o, c, i)] - m);
    v /= n;
    const double inv = 1.0 / std::sqrt(v + eps);
    double sdy = 0, sdyxh = 0;
    for (int64_t o = 0; o < N; ++o)
      for (int64_t i = 0; i < L; ++i) {
        const double xh = (x[at(o, c, i)] - m) * inv;
        r.y[at(o, c, i)] = gamma[c] * xh + beta[c];
        sdy += dy[at(o, c, i)];
        sdyxh += dy[at(o, c, i)] * xh;
      }
    for (int64_t o = 0; o < N; ++o)
      for (int64_t i = 0; i < L; ++i) {
        const double xh = (x[at(o, c, i)] - m) * inv;
        r.dx[at(o, c, i)] = gamma[c] * inv * (dy[at(o, c, i)] - sdy / n - xh * sdyxh / n);
      }
    r.mean[c] = m;
    r.var[c] = v;
    r.dgamma[c] = sdyxh;
    r.dbeta[c] = sdy;
  }
  return r;
}

template <class T>
double max_err(const std::vector<T>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]) / (1.0 + std::fabs(want[i]));
    if (!(d <= e)) e = d;  // NaN counts as an error
  }
  return e;
}

template <class T>
std::vector<T> random_vector(size_t n, double scale, double offset, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(dist(gen) * scale + offset);
  return v;
}

struct Outputs {
  template <class T>
  static bool same(const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](T u, T v) {
             return std::memcmp(&u, &v, sizeof(T)) == 0;
           });
  }
};

template <class T>
void check_shape(const fastbn::Shape& s, double tol) {
  const size_t n = static_cast<size_t>(s.outer * s.channels * s.inner);
  const auto x = random_vector<T>(n, 2.0, 0.5, 1);
  const auto dy = random_vector<T>(n, 1.0, 0.1, 2);
  const auto gamma = random_vector<T>(s.channels, 0.5, 1.0, 3);
  const auto beta = random_vector<T>(s.channels, 1.0, 0.0, 4);
  const double eps = 1e-5;
  const Ref r = reference(x, dy, gamma, beta, s, eps);

  std::vector<T> first_y;
  for (int threads : {1, 2, 3}) {
    fastbn::set_num_threads(threads);
    std::vector<T> y(n), mean(s.channels), var(s.channels), dx(n), dg(s.channels), db(s.channels), yi(n);
    fastbn::forward_train(x.data(), y.data(), gamma.data(), beta.data(), mean.data(), var.data(), s, eps);
    fastbn::backward(dy.data(), x.data(), mean.data(), var.data(), gamma.data(), dx.data(), dg.data(), db.data(),
                     s, eps, true);
    fastbn::forward_infer(x.data(), yi.data(), mean.data(), var.data(), gamma.data(), beta.data(), s, eps);
    CHECK(max_err(y, r.y) < tol);
    CHECK(max_err(mean, r.mean) < tol);
    CHECK(max_err(var, r.var) < tol);
    CHECK(max_err(dx, r.dx) < 10 * tol);
    CHECK(max_err(dg, r.dgamma) < 10 * tol * std::sqrt(static_cast<double>(s.outer * s.inner)));
    CHECK(max_err(db, r.dbeta) < 10 * tol * std::sqrt(static_cast<double>(s.outer * s.inner)));
    CHECK(max_err(yi, r.y) < tol);
    if (threads == 1) {
      first_y = y;
    } else {
      CHECK(Outputs::same(y, first_y));  // same bits for any thread count
    }
  }
  fastbn::set_num_threads(2);
}

void test_passes() {
  const std::vector<fastbn::Shape> shapes = {{7, 5, 9}, {40, 3, 1}, {64, 3, 256}, {16, 48, 49}, {3000, 37, 1},
                                             {2, 1, 5}, {128, 96, 1}};
  for (const char* path : {"avx512_bf16", "avx512", "avx2", "scalar"}) {
    if (!fastbn::simd_supported(path)) continue;
    fastbn::set_simd(path);
    CHECK(std::string(fastbn::simd()) == path);
    for (const auto& s : shapes) {
      check_shape<float>(s, 2e-5);
      check_shape<double>(s, 1e-11);
    }
  }
}

void test_large_mean() {
  const fastbn::Shape s{256, 4, 100};
  const size_t n = 256 * 4 * 100;
  const auto x = random_vector<float>(n, 1.0, 1e4, 7);
  const std::vector<float> ones(4, 1.0f), zeros(4, 0.0f), dy(n, 0.0f);
  const Ref r = reference(x, dy, ones, zeros, s, 1e-5);
  std::vector<float> y(n), mean(4), var(4);
  fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, mean.data(), var.data(), s, 1e-5);
  for (int c = 0; c < 4; ++c) CHECK(std::fabs(var[c] - r.var[c]) / r.var[c] < 1e-3);
  CHECK(max_err(y, r.y) < 1e-3);
}

void test_errors() {
  std::vector<float> x(12, 1.0f), y(12, 7.0f), m(3, 7.0f), v(3, 7.0f);
  const fastbn::Shape s{4, 3, 1};
  using fastbn::Status;
  expect_error(Status::null_pointer, [&] {
    fastbn::forward_train(static_cast<const float*>(nullptr), y.data(), nullptr, nullptr, m.data(), v.data(), s,
                          1e-5);
  });
  expect_error(Status::null_pointer,
               [&] { fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, nullptr, v.data(), s, 1e-5); });
  expect_error(Status::bad_shape, [&] {
    fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, m.data(), v.data(), fastbn::Shape{0, 3, 1}, 1e-5);
  });
  expect_error(Status::bad_shape, [&] {
    fastbn::forward_infer(x.data(), y.data(), m.data(), v.data(), nullptr, nullptr, fastbn::Shape{4, -3, 1}, 1e-5);
  });
  expect_error(Status::bad_shape, [&] {
    fastbn::forward_infer(x.data(), y.data(), m.data(), v.data(), nullptr, nullptr,
                          fastbn::Shape{INT64_MAX / 2, 3, 4}, 1e-5);
  });
  expect_error(Status::bad_eps,
               [&] { fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, m.data(), v.data(), s, -1.0); });
  expect_error(Status::bad_eps,
               [&] { fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, m.data(), v.data(), s, NAN); });
  expect_error(Status::too_few_values, [&] {
    fastbn::forward_train(x.data(), y.data(), nullptr, nullptr, m.data(), v.data(), fastbn::Shape{1, 3, 1}, 1e-5);
  });
  expect_error(Status::null_pointer, [&] {
    fastbn::backward(x.data(), x.data(), m.data(), v.data(), nullptr, nullptr, nullptr, nullptr, s, 1e-5, true);
  });
  const int threads = fastbn::get_num_threads();
  expect_error(Status::bad_argument, [] { fastbn::set_num_threads(0); });
  expect_error(Status::bad_argument, [] { fastbn::set_num_threads(FASTBN_MAX_NUM_THREADS + 1); });
  CHECK(fastbn::get_num_threads() == threads);
  expect_error(Status::bad_argument, [] { fastbn::set_simd("sse9"); });
  for (float e : y) CHECK(e == 7.0f);  // nothing written by the failed calls
  for (float e : m) CHECK(e == 7.0f);
}

void test_info() {
  const fastbn::BuildInfo b = fastbn::build_info();
  CHECK(b.version && std::string(b.version).size() > 0);
  CHECK(b.simd_compiled && std::string(b.simd_compiled).find("scalar") != std::string::npos);
  CHECK(fastbn::get_num_threads() >= 1);
}

}  // namespace

int main() {
  test_passes();
  test_large_mean();
  test_errors();
  test_info();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all C++ API checks passed (SIMD %s)\n", fastbn::simd());
  return 0;
}
