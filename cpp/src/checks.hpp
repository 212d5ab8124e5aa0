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

}  // namespace checks
}  // namespace fastbn
