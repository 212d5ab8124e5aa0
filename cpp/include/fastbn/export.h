#pragma once
/* Symbol visibility for the fastbn core library. The library is built with hidden visibility; only
   declarations marked FASTBN_API are exported. Consumers of the static library get FASTBN_STATIC_DEFINE
   from the CMake target. */
#if defined(FASTBN_STATIC_DEFINE)
#define FASTBN_API
#elif defined(_WIN32)
#if defined(FASTBN_BUILDING)
#define FASTBN_API __declspec(dllexport)
#else
#define FASTBN_API __declspec(dllimport)
#endif
#else
#define FASTBN_API __attribute__((visibility("default")))
#endif
