"""The process-wide settings check their arguments (issue 9): the thread count is bounded (an unbounded one
could end the process inside OpenMP), and every bad value gives a TypeError or ValueError that says what was
expected, leaving the setting as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastbn


@pytest.fixture
def restore_cache_limit():
    before = fastbn.output_cache_info()["limit_bytes"] >> 20
    yield before
    fastbn.set_output_cache_limit(before)


@pytest.mark.parametrize("n", [0, -1, 1025, 4000, 2**31, 2**63, 2**70, -(2**66)])
def test_thread_counts_out_of_range_are_value_errors(restore_threads, n):
    with pytest.raises(ValueError, match=rf">= 1 and <= 1024, got {n}$"):
        fastbn.set_num_threads(n)
    assert fastbn.get_num_threads() == restore_threads


@pytest.mark.parametrize("n,kind", [(True, "bool"), (2.0, "float"), ("2", "str"), (None, "NoneType")])
def test_thread_counts_that_are_not_ints_are_type_errors(restore_threads, n, kind):
    with pytest.raises(TypeError, match=f"the thread count must be an int, got {kind}"):
        fastbn.set_num_threads(n)
    assert fastbn.get_num_threads() == restore_threads


def test_the_bounds_are_accepted_and_numpy_ints_too(restore_threads):
    for n in (1, 1024, np.int64(3), np.uint8(2)):
        fastbn.set_num_threads(n)
        assert fastbn.get_num_threads() == int(n)


def test_the_core_enforces_the_same_bound(restore_threads):
    """The C++ check (the C ABI's FASTBN_ERR_BAD_ARGUMENT) agrees with the Python one."""
    with pytest.raises(ValueError, match=">= 1 and <= 1024, got 1025"):
        fastbn._core.set_num_threads(1025)
    with pytest.raises(ValueError, match="got -2"):
        fastbn._core.set_num_threads(-2)
    assert fastbn.get_num_threads() == restore_threads
    fastbn._core.set_num_threads(1024)
    assert fastbn.get_num_threads() == 1024


def test_an_oversized_omp_num_threads_default_is_capped():
    code = "import fastbn; print(fastbn.get_num_threads())"
    env = {**os.environ, "OMP_NUM_THREADS": "4000"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1024"


@pytest.mark.parametrize("mb", [2**44, 2**60, 2**64, -1, -(2**70)])
def test_cache_limits_out_of_range_are_value_errors(restore_cache_limit, mb):
    with pytest.raises(ValueError, match=rf">= 0 and <= 2\*\*44 - 1 MB .*got {mb}$"):
        fastbn.set_output_cache_limit(mb)
    assert fastbn.output_cache_info()["limit_bytes"] == restore_cache_limit << 20


@pytest.mark.parametrize("mb,kind", [(True, "bool"), (1.5, "float"), (None, "NoneType")])
def test_cache_limits_that_are_not_ints_are_type_errors(restore_cache_limit, mb, kind):
    with pytest.raises(TypeError, match=f"must be an int, got {kind}"):
        fastbn.set_output_cache_limit(mb)
    assert fastbn.output_cache_info()["limit_bytes"] == restore_cache_limit << 20


def test_the_largest_cache_limit_is_accepted(restore_cache_limit):
    fastbn.set_output_cache_limit(2**44 - 1)
    assert fastbn.output_cache_info()["limit_bytes"] == (2**44 - 1) << 20
    fastbn.set_output_cache_limit(np.int32(5))
    assert fastbn.output_cache_info()["limit_bytes"] == 5 << 20
