"""Per-call time of small CUDA batch norms from Python: fastbn's functional API (the lean torch path, with and
without out=), fastbn.torch's functional op, and torch.nn.functional.batch_norm (cuDNN where PyTorch picks it).
Small tensors are host-bound, so this is the cost a model pays per layer. Variants are interleaved in rounds in one
process; medians of the rounds, microseconds per call, each round 200 calls then a synchronize.

    python benchmarks/cuda_overhead.py [--rounds 15] [--breakdown]

--breakdown also times, the same way, the steps of the lean path of a 32x64x8x8 training call one by one (the
torch calls it makes, the C++ launch with everything prepared) and prints a cProfile of 2000 calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fastbn
import fastbn.torch as fbt
from fastbn.bench import int_at_least


def per_call_us(fn, calls: int = 200) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def cases(shape, channels_last):
    x = torch.randn(shape, device="cuda")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, b = torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda")
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    y, dy = torch.empty_like(x), torch.randn_like(x)
    _, mean, var = fastbn.batch_norm_train(x, w, b)
    xr = x.clone().requires_grad_(True)
    yr = torch.nn.functional.batch_norm(xr, None, None, w, b, training=True)
    F = torch.nn.functional
    return {
        "train": {
            "fastbn": lambda: fastbn.batch_norm_train(x, w, b),
            "fastbn out=": lambda: fastbn.batch_norm_train(x, w, b, out=y),
            "fastbn.torch": lambda: fbt.batch_norm(x, rm, rv, w, b, training=True),
            "torch": lambda: F.batch_norm(x, rm, rv, w, b, training=True),
        },
        "infer": {
            "fastbn": lambda: fastbn.batch_norm_infer(x, mean, var, w, b),
            "fastbn out=": lambda: fastbn.batch_norm_infer(x, mean, var, w, b, out=y),
            "fastbn.torch": lambda: fbt.batch_norm(x, rm, rv, w, b, training=False),
            "torch": lambda: F.batch_norm(x, rm, rv, w, b, training=False),
        },
        "backward": {
            "fastbn": lambda: fastbn.batch_norm_backward(dy, x, mean, var, w),
            "fastbn out=": lambda: fastbn.batch_norm_backward(dy, x, mean, var, w, out=y),
            "torch autograd": lambda: torch.autograd.grad(yr, (xr,), dy, retain_graph=True),
        },
    }


def breakdown(rounds: int) -> None:
    import cProfile
    import pstats

    from fastbn import _core
    from fastbn import cuda as fc

    x = torch.randn(32, 64, 8, 8, device="cuda")
    c = x.shape[1]
    w, b = torch.rand(c, device="cuda") + 0.5, torch.randn(c, device="cuda")
    y, st = torch.empty_like(x), x.new_empty((2, c))
    yp, sp = y.data_ptr(), st.data_ptr()
    xp, wp, bp = x.data_ptr(), w.data_ptr(), b.data_ptr()
    dev = x.get_device()
    stream = fc._raw_stream(dev)
    steps = {
        "fastbn.batch_norm_train": lambda: fastbn.batch_norm_train(x, w, b),
        "fastbn.cuda.batch_norm_train": lambda: fc.batch_norm_train(x, w, b),
        "F.batch_norm (torch)": lambda: torch.nn.functional.batch_norm(x, None, None, w, b, training=True),
        "_core.cuda_train, prepared": lambda: _core.cuda_train(
            xp, yp, wp, bp, sp, sp + 4 * c, 2048, c, 64, 1e-5, False, stream
        ),
        "_fast_view": lambda: fc._fast_view(x, 1),
        "_fast_param x2": lambda: (fc._fast_param(w, x, c, dev), fc._fast_param(b, x, c, dev)),
        "torch.empty_like": lambda: torch.empty_like(x),
        "_fast_stats": lambda: fc._fast_stats(x, c),
        "_raw_stream": lambda: fc._raw_stream(dev),
        "is_device_array": lambda: fc.is_device_array(x),
        "x.get_device + data_ptr": lambda: (x.get_device(), x.data_ptr()),
    }
    for fn in steps.values():
        per_call_us(fn, 20)
    samples = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            samples[k].append(per_call_us(fn))
    print("steps of the lean path, 32x64x8x8 float32 training, us per call (medians)")
    for k, v in samples.items():
        print(f"  {k:<32} {statistics.median(v):8.2f}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        fastbn.batch_norm_train(x, w, b)
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def main() -> str | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int_at_least(1), default=15)
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        return f"cuda_overhead.py times CUDA batch norms: it needs a CUDA GPU, and torch {torch.__version__} sees none"
    print(f"fastbn {fastbn.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'shape':<16} {'layout':<6} {'pass':<9} {'variant':<15} {'us/call':>8} {'vs torch':>8}")
    for shape, cl in [((32, 64, 8, 8), False), ((32, 64, 8, 8), True), ((64, 256), False)]:
        for pass_, fns in cases(shape, cl).items():
            for fn in fns.values():
                per_call_us(fn, 20)  # warm up
            samples = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    samples[k].append(per_call_us(fn))
            med = {k: statistics.median(v) for k, v in samples.items()}
            ref = med.get("torch", med.get("torch autograd"))
            for k, v in med.items():
                name = "x".join(map(str, shape))
                print(f"{name:<16} {'nhwc' if cl else 'nchw':<6} {pass_:<9} {k:<15} {v:8.2f} {ref / v:7.2f}x")
    if args.breakdown:
        breakdown(args.rounds)


if __name__ == "__main__":
    sys.exit(main())
