// Chooses the CPU kernel table at run time: the best instruction set the CPU supports, unless FASTBN_SIMD
// forces one. Also owns the per-thread workspace, the thread count and what a forked child may use.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/kernels.hpp"
#include "detail.hpp"
#include "fastbn/batchnorm.hpp"

namespace fastbn {
namespace cpu {

Workspace::~Workspace() { std::free(data_); }

void* Workspace::reserve(size_t bytes) {
  if (bytes <= capacity_ && data_) return data_;
  size_t cap = capacity_ + capacity_ / 2;
  if (cap < bytes) cap = bytes;
  cap = (cap + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, cap == 0 ? 64 : cap);
  if (!p) throw std::bad_alloc();
  std::free(data_);
  data_ = p;
  capacity_ = cap;
  return p;
}

namespace {
std::atomic<int64_t> g_core_cache{0};  // 0: the size the system reports
}  // namespace

int64_t core_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (v > 0) return static_cast<int64_t>(v);
#endif
    return int64_t{1} << 20;
  }();
  const int64_t set = g_core_cache.load(std::memory_order_relaxed);
  return set > 0 ? set : bytes;
}

void set_core_cache_bytes(int64_t bytes) {
  if (bytes < 1) {
    throw Error(Status::bad_argument, "fastbn: the core cache size must be >= 1 byte, got " + std::to_string(bytes));
  }
  g_core_cache.store(bytes, std::memory_order_relaxed);
}

void reset_core_cache_bytes() { g_core_cache.store(0, std::memory_order_relaxed); }

namespace {

// An x86 CPU other than AMD's (read once): where schedules measured on the EPYC Zen 4 VM and on the Intel Xeon VM
// went different ways, the Xeon's choice. False in builds without the x86 kernels, where nothing was measured.
bool x86_not_amd() {
#if defined(FASTBN_X86_KERNELS)
  static const bool v = !__builtin_cpu_is("amd");
  return v;
#else
  return false;
#endif
}

}  // namespace

bool short_runs_by_rows() { return !x86_not_amd(); }

bool backward_one_loop() { return x86_not_amd(); }

namespace {

// Whether FASTBN_MIN_BYTES_PER_THREAD (or set_min_bytes_per_thread) chose the value: then it holds for every
// call, crowded or not.
std::atomic<bool> g_min_bytes_chosen{false};

// OpenMP's idle threads spin for about as long as a wake-up costs, then sleep (GOMP_SPINCOUNT, set by fastbn's
// Python package, see fastbn/__init__.py). Back-to-back calls, and calls inside a model whose framework keeps
// the cores busy, find the second thread awake: it pays from 256 KiB per thread (a 32x64x8x8 backward on the
// project's 2-vCPU VM: 44 -> 24 us). After a short idle spell it must be woken (25-50 us there) and costs more
// than it saves on calls under ~1 MiB, the price of the lower threshold; a longer wait (a long sleep, or a CPU
// held by another process) makes the back-off below keep such calls on one thread.
int64_t initial_min_bytes_per_thread() {
  if (const char* env = std::getenv("FASTBN_MIN_BYTES_PER_THREAD")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end && *end == '\0' && v >= 1) {
      g_min_bytes_chosen.store(true);
      return v;
    }
  }
  return int64_t{256} << 10;
}

// While another process holds the CPU a second thread would run on, that thread starts a region only when the
// scheduler gives it a turn (0.1 ms and more, against ~0.2 us spinning and 25-50 us after a short sleep on the
// EPYC VM; after 10 ms idle a wake-up took 0.1 ms too), and a 1 MiB call took 0.145 ms on two threads against
// 0.042 on one. So a start delay of kCrowdedDelayNs or more puts the previous default, 3 MiB per thread, back
// for kCrowdedHoldNs; the first call with two threads after that measures again: while the machine stays
// crowded, one slow call per 10 ms (~1% of the time of back-to-back calls); after a passing hiccup, 10 ms of
// calls on one thread (with a 0.1 s hold, one hiccup in a benchmark's calibration kept all its samples there).
// A slow start after the team sat idle longer than its spin (kSpinIdleNs: its threads had gone to sleep) always
// counts: sporadic calls then stay on one thread rather than wake the others every time (the EPYC VM, training
// forwards 1 ms apart: 1 MiB 0.11-0.19 ms with the back-off, 0.26 without; 512 KiB 0.10-0.16 against 0.19). A
// slow start of a team that had just run counts only while more threads are runnable than this process has CPUs
// (Linux's run queues, /proc/loadavg): on a 16-vCPU Xeon VM with nothing else running, such hiccups of 0.1 ms
// came often enough that, counted, they kept a 6.4 MB training forward called back to back on 2 threads most of
// the time (0.39 ms, against 0.07 ms on 16).
constexpr int64_t kCrowdedDelayNs = 100'000;
constexpr int64_t kSpinIdleNs = 50'000;  // GOMP_SPINCOUNT=2000, as fastbn sets it: ~46 us on the EPYC VM
constexpr int64_t kCrowdedHoldNs = 10'000'000;
constexpr int64_t kCrowdedMinBytes = int64_t{3} << 20;
std::atomic<int64_t> g_crowded_until{0};
// The team size of the last region reported: a region with another size may have created its threads (a
// fresh process, set_num_threads), which takes longer than any wait for a CPU, so its delay is not counted.
std::atomic<int> g_last_team{0};

std::atomic<int64_t> g_min_bytes{initial_min_bytes_per_thread()};

// A batch norm's output is read next by the layer after it (an activation, an add, a convolution), and a
// benchmark rewrites the same buffer: written with ordinary stores it is still in the last-level cache then;
// streamed, it goes to memory and comes back from there. So only outputs that could not stay in that cache
// anyway are streamed: from half its size (the one the first core shares, as Linux reports it), 4 to 64 MiB,
// unless that cache turns out not to keep what a core writes (probe_cache_keeps, below).
int64_t last_level_cache_bytes() {
  for (const char* index : {"3", "2"}) {
    const std::string path = std::string("/sys/devices/system/cpu/cpu0/cache/index") + index + "/size";
    if (FILE* f = std::fopen(path.c_str(), "r")) {
      long long v = 0;
      char unit = 0;
      const int got = std::fscanf(f, "%lld%c", &v, &unit);
      std::fclose(f);
      if (got >= 1 && v > 0) return v << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
    }
  }
#if defined(_SC_LEVEL3_CACHE_SIZE)
  const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);  // may count the whole package's L3 (AMD)
  if (v > 0) return v;
#endif
  return 0;
}

// FASTBN_STREAM_MIN_BYTES, or 0 where it is unset or not a number >= 1.
int64_t env_stream_min_bytes() {
  if (const char* env = std::getenv("FASTBN_STREAM_MIN_BYTES")) {
    char* end = nullptr;
    const long long v = std::strtoll(env, &end, 10);
    if (end && *end == '\0' && v >= 1) return v;
  }
  return 0;
}

int64_t reported_stream_min_bytes() {
  const int64_t half = last_level_cache_bytes() / 2, lo = kStreamMinBytes, hi = int64_t{64} << 20;
  return half < lo ? lo : half > hi ? hi : half;
}

}  // namespace

int64_t min_bytes_per_thread() { return g_min_bytes.load(std::memory_order_relaxed); }

void set_min_bytes_per_thread(int64_t bytes) {
  if (bytes < 1) {
    throw Error(Status::bad_argument, "fastbn: the minimum bytes per thread must be >= 1, got " +
                                          std::to_string(bytes));
  }
  g_min_bytes.store(bytes, std::memory_order_relaxed);
  g_min_bytes_chosen.store(true, std::memory_order_relaxed);
}

void reset_min_bytes_per_thread() {
  g_min_bytes_chosen.store(false, std::memory_order_relaxed);
  g_min_bytes.store(initial_min_bytes_per_thread(), std::memory_order_relaxed);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t runnable_threads() {
  FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1;
  double load[3];
  long long running = -1, total = 0;
  const int got = std::fscanf(f, "%lf %lf %lf %lld/%lld", &load[0], &load[1], &load[2], &running, &total);
  std::fclose(f);
  return got == 5 && running >= 0 ? running : -1;
}

namespace {
int usable_cpus() {  // the CPUs of this process's affinity mask
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
#endif
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
#endif
}
}  // namespace

void note_thread_start(int64_t delay_ns, int threads, int64_t idle_ns, int64_t runnable) {
  if (g_last_team.exchange(threads, std::memory_order_relaxed) != threads) return;
  if (delay_ns < kCrowdedDelayNs) return;
  if (idle_ns < kSpinIdleNs) {
    // Read right after the region, while its threads still spin: they count among the runnable ones, so a
    // second process on a 2-CPU machine makes 3. Where the count cannot be read, every slow start counts.
    if (runnable < 0) runnable = runnable_threads();
    if (runnable >= 0 && runnable <= usable_cpus()) return;  // a hiccup, not a CPU held by another thread
  }
  g_crowded_until.store(now_ns() + kCrowdedHoldNs, std::memory_order_relaxed);
}

namespace {
std::atomic<int64_t> g_last_region_end{0};  // when the last multi-threaded region ended (0: none yet)
}  // namespace

void note_region(int64_t start_ns, int64_t delay_ns, int threads) {
  const int64_t end = now_ns();
  const int64_t last = g_last_region_end.exchange(end, std::memory_order_relaxed);
  note_thread_start(delay_ns, threads, last == 0 ? INT64_MAX : start_ns - last);
}

bool crowded() {
  const int64_t until = g_crowded_until.load(std::memory_order_relaxed);
  return until != 0 && now_ns() < until;
}

void forget_crowding() { g_crowded_until.store(0, std::memory_order_relaxed); }

Exec exec_here(int64_t bytes) {
  static thread_local Workspace workspace;
  int64_t min_bytes = min_bytes_per_thread();
  if (!g_min_bytes_chosen.load(std::memory_order_relaxed) && crowded()) {
    min_bytes = std::max(min_bytes, kCrowdedMinBytes);
  }
  return {get_num_threads(), &workspace, core_cache_bytes(), min_bytes, stream_min_bytes(bytes)};
}


namespace {

struct Isa {
  const char* name;
  const KernelTable& (*table)();
  bool (*supported)();
};

#if defined(FASTBN_X86_KERNELS)
bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#if defined(FASTBN_X86_BF16_KERNELS)
bool has_avx512_bf16() { return has_avx512() && __builtin_cpu_supports("avx512bf16"); }
#endif
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif
bool always() { return true; }

// Best first.
const Isa kIsas[] = {
#if defined(FASTBN_X86_KERNELS)
#if defined(FASTBN_X86_BF16_KERNELS)
    {"avx512_bf16", &avx512_bf16::table, &has_avx512_bf16},
#endif
    {"avx512", &avx512::table, &has_avx512},
    {"avx2", &avx2::table, &has_avx2},
#endif
    {"scalar", &scalar::table, &always},
};

const Isa* find_isa(const std::string& name) {
  for (const Isa& i : kIsas) {
    if (name == i.name) return &i;
  }
  return nullptr;
}

const Isa* best_supported() {
  for (const Isa& i : kIsas) {
    if (i.supported()) return &i;
  }
  return &kIsas[sizeof(kIsas) / sizeof(kIsas[0]) - 1];
}

std::atomic<bool> g_quiet{false};

struct Selection {
  std::atomic<const KernelTable*> table{nullptr};
  std::string warning;

  Selection() {
    const Isa* best = best_supported();
    const Isa* chosen = best;
    if (const char* env = std::getenv("FASTBN_SIMD")) {
      std::string want(env);
      for (char& ch : want) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      const Isa* req = want.empty() ? best : find_isa(want);
      if (!req) {
        warning = "FASTBN_SIMD=" + std::string(env) + " is not one of the paths of this build (" +
                  compiled_list() + "); using " + best->name;
      } else if (!req->supported()) {
        warning = "FASTBN_SIMD=" + want + " asks for an instruction set this CPU lacks; using " + best->name;
      } else {
        chosen = req;
      }
    }
    table.store(&chosen->table());
    if (!warning.empty() && !g_quiet.load()) std::fprintf(stderr, "fastbn: warning: %s\n", warning.c_str());
  }

  static std::string compiled_list() {
    std::string s;
    for (const Isa& i : kIsas) {
      if (!s.empty()) s += ", ";
      s += i.name;
    }
    return s;
  }
};

Selection& selection() {
  static Selection s;
  return s;
}

int default_threads() {
#if defined(_OPENMP)
  // The same bound as set_num_threads: OMP_NUM_THREADS=4000 must not get past it.
  static const int n = std::min(omp_get_max_threads(), FASTBN_MAX_NUM_THREADS);
  return n;
#else
  return 1;
#endif
}

std::atomic<int> g_threads{0};  // 0: OpenMP's default

// libgomp is not fork-safe: a child forked after an OpenMP team ran in the parent inherits the team's
// bookkeeping but not its threads, and its first parallel region waits for them forever. Whether any library
// of the parent started a team on the forking thread (fastbn, or PyTorch sharing the same libgomp) cannot be
// known, so every forked child runs the kernels on the calling thread only, as PyTorch's pools do after fork.
// A one-thread region (`if (nt > 1)` false) never touches the inherited pool. Builds without OpenMP behave
// the same, so that callers see one rule.
std::atomic<bool> g_forked{false};

struct ForkHandler {
  ForkHandler() { pthread_atfork(nullptr, nullptr, [] { g_forked.store(true, std::memory_order_relaxed); }); }
};
const ForkHandler g_fork_handler;

}  // namespace

const KernelTable& active() { return *selection().table.load(std::memory_order_acquire); }

namespace {
std::atomic<int64_t> g_stream_min{0};  // 0: not set (the environment's, or the probed default)

// Whether the last-level cache keeps `bytes` that this core writes. Linux reports the cache's size, not the share
// of it that this process gets: on a 2-vCPU Xeon VM (sysfs: a 105 MiB L3) one core read 16 MiB it had just written
// at memory speed (8.5 GB/s; 4 MiB at 17 GB/s against 9 from memory), and streaming every output from 4 MiB on made
// 4-64 MiB batch norms 1.3-1.9x faster (one process switching per call, 11 pairs, 2 threads: 4096x1024 inference
// 1.64x, training 1.50x, backward 1.45x; 8192x1024 1.70x, 1.87x, 1.65x), while on the EPYC VM (a 32 MiB L3) a
// 6.5 MB output kept in the cache made its reader faster. So the first call whose decision depends on it times
// one core reading `bytes` it has just written with ordinary stores, and again after streaming them over
// themselves (to memory): the cache keeps them if the first read is at least kProbeSpeedup times faster (on the
// Xeon VM the two came within 0.84-1.02x of each other at 16 MiB, 1.8-2.2x at 4 MiB). The two reads of a trial are
// timed back to back and the verdict is that of the median of kProbeTrials such ratios. The better of two reads
// each, as before, had said "keeps" there in 2 of 150 fresh processes (3 of 80 in an earlier count) while another
// copied 64 MB over and over on the other core, a wrong answer the process then keeps (a 13x higher streaming
// threshold); the median, in 0 of 150 alternating with them. It costs the first call 60-67 ms there (45-52 before;
// benchmarks/cache_probe.py), mostly memory-speed passes over 16 MiB; never a call under 4 MiB.
constexpr double kProbeSpeedup = 1.4;
constexpr int kProbeTrials = 5;
constexpr int64_t kProbeMaxBytes = int64_t{16} << 20;

bool probe_cache_keeps(int64_t bytes) {
  const KernelTable& t = best_supported()->table();
  const int64_t n = bytes / static_cast<int64_t>(sizeof(float));
  float* a = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  if (!a) return true;  // no memory to tell: trust the size Linux reports
  Workspace ws;
  const Exec one{1, &ws, core_cache_bytes(), INT64_MAX, kStreamMinBytes};
  // The median of kProbeTrials ratios reaches kProbeSpeedup iff a majority does: trials stop once a side has one.
  constexpr int kMajority = kProbeTrials / 2 + 1;
  int kept = 0, not_kept = 0;  // trials whose reads say so
  volatile double sink = 0.0;
  while (kept < kMajority && not_kept < kMajority) {
    for (int64_t i = 0; i < n; ++i) a[i] = static_cast<float>(i & 255);
    int64_t t0 = now_ns();
    sink = sink + t.read(a, n, one);
    const int64_t warm = now_ns() - t0;
    t.copy(a, a, n, one);  // streamed over itself: now in memory only
    t0 = now_ns();
    sink = sink + t.read(a, n, one);
    const int64_t cold = now_ns() - t0;
    if (static_cast<double>(cold) >= kProbeSpeedup * static_cast<double>(warm)) {
      ++kept;
    } else {
      ++not_kept;
    }
  }
  std::free(a);
  return kept == kMajority;
}
}  // namespace

bool cache_keeps_writes() {
  static const int64_t reported = reported_stream_min_bytes();
  static const bool keeps = reported <= kStreamMinBytes || probe_cache_keeps(std::min(reported, kProbeMaxBytes));
  return keeps;
}

int64_t stream_min_bytes(int64_t bytes) {
  const int64_t set = g_stream_min.load(std::memory_order_relaxed);
  if (set > 0) return set;
  static const int64_t env = env_stream_min_bytes();
  if (env > 0) return env;
  // A call on tensors under kStreamMinBytes streams nothing under either answer: it does not start the probe.
  static const int64_t reported = reported_stream_min_bytes();
  if (reported <= kStreamMinBytes || bytes < kStreamMinBytes) return reported;
  return cache_keeps_writes() ? reported : kStreamMinBytes;
}

void set_stream_min_bytes(int64_t bytes) {
  if (bytes < 1) {
    throw Error(Status::bad_argument, "fastbn: the minimum streamed output must be >= 1 byte, got " +
                                          std::to_string(bytes));
  }
  g_stream_min.store(bytes, std::memory_order_relaxed);
}

void reset_stream_min_bytes() { g_stream_min.store(0, std::memory_order_relaxed); }

std::string compiled_simd_list() { return Selection::compiled_list(); }

}  // namespace cpu

namespace detail {
void set_min_bytes_per_thread(int64_t bytes) { cpu::set_min_bytes_per_thread(bytes); }
int64_t min_bytes_per_thread() { return cpu::min_bytes_per_thread(); }
void reset_min_bytes_per_thread() { cpu::reset_min_bytes_per_thread(); }
int64_t min_bytes_per_thread_now() { return cpu::exec_here().min_bytes_per_thread; }
void note_thread_start(int64_t delay_ns, int threads, int64_t idle_ns, int64_t runnable) {
  cpu::note_thread_start(delay_ns, threads, idle_ns, runnable);
}
void forget_crowding() { cpu::forget_crowding(); }
int64_t runnable_threads() { return cpu::runnable_threads(); }
void set_stream_min_bytes(int64_t bytes) { cpu::set_stream_min_bytes(bytes); }
int64_t stream_min_bytes() { return cpu::stream_min_bytes(INT64_MAX); }
bool cache_keeps_writes() { return cpu::cache_keeps_writes(); }
void reset_stream_min_bytes() { cpu::reset_stream_min_bytes(); }
void set_core_cache_bytes(int64_t bytes) { cpu::set_core_cache_bytes(bytes); }
int64_t core_cache_bytes() { return cpu::core_cache_bytes(); }
void reset_core_cache_bytes() { cpu::reset_core_cache_bytes(); }

void quiet_simd_warning() { cpu::g_quiet.store(true); }

void stream_copy(const float* src, float* dst, int64_t count) {
  cpu::active().copy(src, dst, count, cpu::exec_here());
}

void stream_add(const float* a, const float* b, float* dst, int64_t count) {
  cpu::active().add(a, b, dst, count, cpu::exec_here());
}

double stream_read(const float* src, int64_t count) { return cpu::active().read(src, count, cpu::exec_here()); }
}  // namespace detail

const char* simd() { return cpu::active().name; }

bool simd_supported(const char* name) {
  if (!name) return false;
  const cpu::Isa* i = cpu::find_isa(name);
  return i && i->supported();
}

void set_simd(const char* name) {
  const std::string want = name ? name : "";
  const cpu::Isa* i = cpu::find_isa(want);
  if (!i) {
    throw Error(Status::bad_argument, "fastbn: unknown SIMD path '" + want + "'; this build has " +
                                          cpu::compiled_simd_list());
  }
  if (!i->supported()) {
    throw Error(Status::bad_argument, "fastbn: SIMD path '" + want + "' needs instructions this CPU lacks");
  }
  cpu::selection().table.store(&i->table(), std::memory_order_release);
}

const char* simd_warning() { return cpu::selection().warning.c_str(); }

void set_num_threads(int n) {
  if (n < 1 || n > FASTBN_MAX_NUM_THREADS) {
    throw Error(Status::bad_argument, "fastbn: the thread count must be >= 1 and <= " +
                                          std::to_string(FASTBN_MAX_NUM_THREADS) + ", got " + std::to_string(n));
  }
  cpu::g_threads.store(n);  // kept in a forked child too, where it has no effect (see g_forked)
}

int get_num_threads() {
  if (cpu::g_forked.load(std::memory_order_relaxed)) return 1;
  const int n = cpu::g_threads.load();
  return n > 0 ? n : cpu::default_threads();
}

}  // namespace fastbn
