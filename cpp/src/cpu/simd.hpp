#pragma once
// Thin vector traits for one instruction set, chosen by the macros the including kernel source defines:
// FASTBN_ISA_NS (the namespace) and FASTBN_ISA_AVX512, FASTBN_ISA_AVX2 or neither (the portable scalar path);
// FASTBN_ISA_AVX512_BF16 with FASTBN_ISA_AVX512 adds AVX512-BF16's rounding conversion.
// Everything lives in fastbn::cpu::FASTBN_ISA_NS, so no code compiled for a wide ISA can leak into another
// path through a shared inline symbol.
//
// Vec<C> is the arithmetic of a compute type (float or double). IO<S> moves a storage type S (float, double,
// bfloat16, float16) into and out of Vec<compute_t<S>> registers: whole vectors, and the first n < width lanes
// (heads and tails), so that every element of a loop goes through the same vector code and rounds alike.
// Half types are widened exactly and narrowed once, rounding to nearest even (subnormals included).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(FASTBN_ISA_AVX512) || defined(FASTBN_ISA_AVX2)
#include <immintrin.h>
#endif

#include "cpu/half.hpp"

namespace fastbn {
namespace cpu {
namespace FASTBN_ISA_NS {

template <class T>
inline T bits_to(uint32_t b) {
  T f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}

// ---------------------------------------------------------------------------------------------------------
// One lane with the vector interface: the scalar path.

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
  static inline reg div(reg a, reg b) { return a / b; }
#if defined(FASTBN_ISA_AVX512) || defined(FASTBN_ISA_AVX2)
  static inline reg fmadd(reg a, reg b, reg c) {
    if constexpr (sizeof(T) == 4) {
      return __builtin_fmaf(a, b, c);
    } else {
      return __builtin_fma(a, b, c);
    }
  }
#else
  static inline reg fmadd(reg a, reg b, reg c) { return a * b + c; }
#endif
  static inline reg max(reg a, reg b) { return a > b ? a : b; }
  static inline reg min(reg a, reg b) { return a < b ? a : b; }
  static inline reg abs(reg a) { return std::fabs(a); }
  // z > 0 ? a : b
  static inline reg select_pos(reg z, reg a, reg b) { return z > T(0) ? a : b; }
  // Lanes [n, width) replaced by fill; with one lane, n is 0 or 1. pmask: the same, precomputed by part(n).
  static inline reg keep_first(int n, reg v, reg fill) { return n > 0 ? v : fill; }
  using pmask = int;
  static inline pmask part(int n) { return n; }
  static inline reg keep_part(pmask m, reg v, reg fill) { return m > 0 ? v : fill; }
  static inline reg round(reg a) { return std::nearbyint(a); }
  // 2^n for integer-valued n in [-126, 127].
  static inline reg pow2i(reg n) {
    if (!(n == n)) return n;  // NaN stays NaN (and never reaches the int conversion)
    if constexpr (sizeof(T) == 4) {
      return bits_to<float>(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
    } else {
      return std::ldexp(T(1), static_cast<int>(n));
    }
  }
  // (mantissa in [0.5, 1), exponent) of a positive normal float.
  static inline void frexp(reg a, reg& m, reg& e) {
    int ex = 0;
    m = std::frexp(a, &ex);
    e = static_cast<T>(ex);
  }
  static inline bool any_nonfinite(reg a) { return !std::isfinite(a); }
  static inline void add_to(double* d, reg v) { d[0] += static_cast<double>(v); }
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
  static inline reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static inline reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static inline reg abs(reg a) { return _mm512_abs_ps(a); }
  static inline reg select_pos(reg z, reg a, reg b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, zero(), _CMP_GT_OQ), b, a);
  }
  static inline __mmask16 first(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static inline reg keep_first(int n, reg v, reg fill) { return _mm512_mask_blend_ps(first(n), fill, v); }
  using pmask = __mmask16;
  static inline pmask part(int n) { return first(n); }
  static inline reg keep_part(pmask m, reg v, reg fill) { return _mm512_mask_blend_ps(m, fill, v); }
  static inline reg round(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline reg pow2i(reg n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static inline void frexp(reg a, reg& m, reg& e) {
    m = _mm512_getmant_ps(a, _MM_MANT_NORM_p5_1, _MM_MANT_SIGN_src);
    e = _mm512_add_ps(_mm512_getexp_ps(a), set1(1.0f));
  }
  static inline bool any_nonfinite(reg a) {
    return _mm512_cmp_ps_mask(_mm512_sub_ps(a, a), zero(), _CMP_NEQ_UQ) != 0;
  }
  static inline void add_to(double* d, reg v) {
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    _mm512_storeu_pd(d, _mm512_add_pd(_mm512_loadu_pd(d), lo));
    _mm512_storeu_pd(d + 8, _mm512_add_pd(_mm512_loadu_pd(d + 8), hi));
  }
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
  static inline reg div(reg a, reg b) { return _mm512_div_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  static inline reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
  static inline reg abs(reg a) { return _mm512_abs_pd(a); }
  static inline reg select_pos(reg z, reg a, reg b) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(z, zero(), _CMP_GT_OQ), b, a);
  }
  static inline __mmask8 first(int n) { return static_cast<__mmask8>((1u << n) - 1u); }
  static inline reg keep_first(int n, reg v, reg fill) { return _mm512_mask_blend_pd(first(n), fill, v); }
  using pmask = __mmask8;
  static inline pmask part(int n) { return first(n); }
  static inline reg keep_part(pmask m, reg v, reg fill) { return _mm512_mask_blend_pd(m, fill, v); }
  static inline bool any_nonfinite(reg a) {
    return _mm512_cmp_pd_mask(_mm512_sub_pd(a, a), zero(), _CMP_NEQ_UQ) != 0;
  }
  static inline void add_to(double* d, reg v) { _mm512_storeu_pd(d, _mm512_add_pd(_mm512_loadu_pd(d), v)); }
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
  static inline reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static inline reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static inline reg abs(reg a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static inline reg select_pos(reg z, reg a, reg b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(z, zero(), _CMP_GT_OQ));
  }
  static inline __m256i first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline reg keep_first(int n, reg v, reg fill) {
    return _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(first(n)));
  }
  using pmask = __m256i;
  static inline pmask part(int n) { return first(n); }
  static inline reg keep_part(pmask m, reg v, reg fill) { return _mm256_blendv_ps(fill, v, _mm256_castsi256_ps(m)); }
  static inline reg round(reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline reg pow2i(reg n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static inline void frexp(reg a, reg& m, reg& e) {
    const __m256i b = _mm256_castps_si256(a);
    e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(126)));
    m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x807fffff)),
                                            _mm256_set1_epi32(0x3f000000)));
  }
  static inline bool any_nonfinite(reg a) {
    return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_sub_ps(a, a), zero(), _CMP_NEQ_UQ)) != 0;
  }
  static inline void add_to(double* d, reg v) {
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), lo));
    _mm256_storeu_pd(d + 4, _mm256_add_pd(_mm256_loadu_pd(d + 4), hi));
  }
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
  static inline reg div(reg a, reg b) { return _mm256_div_pd(a, b); }
  static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  static inline reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  static inline reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
  static inline reg abs(reg a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static inline reg select_pos(reg z, reg a, reg b) {
    return _mm256_blendv_pd(b, a, _mm256_cmp_pd(z, zero(), _CMP_GT_OQ));
  }
  static inline __m256i first(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static inline reg keep_first(int n, reg v, reg fill) {
    return _mm256_blendv_pd(fill, v, _mm256_castsi256_pd(first(n)));
  }
  using pmask = __m256i;
  static inline pmask part(int n) { return first(n); }
  static inline reg keep_part(pmask m, reg v, reg fill) { return _mm256_blendv_pd(fill, v, _mm256_castsi256_pd(m)); }
  static inline bool any_nonfinite(reg a) {
    return _mm256_movemask_pd(_mm256_cmp_pd(_mm256_sub_pd(a, a), zero(), _CMP_NEQ_UQ)) != 0;
  }
  static inline void add_to(double* d, reg v) { _mm256_storeu_pd(d, _mm256_add_pd(_mm256_loadu_pd(d), v)); }
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

// ---------------------------------------------------------------------------------------------------------
// Storage <-> compute registers

template <class S>
using compute_t = typename ComputeOf<S>::type;

// Direct storage (S is the compute type): plain loads and stores.
template <class S>
struct IO {
  using V = Vec<S>;
  using reg = typename V::reg;
  static constexpr int width = V::width;
  static inline reg load(const S* p) { return V::load(p); }
  static inline void store(S* p, reg v) { V::store(p, v); }
  static inline void stream(S* p, reg v) { V::stream(p, v); }
  // The first n (< width) elements; the other lanes hold finite garbage.
  static inline reg load_first(const S* p, int n) {
#if defined(FASTBN_ISA_AVX512)
    if constexpr (sizeof(S) == 4) {
      return _mm512_maskz_loadu_ps(V::first(n), p);
    } else {
      return _mm512_maskz_loadu_pd(V::first(n), p);
    }
#elif defined(FASTBN_ISA_AVX2)
    if constexpr (sizeof(S) == 4) {
      return _mm256_maskload_ps(p, V::first(n));
    } else {
      return _mm256_maskload_pd(p, V::first(n));
    }
#else
    (void)n;
    return *p;
#endif
  }
  // The same with the mask precomputed by V::part(n).
  static inline reg load_part(const S* p, int n, typename V::pmask m) {
#if defined(FASTBN_ISA_AVX512)
    (void)n;
    if constexpr (sizeof(S) == 4) {
      return _mm512_maskz_loadu_ps(m, p);
    } else {
      return _mm512_maskz_loadu_pd(m, p);
    }
#elif defined(FASTBN_ISA_AVX2)
    (void)n;
    if constexpr (sizeof(S) == 4) {
      return _mm256_maskload_ps(p, m);
    } else {
      return _mm256_maskload_pd(p, m);
    }
#else
    (void)m;
    return n > 0 ? *p : S(0);
#endif
  }
#if defined(FASTBN_ISA_AVX512)
  // A whole vector that starts `phase` (1 to width - 1) elements past a vector boundary (p a multiple of sizeof(S)),
  // read as the lanes it needs of the two aligned vectors it overlaps (masked loads: nothing outside its own
  // elements is read) joined by one permute. A plain load there spans two cache lines, which costs a sum over
  // memory about 15% of its time once memory is fast (2-D sums on the EPYC VM; see with_phase in
  // kernels_impl.hpp). The masked loads are the aligned form (VMOVAPS): the unaligned form with lanes masked off
  // streamed from memory at a third of the speed there (even at aligned addresses).
  static constexpr bool kPhased = true;
  struct Phase {
    typename V::pmask tail, head;  // lanes [phase, width) of the first aligned vector, [0, phase) of the next
    __m512i index;                 // lane i takes lane phase + i of the pair
    int phase;
  };
  static inline Phase phase_lanes(int phase) {
    if constexpr (sizeof(S) == 4) {
      const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
      return {static_cast<typename V::pmask>(~V::first(phase)), V::first(phase),
              _mm512_add_epi32(iota, _mm512_set1_epi32(phase)), phase};
    } else {
      const __m512i iota = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
      return {static_cast<typename V::pmask>(~V::first(phase)), V::first(phase),
              _mm512_add_epi64(iota, _mm512_set1_epi64(phase)), phase};
    }
  }
  static inline reg load_phased(const S* p, const Phase& ph) {
    const S* a = p - ph.phase;
    if constexpr (sizeof(S) == 4) {
      return _mm512_permutex2var_ps(_mm512_maskz_load_ps(ph.tail, a), ph.index, _mm512_maskz_load_ps(ph.head, a + 16));
    } else {
      return _mm512_permutex2var_pd(_mm512_maskz_load_pd(ph.tail, a), ph.index, _mm512_maskz_load_pd(ph.head, a + 8));
    }
  }
#else
  static constexpr bool kPhased = false;
#endif
  // Through a buffer and plain stores: masked stores (and AVX2's microcoded VMASKMOVPS above all) cost several
  // times a vector's worth of plain ones on AMD Zen, once per run of a loop over short runs.
  static inline void store_first(S* p, reg v, int n) {
#if defined(FASTBN_ISA_AVX512) || defined(FASTBN_ISA_AVX2)
    alignas(64) S t[V::width];
    V::store(t, v);
    for (int i = 0; i < n; ++i) p[i] = t[i];
#else
    if (n > 0) *p = v;
#endif
  }
};

// Software conversions of one value (the scalar path, and the reference the vector paths agree with).
inline float to_float(bfloat16 h) { return bits_to<float>(static_cast<uint32_t>(h.bits) << 16); }

inline float to_float(float16 h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
  if (e == 0x1f) return bits_to<float>(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
    return sign ? -v : v;
  }
  return bits_to<float>(sign | ((e + 112) << 23) | (m << 13));
}

template <class H>
inline H from_float(float f);

template <>
inline bfloat16 from_float<bfloat16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  return bfloat16{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}

template <>
inline float16 from_float<float16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf, or NaN kept quiet with the top of its payload
    return float16{static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u | ((a >> 13) & 0x3ffu) : 0x7c00u))};
  }
  if (a >= 0x477ff000u) return float16{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
  if (a < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 (whose ulp is 2^-24, the subnormal half's) lets the FPU round
    // to nearest even; the low bits are then the subnormal's mantissa (0x400 = the smallest normal).
    const float t = bits_to<float>(a) + 0.5f;
    uint32_t tb;
    std::memcpy(&tb, &t, 4);
    return float16{static_cast<uint16_t>(sign | (tb - 0x3f000000u))};
  }
  a += 0xc8000fffu + ((a >> 13) & 1u);  // rebias the exponent by -112 and round to nearest even
  return float16{static_cast<uint16_t>(sign | (a >> 13))};
}

// Half types: 16-bit storage, float compute.
template <class H>
struct HalfIO {
  using V = Vec<float>;
  using reg = V::reg;
  static constexpr int width = V::width;
  static constexpr bool kBf16 = std::is_same<H, bfloat16>::value;
  static constexpr bool kPhased = false;  // loads of half a line: see IO::load_phased

#if defined(FASTBN_ISA_AVX512)
  using hreg = __m256i;
  static inline reg widen(hreg h) {
    if constexpr (kBf16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
  static inline hreg narrow(reg v) {
    if constexpr (kBf16) {
#if defined(FASTBN_ISA_AVX512_BF16)
      // VCVTNEPS2BF16 rounds to nearest even and quiets NaNs as the bits below do, in one instruction instead of
      // eight, but takes subnormal inputs for zero: a vector with one (rare) takes the bits.
      if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) == 0, 1)) return (__m256i)_mm512_cvtneps_pbh(v);
#endif
      // Round to nearest even on the bits; NaNs stay NaN.
      const __m512i u = _mm512_castps_si512(v);
      const __m512i hi = _mm512_srli_epi32(u, 16);
      const __m512i odd = _mm512_and_si512(hi, _mm512_set1_epi32(1));
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
      r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), hi, _mm512_set1_epi32(0x40));
      return _mm512_cvtepi32_epi16(r);
    } else {
      return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  }
  static inline reg load(const H* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static inline void store(H* p, reg v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static inline void stream(H* p, reg v) { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), narrow(v)); }
  static inline reg load_first(const H* p, int n) {
    return widen(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1u), p));
  }
  static inline reg load_part(const H* p, int, V::pmask m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
  static inline void store_first(H* p, reg v, int n) {
    // A masked store here (unlike IO::store_first): through a buffer, the 2-byte copies measured slower.
    _mm256_mask_storeu_epi16(p, static_cast<__mmask16>((1u << n) - 1u), narrow(v));
  }
#elif defined(FASTBN_ISA_AVX2)
  using hreg = __m128i;
  static inline reg widen(hreg h) {
    if constexpr (kBf16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      return _mm256_cvtph_ps(h);
    }
  }
  static inline hreg narrow(reg v) {
    if constexpr (kBf16) {
      const __m256i u = _mm256_castps_si256(v);
      const __m256i hi = _mm256_srli_epi32(u, 16);
      const __m256i odd = _mm256_and_si256(hi, _mm256_set1_epi32(1));
      __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd)), 16);
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
      return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    } else {
      return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  }
  static inline reg load(const H* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static inline void store(H* p, reg v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v)); }
  static inline void stream(H* p, reg v) { _mm_stream_si128(reinterpret_cast<__m128i*>(p), narrow(v)); }
  static inline reg load_first(const H* p, int n) {
    alignas(16) H t[8] = {};
    std::memcpy(t, p, static_cast<size_t>(n) * sizeof(H));
    return load(t);
  }
  static inline reg load_part(const H* p, int n, V::pmask) { return load_first(p, n); }
  static inline void store_first(H* p, reg v, int n) {
    alignas(16) H t[8];
    store(t, v);
    std::memcpy(p, t, static_cast<size_t>(n) * sizeof(H));
  }
#else
  static inline reg load(const H* p) { return to_float(*p); }
  static inline void store(H* p, reg v) { *p = from_float<H>(v); }
  static inline void stream(H* p, reg v) { *p = from_float<H>(v); }
  static inline reg load_first(const H* p, int n) { return n > 0 ? to_float(*p) : 0.0f; }
  static inline reg load_part(const H* p, int n, V::pmask) { return load_first(p, n); }
  static inline void store_first(H* p, reg v, int n) {
    if (n > 0) *p = from_float<H>(v);
  }
#endif
};

template <>
struct IO<bfloat16> : HalfIO<bfloat16> {};
template <>
struct IO<float16> : HalfIO<float16> {};

// ---------------------------------------------------------------------------------------------------------
// Elementary functions for the activations. float: vector polynomials (Cephes' coefficients, about 1 ulp);
// double: lane by lane with the C library, which is exact to within an ulp and off every hot path.

template <class V>
inline typename V::reg exp_f32(typename V::reg x) {
  using reg = typename V::reg;
  // e^x = 2^n * e^r, r = x - n ln2 in [-ln2/2, ln2/2]; 2^n applied in two halves so that results down to
  // the subnormals come out right.
  x = V::min(V::set1(88.72f), V::max(V::set1(-103.9f), x));  // NaN passes (max/min return their 2nd operand)
  const reg n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  reg r = V::fmadd(n, V::set1(-0.693359375f), x);
  r = V::fmadd(n, V::set1(2.12194440e-4f), r);
  reg p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  p = V::fmadd(V::mul(p, r), r, V::add(r, V::set1(1.0f)));
  const reg n1 = V::round(V::mul(n, V::set1(0.5f)));
  return V::mul(V::mul(p, V::pow2i(n1)), V::pow2i(V::sub(n, n1)));
}

// Natural log of x > 0 (normal or subnormal).
template <class V>
inline typename V::reg log_f32(typename V::reg x) {
  using reg = typename V::reg;
  // Subnormals are scaled into the normal range first.
  const reg tiny = V::set1(1.17549435e-38f);
  const reg scaled = V::mul(x, V::set1(16777216.0f));
  const reg small = V::sub(tiny, x);  // > 0 where x is subnormal
  x = V::select_pos(small, scaled, x);
  const reg bias = V::select_pos(small, V::set1(-16.6355323f), V::zero());  // -24 ln 2
  reg m, e;
  V::frexp(x, m, e);  // m in [0.5, 1)
  // m < sqrt(1/2): use 2m and e - 1, so that m - 1 is in [-0.29, 0.41].
  const reg lowm = V::sub(V::set1(0.707106781186547524f), m);
  e = V::select_pos(lowm, V::sub(e, V::set1(1.0f)), e);
  m = V::select_pos(lowm, V::add(m, m), m);
  const reg f = V::sub(m, V::set1(1.0f));
  const reg z = V::mul(f, f);
  reg p = V::set1(7.0376836292e-2f);
  p = V::fmadd(p, f, V::set1(-1.1514610310e-1f));
  p = V::fmadd(p, f, V::set1(1.1676998740e-1f));
  p = V::fmadd(p, f, V::set1(-1.2420140846e-1f));
  p = V::fmadd(p, f, V::set1(1.4249322787e-1f));
  p = V::fmadd(p, f, V::set1(-1.6668057665e-1f));
  p = V::fmadd(p, f, V::set1(2.0000714765e-1f));
  p = V::fmadd(p, f, V::set1(-2.4999993993e-1f));
  p = V::fmadd(p, f, V::set1(3.3333331174e-1f));
  reg y = V::mul(V::mul(p, f), z);
  y = V::fmadd(e, V::set1(-2.12194440e-4f), y);
  y = V::fmadd(z, V::set1(-0.5f), y);
  reg r = V::add(f, y);
  r = V::fmadd(e, V::set1(0.693359375f), r);
  return V::add(r, bias);
}

template <class V, class F>
inline typename V::reg lanewise(typename V::reg x, F&& f) {
  if constexpr (V::width == 1) {
    return f(x);
  } else {
    alignas(64) double t[V::width];
    V::store(t, x);
    for (int i = 0; i < V::width; ++i) t[i] = f(t[i]);
    return V::load(t);
  }
}

template <class C>
inline typename Vec<C>::reg vexp(typename Vec<C>::reg x) {
  if constexpr (sizeof(C) == 4) {
    return exp_f32<Vec<float>>(x);
  } else {
    return lanewise<Vec<double>>(x, [](double v) { return std::exp(v); });
  }
}

template <class C>
inline typename Vec<C>::reg vlog(typename Vec<C>::reg x) {
  if constexpr (sizeof(C) == 4) {
    return log_f32<Vec<float>>(x);
  } else {
    return lanewise<Vec<double>>(x, [](double v) { return std::log(v); });
  }
}

}  // namespace FASTBN_ISA_NS
}  // namespace cpu
}  // namespace fastbn
