// The CPU kernels compiled for the avx2 path (flags set per file in CMakeLists.txt).
#define FASTBN_ISA_NS avx2
#define FASTBN_ISA_NAME "avx2"
#define FASTBN_ISA_AVX2 1
#include "cpu/kernels_impl.hpp"
