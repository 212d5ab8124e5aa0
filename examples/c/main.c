/* fastbn from C: the same computation as examples/cpp through the C ABI, printed as the same JSON object. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fastbn/fastbn.h"

enum { N = 8, C = 4, H = 5, W = 6, SIZE = N * C * H * W };

static void print_array(const char* name, const float* v, int count, int last) {
  printf("\"%s\": [", name);
  for (int i = 0; i < count; ++i) printf("%s%.9g", i ? ", " : "", v[i]);
  printf("]%s\n", last ? "" : ",");
}

static double sum(const float* v, int count, int absolute) {
  double s = 0;
  for (int i = 0; i < count; ++i) s += absolute && v[i] < 0 ? -v[i] : v[i];
  return s;
}

static int check(int status, const char* what) {
  if (status != FASTBN_OK) {
    fprintf(stderr, "%s failed: %s (%s)\n", what, fastbn_status_string(status), fastbn_last_error_message());
    return 1;
  }
  return 0;
}

int main(void) {
  float* x = malloc(sizeof(float) * SIZE);
  float* dy = malloc(sizeof(float) * SIZE);
  float* y = malloc(sizeof(float) * SIZE);
  float* dx = malloc(sizeof(float) * SIZE);
  float* y_infer = malloc(sizeof(float) * SIZE);
  float gamma[C] = {1.0f, 0.5f, -2.0f, 1.25f}, beta[C] = {0.0f, 1.0f, -0.5f, 3.0f};
  float mean[C], var[C], dgamma[C], dbeta[C];
  if (!x || !dy || !y || !dx || !y_infer) return 1;
  for (int64_t k = 0; k < SIZE; ++k) {
    x[k] = (float)((k * 7919 + 13) % 2003) / 256.0f - 4.0f;
    dy[k] = (float)((k * 104729 + 7) % 1999) / 512.0f - 2.0f;
  }
  /* NCHW viewed as (outer, channels, inner) = (N, C, H*W). */
  if (check(fastbn_forward_train_f32(x, y, gamma, beta, mean, var, N, C, H * W, 1e-5), "forward_train") ||
      check(fastbn_backward_f32(dy, x, mean, var, gamma, dx, dgamma, dbeta, N, C, H * W, 1e-5, 1), "backward") ||
      check(fastbn_forward_infer_f32(x, y_infer, mean, var, gamma, beta, N, C, H * W, 1e-5), "forward_infer")) {
    return 1;
  }
  printf("{\n\"simd\": \"%s\",\n", fastbn_simd());
  print_array("mean", mean, C, 0);
  print_array("var", var, C, 0);
  print_array("dgamma", dgamma, C, 0);
  print_array("dbeta", dbeta, C, 0);
  printf("\"y_sum\": %.9g,\n\"y_abs_sum\": %.9g,\n", sum(y, SIZE, 0), sum(y, SIZE, 1));
  printf("\"dx_abs_sum\": %.9g,\n\"y_infer_abs_sum\": %.9g\n}\n", sum(dx, SIZE, 1), sum(y_infer, SIZE, 1));
  free(x);
  free(dy);
  free(y);
  free(dx);
  free(y_infer);
  return 0;
}
