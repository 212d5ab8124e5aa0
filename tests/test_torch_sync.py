"""fastbn.torch.SyncBatchNorm over torch.distributed: two processes on loopback (gloo, file:// rendezvous) run
tests/dist/torch_sync_worker.py, which compares outputs, input and parameter gradients and running statistics
with single-process batch norm on the concatenated batch (even, uneven and empty parts; float32 and float64;
NCHW and channels-last; eval) and checks that bad input on one process raises on both."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import fastbn.torch as ft

WORKER = Path(__file__).parent / "dist" / "torch_sync_worker.py"


def test_two_gloo_processes_equal_one_batch(tmp_path):
    init = tmp_path / "rendezvous"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), "2", str(init)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        for r in range(2)
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and f"rank {r}: ok" in out, out


def test_one_process_and_eval_use_the_local_path():
    torch.manual_seed(0)
    bn, ref = ft.SyncBatchNorm(4), torch.nn.BatchNorm2d(4)  # no process group: a single process
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    bn.eval()
    ref.eval()
    torch.testing.assert_close(bn(x), ref(x), rtol=1e-5, atol=1e-5)
    m = ft.SyncBatchNorm.convert_sync_batchnorm(torch.nn.Sequential(ft.BatchNorm2d(4), torch.nn.BatchNorm1d(2)))
    assert all(type(x) is ft.SyncBatchNorm for x in m)
