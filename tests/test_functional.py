"""The three passes against the float64 reference, for every layout, dtype and SIMD path."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

from conftest import LAYOUTS, layout_id, make_input, ref_backward, ref_infer, ref_stats, ref_train, tol

DTYPES = [np.float32, np.float64]


def channel_params(rng, c, dtype):
    return (rng.standard_normal(c) + 1.0).astype(dtype), rng.standard_normal(c).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_train_matches_reference(simd, rng, layout, dtype):
    shape, axis, memory = layout
    x = make_input(rng, shape, memory, dtype)
    gamma, beta = channel_params(rng, shape[axis], dtype)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=1e-5)
    y_ref, mean_ref, var_ref = ref_train(x, gamma, beta, axis=axis, eps=1e-5)
    rtol, atol = tol(dtype)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert mean.shape == var.shape == (shape[axis],) and mean.dtype == var.dtype == x.dtype
    np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(mean, mean_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(var, var_ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_infer_matches_reference(simd, rng, layout, dtype):
    shape, axis, memory = layout
    c = shape[axis]
    x = make_input(rng, shape, memory, dtype)
    gamma, beta = channel_params(rng, c, dtype)
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.5, 2.0, c).astype(dtype)
    y = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=1e-3)
    rtol, atol = tol(dtype)
    np.testing.assert_allclose(y, ref_infer(x, mean, var, gamma, beta, axis=axis, eps=1e-3), rtol=rtol, atol=atol)


@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_backward_matches_reference(simd, rng, layout, dtype, batch_stats):
    shape, axis, memory = layout
    c = shape[axis]
    x = make_input(rng, shape, memory, dtype)
    dy = make_input(rng, shape, "c", dtype, scale=1.0, offset=0.1)
    gamma, _ = channel_params(rng, c, dtype)
    if batch_stats:
        mean, var = (a.astype(dtype) for a in ref_stats(x, axis))
    else:
        mean, var = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2.0, c).astype(dtype)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=batch_stats)
    dx_ref, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=batch_stats)
    rtol, atol = tol(dtype)
    n = x.size // c
    assert dx.shape == x.shape and dx.dtype == x.dtype
    np.testing.assert_allclose(dx, dx_ref, rtol=rtol * 10, atol=atol * 10)
    # Sums of n terms: scale the tolerance by sqrt(n).
    np.testing.assert_allclose(dgamma, dgamma_ref, rtol=rtol, atol=atol * np.sqrt(n))
    np.testing.assert_allclose(dbeta, dbeta_ref, rtol=rtol, atol=atol * np.sqrt(n))


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_affine_means_gamma_one_beta_zero(rng, dtype):
    x = rng.standard_normal((8, 3, 4, 4)).astype(dtype)
    y, mean, var = fastbn.batch_norm_train(x)
    np.testing.assert_allclose(y, ref_train(x)[0], *tol(dtype))
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, _, _ = fastbn.batch_norm_backward(dy, x, mean, var)
    np.testing.assert_allclose(dx, ref_backward(dy, x, mean, var)[0], rtol=tol(dtype)[0] * 10, atol=tol(dtype)[1] * 10)


@pytest.mark.parametrize(
    "shape", [(64, 3, 32, 32), (32, 48, 24, 24), (4096, 96), (3000, 300), (64, 16, 16, 40), (32, 8, 8, 200)]
)
def test_large_shapes_every_kernel_path(simd, rng, shape):
    """Big enough for several threads, streaming stores and both the per-channel and the split schedules."""
    axis = -1 if shape[-1] in (40, 200) else 1
    x = (rng.standard_normal(shape) * 3 + 2).astype(np.float32)
    c = shape[axis]
    gamma, beta = channel_params(rng, c, np.float32)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    y_ref, mean_ref, var_ref = ref_train(x, gamma, beta, axis=axis)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(var, var_ref, rtol=1e-5)
    dy = rng.standard_normal(shape).astype(np.float32)
    for batch_stats in (True, False):
        dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=batch_stats)
        dx_ref, dgamma_ref, dbeta_ref = ref_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=batch_stats)
        np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(dgamma, dgamma_ref, rtol=1e-4, atol=1e-2)
        np.testing.assert_allclose(dbeta, dbeta_ref, rtol=1e-4, atol=1e-2)
    yi = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis)
    np.testing.assert_allclose(yi, ref_infer(x, mean, var, gamma, beta, axis=axis), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,axis", [((64, 16, 12, 12), 1), ((20000, 8), 1), ((32, 10, 10, 24), -1)])
def test_large_mean_float32_statistics_stay_accurate(simd, rng, shape, axis):
    """|mean| >> std: E[x^2] - E[x]^2 in float32 would lose every digit here."""
    x = (rng.standard_normal(shape) + 1e4).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(x, axis=axis)
    y_ref, mean_ref, var_ref = ref_train(x, axis=axis)
    np.testing.assert_allclose(var, var_ref, rtol=1e-3)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)
    np.testing.assert_allclose(y, y_ref, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((16, 4, 5, 5), 1), ((30, 6), 1), ((8, 5, 5, 4), -1)])
def test_constant_channel_gives_beta(simd, shape, axis, dtype):
    x = np.full(shape, 0.1, dtype=dtype)
    beta = np.arange(shape[axis], dtype=dtype)
    gamma = np.full(shape[axis], 3.0, dtype=dtype)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    assert np.all(np.isfinite(y))
    expected = np.broadcast_to(beta.reshape([-1 if i == axis % len(shape) else 1 for i in range(len(shape))]), shape)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(var, 0)
    dy = np.ones(shape, dtype)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dgamma))


def test_finite_difference_gradients_float64(rng):
    """dx, dgamma, dbeta of L = sum(w * y) against central differences of the forward pass."""
    shape, axis = (4, 3, 5), 1
    x = rng.standard_normal(shape)
    gamma = rng.standard_normal(3) + 1.5
    beta = rng.standard_normal(3)
    w = rng.standard_normal(shape)

    def loss(x_, g_, b_):
        return float(np.sum(w * fastbn.batch_norm_train(x_, g_, b_, axis=axis)[0]))

    _, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(w, x, mean, var, gamma, axis=axis)
    h = 1e-6

    def numeric(f, a):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            e = np.zeros_like(a)
            e[i] = h
            g[i] = (f(a + e) - f(a - e)) / (2 * h)
        return g

    np.testing.assert_allclose(dx, numeric(lambda a: loss(a, gamma, beta), x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dgamma, numeric(lambda a: loss(x, a, beta), gamma), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dbeta, numeric(lambda a: loss(x, gamma, a), beta), rtol=1e-5, atol=1e-7)


def test_finite_difference_eval_gradient_float64(rng):
    shape = (5, 4, 3)
    x = rng.standard_normal(shape)
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    gamma = rng.standard_normal(4)
    w = rng.standard_normal(shape)
    dx, _, _ = fastbn.batch_norm_backward(w, x, mean, var, gamma, batch_stats=False)
    h = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(shape):
        e = np.zeros_like(x)
        e[i] = h
        fp = np.sum(w * fastbn.batch_norm_infer(x + e, mean, var, gamma))
        fm = np.sum(w * fastbn.batch_norm_infer(x - e, mean, var, gamma))
        num[i] = (fp - fm) / (2 * h)
    np.testing.assert_allclose(dx, num, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------------------------------------
# out=, in place, layouts of the outputs


@pytest.mark.parametrize("layout", LAYOUTS[:6], ids=layout_id)
def test_out_buffers_receive_the_results(rng, layout):
    shape, axis, memory = layout
    x = make_input(rng, shape, memory, np.float32)
    c = shape[axis]
    gamma, beta = channel_params(rng, c, np.float32)
    out = np.full(shape, np.nan, np.float32)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis, out=out)
    assert y is out
    np.testing.assert_allclose(out, ref_train(x, gamma, beta, axis=axis)[0], *tol(np.float32))
    out2 = np.full(shape, np.nan, np.float32)
    assert fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, out=out2) is out2
    np.testing.assert_allclose(out2, ref_infer(x, mean, var, gamma, beta, axis=axis), *tol(np.float32))
    dy = rng.standard_normal(shape).astype(np.float32)
    out3 = np.full(shape, np.nan, np.float32)
    dx, _, _ = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, out=out3)
    assert dx is out3
    np.testing.assert_allclose(out3, ref_backward(dy, x, mean, var, gamma, axis=axis)[0], rtol=1e-4, atol=1e-4)


def test_out_with_a_different_memory_layout(rng):
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    out = np.full((4, 5, 6, 3), np.nan, np.float32).transpose(0, 3, 1, 2)  # channels-last memory
    y, _, _ = fastbn.batch_norm_train(x, out=out)
    assert y is out
    np.testing.assert_allclose(out, ref_train(x)[0], *tol(np.float32))


def test_in_place(rng):
    x = rng.standard_normal((8, 4, 6, 6))
    expected, mean, var = ref_train(x)
    x_copy = x.copy()
    y, _, _ = fastbn.batch_norm_train(x, out=x)
    assert y is x
    np.testing.assert_allclose(x, expected, *tol(np.float64))
    z = x_copy.copy()
    fastbn.batch_norm_infer(z, mean, var, out=z)
    np.testing.assert_allclose(z, ref_infer(x_copy, mean, var), *tol(np.float64))
    dy = rng.standard_normal(x.shape)
    dx_expected = ref_backward(dy, x_copy, mean, var)[0]
    dx, _, _ = fastbn.batch_norm_backward(dy, x_copy, mean, var, out=dy)
    assert dx is dy
    np.testing.assert_allclose(dy, dx_expected, rtol=1e-10, atol=1e-10)


def test_partly_overlapping_out_is_handled(rng):
    buf = rng.standard_normal(2 * 6 * 4)
    x = buf[: 6 * 4].reshape(6, 4)
    expected = ref_train(x.copy())[0]
    out = buf[4 : 4 + 6 * 4].reshape(6, 4)  # overlaps x shifted by one row
    fastbn.batch_norm_train(x, out=out)
    np.testing.assert_allclose(out, expected, *tol(np.float64))


def test_outputs_keep_the_input_memory_layout(rng):
    x = make_input(rng, (4, 6, 5, 5), "nhwc-view", np.float32)
    y, _, _ = fastbn.batch_norm_train(x)
    assert y.strides == x.strides
    xc = np.ascontiguousarray(x)
    yc, _, _ = fastbn.batch_norm_train(xc)
    assert yc.flags.c_contiguous
    # Different memory layouts reduce in a different order: equal to rounding, not bit for bit.
    np.testing.assert_allclose(y, yc, *tol(np.float32))


def test_channels_last_view_equals_axis_minus_one(rng):
    base = rng.standard_normal((4, 5, 5, 6)).astype(np.float32)
    y_last, m1, v1 = fastbn.batch_norm_train(base, axis=-1)
    y_view, m2, v2 = fastbn.batch_norm_train(base.transpose(0, 3, 1, 2), axis=1)
    np.testing.assert_array_equal(y_last, y_view.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(v1, v2)


def test_non_contiguous_matches_contiguous_copy(rng):
    x = make_input(rng, (6, 5, 7, 9), "strided", np.float32)
    y, m, v = fastbn.batch_norm_train(x)
    y2, m2, v2 = fastbn.batch_norm_train(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(v, v2)
    dy = make_input(rng, (6, 5, 7, 9), "strided", np.float32)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, m, v)
    dx2, dg2, db2 = fastbn.batch_norm_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), m, v)
    np.testing.assert_array_equal(dx, dx2)
    np.testing.assert_array_equal(dg, dg2)


def test_array_likes_are_accepted(rng):
    x = rng.standard_normal((5, 3)).tolist()
    y, _, _ = fastbn.batch_norm_train(x)
    np.testing.assert_allclose(y, ref_train(np.array(x))[0], *tol(np.float64))


# Layouts the one-call path (bindings.cpp: train_simple, infer_simple, backward_simple) takes besides C order:
# dense permutations (channels-last, an NCHW-shaped view of NHWC memory, odd orders), axes of extent 1 with any
# stride, one channel. (shape in memory order, the transpose that gives the array, axis.)
SIMPLE_LAYOUTS = [
    ((4, 5, 5, 6), (0, 3, 1, 2), 1),  # NHWC memory viewed as NCHW
    ((4, 5, 5, 6), (0, 1, 2, 3), -1),  # NHWC, channels last
    ((3, 4, 7, 2, 5), (0, 4, 1, 2, 3), 1),  # NDHWC viewed as NCDHW
    ((7, 3, 4), (2, 0, 1), 1),  # odd order: channels fastest, then the batch
    ((7, 3, 4), (1, 2, 0), 0),  # odd order, channels slowest
    ((4, 1, 5, 6), (0, 3, 1, 2), 1),  # an axis of extent 1 between others
    ((4, 5, 5, 1), (0, 3, 1, 2), 1),  # one channel (C order too, by NumPy's flags)
    ((4, 1, 5, 5), (0, 1, 2, 3), 1),  # one channel, C order
    ((6, 5), (1, 0), 1),  # (N, C) in Fortran order
    ((1, 5, 5, 6), (0, 3, 1, 2), 1),  # batch of one
]


def _general(eps):
    # The general path, with its own view: a NumPy float is not the exact float the one-call path takes.
    return np.float64(eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "bfloat16"])
@pytest.mark.parametrize("layout", SIMPLE_LAYOUTS, ids=lambda lay: f"{lay[0]}-{lay[1]}-axis{lay[2]}")
def test_dense_permutations_take_the_one_call_path_with_the_general_paths_bits(rng, layout, dtype):
    from fastbn import _core

    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        dtype = ml_dtypes.bfloat16
    pdtype = np.float64 if dtype is np.float64 else np.float32
    mem_shape, perm, axis = layout
    x = (rng.standard_normal(mem_shape) * 2 + 0.5).astype(dtype).transpose(perm)
    dy = rng.standard_normal(mem_shape).astype(dtype).transpose(perm)
    c = x.shape[axis]
    gamma, beta = (rng.standard_normal(c) + 1.0).astype(pdtype), rng.standard_normal(c).astype(pdtype)
    eps = 1e-3
    assert _core.train_simple(x, gamma, beta, axis, eps, None) is not None  # the one-call path takes it

    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps)
    y_g, mean_g, var_g = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=_general(eps))
    assert y.shape == x.shape and y.dtype == x.dtype and not np.shares_memory(y, x)
    assert y.strides == y_g.strides  # x's memory order, as the general path lays it out
    assert all(y.strides[i] == x.strides[i] for i in range(x.ndim) if x.shape[i] > 1)
    for a, b in ((y, y_g), (mean, mean_g), (var, var_g)):  # float64 holds every value exactly: equal bits
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
    y_ref, mean_ref, var_ref = ref_train(np.asarray(x, np.float64), gamma, beta, axis=axis, eps=eps)
    rtol, atol = tol(np.float32) if dtype is not np.float64 else tol(np.float64)
    if dtype not in (np.float32, np.float64):
        rtol, atol = 1e-2, 2e-2
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(mean, mean_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(var, var_ref, rtol=rtol, atol=atol)

    z = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps)
    z_g = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=_general(eps))
    np.testing.assert_array_equal(np.asarray(z, np.float64), np.asarray(z_g, np.float64))
    np.testing.assert_allclose(
        np.asarray(z, np.float64),
        ref_infer(np.asarray(x, np.float64), mean, var, gamma, beta, axis=axis, eps=eps),
        rtol=rtol,
        atol=atol,
    )

    for batch_stats in (True, False):
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, eps=eps, batch_stats=batch_stats)
        dx_g, dg_g, db_g = fastbn.batch_norm_backward(
            dy, x, mean, var, gamma, axis=axis, eps=_general(eps), batch_stats=batch_stats
        )
        for a, b in ((dx, dx_g), (dg, dg_g), (db, db_g)):
            np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
        refs = ref_backward(
            np.asarray(dy, np.float64),
            np.asarray(x, np.float64),
            mean,
            var,
            gamma,
            axis=axis,
            eps=eps,
            batch_stats=batch_stats,
        )
        for a, r in zip((dx, dg, db), refs):
            np.testing.assert_allclose(np.asarray(a, np.float64), r, rtol=rtol, atol=atol * 10)

    # out= laid out as x: written in place of a new array; out= in another layout, or overlapping x: the general
    # path (a temporary, then a copy), the same values either way.
    out = np.empty(mem_shape, dtype).transpose(perm)
    r = fastbn.batch_norm_train(x, gamma, beta, axis=axis, eps=eps, out=out)[0]
    assert r is out
    np.testing.assert_array_equal(np.asarray(out, np.float64), np.asarray(y, np.float64))
    other = np.zeros(x.shape, dtype)  # C order
    assert fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis, eps=eps, out=other) is other
    np.testing.assert_array_equal(np.asarray(other, np.float64), np.asarray(z, np.float64))
    xx = x.copy(order="K")
    assert fastbn.batch_norm_infer(xx, mean, var, gamma, beta, axis=axis, eps=eps, out=xx) is xx  # in place
    np.testing.assert_array_equal(np.asarray(xx, np.float64), np.asarray(z, np.float64))
    dd = dy.copy(order="K")
    assert fastbn.batch_norm_backward(dd, x, mean, var, gamma, axis=axis, eps=eps, batch_stats=False, out=dd)[0] is dd
    np.testing.assert_array_equal(np.asarray(dd, np.float64), np.asarray(dx, np.float64))  # the last loop's dx


def test_the_one_call_path_declines_layouts_it_cannot_view(rng):
    from fastbn import _core

    base = rng.standard_normal((4, 6, 5, 8)).astype(np.float32)
    g = np.ones(6, np.float32)
    b = np.zeros(6, np.float32)
    gapped = base[:, :, :, ::2]  # a gap between elements
    reversed_ = base[:, :, ::-1]  # a negative stride
    broadcast = np.broadcast_to(base[:1], base.shape)  # a zero stride
    for x in (gapped, reversed_, broadcast):
        assert _core.train_simple(x, g, b, 1, 1e-5, None) is None
        y, m, v = fastbn.batch_norm_train(x, g, b)  # the general path copies such an x once
        np.testing.assert_allclose(y, ref_train(np.asarray(x, np.float64), g, b)[0], *tol(np.float32))
    nhwc = base.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)
    assert _core.train_simple(nhwc, g, b, 1, 1e-5, None) is not None
    dy_c = np.ascontiguousarray(nhwc)  # dy in another layout than x
    m = nhwc.mean(axis=(0, 2, 3))
    v = nhwc.var(axis=(0, 2, 3))
    assert _core.backward_simple(dy_c, nhwc, m, v, g, 1, 1e-5, True, None) is None
    assert _core.backward_simple(nhwc.copy(order="K"), nhwc, m, v, g, 1, 1e-5, True, None) is not None
    out_c = np.empty(nhwc.shape, np.float32)  # out in C order for a channels-last x
    assert _core.infer_simple(nhwc, m, v, g, b, 1, 1e-5, out_c) is None
    assert _core.infer_simple(nhwc, m, v, g, b, 1, 1e-5, nhwc[:, :, :, :]) is not None  # in place, another view
