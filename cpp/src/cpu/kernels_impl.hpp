// CPU batch-norm kernels. Included once per instruction set by kernels_<isa>.cpp, which defines FASTBN_ISA_NS
// (and FASTBN_ISA_AVX512 / FASTBN_ISA_AVX2), so this one source becomes one namespace per ISA.
//
// Two layouts of the (outer, C, inner) view:
//  - inner > 1 ("nc"): each channel is `outer` contiguous runs of `inner` values, cut into blocks of whole runs
//    small enough to stay in L1/L2. Each thread takes a contiguous range of channels and pipelines them (block b
//    of channel c is normalized from cache while block b of channel c + 1 is read for its statistics); when the
//    channels do not split evenly over the threads, (channel, block) units are shared out instead.
//  - inner == 1 ("cl", channels-last and 2-D): rows of C contiguous channels. Vectors run across channels; rows
//    are grouped into tiles (in cache) and tiles into chunks (the unit a thread takes).
//
// Determinism: every reduction is defined by the shape alone. A channel's statistics are the in-order merge of
// its blocks (nc) or chunks (cl), whichever thread computed each one, so the bits are the same for any thread
// count. Kernel sources are compiled with -ffp-contract=off so that vector bodies and scalar tails round alike.
//
// Statistics: two passes over each in-cache block give a shift k near the block mean, then sums of (x - k) and
// (x - k)^2; blocks are merged in double with Chan's formula. This stays accurate when |mean| >> std, and the
// second pass costs no memory traffic. Normalization computes (x - mean) * scale + beta, not x * scale + shift:
// for large means the subtraction is exact while a folded shift would cancel catastrophically.
#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/kernels.hpp"
#include "cpu/simd.hpp"

namespace fastbn {
namespace cpu {
namespace FASTBN_ISA_NS {
namespace {

// Bytes of one array a block (nc) or tile (cl) spans: the working set of the second, in-cache pass.
constexpr int64_t kBlockBytes = 32 * 1024;
// Bytes of one array a channels-last tile spans (its reductions re-read it from L1/L2).
constexpr int64_t kTileBytes = 64 * 1024;
// Rows a channels-last chunk spans, in bytes: the unit of parallel work there.
constexpr int64_t kChunkBytes = 1 << 20;
// Below this many bytes per thread, starting a thread costs more than it saves.
constexpr int64_t kMinBytesPerThread = 96 * 1024;
// Outputs at least this large bypass the caches (streaming stores): they would not stay there anyway, and a
// normal store first reads the line it writes.
constexpr int64_t kStreamMinBytes = 4 << 20;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }

inline int thread_id() {
#if defined(_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// This thread's share [begin, end) of n items, split evenly over the team that actually runs: OpenMP may give
// fewer threads than asked for (OMP_THREAD_LIMIT, or a call from inside another parallel region).
struct Share {
  int64_t begin, end;
};

inline Share my_share(int64_t n) {
#if defined(_OPENMP)
  const int64_t t = omp_get_thread_num(), k = omp_get_num_threads();
#else
  const int64_t t = 0, k = 1;
#endif
  return {n * t / k, n * (t + 1) / k};
}

// Calls f(r, r % C) for this thread's share of the runs r in [0, runs), without a division per run.
template <class F>
inline void for_my_runs(int64_t runs, int64_t C, F&& f) {
  const Share sh = my_share(runs);
  int64_t c = sh.begin % C;
  for (int64_t r = sh.begin; r < sh.end; ++r) {
    f(r, c);
    if (++c == C) c = 0;
  }
}

// Threads worth using for a pass over `bytes` made of `units` independent pieces of work.
inline int pick_threads(int max_threads, int64_t bytes, int64_t units) {
  int64_t t = min64(bytes / kMinBytesPerThread, units);
  t = min64(t, max_threads);
  return t < 1 ? 1 : static_cast<int>(t);
}

// Whole channels per thread is fastest (a channel's second pass hits that thread's cache), but only when the
// channels split evenly; otherwise the work is cut into (channel, block) units.
inline bool channels_balance(int64_t channels, int threads) {
  return threads == 1 || channels % threads == 0 || channels >= 8 * threads;
}

template <class T>
inline bool can_stream(const T* out, int64_t bytes) {
  return bytes >= kStreamMinBytes && reinterpret_cast<uintptr_t>(out) % sizeof(T) == 0;
}

// Carves 64-byte aligned arrays out of one workspace block.
class Carver {
 public:
  explicit Carver(void* base) : p_(static_cast<char*>(base)) {}
  template <class U>
  U* take(int64_t count) {
    U* r = reinterpret_cast<U*>(p_);
    p_ += round_up(count * static_cast<int64_t>(sizeof(U)), 64);
    return r;
  }
  template <class U>
  static int64_t bytes(int64_t count) {
    return round_up(count * static_cast<int64_t>(sizeof(U)), 64);
  }

 private:
  char* p_;
};

// ---------------------------------------------------------------------------------------------------------
// Moments and per-channel coefficients

struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

// Chan et al.: fold a part of nb values with mean mb and M2 qb into acc. Exact for the first part (acc.n == 0).
inline void merge(Moments& acc, double nb, double mb, double qb) {
  const double n = acc.n + nb;
  const double delta = mb - acc.mean;
  const double f = nb / n;
  acc.mean += delta * f;
  acc.m2 += qb + delta * delta * acc.n * f;
  acc.n = n;
}

template <class T>
struct Coef {
  T mu, scale, shift;
};

inline double inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// Finishes channel c of a training forward: writes mean/var and returns the normalization coefficients.
template <class T>
inline Coef<T> train_coef(const TrainArgs<T>& a, int64_t c, const Moments& m) {
  const double var = m.m2 / m.n;
  a.mean[c] = static_cast<T>(m.mean);
  a.var[c] = static_cast<T>(var);
  const double g = a.gamma ? static_cast<double>(a.gamma[c]) : 1.0;
  const double scale = g * inv_std(var, a.eps);
  // mean = hi + lo: x - hi is exact for x near the mean, and lo is folded into the shift, so y keeps full
  // precision even when |mean| >> std.
  const T hi = static_cast<T>(m.mean);
  const double lo = m.mean - static_cast<double>(hi);
  const double beta = a.beta ? static_cast<double>(a.beta[c]) : 0.0;
  return {hi, static_cast<T>(scale), static_cast<T>(beta - lo * scale)};
}

// Backward coefficients of channel c: dx = a * dy + (b * (x - mu) + d). Writes dgamma / dbeta when wanted.
template <class T>
struct GradCoef {
  T mu, a, b, d;
};

template <class T>
inline GradCoef<T> grad_coef(const BackwardArgs<T>& a, int64_t c, double sdy, double sdyx) {
  const double invstd = inv_std(static_cast<double>(a.var[c]), a.eps);
  const double g = a.gamma ? static_cast<double>(a.gamma[c]) : 1.0;
  if (a.dgamma) a.dgamma[c] = static_cast<T>(sdyx * invstd);
  if (a.dbeta) a.dbeta[c] = static_cast<T>(sdy);
  GradCoef<T> k{a.mean[c], static_cast<T>(g * invstd), T(0), T(0)};
  if (a.batch_stats) {
    const double n = static_cast<double>(a.outer * a.inner);
    k.b = static_cast<T>(-g * invstd * invstd * invstd * sdyx / n);
    k.d = static_cast<T>(-g * invstd * sdy / n);
  }
  return k;
}

// ---------------------------------------------------------------------------------------------------------
// Runs (inner > 1): `rows` runs of `len` contiguous values, run r at p + r * stride.

template <class T>
inline void block_moments(const T* p, int64_t stride, int64_t rows, int64_t len, double& mean, double& m2) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  typename V::reg a0 = V::zero(), a1 = V::zero(), a2 = V::zero(), a3 = V::zero();
  T t = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* q = p + r * stride;
    int64_t i = 0;
    for (; i + 4 * W <= len; i += 4 * W) {
      a0 = V::add(a0, V::load(q + i));
      a1 = V::add(a1, V::load(q + i + W));
      a2 = V::add(a2, V::load(q + i + 2 * W));
      a3 = V::add(a3, V::load(q + i + 3 * W));
    }
    for (; i + W <= len; i += W) a0 = V::add(a0, V::load(q + i));
    for (; i < len; ++i) t += q[i];
  }
  const double n = static_cast<double>(rows * len);
  const T k = static_cast<T>((V::hsum(V::add(V::add(a0, a1), V::add(a2, a3))) + t) / n);
  const typename V::reg kv = V::set1(k);
  typename V::reg s0 = V::zero(), s1 = V::zero(), q0 = V::zero(), q1 = V::zero();
  T ts = 0, tq = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* q = p + r * stride;
    int64_t i = 0;
    for (; i + 2 * W <= len; i += 2 * W) {
      const typename V::reg d0 = V::sub(V::load(q + i), kv);
      const typename V::reg d1 = V::sub(V::load(q + i + W), kv);
      s0 = V::add(s0, d0);
      s1 = V::add(s1, d1);
      q0 = V::fmadd(d0, d0, q0);
      q1 = V::fmadd(d1, d1, q1);
    }
    for (; i + W <= len; i += W) {
      const typename V::reg d0 = V::sub(V::load(q + i), kv);
      s0 = V::add(s0, d0);
      q0 = V::fmadd(d0, d0, q0);
    }
    for (; i < len; ++i) {
      const T d = q[i] - k;
      ts += d;
      tq = V::fma1(d, d, tq);
    }
  }
  const double s = V::hsum(V::add(s0, s1)) + ts;
  const double sq = V::hsum(V::add(q0, q1)) + tq;
  mean = static_cast<double>(k) + s / n;
  m2 = sq - s * s / n;
  if (m2 < 0) m2 = 0;  // rounding; NaN passes through
}

// y = (x - mu) * scale + shift over a run.
template <class T, bool kStream>
inline void normalize_run(const T* x, T* y, int64_t len, const Coef<T>& k) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  int64_t i = 0;
  if (kStream) {  // peel to the vector alignment streaming stores need
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(y) / sizeof(T)) % W);
    const int64_t head = mis ? min64(W - mis, len) : 0;
    for (; i < head; ++i) y[i] = V::fma1(x[i] - k.mu, k.scale, k.shift);
  }
  const typename V::reg mu = V::set1(k.mu), sc = V::set1(k.scale), sh = V::set1(k.shift);
  for (; i + 2 * W <= len; i += 2 * W) {
    const typename V::reg r0 = V::fmadd(V::sub(V::load(x + i), mu), sc, sh);
    const typename V::reg r1 = V::fmadd(V::sub(V::load(x + i + W), mu), sc, sh);
    if (kStream) {
      V::stream(y + i, r0);
      V::stream(y + i + W, r1);
    } else {
      V::store(y + i, r0);
      V::store(y + i + W, r1);
    }
  }
  for (; i + W <= len; i += W) {
    const typename V::reg r0 = V::fmadd(V::sub(V::load(x + i), mu), sc, sh);
    if (kStream) {
      V::stream(y + i, r0);
    } else {
      V::store(y + i, r0);
    }
  }
  for (; i < len; ++i) y[i] = V::fma1(x[i] - k.mu, k.scale, k.shift);
}

template <class T>
inline void normalize_run(bool stream, const T* x, T* y, int64_t len, const Coef<T>& k) {
  if (stream) {
    normalize_run<T, true>(x, y, len, k);
  } else {
    normalize_run<T, false>(x, y, len, k);
  }
}

// Sums of dy and dy * (x - mu) over a block of runs.
template <class T>
inline void block_grad_sums(const T* dy, const T* x, int64_t stride, int64_t rows, int64_t len, T mu,
                            double& sdy, double& sdyx) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  const typename V::reg m = V::set1(mu);
  typename V::reg g0 = V::zero(), g1 = V::zero(), h0 = V::zero(), h1 = V::zero();
  T tg = 0, th = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* pd = dy + r * stride;
    const T* px = x + r * stride;
    int64_t i = 0;
    for (; i + 2 * W <= len; i += 2 * W) {
      const typename V::reg d0 = V::load(pd + i), d1 = V::load(pd + i + W);
      g0 = V::add(g0, d0);
      g1 = V::add(g1, d1);
      h0 = V::fmadd(d0, V::sub(V::load(px + i), m), h0);
      h1 = V::fmadd(d1, V::sub(V::load(px + i + W), m), h1);
    }
    for (; i + W <= len; i += W) {
      const typename V::reg d0 = V::load(pd + i);
      g0 = V::add(g0, d0);
      h0 = V::fmadd(d0, V::sub(V::load(px + i), m), h0);
    }
    for (; i < len; ++i) {
      tg += pd[i];
      th = V::fma1(pd[i], px[i] - mu, th);
    }
  }
  sdy = V::hsum(V::add(g0, g1)) + tg;
  sdyx = V::hsum(V::add(h0, h1)) + th;
}

// dx = a * dy + (b * (x - mu) + d) over a run; with kScaleOnly, dx = a * dy (x unused).
template <class T, bool kStream, bool kScaleOnly>
inline void grad_run(const T* dy, const T* x, T* dx, int64_t len, const GradCoef<T>& k) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  auto one = [&](int64_t j) {
    return kScaleOnly ? dy[j] * k.a : V::fma1(k.a, dy[j], V::fma1(k.b, x[j] - k.mu, k.d));
  };
  int64_t i = 0;
  if (kStream) {
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(dx) / sizeof(T)) % W);
    const int64_t head = mis ? min64(W - mis, len) : 0;
    for (; i < head; ++i) dx[i] = one(i);
  }
  const typename V::reg va = V::set1(k.a), vb = V::set1(k.b), vd = V::set1(k.d), vm = V::set1(k.mu);
  for (; i + W <= len; i += W) {
    typename V::reg r;
    if (kScaleOnly) {
      r = V::mul(V::load(dy + i), va);
    } else {
      r = V::fmadd(va, V::load(dy + i), V::fmadd(vb, V::sub(V::load(x + i), vm), vd));
    }
    if (kStream) {
      V::stream(dx + i, r);
    } else {
      V::store(dx + i, r);
    }
  }
  for (; i < len; ++i) dx[i] = one(i);
}

template <class T>
inline void grad_run(bool stream, bool scale_only, const T* dy, const T* x, T* dx, int64_t len,
                     const GradCoef<T>& k) {
  if (stream) {
    if (scale_only) {
      grad_run<T, true, true>(dy, x, dx, len, k);
    } else {
      grad_run<T, true, false>(dy, x, dx, len, k);
    }
  } else {
    if (scale_only) {
      grad_run<T, false, true>(dy, x, dx, len, k);
    } else {
      grad_run<T, false, false>(dy, x, dx, len, k);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Rows (inner == 1): `rows` rows of C contiguous channels. The reductions walk a tile column group by column
// group (G vectors of channels held in registers); the elementwise passes walk the rows as one flat run, the
// channel index cycling, with coefficient arrays extended to C + W entries (entry j is channel j % C) so a
// vector load never needs to wrap.

#if defined(FASTBN_ISA_AVX512)
constexpr int kGroup = 8;  // 3 * 8 of the 32 vector registers
#else
constexpr int kGroup = 4;
#endif

// Per channel of [0, G * V::width): a shift k (the tile mean) and s1 = sum(x - k), s2 = sum((x - k)^2).
template <class T, class V, int G>
inline void group_moments_cl(const T* x, int64_t rows, int64_t C, T* k, T* s1, T* s2) {
  constexpr int64_t W = V::width;
  typename V::reg a[G], u[G], q[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) a[g] = u[g] = q[g] = V::zero();
  for (int64_t r = 0; r < rows; ++r) {
    const T* p = x + r * C;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) a[g] = V::add(a[g], V::load(p + g * W));
  }
  const typename V::reg inv = V::set1(T(1) / static_cast<T>(rows));
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    a[g] = V::mul(a[g], inv);
    V::store(k + g * W, a[g]);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* p = x + r * C;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const typename V::reg d = V::sub(V::load(p + g * W), a[g]);
      u[g] = V::add(u[g], d);
      q[g] = V::fmadd(d, d, q[g]);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    V::store(s1 + g * W, u[g]);
    V::store(s2 + g * W, q[g]);
  }
}

template <class T>
inline void tile_moments_cl(const T* x, int64_t rows, int64_t C, T* k, T* s1, T* s2) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  int64_t c = 0;
  for (; c + kGroup * W <= C; c += kGroup * W) group_moments_cl<T, V, kGroup>(x + c, rows, C, k + c, s1 + c, s2 + c);
  for (; c + W <= C; c += W) group_moments_cl<T, V, 1>(x + c, rows, C, k + c, s1 + c, s2 + c);
  for (; c < C; ++c) group_moments_cl<T, Lane<T>, 1>(x + c, rows, C, k + c, s1 + c, s2 + c);
}

// Folds a tile (rows values per channel, as left by tile_moments_cl) into per-channel running (mean, M2) of
// n_acc values: the formulas of block_moments + merge.
template <class T>
inline void merge_tile_cl(double* pm, double* pq, double n_acc, int64_t rows, int64_t C, const T* k, const T* s1,
                          const T* s2) {
  const double nb = static_cast<double>(rows);
  const double f = nb / (n_acc + nb);
  for (int64_t c = 0; c < C; ++c) {
    const double s = static_cast<double>(s1[c]);
    const double mb = static_cast<double>(k[c]) + s / nb;
    double qb = static_cast<double>(s2[c]) - s * s / nb;
    qb = qb < 0 ? 0 : qb;
    const double delta = mb - pm[c];
    pm[c] += delta * f;
    pq[c] += qb + delta * delta * n_acc * f;
  }
}

// Per channel of [0, G * V::width): g = sum(dy), h = sum(dy * (x - mu)) over the tile.
template <class T, class V, int G>
inline void group_grad_sums_cl(const T* dy, const T* x, int64_t rows, int64_t C, const T* mu, T* g_out, T* h_out) {
  constexpr int64_t W = V::width;
  typename V::reg m[G], g[G], h[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) {
    m[j] = V::load(mu + j * W);
    g[j] = h[j] = V::zero();
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T* pd = dy + r * C;
    const T* px = x + r * C;
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) {
      const typename V::reg d = V::load(pd + j * W);
      g[j] = V::add(g[j], d);
      h[j] = V::fmadd(d, V::sub(V::load(px + j * W), m[j]), h[j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) {
    V::store(g_out + j * W, g[j]);
    V::store(h_out + j * W, h[j]);
  }
}

template <class T>
inline void tile_grad_sums_cl(const T* dy, const T* x, int64_t rows, int64_t C, const T* mu, T* g, T* h) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  int64_t c = 0;
  for (; c + kGroup * W <= C; c += kGroup * W) {
    group_grad_sums_cl<T, V, kGroup>(dy + c, x + c, rows, C, mu + c, g + c, h + c);
  }
  for (; c + W <= C; c += W) group_grad_sums_cl<T, V, 1>(dy + c, x + c, rows, C, mu + c, g + c, h + c);
  for (; c < C; ++c) group_grad_sums_cl<T, Lane<T>, 1>(dy + c, x + c, rows, C, mu + c, g + c, h + c);
}

// Channel index bookkeeping of a flat run over whole rows: c advances by one vector and wraps at C.
struct ChannelCursor {
  int64_t c = 0, C, step;
  ChannelCursor(int64_t channels, int64_t width) : C(channels), step(width % channels) {}
  void advance() {
    c += step;
    if (c >= C) c -= C;
  }
  void advance1() {
    if (++c == C) c = 0;
  }
};

// Extends per-channel coefficients (first C entries written) to C + W entries, entry j = entry j % C.
template <class T>
inline void extend_channels(T* a, int64_t C, int64_t W) {
  for (int64_t j = C; j < C + W; ++j) a[j] = a[j % C];
}

// y = (x - mu) * sc + sh over `n` values of whole rows; mu / sc / sh extended.
template <class T, bool kStream>
inline void normalize_flat_cl(const T* x, T* y, int64_t n, int64_t C, const T* mu, const T* sc, const T* sh) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  ChannelCursor cur(C, W);
  int64_t i = 0;
  if (kStream) {
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(y) / sizeof(T)) % W);
    const int64_t head = mis ? min64(W - mis, n) : 0;
    for (; i < head; ++i, cur.advance1()) y[i] = V::fma1(x[i] - mu[cur.c], sc[cur.c], sh[cur.c]);
  }
  for (; i + W <= n; i += W, cur.advance()) {
    const int64_t c = cur.c;
    const typename V::reg r = V::fmadd(V::sub(V::load(x + i), V::load(mu + c)), V::load(sc + c), V::load(sh + c));
    if (kStream) {
      V::stream(y + i, r);
    } else {
      V::store(y + i, r);
    }
  }
  for (; i < n; ++i, cur.advance1()) y[i] = V::fma1(x[i] - mu[cur.c], sc[cur.c], sh[cur.c]);
}

template <class T>
inline void normalize_flat_cl(bool stream, const T* x, T* y, int64_t n, int64_t C, const T* mu, const T* sc,
                              const T* sh) {
  if (stream) {
    normalize_flat_cl<T, true>(x, y, n, C, mu, sc, sh);
  } else {
    normalize_flat_cl<T, false>(x, y, n, C, mu, sc, sh);
  }
}

// dx = a * dy + (b * (x - mu) + d) per channel over whole rows; with kScaleOnly, dx = a * dy. Coefficients
// extended.
template <class T, bool kStream, bool kScaleOnly>
inline void grad_flat_cl(const T* dy, const T* x, T* dx, int64_t n, int64_t C, const T* mu, const T* ka,
                         const T* kb, const T* kd) {
  using V = Vec<T>;
  constexpr int64_t W = V::width;
  ChannelCursor cur(C, W);
  auto one = [&](int64_t j, int64_t c) {
    return kScaleOnly ? dy[j] * ka[c] : V::fma1(ka[c], dy[j], V::fma1(kb[c], x[j] - mu[c], kd[c]));
  };
  int64_t i = 0;
  if (kStream) {
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(dx) / sizeof(T)) % W);
    const int64_t head = mis ? min64(W - mis, n) : 0;
    for (; i < head; ++i, cur.advance1()) dx[i] = one(i, cur.c);
  }
  for (; i + W <= n; i += W, cur.advance()) {
    const int64_t c = cur.c;
    typename V::reg r;
    if (kScaleOnly) {
      r = V::mul(V::load(dy + i), V::load(ka + c));
    } else {
      r = V::fmadd(V::load(ka + c), V::load(dy + i),
                   V::fmadd(V::load(kb + c), V::sub(V::load(x + i), V::load(mu + c)), V::load(kd + c)));
    }
    if (kStream) {
      V::stream(dx + i, r);
    } else {
      V::store(dx + i, r);
    }
  }
  for (; i < n; ++i, cur.advance1()) dx[i] = one(i, cur.c);
}

template <class T>
inline void grad_flat_cl(bool stream, bool scale_only, const T* dy, const T* x, T* dx, int64_t n, int64_t C,
                         const T* mu, const T* ka, const T* kb, const T* kd) {
  if (stream) {
    if (scale_only) {
      grad_flat_cl<T, true, true>(dy, x, dx, n, C, mu, ka, kb, kd);
    } else {
      grad_flat_cl<T, true, false>(dy, x, dx, n, C, mu, ka, kb, kd);
    }
  } else {
    if (scale_only) {
      grad_flat_cl<T, false, true>(dy, x, dx, n, C, mu, ka, kb, kd);
    } else {
      grad_flat_cl<T, false, false>(dy, x, dx, n, C, mu, ka, kb, kd);
    }
  }
}

// Channels-last geometry: tiles of rows (the in-cache unit) grouped into chunks (the parallel unit).
struct RowPlan {
  int64_t tile, chunk, nchunks;
  int64_t chunk_begin(int64_t k) const { return k * chunk; }
};

template <class T>
inline RowPlan row_plan(int64_t rows, int64_t C, int64_t arrays) {
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T)) * arrays;
  const int64_t tile = min64(max64(1, kTileBytes * arrays / row_bytes), rows);
  const int64_t chunk = tile * max64(1, kChunkBytes / (tile * row_bytes));
  return {tile, chunk, ceil_div(rows, chunk)};
}

// ---------------------------------------------------------------------------------------------------------
// Training forward

template <class T>
void train_nc(const TrainArgs<T>& a, const Exec& ex) {
  const int64_t N = a.outer, C = a.channels, L = a.inner, stride = C * L;
  const int64_t bytes = N * stride * static_cast<int64_t>(sizeof(T));
  const int64_t rpb = max64(1, kBlockBytes / (L * static_cast<int64_t>(sizeof(T))));
  const int64_t nb = ceil_div(N, rpb);
  const int nt = pick_threads(ex.max_threads, bytes, C * nb);
  const bool stream = can_stream(a.y, bytes);

  if (channels_balance(C, nt)) {
    // Each thread owns a contiguous range of channels and pipelines them: while a block of channel c is
    // normalized (its values still in cache from its statistics pass), the same block of channel c + 1 is
    // read for its statistics. Reads from memory and streaming writes then run together, as in a copy, and
    // the cache holds about one channel.
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const Share mine = my_share(C);
      const int64_t c_begin = mine.begin, c_end = mine.end;
      auto stats_block = [&](int64_t c, int64_t b, Moments& m) {
        const int64_t r0 = b * rpb, rows = min64(rpb, N - r0);
        double mb, qb;
        block_moments(a.x + c * L + r0 * stride, stride, rows, L, mb, qb);
        merge(m, static_cast<double>(rows * L), mb, qb);
      };
      Moments cur;
      if (c_begin < c_end) {
        for (int64_t b = 0; b < nb; ++b) stats_block(c_begin, b, cur);
      }
      for (int64_t c = c_begin; c < c_end; ++c) {
        const Coef<T> k = train_coef(a, c, cur);
        Moments next;
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t r0 = b * rpb, r1 = min64(N, r0 + rpb);
          for (int64_t o = r0; o < r1; ++o) {
            const int64_t q = c * L + o * stride;
            normalize_run(stream, a.x + q, a.y + q, L, k);
          }
          if (c + 1 < c_end) stats_block(c + 1, b, next);
        }
        cur = next;
      }
      if (stream) stream_fence();
    }
    return;
  }

  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * nb) + Carver::bytes<Coef<T>>(C)));
  double* part = carve.take<double>(2 * C * nb);
  Coef<T>* coef = carve.take<Coef<T>>(C);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t u = 0; u < C * nb; ++u) {
      const int64_t c = u / nb, b = u % nb, r0 = b * rpb;
      block_moments(a.x + r0 * stride + c * L, stride, min64(rpb, N - r0), L, part[2 * u], part[2 * u + 1]);
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      Moments m;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t u = c * nb + b;
        merge(m, static_cast<double>(min64(rpb, N - b * rpb) * L), part[2 * u], part[2 * u + 1]);
      }
      coef[c] = train_coef(a, c, m);
    }
    for_my_runs(N * C, C,
                [&](int64_t r, int64_t c) { normalize_run(stream, a.x + r * L, a.y + r * L, L, coef[c]); });
    if (stream) stream_fence();
  }
}

template <class T>
void train_cl(const TrainArgs<T>& a, const Exec& ex) {
  const int64_t R = a.outer, C = a.channels;
  const int64_t bytes = R * C * static_cast<int64_t>(sizeof(T));
  const RowPlan plan = row_plan<T>(R, C, 1);
  const int nt = pick_threads(ex.max_threads, bytes, plan.nchunks);
  const bool stream = can_stream(a.y, bytes);
  const int64_t Cp = round_up(C, 16);  // per-thread scratch rows on their own cache lines
  const int64_t Ce = C + Vec<T>::width;

  Carver carve(ex.workspace->reserve(2 * Carver::bytes<double>(plan.nchunks * C) + 3 * Carver::bytes<T>(Ce) +
                                     Carver::bytes<T>(3 * Cp * nt)));
  double* pmean = carve.take<double>(plan.nchunks * C);
  double* pm2 = carve.take<double>(plan.nchunks * C);
  T* mu = carve.take<T>(Ce);
  T* sc = carve.take<T>(Ce);
  T* sh = carve.take<T>(Ce);
  T* scratch = carve.take<T>(3 * Cp * nt);

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* k = scratch + 3 * Cp * thread_id();
    T* s1 = k + Cp;
    T* s2 = s1 + Cp;
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
      double* pm = pmean + ch * C;
      double* pq = pm2 + ch * C;
      for (int64_t c = 0; c < C; ++c) pm[c] = pq[c] = 0;
      const int64_t end = min64(R, plan.chunk_begin(ch) + plan.chunk);
      double n_acc = 0;
      for (int64_t r0 = plan.chunk_begin(ch); r0 < end; r0 += plan.tile) {
        const int64_t rows = min64(plan.tile, end - r0);
        tile_moments_cl(a.x + r0 * C, rows, C, k, s1, s2);
        merge_tile_cl(pm, pq, n_acc, rows, C, k, s1, s2);
        n_acc += static_cast<double>(rows);
      }
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      Moments m;
      for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
        const int64_t rows = min64(plan.chunk, R - plan.chunk_begin(ch));
        merge(m, static_cast<double>(rows), pmean[ch * C + c], pm2[ch * C + c]);
      }
      const Coef<T> q = train_coef(a, c, m);
      mu[c] = q.mu;
      sc[c] = q.scale;
      sh[c] = q.shift;
    }
#pragma omp single
    {
      extend_channels(mu, C, Vec<T>::width);
      extend_channels(sc, C, Vec<T>::width);
      extend_channels(sh, C, Vec<T>::width);
    }
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
      const int64_t r0 = plan.chunk_begin(ch);
      normalize_flat_cl(stream, a.x + r0 * C, a.y + r0 * C, min64(plan.chunk, R - r0) * C, C, mu, sc, sh);
    }
    if (stream) stream_fence();
  }
}

template <class T>
void train(const TrainArgs<T>& a, const Exec& ex) {
  if (a.inner == 1) {
    train_cl(a, ex);
  } else {
    train_nc(a, ex);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Inference forward

template <class T>
void infer(const InferArgs<T>& a, const Exec& ex) {
  const int64_t N = a.outer, C = a.channels, L = a.inner;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(T));
  const bool stream = can_stream(a.y, bytes);

  const int64_t Ce = C + Vec<T>::width;
  Carver carve(ex.workspace->reserve(3 * Carver::bytes<T>(Ce)));
  T* mu = carve.take<T>(Ce);
  T* sc = carve.take<T>(Ce);
  T* sh = carve.take<T>(Ce);
  for (int64_t c = 0; c < C; ++c) {
    const double g = a.gamma ? static_cast<double>(a.gamma[c]) : 1.0;
    mu[c] = a.mean[c];
    sc[c] = static_cast<T>(g * inv_std(static_cast<double>(a.var[c]), a.eps));
    sh[c] = a.beta ? a.beta[c] : T(0);
  }
  extend_channels(mu, C, Vec<T>::width);
  extend_channels(sc, C, Vec<T>::width);
  extend_channels(sh, C, Vec<T>::width);

  if (L == 1) {
    const int64_t rows_per_unit = max64(1, kBlockBytes / (C * static_cast<int64_t>(sizeof(T))));
    const int64_t units = ceil_div(N, rows_per_unit);
    const int nt = pick_threads(ex.max_threads, bytes, units);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < units; ++u) {
        const int64_t r0 = u * rows_per_unit;
        normalize_flat_cl(stream, a.x + r0 * C, a.y + r0 * C, min64(rows_per_unit, N - r0) * C, C, mu, sc, sh);
      }
      if (stream) stream_fence();
    }
    return;
  }
  const int nt = pick_threads(ex.max_threads, bytes, N * C);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    for_my_runs(N * C, C, [&](int64_t r, int64_t c) {
      normalize_run(stream, a.x + r * L, a.y + r * L, L, Coef<T>{mu[c], sc[c], sh[c]});
    });
    if (stream) stream_fence();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward

template <class T>
void backward_nc(const BackwardArgs<T>& a, const Exec& ex) {
  const int64_t N = a.outer, C = a.channels, L = a.inner, stride = C * L;
  const int64_t bytes = N * stride * static_cast<int64_t>(sizeof(T));
  const int64_t rpb = max64(1, kBlockBytes / (L * static_cast<int64_t>(sizeof(T))));
  const int64_t nb = ceil_div(N, rpb);
  const int nt = pick_threads(ex.max_threads, 2 * bytes, C * nb);
  const bool stream = can_stream(a.dx, bytes);
  const bool sums = a.batch_stats || a.dgamma || a.dbeta;
  const bool scale_only = !a.batch_stats;

  if (channels_balance(C, nt)) {
    // The pipeline keeps two channels' dy and x in cache; when they do not fit, LRU evicts the very lines the
    // dx pass needs next, and the plain order is faster.
    const bool pipelined = 4 * N * L * static_cast<int64_t>(sizeof(T)) <= ex.cache_bytes;
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const Share mine = my_share(C);
      const int64_t c_begin = mine.begin, c_end = mine.end;
      auto sums_block = [&](int64_t c, int64_t b, double& sdy, double& sdyx) {
        const int64_t r0 = b * rpb, o = c * L + r0 * stride;
        double g, h;
        block_grad_sums(a.dy + o, a.x + o, stride, min64(rpb, N - r0), L, a.mean[c], g, h);
        sdy += g;
        sdyx += h;
      };
      auto dx_rows = [&](int64_t c, int64_t b, bool scale_only_rows, const GradCoef<T>& k) {
        const int64_t r0 = b * rpb, r1 = min64(N, r0 + rpb);
        for (int64_t o = r0; o < r1; ++o) {
          const int64_t q = c * L + o * stride;
          grad_run(stream, scale_only_rows, a.dy + q, a.x + q, a.dx + q, L, k);
        }
      };
      if (scale_only) {
        // Frozen statistics: dx needs no sums, so each block's sums and dx are done together (one pass).
        for (int64_t c = c_begin; c < c_end; ++c) {
          const GradCoef<T> k = grad_coef(a, c, 0.0, 0.0);
          double sdy = 0, sdyx = 0;
          for (int64_t b = 0; b < nb; ++b) {
            if (sums) sums_block(c, b, sdy, sdyx);
            dx_rows(c, b, true, k);
          }
          if (sums) grad_coef(a, c, sdy, sdyx);  // writes dgamma / dbeta
        }
      } else if (!pipelined) {
        // Batch statistics, channels too big to keep two in cache: the sums of a channel, then its dx (the
        // second read of dy and x comes from cache as long as one channel's two slabs fit).
        for (int64_t c = c_begin; c < c_end; ++c) {
          double sdy = 0, sdyx = 0;
          for (int64_t b = 0; b < nb; ++b) sums_block(c, b, sdy, sdyx);
          const GradCoef<T> k = grad_coef(a, c, sdy, sdyx);
          for (int64_t b = 0; b < nb; ++b) dx_rows(c, b, false, k);
        }
      } else {
        // Batch statistics: pipelined over channels as in train_nc, the dx of channel c block by block
        // together with the sums of channel c + 1.
        double sdy = 0, sdyx = 0;
        if (c_begin < c_end) {
          for (int64_t b = 0; b < nb; ++b) sums_block(c_begin, b, sdy, sdyx);
        }
        for (int64_t c = c_begin; c < c_end; ++c) {
          const GradCoef<T> k = grad_coef(a, c, sdy, sdyx);
          sdy = sdyx = 0;
          for (int64_t b = 0; b < nb; ++b) {
            dx_rows(c, b, false, k);
            if (c + 1 < c_end) sums_block(c + 1, b, sdy, sdyx);
          }
        }
      }
      if (stream) stream_fence();
    }
    return;
  }

  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * nb) + Carver::bytes<GradCoef<T>>(C)));
  double* part = carve.take<double>(2 * C * nb);
  GradCoef<T>* coef = carve.take<GradCoef<T>>(C);
  if (scale_only) {
    for (int64_t c = 0; c < C; ++c) coef[c] = grad_coef(a, c, 0.0, 0.0);
  }
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t u = 0; u < C * nb; ++u) {
      const int64_t c = u / nb, r0 = (u % nb) * rpb, rows = min64(rpb, N - r0), o = c * L + r0 * stride;
      if (sums) block_grad_sums(a.dy + o, a.x + o, stride, rows, L, a.mean[c], part[2 * u], part[2 * u + 1]);
      if (scale_only) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t q = o + r * stride;
          grad_run(stream, true, a.dy + q, a.x + q, a.dx + q, L, coef[c]);
        }
      }
    }
    if (sums) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        double sdy = 0, sdyx = 0;
        for (int64_t b = 0; b < nb; ++b) {
          sdy += part[2 * (c * nb + b)];
          sdyx += part[2 * (c * nb + b) + 1];
        }
        coef[c] = grad_coef(a, c, sdy, sdyx);
      }
    }
    if (!scale_only) {
      for_my_runs(N * C, C, [&](int64_t r, int64_t c) {
        grad_run(stream, false, a.dy + r * L, a.x + r * L, a.dx + r * L, L, coef[c]);
      });
    }
    if (stream) stream_fence();
  }
}

template <class T>
void backward_cl(const BackwardArgs<T>& a, const Exec& ex) {
  const int64_t R = a.outer, C = a.channels;
  const int64_t bytes = R * C * static_cast<int64_t>(sizeof(T));
  const RowPlan plan = row_plan<T>(R, C, 2);
  const int nt = pick_threads(ex.max_threads, 2 * bytes, plan.nchunks);
  const bool stream = can_stream(a.dx, bytes);
  const bool sums = a.batch_stats || a.dgamma || a.dbeta;
  const bool scale_only = !a.batch_stats;
  const int64_t Cp = round_up(C, 16);
  const int64_t Ce = C + Vec<T>::width;

  Carver carve(ex.workspace->reserve(2 * Carver::bytes<double>(plan.nchunks * C) + 4 * Carver::bytes<T>(Ce) +
                                     Carver::bytes<T>(2 * Cp * nt)));
  double* psdy = carve.take<double>(plan.nchunks * C);
  double* psdyx = carve.take<double>(plan.nchunks * C);
  T* mu = carve.take<T>(Ce);
  T* ka = carve.take<T>(Ce);
  T* kb = carve.take<T>(Ce);
  T* kd = carve.take<T>(Ce);
  T* scratch = carve.take<T>(2 * Cp * nt);
  auto set_coef = [&](int64_t c, const GradCoef<T>& k) {
    ka[c] = k.a;
    kb[c] = k.b;
    kd[c] = k.d;
  };
  auto extend_coef = [&] {
    extend_channels(ka, C, Vec<T>::width);
    extend_channels(kb, C, Vec<T>::width);
    extend_channels(kd, C, Vec<T>::width);
  };
  for (int64_t c = 0; c < C; ++c) mu[c] = a.mean[c];
  extend_channels(mu, C, Vec<T>::width);
  if (scale_only) {  // frozen statistics: the coefficients need no sums
    for (int64_t c = 0; c < C; ++c) set_coef(c, grad_coef(a, c, 0.0, 0.0));
    extend_coef();
  }

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* g = scratch + 2 * Cp * thread_id();
    T* h = g + Cp;
    if (sums) {
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
        double* pg = psdy + ch * C;
        double* ph = psdyx + ch * C;
        for (int64_t c = 0; c < C; ++c) pg[c] = ph[c] = 0;
        const int64_t end = min64(R, plan.chunk_begin(ch) + plan.chunk);
        for (int64_t r0 = plan.chunk_begin(ch); r0 < end; r0 += plan.tile) {
          const int64_t rows = min64(plan.tile, end - r0), o = r0 * C;
          tile_grad_sums_cl(a.dy + o, a.x + o, rows, C, mu, g, h);
          for (int64_t c = 0; c < C; ++c) {
            pg[c] += static_cast<double>(g[c]);
            ph[c] += static_cast<double>(h[c]);
          }
          if (scale_only) {  // dx of this tile while it is in cache
            grad_flat_cl(stream, true, a.dy + o, a.x + o, a.dx + o, rows * C, C, mu, ka, kb, kd);
          }
        }
      }
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        double sdy = 0, sdyx = 0;
        for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
          sdy += psdy[ch * C + c];
          sdyx += psdyx[ch * C + c];
        }
        const GradCoef<T> k = grad_coef(a, c, sdy, sdyx);  // writes dgamma / dbeta
        if (!scale_only) set_coef(c, k);
      }
      if (!scale_only) {
#pragma omp single
        extend_coef();
      }
    }
    if (!scale_only || !sums) {
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
        const int64_t r0 = plan.chunk_begin(ch), o = r0 * C;
        grad_flat_cl(stream, scale_only, a.dy + o, a.x + o, a.dx + o, min64(plan.chunk, R - r0) * C, C, mu, ka,
                     kb, kd);
      }
    }
    if (stream) stream_fence();
  }
}

template <class T>
void backward(const BackwardArgs<T>& a, const Exec& ex) {
  if (a.inner == 1) {
    backward_cl(a, ex);
  } else {
    backward_nc(a, ex);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Copy

void copy(const float* src, float* dst, int64_t count, const Exec& ex) {
  constexpr int64_t kUnit = 16 * 1024;  // floats per work unit
  const int64_t units = ceil_div(count, kUnit);
  const int64_t bytes = count * static_cast<int64_t>(sizeof(float));
  const int nt = pick_threads(ex.max_threads, 2 * bytes, units);
  const bool stream = can_stream(dst, bytes);
  const Coef<float> identity{0.0f, 1.0f, 0.0f};
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t i = u * kUnit;
      normalize_run(stream, src + i, dst + i, min64(kUnit, count - i), identity);
    }
    if (stream) stream_fence();
  }
}

}  // namespace

const KernelTable& table() {
  static const KernelTable t{FASTBN_ISA_NAME,
                             {&train<float>, &infer<float>, &backward<float>},
                             {&train<double>, &infer<double>, &backward<double>},
                             &copy};
  return t;
}

}  // namespace FASTBN_ISA_NS
}  // namespace cpu
}  // namespace fastbn
