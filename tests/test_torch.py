"""Parity with PyTorch 2.13's batch norm (a comparison only: skipped where torch is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

torch = pytest.importorskip("torch", reason="PyTorch is a comparison only; pip install torch==2.13.0")

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def torch_module(c, ndim, **kw):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[ndim]
    return cls(c, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(16, 6), (8, 6, 10), (4, 6, 5, 7), (2, 6, 3, 4, 5)])
def test_module_matches_torch_over_training_steps(shape, momentum, dtype):
    rng = np.random.default_rng(11)
    c = shape[1]
    ours = fastbn.BatchNorm(c, momentum=momentum, dtype=dtype)
    theirs = torch_module(c, len(shape), momentum=momentum, dtype=TORCH_DTYPE[dtype])
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(rng.standard_normal(c).astype(dtype)))
        theirs.bias.copy_(torch.from_numpy(rng.standard_normal(c).astype(dtype)))
    ours.load_state_dict(theirs.state_dict())
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for step in range(5):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        xt = torch.from_numpy(x).requires_grad_(True)
        yt = theirs(xt)
        y = ours(x)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=rtol, atol=rtol)
        dy = rng.standard_normal(shape).astype(dtype)
        yt.backward(torch.from_numpy(dy))
        dx = ours.backward(dy)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=rtol * 10, atol=rtol * 10)
        np.testing.assert_allclose(ours.grad_gamma, theirs.weight.grad.numpy(), rtol=rtol * 10, atol=rtol * 10)
        np.testing.assert_allclose(ours.grad_beta, theirs.bias.grad.numpy(), rtol=rtol * 10, atol=rtol * 10)
        theirs.zero_grad()
    np.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=rtol, atol=rtol)
    assert ours.num_batches_tracked == int(theirs.num_batches_tracked)

    ours.eval()
    theirs.eval()
    x = rng.standard_normal(shape).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = theirs(xt)
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=rtol, atol=rtol)
    dy = rng.standard_normal(shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=rtol * 10, atol=rtol * 10)


def test_channels_last_matches_torch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 5, 6, 16)).astype(np.float32)  # NHWC memory
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # torch's channels_last tensor, logically NCHW
    assert xt.is_contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16), torch.randn(16)
    yt = torch.nn.functional.batch_norm(xt, None, None, w, b, training=True)
    y, _, _ = fastbn.batch_norm_train(x, w.numpy(), b.numpy(), axis=-1)
    np.testing.assert_allclose(y, yt.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)


def test_eval_without_running_stats_matches_torch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10, 3, 4)).astype(np.float32)
    theirs = torch.nn.BatchNorm1d(3, track_running_stats=False).eval()
    ours = fastbn.BatchNorm(3, track_running_stats=False).eval()
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert set(ours.state_dict()) == set(theirs.state_dict())


def test_state_dict_moves_both_ways():
    theirs = torch.nn.BatchNorm2d(4)
    theirs(torch.randn(8, 4, 3, 3) * 3 + 1)
    ours = fastbn.BatchNorm(4)
    ours.load_state_dict(theirs.state_dict())  # CPU tensors are accepted as they are
    assert list(ours.state_dict()) == list(theirs.state_dict())
    back = torch.nn.BatchNorm2d(4)
    back.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in ours.state_dict().items()})
    for k, v in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_one_value_per_channel_is_refused_like_torch():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastbn.BatchNorm(3)(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.nn.BatchNorm1d(3)(torch.ones(1, 3))
