#include "checks.hpp"

#include <cmath>
#include <cstdint>
#include <sstream>

namespace fastbn {
namespace checks {

std::string describe(const Shape& s) {
  std::ostringstream o;
  o << "(outer=" << s.outer << ", channels=" << s.channels << ", inner=" << s.inner << ")";
  return o.str();
}

void require(const void* p, const char* name) {
  if (!p) throw Error(Status::null_pointer, std::string("fastbn: ") + name + " must not be null");
}

void shape(const Shape& s) {
  if (s.outer < 1 || s.channels < 1 || s.inner < 1) {
    throw Error(Status::bad_shape, "fastbn: every extent of the shape must be >= 1, got " + describe(s));
  }
  int64_t n = 0;
  // The bytes of the largest tensor (double) must fit in int64.
  if (__builtin_mul_overflow(s.outer, s.channels, &n) || __builtin_mul_overflow(n, s.inner, &n) ||
      __builtin_mul_overflow(n, int64_t{16}, &n)) {
    throw Error(Status::bad_shape, "fastbn: the shape " + describe(s) + " has too many elements");
  }
}

void eps(double eps) {
  if (!(eps > 0) || !std::isfinite(eps)) {
    std::ostringstream o;
    o << "fastbn: eps must be a finite number > 0, got " << eps;
    throw Error(Status::bad_eps, o.str());
  }
}

void train_count(const Shape& s) {
  if (s.outer * s.inner < 2) {
    throw Error(Status::too_few_values,
                "fastbn: training needs more than 1 value per channel, got shape " + describe(s));
  }
}

void fusion(int activation, double negative_slope) {
  if (activation < FASTBN_ACT_NONE || activation > FASTBN_ACT_SIGMOID) {
    throw Error(Status::bad_argument, "fastbn: unknown activation " + std::to_string(activation) +
                                          "; expected 0 (none), 1 (relu), 2 (leaky_relu) or 3 (sigmoid)");
  }
  if (!std::isfinite(negative_slope)) {
    std::ostringstream o;
    o << "fastbn: negative_slope must be finite, got " << negative_slope;
    throw Error(Status::bad_argument, o.str());
  }
}

void train_args(const void* x, const void* y, const void* mean, const void* var, const Shape& s, double e) {
  infer_args(x, y, mean, var, s, e);
  train_count(s);
}

void infer_args(const void* x, const void* y, const void* mean, const void* var, const Shape& s, double e) {
  require(x, "x");
  require(y, "y");
  require(mean, "mean");
  require(var, "var");
  shape(s);
  eps(e);
}

void backward_args(const void* dy, const void* x, const void* mean, const void* var, const void* dx, const Shape& s,
                   double e) {
  require(dy, "dy");
  require(x, "x");
  require(mean, "mean");
  require(var, "var");
  require(dx, "dx");
  shape(s);
  eps(e);
}

}  // namespace checks
}  // namespace fastbn
