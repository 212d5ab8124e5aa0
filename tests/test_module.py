"""The BatchNorm layer: running statistics, modes, backward, state, against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_infer, ref_stats, ref_train, tol


def ref_running(batches, momentum, axis=1):
    """PyTorch's rule, written out: r <- (1 - f) r + f * batch with the unbiased variance, f = momentum or
    1 / num_batches_tracked when momentum is None."""
    rm, rv = None, None
    for k, x in enumerate(batches, start=1):
        mean, var = ref_stats(x, axis)
        n = x.size // x.shape[axis]
        unbiased = var * n / (n - 1)
        if rm is None:
            rm, rv = np.zeros_like(mean), np.ones_like(var)
        f = 1.0 / k if momentum is None else momentum
        rm = (1 - f) * rm + f * mean
        rv = (1 - f) * rv + f * unbiased
    return rm, rv


@pytest.mark.parametrize("momentum", [0.1, None, 0.0, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_stats_over_several_steps(rng, momentum, dtype):
    bn = fastbn.BatchNorm(5, momentum=momentum, dtype=dtype)
    batches = [(rng.standard_normal((16, 5, 3, 3)) * (k + 1) + k).astype(dtype) for k in range(6)]
    for x in batches:
        y = bn(x)
        np.testing.assert_allclose(y, ref_train(x)[0], *tol(dtype))
    rm, rv = ref_running(batches, momentum)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-5 if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert bn.num_batches_tracked == len(batches)


def test_eval_uses_running_statistics(rng):
    bn = fastbn.BatchNorm(4, dtype=np.float64)
    for _ in range(3):
        bn(rng.standard_normal((32, 4)) * 2 + 1)
    bn.gamma[:] = rng.standard_normal(4)
    bn.beta[:] = rng.standard_normal(4)
    rm, rv, steps = bn.running_mean.copy(), bn.running_var.copy(), bn.num_batches_tracked
    assert bn.eval() is bn and not bn.training
    x = rng.standard_normal((10, 4))
    y = bn(x)
    np.testing.assert_allclose(y, ref_infer(x, rm, rv, bn.gamma, bn.beta), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, rm)  # eval does not update
    np.testing.assert_array_equal(bn.running_var, rv)
    assert bn.num_batches_tracked == steps
    assert bn.train() is bn and bn.training


def test_eval_without_running_stats_uses_batch_statistics(rng):
    bn = fastbn.BatchNorm(3, track_running_stats=False, dtype=np.float64).eval()
    assert bn.running_mean is None and bn.running_var is None and bn.num_batches_tracked == 0
    x = rng.standard_normal((7, 3, 4))
    np.testing.assert_allclose(bn(x), ref_train(x)[0], rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    mean, var = ref_stats(x)
    np.testing.assert_allclose(bn.backward(dy), ref_backward(dy, x, mean, var)[0], rtol=1e-10, atol=1e-10)


def test_affine_false(rng):
    bn = fastbn.BatchNorm(3, affine=False, dtype=np.float64)
    assert bn.gamma is None and bn.beta is None and bn.grad_gamma is None
    assert bn.parameters() == [] and bn.gradients() == []
    x = rng.standard_normal((9, 3))
    np.testing.assert_allclose(bn(x), ref_train(x)[0], rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(x.shape)
    mean, var = ref_stats(x)
    np.testing.assert_allclose(bn.backward(dy), ref_backward(dy, x, mean, var)[0], rtol=1e-10, atol=1e-10)
    assert set(bn.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}


@pytest.mark.parametrize("training", [True, False])
def test_backward_sets_parameter_gradients(rng, training):
    bn = fastbn.BatchNorm(4, dtype=np.float64, axis=-1)
    bn(rng.standard_normal((20, 3, 4)) + 3)  # move the running statistics away from (0, 1)
    bn.gamma[:] = rng.standard_normal(4)
    bn.train(training)
    x = rng.standard_normal((6, 5, 4))
    y = bn(x)
    dy = rng.standard_normal(x.shape)
    dx = bn.backward(dy)
    if training:
        mean, var = ref_stats(x, -1)
    else:
        mean, var = bn.running_mean, bn.running_var
    dx_ref, dg_ref, db_ref = ref_backward(dy, x, mean, var, bn.gamma, axis=-1, batch_stats=training)
    assert y.shape == dx.shape == x.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.grad_gamma, dg_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(bn.grad_beta, db_ref, rtol=1e-10, atol=1e-10)
    g_before = bn.gradients()[0]
    bn.backward(dy * 2)  # overwrites, does not accumulate, and keeps the same arrays
    assert bn.gradients()[0] is g_before
    np.testing.assert_allclose(bn.grad_gamma, 2 * dg_ref, rtol=1e-10, atol=1e-10)


def test_backward_uses_the_statistics_of_its_own_forward(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64).eval()
    bn.running_mean[:] = [1, 2, 3]
    x = rng.standard_normal((5, 3))
    bn(x)
    mean, var = bn.running_mean.copy(), bn.running_var.copy()
    bn.running_mean[:] = 100  # a later change must not affect the saved forward
    dy = rng.standard_normal(x.shape)
    dx_ref = ref_backward(dy, x, mean, var, bn.gamma, batch_stats=False)[0]
    np.testing.assert_allclose(bn.backward(dy), dx_ref, rtol=1e-12, atol=1e-12)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="before"):
        fastbn.BatchNorm(3).backward(np.zeros((2, 3), np.float32))


def test_backward_after_forward_overwrote_its_input(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((4, 3))
    bn(x, out=x)
    with pytest.raises(RuntimeError, match="wrote over"):
        bn.backward(np.ones_like(x))


def test_out_parameter_of_forward_and_backward(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((4, 3, 2))
    out = np.empty_like(x)
    assert bn.forward(x, out=out) is out
    np.testing.assert_allclose(out, ref_train(x)[0], rtol=1e-12, atol=1e-12)
    dx_out = np.empty_like(x)
    assert bn.backward(np.ones_like(x), out=dx_out) is dx_out


def test_parameters_are_live_arrays_an_optimizer_can_update(rng):
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x = rng.standard_normal((8, 3))
    bn(x)
    bn.backward(rng.standard_normal(x.shape))
    for p, g in zip(bn.parameters(), bn.gradients()):
        p -= 0.1 * g
    np.testing.assert_allclose(bn.gamma, 1 - 0.1 * bn.grad_gamma)
    np.testing.assert_allclose(bn.beta, -0.1 * bn.grad_beta)
    bn.zero_grad()
    assert not bn.grad_gamma.any() and not bn.grad_beta.any()


def test_state_dict_round_trip(rng):
    a = fastbn.BatchNorm(4)
    for _ in range(3):
        a(rng.standard_normal((10, 4)).astype(np.float32))
    a.gamma[:] = [1, 2, 3, 4]
    sd = a.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert sd["num_batches_tracked"].dtype == np.int64 and int(sd["num_batches_tracked"]) == 3
    sd["weight"][0] = 99  # a copy, not the live array
    assert a.gamma[0] == 1
    b = fastbn.BatchNorm(4)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert b.num_batches_tracked == 3


def test_reset(rng):
    bn = fastbn.BatchNorm(2)
    bn(rng.standard_normal((5, 2)).astype(np.float32))
    bn.gamma[:] = 3
    bn.reset_parameters()
    np.testing.assert_array_equal(bn.gamma, 1)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.num_batches_tracked == 0


def test_repr_and_defaults():
    bn = fastbn.BatchNorm(8)
    assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.axis) == (1e-5, 0.1, True, True, 1)
    assert bn.dtype == np.float32 and bn.gamma.dtype == np.float32
    assert "BatchNorm(8" in repr(bn)
