#pragma once
// Argument checks shared by the CPU front (batchnorm.cpp) and the CUDA front (cuda/*.cu): each throws
// fastbn::Error with a message naming what was expected and what was given.
#include <string>

#include "fastbn/batchnorm.hpp"

namespace fastbn {
namespace checks {

std::string describe(const Shape& s);
void require(const void* p, const char* name);
void shape(const Shape& s);
void eps(double eps);
// Training: more than one value per channel.
void train_count(const Shape& s);

// A known activation (fastbn_activation) and a finite negative_slope.
void fusion(int activation, double negative_slope);

// The whole check of each pass's arguments (required pointers, shape, eps), for the CPU and CUDA fronts alike.
void train_args(const void* x, const void* y, const void* mean, const void* var, const Shape& s, double eps);
void infer_args(const void* x, const void* y, const void* mean, const void* var, const Shape& s, double eps);
void backward_args(const void* dy, const void* x, const void* mean, const void* var, const void* dx, const Shape& s,
                   double eps);

}  // namespace checks
}  // namespace fastbn
