"""fastbn's kernels as PyTorch custom operators (namespace ``fastbn``), with fake (meta) kernels and autograd, so
that eager mode, ``torch.compile(fullgraph=True)`` and ``torch.export`` all run them.

The ops are functional: the training op returns the batch statistics and the caller updates its running
buffers. Tensors are read and written through their data pointers, in place of their storage: any dense
layout (contiguous, ``channels_last``, ``channels_last_3d``) is used as it is and outputs keep it; other strides
are copied once. The channel axis is 1, as in ``torch.nn.BatchNorm*d``.

CPU: float32, float64, bfloat16 and float16 (halves with float32 parameters and statistics). CUDA: float32 and
float64 through fastbn's CUDA kernels on the current stream, without fused epilogues; the callers in
:mod:`fastbn.torch.functional` send anything else to PyTorch's own batch norm.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _core
from .._layout import dense_order, view_of

__all__ = ["supported", "layout"]

_DOUBLE_BACKWARD = (
    "fastbn: double backward (a gradient of a gradient) through fastbn's batch norm is not supported; use "
    "torch.nn.BatchNorm*d (fastbn.torch.revert(model)) where second derivatives are needed"
)
_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_CUDA_BUILT = bool(_core.build_info()["cuda"])  # whether this build has the CUDA kernels


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype is torch.float64 else torch.float32  # (dtypes are singletons)


def supported(x: torch.Tensor, fused: bool = False) -> bool:
    """Whether fastbn's kernels take this tensor (else the callers use PyTorch's batch norm)."""
    if x.is_cpu:  # (is_cpu and is_cuda cost a fifth of device.type, on every call)
        return x.dtype in _CODES
    if x.is_cuda:
        return x.dtype in (torch.float32, torch.float64) and not fused and _CUDA_BUILT
    return False


def _require(x: torch.Tensor, fused: bool) -> None:
    """A clear error where an operator is called directly (``torch.ops.fastbn.*``) with a tensor its kernels do
    not take, instead of a kernel that reads the storage as another dtype or drops the epilogue. (The eager
    path has checked ``supported`` already and calls the implementations below the operators.)"""
    if supported(x, fused):
        return
    if x.is_cuda:
        if not _CUDA_BUILT:
            raise RuntimeError("fastbn: this build has no CUDA kernels (build_info()['cuda'] is False)")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"fastbn: CUDA tensors must be float32 or float64, got {x.dtype}")
        raise NotImplementedError(
            "fastbn: the fused epilogues (activation, residual) run on CPU tensors only; "
            "fastbn.torch.batch_norm sends fused calls on CUDA tensors to PyTorch's batch norm"
        )
    if x.is_cpu:
        raise TypeError(f"fastbn: CPU tensors must be float32, float64, bfloat16 or float16, got {x.dtype}")
    raise TypeError(f"fastbn: the operators take CPU or CUDA tensors, got one on {x.device}")


# The kernels take any dense layout and their outputs keep it: Inductor may hand the ops whatever layout it
# chose for the neighbouring convolutions (it runs CPU convolutions channels-last) instead of copying into the
# layout seen while tracing and back.
_FLEXIBLE = (torch.Tag.flexible_layout,)

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def layout(x: torch.Tensor):
    """(x or a dense copy, perm, outer, channels, inner): the kernels' view of a tensor (N, C, ...). The common
    layouts are recognised without building the permutation (perm None)."""
    shape = x.shape
    c = shape[1]
    if x.is_contiguous():
        return x, None, shape[0], c, x.numel() // (shape[0] * c)
    fmt = _CHANNELS_LAST.get(len(shape))
    if fmt is not None and x.is_contiguous(memory_format=fmt):
        return x, None, x.numel() // c, c, 1
    perm = dense_order(tuple(shape), x.stride(), 1)
    if perm is None:
        x = x.contiguous()
        return x, None, shape[0], c, x.numel() // (shape[0] * c)
    v = view_of(tuple(shape), perm, 1)
    return x, perm, v.outer, c, v.inner


def _like(t: torch.Tensor | None, x: torch.Tensor, perm, name: str) -> torch.Tensor | None:
    """t (shaped like x) in x's memory layout: itself when it already is, else one copy."""
    if t is None:
        return None
    if t.shape != x.shape:
        raise ValueError(f"fastbn: {name} has shape {tuple(t.shape)}, but the input has shape {tuple(x.shape)}")
    if t.dtype != x.dtype:
        raise TypeError(f"fastbn: {name} has dtype {t.dtype}, but the input has dtype {x.dtype}")
    if t.stride() == x.stride():
        return t
    if perm is None:
        perm = dense_order(tuple(x.shape), x.stride(), 1)
    if dense_order(tuple(t.shape), t.stride(), 1) == perm:
        return t
    return empty_like(x).copy_(t)


def _param(p: torch.Tensor | None, x: torch.Tensor, channels: int, name: str) -> torch.Tensor | None:
    """A per-channel tensor as the kernels want it: contiguous, of x's parameter dtype (half-precision inputs:
    float32; their parameters may be float32 or the half type, which is widened)."""
    if p is None:
        return None
    if p.numel() != channels or p.dim() != 1:
        raise ValueError(f"fastbn: {name} must have shape ({channels},), got {tuple(p.shape)}")
    want = param_dtype(x.dtype)
    if p.dtype is not want:
        if x.dtype in (torch.float32, torch.float64) or p.dtype not in (torch.float32, x.dtype):
            raise RuntimeError(
                f"fastbn: {name} has dtype {p.dtype}, but an input of dtype {x.dtype} needs {want} parameters"
            )
        p = p.to(want)
    return p.contiguous()


# Outputs of at least this many bytes come from fastbn's cache of reusable buffers (as in the NumPy API): a
# fresh allocation that large is a fresh mmap, whose page faults cost more than the batch norm that fills it.
_CACHED_MIN_BYTES = 1 << 20
_NUMPY_STORAGE = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.bfloat16: np.dtype(np.uint16),
    torch.float16: np.dtype(np.uint16),
}


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """torch.empty_like(x) for a dense x (same shape, dtype and strides), from the output cache for large CPU
    tensors.

    The result owns its storage rather than viewing another tensor (``set_`` of the cached buffer's storage,
    which keeps the buffer alive): autograd forbids in-place changes of a custom Function's output that is a
    view, and models do ``relu_(bn(x))`` (``torch.nn.ReLU(inplace=True)``). Few tensor operations: inside a
    model, right after a convolution, each costs 5-20 us."""
    if not x.is_cpu or x.nbytes < _CACHED_MIN_BYTES:
        return torch.empty_like(x)
    buf = torch.from_numpy(_core.empty((x.numel(),), _NUMPY_STORAGE[x.dtype]))
    if buf.dtype == x.dtype:
        return buf.set_(buf, 0, x.shape, x.stride())
    return torch.empty(0, dtype=x.dtype).set_(buf.untyped_storage(), 0, x.shape, x.stride())  # halves: uint16


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


_RAW_STREAM = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # a tenth of current_stream()'s cost


def _cuda_stream(x: torch.Tensor) -> int:
    if _RAW_STREAM is not None:
        return int(_RAW_STREAM(x.get_device()))
    return int(torch.cuda.current_stream(x.device).cuda_stream)


def _channel_pair(x: torch.Tensor, channels: int):
    pd = param_dtype(x.dtype)
    if x.is_cpu:  # torch.empty costs about half of new_empty(dtype=), twice per call
        return torch.empty(channels, dtype=pd), torch.empty(channels, dtype=pd)
    return x.new_empty((channels,), dtype=pd), x.new_empty((channels,), dtype=pd)


# ------------------------------------------------------------------------------------------------------------
# Training forward


def train_impl(x, weight, bias, residual, eps, activation, negative_slope, running=None):
    """running: None, or running_args(...) for a CPU call that updates the running statistics itself."""
    x, perm, outer, c, inner = layout(x)
    residual = _like(residual, x, perm, "residual")
    w, b = _param(weight, x, c, "weight"), _param(bias, x, c, "bias")
    y = empty_like(x)
    mean, var = _channel_pair(x, c)
    if x.is_cuda:
        _core.cuda_train(
            x.data_ptr(), y.data_ptr(), _ptr(w), _ptr(b), mean.data_ptr(), var.data_ptr(), outer, c, inner, eps,
            x.dtype == torch.float64, _cuda_stream(x),
        )  # fmt: skip
    else:
        _core.ptr_train(
            _CODES[x.dtype], x.data_ptr(), _ptr(residual), y.data_ptr(), _ptr(w), _ptr(b), mean.data_ptr(),
            var.data_ptr(), outer, c, inner, eps, activation, negative_slope, *(running or ()),
        )  # fmt: skip
    return y, mean, var


@torch.library.custom_op("fastbn::batch_norm_train", mutates_args=(), tags=_FLEXIBLE)
def batch_norm_train(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    activation: int,
    negative_slope: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y = act(weight * xhat + bias + residual) with the batch statistics; returns (y, mean, biased var)."""
    _require(x, activation != 0 or residual is not None)
    return train_impl(x, weight, bias, residual, eps, activation, negative_slope)


@batch_norm_train.register_fake
def _(x, weight, bias, residual, eps, activation, negative_slope):
    c = x.shape[1]
    pd = param_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty((c,), dtype=pd), x.new_empty((c,), dtype=pd)


# ------------------------------------------------------------------------------------------------------------
# Inference forward


def infer_impl(x, mean, var, weight, bias, residual, eps, activation, negative_slope):
    x, perm, outer, c, inner = layout(x)
    residual = _like(residual, x, perm, "residual")
    m, v = _param(mean, x, c, "running_mean"), _param(var, x, c, "running_var")
    w, b = _param(weight, x, c, "weight"), _param(bias, x, c, "bias")
    y = empty_like(x)
    if x.is_cuda:
        _core.cuda_infer(
            x.data_ptr(), y.data_ptr(), m.data_ptr(), v.data_ptr(), _ptr(w), _ptr(b), outer, c, inner, eps,
            x.dtype == torch.float64, _cuda_stream(x),
        )  # fmt: skip
    else:
        _core.ptr_infer(
            _CODES[x.dtype], x.data_ptr(), _ptr(residual), y.data_ptr(), m.data_ptr(), v.data_ptr(), _ptr(w),
            _ptr(b), outer, c, inner, eps, activation, negative_slope, False,
        )  # fmt: skip
    return y


@torch.library.custom_op("fastbn::batch_norm_infer", mutates_args=(), tags=_FLEXIBLE)
def batch_norm_infer(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    activation: int,
    negative_slope: float,
) -> torch.Tensor:
    """y = act(weight * (x - mean) / sqrt(var + eps) + bias + residual) with given statistics."""
    _require(x, activation != 0 or residual is not None)
    return infer_impl(x, mean, var, weight, bias, residual, eps, activation, negative_slope)


@batch_norm_infer.register_fake
def _(x, mean, var, weight, bias, residual, eps, activation, negative_slope):
    return torch.empty_like(x)


# ------------------------------------------------------------------------------------------------------------
# Backward


def backward_impl(
    dy, x, y, mean, var, weight, bias, eps, batch_stats, activation, negative_slope, want_dresidual, placeholder=True
):
    """(dx, dgamma, dbeta, dresidual); an unwanted dresidual is an empty tensor (the operator's schema), or None
    with placeholder=False (eager: one allocation less)."""
    x, perm, outer, c, inner = layout(x)
    dy = _like(dy, x, perm, "grad_output")
    y = _like(y, x, perm, "output")
    m, v = _param(mean, x, c, "mean"), _param(var, x, c, "var")
    w, b = _param(weight, x, c, "weight"), _param(bias, x, c, "bias")
    dx = empty_like(x)
    dres = empty_like(x) if want_dresidual else x.new_empty((0,)) if placeholder else None
    dgamma, dbeta = _channel_pair(x, c)
    if x.is_cuda:
        _core.cuda_backward(
            dy.data_ptr(), x.data_ptr(), m.data_ptr(), v.data_ptr(), _ptr(w), dx.data_ptr(), dgamma.data_ptr(),
            dbeta.data_ptr(), outer, c, inner, eps, batch_stats, x.dtype == torch.float64, _cuda_stream(x),
        )  # fmt: skip
    else:
        _core.ptr_backward(
            _CODES[x.dtype], dy.data_ptr(), x.data_ptr(), _ptr(y), m.data_ptr(), v.data_ptr(), _ptr(w), _ptr(b),
            dx.data_ptr(), _ptr(dres) if want_dresidual else 0, dgamma.data_ptr(), dbeta.data_ptr(), outer, c,
            inner, eps, batch_stats, activation, negative_slope,
        )  # fmt: skip
    return dx, dgamma, dbeta, dres


@torch.library.custom_op("fastbn::batch_norm_backward", mutates_args=(), tags=_FLEXIBLE)
def batch_norm_backward(
    dy: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor | None,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    batch_stats: bool,
    activation: int,
    negative_slope: float,
    want_dresidual: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dresidual); dresidual is empty unless wanted, the parameter gradients are of the
    parameter dtype (float32 for half-precision inputs)."""
    _require(x, activation != 0 or want_dresidual)
    return backward_impl(
        dy, x, y, mean, var, weight, bias, eps, batch_stats, activation, negative_slope, want_dresidual
    )


@batch_norm_backward.register_fake
def _(dy, x, y, mean, var, weight, bias, eps, batch_stats, activation, negative_slope, want_dresidual):
    c = x.shape[1]
    pd = param_dtype(x.dtype)
    dres = torch.empty_like(x) if want_dresidual else x.new_empty((0,))
    return torch.empty_like(x), x.new_empty((c,), dtype=pd), x.new_empty((c,), dtype=pd), dres


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


torch.library.register_autograd("fastbn::batch_norm_backward", _no_double_backward)


# ------------------------------------------------------------------------------------------------------------
# Autograd of the forwards


def _as(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """grad in param's dtype (a half-precision parameter gets its float32 gradient narrowed)."""
    return grad if grad.dtype is param.dtype else grad.to(param.dtype)


def _grads(ctx, dy, batch_stats: bool, backward=batch_norm_backward):
    x, y, mean, var, weight, bias = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dgamma, dbeta, dres = backward(
        dy, x, y if ctx.activation else None, mean, var, weight, bias, ctx.eps, batch_stats, ctx.activation,
        ctx.negative_slope, ctx.has_residual and need[ctx.residual_index],
    )  # fmt: skip
    dw = _as(dgamma, weight) if weight is not None and need[ctx.weight_index] else None
    db = _as(dbeta, bias) if bias is not None and need[ctx.weight_index + 1] else None
    dr = dres if ctx.has_residual and need[ctx.residual_index] else None
    return dx, dw, db, dr


def _setup_train(ctx, inputs, output):
    x, weight, bias, residual, eps, activation, negative_slope = inputs
    y, mean, var = output
    ctx.save_for_backward(x, y if activation else None, mean, var, weight, bias)
    ctx.eps, ctx.activation, ctx.negative_slope = eps, activation, negative_slope
    ctx.has_residual, ctx.weight_index, ctx.residual_index = residual is not None, 1, 3
    ctx.mark_non_differentiable(mean, var)


def _backward_train(ctx, dy, _dmean, _dvar):
    dx, dw, db, dr = _grads(ctx, dy, True)
    return dx, dw, db, dr, None, None, None


torch.library.register_autograd("fastbn::batch_norm_train", _backward_train, setup_context=_setup_train)


def _setup_infer(ctx, inputs, output):
    x, mean, var, weight, bias, residual, eps, activation, negative_slope = inputs
    ctx.save_for_backward(x, output if activation else None, mean, var, weight, bias)
    ctx.eps, ctx.activation, ctx.negative_slope = eps, activation, negative_slope
    ctx.has_residual, ctx.weight_index, ctx.residual_index = residual is not None, 3, 5


def _backward_infer(ctx, dy):
    dx, dw, db, dr = _grads(ctx, dy, False)
    return dx, None, None, dw, db, dr, None, None, None


torch.library.register_autograd("fastbn::batch_norm_infer", _backward_infer, setup_context=_setup_infer)


# ------------------------------------------------------------------------------------------------------------
# Eager mode: the same implementations behind plain autograd Functions, without the dispatcher's per-call cost.
# torch.compile and torch.export see the custom operators above (fastbn.torch.functional picks).


_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]


def apply(fn, *args):
    """fn.apply(*args) for the Eager* Functions below, without torch.autograd.Function.apply's Python around
    the C++ one (binding default arguments, a pytree pass over the arguments for functorch's dead wrappers),
    ~35 us of a layer's call inside a model; under functorch transforms, the usual way."""
    if torch._C._are_functorch_transforms_active():
        return fn.apply(*args)
    return _FUNCTION_APPLY.__get__(None, fn)(*args)


class _NoDoubleBackward(torch.autograd.Function):
    """Identity on the gradients a backward returns under create_graph=True, made to depend on the tensors the
    gradients really depend on (dy, x): differentiating them raises instead of silently giving zero."""

    @staticmethod
    def forward(ctx, dy, x, *grads):
        return tuple(None if g is None else g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _backward_eager(*args):
    return backward_impl(*args, placeholder=False)


def _guard(ctx, dy, grads):
    if not torch.is_grad_enabled():
        return grads
    return _NoDoubleBackward.apply(dy, ctx.saved_tensors[0], *grads)


class EagerTrain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, activation, negative_slope, running=None):
        out = train_impl(x, weight, bias, residual, eps, activation, negative_slope, running)
        _setup_train(ctx, (x, weight, bias, residual, eps, activation, negative_slope), out)
        return out

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        dx, dw, db, dr = _guard(ctx, dy, _grads(ctx, dy, True, _backward_eager))
        return dx, dw, db, dr, None, None, None, None


class EagerInfer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, weight, bias, residual, eps, activation, negative_slope):
        y = infer_impl(x, mean, var, weight, bias, residual, eps, activation, negative_slope)
        _setup_infer(ctx, (x, mean, var, weight, bias, residual, eps, activation, negative_slope), y)
        return y

    @staticmethod
    def backward(ctx, dy):
        dx, dw, db, dr = _guard(ctx, dy, _grads(ctx, dy, False, _backward_eager))
        return dx, None, None, dw, db, dr, None, None, None


_RUNNING = {torch.float32: 0, torch.float64: 1}


def _running_code(running_mean, running_var, count: int):
    """_RUNNING's code of buffers fastbn's C++ can update in place (float32/float64, the same dtype, contiguous,
    count > 1), else None."""
    rc = _RUNNING.get(running_mean.dtype)
    if (
        rc is None
        or running_var.dtype != running_mean.dtype
        or not (running_mean.is_contiguous() and running_var.is_contiguous())
        or count < 2
    ):
        return None
    return rc


def running_args(running_mean, running_var, x, count: int, momentum: float, tracked=None):
    """The trailing arguments of _core.ptr_train that make the training call update float32/float64 CPU
    running statistics itself (one call instead of two: inside a model each call from Python costs 5-20 us
    with cold caches) and count the batch in ``tracked`` (a module's num_batches_tracked: the last argument is
    0 where the caller has to), or None where the caller updates them (update_running_stats)."""
    if not (x.is_cpu and running_mean.is_cpu and running_var.is_cpu):
        return None
    rc = _running_code(running_mean, running_var, count)
    if rc is None:
        return None
    counter = 0
    if tracked is not None and tracked.dtype is torch.int64 and tracked.is_cpu and tracked.numel() == 1:
        counter = tracked.data_ptr()
    return running_mean.data_ptr(), running_var.data_ptr(), rc, float(momentum), counter


def update_running_stats(running_mean, running_var, mean, var, count: int, momentum: float) -> bool:
    """In place, in one C++ call (on CUDA one kernel on the current stream), for float32/float64 buffers
    (False: the caller does it with torch ops)."""
    rc = _running_code(running_mean, running_var, count)
    if rc is None:
        return False
    if running_mean.is_cuda:
        if not (
            mean.dtype == var.dtype == running_mean.dtype
            and mean.device == running_mean.device == running_var.device
            and 0.0 <= momentum <= 1.0
            and _CUDA_BUILT
        ):
            return False
        _core.cuda_update_running_stats(
            running_mean.data_ptr(), running_var.data_ptr(), mean.data_ptr(), var.data_ptr(), mean.numel(), count,
            float(momentum), running_mean.dtype == torch.float64, _cuda_stream(running_mean),
        )  # fmt: skip
        torch.autograd.graph.increment_version((running_mean, running_var))
        return True
    if not running_mean.is_cpu:
        return False
    _core.ptr_update_running_stats(
        rc, running_mean.data_ptr(), running_var.data_ptr(), _RUNNING[mean.dtype], mean.data_ptr(), var.data_ptr(),
        mean.numel(), float(count), float(momentum),
    )  # fmt: skip
    torch.autograd.graph.increment_version((running_mean, running_var))
    return True
