#include "output_cache.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace fastbn_py {
namespace {

constexpr size_t kAlign = size_t{2} << 20;  // huge-page aligned, so the kernel can back buffers with huge pages

size_t rounded(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

size_t initial_limit() {
  const char* env = std::getenv("FASTBN_OUTPUT_CACHE_MB");
  if (env && *env) {
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(env, &end, 10);
    if (end && *end == '\0') return static_cast<size_t>(mb) << 20;
  }
  return size_t{1024} << 20;
}

struct Cache {
  std::mutex mutex;
  std::unordered_multimap<size_t, void*> idle;
  size_t held = 0;
  size_t limit = initial_limit();

  // Frees idle buffers until at most `keep` bytes stay; returns what to free outside the lock.
  std::vector<void*> trim(size_t keep) {
    std::vector<void*> out;
    for (auto it = idle.begin(); it != idle.end() && held > keep;) {
      held -= it->first;
      out.push_back(it->second);
      it = idle.erase(it);
    }
    return out;
  }
};

// Never destroyed: arrays may hand their buffers back while the interpreter shuts down.
Cache& cache() {
  static Cache* c = new Cache;
  return *c;
}

void free_all(const std::vector<void*>& blocks) {
  for (void* p : blocks) std::free(p);
}

}  // namespace

void* cache_take(size_t bytes) {
  const size_t n = rounded(bytes ? bytes : 1);
  Cache& c = cache();
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    const auto it = c.idle.find(n);
    if (it != c.idle.end()) {
      void* p = it->second;
      c.idle.erase(it);
      c.held -= n;
      return p;
    }
  }
  void* p = std::aligned_alloc(kAlign, n);
  if (!p) {
    // Under memory pressure (an address-space limit, a full machine) the idle buffers are what stands in the way:
    // give them back and try once more.
    cache_clear();
    p = std::aligned_alloc(kAlign, n);
    if (!p) throw std::bad_alloc();
  }
#if defined(MADV_HUGEPAGE)
  madvise(p, n, MADV_HUGEPAGE);
#endif
  return p;
}

void cache_give(void* p, size_t bytes) noexcept {
  const size_t n = rounded(bytes ? bytes : 1);
  Cache& c = cache();
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    if (c.held + n <= c.limit) {
      c.idle.emplace(n, p);
      c.held += n;
      return;
    }
  }
  std::free(p);
}

size_t cache_idle_bytes() {
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  return c.held;
}

size_t cache_limit() {
  Cache& c = cache();
  const std::lock_guard<std::mutex> lock(c.mutex);
  return c.limit;
}

void cache_set_limit(size_t bytes) {
  Cache& c = cache();
  std::vector<void*> freed;
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = bytes;
    freed = c.trim(bytes);
  }
  free_all(freed);
}

void cache_clear() {
  Cache& c = cache();
  std::vector<void*> freed;
  {
    const std::lock_guard<std::mutex> lock(c.mutex);
    freed = c.trim(0);
  }
  free_all(freed);
}

}  // namespace fastbn_py
