#pragma once
// The storage types of the kernels and the type each computes in. No functions here: anything with code lives
// in an ISA namespace (simd.hpp), so no inline symbol compiled for a wide instruction set is shared.
#include <type_traits>

#include "fastbn/batchnorm.hpp"

namespace fastbn {
namespace cpu {

template <class S>
struct ComputeOf {
  using type = float;  // float, bfloat16, float16
};
template <>
struct ComputeOf<double> {
  using type = double;
};

// gamma, beta, the statistics and the parameter gradients: float32 for every 32-bit-or-narrower storage type.
template <class S>
using param_t = typename ComputeOf<S>::type;

template <class S>
constexpr bool is_half_v = std::is_same<S, bfloat16>::value || std::is_same<S, float16>::value;

}  // namespace cpu
}  // namespace fastbn
