#pragma once
// The assertion the C++ tests share: no test framework, so nothing has to be downloaded or installed.
#include <cstdio>

// Failed checks so far; main() returns non-zero when any failed.
inline int g_failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                  \
    }                                                                                \
  } while (0)
