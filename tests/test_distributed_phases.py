"""The phases of a batch norm split over processes, run here on parts of one batch in a single process: the
merged statistics, the outputs and the gradients equal batch norm over the concatenated batch (float64 to
1e-10 relative), for uneven and empty parts, and merging in a fixed order gives the same bits every time."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_stats

SPLITS = [[5, 5], [1, 6, 3], [4, 0, 3, 3], [0, 7]]


def parts_of(x, sizes, axis=0):
    edges = np.cumsum([0, *sizes])
    return [np.take(x, np.arange(a, b), axis=axis) for a, b in zip(edges[:-1], edges[1:])]


def stats_of(part, axis):
    if part.size == 0:
        c = part.shape[axis]
        return 0, np.zeros(c), np.zeros(c)
    return fastbn.batch_norm_stats(part, axis=axis)


@pytest.mark.parametrize("sizes", SPLITS, ids=str)
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nc"])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
def test_phases_over_parts_equal_one_batch(simd, rng, sizes, layout, activation):
    n = sum(sizes)
    shape, axis = {"nchw": ((n, 3, 4, 5), 1), "nhwc": ((n, 4, 5, 3), -1), "nc": ((n, 3), 1)}[layout]
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.uniform(-0.5, 0.5, 3)
    eps = 1e-5
    xs, dys = parts_of(x, sizes), parts_of(dy, sizes)

    counts, means, m2s = zip(*(stats_of(p, axis) for p in xs))
    count, mean, m2 = fastbn.batch_norm_merge_stats(counts, np.stack(means), np.stack(m2s))
    rmean, rvar = ref_stats(x, axis)
    assert count == x.size / 3
    np.testing.assert_allclose(mean, rmean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m2 / count, rvar, rtol=1e-12)
    again = fastbn.batch_norm_merge_stats(counts, np.stack(means), np.stack(m2s))
    assert again[1].tobytes() == mean.tobytes() and again[2].tobytes() == m2.tobytes()

    var = m2 / count
    y_full, _, _ = fastbn.batch_norm_train(x, gamma, beta, axis=axis, activation=activation)
    dx_full, dg_full, db_full = fastbn.batch_norm_backward(
        dy, x, *ref_stats(x, axis), gamma, axis=axis, activation=activation, y=y_full, beta=beta
    )
    sums = np.zeros((2, 3))
    ys = []
    for p, d in zip(xs, dys):
        if p.size == 0:
            ys.append(p)
            continue
        y = fastbn.batch_norm_apply(p, mean, var, gamma, beta, axis=axis, eps=eps, activation=activation)
        ys.append(y)
        sums += fastbn.batch_norm_backward_reduce(d, p, mean, var, gamma, beta, axis=axis, activation=activation, y=y)
    np.testing.assert_allclose(np.concatenate(ys), y_full, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sums[1], dg_full, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sums[0], db_full, rtol=1e-10, atol=1e-10)
    dxs = [
        p if p.size == 0 else
        fastbn.batch_norm_backward_apply(d, p, mean, var, gamma, beta, sums[0], sums[1], count, axis=axis,
                                         activation=activation, y=y)
        for p, d, y in zip(xs, dys, ys)
    ]  # fmt: skip
    np.testing.assert_allclose(np.concatenate(dxs), dx_full, rtol=1e-10, atol=1e-12)
    if activation is None:
        rdx, _, _ = ref_backward(dy, x, *ref_stats(x, axis), gamma, axis=axis)
        np.testing.assert_allclose(np.concatenate(dxs), rdx, rtol=1e-10, atol=1e-12)


def test_float32_parts_with_a_large_mean_keep_full_precision(rng):
    x = (rng.standard_normal((4000, 8)) + 1e4).astype(np.float32)
    parts = np.array_split(x, 3)
    counts, means, m2s = zip(*(fastbn.batch_norm_stats(p) for p in parts))
    count, mean, m2 = fastbn.batch_norm_merge_stats(counts, np.stack(means), np.stack(m2s))
    rmean, rvar = ref_stats(x)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(m2 / count, rvar, rtol=1e-6)
    y = fastbn.batch_norm_apply(x, mean, m2 / count)
    np.testing.assert_allclose(y, (x - rmean) / np.sqrt(rvar + 1e-5), rtol=1e-4, atol=2e-5)


def test_merge_edge_cases_and_errors():
    count, mean, m2 = fastbn.batch_norm_merge_stats([0, 0], np.ones((2, 3)), np.ones((2, 3)))
    assert count == 0 and not mean.any() and not m2.any()
    one = fastbn.batch_norm_merge_stats([5], [[1.0, 2.0]], [[3.0, 4.0]])
    assert one[0] == 5 and one[1].tolist() == [1.0, 2.0] and one[2].tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="shape"):
        fastbn.batch_norm_merge_stats([1, 2], np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="count"):
        fastbn.batch_norm_merge_stats([1, -2], np.ones((2, 2)), np.ones((2, 2)))
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="count"):
        fastbn.batch_norm_backward_apply(x, x, np.zeros(3), np.ones(3), None, None, np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="shape"):
        fastbn.batch_norm_apply(x, np.zeros(2), np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape", [(40, 64, 14, 14), (24, 96, 12, 12), (48, 40, 10, 10)], ids=str)
def test_apply_phase_of_short_runs_gives_the_full_backwards_bits(simd, streaming, dtype, activation, shape):
    """Runs under 1 KiB in a pass beyond the (lowered) cache threshold: the apply phase computes dx as one
    flat range, the full backward run by run; the same coefficients must give the same bits, on 1 and 2 threads."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma, beta = np.linspace(0.5, 1.5, c).astype(dtype), np.linspace(-1, 1, c).astype(dtype)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, activation=activation)
    before = fastbn.get_num_threads()
    try:
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            dx_full, _, _ = fastbn.batch_norm_backward(dy, x, mean, var, gamma, beta=beta, activation=activation, y=y)
            sums = fastbn.batch_norm_backward_reduce(dy, x, mean, var, gamma, beta, activation=activation, y=y)
            dx = fastbn.batch_norm_backward_apply(
                dy,
                x,
                mean,
                var,
                gamma,
                beta,
                sums[0],
                sums[1],
                x.size // c,
                activation=activation,
                y=y,
                out=np.full_like(x, np.nan),
            )
            np.testing.assert_array_equal(dx, dx_full)
    finally:
        fastbn.set_num_threads(before)
    if activation is None:
        rdx, _, _ = ref_backward(dy.astype(np.float64), x.astype(np.float64), mean, var, gamma.astype(np.float64))
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
