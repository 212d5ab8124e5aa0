// The CUDA backend: the three batch-norm passes on device memory, on the (outer, C, inner) view of
// fastbn/batchnorm.hpp, with the numerics of the CPU kernels (cpu/kernels_impl.hpp).
//
// Every pass is reduce -> finalize -> elementwise:
//  - Reduce: each channel is cut into chunks whose number depends on the shape alone. One block sums one chunk
//    of one channel (inner > 1: `outer` runs of `inner` values) or of a tile of channels (inner == 1: rows of C
//    channels, threads across channels so loads coalesce), and writes per-(chunk, channel) partials to a
//    workspace. There are no floating-point atomics and every sum has a fixed order, so results are the same
//    bits on every run (the split depends on the shape, not on the device).
//  - Finalize: one small kernel adds each channel's partials in a fixed order and turns them into the
//    statistics and the per-channel coefficients of the elementwise pass (computed in double, as on the CPU).
//  - Elementwise: a grid-stride loop, 16-byte loads and stores when the pointers allow, each element's channel
//    tracked by additions instead of divisions.
//
// Statistics stay accurate when |mean| >> std: a thread sums d = x - k and d * d in T with k its own first
// value (x - k is exact for x near k), and every kRound vectors moves those sums, in double, onto the channel's
// shift K (its first value). The finalize turns the double sums about K into mean and M2. A constant channel
// gives d == 0 throughout: mean exact, var 0, y == beta.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "checks.hpp"
#include "fastbn/cuda.hpp"

namespace fastbn {
namespace cuda {
namespace {

constexpr int kThreads = 256;  // every kernel; a multiple of 32 so that every warp is full
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;                 // vectors in flight per thread
// The reductions' grids are fixed by the shape, so occupancy decides how many waves they take: at most 80
// registers keeps 3 blocks (768 threads, 48 KiB of loads in flight) on every SM.
constexpr int kReduceBlocksPerSm = 3;
constexpr int kRound = 64;                 // vectors a thread sums in T before moving the sums to double
constexpr int64_t kBlockBytes = 256 << 10;  // bytes of each input one reduction block reads
constexpr int64_t kMaxChunks = 1024;       // partials per channel (the finalize reads at most 4 per thread)
constexpr int64_t kMaxGrid = 0x7fffffff;   // gridDim.x limit; the y extent (chunks) stays far below 65535
constexpr unsigned kFullMask = 0xffffffffu;

__host__ __device__ inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t round_up(int64_t a, int64_t m) { return ceil_div(a, m) * m; }

// Lanes of one 16-byte access (W = 16 / sizeof(T)), or of one element (W = 1).
template <class T>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(T));
}

template <class T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <class T, int W>
__device__ __forceinline__ Pack<T, W> load(const T* p, int64_t i) {
  return reinterpret_cast<const Pack<T, W>*>(p)[i];
}

// Vector i of p, which may not be 16-byte aligned: then lane by lane, with the same values.
template <class T, int W, bool kAligned>
__device__ __forceinline__ Pack<T, W> load_any(const T* p, int64_t i) {
  if constexpr (kAligned) {
    return load<T, W>(p, i);
  } else {
    Pack<T, W> r;
#pragma unroll
    for (int w = 0; w < W; ++w) r.v[w] = p[i * W + w];
    return r;
  }
}

template <class T, int W>
__device__ __forceinline__ void store(T* p, int64_t i, const Pack<T, W>& v) {
  reinterpret_cast<Pack<T, W>*>(p)[i] = v;
}

// q = a / b, r = a % b for a >= 0, b > 0; 32-bit division when both fit, as they nearly always do.
__device__ __forceinline__ void divmod(int64_t a, int64_t b, int64_t& q, int64_t& r) {
  if (((a | b) >> 32) == 0) {
    const uint32_t q32 = static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
    q = q32;
    r = a - q * b;
  } else {
    q = static_cast<int64_t>(static_cast<uint64_t>(a) / static_cast<uint64_t>(b));
    r = a - q * b;
  }
}

__device__ __forceinline__ float fma_t(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_t(double a, double b, double c) { return fma(a, b, c); }

// Adds a and b across groups of `width` lanes (a power of two <= 32) in a fixed butterfly; every lane of a
// group ends with the same bits, since each step adds the same two values in either order.
__device__ __forceinline__ void group_sum(double& a, double& b, int width) {
  for (int m = width / 2; m > 0; m /= 2) {
    a += __shfl_xor_sync(kFullMask, a, m);
    b += __shfl_xor_sync(kFullMask, b, m);
  }
}

// Adds a and b over the block in a fixed order; thread 0 gets the totals. sm: 2 * kWarps doubles, which the
// caller must not touch again before a __syncthreads().
__device__ __forceinline__ void block_sum(double& a, double& b, double* sm) {
  group_sum(a, b, 32);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = a;
    sm[kWarps + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = static_cast<int>(blockDim.x / 32);
    a = lane < warps ? sm[lane] : 0.0;
    b = lane < warps ? sm[kWarps + lane] : 0.0;
    group_sum(a, b, kWarps);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Reduction: per-thread sums

// The two sums a reduction keeps for one channel. Statistics (kGrad false): sums of x - center and its square,
// where center is the channel's shift K; a thread sums about its own first value k in T and moves the sums onto
// K in flush(). Gradient (kGrad true): sums of dy and dy * (x - center), center the channel's mean.
template <class T, bool kGrad>
struct Acc {
  T center;
  T k = 0, s1 = 0, s2 = 0;

  __device__ __forceinline__ void add(T u, T x) {
    if constexpr (kGrad) {
      s1 += u;
      s2 = fma_t(u, x - center, s2);
    } else {
      const T d = u - k;
      s1 += d;
      s2 = fma_t(d, d, s2);
    }
  }
  // Adds the sums of the n values added since the last flush to the double totals S1 and S2.
  __device__ __forceinline__ void flush(int n, double& S1, double& S2) {
    if constexpr (kGrad) {
      S1 += static_cast<double>(s1);
      S2 += static_cast<double>(s2);
    } else {
      // sum (x - K) = s1 + n dk and sum (x - K)^2 = s2 + 2 dk s1 + n dk^2, with dk = k - K.
      const double dk = static_cast<double>(k) - static_cast<double>(center);
      const double a = static_cast<double>(s1);
      S1 += a + n * dk;
      S2 += static_cast<double>(s2) + dk * (2.0 * a + n * dk);
    }
    s1 = 0;
    s2 = 0;
  }
};

// inner > 1. Channel c is `outer` runs of Lv vectors, run o at vector (o * C + c) * Lv; f = o * Lv + i numbers a
// channel's vectors. A thread visits f, f + B, f + 2B, ... (B = blockDim.x), stepping (i, address) without
// division: i += di, address += jump, and on passing the end of a run, i -= Lv, address += wrap.
struct RunGeom {
  int64_t C, Lv, nv;  // nv = outer * Lv: vectors per channel
  int64_t row;        // C * Lv: vectors from one run of a channel to the next
  int64_t chunk;      // vectors of a channel per block (blockIdx.y numbers the chunks)
  int64_t di, jump, wrap;
  int64_t center_stride;  // the channel's center at center[c * center_stride]
};

__device__ __forceinline__ void step(int64_t& i, int64_t& addr, const RunGeom& g) {
  i += g.di;
  addr += g.jump;
  if (i >= g.Lv) {
    i -= g.Lv;
    addr += g.wrap;
  }
}

// a: x (statistics) or dy (gradient); b: x (gradient only). Writes out1/out2[chunk * C + c].
template <class T, int W, bool kAligned, bool kGrad>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm)
    reduce_runs(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ center, RunGeom g,
                double* __restrict__ out1, double* __restrict__ out2) {
  using P = Pack<T, W>;
  __shared__ double sm[2 * kWarps];
  const int64_t j = blockIdx.y;
  const int64_t end = min64(g.nv, (j + 1) * g.chunk);
  const int64_t f = j * g.chunk + threadIdx.x;
  for (int64_t c = blockIdx.x; c < g.C; c += gridDim.x) {
    Acc<T, kGrad> acc;
    acc.center = center[c * g.center_stride];
    double s1 = 0, s2 = 0;
    if (f < end) {
      const int64_t B = blockDim.x;
      int64_t o, i;
      divmod(f, g.Lv, o, i);
      int64_t addr = o * g.row + c * g.Lv + i;
      if constexpr (!kGrad) acc.k = a[addr * W];
      // Rounds of at most kRound vectors, kUnroll at a time while that many are left.
      for (int64_t next = f; next < end;) {
        int n = 0;
        for (; n < kRound && next + (kUnroll - 1) * B < end; n += kUnroll, next += kUnroll * B) {
          P u[kUnroll], x[kUnroll] = {};
#pragma unroll
          for (int q = 0; q < kUnroll; ++q) {
            u[q] = load_any<T, W, kAligned>(a, addr);
            if constexpr (kGrad) x[q] = load_any<T, W, kAligned>(b, addr);
            step(i, addr, g);
          }
#pragma unroll
          for (int q = 0; q < kUnroll; ++q) {
#pragma unroll
            for (int w = 0; w < W; ++w) acc.add(u[q].v[w], x[q].v[w]);
          }
        }
        for (; n < kRound && next < end; ++n, next += B) {
          const P u = load_any<T, W, kAligned>(a, addr);
          P x = {};
          if constexpr (kGrad) x = load_any<T, W, kAligned>(b, addr);
          step(i, addr, g);
#pragma unroll
          for (int w = 0; w < W; ++w) acc.add(u.v[w], x.v[w]);
        }
        acc.flush(n * W, s1, s2);
      }
    }
    block_sum(s1, s2, sm);
    if (threadIdx.x == 0) {
      out1[j * g.C + c] = s1;
      out2[j * g.C + c] = s2;
    }
    __syncthreads();
  }
}

// inner == 1: R rows of Cv vectors. A block covers a tile of bx vector columns and a chunk of `rows` rows
// (blockIdx.y); thread (tx, ty) = (tid % bx, tid / bx) takes rows ty, ty + by, ... of column tx. With bx == Cv
// or bx == 32, each warp reads contiguous memory.
struct RowGeom {
  int64_t R, C, Cv, tiles, rows;
  int bx, by;  // bx * by <= kThreads; threads past bx * by only join the block-wide steps
};

// Column sums of a block are added over ty in a fixed tree through shared memory.
template <class T, int W, bool kAligned, bool kGrad>
__global__ void __launch_bounds__(kThreads, kReduceBlocksPerSm)
    reduce_rows(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ center, RowGeom g,
                double* __restrict__ out1, double* __restrict__ out2) {
  using P = Pack<T, W>;
  __shared__ double sm1[kThreads * W], sm2[kThreads * W];
  const int tid = threadIdx.x;
  const int tx = tid % g.bx, ty = tid / g.bx;
  const int64_t j = blockIdx.y;
  const int64_t r0 = j * g.rows, r1 = min64(g.R, r0 + g.rows);
  for (int64_t tile = blockIdx.x; tile < g.tiles; tile += gridDim.x) {
    const int64_t cv = tile * g.bx + tx;
    // This thread's double totals live in its own slots of the tree's arrays, not in registers.
    double* t1 = sm1 + tid * W;
    double* t2 = sm2 + tid * W;
#pragma unroll
    for (int w = 0; w < W; ++w) t1[w] = t2[w] = 0;
    Acc<T, kGrad> acc[W];
    if (ty < g.by && cv < g.Cv && r0 + ty < r1) {
#pragma unroll
      for (int w = 0; w < W; ++w) acc[w].center = center[cv * W + w];
      const int64_t stride = g.by * g.Cv;
      int64_t addr = (r0 + ty) * g.Cv + cv;
      if constexpr (!kGrad) {
        const P first = load_any<T, W, kAligned>(a, addr);
#pragma unroll
        for (int w = 0; w < W; ++w) acc[w].k = first.v[w];
      }
      for (int64_t row = r0 + ty; row < r1;) {
        int n = 0;
        for (; n < kRound && row + (kUnroll - 1) * g.by < r1; n += kUnroll, row += kUnroll * g.by) {
          P u[kUnroll], x[kUnroll] = {};
#pragma unroll
          for (int q = 0; q < kUnroll; ++q) {
            u[q] = load_any<T, W, kAligned>(a, addr + q * stride);
            if constexpr (kGrad) x[q] = load_any<T, W, kAligned>(b, addr + q * stride);
          }
          addr += kUnroll * stride;
#pragma unroll
          for (int q = 0; q < kUnroll; ++q) {
#pragma unroll
            for (int w = 0; w < W; ++w) acc[w].add(u[q].v[w], x[q].v[w]);
          }
        }
        for (; n < kRound && row < r1; ++n, row += g.by) {
          const P u = load_any<T, W, kAligned>(a, addr);
          P x = {};
          if constexpr (kGrad) x = load_any<T, W, kAligned>(b, addr);
          addr += stride;
#pragma unroll
          for (int w = 0; w < W; ++w) acc[w].add(u.v[w], x.v[w]);
        }
#pragma unroll
        for (int w = 0; w < W; ++w) acc[w].flush(n, t1[w], t2[w]);
      }
    }
    __syncthreads();
    int s = 1;
    while (2 * s < g.by) s *= 2;
    for (; s > 0; s /= 2) {
      if (ty < s && ty + s < g.by) {
#pragma unroll
        for (int w = 0; w < W; ++w) {
          sm1[tid * W + w] += sm1[(tid + s * g.bx) * W + w];
          sm2[tid * W + w] += sm2[(tid + s * g.bx) * W + w];
        }
      }
      __syncthreads();
    }
    if (ty == 0 && cv < g.Cv) {
#pragma unroll
      for (int w = 0; w < W; ++w) {
        out1[j * g.C + cv * W + w] = sm1[tx * W + w];
        out2[j * g.C + cv * W + w] = sm2[tx * W + w];
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Finalize: per-channel totals of the partials, then statistics and coefficients (in double, as on the CPU)

// G threads per channel: a power of two <= 32 (a lane group of one warp), or kThreads (the whole block).
struct FinalGeom {
  int64_t C, P;  // P == 0: no partials, the totals are 0
  int G;
};

// Totals of channel c over the P chunks: lane l of the group adds chunks l, l + G, ..., then the group adds
// the lanes in a fixed tree. The totals land in the group's lane 0 (thread 0 when G == kThreads).
__device__ __forceinline__ void channel_totals(const double* __restrict__ p1, const double* __restrict__ p2,
                                               int64_t c, const FinalGeom& g, double& a, double& b,
                                               double* sm) {
  a = 0;
  b = 0;
  if (c < g.C) {
#pragma unroll 4
    for (int64_t j = threadIdx.x % g.G; j < g.P; j += g.G) {
      a += p1[j * g.C + c];
      b += p2[j * g.C + c];
    }
  }
  if (g.G == kThreads) {
    block_sum(a, b, sm);
  } else {
    group_sum(a, b, g.G);
  }
}

// Training forward: mean and var (biased) of channel c, and coefficients {mu, scale, shift} for
// y = (x - mu) * scale + shift, with mean = mu + lo split so that x - mu is exact near the mean.
template <class T>
__global__ void __launch_bounds__(kThreads)
    finalize_train(const double* __restrict__ p1, const double* __restrict__ p2, FinalGeom g,
                   const T* __restrict__ x, int64_t inner, double n, const T* __restrict__ gamma,
                   const T* __restrict__ beta, double eps, T* __restrict__ mean, T* __restrict__ var,
                   T* __restrict__ coef, int64_t cs) {
  __shared__ double sm[2 * kWarps];
  const int64_t per_block = kThreads / g.G;
  for (int64_t base = blockIdx.x * per_block; base < g.C; base += gridDim.x * per_block) {
    const int64_t c = base + threadIdx.x / g.G;
    double s1, s2;
    channel_totals(p1, p2, c, g, s1, s2, sm);
    if (c < g.C && threadIdx.x % g.G == 0) {
      const double K = static_cast<double>(x[c * inner]);  // the shift the reduction summed about
      const double m = K + s1 / n;
      double m2 = s2 - s1 * s1 / n;
      if (m2 < 0) m2 = 0;  // rounding; NaN passes through
      const double v = m2 / n;
      const T hi = static_cast<T>(m);
      mean[c] = hi;
      var[c] = static_cast<T>(v);
      const double gm = gamma ? static_cast<double>(gamma[c]) : 1.0;
      const double scale = gm * (1.0 / sqrt(v + eps));
      const double lo = m - static_cast<double>(hi);
      const double bt = beta ? static_cast<double>(beta[c]) : 0.0;
      coef[c] = hi;
      coef[cs + c] = static_cast<T>(scale);
      coef[2 * cs + c] = static_cast<T>(bt - lo * scale);
    }
    __syncthreads();
  }
}

// Backward: dgamma / dbeta, and coefficients {a, mu, b, d} for dx = a * dy + (b * (x - mu) + d).
template <class T>
__global__ void __launch_bounds__(kThreads)
    finalize_backward(const double* __restrict__ p1, const double* __restrict__ p2, FinalGeom g,
                      const T* __restrict__ mean, const T* __restrict__ var, const T* __restrict__ gamma,
                      double eps, double n, bool batch_stats, T* __restrict__ dgamma, T* __restrict__ dbeta,
                      T* __restrict__ coef, int64_t cs) {
  __shared__ double sm[2 * kWarps];
  const int64_t per_block = kThreads / g.G;
  for (int64_t base = blockIdx.x * per_block; base < g.C; base += gridDim.x * per_block) {
    const int64_t c = base + threadIdx.x / g.G;
    double sdy, sdyx;
    channel_totals(p1, p2, c, g, sdy, sdyx, sm);
    if (c < g.C && threadIdx.x % g.G == 0) {
      const double invstd = 1.0 / sqrt(static_cast<double>(var[c]) + eps);
      const double gm = gamma ? static_cast<double>(gamma[c]) : 1.0;
      if (dgamma) dgamma[c] = static_cast<T>(sdyx * invstd);
      if (dbeta) dbeta[c] = static_cast<T>(sdy);
      T b = 0, d = 0;
      if (batch_stats) {
        b = static_cast<T>(-gm * invstd * invstd * invstd * sdyx / n);
        d = static_cast<T>(-gm * invstd * sdy / n);
      }
      coef[c] = static_cast<T>(gm * invstd);
      coef[cs + c] = mean[c];
      coef[2 * cs + c] = b;
      coef[3 * cs + c] = d;
    }
    __syncthreads();
  }
}

// Inference: coefficients {mu, scale, shift} from the given statistics.
template <class T>
__global__ void __launch_bounds__(kThreads)
    infer_coef(const T* __restrict__ mean, const T* __restrict__ var, const T* __restrict__ gamma,
               const T* __restrict__ beta, int64_t C, double eps, T* __restrict__ coef, int64_t cs) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double gm = gamma ? static_cast<double>(gamma[c]) : 1.0;
    coef[c] = mean[c];
    coef[cs + c] = static_cast<T>(gm * (1.0 / sqrt(static_cast<double>(var[c]) + eps)));
    coef[2 * cs + c] = beta ? beta[c] : T(0);
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    running_update(T* __restrict__ running_mean, T* __restrict__ running_var, const T* __restrict__ mean,
                   const T* __restrict__ var, int64_t C, double factor, double unbias) {
  for (int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < C;
       c += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double keep = 1.0 - factor;
    running_mean[c] = static_cast<T>(keep * static_cast<double>(running_mean[c]) +
                                     factor * static_cast<double>(mean[c]));
    running_var[c] = static_cast<T>(keep * static_cast<double>(running_var[c]) +
                                    factor * (static_cast<double>(var[c]) * unbias));
  }
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise

enum Op { kForward, kBackward, kBackwardScale };
// kUniform: a vector's lanes share one channel (inner % W == 0, or W == 1). kRows: inner == 1 and C % W == 0,
// so lanes are W consecutive channels starting at a multiple of W. kGeneral: anything else.
enum Mode { kUniform, kRows, kGeneral };

// Coefficient arrays (cs apart) and the value of one element. kForward: {mu, scale, shift}, x.
// kBackward: {a, mu, b, d}, dy and x. kBackwardScale: {a}, dy (frozen statistics: dx = a * dy).
template <int kOp>
struct OpTraits;
template <>
struct OpTraits<kForward> {
  static constexpr int kCoefs = 3, kInputs = 1;
};
template <>
struct OpTraits<kBackward> {
  static constexpr int kCoefs = 4, kInputs = 2;
};
template <>
struct OpTraits<kBackwardScale> {
  static constexpr int kCoefs = 1, kInputs = 1;
};

template <int kOp, class T>
__device__ __forceinline__ T apply_one(const T* k, T u, T x) {
  if constexpr (kOp == kForward) {
    return fma_t(u - k[0], k[1], k[2]);
  } else if constexpr (kOp == kBackward) {
    return fma_t(k[0], u, fma_t(k[2], x - k[1], k[3]));
  } else {
    return u * k[0];
  }
}

// Element e of the view sits at i = e % inner in the run of channel c = (e / inner) % C. di and dc step the
// position by the grid stride (S elements): di = S % inner, dc = (S / inner) % C.
struct EwGeom {
  int64_t total, nvec;  // elements; whole W-vectors (the last total % W elements are done one by one)
  int64_t inner, C, di, dc;
};

struct Pos {
  int64_t i, c;
};

__device__ __forceinline__ void advance(Pos& p, const EwGeom& g) {
  p.i += g.di;
  p.c += g.dc;
  if (p.i >= g.inner) {
    p.i -= g.inner;
    ++p.c;
  }
  if (p.c >= g.C) p.c -= g.C;
}

template <class T, int W, int kMode, int kOp>
__device__ __forceinline__ Pack<T, W> apply_vec(const Pack<T, W>& u, const Pack<T, W>& x, Pos p,
                                                const T* __restrict__ coef, int64_t cs, const EwGeom& g) {
  constexpr int kC = OpTraits<kOp>::kCoefs;
  Pack<T, W> r;
  if constexpr (kMode == kUniform) {
    T k[kC];
#pragma unroll
    for (int q = 0; q < kC; ++q) k[q] = coef[q * cs + p.c];
#pragma unroll
    for (int w = 0; w < W; ++w) r.v[w] = apply_one<kOp>(k, u.v[w], x.v[w]);
  } else if constexpr (kMode == kRows) {
    Pack<T, W> kv[kC];
#pragma unroll
    for (int q = 0; q < kC; ++q) kv[q] = load<T, W>(coef + q * cs, p.c / W);
#pragma unroll
    for (int w = 0; w < W; ++w) {
      T k[kC];
#pragma unroll
      for (int q = 0; q < kC; ++q) k[q] = kv[q].v[w];
      r.v[w] = apply_one<kOp>(k, u.v[w], x.v[w]);
    }
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) {
      if (w > 0 && ++p.i == g.inner) {
        p.i = 0;
        p.c = p.c + 1 == g.C ? 0 : p.c + 1;
      }
      T k[kC];
#pragma unroll
      for (int q = 0; q < kC; ++q) k[q] = coef[q * cs + p.c];
      r.v[w] = apply_one<kOp>(k, u.v[w], x.v[w]);
    }
  }
  return r;
}

// out = op(in0, in1) elementwise. in1 is read by kBackward only. Pointers are 16-byte aligned when W > 1. out
// may be in0 or in1 (no __restrict__ on them): each element is read, then written, by the same thread.
template <class T, int W, int kMode, int kOp>
__global__ void __launch_bounds__(kThreads)
    elementwise(const T* in0, const T* in1, T* out, const T* __restrict__ coef, int64_t cs, EwGeom g) {
  using P = Pack<T, W>;
  constexpr bool kTwo = OpTraits<kOp>::kInputs == 2;
  constexpr int kC = OpTraits<kOp>::kCoefs;
  if (W > 1 && blockIdx.x == 0) {
    const int64_t e = g.nvec * W + threadIdx.x;
    if (e < g.total) {
      const int64_t c = (e / g.inner) % g.C;
      T k[kC];
#pragma unroll
      for (int q = 0; q < kC; ++q) k[q] = coef[q * cs + c];
      out[e] = apply_one<kOp>(k, in0[e], kTwo ? in1[e] : T(0));
    }
  }
  const int64_t S = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (v >= g.nvec) return;
  Pos p;
  int64_t run;
  divmod(v * W, g.inner, run, p.i);
  int64_t ignored;
  divmod(run, g.C, ignored, p.c);
  for (; v + (kUnroll - 1) * S < g.nvec; v += kUnroll * S) {
    Pos ps[kUnroll];
    P u[kUnroll], x[kUnroll] = {};
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) {
      ps[q] = p;
      advance(p, g);
      u[q] = load<T, W>(in0, v + q * S);
      if constexpr (kTwo) x[q] = load<T, W>(in1, v + q * S);
    }
#pragma unroll
    for (int q = 0; q < kUnroll; ++q) {
      store<T, W>(out, v + q * S, apply_vec<T, W, kMode, kOp>(u[q], x[q], ps[q], coef, cs, g));
    }
  }
  for (; v < g.nvec; v += S) {
    const P u = load<T, W>(in0, v);
    P x = {};
    if constexpr (kTwo) x = load<T, W>(in1, v);
    store<T, W>(out, v, apply_vec<T, W, kMode, kOp>(u, x, p, coef, cs, g));
    advance(p, g);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Resident path (compute capability 9.0 and newer): one launch, inputs read from device memory once
//
// The staged path reads x twice in the training forward (reduce, then elementwise) and dy and x twice in the
// backward, and every pass costs two or three launches and a workspace. Here a cluster of K blocks (K <= 16)
// holds one unit in shared memory: a channel (inner > 1) or a tile of bx vector columns over all rows
// (inner == 1). Each block loads its part of the unit once, summing as it goes; the blocks add their sums in a
// fixed order, and every block adds the K block totals in rank order through distributed shared memory (so all
// get the same bits) and turns them into coefficients in double, as the staged finalize does; then each block
// writes its part from shared memory. No workspace, no floating-point atomics; K, the split and the thread
// count follow from the shape and T alone, so results are the same bits on every run and every GPU that takes
// this path. Inference uses the same units without the staging: one launch, coefficients per block.

enum ResOp { kResTrain, kResBackward, kResInfer };

// Input bytes one block keeps: 100 KiB (two blocks per SM), or 200 KiB (one per SM) for the units that 16 blocks
// of 100 KiB cannot hold.
constexpr int64_t kResidentBytes[2] = {100 << 10, 200 << 10};
// Bytes of x one inference block streams: runs (inner > 1), rows (inner == 1). Chosen by
// benchmarks/cuda_host/sweep.sh on an H100: 256 KiB blocks stream runs fastest, 16 KiB ones rows.
constexpr int64_t kInferBytes[2] = {256 << 10, 16 << 10};
constexpr int kMaxCluster = 16;                // Hopper's limit with non-portable cluster sizes allowed
constexpr int kResThreads = 512;
constexpr int kResMaxCols = 128;               // inner == 1: channels of one tile (bx * W <= 32 * 4)

// The pointers of one resident launch. Train: a = x, out = y, batch mean/var written to mean_out/var_out (by
// rank 0). Backward with batch statistics: a = dy, b = x, out = dx, mean/var read, dgamma/dbeta written
// (either may be null). Infer: a = x, out = y, mean/var read. out may be a or b.
template <class T>
struct ResArgs {
  const T* a;
  const T* b;
  T* out;
  const T* gamma;
  const T* beta;
  const T* mean;
  const T* var;
  T* mean_out;
  T* var_out;
  T* dgamma;
  T* dbeta;
};

// A unit's vectors are numbered by slot; a thread takes slots t, t + B, t + 2B, ... (B = blockDim.x) and steps
// its address with the cursor of RunGeom (rows: di = 0 and Lv beyond reach, so the cursor only adds `jump`).
struct ResGeom {
  int64_t C, inner;  // channels; channel c's shift K is x[c * inner] (training forward)
  int64_t Lv, row;   // runs: vectors per run and from one run to the next (C * Lv); rows: -, Cv
  int64_t nv;        // runs: vectors per channel; rows: rows
  int64_t chunk;     // runs: vectors per block; rows: rows per block
  int64_t di, jump, wrap;
  int bx;            // rows: vector columns per tile (a power of two <= 32, dividing blockDim.x); runs: 1
  int K;             // blocks per unit: the cluster size (train, backward)
  int cols;          // channels per unit: runs 1, rows bx * W
  double n, eps;
};

// Device code of the resident kernel only, which is empty before compute capability 9.0.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
__device__ __forceinline__ void res_step(int64_t& i, int64_t& addr, const ResGeom& g) {
  i += g.di;
  addr += g.jump;
  if (i >= g.Lv) {
    i -= g.Lv;
    addr += g.wrap;
  }
}

template <class T, int W, bool kAligned>
__device__ __forceinline__ void store_any(T* p, int64_t i, const Pack<T, W>& v) {
  if constexpr (kAligned) {
    store<T, W>(p, i, v);
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) p[i * W + w] = v.v[w];
  }
}

// Vector i of src into shared memory at dst, asynchronously (cp.async): one 16-byte copy, or lane by lane where
// src may not be 16-byte aligned.
template <class T, int W, bool kAligned>
__device__ __forceinline__ void copy_async(Pack<T, W>* dst, const T* src, int64_t i) {
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (kAligned && sizeof(T) * W == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src + i * W) : "memory");
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) {
      asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(d + static_cast<unsigned>(w * sizeof(T))),
                   "l"(src + i * W + w), "n"(sizeof(T))
                   : "memory");
    }
  }
}

// Waits until at most n (0..3, a constant after unrolling) of this thread's cp.async groups are in flight.
__device__ __forceinline__ void cp_async_wait_group(int n) {
  switch (n) {
    case 3:
      asm volatile("cp.async.wait_group 3;\n" ::: "memory");
      break;
    case 2:
      asm volatile("cp.async.wait_group 2;\n" ::: "memory");
      break;
    case 1:
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
      break;
    default:
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
  }
}

// The first slot of thread t in block `rank` of `unit`: its address and cursor.
template <bool kRows>
__device__ __forceinline__ void res_start(const ResGeom& g, int64_t unit, int64_t start, int t, int64_t& i,
                                          int64_t& addr) {
  if constexpr (kRows) {
    i = 0;
    addr = (start + t / g.bx) * g.row + unit * g.bx + t % g.bx;
  } else {
    int64_t o;
    divmod(start + t, g.Lv, o, i);
    addr = o * g.row + unit * g.Lv + i;
  }
}

// out = op(u, x) for `slots` slots from (i, addr), u and x from shared memory (da, db) or, with kLoad, from
// device memory; k holds each lane's coefficients.
template <class T, int W, int kOp, bool kAligned, bool kLoad, int kC>
__device__ __forceinline__ void res_write(const ResArgs<T>& p, const Pack<T, W>* da, const Pack<T, W>* db,
                                          int64_t slots, int64_t i, int64_t addr, const T (&k)[kC][W],
                                          const ResGeom& g) {
  using P = Pack<T, W>;
  constexpr int kApply = kOp == kResBackward ? kBackward : kForward;
  const int t = threadIdx.x, B = blockDim.x;
  auto one = [&](const P& u, const P& x) {
    P r;
#pragma unroll
    for (int w = 0; w < W; ++w) {
      T kw[kC];
#pragma unroll
      for (int q = 0; q < kC; ++q) kw[q] = k[q][w];
      r.v[w] = apply_one<kApply>(kw, u.v[w], x.v[w]);
    }
    return r;
  };
  int64_t s = t;
  if constexpr (kLoad) {
    for (; s + (kUnroll - 1) * B < slots; s += kUnroll * B) {
      P u[kUnroll];
      int64_t at[kUnroll];
#pragma unroll
      for (int q = 0; q < kUnroll; ++q) {
        at[q] = addr;
        u[q] = load_any<T, W, kAligned>(p.a, addr);
        res_step(i, addr, g);
      }
#pragma unroll
      for (int q = 0; q < kUnroll; ++q) store_any<T, W, kAligned>(p.out, at[q], one(u[q], P{}));
    }
    for (; s < slots; s += B) {
      store_any<T, W, kAligned>(p.out, addr, one(load_any<T, W, kAligned>(p.a, addr), P{}));
      res_step(i, addr, g);
    }
  } else {
#pragma unroll 4
    for (; s < slots; s += B) {
      P x = {};
      if constexpr (kOp == kResBackward) x = db[s];
      store_any<T, W, kAligned>(p.out, addr, one(da[s], x));
      res_step(i, addr, g);
    }
  }
}
#endif

template <class T, int W, bool kRows, int kOp, bool kAligned>
__global__ void __launch_bounds__(kResThreads, 2) resident(ResArgs<T> p, ResGeom g) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  using P = Pack<T, W>;
  constexpr bool kGrad = kOp == kResBackward;
  constexpr int NL = kRows ? W : 1;  // sums per thread: one per lane (rows) or one for all lanes (runs)
  constexpr int kC = kGrad ? 4 : 3;  // coefficients per channel
  const int64_t unit = blockIdx.x / g.K;
  const int rank = static_cast<int>(blockIdx.x % g.K);
  const int t = threadIdx.x, B = blockDim.x;

  // Shared memory: the part's input vectors (a, then b), the block's sums, the coefficients.
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t cap = kOp == kResInfer ? 0 : (kRows ? g.chunk * g.bx : g.chunk);
  P* da = reinterpret_cast<P*>(smem);
  P* db = da + cap;
  const int64_t data_bytes = ((kGrad ? 2 : 1) * cap * static_cast<int64_t>(sizeof(P)) + 15) / 16 * 16;
  double* part = reinterpret_cast<double*>(smem + data_bytes);
  T* cf = reinterpret_cast<T*>(part + 2 * g.cols);

  // This block's slots, this thread's channels, and the inputs of the coefficients of channel `col` (thread
  // col), read before anything is written.
  const int64_t start = rank * g.chunk;
  const int64_t slots = min64(g.chunk, g.nv - start) * g.bx;
  const int64_t ch0 = kRows ? (unit * g.bx + t % g.bx) * W : unit;
  const bool active = kRows ? (unit * g.bx + t % g.bx) < g.row && t < slots : t < slots;
  const int64_t my_ch = kRows ? unit * g.bx * W + t : unit;
  const bool has_col = t < g.cols && my_ch < g.C;
  double center = 0, gm = 1, bt = 0, var = 0;
  if (has_col) {
    if constexpr (kOp == kResTrain) {
      center = static_cast<double>(p.a[my_ch * g.inner]);
    } else {
      center = static_cast<double>(p.mean[my_ch]);
      var = static_cast<double>(p.var[my_ch]);
    }
    if (p.gamma) gm = static_cast<double>(p.gamma[my_ch]);
    if (p.beta && kOp != kResBackward) bt = static_cast<double>(p.beta[my_ch]);
  }
  int64_t i, addr;
  res_start<kRows>(g, unit, start, t, i, addr);

  if constexpr (kOp != kResInfer) {
    // Load: every slot of this thread copied to shared memory at once (asynchronous copies, so that the whole
    // part is in flight), in kGroups groups, so that summing one group overlaps the arrival of the next. The
    // sums go in slot order, moved to double every kRound vectors.
    // (Channels-last tiles ran slower in groups on an H100, so they take theirs in one.)
    constexpr int kGroups = kRows ? 1 : 4;
    double S1[NL] = {}, S2[NL] = {};
    if (active) {
      // This thread's slots; group q ends at ceil(iters (q + 1) / kGroups).
      const int64_t iters = (slots - t + B - 1) / B;
      int64_t li = i, la = addr, s = t, it = 0;
#pragma unroll
      for (int q = 0; q < kGroups; ++q) {
        for (const int64_t end = (iters * (q + 1) + kGroups - 1) / kGroups; it < end; ++it, s += B) {
          copy_async<T, W, kAligned>(da + s, p.a, la);
          if constexpr (kGrad) copy_async<T, W, kAligned>(db + s, p.b, la);
          res_step(li, la, g);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
      }
      Acc<T, kGrad> acc[NL];
#pragma unroll
      for (int l = 0; l < NL; ++l) acc[l].center = kGrad ? p.mean[ch0 + l] : p.a[(ch0 + l) * g.inner];
      int n = 0;
      s = t;
      it = 0;
#pragma unroll
      for (int q = 0; q < kGroups; ++q) {
        cp_async_wait_group(kGroups - 1 - q);  // this thread's own copies, which only it reads
        if (q == 0 && !kGrad) {
#pragma unroll
          for (int l = 0; l < NL; ++l) acc[l].k = da[t].v[l];
        }
        for (const int64_t end = (iters * (q + 1) + kGroups - 1) / kGroups; it < end; ++it, s += B) {
          const P u = da[s];
          P x = {};
          if constexpr (kGrad) x = db[s];
#pragma unroll
          for (int w = 0; w < W; ++w) acc[kRows ? w : 0].add(u.v[w], x.v[w]);
          if (++n == kRound) {
#pragma unroll
            for (int l = 0; l < NL; ++l) acc[l].flush(kRows ? n : n * W, S1[l], S2[l]);
            n = 0;
          }
        }
      }
      if (n > 0) {
#pragma unroll
        for (int l = 0; l < NL; ++l) acc[l].flush(kRows ? n : n * W, S1[l], S2[l]);
      }
    }

    // Block sums: the lanes of one column (t % bx) add in a fixed butterfly; then (runs) thread 0 adds the warps'
    // sums in order, or (rows) the warps add theirs in turn.
#pragma unroll
    for (int l = 0; l < NL; ++l) {
      for (int m = 16; m >= g.bx; m /= 2) {
        S1[l] += __shfl_xor_sync(kFullMask, S1[l], m);
        S2[l] += __shfl_xor_sync(kFullMask, S2[l], m);
      }
    }
    const int warp = t / 32, lane = t % 32;
    if constexpr (!kRows) {
      __shared__ double warp_sums[2 * kResThreads / 32];
      if (lane == 0) {
        warp_sums[warp] = S1[0];
        warp_sums[kResThreads / 32 + warp] = S2[0];
      }
      __syncthreads();
      if (t == 0) {
        double a1 = 0, a2 = 0;
        for (int w = 0; w < B / 32; ++w) {
          a1 += warp_sums[w];
          a2 += warp_sums[kResThreads / 32 + w];
        }
        part[0] = a1;
        part[1] = a2;
      }
    } else {
      for (int w = 0; w < B / 32; ++w) {
        if (warp == w && lane < g.bx) {
#pragma unroll
          for (int l = 0; l < NL; ++l) {
            const int col = lane * NL + l;
            part[col] = (w == 0 ? 0.0 : part[col]) + S1[l];
            part[g.cols + col] = (w == 0 ? 0.0 : part[g.cols + col]) + S2[l];
          }
        }
        __syncthreads();
      }
    }

    // Every block: the unit's totals over its K blocks in rank order, then the coefficients.
    const cg::cluster_group cluster = cg::this_cluster();
    cluster.sync();
    if (has_col) {
      double s1 = 0, s2 = 0;
      for (int q = 0; q < g.K; ++q) {
        const double* rp = cluster.map_shared_rank(part, q);
        s1 += rp[t];
        s2 += rp[g.cols + t];
      }
      if constexpr (kGrad) {
        const double invstd = 1.0 / sqrt(var + g.eps);
        if (rank == 0 && p.dgamma) p.dgamma[my_ch] = static_cast<T>(s2 * invstd);
        if (rank == 0 && p.dbeta) p.dbeta[my_ch] = static_cast<T>(s1);
        cf[t] = static_cast<T>(gm * invstd);
        cf[g.cols + t] = static_cast<T>(center);
        cf[2 * g.cols + t] = static_cast<T>(-gm * invstd * invstd * invstd * s2 / g.n);
        cf[3 * g.cols + t] = static_cast<T>(-gm * invstd * s1 / g.n);
      } else {
        const double m = center + s1 / g.n;
        double m2 = s2 - s1 * s1 / g.n;
        if (m2 < 0) m2 = 0;  // rounding; NaN passes through
        const double v = m2 / g.n;
        const T hi = static_cast<T>(m);
        if (rank == 0) {
          p.mean_out[my_ch] = hi;
          p.var_out[my_ch] = static_cast<T>(v);
        }
        const double scale = gm * (1.0 / sqrt(v + g.eps));
        cf[t] = hi;
        cf[g.cols + t] = static_cast<T>(scale);
        cf[2 * g.cols + t] = static_cast<T>(bt - (m - static_cast<double>(hi)) * scale);
      }
    }
    cluster.barrier_arrive();  // this block's reads of the others' sums are done
  } else if (has_col) {
    // Inference: the coefficients of infer_coef, so that both paths give the same bits.
    cf[t] = static_cast<T>(center);
    cf[g.cols + t] = static_cast<T>(gm * (1.0 / sqrt(var + g.eps)));
    cf[2 * g.cols + t] = p.beta ? p.beta[my_ch] : T(0);
  }
  __syncthreads();

  // Write the part: from shared memory, or (inference) straight from x.
  if (active) {
    T k[kC][W];
    const int c0 = kRows ? (t % g.bx) * W : 0;
#pragma unroll
    for (int q = 0; q < kC; ++q) {
#pragma unroll
      for (int w = 0; w < W; ++w) k[q][w] = cf[q * g.cols + c0 + (kRows ? w : 0)];
    }
    res_write<T, W, kOp, kAligned, kOp == kResInfer, kC>(p, da, db, slots, i, addr, k, g);
  }
  if constexpr (kOp != kResInfer) {
    cg::this_cluster().barrier_wait();  // the others have read this block's sums: its shared memory may go
  }
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Host side

[[noreturn]] void fail(cudaError_t e, const char* what) {
  cudaGetLastError();  // a failed call leaves its error behind; the exception reports it
  const Status s = e == cudaErrorMemoryAllocation ? Status::out_of_memory : Status::cuda;
  throw Error(s, std::string("fastbn: ") + what + " failed: " + cudaGetErrorString(e));
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(e, what);
}

void require_device() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw Error(Status::no_cuda, std::string("fastbn: no usable CUDA device (") + cudaGetErrorString(e) + ")");
  }
  if (n <= 0) throw Error(Status::no_cuda, "fastbn: no usable CUDA device (none found)");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Makes the stream's device current for this call (a host may have made another one current), and restores
// the previous one afterwards.
class DeviceScope {
 public:
  explicit DeviceScope(cudaStream_t stream) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    device_ = previous_;
#if CUDART_VERSION >= 12080
    check(cudaStreamGetDevice(stream, &device_), "cudaStreamGetDevice");
#endif
    if (device_ != previous_) check(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (device_ != previous_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  int device() const { return device_; }

 private:
  int previous_ = 0, device_ = 0;
};

// Workspace memory comes from a pool of this library's own per device that keeps up to kPoolKeep bytes between
// calls: the default pool hands its memory back to the driver at every synchronization, and mapping it again
// costs more than a small kernel. Null where pools are not supported; the default pool serves then.
constexpr uint64_t kPoolKeep = 64 << 20;

cudaMemPool_t workspace_pool(int device) {
  struct Slot {
    bool tried = false;
    cudaMemPool_t pool = nullptr;
  };
  static std::mutex mutex;
  static std::vector<Slot> slots;
  const std::lock_guard<std::mutex> lock(mutex);
  if (slots.size() <= static_cast<size_t>(device)) slots.resize(static_cast<size_t>(device) + 1);
  Slot& slot = slots[static_cast<size_t>(device)];
  if (!slot.tried) {
    slot.tried = true;
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool = nullptr;
    uint64_t keep = kPoolKeep;
    if (cudaMemPoolCreate(&pool, &props) != cudaSuccess) {
      cudaGetLastError();
    } else if (cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep) != cudaSuccess) {
      cudaGetLastError();
      cudaMemPoolDestroy(pool);
    } else {
      slot.pool = pool;
    }
  }
  return slot.pool;
}

// Stream-ordered scratch memory for one call, carved into 256-byte aligned arrays.
class Workspace {
 public:
  Workspace(size_t bytes, int device, cudaStream_t stream) : stream_(stream) {
    const cudaMemPool_t pool = workspace_pool(device);
    check(pool ? cudaMallocFromPoolAsync(&base_, bytes, pool, stream) : cudaMallocAsync(&base_, bytes, stream),
          "allocating the kernel workspace");
  }
  ~Workspace() {
    if (cudaFreeAsync(base_, stream_) != cudaSuccess) cudaGetLastError();
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  template <class U>
  static size_t bytes(int64_t count) {
    return static_cast<size_t>(round_up(count * static_cast<int64_t>(sizeof(U)), 256));
  }
  template <class U>
  U* take(int64_t count) {
    U* r = reinterpret_cast<U*>(static_cast<char*>(base_) + used_);
    used_ += bytes<U>(count);
    return r;
  }

 private:
  cudaStream_t stream_;
  void* base_ = nullptr;
  size_t used_ = 0;
};

template <class... Params, class... Args>
void launch(void (*kernel)(Params...), dim3 grid, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = stream;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "kernel launch");
}

// The split of a reduction: a function of the shape and T only, so the bits do not depend on the GPU.
struct ReducePlan {
  bool rows;  // inner == 1
  int width;  // W
  int64_t chunks;
  dim3 grid;
  int threads;  // blockDim.x the run cursor was built for
  RunGeom run;
  RowGeom row;
};

template <class T>
ReducePlan plan_reduce(const Shape& s) {
  constexpr int V = vec_width<T>();
  const int64_t N = s.outer, C = s.channels, L = s.inner;
  ReducePlan p{};
  p.rows = L == 1;
  if (!p.rows) {
    const int W = L % V == 0 ? V : 1;
    const int64_t Lv = L / W, nv = N * Lv;
    const int64_t per_block = kBlockBytes / (W * static_cast<int64_t>(sizeof(T)));
    int64_t chunks = min64(max64(ceil_div(nv, per_block), 1), kMaxChunks);
    const int64_t chunk = ceil_div(nv, chunks);
    chunks = ceil_div(nv, chunk);
    // Fewer threads for short chunks, so that each has a few vectors to sum.
    const int threads = static_cast<int>(min64(max64(round_up(ceil_div(chunk, kUnroll), 32), 32), kThreads));
    const int64_t row = C * Lv;
    p.width = W;
    p.chunks = chunks;
    p.threads = threads;
    p.grid = dim3(static_cast<unsigned>(min64(C, kMaxGrid)), static_cast<unsigned>(chunks));
    p.run = RunGeom{C, Lv, nv, row, chunk, threads % Lv, (threads / Lv) * row + threads % Lv, row - Lv, 1};
  } else {
    const int W = C % V == 0 ? V : 1;
    const int64_t Cv = C / W;
    const int bx = Cv <= 64 ? static_cast<int>(Cv) : 32;
    const int by = kThreads / bx;
    const int64_t tiles = ceil_div(Cv, bx);
    const int64_t rows_target = max64(by, kBlockBytes / (bx * W * static_cast<int64_t>(sizeof(T))));
    int64_t chunks = min64(ceil_div(N, rows_target), kMaxChunks);
    const int64_t rows = ceil_div(N, chunks);
    chunks = ceil_div(N, rows);
    p.width = W;
    p.chunks = chunks;
    p.threads = kThreads;
    p.grid = dim3(static_cast<unsigned>(min64(tiles, kMaxGrid)), static_cast<unsigned>(chunks));
    p.row = RowGeom{N, C, Cv, tiles, rows, bx, by};
  }
  return p;
}

template <class T, int W, bool kAligned, bool kGrad>
void launch_reduce_as(const ReducePlan& p, const T* a, const T* b, const T* center, double* o1, double* o2,
                      cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = p.grid;
  cfg.blockDim = dim3(p.threads);
  cfg.stream = stream;
  if (p.rows) {
    check(cudaLaunchKernelEx(&cfg, reduce_rows<T, W, kAligned, kGrad>, a, b, center, p.row, o1, o2),
          "kernel launch");
  } else {
    check(cudaLaunchKernelEx(&cfg, reduce_runs<T, W, kAligned, kGrad>, a, b, center, p.run, o1, o2),
          "kernel launch");
  }
}

// Statistics (kGrad false): a = x, center = x (the channel's first value, x[c * inner]).
// Gradient (kGrad true): a = dy, b = x, center = mean.
template <class T, bool kGrad>
void launch_reduce(ReducePlan p, const T* a, const T* b, const T* center, int64_t center_stride, double* o1,
                   double* o2, cudaStream_t stream) {
  constexpr int V = vec_width<T>();
  p.run.center_stride = center_stride;
  const bool aligned = aligned16(a) && (!kGrad || aligned16(b));
  if (p.width == 1) {
    launch_reduce_as<T, 1, true, kGrad>(p, a, b, center, o1, o2, stream);
  } else if (aligned) {
    launch_reduce_as<T, V, true, kGrad>(p, a, b, center, o1, o2, stream);
  } else {
    launch_reduce_as<T, V, false, kGrad>(p, a, b, center, o1, o2, stream);
  }
}

// Lanes per channel in the finalize: a lane adds at most 8 partials (a group of up to 32 lanes for up to 256
// partials, the whole block beyond that).
FinalGeom plan_final(int64_t C, int64_t P) {
  int G = 1;
  if (P > 256) {
    G = kThreads;
  } else {
    while (G < P && G < 32) G *= 2;
  }
  return FinalGeom{C, P, G};
}

dim3 final_grid(const FinalGeom& g) {
  return dim3(static_cast<unsigned>(min64(ceil_div(g.C, kThreads / g.G), kMaxGrid)));
}

dim3 channel_grid(int64_t C) { return dim3(static_cast<unsigned>(min64(ceil_div(C, kThreads), kMaxGrid))); }

// Rows of the coefficient table, in elements: a multiple of 64 keeps every row 16-byte aligned for kRows.
int64_t coef_stride(int64_t C) { return round_up(C, 64); }

template <class T, int W, int kMode, int kOp>
void launch_elementwise_as(const T* in0, const T* in1, T* out, const T* coef, int64_t cs, const Shape& s,
                           int device, cudaStream_t stream) {
  auto kernel = elementwise<T, W, kMode, kOp>;
  const int64_t total = s.outer * s.channels * s.inner;
  const int64_t nvec = total / W;
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  // Blocks of this kernel that fit on one SM, asked once per kernel: with GPUs of different models in one
  // process the others get a grid sized for the first, which costs speed, never correctness.
  static const int per_sm = [kernel] {
    int blocks = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kThreads, 0),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return blocks;
  }();
  // One wave of resident blocks, each looping over the tensor; fewer when the tensor is small.
  const int64_t resident = max64(1, static_cast<int64_t>(sms) * per_sm);
  const int64_t blocks = min64(max64(ceil_div(nvec, kThreads * kUnroll), 1), resident);
  const int64_t stride = blocks * kThreads * W;
  const EwGeom g{total, nvec, s.inner, s.channels, stride % s.inner, (stride / s.inner) % s.channels};
  launch(kernel, dim3(static_cast<unsigned>(blocks)), stream, in0, in1, out, coef, cs, g);
}

template <class T, int kOp>
void launch_elementwise(const T* in0, const T* in1, T* out, const T* coef, int64_t cs, const Shape& s, int device,
                        cudaStream_t stream) {
  constexpr int V = vec_width<T>();
  const bool aligned = aligned16(in0) && (in1 == nullptr || aligned16(in1)) && aligned16(out);
  if (!aligned) {
    launch_elementwise_as<T, 1, kUniform, kOp>(in0, in1, out, coef, cs, s, device, stream);
  } else if (s.inner % V == 0) {
    launch_elementwise_as<T, V, kUniform, kOp>(in0, in1, out, coef, cs, s, device, stream);
  } else if (s.inner == 1 && s.channels % V == 0) {
    launch_elementwise_as<T, V, kRows, kOp>(in0, in1, out, coef, cs, s, device, stream);
  } else {
    launch_elementwise_as<T, V, kGeneral, kOp>(in0, in1, out, coef, cs, s, device, stream);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Resident path: plan and launch

// The most dynamic shared memory a resident block asks for: its input bytes plus a vector or a row (<= 1 KiB) of
// each input (the chunk is rounded up), the sums and the coefficients.
constexpr int kResMaxSmem[2] = {
    static_cast<int>(kResidentBytes[0] + 2048 + 2 * kResMaxCols * 8 + 4 * kResMaxCols * 8),
    static_cast<int>(kResidentBytes[1] + 2048 + 2 * kResMaxCols * 8 + 4 * kResMaxCols * 8)};

// Tuning knobs for measurements (FASTBN_CUDA_RESIDENT_KB, FASTBN_CUDA_INFER_KB; benchmarks/cuda_host/sweep.sh):
// the bytes per block of the small size class and of inference. Read once; the defaults above are what the sweep
// chose.
int64_t knob_kb(const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  const char* e = std::getenv(name);
  if (!e || !*e) return fallback;
  const int64_t v = std::atoll(e) << 10;
  return v >= lo && v <= hi ? v : fallback;
}

struct ResidentPlan {
  bool ok = false;
  int W = 1, threads = 0;
  int big = 0;  // size class: index of kResidentBytes
  int64_t units = 0;
  size_t smem = 0;
  ResGeom g{};
};

// The resident split of a shape in size class `big`, or ok == false where a training or backward unit needs more
// than kMaxCluster blocks.
template <class T>
ResidentPlan plan_resident(const Shape& s, int op, int big) {
  static const int64_t small_bytes = knob_kb("FASTBN_CUDA_RESIDENT_KB", kResidentBytes[0], 8 << 10, kResidentBytes[0]);
  static const int64_t infer_runs = knob_kb("FASTBN_CUDA_INFER_KB", kInferBytes[0], 4 << 10, 64 << 20);
  static const int64_t infer_rows = knob_kb("FASTBN_CUDA_INFER_KB", kInferBytes[1], 4 << 10, 64 << 20);
  constexpr int V = vec_width<T>();
  const int64_t N = s.outer, C = s.channels, L = s.inner;
  const int64_t inputs = op == kResBackward ? 2 : 1, staged = op == kResInfer ? 0 : 1;
  const int64_t size = static_cast<int64_t>(sizeof(T));
  const int64_t block_bytes = big ? kResidentBytes[1] : small_bytes;
  const int64_t kMaxBytes = kMaxCluster * block_bytes;
  const int64_t per_block = op != kResInfer ? block_bytes : L > 1 ? infer_runs : infer_rows;
  ResidentPlan p;
  p.big = big;
  ResGeom& g = p.g;
  g.C = C;
  g.inner = L;
  g.n = static_cast<double>(N * L);
  int64_t bytes;  // input bytes of one unit
  if (L > 1) {
    p.W = L % V == 0 ? V : 1;
    g.Lv = L / p.W;
    g.nv = N * g.Lv;
    g.bx = 1;
    g.cols = 1;
    bytes = N * L * size * inputs;
    p.units = C;
  } else {
    p.W = C % V == 0 ? V : 1;
    const int64_t Cv = C / p.W;
    int bx = 1;
    while (bx < 32 && bx < Cv) bx *= 2;
    while (staged && bx > 4 && N * bx * p.W * size * inputs > kMaxBytes) bx /= 2;
    // A small tensor in narrower tiles, so that it still spreads over a few blocks.
    while (bx > 4 && ceil_div(Cv, bx) < 16 && N * bx * p.W * size * inputs <= per_block) bx /= 2;
    g.nv = N;
    g.bx = bx;
    g.cols = bx * p.W;
    g.row = Cv;
    g.Lv = INT64_MAX;
    bytes = N * bx * p.W * size * inputs;
    p.units = ceil_div(Cv, bx);
  }
  if (staged && bytes > kMaxBytes) return p;
  g.chunk = ceil_div(g.nv, ceil_div(bytes, per_block));
  const int64_t K = ceil_div(g.nv, g.chunk);
  if (p.units * K > kMaxGrid) return p;
  g.K = static_cast<int>(K);
  p.threads = static_cast<int>(min64(max64(round_up(ceil_div(g.chunk * g.bx, 4), 32), L > 1 ? 64 : 128),
                                     kResThreads));
  if (L > 1) {
    g.row = C * g.Lv;
    g.di = p.threads % g.Lv;
    g.jump = (p.threads / g.Lv) * g.row + p.threads % g.Lv;
    g.wrap = g.row - g.Lv;
  } else {
    g.di = 0;
    g.jump = (p.threads / g.bx) * g.row;
    g.wrap = 0;
  }
  const int64_t cap = staged ? g.chunk * g.bx : 0;
  const int64_t coefs = op == kResBackward ? 4 : 3;
  p.smem = static_cast<size_t>(round_up(inputs * cap * p.W * size, 16) + 2 * g.cols * 8 + coefs * g.cols * size);
  p.ok = p.smem <= static_cast<size_t>(kResMaxSmem[big]);
  return p;
}

// A launch configuration of `blocks` blocks in clusters of K along x (or, clustered false, no cluster).
struct ClusterLaunch {
  cudaLaunchAttribute attr[1] = {};
  cudaLaunchConfig_t cfg = {};
  ClusterLaunch(int64_t blocks, int K, int threads, size_t smem, cudaStream_t stream, bool clustered) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = static_cast<unsigned>(K);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(static_cast<unsigned>(threads));
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = clustered ? 1 : 0;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// Whether the resident path may run on this device: compute capability 9.0 or newer, not switched off with
// FASTBN_CUDA_RESIDENT=0, sm_90 code in this build, and (training, backward) a cluster of K blocks of size class
// `big` schedulable. Asked once per kernel, K and class; the capability once per call (a cached attribute).
template <class T, int W, bool kRows, int kOp, bool kAligned>
bool resident_runs(int device, int K, int big) {
  static const bool enabled = [] {
    const char* e = std::getenv("FASTBN_CUDA_RESIDENT");
    return !(e && std::string(e) == "0");
  }();
  if (!enabled) return false;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (major < 9) return false;
  auto kernel = resident<T, W, kRows, kOp, kAligned>;
  static const bool ready = [kernel] {
    cudaFuncAttributes attr{};
    const bool ok = cudaFuncGetAttributes(&attr, kernel) == cudaSuccess && attr.binaryVersion >= 90 &&
                    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kResMaxSmem[1]) ==
                        cudaSuccess &&
                    cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
    if (!ok) cudaGetLastError();
    return ok;
  }();
  if (!ready) return false;
  if (kOp == kResInfer) return true;
  static std::atomic<int> fits[2][kMaxCluster + 1] = {};  // 0: not asked yet, 1: yes, 2: no
  int f = fits[big][K].load(std::memory_order_relaxed);
  if (f == 0) {
    ClusterLaunch launch(K, K, kResThreads, kResMaxSmem[big], nullptr, true);
    int clusters = 0;
    if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.cfg) != cudaSuccess) {
      cudaGetLastError();
      clusters = 0;
    }
    f = clusters > 0 ? 1 : 2;
    fits[big][K].store(f, std::memory_order_relaxed);
  }
  return f == 1;
}

template <class T, int W, bool kRows, int kOp, bool kAligned>
bool launch_resident_as(const ResidentPlan& p, const ResArgs<T>& args, int device, cudaStream_t stream) {
  if (!resident_runs<T, W, kRows, kOp, kAligned>(device, p.g.K, p.big)) return false;
  // Inference blocks work alone: no cluster.
  const ClusterLaunch launch(p.units * p.g.K, p.g.K, p.threads, p.smem, stream, kOp != kResInfer);
  check(cudaLaunchKernelEx(&launch.cfg, resident<T, W, kRows, kOp, kAligned>, args, p.g), "kernel launch");
  return true;
}

template <class T, int kOp, int W, bool kRows>
bool launch_resident_w(const ResidentPlan& p, bool aligned, const ResArgs<T>& args, int device,
                       cudaStream_t stream) {
  if (aligned || W == 1) return launch_resident_as<T, W, kRows, kOp, true>(p, args, device, stream);
  return launch_resident_as<T, W, kRows, kOp, false>(p, args, device, stream);
}

// One resident launch of pass kOp, or false (nothing launched) where the shape or the device does not allow it.
template <class T, int kOp>
bool launch_resident(const Shape& s, double eps, const ResArgs<T>& args, int device, cudaStream_t stream) {
  constexpr int V = vec_width<T>();
  ResidentPlan p = plan_resident<T>(s, kOp, 0);
  // The one-block-per-SM class for the channels 16 blocks of 100 KiB cannot hold (it paid off for runs only:
  // channels-last tiles ran no faster than the staged path).
  if (!p.ok && kOp != kResInfer && s.inner > 1) p = plan_resident<T>(s, kOp, 1);
  if (!p.ok) return false;
  p.g.eps = eps;
  const bool aligned = aligned16(args.a) && (kOp != kResBackward || aligned16(args.b)) && aligned16(args.out);
  const bool rows = s.inner == 1;
  if (p.W == 1) {
    return rows ? launch_resident_w<T, kOp, 1, true>(p, aligned, args, device, stream)
                : launch_resident_w<T, kOp, 1, false>(p, aligned, args, device, stream);
  }
  return rows ? launch_resident_w<T, kOp, V, true>(p, aligned, args, device, stream)
              : launch_resident_w<T, kOp, V, false>(p, aligned, args, device, stream);
}

template <class T>
void train_impl(const T* x, T* y, const T* gamma, const T* beta, T* mean, T* var, const Shape& s, double eps,
                void* stream_ptr) {
  checks::train_args(x, y, mean, var, s, eps);
  require_device();
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeviceScope scope(stream);
  if (launch_resident<T, kResTrain>(s, eps, {x, nullptr, y, gamma, beta, nullptr, nullptr, mean, var, nullptr, nullptr},
                                    scope.device(), stream)) {
    return;
  }
  const int64_t C = s.channels, cs = coef_stride(C);
  const ReducePlan plan = plan_reduce<T>(s);
  Workspace ws(2 * Workspace::bytes<double>(plan.chunks * C) + Workspace::bytes<T>(3 * cs), scope.device(),
               stream);
  double* p1 = ws.take<double>(plan.chunks * C);
  double* p2 = ws.take<double>(plan.chunks * C);
  T* coef = ws.take<T>(3 * cs);
  launch_reduce<T, false>(plan, x, nullptr, x, s.inner, p1, p2, stream);
  const FinalGeom fg = plan_final(C, plan.chunks);
  const double n = static_cast<double>(s.outer * s.inner);
  launch(finalize_train<T>, final_grid(fg), stream, p1, p2, fg, x, s.inner, n, gamma, beta, eps, mean, var, coef,
         cs);
  launch_elementwise<T, kForward>(x, nullptr, y, coef, cs, s, scope.device(), stream);
}

template <class T>
void infer_impl(const T* x, T* y, const T* mean, const T* var, const T* gamma, const T* beta, const Shape& s,
                double eps, void* stream_ptr) {
  checks::infer_args(x, y, mean, var, s, eps);
  require_device();
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeviceScope scope(stream);
  if (launch_resident<T, kResInfer>(s, eps, {x, nullptr, y, gamma, beta, mean, var, nullptr, nullptr, nullptr, nullptr},
                                    scope.device(), stream)) {
    return;
  }
  const int64_t C = s.channels, cs = coef_stride(C);
  Workspace ws(Workspace::bytes<T>(3 * cs), scope.device(), stream);
  T* coef = ws.take<T>(3 * cs);
  launch(infer_coef<T>, channel_grid(C), stream, mean, var, gamma, beta, C, eps, coef, cs);
  launch_elementwise<T, kForward>(x, nullptr, y, coef, cs, s, scope.device(), stream);
}

template <class T>
void backward_impl(const T* dy, const T* x, const T* mean, const T* var, const T* gamma, T* dx, T* dgamma,
                   T* dbeta, const Shape& s, double eps, bool batch_stats, void* stream_ptr) {
  checks::backward_args(dy, x, mean, var, dx, s, eps);
  require_device();
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeviceScope scope(stream);
  if (batch_stats &&
      launch_resident<T, kResBackward>(s, eps, {dy, x, dx, gamma, nullptr, mean, var, nullptr, nullptr, dgamma, dbeta},
                                       scope.device(), stream)) {
    return;
  }
  const int64_t C = s.channels, cs = coef_stride(C);
  // With frozen statistics dx = a * dy needs no sums; they are only for dgamma / dbeta.
  const bool sums = batch_stats || dgamma || dbeta;
  const ReducePlan plan = plan_reduce<T>(s);
  const int64_t chunks = sums ? plan.chunks : 0;
  Workspace ws(2 * Workspace::bytes<double>(max64(chunks * C, 1)) + Workspace::bytes<T>(4 * cs), scope.device(),
               stream);
  double* p1 = ws.take<double>(max64(chunks * C, 1));
  double* p2 = ws.take<double>(max64(chunks * C, 1));
  T* coef = ws.take<T>(4 * cs);
  if (sums) launch_reduce<T, true>(plan, dy, x, mean, 1, p1, p2, stream);
  const FinalGeom fg = plan_final(C, chunks);
  const double n = static_cast<double>(s.outer * s.inner);
  launch(finalize_backward<T>, final_grid(fg), stream, p1, p2, fg, mean, var, gamma, eps, n, batch_stats, dgamma,
         dbeta, coef, cs);
  if (batch_stats) {
    launch_elementwise<T, kBackward>(dy, x, dx, coef, cs, s, scope.device(), stream);
  } else {
    launch_elementwise<T, kBackwardScale>(dy, nullptr, dx, coef, cs, s, scope.device(), stream);
  }
}

template <class T>
void running_impl(T* running_mean, T* running_var, const T* mean, const T* var, int64_t channels, int64_t count,
                  double factor, void* stream_ptr) {
  checks::require(running_mean, "running_mean");
  checks::require(running_var, "running_var");
  checks::require(mean, "mean");
  checks::require(var, "var");
  if (channels < 1) {
    throw Error(Status::bad_argument, "fastbn: channels must be >= 1, got " + std::to_string(channels));
  }
  if (count < 2) {
    throw Error(Status::bad_argument,
                "fastbn: the running variance needs count >= 2 values per channel, got " + std::to_string(count));
  }
  if (!(factor >= 0.0 && factor <= 1.0)) {
    throw Error(Status::bad_argument, "fastbn: factor must be in [0, 1], got " + std::to_string(factor));
  }
  require_device();
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const DeviceScope scope(stream);
  const double c = static_cast<double>(count);
  launch(running_update<T>, channel_grid(channels), stream, running_mean, running_var, mean, var, channels, factor,
         c / (c - 1.0));
}

}  // namespace

bool compiled() noexcept { return true; }

bool is_available() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_description(int device) {
  require_device();
  const int n = device_count();
  if (device < 0 || device >= n) {
    throw Error(Status::bad_argument, "fastbn: CUDA device " + std::to_string(device) + " does not exist (" +
                                          std::to_string(n) + " device(s))");
  }
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return std::string(p.name) + ", compute capability " + std::to_string(p.major) + "." + std::to_string(p.minor) +
         ", " + std::to_string(p.multiProcessorCount) + " SMs";
}

void forward_train(const float* x, float* y, const float* gamma, const float* beta, float* mean, float* var,
                   const Shape& shape, double eps, void* stream) {
  train_impl(x, y, gamma, beta, mean, var, shape, eps, stream);
}
void forward_train(const double* x, double* y, const double* gamma, const double* beta, double* mean, double* var,
                   const Shape& shape, double eps, void* stream) {
  train_impl(x, y, gamma, beta, mean, var, shape, eps, stream);
}

void forward_infer(const float* x, float* y, const float* mean, const float* var, const float* gamma,
                   const float* beta, const Shape& shape, double eps, void* stream) {
  infer_impl(x, y, mean, var, gamma, beta, shape, eps, stream);
}
void forward_infer(const double* x, double* y, const double* mean, const double* var, const double* gamma,
                   const double* beta, const Shape& shape, double eps, void* stream) {
  infer_impl(x, y, mean, var, gamma, beta, shape, eps, stream);
}

void backward(const float* dy, const float* x, const float* mean, const float* var, const float* gamma, float* dx,
              float* dgamma, float* dbeta, const Shape& shape, double eps, bool batch_stats, void* stream) {
  backward_impl(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape, eps, batch_stats, stream);
}
void backward(const double* dy, const double* x, const double* mean, const double* var, const double* gamma,
              double* dx, double* dgamma, double* dbeta, const Shape& shape, double eps, bool batch_stats,
              void* stream) {
  backward_impl(dy, x, mean, var, gamma, dx, dgamma, dbeta, shape, eps, batch_stats, stream);
}

void update_running_stats(float* running_mean, float* running_var, const float* mean, const float* var,
                          int64_t channels, int64_t count, double factor, void* stream) {
  running_impl(running_mean, running_var, mean, var, channels, count, factor, stream);
}
void update_running_stats(double* running_mean, double* running_var, const double* mean, const double* var,
                          int64_t channels, int64_t count, double factor, void* stream) {
  running_impl(running_mean, running_var, mean, var, channels, count, factor, stream);
}

void* device_alloc(size_t bytes) {
  require_device();
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}

void device_free(void* p) noexcept {
  if (p && cudaFree(p) != cudaSuccess) cudaGetLastError();
}

void copy_to_device(void* dst, const void* host_src, size_t bytes) {
  require_device();
  if (bytes) check(cudaMemcpy(dst, host_src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy (host to device)");
}

void copy_to_host(void* host_dst, const void* src, size_t bytes) {
  require_device();
  if (bytes) check(cudaMemcpy(host_dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (device to host)");
}

void copy_on_device(void* dst, const void* src, size_t bytes) {
  require_device();
  if (bytes) check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy (device to device)");
}

void synchronize(void* stream) {
  require_device();
  if (stream) {
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
  } else {
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  }
}

}  // namespace cuda
}  // namespace fastbn
