"""Fused batch norm + residual + activation, in-place activated batch norm and folding, against PyTorch float64
autograd (an independent implementation) on every activation, residual, layout, dtype and SIMD path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastbn

from conftest import LAYOUTS, layout_id, make_input

ACTIVATIONS = [None, "relu", "leaky_relu", "sigmoid"]
SLOPE = 0.1


def torch_act(z, activation, slope):
    if activation == "relu":
        return torch.relu(z)
    if activation == "leaky_relu":
        return TF.leaky_relu(z, slope)
    if activation == "sigmoid":
        return torch.sigmoid(z)
    return z


def reference(x, gamma, beta, residual, dy, activation, slope=SLOPE, axis=1, eps=1e-5, stats=None):
    """float64 torch autograd of act(bn(x) + residual): (y, mean, var, dx, dgamma, dbeta, dresidual).
    stats=None: training (batch statistics); else (mean, var) held constant."""
    ax = axis % x.ndim

    def t(a, grad=False):
        a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(a, np.float64), ax, 1)))
        return a.requires_grad_(grad)

    xt = t(x, True)
    c = x.shape[ax]
    g = torch.tensor(np.ones(c) if gamma is None else np.asarray(gamma, np.float64), requires_grad=True)
    b = torch.tensor(np.zeros(c) if beta is None else np.asarray(beta, np.float64), requires_grad=True)
    if stats is None:
        z = TF.batch_norm(xt, None, None, g, b, training=True, eps=eps)
        dims = [d for d in range(xt.ndim) if d != 1]
        mean = xt.detach().mean(dim=dims).numpy()
        var = xt.detach().var(dim=dims, unbiased=False).numpy()
    else:
        mean, var = (np.asarray(s, np.float64) for s in stats)
        z = TF.batch_norm(xt, torch.tensor(mean), torch.tensor(var), g, b, training=False, eps=eps)
    rt = None
    if residual is not None:
        rt = t(residual, True)
        z = z + rt
    y = torch_act(z, activation, slope)
    y.backward(t(dy))

    def back(a):
        return np.moveaxis(a.detach().numpy(), 1, ax)

    return (
        back(y),
        mean,
        var,
        back(xt.grad),
        g.grad.numpy(),
        b.grad.numpy(),
        None if rt is None else back(rt.grad),
    )


def close(actual, expected, dtype, scale=1.0):
    rtol, atol = (2e-4, 2e-4 * scale) if np.dtype(dtype) == np.float32 else (1e-9, 1e-9 * scale)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def params(rng, c, dtype):
    return (rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-0.5, 0.5, c).astype(dtype))


def check_train_and_backward(rng, shape, axis, memory, dtype, activation, with_residual):
    x = make_input(rng, shape, memory, dtype)
    c = x.shape[axis]
    gamma, beta = params(rng, c, dtype)
    residual = make_input(rng, shape, "c" if memory != "c" else "fortran", dtype) if with_residual else None
    dy = rng.standard_normal(shape).astype(dtype)
    y, mean, var = fastbn.batch_norm_train(
        x, gamma, beta, axis=axis, activation=activation, negative_slope=SLOPE, residual=residual
    )
    ry, rmean, rvar, rdx, rdg, rdb, rdr = reference(x, gamma, beta, residual, dy, activation, axis=axis)
    close(y, ry, dtype)
    close(mean, rmean, dtype)
    close(var, rvar, dtype)
    out = fastbn.batch_norm_backward(
        dy, x, mean, var, gamma, axis=axis, activation=activation, negative_slope=SLOPE, y=y, beta=beta,
        return_dresidual=with_residual,
    )  # fmt: skip
    dx, dgamma, dbeta = out[:3]
    n = x.size / c
    close(dx, rdx, dtype)
    close(dgamma, rdg, dtype, scale=n)
    close(dbeta, rdb, dtype, scale=n)
    if with_residual:
        close(out[3], rdr, dtype)
        assert out[3].shape == x.shape


@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_train_and_backward_match_autograd(simd, rng, layout, dtype, activation, with_residual):
    shape, axis, memory = layout
    check_train_and_backward(rng, shape, axis, memory, dtype, activation, with_residual)


# (20, 300, 7, 7): NCHW training and backward of short runs write y and dx as one flat period of 14700 positions,
# walked in blocks of 1024 (the last one partial) with this batch's coefficients. (6, 40, 8, 8): runs of 64
# values, the longest that go flat, in a period of 2560.
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("shape", [(20, 300, 7, 7), (6, 40, 8, 8)])
def test_train_and_backward_of_a_long_flat_period_match_autograd(simd, rng, activation, with_residual, shape):
    check_train_and_backward(rng, shape, 1, "c", np.float32, activation, with_residual)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("with_residual", [False, True])
# (20, 300, 7, 7): NCHW inference of short runs as one flat period of 14700 positions, walked in blocks of
# 1024 (the last one partial) over groups of rows. (6, 5, 10, 10), (4, 6, 13, 11), (2, 700, 5, 5): runs of 100,
# 143 and 25 values walked as one flat range, the channel changing inside a vector at every lane offset.
@pytest.mark.parametrize(
    "shape,axis",
    [
        ((6, 5, 7, 9), 1),
        ((50, 37), 1),
        ((6, 7, 9, 5), -1),
        ((20, 300, 7, 7), 1),
        ((6, 5, 10, 10), 1),
        ((4, 6, 13, 11), 1),
        ((2, 700, 5, 5), 1),
    ],
)
def test_infer_and_frozen_backward_match_autograd(simd, rng, activation, with_residual, shape, axis):
    dtype = np.float32
    x = make_input(rng, shape, "c", dtype)
    c = x.shape[axis]
    gamma, beta = params(rng, c, dtype)
    mean = rng.standard_normal(c).astype(dtype)
    var = rng.uniform(0.5, 4.0, c).astype(dtype)
    residual = rng.standard_normal(shape).astype(dtype) if with_residual else None
    dy = rng.standard_normal(shape).astype(dtype)
    y = fastbn.batch_norm_infer(
        x, mean, var, gamma, beta, axis=axis, activation=activation, negative_slope=SLOPE, residual=residual
    )
    ry, _, _, rdx, rdg, rdb, rdr = reference(x, gamma, beta, residual, dy, activation, axis=axis, stats=(mean, var))
    close(y, ry, dtype)
    out = fastbn.batch_norm_backward(
        dy, x, mean, var, gamma, axis=axis, batch_stats=False, activation=activation, negative_slope=SLOPE, y=y,
        beta=beta, return_dresidual=with_residual,
    )  # fmt: skip
    n = x.size / c
    close(out[0], rdx, dtype)
    close(out[1], rdg, dtype, scale=n)
    close(out[2], rdb, dtype, scale=n)
    if with_residual:
        close(out[3], rdr, dtype)


FROM_OUTPUT = [(None, 0.01), ("leaky_relu", 0.1), ("leaky_relu", 2.0), ("sigmoid", 0.01)]


@pytest.mark.parametrize("activation,slope", FROM_OUTPUT)
@pytest.mark.parametrize("shape,axis", [((6, 5, 7, 9), 1), ((300, 20), 1), ((6, 7, 9, 5), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backward_from_output_equals_backward_from_input(simd, rng, activation, slope, shape, axis, dtype):
    """In-place activated batch norm: xhat recovered from y gives the gradients the input would."""
    x = (rng.standard_normal(shape) * 1.5 + 0.3).astype(dtype)
    c = x.shape[axis]
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype) * np.where(np.arange(c) % 2, 1, -1).astype(dtype)
    beta = rng.uniform(-0.5, 0.5, c).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    kw = {"axis": axis, "activation": activation, "negative_slope": slope}
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, **kw)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma, y=y, beta=beta, **kw)
    y_only = y.copy()
    dx2, dg2, db2 = fastbn.batch_norm_backward(dy, None, mean, var, gamma, y=y_only, beta=beta, **kw)
    # The sigmoid's inverse (a logit of a rounded y) loses a few bits where y is near 0 or 1.
    rtol = (3e-3 if activation == "sigmoid" else 1e-4) if dtype == np.float32 else 1e-9
    n = x.size / c
    np.testing.assert_allclose(dx2, dx, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dg2, dg, rtol=rtol, atol=rtol * n)
    np.testing.assert_allclose(db2, db, rtol=rtol, atol=rtol * n)


def test_inplace_layer_keeps_only_y_and_matches_the_ordinary_layer(rng):
    x = rng.standard_normal((8, 6, 5, 5)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    plain = fastbn.BatchNorm(6, activation="leaky_relu", negative_slope=0.2)
    inplace = fastbn.BatchNorm(6, activation="leaky_relu", negative_slope=0.2, inplace=True)
    for bn in (plain, inplace):
        bn.gamma[...] = rng.uniform(0.5, 1.5, 6)
        bn.beta[...] = rng.uniform(-0.5, 0.5, 6)
    inplace.load_state_dict(plain.state_dict())
    xin = x.copy()
    y_plain = plain(x)
    y_in = inplace(xin)
    assert y_in is xin  # written over x
    np.testing.assert_array_equal(y_in, y_plain)
    assert inplace._saved[0] is None  # x is not kept
    np.testing.assert_allclose(inplace.backward(dy), plain.backward(dy), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(inplace.grad_gamma, plain.grad_gamma, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(inplace.grad_beta, plain.grad_beta, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(inplace.running_mean, plain.running_mean)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_layer_with_residual_matches_autograd_over_steps(rng, activation):
    bn = fastbn.BatchNorm(5, activation=activation, negative_slope=SLOPE, dtype=np.float64)
    for _ in range(3):
        x = rng.standard_normal((7, 5, 4))
        r = rng.standard_normal((7, 5, 4))
        dy = rng.standard_normal((7, 5, 4))
        y = bn(x, residual=r)
        dx, dres = bn.backward(dy)
        ry, _, _, rdx, rdg, rdb, rdr = reference(x, bn.gamma, bn.beta, r, dy, activation)
        close(y, ry, np.float64)
        close(dx, rdx, np.float64)
        close(dres, rdr, np.float64)
        close(bn.grad_gamma, rdg, np.float64)
        bn.gamma -= 0.1 * bn.grad_gamma
        bn.beta -= 0.1 * bn.grad_beta
    assert bn.num_batches_tracked == 3


def test_fused_forward_writes_in_place_and_through_out(rng):
    x = rng.standard_normal((4, 3, 10)).astype(np.float32)
    r = rng.standard_normal((4, 3, 10)).astype(np.float32)
    expected, _, _ = fastbn.batch_norm_train(x, activation="relu", residual=r)
    xc = x.copy()
    y, _, _ = fastbn.batch_norm_train(xc, activation="relu", residual=r, out=xc)
    assert y is xc
    np.testing.assert_array_equal(y, expected)
    rc = r.copy()
    y, _, _ = fastbn.batch_norm_train(x, activation="relu", residual=rc, out=rc)  # out aliases the residual
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda x, y: fastbn.batch_norm_train(x, activation="gelu"), ValueError, "'relu', 'leaky_relu', 'sigmoid'"),
        (
            lambda x, y: fastbn.batch_norm_infer(x, np.zeros(3, np.float32), np.ones(3, np.float32), activation="tanh"),
            ValueError,
            "unknown activation",
        ),  # fmt: skip
        (lambda x, y: fastbn.batch_norm_train(x, activation="relu", negative_slope="a"), TypeError, "negative_slope"),
        (lambda x, y: fastbn.batch_norm_train(x, residual=np.ones((4, 3, 6), np.float32)), ValueError, "shape"),
        (lambda x, y: fastbn.batch_norm_train(x, residual=np.ones((4, 3, 5))), TypeError, "dtype"),
        (lambda x, y: _bwd(x, y, activation="relu", y=None), ValueError, "pass y="),
        (lambda x, y: _bwd(None, y, activation="relu", y=y), ValueError, "not invertible"),
        (lambda x, y: _bwd(None, y, activation="leaky_relu", y=y, negative_slope=0.0), ValueError, "not invertible"),
        (lambda x, y: _bwd(None, y, activation="leaky_relu", y=y, negative_slope=-0.5), ValueError, "negative_slope"),
        (lambda x, y: _bwd(None, y, y=y, return_dresidual=True), ValueError, "residual"),
        (lambda x, y: _bwd(None, y, y=y, gamma=np.array([1, 0, 1], np.float32)), ValueError, "no zeros"),
        (lambda x, y: _bwd(x, y, activation="leaky_relu", y=y, negative_slope=-0.5), ValueError, "negative_slope"),
        (lambda x, y: _bwd(x, y, batch_stats="no"), TypeError, "batch_stats"),
    ],
)
def test_bad_fused_input_raises_and_writes_nothing(rng, call, exc, match):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    y = fastbn.batch_norm_train(x)[0]
    before = (x.copy(), y.copy())
    with pytest.raises(exc, match=match):
        call(x, y)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(y, before[1])


def _bwd(x, y_forward, **kw):
    kw.setdefault("y", y_forward)
    dy = np.ones_like(y_forward)
    mean, var = np.zeros(3, np.float32), np.ones(3, np.float32)
    return fastbn.batch_norm_backward(dy, x, mean, var, kw.pop("gamma", None), **kw)


def test_layer_rejects_inplace_with_relu_and_with_a_residual():
    with pytest.raises(ValueError, match="not invertible"):
        fastbn.BatchNorm(3, activation="relu", inplace=True)
    bn = fastbn.BatchNorm(3, inplace=True)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="residual"):
        bn(x, residual=np.ones((4, 3), np.float32))
    assert bn.num_batches_tracked == 0


# ------------------------------------------------------------------------------------------------------------
# fold


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fold_matches_convolution_then_batch_norm(rng, with_bias, dtype):
    cout, cin = 6, 3
    w = rng.standard_normal((cout, cin, 3, 3)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype) if with_bias else None
    mean, var = rng.standard_normal(cout), rng.uniform(0.5, 2.0, cout)
    gamma, beta = rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout)
    x = torch.from_numpy(rng.standard_normal((2, cin, 8, 8)))
    conv = TF.conv2d(
        x, torch.from_numpy(w.astype(np.float64)), None if bias is None else torch.from_numpy(bias.astype(np.float64))
    )
    expected = TF.batch_norm(
        conv, torch.tensor(mean), torch.tensor(var), torch.tensor(gamma), torch.tensor(beta), training=False, eps=1e-3
    ).numpy()
    w2, b2 = fastbn.fold(w, bias, mean, var, gamma, beta, eps=1e-3)
    assert w2.dtype == dtype and b2.dtype == dtype and w2.shape == w.shape and b2.shape == (cout,)
    got = TF.conv2d(x, torch.from_numpy(w2.astype(np.float64)), torch.from_numpy(b2.astype(np.float64))).numpy()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_fold_linear_and_errors(rng):
    w = rng.standard_normal((4, 7))
    x = rng.standard_normal((5, 7))
    mean, var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    w2, b2 = fastbn.fold(w, None, mean, var)
    np.testing.assert_allclose(x @ w2.T + b2, (x @ w.T - mean) / np.sqrt(var + 1e-5), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        fastbn.fold(w, None, mean[:3], var)
    with pytest.raises(TypeError, match="floating-point"):
        fastbn.fold(np.ones((4, 7), np.int64), None, mean, var)
    with pytest.raises(ValueError, match="eps"):
        fastbn.fold(w, None, mean, var, eps=0)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_large_fused_backward_with_outputs_of_different_alignments(rng, layout):
    """Large enough for streaming stores (several MB), with dx misaligned by one element while dresidual
    comes aligned from the output cache: each output must be written at its own alignment."""
    shape, axis = ((8, 64, 48, 48), 1) if layout == "nchw" else ((8, 48, 48, 64), -1)
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(x, axis=axis, activation="relu", residual=r)
    raw = np.empty(x.size + 1, np.float32)
    dx = raw[1:].reshape(shape)  # 4 bytes off the allocation's alignment
    out = fastbn.batch_norm_backward(dy, x, mean, var, axis=axis, activation="relu", y=y, out=dx,
                                     return_dresidual=True)  # fmt: skip
    assert out[0] is dx
    _, _, _, rdx, _, _, rdr = reference(x, None, None, r, dy, "relu", axis=axis)
    close(dx, rdx, np.float32)
    close(out[3], rdr, np.float32)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("memory", ["c", "nhwc-view"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_forwards_take_the_one_call_path_with_the_general_paths_bits(rng, activation, memory, dtype):
    from fastbn import _core

    shape = (4, 6, 5, 7)
    x = make_input(rng, shape, memory, dtype)
    res = make_input(rng, shape, memory, dtype)
    g, b = params(rng, shape[1], dtype)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    code = {None: 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3}[activation]
    kw = {"activation": activation, "negative_slope": SLOPE}
    general = np.float64(1e-5)  # a NumPy float: the one-call path declines it, the general path takes it
    for r in (None, res):
        assert _core.train_simple(x, g, b, 1, 1e-5, None, code, SLOPE, r) is not None
        assert _core.infer_simple(x, mean, var, g, b, 1, 1e-5, None, code, SLOPE, r) is not None
        y, m, v = fastbn.batch_norm_train(x, g, b, residual=r, **kw)
        y_g, m_g, v_g = fastbn.batch_norm_train(x, g, b, residual=r, eps=general, **kw)
        for a, e in ((y, y_g), (m, m_g), (v, v_g)):
            np.testing.assert_array_equal(a, e)
        assert y.strides == x.strides
        z = fastbn.batch_norm_infer(x, mean, var, g, b, residual=r, **kw)
        np.testing.assert_array_equal(z, fastbn.batch_norm_infer(x, mean, var, g, b, residual=r, eps=general, **kw))
        dy = np.zeros_like(x)
        expected = reference(x, g, b, r, dy, activation)
        close(y, expected[0], dtype)
        close(z, reference(x, g, b, r, dy, activation, stats=(mean, var))[0], dtype)
    # Written over the residual (in place), through out= laid out as x: still one call, the same values.
    over = res.copy(order="K")
    assert _core.infer_simple(x, mean, var, g, b, 1, 1e-5, over, code, SLOPE, over) is not None
    np.testing.assert_array_equal(over, fastbn.batch_norm_infer(x, mean, var, g, b, residual=res, **kw))
    # Declined, and answered the general way: a residual in another layout, an out that partly overlaps it, an
    # unknown activation code, a slope that is not finite.
    other = np.ascontiguousarray(res) if memory != "c" else np.asfortranarray(res)
    assert _core.train_simple(x, g, b, 1, 1e-5, None, code, SLOPE, other) is None
    np.testing.assert_array_equal(
        fastbn.batch_norm_train(x, g, b, residual=other, **kw)[0],
        fastbn.batch_norm_train(x, g, b, residual=res, **kw)[0],
    )
    buf = np.zeros(x.size + 1, dtype)
    part = buf[1:].reshape(x.shape)
    assert _core.infer_simple(x, mean, var, g, b, 1, 1e-5, part, code, SLOPE, buf[:-1].reshape(x.shape)) is None
    assert _core.train_simple(x, g, b, 1, 1e-5, None, 4, SLOPE, None) is None
    assert _core.train_simple(x, g, b, 1, 1e-5, None, code, float("nan"), None) is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("memory", ["c", "nhwc-view"])
@pytest.mark.parametrize("batch_stats", [True, False])
def test_fused_backward_takes_the_one_call_path_with_the_general_paths_bits(rng, activation, memory, batch_stats):
    from fastbn import _core

    dtype = np.float32
    shape = (4, 6, 5, 7)
    x, res, dy = (make_input(rng, shape, memory, dtype) for _ in range(3))
    g, b = params(rng, shape[1], dtype)
    kw = {"activation": activation, "negative_slope": SLOPE}
    y, mean, var = fastbn.batch_norm_train(x, g, b, residual=res, **kw)
    code = {None: 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3}[activation]
    assert _core.backward_simple(dy, x, mean, var, g, 1, 1e-5, batch_stats, None, code, SLOPE, y, b, True) is not None
    general = np.float64(1e-5)
    got = fastbn.batch_norm_backward(dy, x, mean, var, g, y=y, batch_stats=batch_stats, return_dresidual=True, **kw)
    exp = fastbn.batch_norm_backward(
        dy, x, mean, var, g, y=y, batch_stats=batch_stats, return_dresidual=True, eps=general, **kw
    )
    for a, e in zip(got, exp):
        np.testing.assert_array_equal(a, e)
    assert got[0].strides == got[3].strides == x.strides
    ref = reference(x, g, b, res, dy, activation, stats=None if batch_stats else (mean, var))
    close(got[0], ref[3], dtype, scale=10)
    close(got[1], ref[4], dtype, scale=100)
    close(got[2], ref[5], dtype, scale=100)
    close(got[3], ref[6], dtype)
    # dx written over dy, and over y: still one call, the same values.
    for target in ("dy", "y"):
        d2, y2 = dy.copy(order="K"), y.copy(order="K")
        over = d2 if target == "dy" else y2
        r = _core.backward_simple(d2, x, mean, var, g, 1, 1e-5, batch_stats, over, code, SLOPE, y2, b, False)
        assert r is not None and r[0] is over
        np.testing.assert_array_equal(over, got[0])
    # Declined (the general path answers, with its messages): an activation without y, y in another layout, dx
    # partly over y, dx over x.
    if code:
        assert _core.backward_simple(dy, x, mean, var, g, 1, 1e-5, batch_stats, None, code, SLOPE, None) is None
        with pytest.raises(ValueError, match="pass y="):
            fastbn.batch_norm_backward(dy, x, mean, var, g, batch_stats=batch_stats, **kw)
    y_other = np.ascontiguousarray(y) if memory != "c" else np.asfortranarray(y)
    assert _core.backward_simple(dy, x, mean, var, g, 1, 1e-5, batch_stats, None, code, SLOPE, y_other) is None
    np.testing.assert_array_equal(
        fastbn.batch_norm_backward(dy, x, mean, var, g, y=y_other, batch_stats=batch_stats, **kw)[0], got[0]
    )
    buf = np.zeros(x.size + 1, dtype)
    ybuf, part = buf[:-1].reshape(x.shape), buf[1:].reshape(x.shape)
    np.copyto(ybuf, np.ascontiguousarray(y))
    if memory == "c":
        assert _core.backward_simple(dy, x, mean, var, g, 1, 1e-5, batch_stats, part, code, SLOPE, ybuf) is None
    xx = x.copy(order="K")
    assert _core.backward_simple(dy, xx, mean, var, g, 1, 1e-5, batch_stats, xx, code, SLOPE, y) is None


@pytest.mark.parametrize("memory", ["c", "nhwc-view"])
@pytest.mark.parametrize("dx_offset", [0, 1])
def test_fused_backward_with_dresidual_gives_the_same_bits_streamed_or_not(rng, memory, dx_offset):
    # A backward that also writes dresidual writes twice a plain one's bytes and streams its outputs once both
    # together reach the threshold (batchnorm.cpp: exec): 3 MiB tensors stream by default now. Streaming changes
    # where the stores go, never the values; dx one element off alignment makes the streamed dx peel a head while
    # dresidual (fastbn's own, aligned) streams at another offset or not at all.
    from fastbn import _core

    shape = (16, 192, 16, 16)  # 3 MiB of float32
    x, res, dy = (make_input(rng, shape, memory, np.float32) for _ in range(3))
    g, b = params(rng, shape[1], np.float32)
    kw = {"activation": "relu", "return_dresidual": True}
    y, mean, var = fastbn.batch_norm_train(x, g, b, residual=res, activation="relu")
    buf = np.empty(x.size + 1, np.float32)[dx_offset : dx_offset + x.size]
    out = buf.reshape(x.shape) if memory == "c" else buf.reshape(np.moveaxis(x, 1, -1).shape).transpose(0, 3, 1, 2)
    results = []
    try:
        for threshold in (None, 1, 1 << 40):  # the default, always, never
            if threshold is None:
                _core.reset_stream_min_bytes()
            else:
                _core.set_stream_min_bytes(threshold)
            dx, dg, db, dres = fastbn.batch_norm_backward(dy, x, mean, var, g, y=y, out=out, **kw)
            results.append([a.copy() for a in (dx, dg, db, dres)])
    finally:
        _core.reset_stream_min_bytes()
    for other in results[1:]:
        for a, e in zip(results[0], other):
            np.testing.assert_array_equal(a, e)
    ref = reference(x, g, b, res, dy, "relu")
    close(results[0][0], ref[3], np.float32, scale=10)
    close(results[0][3], ref[6], np.float32)
