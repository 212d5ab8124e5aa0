// The CUDA API when the library is built without CUDA: nothing is available and every kernel entry point
// reports Status::no_cuda, so the rest of the code needs no #ifdef.
#include "fastbn/cuda.hpp"

namespace fastbn {
namespace cuda {

namespace {
[[noreturn]] void unavailable() {
  throw Error(Status::no_cuda, "fastbn: this build of fastbn has no CUDA support (nvcc was not found at build time)");
}
}  // namespace

bool compiled() noexcept { return false; }
bool is_available() noexcept { return false; }
int device_count() noexcept { return 0; }
std::string device_description(int) { unavailable(); }

void forward_train(const float*, float*, const float*, const float*, float*, float*, const Shape&, double, void*) {
  unavailable();
}
void forward_train(const double*, double*, const double*, const double*, double*, double*, const Shape&, double,
                   void*) {
  unavailable();
}
void forward_infer(const float*, float*, const float*, const float*, const float*, const float*, const Shape&,
                   double, void*) {
  unavailable();
}
void forward_infer(const double*, double*, const double*, const double*, const double*, const double*,
                   const Shape&, double, void*) {
  unavailable();
}
void backward(const float*, const float*, const float*, const float*, const float*, float*, float*, float*,
              const Shape&, double, bool, void*) {
  unavailable();
}
void backward(const double*, const double*, const double*, const double*, const double*, double*, double*, double*,
              const Shape&, double, bool, void*) {
  unavailable();
}
void update_running_stats(float*, float*, const float*, const float*, int64_t, int64_t, double, void*) {
  unavailable();
}
void update_running_stats(double*, double*, const double*, const double*, int64_t, int64_t, double, void*) {
  unavailable();
}
void* device_alloc(size_t) { unavailable(); }
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t) { unavailable(); }
void copy_to_host(void*, const void*, size_t) { unavailable(); }
void copy_on_device(void*, const void*, size_t) { unavailable(); }
void synchronize(void*) { unavailable(); }

}  // namespace cuda
}  // namespace fastbn
