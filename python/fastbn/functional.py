"""Batch normalization as plain functions on NumPy arrays (and, through :mod:`fastbn.cuda`, on GPU arrays).

Every input is viewed as ``(outer, channels, inner)`` over its memory (see :mod:`fastbn._layout`): arrays whose
memory is a permutation of a C-contiguous layout are used in place, anything else (other strides, misaligned or
byte-swapped data) is copied once. Outputs get the same memory layout as the input.

Tensors may be float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``); gamma, beta, the statistics and
the parameter gradients are float64 for float64 tensors and float32 for the others.

Besides the three passes, the phases of a batch norm whose batch is split over processes (SyncBatchNorm):
:func:`batch_norm_stats`, :func:`batch_norm_merge_stats`, :func:`batch_norm_apply`,
:func:`batch_norm_backward_reduce` and :func:`batch_norm_backward_apply`; and :func:`fold`, which folds an
inference batch norm into the preceding linear or convolution layer.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from . import _core, cuda
from ._layout import ACTIVATIONS, IDENTITY, check_activation, check_eps, dense_order, normalize_axis, view_of
from ._types import FLOAT64, SUPPORTED, param_dtype, storage_dtype

__all__ = [
    "batch_norm_train",
    "batch_norm_infer",
    "batch_norm_backward",
    "batch_norm_stats",
    "batch_norm_merge_stats",
    "batch_norm_apply",
    "batch_norm_backward_reduce",
    "batch_norm_backward_apply",
    "fold",
]


class _View(NamedTuple):
    array: np.ndarray  # the array whose memory is used (the input itself, or a copy)
    perm: tuple[int, ...]  # axes from slowest to fastest in memory
    flat: np.ndarray  # 1-D C-contiguous view of that memory
    outer: int
    channels: int
    inner: int

    @property
    def pdtype(self) -> np.dtype:
        return param_dtype(self.array.dtype)


def _as_array(a, name: str, dtype=None) -> np.ndarray:
    """``a`` as an ndarray of a supported dtype in native byte order (a copy only when it must be one)."""
    if type(a) is not np.ndarray:
        if cuda.is_device_array(a):
            raise TypeError(
                f"fastbn: {name} is on the GPU but x is a host (NumPy) array; pass all arrays on one device"
            )
        if type(a).__module__.split(".")[0] == "torch" and hasattr(a, "detach"):
            a = a.detach()  # CPU tensors are read in place; for autograd use fastbn.torch
        a = np.asarray(a, dtype=dtype)
    d = storage_dtype(a.dtype)
    if d is None:
        raise TypeError(f"fastbn: {name} must be a {SUPPORTED} array, got dtype {a.dtype}")
    if d is not a.dtype and d != a.dtype:  # byte-swapped
        a = a.astype(d)
    return a


def _memory_order(a: np.ndarray) -> tuple[int, ...] | None:
    if not a.flags.aligned:
        return None
    if a.flags.c_contiguous:
        return IDENTITY[a.ndim]
    return dense_order(a.shape, a.strides, a.itemsize)


def _flat(a: np.ndarray, perm: tuple[int, ...]) -> np.ndarray | None:
    """1-D view of ``a``'s memory in the order ``perm``, or None if ``a`` is not laid out that way."""
    t = a.transpose(perm)
    if not (t.flags.c_contiguous and t.flags.aligned):
        return None
    return t.reshape(-1)


def _view(x, axis, name: str = "x") -> _View:
    a = _as_array(x, name)
    if a.ndim < 2:
        raise ValueError(
            f"fastbn: expected {name} with at least 2 dimensions (batch, channels, ...), got shape {a.shape}"
        )
    ax = normalize_axis(axis, a.ndim)
    if a.size == 0:
        raise ValueError(f"fastbn: {name} is empty (shape {a.shape}); every dimension must be >= 1")
    perm = _memory_order(a)
    if perm is None:
        a = np.array(a, order="C")  # one aligned copy of a layout the kernels cannot view
        perm = IDENTITY[a.ndim]
    v = view_of(a.shape, perm, ax)
    flat = a.reshape(-1) if perm is IDENTITY[a.ndim] else a.transpose(perm).reshape(-1)
    return _View(a, perm, flat, v.outer, v.channels, v.inner)


# Outputs at least this large come from the output cache (cpp/python/output_cache.hpp): a fresh buffer of that
# size costs more in page faults than the batch norm that fills it. bindings.cpp uses the same threshold.
_CACHED_MIN_BYTES = 1 << 20


def _empty(shape, dtype: np.dtype) -> np.ndarray:
    if math.prod(shape) * dtype.itemsize >= _CACHED_MIN_BYTES:
        return _core.empty(shape, dtype)
    return np.empty(shape, dtype=dtype)


def _empty_like_view(v: _View) -> tuple[np.ndarray, np.ndarray]:
    """A new array shaped like v.array with the same memory order, and its flat view."""
    if v.perm is IDENTITY[v.array.ndim]:
        buf = _empty(v.array.shape, v.array.dtype)
        return buf, buf.reshape(-1)
    buf = _empty([v.array.shape[i] for i in v.perm], v.array.dtype)
    return buf.transpose(np.argsort(v.perm)), buf.reshape(-1)


def _like_x(a, v: _View, name: str):
    """(array, flat view in x's memory order) of an input shaped like x (dy, y, residual); copied once into x's
    layout when its own differs."""
    d = _as_array(a, name)
    if d.shape != v.array.shape:
        raise ValueError(f"fastbn: {name} has shape {d.shape}, but x has shape {v.array.shape}; they must match")
    if d.dtype != v.array.dtype:
        raise TypeError(f"fastbn: {name} has dtype {d.dtype}, but x has dtype {v.array.dtype}; they must match")
    flat = _flat(d, v.perm)
    if flat is None:
        tmp, flat = _empty_like_view(v)
        np.copyto(tmp, d)
    return d, flat


class _Output(NamedTuple):
    result: np.ndarray  # what the caller gets back
    flat: np.ndarray  # where the kernel writes
    pending: np.ndarray | None  # a temporary to copy into `result` afterwards, when out= has another layout


def _output(out, v: _View, inputs=(), name: str = "out") -> _Output:
    """Where to write a result shaped like the input. ``inputs`` lists (array, flat view) pairs besides x that
    ``out`` may alias only exactly (in place), never partly."""
    if out is None:
        result, flat = _empty_like_view(v)
        return _Output(result, flat, None)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"fastbn: {name} must be a numpy array, got {type(out).__name__}")
    if out.shape != v.array.shape:
        raise ValueError(f"fastbn: {name} has shape {out.shape}, expected {v.array.shape}")
    if out.dtype != v.array.dtype:
        raise TypeError(f"fastbn: {name} has dtype {out.dtype}, expected {v.array.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"fastbn: {name} is read-only")
    flat = out.reshape(-1) if v.perm is IDENTITY[out.ndim] and out.flags.c_contiguous else _flat(out, v.perm)
    # Writing straight into `out` is safe when it has the input's layout and, for every input, either does not
    # overlap it or is exactly its memory (in place).
    if flat is not None and out.flags.aligned:
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
    a = _as_array(p, name)
    if a.dtype != dtype:
        raise TypeError(f"fastbn: {name} has dtype {a.dtype}, expected {dtype} (for x of this dtype)")
    if a.shape != (channels,):
        raise ValueError(f"fastbn: {name} must have shape ({channels},) (one value per channel), got {a.shape}")
    return np.ascontiguousarray(a)


def _stats_array(p, name: str, channels: int) -> np.ndarray:
    """Per-channel float64 statistics or sums (the distributed phases)."""
    if p is None:
        raise ValueError(f"fastbn: {name} is required")
    a = np.asarray(p)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"fastbn: {name} must hold numbers, got dtype {a.dtype}")
    if a.shape != (channels,):
        raise ValueError(f"fastbn: {name} must have shape ({channels},) (one value per channel), got {a.shape}")
    return np.ascontiguousarray(a, dtype=FLOAT64)


def _check_train_count(v: _View) -> None:
    if v.outer * v.inner < 2:
        raise ValueError(
            f"fastbn: expected more than 1 value per channel when training, got input of shape {v.array.shape}"
        )


def _check_batch_stats(batch_stats) -> bool:
    if not isinstance(batch_stats, (bool, np.bool_)):
        raise TypeError(f"fastbn: batch_stats must be a bool, got {type(batch_stats).__name__}")
    return bool(batch_stats)


def _residual(residual, v: _View):
    if residual is None:
        return None, None
    return _like_x(residual, v, "residual")


def _simple_act(x, out, activation, negative_slope, residual) -> int | None:
    """The activation's code where a forward may try the one-call path (bindings.cpp: train_simple, infer_simple),
    which declines what it cannot take as it is; None where only the general path, with its checks and messages,
    can answer (other array types, an unknown activation, a slope that is not a finite float)."""
    if type(x) is not np.ndarray or not (out is None or type(out) is np.ndarray):
        return None
    if not (residual is None or type(residual) is np.ndarray):
        return None
    if type(negative_slope) is not float or not math.isfinite(negative_slope):
        return None
    if activation is None:
        return 0
    return ACTIVATIONS.get(activation) if type(activation) is str else None


def batch_norm_train(
    x,
    gamma=None,
    beta=None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    out=None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    residual=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training-mode batch normalization with the statistics of this batch.

    Parameters
    ----------
    x : ndarray, float32, float64, float16 or bfloat16, at least 2-D
        The batch; ``axis`` is the channel axis (1 for NCHW / (N, C), -1 for channels-last).
    gamma, beta : ndarray of shape (C,), optional
        Scale and shift (float64 for float64 x, float32 otherwise); None means 1 and 0.
    axis : int
        Channel axis.
    eps : float
        Added to the variance for numerical stability (> 0).
    out : ndarray, optional
        Where to write y (same shape and dtype as x; may be x itself for in-place use).
    activation : None, "relu", "leaky_relu" or "sigmoid"
        Applied in the same pass: ``y = act(gamma * xhat + beta + residual)``.
    negative_slope : float
        leaky_relu's slope for negative inputs.
    residual : ndarray, optional
        Added before the activation; x's shape and dtype, any memory layout.

    Returns
    -------
    y : ndarray
        Laid out in memory like x.
    mean, var : ndarray of shape (C,)
        The batch mean and the BIASED batch variance (divided by n, as used for normalization).
    """
    act = _simple_act(x, out, activation, negative_slope, residual)
    if act is not None:
        r = _core.train_simple(x, gamma, beta, axis, eps, out, act, negative_slope, residual)  # in one call, or None
        if r is not None:
            return r
    if cuda.is_device_array(x):
        if activation is not None or residual is not None:
            raise NotImplementedError("fastbn: fused activations and residuals run on the CPU only for now")
        return cuda.batch_norm_train(x, gamma, beta, axis=axis, eps=eps, out=out)
    v = _view(x, axis)
    e = check_eps(eps)
    act, slope = check_activation(activation, negative_slope)
    g = _channel_array(gamma, "gamma", v.channels, v.pdtype, True)
    b = _channel_array(beta, "beta", v.channels, v.pdtype, True)
    _check_train_count(v)
    r, r_flat = _residual(residual, v)
    o = _output(out, v, () if r is None else ((r, r_flat),))
    mean = np.empty(v.channels, dtype=v.pdtype)
    var = np.empty(v.channels, dtype=v.pdtype)
    _core.train(v.flat, r_flat, o.flat, g, b, mean, var, v.outer, v.channels, v.inner, e, act, slope)
    return _finish(o), mean, var


def batch_norm_infer(
    x,
    mean,
    var,
    gamma=None,
    beta=None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    out=None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    residual=None,
) -> np.ndarray:
    """Inference-mode batch normalization with given per-channel statistics (e.g. running averages).

    Returns ``act(gamma * (x - mean) / sqrt(var + eps) + beta + residual)``; ``mean`` and ``var`` have shape
    (C,). Other arguments as in :func:`batch_norm_train`.
    """
    act = _simple_act(x, out, activation, negative_slope, residual)
    if act is not None:
        r = _core.infer_simple(x, mean, var, gamma, beta, axis, eps, out, act, negative_slope, residual)
        if r is not None:  # the common case in one call
            return r
    if cuda.is_device_array(x):
        if activation is not None or residual is not None:
            raise NotImplementedError("fastbn: fused activations and residuals run on the CPU only for now")
        return cuda.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps, out=out)
    v = _view(x, axis)
    e = check_eps(eps)
    act, slope = check_activation(activation, negative_slope)
    m = _channel_array(mean, "mean", v.channels, v.pdtype, False)
    s = _channel_array(var, "var", v.channels, v.pdtype, False)
    g = _channel_array(gamma, "gamma", v.channels, v.pdtype, True)
    b = _channel_array(beta, "beta", v.channels, v.pdtype, True)
    r, r_flat = _residual(residual, v)
    o = _output(out, v, () if r is None else ((r, r_flat),))
    _core.infer(v.flat, r_flat, o.flat, m, s, g, b, v.outer, v.channels, v.inner, e, act, slope, False)
    return _finish(o)


class _Backward(NamedTuple):
    v: _View  # the view of x (or of y, when x is None)
    dy: np.ndarray
    dy_flat: np.ndarray
    x_flat: np.ndarray | None
    y: np.ndarray | None
    y_flat: np.ndarray | None
    gamma: np.ndarray | None
    beta: np.ndarray | None
    eps: float
    act: int
    slope: float


def _backward_inputs(dy, x, gamma, beta, y, axis, eps, activation, negative_slope, dresidual: bool) -> _Backward:
    """The checks and views every backward shares; the statistics are the caller's."""
    e = check_eps(eps)
    act, slope = check_activation(activation, negative_slope)
    if act and y is None:
        raise ValueError(
            f"fastbn: the backward of activation={activation!r} takes its derivative from the forward's output: pass y="
        )
    if activation == "leaky_relu" and slope < 0:
        raise ValueError(
            "fastbn: the backward of leaky_relu needs negative_slope >= 0 (with a negative slope the input's sign "
            f"cannot be read from the output), got {negative_slope}"
        )
    if x is None:
        if y is None:
            raise ValueError("fastbn: backward needs x, or (x=None) the forward's output y to recover xhat from")
        if activation == "relu" or (activation == "leaky_relu" and slope <= 0):
            raise ValueError(
                f"fastbn: x=None recovers xhat from y, but {activation} with negative_slope={negative_slope} is not "
                "invertible (negative inputs all map to 0); pass x, or use leaky_relu with negative_slope > 0"
            )
        if dresidual:
            raise ValueError(
                "fastbn: x=None recovers xhat from y, which is impossible when a residual was added before the "
                "activation; pass x"
            )
        v = _view(y, axis, "y")
        y_arr, y_flat = v.array, v.flat
        x_flat = None
    else:
        v = _view(x, axis)
        x_flat = v.flat
        y_arr, y_flat = (None, None) if y is None else _like_x(y, v, "y")
    d, d_flat = _like_x(dy, v, "dy")
    g = _channel_array(gamma, "gamma", v.channels, v.pdtype, True)
    b = _channel_array(beta, "beta", v.channels, v.pdtype, True)
    if x is None:
        if g is not None and not np.all(g != 0):
            raise ValueError("fastbn: x=None recovers xhat = (y - beta) / gamma, so gamma must have no zeros")
        if b is None:
            b = np.zeros(v.channels, v.pdtype)
    return _Backward(v, d, d_flat, x_flat, y_arr, y_flat, g, b, e, act, slope)


def batch_norm_backward(
    dy,
    x,
    mean,
    var,
    gamma=None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    batch_stats: bool = True,
    out=None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    y=None,
    beta=None,
    return_dresidual: bool = False,
) -> tuple[np.ndarray, ...]:
    """Gradients of batch normalization (and of a fused activation and residual).

    Parameters
    ----------
    dy : ndarray
        Gradient of the loss with respect to y; same shape and dtype as x.
    x : ndarray or None
        The forward pass's input. Must not have changed since the forward (a silently wrong dx otherwise).
        None: "in-place activated batch norm", xhat is recovered from ``y`` (needs an invertible activation:
        None, leaky_relu with negative_slope > 0, or sigmoid; gamma without zeros; no residual), so a forward
        with ``out=x`` can drop x's memory.
    mean, var : ndarray of shape (C,)
        The statistics the forward pass normalized with: the batch mean and biased variance (training), or the
        running averages (eval).
    gamma : ndarray of shape (C,), optional
        The forward pass's scale (None means 1).
    batch_stats : bool
        True when mean/var were the batch statistics of x, so the gradient also flows through them (training
        mode); False when they were constants (eval mode): then ``dx = gamma * dz / sqrt(var + eps)``.
    out : ndarray, optional
        Where to write dx (may be dy itself).
    activation, negative_slope : as in the forward
        The derivative is taken from the forward's output ``y``, which is then required.
    y : ndarray, optional
        The forward's output.
    beta : ndarray of shape (C,), optional
        The forward's shift; used (None means 0) when x is None.
    return_dresidual : bool
        Also return the gradient of the residual, ``dy * act'(.)``.

    Returns
    -------
    dx : ndarray
        Same shape and memory layout as x.
    dgamma, dbeta : ndarray of shape (C,)
        ``sum(dz * xhat)`` and ``sum(dz)`` per channel, dz = dy * act'(.).
    dresidual : ndarray
        Only with ``return_dresidual``.
    """
    if cuda.is_device_array(dy if x is None else x):
        if activation is not None or x is None or y is not None or return_dresidual:
            raise NotImplementedError("fastbn: fused activations and residuals run on the CPU only for now")
        return cuda.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps, batch_stats=batch_stats, out=out)
    dx, dgamma, dbeta, dres = _backward(
        dy, x, mean, var, gamma, axis, eps, _check_batch_stats(batch_stats), out, True, activation, negative_slope, y,
        beta, bool(return_dresidual),
    )  # fmt: skip
    if return_dresidual:
        return dx, dgamma, dbeta, dres
    return dx, dgamma, dbeta


def _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, want_param_grads, activation=None,
              negative_slope=0.01, y=None, beta=None, want_dresidual=False):  # fmt: skip
    """The backward of batch_norm_backward and BatchNorm: (dx, dgamma, dbeta, dresidual)."""
    act = _simple_act(x, out, activation, negative_slope, None)
    if (
        act is not None
        and type(dy) is np.ndarray
        and (y is None or type(y) is np.ndarray)
        and (act == 0 or y is not None)  # an activation's derivative is read from y (the general path says so)
        and not (activation == "leaky_relu" and negative_slope < 0)  # the general path says why not
    ):
        r = _core.backward_simple(
            dy, x, mean, var, gamma, axis, eps, bool(batch_stats), out, act, negative_slope, y, beta, want_dresidual
        )  # the common case in one call, or None
        if r is not None:
            dres = r[3] if want_dresidual else None
            return (r[0], r[1], r[2], dres) if want_param_grads else (r[0], None, None, dres)
    bi = _backward_inputs(dy, x, gamma, beta, y, axis, eps, activation, negative_slope, want_dresidual)
    v = bi.v
    m = _channel_array(mean, "mean", v.channels, v.pdtype, False)
    s = _channel_array(var, "var", v.channels, v.pdtype, False)
    o = _output(out, v, inputs=((bi.dy, bi.dy_flat),) + (() if bi.y is None else ((bi.y, bi.y_flat),)))
    dres = _output(None, v) if want_dresidual else None
    dgamma = np.empty(v.channels, dtype=v.pdtype) if want_param_grads else None
    dbeta = np.empty(v.channels, dtype=v.pdtype) if want_param_grads else None
    _core.backward(
        bi.dy_flat, bi.x_flat, bi.y_flat, m, s, bi.gamma, bi.beta, o.flat, None if dres is None else dres.flat,
        dgamma, dbeta, v.outer, v.channels, v.inner, bi.eps, bool(batch_stats), bi.act, bi.slope,
    )  # fmt: skip
    return _finish(o), dgamma, dbeta, None if dres is None else dres.result


# ------------------------------------------------------------------------------------------------------------
# The phases of a batch norm split over processes


def batch_norm_stats(x, *, axis: int = 1) -> tuple[int, np.ndarray, np.ndarray]:
    """Local per-channel statistics: ``(count, mean, m2)``, count = values per channel (a Python int), mean and
    M2 (sum of squared deviations from the mean) float64 arrays of shape (C,). Merge those of several processes
    with :func:`batch_norm_merge_stats`."""
    v = _view(x, axis)
    mean = np.empty(v.channels, FLOAT64)
    m2 = np.empty(v.channels, FLOAT64)
    _core.local_stats(v.flat, mean, m2, v.outer, v.channels, v.inner)
    return v.outer * v.inner, mean, m2


def batch_norm_merge_stats(counts, means, m2s) -> tuple[float, np.ndarray, np.ndarray]:
    """Merge k partial statistics in the order given (Chan et al.), so that every process merging the same
    parts in the same order gets the same bits. ``counts``: k values per channel (parts with 0 are skipped);
    ``means``, ``m2s``: shape (k, C). Returns ``(count, mean, m2)`` (float, (C,), (C,)); the biased variance
    is ``m2 / count``."""
    n = np.ascontiguousarray(np.asarray(counts, dtype=FLOAT64).reshape(-1))
    m = np.ascontiguousarray(np.asarray(means, dtype=FLOAT64))
    q = np.ascontiguousarray(np.asarray(m2s, dtype=FLOAT64))
    if m.ndim != 2 or q.shape != m.shape or m.shape[0] != n.size:
        raise ValueError(
            f"fastbn: expected counts of shape (k,) and means, m2s of shape (k, C); got {n.shape}, {m.shape}, {q.shape}"
        )
    if m.shape[1] < 1:
        raise ValueError("fastbn: the statistics must have at least one channel")
    count, mean, m2 = _core.merge_stats(n, m.reshape(-1), q.reshape(-1), m.shape[1])
    return count, mean, m2


def batch_norm_apply(
    x,
    mean,
    var,
    gamma=None,
    beta=None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    out=None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    residual=None,
) -> np.ndarray:
    """Normalize with given float64 statistics (e.g. the merged global ones): as :func:`batch_norm_infer`, but
    the mean and biased variance are float64 arrays of shape (C,) for every tensor dtype, and a mean far from 0
    keeps full precision."""
    v = _view(x, axis)
    e = check_eps(eps)
    act, slope = check_activation(activation, negative_slope)
    m = _stats_array(mean, "mean", v.channels)
    s = _stats_array(var, "var", v.channels)
    g = _channel_array(gamma, "gamma", v.channels, v.pdtype, True)
    b = _channel_array(beta, "beta", v.channels, v.pdtype, True)
    r, r_flat = _residual(residual, v)
    o = _output(out, v, () if r is None else ((r, r_flat),))
    _core.infer(v.flat, r_flat, o.flat, m, s, g, b, v.outer, v.channels, v.inner, e, act, slope, True)
    return _finish(o)


def batch_norm_backward_reduce(
    dy,
    x,
    mean,
    var,
    gamma=None,
    beta=None,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    activation: str | None = None,
    negative_slope: float = 0.01,
    y=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Local backward sums with given float64 (global) statistics: ``(sum_dy, sum_dy_xhat)``, float64 arrays
    of shape (C,), dz = dy * act'(.). Summed over all processes they are the full batch's dbeta and dgamma;
    pass the sums to :func:`batch_norm_backward_apply`. x, y, activation as in :func:`batch_norm_backward`."""
    bi = _backward_inputs(dy, x, gamma, beta, y, axis, eps, activation, negative_slope, False)
    v = bi.v
    m = _stats_array(mean, "mean", v.channels)
    s = _stats_array(var, "var", v.channels)
    sum_dy = np.empty(v.channels, FLOAT64)
    sum_dy_xhat = np.empty(v.channels, FLOAT64)
    _core.backward_reduce(
        bi.dy_flat, bi.x_flat, bi.y_flat, m, s, bi.gamma, bi.beta, sum_dy, sum_dy_xhat, v.outer, v.channels,
        v.inner, bi.eps, bi.act, bi.slope,
    )  # fmt: skip
    return sum_dy, sum_dy_xhat


def batch_norm_backward_apply(
    dy,
    x,
    mean,
    var,
    gamma,
    beta,
    sum_dy,
    sum_dy_xhat,
    count,
    *,
    axis: int = 1,
    eps: float = 1e-5,
    out=None,
    activation: str | None = None,
    negative_slope: float = 0.01,
    y=None,
    return_dresidual: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dx from the global statistics and the global sums of :func:`batch_norm_backward_reduce` over ``count``
    values per channel (all processes). Returns dx, or (dx, dresidual) with ``return_dresidual``."""
    bi = _backward_inputs(dy, x, gamma, beta, y, axis, eps, activation, negative_slope, bool(return_dresidual))
    v = bi.v
    if isinstance(count, bool) or not isinstance(count, numbers.Real) or not count >= 1:
        raise ValueError(f"fastbn: count must be the values per channel over all processes (>= 1), got {count!r}")
    m = _stats_array(mean, "mean", v.channels)
    s = _stats_array(var, "var", v.channels)
    sd = _stats_array(sum_dy, "sum_dy", v.channels)
    sx = _stats_array(sum_dy_xhat, "sum_dy_xhat", v.channels)
    o = _output(out, v, inputs=((bi.dy, bi.dy_flat),) + (() if bi.y is None else ((bi.y, bi.y_flat),)))
    dres = _output(None, v) if return_dresidual else None
    _core.backward_apply(
        bi.dy_flat, bi.x_flat, bi.y_flat, m, s, bi.gamma, bi.beta, sd, sx, float(count), o.flat,
        None if dres is None else dres.flat, v.outer, v.channels, v.inner, bi.eps, bi.act, bi.slope,
    )  # fmt: skip
    if return_dresidual:
        return _finish(o), dres.result
    return _finish(o)


# ------------------------------------------------------------------------------------------------------------
# Folding


def fold(weight, bias, mean, var, gamma=None, beta=None, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Fold an inference batch norm into the linear or convolution layer before it.

    ``bn(conv(x)) == conv'(x)`` with ``weight' = weight * s`` and ``bias' = (bias - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)`` per output channel. ``weight`` has the output channels on axis 0 (a Linear's
    (out, in), a Conv's (out, in, kh, kw), ...); ``bias`` may be None (0). Computed in float64; returns
    ``(weight', bias')`` in weight's dtype (float32 or float64).
    """
    w = np.asarray(weight)
    if w.dtype.kind != "f" or w.ndim < 1:
        raise TypeError(f"fastbn: weight must be a floating-point array with output channels on axis 0, got {w.dtype}")
    c = w.shape[0]
    e = check_eps(eps)

    def per_channel(a, name, default):
        if a is None:
            return np.full(c, default, FLOAT64)
        arr = np.asarray(a, dtype=FLOAT64)
        if arr.shape != (c,):
            raise ValueError(f"fastbn: {name} must have shape ({c},) (one value per output channel), got {arr.shape}")
        return arr

    if mean is None or var is None:
        raise ValueError("fastbn: fold needs the statistics mean and var")
    m, s = per_channel(mean, "mean", 0.0), per_channel(var, "var", 1.0)
    g, b, b0 = per_channel(gamma, "gamma", 1.0), per_channel(beta, "beta", 0.0), per_channel(bias, "bias", 0.0)
    scale = g / np.sqrt(s + e)
    w2 = w.astype(FLOAT64) * scale.reshape((c,) + (1,) * (w.ndim - 1))
    b2 = (b0 - m) * scale + b
    return w2.astype(w.dtype), b2.astype(w.dtype)
