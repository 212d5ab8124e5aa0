// The bfloat16 kernels compiled for the avx512_bf16 path: the avx512 path's, with AVX512-BF16's conversion
// narrowing their outputs (flags set per file in CMakeLists.txt). The other storage types reuse avx512's.
#define FASTBN_ISA_NS avx512_bf16
#define FASTBN_ISA_NAME "avx512_bf16"
#define FASTBN_ISA_AVX512 1
#define FASTBN_ISA_AVX512_BF16 1
#include "cpu/kernels_impl.hpp"
