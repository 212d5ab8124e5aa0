"""Per-call time of small NumPy batch norms whose memory is not C order: an NCHW-shaped view of NHWC memory (what
``tensor.numpy()`` of a channels-last PyTorch tensor gives, and ``x.transpose(0, 3, 1, 2)`` of an NHWC array).

fastbn's one-call path (bindings.cpp: ``train_simple``, ``infer_simple``, ``backward_simple``) takes such arrays
since 0.2.0's last changes, and fused passes (an activation, a residual) of any dense layout; before, only
C-contiguous arrays without either, and the others went through the general Python path. The fused rows are timed
on the same NHWC memory.
Both paths still exist (the general one takes every call the one-call path declines), so the comparison runs in one
process: ``eps`` passed as ``numpy.float64`` sends a call down the general path (the one-call path takes an exact
``float``), with the same kernel call and bits. PyTorch's channels-last tensor over the same memory is the peer.
Variants interleave in rounds; medians of the rounds, microseconds per call.

    python benchmarks/one_call.py [--threads 1 2] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastbn
from fastbn.bench import int_at_least

SHAPES = [(32, 64, 8, 8), (16, 512, 5, 5), (64, 256, 7, 7), (32, 128, 28, 28)]


def per_call_us(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def cases(shape):
    import torch

    rng = np.random.default_rng(0)
    n, c, h, w = shape
    x = rng.standard_normal((n, h, w, c), dtype=np.float32).transpose(0, 3, 1, 2)  # NHWC memory, NCHW axes
    dy = rng.standard_normal((n, h, w, c), dtype=np.float32).transpose(0, 3, 1, 2)
    out = np.empty((n, h, w, c), np.float32).transpose(0, 3, 1, 2)
    g, b = (rng.random(c) + 0.5).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    _, m, v = fastbn.batch_norm_train(x, g, b)
    res = rng.standard_normal((n, h, w, c), dtype=np.float32).transpose(0, 3, 1, 2)
    relu = {"activation": "relu"}
    general = np.float64(1e-5)
    yr = fastbn.batch_norm_train(x, g, b, residual=res, **relu)[0]
    xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)
    assert xt.is_contiguous(memory_format=torch.channels_last)
    gt, bt, mt, vt = (torch.from_numpy(a) for a in (g, b, m, v))
    return {
        "train": {
            "one call": lambda: fastbn.batch_norm_train(x, g, b),
            "one call, out=": lambda: fastbn.batch_norm_train(x, g, b, out=out),
            "general": lambda: fastbn.batch_norm_train(x, g, b, eps=general),
            "general, out=": lambda: fastbn.batch_norm_train(x, g, b, eps=general, out=out),
            "torch": lambda: torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True),
        },
        "infer": {
            "one call": lambda: fastbn.batch_norm_infer(x, m, v, g, b),
            "one call, out=": lambda: fastbn.batch_norm_infer(x, m, v, g, b, out=out),
            "general": lambda: fastbn.batch_norm_infer(x, m, v, g, b, eps=general),
            "general, out=": lambda: fastbn.batch_norm_infer(x, m, v, g, b, eps=general, out=out),
            "torch": lambda: torch.nn.functional.batch_norm(xt, mt, vt, gt, bt, training=False),
            "torch, out=": lambda: torch.batch_norm(xt, gt, bt, mt, vt, False, 0.1, 1e-5, True),
        },
        "train+relu+residual": {
            "one call, out=": lambda: fastbn.batch_norm_train(x, g, b, out=out, residual=res, **relu),
            "general, out=": lambda: fastbn.batch_norm_train(x, g, b, eps=general, out=out, residual=res, **relu),
        },
        "infer+relu": {
            "one call, out=": lambda: fastbn.batch_norm_infer(x, m, v, g, b, out=out, **relu),
            "general, out=": lambda: fastbn.batch_norm_infer(x, m, v, g, b, eps=general, out=out, **relu),
        },
        "backward+relu+dres": {
            "one call, out=": lambda: fastbn.batch_norm_backward(
                dy, x, m, v, g, out=out, y=yr, return_dresidual=True, **relu
            ),
            "general, out=": lambda: fastbn.batch_norm_backward(
                dy, x, m, v, g, eps=general, out=out, y=yr, return_dresidual=True, **relu
            ),
        },
        "backward": {
            "one call": lambda: fastbn.batch_norm_backward(dy, x, m, v, g),
            "one call, out=": lambda: fastbn.batch_norm_backward(dy, x, m, v, g, out=out),
            "general": lambda: fastbn.batch_norm_backward(dy, x, m, v, g, eps=general),
            "general, out=": lambda: fastbn.batch_norm_backward(dy, x, m, v, g, eps=general, out=out),
            "torch": lambda: torch.ops.aten.native_batch_norm_backward(
                dyt, xt, gt, None, None, mt, 1 / (vt + 1e-5).sqrt(), True, 1e-5, [True, True, True]
            ),
        },
    }


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int_at_least(1), nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int_at_least(1), default=30)
    ap.add_argument("--calls", type=int_at_least(1), default=50)
    args = ap.parse_args()
    print(f"fastbn {fastbn.__version__}, torch {torch.__version__}; microseconds per call, medians of {args.rounds}")
    columns = ["one call", "one call, out=", "general", "general, out=", "torch", "torch, out="]
    print(f"{'shape':<14} {'thr':>3} {'pass':<19} " + " ".join(f"{k:>15}" for k in columns))
    for threads in args.threads:
        fastbn.set_num_threads(threads)
        torch.set_num_threads(threads)
        for shape in SHAPES:
            for pass_, fns in cases(shape).items():
                for fn in fns.values():
                    per_call_us(fn, 5)  # warm up
                samples = {k: [] for k in fns}
                for _ in range(args.rounds):
                    for k, fn in fns.items():
                        samples[k].append(per_call_us(fn, args.calls))
                cells = " ".join(
                    f"{statistics.median(samples[k]):15.1f}" if k in samples else f"{'-':>15}" for k in columns
                )
                print(f"{'x'.join(map(str, shape)):<14} {threads:>3} {pass_:<19} {cells}", flush=True)


if __name__ == "__main__":
    main()
