#pragma once
// fastbn CUDA API: the same three passes on device memory. Present in every build; when the library was
// built without CUDA, compiled() and is_available() are false and every other call throws
// Error(Status::no_cuda).
//
// Pointers are device pointers; `stream` is a cudaStream_t (nullptr = the legacy default stream). Calls are
// asynchronous with respect to the host. Argument errors throw before anything is enqueued; a failed CUDA call
// throws Error(Status::cuda). Layout and semantics as in fastbn/batchnorm.hpp.
#include <cstddef>
#include <cstdint>
#include <string>

#include "fastbn/batchnorm.hpp"
#include "fastbn/export.h"

namespace fastbn {
namespace cuda {

FASTBN_API bool compiled() noexcept;
// Compiled in and at least one device usable right now; false (never an error) without a GPU or driver.
FASTBN_API bool is_available() noexcept;
FASTBN_API int device_count() noexcept;
// "NVIDIA H100 80GB HBM3, compute capability 9.0, 132 SMs"; throws when unavailable.
FASTBN_API std::string device_description(int device);

FASTBN_API void forward_train(const float* x, float* y, const float* gamma, const float* beta, float* mean,
                              float* var, const Shape& shape, double eps, void* stream = nullptr);
FASTBN_API void forward_train(const double* x, double* y, const double* gamma, const double* beta, double* mean,
                              double* var, const Shape& shape, double eps, void* stream = nullptr);
FASTBN_API void forward_infer(const float* x, float* y, const float* mean, const float* var, const float* gamma,
                              const float* beta, const Shape& shape, double eps, void* stream = nullptr);
FASTBN_API void forward_infer(const double* x, double* y, const double* mean, const double* var,
                              const double* gamma, const double* beta, const Shape& shape, double eps,
                              void* stream = nullptr);
FASTBN_API void backward(const float* dy, const float* x, const float* mean, const float* var, const float* gamma,
                         float* dx, float* dgamma, float* dbeta, const Shape& shape, double eps, bool batch_stats,
                         void* stream = nullptr);
FASTBN_API void backward(const double* dy, const double* x, const double* mean, const double* var,
                         const double* gamma, double* dx, double* dgamma, double* dbeta, const Shape& shape,
                         double eps, bool batch_stats, void* stream = nullptr);

// running = (1 - factor) * running + factor * batch, per channel, with the batch variance made unbiased
// (count / (count - 1)); count = values per channel (>= 2). The PyTorch rule, on the device.
FASTBN_API void update_running_stats(float* running_mean, float* running_var, const float* mean, const float* var,
                                     int64_t channels, int64_t count, double factor, void* stream = nullptr);
FASTBN_API void update_running_stats(double* running_mean, double* running_var, const double* mean,
                                     const double* var, int64_t channels, int64_t count, double factor,
                                     void* stream = nullptr);

// Plain device memory for hosts that have no CUDA array library of their own (the Python DeviceArray).
FASTBN_API void* device_alloc(size_t bytes);
FASTBN_API void device_free(void* p) noexcept;
FASTBN_API void copy_to_device(void* dst, const void* host_src, size_t bytes);
FASTBN_API void copy_to_host(void* host_dst, const void* src, size_t bytes);
FASTBN_API void copy_on_device(void* dst, const void* src, size_t bytes);
FASTBN_API void synchronize(void* stream = nullptr);

}  // namespace cuda
}  // namespace fastbn
