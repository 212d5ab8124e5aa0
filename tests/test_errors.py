"""Bad input gets a clear exception and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import fastbn

F32 = np.float32


def x4(shape=(4, 3, 2, 2), dtype=F32):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------------------------
# Functional API


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: fastbn.batch_norm_train(np.ones(5, F32)), ValueError, "at least 2 dimensions"),
        (lambda: fastbn.batch_norm_train(np.ones((0, 3), F32)), ValueError, "empty"),
        (lambda: fastbn.batch_norm_train(np.ones((4, 0), F32)), ValueError, "empty"),
        (lambda: fastbn.batch_norm_train(np.ones((1, 3), F32)), ValueError, "more than 1 value per channel"),
        (lambda: fastbn.batch_norm_train(np.ones((1, 3, 1, 1), F32)), ValueError, "more than 1 value per channel"),
        (lambda: fastbn.batch_norm_train(np.ones((4, 3), np.int32)), TypeError, "float32, float64, float16 or bf"),
        (lambda: fastbn.batch_norm_train(np.ones((4, 3), np.int8)), TypeError, "float32, float64, float16 or bf"),
        (lambda: fastbn.batch_norm_train(np.ones((4, 3), np.complex64)), TypeError, "float32, float64, float16 or bf"),
        (lambda: fastbn.batch_norm_train(np.ones((4, 3), np.float16), np.ones(3, np.float16)), TypeError, "float32"),
        (lambda: fastbn.batch_norm_train(x4(), np.ones(3)), TypeError, "dtype"),  # float64 gamma, float32 x
        (lambda: fastbn.batch_norm_train(x4(), None, np.zeros(3, np.float64)), TypeError, "dtype"),
        (lambda: fastbn.batch_norm_train(x4(), np.ones(4, F32)), ValueError, r"shape \(3,\)"),
        (lambda: fastbn.batch_norm_train(x4(), np.ones((3, 1), F32)), ValueError, r"shape \(3,\)"),
        (lambda: fastbn.batch_norm_train(x4(), None, np.ones(2, F32)), ValueError, r"shape \(3,\)"),
        (lambda: fastbn.batch_norm_train(x4(), eps=0.0), ValueError, "eps"),
        (lambda: fastbn.batch_norm_train(x4(), eps=-1e-5), ValueError, "eps"),
        (lambda: fastbn.batch_norm_train(x4(), eps=float("nan")), ValueError, "eps"),
        (lambda: fastbn.batch_norm_train(x4(), eps="small"), TypeError, "eps"),
        (lambda: fastbn.batch_norm_train(x4(), axis=4), ValueError, "axis 4 is out of range"),
        (lambda: fastbn.batch_norm_train(x4(), axis=-5), ValueError, "out of range"),
        (lambda: fastbn.batch_norm_train(x4(), axis=1.0), TypeError, "axis"),
        (lambda: fastbn.batch_norm_train(x4(), out=np.empty((4, 3, 2), F32)), ValueError, "out has shape"),
        (lambda: fastbn.batch_norm_train(x4(), out=np.empty((4, 3, 2, 2))), TypeError, "out has dtype"),
        (lambda: fastbn.batch_norm_train(x4(), out=[0.0]), TypeError, "out must be"),
        (lambda: fastbn.batch_norm_infer(x4(), np.zeros(3, F32), np.ones(2, F32)), ValueError, "var"),
        (lambda: fastbn.batch_norm_infer(x4(), np.zeros(4, F32), np.ones(3, F32)), ValueError, "mean"),
        (lambda: fastbn.batch_norm_infer(x4(), np.zeros(3), np.ones(3)), TypeError, "dtype"),
        (lambda: fastbn.batch_norm_infer(x4(), None, np.ones(3, F32)), ValueError, "mean is required"),
        (lambda: fastbn.batch_norm_infer(x4(), np.zeros(3, F32), np.ones(3, F32), eps=0), ValueError, "eps"),
        (
            lambda: fastbn.batch_norm_backward(x4((4, 3, 2, 1)), x4(), np.zeros(3, F32), np.ones(3, F32)),
            ValueError,
            "dy has shape",
        ),
        (
            lambda: fastbn.batch_norm_backward(x4(dtype=np.float64), x4(), np.zeros(3, F32), np.ones(3, F32)),
            TypeError,
            "dy has dtype",
        ),
        (lambda: fastbn.batch_norm_backward(x4(), x4(), np.zeros(2, F32), np.ones(3, F32)), ValueError, "mean"),
        (
            lambda: fastbn.batch_norm_backward(x4(), x4(), np.zeros(3, F32), np.ones(3, F32), np.ones(5, F32)),
            ValueError,
            "gamma",
        ),
        (
            lambda: fastbn.batch_norm_backward(x4(), x4(), np.zeros(3, F32), np.ones(3, F32), out=np.empty(3, F32)),
            ValueError,
            "out has shape",
        ),
    ],
)
def test_functional_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_read_only_out_is_rejected_and_not_written():
    out = np.zeros((4, 3, 2, 2), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fastbn.batch_norm_train(x4(), out=out)
    assert not out.any()


def test_failed_call_leaves_out_untouched():
    out = np.full((1, 3), 7.0, F32)
    with pytest.raises(ValueError):
        fastbn.batch_norm_train(np.ones((1, 3), F32), out=out)
    assert np.all(out == 7.0)


class FakeDeviceArray:
    """Looks like a CUDA array; its pointer must never reach a real GPU, so only used where none is."""

    def __init__(self, shape, typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False), "version": 3}


no_gpu = pytest.mark.skipif(fastbn.cuda.is_available(), reason="fake device pointers must not reach a real GPU")


def test_host_and_device_arrays_do_not_mix():
    with pytest.raises(TypeError, match="on the GPU but x is a host"):
        fastbn.batch_norm_train(x4(), FakeDeviceArray((3,)))
    with pytest.raises(TypeError, match="host array but the other arrays are on the GPU"):
        fastbn.batch_norm_train(FakeDeviceArray((4, 3)), np.ones(3, F32))
    with pytest.raises(TypeError, match="dy is on the GPU but x is a host"):
        fastbn.batch_norm_backward(FakeDeviceArray((4, 3)), np.ones((4, 3), F32), np.ones(3, F32), np.ones(3, F32))


@no_gpu
def test_device_input_without_cuda_says_so():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fastbn.batch_norm_train(FakeDeviceArray((4, 3)))
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fastbn.BatchNorm(3, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        fastbn.cuda.to_device(np.ones(3, F32))


def test_device_argument_validation():
    with pytest.raises(ValueError, match="device must be"):
        fastbn.BatchNorm(3, device="tpu")
    bn = fastbn.BatchNorm(3)
    with pytest.raises(TypeError, match="lives on the CPU"):
        bn(FakeDeviceArray((4, 3)))


def test_device_arrays_keep_dtype_rules():
    with pytest.raises(TypeError, match="float32 or float64"):
        fastbn.batch_norm_train(FakeDeviceArray((4, 3), "<i4"))


def test_core_rejects_inconsistent_arguments_without_crashing():
    """The private binding double-checks sizes and dtypes, so even a direct call cannot crash."""
    x = np.ones(12, F32)

    def train(x, y, outer=4, eps=1e-5, act=0):
        fastbn._core.train(x, None, y, None, None, np.empty(3, F32), np.empty(3, F32), outer, 3, 1, eps, act, 0.01)

    with pytest.raises(ValueError, match="elements"):
        train(x, np.empty(11, F32))
    with pytest.raises(TypeError, match="dtype"):
        train(x, np.empty(12))
    with pytest.raises(ValueError, match=">= 1"):
        train(x, np.empty(12, F32), outer=0)
    with pytest.raises(ValueError, match="eps"):
        train(x, np.empty(12, F32), eps=-1.0)
    with pytest.raises(ValueError, match="activation"):
        train(x, np.empty(12, F32), act=7)
    with pytest.raises(ValueError, match="contiguous"):
        train(np.ones(24, F32)[::2], np.empty(12, F32))
    with pytest.raises(ValueError, match="too many elements"):
        train(x, np.empty(12, F32), outer=2**62)


# ------------------------------------------------------------------------------------------------------------
# Module: constructor arguments


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"num_features": 0}, ValueError, "num_features"),
        ({"num_features": -3}, ValueError, "num_features"),
        ({"num_features": 2.5}, TypeError, "num_features"),
        ({"num_features": 3, "eps": 0}, ValueError, "eps"),
        ({"num_features": 3, "eps": -1.0}, ValueError, "eps"),
        ({"num_features": 3, "momentum": 1.5}, ValueError, "momentum"),
        ({"num_features": 3, "momentum": -0.1}, ValueError, "momentum"),
        ({"num_features": 3, "momentum": "fast"}, TypeError, "momentum"),
        ({"num_features": 3, "dtype": np.int64}, TypeError, "dtype"),
        ({"num_features": 3, "dtype": np.complex64}, TypeError, "dtype"),
        ({"num_features": 3, "axis": "last"}, TypeError, "axis"),
    ],
)
def test_constructor_bad_arguments(kwargs, exc, match):
    n = kwargs.pop("num_features")
    with pytest.raises(exc, match=match):
        fastbn.BatchNorm(n, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Module: a failing call changes nothing


def snapshot(bn):
    return {k: np.array(v, copy=True) for k, v in bn.state_dict().items()}


def assert_unchanged(bn, before):
    after = bn.state_dict()
    assert list(after) == list(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


@pytest.fixture
def trained_bn():
    bn = fastbn.BatchNorm(3)
    rng = np.random.default_rng(5)
    for _ in range(2):
        bn(rng.standard_normal((6, 3, 2)).astype(F32))
    return bn


@pytest.mark.parametrize(
    "bad,exc,match",
    [
        (np.ones((4, 5, 2), F32), ValueError, "expected 3 channels"),
        (np.ones((4, 3, 2), np.float64), TypeError, "dtype"),
        (np.ones((4, 3, 2), np.int32), TypeError, "float32, float64, float16 or bfloat16"),
        (np.ones(3, F32), ValueError, "at least 2 dimensions"),
        (np.ones((0, 3), F32), ValueError, "empty"),
        (np.ones((1, 3), F32), ValueError, "more than 1 value per channel"),
    ],
)
def test_failed_forward_changes_no_state(trained_bn, bad, exc, match):
    before = snapshot(trained_bn)
    with pytest.raises(exc, match=match):
        trained_bn(bad)
    assert_unchanged(trained_bn, before)


def test_failed_forward_with_bad_out_changes_no_state(trained_bn):
    before = snapshot(trained_bn)
    with pytest.raises(ValueError, match="out has shape"):
        trained_bn(np.ones((4, 3, 2), F32), out=np.empty((4, 3), F32))
    assert_unchanged(trained_bn, before)


def test_failed_backward_changes_no_gradients(trained_bn):
    x = np.random.default_rng(1).standard_normal((6, 3, 2)).astype(F32)
    trained_bn(x)
    trained_bn.backward(np.ones_like(x))
    g, b = trained_bn.grad_gamma.copy(), trained_bn.grad_beta.copy()
    before = snapshot(trained_bn)
    with pytest.raises(ValueError, match="dy has shape"):
        trained_bn.backward(np.ones((6, 3), F32))
    with pytest.raises(TypeError, match="dy has dtype"):
        trained_bn.backward(np.ones_like(x, dtype=np.float64))
    np.testing.assert_array_equal(trained_bn.grad_gamma, g)
    np.testing.assert_array_equal(trained_bn.grad_beta, b)
    assert_unchanged(trained_bn, before)


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda d: d.pop("running_var"), ValueError, "missing keys"),
        (lambda d: d.pop("weight"), ValueError, "missing keys"),
        (lambda d: d.update(extra=np.zeros(3)), ValueError, "unexpected keys"),
        (lambda d: d.update(weight=np.ones(4, F32)), ValueError, "shape"),
        (lambda d: d.update(running_mean=np.ones((3, 1), F32)), ValueError, "shape"),
        (lambda d: d.update(num_batches_tracked=np.array([1, 2])), ValueError, "num_batches_tracked"),
        (lambda d: d.update(num_batches_tracked=np.array(-1)), ValueError, "num_batches_tracked"),
        (lambda d: d.update(bias=np.array(["a", "b", "c"])), TypeError, "numbers"),
    ],
)
def test_load_state_dict_bad_input_changes_nothing(trained_bn, mutate, exc, match):
    before = snapshot(trained_bn)
    d = {k: v.copy() + 1 for k, v in trained_bn.state_dict().items()}
    mutate(d)
    with pytest.raises(exc, match=match):
        trained_bn.load_state_dict(d)
    assert_unchanged(trained_bn, before)


def test_load_state_dict_not_strict_ignores_extra_keys(trained_bn):
    d = trained_bn.state_dict()
    d["extra"] = np.zeros(1)
    trained_bn.load_state_dict(d, strict=False)


def test_thread_count_validation():
    with pytest.raises(ValueError, match=">= 1"):
        fastbn.set_num_threads(0)
    with pytest.raises(TypeError):
        fastbn.set_num_threads(1.5)
    before = fastbn.get_num_threads()
    with pytest.raises(ValueError):
        fastbn._core.set_num_threads(-2)
    assert fastbn.get_num_threads() == before


def test_simd_validation():
    before = fastbn.get_simd()
    with pytest.raises(ValueError, match="unknown SIMD path"):
        fastbn.set_simd("sse9")
    with pytest.raises(TypeError):
        fastbn.set_simd(3)
    assert fastbn.get_simd() == before
