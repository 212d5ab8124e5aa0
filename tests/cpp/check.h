/* The assertions and data the C tests share (C99, no framework): CHECK counts failures, main() returns
 * non-zero when any failed; lcg() gives reproducible values in [-0.5, 0.5). */
#ifndef FASTBN_TESTS_CHECK_H
#define FASTBN_TESTS_CHECK_H

#include <stdio.h>

static int failures = 0;
#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                              \
    }                                                                          \
  } while (0)

static inline double lcg(unsigned* s) {
  *s = *s * 1103515245u + 12345u;
  return ((*s >> 8) & 0xffff) / 65536.0 - 0.5;
}

#endif
