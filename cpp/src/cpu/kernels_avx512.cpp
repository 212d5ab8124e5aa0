// The CPU kernels compiled for the avx512 path (flags set per file in CMakeLists.txt).
#define FASTBN_ISA_NS avx512
#define FASTBN_ISA_NAME "avx512"
#define FASTBN_ISA_AVX512 1
#include "cpu/kernels_impl.hpp"
