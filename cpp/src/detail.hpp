#pragma once
// Library-internal hooks that the Python binding (part of this project) also uses; not a public API.
#include "fastbn/export.h"

namespace fastbn {
namespace detail {

// By default a FASTBN_SIMD request that cannot be honoured is reported on stderr once. A host that reports
// it its own way (the Python module raises a RuntimeWarning) calls this before the first kernel call.
FASTBN_API void quiet_simd_warning();

}  // namespace detail
}  // namespace fastbn
