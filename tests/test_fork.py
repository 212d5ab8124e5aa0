"""Processes made by fork: OpenMP's threads do not survive fork(), so a forked child runs the kernels on one
thread instead of waiting forever for its parent's threads (issue 9). Each scenario runs in a fresh interpreter
under a timeout, so a regression fails instead of hanging the suite; the children's results are compared here
with the float64 reference."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_infer, ref_train, tol

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 60

# (name, shape, axis, dtype): tensors large enough for every thread the parent has, and small ones.
CASES = [
    ("large-nchw", (16, 32, 32, 32), 1, np.float32),
    ("large-nhwc", (8, 32, 32, 64), -1, np.float32),
    ("large-f64", (16, 16, 32, 32), 1, np.float64),
    ("small", (4, 3, 5, 5), 1, np.float32),
    ("small-nc", (6, 2), 1, np.float64),
]


def inputs(k):
    """The k-th case's x, dy, gamma, beta: regenerated from a seed wherever they are needed, so that no array
    has to travel between processes."""
    _, shape, axis, dtype = CASES[k]
    rng = np.random.default_rng(100 + k)
    c = shape[axis]
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, np.linspace(0.5, 1.5, c).astype(dtype), np.linspace(-1, 1, c).astype(dtype)


def run_case(k):
    """All three passes of case k: what a child sends back."""
    x, dy, gamma, beta = inputs(k)
    axis = CASES[k][2]
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis)
    yi = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis)
    return [np.asarray(a) for a in (y, mean, var, dx, dgamma, dbeta, yi)]


def child_work(k):
    """In the child: the thread count it reports, then case k, then a request for 2 threads (which must warn
    and change nothing), then case k again."""
    before = fastbn.get_num_threads()
    first = run_case(k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastbn.set_num_threads(2)
    warned = any(issubclass(w.category, RuntimeWarning) and "forked" in str(w.message) for w in caught)
    return before, fastbn.get_num_threads(), warned, first, run_case(k)


def process_work(queue):
    """A plain Process's target: its first call is a large one."""
    queue.put(child_work(0)[3][0].tobytes())


def parent_scenario(method, out):
    """In a fresh interpreter: a large 2-thread call first (it starts OpenMP's team), then children made by
    `method` run every case; their results go to `out` (.npz)."""
    fastbn.set_num_threads(2)
    big = np.random.default_rng(0).standard_normal((32, 64, 32, 32)).astype(np.float32)
    fastbn.batch_norm_train(big)
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map_async(child_work, range(len(CASES))).get(timeout=TIMEOUT)
    queue = ctx.Queue()
    p = ctx.Process(target=process_work, args=(queue,))
    p.start()
    process_y = queue.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    arrays = {"process_y": np.frombuffer(process_y, np.float32)}
    for k, (before, after, warned, first, again) in enumerate(results):
        arrays[f"{k}_threads"] = np.array([before, after, warned])
        for i, (a, b) in enumerate(zip(first, again)):
            arrays[f"{k}_first_{i}"] = a
            arrays[f"{k}_again_{i}"] = b
    np.savez(out, **arrays)


def run_scenario(method, tmp_path):
    out = str(tmp_path / f"{method}.npz")
    code = f"import sys; sys.path.insert(0, {HERE!r}); import test_fork; test_fork.parent_scenario({method!r}, {out!r})"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=2 * TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {method} children hung")
    assert proc.returncode == 0, proc.stderr
    return np.load(out)


def check_results(got):
    for k, (name, shape, axis, dtype) in enumerate(CASES):
        x, dy, gamma, beta = inputs(k)
        y, mean, var = ref_train(x, gamma, beta, axis=axis)
        dx, dgamma, dbeta = ref_backward(dy, x, mean, var, gamma, axis=axis)
        yi = ref_infer(x, mean, var, gamma, beta, axis=axis)
        rtol, atol = tol(dtype)
        n = x.size // shape[axis]
        for i, want in enumerate((y, mean, var, dx, dgamma, dbeta, yi)):
            first, again = got[f"{k}_first_{i}"], got[f"{k}_again_{i}"]
            sums = i in (4, 5)  # dgamma and dbeta add up n terms each
            np.testing.assert_allclose(first, want, rtol, atol * np.sqrt(n) if sums else atol, err_msg=f"{name} {i}")
            np.testing.assert_array_equal(again, first, err_msg=f"{name}, output {i}")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_children_run_single_threaded_and_right(tmp_path):
    got = run_scenario("fork", tmp_path)
    check_results(got)
    for k in range(len(CASES)):
        before, after, warned = got[f"{k}_threads"]
        assert (before, after, warned) == (1, 1, 1)
    np.testing.assert_array_equal(got["process_y"], got["0_first_0"].ravel())


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_children_that_load_fastbn_afresh_keep_their_threads(tmp_path, method):
    """The contrast: a spawned child, or one forked from a forkserver that had not loaded fastbn, starts
    OpenMP afresh and may use threads."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    got = run_scenario(method, tmp_path)
    check_results(got)
    for k in range(len(CASES)):
        before, after, warned = got[f"{k}_threads"]
        assert after == 2 and not warned


def test_a_request_for_threads_in_a_forked_child_is_still_checked():
    code = (
        "import os, sys, fastbn\n"
        "fastbn.set_num_threads(2)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        fastbn.set_num_threads(4000)\n"
        "    except ValueError:\n"
        "        os._exit(0 if fastbn.get_num_threads() == 1 else 2)\n"
        "    os._exit(3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
