/* C ABI tests, compiled as C99: the header is valid C, results match a double reference, and bad input
 * returns an error status without crashing or writing anything. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "fastbn/fastbn.h"


#define N 6
#define C 3
#define L 5
#define SIZE (N * C * L)


static void check_values(void) {
  float x[SIZE], y[SIZE], dy[SIZE], dx[SIZE], mean[C], var[C], dg[C], db[C], gamma[C] = {1.5f, -0.5f, 2.0f};
  double xd[SIZE], yd[SIZE], meand[C], vard[C];
  unsigned seed = 42;
  for (int i = 0; i < SIZE; ++i) {
    x[i] = (float)(4.0 * lcg(&seed) + 1.0);
    xd[i] = x[i];
    dy[i] = (float)lcg(&seed);
  }
  CHECK(fastbn_forward_train_f32(x, y, gamma, NULL, mean, var, N, C, L, 1e-5) == FASTBN_OK);
  CHECK(fastbn_forward_train_f64(xd, yd, NULL, NULL, meand, vard, N, C, L, 1e-5) == FASTBN_OK);
  CHECK(fastbn_backward_f32(dy, x, mean, var, gamma, dx, dg, db, N, C, L, 1e-5, 1) == FASTBN_OK);
  CHECK(fastbn_backward_f32(dy, x, mean, var, gamma, dx, NULL, NULL, N, C, L, 1e-5, 0) == FASTBN_OK);
  for (int c = 0; c < C; ++c) {
    double m = 0, v = 0, sdy = 0;
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) m += xd[(o * C + c) * L + i];
    m /= N * L;
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) {
        const int k = (o * C + c) * L + i;
        v += (xd[k] - m) * (xd[k] - m);
        sdy += dy[k];
      }
    v /= N * L;
    CHECK(fabs(meand[c] - m) < 1e-12 && fabs(vard[c] - v) < 1e-12);
    CHECK(fabs(mean[c] - m) < 1e-5 && fabs(var[c] - v) < 1e-5 * v);
    CHECK(fabs(db[c] - sdy) < 1e-4);
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) {
        const int k = (o * C + c) * L + i;
        const double xh = (xd[k] - m) / sqrt(v + 1e-5);
        CHECK(fabs(yd[k] - xh) < 1e-12);
        CHECK(fabs(y[k] - gamma[c] * xh) < 1e-5);
        CHECK(fabs(dx[k] - gamma[c] * dy[k] / sqrt(var[c] + 1e-5)) < 1e-5); /* frozen-statistics gradient */
      }
  }
  CHECK(fastbn_forward_infer_f32(x, y, mean, var, NULL, NULL, N, C, L, 1e-5) == FASTBN_OK);
}

static void check_errors(void) {
  float x[SIZE], y[SIZE], m[C], v[C], dx[SIZE];
  for (int i = 0; i < SIZE; ++i) {
    x[i] = (float)i;
    y[i] = dx[i] = 7.0f;
  }
  for (int c = 0; c < C; ++c) m[c] = v[c] = 7.0f;
  CHECK(fastbn_forward_train_f32(NULL, y, NULL, NULL, m, v, N, C, L, 1e-5) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_forward_train_f32(x, NULL, NULL, NULL, m, v, N, C, L, 1e-5) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, NULL, N, C, L, 1e-5) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, 0, C, L, 1e-5) == FASTBN_ERR_BAD_SHAPE);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, N, 0, L, 1e-5) == FASTBN_ERR_BAD_SHAPE);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, N, C, -1, 1e-5) == FASTBN_ERR_BAD_SHAPE);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, N, C, L, -1e-5) == FASTBN_ERR_BAD_EPS);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, N, C, L, 0.0) == FASTBN_ERR_BAD_EPS);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, N, C, L, NAN) == FASTBN_ERR_BAD_EPS);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, 1, C, 1, 1e-5) == FASTBN_ERR_TOO_FEW_VALUES);
  CHECK(strstr(fastbn_last_error_message(), "more than 1 value per channel") != NULL);
  CHECK(fastbn_forward_infer_f32(x, y, NULL, v, NULL, NULL, N, C, L, 1e-5) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_forward_infer_f64(NULL, NULL, NULL, NULL, NULL, NULL, 0, 0, 0, -1) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_backward_f32(x, x, m, v, NULL, NULL, NULL, NULL, N, C, L, 1e-5, 1) == FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_backward_f32(x, x, m, v, NULL, dx, NULL, NULL, N, C, 0, 1e-5, 1) == FASTBN_ERR_BAD_SHAPE);
  CHECK(fastbn_backward_f64(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1, 1, 1, 1e-5, 0) ==
        FASTBN_ERR_NULL_POINTER);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, m, v, INT64_MAX, INT64_MAX, 2, 1e-5) == FASTBN_ERR_BAD_SHAPE);
  for (int i = 0; i < SIZE; ++i) CHECK(y[i] == 7.0f && dx[i] == 7.0f);
  for (int c = 0; c < C; ++c) CHECK(m[c] == 7.0f && v[c] == 7.0f);

  for (int s = -1; s <= 12; ++s) CHECK(fastbn_status_string(s) != NULL && fastbn_status_string(s)[0] != '\0');
  CHECK(strcmp(fastbn_status_string(12345), "unknown fastbn status") == 0);

  const int before = fastbn_get_num_threads();
  CHECK(fastbn_set_num_threads(0) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_set_num_threads(-4) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_set_num_threads(FASTBN_MAX_NUM_THREADS + 1) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_set_num_threads(INT_MAX) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_set_num_threads(INT_MIN) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(strstr(fastbn_last_error_message(), "<= 1024") != NULL);
  CHECK(fastbn_get_num_threads() == before);
  CHECK(fastbn_set_num_threads(FASTBN_MAX_NUM_THREADS) == FASTBN_OK);
  CHECK(fastbn_get_num_threads() == FASTBN_MAX_NUM_THREADS);
  CHECK(fastbn_set_num_threads(1) == FASTBN_OK && fastbn_get_num_threads() == 1);
  CHECK(fastbn_set_num_threads(before) == FASTBN_OK);
  CHECK(fastbn_version() != NULL && fastbn_simd() != NULL);
  CHECK(fastbn_cuda_is_available() == 0 || fastbn_cuda_is_available() == 1);
  if (!fastbn_cuda_is_available()) {
    CHECK(fastbn_cuda_forward_train_f32(x, y, NULL, NULL, m, v, N, C, L, 1e-5, NULL) == FASTBN_ERR_NO_CUDA ||
          fastbn_cuda_forward_train_f32(x, y, NULL, NULL, m, v, N, C, L, 1e-5, NULL) == FASTBN_ERR_CUDA);
  }
}

int main(void) {
  check_values();
  check_errors();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all C ABI checks passed (fastbn %s, SIMD %s)\n", fastbn_version(), fastbn_simd());
  return 0;
}
