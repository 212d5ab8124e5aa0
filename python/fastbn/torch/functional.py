"""``fastbn.torch.batch_norm``: torch.nn.functional.batch_norm on fastbn's kernels, plus a fused epilogue."""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .._layout import ACTIVATIONS, check_activation
from . import _ops

__all__ = ["batch_norm"]


def _torch_act(z: torch.Tensor, act: int, negative_slope: float) -> torch.Tensor:
    if act == ACTIVATIONS["relu"]:
        return torch.relu(z)
    if act == ACTIVATIONS["leaky_relu"]:
        return TF.leaky_relu(z, negative_slope)
    if act == ACTIVATIONS["sigmoid"]:
        return torch.sigmoid(z)
    return z


def _check(input, running_mean, running_var, weight, bias, training: bool) -> None:
    """The misuse torch.nn.functional.batch_norm rejects, with its exception types and words."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"fastbn: batch_norm(): input must be a Tensor, not {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"fastbn: expected an input with at least 2 dimensions (N, C, ...), got {input.dim()}D")
    c = input.shape[1]
    if training:
        if (input.numel() // c if c else 0) <= 1:  # torch lets 0 through and writes NaN running statistics
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {input.size()}")
    elif running_mean is None or running_var is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    # (one test per tensor, spelled out: a loop over a tuple of (name, tensor) pairs costs ~0.3 us a call)
    if running_mean is not None and running_mean.numel() != c:
        _wrong_size("running_mean", running_mean, c)
    if running_var is not None and running_var.numel() != c:
        _wrong_size("running_var", running_var, c)
    if weight is not None and weight.numel() != c:
        _wrong_size("weight", weight, c)
    if bias is not None and bias.numel() != c:
        _wrong_size("bias", bias, c)


def _wrong_size(name: str, t: torch.Tensor, c: int):
    raise RuntimeError(f"{name} should contain {c} elements not {t.numel()}")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    activation: str | None = None,
    negative_slope: float = 0.01,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch normalization with the signature, semantics, errors and running-statistics updates of
    :func:`torch.nn.functional.batch_norm`, differentiable, on fastbn's kernels; then
    ``act(. + residual)`` in the same pass when ``activation`` ("relu", "leaky_relu", "sigmoid") or
    ``residual`` is given.

    Training: normalizes with the batch mean and biased variance and, when running_mean/running_var are given,
    updates them in place (``running = (1 - momentum) * running + momentum * batch``, unbiased variance).
    Eval: normalizes with running_mean/running_var. CPU tensors of float32, float64, bfloat16 and float16 and
    CUDA float32/float64 tensors run fastbn's kernels; anything else runs PyTorch's batch norm.
    """
    act, slope = check_activation(activation, negative_slope)
    return _batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, residual, None
    )


# Inside a model every line here runs with caches that the convolution before it has emptied, ~10x slower than
# back to back (a 16x512x5x5 training forward: ~190 us around a 55 us kernel, against ~28 us in a loop), so
# the path is kept short: the modules call this directly with checked activation codes, and the training call
# counts the module's batch in C++.
def _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, residual,
                tracked):  # fmt: skip
    """batch_norm with a checked activation (code, slope); tracked: a module's num_batches_tracked (or None),
    incremented once a training call has succeeded."""
    _check(input, running_mean, running_var, weight, bias, training)
    if input.numel() == 0:  # an empty batch in eval mode (training needs values): an empty output
        return input.clone()
    fused = act != 0 or residual is not None
    if not _ops.supported(input, fused):
        y = TF.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
        y = _torch_act(y if residual is None else y + residual, act, slope)
    elif torch.compiler.is_compiling():  # the registered operators, which torch.compile and torch.export trace
        if not training:
            return _ops.batch_norm_infer(input, running_mean, running_var, weight, bias, residual, eps, act, slope)
        y, mean, var = _ops.batch_norm_train(input, weight, bias, residual, eps, act, slope)
        if running_mean is not None and running_var is not None:
            n = input.numel() // input.shape[1]
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum * n / (n - 1))
    else:
        return _eager(input, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, residual,
                      tracked)  # fmt: skip
    if tracked is not None:
        tracked.add_(1)
    return y


def _eager(input, running_mean, running_var, weight, bias, training, momentum, eps, act, slope, residual, tracked):
    """Eager mode: the kernels without the dispatcher's per-call cost, and autograd only when it is needed."""
    grad = torch.is_grad_enabled() and (
        input.requires_grad
        or (weight is not None and weight.requires_grad)
        or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad)
    )  # (spelled out: a generator over the four costs a microsecond on every call)
    if not training:
        if grad:
            return _ops.apply(_ops.EagerInfer, input, running_mean, running_var, weight, bias, residual, eps, act,
                              slope)  # fmt: skip
        return _ops.infer_impl(input, running_mean, running_var, weight, bias, residual, eps, act, slope)
    keep = running_mean is not None and running_var is not None
    n = input.numel() // input.shape[1]
    run = _ops.running_args(running_mean, running_var, input, n, momentum, tracked) if keep else None
    if grad:
        y, mean, var = _ops.apply(_ops.EagerTrain, input, weight, bias, residual, eps, act, slope, run)
    else:
        y, mean, var = _ops.train_impl(input, weight, bias, residual, eps, act, slope, run)
    if run is not None:  # updated by the call itself, which also counted the batch where running_args could
        if tracked is not None and run[-1]:
            torch.autograd.graph.increment_version((running_mean, running_var, tracked))
            return y
        torch.autograd.graph.increment_version((running_mean, running_var))
    elif keep and not _ops.update_running_stats(running_mean, running_var, mean, var, n, momentum):
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum * n / (n - 1))
    if tracked is not None:
        tracked.add_(1)
    return y
