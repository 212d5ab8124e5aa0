"""fastbn inside PyTorch models: drop-in batch-norm modules, custom operators that compile, model conversion.

>>> import fastbn.torch
>>> model = fastbn.torch.convert(model)              # every torch.nn.BatchNorm*d now runs fastbn's kernels
>>> model = fastbn.torch.convert(model, fuse=True)   # ... and BN -> [add ->] ReLU/LeakyReLU/Sigmoid fused

Needs PyTorch (``pip install torch``); ``import fastbn`` alone never imports it.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as _e:  # pragma: no cover - the test extras install torch
    raise ImportError(
        "fastbn.torch needs PyTorch: pip install torch (CPU only: pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)"
    ) from _e

from . import _ops
from .convert import TorchBatchNormAct1d, TorchBatchNormAct2d, TorchBatchNormAct3d, conv_bn, convert, revert
from .functional import batch_norm
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d, BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from .sync import SyncBatchNorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "SyncBatchNorm",
    "TorchBatchNormAct1d",
    "TorchBatchNormAct2d",
    "TorchBatchNormAct3d",
    "batch_norm",
    "conv_bn",
    "convert",
    "revert",
]
del _ops
