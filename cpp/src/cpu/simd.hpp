#pragma once
// Thin vector traits for one instruction set, chosen by the macros the including kernel source defines:
// FASTBN_ISA_NS (the namespace) and FASTBN_ISA_AVX512, FASTBN_ISA_AVX2 or neither (the portable scalar path).
// Everything lives in fastbn::cpu::FASTBN_ISA_NS, so no code compiled for a wide ISA can leak into another
// path through a shared inline symbol.
#include <cstdint>

#if defined(FASTBN_ISA_AVX512) || defined(FASTBN_ISA_AVX2)
#include <immintrin.h>
#endif

namespace fastbn {
namespace cpu {
namespace FASTBN_ISA_NS {

// One lane with the vector interface: loop tails and the scalar path.
template <class T>
struct Lane {
  using reg = T;
  static constexpr int width = 1;
  static inline reg load(const T* p) { return *p; }
  static inline void store(T* p, reg v) { *p = v; }
  static inline void stream(T* p, reg v) { *p = v; }
  static inline reg set1(T v) { return v; }
  static inline reg zero() { return T(0); }
  static inline reg add(reg a, reg b) { return a + b; }
  static inline reg sub(reg a, reg b) { return a - b; }
  static inline reg mul(reg a, reg b) { return a * b; }
#if defined(FASTBN_ISA_AVX512) || defined(FASTBN_ISA_AVX2)
  static inline reg fmadd(reg a, reg b, reg c) { return fma1(a, b, c); }
  static inline T fma1(T a, T b, T c) {
    if constexpr (sizeof(T) == 4) {
      return __builtin_fmaf(a, b, c);
    } else {
      return __builtin_fma(a, b, c);
    }
  }
#else
  static inline reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static inline T fma1(T a, T b, T c) { return a * b + c; }
#endif
  static inline double hsum(reg v) { return static_cast<double>(v); }
};

template <class T>
struct Vec;

#if defined(FASTBN_ISA_AVX512)

template <>
struct Vec<float> {
  using reg = __m512;
  static constexpr int width = 16;
  static inline reg load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static inline void stream(float* p, reg v) { _mm512_stream_ps(p, v); }
  static inline reg set1(float v) { return _mm512_set1_ps(v); }
  static inline reg zero() { return _mm512_setzero_ps(); }
  static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  // fma1 is the one-lane twin of fmadd with the same rounding, for loop tails.
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  // Lane sum in double, lanes in index order, so the rounding is fixed for this ISA.
  static inline double hsum(reg v) {
    alignas(64) float t[16];
    _mm512_store_ps(t, v);
    double s = 0.0;
    for (int i = 0; i < 16; ++i) s += t[i];
    return s;
  }
};

template <>
struct Vec<double> {
  using reg = __m512d;
  static constexpr int width = 8;
  static inline reg load(const double* p) { return _mm512_loadu_pd(p); }
  static inline void store(double* p, reg v) { _mm512_storeu_pd(p, v); }
  static inline void stream(double* p, reg v) { _mm512_stream_pd(p, v); }
  static inline reg set1(double v) { return _mm512_set1_pd(v); }
  static inline reg zero() { return _mm512_setzero_pd(); }
  static inline reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  static inline reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static inline double fma1(double a, double b, double c) { return __builtin_fma(a, b, c); }
  static inline double hsum(reg v) {
    alignas(64) double t[8];
    _mm512_store_pd(t, v);
    double s = 0.0;
    for (int i = 0; i < 8; ++i) s += t[i];
    return s;
  }
};

static inline void stream_fence() { _mm_sfence(); }

#elif defined(FASTBN_ISA_AVX2)

template <>
struct Vec<float> {
  using reg = __m256;
  static constexpr int width = 8;
  static inline reg load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static inline void stream(float* p, reg v) { _mm256_stream_ps(p, v); }
  static inline reg set1(float v) { return _mm256_set1_ps(v); }
  static inline reg zero() { return _mm256_setzero_ps(); }
  static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline float fma1(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
  static inline double hsum(reg v) {
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    double s = 0.0;
    for (int i = 0; i < 8; ++i) s += t[i];
    return s;
  }
};

template <>
struct Vec<double> {
  using reg = __m256d;
  static constexpr int width = 4;
  static inline reg load(const double* p) { return _mm256_loadu_pd(p); }
  static inline void store(double* p, reg v) { _mm256_storeu_pd(p, v); }
  static inline void stream(double* p, reg v) { _mm256_stream_pd(p, v); }
  static inline reg set1(double v) { return _mm256_set1_pd(v); }
  static inline reg zero() { return _mm256_setzero_pd(); }
  static inline reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  static inline reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static inline double fma1(double a, double b, double c) { return __builtin_fma(a, b, c); }
  static inline double hsum(reg v) {
    alignas(32) double t[4];
    _mm256_store_pd(t, v);
    return ((t[0] + t[1]) + t[2]) + t[3];
  }
};

static inline void stream_fence() { _mm_sfence(); }

#else  // portable scalar path: one lane; the compiler may still use the baseline ISA (SSE2 on x86-64).

template <>
struct Vec<float> : Lane<float> {};
template <>
struct Vec<double> : Lane<double> {};

static inline void stream_fence() {}

#endif

}  // namespace FASTBN_ISA_NS
}  // namespace cpu
}  // namespace fastbn
