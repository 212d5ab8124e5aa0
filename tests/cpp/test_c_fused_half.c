/* The C ABI of wave 2, compiled as C99: the bfloat16/float16 twins, the fused epilogues (activation, residual,
 * the from-output backward) and the phases of a distributed batch norm, against double references; bad input
 * returns an error status and writes nothing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "fastbn/fastbn.h"


#define N 8
#define C 3
#define L 7
#define SIZE (N * C * L)


/* Decoding half-precision bits (exact, written from the formats' definitions). */
static double from_bf16(uint16_t h) {
  const uint32_t b = (uint32_t)h << 16;
  float f;
  memcpy(&f, &b, 4);
  return f;
}
static double from_f16(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double v = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}
/* Encoding by truncation: exact for the inputs below, which are chosen representable. */
static uint16_t to_bf16(double v) {
  const float f = (float)v;
  uint32_t b;
  memcpy(&b, &f, 4);
  return (uint16_t)(b >> 16);
}
static uint16_t to_f16(double v) {
  /* v = k / 64 with |k| < 1024: normal halves, exact */
  const uint16_t sign = v < 0 ? 0x8000 : 0;
  double a = fabs(v);
  if (a == 0) return sign;
  int e;
  const double m = frexp(a, &e); /* a = m 2^e, m in [0.5, 1) */
  return (uint16_t)(sign | ((e + 14) << 10) | ((int)ldexp(m, 11) & 0x3ff));
}

static void reference(const double* x, double* mean, double* var) {
  for (int c = 0; c < C; ++c) {
    double m = 0, v = 0;
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) m += x[(o * C + c) * L + i];
    m /= N * L;
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) v += (x[(o * C + c) * L + i] - m) * (x[(o * C + c) * L + i] - m);
    mean[c] = m;
    var[c] = v / (N * L);
  }
}

static void check_half(int bf16) {
  uint16_t x[SIZE], y[SIZE], dy[SIZE], dx[SIZE];
  double xd[SIZE], dyd[SIZE], rm[C], rv[C];
  float mean[C], var[C], dg[C], db[C], gamma[C] = {1.5f, 0.5f, 2.0f}, beta[C] = {0.25f, -1.0f, 0.0f};
  unsigned seed = 7;
  for (int i = 0; i < SIZE; ++i) {
    xd[i] = floor(256.0 * lcg(&seed)) / 64.0 + 1.0; /* representable in both half types */
    dyd[i] = floor(128.0 * lcg(&seed)) / 64.0;
    x[i] = bf16 ? to_bf16(xd[i]) : to_f16(xd[i]);
    dy[i] = bf16 ? to_bf16(dyd[i]) : to_f16(dyd[i]);
    CHECK((bf16 ? from_bf16(x[i]) : from_f16(x[i])) == xd[i]);
  }
  reference(xd, rm, rv);
  const int rc = bf16 ? fastbn_forward_train_bf16(x, y, gamma, beta, mean, var, N, C, L, 1e-5)
                      : fastbn_forward_train_f16(x, y, gamma, beta, mean, var, N, C, L, 1e-5);
  CHECK(rc == FASTBN_OK);
  const double ulp = bf16 ? 1.0 / 128 : 1.0 / 1024;
  for (int c = 0; c < C; ++c) {
    CHECK(fabs(mean[c] - rm[c]) <= 1e-5 * fabs(rm[c]) + 1e-6 && fabs(var[c] - rv[c]) <= 1e-5 * rv[c]);
    for (int k = c * L, o = 0; o < N; ++o, k += C * L)
      for (int i = 0; i < L; ++i) {
        const double ref = gamma[c] * (xd[k + i] - rm[c]) / sqrt(rv[c] + 1e-5) + beta[c];
        const double got = bf16 ? from_bf16(y[k + i]) : from_f16(y[k + i]);
        CHECK(fabs(got - ref) <= ulp * fmax(fabs(ref), 0.5)); /* within one ulp (ulp of [1, 2) scaled) */
      }
  }
  CHECK((bf16 ? fastbn_forward_infer_bf16(x, y, mean, var, gamma, beta, N, C, L, 1e-5)
              : fastbn_forward_infer_f16(x, y, mean, var, gamma, beta, N, C, L, 1e-5)) == FASTBN_OK);
  CHECK((bf16 ? fastbn_backward_bf16(dy, x, mean, var, gamma, dx, dg, db, N, C, L, 1e-5, 0)
              : fastbn_backward_f16(dy, x, mean, var, gamma, dx, dg, db, N, C, L, 1e-5, 0)) == FASTBN_OK);
  for (int c = 0; c < C; ++c) {
    double sdy = 0;
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) sdy += dyd[(o * C + c) * L + i];
    CHECK(fabs(db[c] - sdy) < 1e-4);
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) {
        const int k = (o * C + c) * L + i;
        const double ref = gamma[c] * dyd[k] / sqrt(var[c] + 1e-5);
        const double got = bf16 ? from_bf16(dx[k]) : from_f16(dx[k]);
        CHECK(fabs(got - ref) <= ulp * fmax(fabs(ref), 0.5));
      }
  }
}

static void check_fused(void) {
  float x[SIZE], r[SIZE], y[SIZE], y2[SIZE], dy[SIZE], dx[SIZE], dx2[SIZE], dres[SIZE], mean[C], var[C];
  float dg[C], db[C], dg2[C], db2[C], gamma[C] = {1.5f, -0.5f, 2.0f}, beta[C] = {0.1f, 0.2f, -0.3f};
  double xd[SIZE], rm[C], rv[C];
  unsigned seed = 3;
  for (int i = 0; i < SIZE; ++i) {
    x[i] = (float)(4.0 * lcg(&seed) + 1.0);
    xd[i] = x[i];
    r[i] = (float)lcg(&seed);
    dy[i] = (float)lcg(&seed);
  }
  reference(xd, rm, rv);
  CHECK(fastbn_forward_train_fused_f32(x, r, y, gamma, beta, mean, var, N, C, L, 1e-5, FASTBN_ACT_RELU, 0.0) ==
        FASTBN_OK);
  for (int c = 0; c < C; ++c)
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) {
        const int k = (o * C + c) * L + i;
        const double z = gamma[c] * (xd[k] - rm[c]) / sqrt(rv[c] + 1e-5) + beta[c] + r[k];
        CHECK(fabs(y[k] - (z > 0 ? z : 0)) < 1e-5);
      }
  /* dresidual = dy * relu'(z) */
  CHECK(fastbn_backward_fused_f32(dy, x, y, mean, var, gamma, beta, dx, dres, dg, db, N, C, L, 1e-5, 1,
                                  FASTBN_ACT_RELU, 0.0) == FASTBN_OK);
  for (int k = 0; k < SIZE; ++k) CHECK(dres[k] == (y[k] > 0 ? dy[k] : 0.0f));
  /* In-place activated batch norm: xhat from y (leaky ReLU, no residual) gives the ordinary gradients. */
  CHECK(fastbn_forward_train_fused_f32(x, NULL, y, gamma, beta, mean, var, N, C, L, 1e-5, FASTBN_ACT_LEAKY_RELU,
                                       0.2) == FASTBN_OK);
  CHECK(fastbn_backward_fused_f32(dy, x, y, mean, var, gamma, beta, dx, NULL, dg, db, N, C, L, 1e-5, 1,
                                  FASTBN_ACT_LEAKY_RELU, 0.2) == FASTBN_OK);
  CHECK(fastbn_backward_fused_f32(dy, NULL, y, mean, var, gamma, beta, dx2, NULL, dg2, db2, N, C, L, 1e-5, 1,
                                  FASTBN_ACT_LEAKY_RELU, 0.2) == FASTBN_OK);
  for (int k = 0; k < SIZE; ++k) CHECK(fabs(dx[k] - dx2[k]) < 1e-4);
  for (int c = 0; c < C; ++c) CHECK(fabs(dg[c] - dg2[c]) < 1e-3 && fabs(db[c] - db2[c]) < 1e-4);
  /* Inference with a sigmoid. */
  CHECK(fastbn_forward_infer_fused_f32(x, NULL, y2, mean, var, gamma, beta, N, C, L, 1e-5, FASTBN_ACT_SIGMOID,
                                       0.0) == FASTBN_OK);
  for (int c = 0; c < C; ++c)
    for (int o = 0; o < N; ++o)
      for (int i = 0; i < L; ++i) {
        const int k = (o * C + c) * L + i;
        const double z = gamma[c] * (xd[k] - mean[c]) / sqrt(var[c] + 1e-5) + beta[c];
        CHECK(fabs(y2[k] - 1 / (1 + exp(-z))) < 1e-6);
      }
  /* Errors write nothing. */
  for (int k = 0; k < SIZE; ++k) dx[k] = 7.0f;
  CHECK(fastbn_forward_train_fused_f32(x, NULL, dx, NULL, NULL, mean, var, N, C, L, 1e-5, 9, 0.0) ==
        FASTBN_ERR_BAD_ARGUMENT);
  CHECK(strstr(fastbn_last_error_message(), "unknown activation") != NULL);
  CHECK(fastbn_backward_fused_f32(dy, NULL, y, mean, var, gamma, beta, dx, NULL, NULL, NULL, N, C, L, 1e-5, 1,
                                  FASTBN_ACT_RELU, 0.0) == FASTBN_ERR_BAD_ARGUMENT); /* relu: not invertible */
  CHECK(fastbn_backward_fused_f32(dy, x, NULL, mean, var, gamma, beta, dx, NULL, NULL, NULL, N, C, L, 1e-5, 1,
                                  FASTBN_ACT_SIGMOID, 0.0) == FASTBN_ERR_NULL_POINTER); /* no y */
  CHECK(fastbn_forward_train_fused_f32(x, NULL, dx, NULL, NULL, mean, var, N, C, L, 1e-5, FASTBN_ACT_LEAKY_RELU,
                                       NAN) == FASTBN_ERR_BAD_ARGUMENT);
  for (int k = 0; k < SIZE; ++k) CHECK(dx[k] == 7.0f);
}

static void check_phases(void) {
  /* Two "processes" holding rows [0, 3) and [3, N): merged statistics and sums give the one-batch results. */
  double x[SIZE], dy[SIZE], y[SIZE], dx[SIZE], yfull[SIZE], dxfull[SIZE], mean[C], var[C], dg[C], db[C];
  double m[2 * C], q[2 * C], count[2], total, gm[C], gq[C], sdy[C], sdx[C], s1[C], s2[C];
  unsigned seed = 11;
  for (int i = 0; i < SIZE; ++i) {
    x[i] = 3.0 * lcg(&seed) + 100.0;
    dy[i] = lcg(&seed);
  }
  CHECK(fastbn_forward_train_f64(x, yfull, NULL, NULL, mean, var, N, C, L, 1e-5) == FASTBN_OK);
  CHECK(fastbn_backward_f64(dy, x, mean, var, NULL, dxfull, dg, db, N, C, L, 1e-5, 1) == FASTBN_OK);
  const int rows[2] = {3, N - 3};
  const double* parts[2] = {x, x + 3 * C * L};
  for (int p = 0; p < 2; ++p) {
    CHECK(fastbn_local_stats_f64(parts[p], m + p * C, q + p * C, rows[p], C, L) == FASTBN_OK);
    count[p] = rows[p] * L;
  }
  CHECK(fastbn_merge_stats(2, count, m, q, C, &total, gm, gq) == FASTBN_OK);
  CHECK(total == N * L);
  for (int c = 0; c < C; ++c) {
    CHECK(fabs(gm[c] - mean[c]) < 1e-12 * fabs(mean[c]));
    gq[c] /= total;
    CHECK(fabs(gq[c] - var[c]) < 1e-10 * var[c]);
    sdy[c] = sdx[c] = 0;
  }
  for (int p = 0; p < 2; ++p) {
    const size_t off = (size_t)(parts[p] - x);
    CHECK(fastbn_normalize_f64(parts[p], NULL, y + off, gm, gq, NULL, NULL, rows[p], C, L, 1e-5, FASTBN_ACT_NONE,
                               0.0) == FASTBN_OK);
    CHECK(fastbn_backward_reduce_f64(dy + off, parts[p], NULL, gm, gq, NULL, NULL, s1, s2, rows[p], C, L, 1e-5,
                                     FASTBN_ACT_NONE, 0.0) == FASTBN_OK);
    for (int c = 0; c < C; ++c) {
      sdy[c] += s1[c];
      sdx[c] += s2[c];
    }
  }
  for (int c = 0; c < C; ++c) CHECK(fabs(sdy[c] - db[c]) < 1e-10 && fabs(sdx[c] - dg[c]) < 1e-10);
  for (int p = 0; p < 2; ++p) {
    const size_t off = (size_t)(parts[p] - x);
    CHECK(fastbn_backward_apply_f64(dy + off, parts[p], NULL, gm, gq, NULL, NULL, sdy, sdx, total, dx + off, NULL,
                                    rows[p], C, L, 1e-5, FASTBN_ACT_NONE, 0.0) == FASTBN_OK);
  }
  for (int k = 0; k < SIZE; ++k) CHECK(fabs(y[k] - yfull[k]) < 1e-10 && fabs(dx[k] - dxfull[k]) < 1e-10);
  float rmean[C] = {0, 0, 0}, rvar[C] = {1, 1, 1};
  CHECK(fastbn_update_running_stats_f32(rmean, rvar, gm, gq, C, total, 0.1) == FASTBN_OK);
  for (int c = 0; c < C; ++c) {
    CHECK(fabs(rmean[c] - 0.1 * gm[c]) < 1e-4 * fabs(gm[c]));
    CHECK(fabs(rvar[c] - (0.9 + 0.1 * gq[c] * total / (total - 1))) < 1e-6);
  }
  CHECK(fastbn_update_running_stats_f32(rmean, rvar, gm, gq, C, 1.0, 0.1) == FASTBN_ERR_TOO_FEW_VALUES);
  CHECK(fastbn_update_running_stats_f32(rmean, rvar, gm, gq, C, total, 1.5) == FASTBN_ERR_BAD_ARGUMENT);
  count[1] = -1;
  CHECK(fastbn_merge_stats(2, count, m, q, C, &total, gm, gq) == FASTBN_ERR_BAD_ARGUMENT);
}

int main(void) {
  check_half(1);
  check_half(0);
  check_fused();
  check_phases();
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all wave-2 C ABI checks passed (fastbn %s, SIMD %s)\n", fastbn_version(), fastbn_simd());
  return 0;
}
