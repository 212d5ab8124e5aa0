"""Concurrency and reproducibility: concurrent Python threads, and the same bits for any thread count."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import ml_dtypes
import numpy as np
import pytest

import fastbn

from conftest import ref_backward, ref_stats, ref_train


@pytest.fixture
def restore_threads(restore_threads):
    """Restores the thread count (conftest's fixture), and lets these small tensors run on many threads meanwhile
    (by default a thread takes at least 256 KiB; see FASTBN_MIN_BYTES_PER_THREAD)."""
    min_bytes = fastbn._core.min_bytes_per_thread()
    fastbn._core.set_min_bytes_per_thread(16 << 10)
    yield
    fastbn._core.set_min_bytes_per_thread(min_bytes)


def threads_and_caches(small_cache: int):
    """Sets 1, 2 and 3 threads, each with the default core cache and with `small_cache` bytes, yielding each."""
    for threads in (1, 2, 3):
        fastbn.set_num_threads(threads)
        for cache in (None, small_cache):
            if cache is None:
                fastbn._core.reset_core_cache_bytes()
            else:
                fastbn._core.set_core_cache_bytes(cache)
            yield threads, cache


def assert_phases_give_the_full_backward(dy, x, mean, var, gamma, dx, dgamma, dbeta):
    """A distributed backward's reduce phase gives the full backward's dbeta and dgamma, and its apply phase (over all
    of x's values per channel) the full backward's dx, bit for bit."""
    sdy, sdyx = fastbn.batch_norm_backward_reduce(dy, x, mean, var, gamma)
    np.testing.assert_array_equal(sdy.astype(dbeta.dtype), dbeta)
    np.testing.assert_array_equal(sdyx.astype(dgamma.dtype), dgamma)
    dxa = fastbn.batch_norm_backward_apply(dy, x, mean, var, gamma, None, sdy, sdyx, x.size // x.shape[1])
    np.testing.assert_array_equal(dxa.view(np.uint8), dx.view(np.uint8))


def param_dtype(x):
    """Parameters are float64 for float64 data, float32 otherwise (halves included)."""
    return np.float64 if x.dtype == np.float64 else np.float32


def run_all(x, axis):
    c = x.shape[axis]
    gamma = np.linspace(0.5, 1.5, c).astype(param_dtype(x))
    beta = np.linspace(-1, 1, c).astype(param_dtype(x))
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, axis=axis)
    dy = np.cos(np.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis)
    dx2, dg2, db2 = fastbn.batch_norm_backward(dy, x, mean, var, gamma, axis=axis, batch_stats=False)
    yi = fastbn.batch_norm_infer(x, mean, var, gamma, beta, axis=axis)
    return [y, mean, var, dx, dg, db, dx2, dg2, db2, yi]


# Shapes that take each schedule: whole channels per thread, (channel, block) units, channels-last chunks.
SHAPES = [
    ((64, 32, 20, 20), 1),
    ((128, 3, 32, 32), 1),
    ((96, 5, 16, 16), 1),
    ((6000, 100), 1),
    ((16, 24, 24, 48), -1),
    ((2000, 300), 1),
    ((3000, 200), 1),  # column groups of 8, 4 and a masked tail
    ((25600, 64), 1),  # 4 vectors a row
    ((400, 512), 1),  # 4 equal chunks of a small tensor
    ((16, 24, 5, 5), 1),  # short runs: training walks a flat period
    ((8, 300, 7, 7), 1),  # a flat period of 15 blocks
    ((32, 64, 8, 8), 1),  # runs of 64 values: the longest that go flat
    ((16, 64, 14, 14), 1),  # inference: runs of 196 values as one flat range, cut at lines of y
    ((8, 700, 5, 5), 1),  # ... and runs of 25 whose period is too long for the flat walk
    ((40, 64, 14, 14), 1),  # (streaming on) the streaming pipeline over 784-byte runs; units on 3 and 7 threads
]


@pytest.mark.parametrize("shape,axis", SHAPES)
def test_same_bits_for_any_thread_count(simd, restore_threads, streaming, shape, axis):
    x = (np.random.default_rng(3).standard_normal(shape) * 2 + 5).astype(np.float32)
    fastbn.set_num_threads(1)
    expected = run_all(x, axis)
    for n in (2, 3, 4, 7):
        fastbn.set_num_threads(n)
        for got, want in zip(run_all(x, axis), expected):
            np.testing.assert_array_equal(got, want)


def run_fused(x):
    """Training and backward with a residual and an activation, and the backward from y (in-place activated)."""
    c = x.shape[1]
    gamma = np.linspace(0.5, 1.5, c).astype(param_dtype(x))
    beta = np.linspace(-1, 1, c).astype(param_dtype(x))
    r = np.sin(np.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    dy = np.cos(np.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, activation="relu", residual=r)
    dx, dg, db, dr = fastbn.batch_norm_backward(
        dy, x, mean, var, gamma, beta=beta, activation="relu", y=y, return_dresidual=True
    )
    y2, _, _ = fastbn.batch_norm_train(x, gamma, beta, activation="leaky_relu", negative_slope=0.1)
    dx2, dg2, db2 = fastbn.batch_norm_backward(
        dy, None, mean, var, gamma, beta=beta, activation="leaky_relu", negative_slope=0.1, y=y2
    )
    return [y, mean, var, dx, dg, db, dr, y2, dx2, dg2, db2]


# Channels of 64 KiB to 125 KiB: with a 64 KiB core cache the threads share each channel (team pipelines) where
# there are at least as many blocks as threads, and take whole channels or units elsewhere.
TEAM_SHAPES = [(48, 8, 40, 40), (64, 6, 20, 20), (128, 4, 14, 14), (16, 4, 64, 64)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", TEAM_SHAPES)
def test_threads_sharing_channels_give_the_bits_of_one_thread(restore_threads, small_core_cache, shape, stream, dtype):
    x = (np.random.default_rng(5).standard_normal(shape) * 2 + 5).astype(dtype)
    if stream:
        fastbn._core.set_stream_min_bytes(1 << 16)  # and the prefetches of the pipelines
    try:
        fastbn.set_num_threads(1)
        fastbn._core.reset_core_cache_bytes()
        expected = run_all(x, 1) + run_fused(x)
        fastbn._core.set_core_cache_bytes(small_core_cache)
        for n in (1, 2, 3, 4, 7):
            fastbn.set_num_threads(n)
            for got, want in zip(run_all(x, 1) + run_fused(x), expected):
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))
    finally:
        fastbn._core.reset_stream_min_bytes()
    x64 = x.astype(np.float64)
    y_ref, mean_ref, var_ref = ref_train(x64, np.linspace(0.5, 1.5, shape[1]), np.linspace(-1, 1, shape[1]))
    stat_tol = 1e-12 if dtype == np.float64 else 1e-5  # statistics in double, stored as float32 for non-float64 x
    y_tol = {np.float32: 1e-5, np.float64: 1e-12}.get(dtype, 2e-2)  # bfloat16 outputs: 8 significant bits
    np.testing.assert_allclose(expected[0].astype(np.float64), y_ref, rtol=y_tol, atol=y_tol)
    np.testing.assert_allclose(expected[1].astype(np.float64), mean_ref, rtol=stat_tol)
    np.testing.assert_allclose(expected[2].astype(np.float64), var_ref, rtol=stat_tol)


# Short runs (the flat walks) with a core cache that holds a quarter to a half of a thread's channels: the training
# forward and the backward take each thread's channels in groups (statistics or sums, then y or dx from the cache),
# at least a 4 KiB row segment each.
GROUP_CASES = [((8, 64, 8, 8), 192 << 10), ((4, 128, 5, 5), 120 << 10), ((6, 96, 7, 7), 224 << 10)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape,cache", GROUP_CASES)
def test_flat_passes_by_channel_groups_give_the_bits_of_one_group(simd, restore_threads, shape, cache, stream, dtype):
    """Streaming (as beyond the last-level cache), a group's y pass also prefetches the next group's x."""
    x = (np.random.default_rng(6).standard_normal(shape) * 2 + 5).astype(dtype)
    gamma = np.linspace(0.5, 1.5, shape[1]).astype(param_dtype(x))  # run_all's
    dy = np.cos(np.arange(x.size, dtype=x.dtype)).reshape(shape)
    if stream:
        fastbn._core.set_stream_min_bytes(1 << 10)
    try:
        fastbn.set_num_threads(1)
        fastbn._core.reset_core_cache_bytes()  # every thread's channels in one group
        expected = run_all(x, 1) + run_fused(x)
        fastbn._core.set_core_cache_bytes(cache)
        for n in (1, 2, 3):
            fastbn.set_num_threads(n)
            for got, want in zip(run_all(x, 1) + run_fused(x), expected):
                np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))
            _, smean, sm2 = fastbn.batch_norm_stats(x, axis=1)  # the statistics alone: the forward's
            assert np.array_equal(smean.astype(expected[1].dtype), expected[1])
            assert np.array_equal((sm2 / (x.size // shape[1])).astype(expected[2].dtype), expected[2])
            # a distributed backward's local sums (not grouped): the full backward's dbeta and dgamma
            sum_dy, sum_dy_xhat = fastbn.batch_norm_backward_reduce(dy, x, expected[1], expected[2], gamma, axis=1)
            assert np.array_equal(sum_dy.astype(expected[5].dtype), expected[5])
            assert np.array_equal(sum_dy_xhat.astype(expected[4].dtype), expected[4])
    finally:
        fastbn._core.reset_core_cache_bytes()
        fastbn._core.reset_stream_min_bytes()
    x64 = x.astype(np.float64)
    c = shape[1]
    gamma = gamma.astype(np.float64)
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(dtype, 3e-2)  # bfloat16 outputs: 8 significant bits
    y_ref, mean_ref, var_ref = ref_train(x64, gamma, np.linspace(-1, 1, c))
    np.testing.assert_allclose(np.asarray(expected[0]).astype(np.float64), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(expected[1]).astype(np.float64), mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(expected[2]).astype(np.float64), var_ref, rtol=1e-5)
    for got, want in zip(expected[3:6], ref_backward(dy, x64, mean_ref, var_ref, gamma)):
        scale = np.abs(want).max()
        np.testing.assert_allclose(np.asarray(got).astype(np.float64), want, rtol=tol, atol=tol * scale)


def test_core_cache_setting_is_checked_and_restored():
    before = fastbn._core.core_cache_bytes()
    with pytest.raises(ValueError, match="core cache size must be >= 1 byte, got 0"):
        fastbn._core.set_core_cache_bytes(0)
    assert fastbn._core.core_cache_bytes() == before
    fastbn._core.set_core_cache_bytes(12345)
    assert fastbn._core.core_cache_bytes() == 12345
    fastbn._core.reset_core_cache_bytes()
    assert fastbn._core.core_cache_bytes() == before


def test_concurrent_python_threads_get_the_same_answers():
    rng = np.random.default_rng(7)
    inputs = [(rng.standard_normal((32, 16, 12, 12)) + k).astype(np.float32) for k in range(4)]
    expected = [run_all(x, 1) for x in inputs]
    errors = []
    barrier = threading.Barrier(4)

    def worker(k):
        try:
            barrier.wait()
            for _ in range(20):
                for got, want in zip(run_all(inputs[k], 1), expected[k]):
                    np.testing.assert_array_equal(got, want)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    np.testing.assert_allclose(
        expected[0][0], ref_train(inputs[0], np.linspace(0.5, 1.5, 16), np.linspace(-1, 1, 16))[0], rtol=1e-4, atol=1e-4
    )


def test_gil_is_released_while_kernels_run():
    """Another Python thread makes progress while a long kernel runs: a tick stamped between a call's start and
    its end can only come from the window where the call had released the GIL. Over 10 calls, so that a busy
    machine that gives the ticker no CPU during one call does not fail the test."""

    x = np.random.default_rng(0).standard_normal((64, 64, 64, 64)).astype(np.float32)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())

    t = threading.Thread(target=ticker)
    fastbn.batch_norm_train(x)  # warm up
    t.start()
    calls = []
    for _ in range(10):
        start = time.perf_counter()
        fastbn.batch_norm_train(x)
        calls.append((start, time.perf_counter()))
    done.set()
    t.join()
    assert any(start < tick < end for start, end in calls for tick in ticks)


def _digest(shapes):
    import hashlib

    h = hashlib.sha256()
    for shape, axis in shapes:
        x = (np.random.default_rng(3).standard_normal(shape) * 2 + 5).astype(np.float32)
        for a in run_all(x, axis):
            h.update(a.tobytes())
    return h.hexdigest()


def test_a_smaller_openmp_team_than_asked_for_still_does_all_the_work(restore_threads):
    """OpenMP may run fewer threads than requested (OMP_THREAD_LIMIT, or a call from inside another parallel
    region); the work must still be split over the team that actually runs."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import fastbn, test_threads as t; "
        "fastbn._core.set_min_bytes_per_thread(16 << 10); fastbn.set_num_threads(4); print(t._digest(t.SHAPES))"
    )
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, os.path.dirname(__file__)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    fastbn.set_num_threads(1)
    assert out.stdout.strip() == _digest(SHAPES)


def test_a_second_thread_slow_to_start_keeps_small_calls_on_one_thread_for_a_while():
    """A second thread slow to start (0.1 ms and more) because it had gone to sleep (the team sat idle longer than
    its spin) or because another process holds the CPU it would use makes the default per-thread minimum give way
    to 3 MiB for 10 ms; a chosen minimum always holds. A slow start of a team that had just run, while every
    runnable thread has a CPU, is a hiccup and changes nothing."""
    core = fastbn._core
    cpus = len(os.sched_getaffinity(0))
    before = core.min_bytes_per_thread()
    core.reset_min_bytes_per_thread()
    core._forget_crowding()
    try:
        default = core.min_bytes_per_thread()
        backed_off = max(default, 3 << 20)
        assert core.min_bytes_per_thread_now() == default
        core._note_thread_start(900_000, 7, idle_ns=10**9, runnable=cpus + 1)  # a first region with 7 threads
        assert core.min_bytes_per_thread_now() == default
        core._note_thread_start(40_000, 7, idle_ns=10**9, runnable=cpus + 1)  # a quick start
        assert core.min_bytes_per_thread_now() == default
        core._note_thread_start(150_000, 7, idle_ns=0, runnable=cpus)  # just ran, no thread waits for a CPU
        assert core.min_bytes_per_thread_now() == default
        core._note_thread_start(150_000, 7, idle_ns=20_000, runnable=cpus)  # idle less than a spin
        assert core.min_bytes_per_thread_now() == default
        core._note_thread_start(150_000, 7, idle_ns=1_000_000, runnable=cpus)  # the team had gone to sleep
        assert core.min_bytes_per_thread_now() == backed_off
        core._forget_crowding()
        core._note_thread_start(150_000, 7, idle_ns=0, runnable=cpus + 1)  # a CPU held by another thread
        assert core.min_bytes_per_thread_now() == backed_off
        core.set_min_bytes_per_thread(default)  # chosen: it holds, crowded or not
        assert core.min_bytes_per_thread_now() == default
        core.reset_min_bytes_per_thread()
        assert core.min_bytes_per_thread_now() == backed_off
        time.sleep(0.05)
        assert core.min_bytes_per_thread_now() == default
    finally:
        core._forget_crowding()
        core.set_min_bytes_per_thread(before)


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="the runnable count is read from Linux's /proc")
def test_the_runnable_count_is_read_from_the_system_and_sees_busy_processes():
    """The crowding check reads how many threads the system could run now: with a busy process on every CPU
    beside this one, more than there are CPUs, and a slow start then counts."""
    core = fastbn._core
    cpus = len(os.sched_getaffinity(0))
    assert core._runnable_threads() >= 1  # this thread, at least
    spin = "import time\nt = time.time() + 30\nwhile time.time() < t: pass"
    busy = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cpus + 1)]
    before = core.min_bytes_per_thread()
    core.reset_min_bytes_per_thread()
    core._forget_crowding()
    try:
        seen = 0
        deadline = time.time() + 20
        while time.time() < deadline and seen <= cpus:
            seen = max(seen, core._runnable_threads())
        assert seen > cpus, f"{seen} runnable with {cpus + 1} busy processes on {cpus} CPUs"
        core._note_thread_start(150_000, 5, runnable=cpus + 1)  # this team size's first region: not counted
        crowded = False
        while time.time() < deadline and not crowded:
            core._note_thread_start(150_000, 5, idle_ns=0)  # a team that just ran: the count from the system
            crowded = core.min_bytes_per_thread_now() == max(core.min_bytes_per_thread(), 3 << 20)
        assert crowded
    finally:
        for p in busy:
            p.kill()
            p.wait()
        core._forget_crowding()
        core.set_min_bytes_per_thread(before)


def pipeline_settings(small_core_cache):
    """Where the channel pipelines run: outputs streaming from 1 KiB, on one thread and two with the system's core
    cache, and on two sharing channels (a small core cache). Yields the thread count; the caller resets them."""
    fastbn._core.set_stream_min_bytes(1 << 10)
    for threads, cache in [(1, None), (2, None), (2, small_core_cache)]:
        fastbn.set_num_threads(threads)
        if cache is None:
            fastbn._core.reset_core_cache_bytes()
        else:
            fastbn._core.set_core_cache_bytes(cache)
        yield


# Runs of whole vectors (for float64 too), one of them cut into two pieces (12544 values); the channel-split and the
# shared-channel pipelines both.
STEP_SHAPES = [(24, 8, 16, 20), (16, 6, 32, 32), (12, 5, 64, 64), (4, 3, 112, 112)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_pipeline_step_in_one_loop_gives_the_bits_of_two(restore_threads, small_core_cache, shape, dtype):
    """Where the output streams and runs are whole vectors, the training pipelines normalize a block of channel c
    in the loop that takes the moments of the same block of channel c + 1; the results are the bits of the two
    loops (streaming off), into outputs at every offset from a vector boundary and at page offsets where the
    loads of channel c + 1 alias the stores of channel c (the one loop then writes each run's vectors in a rotated
    order where runs are 8 KiB or more, else the two loops run) and where not, with an activation and a residual,
    on one thread and two, and against a float64 reference."""
    rng = np.random.default_rng(8)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    gamma = np.linspace(0.5, 1.5, shape[1]).astype(param_dtype(x))
    beta = np.linspace(-1, 1, shape[1]).astype(param_dtype(x))

    def train(offset, **kw):
        buf = np.full(x.size + 16, np.nan, dtype)
        out = buf[offset : offset + x.size].reshape(shape)
        y, mean, var = fastbn.batch_norm_train(x, gamma, beta, out=out, **kw)
        assert y is out
        return [y, mean, var]

    # y placed so that the next channel's loads lie `gap` bytes past its stores modulo a page: 0 and -64 alias
    # them (the one loop's stores are then skewed by half a page, or the two loops run), 1 KiB and 2 KiB do not.
    item = x.dtype.itemsize
    run = shape[2] * shape[3] * item

    def train_gap(gap, **kw):
        buf = np.full(x.size + 4096 // item, np.nan, dtype)
        skip = ((x.ctypes.data + run - gap - buf.ctypes.data) % 4096) // item
        out = buf[skip : skip + x.size].reshape(shape)
        assert (x.ctypes.data + run - out.ctypes.data) % 4096 == gap % 4096
        y, mean, var = fastbn.batch_norm_train(x, gamma, beta, out=out, **kw)
        return [y, mean, var]

    variants = [{}, {"activation": "relu", "residual": res}]
    fastbn.set_num_threads(1)
    expected = [train(0, **kw) for kw in variants]  # streaming off: two loops
    try:
        for _ in pipeline_settings(small_core_cache):
            for offset in range(16):
                for kw, want in zip(variants, expected):
                    for g, w in zip(train(offset, **kw), want):
                        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))
            for gap in (0, -64, 1024, 2048):
                for kw, want in zip(variants, expected):
                    for g, w in zip(train_gap(gap, **kw), want):
                        np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))
    finally:
        fastbn._core.reset_stream_min_bytes()
        fastbn._core.reset_core_cache_bytes()
    y_ref, mean_ref, var_ref = ref_train(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64))
    tol = {np.float32: 1e-5, np.float64: 1e-12}.get(dtype, 2e-2)
    np.testing.assert_allclose(expected[0][0].astype(np.float64), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(expected[0][1].astype(np.float64), mean_ref, rtol=1e-5)
    relu = np.maximum(y_ref + res.astype(np.float64), 0)
    np.testing.assert_allclose(expected[1][0].astype(np.float64), relu, rtol=tol, atol=tol)


# Runs of whole vectors (STEP_SHAPES) and runs with a head and a tail: 13x13, and NCL runs of 1000 values.
BWD_STEP_SHAPES = [*STEP_SHAPES, (16, 6, 13, 13), (8, 5, 1000)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", BWD_STEP_SHAPES)
def test_backward_pipeline_step_in_one_loop_gives_the_bits_of_two(restore_threads, small_core_cache, shape, dtype):
    """On CPUs other than AMD's the backward's channel pipelines compute the dx of a block of channel c in the loop
    that takes the sums of the same block of channel c + 1; elsewhere, and where a thread's cache cannot hold two
    channels, the sums of a channel come first and then its dx. Both give the same bits: the pipelines (streaming
    on; one thread and two, per thread and sharing channels) against the sums-then-dx order (one thread, a 4 KiB
    core cache), into dx at every offset from a vector boundary, with a fused ReLU and the residual's gradient
    (which streams beside dx only at dx's offset within a vector), from y, and against a float64 reference."""
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma = np.linspace(0.5, 1.5, c).astype(param_dtype(x))
    beta = np.linspace(-1, 1, c).astype(param_dtype(x))
    y, mean, var = fastbn.batch_norm_train(x, gamma, beta, activation="relu")
    y2, _, _ = fastbn.batch_norm_train(x, gamma, beta, activation="leaky_relu", negative_slope=0.1)

    def backward(offset):
        def dx_out():
            buf = np.full(x.size + 16, np.nan, dtype)
            return buf[offset : offset + x.size].reshape(shape)

        plain = fastbn.batch_norm_backward(dy, x, mean, var, gamma, out=dx_out())
        fused = fastbn.batch_norm_backward(
            dy, x, mean, var, gamma, beta=beta, activation="relu", y=y, return_dresidual=True, out=dx_out()
        )
        from_y = fastbn.batch_norm_backward(
            dy, None, mean, var, gamma, beta=beta, activation="leaky_relu", negative_slope=0.1, y=y2, out=dx_out()
        )
        return [*plain, *fused, *from_y]

    fastbn.set_num_threads(1)
    try:
        fastbn._core.set_core_cache_bytes(4 << 10)
        expected = backward(0)
        for _ in pipeline_settings(small_core_cache):
            for offset in range(16):
                for g, w in zip(backward(offset), expected):
                    np.testing.assert_array_equal(g.view(np.uint8), w.view(np.uint8))
    finally:
        fastbn._core.reset_stream_min_bytes()
        fastbn._core.reset_core_cache_bytes()
    rdx, rdg, rdb = ref_backward(dy, x, mean, var, gamma)
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(dtype, 3e-2)  # bfloat16 dx: 8 significant bits
    np.testing.assert_allclose(expected[0].astype(np.float64), rdx, rtol=tol, atol=tol * np.abs(rdx).max())
    np.testing.assert_allclose(expected[1], rdg, rtol=tol, atol=tol * np.abs(rdg).max())
    np.testing.assert_allclose(expected[2], rdb, rtol=tol, atol=tol * np.abs(rdb).max())


# Channels-last rows of several column groups: beyond the cache (streaming on) the statistics and the backward's
# sums read rows together (kRowsTogether at a time, each vector of columns down them) instead of one group of
# columns down a whole chunk. (3000, 200): groups of 8 and 4 vectors and a masked tail; (1200, 1030): chunks and
# tiles that are not whole rounds of 32 rows; (2048, 512): whole rounds; (300, 2100): two panels of the backward.
ROW_WALK_SHAPES = [(3000, 200), (1200, 1030), (2048, 512), (300, 2100)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", ROW_WALK_SHAPES)
def test_channels_last_rows_read_together_give_the_bits_of_column_groups(simd, restore_threads, shape, dtype):
    """Training, batch_norm_stats, the backward and a distributed backward's local sums give, with the row walk
    (streaming on), the bits of the column-group walk (streaming off) on 1 to 3 threads, a channel whose first
    rows are far from its mean (the shift is off: the careful path) and one with an inf included; and the
    float64 reference."""
    rng = np.random.default_rng(11)
    x64 = rng.standard_normal(shape) * 2 + 3
    x64[:, 3] += 1e4  # a large mean
    x64[:16, 5] += 60  # the first rows' mean, the shift, is off
    x = x64.astype(dtype)
    x_inf = x.copy()
    x_inf[7, 9] = np.inf
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = np.linspace(0.5, 1.5, shape[1]).astype(param_dtype(x))
    beta = np.linspace(-1, 1, shape[1]).astype(param_dtype(x))

    def run():
        y, mean, var = fastbn.batch_norm_train(x, gamma, beta)
        _, smean, sm2 = fastbn.batch_norm_stats(x)
        _, imean, im2 = fastbn.batch_norm_stats(x_inf)
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma)
        sdy, sdyx = fastbn.batch_norm_backward_reduce(dy, x, smean, sm2 / x.shape[0], gamma)
        return [y, mean, var, smean, sm2, imean, im2, dx, dg, db, sdy, sdyx]

    fastbn.set_num_threads(1)
    try:
        fastbn._core.set_stream_min_bytes(1 << 40)
        expected = run()
        fastbn._core.set_stream_min_bytes(1 << 10)
        for threads in (1, 2, 3):
            fastbn.set_num_threads(threads)
            for got, want in zip(run(), expected):
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    finally:
        fastbn._core.reset_stream_min_bytes()
    y, mean, var, smean, sm2, imean, im2, dx, dg, db, sdy, sdyx = expected
    xr = x.astype(np.float64)
    y_ref, mean_ref, var_ref = ref_train(xr, gamma.astype(np.float64), beta.astype(np.float64))
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(dtype, 3e-2)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6 if dtype != np.float64 else 1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=tol)
    np.testing.assert_allclose(smean, mean_ref, rtol=1e-6 if dtype != np.float64 else 1e-12)
    np.testing.assert_allclose(sm2, var_ref * x.shape[0], rtol=tol)
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=tol, atol=tol)
    assert np.isnan(imean[9]) or np.isinf(imean[9])
    keep = np.arange(shape[1]) != 9
    np.testing.assert_allclose(imean[keep], mean_ref[keep], rtol=1e-6 if dtype != np.float64 else 1e-12)
    np.testing.assert_allclose(im2[keep], sm2[keep], rtol=tol)
    dx_ref, dg_ref, db_ref = ref_backward(dy.astype(np.float64), xr, mean_ref, var_ref, gamma.astype(np.float64))
    np.testing.assert_allclose(dg, dg_ref, rtol=tol, atol=tol * np.abs(dg_ref).max())
    np.testing.assert_allclose(db, db_ref, rtol=tol, atol=tol * np.abs(db_ref).max())
    np.testing.assert_allclose(sdy, db_ref, rtol=tol, atol=tol * np.abs(db_ref).max())
    np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=tol, atol=tol * np.abs(dx_ref).max())


# Channels-last rows of 4 KiB and more: beyond the cache (streaming on) the training forward and inference take
# kRowsTogether rows at a time, a vector of columns down them; inference of rows longer than a flat block goes
# chunk by chunk of whole rows. (203, 2048): chunks of 51 rows (6 blocks of 8 and 3 rows; prefetches for the
# first); (61, 4096): 2 blocks a chunk; (130, 1032): rows that are not whole vectors (no row blocks; inference's
# vectors cross rows).
CL_LONG_ROW_SHAPES = [(203, 2048), (61, 4096), (130, 1032)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", CL_LONG_ROW_SHAPES)
def test_long_channels_last_rows_give_the_bits_of_the_plain_walk(restore_threads, shape, dtype):
    """Training (with and without a residual and an activation) and inference into outputs at several offsets
    from a vector boundary, streaming on, 1 to 3 threads: the bits of one thread with streaming off; and the
    float64 reference."""
    rng = np.random.default_rng(21)
    x = (rng.standard_normal(shape) * 3 - 2).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma = np.linspace(0.5, 1.5, c).astype(param_dtype(x))
    beta = np.linspace(-1, 1, c).astype(param_dtype(x))
    mean_in = np.linspace(-2.5, -1.5, c).astype(param_dtype(x))
    var_in = np.linspace(8, 10, c).astype(param_dtype(x))
    variants = [{}, {"activation": "relu", "residual": res}]

    def out_at(offset):
        buf = np.full(x.size + 16, np.nan, dtype)
        return buf[offset : offset + x.size].reshape(shape)

    def run(offset):
        got = []
        for kw in variants:
            y, mean, var = fastbn.batch_norm_train(x, gamma, beta, out=out_at(offset), **kw)
            yi = fastbn.batch_norm_infer(x, mean_in, var_in, gamma, beta, out=out_at(offset), **kw)
            got += [y, mean, var, yi]
        return got

    fastbn.set_num_threads(1)
    try:
        fastbn._core.set_stream_min_bytes(1 << 40)
        expected = run(0)
        fastbn._core.set_stream_min_bytes(1 << 10)
        for threads in (1, 2, 3):
            fastbn.set_num_threads(threads)
            for offset in (0, 3, 8):
                for got, want in zip(run(offset), expected):
                    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
    finally:
        fastbn._core.reset_stream_min_bytes()
    xr = x.astype(np.float64)
    g64, b64 = gamma.astype(np.float64), beta.astype(np.float64)
    tol = {np.float32: 1e-5, np.float64: 1e-12}.get(dtype, 2e-2)
    y_ref, _, _ = ref_train(xr, g64, b64)
    yi_ref = (xr - mean_in) / np.sqrt(var_in.astype(np.float64) + 1e-5) * g64 + b64
    relu = lambda z: np.maximum(z + res.astype(np.float64), 0)  # noqa: E731
    for got, want in zip(expected[0::4] + expected[3::4], [y_ref, relu(y_ref), yi_ref, relu(yi_ref)]):
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * 4)


# NCHW runs of a few vectors beyond the cache (streaming on) take their statistics as column sums over each
# sample's positions, the training forward channel group by channel group (the group's y read from the core's
# cache) where groups leave segments of 3 KiB, else every channel's statistics and then one flat range; the
# backward's sums of 7x7 runs are column sums read by rows too, and the backward of runs up to 64 values takes them
# by channel groups as well. (70, 24, 14, 14): groups of 4 channels (3136 bytes a sample); (45, 20, 10, 10): groups
# where the core's cache holds several (default cache), of 8 channels (3200 bytes a sample) beyond it (64 KiB), or
# none where the channels do not split evenly (3 threads); (60, 32, 7, 7): groups of 16 channels of 7x7;
# (16, 400, 7, 7): a period too long for the flat walk, the backward by groups of 16 channels or more;
# (16, 300, 8, 8): the same with 64-value runs, groups of 12 channels where the 64 KiB cache holds 2 or 4.
SHORT_RUN_SHAPES = [(70, 24, 14, 14), (45, 20, 10, 10), (60, 32, 7, 7), (16, 400, 7, 7), (16, 300, 8, 8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHORT_RUN_SHAPES)
def test_short_runs_beyond_the_cache_give_the_bits_of_one_thread(simd, restore_threads, small_core_cache, shape, dtype):
    """Training (plain, and with a residual and ReLU), batch_norm_stats, the backward and a distributed backward's
    local sums of NCHW short runs with streaming on give, on 1 to 3 threads and with the default or a 64 KiB core
    cache (channel groups or the flat range), the bits of one thread; batch_norm_stats gives the training forward's
    statistics; and the float64 reference, with a channel of a large mean and one whose first sample is far from
    its mean (the careful path)."""
    rng = np.random.default_rng(12)
    x64 = rng.standard_normal(shape) * 2 + 3
    x64[:, 3] += 1e4  # a large mean
    x64[0, 5] += 300  # the first sample's mean, the shift, is off
    x = x64.astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = np.linspace(0.5, 1.5, shape[1]).astype(param_dtype(x))
    beta = np.linspace(-1, 1, shape[1]).astype(param_dtype(x))
    count = x.size // shape[1]

    def run():
        y, mean, var = fastbn.batch_norm_train(x, gamma, beta)
        yr, _, _ = fastbn.batch_norm_train(x, gamma, beta, activation="relu", residual=res)
        _, smean, sm2 = fastbn.batch_norm_stats(x)
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma)
        sdy, sdyx = fastbn.batch_norm_backward_reduce(dy, x, smean, sm2 / count, gamma)
        return [y, mean, var, yr, smean, sm2, dx, dg, db, sdy, sdyx]

    fastbn.set_num_threads(1)
    try:
        fastbn._core.set_stream_min_bytes(1 << 10)
        fastbn._core.reset_core_cache_bytes()
        expected = run()
        for _ in threads_and_caches(small_core_cache):
            for got, want in zip(run(), expected):
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
            # a distributed backward (never by channel groups) with the forward's statistics
            mean, var, dx, dg, db = (expected[i] for i in (1, 2, 6, 7, 8))
            assert_phases_give_the_full_backward(dy, x, mean, var, gamma, dx, dg, db)
    finally:
        fastbn._core.reset_stream_min_bytes()
    y, mean, var, yr, smean, sm2, dx, dg, db, sdy, sdyx = expected
    np.testing.assert_array_equal(mean, smean.astype(mean.dtype))
    np.testing.assert_array_equal(var, (sm2 / count).astype(var.dtype))
    xr = x.astype(np.float64)
    y_ref, mean_ref, var_ref = ref_train(xr, gamma.astype(np.float64), beta.astype(np.float64))
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(dtype, 3e-2)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6 if dtype != np.float64 else 1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=tol)
    np.testing.assert_allclose(sm2, var_ref * count, rtol=tol)
    np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=tol, atol=tol)
    relu = np.maximum(y_ref + res.astype(np.float64), 0)
    np.testing.assert_allclose(yr.astype(np.float64), relu, rtol=tol, atol=tol)
    dx_ref, dg_ref, db_ref = ref_backward(dy.astype(np.float64), xr, mean_ref, var_ref, gamma.astype(np.float64))
    for got, want in [(dg, dg_ref), (db, db_ref), (sdyx, dg_ref), (sdy, db_ref), (dx, dx_ref)]:
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * np.abs(want).max())


# Runs of up to 64 values whose C * L period is too long for the flat walk, from 1 MiB on and within the last-level
# cache (streaming off): the backward's sums are column sums there too (by channel groups where a core's cache holds
# them, else read by rows), as beyond that cache.
IN_CACHE_SHORT_RUNS = [(32, 300, 8, 8), (48, 512, 6, 6), (40, 1024, 5, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", IN_CACHE_SHORT_RUNS, ids=lambda s: "x".join(map(str, s)))
def test_short_runs_within_the_cache_backward_gives_the_bits_of_one_thread(
    simd, restore_threads, small_core_cache, shape, dtype
):
    """The backward of short NCHW runs within the last-level cache gives, on 1 to 3 threads and with the default or a
    64 KiB core cache (channel groups, or the column sums read by rows), the bits of one thread; a distributed
    backward's reduce phase gives its dbeta and dgamma and its apply phase its dx bit for bit; and the float64
    reference, with a channel of a large mean."""
    rng = np.random.default_rng(21)
    x64 = rng.standard_normal(shape) * 2 + 3
    x64[:, 3] += 1e4
    x = x64.astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = np.linspace(0.5, 1.5, shape[1]).astype(param_dtype(x))
    fastbn._core.set_stream_min_bytes(1 << 40)  # within the cache, whatever this machine's cache is
    try:
        _, mean, var = fastbn.batch_norm_train(x)
        fastbn.set_num_threads(1)
        fastbn._core.reset_core_cache_bytes()
        dx, dg, db = fastbn.batch_norm_backward(dy, x, mean, var, gamma)
        for _ in threads_and_caches(small_core_cache):
            for got, want in zip(fastbn.batch_norm_backward(dy, x, mean, var, gamma), (dx, dg, db)):
                np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
            assert_phases_give_the_full_backward(dy, x, mean, var, gamma, dx, dg, db)
    finally:
        fastbn._core.reset_stream_min_bytes()
    dx_ref, dg_ref, db_ref = ref_backward(
        dy.astype(np.float64), x.astype(np.float64), mean.astype(np.float64), var.astype(np.float64),
        gamma.astype(np.float64),
    )  # fmt: skip
    tol = {np.float32: 1e-4, np.float64: 1e-10}.get(dtype, 3e-2)
    for got, want in [(dg, dg_ref), (db, db_ref), (dx, dx_ref)]:
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * np.abs(want).max())


# Runs of 1-10 KiB whose channels are read in groups side by side (statistics, reduce phase): a group shorter than a
# thread's share (1000 floats: 16 channels a group), one longer (300 doubles), a share of 3 channels in groups of 6
# (2500 floats), channels that do not split evenly over 2 threads (7, in order then), pieces of long runs.
SIDE_BY_SIDE = [((6, 40, 1000), np.float32), ((5, 24, 300), np.float64), ((4, 9, 2500), np.float32),
                ((8, 7, 1200), np.float32), ((3, 4, 9000), np.float32), ((6, 48, 520), ml_dtypes.bfloat16)]  # fmt: skip


@pytest.mark.parametrize(
    "shape,dtype", SIDE_BY_SIDE, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else None
)
def test_channels_read_side_by_side_give_every_block_once(restore_threads, shape, dtype):
    """batch_norm_stats and batch_norm_backward_reduce read short runs of several channels side by side: each
    channel's statistics and sums must take every block once, whatever the thread count, and agree bit for bit
    across 1-3 threads and with the training forward's statistics."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 2 + 3 + np.arange(shape[1])[:, None]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    ref_mean, ref_var = ref_stats(x64)
    xhat = (x64 - ref_mean[:, None]) / np.sqrt(ref_var[:, None] + 1e-5)
    ref_sum_dy, ref_sum_dy_xhat = dy64.sum(axis=(0, 2)), (dy64 * xhat).sum(axis=(0, 2))
    got = []
    for threads in (1, 2, 3):
        fastbn.set_num_threads(threads)
        n, mean, m2 = fastbn.batch_norm_stats(x)
        var = m2 / n
        sums = fastbn.batch_norm_backward_reduce(dy, x, mean, var)
        got.append((mean.tobytes(), m2.tobytes(), sums[0].tobytes(), sums[1].tobytes()))
        assert n == shape[0] * shape[2]
        tol = 1e-2 if dtype == ml_dtypes.bfloat16 else 1e-6
        np.testing.assert_allclose(mean, ref_mean, rtol=tol)
        np.testing.assert_allclose(var, ref_var, rtol=tol * 10)
        np.testing.assert_allclose(sums[0], ref_sum_dy, rtol=1e-9, atol=1e-9 * np.abs(dy64).sum())
        np.testing.assert_allclose(sums[1], ref_sum_dy_xhat, rtol=tol * 10, atol=tol * np.abs(dy64).sum())
        if dtype != ml_dtypes.bfloat16:
            _, train_mean, train_var = fastbn.batch_norm_train(x)
            assert np.array_equal(train_mean.astype(np.float64), mean.astype(train_mean.dtype).astype(np.float64))
    assert got[1] == got[0] and got[2] == got[0]


def _reported_last_level_cache() -> int:
    """The last-level cache's size as Linux's sysfs reports it for CPU 0 (0 where it does not)."""
    for index in ("3", "2"):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        digits = text.rstrip("KMG")
        if digits.isdigit() and int(digits) > 0:
            return int(digits) << {"K": 10, "M": 20, "G": 30}.get(text[len(digits) :], 0)
    return 0


def _in_fresh_process(env: dict[str, str], code: str) -> list[int]:
    """The integers that `code` prints in a fresh process that imported fastbn, with `env` added to this one's
    environment (FASTBN_STREAM_MIN_BYTES removed)."""
    e = {k: v for k, v in os.environ.items() if k != "FASTBN_STREAM_MIN_BYTES"}
    e.update(env)
    done = subprocess.run(
        [sys.executable, "-c", "import fastbn\n" + code], capture_output=True, text=True, env=e, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [int(v) for v in done.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's sysfs")
def test_streaming_threshold_is_half_the_cache_unless_the_probe_finds_it_does_not_keep_writes():
    """Outputs stream from half the reported last-level cache (4-64 MiB), or from 4 MiB where the one-time probe
    found that the cache does not keep what a core writes; FASTBN_STREAM_MIN_BYTES (a number >= 1) overrides both,
    and reset_ goes back to the same value, also after small calls. Whatever the answer, the outputs' bits are the
    same (the streaming tests above compare both paths)."""
    lo, hi = 4 << 20, 64 << 20
    half = min(max(_reported_last_level_cache() // 2, lo), hi)
    query = "print(int(fastbn._core.cache_keeps_writes()), fastbn._core.stream_min_bytes())"
    [keeps, threshold] = _in_fresh_process({}, query)
    assert threshold == (half if keeps else lo)
    if half == lo:
        assert keeps  # nothing to probe
    small_calls = "import numpy as np\nfor _ in range(3): fastbn.batch_norm_train(np.ones((8, 4, 16), np.float32))\n"
    reset = "fastbn._core.set_stream_min_bytes(5)\nassert fastbn._core.stream_min_bytes() == 5\n"
    reset += "fastbn._core.reset_stream_min_bytes()\n"
    assert _in_fresh_process({}, small_calls + reset + query)[1] in {lo, half}
    assert _in_fresh_process({"FASTBN_STREAM_MIN_BYTES": "12345"}, reset + query)[1] == 12345
    for bad in ("0", "-1", "4MiB", ""):
        assert _in_fresh_process({"FASTBN_STREAM_MIN_BYTES": bad}, query)[1] in {lo, half}


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16])
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid"])
@pytest.mark.parametrize("shape", [(4, 6, 7, 64), (3, 5, 11, 40), (2, 9, 9, 200)], ids=lambda s: "x".join(map(str, s)))
def test_channels_last_forward_in_cache_gives_the_streamed_bits(simd, restore_threads, shape, activation, dtype):
    """The channels-last forward of outputs that do not stream runs its own loop (fwd_cached, which keeps the
    coefficient cycle in registers): training and inference, with and without a residual, give the streaming path's
    bits (outputs placed so that streaming peels a head), and agree with a float64 reference."""
    rng = np.random.default_rng(5)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    res = rng.standard_normal(shape).astype(dtype)
    g = rng.uniform(0.5, 2, C).astype(np.float64 if dtype == np.float64 else np.float32)
    b = rng.standard_normal(C).astype(g.dtype)
    mean, var = (x.astype(np.float64).mean(axis=(0, 1, 2)), x.astype(np.float64).var(axis=(0, 1, 2)))
    mean, var = mean.astype(g.dtype), var.astype(g.dtype)

    def run_all():
        outs = []
        for residual in (None, res):
            buf = np.empty(x.size + 8, dtype)
            out = buf[3 : 3 + x.size].reshape(shape)  # 3 values past the array's start: a head to peel when streaming
            fastbn.batch_norm_infer(x, mean, var, g, b, axis=-1, out=out, activation=activation, residual=residual)
            outs.append(out.copy())
            y, m, v = fastbn.batch_norm_train(x, g, b, axis=-1, activation=activation, residual=residual)
            outs += [y, m, v]
        return outs

    try:
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            fastbn._core.set_stream_min_bytes(1 << 40)
            cached = run_all()
            fastbn._core.set_stream_min_bytes(1)
            streamed = run_all()
            for a, s in zip(cached, streamed):
                assert a.tobytes() == s.tobytes()
    finally:
        fastbn._core.reset_stream_min_bytes()
    x64 = x.astype(np.float64)
    z = (x64 - mean.astype(np.float64)) / np.sqrt(var.astype(np.float64) + 1e-5) * g + b
    want = {None: z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z))}[activation]
    tol = 3e-2 if dtype == ml_dtypes.bfloat16 else 1e-5
    np.testing.assert_allclose(cached[0].astype(np.float64), want, rtol=tol, atol=tol)
