"""Outputs of 1 MB or more come from a cache of reusable buffers: correct, reused, bounded, and safe."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import fastbn

from conftest import ref_train, tol

BIG = (64, 8, 32, 32)  # 2 MB of float32


@pytest.fixture
def fresh_cache():
    before = fastbn.output_cache_info()["limit_bytes"] >> 20
    fastbn.empty_output_cache()
    yield
    fastbn.set_output_cache_limit(before)
    fastbn.empty_output_cache()


def test_outputs_are_reused_after_they_die(fresh_cache):
    x = np.random.default_rng(0).standard_normal(BIG).astype(np.float32)
    y, _, _ = fastbn.batch_norm_train(x)
    assert fastbn.output_cache_info()["idle_bytes"] == 0
    address = y.__array_interface__["data"][0]
    del y
    gc.collect()
    assert fastbn.output_cache_info()["idle_bytes"] >= x.nbytes
    y2, _, _ = fastbn.batch_norm_train(x)
    assert y2.__array_interface__["data"][0] == address  # the same buffer, handed out again
    assert fastbn.output_cache_info()["idle_bytes"] == 0
    np.testing.assert_allclose(y2, ref_train(x)[0], *tol(np.float32))


def test_views_keep_a_cached_buffer_alive(fresh_cache):
    x = np.random.default_rng(1).standard_normal(BIG).astype(np.float32)
    y, _, _ = fastbn.batch_norm_train(x)
    view = y[3]
    expected = view.copy()
    del y
    gc.collect()
    assert fastbn.output_cache_info()["idle_bytes"] == 0  # still in use through the view
    fastbn.batch_norm_train(x * 2 + 1)  # must not get the view's buffer
    np.testing.assert_array_equal(view, expected)


def test_limit_zero_keeps_nothing_and_limits_are_checked(fresh_cache):
    fastbn.set_output_cache_limit(0)
    x = np.ones(BIG, np.float32)
    y, _, _ = fastbn.batch_norm_train(x)
    del y
    gc.collect()
    assert fastbn.output_cache_info() == {"idle_bytes": 0, "limit_bytes": 0}
    with pytest.raises(ValueError, match=">= 0"):
        fastbn.set_output_cache_limit(-1)
    with pytest.raises(TypeError):
        fastbn.set_output_cache_limit(1.5)


def test_empty_output_cache_frees_idle_buffers(fresh_cache):
    y, _, _ = fastbn.batch_norm_train(np.ones(BIG, np.float32))
    del y
    gc.collect()
    assert fastbn.output_cache_info()["idle_bytes"] > 0
    fastbn.empty_output_cache()
    assert fastbn.output_cache_info()["idle_bytes"] == 0


def test_small_outputs_are_plain_numpy_arrays():
    y, mean, _ = fastbn.batch_norm_train(np.ones((4, 3), np.float32) * np.arange(4, dtype=np.float32)[:, None])
    assert y.base is None and mean.base is None
