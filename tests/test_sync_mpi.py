"""SyncBatchNorm across processes: ``mpiexec -n 2/3/4`` runs tests/mpi/sync_worker.py, which compares every
process's outputs, gradients and running statistics with single-process BatchNorm on the concatenated batch
(uneven and empty parts, float32/float64, NCHW/channels-last, several steps, eval, bad input on one process).
The communicator protocol is also checked in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn.sync import MPICommunicator, as_communicator

from conftest import mpiexec

WORKER = Path(__file__).parent / "mpi" / "sync_worker.py"


@pytest.mark.parametrize("processes", [2, 3, 4])
def test_sync_batch_norm_over_mpi_equals_one_process(processes):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (the test extras install it)")
    exe = mpiexec()
    if exe is None:
        pytest.skip("no mpiexec (the test extras install the mpich wheel)")
    env = dict(os.environ, OMP_NUM_THREADS="1")  # P processes share this machine's cores
    r = subprocess.run(
        [exe, "-n", str(processes), sys.executable, str(WORKER)], capture_output=True, text=True, timeout=600, env=env
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("ok (") == processes, out


class Loopback:
    """A one-process Communicator: what a new engine has to provide."""

    size, rank = 1, 0

    def allgather(self, send, recv):
        recv[0] = send

    def allreduce_sum(self, send, recv):
        recv[...] = send


def test_one_process_protocol_equals_batch_norm(rng):
    sync = fastbn.SyncBatchNorm(4, comm=Loopback(), activation="sigmoid")
    plain = fastbn.BatchNorm(4, activation="sigmoid")
    for _ in range(2):
        x = rng.standard_normal((6, 4, 3)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_allclose(sync(x), plain(x), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sync.backward(dy), plain.backward(dy), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sync.grad_gamma, plain.grad_gamma, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sync.running_var, plain.running_var, rtol=1e-6)
    assert sync.state_dict().keys() == plain.state_dict().keys()


def test_communicators_are_recognised_or_refused():
    assert isinstance(as_communicator(Loopback()), Loopback)

    class FakeMPI:
        def Get_size(self):
            return 3

        def Get_rank(self):
            return 1

        def Allgather(self, s, r):
            pass

        def Allreduce(self, s, r, op=None):
            pass

    c = as_communicator(FakeMPI())
    assert isinstance(c, MPICommunicator) and c.size == 3 and c.rank == 1
    with pytest.raises(TypeError, match="allgather"):
        fastbn.SyncBatchNorm(3, comm=object())
    with pytest.raises(NotImplementedError, match="CPU"):
        fastbn.SyncBatchNorm(3, comm=Loopback(), device="cuda")


def test_too_few_values_and_bad_input_change_nothing():
    bn = fastbn.SyncBatchNorm(3, comm=Loopback())
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(np.ones((4, 2), np.float32))
    assert bn.num_batches_tracked == 0 and not bn.running_mean.any()
