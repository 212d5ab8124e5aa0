"""Large tensors take paths small ones never do: streaming stores (outputs from half the last-level cache on by
default, from 1 MiB here through the `streaming` fixture, written after a peeled head that aligns them), several
threads and several blocks per channel. Every dtype, layout and SIMD path, with outputs off their allocation's
alignment by one element, against the float64 reference; and every offset of the arrays within a vector, against
the aligned result bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_infer, ref_train

DTYPES = [np.float32, np.float64, ml_dtypes.bfloat16, np.float16]

pytestmark = pytest.mark.usefixtures("restore_threads")  # the tests set the thread count


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

    np.testing.assert_allclose(yi.astype(np.float64), ref_infer(x64, mean, var, g, b, axis), rtol=t, atol=t)


def at_offset(a, k):
    """A copy of a that starts k elements past a 64-byte boundary."""
    n = a.size
    raw = np.empty(n + 64, a.dtype)
    start = (-raw.ctypes.data // a.itemsize) % (64 // a.itemsize) + k
    out = raw[start : start + n].reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape, axis, spike",
    [
        ((4096, 128), -1, False),
        ((4096, 128), -1, True),
        ((64, 16, 16, 64), -1, False),
        ((64, 64, 8, 8), 1, False),
        ((48, 64, 14, 14), 1, False),
    ],
    ids=["2d", "2d-spike", "nhwc", "nchw-8x8", "nchw-14x14"],
)
def test_every_offset_within_a_vector_gives_the_same_bits(simd, streaming, rng, dtype, shape, axis, spike):
    """Where arrays start off a vector boundary (NumPy leaves large ones 16 bytes past a line), the column passes
    of channels-last and short-run NCHW tensors read whole vectors as two aligned halves joined by a permute, and
    the coefficient arrays take the output's offset: the results must not depend on any of it. Inputs and outputs
    are moved together to every offset, and apart; with a residual and an activation; with 64 and 128 channels
    (whole vectors); and with a spike in a few channels' first rows, whose one-pass statistics fall back to the
    careful two passes."""
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)
    if spike:
        x[:16, :3] += 50
    r = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = shape[axis]
    pd = np.float64 if dtype == np.float64 else np.float32
    g = rng.uniform(0.5, 1.5, c).astype(pd)
    b = rng.uniform(-0.5, 0.5, c).astype(pd)
    fastbn.set_num_threads(2)

    def run(kx, ky):
        xs, rs, dys = at_offset(x, kx), at_offset(r, kx), at_offset(dy, kx)
        y = at_offset(np.zeros_like(x), ky)
        _, mean, var = fastbn.batch_norm_train(xs, g, b, axis=axis, out=y, activation="leaky_relu", residual=rs)
        dx = at_offset(np.zeros_like(x), ky)
        _, dg, db = fastbn.batch_norm_backward(
            dys, xs, mean, var, g, axis=axis, out=dx, activation="leaky_relu", y=y, beta=b
        )
        yi = at_offset(np.zeros_like(x), ky)
        fastbn.batch_norm_infer(xs, mean, var, g, b, axis=axis, out=yi, activation="leaky_relu", residual=rs)
        _, smean, sm2 = fastbn.batch_norm_stats(xs, axis=axis)
        return [np.asarray(a).copy() for a in (y, mean, var, dx, dg, db, yi, smean, sm2)]

    base = run(0, 0)
    x64 = x.astype(np.float64)
    z = ref_train(x64, g, b, axis)[0] + r.astype(np.float64)
    t = tol(dtype)
    np.testing.assert_allclose(base[0].astype(np.float64), np.where(z > 0, z, 0.01 * z), rtol=t, atol=t * 50)
    lanes = 64 // np.dtype(dtype).itemsize
    for kx, ky in [(k, k) for k in range(1, lanes)] + [(0, lanes // 2), (lanes // 4, 0)]:
        for i, (want, got) in enumerate(zip(base, run(kx, ky))):
            assert np.array_equal(want.view(np.uint8), got.view(np.uint8)), f"output {i}, offsets x {kx}, out {ky}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape, axis", [((1001, 1024), 1), ((250, 3, 1024), -1), ((130, 2048), 1)], ids=["2d-1024", "nlc-1024", "2d-2048"]
)
def test_inference_of_long_rows_by_chunks_gives_the_flat_walks_bits(simd, streaming, rng, dtype, shape, axis):
    """Inference of channels-last and 2-D rows of at least 4 KiB that stream goes chunk by chunk of whole rows, 8
    rows at a time (1001 rows: a remnant of 1; outputs one element off their alignment: a peeled head); it must
    give the bits of the flat walk that runs where outputs do not stream, and the float64 reference."""
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)
    r = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = shape[axis]
    pd = np.float64 if dtype == np.float64 else np.float32
    mean = rng.standard_normal(c).astype(pd)
    var = rng.uniform(0.5, 2.0, c).astype(pd)
    g = rng.uniform(0.5, 1.5, c).astype(pd)
    b = rng.uniform(-0.5, 0.5, c).astype(pd)

    def infer(**kw):
        out = misaligned_like(x)
        got = fastbn.batch_norm_infer(x, mean, var, g, b, axis=axis, out=out, **kw)
        assert got is out
        return out

    variants = [{}, {"activation": "relu", "residual": r}]
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        streamed = [infer(**kw) for kw in variants]
        try:
            fastbn._core.set_stream_min_bytes(1 << 40)  # nothing streams: the flat walk
            flat = [infer(**kw) for kw in variants]
        finally:
            fastbn._core.set_stream_min_bytes(streaming)
        for s, f in zip(streamed, flat):
            np.testing.assert_array_equal(s.view(np.uint8), f.view(np.uint8))

    t = tol(dtype)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(streamed[0].astype(np.float64), ref_infer(x64, mean, var, g, b, axis), rtol=t, atol=t)
    z = ref_infer(x64, mean, var, g, b, axis) + r.astype(np.float64)
    np.testing.assert_allclose(streamed[1].astype(np.float64), np.maximum(z, 0), rtol=t, atol=t)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(172, 256, 7, 7), (128, 256, 8, 8), (176, 512, 5, 5)], ids=str)
def test_short_runs_of_large_tensors_give_the_flat_walks_bits(simd, streaming, rng, dtype, shape):
    """From 4 MiB on, the elementwise passes over NCHW runs of 5x5 to 8x8 values (a 64-byte line or more; bfloat16
    5x5 is not) go as one flat range in memory order instead of the flat walk. Inference (plain, and ReLU with a
    residual), a frozen-statistics backward and a distributed backward's apply phase, into outputs one element off
    their alignment, must give sample by sample the bits of the same call on 8 samples (under 4 MiB: the flat
    walk), on 1 and 2 threads, and the float64 reference."""
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    c = shape[1]
    pd = np.float64 if dtype == np.float64 else np.float32
    mean = rng.standard_normal(c).astype(pd)
    var = rng.uniform(0.5, 2.0, c).astype(pd)
    g = rng.uniform(0.5, 1.5, c).astype(pd)
    b = rng.uniform(-0.5, 0.5, c).astype(pd)
    sums = (rng.standard_normal(c).astype(pd), rng.standard_normal(c).astype(pd))
    count = 1000

    def calls(x, dy):
        outs = [misaligned_like(x) for _ in range(4)]
        fastbn.batch_norm_infer(x, mean, var, g, b, out=outs[0])
        fastbn.batch_norm_infer(x, mean, var, g, b, activation="relu", residual=dy, out=outs[1])
        fastbn.batch_norm_backward(dy, x, mean, var, g, batch_stats=False, out=outs[2])
        fastbn.batch_norm_backward_apply(dy, x, mean, var, g, b, sums[0], sums[1], count, out=outs[3])
        return outs

    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        whole, part = calls(x, dy), calls(x[:8], dy[:8])
        for i, (w, p) in enumerate(zip(whole, part)):
            assert np.array_equal(w[:8].view(np.uint8), p.view(np.uint8)), f"output {i}, {threads} threads"

    t = tol(dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    y_ref = ref_infer(x64, mean, var, g, b)
    np.testing.assert_allclose(whole[0].astype(np.float64), y_ref, rtol=t, atol=t)
    np.testing.assert_allclose(whole[1].astype(np.float64), np.maximum(y_ref + dy64, 0), rtol=t, atol=t)
    inv = (g / np.sqrt(var.astype(np.float64) + 1e-5))[:, None, None]
    np.testing.assert_allclose(whole[2].astype(np.float64), dy64 * inv, rtol=t, atol=t)
    xhat = (x64 - mean[:, None, None]) / np.sqrt(var.astype(np.float64) + 1e-5)[:, None, None]
    dx_ref = inv * (dy64 - sums[0][:, None, None] / count - xhat * (sums[1] / count)[:, None, None])
    np.testing.assert_allclose(whole[3].astype(np.float64), dx_ref, rtol=t, atol=t * np.abs(dx_ref).max())


def aligned_like(a):
    """An array shaped as `a` that starts on a 64-byte line."""
    raw = np.empty(a.nbytes + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + a.nbytes].view(a.dtype).reshape(a.shape)


@pytest.mark.parametrize(
    "dtype, shape",
    [(np.float32, (24, 16, 16, 16)), (np.float32, (24, 16, 20, 20)), (np.float64, (24, 8, 14, 14))],
    ids=["float32-16x16", "float32-20x20", "float64-14x14"],
)
def test_inference_of_runs_off_vector_boundaries_gives_the_bits_of_runs_on_them(simd, rng, dtype, shape):
    """Inference takes NCHW runs of 1 to 2 KiB as one flat range where the output's runs do not start on vector
    boundaries (an output one element off a line; 20x20 floats, runs of no whole number of vectors), and run by run
    where they do. Plain and ReLU with a residual, on 1 and 2 threads: the same bits at every offset of the
    output, and the float64 reference."""
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.5, 2.0, c).astype(dtype)
    g = rng.uniform(0.5, 1.5, c).astype(dtype)
    b = rng.uniform(-0.5, 0.5, c).astype(dtype)
    x64 = x.astype(np.float64)
    y_ref = ref_infer(x64, mean, var, g, b)
    t = tol(dtype)
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        for kwargs, want in (({}, y_ref), ({"activation": "relu", "residual": r}, np.maximum(y_ref + r, 0))):
            on, off = aligned_like(x), misaligned_like(x)
            fastbn.batch_norm_infer(x, mean, var, g, b, out=on, **kwargs)
            fastbn.batch_norm_infer(x, mean, var, g, b, out=off, **kwargs)
            assert np.array_equal(on.view(np.uint8), off.view(np.uint8)), f"{kwargs}, {threads} threads"
            np.testing.assert_allclose(off.astype(np.float64), want, rtol=t, atol=t)
