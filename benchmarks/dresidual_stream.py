"""The fused backward that writes dresidual, with its outputs streamed once both together reach the streaming
threshold (the rule since 0.2.0's last changes) against once one of them does (the rule before).

One process switching per call: the rule before is the threshold set to twice the default (``_core.stream_min_bytes()``
for the call is divided between the two outputs, batchnorm.cpp: exec), the rule now is the default. ReLU backward with
``y=``, ``out=`` and ``return_dresidual=True``, float32; order alternating, medians of the paired ratios with quartiles.

    python benchmarks/dresidual_stream.py [--threads 1 2] [--pairs 21]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import fastbn
from fastbn import _core
from fastbn.bench import int_at_least

SHAPES = [
    ((64, 256, 7, 7), True),
    ((64, 256, 7, 7), False),
    ((16, 256, 14, 14), False),
    ((32, 64, 16, 16), True),
    ((32, 64, 16, 16), False),
    ((8, 64, 32, 32), False),
]


def per_call_us(fn, calls: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def one_case(rng, shape, channels_last: bool, threshold: int, pairs: int) -> str:
    n, c, h, w = shape
    memory = (n, h, w, c) if channels_last else shape
    x, dy, res = (rng.standard_normal(memory, dtype=np.float32) for _ in range(3))
    if channels_last:
        x, dy, res = (a.transpose(0, 3, 1, 2) for a in (x, dy, res))
    out = np.empty_like(x)
    g, b = (rng.random(c) + 0.5).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    y, m, v = fastbn.batch_norm_train(x, g, b, residual=res, activation="relu")

    def call(t):
        def f():
            _core.set_stream_min_bytes(t)
            fastbn.batch_norm_backward(dy, x, m, v, g, y=y, out=out, activation="relu", return_dresidual=True)

        return f

    before, now = call(2 * threshold), call(threshold)
    tb, tn, ratios = [], [], []
    for i in range(pairs):
        if i % 2:
            a, bb = per_call_us(before), per_call_us(now)
        else:
            bb, a = per_call_us(now), per_call_us(before)
        tb.append(a)
        tn.append(bb)
        ratios.append(a / bb)
    _core.reset_stream_min_bytes()
    q = statistics.quantiles(ratios, n=4)
    name = f"{'x'.join(map(str, shape))} {'nhwc' if channels_last else 'nchw'}"
    return (
        f"{name:<20} {x.nbytes / 2**20:4.1f} MiB  before {statistics.median(tb):7.0f}  now {statistics.median(tn):7.0f}"
        f"  before/now {statistics.median(ratios):.2f} [{q[0]:.2f}, {q[2]:.2f}]"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int_at_least(1), nargs="+", default=[1, 2])
    ap.add_argument("--pairs", type=int_at_least(2, " (quartiles need two)"), default=21)
    args = ap.parse_args()
    default = _core.stream_min_bytes()
    print(f"fastbn {fastbn.__version__}; streaming threshold {default} bytes; microseconds per call")
    rng = np.random.default_rng(0)
    for threads in args.threads:
        fastbn.set_num_threads(threads)
        for shape, channels_last in SHAPES:
            print(f"{threads} thr  " + one_case(rng, shape, channels_last, default, args.pairs), flush=True)


if __name__ == "__main__":
    main()
