"""fastbn on the GPU: the same functions and BatchNorm for CUDA device arrays.

Any array exposing ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors, Numba, fastbn's own
:class:`DeviceArray`) or a CUDA DLPack capsule (via CuPy or PyTorch when installed) runs on the GPU; results
come back as arrays of the same kind (PyTorch in, PyTorch out; CuPy in, CuPy out; anything else gets a
:class:`DeviceArray`, which CuPy, PyTorch and Numba wrap without a copy through its
``__cuda_array_interface__``). Kernels are enqueued on the framework's current stream. Neither CuPy nor PyTorch
is needed: :func:`to_device` and :meth:`DeviceArray.get` move NumPy data in and out.

This module imports on every machine; :func:`is_available` says whether a device is usable (False, not an
error, without a GPU, a driver, or CUDA compiled in).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from . import _core
from ._layout import check_eps as _check_eps
from ._layout import dense_order as _dense_order
from ._layout import normalize_axis as _normalize_axis

__all__ = [
    "is_available",
    "device_count",
    "device_description",
    "DeviceArray",
    "to_device",
    "is_device_array",
    "batch_norm_train",
    "batch_norm_infer",
    "batch_norm_backward",
    "backward_into",
    "describe",
    "overlaps",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def is_available() -> bool:
    """True when fastbn was built with CUDA and a device is usable now."""
    return bool(_core.cuda_is_available())


def device_count() -> int:
    return int(_core.cuda_device_count())


def device_description(device: int = 0) -> str:
    return _core.cuda_device_description(device)


def require() -> None:
    """Raise RuntimeError saying why the GPU path cannot run here."""
    if not is_available():
        why = "fastbn was built without CUDA" if not _core.build_info()["cuda"] else "no usable CUDA device"
        raise RuntimeError(f"fastbn: CUDA is not available ({why})")


class DeviceArray:
    """A minimal CUDA array owned by fastbn: a shape, dtype and strides over one device allocation.

    ``cupy.asarray(a)`` and ``torch.as_tensor(a, device="cuda")`` wrap it without a copy.
    """

    def __init__(self, shape: Sequence[int], dtype=np.float32, *, _buffer=None, _strides=None, _offset=0):
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        itemsize = self.dtype.itemsize
        if _strides is None:
            strides, step = [], itemsize
            for s in reversed(self.shape):
                strides.append(step)
                step *= s
            _strides = tuple(reversed(strides))
        self.strides: tuple[int, ...] = tuple(_strides)
        if _buffer is None:
            require()
            _buffer = _core.DeviceBuffer(math.prod(self.shape) * itemsize)
        self._buffer = _buffer
        self._offset = _offset

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def ptr(self) -> int:
        return self._buffer.ptr + self._offset

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "shape": self.shape,
            "typestr": self.dtype.str,
            "data": (self.ptr, False),
            "strides": self.strides,
            "version": 3,
        }

    def transpose(self, *axes) -> DeviceArray:
        """A view with permuted axes (no copy)."""
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = tuple(axes[0])
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"fastbn: {axes} is not a permutation of {self.ndim} axes")
        return DeviceArray(
            [self.shape[a] for a in axes],
            self.dtype,
            _buffer=self._buffer,
            _strides=[self.strides[a] for a in axes],
            _offset=self._offset,
        )

    def get(self) -> np.ndarray:
        """Copy to a NumPy array of the same shape (synchronizes with the device)."""
        _core.cuda_synchronize(0)
        perm = _dense_order(self.shape, self.strides, self.dtype.itemsize)
        if perm is None or self._offset or self.nbytes != self._buffer.nbytes:
            raise ValueError("fastbn: only whole, dense DeviceArrays can be copied to the host")
        host = np.empty([self.shape[i] for i in perm], self.dtype)
        self._buffer.copy_to_host(host)
        return host.transpose(np.argsort(perm))

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype.name})"


def to_device(host) -> DeviceArray:
    """Copy a NumPy array (float32 or float64) to a new DeviceArray."""
    a = np.ascontiguousarray(host)
    if a.dtype not in _FLOATS:
        raise TypeError(f"fastbn: expected float32 or float64 data, got dtype {a.dtype}")
    d = DeviceArray(a.shape, a.dtype)
    d._buffer.copy_from_host(a)
    return d


# ------------------------------------------------------------------------------------------------------------
# Reading device arrays


class _Dev(NamedTuple):
    obj: object  # the array as given (or a CAI-capable wrapper of a DLPack one)
    kind: str  # "torch", "cupy" or "fastbn" (anything else with the interface is answered with DeviceArray)
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # bytes
    dtype: np.dtype


def _module_of(a) -> str:
    m = type(a).__module__.split(".")[0]
    return m if m in ("torch", "cupy") else "fastbn"


def is_device_array(a) -> bool:
    """True for objects this module takes as GPU arrays."""
    if isinstance(a, np.ndarray):
        return False
    if type(a).__module__.split(".")[0] == "torch" and hasattr(a, "is_cuda"):
        return bool(a.is_cuda)
    try:
        if getattr(a, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:
        return False
    dev = getattr(a, "__dlpack_device__", None)
    if dev is not None:
        try:
            return dev()[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged
        except Exception:
            return False
    return False


def _from_dlpack(a):
    for mod in ("cupy", "torch"):
        try:
            lib = __import__(mod)
            return lib.from_dlpack(a)
        except ImportError:
            continue
    raise TypeError("fastbn: a CUDA DLPack array needs CuPy or PyTorch installed to be read")


_TORCH_DTYPES: dict = {}  # torch dtype -> numpy dtype, filled when the first tensor arrives


def _read_torch(a, name: str) -> _Dev:
    # Read the tensor's own attributes: its __cuda_array_interface__ is slow and refuses tensors that require
    # grad. Per-call host overhead matters here, since a large kernel runs for only tens of microseconds.
    if not a.is_cuda:
        raise TypeError(
            f"fastbn: {name} is a host array but the other arrays are on the GPU; "
            "move it with fastbn.cuda.to_device (or your framework) first"
        )
    if not _TORCH_DTYPES:
        import torch

        _TORCH_DTYPES.update({torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)})
    dtype = _TORCH_DTYPES.get(a.dtype)
    if dtype is None:
        raise TypeError(f"fastbn: {name} must be float32 or float64, got dtype {a.dtype}")
    it = dtype.itemsize
    return _Dev(a, "torch", a.data_ptr(), tuple(a.shape), tuple(st * it for st in a.stride()), dtype)


def _read(a, name: str) -> _Dev:
    mod = type(a).__module__.split(".")[0]
    if mod == "torch" and hasattr(a, "data_ptr"):
        return _read_torch(a, name)
    if mod == "cupy" and hasattr(a, "data") and hasattr(a, "strides"):
        dtype = np.dtype(a.dtype)
        if dtype not in _FLOATS:
            raise TypeError(f"fastbn: {name} must be float32 or float64, got dtype {dtype}")
        return _Dev(a, "cupy", int(a.data.ptr), tuple(a.shape), tuple(a.strides), dtype)
    try:
        cai = getattr(a, "__cuda_array_interface__", None)
    except Exception:
        cai = None
    if cai is None:
        if not is_device_array(a):
            raise TypeError(
                f"fastbn: {name} is a host array but the other arrays are on the GPU; "
                "move it with fastbn.cuda.to_device (or your framework) first"
            )
        a = _from_dlpack(a)
        cai = a.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    if dtype not in _FLOATS:
        raise TypeError(f"fastbn: {name} must be float32 or float64, got dtype {dtype}")
    shape = tuple(int(s) for s in cai["shape"])
    strides = cai.get("strides")
    if strides is None:
        strides, step = [], dtype.itemsize
        for s in reversed(shape):
            strides.append(step)
            step *= s
        strides = tuple(reversed(strides))
    return _Dev(a, _module_of(a), int(cai["data"][0]), shape, tuple(int(s) for s in strides), dtype)


def _raw_stream(device: int) -> int:
    """The current stream of a torch CUDA device (torch is imported)."""
    torch = _FAST[0] if _FAST else __import__("torch")
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # a tenth of current_stream()'s cost
    if raw is not None:
        return int(raw(device))
    return int(torch.cuda.current_stream(device).cuda_stream)


def _stream_of(d: _Dev) -> int:
    if d.kind == "torch":
        return _raw_stream(d.obj.get_device())
    if d.kind == "cupy":
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)
    return 0


def _empty_like(d: _Dev):
    """A new device array of the same kind, shape, dtype and memory layout as the dense array `d`."""
    if d.kind == "torch":
        t = d.obj.new_empty_strided(d.obj.shape, d.obj.stride())
        return t, t.data_ptr()
    if d.kind == "cupy":
        import cupy

        c = cupy.empty_like(d.obj, order="K")
        return c, int(c.data.ptr)
    a = DeviceArray(d.shape, d.dtype, _strides=d.strides)
    return a, a.ptr


def _channel_pair(d: _Dev, channels: int):
    """Two new per-channel arrays (statistics, parameter gradients) of x's kind, from one allocation."""
    if d.kind == "torch":
        t = d.obj.new_empty((2, channels))
        return (t[0], t.data_ptr()), (t[1], t.data_ptr() + channels * d.dtype.itemsize)
    if d.kind == "cupy":
        import cupy

        c = cupy.empty((2, channels), dtype=d.dtype)
        return (c[0], int(c.data.ptr)), (c[1], int(c.data.ptr) + channels * d.dtype.itemsize)
    a, b = DeviceArray((channels,), d.dtype), DeviceArray((channels,), d.dtype)
    return (a, a.ptr), (b, b.ptr)


def _is_contiguous(d: _Dev) -> bool:
    if d.kind == "torch":
        return d.obj.is_contiguous()
    if d.kind == "cupy":
        return d.obj.flags.c_contiguous
    return False


_IDENTITIES: dict = {}


def _identity(n: int) -> tuple[int, ...]:
    return _IDENTITIES.setdefault(n, tuple(range(n)))


class _View(NamedTuple):
    dev: _Dev
    perm: tuple[int, ...]
    outer: int
    channels: int
    inner: int


def _view(x, axis, name="x") -> _View:
    d = _read(x, name)
    if len(d.shape) < 2:
        raise ValueError(f"fastbn: expected {name} with at least 2 dimensions (batch, channels, ...), got {d.shape}")
    ax = _normalize_axis(axis, len(d.shape))
    if math.prod(d.shape) == 0:
        raise ValueError(f"fastbn: {name} is empty (shape {d.shape}); every dimension must be >= 1")
    perm = _dense_order(d.shape, d.strides, d.dtype.itemsize) if not _is_contiguous(d) else _identity(len(d.shape))
    if perm is None:
        if d.kind == "torch":
            d = _read(d.obj.contiguous(), name)
        elif d.kind == "cupy":
            import cupy

            d = _read(cupy.ascontiguousarray(d.obj), name)
        else:
            raise ValueError(f"fastbn: {name} must be dense on the GPU (a permutation of a contiguous layout)")
        perm = _dense_order(d.shape, d.strides, d.dtype.itemsize)
    c = d.shape[ax]
    if c == 1:
        return _View(d, perm, 1, 1, math.prod(d.shape))
    pos = perm.index(ax)
    return _View(d, perm, math.prod(d.shape[i] for i in perm[:pos]), c, math.prod(d.shape[i] for i in perm[pos + 1 :]))


def _channel_ptr(p, name: str, v: _View, optional: bool) -> int:
    if p is None:
        if optional:
            return 0
        raise ValueError(f"fastbn: {name} is required")
    if v.dev.kind == "torch" and type(p) is type(v.dev.obj):  # the common case, checked cheaply
        if p.is_cuda and p.dtype is v.dev.obj.dtype and p.shape == (v.channels,) and p.is_contiguous():
            return p.data_ptr()
    d = _read(p, name)
    if d.dtype != v.dev.dtype:
        raise TypeError(f"fastbn: {name} has dtype {d.dtype}, but x has dtype {v.dev.dtype}; they must match")
    if d.shape != (v.channels,):
        raise ValueError(f"fastbn: {name} must have shape ({v.channels},) (one value per channel), got {d.shape}")
    if d.strides[0] != d.dtype.itemsize and v.channels > 1:
        raise ValueError(f"fastbn: {name} must be contiguous")
    return d.ptr


def _same_layout(a: _Dev, b: _Dev) -> bool:
    if a.strides == b.strides:
        return True
    order = _dense_order(a.shape, a.strides, a.dtype.itemsize)
    return order is not None and order == _dense_order(b.shape, b.strides, b.dtype.itemsize)


def _out(out, v: _View, name="out"):
    if out is None:
        return _empty_like(v.dev)
    d = _read(out, name)
    if d.shape != v.dev.shape:
        raise ValueError(f"fastbn: {name} has shape {d.shape}, expected {v.dev.shape}")
    if d.dtype != v.dev.dtype:
        raise TypeError(f"fastbn: {name} has dtype {d.dtype}, expected {v.dev.dtype}")
    if not _same_layout(d, v.dev):
        raise ValueError(f"fastbn: on the GPU, {name} must have the same memory layout as x")
    return out, d.ptr


# The lean path for the common call: a dense CUDA torch tensor (contiguous or channels-last) with channels on
# axis 1, float32/float64, parameters that are contiguous tensors of its dtype on its device, `out` (if given) a
# tensor laid out like x. It reads only what the kernels need, so that a small tensor's call costs little more
# than the launch; anything else (and every error) takes the general path, with its checks and messages.
_FAST: list = []  # [torch, torch.Tensor, {dtype: is float64}, channels_last, channels_last_3d]


def _fast_view(x, axis):
    """(outer, channels, inner, is_f64) of x for the lean path, or None."""
    if not _FAST:
        if type(x).__module__.split(".")[0] != "torch":
            return None
        import torch

        _FAST.extend(
            [
                torch,
                torch.Tensor,
                {torch.float32: False, torch.float64: True},
                torch.channels_last,
                torch.channels_last_3d,
            ]
        )
    _, cls, dtypes, cl4, cl5 = _FAST
    if type(x) is not cls or axis != 1 or not x.is_cuda:
        return None
    f64 = dtypes.get(x.dtype)
    shape = x.shape
    nd = len(shape)
    if f64 is None or nd < 2:
        return None
    n, c = shape[0], shape[1]
    numel = x.numel()
    if numel == 0:
        return None
    if x.is_contiguous():
        return n, c, numel // (n * c), f64
    if (nd == 4 and x.is_contiguous(memory_format=cl4)) or (nd == 5 and x.is_contiguous(memory_format=cl5)):
        return numel // c, c, 1, f64
    return None


def _fast_param(p, x, c: int, device: int):
    """p's address for the lean path (0 for None), or None where the general path must look at it."""
    if p is None:
        return 0
    if type(p) is type(x) and p.dtype is x.dtype and p.shape == (c,) and p.is_contiguous() and p.get_device() == device:
        return p.data_ptr()
    return None


def _fast_out(out, x, device: int):
    """A new tensor laid out like x, or `out` where it is one on x's device; None sends the call the general way."""
    if out is None:
        return _FAST[0].empty_like(x)
    if (
        type(out) is type(x)
        and out.dtype is x.dtype
        and out.shape == x.shape
        and out.stride() == x.stride()
        and out.get_device() == device
    ):
        return out
    return None


def _fast_stats(x, c: int):
    """Two new per-channel tensors of x's dtype from one allocation, and their addresses."""
    t = x.new_empty((2, c))
    p = t.data_ptr()
    return t[0], t[1], p, p + c * x.element_size()


def batch_norm_train(x, gamma=None, beta=None, *, axis=1, eps=1e-5, out=None):
    """GPU twin of :func:`fastbn.batch_norm_train` (see there); returns device arrays."""
    f = _fast_view(x, axis)
    if f is not None:
        outer, c, inner, f64 = f
        dev = x.get_device()
        g, b, y = _fast_param(gamma, x, c, dev), _fast_param(beta, x, c, dev), _fast_out(out, x, dev)
        if None not in (g, b, y) and outer * inner >= 2 and type(eps) is float and 0.0 < eps < math.inf:
            mean, var, mp, vp = _fast_stats(x, c)
            _core.cuda_train(x.data_ptr(), y.data_ptr(), g, b, mp, vp, outer, c, inner, eps, f64, _raw_stream(dev))
            return y, mean, var
    e = _check_eps(eps)
    v = _view(x, axis)
    g = _channel_ptr(gamma, "gamma", v, True)
    b = _channel_ptr(beta, "beta", v, True)
    if v.outer * v.inner < 2:
        raise ValueError(
            f"fastbn: expected more than 1 value per channel when training, got input of shape {v.dev.shape}"
        )
    require()
    y, yp = _out(out, v)
    (mean, mp), (var, vp) = _channel_pair(v.dev, v.channels)
    _core.cuda_train(
        v.dev.ptr, yp, g, b, mp, vp, v.outer, v.channels, v.inner, e, v.dev.dtype == np.float64, _stream_of(v.dev)
    )
    return y, mean, var


def batch_norm_infer(x, mean, var, gamma=None, beta=None, *, axis=1, eps=1e-5, out=None):
    """GPU twin of :func:`fastbn.batch_norm_infer`."""
    f = _fast_view(x, axis)
    if f is not None and mean is not None and var is not None:
        outer, c, inner, f64 = f
        dev = x.get_device()
        m, s = _fast_param(mean, x, c, dev), _fast_param(var, x, c, dev)
        g, b, y = _fast_param(gamma, x, c, dev), _fast_param(beta, x, c, dev), _fast_out(out, x, dev)
        if None not in (m, s, g, b, y) and type(eps) is float and 0.0 < eps < math.inf:
            _core.cuda_infer(x.data_ptr(), y.data_ptr(), m, s, g, b, outer, c, inner, eps, f64, _raw_stream(dev))
            return y
    e = _check_eps(eps)
    v = _view(x, axis)
    m = _channel_ptr(mean, "mean", v, False)
    s = _channel_ptr(var, "var", v, False)
    g = _channel_ptr(gamma, "gamma", v, True)
    b = _channel_ptr(beta, "beta", v, True)
    require()
    y, yp = _out(out, v)
    _core.cuda_infer(
        v.dev.ptr, yp, m, s, g, b, v.outer, v.channels, v.inner, e, v.dev.dtype == np.float64, _stream_of(v.dev)
    )
    return y


def _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, want_param_grads, grads=None):
    e = _check_eps(eps)
    v = _view(x, axis)
    d = _read(dy, "dy")
    if d.shape != v.dev.shape:
        raise ValueError(f"fastbn: dy has shape {d.shape}, but x has shape {v.dev.shape}; they must match")
    if d.dtype != v.dev.dtype:
        raise TypeError(f"fastbn: dy has dtype {d.dtype}, but x has dtype {v.dev.dtype}; they must match")
    if not _same_layout(d, v.dev):
        raise ValueError("fastbn: on the GPU, dy must have the same memory layout as x")
    m = _channel_ptr(mean, "mean", v, False)
    s = _channel_ptr(var, "var", v, False)
    g = _channel_ptr(gamma, "gamma", v, True)
    require()
    dx, dxp = _out(out, v)
    if grads is not None:  # BatchNorm's own gradient arrays
        (dgamma, dgp), (dbeta, dbp) = grads
    elif want_param_grads:
        (dgamma, dgp), (dbeta, dbp) = _channel_pair(v.dev, v.channels)
    else:
        dgamma = dbeta = None
        dgp = dbp = 0
    _core.cuda_backward(
        d.ptr,
        v.dev.ptr,
        m,
        s,
        g,
        dxp,
        dgp,
        dbp,
        v.outer,
        v.channels,
        v.inner,
        e,
        bool(batch_stats),
        v.dev.dtype == np.float64,
        _stream_of(v.dev),
    )
    return dx, dgamma, dbeta


def batch_norm_backward(dy, x, mean, var, gamma=None, *, axis=1, eps=1e-5, batch_stats=True, out=None):
    """GPU twin of :func:`fastbn.batch_norm_backward`."""
    f = _fast_view(x, axis)
    if (
        f is not None
        and mean is not None
        and var is not None
        and type(dy) is type(x)
        and dy.dtype is x.dtype
        and dy.shape == x.shape
        and dy.stride() == x.stride()
        and dy.get_device() == x.get_device()
    ):
        outer, c, inner, f64 = f
        dev = x.get_device()
        m, s, g = _fast_param(mean, x, c, dev), _fast_param(var, x, c, dev), _fast_param(gamma, x, c, dev)
        dx = _fast_out(out, x, dev)
        if None not in (m, s, g, dx) and type(eps) is float and 0.0 < eps < math.inf:
            dgamma, dbeta, gp, bp = _fast_stats(x, c)
            _core.cuda_backward(
                dy.data_ptr(),
                x.data_ptr(),
                m,
                s,
                g,
                dx.data_ptr(),
                gp,
                bp,
                outer,
                c,
                inner,
                eps,
                bool(batch_stats),
                f64,
                _raw_stream(dev),
            )
            return dx, dgamma, dbeta
    return _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, True)


def backward_into(dy, x, mean, var, gamma, dgamma, dbeta, *, axis=1, eps=1e-5, batch_stats=True, out=None):
    """The backward writing the parameter gradients into given device arrays (a layer's own); returns dx."""
    grads = None
    if dgamma is not None:
        grads = ((dgamma, _read(dgamma, "dgamma").ptr), (dbeta, _read(dbeta, "dbeta").ptr))
    dx, _, _ = _backward(dy, x, mean, var, gamma, axis, eps, batch_stats, out, grads is not None, grads)
    return dx


def describe(a, name: str = "array") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a device array; TypeError for a host array."""
    d = _read(a, name)
    return d.shape, d.dtype


def overlaps(a, b) -> bool:
    """Whether two device arrays share memory (their dense extents intersect)."""
    da, db = _read(a, "a"), _read(b, "b")
    na = math.prod(da.shape) * da.dtype.itemsize
    nb = math.prod(db.shape) * db.dtype.itemsize
    return da.ptr < db.ptr + nb and db.ptr < da.ptr + na


def copy(a):
    """A device copy of a device array, of the same kind."""
    d = _read(a, "array")
    if d.kind == "torch":
        return a.clone()
    if d.kind == "cupy":
        return a.copy()
    c = DeviceArray(d.shape, d.dtype)
    c._buffer.copy_from_device(d.ptr)
    return c


def update_running_stats(running_mean, running_var, mean, var, count: int, factor: float) -> None:
    """running = (1 - factor) * running + factor * batch on the device, the variance made unbiased."""
    rm, rv, m, s = (
        _read(a, n)
        for a, n in ((running_mean, "running_mean"), (running_var, "running_var"), (mean, "mean"), (var, "var"))
    )
    _core.cuda_update_running_stats(
        rm.ptr, rv.ptr, m.ptr, s.ptr, rm.shape[0], int(count), float(factor), rm.dtype == np.float64, _stream_of(m)
    )
