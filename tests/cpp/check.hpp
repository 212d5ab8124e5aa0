#pragma once
// The assertions the C++ tests share: no test framework, so nothing has to be downloaded or installed.
#include <cstdio>
#include <functional>
#include <string>

#include "fastbn/batchnorm.hpp"

// Failed checks so far; main() returns non-zero when any failed.
inline int g_failures = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                                  \
    }                                                                                \
  } while (0)

// f must throw fastbn::Error with this status and a message that starts with "fastbn:".
inline void expect_error(fastbn::Status status, const std::function<void()>& f) {
  try {
    f();
    CHECK(!"expected fastbn::Error");
  } catch (const fastbn::Error& e) {
    CHECK(e.status() == status);
    CHECK(std::string(e.what()).find("fastbn:") == 0);
  }
}
