"""Shared fixtures and the independent float64 NumPy reference implementation of batch normalization."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import Phase, settings

import fastbn

SIMD_PATHS = [p for p in ("avx512_bf16", "avx512", "avx2", "scalar") if fastbn._core.simd_supported(p)]
# avx512_bf16 differs from avx512 in its bfloat16 kernels alone (they narrow with AVX512-BF16's conversion).
BF16_ONLY_PATHS = ("avx512_bf16",)
# The paths whose float32, float64 and float16 kernels are each their own code.
FLOAT_PATHS = [p for p in SIMD_PATHS if p not in BF16_ONLY_PATHS]


def mpiexec() -> str | None:
    """The mpiexec of the mpich wheel in the test extras, else one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _is_bfloat16(value) -> bool:
    if isinstance(value, (tuple, list)):
        return any(_is_bfloat16(v) for v in value)
    if isinstance(value, str) or value is None:
        return value == "bfloat16"
    try:
        return np.dtype(value) == np.dtype(ml_dtypes.bfloat16)
    except TypeError:
        return False


def pytest_collection_modifyitems(config, items):
    """Tests taking the `simd` fixture run on a path of BF16_ONLY_PATHS only where a parameter is bfloat16 or the
    test is marked `bfloat16` (the other cases would run the avx512 path's code again): the rest are deselected.

    In .ci/run's sanitizer job (FASTBN_SANITIZED=1) the tests marked not_sanitized are skipped: they need the
    real allocator (ASan holds freed memory in quarantine and reserves terabytes of address space, so an
    address-space limit cannot mean there what it means in production)."""
    again = [
        item
        for item in items
        if hasattr(item, "callspec")
        and item.callspec.params.get("simd") in BF16_ONLY_PATHS
        and not item.get_closest_marker("bfloat16")
        and not any(_is_bfloat16(v) for k, v in item.callspec.params.items() if k != "simd")
    ]
    if again:
        config.hook.pytest_deselected(items=again)
        dropped = set(map(id, again))
        items[:] = [item for item in items if id(item) not in dropped]
    if os.environ.get("FASTBN_SANITIZED") != "1":
        return
    skip = pytest.mark.skip(reason="needs the real allocator, not ASan's (FASTBN_SANITIZED=1)")
    for item in items:
        if item.get_closest_marker("not_sanitized"):
            item.add_marker(skip)


@pytest.fixture(params=SIMD_PATHS)
def simd(request):
    """Run the test once per SIMD path this machine supports, restoring the default afterwards."""
    before = fastbn.get_simd()
    fastbn.set_simd(request.param)
    yield request.param
    fastbn.set_simd(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def streaming():
    """Outputs from 1 MiB on are written with streaming stores for the test (the default threshold is half the
    last-level cache, 4 to 64 MiB, or 4 MiB where that cache does not keep writes), so that the streaming paths run on
    any machine; restored afterwards."""
    fastbn._core.set_stream_min_bytes(1 << 20)
    yield 1 << 20
    fastbn._core.reset_stream_min_bytes()


@pytest.fixture
def restore_threads():
    """The test may set the thread count; the count before it is restored afterwards."""
    before = fastbn.get_num_threads()
    yield before
    fastbn.set_num_threads(before)


@pytest.fixture
def small_core_cache():
    """The kernels plan with a 64 KiB core cache for the test (the default is the L2 the system reports), so that
    the paths of channels too big for a core's cache (threads sharing each channel) run on small tensors."""
    fastbn._core.set_core_cache_bytes(64 << 10)
    yield 64 << 10
    fastbn._core.reset_core_cache_bytes()


# Layouts: (shape, axis, memory) where memory says how the input is laid out.
#   "c": C-contiguous; "nhwc-view": an NCHW-shaped view of channels-last memory (axis=1, no copy needed);
#   "strided": a non-contiguous slice (copied once internally); "fortran": Fortran order.
LAYOUTS = [
    ((40, 7), 1, "c"),  # (N, C)
    ((9, 6, 11), 1, "c"),  # (N, C, L)
    ((6, 5, 7, 9), 1, "c"),  # NCHW
    ((3, 4, 5, 6, 7), 1, "c"),  # NCDHW
    ((6, 7, 9, 5), -1, "c"),  # NHWC, channels last
    ((6, 5, 7, 9), 1, "nhwc-view"),
    ((6, 5, 7, 9), 1, "strided"),
    ((12, 5, 8), 1, "fortran"),
    ((5, 8, 6), 0, "c"),  # channel axis first
    ((4, 6, 2, 3), 2, "c"),  # channel axis in the middle
    ((7, 1, 5, 5), 1, "c"),  # a single channel
    ((2, 3), 1, "c"),  # two values per channel
]


def layout_id(layout) -> str:
    shape, axis, memory = layout
    return f"{'x'.join(map(str, shape))}-ax{axis}-{memory}"


def make_input(rng, shape, memory, dtype, scale=2.0, offset=0.5):
    """Random input of the given logical shape, laid out in memory as asked."""
    if memory == "nhwc-view":
        n, c, h, w = shape
        base = rng.standard_normal((n, h, w, c)) * scale + offset
        return base.astype(dtype).transpose(0, 3, 1, 2)
    if memory == "strided":
        big = rng.standard_normal(tuple(2 * s for s in shape)) * scale + offset
        return big.astype(dtype)[tuple(slice(None, None, 2) for _ in shape)]
    if memory == "fortran":
        return np.asfortranarray((rng.standard_normal(shape) * scale + offset).astype(dtype))
    return (rng.standard_normal(shape) * scale + offset).astype(dtype)


def tol(dtype):
    """(rtol, atol) for comparing against the float64 reference: a few float32 ulps of O(1) values."""
    return (2e-5, 2e-5) if np.dtype(dtype) == np.float32 else (1e-11, 1e-11)


# ------------------------------------------------------------------------------------------------------------
# float64 reference, written from the definitions (Ioffe & Szegedy 2015), independent of the library


def _reduce_axes(x, axis):
    axis = axis % x.ndim
    return tuple(i for i in range(x.ndim) if i != axis), axis


def _bcast(v, x, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def ref_stats(x, axis=1):
    """Per-channel mean and BIASED variance in float64, right wherever the answer is finite: each channel is
    scaled by a power of two (exact) so that no square overflows, and the mean is corrected by the mean of the
    deviations from it (Bjorck's corrected two-pass), so a constant channel gets exactly its value and 0."""
    axes, _ = _reduce_axes(x, axis)
    x64 = np.asarray(x, dtype=np.float64)
    _, exp = np.frexp(np.max(np.abs(x64), axis=axes, keepdims=True))
    scale = np.ldexp(1.0, exp - 1)  # |x| / scale < 2, and scale itself stays finite
    xs = x64 / scale
    m1 = xs.mean(axis=axes, keepdims=True)
    m = m1 + (xs - m1).mean(axis=axes, keepdims=True)
    var = ((xs - m) ** 2).mean(axis=axes, keepdims=True) * scale * scale
    return (m * scale).reshape(-1), var.reshape(-1)


def ref_infer(x, mean, var, gamma=None, beta=None, axis=1, eps=1e-5):
    _, axis = _reduce_axes(x, axis)
    c = x.shape[axis]
    g = np.ones(c) if gamma is None else gamma
    b = np.zeros(c) if beta is None else beta
    x64 = np.asarray(x, dtype=np.float64)
    xhat = (x64 - _bcast(mean, x, axis)) / np.sqrt(_bcast(var, x, axis) + eps)
    return _bcast(g, x, axis) * xhat + _bcast(b, x, axis)


def ref_train(x, gamma=None, beta=None, axis=1, eps=1e-5):
    mean, var = ref_stats(x, axis)
    return ref_infer(x, mean, var, gamma, beta, axis, eps), mean, var


def ref_backward(dy, x, mean, var, gamma=None, axis=1, eps=1e-5, batch_stats=True):
    """dx, dgamma, dbeta. With batch_stats the statistics are functions of x (training); else constants."""
    axes, axis = _reduce_axes(x, axis)
    c = x.shape[axis]
    n = x.size // c
    g = np.ones(c) if gamma is None else np.asarray(gamma, dtype=np.float64)
    dy64 = np.asarray(dy, dtype=np.float64)
    x64 = np.asarray(x, dtype=np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    xhat = (x64 - _bcast(mean, x, axis)) * _bcast(invstd, x, axis)
    dbeta = dy64.sum(axis=axes)
    dgamma = (dy64 * xhat).sum(axis=axes)
    if batch_stats:
        dx = _bcast(g * invstd, x, axis) * (dy64 - _bcast(dbeta / n, x, axis) - xhat * _bcast(dgamma / n, x, axis))
    else:
        dx = _bcast(g * invstd, x, axis) * dy64
    return dx, dgamma, dbeta


# ------------------------------------------------------------------------------------------------------------
# Hypothesis (tests/test_properties.py). "fastbn-ci", the default: the same examples on every run, no example
# database on disk, no deadline (the first call of a size pays for thread start and page faults), and no
# shrinking: shrinking an example of 2^20 values can take minutes, and the unshrunk example is reproducible as it
# is. `--hypothesis-profile=fastbn-dev` runs the same examples and shrinks a failure to a small one;
# `--hypothesis-profile=fastbn-soak` explores ten times as many, fresh each run, keeping failures in the local
# database (.hypothesis/).
_GENERATE = (Phase.explicit, Phase.reuse, Phase.generate)
settings.register_profile(
    "fastbn-ci", max_examples=100, derandomize=True, database=None, deadline=None, phases=_GENERATE
)
settings.register_profile("fastbn-dev", max_examples=100, derandomize=True, database=None, deadline=None)
settings.register_profile("fastbn-soak", max_examples=1000, derandomize=False, deadline=None)
settings.load_profile("fastbn-ci")
