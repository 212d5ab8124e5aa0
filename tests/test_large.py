"""Large tensors take paths small ones never do: streaming stores (outputs from half the last-level cache on by
default, from 1 MiB here through the `streaming` fixture, written after a peeled head that aligns them), several
threads and several blocks per channel. Every dtype, layout and SIMD path, with outputs off their allocation's
alignment by one element, against the float64 reference."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_train

DTYPES = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]


def misaligned_like(a):
    raw = np.empty(a.size + 1, a.dtype)
    return raw[1:].reshape(a.shape)


def tol(dtype):
    return {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}.get(np.dtype(dtype), 2e-2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_large_misaligned_outputs_on_every_path(simd, streaming, rng, dtype, layout):
    batch = 32 if np.dtype(dtype).itemsize == 2 else 16  # 2**21 or 2**22 values: 8 or 16 MB, two threads
    shape, axis = ((batch, 64, 32, 64), 1) if layout == "nchw" else ((batch, 32, 64, 64), -1)
    pd = np.float64 if dtype == np.float64 else np.float32
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)
    r = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = x.shape[axis]
    g = rng.uniform(0.5, 1.5, c).astype(pd)
    b = rng.uniform(-0.5, 0.5, c).astype(pd)
    t = tol(dtype)
    fastbn.set_num_threads(2)
    y = misaligned_like(x)
    out, mean, var = fastbn.batch_norm_train(x, g, b, axis=axis, out=y, activation="relu", residual=r)
    assert out is y
    x64, r64, dy64 = (a.astype(np.float64) for a in (x, r, dy))
    z = ref_train(x64, g, b, axis)[0] + r64
    np.testing.assert_allclose(y.astype(np.float64), np.maximum(z, 0), rtol=t, atol=t)
    dx = misaligned_like(x)
    dx_, dg, db, dres = fastbn.batch_norm_backward(
        dy, x, mean, var, g, axis=axis, out=dx, activation="relu", y=y, beta=b, return_dresidual=True
    )
    mask = y.astype(np.float64) > 0
    rdx, rdg, rdb = ref_backward(dy64 * mask, x64, mean, var, g, axis=axis)
    np.testing.assert_allclose(dres.astype(np.float64), dy64 * mask, rtol=t, atol=t)
    np.testing.assert_allclose(dx.astype(np.float64), rdx, rtol=t, atol=t * np.abs(rdx).max())
    np.testing.assert_allclose(db, rdb, rtol=t, atol=t * np.sqrt(x.size / c))
    yi = fastbn.batch_norm_infer(x, mean, var, g, b, axis=axis, out=misaligned_like(x))
    from conftest import ref_infer

    np.testing.assert_allclose(yi.astype(np.float64), ref_infer(x64, mean, var, g, b, axis), rtol=t, atol=t)

