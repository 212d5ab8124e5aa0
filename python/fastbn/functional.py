"""Batch normalization as plain functions on NumPy arrays.

Every input is viewed as ``(outer, channels, inner)`` over its memory: ``(N, C)`` is ``(N, C, 1)``, NCHW is
``(N, C, H*W)``, and channels-last data (NHWC with ``axis=-1``, or an NCHW-shaped view of NHWC memory with
``axis=1``) is ``(N*H*W, C, 1)``. This module is the one place that knows about axes and strides: arrays whose
memory is a permutation of a C-contiguous layout are used in place, anything else is copied once. Outputs get
the same memory layout as the input.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _core

__all__ = ["batch_norm_train", "batch_norm_infer", "batch_norm_backward"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_IDENTITY = [tuple(range(n)) for n in range(65)]  # NumPy arrays have at most 64 dimensions


class _View(NamedTuple):
    array: np.ndarray  # the array whose memory is used (the input itself, or a contiguous copy)
    perm: tuple[int, ...]  # axes from slowest to fastest in memory
    flat: np.ndarray  # 1-D C-contiguous view of that memory
    outer: int
    channels: int
    inner: int


def _float_array(a, name: str) -> np.ndarray:
    if type(a) is np.ndarray and a.dtype.char in "fd":  # the common case, checked cheaply
        return a
    if not isinstance(a, np.ndarray):
        if _on_gpu(a):
            raise TypeError(
                f"fastbn: {name} is on the GPU but x is a host (NumPy) array; pass all arrays on one device"
            )
        a = np.asarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"fastbn: {name} must be a float32 or float64 array, got dtype {a.dtype}")
    return a


def _on_gpu(a) -> bool:
    if type(a) is np.ndarray:
        return False
    from .cuda import is_device_array

    return is_device_array(a)


def _gpu():
    from . import cuda

    return cuda


def _normalize_axis(axis, ndim: int) -> int:
    if type(axis) is int and -ndim <= axis < ndim:
        return axis % ndim
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"fastbn: axis must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"fastbn: axis {axis} is out of range for an input with {ndim} dimensions")
    return int(axis) % ndim


def _dense_order(shape, strides, itemsize) -> tuple[int, ...] | None:
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


def _memory_order(a: np.ndarray) -> tuple[int, ...] | None:
    if not a.flags.aligned:
        return None
    if a.flags.c_contiguous:
        return _IDENTITY[a.ndim]
    return _dense_order(a.shape, a.strides, a.itemsize)


def _flat(a: np.ndarray, perm: tuple[int, ...]) -> np.ndarray | None:
    """1-D view of ``a``'s memory in the order ``perm``, or None if ``a`` is not laid out that way."""
    t = a.transpose(perm)
    if not (t.flags.c_contiguous and t.flags.aligned):
        return None
    return t.reshape(-1)


def _view(x, axis, name: str = "x") -> _View:
    a = _float_array(x, name)
    if a.ndim < 2:
        raise ValueError(
            f"fastbn: expected {name} with at least 2 dimensions (batch, channels, ...), got shape {a.shape}"
        )
    ax = _normalize_axis(axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"fastbn: {name} is empty (shape {a.shape}); every dimension must be >= 1")
    shape = a.shape
    channels = shape[ax]
    if a.flags.c_contiguous and a.flags.aligned:  # the common case, without a permutation
        if channels == 1:
            return _View(a, _IDENTITY[a.ndim], a.reshape(-1), 1, 1, a.size)
        return _View(a, _IDENTITY[a.ndim], a.reshape(-1), math.prod(shape[:ax]), channels, math.prod(shape[ax + 1 :]))
    perm = _memory_order(a)
    if perm is None:
        a = np.ascontiguousarray(a)  # one copy of a layout the kernels cannot view
        perm = _IDENTITY[a.ndim]
    if channels == 1:
        outer, inner = 1, a.size
    else:
        pos = perm.index(ax)
        outer = math.prod(shape[i] for i in perm[:pos])
        inner = math.prod(shape[i] for i in perm[pos + 1 :])
    return _View(a, perm, a.transpose(perm).reshape(-1), outer, channels, inner)


# Outputs at least this large come from the output cache (cpp/python/output_cache.hpp): a fresh buffer of that
# size costs more in page faults than the batch norm that fills it. bindings.cpp uses the same threshold.
_CACHED_MIN_BYTES = 1 << 20


def _empty(shape, dtype: np.dtype) -> np.ndarray:
    if math.prod(shape) * dtype.itemsize >= _CACHED_MIN_BYTES:
        return _core.empty(shape, dtype)
    return np.empty(shape, dtype=dtype)


def _empty_like_view(v: _View) -> tuple[np.ndarray, np.ndarray]:
    """A new array shaped like v.array with the same memory order, and its flat view."""
    if v.perm is _IDENTITY[v.array.ndim]:
        buf = _empty(v.array.shape, v.array.dtype)
        return buf, buf.reshape(-1)
    buf = _empty([v.array.shape[i] for i in v.perm], v.array.dtype)
    return buf.transpose(np.argsort(v.perm)), buf.reshape(-1)


class _Output(NamedTuple):
    result: np.ndarray  # what the caller gets back
    flat: np.ndarray  # where the kernel writes
    pending: np.ndarray | None  # a temporary to copy into `result` afterwards, when out= has another layout


def _output(out, v: _View, shape, inputs=(), name: str = "out") -> _Output:
    """Where to write a result shaped like the input. ``inputs`` lists (array, flat view) pairs besides x
    that ``out`` may alias only exactly (in place), never partly."""
    if out is None:
        result, flat = _empty_like_view(v)
        return _Output(result, flat, None)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"fastbn: {name} must be a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"fastbn: {name} has shape {out.shape}, expected {tuple(shape)}")
    if out.dtype != v.array.dtype:
        raise TypeError(f"fastbn: {name} has dtype {out.dtype}, expected {v.array.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"fastbn: {name} is read-only")
    flat = out.reshape(-1) if v.perm is _IDENTITY[out.ndim] and out.flags.c_contiguous else _flat(out, v.perm)
    # Writing straight into `out` is safe when it has the input's layout and, for every input, either does not
    # overlap it or is exactly its memory (in place).
    if flat is not None:
        for a, f in ((v.array, v.flat), *inputs):
            if out is not a and np.may_share_memory(out, a) and flat.ctypes.data != f.ctypes.data:
                break
        else:
            return _Output(out, flat, None)
    tmp, tmp_flat = _empty_like_view(v)
    return _Output(out, tmp_flat, tmp)


def _finish(o: _Output) -> np.ndarray:
    if o.pending is not None:
        np.copyto(o.result, o.pending)
    return o.result


def _channel_array(p, name: str, channels: int, dtype: np.dtype, optional: bool) -> np.ndarray | None:
    if type(p) is np.ndarray and p.dtype == dtype and p.shape == (channels,) and p.flags.c_contiguous:
        return p  # the common case, checked cheaply
    if p is None:
        if optional:
            return None
        raise ValueError(f"fastbn: {name} is required")
    a = _float_array(p, name)
    if a.dtype != dtype:
        raise TypeError(f"fastbn: {name} has dtype {a.dtype}, but x has dtype {dtype}; they must match")
    if a.shape != (channels,):
        raise ValueError(f"fastbn: {name} must have shape ({channels},) (one value per channel), got {a.shape}")
    return np.ascontiguousarray(a)


def _check_eps(eps) -> float:
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"fastbn: eps must be a number, got {type(eps).__name__}")
    e = float(eps)
    if not (e > 0 and math.isfinite(e)):
        raise ValueError(f"fastbn: eps must be a finite number > 0, got {eps}")
    return e


def _check_train_count(v: _View, shape) -> None:
    if v.outer * v.inner < 2:
        raise ValueError(
            f"fastbn: expected more than 1 value per channel when training, got input of shape {tuple(shape)}"
        )


def batch_norm_train(x, gamma=None, beta=None, *, axis: int = 1, eps: float = 1e-5, out=None):
    """Training-mode batch normalization with the statistics of this batch.

    Parameters
    ----------
    x : ndarray, float32 or float64, at least 2-D
        The batch; ``axis`` is the channel axis (1 for NCHW / (N, C), -1 for channels-last).
    gamma, beta : ndarray of shape (C,), optional
        Scale and shift; None means 1 and 0.
    axis : int
        Channel axis.
    eps : float
        Added to the variance for numerical stability (> 0).
    out : ndarray, optional
        Where to write y (same shape and dtype as x; may be x itself for in-place use).

    Returns
    -------
    y : ndarray
        ``gamma * (x - mean) / sqrt(var + eps) + beta``, laid out in memory like x.
    mean, var : ndarray of shape (C,)
        The batch mean and the BIASED batch variance (divided by n, as used for normalization).
    """
    if type(x) is np.ndarray and (out is None or type(out) is np.ndarray):
        r = _core.train_simple(x, gamma, beta, axis, eps, out)  # the common case in one call, or None
        if r is not None:
            return r
    if _on_gpu(x):
        return _gpu().batch_norm_train(x, gamma, beta, axis=axis, eps=eps, out=out)
    v = _view(x, axis)
    e = _check_eps(eps)
    g = _channel_array(gamma, "gamma", v.channels, v.array.dtype, True)
    b = _channel_array(beta, "beta", v.channels, v.array.dtype, True)
    _check_train_count(v, v.array.shape)
    o = _output(out, v, v.array.shape)
    mean = np.empty(v.channels, dtype=v.array.dtype)
    var = np.empty(v.channels, dtype=v.array.dtype)
    _core.train(v.flat, o.flat, g, b, mean, var, v.outer, v.channels, v.inner, e)
    return _finish(o), mean, var


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis: int = 1, eps: float = 1e-5, out=None):
    """Inference-mode batch normalization with given per-channel statistics (e.g. running averages).

    Returns ``gamma * (x - mean) / sqrt(var + eps) + beta``; ``mean`` and ``var`` have shape (C,). Other
    arguments as in :func:`batch_norm_train`.
    """
    if type(x) is np.ndarray and (out is None or type(out) is np.ndarray):
        r = _core.infer_simple(x, mean, var, gamma, beta, axis, eps, out)  # the common case in one call, or None
        if r is not None:
            return r
    if _on_gpu(x):
        return _gpu().batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps, out=out)
    v = _view(x, axis)
    e = _check_eps(eps)
    m = _channel_array(mean, "mean", v.channels, v.array.dtype, False)
    s = _channel_array(var, "var", v.channels, v.array.dtype, False)
    g = _channel_array(gamma, "gamma", v.channels, v.array.dtype, True)
    b = _channel_array(beta, "beta", v.channels, v.array.dtype, True)
    o = _output(out, v, v.array.shape)
    _core.infer(v.flat, o.flat, m, s, g, b, v.outer, v.channels, v.inner, e)
    return _finish(o)


def _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, want_param_grads):
    if _on_gpu(x):
        return _gpu()._backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, want_param_grads)
    v = _view(x, axis)
    e = _check_eps(eps)
    d = _float_array(dy, "dy")
    if d.shape != v.array.shape:
        raise ValueError(f"fastbn: dy has shape {d.shape}, but x has shape {v.array.shape}; they must match")
    if d.dtype != v.array.dtype:
        raise TypeError(f"fastbn: dy has dtype {d.dtype}, but x has dtype {v.array.dtype}; they must match")
    m = _channel_array(mean, "mean", v.channels, v.array.dtype, False)
    s = _channel_array(var, "var", v.channels, v.array.dtype, False)
    g = _channel_array(gamma, "gamma", v.channels, v.array.dtype, True)
    d_flat = _flat(d, v.perm)
    if d_flat is None:  # dy laid out differently from x: one copy into x's layout
        tmp, d_flat = _empty_like_view(v)
        np.copyto(tmp, d)
    o = _output(out, v, v.array.shape, inputs=((d, d_flat),))
    if want_param_grads:
        dgamma = np.empty(v.channels, dtype=v.array.dtype)
        dbeta = np.empty(v.channels, dtype=v.array.dtype)
    else:
        dgamma = dbeta = None
    _core.backward(d_flat, v.flat, m, s, g, o.flat, dgamma, dbeta, v.outer, v.channels, v.inner, e, bool(batch_stats))
    return _finish(o), dgamma, dbeta


def batch_norm_backward(
    dy, x, mean, var, gamma=None, *, axis: int = 1, eps: float = 1e-5, batch_stats: bool = True, out=None
):
    """Gradients of batch normalization.

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to y; same shape and dtype as x.
    x : ndarray
        The forward pass's input.
    mean, var : ndarray of shape (C,)
        The statistics the forward pass normalized with: the batch mean and biased variance (training), or the
        running averages (eval).
    gamma : ndarray of shape (C,), optional
        The forward pass's scale (None means 1).
    batch_stats : bool
        True when mean/var were the batch statistics of x, so the gradient also flows through them (training
        mode); False when they were constants (eval mode): then ``dx = gamma * dy / sqrt(var + eps)``.
    out : ndarray, optional
        Where to write dx (may be dy itself).

    Returns
    -------
    dx : ndarray
        Same shape and memory layout as x.
    dgamma, dbeta : ndarray of shape (C,)
        ``sum(dy * xhat)`` and ``sum(dy)`` per channel.
    """
    return _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, True)
