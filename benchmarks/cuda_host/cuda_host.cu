// Host microseconds per fastbn CUDA call (the time the calling thread spends before it may go on: argument
// checks, planning, launches) and device microseconds per call (CUDA events around calls in a row), against an
// empty kernel's launch. Batches of 100 calls stay far below the launch queue's depth, so the host time is not
// the device's. Prints one line per case; medians of 30 batches.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "fastbn/cuda.hpp"

namespace {

__global__ void empty_kernel() {}

void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// {host us per call, device us per call}
std::pair<double, double> time_calls(const std::function<void()>& call) {
  constexpr int kBatch = 100, kRepeats = 30;
  for (int i = 0; i < 20; ++i) call();
  ok(cudaDeviceSynchronize(), "sync");
  std::vector<double> host, device;
  cudaEvent_t a, b;
  ok(cudaEventCreate(&a), "event");
  ok(cudaEventCreate(&b), "event");
  for (int r = 0; r < kRepeats; ++r) {
    ok(cudaEventRecord(a), "record");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kBatch; ++i) call();
    const auto t1 = std::chrono::steady_clock::now();
    ok(cudaEventRecord(b), "record");
    ok(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ok(cudaEventElapsedTime(&ms, a, b), "elapsed");
    host.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / kBatch);
    device.push_back(1e3 * ms / kBatch);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return {median(host), median(device)};
}

}  // namespace

template <class T>
void run_shape(const fastbn::Shape& s) {
  namespace fc = fastbn::cuda;
  const size_t n = static_cast<size_t>(s.outer * s.channels * s.inner), C = static_cast<size_t>(s.channels);
  std::vector<T> hx(n);
  for (size_t i = 0; i < n; ++i) hx[i] = static_cast<T>((i * 2654435761u) % 1000) * static_cast<T>(1e-3);
  std::vector<T> hc(C, T(1));
  T *x, *y, *dy, *dx, *g, *b, *m, *v, *dg, *db;
  for (T** p : {&x, &y, &dy, &dx}) ok(cudaMalloc(p, n * sizeof(T)), "malloc");
  for (T** p : {&g, &b, &m, &v, &dg, &db}) ok(cudaMalloc(p, C * sizeof(T)), "malloc");
  ok(cudaMemcpy(x, hx.data(), n * sizeof(T), cudaMemcpyHostToDevice), "copy");
  ok(cudaMemcpy(dy, hx.data(), n * sizeof(T), cudaMemcpyHostToDevice), "copy");
  for (T* p : {g, b, m, v}) ok(cudaMemcpy(p, hc.data(), C * sizeof(T), cudaMemcpyHostToDevice), "copy");
  const std::string name = std::to_string(s.outer) + "," + std::to_string(s.channels) + "," +
                           std::to_string(s.inner) + (sizeof(T) == 8 ? " f64" : " f32");
  const auto tr = time_calls([&] { fc::forward_train(x, y, g, b, m, v, s, 1e-5); });
  const auto in = time_calls([&] { fc::forward_infer(x, y, m, v, g, b, s, 1e-5); });
  const auto bw = time_calls([&] { fc::backward(dy, x, m, v, g, dx, dg, db, s, 1e-5, true); });
  std::printf("%-26s %-9s %9.2f %9.2f\n", name.c_str(), "train", tr.first, tr.second);
  std::printf("%-26s %-9s %9.2f %9.2f\n", name.c_str(), "infer", in.first, in.second);
  std::printf("%-26s %-9s %9.2f %9.2f\n", name.c_str(), "backward", bw.first, bw.second);
  for (T* p : {x, y, dy, dx, g, b, m, v, dg, db}) cudaFree(p);
}

// Arguments: shapes as outer,channels,inner (float32), or outer,channels,inner,d (float64).
int main(int argc, char** argv) {
  const auto empty = time_calls([] { empty_kernel<<<1, 32>>>(); });
  std::printf("%-26s %-9s %9s %9s\n", "shape (outer,C,inner)", "pass", "host us", "device us");
  std::printf("%-26s %-9s %9.2f %9.2f\n", "-", "empty", empty.first, empty.second);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) args = {"32,64,64", "64,256,1", "256,256,196", "64,128,3136"};
  for (const std::string& a : args) {
    long long o = 0, c = 0, l = 0;
    char d = 0;
    const int got = std::sscanf(a.c_str(), "%lld,%lld,%lld,%c", &o, &c, &l, &d);
    if (got < 3 || o < 1 || c < 1 || l < 1) {
      std::fprintf(stderr, "cuda_host: expected outer,channels,inner[,d], got %s\n", a.c_str());
      return 2;
    }
    const fastbn::Shape s{o, c, l};
    if (d == 'd') {
      run_shape<double>(s);
    } else {
      run_shape<float>(s);
    }
  }
  return 0;
}
