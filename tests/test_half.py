"""bfloat16 and float16 storage with float32 math: every pass, layout, half type and SIMD path against the float64
reference computed from the same half-precision values.

Contract (issue 12): y within one unit in the last place (ulp) of the half type of the float64 result; mean and
variance within 1e-5 relative; gradients within a few half ulps of their scale; every result rounded once, to
nearest even (subnormals included)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fastbn

from conftest import make_input, ref_backward, ref_infer, ref_train

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [pytest.param(BF16, id="bfloat16"), pytest.param(F16, id="float16")]
MANTISSA = {BF16: 7, F16: 10}
MIN_EXP = {BF16: -126, F16: -14}

HALF_LAYOUTS = [
    ((6, 5, 7, 9), 1, "c"),  # NCHW
    ((6, 7, 9, 37), -1, "c"),  # NHWC, channels not a multiple of a vector
    ((300, 20), 1, "c"),  # (N, C)
    ((6, 5, 7, 9), 1, "nhwc-view"),
    ((6, 5, 7, 9), 1, "strided"),
    ((4, 3, 1500), 1, "c"),  # long runs
]


def ulp(values, dtype) -> np.ndarray:
    """One unit in the last place of `dtype` at each (float64) value."""
    a = np.abs(np.asarray(values, np.float64))
    e = np.floor(np.log2(np.maximum(a, 2.0 ** MIN_EXP[dtype])))
    return 2.0 ** (e - MANTISSA[dtype])


def within_ulps(actual, expected, dtype, n=1.0, scale=0.0):
    """|actual - expected| <= n ulps of expected (plus n ulps of `scale` where cancellation made it small)."""
    a = np.asarray(actual, np.float64)
    tol = n * ulp(expected, dtype) + n * float(ulp(scale, dtype))
    bad = np.abs(a - expected) > tol
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} values off by more than {n} ulp; worst {np.max(np.abs(a - expected) - tol)}"
    )


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("layout", HALF_LAYOUTS, ids=lambda lay: f"{'x'.join(map(str, lay[0]))}-ax{lay[1]}-{lay[2]}")
def test_train_infer_backward_against_float64_of_the_same_half_values(simd, rng, dtype, layout):
    shape, axis, memory = layout
    x = make_input(rng, shape, memory, dtype)
    c = x.shape[axis]
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    assert y.dtype == dtype and mean.dtype == np.float32 and var.dtype == np.float32
    ry, rmean, rvar = ref_train(x.astype(np.float64), gamma, beta, axis)
    within_ulps(y, ry, dtype)
    np.testing.assert_allclose(mean, rmean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, rvar, rtol=1e-5)

    yi = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis)
    within_ulps(yi, ref_infer(x.astype(np.float64), mean, var, gamma, beta, axis), dtype)

    dy = make_input(rng, shape, "c", dtype)
    for batch_stats in (True, False):
        dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=batch_stats)
        assert dx.dtype == dtype and dgamma.dtype == np.float32
        rdx, rdg, rdb = ref_backward(
            dy.astype(np.float64), x.astype(np.float64), mean, var, gamma, axis=axis, batch_stats=batch_stats
        )
        within_ulps(dx, rdx, dtype, n=2, scale=np.sqrt(np.mean(rdx**2)))
        n = x.size / c
        np.testing.assert_allclose(dgamma, rdg, rtol=1e-5, atol=1e-5 * np.sqrt(n))
        np.testing.assert_allclose(dbeta, rdb, rtol=1e-5, atol=1e-5 * np.sqrt(n))


@pytest.mark.parametrize("dtype", HALVES)
def test_outputs_round_once_to_nearest_even_subnormals_included(simd, dtype):
    """y = gamma * x with statistics 0 and 1 - eps, so y is gamma * x exactly in float32 (or float64): the
    kernel's only rounding is the one to the half type, which must be the correctly rounded value."""
    x = np.arange(0, 1 << 16, 7, dtype=np.uint16).view(dtype)  # a sweep over the bit patterns
    with np.errstate(invalid="ignore"):
        x = x[np.isfinite(x.astype(np.float64))].reshape(1, 1, -1)
    eps = 2.0**-20
    for gamma in (1.5, 0.5, 0.75, 3.0):
        y = fastbn.batch_norm_infer(
            x, np.zeros(1, np.float32), np.full(1, 1 - eps, np.float32), np.full(1, gamma, np.float32), eps=eps
        )
        exact = x.astype(np.float64) * gamma  # exact in float64; one rounding to the half type:
        with np.errstate(over="ignore"):
            expected = exact.astype(np.float32).astype(dtype) if dtype == BF16 else exact.astype(dtype)
        np.testing.assert_array_equal(y.view(np.uint16), expected.view(np.uint16))


@pytest.mark.bfloat16
def test_bfloat16_rounding_of_every_float32_high_half(simd):
    """Every sign, exponent and top mantissa (the 65536 high halves of a float32), each with the low halves that
    decide its rounding (0, 1, just under, at and just over a tie, all ones), rounded to bfloat16 by the path.
    gamma = 0 makes y exactly beta (+0 for -0), so the path's one rounding is to bfloat16; the reference rounds
    to nearest even on the bits, subnormals included, and quiets NaNs keeping their sign and payload's top bits
    (what VCVTNEPS2BF16 does for normal numbers and NaNs, while it flushes subnormals)."""
    lows = np.array([0x0000, 0x0001, 0x4000, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF], np.uint32)
    bits = (np.arange(1 << 16, dtype=np.uint32)[:, None] << 16 | lows).ravel()
    beta = bits.view(np.float32)
    c = beta.size
    x = np.ones((2, c), BF16)
    y = fastbn.batch_norm_infer(
        x, np.zeros(c, np.float32), np.ones(c, np.float32), np.zeros(c, np.float32), beta, eps=1e-5
    )
    with np.errstate(invalid="ignore"):
        u = (np.float32(0) + beta).view(np.uint32).astype(np.uint64)
    expected = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(beta)
    expected[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    assert np.isnan(beta).sum() == 2 * (127 * 8 + 7)  # the sweep reaches NaNs of both signs...
    assert (np.abs(beta[beta != 0]) < np.finfo(np.float32).tiny).sum() == 2 * 128 * 8 - 2  # ...and subnormals
    for row in y.view(np.uint16):
        np.testing.assert_array_equal(row, expected)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "sigmoid"])
def test_fused_epilogue_in_half_precision(simd, rng, dtype, activation):
    x = rng.standard_normal((8, 6, 5, 5)).astype(dtype)
    r = rng.standard_normal(x.shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, 6).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, 6).astype(np.float32)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, activation=activation, negative_slope=0.1, residual=r)
    z = ref_train(x.astype(np.float64), gamma, beta)[0] + r.astype(np.float64)
    expected = {
        None: z,
        "relu": np.maximum(z, 0),
        "leaky_relu": np.where(z > 0, z, 0.1 * z),
        "sigmoid": 1 / (1 + np.exp(-z)),
    }[activation]
    within_ulps(y, expected, dtype)


@pytest.mark.parametrize("dtype", HALVES)
def test_layer_keeps_float32_state_and_tracks_running_stats(rng, dtype):
    bn = fastbn.BatchNorm(4, dtype=dtype, momentum=None)
    assert bn.gamma.dtype == np.float32 and bn.running_var.dtype == np.float32
    run_mean = np.zeros(4)
    run_var = np.ones(4)
    batches = [rng.standard_normal((16, 4, 3)).astype(dtype) * (k + 1) + k for k in range(4)]
    for k, x in enumerate(batches, start=1):
        y = bn(x)
        assert y.dtype == dtype
        dx = bn.backward(np.ones_like(y))
        assert dx.dtype == dtype
        _, m, v = ref_train(x.astype(np.float64))
        n = x.size / 4
        run_mean += (m - run_mean) / k
        run_var += (v * n / (n - 1) - run_var) / k
    np.testing.assert_allclose(bn.running_mean, run_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var, run_var, rtol=1e-5)
    state = bn.state_dict()
    assert all(state[k].dtype == np.float32 for k in ("weight", "bias", "running_mean", "running_var"))
    bn.eval()
    y = bn(batches[0])
    ref = ref_infer(batches[0].astype(np.float64), bn.running_mean, bn.running_var, bn.gamma, bn.beta)
    within_ulps(y, ref, dtype)


@pytest.mark.parametrize("dtype", HALVES)
def test_bad_dtypes_name_float32(rng, dtype):
    x = rng.standard_normal((4, 3)).astype(dtype)
    with pytest.raises(TypeError, match="float32"):
        fastbn.batch_norm_train(x, np.ones(3, dtype))
    with pytest.raises(TypeError, match="float32"):
        fastbn.batch_norm_train(x, np.ones(3, np.int32))
    with pytest.raises(TypeError, match="float32"):
        fastbn.batch_norm_infer(x, np.zeros(3), np.ones(3, np.float32))  # float64 mean
    with pytest.raises(TypeError, match="dtype"):
        fastbn.batch_norm_backward(x.astype(np.float32), x, np.zeros(3, np.float32), np.ones(3, np.float32))
    bn = fastbn.BatchNorm(3, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        bn(x.astype(np.float32))
    assert bn.num_batches_tracked == 0


def test_half_inputs_of_other_byte_orders_and_lists_convert():
    x16 = np.arange(24, dtype=np.float16).reshape(6, 4)
    expected = fastbn.batch_norm_train(x16)[0]
    np.testing.assert_array_equal(fastbn.batch_norm_train(x16.astype(">f2"))[0], expected)
    bn = fastbn.BatchNorm(4, dtype=BF16)
    y = bn(np.arange(24.0).reshape(6, 4).tolist())
    assert y.dtype == BF16
