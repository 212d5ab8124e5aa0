/* The C ABI after fork(): a child of a parent that ran a multi-threaded call must not hang (libgomp's threads do
 * not survive fork); it runs single-threaded, reports 1 thread, still checks set_num_threads' bounds, and gives
 * the parent's bits (results do not depend on the thread count). A hang ends the child through alarm(). */
#define _POSIX_C_SOURCE 200809L  /* fork, alarm, waitpid under -std=c99 */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "fastbn/fastbn.h"


/* 8 MiB of float32 NCHW: enough for every thread the parent has. */
#define N 32
#define C 64
#define L 1024
#define SIZE ((size_t)N * C * L)

static void fill(float* x) {
  unsigned s = 7;
  for (size_t i = 0; i < SIZE; ++i) {
    s = s * 1103515245u + 12345u;
    x[i] = (float)(((s >> 8) & 0xffff) / 65536.0 * 4.0 + (double)(i / L % C));
  }
}

/* The child's checks; its exit status is the number of failures (0 = all passed). */
static int child(const float* x, const float* y_parent, const float* mean_parent, const float* var_parent) {
  alarm(30);
  float* y = malloc(SIZE * sizeof(float));
  float mean[C], var[C];
  CHECK(y != NULL);
  if (!y) return failures;
  CHECK(fastbn_get_num_threads() == 1);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, mean, var, N, C, L, 1e-5) == FASTBN_OK);
  CHECK(memcmp(y, y_parent, SIZE * sizeof(float)) == 0);
  CHECK(memcmp(mean, mean_parent, sizeof mean) == 0 && memcmp(var, var_parent, sizeof var) == 0);
  for (int c = 0; c < C; ++c) {  /* a double reference for channel c's mean */
    double sum = 0;
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < L; ++i) sum += x[((size_t)n * C + c) * L + i];
    CHECK(fabs(mean[c] - sum / (N * L)) < 1e-4 * (1 + fabs(sum / (N * L))));
  }
  /* A request for threads is accepted (and bounded) but cannot bring OpenMP's threads back. */
  CHECK(fastbn_set_num_threads(4) == FASTBN_OK);
  CHECK(fastbn_get_num_threads() == 1);
  CHECK(fastbn_set_num_threads(FASTBN_MAX_NUM_THREADS + 1) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_set_num_threads(0) == FASTBN_ERR_BAD_ARGUMENT);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, mean, var, N, C, L, 1e-5) == FASTBN_OK);
  CHECK(memcmp(y, y_parent, SIZE * sizeof(float)) == 0);
  free(y);
  return failures;
}

int main(void) {
  float* x = malloc(SIZE * sizeof(float));
  float* y = malloc(SIZE * sizeof(float));
  float mean[C], var[C];
  if (!x || !y) return 1;
  fill(x);
  CHECK(fastbn_set_num_threads(2) == FASTBN_OK);
  CHECK(fastbn_forward_train_f32(x, y, NULL, NULL, mean, var, N, C, L, 1e-5) == FASTBN_OK);
  fflush(stderr);
  const pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) _exit(child(x, y, mean, var) ? 1 : 0);
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  if (WIFSIGNALED(status)) fprintf(stderr, "child ended by signal %d (SIGALRM = %d: it hung)\n", WTERMSIG(status), SIGALRM);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  CHECK(fastbn_get_num_threads() == 2);  /* the parent keeps its threads */
  free(x);
  free(y);
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  return failures ? 1 : 0;
}
