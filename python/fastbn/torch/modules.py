"""Drop-in batch-norm modules: subclasses of ``torch.nn.BatchNorm1d/2d/3d`` (same constructor, parameters,
buffers, state_dict and semantics) whose forward runs fastbn's kernels, and ``BatchNormAct*d`` (timm's
``BatchNormAct2d`` style) with the activation, and optionally a residual, fused into the same pass."""

from __future__ import annotations

import torch

from .._layout import check_activation
from .functional import _batch_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
]


class _FastBatchNorm:
    """The forward of torch.nn.modules.batchnorm._BatchNorm, on fastbn.torch.batch_norm. num_batches_tracked
    counts a batch once its call has succeeded, so a failed call changes no state (torch counts it anyway)."""

    def _bn(self, input, residual=None, act=0, slope=0.01):
        """act, slope: a checked activation (check_activation)."""
        self._check_input_dim(input)
        try:  # nn.Module.__getattr__ costs ~0.4 us an attribute back to back, far more inside a model
            params, buffers = self._parameters, self._buffers
            weight, bias, tracked = params["weight"], params["bias"], buffers["num_batches_tracked"]
            running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        except KeyError:  # a parametrization or a property has taken one's place
            weight, bias, tracked = self.weight, self.bias, self.num_batches_tracked
            running_mean, running_var = self.running_mean, self.running_var
        training = self.training
        count = training and self.track_running_stats and tracked is not None
        factor = 0.0 if self.momentum is None else self.momentum
        if count and self.momentum is None:  # cumulative average, over the batches counting this one
            factor = 1.0 / (float(tracked) + 1.0)
        keep = not training or self.track_running_stats
        return _batch_norm(
            input, running_mean if keep else None, running_var if keep else None, weight, bias,
            training or (running_mean is None and running_var is None), factor, self.eps, act, slope, residual,
            tracked if count else None,
        )  # fmt: skip

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._bn(input)


class BatchNorm1d(_FastBatchNorm, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d on fastbn's kernels."""


class BatchNorm2d(_FastBatchNorm, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on fastbn's kernels."""


class BatchNorm3d(_FastBatchNorm, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d on fastbn's kernels."""


class _BatchNormAct(_FastBatchNorm):
    """``act(batch_norm(x) [+ residual])`` in one pass: the constructor of torch.nn.BatchNorm*d plus
    ``activation`` (None, "relu", "leaky_relu", "sigmoid") and ``negative_slope``; ``forward(x, residual=None)``.
    The state_dict is the batch norm's."""

    def __init__(self, num_features: int, *args, activation: str | None = "relu", negative_slope: float = 0.01,
                 **kwargs) -> None:  # fmt: skip
        check_activation(activation, negative_slope)
        super().__init__(num_features, *args, **kwargs)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, input: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self._bn(input, residual, *check_activation(self.activation, self.negative_slope))

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.activation == "leaky_relu" else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{slope}"


class BatchNormAct1d(_BatchNormAct, torch.nn.BatchNorm1d):
    """BatchNorm1d followed by an activation (and an optional residual added before it), fused."""


class BatchNormAct2d(_BatchNormAct, torch.nn.BatchNorm2d):
    """BatchNorm2d followed by an activation (and an optional residual added before it), fused."""


class BatchNormAct3d(_BatchNormAct, torch.nn.BatchNorm3d):
    """BatchNorm3d followed by an activation (and an optional residual added before it), fused."""
