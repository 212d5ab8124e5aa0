"""fastbn: batch normalization at the memory-bandwidth limit.

A C++ core (OpenMP + SIMD with run-time dispatch, optional CUDA) under a NumPy API with PyTorch's semantics:

>>> import numpy as np, fastbn
>>> bn = fastbn.BatchNorm(64)                       # like torch.nn.BatchNorm2d(64)
>>> x = np.random.randn(32, 64, 8, 8).astype(np.float32)
>>> y = bn(x)                                       # training mode: batch statistics
>>> dx = bn.backward(np.ones_like(y))               # sets bn.grad_gamma, bn.grad_beta
"""

# Imports under private names (and no `from __future__ import annotations`, which binds `annotations`): what a
# user sees in dir(fastbn) is __all__ and the package's own submodules (tests/test_namespace.py).
import operator as _operator
import os as _os
import warnings as _warnings
from pathlib import Path as _Path
from typing import TypedDict as _TypedDict

# OpenMP threads that wait for work spin by default (libgomp: 300,000 pause loops, ~7 ms on an AMD EPYC VM),
# holding a CPU meanwhile. fastbn's calls are short and often run where CPUs are shared (CI machines, laptops,
# NumPy's OpenBLAS threads spinning for ~0.1 s after start-up): a spinning waiter then shares a CPU with the
# thread that has the work, and each hand-off waits for a scheduler tick, which turned 0.02 ms calls into
# 4-40 ms ones (issue 9; benchmarks/first_call.py). Not spinning at all costs a wake-up per call instead
# (25-50 us there), which made a second thread a loss on tensors under ~3 MiB. So waiters spin for about as long
# as a wake-up costs and then sleep: back-to-back calls find the second thread awake, and a waiter that shares a
# CPU gives it up within ~50 us. OpenMP reads the setting once, when its runtime loads, which is while _core is
# imported unless PyTorch or another OpenMP user loaded it first; so fastbn sets it for that moment only, and
# only if the user chose no policy.
_SPIN_COUNT = "2000"  # libgomp pause loops, ~46 us on the EPYC VM
_DEFAULT_WAIT_POLICY = "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ
if _DEFAULT_WAIT_POLICY:
    _os.environ["GOMP_SPINCOUNT"] = _SPIN_COUNT
try:
    from . import _core
finally:
    if _DEFAULT_WAIT_POLICY:  # the runtime has read it; programs started from this process are not fastbn's
        del _os.environ["GOMP_SPINCOUNT"]
from . import cuda  # noqa: E402  (after _core, which must be the first to load OpenMP)
from .batchnorm import BatchNorm  # noqa: E402
from .functional import (  # noqa: E402
    batch_norm_apply,
    batch_norm_backward,
    batch_norm_backward_apply,
    batch_norm_backward_reduce,
    batch_norm_infer,
    batch_norm_merge_stats,
    batch_norm_stats,
    batch_norm_train,
    fold,
)
from .sync import SyncBatchNorm  # noqa: E402

__version__: str = _core.__version__

__all__ = [
    "BatchNorm",
    "SyncBatchNorm",
    "batch_norm_train",
    "batch_norm_infer",
    "batch_norm_backward",
    "batch_norm_stats",
    "batch_norm_merge_stats",
    "batch_norm_apply",
    "batch_norm_backward_reduce",
    "batch_norm_backward_apply",
    "fold",
    "set_num_threads",
    "get_num_threads",
    "set_simd",
    "get_simd",
    "build_info",
    "BuildInfo",
    "get_include",
    "get_library_dir",
    "get_cmake_dir",
    "empty_output_cache",
    "set_output_cache_limit",
    "output_cache_info",
    "cuda",
    "__version__",
]

_HERE = _Path(__file__).resolve().parent


# FASTBN_MAX_NUM_THREADS in fastbn/fastbn.h; tests/test_settings.py checks that the two agree.
_MAX_NUM_THREADS = 1024
# The largest limit whose size in bytes fits the core's 64-bit size_t.
_MAX_CACHE_MB = (1 << 44) - 1


def _as_int(value: object, what: str) -> int:
    """``value`` as a Python int (NumPy integers included); a TypeError for bools, floats and the rest."""
    if isinstance(value, bool):
        raise TypeError(f"fastbn: {what} must be an int, got bool")
    try:
        return _operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"fastbn: {what} must be an int, got {type(value).__name__}") from None


def set_num_threads(n: int) -> None:
    """Set the threads the CPU kernels may use.

    Parameters
    ----------
    n : int
        1 to 1024. The default is OMP_NUM_THREADS, else the number of cores (at most 1024).

    Raises
    ------
    TypeError
        If ``n`` is not an integer (bools and floats included).
    ValueError
        If ``n`` is outside 1..1024; the thread count is then unchanged.

    Notes
    -----
    OpenMP's threads do not survive ``fork()``, so a process forked after fastbn was loaded (``os.fork``,
    ``multiprocessing``'s "fork" start method) runs the kernels single-threaded: there ``n`` is checked and
    accepted, :func:`get_num_threads` returns 1, and asking for more than one thread warns. Workers started
    with "spawn" (or "forkserver", unless the server preloads fastbn) import fastbn afresh and may use threads.
    """
    n = _as_int(n, "the thread count")
    if not 1 <= n <= _MAX_NUM_THREADS:
        raise ValueError(f"fastbn: the thread count must be >= 1 and <= {_MAX_NUM_THREADS}, got {n}")
    _core.set_num_threads(n)
    # Only a forked child reports fewer threads than were just accepted (see Notes).
    if n > 1 and _core.get_num_threads() == 1:
        _warnings.warn(
            f"fastbn: set_num_threads({n}) in a forked process: OpenMP's threads do not survive fork, so fastbn "
            "runs single-threaded here; use multiprocessing's 'spawn' start method for multi-threaded workers",
            RuntimeWarning,
            stacklevel=2,
        )


def get_num_threads() -> int:
    """The threads the CPU kernels may use: 1 in a forked process (see :func:`set_num_threads`)."""
    return _core.get_num_threads()


def set_simd(name: str) -> None:
    """Switch the CPU kernels to the SIMD path ``name`` ("avx512_bf16", "avx512", "avx2" or "scalar"). Raises
    ValueError for a path this build or CPU cannot run. The environment variable FASTBN_SIMD sets the path at import."""
    if not isinstance(name, str):
        raise TypeError(f"fastbn: the SIMD path must be a str, got {type(name).__name__}")
    _core.set_simd(name)


def get_simd() -> str:
    """The SIMD path the CPU kernels run with."""
    return _core.simd()


class BuildInfo(_TypedDict):
    """What :func:`build_info` returns."""

    version: str
    simd: str  # the active path: "avx512_bf16", "avx512", "avx2" or "scalar"
    simd_compiled: str  # the paths in this build, best first
    openmp: bool
    openmp_version: int
    max_threads: int
    num_threads: int
    cuda: bool  # CUDA kernels compiled in
    cuda_version: str
    cuda_architectures: str
    compiler: str


def build_info() -> BuildInfo:
    """How fastbn was built and what it runs with: version, simd (active path), simd_compiled, openmp,
    openmp_version, max_threads, num_threads, cuda (compiled in), cuda_version, cuda_architectures, compiler."""
    return _core.build_info()  # type: ignore[return-value]


def empty_output_cache() -> None:
    """Free the idle buffers fastbn keeps for reuse as outputs (see :func:`set_output_cache_limit`)."""
    _core.empty_output_cache()


def set_output_cache_limit(megabytes: int) -> None:
    """Cap the idle output buffers fastbn keeps for reuse (default 1024 MB, or FASTBN_OUTPUT_CACHE_MB; 0 turns
    the cache off). Outputs of 1 MB or more come from this cache: a fresh buffer of that size costs more in page
    faults than the batch norm that fills it. Buffers in use are never counted or freed early.

    Raises TypeError if ``megabytes`` is not an integer, ValueError outside 0..2**44 - 1 (the limit is then
    unchanged)."""
    megabytes = _as_int(megabytes, "the cache limit (megabytes)")
    if not 0 <= megabytes <= _MAX_CACHE_MB:
        raise ValueError(
            f"fastbn: the cache limit must be >= 0 and <= 2**44 - 1 MB (its size in bytes must fit in 64 bits), "
            f"got {megabytes}"
        )
    _core.set_output_cache_limit(megabytes << 20)


def output_cache_info() -> dict:
    """{'idle_bytes': bytes kept for reuse now, 'limit_bytes': the cap}."""
    return _core.output_cache_info()


def get_include() -> str:
    """Directory of the installed C/C++ headers (``fastbn/fastbn.h``, ``fastbn/batchnorm.hpp``)."""
    return str(_HERE / "include")


def get_library_dir() -> str:
    """Directory of the installed shared library ``libfastbn.so``."""
    return str(_HERE / "lib")


def get_cmake_dir() -> str:
    """Directory of ``fastbnConfig.cmake``: pass it as ``-Dfastbn_DIR=...`` to CMake."""
    return str(_HERE / "lib" / "cmake" / "fastbn")


if _core.simd_warning():
    _warnings.warn(f"fastbn: {_core.simd_warning()}", RuntimeWarning, stacklevel=2)
