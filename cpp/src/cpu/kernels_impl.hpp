// CPU batch-norm kernels. Included once per instruction set by kernels_<isa>.cpp, which defines FASTBN_ISA_NS
// (and FASTBN_ISA_AVX512 / FASTBN_ISA_AVX2, with FASTBN_ISA_AVX512_BF16 for the bfloat16 kernels alone), so this
// one source becomes one namespace per ISA.
//
// Two layouts of the (outer, C, inner) view:
//  - inner > 1 ("nc"): each channel is `outer` contiguous runs of `inner` values, cut into blocks small enough
//    to stay in L1/L2 (whole runs, or pieces of one long run). Each thread takes a contiguous range of
//    channels and pipelines them (block b of channel c is normalized from cache while block b of channel c + 1
//    is read for its statistics); when the channels do not split evenly over the threads, (channel, block)
//    units are shared out instead.
//  - inner == 1 ("cl", channels-last and 2-D): rows of C contiguous channels. Vectors run across channels; rows
//    are grouped into tiles (in cache) and tiles into chunks (the unit a thread takes).
//
// One loop per shape of work, many flags: the storage type S (float, double, bfloat16, float16; halves compute
// in float) is a template parameter of every driver; the epilogue (activation; residual) and the prologue of
// the backward (xhat from x, or recovered from the output y) are template or run-time parameters of the block
// functions, chosen once per call. Drivers also run the phases of a distributed batch norm on their own: the
// statistics alone, normalization with given statistics, the backward sums alone, dx from given sums.
//
// Determinism: every reduction is defined by the shape alone. A channel's statistics are the in-order merge of
// its blocks (nc) or chunks (cl), whichever thread computed each one, so the bits are the same for any thread
// count. Kernel sources are compiled with -ffp-contract=off, and heads and tails of loops go through the same
// (masked) vector code as their bodies, so every element of a pass rounds alike.
//
// Statistics: sums of x - k and (x - k)^2 per in-cache block, with a shift k near the block's mean: for nc blocks
// the mean of the block's first vector when that proves close enough (block_moments), else the mean of a first
// pass; for channels-last tiles the mean of a first pass (or the first row where that overflows). Every sum is
// kept in float (or double) lanes for at most kRound vectors and then moved into double lanes, so no float
// partial sum ever spans more than a few dozen values, however long a run is; blocks are merged in double with
// Chan's formula. A block whose squares overflow float is summed again in double, scaled. Normalization computes
// (x - hi) * scale + (beta - lo * scale) with mean = hi + lo, so large means do not cancel.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/kernels.hpp"
#include "cpu/simd.hpp"

// Inlines everything a kernel calls: where a loop body grows (a step that fuses two passes), GCC stops inlining
// the walk's per-vector lambda, and a call per vector leaves the accumulators in memory. Not under ASan, where
// the instrumented, flattened kernels doubled the compile time (4.4 against 2.4 minutes for the AVX-512 file).
#if defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__)
#define FASTBN_FLATTEN __attribute__((flatten))
#else
#define FASTBN_FLATTEN
#endif

namespace fastbn {
namespace cpu {
namespace FASTBN_ISA_NS {
namespace {

// Bytes of one array a block (nc) spans: the working set of the second, in-cache pass.
constexpr int64_t kBlockBytes = 32 * 1024;
// Bytes of one sample's runs that the statistics and reduce passes read side by side (see for_my_units).
constexpr int64_t kSideBySideBytes = 64 * 1024;
// Distances (bytes, modulo a page) from a store ahead of which (kAliasBelow) or behind which (kAliasAbove) a load
// that follows it counts as aliasing it (loads_alias_stores).
constexpr int64_t kAliasBelow = 256, kAliasAbove = 64;
// Runs at least this long that the training forward fuses whatever the share of a channel (see train_nc_act).
constexpr int64_t kFuseMinRunBytes = 8 * 1024;
// Bytes of one array a channels-last tile spans (its reductions re-read it from L1/L2).
constexpr int64_t kTileBytes = 256 * 1024;
// Rows a channels-last chunk spans, in bytes: the unit of parallel work there.
constexpr int64_t kChunkBytes = 1 << 20;
// Outputs at least Exec::stream_min_bytes large bypass the caches (streaming stores): they would not stay in the
// last-level cache for the next layer anyway, and a normal store first reads the line it writes. The
// yardsticks stream from kStreamMinBytes on (kernels.hpp), as the fastest copy does.
// Vectors an accumulator takes before its float lanes are moved into double lanes: a float partial sum spans
// at most this many values per lane, so its relative error stays below ~kRound * 2^-24 for any run length.
constexpr int kRound = 32;
// Rows whose mean is a channels-last tile's first guess at its shift (moments_group_cl_once): the guess is off by
// about std / 4, and more than std (which sends the group to the careful path) in ~1e-4 of channels.
constexpr int kShiftRows = 16;
// Rows that the channels-last row walks (rows_column_sums, span_rows) read together, and how many of their
// blocks of rows ahead they prefetch.
constexpr int kRowsTogether = 8;
// Rows the backward's column sums (bwd_sums_cl: two or three arrays, dy and x or y) take together. One process
// switching per call on the EPYC Zen 4 VM (30 pairs, two runs; the bits do not depend on it), against 8, 2 threads:
// backward 8192x1024 1.09-1.11x, 50176x256 1.03-1.05x, 32768x512 1.01-1.06x, 512x256x8x8 1.09x, 256x512x7x7 1.02x;
// its reduce phase 1.14-1.19x, 1.10-1.13x, 1.02-1.13x, 1.19x, 1.05x; one thread backward 1.01-1.16x, reduce
// 1.04-1.31x. 4 rows gained less (0.97-1.24x).
constexpr int kSumsRowsTogether = 2;
constexpr int kRowsAhead = 2;
// Bytes of a channel group's rows ahead of the row it sums that the one-pass statistics of a channels-last chunk
// prefetch (shifted_group_cl), for tensors beyond the cache: the hardware prefetchers alone left those sums at
// ~0.8 of a read of the same bytes on the Xeon VM. See cl_stats for the measurements.
constexpr int64_t kStatsAheadBytes = 32 * 1024;

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

// The number of threads in the current parallel region (1 outside one).
inline int team_size() {
#if defined(_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Times how long thread 1 of a parallel region took to start, and reports it when the region is over
// (note_region: a second thread that had gone to sleep, or that waits for a CPU another process holds, makes
// fastbn keep small calls on one thread for a while). Declared before the region, started() first thing inside it.
class StartProbe {
 public:
  explicit StartProbe(int threads) : t0_(threads > 1 ? now_ns() : 0), threads_(threads) {}
  StartProbe(const StartProbe&) = delete;
  StartProbe& operator=(const StartProbe&) = delete;
  void started() {
    if (t0_ != 0 && thread_id() == 1) delay_ = now_ns() - t0_;  // read after the region's closing barrier
  }
  ~StartProbe() {
    if (delay_ > 0) note_region(t0_, delay_, threads_);
  }

 private:
  const int64_t t0_;
  const int threads_;
  int64_t delay_ = 0;
};

// This thread's share [begin, end) of n items, split evenly over the team that actually runs: OpenMP may give
// fewer threads than asked for (OMP_THREAD_LIMIT, or a call from inside another parallel region).
struct Share {
  int64_t begin, end;
};

inline Share my_share(int64_t n) {
  const int64_t t = thread_id(), k = team_size();
  return {n * t / k, n * (t + 1) / k};
}

// This thread's share of the n values of `out`, cut at 64-byte lines of out (except at 0 and n), so that no line is
// written by two threads.
template <class S>
inline Share my_lines(int64_t n, const S* out) {
  const Share sh = my_share(n);
  auto line = [&](int64_t e) {
    if (e == 0 || e == n) return e;
    const int64_t per = 64 / static_cast<int64_t>(sizeof(S));
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(out + e) / sizeof(S)) % per);
    return min64(n, e + (mis ? per - mis : 0));
  };
  return {line(sh.begin), line(sh.end)};
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

// Threads worth using for a pass over `bytes` of x made of `units` independent pieces of work: at least
// ex.min_bytes_per_thread each (Exec; a setting, because what a thread's wake-up costs depends on the machine).
inline int pick_threads(const Exec& ex, int64_t bytes, int64_t units) {
  int64_t t = min64(bytes / max64(1, ex.min_bytes_per_thread), units);
  t = min64(t, ex.max_threads);
  return t < 1 ? 1 : static_cast<int>(t);
}

// Whole channels per thread is fastest (a channel's second pass hits that thread's cache), but only when the
// channels split evenly; otherwise the work is cut into (channel, block) units.
inline bool channels_balance(int64_t channels, int threads) {
  return threads == 1 || channels % threads == 0 || channels >= 8 * threads;
}

template <class S>
inline bool can_stream(const S* out, int64_t bytes, int64_t min_bytes) {
  return out != nullptr && bytes >= min_bytes && reinterpret_cast<uintptr_t>(out) % sizeof(S) == 0;
}

// Runs of an nc tensor shorter than this are written with ordinary stores: each run's head and tail go through
// ordinary stores anyway, and with short runs the lines they share with streamed ones make streaming several
// times slower than ordinary stores (bfloat16 (256,256,14,14), 392-byte runs: 3.3 ms against 0.8 ms).
constexpr int64_t kStreamMinRunBytes = 512;
// nc runs of at most kFlatMaxRun values with C * L <= kFlatMaxPeriod (5x5 to 8x8 maps) are normalized as one flat
// period of C * L per-position coefficients, built block by block (kFlatBlock), instead of N * C runs of a few
// vectors, each with a head and a tail. For 8x8 maps this also avoids a cache conflict: run by run, a channel's
// N runs of 256 bytes lie a power of two apart (C * L * 4 bytes, 16 KiB for C = 64) and fill 4 of L1's 64 sets,
// so the statistics pass's lines are gone before the normalizing pass, and y's lines compete for the same sets
// whenever y - x is a multiple of 4 KiB (32x64x8x8 training, one thread: 39-47 us aliased, 26 not, 25-29 flat
// either way; two threads 24 -> 16 us, backward 31 -> 23 us). Longer runs (11x11, 128) were slower flat,
// measured on the EPYC VM.
constexpr int64_t kFlatMaxRun = 64;
constexpr int64_t kFlatMaxPeriod = 16384;

inline bool flat_nc(int64_t C, int64_t L) { return L <= kFlatMaxRun && C * L <= kFlatMaxPeriod; }

// Positions of a flat period normalized together over a group of rows (3 coefficient arrays of 4-8 KiB: L1).
constexpr int64_t kFlatBlock = 1024;
// Tensors from which the elementwise pass over short runs of a vector and a line or more (runs_not_walked) is one
// flat range whose coefficients change every L values (RunCycling: fwd_runs_range, dx_runs), in memory order,
// rather than the flat walk, whose blocks of a period go down a thread's rows (a 4 KiB read in each row, the
// next ~50 KiB on for 256 channels of 7x7), which reads slowly beyond the cores' caches. Same bits (the same
// coefficients, element by element). One process switching per call on the EPYC Zen 4 VM (30 pairs, against the
// flat walk): inference, 2 threads, float32 512x256x7x7 (25.7 MB) 1.72-1.83x, 512x256x8x8 1.83x, 1024x128x6x6
// 1.89x, 256x512x5x5 1.69-1.72x, 128x256x7x7 (6.4 MB) 1.17-1.63x, 64x256x8x8 (4.2 MB) 0.93-1.22x; one thread
// 1.37-2.6x; float64 1.9x; bfloat16 7x7 1.0-1.4x, 8x8 1.33x, 6x6 1.2x, but 5x5 (50-byte runs) 0.70x, hence the
// line. Tensors under 4 MiB were even or slower (2 threads: 32x256x7x7 0.94x, 64x512x5x5 0.78x). The training
// forward's y and the backward's dx, where they do not go by channel groups: 128x256x7x7 1.20x and 1.26x,
// 256x256x5x5 1.14x and 1.10x.
constexpr int64_t kFlatWalkMaxBytes = 4 << 20;
constexpr int64_t kFlatWalkRunBytes = 64;
// Rows of a flat walk per thread from which the threads split the rows rather than the blocks (flat_walk).
constexpr int64_t kFlatRowsPerThread = 8;

// nc runs shorter than this many bytes (and at least a vector long) are normalized with given statistics
// (inference) as one flat range rather than run by run. Paired on the EPYC VM, 2 threads, old / new time:
// 256x256x14x14 (784-byte runs) 1.17 (one thread 1.71), 16x256x10x10 1.17, 64x256x14x14 1.04, 32x64x16x16
// (1 KiB) 1.02; longer runs lost 2-5% (20x20 0.98, 28x28 0.97, 40x40 0.96, 56x56 0.96).
constexpr int64_t kRunsFlatMaxBytes = 1024;

template <class S>
inline bool runs_flat(int64_t L) {
  return L >= Vec<compute_t<S>>::width && L * static_cast<int64_t>(sizeof(S)) < kRunsFlatMaxBytes;
}

// Inference also takes runs of up to kApplyFlatMaxBytes as the flat range where y's runs do not start on a vector
// boundary (y off one, as NumPy leaves large arrays 16 bytes into a line, or runs of no whole number of vectors):
// run by run, every run's head and tail are then a partial line written with ordinary stores between streamed ones.
// Two builds, processes alternating (3 pairs, 7 rounds each, float32, 2 threads, fraction of a streaming copy of
// the same bytes, 2-vCPU Xeon VM): y 16 bytes into a line 256x128x16x16 0.61-0.64 -> 0.89-0.93, 64x128x16x16
// 0.66-0.71 -> 0.86-0.90, 128x128x20x20 0.73-0.78 -> 0.90-0.94, 256x64x18x18 0.72-0.75 -> 0.90-0.93; y on a line,
// run by run was as fast or faster (256x128x16x16 0.98-1.01 against 0.90-0.94 flat; 128x128x20x20 0.92-0.99
// against 0.94-0.96), and longer runs gained nothing flat (28x28 0.89-0.91 -> 0.89-0.96, 32x32 0.89-0.95 ->
// 0.88-0.89, 56x56 0.92-1.03 -> 0.89-0.91).
constexpr int64_t kApplyFlatMaxBytes = 2048;

template <class S>
inline bool apply_runs_flat(int64_t L, const S* y) {
  if (runs_flat<S>(L)) return true;
  constexpr int64_t kVecBytes = IO<S>::width * static_cast<int64_t>(sizeof(S));
  const int64_t run = L * static_cast<int64_t>(sizeof(S));
  return run < kApplyFlatMaxBytes && (run % kVecBytes != 0 || reinterpret_cast<uintptr_t>(y) % kVecBytes != 0);
}

template <class S>
inline bool runs_not_walked(int64_t L, int64_t bytes) {
  return runs_flat<S>(L) && L * static_cast<int64_t>(sizeof(S)) >= kFlatWalkRunBytes && bytes >= kFlatWalkMaxBytes;
}

template <class S>
inline bool can_stream_runs(const S* out, int64_t bytes, int64_t run, int64_t min_bytes) {
  return can_stream(out, bytes, min_bytes) && run * static_cast<int64_t>(sizeof(S)) >= kStreamMinRunBytes;
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
  const char* at() const { return p_; }
  void skip(int64_t bytes) { p_ += bytes; }

 private:
  char* p_;
};

constexpr int64_t kPageBytes = 4096;
constexpr int64_t kLineBytes = 64;

// Bytes to skip from `at` (on a 64-byte line) so that it lies half a page from the line of `away`, modulo a page:
// where coefficient arrays are read beside an output written through rows of a multiple of 4 KiB, an array at
// the output's offset within a page (as a page-aligned workspace and NumPy's arrays 16 bytes into a page put it)
// has every load share the low 12 address bits of a store a row before, and wait on it (4K aliasing): (8192,
// 1024) backward apply phase 2.29 ms, against 1.81-1.85 with the arrays 1, 2 or 3 KiB away (C=512: 1.88-1.97).
inline int64_t page_gap(const char* at, const void* away) {
  const uintptr_t want = (reinterpret_cast<uintptr_t>(away) & ~uintptr_t{63}) + kPageBytes / 2;
  return static_cast<int64_t>((want - reinterpret_cast<uintptr_t>(at)) & (kPageBytes - 1));
}

// Whether loads at `load` + i issued just after stores at `store` + i (a loop that writes one array while it reads
// another at the same offsets) share the low 12 address bits of a store still in flight: the load then waits on
// it (4K aliasing). Measured where the training forward's fused step reads the next channel (see train_nc_act).
inline bool loads_alias_stores(const void* load, const void* store) {
  const auto d = static_cast<int64_t>((reinterpret_cast<uintptr_t>(load) - reinterpret_cast<uintptr_t>(store)) &
                                      static_cast<uintptr_t>(kPageBytes - 1));
  return d < kAliasAbove || d >= kPageBytes - kAliasBelow;
}

// ---------------------------------------------------------------------------------------------------------
// Loads of whole vectors (Full) and of the first m lanes of one

struct Full {};

template <class S>
inline typename IO<S>::reg ld(const S* p, Full) {
  return IO<S>::load(p);
}
template <class S>
inline typename IO<S>::reg ld(const S* p, int m) {
  return IO<S>::load_first(p, m);
}
template <class V>
inline typename V::reg keep(Full, typename V::reg v, typename V::reg) {
  return v;
}
template <class V>
inline typename V::reg keep(int m, typename V::reg v, typename V::reg fill) {
  return V::keep_first(m, v, fill);
}

// The first n lanes of a vector, with the mask built once (a loop's tail, the same on every row).
template <class V>
struct Part {
  int n;
  typename V::pmask m;
  explicit Part(int lanes) : n(lanes), m(V::part(lanes)) {}
};

template <class S>
inline typename IO<S>::reg ld(const S* p, const Part<Vec<compute_t<S>>>& t) {
  return IO<S>::load_part(p, t.n, t.m);
}
template <class V>
inline typename V::reg keep(const Part<V>& t, typename V::reg v, typename V::reg fill) {
  return V::keep_part(t.m, v, fill);
}

// Whole vectors that all start `phase` elements past a vector boundary (IO::load_phased): the lanes of Full, read
// without spanning two cache lines. Only where IO<S>::kPhased (AVX-512, float and double storage).
template <class S>
struct Phased {
  typename IO<S>::Phase lanes;
};

template <class S>
inline typename IO<S>::reg ld(const S* p, const Phased<S>& m) {
  return IO<S>::load_phased(p, m.lanes);
}
template <class V, class S>
inline typename V::reg keep(const Phased<S>&, typename V::reg v, typename V::reg) {
  return v;
}

// Elements of p past the last boundary of a vector of W elements.
template <int W, class S>
inline int vector_phase(const S* p) {
  return static_cast<int>((reinterpret_cast<uintptr_t>(p) / sizeof(S)) % W);
}

// The phase (vector_phase) that the rows of the arrays given (null ones aside) all share, with rows `stride`
// elements apart; 0 when it differs between them or from row to row.
template <class S>
inline int column_phase(int64_t stride, const S* a, const S* b = nullptr, const S* c = nullptr) {
  constexpr int W = IO<S>::width;
  if (stride % W != 0 || reinterpret_cast<uintptr_t>(a) % sizeof(S) != 0) return 0;
  const int ph = vector_phase<W>(a);
  if ((b && vector_phase<W>(b) != ph) || (c && vector_phase<W>(c) != ph)) return 0;
  return ph;
}

// Calls f(m) with m = Full{}, or with m = Phased<S> where loads of whole vectors at `phase` != 0 would span two
// cache lines and S can read them aligned (IO<S>::kPhased). NumPy places large arrays 16 bytes past a 64-byte
// line. On the EPYC VM, 2 threads, with memory running fast (a copy at ~100 GB/s; at ~60 GB/s they all tie),
// against the same sums over aligned arrays: (200704, 128) backward sums 1.16x the time with plain loads, 1.00x
// phased; 8192x1024 1.1-1.2x, 1.00x; (200704, 128) statistics 1.06-1.09x, 1.06-1.08x (no gain shown). The column
// passes use it only on tensors beyond the last-level cache (those whose output streams): from the caches, two
// loads and a permute cost more than one load across lines ((4096, 256) backward 1.2x slower; NCHW 14x14 runs
// 1.3x, so the nc walks keep plain loads).
template <class S, class M, class F>
inline void with_phase(int phase, M m, F&& f) {
  if constexpr (IO<S>::kPhased && std::is_same<M, Full>::value) {
    if (phase != 0) {
      f(Phased<S>{IO<S>::phase_lanes(phase)});
      return;
    }
  }
  f(m);
}

// ---------------------------------------------------------------------------------------------------------
// Channels-last column groups

// Calls f(std::integral_constant<int, G>{}, c, m) over the channels [0, C) of channels-last rows, in groups of
// G vectors starting at channel c: groups of kG, then the remaining whole vectors in groups of 4, 2 and 1, then
// the last m < W channels (m an int; Full{} for whole groups). A group is one pass over the rows with G
// independent sums per row: a few channels (C = 64 floats: 4 vectors) are read as whole rows in one pass,
// rather than one vector of each row per pass, each a chain of dependent adds. Each channel's sums run in the
// same order whatever its group, so the bits do not depend on the grouping.
template <int kG, int W, class F>
inline void for_column_groups(int64_t C, F&& f) {
  using std::integral_constant;
  int64_t c = 0;
  for (; c + kG * W <= C; c += kG * W) f(integral_constant<int, kG>{}, c, Full{});
  if constexpr (kG > 4) {
    if (c + 4 * W <= C) {
      f(integral_constant<int, 4>{}, c, Full{});
      c += 4 * W;
    }
  }
  if constexpr (kG > 2) {
    if (c + 2 * W <= C) {
      f(integral_constant<int, 2>{}, c, Full{});
      c += 2 * W;
    }
  }
  for (; c + W <= C; c += W) f(integral_constant<int, 1>{}, c, Full{});
  if (c < C) f(integral_constant<int, 1>{}, c, static_cast<int>(C - c));
}

template <class S>
inline compute_t<S> load1(const S* p) {
  if constexpr (is_half_v<S>) {
    return to_float(*p);
  } else {
    return *p;
  }
}

// Writes the vector of elements [i, i + m) of out (m == width unless a head or tail), streaming or not.
template <class S, class M>
inline void put(S* out, typename IO<S>::reg v, M m, bool stream) {
  if constexpr (std::is_same<M, Full>::value) {
    if (stream) {
      IO<S>::stream(out, v);
    } else {
      IO<S>::store(out, v);
    }
  } else {
    IO<S>::store_first(out, v, m);
  }
}

// A per-vector hook that does nothing.
struct NoHook {
  template <class M>
  void operator()(int64_t, const M&) const {}
};

// The output of a block of `rows` runs of `len` values, written one piece per vector of a walk over a block of the
// same geometry (see fwd_block_with_moments): in the pieces span() cuts, a head to the vector boundary that
// streaming stores need, whole vectors, a tail. The walk goes row by row, each from its start, offsets rising: a
// vector past the row's end starts the next row. The row's head is written there, then a whole vector `head`
// values on from each vector the walk takes while it fits in the row, and the rest of the row when it ends
// (finish() for the last). out(o, m) writes the values at o: m is Full or a count. With a skew of k vectors, the
// row's whole vectors are written in a rotated order, vector (j + k) mod n with the walk's j-th (see train_nc_act).
template <int W, class S, class Out>
class RowPieces {
 public:
  RowPieces(const S* out, int64_t len, bool stream, Out& f, int64_t skew = 0)
      : out_(out), len_(len), stream_(stream), f_(f), skew_(skew) {}
  template <class M>
  void operator()(int64_t o, const M&) {
    if (o > row_end_) {
      finish();
      row_ = o;
      row_end_ = o + len_ - 1;
      head_ = stream_ ? static_cast<int>(min64((W - vector_phase<W>(out_ + o)) % W, len_)) : 0;
      if (head_) f_(o, head_);
      whole_ = (len_ - head_) / W;
      next_ = whole_ > 0 ? skew_ % whole_ : 0;
    }
    if (o + head_ + W > row_end_ + 1) return;
    if (skew_ == 0) {
      f_(o + head_, Full{});
      return;
    }
    f_(row_ + head_ + next_ * W, Full{});
    if (++next_ == whole_) next_ = 0;
  }
  void finish() {
    if (row_end_ < 0) return;
    const int64_t done = head_ + (len_ - head_) / W * W;
    if (done < len_) f_(row_ + done, static_cast<int>(len_ - done));
    row_end_ = -1;
  }

 private:
  const S* out_;
  int64_t len_;
  bool stream_;
  Out& f_;
  int64_t skew_;
  int64_t row_ = 0, row_end_ = -1, whole_ = 0, next_ = 0;
  int head_ = 0;
};

// ---------------------------------------------------------------------------------------------------------
// Bounded sums: U accumulators of float (or double) lanes, moved into double lanes by flush()

template <class V, int U = 2>
struct Bounded {
  typename V::reg f[U];
  alignas(64) double d[V::width] = {};
  Bounded() {
    for (int j = 0; j < U; ++j) f[j] = V::zero();
  }
  void add(int j, typename V::reg v) { f[j] = V::add(f[j], v); }
  void fma(int j, typename V::reg a, typename V::reg b) { f[j] = V::fmadd(a, b, f[j]); }
  void flush() {
    typename V::reg t = f[0];
    for (int j = 1; j < U; ++j) t = V::add(t, f[j]);
    V::add_to(d, t);
    for (int j = 0; j < U; ++j) f[j] = V::zero();
  }
  double total() {
    flush();
    double s = 0.0;
    for (int i = 0; i < V::width; ++i) s += d[i];
    return s;
  }
};

// Calls f(j, offset, m) for every vector of `rows` runs of `len` values (run r at offset r * stride), j the
// accumulator (0 to U - 1, independent chains that hide the adds' latency) and m Full or the Part of a tail;
// calls flush() whenever an accumulator may have taken kRound vectors since the last one. Inner loops run
// whole groups of U vectors with no counting: a run that fits in what is left of the round goes in one piece
// (flushing first when it would not fit, which only shortens the sums); longer runs go in segments.
template <class V, int U, class F, class G>
inline void walk(int64_t rows, int64_t len, int64_t stride, F&& f, G&& flush) {
  constexpr int W = V::width;
  constexpr int64_t step = static_cast<int64_t>(U) * W;
  const int64_t groups = len / step;
  const int singles = static_cast<int>((len / W) % U);
  const int tail_n = static_cast<int>(len % W);
  const Part<V> tail(tail_n);
  auto group = [&](int64_t q) {
    f(0, q, Full{});
    f(1, q + W, Full{});
    if constexpr (U == 4) {
      f(2, q + 2 * W, Full{});
      f(3, q + 3 * W, Full{});
    }
  };
  static_assert(U == 2 || U == 4, "walk takes 2 or 4 accumulators");
  auto rest = [&](int64_t o, int64_t i) {
    // Constant accumulator indices only: a variable one would keep the accumulators in memory.
    if (singles > 0) f(0, o + i, Full{});
    if (singles > 1) f(1, o + i + W, Full{});
    if (singles > 2) f(2, o + i + 2 * W, Full{});
    if (tail_n) f(U - 1, o + i + singles * W, tail);
  };
  int64_t cnt = 0;  // vectors any one accumulator may have taken since the last flush
  const int64_t per_run = groups + 1;
  if (per_run <= kRound) {
    for (int64_t r = 0; r < rows; ++r) {
      if (cnt + per_run > kRound) {
        flush();
        cnt = 0;
      }
      const int64_t o = r * stride, end = o + groups * step;
      for (int64_t q = o; q < end; q += step) group(q);
      rest(o, groups * step);
      cnt += per_run;
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * stride;
    int64_t i = 0;
    for (int64_t left = groups; left > 0;) {
      const int64_t seg = min64(left, kRound - cnt);
      const int64_t end = o + i + seg * step;
      for (int64_t q = o + i; q < end; q += step) group(q);
      i += seg * step;
      left -= seg;
      cnt += seg;
      if (cnt == kRound) {
        flush();
        cnt = 0;
      }
    }
    if (cnt + 1 > kRound) {
      flush();
      cnt = 0;
    }
    rest(o, i);
    ++cnt;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Moments and per-channel coefficients

struct Moments {
  double n = 0, mean = 0, m2 = 0;
};

// Chan et al.'s step: folds a part with mean mb and M2 qb into (mean, m2) of n values, f = the part's share of
// the values after it (nb / (n + nb)).
inline void chan_fold(double& mean, double& m2, double n, double f, double mb, double qb) {
  const double delta = mb - mean;
  mean += delta * f;
  m2 += qb + delta * delta * n * f;
}

// The sums of p[0, n) and of q[0, n) (a channel's positions after column sums), each in the lanes of a vector
// of doubles and then added across (hsum): n / W independent chains of adds instead of one chain of n. Added one
// by one, the 4096 positions of an 8x64x8x8 backward's 64 channels took ~3 us of its 17.
inline void lane_sums(const double* p, const double* q, int64_t n, double& s, double& t) {
  using V = Vec<double>;
  constexpr int W = V::width;
  typename V::reg a = V::zero(), b = V::zero();
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    a = V::add(a, V::load(p + i));
    b = V::add(b, V::load(q + i));
  }
  if (i < n) {  // load_first leaves the other lanes unspecified
    const int m = static_cast<int>(n - i);
    a = V::add(a, V::keep_first(m, IO<double>::load_first(p + i, m), V::zero()));
    b = V::add(b, V::keep_first(m, IO<double>::load_first(q + i, m), V::zero()));
  }
  s = V::hsum(a);
  t = V::hsum(b);
}

// Folds a part of nb values with mean mb and M2 qb into acc. The first part is copied (a delta against the empty
// mean 0 could overflow and give inf * 0).
inline void merge(Moments& acc, double nb, double mb, double qb) {
  if (acc.n == 0) {
    acc = {nb, mb, qb};
    return;
  }
  const double n = acc.n + nb;
  chan_fold(acc.mean, acc.m2, acc.n, nb / n, mb, qb);
  acc.n = n;
}

inline double inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// Forward coefficients of a channel: y = act((x - center) * sc + sh [+ residual]).
template <class C>
struct FwdCoef {
  C center, sc, sh;
};

// mean = hi + lo: x - hi is exact for x near the mean, and lo is folded into the shift, so y keeps full
// precision even when |mean| >> std.
template <class C, class P>
inline FwdCoef<C> fwd_coef(double mean, double var, const P* gamma, const P* beta, int64_t c, double eps) {
  const double g = gamma ? static_cast<double>(gamma[c]) : 1.0;
  const double b = beta ? static_cast<double>(beta[c]) : 0.0;
  const double scale = g * inv_std(var, eps);
  const C hi = static_cast<C>(mean);
  const double lo = mean - static_cast<double>(hi);
  return {hi, static_cast<C>(scale), static_cast<C>(b - lo * scale)};
}

// Backward, per element: dz = dy * act'(.) and a centred value u with xhat = kappa * u + lambda per channel.
// From x: u = x - hi (center = hi, kappa = invstd, lambda = -lo * invstd). From y: u = act^-1(y) - beta
// (center = beta, kappa = 1 / gamma, lambda = 0). Then dx = a * dz + (b * u + d).
template <class C>
struct BwdCoef {
  C center, a, b, d;
};

struct BwdChannel {
  double invstd, g, kappa, lambda;
  double center;
};

template <class S>
inline BwdChannel bwd_channel(const BackwardArgs<S>& a, int64_t c) {
  using C = compute_t<S>;
  const double invstd = inv_std(a.var[c], a.eps);
  const double g = a.gamma ? static_cast<double>(a.gamma[c]) : 1.0;
  if (a.x) {
    const C hi = static_cast<C>(a.mean[c]);
    const double lo = a.mean[c] - static_cast<double>(hi);
    return {invstd, g, invstd, -lo * invstd, static_cast<double>(hi)};
  }
  const double b = a.beta ? static_cast<double>(a.beta[c]) : 0.0;
  return {invstd, g, 1.0 / g, 0.0, b};
}

// Per-channel sums of a backward: Sdz = sum(dz), Su = sum(dz * u); finishes channel c: writes the parameter
// gradients (full and reduce phases) or the sums (reduce phase) unless !write, and returns the dx coefficients.
template <class S>
inline BwdCoef<compute_t<S>> finish_bwd(const BackwardArgs<S>& a, int64_t c, double sdz, double su,
                                        bool write = true) {
  using C = compute_t<S>;
  using P = param_t<S>;
  const BwdChannel ch = bwd_channel(a, c);
  double sxh;
  if (a.phase == Phase::apply) {
    sdz = a.sum_dy[c];
    sxh = a.sum_dy_xhat[c];
  } else {
    sxh = ch.kappa * su + ch.lambda * sdz;
    if (a.dgamma && write) a.dgamma[c] = static_cast<P>(sxh);
    if (a.dbeta && write) a.dbeta[c] = static_cast<P>(sdz);
    if (a.phase == Phase::reduce && write) {
      a.sum_dy[c] = sdz;
      a.sum_dy_xhat[c] = sxh;
    }
  }
  const double A = ch.g * ch.invstd;
  BwdCoef<C> k{static_cast<C>(ch.center), static_cast<C>(A), C(0), C(0)};
  if (a.batch_stats) {
    const double n = a.phase == Phase::apply ? a.count : static_cast<double>(a.outer * a.inner);
    k.b = static_cast<C>(-A * ch.kappa * sxh / n);
    k.d = static_cast<C>(-A * (sdz + ch.lambda * sxh) / n);
  }
  return k;
}

// ---------------------------------------------------------------------------------------------------------
// Activations: the forward, the derivative taken from the output y, and the inverse (z from y)

template <class C, Act A>
struct ActOps {
  using V = Vec<C>;
  using reg = typename V::reg;
  static inline reg fwd(reg z, reg slope) {
    if constexpr (A == Act::relu) {
      return V::max(V::zero(), z);  // max(0, NaN) is NaN
    } else if constexpr (A == Act::leaky_relu) {
      return V::select_pos(z, z, V::mul(z, slope));
    } else if constexpr (A == Act::sigmoid) {
      // t = e^-|z| never overflows; sigmoid(z) = 1 / (1 + t) for z > 0 and t / (1 + t) otherwise.
      const reg t = vexp<C>(V::sub(V::zero(), V::abs(z)));
      const reg s = V::div(V::set1(C(1)), V::add(V::set1(C(1)), t));
      return V::select_pos(z, s, V::mul(t, s));
    } else {
      (void)slope;
      return z;
    }
  }
  static inline reg deriv(reg y, reg slope) {
    if constexpr (A == Act::relu) {
      return V::select_pos(y, V::set1(C(1)), V::zero());
    } else if constexpr (A == Act::leaky_relu) {
      return V::select_pos(y, V::set1(C(1)), slope);
    } else if constexpr (A == Act::sigmoid) {
      return V::mul(y, V::sub(V::set1(C(1)), y));
    } else {
      (void)y;
      (void)slope;
      return V::set1(C(1));
    }
  }
  // Outputs saturated to exactly 0 or 1 by the sigmoid cannot be inverted; their logit is clamped to the range
  // an unsaturated output can have.
  static inline reg inverse(reg y, reg inv_slope) {
    if constexpr (A == Act::leaky_relu) {
      return V::select_pos(y, y, V::mul(y, inv_slope));
    } else if constexpr (A == Act::sigmoid) {
      constexpr C lo = sizeof(C) == 4 ? C(1.17549435e-38) : C(2.2250738585072014e-308);
      constexpr C hi = sizeof(C) == 4 ? C(16777216.0) : C(9007199254740992.0);
      const reg q = V::div(y, V::sub(V::set1(C(1)), y));
      return vlog<C>(V::min(V::set1(hi), V::max(V::set1(lo), q)));
    } else {
      (void)inv_slope;
      return y;
    }
  }
};

// ---------------------------------------------------------------------------------------------------------
// Coefficient sources of the elementwise loops: one channel (nc runs) or channels cycling along a flat run of
// whole rows (cl), read from arrays extended to C + width entries (entry j is channel j % C).

template <class C, int N>
struct Uniform {
  typename Vec<C>::reg k[N];
  typename Vec<C>::reg get(int i) const { return k[i]; }
  void advance(int64_t) {}
};

template <class C, int N>
struct Cycling {
  const C* k[N];
  int64_t C_;
  int64_t c = 0, step = Vec<C>::width % C_;
  typename Vec<C>::reg get(int i) const { return Vec<C>::load(k[i] + c); }
  void advance(int64_t m) {
    c += m == Vec<C>::width ? step : m % C_;  // a division only for heads
    if (c >= C_) c -= C_;
  }
};

// nc runs of L >= width values walked as one flat range (value e in channel (e / L) % C): channel c's
// coefficients for a vector inside its run, and for the one vector that crosses the run's end (L >= width: at
// most one end per vector) c's in its first lanes and the next channel's in the rest.
template <class C, int N>
struct RunCycling {
  using V = Vec<C>;
  static constexpr int W = V::width;
  const C* k[N];
  int64_t L, C_;
  int64_t c, pos;  // the channel of the current vector's first lane, and that lane's offset in its run
  typename V::reg cur[N], nxt[N];
  int split = W;  // lanes of the current vector in channel c
  RunCycling(const C* const* arrays, int64_t run, int64_t channels, int64_t first) : L(run), C_(channels) {
    for (int i = 0; i < N; ++i) k[i] = arrays[i];
    c = (first / L) % C_;
    pos = first % L;
    enter();
  }
  void enter() {
    for (int i = 0; i < N; ++i) cur[i] = V::set1(k[i][c]);
    look_ahead();
  }
  void look_ahead() {
    split = L - pos < W ? static_cast<int>(L - pos) : W;
    if (split < W) {
      const int64_t n = c + 1 == C_ ? 0 : c + 1;
      for (int i = 0; i < N; ++i) nxt[i] = V::set1(k[i][n]);
    }
  }
  typename V::reg get(int i) const { return split == W ? cur[i] : V::keep_first(split, cur[i], nxt[i]); }
  void advance(int64_t m) {
    pos += m;
    if (pos >= L) {  // into the next run (its coefficients are in nxt only if a vector crossed into it)
      pos -= L;
      c = c + 1 == C_ ? 0 : c + 1;
      enter();
    } else if (pos + W > L) {
      look_ahead();
    }
  }
};

// Extends per-channel coefficients (first C entries written) to C + W entries, entry j = entry j % C.
template <class T>
inline void extend_channels(T* a, int64_t C, int64_t W) {
  for (int64_t j = C; j < C + W; ++j) a[j] = a[j % C];
}

// Whether the forward's elementwise pass over channels-last rows of C values takes kRowsTogether rows at a time
// (span_rows): outputs that stream (beyond the cache), rows of whole vectors, and at least kRowsMinBytes a row.
// One process, order shuffled, 2 threads, EPYC Zen 4 VM: training of (8192, 1024) 1.09x, (4096, 2048) and
// (2048, 4096) 1.15-1.22x, inference of (2048, 4096) and (1024, 8192) 1.13-1.15x, (8192, 1024) even; rows of 2
// KiB lost (0.85-0.9x), and so did the backward's dx (rows of 4 KiB 0.85x, 8-16 KiB even), which keeps span().
constexpr int64_t kRowsMinBytes = 4096;

template <class S>
inline bool rows_together(int64_t C, bool stream) {
  return stream && C % IO<S>::width == 0 && C * static_cast<int64_t>(sizeof(S)) >= kRowsMinBytes;
}

// The output's offset within a vector where span() leaves its vectors aligned (0 when it does not stream): the
// phase at which coefficient arrays read alongside are carved (ClCoef::carve).
template <class S>
inline int span_phase(const S* out, bool stream) {
  return stream ? vector_phase<IO<S>::width>(out) : 0;
}

// span() over values whose coefficients repeat every `period` values (a multiple of the width; 0: no period),
// whole blocks of kRowsTogether periods ("rows", each starting where span's aligned vectors do) taken a vector
// of columns at a time down the block's rows: a column's coefficients are then read once a block, not once a
// row (rows_together says where that pays), and prefetch(i) is called for the values of the block kRowsAhead
// blocks on.
template <class S, class K, class F, class P>
inline void span_rows(S* out, int64_t n, int64_t period, bool stream, K& k, F&& f, P&& prefetch) {
  constexpr int W = IO<S>::width, R = kRowsTogether;
  int64_t i = 0;
  if (stream) {
    const int64_t mis = static_cast<int64_t>((reinterpret_cast<uintptr_t>(out) / sizeof(S)) % W);
    const int head = static_cast<int>(mis ? min64(W - mis, n) : 0);
    if (head) {
      put(out, f(int64_t{0}, head), head, false);
      k.advance(head);
      i = head;
    }
  }
  if (period > 0) {
    for (; i + R * period <= n; i += R * period) {
      const bool ahead = i + (kRowsAhead + 1) * R * period <= n;
      for (int64_t j = i; j < i + period; j += W) {
        if (ahead) {
          for (int r = 0; r < R; ++r) prefetch(j + (kRowsAhead * R + r) * period);
        }
        decltype(f(j, Full{})) v[R];  // every row's inputs read before any output is written: the rows' outputs
        for (int r = 0; r < R; ++r) v[r] = f(j + r * period, Full{});  // share their inputs' page offsets
        for (int r = 0; r < R; ++r) put(out + j + r * period, v[r], Full{}, stream);
        k.advance(W);
      }
    }
  }
  for (const int64_t end = n - W; i <= end; i += W) {
    put(out + i, f(i, Full{}), Full{}, stream);
    k.advance(W);
  }
  if (i < n) put(out + i, f(i, static_cast<int>(n - i)), static_cast<int>(n - i), false);
}

// Runs f(i, m) -> reg over [0, n) and writes each result to out (+ i), peeling a head to the vector alignment
// that streaming stores need; k advances along. f also gets Full or the lanes of a head/tail.
template <class S, class K, class F>
inline void span(S* out, int64_t n, bool stream, K& k, F&& f) {
  span_rows(out, n, 0, stream, k, f, [](int64_t) {});
}

// ---------------------------------------------------------------------------------------------------------
// Forward elementwise: y = act((x - center) * sc + sh [+ r])

// The output at x + i (m: Full or a count of lanes) with the coefficients center, sc, sh and the slope sl.
template <class S, Act A, class M, class R = typename Vec<compute_t<S>>::reg>
inline R fwd_value(const S* x, const S* r, int64_t i, const M& m, R center, R sc, R sh, R sl) {
  R z = Vec<compute_t<S>>::fmadd(Vec<compute_t<S>>::sub(ld(x + i, m), center), sc, sh);
  if (r) z = Vec<compute_t<S>>::add(z, ld(r + i, m));
  return ActOps<compute_t<S>, A>::fwd(z, sl);
}

// The channels-last forward within the caches (outputs not streamed, nothing prefetched): span in a function of its
// own, where only its plain loop remains. Inlined into fwd_flat_cl with span_rows' other loops, GCC 12 kept the
// coefficient pointers and the cycle's step and length on the stack and reloaded five of them every vector; here
// they stay in registers. 2-vCPU Xeon VM, ~1.1 G dependent adds a second per core, where such passes are bound by
// instructions (processes alternating, five each, medians of 40 x 20 calls, one thread): inference 32x64x8x8
// channels-last 105 -> 69 us, 16x512x5x5 190 -> 130 us, 64x256x7x7 810 -> 580 us; training 120 -> 85, 254 -> 162,
// 1076 -> 860 us.
template <class S, Act A, class K>
__attribute__((noinline)) void fwd_cached(const S* x, const S* r, S* y, int64_t n, K k, compute_t<S> slope) {
  const typename Vec<compute_t<S>>::reg sl = Vec<compute_t<S>>::set1(slope);
  span(y, n, false, k,
       [&](int64_t i, auto m) { return fwd_value<S, A>(x, r, i, m, k.get(0), k.get(1), k.get(2), sl); });
}

template <class S, Act A, class K>
inline void fwd_span(const S* x, const S* r, S* y, int64_t n, bool stream, K& k, compute_t<S> slope,
                     const S* pf = nullptr, int64_t period = 0) {
  using V = Vec<compute_t<S>>;
  if constexpr (std::is_same_v<K, Cycling<compute_t<S>, 3>>) {
    if (!stream && !pf && period == 0) {
      fwd_cached<S, A>(x, r, y, n, k, slope);
      return;
    }
  }
  const typename V::reg sl = V::set1(slope);
  span_rows(
      y, n, period, stream, k,
      [&](int64_t i, auto m) {
        if (pf) __builtin_prefetch(pf + i, 0, 2);
        return fwd_value<S, A>(x, r, i, m, k.get(0), k.get(1), k.get(2), sl);
      },
      [&](int64_t i) {
        __builtin_prefetch(x + i, 0, 2);
        if (r) __builtin_prefetch(r + i, 0, 2);
      });
}

// Where an output run streams but starts or ends inside a line, span() writes that line's part with an ordinary
// store between streamed lines, and the store waits for the line from memory: two waits per run, which dominated
// runs of a few lines (NumPy leaves large arrays 16 bytes into a line). Prefetched for writing a block at a time,
// before its runs, those lines are in cache when written. Only where a vector is a line (AVX-512, float and
// double): there the partial vectors are the partial lines, and no streamed store meets a line brought in here.
// Two builds, processes alternating (3 pairs, 5 rounds each, float32 NumPy arrays 16 bytes into a line, 2 threads,
// 2-vCPU Xeon VM), fraction of a streaming copy: training 64x128x28x28 0.71-0.73 -> 0.84-0.86, 32x256x28x28
// 0.71-0.74 -> 0.91-0.93, 256x126x16x16 0.42-0.45 -> 0.57-0.60 (on a line: 0.88-1.12 either way); backward, of the
// 3S stream, 32x256x28x28 0.67-0.71 -> 0.74-0.75, 256x126x16x16 0.49-0.54 -> 0.53-0.55; 56x56 and NCL 1024 even.
template <class S>
inline void prefetch_partial_lines(S* out, int64_t stride, int64_t rows, int64_t len) {
  if constexpr (IO<S>::width * sizeof(S) == kLineBytes) {
    for (int64_t o = 0; o < rows; ++o) {
      S* const p = out + o * stride;
      if (reinterpret_cast<uintptr_t>(p) % kLineBytes) __builtin_prefetch(p, 1, 3);
      if (reinterpret_cast<uintptr_t>(p + len) % kLineBytes) __builtin_prefetch(p + len - 1, 1, 3);
    }
  }
}

// `rows` runs of `len` values at stride `stride`, one channel.
template <class S>
struct FwdBlock {
  const S* x;
  const S* r;
  S* y;
  int64_t stride, rows, len;
  FwdCoef<compute_t<S>> k;
  compute_t<S> slope;
  bool stream;
  const S* pf = nullptr;  // a block of the same geometry to prefetch meanwhile (the next statistics pass's)
};

template <class S, Act A>
void fwd_block_nc(const FwdBlock<S>& b) {
  using C = compute_t<S>;
  Uniform<C, 3> k{{Vec<C>::set1(b.k.center), Vec<C>::set1(b.k.sc), Vec<C>::set1(b.k.sh)}};
  if (b.stream) prefetch_partial_lines(b.y, b.stride, b.rows, b.len);
  for (int64_t o = 0; o < b.rows; ++o) {
    const int64_t q = o * b.stride;
    fwd_span<S, A>(b.x + q, b.r ? b.r + q : nullptr, b.y + q, b.len, b.stream, k, b.slope, b.pf ? b.pf + q : nullptr);
  }
}

// n values of whole rows (starting at channel 0); coefficient arrays extended.
template <class S>
struct FwdFlat {
  const S* x;
  const S* r;
  S* y;
  int64_t n, C;
  const compute_t<S>* center;
  const compute_t<S>* sc;
  const compute_t<S>* sh;
  compute_t<S> slope;
  bool stream;
  const S* pf = nullptr;  // values of the same geometry to prefetch meanwhile (the next group's, train_nc_flat)
};

template <class S, Act A>
void fwd_flat_cl(const FwdFlat<S>& b) {
  using C = compute_t<S>;
  Cycling<C, 3> k{{b.center, b.sc, b.sh}, b.C};
  fwd_span<S, A>(b.x, b.r, b.y, b.n, b.stream, k, b.slope, b.pf, rows_together<S>(b.C, b.stream) ? b.C : 0);
}

// n values of nc runs of L >= width values from value `first` of the tensor (see RunCycling); x, r and y point
// at that value, the coefficient arrays hold C entries.
template <class S>
struct FwdRuns {
  const S* x;
  const S* r;
  S* y;
  int64_t n, first, L, C;
  const compute_t<S>* k[3];
  compute_t<S> slope;
  bool stream;
};

template <class S, Act A>
void fwd_runs_nc(const FwdRuns<S>& b) {
  RunCycling<compute_t<S>, 3> k(b.k, b.L, b.C, b.first);
  fwd_span<S, A>(b.x, b.r, b.y, b.n, b.stream, k, b.slope);
}

template <class S>
struct FwdFns {
  void (*nc)(const FwdBlock<S>&);
  void (*cl)(const FwdFlat<S>&);
  void (*runs)(const FwdRuns<S>&);
};

template <class S, Act A>
constexpr FwdFns<S> fwd_fns_of() {
  return {&fwd_block_nc<S, A>, &fwd_flat_cl<S, A>, &fwd_runs_nc<S, A>};
}

template <class S>
FwdFns<S> fwd_fns(Act a) {
  switch (a) {
    case Act::relu:
      return fwd_fns_of<S, Act::relu>();
    case Act::leaky_relu:
      return fwd_fns_of<S, Act::leaky_relu>();
    case Act::sigmoid:
      return fwd_fns_of<S, Act::sigmoid>();
    default:
      return fwd_fns_of<S, Act::none>();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward elementwise and reductions

// dz and u of the vector at i; `center` is the channel's (see BwdCoef).
template <class S, Act A, bool kFromY, class M>
inline void bwd_elem(const S* dy, const S* x, const S* y, int64_t i, M m, typename Vec<compute_t<S>>::reg center,
                     typename Vec<compute_t<S>>::reg slope, typename Vec<compute_t<S>>::reg inv_slope,
                     typename Vec<compute_t<S>>::reg& dz, typename Vec<compute_t<S>>::reg& u) {
  using C = compute_t<S>;
  using V = Vec<C>;
  using Ops = ActOps<C, A>;
  dz = ld(dy + i, m);
  typename V::reg yv = V::zero();
  if constexpr (A != Act::none || kFromY) yv = ld(y + i, m);
  if constexpr (A != Act::none) dz = V::mul(dz, Ops::deriv(yv, slope));
  if constexpr (kFromY) {
    u = V::sub(Ops::inverse(yv, inv_slope), center);
  } else {
    u = V::sub(ld(x + i, m), center);
  }
}

// Prefetches into L2 the line at i of each input of the backward.
template <class S, Act A, bool kFromY>
inline void prefetch_inputs(const S* dy, const S* x, const S* y, int64_t i) {
  __builtin_prefetch(dy + i, 0, 2);
  if constexpr (A != Act::none || kFromY) __builtin_prefetch(y + i, 0, 2);
  if constexpr (!kFromY) __builtin_prefetch(x + i, 0, 2);
}

template <class S>
struct BwdSums {
  const S* dy;
  const S* x;
  const S* y;
  int64_t stride, rows, len;
  compute_t<S> center, slope, inv_slope;
  int64_t pf = 0;  // where the next block to read starts, from this one (0: prefetch nothing)
};

// Sdz and Su over a block of runs of one channel; also(o, m) runs with each vector (see bwd_block_with_sums).
template <class S, Act A, bool kFromY, class G = NoHook>
inline void bwd_block_sums(const BwdSums<S>& b, double& sdz, double& su, G&& also = {}) {
  using C = compute_t<S>;
  using V = Vec<C>;
  const typename V::reg center = V::set1(b.center), sl = V::set1(b.slope), isl = V::set1(b.inv_slope);
  Bounded<V> g, h;
  walk<V, 2>(
      b.rows, b.len, b.stride,
      [&](int j, int64_t o, auto m) {
        if (b.pf) prefetch_inputs<S, A, kFromY>(b.dy, b.x, b.y, o + b.pf);
        also(o, m);
        typename V::reg dz, u;
        bwd_elem<S, A, kFromY>(b.dy, b.x, b.y, o, m, center, sl, isl, dz, u);
        dz = keep<V>(m, dz, V::zero());
        u = keep<V>(m, u, V::zero());
        g.add(j, dz);
        h.fma(j, dz, u);
      },
      [&] {
        g.flush();
        h.flush();
      });
  sdz = g.total();
  su = h.total();
}

template <class S, Act A, bool kFromY>
void bwd_sums_nc(const BwdSums<S>& b, double& sdz, double& su) {
  bwd_block_sums<S, A, kFromY>(b, sdz, su);
}

// Whether dres streams beside a streaming dx: span() aligns dx for streaming stores, and dres goes in the same
// pieces, so only if it has the same offset within a vector.
template <class S>
inline bool dres_streams(const S* dx, const S* dres, bool stream) {
  constexpr uintptr_t kVecBytes = IO<S>::width * sizeof(S);
  return stream && dres && (reinterpret_cast<uintptr_t>(dres) - reinterpret_cast<uintptr_t>(dx)) % kVecBytes == 0;
}

// dx of the vector at i from the coefficients k (see BwdCoef: center, a, b, d; scale only: dz * a), writing dz to
// dres if there is one.
template <class S, Act A, bool kFromY, bool kScaleOnly, class M, class K>
inline typename Vec<compute_t<S>>::reg bwd_value(const S* dy, const S* x, const S* y, S* dres, int64_t i, M m,
                                                  bool stream_dres, const K& k, typename Vec<compute_t<S>>::reg sl,
                                                  typename Vec<compute_t<S>>::reg isl) {
  using C = compute_t<S>;
  using V = Vec<C>;
  typename V::reg dz, u;
  if constexpr (kScaleOnly) {
    dz = ld(dy + i, m);
    if constexpr (A != Act::none) dz = V::mul(dz, ActOps<C, A>::deriv(ld(y + i, m), sl));
    u = V::zero();
  } else {
    bwd_elem<S, A, kFromY>(dy, x, y, i, m, k.get(0), sl, isl, dz, u);
  }
  if (dres) put(dres + i, dz, m, stream_dres);
  if constexpr (kScaleOnly) {
    return V::mul(dz, k.get(1));
  } else {
    return V::fmadd(k.get(1), dz, V::fmadd(k.get(2), u, k.get(3)));
  }
}

template <class S, Act A, bool kFromY, bool kScaleOnly, class K>
inline void bwd_span(const S* dy, const S* x, const S* y, S* dx, S* dres, int64_t n, bool stream, K& k,
                     compute_t<S> slope, compute_t<S> inv_slope, int64_t pf = 0) {
  using V = Vec<compute_t<S>>;
  const typename V::reg sl = V::set1(slope), isl = V::set1(inv_slope);
  const bool stream_dres = dres_streams(dx, dres, stream);
  span(dx, n, stream, k, [&](int64_t i, auto m) {
    if (pf) prefetch_inputs<S, A, kFromY>(dy, x, y, i + pf);
    return bwd_value<S, A, kFromY, kScaleOnly>(dy, x, y, dres, i, m, stream_dres, k, sl, isl);
  });
}

template <class S>
struct BwdBlock {
  const S* dy;
  const S* x;
  const S* y;
  S* dx;
  S* dres;
  int64_t stride, rows, len;
  BwdCoef<compute_t<S>> k;
  compute_t<S> slope, inv_slope;
  bool stream;
  int64_t pf = 0;  // where a block of the same geometry to prefetch meanwhile starts, from this one
};

template <class S, Act A, bool kFromY, bool kScaleOnly>
void bwd_block_nc(const BwdBlock<S>& b) {
  using C = compute_t<S>;
  using V = Vec<C>;
  Uniform<C, 4> k{{V::set1(b.k.center), V::set1(b.k.a), V::set1(b.k.b), V::set1(b.k.d)}};
  if (b.stream) {
    prefetch_partial_lines(b.dx, b.stride, b.rows, b.len);
    if (b.dres) prefetch_partial_lines(b.dres, b.stride, b.rows, b.len);
  }
  for (int64_t o = 0; o < b.rows; ++o) {
    const int64_t q = o * b.stride;
    bwd_span<S, A, kFromY, kScaleOnly>(b.dy + q, b.x ? b.x + q : nullptr, b.y ? b.y + q : nullptr, b.dx + q,
                                        b.dres ? b.dres + q : nullptr, b.len, b.stream, k, b.slope, b.inv_slope, b.pf);
  }
}

// The backward pipelines' step: dx of block b and the sums of the block of the same geometry in the next channel
// (read from memory; `next`) in one loop, a vector of dx with each vector of the sums, so that the reads from
// memory and the streaming writes interleave as in the 3S stream rather than block by block (as the training
// forward's pipeline step, fwd_block_with_moments). The sums are bwd_sums_nc's bits, dx bwd_block_nc's.
template <class S, Act A, bool kFromY>
FASTBN_FLATTEN void bwd_block_with_sums(const BwdBlock<S>& b, const BwdSums<S>& next, double& sdz, double& su) {
  using C = compute_t<S>;
  using V = Vec<C>;
  constexpr int W = IO<S>::width;
  const Uniform<C, 4> k{{V::set1(b.k.center), V::set1(b.k.a), V::set1(b.k.b), V::set1(b.k.d)}};
  const typename V::reg sl = V::set1(b.slope), isl = V::set1(b.inv_slope);
  const S* const dy = b.dy;  // locals: the stores through dx could alias b
  const S* const x = b.x;
  const S* const y = b.y;
  S* const dx = b.dx;
  S* const dres = b.dres;
  const bool stream = b.stream, stream_dres = dres_streams(dx, dres, stream);
  auto out = [&](int64_t o, auto m) {
    put(dx + o, bwd_value<S, A, kFromY, false>(dy, x, y, dres, o, m, stream_dres, k, sl, isl), m, stream);
  };
  RowPieces<W, S, decltype(out)> pieces(dx, b.len, stream, out);
  if (stream) {
    prefetch_partial_lines(dx, b.stride, b.rows, b.len);
    if (dres) prefetch_partial_lines(dres, b.stride, b.rows, b.len);
  }
  bwd_block_sums<S, A, kFromY>(next, sdz, su, pieces);
  pieces.finish();
}

template <class S>
struct BwdFlat {
  const S* dy;
  const S* x;
  const S* y;
  S* dx;
  S* dres;
  int64_t n, C;
  const compute_t<S>* center;
  const compute_t<S>* a;
  const compute_t<S>* b;
  const compute_t<S>* d;
  compute_t<S> slope, inv_slope;
  bool stream;
  int64_t pf = 0;  // where values of the same geometry to prefetch meanwhile start, from these (the next group's)
};

template <class S, Act A, bool kFromY, bool kScaleOnly>
void bwd_flat_cl(const BwdFlat<S>& f) {
  using C = compute_t<S>;
  Cycling<C, 4> k{{f.center, f.a, f.b, f.d}, f.C};
  bwd_span<S, A, kFromY, kScaleOnly>(f.dy, f.x, f.y, f.dx, f.dres, f.n, f.stream, k, f.slope, f.inv_slope, f.pf);
}

// n values of nc runs of L >= width values from value `first` of the tensor (see RunCycling); the arrays point at
// that value, the coefficient arrays hold C entries.
template <class S>
struct BwdRuns {
  const S* dy;
  const S* x;
  const S* y;
  S* dx;
  S* dres;
  int64_t n, first, L, C;
  const compute_t<S>* k[4];
  compute_t<S> slope, inv_slope;
  bool stream;
};

template <class S, Act A, bool kFromY, bool kScaleOnly>
void bwd_runs_nc(const BwdRuns<S>& f) {
  RunCycling<compute_t<S>, 4> k(f.k, f.L, f.C, f.first);
  bwd_span<S, A, kFromY, kScaleOnly>(f.dy, f.x, f.y, f.dx, f.dres, f.n, f.stream, k, f.slope, f.inv_slope);
}

// Channels-last sums of a tile: for the channels [c0, c0 + G * W) (the last group possibly m < W lanes),
// adds sum(dz) and sum(dz * u) over `rows` rows (row r at r * stride) into g and h (double, one entry per channel).
template <class S, Act A, bool kFromY, int G, class M>
inline void bwd_group_cl(const S* dy, const S* x, const S* y, int64_t rows, int64_t stride,
                         const compute_t<S>* center, compute_t<S> slope, compute_t<S> inv_slope, M m, double* g_out,
                         double* h_out) {
  using V = Vec<compute_t<S>>;
  constexpr int W = V::width;
  typename V::reg ce[G], g[G], h[G];
  const typename V::reg sl = V::set1(slope), isl = V::set1(inv_slope);
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) {
    ce[j] = V::load(center + j * W);
    g[j] = h[j] = V::zero();
  }
  auto flush = [&] {
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) {
      V::add_to(g_out + j * W, g[j]);
      V::add_to(h_out + j * W, h[j]);
      g[j] = h[j] = V::zero();
    }
  };
  int cnt = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * stride;
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) {
      typename V::reg dz, u;
      bwd_elem<S, A, kFromY>(dy, x, y, o + j * W, m, ce[j], sl, isl, dz, u);
      dz = keep<V>(m, dz, V::zero());
      u = keep<V>(m, u, V::zero());
      g[j] = V::add(g[j], dz);
      h[j] = V::fmadd(dz, u, h[j]);
    }
    if (++cnt == kRound) {
      flush();
      cnt = 0;
    }
  }
  flush();
}

// Column sums of C columns of rows `stride` apart beyond the cache (channels-last rows: stride C; a channel group's
// positions in short-run nc samples: stride C * L), read R rows at a time (kRowsTogether; the backward's sums
// kSumsRowsTogether): each vector of columns down those rows, its float sums kept in a panel of up to kPanel columns
// (on the stack, in L1) in between and added into s1 and s2 (double) every kRound rows, so that each lane takes the
// operations of the group walks (shifted_group_cl, bwd_group_cl) in the same order: the same bits (for any R). elem(o,
// k, lanes, p, q) gives the value at offset o as the pair (p, q) of s1 += p, s2 += p * q, with k = col(c) for its
// vector of columns (a shift or a center, loaded once for the rows of a block). The rows kRowsAhead blocks on (of the
// `avail` rows from the first) are prefetched (prefetch(o) per vector). Reading a chunk of rows one group of G vectors
// down the whole chunk at a time (512 bytes of a row, the next row 1-16 KiB on) cost twice a read in order on the EPYC
// Zen 4 VM (a micro-benchmark, 32 MiB beyond the cache, 2 threads: 2.3-3.3 ms for rows of 256 to 4096 floats against
// 1.1-1.5; this walk 1.1-1.3). In the kernels, one process, order shuffled, against the group walk: statistics of
// 32768x256, 16384x512, 8192x1024, 2048x4096 1.2-2.2x faster at 2 threads; training of 50176x256, 8192x1024, 32768x512
// 1.19-1.27x (1.31-1.46x on one thread); backward 1.11-1.17x (1.15-1.33x), its local sums alone
// (batch_norm_backward_reduce) 1.21-1.28x.
template <class S, int R = kRowsTogether, class M, class Col, class Elem, class Prefetch>
inline void rows_column_sums(int64_t rows, int64_t avail, int64_t C, int64_t stride, M m, Col&& col, Elem&& elem,
                             Prefetch&& prefetch, double* s1, double* s2) {
  using Cp = compute_t<S>;
  using V = Vec<Cp>;
  constexpr int W = V::width;
  constexpr int64_t kPanel = 8192 / static_cast<int64_t>(sizeof(Cp));
  alignas(64) Cp ga[kPanel], ha[kPanel];
  for (int64_t c0 = 0; c0 < C; c0 += kPanel) {
    const int64_t pc = min64(kPanel, C - c0), cv = c0 + pc / W * W, pw = round_up(pc, W);
    const int tail = static_cast<int>(c0 + pc - cv);
    auto step = [&](int64_t r, auto n, int64_t c, auto lanes) {
      const typename V::reg k = col(c);
      typename V::reg g = V::load(ga + (c - c0)), h = V::load(ha + (c - c0));
      for (int64_t i = 0; i < n; ++i) {
        typename V::reg p, q;
        elem((r + i) * stride + c, k, lanes, p, q);
        g = V::add(g, p);
        h = V::fmadd(p, q, h);
      }
      V::store(ga + (c - c0), g);
      V::store(ha + (c - c0), h);
    };
    for (int64_t r0 = 0; r0 < rows; r0 += kRound) {
      const int64_t end = min64(rows, r0 + kRound);
      std::fill(ga, ga + pw, Cp(0));
      std::fill(ha, ha + pw, Cp(0));
      int64_t r = r0;
      for (; r + R <= end; r += R) {
        const bool ahead = r + (kRowsAhead + 1) * R <= avail;
        for (int64_t c = c0; c < cv; c += W) {
          if (ahead) {
            for (int i = 0; i < R; ++i) prefetch((r + kRowsAhead * R + i) * stride + c);
          }
          step(r, std::integral_constant<int, R>{}, c, m);
        }
        if (tail) step(r, std::integral_constant<int, R>{}, cv, tail);
      }
      for (; r < end; ++r) {
        for (int64_t c = c0; c < cv; c += W) step(r, 1, c, m);
        if (tail) step(r, 1, cv, tail);
      }
      for (int64_t c = 0; c < pw; c += W) {
        V::add_to(s1 + c0 + c, V::load(ga + c));
        V::add_to(s2 + c0 + c, V::load(ha + c));
      }
    }
  }
}

// Sums over `rows` rows (row r at r * stride) of the C columns of each, one entry per column in g and h (centers
// per column): channels-last tiles (stride C), and the positions of short-run NCHW tensors (stride C * L).
// `phased`: whole vectors off a vector boundary are read as Phased (see with_phase; tensors beyond the cache), and
// rows of several column groups are read by rows_column_sums.
template <class S, Act A, bool kFromY>
void bwd_sums_cl(const S* dy, const S* x, const S* y, int64_t rows, int64_t avail, int64_t C, int64_t stride,
                 const compute_t<S>* center, compute_t<S> slope, compute_t<S> inv_slope, double* g, double* h,
                 bool phased) {
  constexpr int W = Vec<compute_t<S>>::width;
#if defined(FASTBN_ISA_AVX512)
  constexpr int kG = 8;  // 2 * 8 accumulators + 8 centers of the 32 vector registers
#else
  constexpr int kG = 4;
#endif
  auto at = [](const S* p, int64_t c) { return p ? p + c : nullptr; };
  const int phase =
      phased ? column_phase(stride, dy, kFromY ? nullptr : x, A != Act::none || kFromY ? y : nullptr) : 0;
  if (phased && C > kG * W) {
    using V = Vec<compute_t<S>>;
    const typename V::reg sl = V::set1(slope), isl = V::set1(inv_slope);
    with_phase<S>(phase, Full{}, [&](auto m) {
      rows_column_sums<S, kSumsRowsTogether>(
          rows, avail, C, stride, m, [&](int64_t c) { return V::load(center + c); },
          [&](int64_t o, typename V::reg ce, auto lanes, typename V::reg& dz, typename V::reg& u) {
            bwd_elem<S, A, kFromY>(dy, x, y, o, lanes, ce, sl, isl, dz, u);
            dz = keep<V>(lanes, dz, V::zero());
            u = keep<V>(lanes, u, V::zero());
          },
          [&](int64_t o) { prefetch_inputs<S, A, kFromY>(dy, x, y, o); }, g, h);
    });
    return;
  }
  for_column_groups<kG, W>(C, [&](auto gr, int64_t c, auto m) {
    with_phase<S>(phase, m, [&](auto lanes) {
      bwd_group_cl<S, A, kFromY, decltype(gr)::value>(dy + c, at(x, c), at(y, c), rows, stride, center + c, slope,
                                                      inv_slope, lanes, g + c, h + c);
    });
  });
}

template <class S>
struct BwdFns {
  void (*sums_nc)(const BwdSums<S>&, double&, double&);
  void (*sums_cl)(const S*, const S*, const S*, int64_t, int64_t, int64_t, int64_t, const compute_t<S>*, compute_t<S>,
                  compute_t<S>, double*, double*, bool);
  void (*block_nc)(const BwdBlock<S>&);
  void (*flat_cl)(const BwdFlat<S>&);
  void (*scale_block_nc)(const BwdBlock<S>&);
  void (*scale_flat_cl)(const BwdFlat<S>&);
  void (*runs_nc)(const BwdRuns<S>&);
  void (*scale_runs_nc)(const BwdRuns<S>&);
  void (*block_with_sums_nc)(const BwdBlock<S>&, const BwdSums<S>&, double&, double&);
};

template <class S, Act A, bool kFromY>
BwdFns<S> bwd_fns_of() {
  return {&bwd_sums_nc<S, A, kFromY>,        &bwd_sums_cl<S, A, kFromY>,        &bwd_block_nc<S, A, kFromY, false>,
          &bwd_flat_cl<S, A, kFromY, false>, &bwd_block_nc<S, A, kFromY, true>, &bwd_flat_cl<S, A, kFromY, true>,
          &bwd_runs_nc<S, A, kFromY, false>, &bwd_runs_nc<S, A, kFromY, true>, &bwd_block_with_sums<S, A, kFromY>};
}

// ReLU is not invertible: the front never asks for it from y.
template <class S>
BwdFns<S> bwd_fns(Act a, bool from_y) {
  switch (a) {
    case Act::relu:
      return bwd_fns_of<S, Act::relu, false>();
    case Act::leaky_relu:
      return from_y ? bwd_fns_of<S, Act::leaky_relu, true>() : bwd_fns_of<S, Act::leaky_relu, false>();
    case Act::sigmoid:
      return from_y ? bwd_fns_of<S, Act::sigmoid, true>() : bwd_fns_of<S, Act::sigmoid, false>();
    default:
      return from_y ? bwd_fns_of<S, Act::none, true>() : bwd_fns_of<S, Act::none, false>();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Statistics of blocks

// Sums of a block again, in double and scaled by a power of two: for the rare block whose float squares
// overflow although its variance is representable.
template <class S>
inline void moments_scaled(const S* p, int64_t stride, int64_t rows, int64_t len, double k, double& mean,
                           double& m2) {
  double mx = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < len; ++i) mx = std::fmax(mx, std::fabs(static_cast<double>(load1(p + r * stride + i)) - k));
  }
  const double n = static_cast<double>(rows * len);
  if (!(mx > 0) || !std::isfinite(mx)) {
    mean = mx == 0 ? k : k + mx;  // a constant block; or an infinite spread, which makes the variance infinite
    m2 = mx == 0 ? 0.0 : mx * mx;
    return;
  }
  const int e = std::ilogb(mx);
  double s = 0, q = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < len; ++i) {
      const double d = std::scalbn(static_cast<double>(load1(p + r * stride + i)) - k, -e);
      s += d;
      q += d * d;
    }
  }
  mean = k + std::scalbn(s / n, e);
  m2 = std::scalbn(std::fmax(q - s * s / n, 0.0), 2 * e);
}

// Sums of the deviations from k of `rows` runs of `len` values, and of their squares, in four independent
// chains (so that the pass goes at the cache's speed rather than the adds' latency); also(o, m) runs with each
// vector (see block_moments).
template <class S, class G = NoHook>
inline void shifted_sums(const S* p, int64_t stride, int64_t rows, int64_t len, compute_t<S> k, double& s,
                         double& sq, int64_t pf = 0, G&& also = {}) {
  using V = Vec<compute_t<S>>;
  const typename V::reg kv = V::set1(k);
  Bounded<V, 4> a, q;
  walk<V, 4>(
      rows, len, stride,
      [&](int j, int64_t o, auto m) {
        if (pf) __builtin_prefetch(p + o + pf, 0, 2);
        also(o, m);
        const typename V::reg d = keep<V>(m, V::sub(ld(p + o, m), kv), V::zero());
        a.add(j, d);
        q.fma(j, d, d);
      },
      [&] {
        a.flush();
        q.flush();
      });
  s = a.total();
  sq = q.total();
}

// Mean and M2 from the shifted sums of n values (see block_moments); false where the block's squares overflowed
// float although the values are finite (the caller sums it again, scaled).
inline bool moments_from_sums(double n, double k, double s, double sq, double& mean, double& m2) {
  if (!std::isfinite(sq) && std::isfinite(s + k)) return false;
  const double d = s / n;
  mean = k + d;
  m2 = std::fma(-s, d, sq);
  if (m2 < 0) m2 = 0;  // rounding; NaN passes through
  return true;
}

// The fast path's test (see block_moments): the sums with shift k give mean and M2 when |mean - k| <= std.
inline bool moments_if_close(double n, double k, double s, double sq, double& mean, double& m2) {
  return std::isfinite(k) && sq <= 2 * std::fma(-s, s / n, sq) && moments_from_sums(n, k, s, sq, mean, m2);
}

// The mean of the first min(len, width) values at p: a block's guess at its shift (exact for a constant block).
template <class S>
inline compute_t<S> first_vector_mean(const S* p, int64_t len) {
  const int64_t w = min64(len, Vec<compute_t<S>>::width);
  double f = 0;
  for (int64_t i = 0; i < w; ++i) f += static_cast<double>(load1(p + i));
  return static_cast<compute_t<S>>(f / static_cast<double>(w));  // a mean of values of compute_t<S>: in range
}

// The careful path of block_moments (see there): pass 1 finds the shift from bounded sums of the values, pass 2
// sums the deviations from it; a block whose squares overflow float is summed again in double, scaled.
template <class S>
inline void careful_moments(const S* p, int64_t stride, int64_t rows, int64_t len, double& mean, double& m2) {
  using C = compute_t<S>;
  using V = Vec<C>;
  const double n = static_cast<double>(rows * len);
  Bounded<V, 4> s1;
  walk<V, 4>(
      rows, len, stride, [&](int j, int64_t o, auto m) { s1.add(j, ld(p + o, m)); },  // ld zeroes a tail's lanes
      [&] { s1.flush(); });
  const double kd = s1.total() / n;
  // Overflowed (or inf/NaN in the block): shift by the first value instead.
  const C k = std::fabs(kd) <= static_cast<double>(std::numeric_limits<C>::max()) ? static_cast<C>(kd) : load1(p);
  double s, sq;
  shifted_sums(p, stride, rows, len, k, s, sq);
  if (!moments_from_sums(n, static_cast<double>(k), s, sq, mean, m2)) {
    moments_scaled(p, stride, rows, len, static_cast<double>(k), mean, m2);
  }
}

// Mean and M2 of `rows` runs of `len` values (run r at p + r * stride), in one pass where it can; pf != 0
// prefetches the block at p + pf meanwhile (the next one this thread reads).
// The sums of x - k and (x - k)^2 lose precision with the ratio sq / m2 = 1 + d^2 / var, d = mean - k, so k should
// lie near the mean. The fast path takes k from the block's first vector and sums once, which accepts the result
// when sq <= 2 m2 (|d| <= std: at most twice the rounding of a perfect shift). Otherwise (a first vector far out,
// as in sorted data; an overflow; inf or NaN) the block, now in cache, takes the careful path: pass 1 finds k
// from bounded sums of the values (within kRound float roundings of |x|, about 2e-6 relative: for |mean|/std up
// to 1e5 that is within 0.2 std), pass 2 sums the deviations from it. Always taking both passes cost a third more
// work per value and left memory idle during the second: statistics alone, paired on the EPYC VM, 2 threads,
// were 1.5x slower on tensors in the last-level cache (32x256x28x28, 16x128x20x20), 1.02-1.12x on larger ones.
// A constant block still comes out exact: its deviations are all the same d = c - k (exact, as k is c or close
// to it), so s = n d and sq = n d^2 are exact, s / n = d, k + d = c and the fma gives m2 = 0.
//
// also(o, m) runs with each vector of the first pass, at offset o (m: Full or a tail's Part): the pipelines
// normalize a block of the previous channel of the same geometry there (see fwd_block_with_moments), so that
// reads from memory and writes interleave vector by vector, as in a copy.
template <class S, class G = NoHook>
inline void block_moments(const S* p, int64_t stride, int64_t rows, int64_t len, double& mean, double& m2,
                          int64_t pf = 0, G&& also = {}) {
  using C = compute_t<S>;
  const double n = static_cast<double>(rows * len);
  const C k = first_vector_mean(p, len);
  double s, sq;
  shifted_sums(p, stride, rows, len, k, s, sq, pf, also);
  if (!moments_if_close(n, k, s, sq, mean, m2)) careful_moments(p, stride, rows, len, mean, m2);
}

// The pipelines' step: normalizes block b and takes the moments of the block of the same geometry `next` values
// on (the next channel's, read from memory) in one loop, a vector of output with each vector of moments, so that
// the reads from memory and the streaming writes interleave as in a copy rather than block by block. The moments
// are block_moments' bits; the output goes in the pieces span() would cut (RowPieces).
template <class S, Act A>
FASTBN_FLATTEN void fwd_block_with_moments(const FwdBlock<S>& b, int64_t next, double& mean, double& m2, int64_t pf,
                                           int64_t skew = 0) {
  using C = compute_t<S>;
  using V = Vec<C>;
  constexpr int W = IO<S>::width;
  const typename V::reg center = V::set1(b.k.center), sc = V::set1(b.k.sc), sh = V::set1(b.k.sh);
  const typename V::reg sl = V::set1(b.slope);
  const S* const x = b.x;  // locals: the stores through y could alias b, and b's fields would be read per vector
  const S* const res = b.r;
  S* const y = b.y;
  const bool stream = b.stream;
  const int64_t len = b.len;
  auto out = [&](int64_t o, auto m) { put(y + o, fwd_value<S, A>(x, res, o, m, center, sc, sh, sl), m, stream); };
  RowPieces<W, S, decltype(out)> pieces(y, len, stream, out, skew);
  if (stream) prefetch_partial_lines(y, b.stride, b.rows, len);
  block_moments(x + next, b.stride, b.rows, len, mean, m2, pf, pieces);
  pieces.finish();
}

// Adds sum(x - k) and sum((x - k)^2) over `rows` rows (row r at x + r * stride) of the columns [0, G * W) (the
// last vector m lanes) into s1 and s2 (double, one entry per column), with the shifts k0 (one per column). With
// ahead > 0, each row's lines `ahead` rows on (within `rows`) are prefetched into L2.
template <class S, int G, class M>
inline void shifted_group_cl(const S* x, int64_t rows, int64_t stride, M m, const typename Vec<compute_t<S>>::reg* k0,
                             double* s1, double* s2, int64_t ahead = 0) {
  using V = Vec<compute_t<S>>;
  constexpr int W = V::width;
  constexpr int kLine = W * static_cast<int>(sizeof(S)) >= 64 ? 1 : 64 / (W * static_cast<int>(sizeof(S)));
  typename V::reg u[G], q[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) u[g] = q[g] = V::zero();
  int cnt = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const S* p = x + r * stride;
    if (ahead > 0 && r + ahead < rows) {
#pragma GCC unroll 8
      for (int g = 0; g < G; g += kLine) __builtin_prefetch(p + ahead * stride + g * W, 0, 2);
    }
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      const typename V::reg d = V::sub(ld(p + g * W, m), k0[g]);
      u[g] = V::add(u[g], d);
      q[g] = V::fmadd(d, d, q[g]);
    }
    if (++cnt == kRound || r + 1 == rows) {
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        V::add_to(s1 + g * W, u[g]);
        V::add_to(s2 + g * W, q[g]);
        u[g] = q[g] = V::zero();
      }
      cnt = 0;
    }
  }
}

// Channels-last tile statistics, for the channels [c0, c0 + G * W) (the last group possibly m < W lanes) of
// `rows` rows: per channel a shift k (the mean of a first pass) and, in double, s1 = sum(x - k) and
// s2 = sum((x - k)^2). d1 is scratch (double, zeroed by the caller).
template <class S, int G, class M>
inline void moments_group_cl(const S* x, int64_t rows, int64_t C, M m, compute_t<S>* k, double* d1, double* s1,
                             double* s2) {
  using Cp = compute_t<S>;
  using V = Vec<Cp>;
  constexpr int W = V::width;
  typename V::reg a[G], k0[G];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    k0[g] = ld(x + g * W, m);
    a[g] = V::zero();
  }
  int cnt = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const S* p = x + r * C;
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) a[g] = V::add(a[g], ld(p + g * W, m));
    if (++cnt == kRound || r + 1 == rows) {
#pragma GCC unroll 8
      for (int g = 0; g < G; ++g) {
        V::add_to(d1 + g * W, a[g]);
        a[g] = V::zero();
      }
      cnt = 0;
    }
  }
  // The shift: the mean of pass 1 (see block_moments), or the first row where that overflowed.
  const double inv = 1.0 / static_cast<double>(rows);
  constexpr double kMax = static_cast<double>(std::numeric_limits<Cp>::max());
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) V::store(k + g * W, k0[g]);
  for (int i = 0; i < G * W; ++i) {
    const double kd = d1[i] * inv;
    k[i] = std::fabs(kd) <= kMax ? static_cast<Cp>(kd) : k[i];
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) k0[g] = V::load(k + g * W);
  shifted_group_cl<S, G>(x, rows, C, m, k0, s1, s2);
}

// The shifts of moments_group_cl_once: k (G * W entries) the mean of the first kShiftRows rows (at most `rows`),
// also returned in k0; false where some k is inf or NaN.
template <class S, int G, class M>
inline bool group_shift_cl(const S* x, int64_t rows, int64_t C, M m, compute_t<S>* k,
                           typename Vec<compute_t<S>>::reg* k0) {
  using Cp = compute_t<S>;
  using V = Vec<Cp>;
  constexpr int W = V::width;
  int h = 1;
  while (2 * h <= kShiftRows && 2 * h <= rows) h *= 2;
  const typename V::reg inv_h = V::set1(Cp(1) / static_cast<Cp>(h));
  typename V::reg fin = V::zero();
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    // A pairwise sum, so that a constant channel's partial sums (c times a power of two) are exact and k == c.
    typename V::reg t[kShiftRows];
    for (int i = 0; i < h; ++i) t[i] = ld(x + i * C + g * W, m);
    for (int w = h / 2; w >= 1; w /= 2) {
      for (int i = 0; i < w; ++i) t[i] = V::add(t[i], t[i + w]);
    }
    k0[g] = V::mul(t[0], inv_h);
    V::store(k + g * W, k0[g]);
    fin = V::add(fin, V::sub(k0[g], k0[g]));  // 0, or NaN where some k is inf or NaN
  }
  alignas(64) Cp f[W];
  V::store(f, fin);
  for (int i = 0; i < W; ++i) {
    if (!(f[i] == 0)) return false;
  }
  return true;
}

// Whether the one-pass sums of `rows` rows (s1, s2 about the shifts k, n entries) are kept: every |mean - k| <=
// std (false for NaN and inf).
inline bool shift_close(int64_t rows, int n, const double* s1, const double* s2) {
  const double two_n = 2 / static_cast<double>(rows);
  bool ok = true;
  for (int i = 0; i < n; ++i) ok &= two_n * s1[i] * s1[i] <= s2[i];
  return ok;
}

// The one-pass form of moments_group_cl (see block_moments): k is the mean of the first kShiftRows rows, and
// the sums are kept when every lane's |mean - k| <= std; false otherwise (s1 and s2 then hold partial sums).
// ahead: see shifted_group_cl.
// Paired against always two passes on the EPYC VM, 2 threads (then per tile): statistics of 25088x256 (in the
// last-level cache) 1.16x faster, 200704x128 and 8192x1024 1.03-1.05x; channels-last training 1.01-1.05x.
template <class S, int G, class M>
inline bool moments_group_cl_once(const S* x, int64_t rows, int64_t C, M m, compute_t<S>* k, double* s1,
                                  double* s2, int64_t ahead) {
  typename Vec<compute_t<S>>::reg k0[G];
  if (!group_shift_cl<S, G>(x, rows, C, m, k, k0)) return false;
  shifted_group_cl<S, G>(x, rows, C, m, k0, s1, s2, ahead);
  return shift_close(rows, G * Vec<compute_t<S>>::width, s1, s2);
}

// Vectors of columns a statistics pass over rows takes together (moments_group_cl: 4 registers each).
#if defined(FASTBN_ISA_AVX512)
constexpr int kStatsGroup = 8;  // 4 * 8 of the 32 vector registers
#else
constexpr int kStatsGroup = 3;
#endif

// Folds the sums of `rows` rows (as left by moments_group_cl(_once)) of `count` channels, rows `stride` apart,
// into per-channel running (mean, M2) of n_acc values, with the formulas of block_moments + merge. The loops are
// branch-free so that they vectorize; sums whose squares overflowed somewhere take the checking loop, with the
// scaled path where needed.
template <bool kCheck, class S>
inline void merge_tile_cl_loop(const S* x, double* pm, double* pq, double n_acc, int64_t rows, int64_t count,
                               int64_t stride, const compute_t<S>* k, const double* s1, const double* s2) {
  const double nb = static_cast<double>(rows);
  const double f = nb / (n_acc + nb), g = n_acc * f;
  for (int64_t c = 0; c < count; ++c) {
    const double d = s1[c] / nb;  // a division: exact for a constant channel's s1 = nb * d, unlike * (1 / nb)
    double mb = static_cast<double>(k[c]) + d;
    double qb = std::fma(-s1[c], d, s2[c]);
    qb = qb < 0 ? 0 : qb;  // rounding; NaN passes through
    if constexpr (kCheck) {
      if (!std::isfinite(s2[c]) && std::isfinite(s1[c] + static_cast<double>(k[c]))) {
        moments_scaled(x + c, stride, rows, 1, static_cast<double>(k[c]), mb, qb);
      }
    }
    const double delta = mb - pm[c];
    pm[c] = n_acc == 0 ? mb : pm[c] + delta * f;
    pq[c] = n_acc == 0 ? qb : pq[c] + (qb + delta * delta * g);
  }
}

template <class S>
inline void merge_tile_cl(const S* x, double* pm, double* pq, double n_acc, int64_t rows, int64_t count,
                          int64_t stride, const compute_t<S>* k, const double* s1, const double* s2) {
  bool overflow = false;
  for (int64_t c = 0; c < count; ++c) overflow |= !(std::fabs(s2[c]) <= std::numeric_limits<double>::max());
  if (overflow) {
    merge_tile_cl_loop<true>(x, pm, pq, n_acc, rows, count, stride, k, s1, s2);
  } else {
    merge_tile_cl_loop<false>(x, pm, pq, n_acc, rows, count, stride, k, s1, s2);
  }
}

// The moments of a chunk of `rows` channels-last rows for the `count` channels of a group (moments_group_cl),
// into the chunk's partials pm and pq: one pass over the whole chunk with one shift per channel (the mean of
// the chunk's first kShiftRows rows), or where a shift is off (or the chunk short) two passes tile by tile, each
// tile (in the core's cache) folded in turn. k, d1, s1, s2: scratch of G * W entries. `far`: the chunk is beyond
// the cache, and the one pass prefetches kStatsAheadBytes of the group's rows ahead.
// A shift, a check and a fold per chunk rather than per 256 KiB tile, and cl_stats folding the chunks' partials row
// by row (not channel by channel, a stride of C through nchunks rows): builds alternating on the EPYC VM, 2
// threads, 4 pairs: training of 8192x1024 0.60-0.82 -> 0.84-0.92 of the 3S stream, of 32768x1024 0.62-0.78 ->
// 0.85-0.88; statistics alone of 8192x4096 6.7-7.0 -> 5.0-5.1 ms; 64x56x56x128 (one group a row) unchanged.
template <class S, int G, class M>
inline void chunk_group_moments(const S* x, int64_t rows, int64_t C, int64_t tile, M m, int64_t count,
                                compute_t<S>* k, double* d1, double* s1, double* s2, double* pm, double* pq,
                                bool far) {
  constexpr int W = Vec<compute_t<S>>::width;
  const int64_t ahead = far ? ceil_div(kStatsAheadBytes, G * W * static_cast<int64_t>(sizeof(S))) : 0;
  auto zero = [&] {
    for (int i = 0; i < G * W; ++i) d1[i] = s1[i] = s2[i] = 0;  // the last group writes whole vectors
  };
  zero();
  if (rows >= 4 * kShiftRows && moments_group_cl_once<S, G>(x, rows, C, m, k, s1, s2, ahead)) {
    merge_tile_cl(x, pm, pq, 0, rows, count, C, k, s1, s2);
    return;
  }
  double n_acc = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += tile) {
    const int64_t n = min64(tile, rows - r0);
    zero();  // (the one pass left its partial sums)
    moments_group_cl<S, G>(x + r0 * C, n, C, m, k, d1, s1, s2);
    merge_tile_cl(x + r0 * C, pm, pq, n_acc, n, count, C, k, s1, s2);
    n_acc += static_cast<double>(n);
  }
}

// chunk_group_moments over all the channels of a chunk whose rows take several groups (C > kStatsGroup * W):
// every group's shift, then the one-pass sums of all columns by rows_column_sums (the rows read as stored, not
// one group down the chunk at a time; the same bits), then each group's check and merge. A group whose shift is
// off takes chunk_group_moments' two passes. k, d1, s1, s2: scratch of round_up(C, 16).
template <class S>
inline void chunk_moments_rows(const S* x, int64_t rows, int64_t C, int64_t tile, int phase, compute_t<S>* k,
                               double* d1, double* s1, double* s2, double* pm, double* pq) {
  using V = Vec<compute_t<S>>;
  constexpr int W = V::width;
  std::fill(s1, s1 + round_up(C, W), 0.0);
  std::fill(s2, s2 + round_up(C, W), 0.0);
  for_column_groups<kStatsGroup, W>(C, [&](auto g, int64_t c, auto m0) {
    constexpr int G = decltype(g)::value;
    typename V::reg k0[G];
    with_phase<S>(phase, m0, [&](auto m) { group_shift_cl<S, G>(x + c, rows, C, m, k + c, k0); });
  });
  with_phase<S>(phase, Full{}, [&](auto m) {
    rows_column_sums<S>(
        rows, rows, C, C, m, [&](int64_t c) { return V::load(k + c); },
        [&](int64_t o, typename V::reg kc, auto lanes, typename V::reg& d, typename V::reg& d2) {
          d = d2 = V::sub(ld(x + o, lanes), kc);
        },
        [&](int64_t o) { __builtin_prefetch(x + o, 0, 2); }, s1, s2);
  });
  for_column_groups<kStatsGroup, W>(C, [&](auto g, int64_t c, auto m0) {
    constexpr int G = decltype(g)::value;
    const int64_t count = min64(G * W, C - c);
    bool ok = shift_close(rows, G * W, s1 + c, s2 + c);
    for (int i = 0; i < G * W; ++i) ok &= std::isfinite(k[c + i]);
    if (ok) {
      merge_tile_cl(x + c, pm + c, pq + c, 0, rows, count, C, k + c, s1 + c, s2 + c);
    } else {
      with_phase<S>(phase, m0, [&](auto m) {
        chunk_group_moments<S, G>(x + c, rows, C, tile, m, count, k + c, d1 + c, s1 + c, s2 + c, pm + c, pq + c,
                                  true);
      });
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// Geometry

// nc blocks: a block is up to kBlockBytes of one channel: `rpb` whole runs, or (long runs) one of `ppr` pieces
// of a run. Block b of a channel covers runs [r0, r0 + rows) and values [i0, i0 + len) of each. Runs are cut into
// blocks of equal size, 1, 2 or a multiple of 4 of them, so that the threads of a team pipeline (run_team), which
// share each channel's blocks, get even shares (256x256x14x14: 8 blocks of 32 runs, not 6 of 41 and one of 10).
// The channel pipelines gained too, without the remnant block (builds alternating, 2 threads, 6 pairs on the EPYC
// VM: 128x512x14x14 backward 0.63-0.67 -> 0.70-0.71 of the 3S stream, 32x256x28x28 training 0.80-0.88 ->
// 0.84-0.94 of the copy, backward 0.70-0.77 -> 0.76-0.83).
struct NcPlan {
  int64_t N, L, stride, rpb, ppr, plen, nb;
  template <class S>
  static NcPlan make(int64_t N, int64_t C, int64_t L) {
    const int64_t elems = kBlockBytes / static_cast<int64_t>(sizeof(S));
    NcPlan p{N, L, C * L, 1, 1, L, 0};
    if (L <= elems) {
      int64_t groups = ceil_div(N, max64(1, elems / L));
      if (groups > 2) groups = round_up(groups, 4);
      p.rpb = ceil_div(N, groups);
    } else {
      p.ppr = ceil_div(L, elems);
      p.plen = ceil_div(L, p.ppr);
    }
    p.nb = ceil_div(N, p.rpb) * p.ppr;
    return p;
  }
  struct Block {
    int64_t offset, rows, len;  // offset from the channel's first value
  };
  Block block(int64_t b) const {
    const int64_t rb = b / ppr, piece = b % ppr;
    const int64_t r0 = rb * rpb, i0 = piece * plen;
    return {r0 * stride + i0, min64(rpb, N - r0), min64(plen, L - i0)};
  }
  // Offset of unit u = (channel u / nb, block u % nb) from the tensor's first value.
  int64_t unit_offset(int64_t u) const { return (u / nb) * L + block(u % nb).offset; }
  // From unit u to unit u + 1 (0 for the last of `units`): where a statistics pass prefetches the next block.
  int64_t to_next(int64_t u, int64_t units) const {
    return u + 1 == units ? 0 : unit_offset(u + 1) - unit_offset(u);
  }
};

// Whether every run (or piece of one) of pl is a whole number of vectors of S.
template <class S>
inline bool whole_vector_runs(const NcPlan& pl) {
  return pl.L % IO<S>::width == 0 && pl.plen % IO<S>::width == 0;
}

// Pipelines over channels keep two channels in cache: the one being normalized (or its dx computed) and the next,
// read for its statistics (sums). Where two channels of the arrays the second pass reads again take more than
// half a core's cache, the threads share each channel instead of each taking whole channels: every thread takes
// its share of each channel's blocks, posts the channel once its blocks' statistics are in, and finishes a
// channel once all have posted (the blocks' results merged in block order, as one thread merges them, so the bits
// do not change). The cache then holds 1 / threads of a channel. On the EPYC VM (1 MiB L2), 2 threads, in one
// process with a run-time switch and the order of the two alternating (medians of ~1300 pairs, memory slow / fast):
// training 64x128x56x56 1.08 / 1.14x, 128x64x32x32 1.11 / 1.14x, NCL 128x64x1024 1.14 / 1.12x, 64x3x224x224 1.12 /
// 1.30x; backward 256x256x14x14 1.09 / 1.04x (0.55-0.59 -> 0.66-0.67 of the 3S stream with builds alternating),
// NCL 1.06 / 1.13x, 128x64x32x32 1.05 / 1.08x, 64x128x56x56 0.99 / 0.98x. Where two channels fit in half the
// cache it lost (a wait per channel, for nothing): training 128x512x14x14 0.92x, 32x256x28x28 0.87-0.93x,
// 64x512x14x14 0.85-0.87x; backward 128x512x14x14 0.94-0.95x, 32x256x28x28 0.88-0.89x.
inline bool team_pipeline(int nt, int64_t nb, int64_t channel_bytes, int64_t cache_bytes) {
  return nt > 1 && nb >= nt && 2 * channel_bytes > cache_bytes / 2;
}

// The channels a team pipeline's threads have posted (see run_team).
class TeamSync {
 public:
  explicit TeamSync(int64_t channels) : posted_(static_cast<size_t>(channels)) {}
  void post(int64_t c) { posted_[c].fetch_add(1, std::memory_order_release); }
  // Waits until every thread of the team has posted channel c; yields the CPU once the wait is long (a thread
  // that waits for a CPU another process holds).
  void wait(int64_t c, int team) const {
    for (int spin = 0; posted_[c].load(std::memory_order_acquire) < team; ++spin) {
      if (spin >= kTeamSpins) std::this_thread::yield();
    }
  }

 private:
  static constexpr int kTeamSpins = 4096;
  std::vector<std::atomic<int>> posted_;
};

// A team pipeline on nt threads (see team_pipeline): each thread takes an even share of every channel's blocks.
// read(c, b, pf, q) takes the statistics (sums) of block b of channel c into q[0] and q[1], prefetching the block
// pf values on (0: none); finish(c, q) returns channel c's coefficients from its blocks' pairs q[2 * b], q[2 * b + 1]
// once every thread has posted it; write(c, b, k, q, pf) normalizes block b of channel c (computes its dx) with
// them and, q not null, does what read(c + 1, b, pf, q) does.
//
// One vCPU of the EPYC VM often ran 10-25% slower than the other for a while (the faster thread waited 0.4-1.3 ms
// of a 3.4-4.3 ms 256x256x14x14 backward), but two threads taking blocks from either end of each channel while any
// were left was slower still, builds alternating, memory fast (three pairs: backward 0.49-0.51 -> 0.44-0.45 of
// the 3S stream, training 0.57-0.58 -> 0.50-0.56 of the copy), perhaps as the second walked its blocks backwards.
template <class Read, class Finish, class Write>
void run_team(const Exec& ex, int nt, const NcPlan& pl, int64_t C, bool stream, Read&& read, Finish&& finish,
              Write&& write) {
  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * pl.nb)));
  double* part = carve.take<double>(2 * C * pl.nb);  // each block's pair of results
  TeamSync sync(C);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    const int team = team_size();
    const Share mine = my_share(pl.nb);
    // Block b of channel c: its pair, and the distance to the block this thread reads next.
    auto pf_of = [&](int64_t c, int64_t b) -> int64_t {
      if (stream && b + 1 < mine.end) return pl.block(b + 1).offset - pl.block(b).offset;
      if (stream && c + 1 < C) return pl.L + pl.block(mine.begin).offset - pl.block(b).offset;
      return 0;
    };
    for (int64_t b = mine.begin; b < mine.end; ++b) read(0, b, pf_of(0, b), part + 2 * b);
    sync.post(0);
    for (int64_t c = 0; c < C; ++c) {
      sync.wait(c, team);
      const auto k = finish(c, static_cast<const double*>(part + 2 * c * pl.nb));
      for (int64_t b = mine.begin; b < mine.end; ++b) {
        if (c + 1 < C) {
          write(c, b, k, part + 2 * ((c + 1) * pl.nb + b), pf_of(c + 1, b));
        } else {
          write(c, b, k, nullptr, 0);
        }
      }
      if (c + 1 < C) sync.post(c + 1);
    }
    if (stream) stream_fence();
  }
}

// Channels-last geometry: tiles of rows (the in-cache unit) grouped into chunks (the parallel unit).
struct RowPlan {
  int64_t tile, chunk, nchunks;
  int64_t chunk_begin(int64_t k) const { return k * chunk; }
};

// Chunks are whole tiles of about kChunkBytes; a tensor of less than 4 such chunks is cut into 4 equal chunks
// (tiles no larger than a chunk), so that a small channels-last tensor splits evenly over 2 or 4 threads rather
// than into a few tiles and a remnant (8 chunks cost one thread more in merges than they saved two: each chunk
// is merged channel by channel in double). Shape alone decides, as the merge order must.
template <class S>
inline RowPlan row_plan(int64_t rows, int64_t C, int64_t arrays) {
  constexpr int64_t kMinChunks = 4;
  const int64_t row_bytes = C * static_cast<int64_t>(sizeof(S)) * arrays;
  const int64_t tile = min64(max64(1, kTileBytes * arrays / row_bytes), rows);
  if (rows * row_bytes < kMinChunks * kChunkBytes) {
    const int64_t chunk = ceil_div(rows, min64(kMinChunks, rows));
    return {min64(tile, chunk), chunk, ceil_div(rows, chunk)};
  }
  const int64_t chunk = tile * max64(1, kChunkBytes / (tile * row_bytes));
  return {tile, chunk, ceil_div(rows, chunk)};
}

// ---------------------------------------------------------------------------------------------------------
// Statistics passes (used by the training forward and by stats())

// This thread's units (channel u / nb, block u % nb) of a pass that reads each block once, on its own (the
// statistics pass, the backward's reduce phase): f(u, pf), pf the distance from unit u to the unit read next (0
// after the last). Where blocks are whole runs and the channels split evenly, channels go in groups whose runs of
// one sample make kSideBySideBytes side by side, and a group's channels are read block by block: a run of a few KiB
// read channel by channel starts a new page every run, while the group reads 64 KiB of a sample in a row. Builds
// alternating on the EPYC Zen 4 VM (4 pairs, 2 threads; ms, and the range of the paired fraction of a read of the
// same bytes, or of two for the reduce phase): batch_norm_stats 512x64x1024 5.97 -> 5.03 (0.57-0.77 -> 0.75-0.86),
// 1024x64x512 7.25 -> 4.85, 2048x64x256 7.07 -> 5.88, 128x256x28x28 4.19 -> 3.82, 64x128x56x56 3.53 -> 3.37; reduce
// phase 1024x64x512 14.8 -> 11.5, 2048x64x256 15.9 -> 12.6, 64x128x56x56 7.17 -> 6.35, 512x64x1024 12.7 -> 12.4.
// One thread (2 pairs): statistics 512x64x1024 8.99 -> 6.66, 128x256x28x28 6.34 -> 5.19; reduce 2048x64x256 24.1 ->
// 21.5, 128x256x28x28 13.9 -> 14.4. A unit's result does not depend on the order. Otherwise (pieces of long runs,
// which are long reads already; channels that do not split evenly) the units in order, split evenly. Ends with the
// team's barrier.
template <class S, class F>
inline void for_my_units(const NcPlan& pl, int64_t C, F&& f) {
  const int64_t units = C * pl.nb;
  if (pl.ppr == 1 && channels_balance(C, team_size())) {
    const int64_t group = max64(1, kSideBySideBytes / (pl.plen * static_cast<int64_t>(sizeof(S))));
    const Share mine = my_share(C);
    for (int64_t c0 = mine.begin; c0 < mine.end; c0 += group) {
      const int64_t c1 = min64(mine.end, c0 + group);
      for (int64_t b = 0; b < pl.nb; ++b) {
        for (int64_t c = c0; c < c1; ++c) {
          const int64_t u = c * pl.nb + b;
          const int64_t next = c + 1 < c1       ? u + pl.nb
                               : b + 1 < pl.nb  ? c0 * pl.nb + b + 1
                               : c1 < mine.end ? c1 * pl.nb
                                                : -1;
          f(u, next < 0 ? 0 : pl.unit_offset(next) - pl.unit_offset(u));
        }
      }
    }
#pragma omp barrier
    return;
  }
#pragma omp for schedule(static)
  for (int64_t u = 0; u < units; ++u) f(u, pl.to_next(u, units));
}

// Per-channel moments of an nc tensor over (channel, block) units shared out over the team: call inside a
// parallel region; `part` holds 2 doubles per unit; on return (after a barrier) out[c] is the channel's merge.
template <class S>
inline void nc_unit_stats(const S* x, const NcPlan& pl, int64_t C, double* part, Moments* out, bool prefetch) {
  for_my_units<S>(pl, C, [&](int64_t u, int64_t pf) {
    const NcPlan::Block bl = pl.block(u % pl.nb);
    block_moments(x + pl.unit_offset(u), pl.stride, bl.rows, bl.len, part[2 * u], part[2 * u + 1], prefetch ? pf : 0);
  });
#pragma omp for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    Moments m;
    for (int64_t b = 0; b < pl.nb; ++b) {
      const NcPlan::Block bl = pl.block(b);
      const int64_t u = c * pl.nb + b;
      merge(m, static_cast<double>(bl.rows * bl.len), part[2 * u], part[2 * u + 1]);
    }
    out[c] = m;
  }
}

// Per-channel moments of a short-run nc tensor (flat_nc) as column sums: one row of P = C * L positions per
// sample, summed down the N rows per position, with channel c's shift k_c (the mean of its first vector, as in
// block_moments) at each of its positions; then each channel's L positions added (lane_sums). A channel whose shift
// proves too far from its mean (see block_moments) takes the careful path block by block. nc_flat_group_stats sets
// out[c] for the channels [c0, c1) (cs holds ColumnScratch<S>::bytes(c1 - c0, L)); the bits of a channel do not
// depend on its group.
// Run by run, each short run cost a head and a tail and each channel its block's merge: training forward, old
// and new builds alternating on the EPYC VM, one thread: 16x512x5x5 72 -> 46 us, 32x128x7x7 47 -> 35, 32x64x8x8
// 26 -> 22; two threads 16x512x5x5 41 -> 27 us.
// A thread's scratch for column sums over the C * L positions of a row: two sums and a shift (or center) per
// position, each array one vector longer than a row, since a thread's last vector is written whole.
template <class S>
struct ColumnScratch {
  double* s1;
  double* s2;
  compute_t<S>* k;
  static int64_t padded(int64_t C, int64_t L) { return round_up(C * L, 16) + 16; }
  static int64_t bytes(int64_t C, int64_t L) {
    return 2 * Carver::bytes<double>(padded(C, L)) + Carver::bytes<compute_t<S>>(padded(C, L));
  }
  // This thread's part of `scratch`, which holds bytes(C, L) per thread.
  static ColumnScratch mine(char* scratch, int64_t C, int64_t L) {
    return at(scratch + thread_id() * bytes(C, L), C, L);
  }
  // The scratch at p (bytes(C, L) of them).
  static ColumnScratch at(char* p, int64_t C, int64_t L) {
    Carver cv(p);
    ColumnScratch r;
    r.s1 = cv.take<double>(padded(C, L));
    r.s2 = cv.take<double>(padded(C, L));
    r.k = cv.take<compute_t<S>>(padded(C, L));
    return r;
  }
};

template <class S>
inline void nc_flat_group_stats(const S* x, const NcPlan& pl, int64_t C, int64_t c0, int64_t c1,
                                const ColumnScratch<S>& cs, Moments* out, bool phased) {
  using Cp = compute_t<S>;
  using V = Vec<Cp>;
  constexpr int W = V::width;
  const int64_t N = pl.N, L = pl.L, P = C * L;
  const int64_t p0 = c0 * L, np = (c1 - c0) * L;
  double* s1 = cs.s1;
  double* s2 = cs.s2;
  Cp* k = cs.k;
  for (int64_t c = c0; c < c1; ++c) {
    std::fill(k + (c - c0) * L, k + (c + 1 - c0) * L, first_vector_mean(x + c * L, L));
  }
  std::fill(k + np, k + round_up(np, 16), Cp(0));  // the last vector's spare lanes
  std::fill(s1, s1 + round_up(np, 16), 0.0);
  std::fill(s2, s2 + round_up(np, 16), 0.0);
  const int phase = phased ? column_phase(P, x + p0) : 0;
  if (phased) {
    // Beyond the cache the group's positions are read row by row (rows_column_sums, the same bits as the column
    // groups): one group of G vectors down N rows far apart read at half a stream's rate (see rows_column_sums).
    with_phase<S>(phase, Full{}, [&](auto m) {
      rows_column_sums<S>(
          N, N, np, P, m, [&](int64_t c) { return V::load(k + c); },
          [&](int64_t o, typename V::reg kc, auto lanes, typename V::reg& d, typename V::reg& d2) {
            d = d2 = V::sub(ld(x + p0 + o, lanes), kc);
          },
          [&](int64_t o) { __builtin_prefetch(x + p0 + o, 0, 2); }, s1, s2);
    });
  } else {
    for_column_groups<kStatsGroup, W>(np, [&](auto g, int64_t c, auto m0) {
      constexpr int G = decltype(g)::value;
      typename V::reg k0[G];
#pragma GCC unroll 8
      for (int j = 0; j < G; ++j) k0[j] = V::load(k + c + j * W);  // k has whole vectors past np
      with_phase<S>(phase, m0, [&](auto m) { shifted_group_cl<S, G>(x + p0 + c, N, P, m, k0, s1 + c, s2 + c); });
    });
  }
  const double n = static_cast<double>(N * L);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t i0 = (c - c0) * L;
    double s, sq;
    lane_sums(s1 + i0, s2 + i0, L, s, sq);
    Moments& o = out[c];
    o.n = n;
    if (moments_if_close(n, static_cast<double>(k[i0]), s, sq, o.mean, o.m2)) continue;
    Moments m;
    for (int64_t b = 0; b < pl.nb; ++b) {
      const NcPlan::Block bl = pl.block(b);
      double mb, qb;
      block_moments(x + pl.unit_offset(c * pl.nb + b), pl.stride, bl.rows, bl.len, mb, qb);
      merge(m, static_cast<double>(bl.rows * bl.len), mb, qb);
    }
    o = m;
  }
}

// nc_flat_group_stats over each thread's share of the channels; on return (after a barrier) out[c] is set.
template <class S>
inline void nc_flat_stats(const S* x, const NcPlan& pl, int64_t C, char* scratch, Moments* out, bool phased) {
  const Share mine = my_share(C);
  nc_flat_group_stats(x, pl, C, mine.begin, mine.end, ColumnScratch<S>::mine(scratch, C, pl.L), out, phased);
#pragma omp barrier
}

// Folds the chunks' partial moments (pmean / pm2: C per chunk, a value per row and channel) in chunk
// order into chunk 0's (merge's step: every chunk has one count for all channels), each thread over its own
// channels, reading the partials row by row; then out[c] is channel c's merge, after a barrier. Call inside a
// parallel region.
inline void fold_chunks(const RowPlan& plan, int64_t rows, int64_t C, double* pmean, double* pm2, Moments* out) {
  const Share mine = my_share(C);
  double n_acc = static_cast<double>(min64(plan.chunk, rows));
  for (int64_t ch = 1; ch < plan.nchunks; ++ch) {
    const double nb = static_cast<double>(min64(plan.chunk, rows - plan.chunk_begin(ch)));
    const double n = n_acc + nb, f = nb / n;
    const double* pm = pmean + ch * C;
    const double* pq = pm2 + ch * C;
    for (int64_t c = mine.begin; c < mine.end; ++c) chan_fold(pmean[c], pm2[c], n_acc, f, pm[c], pq[c]);
    n_acc = n;
  }
  for (int64_t c = mine.begin; c < mine.end; ++c) out[c] = {n_acc, pmean[c], pm2[c]};
#pragma omp barrier
}

// Channels of a thread's share that a flat pass (flat_nc: the training forward, the backward) takes as one group,
// its reductions and then its elementwise pass, so that the second read of the group comes from the core's cache
// the first left it in: the group's `arrays` arrays (inputs and output) fit half that cache. 0 where such groups
// would leave rows shorter than kGroupMinSegment bytes: short segments of rows far apart read slowly, and groups
// sized for the last-level cache instead showed no gain on the EPYC Zen 4 VM (256x256x8x8, 512x128x7x7:
// 0.96-1.2x, noisy). Groups span whole 64-byte lines of a row (a multiple of 64 / gcd(L * sizeof(S), 64)
// channels), so that a group's loads stay aligned where the rows are, and the groups of a share are made even.
// `rows`: the group's statistics read its rows as stored (nc_flat_group_stats beyond the cache), and segments of
// kGroupMinRowsSegment bytes will do: 4 channels of 14x14 floats (3136 bytes a sample). Training forward of
// 256x256x14x14 on the EPYC Zen 4 VM (one process, order shuffled, 30-40 rounds; statistics first and then the
// flat range / groups of 4): 2 threads 4.03-4.17 -> 3.30-3.53 ms, one thread 5.12-5.44 -> 4.43-4.81; groups of 8
// or 16 channels (beyond the core's cache) 3.46-4.07 ms; groups of 2 (1568 bytes), with the next group's sums
// interleaved, 4.0-5.3 ms. Builds alternating (3 pairs, 2 threads): 256x512x7x7 1.96-2.47 -> 1.31-1.71 ms,
// 512x256x7x7 2.66-2.90 -> 1.50-2.05, 128x256x14x14 1.65-1.92 -> 0.92-1.21, 64x1024x14x14 3.86-4.49 -> 2.45-3.21.
// With `rows`, where half the core's cache holds too few channels for such a segment, a group takes as many as
// make one anyway (its second read then comes from the last-level cache), rather than none. Training forward, one
// process switching per call on the EPYC Zen 4 VM (30 pairs, 2 threads, float32; against statistics first and then
// the flat range): 128x512x8x8 1.15-1.43x, 256x256x8x8 1.21-1.59x, 256x1024x5x5 1.11-1.15x, 256x512x6x6 1.12x,
// 128x1024x10x10 1.28x, 256x512x10x10 1.11x, 128x512x12x12 1.00x; float64 128x1024x10x10 1.40x, 128x512x8x8 1.02x;
// bfloat16 1.05-1.06x; one thread 128x1024x10x10 1.18x, 128x512x8x8 0.96x. (7x7 and 14x14 floats already made
// groups of 16 and 4 channels.) The backward: see backward_nc.
constexpr int64_t kGroupMinSegment = 4096;
constexpr int64_t kGroupMinRowsSegment = 3072;
template <class S>
inline int64_t group_channels(int64_t N, int64_t L, int64_t share, int64_t arrays, const Exec& ex, bool rows = false) {
  const int64_t line = 64, run = L * static_cast<int64_t>(sizeof(S));
  int64_t q = line;
  for (int64_t b = run % line; b != 0;) {  // q = line / gcd(run, line)
    const int64_t t = q % b;
    q = b;
    b = t;
  }
  q = line / q;
  const int64_t per_channel = max64(1, arrays * N * run);
  int64_t g = max64(q, ex.cache_bytes / 2 / per_channel / q * q);
  if (share < 1) return 0;
  if (g >= share) return share;
  if (g * run < (rows ? kGroupMinRowsSegment : kGroupMinSegment)) {
    if (!rows) return 0;
    g = round_up(ceil_div(kGroupMinRowsSegment, run), q);  // beyond half the core's cache: see above
    if (g >= share) return share;
  }
  return round_up(ceil_div(share, ceil_div(share, g)), q);
}

// Tensors from which a backward over short runs takes its sums first (see backward_nc).
constexpr int64_t kRowsMinBackwardBytes = 1 << 20;
// Channels a unit of nc_row_sums takes at most.
constexpr int64_t kRowStatsBlock = 256;

template <class S>
inline RowPlan nc_row_plan(int64_t N, int64_t C, int64_t L) {
  return row_plan<S>(N, C * L, 1);
}

// Channels of a (chunk, channel block) unit of nc_row_sums: enough units for every thread of the
// team to take several, none over kRowStatsBlock channels. The bits do not depend on it.
inline int64_t row_unit_channels(int64_t C, const RowPlan& plan) {
  return ceil_div(C, min64(C, max64(ceil_div(C, kRowStatsBlock), ceil_div(4 * team_size(), plan.nchunks))));
}

// Runs of a few vectors (runs_flat; too long a period for column sums): the nc training forward takes every
// channel's statistics first and then normalizes the tensor as one flat range, as inference does, rather than
// pipelining channels. Run by run, each of a channel's N runs is a strided read and a write with a head and a
// tail, and runs under kStreamMinRunBytes are not streamed. Paired on the EPYC Zen 4 VM (run-time switch, order
// shuffled, 50 rounds; old / new time): 2 threads 256x256x14x14 1.20-1.29x, 128x512x7x7 1.98-2.27x, 64x256x14x14
// 1.71-1.82x, 32x256x14x14 2.0x, 64x512x10x10 1.64-1.76x, 128x64x12x12 1.63-1.71x; one thread 256x256x14x14
// 1.18-1.36x, 128x512x7x7 2.3-2.4x. Not where the pipeline streams whole-vector runs, reads and writes
// interleaved in one loop (fwd_block_with_moments): 128x256x12x12 (18.9 MB) 0.70-0.78x.
template <class S>
inline bool rows_nc(int64_t N, int64_t C, int64_t L, const Exec& ex) {
  if (!runs_flat<S>(L) || flat_nc(C, L)) return false;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(S));
  return !(L % IO<S>::width == 0 && L * static_cast<int64_t>(sizeof(S)) >= kStreamMinRunBytes &&
           bytes >= ex.stream_min_bytes);
}
// Whether a backward over such runs takes its sums sample by sample (nc_row_sums) rather than block by block: for
// tensors beyond the last-level cache (those whose output streams). A channel's N runs lie C * L values apart,
// and walked channel by channel every short run starts a new stream in another page (statistics alone, one thread,
// 256x256x14x14 on the EPYC Zen 4 VM: 3.9-4.1 ms block by block, 3.0 ms sample by sample).
template <class S>
inline bool row_sums_nc(int64_t N, int64_t C, int64_t L, const Exec& ex) {
  return rows_nc<S>(N, C, L, ex) && N * C * L * static_cast<int64_t>(sizeof(S)) >= ex.stream_min_bytes;
}

// Whether a backward over such runs that stream (runs of kStreamMinRunBytes or more, a tensor beyond the last-level
// cache) pipelines channels, as longer runs do, rather than taking every channel's sums by rows first: on CPUs other
// than AMD's (short_runs_by_rows). Both phases, so that the reduce phase's sums stay the full backward's. A run-time
// switch in one build, 3 pairs of processes alternating, 5 rounds each, on the Intel Xeon VM (family 6 model 167), 2
// threads, of the 3S stream: 256x256x14x14 0.42-0.48 -> 0.47-0.63, 128x256x14x14 0.32-0.44 -> 0.51-0.74, 64x256x14x14
// 0.52-0.57 -> 0.61-0.68, 32x256x14x14 0.27-0.49 -> 0.63-0.70, 128x256x13x13 0.32-0.54 -> 0.66-0.94, 128x256x15x15
// 0.44-0.53 -> 0.58-0.59, float64 128x256x10x10 0.49 -> 0.56-0.63 and 64x256x11x11 0.48-0.53 -> 0.61-0.66; the reduce
// phase, of two reads, 256x256x14x14 0.72-1.19 -> 0.87-1.15, 128x256x14x14 0.57-0.78 -> 0.72-1.04, 128x256x13x13
// 0.61-0.81 -> 0.89-1.25, 128x256x15x15 0.70-0.79 -> 0.98-1.00, float64 128x256x10x10 0.74-0.86 -> 0.86-0.94. On the
// EPYC Zen 4 VM by rows had been about even for the full backward of 256x256x14x14 and 1.3-1.6x faster for its reduce
// phase (3.8-4.2 -> 2.5-2.9 ms), so it keeps them. Runs under kStreamMinRunBytes (10x10 float32) are not streamed, and
// pipelined they lost 2-3x (backward 0.42-0.45 -> 0.15-0.20 of the 3S stream).
template <class S>
inline bool pipelines_streamed_runs(int64_t L, int64_t bytes, const Exec& ex) {
  return !short_runs_by_rows() && L * static_cast<int64_t>(sizeof(S)) >= kStreamMinRunBytes &&
         bytes >= ex.stream_min_bytes;
}

// Whether the backward's sums, read channel by channel block by block, prefetch the block they read next where the
// tensor is within the last-level cache (beyond it they always do, as the statistics pass does): for runs under
// kPrefetchRunBytes whose inputs outgrow the team's core caches. A channel's runs lie C * L values apart, and each
// short one is a new stream that the hardware prefetchers meet cold, from the last-level cache too. One process
// switching per call on the EPYC Zen 4 VM (21 pairs, 2 threads, against no prefetch): backward 64x256x14x14
// 1.11-1.22x, 32x128x28x28 1.16-1.40x, 128x256x10x10 1.11-1.14x, 64x256x12x12 1.08-1.22x, bfloat16 128x256x14x14
// 1.29-1.42x, NCL 64x64x1024 1.08-1.50x; the reduce phase alone 1.08-1.70x; tensors within the cores' caches and
// 128x256x7x7 even, bfloat16 128x512x8x8 0.89-1.08x (backward) and 0.90-1.38x (reduce) in four runs (it takes the
// column sums now: see backward_nc). Runs of 4 KiB and more (NCL 1024 floats, 56x56 maps) gained nothing. The
// training forward's statistics, which read one array, did not gain either (0.92-1.22x), so it keeps to tensors
// beyond the last-level cache.
constexpr int64_t kPrefetchRunBytes = 4096;

template <class S>
inline bool short_runs_prefetch(int64_t L, int64_t bytes_read, int threads, const Exec& ex) {
  return L * static_cast<int64_t>(sizeof(S)) < kPrefetchRunBytes && bytes_read > threads * ex.cache_bytes;
}

// Whether an nc tensor's statistics are column sums over each sample's positions (nc_flat_stats and its channel
// groups): short runs (flat_nc), and runs of a few vectors beyond the last-level cache, which the training forward
// takes in channel groups whose second read comes from a core's cache (train_nc_flat), instead of statistics
// sample by sample and then the flat range, two reads from memory. stats() asks the same, so that the bits agree.
template <class S>
inline bool column_stats_nc(int64_t N, int64_t C, int64_t L, const Exec& ex) {
  return flat_nc(C, L) || row_sums_nc<S>(N, C, L, ex);
}

// Per-channel moments of a channels-last tensor: chunk partials in pmean / pm2 (nchunks * C each), merged
// into out. Call inside a parallel region; scratch is 4 * Cp values per thread. Beyond the cache (`phased`), a
// chunk whose channels take one group (C <= kStatsGroup * W) prefetches kStatsAheadBytes ahead. A getenv switch in
// one build, processes alternating on the 2-vCPU Xeon VM, 2 threads, 3 x 9 rounds each after a 256 MB copy:
// statistics of 25 MiB (R, C) against a read of the same bytes (paired medians) C = 32 0.81-0.84 -> 0.87-0.94,
// C = 64 0.77-0.81 -> 0.92-0.94, C = 128 0.83-0.90 -> 0.89-0.92 (16 KiB ahead; 64 KiB alike); training against the
// 3S stream, 64x56x56x128 0.62-0.64 -> 0.64-0.67, NLC 128x1024x64 0.60-0.63 -> 0.66-0.68 (16 or 32 KiB). Wider
// rows (rows_column_sums, which prefetches already) stay at 0.8 of the read for C = 144-384, 0.9-1.1 from 512 on:
// reading them in memory order (R = 1), T0 or T2 prefetches, or 64 KiB ahead did not change that.
template <class S>
inline void cl_stats(const S* x, int64_t R, int64_t C, const RowPlan& plan, double* pmean, double* pm2,
                     compute_t<S>* kscratch, double* dscratch, Moments* out, bool phased) {
  constexpr int W = Vec<compute_t<S>>::width;
  const int64_t Cp = round_up(C, 16);
  compute_t<S>* k = kscratch + Cp * thread_id();
  double* d1 = dscratch + 3 * Cp * thread_id();
  double* s1 = d1 + Cp;
  double* s2 = s1 + Cp;
#pragma omp for schedule(static)
  for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
    const S* xc = x + plan.chunk_begin(ch) * C;
    const int64_t rows = min64(plan.chunk, R - plan.chunk_begin(ch));
    const int phase = phased ? column_phase(C, xc) : 0;
    if (phased && C > kStatsGroup * W && rows >= 4 * kShiftRows) {
      chunk_moments_rows(xc, rows, C, plan.tile, phase, k, d1, s1, s2, pmean + ch * C, pm2 + ch * C);
      continue;
    }
    for_column_groups<kStatsGroup, W>(C, [&](auto g, int64_t c, auto m0) {
      constexpr int G = decltype(g)::value;
      with_phase<S>(phase, m0, [&](auto m) {
        chunk_group_moments<S, G>(xc + c, rows, C, plan.tile, m, min64(G * W, C - c), k + c, d1 + c, s1 + c, s2 + c,
                                  pmean + ch * C + c, pm2 + ch * C + c, phased);
      });
    });
  }
  fold_chunks(plan, R, C, pmean, pm2, out);
}

template <class S>
struct ClStatsScratch {
  double* pmean;
  double* pm2;
  compute_t<S>* k;
  double* d;
  Moments* mom;
  static int64_t bytes(const RowPlan& plan, int64_t C, int nt) {
    const int64_t Cp = round_up(C, 16);
    return 2 * Carver::bytes<double>(plan.nchunks * C) + Carver::bytes<compute_t<S>>(Cp * nt) +
           Carver::bytes<double>(3 * Cp * nt) + Carver::bytes<Moments>(C);
  }
  static ClStatsScratch carve(Carver& cv, const RowPlan& plan, int64_t C, int nt) {
    const int64_t Cp = round_up(C, 16);
    ClStatsScratch s;
    s.pmean = cv.take<double>(plan.nchunks * C);
    s.pm2 = cv.take<double>(plan.nchunks * C);
    s.k = cv.take<compute_t<S>>(Cp * nt);
    s.d = cv.take<double>(3 * Cp * nt);
    s.mom = cv.take<Moments>(C);
    return s;
  }
};

// ---------------------------------------------------------------------------------------------------------
// Training forward

// Coefficient arrays of the channels-last elementwise passes (extended to C + W entries).
template <class C>
struct ClCoef {
  C* k[4];
  static int64_t bytes(int64_t channels, int n) {
    return n * Carver::bytes<C>(channels + 2 * Vec<C>::width) + kPageBytes;  // + the page_gap
  }
  // The arrays start `phase` entries past a vector boundary: that of the output where a streaming span peels the
  // output's head to a vector boundary (span_phase), so that when the period is a multiple of the width
  // the coefficients' vectors start on one too. NumPy places large arrays 16 bytes past a 64-byte line: (200704,
  // 128) inference, 2 threads on the EPYC VM, took 2.78 ms with aligned arrays (every coefficient load spanning
  // two lines), 2.16 with the output's phase (2.1-2.3 for an aligned tensor). With `away` (the output), the
  // arrays keep half a page from its offset within a page (page_gap).
  static ClCoef carve(Carver& cv, int64_t channels, int n, int phase = 0, const void* away = nullptr) {
    ClCoef r{};
    if (away) cv.skip(page_gap(cv.at(), away));
    for (int i = 0; i < n; ++i) r.k[i] = cv.take<C>(channels + 2 * Vec<C>::width) + phase;
    return r;
  }
  void set(int64_t c, const FwdCoef<C>& f) {
    k[0][c] = f.center;
    k[1][c] = f.sc;
    k[2][c] = f.sh;
  }
  void set(int64_t c, const BwdCoef<C>& f) {
    k[0][c] = f.center;
    k[1][c] = f.a;
    k[2][c] = f.b;
    k[3][c] = f.d;
  }
  void extend(int64_t channels, int n) {
    for (int i = 0; i < n; ++i) extend_channels(k[i], channels, Vec<C>::width);
  }
};

// The elementwise pass over a channel group of N rows of P values (positions [p0, p0 + np), whole channels of L):
// blocks of kFlatBlock positions, each block's K coefficient arrays filled once (coef(c, v) sets channel c's K
// values) in `scratch` (ClCoef<Cp>::bytes(kFlatBlock, K)) at the phase of out's block when streaming, then
// pass(q, len, k, stream) at offset q = row * P + block of every row. Blocks under kStreamMinRunBytes a row are
// not streamed.
template <class Cp, int K, class S, class Coef, class Pass>
inline void group_rows_walk(int64_t N, int64_t P, int64_t L, int64_t p0, int64_t np, const S* out, bool stream,
                            char* scratch, Coef&& coef, Pass&& pass) {
  for (int64_t o = p0; o < p0 + np; o += kFlatBlock) {
    const int64_t len = min64(kFlatBlock, p0 + np - o);
    const bool st = stream && len * static_cast<int64_t>(sizeof(S)) >= kStreamMinRunBytes;
    Carver kc(scratch);
    ClCoef<Cp> co = ClCoef<Cp>::carve(kc, kFlatBlock, K, span_phase(out + o, st));
    for (int64_t c = o / L; c * L < o + len; ++c) {
      Cp v[K];
      coef(c, v);
      const int64_t lo = max64(c * L, o) - o, hi = min64((c + 1) * L, o + len) - o;
      for (int i = 0; i < K; ++i) std::fill(co.k[i] + lo, co.k[i] + hi, v[i]);
    }
    co.extend(len, K);
    for (int64_t r = 0; r < N; ++r) pass(r * P + o, len, co.k, st);
  }
}

// A thread's scratch for one channel group of a flat pass: column sums for gc channels (ColumnScratch) and the
// coefficient blocks of group_rows_walk (K arrays).
template <class S, int K>
inline int64_t group_scratch_bytes(int64_t gc, int64_t L) {
  return ColumnScratch<S>::bytes(gc, L) + ClCoef<compute_t<S>>::bytes(kFlatBlock, K);
}

// Calls f(c0, c1, cs, co) for each group [c0, c1) of at most gc channels of this thread's share, with this
// thread's scratch (group_scratch_bytes<S, K>(gc, L) of them in `scratch` per thread): cs its column sums, co its
// coefficient blocks. Call inside a parallel region.
template <class S, int K, class F>
inline void for_my_groups(int64_t C, int64_t L, int64_t gc, char* scratch, F&& f) {
  const Share mine = my_share(C);
  char* own = scratch + thread_id() * group_scratch_bytes<S, K>(gc, L);
  const ColumnScratch<S> cs = ColumnScratch<S>::at(own, gc, L);
  char* co = own + ColumnScratch<S>::bytes(gc, L);
  for (int64_t c0 = mine.begin; c0 < mine.end; c0 += gc) f(c0, min64(c0 + gc, mine.end), cs, co);
}

// The flat walk of N rows of P = C * L values: short nc runs (NCHW 5x5, 7x7) as one flat period of per-position
// coefficients a row, and channels-last rows (L == 1). A period is walked in blocks of kFlatBlock positions, each
// over a group of rows, so that the block's coefficients stay in L1 while the rows pass. Units go block-major to
// the threads, and each thread fills the K coefficient arrays of its blocks into its own scratch: built once by
// one thread for the whole period, they were read across cores by the other (16x512x5x5: 2 threads slower than
// one).
struct FlatPlan {
  int64_t P, L, blk, nblk, rows_per_unit, groups;
  template <class S>
  static FlatPlan make(int64_t N, int64_t C, int64_t L) {
    FlatPlan f{C * L, L, min64(C * L, kFlatBlock), 0, 0, 0};
    f.nblk = ceil_div(f.P, f.blk);
    f.rows_per_unit = max64(1, kBlockBytes / (f.blk * static_cast<int64_t>(sizeof(S))));
    f.groups = ceil_div(N, f.rows_per_unit);
    return f;
  }
  int64_t units() const { return groups * nblk; }
  template <class Cp>
  int64_t bytes_per_thread(int arrays) const {
    return ClCoef<Cp>::bytes(blk, arrays);
  }
};

// Call inside a parallel region; `scratch` holds fp.bytes_per_thread<Cp>(K) for each thread, and the coefficient
// arrays start `phase` entries past a vector boundary (ClCoef::carve). coef(c, v) sets
// the K coefficients v[0..K) of channel c; pass(o, n, period, k) runs the elementwise pass over the n values
// from offset o with the K arrays k, whose entries repeat every `period` values.
template <class Cp, int K, class Coef, class Pass>
inline void flat_walk(int64_t N, const FlatPlan& fp, char* scratch, int phase, const void* out, Coef&& coef,
                      Pass&& pass) {
  const int64_t P = fp.P, L = fp.L, blk = fp.blk;
  Carver mine(scratch + thread_id() * fp.bytes_per_thread<Cp>(K));
  ClCoef<Cp> co = ClCoef<Cp>::carve(mine, blk, K, phase, out);
  int64_t have = -1;  // the block whose coefficients co holds
  auto unit = [&](int64_t bi, int64_t r0, int64_t rows) {
    const int64_t off = bi * blk, len = min64(blk, P - off);
    if (bi != have) {
      for (int64_t c = off / L; c * L < off + len; ++c) {
        Cp v[K];
        coef(c, v);
        const int64_t lo = max64(c * L, off) - off, hi = min64((c + 1) * L, off + len) - off;
        for (int i = 0; i < K; ++i) std::fill(co.k[i] + lo, co.k[i] + hi, v[i]);
      }
      co.extend(len, K);  // a period of len positions (a row of the block) for vectors that cross its end
      have = bi;
    }
    if (len == P) {  // whole periods: the group in one call
      pass(r0 * P, rows * P, P, co.k);
      return;
    }
    for (int64_t row = r0; row < r0 + rows; ++row) pass(row * P + off, len, len, co.k);
  };
  const int64_t team = team_size();
  if (team > 1 && N >= kFlatRowsPerThread * team) {
    // Enough rows: each thread walks its own range of them, block by block, and builds every block's
    // coefficients itself. Split by blocks instead, the threads wrote the same lines wherever a period does
    // not end on one (5x5: 6400-byte rows) and read each row in pieces (128x64x5x5 inference: 24 us on one
    // thread, 32 on two).
    const Share rows = my_share(N);
    for (int64_t bi = 0; bi < fp.nblk; ++bi) {
      for (int64_t r0 = rows.begin; r0 < rows.end; r0 += fp.rows_per_unit) {
        unit(bi, r0, min64(fp.rows_per_unit, rows.end - r0));
      }
    }
    return;
  }
#pragma omp for schedule(static)
  for (int64_t u = 0; u < fp.units(); ++u) {
    const int64_t bi = u / fp.groups, r0 = (u % fp.groups) * fp.rows_per_unit;
    unit(bi, r0, min64(fp.rows_per_unit, N - r0));
  }
}

// The forward's flat walk: y = act((x - center) * sc + sh [+ r]) with coef(c) -> FwdCoef.
template <class S, class Coef>
inline void fwd_flat_walk(const S* x, const S* r, S* y, int64_t N, const FlatPlan& fp,
                          void (*cl)(const FwdFlat<S>&), compute_t<S> slope, bool stream, char* scratch, Coef&& coef) {
  using Cp = compute_t<S>;
  flat_walk<Cp, 3>(
      N, fp, scratch, span_phase(y, stream), y,
      [&](int64_t c, Cp* v) {
        const FwdCoef<Cp> k = coef(c);
        v[0] = k.center;
        v[1] = k.sc;
        v[2] = k.sh;
      },
      [&](int64_t o, int64_t n, int64_t period, Cp* const* k) {
        cl({x + o, r ? r + o : nullptr, y + o, n, period, k[0], k[1], k[2], slope, stream});
      });
}

template <class S>
inline FwdCoef<compute_t<S>> train_finish(const TrainArgs<S>& a, int64_t c, const Moments& m, bool write = true) {
  using P = param_t<S>;
  const double var = m.m2 / m.n;
  if (write) {
    a.mean[c] = static_cast<P>(m.mean);
    a.var[c] = static_cast<P>(var);
  }
  return fwd_coef<compute_t<S>>(m.mean, var, a.gamma, a.beta, c, a.eps);
}

// A is a template argument so that the pipeline calls the block kernel directly: an indirect call per block
// (with its argument struct in memory) costs measurably on short blocks.
template <class S, Act A>
void train_nc_act(const TrainArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner, stride = C * L;
  const int64_t bytes = N * stride * static_cast<int64_t>(sizeof(S));
  const NcPlan pl = NcPlan::make<S>(N, C, L);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, C * pl.nb);
  const bool stream = can_stream_runs(a.y, bytes, L, ex.stream_min_bytes);
  const Cp slope = static_cast<Cp>(a.epi.slope);
  // While a block of channel c is normalized, the same block of channel c + 1 (read next, for its statistics)
  // is prefetched line by line: its reads from memory then overlap the streaming writes instead of following
  // them (32x256x28x28 on 2 threads: 1.26 -> 0.98 ms, 0.76 -> 0.99 of a copy; 64x128x56x56: 1.07x). The
  // statistics pass prefetches the block after its own, so that reads are in flight in both halves of the
  // loop (paired, 2 threads: 64x128x56x56 1.03x, 256x256x14x14 1.11x, NCL 128x64x1024 1.06x). Only for
  // tensors too big for the last-level cache (those whose output streams): from that cache the prefetches
  // cost more than they hide (16x128x20x20: 2-4% slower).
  auto fwd_block = [&](int64_t c, int64_t b, const FwdCoef<Cp>& k, bool prefetch_next) {
    const NcPlan::Block bl = pl.block(b);
    const int64_t o = c * L + bl.offset;
    const S* pf = prefetch_next && stream ? a.x + o + L : nullptr;
    return FwdBlock<S>{a.x + o, a.residual ? a.residual + o : nullptr, a.y + o, stride, bl.rows, bl.len, k, slope,
                       stream, pf};
  };
  auto apply_block = [&](int64_t c, int64_t b, const FwdCoef<Cp>& k, bool prefetch_next) {
    fwd_block_nc<S, A>(fwd_block(c, b, k, prefetch_next));
  };
  auto block_stats = [&](int64_t c, int64_t b, int64_t pf, double& mean, double& m2) {
    const NcPlan::Block bl = pl.block(b);
    block_moments(a.x + c * L + bl.offset, stride, bl.rows, bl.len, mean, m2, pf);
  };
  const int64_t channel_bytes = N * L * static_cast<int64_t>(sizeof(S));
  const bool team = team_pipeline(nt, pl.nb, channel_bytes, ex.cache_bytes);
  // Normalizes block b of channel c and takes the moments of block b of channel c + 1: in one loop
  // (fwd_block_with_moments) where the output streams, runs are whole vectors, and a thread's share of two channels
  // fits in half its cache or runs are at least kFuseMinRunBytes long. Earlier, paired on the EPYC VM, 2 threads,
  // 300-400 pairs a run: NCL 128x64x1024 1.035-1.12x, 128x64x32x32 1.06-1.11x, 32x64x4096 1.07x, 32x256x28x28
  // 0.98-1.05x. Measured again on the EPYC Zen 4 VM, one process switching per call (40-60 pairs, 2 threads, median
  // ratio to the two loops): runs of 8 KiB and more gained also where shares take more of the cache: 64x128x56x56
  // 1.06-1.12x, 64x64x48x48 1.13x, 64x64x52x52 1.17x, 32x64x80x80 1.14x, 16x64x112x112 1.11x, 32x64x96x96 1.08x,
  // float64 64x128x56x56 1.15x; shorter ones not (128x64x40x40, 6400-byte runs, 0.93-1.01x; 256x128x32x32
  // 0.78-0.89x, 256x64x1024 0.72-0.94x), nor 14x14 runs earlier (a head and a tail per 12 vectors: 0.94-0.95x).
  //
  // Where the loads of channel c + 1 would alias the stores of channel c's output (loads_alias_stores: runs of a
  // multiple of 4 KiB, x and y at one offset in a page, as NumPy puts large arrays), the loop lost as it was (4 KiB
  // runs 0.82-0.88x, 64x64x64x64 0.88-0.93x, bfloat16 0.76x; with x moved 64 B to 2 KiB from y's offset, 64x64x64x64
  // gained 1.06-1.15x), so each run's whole vectors are written in a rotated order there, starting half a page in
  // (RowPieces' skew): a store then lies ~2 KiB from the load beside it. The output is elementwise, so the bits do
  // not change. One process switching per call on the EPYC Zen 4 VM (15-31 pairs, x and y 16 bytes into a page,
  // against the two loops that aliasing had meant), 2 threads: runs of 8 KiB and more 64x64x64x64 1.11-1.18x,
  // 32x64x4096 1.15-1.21x, 16x64x128x128 1.14-1.18x, 64x32x2048 1.04-1.13x, 128x32x2048 1.00x, float64 1.12-1.15x;
  // one thread 1.01-1.16x (32x64x4096 once 0.88x). Runs of 4 KiB swung with the memory's speed (128x64x1024 and
  // 128x64x32x32 1.06-1.10x with a copy of 32 MiB at 1.3 ms, 0.75-0.82x at 1.7 ms) and keep the two loops, as does
  // half precision, bound by its conversions (bfloat16 0.96-0.98x). Skews of 0.5 to 3 KiB were within 5%.
  const int64_t share = team ? ceil_div(channel_bytes, nt) : channel_bytes;
  const int64_t run_bytes = pl.plen * static_cast<int64_t>(sizeof(S));
  const bool pays = 4 * share <= ex.cache_bytes || run_bytes >= kFuseMinRunBytes;  // measured: see above
  const bool aliased = loads_alias_stores(a.x + L, a.y);
  const bool skew_pays = !is_half_v<S> && run_bytes >= kFuseMinRunBytes;
  const bool fuses = stream && whole_vector_runs<S>(pl) && pays && (!aliased || skew_pays);
  const int64_t skew = aliased ? kPageBytes / 2 / (IO<S>::width * static_cast<int64_t>(sizeof(S))) : 0;
  auto step = [&](int64_t c, int64_t b, const FwdCoef<Cp>& k, int64_t pf, double& mean, double& m2) {
    if (fuses) {
      fwd_block_with_moments<S, A>(fwd_block(c, b, k, false), L, mean, m2, pf, skew);
    } else {
      apply_block(c, b, k, true);
      block_stats(c + 1, b, pf, mean, m2);
    }
  };

  if (team) {
    // Each thread takes its share of every channel's blocks (see team_pipeline), in the same pipeline.
    run_team(
        ex, nt, pl, C, stream,
        [&](int64_t c, int64_t b, int64_t pf, double* q) { block_stats(c, b, pf, q[0], q[1]); },  // mean and M2
        [&](int64_t c, const double* q) {
          Moments m;
          for (int64_t b = 0; b < pl.nb; ++b) {
            merge(m, static_cast<double>(pl.block(b).rows * pl.block(b).len), q[2 * b], q[2 * b + 1]);
          }
          return train_finish(a, c, m, thread_id() == 0);  // every thread's coefficients, one writer
        },
        [&](int64_t c, int64_t b, const FwdCoef<Cp>& k, double* q, int64_t pf) {
          if (q) {
            step(c, b, k, pf, q[0], q[1]);
          } else {
            apply_block(c, b, k, false);
          }
        });
    return;
  }

  if (channels_balance(C, nt)) {
    // Each thread owns a contiguous range of channels and pipelines them: while a block of channel c is
    // normalized (its values still in cache from its statistics pass), the same block of channel c + 1 is
    // read for its statistics. Reads from memory and streaming writes then run together, as in a copy, and
    // the cache holds about one channel.
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      const Share mine = my_share(C);
      auto pf_of = [&](int64_t c, int64_t b) { return stream ? pl.to_next(c * pl.nb + b, C * pl.nb) : 0; };
      auto add = [&](Moments& m, int64_t b, double mb, double qb) {
        merge(m, static_cast<double>(pl.block(b).rows * pl.block(b).len), mb, qb);
      };
      Moments cur;
      if (mine.begin < mine.end) {
        for (int64_t b = 0; b < pl.nb; ++b) {
          double mb, qb;
          block_stats(mine.begin, b, pf_of(mine.begin, b), mb, qb);
          add(cur, b, mb, qb);
        }
      }
      for (int64_t c = mine.begin; c < mine.end; ++c) {
        const FwdCoef<Cp> k = train_finish(a, c, cur);
        Moments next;
        for (int64_t b = 0; b < pl.nb; ++b) {
          if (c + 1 < mine.end) {
            double mb, qb;
            step(c, b, k, pf_of(c + 1, b), mb, qb);
            add(next, b, mb, qb);
          } else {
            apply_block(c, b, k, false);
          }
        }
        cur = next;
      }
      if (stream) stream_fence();
    }
    return;
  }

  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * pl.nb) + Carver::bytes<Moments>(C) +
                                     Carver::bytes<FwdCoef<Cp>>(C)));
  double* part = carve.take<double>(2 * C * pl.nb);
  Moments* mom = carve.take<Moments>(C);
  FwdCoef<Cp>* coef = carve.take<FwdCoef<Cp>>(C);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    nc_unit_stats(a.x, pl, C, part, mom, stream);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) coef[c] = train_finish(a, c, mom[c]);
    for_my_runs(N * C, C, [&](int64_t r, int64_t c) {
      const S* res = a.residual ? a.residual + r * L : nullptr;
      fwd_block_nc<S, A>({a.x + r * L, res, a.y + r * L, L, 1, L, coef[c], slope, stream});
    });
    if (stream) stream_fence();
  }
}

// The forward over nc runs of L values as one flat range of `total` values whose coefficients (co, C + W entries)
// change every L values (RunCycling), cut between the threads at lines of y: call inside a parallel region.
template <class S>
inline void fwd_runs_range(const S* x, const S* r, S* y, int64_t total, int64_t L, int64_t C,
                           const ClCoef<compute_t<S>>& co, void (*runs)(const FwdRuns<S>&), compute_t<S> slope,
                           bool stream) {
  const Share sh = my_lines(total, y);
  const int64_t b = sh.begin;
  if (sh.end > b) {
    runs({x + b, r ? r + b : nullptr, y + b, sh.end - b, b, L, C, {co.k[0], co.k[1], co.k[2]}, slope, stream});
  }
  if (stream) stream_fence();
}

// Short runs (NCHW 5x5 to 8x8): the statistics as column sums (nc_flat_stats), then the flat walk of inference with
// this batch's coefficients, instead of N * C runs of a few vectors, each with a head and a tail (16x512x5x5 on one
// thread: 102 us, against 33 for the statistics and 25 for the flat walk). The walk takes the activation at run
// time, so this driver is not a template on it. Runs of a few vectors beyond the last-level cache (column_stats_nc)
// come here too: channel groups, else the statistics and then the flat range (fwd_runs_range).
template <class S>
void train_nc_flat(const TrainArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(S));
  const NcPlan pl = NcPlan::make<S>(N, C, L);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, C * pl.nb);
  const FlatPlan fp = FlatPlan::make<S>(N, C, L);
  const bool stream = can_stream(a.y, bytes, ex.stream_min_bytes);
  const Cp slope = static_cast<Cp>(a.epi.slope);
  void (*cl)(const FwdFlat<S>&) = fwd_fns<S>(a.epi.act).cl;
  const bool phased = bytes >= ex.stream_min_bytes;
  const int64_t gc = group_channels<S>(N, L, ceil_div(C, nt), a.residual ? 3 : 2, ex, phased);
  if (channels_balance(C, nt) && gc > 0) {
    // Each thread takes its channels a group at a time (group_channels): the group's statistics, then its y, whose
    // reads of x come from the core's cache. Same bits as below (a channel's statistics do not depend on its
    // group). On the EPYC Zen 4 VM (run-time switch, order shuffled, 30 rounds; old / new time): one thread
    // 1.00-1.10x (16x512x5x5 1.10x, 32x64x8x8 1.06x), two threads 1.02-1.25x (16x512x5x5 1.25x, 32x128x7x7 1.13x).
    // Short runs beyond the cache (column_stats_nc: 14x14) too, where statistics first read the tensor twice.
    // Beyond the last-level cache, the y pass of a group prefetches the next group's x line by line (its position
    // in the same sample), so that the reads of the next statistics overlap the streaming writes instead of
    // following them: one process switching per call on the EPYC Zen 4 VM (30-50 pairs): 2 threads 256x256x14x14
    // 1.09-1.15x, 256x512x7x7 1.12x, 512x256x7x7 1.12x, 64x512x14x14 1.13x; one thread 256x256x14x14 1.11x,
    // 256x512x7x7 1.09x. (The next group is not there for the last group of a thread, nor whole for a shorter one.)
    const int64_t own = group_scratch_bytes<S, 3>(gc, L);
    Carver gcv(ex.workspace->reserve(Carver::bytes<char>(nt * own) + Carver::bytes<FwdCoef<Cp>>(C) +
                                     Carver::bytes<Moments>(C)));
    char* groups = gcv.take<char>(nt * own);
    FwdCoef<Cp>* gcoef = gcv.take<FwdCoef<Cp>>(C);
    Moments* gmom = gcv.take<Moments>(C);
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      const int64_t my_end = my_share(C).end;
      for_my_groups<S, 3>(C, L, gc, groups, [&](int64_t c0, int64_t c1, const ColumnScratch<S>& cs, char* co) {
        nc_flat_group_stats(a.x, pl, C, c0, c1, cs, gmom, phased);
        for (int64_t c = c0; c < c1; ++c) gcoef[c] = train_finish(a, c, gmom[c]);
        group_rows_walk<Cp, 3>(
            N, C * L, L, c0 * L, (c1 - c0) * L, a.y, stream, co,
            [&](int64_t c, Cp* v) {
              v[0] = gcoef[c].center;
              v[1] = gcoef[c].sc;
              v[2] = gcoef[c].sh;
            },
            [&](int64_t q, int64_t len, Cp* const* k, bool st) {
              const S* pf = stream && c1 + (c1 - c0) <= my_end ? a.x + q + (c1 - c0) * L : nullptr;
              cl({a.x + q, a.residual ? a.residual + q : nullptr, a.y + q, len, len, k[0], k[1], k[2], slope, st,
                  pf});
            });
      });
      if (stream) stream_fence();
    }
    return;
  }
  // Every channel's statistics, then y: short runs (flat_nc) in the flat walk, longer ones as the flat range of
  // inference (fwd_runs_range).
  const bool flat = flat_nc(C, L) && !runs_not_walked<S>(L, bytes);
  const int64_t per_thread = max64(flat ? fp.bytes_per_thread<Cp>(3) : 0, ColumnScratch<S>::bytes(C, L));
  Carver carve(ex.workspace->reserve(Carver::bytes<Moments>(C) + Carver::bytes<FwdCoef<Cp>>(C) + nt * per_thread +
                                     (flat ? 0 : ClCoef<Cp>::bytes(C, 3))));
  Moments* mom = carve.take<Moments>(C);
  FwdCoef<Cp>* coef = carve.take<FwdCoef<Cp>>(C);
  char* scratch = carve.take<char>(nt * per_thread);
  ClCoef<Cp> co{};
  if (!flat) co = ClCoef<Cp>::carve(carve, C, 3);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    nc_flat_stats(a.x, pl, C, scratch, mom, phased);  // the scratch is free after its barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) coef[c] = train_finish(a, c, mom[c]);
    if (flat) {
      fwd_flat_walk(a.x, a.residual, a.y, N, fp, cl, slope, stream, scratch, [&](int64_t c) { return coef[c]; });
      if (stream) stream_fence();
    } else {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) co.set(c, coef[c]);
#pragma omp single
      co.extend(C, 3);
      fwd_runs_range(a.x, a.residual, a.y, N * C * L, L, C, co, fwd_fns<S>(a.epi.act).runs, slope, stream);
    }
  }
}

// The backward's sums over an nc tensor of short runs, sample by sample, each sample's runs in memory order (chunks
// from nc_row_plan, (chunk, channel block) units): run_sums(r, c, g, h) gives the sums of sample r's run of channel c,
// added in sample order within a chunk, the chunks then in chunk order. On return (after a barrier) part[2 * c]
// and part[2 * c + 1] hold channel c's sums; part holds 2 * C doubles per chunk. Call inside a parallel region.
template <class RunSums>
inline void nc_row_sums(int64_t N, int64_t C, const RowPlan& plan, double* part, RunSums&& run_sums) {
  const int64_t cb = row_unit_channels(C, plan), nblocks = ceil_div(C, cb);
#pragma omp for schedule(static)
  for (int64_t u = 0; u < plan.nchunks * nblocks; ++u) {
    const int64_t ch = u / nblocks, c0 = (u % nblocks) * cb, nc = min64(cb, C - c0);
    const int64_t r0 = plan.chunk_begin(ch), rows = min64(plan.chunk, N - r0);
    double* const q = part + 2 * (ch * C + c0);
    std::fill(q, q + 2 * nc, 0.0);
    for (int64_t r = r0; r < r0 + rows; ++r) {
      for (int64_t j = 0; j < nc; ++j) {
        double g, h;
        run_sums(r, c0 + j, g, h);
        q[2 * j] += g;
        q[2 * j + 1] += h;
      }
    }
  }
  const Share mine = my_share(C);
  for (int64_t ch = 1; ch < plan.nchunks; ++ch) {
    const double* q = part + 2 * ch * C;
    for (int64_t c = mine.begin; c < mine.end; ++c) {
      part[2 * c] += q[2 * c];
      part[2 * c + 1] += q[2 * c + 1];
    }
  }
#pragma omp barrier
}

// Runs of a few vectors (rows_nc) in the last-level cache: every channel's statistics block by block, then the
// flat range of inference with this batch's coefficients (beyond that cache: train_nc_flat).
template <class S>
void train_nc_rows(const TrainArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(S));
  const NcPlan pl = NcPlan::make<S>(N, C, L);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, C * pl.nb);
  const bool stream = can_stream(a.y, bytes, ex.stream_min_bytes);
  const FwdFns<S> fn = fwd_fns<S>(a.epi.act);
  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * pl.nb) + Carver::bytes<Moments>(C) +
                                     ClCoef<Cp>::bytes(C, 3)));
  double* part = carve.take<double>(2 * C * pl.nb);
  Moments* mom = carve.take<Moments>(C);
  ClCoef<Cp> co = ClCoef<Cp>::carve(carve, C, 3);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    nc_unit_stats(a.x, pl, C, part, mom, bytes >= ex.stream_min_bytes);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) co.set(c, train_finish(a, c, mom[c]));
#pragma omp single
    co.extend(C, 3);
    fwd_runs_range(a.x, a.residual, a.y, N * C * L, L, C, co, fn.runs, static_cast<Cp>(a.epi.slope), stream);
  }
}

template <class S>
void train_nc(const TrainArgs<S>& a, const Exec& ex) {
  if (column_stats_nc<S>(a.outer, a.channels, a.inner, ex)) return train_nc_flat(a, ex);
  if (rows_nc<S>(a.outer, a.channels, a.inner, ex)) return train_nc_rows(a, ex);
  switch (a.epi.act) {
    case Act::relu:
      return train_nc_act<S, Act::relu>(a, ex);
    case Act::leaky_relu:
      return train_nc_act<S, Act::leaky_relu>(a, ex);
    case Act::sigmoid:
      return train_nc_act<S, Act::sigmoid>(a, ex);
    default:
      return train_nc_act<S, Act::none>(a, ex);
  }
}


// The elementwise pass of channels-last rows with the coefficients co (C entries each), chunk by chunk of the
// plan's rows; then the streaming stores' fence. Call inside a parallel region.
template <class S>
inline void cl_apply_chunks(const S* x, const S* r, S* y, int64_t R, int64_t C, const RowPlan& plan,
                            const ClCoef<compute_t<S>>& co, void (*cl)(const FwdFlat<S>&), compute_t<S> slope,
                            bool stream) {
#pragma omp for schedule(static)
  for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
    const int64_t o = plan.chunk_begin(ch) * C;
    cl({x + o, r ? r + o : nullptr, y + o, min64(plan.chunk, R - plan.chunk_begin(ch)) * C, C, co.k[0], co.k[1],
        co.k[2], slope, stream});
  }
  if (stream) stream_fence();
}

template <class S>
void train_cl(const TrainArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t R = a.outer, C = a.channels;
  const int64_t bytes = R * C * static_cast<int64_t>(sizeof(S));
  const RowPlan plan = row_plan<S>(R, C, 1);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, plan.nchunks);
  const bool stream = can_stream(a.y, bytes, ex.stream_min_bytes);
  const FwdFns<S> fn = fwd_fns<S>(a.epi.act);

  Carver carve(ex.workspace->reserve(ClStatsScratch<S>::bytes(plan, C, nt) + ClCoef<Cp>::bytes(C, 3)));
  const ClStatsScratch<S> st = ClStatsScratch<S>::carve(carve, plan, C, nt);
  ClCoef<Cp> co = ClCoef<Cp>::carve(carve, C, 3, span_phase(a.y, stream), a.y);

  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    cl_stats(a.x, R, C, plan, st.pmean, st.pm2, st.k, st.d, st.mom, bytes >= ex.stream_min_bytes);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) co.set(c, train_finish(a, c, st.mom[c]));
#pragma omp single
    co.extend(C, 3);
    cl_apply_chunks(a.x, a.residual, a.y, R, C, plan, co, fn.cl, static_cast<Cp>(a.epi.slope), stream);
  }
}

template <class S>
void train(const TrainArgs<S>& a, const Exec& ex) {
  if (a.inner == 1) {
    train_cl(a, ex);
  } else {
    train_nc(a, ex);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Statistics alone

template <class S>
void stats(const StatsArgs<S>& a, const Exec& ex) {
  const int64_t N = a.outer, C = a.channels, L = a.inner;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(S));
  if (L == 1) {
    const RowPlan plan = row_plan<S>(N, C, 1);
    [[maybe_unused]] const int nt = pick_threads(ex, bytes, plan.nchunks);
    Carver carve(ex.workspace->reserve(ClStatsScratch<S>::bytes(plan, C, nt)));
    const ClStatsScratch<S> st = ClStatsScratch<S>::carve(carve, plan, C, nt);
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      cl_stats(a.x, N, C, plan, st.pmean, st.pm2, st.k, st.d, st.mom, bytes >= ex.stream_min_bytes);
    }
    for (int64_t c = 0; c < C; ++c) {
      a.mean[c] = st.mom[c].mean;
      a.m2[c] = st.mom[c].m2;
    }
    return;
  }
  const NcPlan pl = NcPlan::make<S>(N, C, L);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, C * pl.nb);
  const bool flat = column_stats_nc<S>(N, C, L, ex);  // as the training forward does, so that the bits agree
  const int64_t per_thread = flat ? ColumnScratch<S>::bytes(C, L) : 0;
  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * C * pl.nb) + Carver::bytes<Moments>(C) +
                                     nt * per_thread));
  double* part = carve.take<double>(2 * C * pl.nb);
  Moments* mom = carve.take<Moments>(C);
  char* scratch = carve.take<char>(nt * per_thread);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    if (flat) {
      nc_flat_stats(a.x, pl, C, scratch, mom, bytes >= ex.stream_min_bytes);
    } else {
      nc_unit_stats(a.x, pl, C, part, mom, bytes >= ex.stream_min_bytes);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    a.mean[c] = mom[c].mean;
    a.m2[c] = mom[c].m2;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Normalization with given statistics (inference; the apply step of a distributed forward)

template <class S>
void apply(const ApplyArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner;
  const int64_t bytes = N * C * L * static_cast<int64_t>(sizeof(S));
  // Short runs (NCHW 5x5 to 8x8): the (C, L) slab of each sample is one flat period of C * L coefficients, so the
  // whole tensor is one flat loop (as channels-last), instead of N * C runs of a few vectors, each with a head
  // and a tail; in tensors of kFlatWalkMaxBytes or more, the flat range below (runs_not_walked).
  const bool flat = L == 1 || (flat_nc(C, L) && !runs_not_walked<S>(L, bytes));
  const int64_t P = flat ? C * L : C;  // entries of the coefficient arrays
  const bool stream = flat ? can_stream(a.y, bytes, ex.stream_min_bytes)
                          : can_stream_runs(a.y, bytes, L, ex.stream_min_bytes);
  const FwdFns<S> fn = fwd_fns<S>(a.epi.act);
  const Cp slope = static_cast<Cp>(a.epi.slope);

  if (L == 1 && (C > kFlatBlock || rows_together<S>(C, stream))) {
    // Channels-last rows longer than a flat block: chunks of whole rows, as training normalizes them, rather than
    // the flat walk's blocks of columns, which would give each thread a block of columns down every row (a read
    // of 4 KiB in each row: (4096, 2048) inference 2.5-2.8 ms against 1.4-1.5 for (8192, 1024)). Rows that the
    // chunks take 8 at a time (rows_together) too: one process switching per call on the EPYC Zen 4 VM (40 pairs,
    // fraction of a copy), 2 threads: (8192, 1024) 0.73 -> 0.90-0.93, (2048, 4, 1024) channels-last 0.79 -> 1.04;
    // one thread 0.81 -> 0.91 and 0.78 -> 0.88; rows under 4 KiB even either way ((32768, 256) 0.81-0.83).
    const RowPlan plan = row_plan<S>(N, C, 1);
    [[maybe_unused]] const int nt = pick_threads(ex, bytes, plan.nchunks);
    Carver carve(ex.workspace->reserve(ClCoef<Cp>::bytes(C, 3)));
    ClCoef<Cp> co = ClCoef<Cp>::carve(carve, C, 3, span_phase(a.y, stream), a.y);
    for (int64_t c = 0; c < C; ++c) co.set(c, fwd_coef<Cp>(a.mean[c], a.var[c], a.gamma, a.beta, c, a.eps));
    co.extend(C, 3);
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      cl_apply_chunks(a.x, a.residual, a.y, N, C, plan, co, fn.cl, slope, stream);
    }
    return;
  }
  if (flat) {
    const FlatPlan fp = FlatPlan::make<S>(N, C, L);
    [[maybe_unused]] const int nt = pick_threads(ex, bytes, fp.units());
    char* const scratch =
        static_cast<char*>(ex.workspace->reserve(static_cast<size_t>(nt * fp.bytes_per_thread<Cp>(3))));
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      fwd_flat_walk(a.x, a.residual, a.y, N, fp, fn.cl, slope, stream, scratch,
                    [&](int64_t c) { return fwd_coef<Cp>(a.mean[c], a.var[c], a.gamma, a.beta, c, a.eps); });
      if (stream) stream_fence();
    }
    return;
  }

  Carver carve(ex.workspace->reserve(ClCoef<Cp>::bytes(P, 3)));
  ClCoef<Cp> co = ClCoef<Cp>::carve(carve, P, 3);
  for (int64_t c = 0; c < C; ++c) co.set(c, fwd_coef<Cp>(a.mean[c], a.var[c], a.gamma, a.beta, c, a.eps));
  co.extend(P, 3);

  // Runs of a few vectors (NCHW 10x10 to 14x14, and 5x5 to 8x8 not in the flat walk: see runs_not_walked; up to
  // 22x22 where y's runs are off vector boundaries, apply_runs_flat): the tensor as one flat range whose
  // coefficients change every L values (RunCycling), cut between the threads at lines of y, instead of N * C runs,
  // each a call with a head and a tail at a different offset within a vector.
  if (apply_runs_flat<S>(L, a.y)) {
    const int64_t total = N * C * L;
    const bool stream_all = can_stream(a.y, bytes, ex.stream_min_bytes);
    [[maybe_unused]] const int nt = pick_threads(ex, bytes, N * C);
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      fwd_runs_range(a.x, a.residual, a.y, total, L, C, co, fn.runs, slope, stream_all);
    }
    return;
  }

  [[maybe_unused]] const int nt = pick_threads(ex, bytes, N * C);
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    for_my_runs(N * C, C, [&](int64_t r, int64_t c) {
      const FwdCoef<Cp> k{co.k[0][c], co.k[1][c], co.k[2][c]};
      fn.nc({a.x + r * L, a.residual ? a.residual + r * L : nullptr, a.y + r * L, L, 1, L, k, slope, stream});
    });
    if (stream) stream_fence();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward

template <class S>
struct BwdSetup {
  BwdFns<S> fn;
  compute_t<S> slope, inv_slope;
  bool sums;        // the reductions run
  bool elementwise; // dx is written
  bool scale_only;  // dx = a * dz (frozen statistics)
  bool from_y;
  explicit BwdSetup(const BackwardArgs<S>& a)
      : fn(bwd_fns<S>(a.epi.act, a.x == nullptr)),
        slope(static_cast<compute_t<S>>(a.epi.slope)),
        inv_slope(a.epi.slope != 0 ? static_cast<compute_t<S>>(1.0 / a.epi.slope) : compute_t<S>(0)),
        sums(a.phase == Phase::reduce ||
             (a.phase == Phase::full && (a.batch_stats || a.dgamma || a.dbeta))),
        elementwise(a.phase != Phase::reduce),
        scale_only(!a.batch_stats),
        from_y(a.x == nullptr) {}
};

// The backward's sums of short runs (flat_nc) for the channels [c0, c1): column sums per position down the N rows
// (one row of C * L positions per sample, read in order) with each channel's center, then each channel's L
// positions added (lane_sums), as nc_flat_stats does; coef[c] = finish_bwd(...). cs holds ColumnScratch<S>::bytes(
// c1 - c0, L). A position's sums do not depend on c0 and c1, so neither do the bits.
template <class S>
inline void flat_group_sums(const BackwardArgs<S>& a, const BwdSetup<S>& su, int64_t c0, int64_t c1,
                            const ColumnScratch<S>& cs, bool phased, BwdCoef<compute_t<S>>* coef) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, L = a.inner, P = a.channels * L, p0 = c0 * L, np = (c1 - c0) * L;
  if (np <= 0) return;
  auto off = [](const S* p, int64_t o) { return p ? p + o : nullptr; };
  for (int64_t c = c0; c < c1; ++c) {
    std::fill(cs.k + (c - c0) * L, cs.k + (c + 1 - c0) * L, static_cast<Cp>(bwd_channel(a, c).center));
  }
  std::fill(cs.k + np, cs.k + round_up(np, 16), Cp(0));  // the last vector's spare lanes
  std::fill(cs.s1, cs.s1 + round_up(np, 16), 0.0);
  std::fill(cs.s2, cs.s2 + round_up(np, 16), 0.0);
  su.fn.sums_cl(a.dy + p0, off(a.x, p0), off(a.y, p0), N, N, np, P, cs.k, su.slope, su.inv_slope, cs.s1, cs.s2,
                phased);
  for (int64_t c = c0; c < c1; ++c) {
    double sdz, sum_u;
    lane_sums(cs.s1 + (c - c0) * L, cs.s2 + (c - c0) * L, L, sdz, sum_u);
    coef[c] = finish_bwd(a, c, sdz, sum_u);
  }
}

// The full backward of short runs (flat_nc, or runs of up to kFlatMaxRun values beyond the last-level cache) by
// channel groups: each thread takes its channels gc at a time (group_channels), the group's sums as column sums down
// the N rows (as the sums below, same bits), then its dx row by row over blocks of kFlatBlock positions, whose
// coefficients stay in L1. Beyond the last-level cache dx prefetches the next group's inputs at the same position of
// each sample (as train_nc_flat's y pass), so that the next sums' reads overlap the streaming writes.
template <class S>
void backward_flat_groups(const BackwardArgs<S>& a, const BwdSetup<S>& su, const Exec& ex, int nt, int64_t gc) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner, P = C * L;
  const int64_t bytes = N * P * static_cast<int64_t>(sizeof(S));
  const bool phased = bytes >= ex.stream_min_bytes;
  const bool stream = can_stream(a.dx, bytes, ex.stream_min_bytes);
  const int64_t per_thread = group_scratch_bytes<S, 4>(gc, L);
  Carver carve(ex.workspace->reserve(nt * per_thread + Carver::bytes<BwdCoef<Cp>>(C)));
  char* scratch = carve.take<char>(nt * per_thread);
  BwdCoef<Cp>* coef = carve.take<BwdCoef<Cp>>(C);
  auto off = [](const S* p, int64_t o) { return p ? p + o : nullptr; };
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    const int64_t my_end = my_share(C).end;
    for_my_groups<S, 4>(C, L, gc, scratch, [&](int64_t c0, int64_t c1, const ColumnScratch<S>& cs, char* co) {
      flat_group_sums(a, su, c0, c1, cs, phased, coef);
      const int64_t pf = stream && c1 + (c1 - c0) <= my_end ? (c1 - c0) * L : 0;  // the next group, if whole
      group_rows_walk<Cp, 4>(
          N, P, L, c0 * L, (c1 - c0) * L, a.dx, stream, co,
          [&](int64_t c, Cp* v) {
            v[0] = coef[c].center;
            v[1] = coef[c].a;
            v[2] = coef[c].b;
            v[3] = coef[c].d;
          },
          [&](int64_t q, int64_t len, Cp* const* k, bool st) {
            su.fn.flat_cl({a.dy + q, off(a.x, q), off(a.y, q), a.dx + q, a.dresidual ? a.dresidual + q : nullptr,
                           len, len, k[0], k[1], k[2], k[3], su.slope, su.inv_slope, st, pf});
          });
    });
    if (stream) stream_fence();
  }
}

template <class S>
void backward_nc(const BackwardArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t N = a.outer, C = a.channels, L = a.inner, stride = C * L;
  const int64_t bytes = N * stride * static_cast<int64_t>(sizeof(S));
  const NcPlan pl = NcPlan::make<S>(N, C, L);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, C * pl.nb);
  const bool stream = can_stream_runs(a.dx, bytes, L, ex.stream_min_bytes);
  const BwdSetup<S> su(a);
  const int64_t arrays = 1 + (a.x != nullptr) + (a.y != nullptr && (a.epi.act != Act::none || !a.x));
  const bool prefetch_short = short_runs_prefetch<S>(L, arrays * bytes, nt, ex);
  auto off = [](const S* p, int64_t o) { return p ? p + o : nullptr; };
  // Sdz and Su of block b of channel c, prefetching the block pf values on (0: none).
  auto block_sums = [&](int64_t c, int64_t b, int64_t pf, double& g, double& h) {
    const NcPlan::Block bl = pl.block(b);
    const int64_t o = c * L + bl.offset;
    su.fn.sums_nc({a.dy + o, off(a.x, o), off(a.y, o), stride, bl.rows, bl.len,
                   static_cast<Cp>(bwd_channel(a, c).center), su.slope, su.inv_slope, pf},
                  g, h);
  };
  // Where the sums of block b of channel c, read in a pipeline, prefetch the block read next (0: none).
  auto sums_pf = [&](int64_t c, int64_t b) -> int64_t {
    return stream || prefetch_short ? pl.to_next(c * pl.nb + b, C * pl.nb) : 0;
  };
  auto sums_block = [&](int64_t c, int64_t b, double& sdz, double& sum_u) {
    double g, h;
    block_sums(c, b, sums_pf(c, b), g, h);
    sdz += g;
    sum_u += h;
  };
  auto dx_block = [&](int64_t c, int64_t b, const BwdCoef<Cp>& k, bool prefetch_next = false) {
    const NcPlan::Block bl = pl.block(b);
    const int64_t o = c * L + bl.offset;
    const BwdBlock<S> blk{a.dy + o, off(a.x, o), off(a.y, o), a.dx + o, a.dresidual ? a.dresidual + o : nullptr,
                          stride, bl.rows, bl.len, k, su.slope, su.inv_slope, stream,
                          prefetch_next && stream ? L : 0};
    if (su.scale_only) {
      su.fn.scale_block_nc(blk);
    } else {
      su.fn.block_nc(blk);
    }
  };

  // The pipelines' step on CPUs that take it in one loop (backward_one_loop): dx of block b of channel c with the
  // sums of block b of channel c + 1, prefetching pf values on (0: none).
  const bool one_loop = backward_one_loop();
  auto dx_with_sums = [&](int64_t c, int64_t b, const BwdCoef<Cp>& k, int64_t pf, double& g, double& h) {
    const NcPlan::Block bl = pl.block(b);
    const int64_t o = c * L + bl.offset, n = o + L;
    const BwdBlock<S> blk{a.dy + o, off(a.x, o), off(a.y, o), a.dx + o, a.dresidual ? a.dresidual + o : nullptr,
                          stride, bl.rows, bl.len, k, su.slope, su.inv_slope, stream};
    su.fn.block_with_sums_nc(blk,
                             {a.dy + n, off(a.x, n), off(a.y, n), stride, bl.rows, bl.len,
                              static_cast<Cp>(bwd_channel(a, c + 1).center), su.slope, su.inv_slope, pf},
                             g, h);
  };

  // dx as one flat range whose coefficients (co, C + W entries) change every L values (RunCycling), cut between
  // the threads at lines of dx: call inside a parallel region.
  auto dx_runs = [&](const ClCoef<Cp>& co) {
    const bool stream_all = can_stream(a.dx, bytes, ex.stream_min_bytes);
    const Share sh = my_lines(N * stride, a.dx);
    const int64_t b = sh.begin;
    if (sh.end > b) {
      const BwdRuns<S> f{a.dy + b,   off(a.x, b), off(a.y, b), a.dx + b, a.dresidual ? a.dresidual + b : nullptr,
                         sh.end - b, b,           L,           C,        {co.k[0], co.k[1], co.k[2], co.k[3]},
                         su.slope,   su.inv_slope, stream_all};
      (su.scale_only ? su.fn.scale_runs_nc : su.fn.runs_nc)(f);
    }
    if (stream_all) stream_fence();
  };

  // Runs of a few vectors (NCHW 10x10 to 14x14) with no sums to take (the apply phase of a distributed backward;
  // frozen statistics without parameter gradients) where the pass does not fit in the last-level cache: dx as one
  // flat range whose coefficients change every L values (RunCycling), as inference does, instead of N * C runs
  // each with a head and a tail. Apply phase, 2 threads, builds alternating on the EPYC VM, of the 3S stream:
  // 256x256x14x14 0.81-0.93 -> 0.94-0.98, 128x256x14x14 0.79-0.96 -> 0.89-1.05, 64x256x14x14 (just beyond the
  // cache) 0.90-0.92 -> 0.88-1.07; in cache a run-time switch showed losses (32x256x14x14 0.98x, 64x128x12x12 0.95x).
  if (!su.sums && runs_flat<S>(L) && !flat_nc(C, L) && (arrays + 1) * bytes >= 2 * ex.stream_min_bytes) {
    Carver carve(ex.workspace->reserve(ClCoef<Cp>::bytes(C, 4)));
    ClCoef<Cp> co = ClCoef<Cp>::carve(carve, C, 4);
    for (int64_t c = 0; c < C; ++c) co.set(c, finish_bwd(a, c, 0.0, 0.0));
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      dx_runs(co);
    }
    return;
  }

  // Short runs (NCHW 5x5 to 8x8) by channel groups (backward_flat_groups), as the training forward goes: the flat
  // periods, and beyond the last-level cache runs of up to kFlatMaxRun values whose period is too long for the flat
  // walk too (row_cols below: the same column sums), in groups of at least kGroupMinRowsSegment bytes a sample, which
  // may leave the core's cache for the last-level one. One process switching per call on the EPYC Zen 4 VM (20-30
  // pairs, 2 threads, float32; against the sums of all channels and then dx from memory): 512x256x7x7 1.27-1.31x,
  // 256x512x7x7 1.05-1.45x, 128x2048x7x7 1.16-1.39x, 64x2048x7x7 1.21-1.49x, 256x256x8x8 1.29-1.36x, 128x512x8x8
  // 0.96-1.24x, 256x1024x5x5 1.17-1.33x, 256x512x6x6 0.94-1.28x; float64 512x256x7x7 1.55x, 256x1024x5x5 1.38x,
  // 128x512x8x8 1.00x; bfloat16 (bound by its conversions) 0.98-1.04x; one thread 512x256x7x7 1.70x, 256x1024x5x5
  // 0.95-1.17x, 256x512x6x6 1.21x, 128x512x8x8 0.91-0.95x. The next group's prefetch gave 0.98-1.14x of that.
  // Within the last-level cache such runs (from kRowsMinBackwardBytes) take the column sums as well, by groups where a
  // core's cache holds them, else read by rows: channel by channel, block by block, each run of a few lines had been
  // a new stream met cold. The same process switching (21-31 pairs, 2 threads, against block by block): backward
  // bfloat16 128x512x8x8 1.40-1.61x, 96x512x6x6 1.20x, 128x1024x5x5 1.24x, float32 96x512x6x6 1.41x, 128x1024x5x5
  // 1.62x, 64x300x8x8 1.22x, 16x512x8x8 1.10x; the reduce phase 1.2-2.4x; one thread 1.12-1.63x and 1.05-2.43x; the
  // rest even. Runs of more than kFlatMaxRun values read by rows within that cache lost (0.40-0.83x).
  const bool flat = su.elementwise && flat_nc(C, L);
  const bool rows = su.sums && !su.scale_only && bytes >= kRowsMinBackwardBytes && rows_nc<S>(N, C, L, ex) &&
                    !pipelines_streamed_runs<S>(L, bytes, ex);
  const bool row_cols = rows && L <= kFlatMaxRun;
  if (su.elementwise && (flat_nc(C, L) || row_cols) && su.sums && !su.scale_only && a.phase == Phase::full &&
      channels_balance(C, nt)) {
    const int64_t gc = group_channels<S>(N, L, ceil_div(C, nt), arrays + 1, ex, bytes >= ex.stream_min_bytes);
    if (gc > 0) {
      backward_flat_groups(a, su, ex, nt, gc);
      return;
    }
  }
  // Runs of a few vectors (rows_nc; not where pipelines_streamed_runs): every channel's sums first (beyond the
  // last-level cache, row_sums_nc, sample by sample, nc_row_sums, or for runs of at most kFlatMaxRun as the column sums
  // of flat_nc, read by rows; else block by block), then dx as one flat range. In the reduce phase too, so that its
  // sums are the full backward's. The column sums of 7x7 runs, builds alternating (3 pairs, 2 threads): 256x512x7x7
  // backward 0.30 -> 0.47-0.51 of the 3S stream, its reduce phase on one thread 4.5-4.6 -> 2.2-2.3 ms; of longer runs
  // they were slower (one process, order shuffled, reduce phase: 256x256x14x14 3.9 -> 6.0 ms on one thread, 2.9 -> 3.9
  // on two; 128x512x10x10 2.6 -> 3.0, 1.4 -> 1.7). Sample by sample, builds alternating on the EPYC Zen 4 VM (3 pairs,
  // 2 threads, of the 3S stream): 128x512x7x7 0.23-0.24 -> 0.35-0.40, 64x256x14x14 0.38-0.43 -> 0.48-0.51, 64x512x10x10
  // 0.30-0.35 -> 0.42-0.48, 256x256x14x14 0.48-0.56 -> 0.50-0.55 (one thread 0.37-0.41 -> 0.54); its reduce phase alone
  // 3.8-4.2 -> 2.5-2.9 ms. Not under kRowsMinBackwardBytes, where the pipeline's overheads are less than the extra pass
  // (8x64x14x14, 0.4 MB: 28 -> 34 us; 16x128x14x14, 1.6 MB: 80 -> 70 us).
  const bool by_rows = rows && row_sums_nc<S>(N, C, L, ex) && !row_cols;
  const int64_t channel_bytes = arrays * N * L * static_cast<int64_t>(sizeof(S));
  if (a.phase == Phase::full && !su.scale_only && !flat && !rows &&
      team_pipeline(nt, pl.nb, channel_bytes, ex.cache_bytes)) {
    // Each thread takes its share of every channel's blocks (see team_pipeline), else as the pipeline below.
    run_team(
        ex, nt, pl, C, stream,
        [&](int64_t c, int64_t b, int64_t pf, double* q) { block_sums(c, b, pf, q[0], q[1]); },
        [&](int64_t c, const double* q) {
          double sdz = 0, sum_u = 0;
          for (int64_t b = 0; b < pl.nb; ++b) {
            sdz += q[2 * b];
            sum_u += q[2 * b + 1];
          }
          return finish_bwd(a, c, sdz, sum_u, thread_id() == 0);  // every thread's coefficients, one writer
        },
        [&](int64_t c, int64_t b, const BwdCoef<Cp>& k, double* q, int64_t pf) {
          if (q && one_loop) {
            dx_with_sums(c, b, k, pf, q[0], q[1]);
          } else {
            dx_block(c, b, k, q != nullptr);
            if (q) block_sums(c + 1, b, pf, q[0], q[1]);
          }
        });
    return;
  }
  if (a.phase == Phase::full && channels_balance(C, nt) && !flat && !rows) {
    // The pipeline keeps two channels' inputs in cache; when they do not fit, LRU evicts the very lines the
    // dx pass needs next, and the plain order is faster.
    const bool pipelined = 2 * channel_bytes <= ex.cache_bytes;
    StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      probe.started();
      const Share mine = my_share(C);
      if (su.scale_only) {
        // Frozen statistics: dx needs no sums, so each block's sums and dx are done together (one pass).
        for (int64_t c = mine.begin; c < mine.end; ++c) {
          const BwdCoef<Cp> k = finish_bwd(a, c, 0.0, 0.0);
          double sdz = 0, sum_u = 0;
          for (int64_t b = 0; b < pl.nb; ++b) {
            if (su.sums) sums_block(c, b, sdz, sum_u);
            dx_block(c, b, k);
          }
          if (su.sums) finish_bwd(a, c, sdz, sum_u);  // writes dgamma / dbeta
        }
      } else if (!pipelined) {
        // Channels too big to keep two in cache: the sums of a channel, then its dx (the second read comes
        // from cache as long as one channel's slabs fit).
        for (int64_t c = mine.begin; c < mine.end; ++c) {
          double sdz = 0, sum_u = 0;
          for (int64_t b = 0; b < pl.nb; ++b) sums_block(c, b, sdz, sum_u);
          const BwdCoef<Cp> k = finish_bwd(a, c, sdz, sum_u);
          for (int64_t b = 0; b < pl.nb; ++b) dx_block(c, b, k);
        }
      } else {
        // Pipelined over channels as in train_nc: the dx of channel c block by block together with the sums
        // of channel c + 1, each prefetching what is read next (tensors beyond the last-level cache; paired,
        // 2 threads, against no prefetches: 32x256x28x28 1.10x, 256x256x14x14 1.04x; the sums' prefetch alone
        // gives the unpipelined 64x128x56x56 1.09x and NCL 128x64x1024 1.05x).
        // A block's dx in the loop of the next channel's sums (bwd_block_with_sums, here and in the team), as the
        // training forward's step, did not pay on the EPYC Zen 4 VM (paired, ~300 pairs: NCL 1.03x, 128x64x32x32
        // 1.02x, 64x128x56x56 1.00x, 32x256x28x28 0.92x, 64x3x224x224 0.96x), so AMD CPUs take the two loops.
        // On the Intel Xeon VM (family 6 model 167) the two loops' reads from memory and streaming writes hardly
        // overlapped (the backward took about its reduce phase plus a dx pass from memory) and one loop paid: a
        // run-time switch in one build, 3 pairs of processes alternating, 2 threads, of the 3S stream,
        // 64x128x56x56 0.62-0.72 -> 0.79-0.91, 16x256x56x56 0.64-0.76 -> 0.83-0.86, 32x64x112x112 0.61-0.68 ->
        // 0.69-0.81, 32x128x48x48 0.60-0.69 -> 0.70-0.95, 64x256x28x28 0.61-0.71 -> 0.73-0.83, 64x3x224x224
        // 0.52-0.55 -> 0.58-0.71, 128x64x64x64 0.54-0.60 -> 0.63-0.67, 128x128x32x32 0.48-0.50 -> 0.52-0.55;
        // even: NCL 128x64x1024, 256x256x14x14, 32x256x28x28. One thread: 64x256x28x28 18.6-25.9 -> 13.8-18.7 ms,
        // 16x256x56x56 19.0-25.4 -> 12.0-18.5 ms. float64 64x128x28x28 9.7-10.9 -> 6.5-12.0 ms, bfloat16
        // 64x128x56x56 11.5-11.9 -> 8.6-11.3 ms; with ReLU even.
        double sdz = 0, sum_u = 0;
        if (mine.begin < mine.end) {
          for (int64_t b = 0; b < pl.nb; ++b) sums_block(mine.begin, b, sdz, sum_u);
        }
        for (int64_t c = mine.begin; c < mine.end; ++c) {
          const BwdCoef<Cp> k = finish_bwd(a, c, sdz, sum_u);
          sdz = sum_u = 0;
          for (int64_t b = 0; b < pl.nb; ++b) {
            if (c + 1 < mine.end && one_loop) {
              double g, h;
              dx_with_sums(c, b, k, sums_pf(c + 1, b), g, h);
              sdz += g;
              sum_u += h;
            } else {
              dx_block(c, b, k, c + 1 < mine.end);
              if (c + 1 < mine.end) sums_block(c + 1, b, sdz, sum_u);
            }
          }
        }
      }
      if (stream) stream_fence();
    }
    return;
  }

  const FlatPlan fp = FlatPlan::make<S>(N, C, L);
  const bool runs_dx = flat && runs_not_walked<S>(L, bytes);  // dx as the flat range, not the flat walk
  const int64_t per_thread = flat && !runs_dx ? fp.bytes_per_thread<Cp>(4) : 0;
  const bool flat_sums = su.sums && (flat_nc(C, L) || row_cols);
  const int64_t pos_bytes = flat_sums ? ColumnScratch<S>::bytes(C, L) : 0;
  const RowPlan plan = nc_row_plan<S>(N, C, L);
  const int64_t parts = by_rows ? plan.nchunks * C : C * pl.nb;
  const bool rows_dx = (rows && su.elementwise) || runs_dx;
  Carver carve(ex.workspace->reserve(Carver::bytes<double>(2 * parts) + Carver::bytes<BwdCoef<Cp>>(C) +
                                     nt * per_thread + nt * pos_bytes + (rows_dx ? ClCoef<Cp>::bytes(C, 4) : 0)));
  double* part = carve.take<double>(2 * parts);
  BwdCoef<Cp>* coef = carve.take<BwdCoef<Cp>>(C);
  char* scratch = carve.take<char>(nt * per_thread);
  char* pos_scratch = carve.take<char>(nt * pos_bytes);
  ClCoef<Cp> co{};
  if (rows_dx) co = ClCoef<Cp>::carve(carve, C, 4);
  const bool flat_stream = flat && can_stream(a.dx, bytes, ex.stream_min_bytes);
  if (!su.sums) {
    for (int64_t c = 0; c < C; ++c) coef[c] = finish_bwd(a, c, 0.0, 0.0);
  }
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    if (flat_sums) {
      // Short runs: the column sums of flat_group_sums over this thread's channels. Run by run, each run of a few
      // vectors cost a head and a tail: old and new builds alternating on the EPYC VM, one thread,
      // 16x512x5x5 102 -> 66 us, 32x128x7x7 73 -> 59; two threads 55 -> 39 and 40 -> 33 (32x64x8x8 about even).
      const Share mine = my_share(C);
      flat_group_sums(a, su, mine.begin, mine.end, ColumnScratch<S>::mine(pos_scratch, C, L),
                      bytes >= ex.stream_min_bytes, coef);
#pragma omp barrier
    } else if (by_rows) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) coef[c].center = static_cast<Cp>(bwd_channel(a, c).center);  // once each
      nc_row_sums(N, C, plan, part, [&](int64_t r, int64_t c, double& g, double& h) {
        const int64_t o = r * stride + c * L;
        su.fn.sums_nc({a.dy + o, off(a.x, o), off(a.y, o), 0, 1, L, coef[c].center, su.slope, su.inv_slope}, g, h);
      });
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) coef[c] = finish_bwd(a, c, part[2 * c], part[2 * c + 1]);
    } else if (su.sums) {
      // Prefetching as the statistics pass does, beyond the last-level cache, whether or not dx streams (the
      // reduce phase writes none), and for short runs beyond the cores' caches (short_runs_prefetch).
      const bool prefetch = bytes >= ex.stream_min_bytes || prefetch_short;
      for_my_units<S>(pl, C, [&](int64_t u, int64_t pf) {
        block_sums(u / pl.nb, u % pl.nb, prefetch ? pf : 0, part[2 * u], part[2 * u + 1]);
      });
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        double sdz = 0, sum_u = 0;
        for (int64_t b = 0; b < pl.nb; ++b) {
          sdz += part[2 * (c * pl.nb + b)];
          sum_u += part[2 * (c * pl.nb + b) + 1];
        }
        coef[c] = finish_bwd(a, c, sdz, sum_u);
      }
    }
    if (flat && !runs_dx) {
      flat_walk<Cp, 4>(
          N, fp, scratch, span_phase(a.dx, flat_stream), a.dx,
          [&](int64_t c, Cp* v) {
            v[0] = coef[c].center;
            v[1] = coef[c].a;
            v[2] = coef[c].b;
            v[3] = coef[c].d;
          },
          [&](int64_t o, int64_t n, int64_t period, Cp* const* k) {
            const BwdFlat<S> f{a.dy + o, off(a.x, o), off(a.y, o), a.dx + o, a.dresidual ? a.dresidual + o : nullptr,
                               n,        period,      k[0],        k[1],     k[2],
                               k[3],     su.slope,    su.inv_slope, flat_stream};
            if (su.scale_only) {
              su.fn.scale_flat_cl(f);
            } else {
              su.fn.flat_cl(f);
            }
          });
      if (flat_stream) stream_fence();
    } else if (rows_dx) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) co.set(c, coef[c]);
#pragma omp single
      co.extend(C, 4);
      dx_runs(co);
    } else if (su.elementwise) {
      for_my_runs(N * C, C, [&](int64_t r, int64_t c) {
        const int64_t o = r * L;
        const BwdBlock<S> blk{a.dy + o, off(a.x, o), off(a.y, o), a.dx + o, a.dresidual ? a.dresidual + o : nullptr,
                              L, 1, L, coef[c], su.slope, su.inv_slope, stream};
        if (su.scale_only) {
          su.fn.scale_block_nc(blk);
        } else {
          su.fn.block_nc(blk);
        }
      });
      if (stream) stream_fence();
    }
  }
}

template <class S>
void backward_cl(const BackwardArgs<S>& a, const Exec& ex) {
  using Cp = compute_t<S>;
  const int64_t R = a.outer, C = a.channels;
  const int64_t bytes = R * C * static_cast<int64_t>(sizeof(S));
  const RowPlan plan = row_plan<S>(R, C, 2);
  [[maybe_unused]] const int nt = pick_threads(ex, bytes, plan.nchunks);
  const bool stream = can_stream(a.dx, bytes, ex.stream_min_bytes);
  const BwdSetup<S> su(a);

  const int64_t Cs = round_up(C, 16);  // partial rows padded: the last channel group adds whole vectors
  Carver carve(ex.workspace->reserve(2 * Carver::bytes<double>(plan.nchunks * Cs) + ClCoef<Cp>::bytes(C, 4) +
                                     Carver::bytes<Cp>(C + Vec<Cp>::width)));
  double* psdz = carve.take<double>(plan.nchunks * Cs);
  double* psu = carve.take<double>(plan.nchunks * Cs);
  ClCoef<Cp> co = ClCoef<Cp>::carve(carve, C, 4, span_phase(a.dx, stream), a.dx);
  Cp* center = carve.take<Cp>(C + Vec<Cp>::width);
  for (int64_t c = 0; c < C; ++c) center[c] = static_cast<Cp>(bwd_channel(a, c).center);
  extend_channels(center, C, Vec<Cp>::width);
  const bool dx_with_sums = su.sums && su.scale_only && a.phase == Phase::full;  // dx of a tile in cache
  if (su.scale_only || !su.sums) {
    for (int64_t c = 0; c < C; ++c) co.set(c, finish_bwd(a, c, 0.0, 0.0));
    co.extend(C, 4);
  }
  auto dx_rows = [&](int64_t r0, int64_t rows) {
    const int64_t o = r0 * C;
    auto off = [o](auto* p) { return p ? p + o : nullptr; };
    const BwdFlat<S> f{a.dy + o, off(a.x), off(a.y), a.dx + o, off(a.dresidual), rows * C, C,
                       co.k[0],  co.k[1],  co.k[2],  co.k[3],  su.slope,         su.inv_slope, stream};
    if (su.scale_only) {
      su.fn.scale_flat_cl(f);
    } else {
      su.fn.flat_cl(f);
    }
  };

  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
    if (su.sums) {
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
        double* pg = psdz + ch * Cs;
        double* ph = psu + ch * Cs;
        for (int64_t c = 0; c < Cs; ++c) pg[c] = ph[c] = 0;
        const int64_t end = min64(R, plan.chunk_begin(ch) + plan.chunk);
        for (int64_t r0 = plan.chunk_begin(ch); r0 < end; r0 += plan.tile) {
          const int64_t rows = min64(plan.tile, end - r0), o = r0 * C;
          su.fn.sums_cl(a.dy + o, a.x ? a.x + o : nullptr, a.y ? a.y + o : nullptr, rows, end - r0, C, C, center,
                        su.slope, su.inv_slope, pg, ph, bytes >= ex.stream_min_bytes);
          if (dx_with_sums) dx_rows(r0, rows);
        }
      }
      // The chunks' sums added in chunk order into chunk 0's, each thread over its own channels, reading the
      // partials row by row (not channel by channel through all chunks: 3% of 8192x1024's backward).
      const Share mine = my_share(C);
      for (int64_t c = mine.begin; c < mine.end; ++c) {
        psdz[c] = 0.0 + psdz[c];  // the sums start at 0, as a channel's own loop would
        psu[c] = 0.0 + psu[c];
      }
      for (int64_t ch = 1; ch < plan.nchunks; ++ch) {
        for (int64_t c = mine.begin; c < mine.end; ++c) {
          psdz[c] += psdz[ch * Cs + c];
          psu[c] += psu[ch * Cs + c];
        }
      }
      for (int64_t c = mine.begin; c < mine.end; ++c) {
        const BwdCoef<Cp> k = finish_bwd(a, c, psdz[c], psu[c]);  // writes dgamma / dbeta (and sums)
        if (!su.scale_only) co.set(c, k);
      }
#pragma omp barrier
      if (!su.scale_only) {
#pragma omp single
        co.extend(C, 4);
      }
    }
    if (su.elementwise && !dx_with_sums) {
#pragma omp for schedule(static)
      for (int64_t ch = 0; ch < plan.nchunks; ++ch) {
        const int64_t r0 = plan.chunk_begin(ch);
        dx_rows(r0, min64(plan.chunk, R - r0));
      }
    }
    if (stream) stream_fence();
  }
}

template <class S>
void backward(const BackwardArgs<S>& a, const Exec& ex) {
  if (a.inner == 1) {
    backward_cl(a, ex);
  } else {
    backward_nc(a, ex);
  }
}

#if !defined(FASTBN_ISA_AVX512_BF16)  // that path's table takes avx512's
// ---------------------------------------------------------------------------------------------------------
// Yardsticks: a streaming copy (2S), dst = a + b (3S) and a read of S bytes (their sum), as fast as this path's
// loops can move bytes

template <class F>
void yardstick(float* dst, int64_t count, int arrays, const Exec& ex, F&& f) {
  constexpr int64_t kUnit = 16 * 1024;  // floats per work unit
  const int64_t units = ceil_div(count, kUnit);
  const int64_t bytes = count * static_cast<int64_t>(sizeof(float));
  [[maybe_unused]] const int nt = pick_threads(ex, arrays * bytes, units);
  const bool stream = can_stream(dst, bytes, kStreamMinBytes);
  Uniform<float, 1> k{};
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    probe.started();
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t i = u * kUnit;
      span(dst + i, min64(kUnit, count - i), stream, k, [&](int64_t j, auto m) { return f(i + j, m); });
    }
    if (stream) stream_fence();
  }
}

void copy(const float* src, float* dst, int64_t count, const Exec& ex) {
  yardstick(dst, count, 2, ex, [&](int64_t i, auto m) { return ld(src + i, m); });
}

void add(const float* a, const float* b, float* dst, int64_t count, const Exec& ex) {
  yardstick(dst, count, 3, ex, [&](int64_t i, auto m) { return Vec<float>::add(ld(a + i, m), ld(b + i, m)); });
}

// The sum of src in float lanes (four chains, so that the adds keep up with the loads), in double per unit.
double read(const float* src, int64_t count, const Exec& ex) {
  using V = Vec<float>;
  constexpr int W = V::width;
  constexpr int64_t kUnit = 16 * 1024;  // floats per work unit
  const int64_t units = ceil_div(count, kUnit);
  [[maybe_unused]] const int nt = pick_threads(ex, count * static_cast<int64_t>(sizeof(float)), units);
  double total = 0.0;
  StartProbe probe(nt);
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(+ : total)
  {
    probe.started();
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const float* p = src + u * kUnit;
      const int64_t n = min64(kUnit, count - u * kUnit);
      typename V::reg a[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
      int64_t i = 0;
      for (; i + 4 * W <= n; i += 4 * W) {
        for (int j = 0; j < 4; ++j) a[j] = V::add(a[j], ld(p + i + j * W, Full{}));
      }
      for (; i < n; i += W) {
        const int m = static_cast<int>(min64(W, n - i));
        a[0] = V::add(a[0], keep<V>(m, ld(p + i, m), V::zero()));
      }
      total += V::hsum(V::add(V::add(a[0], a[1]), V::add(a[2], a[3])));
    }
  }
  return total;
}
#endif

template <class S>
constexpr Kernels<S> kernels() {
  return {&train<S>, &apply<S>, &stats<S>, &backward<S>};
}

}  // namespace

#if defined(FASTBN_ISA_AVX512_BF16)
// Only bfloat16 outputs differ from the avx512 path (in how they are rounded, not in their bits), so only its
// kernels are compiled again.
const KernelTable& table() {
  static const KernelTable t = [] {
    KernelTable k = avx512::table();
    k.name = FASTBN_ISA_NAME;
    k.bf16 = kernels<bfloat16>();
    return k;
  }();
  return t;
}
#else
const KernelTable& table() {
  static const KernelTable t{FASTBN_ISA_NAME,  kernels<float>(), kernels<double>(), kernels<bfloat16>(),
                             kernels<float16>(), &copy,          &add,           &read};
  return t;
}
#endif

}  // namespace FASTBN_ISA_NS
}  // namespace cpu
}  // namespace fastbn
