"""The NCHW/NCL backward beside its two phases, each from memory: the reduce phase (`batch_norm_backward_reduce`,
the sums alone: reads dy and x) and the apply phase (`batch_norm_backward_apply`, dx from given sums: reads dy and
x, writes dx). A backward that keeps each channel in a core's cache between its sums and its dx takes about a 3S
stream's time; one that takes about reduce + apply read its inputs twice from memory. Also the training forward
against the 2S copy. Every round evicts the caches (a 256 MB streaming copy), then takes the best of 3 calls of
each, in turn; medians over rounds, and fractions as medians of the round's paired ratios.

    python benchmarks/backward_parts.py [--shapes 128x64x1024,128x64x1000] [--rounds 7] [--threads 2]

Runs whose batch stride is a multiple of 128 KiB (NCL 128x64x1024: 64 channels of 4 KiB) put all of a channel's
rows in the same few sets of a 16-way cache whose ways are 128 KiB (as an L2 of 2 MiB), so a channel does not
stay there between its two reads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastbn
from fastbn.bench import int_at_least, shape_list

DEFAULT = "128x64x1024,128x64x1000,128x64x1040,128x66x1024,256x256x14x14,64x128x56x56"


def best_of_3(fn) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--shapes", type=shape_list, default=DEFAULT, help=f"comma-separated NxCxL or NxCxHxW (default {DEFAULT})"
    )
    ap.add_argument("--rounds", type=int_at_least(1), default=7, help="rounds, each after a 256 MB copy (default 7)")
    ap.add_argument("--threads", type=int_at_least(1), default=2, help="fastbn threads (default 2)")
    args = ap.parse_args()
    fastbn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    big = rng.random(64 << 20, dtype=np.float32)
    big_out = np.empty_like(big)
    cases = {}
    for shape in args.shapes:
        s = "x".join(map(str, shape))
        c = shape[1]
        x, dy = rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32)
        out = np.empty_like(x)
        g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        _, m, v = fastbn.batch_norm_train(x, g, b)
        sdy, sdx = fastbn.batch_norm_backward_reduce(dy, x, m, v, g)[:2]
        count = x.size // c
        flat = (x.reshape(-1), dy.reshape(-1), out.reshape(-1))
        cases[s] = {
            "backward": lambda dy=dy, x=x, m=m, v=v, g=g, out=out: fastbn.batch_norm_backward(dy, x, m, v, g, out=out),
            "reduce": lambda dy=dy, x=x, m=m, v=v, g=g: fastbn.batch_norm_backward_reduce(dy, x, m, v, g),
            "apply": lambda dy=dy, x=x, m=m, v=v, g=g, b=b, sdy=sdy, sdx=sdx, n=count, out=out: (
                fastbn.batch_norm_backward_apply(dy, x, m, v, g, b, sdy, sdx, n, out=out)
            ),
            "3S": lambda f=flat: fastbn._core.stream_add(f[0], f[1], f[2]),
            "train": lambda x=x, g=g, b=b, out=out: fastbn.batch_norm_train(x, g, b, out=out),
            "2S": lambda f=flat: fastbn._core.stream_copy(f[0], f[2]),
        }
    times = {s: {k: [] for k in fns} for s, fns in cases.items()}
    for _ in range(args.rounds):
        for s, fns in cases.items():
            for k, fn in fns.items():
                fastbn._core.stream_copy(big, big_out)
                times[s][k].append(best_of_3(fn))
    print(f"fastbn {fastbn.__version__} ({fastbn.get_simd()}), {args.threads} threads, ms (medians of {args.rounds})")
    print(
        f"{'shape':16s} {'backward':>8s} {'reduce':>7s} {'apply':>7s} {'of 3S':>6s} {'(r+a)/bwd':>9s} "
        f"{'train':>7s} {'of 2S':>6s}"
    )
    for s, t in times.items():
        a = {k: np.array(v) for k, v in t.items()}
        med = {k: float(np.median(v)) * 1e3 for k, v in a.items()}
        print(
            f"{s:16s} {med['backward']:8.2f} {med['reduce']:7.2f} {med['apply']:7.2f} "
            f"{np.median(a['3S'] / a['backward']):6.2f} {np.median((a['reduce'] + a['apply']) / a['backward']):9.2f} "
            f"{med['train']:7.2f} {np.median(a['2S'] / a['train']):6.2f}"
        )


if __name__ == "__main__":
    main()
