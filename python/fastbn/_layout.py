"""Axes, strides and memory order: the one place that turns a channel axis and a dense memory layout into the
``(outer, channels, inner)`` view the kernels take, and that checks the scalar options every pass shares.

Array-agnostic: everything here works on shapes and byte strides, so NumPy arrays, CUDA arrays and torch
tensors share it. ``(N, C)`` is ``(N, C, 1)``, NCHW is ``(N, C, H*W)``, and channels-last memory (NHWC with
``axis=-1``, or an NCHW-shaped view of NHWC memory with ``axis=1``) is ``(N*H*W, C, 1)``.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

__all__ = [
    "ACTIVATIONS",
    "IDENTITY",
    "View",
    "check_activation",
    "check_eps",
    "dense_order",
    "identity",
    "normalize_axis",
    "view_of",
]

IDENTITY = [tuple(range(n)) for n in range(65)]  # NumPy arrays have at most 64 dimensions

# The activations fused after the normalization, by the codes of the C ABI (fastbn_activation).
ACTIVATIONS = {None: 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3}


def identity(n: int) -> tuple[int, ...]:
    return IDENTITY[n] if n < len(IDENTITY) else tuple(range(n))


def normalize_axis(axis, ndim: int) -> int:
    """``axis`` in ``[0, ndim)``; TypeError for a non-integer, ValueError when out of range (however large)."""
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"fastbn: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"fastbn: axis {axis} is out of range for an input with {ndim} dimensions")
    return int(axis) % ndim


def check_eps(eps) -> float:
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"fastbn: eps must be a number, got {type(eps).__name__}")
    e = float(eps)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"fastbn: eps must be a finite number > 0, got {eps}")
    return e


def check_activation(activation, negative_slope) -> tuple[int, float]:
    """(code, slope) of an activation name; ValueError naming the valid ones."""
    code = ACTIVATIONS.get(activation) if activation is None or isinstance(activation, str) else None
    if code is None:
        valid = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"fastbn: unknown activation {activation!r}; expected one of {valid}")
    if type(negative_slope) is not float and (  # a float (the default) skips the ABC check, slow on every call
        isinstance(negative_slope, bool) or not isinstance(negative_slope, numbers.Real)
    ):
        raise TypeError(f"fastbn: negative_slope must be a number, got {type(negative_slope).__name__}")
    slope = float(negative_slope)
    if not math.isfinite(slope):
        raise ValueError(f"fastbn: negative_slope must be finite, got {negative_slope}")
    return code, slope


def dense_order(shape, strides, itemsize) -> tuple[int, ...] | None:
    """Axes from slowest to fastest in memory, if the memory is a permutation of a C-contiguous layout (no
    gaps, no negative or zero strides); else None. Axes of extent 1 can go anywhere: they go last."""
    big = [i for i in range(len(shape)) if shape[i] > 1]
    order = sorted(big, key=lambda i: -strides[i])
    expected = itemsize
    for i in reversed(order):
        if strides[i] != expected:
            return None
        expected *= shape[i]
    return tuple(order + [i for i in range(len(shape)) if shape[i] <= 1])


class View(NamedTuple):
    perm: tuple[int, ...]  # axes from slowest to fastest in memory
    outer: int
    channels: int
    inner: int


def view_of(shape, perm: tuple[int, ...], axis: int) -> View:
    """The (outer, channels, inner) view of memory laid out in the order ``perm``, channel axis ``axis``
    (already normalized)."""
    channels = shape[axis]
    if channels == 1:
        return View(perm, 1, 1, math.prod(shape))
    pos = perm.index(axis)
    return View(perm, math.prod(shape[i] for i in perm[:pos]), channels, math.prod(shape[i] for i in perm[pos + 1 :]))
