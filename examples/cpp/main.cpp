// fastbn from C++: a training forward, its backward and an inference forward on an NCHW buffer, printed as
// one JSON object (per-channel statistics and gradients, checksums of the outputs). The inputs are exact
// binary fractions, so any language can rebuild the same buffer and compare (tests/test_native.py does).
#include <cstdint>
#include <cstdio>
#include <vector>

#include "fastbn/batchnorm.hpp"

namespace {

void print_array(const char* name, const std::vector<float>& v, bool last = false) {
  std::printf("\"%s\": [", name);
  for (size_t i = 0; i < v.size(); ++i) std::printf("%s%.9g", i ? ", " : "", v[i]);
  std::printf("]%s\n", last ? "" : ",");
}

double sum(const std::vector<float>& v, bool absolute) {
  double s = 0;
  for (float e : v) s += absolute && e < 0 ? -e : e;
  return s;
}

}  // namespace

int main() {
  const int64_t n = 8, c = 4, h = 5, w = 6;
  const fastbn::Shape shape{n, c, h * w};  // NCHW viewed as (outer, channels, inner)
  const size_t size = static_cast<size_t>(n * c * h * w);
  std::vector<float> x(size), dy(size), y(size), dx(size), y_infer(size);
  for (size_t k = 0; k < size; ++k) {
    x[k] = static_cast<float>((k * 7919 + 13) % 2003) / 256.0f - 4.0f;
    dy[k] = static_cast<float>((k * 104729 + 7) % 1999) / 512.0f - 2.0f;
  }
  std::vector<float> gamma{1.0f, 0.5f, -2.0f, 1.25f}, beta{0.0f, 1.0f, -0.5f, 3.0f};
  std::vector<float> mean(c), var(c), dgamma(c), dbeta(c);

  try {
    fastbn::forward_train(x.data(), y.data(), gamma.data(), beta.data(), mean.data(), var.data(), shape, 1e-5);
    fastbn::backward(dy.data(), x.data(), mean.data(), var.data(), gamma.data(), dx.data(), dgamma.data(),
                     dbeta.data(), shape, 1e-5, /*batch_stats=*/true);
    fastbn::forward_infer(x.data(), y_infer.data(), mean.data(), var.data(), gamma.data(), beta.data(), shape, 1e-5);
  } catch (const fastbn::Error& e) {
    std::fprintf(stderr, "fastbn failed (status %d): %s\n", static_cast<int>(e.status()), e.what());
    return 1;
  }

  std::printf("{\n\"simd\": \"%s\",\n", fastbn::simd());
  print_array("mean", mean);
  print_array("var", var);
  print_array("dgamma", dgamma);
  print_array("dbeta", dbeta);
  std::printf("\"y_sum\": %.9g,\n\"y_abs_sum\": %.9g,\n", sum(y, false), sum(y, true));
  std::printf("\"dx_abs_sum\": %.9g,\n\"y_infer_abs_sum\": %.9g\n}\n", sum(dx, true), sum(y_infer, true));
  return 0;
}
