"""The cost of synchronizing batch statistics: fastbn.SyncBatchNorm against local fastbn.BatchNorm on the same
per-process batch, forward + backward, under MPI.

    mpiexec -n 2 python benchmarks/sync_overhead.py [--shape 16x64x32x32] [--repeat 31]
    mpiexec -n 4 python benchmarks/sync_overhead.py

Each process holds the given local batch. Both layers run interleaved in one process, a barrier before each
sample so that every process starts together; rank 0 prints the medians, the overhead per call, and the time of
the two collectives alone (an allgather of 2C + 2 and an allreduce of 2C + 1 doubles).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.bench import int_at_least


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="16x64x32x32", help="local batch per process (default 16x64x32x32)")
    p.add_argument("--repeat", type=int_at_least(1), default=31, help="samples (default 31)")
    p.add_argument("--threads", type=int_at_least(1), default=1, help="fastbn threads per process (default 1)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    fastbn.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split("x"))
    c = shape[1]
    rng = np.random.default_rng(rank)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    local = fastbn.BatchNorm(c)
    sync = fastbn.SyncBatchNorm(c, comm=comm)
    send_f = np.zeros(2 * c + 2)
    recv_f = np.zeros((size, 2 * c + 2))
    send_b = np.zeros(2 * c + 1)
    recv_b = np.zeros(2 * c + 1)

    def step(layer):
        layer(x)
        layer.backward(dy)

    def collectives():
        comm.Allgather(send_f, recv_f)
        comm.Allreduce(send_b, recv_b, op=MPI.SUM)

    fns = {"local": lambda: step(local), "sync": lambda: step(sync), "collectives": collectives}
    samples = {k: [] for k in fns}
    for k in fns:  # warm-up
        for _ in range(3):
            comm.Barrier()
            fns[k]()
    for r in range(args.repeat):
        keys = list(fns)
        for k in keys[r % 3 :] + keys[: r % 3]:
            comm.Barrier()
            t = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    worst = {k: comm.allreduce(v, op=MPI.MAX) for k, v in med.items()}  # the slowest process sets the pace
    if rank == 0:
        over = worst["sync"] - worst["local"]
        print(
            f"processes={size} local batch={args.shape} (float32, {args.threads} thread(s) each), "
            f"MPI: {MPI.Get_library_version().splitlines()[0].strip()}"
        )
        print(f"  local BatchNorm fwd+bwd   {worst['local']:8.3f} ms")
        rel = 100 * over / worst["local"]
        print(f"  SyncBatchNorm fwd+bwd     {worst['sync']:8.3f} ms  (+{over:.3f} ms, {rel:+.1f}%)")
        print(f"  the two collectives alone {worst['collectives']:8.3f} ms")


if __name__ == "__main__":
    main()
