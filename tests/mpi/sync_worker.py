"""Run under ``mpiexec -n P``: fastbn.SyncBatchNorm over mpi4py against single-process BatchNorm on the
concatenated batch (every process builds the whole batch from one seed and keeps its part). Exits non-zero on
any mismatch; prints one line per process. Started by tests/test_sync_mpi.py."""

from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

import fastbn

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
checks = 0


def same_everywhere(a: np.ndarray, what: str) -> None:
    """The same bits on every process."""
    global checks
    a = np.ascontiguousarray(a, np.float64)
    allv = np.empty((size, a.size))
    comm.Allgather(a.reshape(-1), allv)
    assert all(allv[r].tobytes() == allv[0].tobytes() for r in range(size)), f"{what} differs between processes"
    checks += 1


def close(a, b, dtype, what):
    global checks
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol, err_msg=what)
    checks += 1


def split(n: int, kind: str) -> list[int]:
    if kind == "even":
        return [n // size + (r < n % size) for r in range(size)]
    if kind == "uneven":
        w = np.arange(1, size + 1)
        sizes = (w * n // w.sum()).tolist()
        sizes[-1] += n - sum(sizes)
        return sizes
    sizes = split(n, "uneven")  # "empty": rank 1 holds nothing
    sizes[0] += sizes[1]
    sizes[1] = 0
    return sizes


def run(kind: str, dtype, layout: str, activation) -> None:
    rng = np.random.default_rng(7)
    n = 3 * size + 2
    c = 5
    shape, axis = ((n, c, 4, 3), 1) if layout == "nchw" else ((n, 4, 3, c), -1)
    sizes = split(n, kind)
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    kw = {"axis": axis, "dtype": dtype, "activation": activation, "momentum": None if kind == "uneven" else 0.1}
    sync = fastbn.SyncBatchNorm(c, comm=comm, **kw)
    single = fastbn.BatchNorm(c, **kw)
    for step in range(3):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = sync(x[lo:hi])
        y_all = single(x)
        close(y, y_all[lo:hi], dtype, f"y step {step}")
        dx = sync.backward(dy[lo:hi])
        dx_all = single.backward(dy)
        close(dx, dx_all[lo:hi], dtype, f"dx step {step}")
        g = np.empty((size, c))
        comm.Allgather(sync.grad_gamma.astype(np.float64), g)
        close(g.sum(axis=0), single.grad_gamma, dtype, "sum of grad_gamma")
        close(sync.running_mean, single.running_mean, dtype, "running_mean")
        close(sync.running_var, single.running_var, dtype, "running_var")
        same_everywhere(sync.running_mean, "running_mean")
        same_everywhere(sync.running_var, "running_var")
        # Data-parallel training all-reduces the parameter gradients, so the replicas stay equal:
        for p, grad, q, qgrad in ((sync.gamma, sync.grad_gamma, single.gamma, single.grad_gamma),
                                  (sync.beta, sync.grad_beta, single.beta, single.grad_beta)):  # fmt: skip
            total = np.empty_like(grad)
            comm.Allreduce(grad, total, op=MPI.SUM)
            p -= 0.1 * total
            q -= 0.1 * qgrad
    sync.eval()
    single.eval()
    x = rng.standard_normal(shape).astype(dtype)
    close(sync(x[lo:hi]), single(x)[lo:hi], dtype, "eval")
    nt = fastbn.SyncBatchNorm(c, comm=comm, axis=axis, dtype=dtype, track_running_stats=False).eval()
    ref = fastbn.BatchNorm(c, axis=axis, dtype=dtype, track_running_stats=False).eval()
    close(nt(x[lo:hi]), ref(x)[lo:hi], dtype, "eval without running statistics (global batch statistics)")


def bad_input_on_one_process() -> None:
    """Every process raises; no state changes anywhere; the next call works."""
    global checks
    bn = fastbn.SyncBatchNorm(3, comm=comm)
    x = np.ones((4, 3), np.float32) * rank
    bad = np.ones((4, 2), np.float32) if rank == size - 1 else x
    try:
        bn(bad)
    except ValueError as e:
        msg = str(e)
        assert ("expected 3 channels" in msg) if rank == size - 1 else ("failed their input checks" in msg), msg
    else:
        raise AssertionError("no error")
    assert bn.num_batches_tracked == 0 and not bn.running_mean.any()
    # Too few values over all processes: ValueError everywhere, not a hang.
    try:
        bn(np.ones((1, 3), np.float32) if rank == 0 else np.ones((0, 3), np.float32))
    except ValueError as e:
        assert "more than 1 value per channel" in str(e), str(e)
    else:
        raise AssertionError("no error")
    y = bn(x)
    assert y.shape == (4, 3)
    try:
        bn.backward(np.ones((4, 3), np.float64) if rank == 0 else np.ones((4, 3), np.float32))
    except (TypeError, ValueError) as e:
        assert rank == 0 or "failed their input checks" in str(e), str(e)
    else:
        raise AssertionError("no error in backward")
    checks += 3


try:
    for kind in ("even", "uneven", "empty"):
        for dtype in (np.float64, np.float32):
            for layout in ("nchw", "nhwc"):
                run(kind, dtype, layout, "relu" if layout == "nhwc" and kind == "even" else None)
    bad_input_on_one_process()
except Exception as e:
    print(f"rank {rank}: FAILED: {type(e).__name__}: {e}", flush=True)
    sys.stdout.flush()
    comm.Abort(1)
print(f"rank {rank}/{size}: ok ({checks} checks)", flush=True)
