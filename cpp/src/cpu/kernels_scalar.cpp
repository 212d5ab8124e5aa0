// The CPU kernels compiled for the scalar path (flags set per file in CMakeLists.txt).
#define FASTBN_ISA_NS scalar
#define FASTBN_ISA_NAME "scalar"
#include "cpu/kernels_impl.hpp"
