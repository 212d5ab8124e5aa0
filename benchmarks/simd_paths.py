"""Two SIMD paths of fastbn against each other, switching path call by call in one process (the order reversed
every round), so that the machine's drift hits both alike: the median of each path's time and of the paired
ratios first / second (> 1: the second path is faster) with their interquartile range, per shape and pass. With
--torch, PyTorch's inference into given outputs (the same dtype) is timed in the same rounds.

    python benchmarks/simd_paths.py [--paths avx512,avx512_bf16] [--dtype bfloat16] [--threads 2] [--rounds 31]
                                    [--shapes 8192x1024,256x256x14x14,...] [--torch]

Shapes are (N, C) or (N, C, L...) in C order (channels on axis 1).
"""

from __future__ import annotations

import argparse
import time

import ml_dtypes
import numpy as np

import fastbn
from fastbn._bench_common import machine
from fastbn.bench import int_at_least, shape_list

DTYPES = {"float32": np.float32, "float64": np.float64, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
SHAPES = "8192x1024,4096x1024,256x256x14x14,128x512x8x8,64x128x56x56,128x64x1024"


def quartiles(v: np.ndarray) -> str:
    return f"{np.median(v):.2f}x [{np.percentile(v, 25):.2f}, {np.percentile(v, 75):.2f}]"


def torch_infer(x, m, v, g, b):
    import torch

    as_int = {np.dtype(ml_dtypes.bfloat16): (np.int16, torch.bfloat16)}.get(x.dtype)
    tx = torch.from_numpy(x.view(as_int[0])).view(as_int[1]) if as_int else torch.from_numpy(x)
    ty = torch.empty_like(tx)
    pdt = torch.float64 if x.dtype == np.float64 else torch.float32
    tm, tv, tg, tb = (torch.from_numpy(a).to(pdt) for a in (m, v, g, b))
    save = torch.empty(x.shape[1], dtype=pdt)

    def call():
        torch.ops.aten.native_batch_norm.out(tx, tg, tb, tm, tv, False, 0.1, 1e-5, out=ty, save_mean=save,
                                             save_invstd=save)  # fmt: skip

    return call


def cases(rng, shape, dt, with_torch: bool):
    """(pass, fastbn call, PyTorch call or None) for one shape: inference, training forward, backward."""
    x = rng.standard_normal(shape).astype(dt)
    dy = rng.standard_normal(shape).astype(dt)
    y, dx = np.empty_like(x), np.empty_like(x)
    c = shape[1]
    pdt = np.float64 if dt is np.float64 else np.float32
    m, v = rng.standard_normal(c).astype(pdt), rng.uniform(0.5, 2, c).astype(pdt)
    g, b = rng.uniform(0.5, 1.5, c).astype(pdt), rng.standard_normal(c).astype(pdt)
    return [
        (
            "infer",
            lambda: fastbn.batch_norm_infer(x, m, v, g, b, out=y),
            torch_infer(x, m, v, g, b) if with_torch else None,
        ),
        ("train", lambda: fastbn.batch_norm_train(x, g, b, out=y), None),
        ("backward", lambda: fastbn.batch_norm_backward(dy, x, m, v, g, out=dx), None),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", default="avx512,avx512_bf16", help="two SIMD paths (avx512,avx512_bf16)")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES), help="storage type (bfloat16)")
    ap.add_argument("--threads", type=int_at_least(1), default=2, help="threads for fastbn and PyTorch (2)")
    ap.add_argument("--rounds", type=int_at_least(1), default=31, help="paired calls per case (31)")
    ap.add_argument("--shapes", type=shape_list, default=SHAPES, help=f"comma-separated shapes ({SHAPES})")
    ap.add_argument("--torch", action="store_true", help="time PyTorch's inference into given outputs too")
    args = ap.parse_args()
    paths = args.paths.split(",")
    if len(paths) != 2 or not all(fastbn._core.simd_supported(p) for p in paths):
        ap.error(f"--paths needs two paths this build and CPU run, got {args.paths!r}")
    fastbn.set_num_threads(args.threads)
    if args.torch:
        import torch

        torch.set_num_threads(args.threads)
    cpu = machine()["cpu"]
    print(f"fastbn {fastbn.__version__}, {cpu}, {args.threads} threads, {args.dtype}, {paths[0]} / {paths[1]}, "
          f"{args.rounds} rounds, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        for name, call, other in cases(rng, shape, DTYPES[args.dtype], args.torch):
            t = np.zeros((args.rounds, 3))
            for r in range(args.rounds):
                for i in (0, 1) if r % 2 else (1, 0):
                    fastbn.set_simd(paths[i])
                    call()
                    t0 = time.perf_counter()
                    call()
                    t[r, i] = time.perf_counter() - t0
                if other:
                    other()
                    t0 = time.perf_counter()
                    other()
                    t[r, 2] = time.perf_counter() - t0
            line = (f"{'x'.join(map(str, shape)):>16} {name:>8}: {paths[0]} {np.median(t[:, 0]) * 1e3:.3f} ms, "
                    f"{paths[1]} {np.median(t[:, 1]) * 1e3:.3f} ms, paired {quartiles(t[:, 0] / t[:, 1])}")  # fmt: skip
            if other:
                line += (f"; torch out= {np.median(t[:, 2]) * 1e3:.3f} ms, against {paths[0]} "
                         f"{quartiles(t[:, 2] / t[:, 0])}, {paths[1]} {quartiles(t[:, 2] / t[:, 1])}")  # fmt: skip
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
