"""Process models and the audit's bad-input findings (issue 9): arrays and layers that went through pickle,
dtypes with metadata, byte-swapped and misaligned arrays, overflowing axes, the output cache under an
address-space limit, and the messages of misused arguments. Results are compared with a float64 reference."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastbn

from conftest import ref_train


def _train_in_worker(x):
    return fastbn.batch_norm_train(x)


def test_pickled_arrays_and_layers_work(rng):
    x = rng.standard_normal((8, 3, 5)).astype(np.float32)
    y = fastbn.batch_norm_train(x)[0]
    x2 = pickle.loads(pickle.dumps(x))
    assert x2.dtype is not x.dtype  # another dtype object, equal by value
    np.testing.assert_array_equal(fastbn.batch_norm_train(x2)[0], y)
    np.testing.assert_array_equal(fastbn.batch_norm_infer(x2, *pickle.loads(pickle.dumps(ref_stats32(x)))),
                                  fastbn.batch_norm_infer(x, *ref_stats32(x)))  # fmt: skip
    bn = fastbn.BatchNorm(3)
    bn(x)
    bn2 = pickle.loads(pickle.dumps(bn))
    np.testing.assert_array_equal(bn2(x2), bn(x))
    np.testing.assert_array_equal(bn2.backward(np.ones_like(x2)), bn.backward(np.ones_like(x)))
    assert bn2.num_batches_tracked == bn.num_batches_tracked == 2


def ref_stats32(x):
    _, m, v = ref_train(x.astype(np.float64))
    return m.astype(np.float32), v.astype(np.float32)


def test_pool_map_over_arrays(rng):
    xs = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(3)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_train_in_worker, xs)
    for x, (y, _, var) in zip(xs, results):
        ry, _, rv = ref_train(x.astype(np.float64))
        np.testing.assert_allclose(y, ry, rtol=2e-5, atol=2e-5)
        np.testing.assert_allclose(var, rv, rtol=1e-6)


def test_dtypes_with_metadata_and_other_byte_orders(rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    expected = fastbn.batch_norm_train(x)[0]
    with_meta = x.view(np.dtype(np.float32, metadata={"unit": "V"}))
    np.testing.assert_array_equal(fastbn.batch_norm_train(with_meta)[0], expected)
    swapped = x.astype(">f4")
    np.testing.assert_array_equal(fastbn.batch_norm_train(swapped)[0], expected)
    x64 = x.astype(np.float64)
    y, mean, var = fastbn.batch_norm_train(x64.astype(">f8"), np.ones(4, ">f8"), np.zeros(4, ">f8"))
    np.testing.assert_allclose(y, ref_train(x64)[0], rtol=1e-12, atol=1e-12)


def test_misaligned_contiguous_arrays_are_copied_once(rng):
    raw = np.zeros(4 * 48 + 1, np.uint8)[1:]
    x = raw.view(np.float32).reshape(12, 4)
    assert not x.flags.aligned and x.flags.c_contiguous
    x[...] = rng.standard_normal((12, 4))
    y, mean, var = fastbn.batch_norm_train(x)
    np.testing.assert_allclose(y, ref_train(x.astype(np.float64))[0], rtol=2e-5, atol=2e-5)
    dx, _, _ = fastbn.batch_norm_backward(x, x, mean, var)
    assert dx.flags.aligned
    out_raw = np.zeros(4 * 48 + 1, np.uint8)[1:]
    out = out_raw.view(np.float32).reshape(12, 4)
    r = fastbn.batch_norm_train(x, out=out)[0]
    assert r is out
    np.testing.assert_array_equal(out, y)


@pytest.mark.parametrize("axis", [2**70, -(2**66), 2**63])
def test_overflowing_axis_is_a_value_error_and_writes_nothing(rng, axis):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    out = np.full_like(x, 7.0)
    with pytest.raises(ValueError, match="out of range"):
        fastbn.batch_norm_train(x, axis=axis, out=out)
    with pytest.raises(ValueError, match="out of range"):
        fastbn.batch_norm_infer(x, np.zeros(3, np.float32), np.ones(3, np.float32), axis=axis, out=out)
    assert (out == 7.0).all()


@pytest.mark.not_sanitized  # ASan keeps freed memory in quarantine and reserves terabytes of address space
def test_output_cache_gives_way_under_an_address_space_limit():
    """256 MiB idle in the cache and an address-space limit that leaves room for a 192 MiB output only if the
    idle buffers are released: the allocation must release them and succeed (a subprocess: rlimits stick)."""
    code = textwrap.dedent(
        """
        import resource, numpy as np, fastbn
        fastbn.set_output_cache_limit(1024)
        x = np.ones((64, 1 << 20), np.float32)          # 256 MiB
        y = fastbn.batch_norm_infer(x, np.zeros(1 << 20, np.float32), np.ones(1 << 20, np.float32), axis=1)
        del y                                           # 256 MiB idle in the cache
        assert fastbn.output_cache_info()["idle_bytes"] >= 256 << 20
        vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) << 10
        resource.setrlimit(resource.RLIMIT_AS, (vm + (128 << 20), resource.RLIM_INFINITY))
        x2 = x[:48]                                     # 192 MiB input, no copy
        y2 = fastbn.batch_norm_infer(x2, np.zeros(1 << 20, np.float32), np.ones(1 << 20, np.float32), axis=1)
        assert y2.shape == (48, 1 << 20) and float(y2[0, 0]) != 0
        print("ok", fastbn.output_cache_info()["idle_bytes"])
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_layers_take_lists_in_their_dtype_and_reject_non_mappings():
    bn = fastbn.BatchNorm(2)
    y = bn([[1.0, 2.0], [3.0, 5.0], [4.0, 0.0]])
    assert y.dtype == np.float32
    with pytest.raises(TypeError, match="mapping"):
        bn.load_state_dict(None)
    with pytest.raises(TypeError, match="batch_stats"):
        fastbn.batch_norm_backward(np.ones((3, 2)), np.ones((3, 2)), np.zeros(2), np.ones(2), batch_stats="no")
