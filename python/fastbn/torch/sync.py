"""``fastbn.torch.SyncBatchNorm``: batch statistics over a torch.distributed process group.

A subclass of ``torch.nn.SyncBatchNorm`` (so ``isinstance`` checks and state_dicts carry over) whose forward on
CPU tensors runs fastbn's distributed phases over gloo (PyTorch's own rejects CPU tensors): local statistics,
one all_gather of 2C + 2 doubles per process merged in rank order (the same bits on every process), the
normalization, and in the backward one all_reduce of 2C doubles. Exact for uneven and empty processes. CUDA
tensors use ``torch.nn.SyncBatchNorm``'s implementation (NCCL).

Forward and backward are collectives: every process of the group calls them, also a process whose part of the
batch is empty, and every process's output must reach the loss (or the backward waits for it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from .. import _core
from .. import functional as F
from .._layout import check_activation
from . import _ops
from .modules import _FastBatchNorm

__all__ = ["SyncBatchNorm"]


def _group_size(group) -> int:
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


class _SyncApply(torch.autograd.Function):
    """y = act(bn(x) + residual) with given global statistics; the backward all-reduces the per-channel sums."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, count, eps, group, activation, negative_slope):
        c = mean.numel()
        empty = x.numel() == 0
        xd = x
        if not empty:
            xd, _, outer, _, inner = _ops.layout(x)
            w, b = _ops._param(weight, xd, c, "weight"), _ops._param(bias, xd, c, "bias")
            y = _ops.empty_like(xd)
            _core.ptr_infer(
                _ops._CODES[xd.dtype], xd.data_ptr(), 0, y.data_ptr(), mean.data_ptr(), var.data_ptr(), _ops._ptr(w),
                _ops._ptr(b), outer, c, inner, eps, activation, negative_slope, True,
            )  # fmt: skip
        else:
            y = torch.empty_like(x)
        ctx.save_for_backward(xd, y if activation else None, mean, var, weight, bias)
        ctx.count, ctx.eps, ctx.group = count, eps, group
        ctx.activation, ctx.negative_slope = activation, negative_slope
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, y, mean, var, weight, bias = ctx.saved_tensors
        c = mean.numel()
        sums = torch.zeros(2 * c, dtype=torch.float64)
        if x.numel():
            x, perm, outer, _, inner = _ops.layout(x)
            dy = _ops._like(dy, x, perm, "grad_output")
            y = _ops._like(y, x, perm, "output")
            w, b = _ops._param(weight, x, c, "weight"), _ops._param(bias, x, c, "bias")
            code = _ops._CODES[x.dtype]
            args = (mean.data_ptr(), var.data_ptr(), _ops._ptr(w), _ops._ptr(b))
            _core.ptr_backward_reduce(
                code, dy.data_ptr(), x.data_ptr(), _ops._ptr(y), *args, sums.data_ptr(), sums.data_ptr() + 8 * c,
                outer, c, inner, ctx.eps, ctx.activation, ctx.negative_slope,
            )  # fmt: skip
        local = sums.clone()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=ctx.group)
        dx = torch.empty_like(x)
        if x.numel():
            _core.ptr_backward_apply(
                code, dy.data_ptr(), x.data_ptr(), _ops._ptr(y), *args, sums.data_ptr(), sums.data_ptr() + 8 * c,
                float(ctx.count), dx.data_ptr(), 0, outer, c, inner, ctx.eps, ctx.activation, ctx.negative_slope,
            )  # fmt: skip
        # The parameter gradients are this process's contributions (data-parallel training all-reduces them).
        dw = local[c:].to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = local[:c].to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None, None, None, None, None


class SyncBatchNorm(_FastBatchNorm, torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm whose CPU path runs fastbn's kernels over torch.distributed (gloo), exactly:
    outputs, gradients and running statistics equal single-process batch norm on the concatenated batch, for
    uneven and empty processes. Same constructor (``num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, process_group=None``), plus ``activation``/``negative_slope`` for a fused
    epilogue. ``weight.grad``/``bias.grad`` are this process's contributions, as with torch's."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None, *,
                 activation: str | None = None, negative_slope: float = 0.01) -> None:  # fmt: skip
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group, device, dtype)
        self._act = check_activation(activation, negative_slope)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        use_batch = self.training or not self.track_running_stats
        group = self.process_group or (dist.group.WORLD if dist.is_available() and dist.is_initialized() else None)
        if input.device.type != "cpu" or _group_size(group) == 1 or not use_batch:
            if input.device.type == "cpu":  # one process, or running statistics: fastbn's single-process path
                return self._bn(input, None, *self._act)
            if self._act[0]:
                raise NotImplementedError("fastbn: a fused activation in SyncBatchNorm runs on CPU process groups")
            return torch.nn.SyncBatchNorm.forward(self, input)
        return self._sync_forward(input, group)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _sync_forward(self, input, group):
        c = self.num_features
        payload = torch.zeros(2 * c + 2, dtype=torch.float64)
        error = None
        try:
            self._check_input_dim(input)
            if input.shape[1] != c:
                raise ValueError(f"fastbn: expected {c} channels on dim 1, got input of shape {tuple(input.shape)}")
            if not _ops.supported(input):
                raise TypeError(f"fastbn: SyncBatchNorm takes float32, float64, bfloat16 or float16, got {input.dtype}")
            payload[0] = 1.0
            if input.numel():
                x, _, outer, _, inner = _ops.layout(input.detach())
                payload[1] = outer * inner
                _core.ptr_stats(_ops._CODES[x.dtype], x.data_ptr(), payload.data_ptr() + 16,
                                  payload.data_ptr() + 16 + 8 * c, outer, c, inner)  # fmt: skip
        except (TypeError, ValueError, RuntimeError) as e:
            error = e
            payload.zero_()
        size = _group_size(group)
        parts = [torch.empty_like(payload) for _ in range(size)]
        dist.all_gather(parts, payload, group=group)
        gathered = torch.stack(parts).numpy()
        if error is not None:
            raise error
        bad = np.flatnonzero(gathered[:, 0] != 1.0).tolist()
        if bad:
            raise ValueError(
                f"fastbn: SyncBatchNorm: process(es) {', '.join(map(str, bad))} of the group failed their input "
                "checks; this collective call was abandoned on every process and nothing was changed"
            )
        count, mean, m2 = F.batch_norm_merge_stats(gathered[:, 1], gathered[:, 2 : 2 + c], gathered[:, 2 + c :])
        if count <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got {int(count)} over all {size} processes"
            )
        mean_t = torch.from_numpy(mean)
        var_t = torch.from_numpy(m2 / count)
        act, slope = self._act
        y = _SyncApply.apply(input, self.weight, self.bias, mean_t, var_t, count, self.eps, group, act, slope)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            if not _ops.update_running_stats(self.running_mean, self.running_var, mean_t, var_t, count, factor):
                with torch.no_grad():
                    self.running_mean.mul_(1 - factor).add_(mean_t.to(self.running_mean.dtype), alpha=factor)
                    unbiased = (var_t * (count / (count - 1))).to(self.running_var.dtype)
                    self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return y

    @classmethod
    def convert_sync_batchnorm(cls, module: torch.nn.Module, process_group=None) -> torch.nn.Module:
        """Replace every batch norm (torch's or fastbn's) in ``module`` by this class, keeping the same tensors,
        as torch.nn.SyncBatchNorm.convert_sync_batchnorm does."""
        out = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and type(module) is not cls:
            out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                      process_group)  # fmt: skip
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out
