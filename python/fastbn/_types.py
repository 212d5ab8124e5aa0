"""The element types fastbn computes on, compared by value (a dtype that went through pickle, or carries
metadata, is the same type). float32 and float64 compute in their own precision; float16 and bfloat16
(``ml_dtypes.bfloat16``, imported only when such an array is seen) are storage types computed in float32,
with float32 parameters and statistics."""

from __future__ import annotations

import numpy as np

__all__ = ["FLOAT32", "FLOAT64", "FLOAT16", "storage_dtype", "param_dtype", "bfloat16", "SUPPORTED"]

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
FLOAT16 = np.dtype(np.float16)
SUPPORTED = "float32, float64, float16 or bfloat16"


def _is_bfloat16(d: np.dtype) -> bool:
    return d.itemsize == 2 and d.kind == "V" and d.name == "bfloat16"


def storage_dtype(dtype) -> np.dtype | None:
    """The native-byte-order dtype a tensor of ``dtype`` is computed as, or None when fastbn does not take it."""
    d = np.dtype(dtype)
    if d.kind == "f" and d.itemsize in (2, 4, 8):
        return d.newbyteorder("=") if d.byteorder == ">" else np.dtype(d.type)
    if _is_bfloat16(d):
        return d
    return None


def param_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of gamma, beta, the statistics and the parameter gradients for tensors of ``dtype``."""
    return FLOAT64 if dtype == FLOAT64 else FLOAT32


def bfloat16() -> np.dtype:
    """``ml_dtypes.bfloat16`` as a NumPy dtype (needs the optional ml_dtypes package)."""
    try:
        import ml_dtypes
    except ImportError as e:  # pragma: no cover - the test extras install it
        raise ImportError("fastbn: bfloat16 arrays need ml_dtypes: pip install 'fastbn[half]'") from e
    return np.dtype(ml_dtypes.bfloat16)
